//! Pure folding of agent reports into a VM's observed status: what a finished task, an
//! unsolicited `VmReport` or a sync reply means for phase, pid, last error, what the guest
//! agent said and (when the guest or a failure settled it) the desired phase.

use otherix_api::proto::{VmPower, VmReport};
use otherix_api::{DesiredPhase, ErrorBody, ErrorCode, TaskKind, VmPhase};

use crate::lifecycle::phase_of;
use crate::model::{GuestState, VmRecord};
use crate::reconcile::retry::{
    clear_retry, restart_decision, schedule_retry, Backoff, StopReaction,
};

/// Sets the desired phase the reconciler settled on; a spec change, so the generation moves.
fn settle_desired(vm: &mut VmRecord, desired: DesiredPhase) {
    if vm.spec.desired_phase != desired {
        vm.spec.desired_phase = desired;
        vm.generation += 1;
    }
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskOutcome {
    Succeeded,
    /// Failed or cancelled, with the error the task carries.
    Failed(ErrorBody),
}

fn apply_runtime(vm: &mut VmRecord, report: &VmReport) {
    vm.pid = (report.pid != 0).then_some(report.pid);
    if !report.serial_log.is_empty() {
        vm.serial_log = Some(report.serial_log.clone());
    }
}

/// Folds what the guest agent said: a report with `guest` replaces it (remembering that
/// the agent answered during this boot); one without keeps it (no news); a VM whose QEMU
/// is not up has none.
fn apply_guest(vm: &mut VmRecord, report: Option<&VmReport>) {
    let qemu_up = matches!(
        vm.phase,
        VmPhase::Running | VmPhase::Paused | VmPhase::Stopping | VmPhase::Rebooting
    );
    if !qemu_up {
        vm.guest = None;
        return;
    }
    if let Some(info) = report.and_then(|r| r.guest.as_ref()) {
        let mut guest = GuestState::from(info);
        guest.answered |= vm.guest.as_ref().is_some_and(|g| g.answered);
        vm.guest = Some(guest);
    }
}

/// Folds the terminal update of a task of `kind` into the VM. A failed vm.create or
/// vm.start (not a cancelled one) schedules a retry after `backoff`; a failed one-shot op
/// (stop, poweroff, reboot, delete) settles the desired state onto what is there.
pub fn apply_task_outcome(
    vm: &mut VmRecord,
    kind: TaskKind,
    outcome: &TaskOutcome,
    report: Option<&VmReport>,
    now_ms: i64,
    backoff: &Backoff,
) {
    let reported = report.and_then(|r| phase_of(r.power()));
    if let Some(r) = report {
        apply_runtime(vm, r);
    }
    match outcome {
        TaskOutcome::Succeeded => {
            vm.last_error = None;
            match kind {
                TaskKind::VmCreate | TaskKind::VmStart | TaskKind::VmReboot => {
                    let fallback = if kind == TaskKind::VmCreate
                        && vm.spec.desired_phase == DesiredPhase::Stopped
                    {
                        VmPhase::Stopped
                    } else {
                        VmPhase::Running
                    };
                    vm.phase = reported.unwrap_or(fallback);
                    // A new boot: what the last one's guest agent said is gone.
                    vm.guest = None;
                    vm.observed_generation = vm.generation;
                    clear_retry(vm);
                    if matches!(vm.phase, VmPhase::Running | VmPhase::Paused) {
                        vm.booted_spec = Some(vm.spec.clone());
                        vm.booted_at_ms = Some(now_ms);
                    }
                }
                TaskKind::VmStop | TaskKind::VmPoweroff => {
                    vm.phase = VmPhase::Stopped;
                    vm.pid = None;
                    clear_retry(vm);
                }
                TaskKind::VmDelete => {
                    vm.phase = VmPhase::Deleted;
                    vm.pid = None;
                    vm.deleted_at_ms = Some(now_ms);
                }
            }
        }
        TaskOutcome::Failed(error) => {
            vm.last_error = Some(error.clone());
            vm.phase = match (kind, reported) {
                // A create that did not get QEMU up left no usable VM, whatever is on disk.
                (TaskKind::VmCreate, Some(p @ (VmPhase::Running | VmPhase::Paused))) => p,
                (TaskKind::VmCreate, _) => VmPhase::Failed,
                (_, reported) => reported.unwrap_or(VmPhase::Failed),
            };
            if vm.phase == VmPhase::Stopped {
                vm.pid = None;
            }
            let qemu_up = matches!(vm.phase, VmPhase::Running | VmPhase::Paused);
            let retried = matches!(kind, TaskKind::VmCreate | TaskKind::VmStart)
                && error.code != ErrorCode::Cancelled
                && !qemu_up;
            if retried {
                // Desired state stays; the reconciler tries again after backoff.
                schedule_retry(vm, kind, now_ms, backoff);
            } else {
                clear_retry(vm);
                // Settle desired onto what is there, so the reconciler does not redo a
                // failed one-shot op.
                match vm.phase {
                    VmPhase::Running | VmPhase::Paused => settle_desired(vm, DesiredPhase::Running),
                    VmPhase::Stopped => settle_desired(vm, DesiredPhase::Stopped),
                    _ => {}
                }
            }
            if kind == TaskKind::VmDelete {
                vm.deletion_requested = false;
            }
        }
    }
    apply_guest(vm, report);
}

/// Folds a `VmReport` received outside a task (or in a sync reply) into the VM; returns
/// whether anything changed. A VM that stopped on its own while meant to run is restarted
/// (after backoff) or left stopped, as its restart policy says ([`restart_decision`]).
pub fn apply_vm_report(
    vm: &mut VmRecord,
    report: &VmReport,
    now_ms: i64,
    backoff: &Backoff,
) -> bool {
    let before = vm.clone();
    match report.power() {
        VmPower::Running => {
            vm.phase = VmPhase::Running;
            apply_runtime(vm, report);
        }
        VmPower::Paused => {
            vm.phase = VmPhase::Paused;
            apply_runtime(vm, report);
        }
        VmPower::Stopped => {
            if matches!(vm.phase, VmPhase::Running | VmPhase::Paused)
                && vm.spec.desired_phase == DesiredPhase::Running
            {
                let policy = vm.spec.restart_policy;
                match restart_decision(policy, report.guest_shutdown) {
                    // The guest powered itself off (or QEMU died, under `never`): that is
                    // now the intent too.
                    StopReaction::StayStopped => settle_desired(vm, DesiredPhase::Stopped),
                    StopReaction::Restart => {
                        if !report.guest_shutdown {
                            vm.last_error = Some(ErrorBody {
                                code: ErrorCode::QemuFailed,
                                message: format!(
                                    "QEMU exited without a guest shutdown (crashed or killed); \
                                     restart_policy {} starts it again",
                                    policy.as_str()
                                ),
                            });
                        }
                        schedule_retry(vm, TaskKind::VmStart, now_ms, backoff);
                    }
                }
            }
            vm.phase = VmPhase::Stopped;
            apply_runtime(vm, report);
            vm.pid = None;
        }
        VmPower::Absent => {
            if !matches!(
                vm.phase,
                VmPhase::Pending | VmPhase::Deleted | VmPhase::Failed
            ) {
                vm.phase = VmPhase::Failed;
                vm.pid = None;
                vm.last_error = Some(ErrorBody {
                    code: ErrorCode::AgentLost,
                    message: format!(
                        "node {} has no trace of the vm",
                        vm.node.as_deref().unwrap_or("?")
                    ),
                });
            }
        }
        // Guest agent news only (the watcher's reports): power is not part of it.
        VmPower::Unspecified => {}
    }
    apply_guest(vm, Some(report));
    *vm != before
}

#[cfg(test)]
mod tests {
    use super::*;
    use otherix_api::{Arch, VmSpec};

    pub(super) fn vm(phase: VmPhase) -> VmRecord {
        let mut vm = VmRecord::new("web-1".into(), VmSpec::new("http://x/i", Arch::Amd64), 1);
        vm.phase = phase;
        vm.node = Some("n1".into());
        vm
    }

    fn report(power: VmPower, pid: u32) -> VmReport {
        VmReport {
            vm_id: String::new(),
            power: power as i32,
            pid,
            serial_log: "/var/serial.log".into(),
            ..Default::default()
        }
    }

    fn err(code: ErrorCode) -> TaskOutcome {
        TaskOutcome::Failed(ErrorBody {
            code,
            message: "boom".into(),
        })
    }

    #[test]
    fn apply_task_outcome_table() {
        // (name, phase before, kind, outcome, report, phase after, pid after, desired after)
        type Row = (
            &'static str,
            VmPhase,
            TaskKind,
            TaskOutcome,
            Option<VmReport>,
            VmPhase,
            Option<u32>,
            DesiredPhase,
        );
        let table: Vec<Row> = vec![
            (
                "create ok",
                VmPhase::Creating,
                TaskKind::VmCreate,
                TaskOutcome::Succeeded,
                Some(report(VmPower::Running, 42)),
                VmPhase::Running,
                Some(42),
                DesiredPhase::Running,
            ),
            (
                "create ok no report",
                VmPhase::Creating,
                TaskKind::VmCreate,
                TaskOutcome::Succeeded,
                None,
                VmPhase::Running,
                None,
                DesiredPhase::Running,
            ),
            (
                "create failed never ran",
                VmPhase::Creating,
                TaskKind::VmCreate,
                err(ErrorCode::ImageDownloadFailed),
                Some(report(VmPower::Absent, 0)),
                VmPhase::Failed,
                None,
                DesiredPhase::Running,
            ),
            (
                "create failed with a stopped report is still failed",
                VmPhase::Creating,
                TaskKind::VmCreate,
                err(ErrorCode::ImageDownloadFailed),
                Some(report(VmPower::Stopped, 0)),
                VmPhase::Failed,
                None,
                DesiredPhase::Running,
            ),
            (
                "start ok",
                VmPhase::Starting,
                TaskKind::VmStart,
                TaskOutcome::Succeeded,
                Some(report(VmPower::Running, 7)),
                VmPhase::Running,
                Some(7),
                DesiredPhase::Running,
            ),
            (
                "start failed stays stopped, still desired running (retried)",
                VmPhase::Starting,
                TaskKind::VmStart,
                err(ErrorCode::QemuFailed),
                Some(report(VmPower::Stopped, 0)),
                VmPhase::Stopped,
                None,
                DesiredPhase::Running,
            ),
            (
                "start cancelled settles desired stopped",
                VmPhase::Starting,
                TaskKind::VmStart,
                err(ErrorCode::Cancelled),
                Some(report(VmPower::Stopped, 0)),
                VmPhase::Stopped,
                None,
                DesiredPhase::Stopped,
            ),
            (
                "stop ok",
                VmPhase::Stopping,
                TaskKind::VmStop,
                TaskOutcome::Succeeded,
                Some(report(VmPower::Stopped, 0)),
                VmPhase::Stopped,
                None,
                DesiredPhase::Running,
            ),
            (
                "stop timeout keeps running",
                VmPhase::Stopping,
                TaskKind::VmStop,
                err(ErrorCode::StopTimeout),
                Some(report(VmPower::Running, 42)),
                VmPhase::Running,
                Some(42),
                DesiredPhase::Running,
            ),
            (
                "poweroff ok",
                VmPhase::Stopping,
                TaskKind::VmPoweroff,
                TaskOutcome::Succeeded,
                None,
                VmPhase::Stopped,
                None,
                DesiredPhase::Running,
            ),
            (
                "reboot ok new pid",
                VmPhase::Rebooting,
                TaskKind::VmReboot,
                TaskOutcome::Succeeded,
                Some(report(VmPower::Running, 43)),
                VmPhase::Running,
                Some(43),
                DesiredPhase::Running,
            ),
            (
                "delete ok",
                VmPhase::Deleting,
                TaskKind::VmDelete,
                TaskOutcome::Succeeded,
                Some(report(VmPower::Absent, 0)),
                VmPhase::Deleted,
                None,
                DesiredPhase::Running,
            ),
        ];
        for (name, before, kind, outcome, rep, phase, pid, desired) in table {
            let mut v = vm(before);
            v.pid = Some(1);
            apply_task_outcome(
                &mut v,
                kind,
                &outcome,
                rep.as_ref(),
                99,
                &Backoff::default(),
            );
            assert_eq!(v.phase, phase, "{name}");
            let pid_want = if rep.is_none() && phase == VmPhase::Running {
                Some(1)
            } else {
                pid
            };
            assert_eq!(v.pid, pid_want, "{name}");
            assert_eq!(v.spec.desired_phase, desired, "{name}");
            assert_eq!(
                v.last_error.is_some(),
                matches!(outcome, TaskOutcome::Failed(_)),
                "{name}"
            );
            assert_eq!(
                v.deleted_at_ms.is_some(),
                phase == VmPhase::Deleted,
                "{name}"
            );
        }
    }

    #[test]
    fn apply_task_outcome_failed_delete_clears_deletion_request() {
        let mut v = vm(VmPhase::Deleting);
        v.deletion_requested = true;
        apply_task_outcome(
            &mut v,
            TaskKind::VmDelete,
            &err(ErrorCode::DiskFailed),
            Some(&report(VmPower::Stopped, 0)),
            1,
            &Backoff::default(),
        );
        assert!(!v.deletion_requested);
        assert_eq!(v.phase, VmPhase::Stopped);
    }

    #[test]
    fn apply_vm_report_guest_poweroff_sets_desired_stopped() {
        let mut v = vm(VmPhase::Running);
        v.pid = Some(5);
        let mut r = report(VmPower::Stopped, 0);
        r.guest_shutdown = true;
        assert!(apply_vm_report(&mut v, &r, 1, &Backoff::default()));
        assert_eq!(v.phase, VmPhase::Stopped);
        assert_eq!(v.pid, None);
        assert_eq!(v.spec.desired_phase, DesiredPhase::Stopped);
    }

    #[test]
    fn apply_vm_report_same_state_changes_nothing() {
        let mut v = vm(VmPhase::Running);
        v.pid = Some(5);
        v.serial_log = Some("/var/serial.log".into());
        assert!(!apply_vm_report(
            &mut v,
            &report(VmPower::Running, 5),
            1,
            &Backoff::default()
        ));
    }

    #[test]
    fn apply_vm_report_absent_marks_failed_agent_lost() {
        let mut v = vm(VmPhase::Stopped);
        assert!(apply_vm_report(
            &mut v,
            &report(VmPower::Absent, 0),
            1,
            &Backoff::default()
        ));
        assert_eq!(v.phase, VmPhase::Failed);
        assert_eq!(v.last_error.unwrap().code, ErrorCode::AgentLost);
    }

    #[test]
    fn apply_task_outcome_retries_failed_create_and_start_only() {
        let b = Backoff::default();
        // (kind, error, report, retry kind after)
        let table = [
            (
                TaskKind::VmCreate,
                ErrorCode::ImageDownloadFailed,
                VmPower::Absent,
                Some(TaskKind::VmCreate),
            ),
            (
                TaskKind::VmCreate,
                ErrorCode::Cancelled,
                VmPower::Absent,
                None,
            ),
            (
                TaskKind::VmStart,
                ErrorCode::QemuFailed,
                VmPower::Stopped,
                Some(TaskKind::VmStart),
            ),
            (
                TaskKind::VmStart,
                ErrorCode::QemuFailed,
                VmPower::Running,
                None,
            ),
            (
                TaskKind::VmStop,
                ErrorCode::StopTimeout,
                VmPower::Running,
                None,
            ),
            (
                TaskKind::VmPoweroff,
                ErrorCode::Internal,
                VmPower::Running,
                None,
            ),
            (
                TaskKind::VmReboot,
                ErrorCode::QemuFailed,
                VmPower::Stopped,
                None,
            ),
            (
                TaskKind::VmDelete,
                ErrorCode::DiskFailed,
                VmPower::Stopped,
                None,
            ),
        ];
        for (kind, code, power, want) in table {
            let mut v = vm(VmPhase::Starting);
            apply_task_outcome(
                &mut v,
                kind,
                &err(code),
                Some(&report(power, 0)),
                10_000,
                &b,
            );
            assert_eq!(v.retry_kind, want, "{kind} {code} {power:?}");
            if want.is_some() {
                assert_eq!(v.retry_attempts, 1, "{kind}");
                assert_eq!(v.retry_at_ms, Some(12_000), "{kind}: 2 s after the failure");
                assert_eq!(v.spec.desired_phase, DesiredPhase::Running, "{kind}");
            }
        }
    }

    #[test]
    fn apply_task_outcome_backoff_grows_and_boot_clears_retry() {
        let b = Backoff::default();
        let mut v = vm(VmPhase::Starting);
        for (attempt, now) in [(1, 0), (2, 3_000), (3, 8_000)] {
            let r = report(VmPower::Stopped, 0);
            apply_task_outcome(
                &mut v,
                TaskKind::VmStart,
                &err(ErrorCode::QemuFailed),
                Some(&r),
                now,
                &b,
            );
            assert_eq!(v.retry_attempts, attempt);
            assert_eq!(
                v.retry_at_ms,
                Some(now + b.delay(attempt).as_millis() as i64)
            );
        }
        let r = report(VmPower::Running, 9);
        apply_task_outcome(
            &mut v,
            TaskKind::VmStart,
            &TaskOutcome::Succeeded,
            Some(&r),
            20_000,
            &b,
        );
        assert_eq!((v.retry_kind, v.retry_at_ms), (None, None));
        assert_eq!(v.booted_spec.as_ref(), Some(&v.spec));
        assert_eq!(v.booted_at_ms, Some(20_000));
        assert!(v.last_error.is_none());
    }

    #[test]
    fn apply_vm_report_unsolicited_stop_follows_restart_policy() {
        use otherix_api::RestartPolicy::{self, *};
        let b = Backoff::default();
        // (policy, guest_shutdown, restarted)
        let table: [(RestartPolicy, bool, bool); 6] = [
            (Always, true, true),
            (Always, false, true),
            (OnFailure, true, false),
            (OnFailure, false, true),
            (Never, true, false),
            (Never, false, false),
        ];
        for (policy, guest_shutdown, restarted) in table {
            let mut v = vm(VmPhase::Running);
            v.spec.restart_policy = policy;
            v.pid = Some(5);
            let gen = v.generation;
            let mut r = report(VmPower::Stopped, 0);
            r.guest_shutdown = guest_shutdown;
            assert!(apply_vm_report(&mut v, &r, 1_000, &b));
            let name = format!("{policy:?} guest_shutdown={guest_shutdown}");
            assert_eq!((v.phase, v.pid), (VmPhase::Stopped, None), "{name}");
            if restarted {
                assert_eq!(v.spec.desired_phase, DesiredPhase::Running, "{name}");
                assert_eq!(v.retry_kind, Some(TaskKind::VmStart), "{name}");
                assert_eq!(v.retry_at_ms, Some(3_000), "{name}");
                assert_eq!(v.generation, gen, "{name}");
                assert_eq!(v.last_error.is_some(), !guest_shutdown, "{name}");
            } else {
                assert_eq!(v.spec.desired_phase, DesiredPhase::Stopped, "{name}");
                assert_eq!(v.retry_kind, None, "{name}");
                assert_eq!(v.generation, gen + 1, "{name}: desired_phase is spec");
            }
        }
    }

    #[test]
    fn apply_vm_report_stop_of_vm_meant_stopped_is_not_restarted() {
        let mut v = vm(VmPhase::Running);
        v.spec.desired_phase = DesiredPhase::Stopped;
        v.spec.restart_policy = otherix_api::RestartPolicy::Always;
        apply_vm_report(&mut v, &report(VmPower::Stopped, 0), 1, &Backoff::default());
        assert_eq!(v.retry_kind, None);
    }
}

#[cfg(test)]
#[path = "observe_guest_tests.rs"]
mod guest_tests;
