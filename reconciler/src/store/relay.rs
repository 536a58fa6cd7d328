//! What replicas on one PostgreSQL tell each other: `NOTIFY` announcements (sent inside
//! the writing transaction, so they go out at commit and never for a rolled-back write),
//! which replica holds each node's agent stream, and the rows of synchronous calls relayed
//! to that replica. On SQLite (one replica) announcements are no-ops.

use sqlx::AnyConnection;
use uuid::Uuid;

use super::{Store, StoreError};

/// `NOTIFY` channels. Payloads are plain ASCII (ids, names, statuses).
pub mod channel {
    /// A task was inserted or changed: `"{task id} {status} {node or -}"`.
    pub const TASK: &str = "otherix_task";
    /// A VM wants reconciling (a trigger from a replica that does not lead): `"{vm id}"`.
    pub const VM: &str = "otherix_vm";
    /// A sync call row was inserted: `"{call id} {node}"`.
    pub const SYNC: &str = "otherix_sync";
    /// A sync call row got its reply: `"{call id}"`.
    pub const SYNC_DONE: &str = "otherix_sync_done";
    /// A task's agent must be told to cancel it: `"{task id} {node}"`.
    pub const CANCEL: &str = "otherix_cancel";
    /// A node's session must be closed wherever it is attached (revoked): `"{node}"`.
    pub const KICK: &str = "otherix_kick";
    /// Events were appended to the event log: `"{newest event number}"`.
    pub const EVENT: &str = "otherix_event";

    pub const ALL: [&str; 7] = [TASK, VM, SYNC, SYNC_DONE, CANCEL, KICK, EVENT];
}

/// Sends `payload` on `channel` when `conn` is PostgreSQL (delivered at commit when inside
/// a transaction); nothing on SQLite.
pub(super) async fn notify(
    conn: &mut AnyConnection,
    channel: &str,
    payload: &str,
) -> Result<(), sqlx::Error> {
    if conn.backend_name() != "PostgreSQL" {
        return Ok(());
    }
    sqlx::query("SELECT pg_notify($1, $2)::text")
        .bind(channel)
        .bind(payload)
        .execute(conn)
        .await?;
    Ok(())
}

/// A relayed sync call as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncCallRow {
    pub node: String,
    /// Hex of the protobuf `SyncRequest`.
    pub request: String,
    pub timeout_ms: i64,
}

/// The outcome of a relayed sync call: hex of the `SyncReply`, or why the holder could not
/// get one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncCallOutcome {
    Reply(String),
    Error(String),
}

impl Store {
    /// Sends one announcement outside any other write.
    pub async fn announce(&self, channel: &str, payload: &str) -> Result<(), StoreError> {
        if !self.is_postgres() {
            return Ok(());
        }
        let mut conn = self.pool.acquire().await?;
        notify(&mut conn, channel, payload).await?;
        Ok(())
    }

    /// Records that `replica` holds the node's agent stream.
    pub async fn set_stream_replica(&self, node: &str, replica: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE nodes SET stream_replica = $2 WHERE name = $1")
            .bind(node)
            .bind(replica)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The stream of `node` on `replica` ended: clears the record and marks the node not
    /// ready, unless another replica took the stream over in the meantime. Returns whether
    /// it did.
    pub async fn release_stream(&self, node: &str, replica: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Was it ready? (A touching write, so SQLite takes the write lock first.)
        let was_ready = sqlx::query(
            "UPDATE nodes SET status = status WHERE name = $1 AND status = 'ready' \
             AND (stream_replica = $2 OR stream_replica IS NULL)",
        )
        .bind(node)
        .bind(replica)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let done = sqlx::query(
            "UPDATE nodes SET stream_replica = NULL, status = 'not_ready' \
             WHERE name = $1 AND (stream_replica = $2 OR stream_replica IS NULL)",
        )
        .bind(node)
        .bind(replica)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if was_ready && done == 1 {
            let changed = super::events::node_readiness(&mut tx, node).await?;
            super::events::append(&mut tx, self.now_ms(), changed).await?;
        }
        tx.commit().await?;
        Ok(done == 1)
    }

    /// The replica holding the node's stream, if any.
    pub async fn stream_replica(&self, node: &str) -> Result<Option<String>, StoreError> {
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT stream_replica FROM nodes WHERE name = $1")
                .bind(node)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.and_then(|r| r.0))
    }

    /// Stores a sync call for the replica holding `node`'s stream and announces it.
    pub async fn insert_sync_call(
        &self,
        id: Uuid,
        node: &str,
        request_hex: &str,
        timeout_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO sync_calls (id, node, request, timeout_ms, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id.to_string())
        .bind(node)
        .bind(request_hex)
        .bind(timeout_ms)
        .bind(self.now_ms())
        .execute(&mut *tx)
        .await?;
        notify(&mut tx, channel::SYNC, &format!("{id} {node}")).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Claims an unclaimed sync call for `replica`; `None` when it is gone or another
    /// replica claimed it first.
    pub async fn claim_sync_call(
        &self,
        id: Uuid,
        replica: &str,
    ) -> Result<Option<SyncCallRow>, StoreError> {
        let row: Option<(String, String, i64)> = sqlx::query_as(
            "UPDATE sync_calls SET claimed_by = $2 WHERE id = $1 AND claimed_by IS NULL \
             RETURNING node, request, timeout_ms",
        )
        .bind(id.to_string())
        .bind(replica)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(node, request, timeout_ms)| SyncCallRow {
            node,
            request,
            timeout_ms,
        }))
    }

    /// Writes the outcome of a claimed sync call and announces it.
    pub async fn finish_sync_call(
        &self,
        id: Uuid,
        outcome: &SyncCallOutcome,
    ) -> Result<(), StoreError> {
        let (reply, error) = match outcome {
            SyncCallOutcome::Reply(r) => (Some(r.as_str()), None),
            SyncCallOutcome::Error(e) => (None, Some(e.as_str())),
        };
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE sync_calls SET reply = $2, error = $3, finished_at_ms = $4 WHERE id = $1",
        )
        .bind(id.to_string())
        .bind(reply)
        .bind(error)
        .bind(self.now_ms())
        .execute(&mut *tx)
        .await?;
        notify(&mut tx, channel::SYNC_DONE, &id.to_string()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The outcome of a sync call once written, and whether any replica claimed it.
    pub async fn sync_call_state(
        &self,
        id: Uuid,
    ) -> Result<(bool, Option<SyncCallOutcome>), StoreError> {
        let row: Option<(Option<String>, Option<String>, Option<String>)> =
            sqlx::query_as("SELECT claimed_by, reply, error FROM sync_calls WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?;
        Ok(match row {
            None => (false, None),
            Some((claimed, Some(reply), _)) => {
                (claimed.is_some(), Some(SyncCallOutcome::Reply(reply)))
            }
            Some((claimed, None, Some(error))) => {
                (claimed.is_some(), Some(SyncCallOutcome::Error(error)))
            }
            Some((claimed, None, None)) => (claimed.is_some(), None),
        })
    }

    /// Removes a sync call (its caller has its answer or gave up).
    pub async fn delete_sync_call(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sync_calls WHERE id = $1")
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
