//! The cluster settings object: the default pool, the allocation ratios and the
//! annotations (`settings` rows) and the one `resource_version` they share (the
//! `cluster_resource_version` row), written together in one compare-and-swap transaction.

use std::collections::BTreeMap;

use sqlx::AnyConnection;

use otherix_api::manifest::AllocationRatio;

use super::entities::{decode, json};
use super::{Store, StoreError, SETTING_DEFAULT_POOL};

/// The key of the cluster settings' annotations (JSON object).
pub const SETTING_CLUSTER_ANNOTATIONS: &str = "cluster_annotations";
/// The key of the cluster settings' resource_version (decimal text).
const SETTING_CLUSTER_VERSION: &str = "cluster_resource_version";
/// The keys of the allocation ratios (decimal text; absent = the default).
const SETTING_CPU_RATIO: &str = "cpu_allocation_ratio";
const SETTING_MEMORY_RATIO: &str = "memory_allocation_ratio";

/// The cluster settings as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettingsRow {
    /// Unset or cleared (stored empty) is `None`.
    pub default_pool: Option<String>,
    pub annotations: BTreeMap<String, String>,
    pub cpu_allocation_ratio: Option<AllocationRatio>,
    pub memory_allocation_ratio: Option<AllocationRatio>,
    pub resource_version: i64,
}

/// The name of the one cluster settings object.
pub const CLUSTER_NAME: &str = "cluster";

impl ClusterSettingsRow {
    /// The object as `GET /v1/cluster` shows it.
    pub fn to_api(self) -> otherix_api::ClusterSettings {
        otherix_api::ClusterSettings {
            name: CLUSTER_NAME.to_owned(),
            annotations: self.annotations,
            spec: otherix_api::manifest::ClusterSettingsSpec {
                default_pool: self.default_pool,
                cpu_allocation_ratio: self.cpu_allocation_ratio,
                memory_allocation_ratio: self.memory_allocation_ratio,
            },
            resource_version: self.resource_version,
        }
    }

    /// The ratios the scheduler uses (defaults where unset).
    pub fn ratios(&self) -> crate::scheduler::Ratios {
        crate::scheduler::Ratios {
            cpu: self
                .cpu_allocation_ratio
                .unwrap_or(AllocationRatio::DEFAULT_CPU),
            memory: self
                .memory_allocation_ratio
                .unwrap_or(AllocationRatio::DEFAULT_MEMORY),
        }
    }
}

/// A stored allocation ratio.
fn parse_ratio(key: &str, text: &str) -> Result<AllocationRatio, StoreError> {
    match text.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(AllocationRatio(r)),
        _ => Err(StoreError::Corrupt {
            table: "settings",
            id: key.to_owned(),
            detail: format!("allocation ratio {text:?}"),
        }),
    }
}

fn parse_version(text: &str) -> Result<i64, StoreError> {
    text.parse().map_err(|_| StoreError::Corrupt {
        table: "settings",
        id: SETTING_CLUSTER_VERSION.to_owned(),
        detail: format!("resource_version {text:?}"),
    })
}

impl Store {
    /// The cluster settings, read in one statement (one consistent snapshot).
    pub async fn cluster_settings(&self) -> Result<ClusterSettingsRow, StoreError> {
        let mut conn = self.pool.acquire().await?;
        read_cluster_settings(&mut conn).await
    }

    /// Writes the default pool and annotations of `row` if the settings are still at
    /// `row.resource_version` (else [`StoreError::Conflict`], nothing written); returns
    /// the new version. A cleared default pool is stored as the empty string, so agents
    /// registering a `default` pool do not set it again.
    pub async fn write_cluster_settings(
        &self,
        row: &ClusterSettingsRow,
    ) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, '1') ON CONFLICT (key) DO NOTHING",
        )
        .bind(SETTING_CLUSTER_VERSION)
        .execute(&mut *tx)
        .await?;
        let next = row.resource_version + 1;
        let swapped = sqlx::query("UPDATE settings SET value = $2 WHERE key = $1 AND value = $3")
            .bind(SETTING_CLUSTER_VERSION)
            .bind(next.to_string())
            .bind(row.resource_version.to_string())
            .execute(&mut *tx)
            .await?;
        if swapped.rows_affected() != 1 {
            let (actual,): (String,) = sqlx::query_as("SELECT value FROM settings WHERE key = $1")
                .bind(SETTING_CLUSTER_VERSION)
                .fetch_one(&mut *tx)
                .await?;
            return Err(StoreError::Conflict {
                kind: "cluster",
                name: "settings".to_owned(),
                expected: row.resource_version,
                actual: Some(parse_version(&actual)?),
            });
        }
        let default_pool = row.default_pool.clone().unwrap_or_default();
        upsert(&mut tx, SETTING_DEFAULT_POOL, &default_pool).await?;
        if row.annotations.is_empty() {
            sqlx::query("DELETE FROM settings WHERE key = $1")
                .bind(SETTING_CLUSTER_ANNOTATIONS)
                .execute(&mut *tx)
                .await?;
        } else {
            upsert(
                &mut tx,
                SETTING_CLUSTER_ANNOTATIONS,
                &json(&row.annotations),
            )
            .await?;
        }
        for (key, ratio) in [
            (SETTING_CPU_RATIO, row.cpu_allocation_ratio),
            (SETTING_MEMORY_RATIO, row.memory_allocation_ratio),
        ] {
            match ratio {
                Some(r) => upsert(&mut tx, key, &r.to_string()).await?,
                None => {
                    sqlx::query("DELETE FROM settings WHERE key = $1")
                        .bind(key)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        let modified = super::events::cluster(&mut tx).await?;
        super::events::append(&mut tx, self.now_ms(), vec![modified]).await?;
        tx.commit().await?;
        Ok(next)
    }
}

/// The cluster settings as of `conn` (in a transaction: as that transaction sees them).
pub(super) async fn read_cluster_settings(
    conn: &mut AnyConnection,
) -> Result<ClusterSettingsRow, StoreError> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT key, value FROM settings WHERE key IN ($1, $2, $3, $4, $5)")
            .bind(SETTING_DEFAULT_POOL)
            .bind(SETTING_CLUSTER_ANNOTATIONS)
            .bind(SETTING_CLUSTER_VERSION)
            .bind(SETTING_CPU_RATIO)
            .bind(SETTING_MEMORY_RATIO)
            .fetch_all(&mut *conn)
            .await?;
    let mut out = ClusterSettingsRow {
        default_pool: None,
        annotations: BTreeMap::new(),
        cpu_allocation_ratio: None,
        memory_allocation_ratio: None,
        resource_version: 1,
    };
    for (key, value) in rows {
        match key.as_str() {
            SETTING_DEFAULT_POOL => out.default_pool = Some(value).filter(|p| !p.is_empty()),
            SETTING_CLUSTER_ANNOTATIONS => {
                out.annotations = decode("settings", SETTING_CLUSTER_ANNOTATIONS, &value)?
            }
            SETTING_CPU_RATIO => out.cpu_allocation_ratio = Some(parse_ratio(&key, &value)?),
            SETTING_MEMORY_RATIO => out.memory_allocation_ratio = Some(parse_ratio(&key, &value)?),
            _ => out.resource_version = parse_version(&value)?,
        }
    }
    Ok(out)
}

async fn upsert(conn: &mut AnyConnection, key: &str, value: &str) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO settings (key, value) VALUES ($1, $2) \
         ON CONFLICT (key) DO UPDATE SET value = $2",
    )
    .bind(key)
    .bind(value)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Moves the cluster settings' version in a transaction that changed them another way
/// (an agent registration setting the default pool of a fresh cluster).
pub(super) async fn bump_cluster_version(conn: &mut AnyConnection) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE settings SET value = CAST(CAST(value AS BIGINT) + 1 AS TEXT) WHERE key = $1",
    )
    .bind(SETTING_CLUSTER_VERSION)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
