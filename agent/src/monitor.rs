//! Watches the QEMU processes the agent believes are running and sends an unsolicited
//! `VmReport` (STOPPED) when one stops outside a task: a guest that powered itself off
//! (QEMU, run with `-no-shutdown`, waits in run state `shutdown`; the monitor records the
//! marker and quits it: `guest_shutdown = true`), or a QEMU that crashed or was killed
//! (`guest_shutdown = false`), removing its tap device. VMs with a task in progress are
//! left to that task (the monitor acts only under the VM's lock). Each idle running VM
//! costs one short QMP connection (`query-status`) per pass; QEMU's QMP socket serves one
//! client at a time, so a sync op arriving meanwhile waits those few milliseconds. It also
//! keeps running VMs' serial logs under their size cap.

use std::sync::Arc;
use std::time::Duration;

use otherix_api::proto::VmPower;

use crate::guest_power::{
    self, clear_dead_qemu, decide, finish_guest_shutdown, Decision, QemuSeen,
};
use crate::outbox::{power_report, Outbox};
use crate::qemu::pid_alive;
use crate::serial_log::{rotate_if_over, SERIAL_LOG_CAP};
use crate::vm_registry::{RunDir, VmRegistry};

/// How often the monitor checks processes (and asks each idle VM's QMP for its status).
pub const MONITOR_INTERVAL: Duration = Duration::from_millis(500);
/// How long the monitor waits for one VM's QMP `query-status` before moving on.
const MONITOR_QMP_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs forever, checking every [`MONITOR_INTERVAL`].
pub async fn run(registry: Arc<VmRegistry>, outbox: Outbox) {
    let mut tick = tokio::time::interval(MONITOR_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        check_once(&registry, &outbox).await;
    }
}

/// One pass: reports every observed VM that no task holds and whose QEMU is gone or whose
/// guest has powered off.
pub async fn check_once(registry: &VmRegistry, outbox: &Outbox) {
    for (vm_id, pid) in registry.observed_pids() {
        let run = registry.run_dir(vm_id);
        if pid_alive(pid, &run.path) {
            if let Err(e) = rotate_if_over(&run.serial_log(), SERIAL_LOG_CAP) {
                tracing::warn!(%vm_id, error = %e, "cannot rotate serial log");
            }
        }
        let lock = registry.vm_lock(vm_id);
        // Look without holding the lock (a task arriving meanwhile must not find the VM
        // busy and report a spurious "waiting for another task" phase) ...
        if lock.try_lock().is_err() {
            continue;
        }
        if observe(&run, pid).await.power != VmPower::Stopped {
            continue;
        }
        // ... and act only under it, after looking again: a task may have come and gone.
        let Ok(_no_task) = lock.try_lock() else {
            continue;
        };
        if !registry.observed_pids().contains(&(vm_id, pid)) {
            continue;
        }
        let decision = observe(&run, pid).await;
        if decision.power != VmPower::Stopped {
            continue;
        }
        if decision.finish_shutdown {
            if !finish_guest_shutdown(&run, vm_id, pid).await {
                tracing::error!(%vm_id, pid, "QEMU of a powered-off guest survived SIGKILL");
                continue;
            }
        } else {
            clear_dead_qemu(&run, vm_id);
        }
        registry.set_observed_pid(vm_id, None);
        let mut report = power_report(&vm_id.to_string(), VmPower::Stopped);
        report.pool = registry.pool_of(vm_id);
        report.serial_log = run.serial_log().display().to_string();
        report.guest_shutdown = decision.guest_shutdown;
        report.detail = decision.detail;
        tracing::warn!(
            %vm_id,
            pid,
            guest_shutdown = report.guest_shutdown,
            detail = report.detail,
            "VM stopped outside a task"
        );
        outbox.vm_report(report).await;
    }
}

/// What the monitor makes of a VM it last saw running as `pid`.
async fn observe(run: &RunDir, pid: u32) -> Decision {
    let seen = if pid_alive(pid, &run.path) {
        match guest_power::query_status(run, MONITOR_QMP_TIMEOUT).await {
            Ok(status) => QemuSeen::Status(status),
            // A QEMU that just exited closes its socket first: look at the pid again.
            Err(_) if !pid_alive(pid, &run.path) => QemuSeen::Gone { was_running: true },
            Err(e) => QemuSeen::NoQmp(e),
        }
    } else {
        QemuSeen::Gone { was_running: true }
    };
    decide(&seen, run.guest_shutdown_marker().exists())
}

#[cfg(test)]
mod tests {
    use super::*;
    use otherix_api::proto::agent_message::Body;
    use uuid::Uuid;

    #[tokio::test]
    async fn check_once_dead_pid_reports_stopped_once() {
        let dir = tempfile::tempdir().unwrap();
        let registry = VmRegistry::new(dir.path());
        let (outbox, mut rx) = Outbox::new();
        let vm_id = Uuid::new_v4();
        registry.set_observed_pid(vm_id, Some(u32::MAX - 1));

        check_once(&registry, &outbox).await;
        check_once(&registry, &outbox).await;

        let Some(Body::VmReport(report)) = rx.try_recv().unwrap().body else {
            panic!("expected a VmReport");
        };
        assert_eq!(report.vm_id, vm_id.to_string());
        assert_eq!(report.power, VmPower::Stopped as i32);
        assert!(!report.guest_shutdown);
        assert!(
            report
                .detail
                .starts_with(crate::guest_power::CRASHED_DETAIL),
            "{}",
            report.detail
        );
        assert!(rx.try_recv().is_err(), "reported twice");
    }

    #[tokio::test]
    async fn check_once_vm_with_task_in_progress_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let registry = VmRegistry::new(dir.path());
        let (outbox, mut rx) = Outbox::new();
        let vm_id = Uuid::new_v4();
        registry.set_observed_pid(vm_id, Some(u32::MAX - 1));
        let lock = registry.vm_lock(vm_id);
        let _task = lock.lock().await;

        check_once(&registry, &outbox).await;

        assert!(rx.try_recv().is_err());
        assert_eq!(registry.observed_pids().len(), 1);
    }
}
