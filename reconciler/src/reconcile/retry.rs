//! Retries and restarts, pure: the exponential backoff schedule, the restart-policy
//! decision for a VM that stopped on its own, and how a failure is recorded on the VM
//! (`retry_kind`, `retry_attempts`, `retry_at_ms`) so the reconciler retries it later
//! instead of in a tight loop.

use std::time::Duration;

use otherix_api::{RestartPolicy, TaskKind};

use crate::model::VmRecord;

/// Exponential backoff: `base`, doubling per consecutive attempt, capped at `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    /// 2 s doubling to 5 minutes.
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (1-based): base * 2^(attempt-1), at most cap.
    pub fn delay(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(31);
        self.base
            .checked_mul(1u32 << shift)
            .unwrap_or(self.cap)
            .min(self.cap)
    }

    /// A VM that ran at least this long before failing again starts over at attempt 1
    /// (the reset after success): the cap, so a crash loop climbs to it first.
    pub fn stable_run(&self) -> Duration {
        self.cap
    }
}

/// The consecutive attempt number of a new failure: one more than `prev`, or 1 when the
/// VM last booted at least `stable_run` ago (it succeeded, and ran long enough to count).
pub fn next_attempt(
    prev: u32,
    booted_at_ms: Option<i64>,
    now_ms: i64,
    stable_run: Duration,
) -> u32 {
    match booted_at_ms {
        Some(b) if now_ms.saturating_sub(b) >= stable_run.as_millis() as i64 => 1,
        _ => prev.saturating_add(1),
    }
}

/// Records on `vm` that `kind` must be retried after backoff.
pub fn schedule_retry(vm: &mut VmRecord, kind: TaskKind, now_ms: i64, backoff: &Backoff) {
    let attempt = next_attempt(
        vm.retry_attempts,
        vm.booted_at_ms,
        now_ms,
        backoff.stable_run(),
    );
    vm.retry_kind = Some(kind);
    vm.retry_attempts = attempt;
    vm.retry_at_ms = Some(now_ms + backoff.delay(attempt).as_millis() as i64);
}

/// Clears a pending retry (the VM booted, or the retry no longer applies). The attempt
/// count stays until a stable run resets it.
pub fn clear_retry(vm: &mut VmRecord) {
    vm.retry_kind = None;
    vm.retry_at_ms = None;
}

/// What to do about a VM that was running and stopped without being asked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReaction {
    /// Leave it stopped; its desired phase becomes stopped.
    StayStopped,
    /// Start it again (after backoff).
    Restart,
}

/// The restart policy table: `guest_shutdown` is true when the guest powered itself off
/// cleanly, false when QEMU crashed or was killed.
pub fn restart_decision(policy: RestartPolicy, guest_shutdown: bool) -> StopReaction {
    match (policy, guest_shutdown) {
        (RestartPolicy::Always, _) => StopReaction::Restart,
        (RestartPolicy::OnFailure, false) => StopReaction::Restart,
        (RestartPolicy::OnFailure, true) | (RestartPolicy::Never, _) => StopReaction::StayStopped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_delay_doubles_from_base_to_cap() {
        let b = Backoff::default();
        let secs: Vec<u64> = (1..=10).map(|a| b.delay(a).as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(b.delay(0), Duration::from_secs(2));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn next_attempt_resets_after_stable_run_only() {
        let stable = Duration::from_secs(300);
        let table = [
            ("first failure", 0, None, 1),
            ("never booted", 3, None, 4),
            ("booted recently", 3, Some(999_000), 4),
            ("ran 5 minutes", 3, Some(1_000_000 - 300_000), 1),
        ];
        for (name, prev, booted, want) in table {
            assert_eq!(
                next_attempt(prev, booted, 1_000_000, stable),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn restart_decision_table() {
        use RestartPolicy::*;
        use StopReaction::*;
        let table = [
            (Always, true, Restart),
            (Always, false, Restart),
            (OnFailure, true, StayStopped),
            (OnFailure, false, Restart),
            (Never, true, StayStopped),
            (Never, false, StayStopped),
        ];
        for (policy, guest_shutdown, want) in table {
            assert_eq!(
                restart_decision(policy, guest_shutdown),
                want,
                "{policy:?} guest_shutdown={guest_shutdown}"
            );
        }
    }
}
