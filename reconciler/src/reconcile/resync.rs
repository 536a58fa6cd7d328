//! The periodic resync, read-only: one scan of the live VMs and their in-flight tasks,
//! the pure [`plan`] run on each, and only the VMs with something to do queued (a retry
//! whose backoff has not elapsed is queued for its due time). A VM at rest costs one row
//! read per resync, not a reconcile run (issue 11: the control plane's cost follows the
//! changes, not the fleet).

use std::time::Duration;

use otherix_api::{DesiredPhase, TaskKind};

use super::plan::{plan, Action, PlanInput};

/// When the resync should queue a VM: now, after a delay, or not at all.
pub fn resync_due(input: &PlanInput, retry_at_ms: Option<i64>, now_ms: i64) -> Option<Duration> {
    // A start retry the user no longer wants is cleared by a run.
    if input.retry == Some(TaskKind::VmStart) && input.desired == DesiredPhase::Stopped {
        return Some(Duration::ZERO);
    }
    if plan(input) != Action::Nothing {
        return Some(Duration::ZERO);
    }
    match retry_at_ms {
        Some(at) if input.retry_waiting && input.in_flight.is_none() => Some(
            Duration::from_millis(u64::try_from(at - now_ms).unwrap_or(0)),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::plan::tests::base as at_rest;
    use otherix_api::VmPhase;

    #[test]
    fn resync_due_table() {
        let now = 10_000;
        let cases: Vec<(&str, PlanInput, Option<i64>, Option<Duration>)> = vec![
            ("running as desired: skipped", at_rest(), None, None),
            (
                "stopped but wanted running: now",
                PlanInput {
                    phase: VmPhase::Stopped,
                    ..at_rest()
                },
                None,
                Some(Duration::ZERO),
            ),
            (
                "deletion requested: now",
                PlanInput {
                    deletion_requested: true,
                    ..at_rest()
                },
                None,
                Some(Duration::ZERO),
            ),
            (
                "task in flight: skipped",
                PlanInput {
                    phase: VmPhase::Stopped,
                    in_flight: Some(TaskKind::VmStart),
                    ..at_rest()
                },
                None,
                None,
            ),
            (
                "retry waiting: at its due time",
                PlanInput {
                    phase: VmPhase::Stopped,
                    retry: Some(TaskKind::VmStart),
                    retry_waiting: true,
                    ..at_rest()
                },
                Some(now + 2_500),
                Some(Duration::from_millis(2_500)),
            ),
            (
                "start retry of a VM now wanted stopped: now (cleared by the run)",
                PlanInput {
                    phase: VmPhase::Stopped,
                    desired: DesiredPhase::Stopped,
                    retry: Some(TaskKind::VmStart),
                    retry_waiting: true,
                    ..at_rest()
                },
                Some(now + 60_000),
                Some(Duration::ZERO),
            ),
        ];
        for (name, input, retry_at, want) in cases {
            assert_eq!(resync_due(&input, retry_at, now), want, "{name}");
        }
    }
}
