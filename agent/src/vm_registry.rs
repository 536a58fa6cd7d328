//! The agent's record of its VMs: `DATA_DIR/vms/<vm_id>/` run directories (named file
//! constants), `vm.json` records, per-VM task locks, the last observed QEMU pid per VM
//! (what the monitor compares against) and the last guest agent answer per VM (what the
//! guest agent watcher found, attached to every running VM's report).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use otherix_api::proto::GuestInfo;
use otherix_api::VmSpec;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::atomic_file::write_json_atomic;

/// The VM record in the run dir.
pub const VM_RECORD: &str = "vm.json";
/// QEMU's QMP unix socket.
pub const QMP_SOCKET: &str = "qmp.sock";
/// The guest agent's socket (QEMU's end of the `org.qemu.guest_agent.0` port).
pub const QGA_SOCKET: &str = "qga.sock";
/// QEMU's pidfile (`-pidfile`).
pub const PIDFILE: &str = "qemu.pid";
/// The guest's serial console.
pub const SERIAL_LOG: &str = "serial.log";
/// QEMU's serial port socket (the console hub connects to it).
pub const CONSOLE_SOCKET: &str = "console.sock";
/// QEMU's own stdout/stderr from launch.
pub const QEMU_LOG: &str = "qemu.log";
/// Present when the VM's last QEMU ended because the guest powered itself off cleanly
/// (written before the agent quits a QEMU held in run state `shutdown`; removed at the next
/// boot). A dead QEMU without it crashed or was killed. See [`crate::guest_power`].
pub const GUEST_SHUTDOWN_MARKER: &str = "guest-shutdown";

/// Longest unix socket path the kernel accepts (sun_path minus the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot write VM record {0}")]
    Write(PathBuf, #[source] std::io::Error),
    #[error("cannot read VM record {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("VM record {0} is corrupt")]
    Corrupt(PathBuf, #[source] serde_json::Error),
    #[error("cannot remove run dir {0}")]
    Remove(PathBuf, #[source] std::io::Error),
}

/// What the agent remembers about a VM between tasks and restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRecord {
    pub vm_id: Uuid,
    pub name: String,
    pub pool: String,
    pub pool_path: PathBuf,
    pub spec: VmSpec,
    /// sha256 of the cached image the VM's disk was built from (what keeps that image
    /// from being pruned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_image_sha256: Option<String>,
}

/// One VM's run directory and the files in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    pub fn record(&self) -> PathBuf {
        self.path.join(VM_RECORD)
    }
    pub fn qmp_socket(&self) -> PathBuf {
        self.path.join(QMP_SOCKET)
    }
    pub fn qga_socket(&self) -> PathBuf {
        self.path.join(QGA_SOCKET)
    }
    pub fn pidfile(&self) -> PathBuf {
        self.path.join(PIDFILE)
    }
    pub fn console_socket(&self) -> PathBuf {
        self.path.join(CONSOLE_SOCKET)
    }
    pub fn serial_log(&self) -> PathBuf {
        self.path.join(SERIAL_LOG)
    }
    pub fn qemu_log(&self) -> PathBuf {
        self.path.join(QEMU_LOG)
    }
    pub fn guest_shutdown_marker(&self) -> PathBuf {
        self.path.join(GUEST_SHUTDOWN_MARKER)
    }
}

/// Records, locks and observed pids of every VM on this node.
pub struct VmRegistry {
    vms_dir: PathBuf,
    locks: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
    observed_pids: Mutex<HashMap<Uuid, u32>>,
    /// Per VM: the QEMU pid the info was gathered from, and the info.
    guest_infos: Mutex<HashMap<Uuid, (u32, GuestInfo)>>,
}

impl VmRegistry {
    pub fn new(data_dir: &Path) -> VmRegistry {
        VmRegistry {
            vms_dir: data_dir.join("vms"),
            locks: Mutex::default(),
            observed_pids: Mutex::default(),
            guest_infos: Mutex::default(),
        }
    }

    pub fn run_dir(&self, vm_id: Uuid) -> RunDir {
        RunDir {
            path: self.vms_dir.join(vm_id.to_string()),
        }
    }

    pub fn save(&self, record: &VmRecord) -> Result<(), RegistryError> {
        let path = self.run_dir(record.vm_id).record();
        write_json_atomic(&path, record).map_err(|e| RegistryError::Write(path, e))
    }

    /// The VM's record, or `None` if the agent has none.
    /// The pool of the VM's record (empty when there is none), for reports.
    pub fn pool_of(&self, vm_id: Uuid) -> String {
        self.load(vm_id)
            .ok()
            .flatten()
            .map(|r| r.pool)
            .unwrap_or_default()
    }

    pub fn load(&self, vm_id: Uuid) -> Result<Option<VmRecord>, RegistryError> {
        let path = self.run_dir(vm_id).record();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| RegistryError::Corrupt(path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RegistryError::Read(path, e)),
        }
    }

    /// Every VM with a readable record; unreadable ones are logged and skipped.
    pub fn load_all(&self) -> Vec<VmRecord> {
        let Ok(entries) = std::fs::read_dir(&self.vms_dir) else {
            return Vec::new();
        };
        let mut records = Vec::new();
        for entry in entries.flatten() {
            let Some(vm_id) = entry
                .file_name()
                .to_str()
                .and_then(|n| Uuid::parse_str(n).ok())
            else {
                continue;
            };
            match self.load(vm_id) {
                Ok(Some(r)) => records.push(r),
                Ok(None) => {}
                Err(e) => tracing::warn!(%vm_id, error = %e, "skipping VM with a bad record"),
            }
        }
        records.sort_by_key(|r| r.vm_id);
        records
    }

    /// Removes the VM's run dir (record, logs, sockets). Absent is fine.
    pub fn remove(&self, vm_id: Uuid) -> Result<(), RegistryError> {
        let dir = self.run_dir(vm_id).path;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RegistryError::Remove(dir, e)),
        }?;
        self.set_observed_pid(vm_id, None);
        Ok(())
    }

    /// The lock that serializes work on one VM.
    pub fn vm_lock(&self, vm_id: Uuid) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("vm lock table poisoned")
            .entry(vm_id)
            .or_default()
            .clone()
    }

    /// Records the QEMU pid the agent last saw for a VM (`None`: not running).
    pub fn set_observed_pid(&self, vm_id: Uuid, pid: Option<u32>) {
        let mut pids = self.observed_pids.lock().expect("pid table poisoned");
        match pid {
            Some(pid) => pids.insert(vm_id, pid),
            None => pids.remove(&vm_id),
        };
    }

    /// Records what the guest agent of the VM's QEMU `pid` said; returns whether it differs
    /// from what was recorded for that QEMU.
    pub fn set_guest_info(&self, vm_id: Uuid, pid: u32, info: GuestInfo) -> bool {
        let mut infos = self.guest_infos.lock().expect("guest info table poisoned");
        let changed = infos.get(&vm_id) != Some(&(pid, info.clone()));
        infos.insert(vm_id, (pid, info));
        changed
    }

    /// The guest agent info of the VM's current QEMU (`pid`); `None` when nothing was
    /// learned from that QEMU yet (info from an earlier QEMU does not count).
    pub fn guest_info(&self, vm_id: Uuid, pid: u32) -> Option<GuestInfo> {
        let infos = self.guest_infos.lock().expect("guest info table poisoned");
        infos
            .get(&vm_id)
            .filter(|(seen_pid, _)| *seen_pid == pid)
            .map(|(_, info)| info.clone())
    }

    /// Every VM the agent believes is running, with its pid.
    pub fn observed_pids(&self) -> Vec<(Uuid, u32)> {
        let pids = self.observed_pids.lock().expect("pid table poisoned");
        pids.iter().map(|(k, v)| (*k, *v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use otherix_api::Arch;

    fn record(vm_id: Uuid) -> VmRecord {
        VmRecord {
            vm_id,
            name: "web-1".into(),
            pool: "default".into(),
            pool_path: "/pool".into(),
            spec: VmSpec::new("http://x/i.img", Arch::Amd64),
            base_image_sha256: Some("ab".repeat(32)),
        }
    }

    #[test]
    fn registry_save_load_all_remove_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let reg = VmRegistry::new(dir.path());
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        reg.save(&record(a)).unwrap();
        reg.save(&record(b)).unwrap();
        std::fs::create_dir_all(dir.path().join("vms/not-a-uuid")).unwrap();
        assert_eq!(reg.load(a).unwrap(), Some(record(a)));
        assert_eq!(reg.load_all().len(), 2);
        reg.remove(a).unwrap();
        reg.remove(a).unwrap();
        assert_eq!(reg.load(a).unwrap(), None);
        assert_eq!(reg.load_all(), vec![record(b)]);
    }

    #[test]
    fn registry_observed_pids_set_and_clear() {
        let reg = VmRegistry::new(Path::new("/nonexistent"));
        let id = Uuid::new_v4();
        reg.set_observed_pid(id, Some(42));
        assert_eq!(reg.observed_pids(), vec![(id, 42)]);
        reg.set_observed_pid(id, None);
        assert!(reg.observed_pids().is_empty());
    }

    #[test]
    fn registry_guest_info_belongs_to_one_qemu() {
        let reg = VmRegistry::new(Path::new("/nonexistent"));
        let id = Uuid::new_v4();
        let info = GuestInfo {
            connected: true,
            addresses: vec!["10.0.2.15/24".into()],
            ..Default::default()
        };
        assert_eq!(reg.guest_info(id, 7), None);
        assert!(reg.set_guest_info(id, 7, info.clone()));
        assert!(
            !reg.set_guest_info(id, 7, info.clone()),
            "same info is no change"
        );
        assert_eq!(reg.guest_info(id, 7), Some(info.clone()));
        assert_eq!(reg.guest_info(id, 8), None, "a new QEMU starts unknown");
        assert!(
            reg.set_guest_info(id, 8, info),
            "same info from a new QEMU is news"
        );
    }
}
