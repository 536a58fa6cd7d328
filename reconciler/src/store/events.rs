//! The event log (migration 0015): the rows `GET /v1/events` streams. Write sites build a
//! [`Pending`] event per changed object (the API object as JSON, read inside the writing
//! transaction so it is exactly what committed) and [`append`] them as the transaction's
//! last statement: the numbers come from the `last_seq` row, whose lock is held to
//! commit, so events are numbered in commit order on every backend. Readers page by
//! number and then check the `purged_through` watermark retention moves.

use otherix_api::{
    EventKind, EventType, Firmware, Network, Node, Pool, PoolInstance, Project, Task,
};
use serde::Serialize;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::entities::{decode, ObjectTable};
use super::rows::{parse_uuid, vm_from_row, VM_SELECT};
use super::{Store, StoreError};
use crate::model::{NodePool, NodeRecord, TaskRecord};

/// One event about to be appended.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub event_type: EventType,
    pub kind: EventKind,
    pub name: String,
    pub project: Option<String>,
    pub vm: Option<String>,
    pub object: String,
}

/// One stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub seq: i64,
    pub at_ms: i64,
    pub event: Pending,
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("API objects serialize")
}

/// The VM `id` as `GET /v1/vms/{name}` shows it now (in the transaction): `added` for a
/// new row, `deleted` once soft-deleted, else `modified`.
pub(super) async fn vm(
    conn: &mut AnyConnection,
    id: Uuid,
    added: bool,
) -> Result<Pending, StoreError> {
    let row = sqlx::query(&format!("{VM_SELECT} WHERE v.id = $1"))
        .bind(id.to_string())
        .fetch_one(&mut *conn)
        .await?;
    let vm = vm_from_row(&row)?;
    let event_type = match (added, vm.deleted_at_ms) {
        (true, _) => EventType::Added,
        (false, Some(_)) => EventType::Deleted,
        (false, None) => EventType::Modified,
    };
    Ok(Pending {
        event_type,
        kind: EventKind::Vm,
        name: vm.name.clone(),
        project: Some(vm.project.clone()),
        vm: Some(vm.name.clone()),
        object: to_json(&vm.to_api()),
    })
}

/// Node `name` after its readiness changed, then its live VMs (their shown phase follows
/// the node's readiness: `unknown` while it is not ready).
pub(super) async fn node_readiness(
    conn: &mut AnyConnection,
    name: &str,
) -> Result<Vec<Pending>, StoreError> {
    let mut out = vec![node(conn, name, EventType::Modified).await?];
    let ids: Vec<(String,)> = sqlx::query_as(
        "SELECT id FROM vms WHERE node = $1 AND deleted_at IS NULL ORDER BY created_at, id",
    )
    .bind(name)
    .fetch_all(&mut *conn)
    .await?;
    for (id,) in ids {
        out.push(vm(conn, parse_uuid("vms", &id)?, false).await?);
    }
    Ok(out)
}

/// A task as `GET /v1/tasks/{id}` shows it.
pub(super) fn task(t: &TaskRecord, added: bool) -> Pending {
    let api: Task = t.to_api();
    Pending {
        event_type: if added {
            EventType::Added
        } else {
            EventType::Modified
        },
        kind: EventKind::Task,
        name: t.id.to_string(),
        project: Some(t.project.clone()),
        vm: t.vm_name.clone(),
        object: to_json(&api),
    }
}

/// Node `name` as `GET /v1/nodes/{name}` shows it (in the transaction).
pub(super) async fn node(
    conn: &mut AnyConnection,
    name: &str,
    event_type: EventType,
) -> Result<Pending, StoreError> {
    let r = sqlx::query(
        "SELECT n.id, n.name, n.status, n.arch, n.guest_arches, n.accel, n.vcpus, n.memory_mb, \
         n.last_heartbeat_ms, n.allow_file_urls, n.allocated_vms AS alloc_vms, \
         n.allocated_vcpus AS alloc_vcpus, n.allocated_memory_mb AS alloc_memory_mb \
         FROM nodes n WHERE n.name = $1",
    )
    .bind(name)
    .fetch_one(&mut *conn)
    .await?;
    let id: String = r.try_get("id")?;
    let pools = sqlx::query(
        "SELECT p.id AS pool_id, p.name, i.path FROM pool_instances i \
         JOIN pools p ON p.id = i.pool_id WHERE i.node_id = $1 ORDER BY p.name",
    )
    .bind(id.clone())
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|p| {
        let pool_id: String = p.try_get("pool_id")?;
        Ok(NodePool {
            pool_id: parse_uuid("pools", &pool_id)?,
            pool: p.try_get("name")?,
            path: p.try_get("path")?,
        })
    })
    .collect::<Result<Vec<_>, StoreError>>()?;
    let status: String = r.try_get("status")?;
    let arches: String = r.try_get("guest_arches")?;
    let record = NodeRecord {
        id: parse_uuid("nodes", &id)?,
        name: r.try_get("name")?,
        status: if status == "ready" {
            otherix_api::NodeStatus::Ready
        } else {
            otherix_api::NodeStatus::NotReady
        },
        arch: r.try_get("arch")?,
        guest_arches: decode("nodes", &id, &arches)?,
        accel: r.try_get("accel")?,
        vcpus: r.try_get::<i64, _>("vcpus")? as u32,
        memory_mb: r.try_get::<i64, _>("memory_mb")? as u64,
        last_heartbeat_ms: r.try_get("last_heartbeat_ms")?,
        pools,
        allocated_vms: r.try_get::<i64, _>("alloc_vms")? as u32,
        allocated_vcpus: r.try_get::<i64, _>("alloc_vcpus")? as u32,
        allocated_memory_mb: r.try_get::<i64, _>("alloc_memory_mb")? as u64,
        allow_file_urls: r.try_get::<i64, _>("allow_file_urls")? != 0,
    };
    let ratios = super::cluster_settings::read_cluster_settings(conn)
        .await?
        .ratios();
    let api: Node = record.to_api((ratios.cpu, ratios.memory));
    Ok(Pending {
        event_type,
        kind: EventKind::Node,
        name: name.to_owned(),
        project: None,
        vm: None,
        object: to_json(&api),
    })
}

/// A pool, network or firmware as its `GET` shows it (in the transaction; for a delete,
/// read before the row goes).
pub(super) async fn object(
    conn: &mut AnyConnection,
    table: ObjectTable,
    id: Uuid,
    event_type: EventType,
) -> Result<Pending, StoreError> {
    let (tname, builtin, kind) = match table {
        ObjectTable::Pools => ("pools", "CAST(0 AS BIGINT)", EventKind::Pool),
        ObjectTable::Networks => ("networks", "CAST(0 AS BIGINT)", EventKind::Network),
        ObjectTable::Firmware => ("firmware", "builtin", EventKind::Firmware),
    };
    let r = sqlx::query(&format!(
        "SELECT id, name, spec, annotations, resource_version, {builtin} AS builtin \
         FROM {tname} WHERE id = $1"
    ))
    .bind(id.to_string())
    .fetch_one(&mut *conn)
    .await?;
    let sid: String = r.try_get("id")?;
    let name: String = r.try_get("name")?;
    let spec: String = r.try_get("spec")?;
    let annotations = decode(tname, &sid, &r.try_get::<String, _>("annotations")?)?;
    let resource_version: i64 = r.try_get("resource_version")?;
    let object = match table {
        ObjectTable::Pools => {
            let instances = sqlx::query(
                "SELECT i.id, n.name AS node, i.path FROM pool_instances i \
                 JOIN nodes n ON n.id = i.node_id WHERE i.pool_id = $1 ORDER BY n.name",
            )
            .bind(sid.clone())
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|i| {
                let iid: String = i.try_get("id")?;
                Ok(PoolInstance {
                    id: parse_uuid("pool_instances", &iid)?,
                    node: i.try_get("node")?,
                    path: i.try_get("path")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
            to_json(&Pool {
                id,
                name: name.clone(),
                annotations,
                spec: decode(tname, &sid, &spec)?,
                instances,
                resource_version,
            })
        }
        ObjectTable::Networks => to_json(&Network {
            id,
            name: name.clone(),
            annotations,
            spec: decode(tname, &sid, &spec)?,
            resource_version,
        }),
        ObjectTable::Firmware => to_json(&Firmware {
            id,
            name: name.clone(),
            annotations,
            spec: decode(tname, &sid, &spec)?,
            builtin: r.try_get::<i64, _>("builtin")? != 0,
            resource_version,
        }),
    };
    Ok(Pending {
        event_type,
        kind,
        name,
        project: None,
        vm: None,
        object,
    })
}

/// Project `name` as `GET /v1/projects/{name}` shows it (in the transaction).
pub(super) async fn project(
    conn: &mut AnyConnection,
    name: &str,
    event_type: EventType,
) -> Result<Pending, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {} FROM projects WHERE name = $1",
        super::identity::PROJECT_COLUMNS
    ))
    .bind(name)
    .fetch_one(&mut *conn)
    .await?;
    let p = super::identity::project_from_row(&row)?;
    let usage = super::identity::usage_in(conn, name).await?;
    let api = Project {
        id: p.id,
        name: p.name.clone(),
        annotations: p.annotations,
        spec: p.spec,
        usage,
        resource_version: p.resource_version,
    };
    Ok(Pending {
        event_type,
        kind: EventKind::Project,
        name: p.name.clone(),
        project: Some(p.name),
        vm: None,
        object: to_json(&api),
    })
}

/// The cluster settings as `GET /v1/cluster` shows them (in the transaction).
pub(super) async fn cluster(conn: &mut AnyConnection) -> Result<Pending, StoreError> {
    let api = super::cluster_settings::read_cluster_settings(conn)
        .await?
        .to_api();
    Ok(Pending {
        event_type: EventType::Modified,
        kind: EventKind::Cluster,
        name: super::cluster_settings::CLUSTER_NAME.to_owned(),
        project: None,
        vm: None,
        object: to_json(&api),
    })
}

/// Appends `events` in order. Call it as the transaction's last statement: it takes the
/// `last_seq` row lock, which orders every writer's numbers by commit (and, taken last,
/// cannot be part of a lock cycle). On PostgreSQL it also notifies `otherix_event`.
pub(super) async fn append(
    conn: &mut AnyConnection,
    now_ms: i64,
    events: Vec<Pending>,
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let (last,): (i64,) = sqlx::query_as(
        "UPDATE event_log SET value = value + $1 WHERE name = 'last_seq' RETURNING value",
    )
    .bind(events.len() as i64)
    .fetch_one(&mut *conn)
    .await?;
    let first = last - events.len() as i64 + 1;
    for (i, e) in events.into_iter().enumerate() {
        sqlx::query(
            "INSERT INTO events (seq, at_ms, event_type, kind, name, project, vm, object) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(first + i as i64)
        .bind(now_ms)
        .bind(e.event_type.as_str())
        .bind(e.kind.as_str())
        .bind(e.name)
        .bind(e.project)
        .bind(e.vm)
        .bind(e.object)
        .execute(&mut *conn)
        .await?;
    }
    super::relay::notify(conn, super::relay::channel::EVENT, &last.to_string()).await?;
    crate::events::ring();
    Ok(())
}

/// [`append`] of the one event of VM `id` changing (not added).
pub(super) async fn append_vm(
    conn: &mut AnyConnection,
    now_ms: i64,
    id: Uuid,
) -> Result<(), StoreError> {
    let changed = vm(conn, id, false).await?;
    append(conn, now_ms, vec![changed]).await
}

impl Store {
    /// The number of the newest committed event (0 when none ever was).
    pub async fn event_head(&self) -> Result<i64, StoreError> {
        let (v,): (i64,) = sqlx::query_as("SELECT value FROM event_log WHERE name = 'last_seq'")
            .fetch_one(&self.pool)
            .await?;
        Ok(v)
    }

    /// Events after `since`, oldest first, at most `limit`, and the watermark as read
    /// after them: when `since` is below it, events after `since` may have been purged
    /// (the caller answers `cursor_expired`).
    pub async fn events_after(
        &self,
        since: i64,
        limit: u32,
    ) -> Result<(Vec<EventRow>, i64), StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at_ms, event_type, kind, name, project, vm, object FROM events \
             WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(since)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let events = rows
            .iter()
            .map(|r| {
                let seq: i64 = r.try_get("seq")?;
                let corrupt = |what: &str| StoreError::Corrupt {
                    table: "events",
                    id: seq.to_string(),
                    detail: what.to_owned(),
                };
                let t: String = r.try_get("event_type")?;
                let k: String = r.try_get("kind")?;
                Ok(EventRow {
                    seq,
                    at_ms: r.try_get("at_ms")?,
                    event: Pending {
                        event_type: EventType::parse(&t).ok_or_else(|| corrupt("event_type"))?,
                        kind: EventKind::parse(&k).ok_or_else(|| corrupt("kind"))?,
                        name: r.try_get("name")?,
                        project: r.try_get("project")?,
                        vm: r.try_get("vm")?,
                        object: r.try_get("object")?,
                    },
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let purged = self.events_purged_through().await?;
        Ok((events, purged))
    }

    /// The highest event number retention has deleted (0: none).
    pub async fn events_purged_through(&self) -> Result<i64, StoreError> {
        let (v,): (i64,) =
            sqlx::query_as("SELECT value FROM event_log WHERE name = 'purged_through'")
                .fetch_one(&self.pool)
                .await?;
        Ok(v)
    }
}

/// Deletes the oldest events committed before `cutoff_ms`: the longest run of them at the
/// start of the log, at most `batch`, so the log stays a contiguous range above the
/// watermark (an event stamped early by a replica with a slow clock waits for the ones
/// before it). Moves `purged_through`; returns how many went.
pub(super) async fn purge(
    conn: &mut AnyConnection,
    cutoff_ms: i64,
    batch: i64,
) -> Result<u64, StoreError> {
    let oldest: Vec<(i64, i64)> =
        sqlx::query_as("SELECT seq, at_ms FROM events ORDER BY seq LIMIT $1")
            .bind(batch)
            .fetch_all(&mut *conn)
            .await?;
    let Some(upto) = expired_prefix_end(&oldest, cutoff_ms) else {
        return Ok(0);
    };
    let gone = sqlx::query("DELETE FROM events WHERE seq <= $1")
        .bind(upto)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    sqlx::query("UPDATE event_log SET value = $1 WHERE name = 'purged_through' AND value < $1")
        .bind(upto)
        .execute(&mut *conn)
        .await?;
    Ok(gone)
}

/// The last number of the run of `(seq, at_ms)` (oldest first) committed before
/// `cutoff_ms`; `None` when the oldest is not.
fn expired_prefix_end(oldest: &[(i64, i64)], cutoff_ms: i64) -> Option<i64> {
    oldest
        .iter()
        .take_while(|(_, at)| *at < cutoff_ms)
        .last()
        .map(|(seq, _)| *seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_prefix_end_table() {
        type Row<'a> = (&'a [(i64, i64)], i64, Option<i64>);
        let table: [Row; 5] = [
            (&[], 100, None),
            (&[(1, 10), (2, 20), (3, 30)], 100, Some(3)),
            (&[(1, 10), (2, 20), (3, 30)], 25, Some(2)),
            (&[(1, 10), (2, 20), (3, 30)], 10, None),
            // A young event stamped between old ones stops the run: no hole.
            (&[(4, 10), (5, 300), (6, 20)], 100, Some(4)),
        ];
        for (rows, cutoff, want) in table {
            assert_eq!(expired_prefix_end(rows, cutoff), want, "{rows:?} {cutoff}");
        }
    }
}
