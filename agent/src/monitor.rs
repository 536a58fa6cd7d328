//! Watches the QEMU processes the agent believes are running and sends an unsolicited
//! `VmReport` (STOPPED) when one exits outside a task (guest powered off, QEMU crashed or
//! was killed), removing its tap device. VMs with a task in progress are left to that
//! task. It also keeps running VMs' serial logs under their size cap.

use std::sync::Arc;
use std::time::Duration;

use otherix_api::proto::VmPower;

use crate::network::remove_vm_tap;
use crate::outbox::{power_report, Outbox};
use crate::qemu::pid_alive;
use crate::serial_log::{rotate_if_over, SERIAL_LOG_CAP};
use crate::vm_registry::VmRegistry;

/// How often the monitor checks processes.
pub const MONITOR_INTERVAL: Duration = Duration::from_millis(500);

/// Runs forever, checking every [`MONITOR_INTERVAL`].
pub async fn run(registry: Arc<VmRegistry>, outbox: Outbox) {
    let mut tick = tokio::time::interval(MONITOR_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        check_once(&registry, &outbox);
    }
}

/// One pass: reports every observed VM whose QEMU is gone and that no task holds.
pub fn check_once(registry: &VmRegistry, outbox: &Outbox) {
    for (vm_id, pid) in registry.observed_pids() {
        let run = registry.run_dir(vm_id);
        if pid_alive(pid, &run.path) {
            if let Err(e) = rotate_if_over(&run.serial_log(), SERIAL_LOG_CAP) {
                tracing::warn!(%vm_id, error = %e, "cannot rotate serial log");
            }
            continue;
        }
        let lock = registry.vm_lock(vm_id);
        let Ok(_no_task) = lock.try_lock() else {
            continue;
        };
        if !registry.observed_pids().contains(&(vm_id, pid)) {
            continue;
        }
        registry.set_observed_pid(vm_id, None);
        let _ = std::fs::remove_file(run.qmp_socket());
        let _ = std::fs::remove_file(run.pidfile());
        remove_vm_tap(vm_id);
        let mut report = power_report(&vm_id.to_string(), VmPower::Stopped);
        report.pool = registry
            .load(vm_id)
            .ok()
            .flatten()
            .map(|r| r.pool)
            .unwrap_or_default();
        report.serial_log = run.serial_log().display().to_string();
        report.detail = format!(
            "QEMU (pid {pid}) exited outside a task: the guest powered off or the process was killed"
        );
        tracing::warn!(%vm_id, pid, "VM stopped outside a task");
        outbox.vm_report(report);
    }
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

        check_once(&registry, &outbox);
        check_once(&registry, &outbox);

        let Some(Body::VmReport(report)) = rx.try_recv().unwrap().body else {
            panic!("expected a VmReport");
        };
        assert_eq!(report.vm_id, vm_id.to_string());
        assert_eq!(report.power, VmPower::Stopped as i32);
        assert!(
            report.detail.contains("exited outside a task"),
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

        check_once(&registry, &outbox);

        assert!(rx.try_recv().is_err());
        assert_eq!(registry.observed_pids().len(), 1);
    }
}
