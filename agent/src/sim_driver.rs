//! A simulated [`VmDriver`] for control-plane scale benchmarks only (kwok-style): VMs are
//! entries in memory whose power state follows the tasks, with plausible delays and no
//! QEMU, disk or image. Used by the `otherix-simnode` binary (many simulated nodes in one
//! process, each with a real gateway session); never by the real agent, never by a
//! behaviour test. [`SimVms`] is the pure state machine; [`SimDriver`] adds the delays.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use otherix_api::proto::{CachedImageInfo, VmPower, VmReport};
use otherix_api::ApiError;
use uuid::Uuid;

use crate::driver::{SyncOp, VmDriver, VmTarget};
use crate::outbox::Progress;
use crate::serial_log::LogChunk;

/// How long each simulated primitive takes (defaults close to what the real agent
/// measures from a cached image under TCG: overlay ~15 ms, QEMU up ~90 ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimTimings {
    pub prepare: Duration,
    pub start: Duration,
    pub stop: Duration,
    pub poweroff: Duration,
    pub delete: Duration,
}

impl Default for SimTimings {
    fn default() -> Self {
        SimTimings {
            prepare: Duration::from_millis(15),
            start: Duration::from_millis(90),
            stop: Duration::from_millis(300),
            poweroff: Duration::from_millis(20),
            delete: Duration::from_millis(20),
        }
    }
}

/// One simulated VM.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SimVm {
    pool: String,
    power: VmPower,
    pid: u32,
    /// Stopped by its guest (ACPI powerdown) rather than killed.
    guest_shutdown: bool,
}

/// The pure state of a simulated node's VMs: what each primitive does to it.
#[derive(Debug, Default)]
pub struct SimVms {
    vms: HashMap<Uuid, SimVm>,
    next_pid: u32,
    node: String,
}

/// First fake pid handed out; above the usual `pid_max` defaults so it names no process.
const FIRST_PID: u32 = 5_000_000;

impl SimVms {
    pub fn new(node: &str) -> SimVms {
        SimVms {
            vms: HashMap::new(),
            next_pid: FIRST_PID,
            node: node.to_string(),
        }
    }

    fn entry(&mut self, vm_id: Uuid, pool: &str) -> &mut SimVm {
        self.vms.entry(vm_id).or_insert_with(|| SimVm {
            pool: pool.to_string(),
            power: VmPower::Stopped,
            pid: 0,
            guest_shutdown: false,
        })
    }

    /// The VM exists (stopped unless it already ran).
    pub fn prepare(&mut self, vm_id: Uuid, pool: &str) -> VmReport {
        self.entry(vm_id, pool);
        self.report(vm_id)
    }

    /// Running (idempotent: a running VM keeps its pid; a paused one stays paused).
    pub fn start(&mut self, vm_id: Uuid, pool: &str) -> VmReport {
        let pid = self.next_pid;
        let vm = self.entry(vm_id, pool);
        if vm.power == VmPower::Stopped {
            vm.power = VmPower::Running;
            vm.pid = pid;
            vm.guest_shutdown = false;
            self.next_pid = self.next_pid.wrapping_add(1).max(FIRST_PID);
        }
        self.report(vm_id)
    }

    /// Stopped; `graceful` marks a guest shutdown (ACPI) rather than a kill.
    pub fn stop(&mut self, vm_id: Uuid, graceful: bool) -> VmReport {
        if let Some(vm) = self.vms.get_mut(&vm_id) {
            if vm.power != VmPower::Stopped {
                vm.power = VmPower::Stopped;
                vm.pid = 0;
                vm.guest_shutdown = graceful;
            }
        }
        self.report(vm_id)
    }

    /// Gone (absent).
    pub fn delete(&mut self, vm_id: Uuid) -> VmReport {
        self.vms.remove(&vm_id);
        self.report(vm_id)
    }

    /// pause/resume/reset as QMP would allow them; `conflict` otherwise.
    pub fn sync_op(&mut self, vm_id: Uuid, op: SyncOp) -> Result<VmReport, ApiError> {
        let Some(vm) = self.vms.get_mut(&vm_id) else {
            return Err(ApiError::conflict(format!(
                "vm {vm_id} is stopped; cannot {}",
                op.as_str()
            )));
        };
        vm.power = match (op, vm.power) {
            (SyncOp::Pause, VmPower::Running) => VmPower::Paused,
            (SyncOp::Resume, VmPower::Paused) => VmPower::Running,
            (SyncOp::Reset, p @ (VmPower::Running | VmPower::Paused)) => p,
            (_, p) => {
                let state = match p {
                    VmPower::Running => "running",
                    VmPower::Paused => "paused",
                    _ => "stopped",
                };
                return Err(ApiError::conflict(format!(
                    "vm {vm_id} is {state}; cannot {}",
                    op.as_str()
                )));
            }
        };
        Ok(self.report(vm_id))
    }

    pub fn report(&self, vm_id: Uuid) -> VmReport {
        match self.vms.get(&vm_id) {
            None => VmReport {
                vm_id: vm_id.to_string(),
                power: VmPower::Absent as i32,
                ..Default::default()
            },
            Some(vm) => VmReport {
                vm_id: vm_id.to_string(),
                power: vm.power as i32,
                pid: vm.pid,
                pool: vm.pool.clone(),
                serial_log: format!("/simulated/{}/{vm_id}/serial.log", self.node),
                guest_shutdown: vm.guest_shutdown,
                detail: "simulated".to_string(),
                ..Default::default()
            },
        }
    }

    pub fn report_all(&self) -> Vec<VmReport> {
        self.vms.keys().map(|id| self.report(*id)).collect()
    }

    pub fn len(&self) -> usize {
        self.vms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vms.is_empty()
    }
}

/// [`SimVms`] behind the [`VmDriver`] trait, each primitive taking its [`SimTimings`].
pub struct SimDriver {
    vms: Mutex<SimVms>,
    timings: SimTimings,
}

impl SimDriver {
    pub fn new(node: &str, timings: SimTimings) -> SimDriver {
        SimDriver {
            vms: Mutex::new(SimVms::new(node)),
            timings,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut SimVms) -> T) -> T {
        f(&mut self.vms.lock().expect("sim vms poisoned"))
    }
}

impl VmDriver for SimDriver {
    fn remember(&self, _vm: &VmTarget) -> Result<(), ApiError> {
        Ok(())
    }

    async fn prepare(&self, vm: &VmTarget, progress: &Progress) -> Result<(), ApiError> {
        progress.phase("creating disk");
        tokio::time::sleep(self.timings.prepare).await;
        self.with(|s| s.prepare(vm.vm_id, &vm.pool));
        Ok(())
    }

    async fn start(&self, vm: &VmTarget, progress: &Progress) -> Result<VmReport, ApiError> {
        progress.phase("starting qemu");
        tokio::time::sleep(self.timings.start).await;
        Ok(self.with(|s| s.start(vm.vm_id, &vm.pool)))
    }

    async fn stop(
        &self,
        vm: &VmTarget,
        _timeout: Duration,
        progress: &Progress,
    ) -> Result<VmReport, ApiError> {
        progress.phase("powerdown sent");
        tokio::time::sleep(self.timings.stop).await;
        Ok(self.with(|s| s.stop(vm.vm_id, true)))
    }

    async fn poweroff(&self, vm: &VmTarget, _progress: &Progress) -> Result<VmReport, ApiError> {
        tokio::time::sleep(self.timings.poweroff).await;
        Ok(self.with(|s| s.stop(vm.vm_id, false)))
    }

    async fn delete(&self, vm: &VmTarget, _progress: &Progress) -> Result<VmReport, ApiError> {
        tokio::time::sleep(self.timings.delete).await;
        Ok(self.with(|s| s.delete(vm.vm_id)))
    }

    async fn report(&self, vm_id: Uuid) -> VmReport {
        self.with(|s| s.report(vm_id))
    }

    async fn report_all(&self) -> Vec<VmReport> {
        self.with(|s| s.report_all())
    }

    async fn read_serial_log(
        &self,
        _vm_id: Uuid,
        offset: u64,
        _max_bytes: u64,
    ) -> Result<LogChunk, ApiError> {
        Ok(LogChunk {
            data: Vec::new(),
            next_offset: offset,
            eof: true,
        })
    }

    async fn pool_images(
        &self,
        _pool: &str,
        _prune: bool,
    ) -> Result<Vec<CachedImageInfo>, ApiError> {
        Ok(Vec::new())
    }

    async fn sync_op(&self, vm_id: Uuid, op: SyncOp) -> Result<VmReport, ApiError> {
        self.with(|s| s.sync_op(vm_id, op))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn power(r: &VmReport) -> VmPower {
        r.power()
    }

    #[test]
    fn primitives_table() {
        let id = Uuid::new_v4();
        // (step, power after, pid set, guest_shutdown)
        type Step = fn(&mut SimVms, Uuid) -> VmReport;
        let table: [(&str, Step, VmPower, bool, bool); 9] = [
            (
                "report of an unknown vm",
                |s, id| s.report(id),
                VmPower::Absent,
                false,
                false,
            ),
            (
                "prepare",
                |s, id| s.prepare(id, "default"),
                VmPower::Stopped,
                false,
                false,
            ),
            (
                "start",
                |s, id| s.start(id, "default"),
                VmPower::Running,
                true,
                false,
            ),
            (
                "start again",
                |s, id| s.start(id, "default"),
                VmPower::Running,
                true,
                false,
            ),
            (
                "graceful stop",
                |s, id| s.stop(id, true),
                VmPower::Stopped,
                false,
                true,
            ),
            (
                "stop again",
                |s, id| s.stop(id, false),
                VmPower::Stopped,
                false,
                true,
            ),
            (
                "restart",
                |s, id| s.start(id, "default"),
                VmPower::Running,
                true,
                false,
            ),
            (
                "poweroff",
                |s, id| s.stop(id, false),
                VmPower::Stopped,
                false,
                false,
            ),
            (
                "delete",
                |s, id| s.delete(id),
                VmPower::Absent,
                false,
                false,
            ),
        ];
        let mut vms = SimVms::new("sim-1");
        for (what, step, want, has_pid, shutdown) in table {
            let r = step(&mut vms, id);
            assert_eq!(power(&r), want, "{what}");
            assert_eq!(r.pid != 0, has_pid, "{what}: pid {}", r.pid);
            assert_eq!(r.guest_shutdown, shutdown, "{what}");
            assert_eq!(r.vm_id, id.to_string(), "{what}");
        }
        assert!(vms.is_empty());
    }

    #[test]
    fn a_running_vm_keeps_its_pid_and_each_vm_gets_its_own() {
        let mut vms = SimVms::new("sim-1");
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let pa = vms.start(a, "default").pid;
        assert_eq!(vms.start(a, "default").pid, pa);
        let pb = vms.start(b, "default").pid;
        assert_ne!(pa, pb);
        assert!(pa >= FIRST_PID && pb >= FIRST_PID);
        let mut all: Vec<String> = vms.report_all().into_iter().map(|r| r.vm_id).collect();
        all.sort();
        let mut want = vec![a.to_string(), b.to_string()];
        want.sort();
        assert_eq!(all, want);
        assert_eq!(vms.report(a).pool, "default");
    }

    #[test]
    fn sync_ops_table() {
        let id = Uuid::new_v4();
        // (setup, op, Ok(power) or Err)
        type Case = (&'static str, Option<VmPower>, SyncOp, Result<VmPower, ()>);
        let table: [Case; 8] = [
            (
                "pause running",
                Some(VmPower::Running),
                SyncOp::Pause,
                Ok(VmPower::Paused),
            ),
            (
                "pause paused",
                Some(VmPower::Paused),
                SyncOp::Pause,
                Err(()),
            ),
            (
                "pause stopped",
                Some(VmPower::Stopped),
                SyncOp::Pause,
                Err(()),
            ),
            (
                "resume paused",
                Some(VmPower::Paused),
                SyncOp::Resume,
                Ok(VmPower::Running),
            ),
            (
                "resume running",
                Some(VmPower::Running),
                SyncOp::Resume,
                Err(()),
            ),
            (
                "reset running",
                Some(VmPower::Running),
                SyncOp::Reset,
                Ok(VmPower::Running),
            ),
            (
                "reset paused",
                Some(VmPower::Paused),
                SyncOp::Reset,
                Ok(VmPower::Paused),
            ),
            ("reset absent", None, SyncOp::Reset, Err(())),
        ];
        for (what, setup, op, want) in table {
            let mut vms = SimVms::new("sim-1");
            match setup {
                None => {}
                Some(VmPower::Stopped) => {
                    vms.prepare(id, "default");
                }
                Some(VmPower::Running) => {
                    vms.start(id, "default");
                }
                Some(_) => {
                    vms.start(id, "default");
                    vms.sync_op(id, SyncOp::Pause).unwrap();
                }
            }
            let got = vms.sync_op(id, op);
            match (got, want) {
                (Ok(r), Ok(p)) => assert_eq!(power(&r), p, "{what}"),
                (Err(e), Err(())) => {
                    assert_eq!(e.code, otherix_api::ErrorCode::Conflict, "{what}")
                }
                (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }
    }
}
