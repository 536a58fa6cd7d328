//! Pure folding of agent reports into a VM's observed status: what a finished task, an
//! unsolicited `VmReport` or a sync reply means for phase, pid, last error and (when
//! the guest or a failure settled it) the desired phase.

use otherix_api::proto::{VmPower, VmReport};
use otherix_api::{DesiredPhase, ErrorBody, ErrorCode, TaskKind, VmPhase};

use crate::model::VmRecord;

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskOutcome {
    Succeeded,
    /// Failed or cancelled, with the error the task carries.
    Failed(ErrorBody),
}

/// The phase a power state means, when it means one.
fn phase_of(power: VmPower) -> Option<VmPhase> {
    match power {
        VmPower::Running => Some(VmPhase::Running),
        VmPower::Paused => Some(VmPhase::Paused),
        VmPower::Stopped => Some(VmPhase::Stopped),
        VmPower::Absent | VmPower::Unspecified => None,
    }
}

fn apply_runtime(vm: &mut VmRecord, report: &VmReport) {
    vm.pid = (report.pid != 0).then_some(report.pid);
    if !report.serial_log.is_empty() {
        vm.serial_log = Some(report.serial_log.clone());
    }
}

/// Folds the terminal update of a task of `kind` into the VM.
pub fn apply_task_outcome(
    vm: &mut VmRecord,
    kind: TaskKind,
    outcome: &TaskOutcome,
    report: Option<&VmReport>,
    now_ms: i64,
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
                    vm.observed_generation = vm.generation;
                }
                TaskKind::VmStop | TaskKind::VmPoweroff => {
                    vm.phase = VmPhase::Stopped;
                    vm.pid = None;
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
            // Settle desired onto what is there, so the reconciler does not retry the
            // failed task in a loop (a later issue adds retries with backoff).
            match vm.phase {
                VmPhase::Running | VmPhase::Paused => vm.spec.desired_phase = DesiredPhase::Running,
                VmPhase::Stopped => vm.spec.desired_phase = DesiredPhase::Stopped,
                _ => {}
            }
            if kind == TaskKind::VmDelete {
                vm.deletion_requested = false;
            }
        }
    }
}

/// Folds a `VmReport` received outside a task (or in a sync reply) into the VM; returns
/// whether anything changed.
pub fn apply_vm_report(vm: &mut VmRecord, report: &VmReport) -> bool {
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
            if matches!(vm.phase, VmPhase::Running | VmPhase::Paused) {
                // The guest powered itself off (or QEMU died): that is now the intent
                // too, until a restart policy says otherwise.
                vm.spec.desired_phase = DesiredPhase::Stopped;
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
        VmPower::Unspecified => {}
    }
    *vm != before
}

#[cfg(test)]
mod tests {
    use super::*;
    use otherix_api::{Arch, VmSpec};

    fn vm(phase: VmPhase) -> VmRecord {
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
                "start failed stays stopped",
                VmPhase::Starting,
                TaskKind::VmStart,
                err(ErrorCode::QemuFailed),
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
            apply_task_outcome(&mut v, kind, &outcome, rep.as_ref(), 99);
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
        );
        assert!(!v.deletion_requested);
        assert_eq!(v.phase, VmPhase::Stopped);
    }

    #[test]
    fn apply_vm_report_guest_poweroff_sets_desired_stopped() {
        let mut v = vm(VmPhase::Running);
        v.pid = Some(5);
        assert!(apply_vm_report(&mut v, &report(VmPower::Stopped, 0)));
        assert_eq!(v.phase, VmPhase::Stopped);
        assert_eq!(v.pid, None);
        assert_eq!(v.spec.desired_phase, DesiredPhase::Stopped);
    }

    #[test]
    fn apply_vm_report_same_state_changes_nothing() {
        let mut v = vm(VmPhase::Running);
        v.pid = Some(5);
        v.serial_log = Some("/var/serial.log".into());
        assert!(!apply_vm_report(&mut v, &report(VmPower::Running, 5)));
    }

    #[test]
    fn apply_vm_report_absent_marks_failed_agent_lost() {
        let mut v = vm(VmPhase::Stopped);
        assert!(apply_vm_report(&mut v, &report(VmPower::Absent, 0)));
        assert_eq!(v.phase, VmPhase::Failed);
        assert_eq!(v.last_error.unwrap().code, ErrorCode::AgentLost);
    }
}
