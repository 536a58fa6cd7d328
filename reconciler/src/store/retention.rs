//! Retention: deleting finished tasks and soft-deleted VM rows older than a cutoff, in
//! bounded batches. The newest task of every live VM is kept whatever its age (it is what
//! `vm get` and `task list --vm` show as the VM's last operation).

use super::{Fence, Store, StoreError};

/// What one [`Store::purge_batch`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub tasks: u64,
    pub vms: u64,
    pub events: u64,
}

impl Store {
    /// Deletes at most `batch` finished tasks and at most `batch` soft-deleted VMs that
    /// ended before `cutoff_ms` (ms since the Unix epoch), and about `batch` events
    /// committed before `events_cutoff_ms` (moving the event log's `purged_through`), in
    /// one transaction. With a `fence` (the leader's job) the lease must still be held at
    /// that epoch.
    pub async fn purge_batch(
        &self,
        cutoff_ms: i64,
        events_cutoff_ms: i64,
        batch: i64,
        fence: Option<&Fence>,
    ) -> Result<Purged, StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(fence) = fence {
            super::lease::check_fence(&mut tx, fence).await?;
        }
        let tasks = sqlx::query(
            "DELETE FROM tasks WHERE id IN (\
               SELECT t.id FROM tasks t \
               WHERE t.status IN ('success', 'failed', 'cancelled') \
                 AND t.finished_at IS NOT NULL AND t.finished_at < $1 \
                 AND NOT (\
                   EXISTS (SELECT 1 FROM vms v WHERE v.id = t.vm_id AND v.deleted_at IS NULL) \
                   AND NOT EXISTS (SELECT 1 FROM tasks n WHERE n.vm_id = t.vm_id \
                                   AND n.created_at > t.created_at)) \
               ORDER BY t.finished_at LIMIT $2)",
        )
        .bind(cutoff_ms)
        .bind(batch)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let vms = sqlx::query(
            "DELETE FROM vms WHERE id IN (\
               SELECT id FROM vms WHERE deleted_at IS NOT NULL AND deleted_at < $1 \
               ORDER BY deleted_at LIMIT $2)",
        )
        .bind(cutoff_ms)
        .bind(batch)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let events = super::events::purge(&mut tx, events_cutoff_ms, batch).await?;
        tx.commit().await?;
        Ok(Purged { tasks, vms, events })
    }
}
