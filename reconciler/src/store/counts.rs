//! Grouped counts for `/metrics`: one `GROUP BY` query per family, read at scrape time.

use super::vms::effective_phase_sql;
use super::{Store, StoreError};

/// One group of a grouped count: its label values and how many rows fall in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupCount {
    pub labels: [String; 2],
    pub count: i64,
}

impl Store {
    /// Live VMs by (effective phase, node); the node is `""` while unplaced. The phase is
    /// the one `GET /v1/vms` shows (`unknown` on a not-ready node).
    pub async fn count_vms_by_phase_and_node(&self) -> Result<Vec<GroupCount>, StoreError> {
        let sql = format!(
            "SELECT {phase} AS phase, COALESCE(v.node, '') AS node, COUNT(*) AS n \
             FROM vms v LEFT JOIN nodes n ON n.name = v.node \
             WHERE v.deleted_at IS NULL GROUP BY {phase}, COALESCE(v.node, '')",
            phase = effective_phase_sql()
        );
        self.grouped(&sql).await
    }

    /// Tasks still in the store (retention purges old finished ones) by (kind, status).
    pub async fn count_tasks_by_kind_and_status(&self) -> Result<Vec<GroupCount>, StoreError> {
        self.grouped("SELECT kind, status, COUNT(*) AS n FROM tasks GROUP BY kind, status")
            .await
    }

    /// Registered nodes by status (the second label is always `""`).
    pub async fn count_nodes_by_status(&self) -> Result<Vec<GroupCount>, StoreError> {
        self.grouped("SELECT status, '' AS unused, COUNT(*) AS n FROM nodes GROUP BY status")
            .await
    }

    async fn grouped(&self, sql: &str) -> Result<Vec<GroupCount>, StoreError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(sql).fetch_all(&self.pool).await?;
        Ok(rows
            .into_iter()
            .map(|(a, b, count)| GroupCount {
                labels: [a, b],
                count,
            })
            .collect())
    }
}
