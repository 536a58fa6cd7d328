//! Nodes, pools, pool instances and settings: agent registration, liveness, and the
//! cluster snapshot the scheduler and the read endpoints use.

use std::collections::HashMap;

use otherix_api::firmware_path::default_firmware_dirs;
use otherix_api::{EventType, NodeStatus, Pool, PoolInstance};
use sqlx::Row;
use uuid::Uuid;

use super::entities::ObjectTable;
use super::events;
use super::rows::parse_uuid;
use super::{Fence, Store, StoreError, SETTING_DEFAULT_POOL};
use crate::model::{NodePool, NodeRecord};

/// The pool that becomes the default when an agent registers it and none is set.
pub const AUTO_DEFAULT_POOL: &str = "default";

/// What an agent's `Register` says about its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRegistration {
    pub name: String,
    pub arch: String,
    pub guest_arches: Vec<String>,
    pub accel: String,
    pub vcpus: u32,
    pub memory_mb: u64,
    pub agent_version: String,
    /// (pool name, path on this node)
    pub pools: Vec<(String, String)>,
    /// The agent accepts `file://` image URLs.
    pub allow_file_urls: bool,
    /// The agent's `--firmware-dir`s (empty: an agent that predates them).
    pub firmware_dirs: Vec<String>,
}

impl Store {
    /// Upserts the node (ready, heartbeat now), creates missing pools, replaces the node's
    /// pool instances, and sets the default pool to `default` when that pool is registered
    /// and no default is set. One transaction; returns the node id.
    pub async fn register_node(&self, reg: &NodeRegistration) -> Result<Uuid, StoreError> {
        let now = self.now_ms();
        let mut tx = self.pool.begin().await?;
        // A touching write, not a read: on SQLite a transaction that reads first cannot
        // wait for the write lock later (it would fail busy).
        let known = sqlx::query("UPDATE nodes SET name = name WHERE name = $1")
            .bind(reg.name.clone())
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        let mut new_pools = Vec::new();
        sqlx::query(
            "INSERT INTO nodes (id, name, arch, guest_arches, accel, vcpus, memory_mb, \
             agent_version, status, last_heartbeat_ms, registered_at_ms, allow_file_urls, \
             firmware_dirs) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'ready', $9, $9, $10, $11) \
             ON CONFLICT (name) DO UPDATE SET arch = $3, guest_arches = $4, accel = $5, \
             vcpus = $6, memory_mb = $7, agent_version = $8, status = 'ready', \
             last_heartbeat_ms = $9, registered_at_ms = $9, allow_file_urls = $10, \
             firmware_dirs = $11",
        )
        .bind(Uuid::new_v4().to_string())
        .bind(reg.name.clone())
        .bind(reg.arch.clone())
        .bind(serde_json::to_string(&reg.guest_arches).expect("strings serialize"))
        .bind(reg.accel.clone())
        .bind(i64::from(reg.vcpus))
        .bind(reg.memory_mb as i64)
        .bind(reg.agent_version.clone())
        .bind(now)
        .bind(i64::from(reg.allow_file_urls))
        .bind(serde_json::to_string(&reg.firmware_dirs).expect("strings serialize"))
        .execute(&mut *tx)
        .await?;
        let (node_id,): (String,) = sqlx::query_as("SELECT id FROM nodes WHERE name = $1")
            .bind(reg.name.clone())
            .fetch_one(&mut *tx)
            .await?;

        let mut kept_pool_ids = Vec::new();
        for (pool, path) in &reg.pools {
            let created = sqlx::query(
                "INSERT INTO pools (id, name, created_at_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(Uuid::new_v4().to_string())
            .bind(pool.clone())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let (pool_id,): (String,) = sqlx::query_as("SELECT id FROM pools WHERE name = $1")
                .bind(pool.clone())
                .fetch_one(&mut *tx)
                .await?;
            if created.rows_affected() == 1 {
                new_pools.push(parse_uuid("pools", &pool_id)?);
            }
            sqlx::query(
                "INSERT INTO pool_instances (id, pool_id, node_id, path) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (pool_id, node_id) DO UPDATE SET path = $4",
            )
            .bind(Uuid::new_v4().to_string())
            .bind(pool_id.clone())
            .bind(node_id.clone())
            .bind(path.clone())
            .execute(&mut *tx)
            .await?;
            kept_pool_ids.push(pool_id);
        }
        let existing: Vec<(String,)> =
            sqlx::query_as("SELECT pool_id FROM pool_instances WHERE node_id = $1")
                .bind(node_id.clone())
                .fetch_all(&mut *tx)
                .await?;
        for (pool_id,) in existing {
            if !kept_pool_ids.contains(&pool_id) {
                sqlx::query("DELETE FROM pool_instances WHERE node_id = $1 AND pool_id = $2")
                    .bind(node_id.clone())
                    .bind(pool_id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let mut cluster_changed = false;
        if reg.pools.iter().any(|(p, _)| p == AUTO_DEFAULT_POOL) {
            let set = sqlx::query(
                "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            )
            .bind(SETTING_DEFAULT_POOL)
            .bind(AUTO_DEFAULT_POOL)
            .execute(&mut *tx)
            .await?;
            if set.rows_affected() == 1 {
                super::cluster_settings::bump_cluster_version(&mut tx).await?;
                cluster_changed = true;
            }
        }
        let mut changed = Vec::new();
        for pool in new_pools {
            changed
                .push(events::object(&mut tx, ObjectTable::Pools, pool, EventType::Added).await?);
        }
        let node_event = if known {
            EventType::Modified
        } else {
            EventType::Added
        };
        changed.push(events::node(&mut tx, &reg.name, node_event).await?);
        if cluster_changed {
            changed.push(events::cluster(&mut tx).await?);
        }
        events::append(&mut tx, now, changed).await?;
        tx.commit().await?;
        parse_uuid("nodes", &node_id)
    }

    /// Records a heartbeat; a not-ready node that heartbeats is ready again.
    /// (Only a heartbeat that makes the node ready again is an event; the others are not.)
    pub async fn node_heartbeat(&self, node: &str) -> Result<(), StoreError> {
        let now = self.now_ms();
        let beat = sqlx::query(
            "UPDATE nodes SET last_heartbeat_ms = $2 WHERE name = $1 AND status = 'ready'",
        )
        .bind(node)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if beat.rows_affected() == 1 {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        let ready = sqlx::query(
            "UPDATE nodes SET last_heartbeat_ms = $2, status = 'ready' WHERE name = $1",
        )
        .bind(node)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if ready.rows_affected() == 1 {
            let changed = events::node_readiness(&mut tx, node).await?;
            events::append(&mut tx, now, changed).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn mark_node_not_ready(&self, node: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE nodes SET status = 'not_ready' WHERE name = $1 AND status <> 'not_ready'",
        )
        .bind(node)
        .execute(&mut *tx)
        .await?;
        if changed.rows_affected() == 1 {
            let changed = events::node_readiness(&mut tx, node).await?;
            events::append(&mut tx, self.now_ms(), changed).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Marks ready nodes whose last heartbeat is older than `cutoff_ms` not ready and
    /// returns their names. With a `fence` (the leader's sweep) the lease must still be
    /// held at that epoch.
    pub async fn mark_stale_nodes_not_ready(
        &self,
        cutoff_ms: i64,
        fence: Option<&Fence>,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(fence) = fence {
            super::lease::check_fence(&mut tx, fence).await?;
        }
        let rows: Vec<(String,)> = sqlx::query_as(
            "UPDATE nodes SET status = 'not_ready' WHERE status = 'ready' \
             AND (last_heartbeat_ms IS NULL OR last_heartbeat_ms < $1) RETURNING name",
        )
        .bind(cutoff_ms)
        .fetch_all(&mut *tx)
        .await?;
        let mut changed = Vec::new();
        for (name,) in &rows {
            changed.extend(events::node_readiness(&mut tx, name).await?);
        }
        events::append(&mut tx, self.now_ms(), changed).await?;
        tx.commit().await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    /// The directories Firmware files may name: the union of the ready nodes'
    /// `--firmware-dir`s; when no node is ready, of every known node's; when no node ever
    /// registered, [`otherix_api::firmware_path::DEFAULT_FIRMWARE_DIRS`]. A node that registered no dirs (an older
    /// agent) counts with the default dirs. Sorted, deduplicated.
    pub async fn allowed_firmware_dirs(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String, String, String)> =
            sqlx::query_as("SELECT name, status, firmware_dirs FROM nodes ORDER BY name")
                .fetch_all(&self.pool)
                .await?;
        let any_ready = rows.iter().any(|(_, status, _)| status == "ready");
        let mut dirs = std::collections::BTreeSet::new();
        for (name, status, json) in &rows {
            if any_ready && status != "ready" {
                continue;
            }
            let node_dirs: Vec<String> =
                serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
                    table: "nodes",
                    id: name.clone(),
                    detail: e.to_string(),
                })?;
            if node_dirs.is_empty() {
                dirs.extend(default_firmware_dirs());
            } else {
                dirs.extend(node_dirs);
            }
        }
        if dirs.is_empty() {
            dirs.extend(default_firmware_dirs());
        }
        Ok(dirs.into_iter().collect())
    }

    /// Every node with its pools and allocations, ordered by name.
    pub async fn list_nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, status, arch, guest_arches, accel, vcpus, memory_mb, \
             last_heartbeat_ms, allow_file_urls, allocated_vms, allocated_vcpus, \
             allocated_memory_mb FROM nodes ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut pools_by_node: HashMap<String, Vec<NodePool>> = HashMap::new();
        let instance_rows = sqlx::query(
            "SELECT i.node_id, p.id AS pool_id, p.name, i.path FROM pool_instances i \
             JOIN pools p ON p.id = i.pool_id ORDER BY p.name",
        )
        .fetch_all(&self.pool)
        .await?;
        for r in &instance_rows {
            let pool_id: String = r.try_get("pool_id")?;
            pools_by_node
                .entry(r.try_get("node_id")?)
                .or_default()
                .push(NodePool {
                    pool_id: parse_uuid("pools", &pool_id)?,
                    pool: r.try_get("name")?,
                    path: r.try_get("path")?,
                });
        }
        let mut nodes = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: String = r.try_get("id")?;
            let name: String = r.try_get("name")?;
            let status: String = r.try_get("status")?;
            let arches: String = r.try_get("guest_arches")?;
            let count =
                |col: &str| -> Result<i64, StoreError> { Ok(r.try_get::<i64, _>(col)?.max(0)) };
            nodes.push(NodeRecord {
                id: parse_uuid("nodes", &id)?,
                status: if status == "ready" {
                    NodeStatus::Ready
                } else {
                    NodeStatus::NotReady
                },
                arch: r.try_get("arch")?,
                guest_arches: serde_json::from_str(&arches).map_err(|e| StoreError::Corrupt {
                    table: "nodes",
                    id: id.clone(),
                    detail: e.to_string(),
                })?,
                accel: r.try_get("accel")?,
                vcpus: r.try_get::<i64, _>("vcpus")? as u32,
                memory_mb: r.try_get::<i64, _>("memory_mb")? as u64,
                last_heartbeat_ms: r.try_get("last_heartbeat_ms")?,
                pools: pools_by_node.remove(&id).unwrap_or_default(),
                allocated_vms: count("allocated_vms")? as u32,
                allocated_vcpus: count("allocated_vcpus")? as u32,
                allocated_memory_mb: count("allocated_memory_mb")? as u64,
                allow_file_urls: r.try_get::<i64, _>("allow_file_urls")? != 0,
                name,
            });
        }
        Ok(nodes)
    }

    /// Every pool with its instances, ordered by name.
    pub async fn list_pools(&self) -> Result<Vec<Pool>, StoreError> {
        let pools: Vec<(String, String, String, String, i64)> = sqlx::query_as(
            "SELECT id, name, spec, annotations, resource_version FROM pools ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        let instances = sqlx::query(
            "SELECT i.id, i.pool_id, n.name AS node, i.path FROM pool_instances i \
             JOIN nodes n ON n.id = i.node_id ORDER BY n.name",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut by_pool: HashMap<String, Vec<PoolInstance>> = HashMap::new();
        for r in &instances {
            let id: String = r.try_get("id")?;
            by_pool
                .entry(r.try_get("pool_id")?)
                .or_default()
                .push(PoolInstance {
                    id: parse_uuid("pool_instances", &id)?,
                    node: r.try_get("node")?,
                    path: r.try_get("path")?,
                });
        }
        pools
            .into_iter()
            .map(|(id, name, spec, annotations, resource_version)| {
                let corrupt = |e: serde_json::Error| StoreError::Corrupt {
                    table: "pools",
                    id: id.clone(),
                    detail: e.to_string(),
                };
                Ok(Pool {
                    id: parse_uuid("pools", &id)?,
                    instances: by_pool.remove(&id).unwrap_or_default(),
                    name,
                    annotations: serde_json::from_str(&annotations).map_err(corrupt)?,
                    spec: serde_json::from_str(&spec).map_err(corrupt)?,
                    resource_version,
                })
            })
            .collect()
    }

    /// The cluster default pool; unset or cleared (stored empty) is `None`.
    pub async fn default_pool(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .setting(SETTING_DEFAULT_POOL)
            .await?
            .filter(|p| !p.is_empty()))
    }
}
