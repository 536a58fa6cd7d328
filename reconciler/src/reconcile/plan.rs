//! The pure reconcile decision: from a VM's desired and observed state and its in-flight
//! task, what to do next. No I/O; the loop in `reconcile/mod.rs` carries it out.

use otherix_api::{DesiredPhase, TaskKind, VmPhase};

use crate::model::{RequestedOp, VmRecord};

/// What the reconciler should do for one VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Desired and observed agree, or something else must happen first.
    Nothing,
    /// Persist and dispatch a task of this kind.
    Emit(TaskKind),
    /// Deletion of a VM that never reached a node: soft-delete the row directly.
    MarkDeleted,
}

/// The facts `plan` looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanInput {
    /// The stored phase (not the `unknown` users see while the node is down).
    pub phase: VmPhase,
    pub desired: DesiredPhase,
    pub requested_op: Option<RequestedOp>,
    pub deletion_requested: bool,
    /// The VM has been placed on a node.
    pub placed: bool,
    /// The VM's node is ready (true when not placed).
    pub node_ready: bool,
    /// Kind of the pending or running task, if any.
    pub in_flight: Option<TaskKind>,
    /// A retry owed after a failed vm.create / vm.start or a crash.
    pub retry: Option<TaskKind>,
    /// That retry's backoff has not elapsed yet.
    pub retry_waiting: bool,
}

impl PlanInput {
    /// The facts of `vm` at `now_ms`.
    pub fn from_vm(vm: &VmRecord, in_flight: Option<TaskKind>, now_ms: i64) -> Self {
        PlanInput {
            phase: vm.phase,
            desired: vm.spec.desired_phase,
            requested_op: vm.requested_op,
            deletion_requested: vm.deletion_requested,
            placed: vm.node.is_some(),
            node_ready: vm.node_ready,
            in_flight,
            retry: vm.retry_kind,
            retry_waiting: vm.retry_at_ms.is_some_and(|at| now_ms < at),
        }
    }
}

/// Decides the next step for one VM.
pub fn plan(vm: &PlanInput) -> Action {
    if vm.in_flight.is_some() || vm.phase == VmPhase::Deleted {
        return Action::Nothing;
    }
    if vm.deletion_requested {
        // A delete of a placed VM is queued even while its node is down; the agent gets
        // it when it re-registers.
        return if vm.placed {
            Action::Emit(TaskKind::VmDelete)
        } else {
            Action::MarkDeleted
        };
    }
    if vm.phase == VmPhase::Pending {
        return Action::Emit(TaskKind::VmCreate);
    }
    if vm.placed && !vm.node_ready {
        return Action::Nothing;
    }
    if let Some(op) = vm.requested_op {
        return Action::Emit(op.task_kind());
    }
    let retry_due = |kind: TaskKind| vm.retry == Some(kind) && !vm.retry_waiting;
    match (vm.phase, vm.desired) {
        // A failed create or start is retried once its backoff elapsed; any other failure
        // waits for the user.
        (VmPhase::Failed, _) if retry_due(TaskKind::VmCreate) => Action::Emit(TaskKind::VmCreate),
        (VmPhase::Failed, DesiredPhase::Running) if retry_due(TaskKind::VmStart) => {
            Action::Emit(TaskKind::VmStart)
        }
        (VmPhase::Failed, _) => Action::Nothing,
        (VmPhase::Stopped, DesiredPhase::Running)
            if vm.retry == Some(TaskKind::VmStart) && vm.retry_waiting =>
        {
            Action::Nothing
        }
        (VmPhase::Stopped, DesiredPhase::Running) => Action::Emit(TaskKind::VmStart),
        (VmPhase::Running | VmPhase::Paused, DesiredPhase::Stopped) => {
            Action::Emit(TaskKind::VmStop)
        }
        _ => Action::Nothing,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A placed VM running as desired, nothing in flight (the fixture other tables vary).
    pub(in crate::reconcile) fn base() -> PlanInput {
        PlanInput {
            phase: VmPhase::Running,
            desired: DesiredPhase::Running,
            requested_op: None,
            deletion_requested: false,
            placed: true,
            node_ready: true,
            in_flight: None,
            retry: None,
            retry_waiting: false,
        }
    }

    #[test]
    fn plan_table() {
        type Setup = fn(&mut PlanInput);
        let table: &[(&str, Setup, Action)] = &[
            ("running as desired", |_| {}, Action::Nothing),
            (
                "in-flight task waits",
                |v| {
                    v.in_flight = Some(TaskKind::VmStart);
                    v.deletion_requested = true;
                },
                Action::Nothing,
            ),
            (
                "deletion of placed vm",
                |v| v.deletion_requested = true,
                Action::Emit(TaskKind::VmDelete),
            ),
            (
                "deletion while node down is queued",
                |v| {
                    v.deletion_requested = true;
                    v.node_ready = false;
                },
                Action::Emit(TaskKind::VmDelete),
            ),
            (
                "deletion of never-placed vm",
                |v| {
                    v.phase = VmPhase::Pending;
                    v.placed = false;
                    v.deletion_requested = true;
                },
                Action::MarkDeleted,
            ),
            (
                "already deleted",
                |v| {
                    v.phase = VmPhase::Deleted;
                    v.deletion_requested = true;
                },
                Action::Nothing,
            ),
            (
                "requested stop",
                |v| {
                    v.requested_op = Some(RequestedOp::Stop { timeout_ms: 1000 });
                    v.desired = DesiredPhase::Stopped;
                },
                Action::Emit(TaskKind::VmStop),
            ),
            (
                "requested poweroff",
                |v| {
                    v.requested_op = Some(RequestedOp::Poweroff);
                    v.desired = DesiredPhase::Stopped;
                },
                Action::Emit(TaskKind::VmPoweroff),
            ),
            (
                "requested reboot",
                |v| v.requested_op = Some(RequestedOp::Reboot { timeout_ms: 1000 }),
                Action::Emit(TaskKind::VmReboot),
            ),
            (
                "requested op waits for a ready node",
                |v| {
                    v.requested_op = Some(RequestedOp::Poweroff);
                    v.node_ready = false;
                },
                Action::Nothing,
            ),
            (
                "not yet created",
                |v| {
                    v.phase = VmPhase::Pending;
                    v.placed = false;
                },
                Action::Emit(TaskKind::VmCreate),
            ),
            (
                "not yet created, desired stopped, still created",
                |v| {
                    v.phase = VmPhase::Pending;
                    v.placed = false;
                    v.desired = DesiredPhase::Stopped;
                },
                Action::Emit(TaskKind::VmCreate),
            ),
            (
                "stopped, desired running",
                |v| v.phase = VmPhase::Stopped,
                Action::Emit(TaskKind::VmStart),
            ),
            (
                "stopped, desired running, node down",
                |v| {
                    v.phase = VmPhase::Stopped;
                    v.node_ready = false;
                },
                Action::Nothing,
            ),
            (
                "stopped as desired",
                |v| {
                    v.phase = VmPhase::Stopped;
                    v.desired = DesiredPhase::Stopped;
                },
                Action::Nothing,
            ),
            (
                "running, desired stopped",
                |v| v.desired = DesiredPhase::Stopped,
                Action::Emit(TaskKind::VmStop),
            ),
            (
                "paused, desired stopped",
                |v| {
                    v.phase = VmPhase::Paused;
                    v.desired = DesiredPhase::Stopped;
                },
                Action::Emit(TaskKind::VmStop),
            ),
            (
                "paused, desired running",
                |v| v.phase = VmPhase::Paused,
                Action::Nothing,
            ),
            (
                "failed without a retry waits for the user",
                |v| v.phase = VmPhase::Failed,
                Action::Nothing,
            ),
            (
                "failed create retried after backoff",
                |v| {
                    v.phase = VmPhase::Failed;
                    v.retry = Some(TaskKind::VmCreate);
                },
                Action::Emit(TaskKind::VmCreate),
            ),
            (
                "failed create retried even when desired stopped",
                |v| {
                    v.phase = VmPhase::Failed;
                    v.desired = DesiredPhase::Stopped;
                    v.retry = Some(TaskKind::VmCreate);
                },
                Action::Emit(TaskKind::VmCreate),
            ),
            (
                "failed create waits for its backoff",
                |v| {
                    v.phase = VmPhase::Failed;
                    v.retry = Some(TaskKind::VmCreate);
                    v.retry_waiting = true;
                },
                Action::Nothing,
            ),
            (
                "failed create on a node that is gone is never created twice",
                |v| {
                    v.phase = VmPhase::Failed;
                    v.retry = Some(TaskKind::VmCreate);
                    v.node_ready = false;
                },
                Action::Nothing,
            ),
            (
                "failed start retried",
                |v| {
                    v.phase = VmPhase::Failed;
                    v.retry = Some(TaskKind::VmStart);
                },
                Action::Emit(TaskKind::VmStart),
            ),
            (
                "failed start not retried once desired stopped",
                |v| {
                    v.phase = VmPhase::Failed;
                    v.desired = DesiredPhase::Stopped;
                    v.retry = Some(TaskKind::VmStart);
                },
                Action::Nothing,
            ),
            (
                "crashed vm restarted after backoff",
                |v| {
                    v.phase = VmPhase::Stopped;
                    v.retry = Some(TaskKind::VmStart);
                },
                Action::Emit(TaskKind::VmStart),
            ),
            (
                "crashed vm waits for its backoff",
                |v| {
                    v.phase = VmPhase::Stopped;
                    v.retry = Some(TaskKind::VmStart);
                    v.retry_waiting = true;
                },
                Action::Nothing,
            ),
            (
                "a requested op is not held up by a retry backoff",
                |v| {
                    v.requested_op = Some(RequestedOp::Poweroff);
                    v.retry = Some(TaskKind::VmStart);
                    v.retry_waiting = true;
                },
                Action::Emit(TaskKind::VmPoweroff),
            ),
        ];
        for (name, setup, want) in table {
            let mut input = base();
            setup(&mut input);
            assert_eq!(plan(&input), *want, "{name}");
        }
    }
}
