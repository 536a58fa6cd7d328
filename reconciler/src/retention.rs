//! The retention job: every [`RetentionPolicy::every`], finished tasks and soft-deleted VM
//! rows older than [`RetentionPolicy::max_age`] (`--retention`, default 30 days) are
//! deleted in batches of [`RetentionPolicy::batch`], so neither table grows without bound
//! and no single statement holds the database for long. Each live VM keeps its newest
//! task (see [`crate::store::Store::purge_batch`]). Events of `GET /v1/events` older than
//! [`RetentionPolicy::events_max_age`] (`--event-retention`, default 1 h) go in the same
//! batches; resuming below them is 410 `cursor_expired`.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::store::{Fence, Purged, Store, StoreError};

/// How old finished tasks and deleted VMs may get, and how the purge runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub max_age: Duration,
    pub every: Duration,
    pub batch: u32,
    /// How long the event log keeps events (the window `?since=` can resume in).
    pub events_max_age: Duration,
}

/// Default `--retention`.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default `--retention-interval`.
pub const DEFAULT_RETENTION_INTERVAL: Duration = Duration::from_secs(600);
/// Default `--event-retention`.
pub const DEFAULT_EVENT_RETENTION: Duration = Duration::from_secs(3600);

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            max_age: DEFAULT_RETENTION,
            every: DEFAULT_RETENTION_INTERVAL,
            batch: 500,
            events_max_age: DEFAULT_EVENT_RETENTION,
        }
    }
}

/// The cutoff (ms since the epoch) for rows that ended before `now_ms - max_age`.
pub fn cutoff_ms(now_ms: i64, max_age: Duration) -> i64 {
    let age = i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX);
    now_ms.saturating_sub(age)
}

/// Purges everything older than the policy's age, batch after batch, until a batch
/// comes back short; returns the totals. With a `fence` every batch checks the lease (a
/// deposed leader deletes nothing).
pub async fn purge_expired(
    store: &Store,
    policy: &RetentionPolicy,
    fence: Option<&Fence>,
) -> Result<Purged, StoreError> {
    let now = store.now_ms();
    let cutoff = cutoff_ms(now, policy.max_age);
    let events_cutoff = cutoff_ms(now, policy.events_max_age);
    let batch = i64::from(policy.batch.max(1));
    let mut total = Purged::default();
    loop {
        let purged = store
            .purge_batch(cutoff, events_cutoff, batch, fence)
            .await?;
        total.tasks += purged.tasks;
        total.vms += purged.vms;
        total.events += purged.events;
        if purged.tasks < batch as u64 && purged.vms < batch as u64 && purged.events < batch as u64
        {
            return Ok(total);
        }
        // Let other writers in between batches.
        tokio::task::yield_now().await;
    }
}

/// Runs [`purge_expired`] every `policy.every`, forever (the leader's job; `fence` as in
/// [`purge_expired`]).
pub fn spawn(store: Store, policy: RetentionPolicy, fence: Option<Fence>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(policy.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match purge_expired(&store, &policy, fence.as_ref()).await {
                Ok(Purged {
                    tasks: 0,
                    vms: 0,
                    events: 0,
                }) => {}
                Ok(p) => tracing::info!(
                    tasks = p.tasks,
                    vms = p.vms,
                    events = p.events,
                    "retention purged old rows"
                ),
                Err(e) => tracing::warn!(error = %e, "retention purge failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoff_ms_table() {
        assert_eq!(cutoff_ms(10_000, Duration::from_secs(1)), 9_000);
        assert_eq!(cutoff_ms(10_000, Duration::ZERO), 10_000);
        assert_eq!(cutoff_ms(0, Duration::from_secs(1)), -1_000);
        assert_eq!(cutoff_ms(5, Duration::MAX), 5 - i64::MAX);
    }
}
