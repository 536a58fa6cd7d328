//! Helpers shared by the real-QEMU integration tests: test guest images, a Drop guard
//! that kills every QEMU a test started, VM targets and serial console waits.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use otherix_agent::driver::VmTarget;
use otherix_agent::host::Accel;
use otherix_agent::local_driver::LocalDriver;
use otherix_agent::outbox::{Outbox, Progress};
use otherix_agent::qemu::process::kill_pid;
use otherix_agent::qemu::{pid_alive, read_pid};
use otherix_agent::vm_registry::{RunDir, VmRegistry};
use otherix_api::{Arch, VmSpec};
use uuid::Uuid;

pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
pub const STOP_TIMEOUT: Duration = Duration::from_secs(90);

/// A test guest from `target/test-images/`; panics (never skips) when it is missing.
pub fn test_image(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/test-images")
        .join(name);
    assert!(
        path.is_file(),
        "test guest image {} is missing; build it with tests/images/build.sh",
        path.display()
    );
    path.canonicalize().unwrap()
}

/// Kills every QEMU this test started, even when an assertion fails.
#[derive(Default)]
pub struct KillQemuOnDrop {
    run_dirs: Mutex<Vec<RunDir>>,
}

impl KillQemuOnDrop {
    pub fn watch(&self, run: RunDir) {
        self.run_dirs.lock().unwrap().push(run);
    }
}

impl Drop for KillQemuOnDrop {
    fn drop(&mut self) {
        for run in self.run_dirs.lock().unwrap().iter() {
            if let Some(pid) = read_pid(&run.pidfile()).filter(|p| pid_alive(*p, &run.path)) {
                eprintln!("cleanup: killing QEMU pid {pid}");
                kill_pid(pid);
            }
        }
    }
}

/// A driver on a fresh temp dir, its registry, pool path and a progress sink.
/// Fields drop in order: the guard kills QEMU while the pidfiles in `dir` still exist.
pub struct Node {
    pub guard: KillQemuOnDrop,
    pub dir: tempfile::TempDir,
    pub pool: PathBuf,
    pub registry: Arc<VmRegistry>,
    pub driver: LocalDriver,
    pub progress: Progress,
}

impl Node {
    pub fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("pool");
        std::fs::create_dir_all(&pool).unwrap();
        let registry = Arc::new(VmRegistry::new(&dir.path().join("data")));
        let driver = LocalDriver::new(registry.clone(), Accel::Tcg, true)
            .with_pools(vec![("default".into(), pool.clone())])
            .with_systemd_scope(false);
        let (outbox, rx) = Outbox::new();
        drop(rx);
        Node {
            dir,
            pool,
            registry,
            driver,
            progress: Progress::new("test-task", outbox),
            guard: KillQemuOnDrop::default(),
        }
    }

    /// A VM of `arch` booting `image`, 1 vCPU, 256 MiB, watched by the guard.
    pub fn target(&self, name: &str, image: &Path, arch: Arch) -> VmTarget {
        let mut spec = VmSpec::new(format!("file://{}", image.display()), arch);
        spec.vcpus = 1;
        spec.memory_mb = 256;
        let vm = VmTarget {
            vm_id: Uuid::new_v4(),
            name: name.into(),
            pool: "default".into(),
            pool_path: self.pool.clone(),
            spec: Some(spec),
            bridge: String::new(),
            firmware: None,
        };
        self.guard.watch(self.registry.run_dir(vm.vm_id));
        vm
    }

    pub fn run_dir(&self, vm: &VmTarget) -> RunDir {
        self.registry.run_dir(vm.vm_id)
    }
}

/// Waits until the serial log contains `marker`; returns the log.
pub async fn wait_for_serial(run: &RunDir, marker: &str, within: Duration) -> String {
    let started = Instant::now();
    loop {
        let log = String::from_utf8_lossy(&std::fs::read(run.serial_log()).unwrap_or_default())
            .into_owned();
        if log.contains(marker) {
            eprintln!("{marker} after {:?}", started.elapsed());
            return log;
        }
        assert!(
            started.elapsed() < within,
            "{marker} not on the serial console within {within:?}; log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The text the guest printed between `OTHERIX-SEED-BEGIN file` and `OTHERIX-SEED-END
/// file`, with the tty's `\r\n` turned back into `\n`.
pub fn seed_section(serial: &str, file: &str) -> Option<String> {
    let text = serial.replace("\r\n", "\n");
    let begin = format!("OTHERIX-SEED-BEGIN {file}\n");
    let end = format!("OTHERIX-SEED-END {file}\n");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    Some(text[start..stop].to_string())
}
