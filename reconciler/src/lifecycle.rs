//! The VM lifecycle state machine, the one home of VM phase transitions (cloud-hypervisor's
//! `valid_transition` style): which user operations fit which phase (the API service), the
//! phase a VM shows while a task is in flight (the reconciler), and the phase an agent's
//! power report means (the gateway). Pure; an op that does not fit is 409 `conflict`
//! naming the current phase.

use otherix_api::proto::VmPower;
use otherix_api::{ApiError, TaskKind, VmPhase};

/// A user operation on a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmOp {
    Start,
    Stop,
    Poweroff,
    Reboot,
    Delete,
    Pause,
    Resume,
    Reset,
}

impl VmOp {
    pub fn as_str(self) -> &'static str {
        match self {
            VmOp::Start => "start",
            VmOp::Stop => "stop",
            VmOp::Poweroff => "poweroff",
            VmOp::Reboot => "reboot",
            VmOp::Delete => "delete",
            VmOp::Pause => "pause",
            VmOp::Resume => "resume",
            VmOp::Reset => "reset",
        }
    }

    /// The phases the op may start from. `start` of a running VM is an idempotent no-op.
    pub fn allowed_from(self) -> &'static [VmPhase] {
        use VmPhase::*;
        match self {
            VmOp::Start => &[Stopped, Running],
            VmOp::Stop | VmOp::Poweroff | VmOp::Reset => &[Running, Paused],
            VmOp::Reboot | VmOp::Pause => &[Running],
            VmOp::Resume => &[Paused],
            VmOp::Delete => &[Pending, Running, Paused, Stopped, Failed, Unknown],
        }
    }
}

/// Checks that `op` fits a VM in `phase`.
pub fn valid_transition(vm_name: &str, phase: VmPhase, op: VmOp) -> Result<(), ApiError> {
    let allowed = op.allowed_from();
    if allowed.contains(&phase) {
        return Ok(());
    }
    let names: Vec<&str> = allowed.iter().map(|p| p.as_str()).collect();
    let needs = match names.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => "nothing".to_owned(),
    };
    Err(ApiError::conflict(format!(
        "vm {vm_name} is {phase}; {} needs {needs}",
        op.as_str()
    )))
}

/// The phase a VM shows while a task of this kind is in flight.
pub fn transitional_phase(kind: TaskKind) -> VmPhase {
    match kind {
        TaskKind::VmCreate => VmPhase::Creating,
        TaskKind::VmStart => VmPhase::Starting,
        TaskKind::VmStop | TaskKind::VmPoweroff => VmPhase::Stopping,
        TaskKind::VmReboot => VmPhase::Rebooting,
        TaskKind::VmDelete => VmPhase::Deleting,
    }
}

/// The phase an agent-reported power state means, when it means one (`absent` is not a
/// phase: the gateway decides what a missing VM means in context).
pub fn phase_of(power: VmPower) -> Option<VmPhase> {
    match power {
        VmPower::Running => Some(VmPhase::Running),
        VmPower::Paused => Some(VmPhase::Paused),
        VmPower::Stopped => Some(VmPhase::Stopped),
        VmPower::Absent | VmPower::Unspecified => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use otherix_api::ErrorCode;

    #[test]
    fn transitional_phase_per_kind() {
        let table = [
            (TaskKind::VmCreate, VmPhase::Creating),
            (TaskKind::VmStart, VmPhase::Starting),
            (TaskKind::VmStop, VmPhase::Stopping),
            (TaskKind::VmPoweroff, VmPhase::Stopping),
            (TaskKind::VmReboot, VmPhase::Rebooting),
            (TaskKind::VmDelete, VmPhase::Deleting),
        ];
        for (kind, phase) in table {
            assert_eq!(transitional_phase(kind), phase, "{kind}");
        }
    }

    #[test]
    fn phase_of_power_table() {
        let table = [
            (VmPower::Running, Some(VmPhase::Running)),
            (VmPower::Paused, Some(VmPhase::Paused)),
            (VmPower::Stopped, Some(VmPhase::Stopped)),
            (VmPower::Absent, None),
            (VmPower::Unspecified, None),
        ];
        for (power, phase) in table {
            assert_eq!(phase_of(power), phase, "{power:?}");
        }
    }
    use VmPhase::*;

    const ALL: [VmPhase; 12] = [
        Pending, Creating, Starting, Running, Paused, Stopping, Stopped, Rebooting, Deleting,
        Deleted, Failed, Unknown,
    ];

    #[test]
    fn valid_transition_table() {
        let table: &[(VmOp, &[VmPhase])] = &[
            (VmOp::Start, &[Stopped, Running]),
            (VmOp::Stop, &[Running, Paused]),
            (VmOp::Poweroff, &[Running, Paused]),
            (VmOp::Reboot, &[Running]),
            (VmOp::Pause, &[Running]),
            (VmOp::Resume, &[Paused]),
            (VmOp::Reset, &[Running, Paused]),
            (
                VmOp::Delete,
                &[Pending, Running, Paused, Stopped, Failed, Unknown],
            ),
        ];
        for (op, ok_phases) in table {
            for phase in ALL {
                let got = valid_transition("web-1", phase, *op);
                assert_eq!(
                    got.is_ok(),
                    ok_phases.contains(&phase),
                    "{op:?} from {phase}"
                );
                if let Err(e) = got {
                    assert_eq!(e.code, ErrorCode::Conflict);
                    assert!(
                        e.message.starts_with(&format!("vm web-1 is {phase}; ")),
                        "{}",
                        e.message
                    );
                }
            }
        }
    }

    #[test]
    fn valid_transition_message_names_phase_and_needs() {
        let e = valid_transition("web-1", Creating, VmOp::Stop).unwrap_err();
        assert_eq!(
            e.message,
            "vm web-1 is creating; stop needs running or paused"
        );
        let e = valid_transition("web-1", Paused, VmOp::Pause).unwrap_err();
        assert_eq!(e.message, "vm web-1 is paused; pause needs running");
        let e = valid_transition("db", Deleting, VmOp::Delete).unwrap_err();
        assert_eq!(
            e.message,
            "vm db is deleting; delete needs pending, running, paused, stopped, failed or unknown"
        );
    }
}
