//! Lease rows for leader election: read, acquire (compare-and-swap on the row as read, or
//! INSERT of the first), renew and resign. The decision is `crate::leader::decide`.

use sqlx::AnyConnection;

use super::{Store, StoreError};

/// The name of the control plane's lease row.
pub const LEADER_LEASE: &str = "leader";

/// A leader's fencing token: its holder id and the epoch it leads at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub holder: String,
    pub epoch: i64,
}

/// Inside a write transaction: the leader lease must still be `fence` (else
/// [`StoreError::Fenced`]). A touching UPDATE, so on PostgreSQL the row stays locked until
/// commit and a concurrent take-over waits for this write.
pub(super) async fn check_fence(conn: &mut AnyConnection, fence: &Fence) -> Result<(), StoreError> {
    let done = sqlx::query(
        "UPDATE leases SET epoch = epoch WHERE name = $1 AND holder = $2 AND epoch = $3",
    )
    .bind(LEADER_LEASE)
    .bind(&fence.holder)
    .bind(fence.epoch)
    .execute(conn)
    .await?
    .rows_affected();
    if done == 1 {
        Ok(())
    } else {
        Err(StoreError::Fenced { epoch: fence.epoch })
    }
}

/// A lease row as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    pub holder: Option<String>,
    pub epoch: i64,
    pub expires_at_ms: i64,
}

impl Store {
    pub async fn read_lease(&self, name: &str) -> Result<Option<LeaseRow>, StoreError> {
        let row: Option<(Option<String>, i64, i64)> =
            sqlx::query_as("SELECT holder, epoch, expires_at_ms FROM leases WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(holder, epoch, expires_at_ms)| LeaseRow {
            holder,
            epoch,
            expires_at_ms,
        }))
    }

    /// Takes the lease for `me` if the row is still exactly `seen` (`None`: no row yet);
    /// the epoch becomes `seen.epoch + 1` (1 for the first). Returns the new epoch, or
    /// `None` when another replica changed the row first.
    pub async fn acquire_lease(
        &self,
        name: &str,
        me: &str,
        seen: Option<&LeaseRow>,
        expires_at_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let done = match seen {
            None => sqlx::query(
                "INSERT INTO leases (name, holder, epoch, expires_at_ms) VALUES ($1, $2, 1, $3) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(me)
            .bind(expires_at_ms)
            .execute(&self.pool)
            .await?
            .rows_affected(),
            Some(seen) => sqlx::query(
                "UPDATE leases SET holder = $1, epoch = epoch + 1, expires_at_ms = $2 \
                 WHERE name = $3 AND epoch = $4 AND expires_at_ms = $5 \
                 AND COALESCE(holder, '') = $6",
            )
            .bind(me)
            .bind(expires_at_ms)
            .bind(name)
            .bind(seen.epoch)
            .bind(seen.expires_at_ms)
            .bind(seen.holder.clone().unwrap_or_default())
            .execute(&self.pool)
            .await?
            .rows_affected(),
        };
        Ok((done == 1).then(|| seen.map_or(1, |s| s.epoch + 1)))
    }

    /// Extends the lease held by `me` at `epoch`; false when it is no longer ours.
    pub async fn renew_lease(
        &self,
        name: &str,
        me: &str,
        epoch: i64,
        expires_at_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE leases SET expires_at_ms = $1 WHERE name = $2 AND holder = $3 AND epoch = $4",
        )
        .bind(expires_at_ms)
        .bind(name)
        .bind(me)
        .bind(epoch)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(done == 1)
    }

    /// Gives the lease up (holder cleared, expired) so a standby takes it at once; on
    /// PostgreSQL also `NOTIFY otherix_leader`. Returns whether it was still ours.
    pub async fn resign_lease(&self, name: &str, me: &str, epoch: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE leases SET holder = NULL, expires_at_ms = 0 \
             WHERE name = $1 AND holder = $2 AND epoch = $3",
        )
        .bind(name)
        .bind(me)
        .bind(epoch)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if self.is_postgres() {
            sqlx::query("NOTIFY otherix_leader")
                .execute(&self.pool)
                .await?;
        }
        Ok(done == 1)
    }
}
