//! VM rows: lookups, keyset-paginated listing, and the transactional writes that pair a
//! VM change with a task change.

use std::collections::HashMap;

use otherix_api::{TaskKind, VmPhase};
use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, AnyConnection, Row};
use uuid::Uuid;

use super::allocations::{footprint_of, move_allocations, stored_footprint};
use super::events;
use super::rows::{vm_from_row, VM_SELECT};
use super::tasks::{insert_task, update_task};
use super::{Fence, Store, StoreError};
use crate::model::{TaskRecord, VmRecord, PHASES_WITHOUT_QEMU};
use crate::scheduler::{fits, Capacity};

/// The effective-phase rule of `model::effective_phase`, in SQL, built from the same
/// `PHASES_WITHOUT_QEMU` list so the two cannot drift apart.
pub(super) fn effective_phase_sql() -> String {
    let kept: Vec<String> = PHASES_WITHOUT_QEMU
        .iter()
        .map(|p| format!("'{}'", p.as_str()))
        .collect();
    format!(
        "(CASE WHEN v.node IS NOT NULL AND n.status = 'not_ready' AND v.phase NOT IN ({}) \
         THEN 'unknown' ELSE v.phase END)",
        kept.join(", ")
    )
}

/// Server-side filters of `GET /v1/vms`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmFilter {
    /// Only this project's VMs; `None` = every project.
    pub project: Option<String>,
    pub pool: Option<String>,
    pub node: Option<String>,
    pub phase: Option<VmPhase>,
    /// `-l key=value,...`: every selector must match (AND).
    pub labels: Vec<otherix_api::labels::LabelSelector>,
}

/// What a VM's stored `labels` JSON contains exactly when it has label `key` = `value`:
/// `"key":"value"` (label keys and values cannot hold quotes, colons or commas, so the
/// text cannot match across two entries, and a longer value is followed by more than `"`).
pub fn label_needle(selector: &otherix_api::labels::LabelSelector) -> String {
    let quote = |s: &str| serde_json::to_string(s).expect("strings serialize");
    format!("{}:{}", quote(&selector.key), quote(&selector.value))
}

/// Who a VM is, for metrics labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmIdentity {
    pub name: String,
    pub project: String,
    pub node: Option<String>,
}

/// One page of VMs; `next` is the (created_at, id) key of the last item when more follow.
#[derive(Debug, Clone)]
pub struct VmPage {
    pub items: Vec<VmRecord>,
    pub next: Option<(i64, Uuid)>,
}

/// A bind value for dynamically built queries.
pub(super) enum Bind {
    Text(String),
    Int(i64),
}

pub(super) fn bind_all<'q>(
    mut q: Query<'q, Any, AnyArguments<'q>>,
    binds: Vec<Bind>,
) -> Query<'q, Any, AnyArguments<'q>> {
    for b in binds {
        q = match b {
            Bind::Text(s) => q.bind(s),
            Bind::Int(i) => q.bind(i),
        };
    }
    q
}

impl Store {
    /// The live VM with this name in `project`.
    pub async fn vm_by_name(
        &self,
        project: &str,
        name: &str,
    ) -> Result<Option<VmRecord>, StoreError> {
        let sql =
            format!("{VM_SELECT} WHERE v.project = $1 AND v.name = $2 AND v.deleted_at IS NULL");
        let row = sqlx::query(&sql)
            .bind(project)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(vm_from_row).transpose()
    }

    /// The live VMs of `project` among `names` (one query for a whole apply), by name.
    pub async fn vms_by_names(
        &self,
        project: &str,
        names: &[&str],
    ) -> Result<std::collections::HashMap<String, VmRecord>, StoreError> {
        let mut out = std::collections::HashMap::new();
        // Bounded IN lists (SQLite's default limit is 32,766 parameters).
        for chunk in names.chunks(500) {
            let marks: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "{VM_SELECT} WHERE v.project = $1 AND v.deleted_at IS NULL AND v.name IN ({})",
                marks.join(", ")
            );
            let mut q = sqlx::query(&sql).bind(project.to_owned());
            for name in chunk {
                q = q.bind((*name).to_owned());
            }
            for row in q.fetch_all(&self.pool).await? {
                let vm = vm_from_row(&row)?;
                out.insert(vm.name.clone(), vm);
            }
        }
        Ok(out)
    }

    /// The VM with this id, live or soft-deleted.
    pub async fn vm_by_id(&self, id: Uuid) -> Result<Option<VmRecord>, StoreError> {
        let sql = format!("{VM_SELECT} WHERE v.id = $1");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(vm_from_row).transpose()
    }

    /// Live VMs ordered by (created_at, id), starting after `after`.
    pub async fn list_vms(
        &self,
        filter: &VmFilter,
        after: Option<(i64, Uuid)>,
        limit: u32,
    ) -> Result<VmPage, StoreError> {
        let mut conds = vec!["v.deleted_at IS NULL".to_owned()];
        let mut binds = Vec::new();
        let param = |binds: &mut Vec<Bind>, b: Bind| {
            binds.push(b);
            format!("${}", binds.len())
        };
        if let Some(project) = &filter.project {
            let p = param(&mut binds, Bind::Text(project.clone()));
            conds.push(format!("v.project = {p}"));
        }
        if let Some(pool) = &filter.pool {
            let p = param(&mut binds, Bind::Text(pool.clone()));
            conds.push(format!("v.pool = {p}"));
        }
        if let Some(node) = &filter.node {
            let p = param(&mut binds, Bind::Text(node.clone()));
            conds.push(format!("v.node = {p}"));
        }
        if let Some(phase) = filter.phase {
            let p = param(&mut binds, Bind::Text(phase.as_str().to_owned()));
            conds.push(format!("{} = {p}", effective_phase_sql()));
            // Implied for every shown phase but `unknown` (which a stored phase becomes on a
            // not-ready node): lets the (phase, created_at, id) index find the page.
            if phase != VmPhase::Unknown {
                conds.push(format!("v.phase = {p}"));
            }
        }
        // Exact, case-sensitive substring tests on the JSON text (a scan of the page's
        // candidates; fine at today's sizes, a label table would index it).
        let contains = if self.is_postgres() {
            "strpos"
        } else {
            "instr"
        };
        for selector in &filter.labels {
            let p = param(&mut binds, Bind::Text(label_needle(selector)));
            conds.push(format!("{contains}(v.labels, {p}) > 0"));
        }
        if let Some((t, id)) = after {
            let pt = param(&mut binds, Bind::Int(t));
            let pi = param(&mut binds, Bind::Text(id.to_string()));
            conds.push(format!(
                "(v.created_at > {pt} OR (v.created_at = {pt} AND v.id > {pi}))"
            ));
        }
        let pl = param(&mut binds, Bind::Int(i64::from(limit) + 1));
        let sql = format!(
            "{VM_SELECT} WHERE {} ORDER BY v.created_at, v.id LIMIT {pl}",
            conds.join(" AND ")
        );
        let rows = bind_all(sqlx::query(&sql), binds)
            .fetch_all(&self.pool)
            .await?;
        let mut items = rows
            .iter()
            .map(vm_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|v| (v.created_at_ms, v.id))
        } else {
            None
        };
        Ok(VmPage { items, next })
    }

    /// Name, project and node of the live VMs among `ids` (unknown or deleted ones are
    /// left out), for labelling per-VM metrics.
    pub async fn vm_identities(
        &self,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, VmIdentity>, StoreError> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(500) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT id, name, project, node FROM vms WHERE deleted_at IS NULL AND id IN ({})",
                marks.join(", ")
            );
            let mut q = sqlx::query_as::<_, (String, String, String, Option<String>)>(&sql);
            for id in chunk {
                q = q.bind(id.to_string());
            }
            for (id, name, project, node) in q.fetch_all(&self.pool).await? {
                let id = super::rows::parse_uuid("vms", &id)?;
                out.insert(
                    id,
                    VmIdentity {
                        name,
                        project,
                        node,
                    },
                );
            }
        }
        Ok(out)
    }

    /// Ids of every live VM, for the periodic resync.
    pub async fn live_vm_ids(&self) -> Result<Vec<Uuid>, StoreError> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM vms WHERE deleted_at IS NULL ORDER BY created_at")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| super::rows::parse_uuid("vms", &r.0))
            .collect()
    }

    /// Every live VM with the kind of its in-flight task, if any: what the periodic
    /// resync plans from (two scans, no per-VM query).
    pub async fn live_vms_with_in_flight(
        &self,
    ) -> Result<Vec<(VmRecord, Option<TaskKind>)>, StoreError> {
        let rows = sqlx::query(&format!("{VM_SELECT} WHERE v.deleted_at IS NULL"))
            .fetch_all(&self.pool)
            .await?;
        let in_flight: Vec<(String, String)> = sqlx::query_as(
            "SELECT vm_id, kind FROM tasks WHERE status IN ('pending', 'running') \
             AND vm_id IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        let kinds: std::collections::HashMap<String, TaskKind> = in_flight
            .into_iter()
            .filter_map(|(vm, kind)| Some((vm, TaskKind::parse(&kind)?)))
            .collect();
        rows.iter()
            .map(|row| {
                let vm = vm_from_row(row)?;
                let kind = kinds.get(&vm.id.to_string()).copied();
                Ok((vm, kind))
            })
            .collect()
    }

    /// Ids of the live VMs placed on `node`.
    pub async fn live_vm_ids_on_node(&self, node: &str) -> Result<Vec<Uuid>, StoreError> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM vms WHERE deleted_at IS NULL AND node = $1")
                .bind(node)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| super::rows::parse_uuid("vms", &r.0))
            .collect()
    }

    /// Writes every mutable column of `vm` if its row still has `vm.resource_version`
    /// (else [`StoreError::Conflict`]); on success `vm.resource_version` is the new one.
    pub async fn save_vm(&self, vm: &mut VmRecord) -> Result<(), StoreError> {
        let now = self.now_ms();
        let mut tx = self.pool.begin().await?;
        let version = update_vm(&mut tx, vm, now).await?;
        events::append_vm(&mut tx, now, vm.id).await?;
        tx.commit().await?;
        vm.resource_version = version;
        Ok(())
    }

    /// [`Store::save_vm`] for the leader's loop: with a `fence` the lease must still be
    /// held at that epoch, checked in the write's transaction ([`StoreError::Fenced`]).
    pub async fn save_vm_fenced(
        &self,
        vm: &mut VmRecord,
        fence: Option<&Fence>,
    ) -> Result<(), StoreError> {
        let Some(fence) = fence else {
            return self.save_vm(vm).await;
        };
        let now = self.now_ms();
        let mut tx = self.pool.begin().await?;
        super::lease::check_fence(&mut tx, fence).await?;
        let version = update_vm(&mut tx, vm, now).await?;
        events::append_vm(&mut tx, now, vm.id).await?;
        tx.commit().await?;
        vm.resource_version = version;
        Ok(())
    }

    /// Writes `vm` (compare-and-swap, as [`Store::save_vm`]) and inserts `task` in one
    /// transaction; a second in-flight task for the VM is [`StoreError::TaskInFlight`]. A
    /// vm.create task claims its node's capacity in the same transaction
    /// ([`StoreError::InsufficientCapacity`] when the node is full). With a `fence` (the
    /// leader's loop) the lease must still be held at that epoch ([`StoreError::Fenced`]).
    pub async fn save_vm_with_new_task(
        &self,
        vm: &mut VmRecord,
        task: &TaskRecord,
        fence: Option<&Fence>,
    ) -> Result<(), StoreError> {
        let now = self.now_ms();
        let mut tx = self.pool.begin().await?;
        if let Some(fence) = fence {
            super::lease::check_fence(&mut tx, fence).await?;
        }
        let version = update_vm(&mut tx, vm, now).await?;
        if task.kind == TaskKind::VmCreate {
            if let Some(node) = &task.node {
                claim_node(&mut tx, node).await?;
            }
        }
        insert_task(&mut tx, task)
            .await
            .map_err(|e| StoreError::from_task_insert(e, vm.id, task))?;
        let changed = vec![
            events::vm(&mut tx, vm.id, false).await?,
            events::task(task, true),
        ];
        events::append(&mut tx, now, changed).await?;
        tx.commit().await?;
        vm.resource_version = version;
        Ok(())
    }

    /// Writes `vm` (compare-and-swap, as [`Store::save_vm`]) and `task` (both existing)
    /// in one transaction.
    pub async fn save_vm_and_task(
        &self,
        vm: &mut VmRecord,
        task: &TaskRecord,
    ) -> Result<(), StoreError> {
        let now = self.now_ms();
        let mut tx = self.pool.begin().await?;
        let version = update_vm(&mut tx, vm, now).await?;
        update_task(&mut tx, task).await?;
        let changed = vec![
            events::vm(&mut tx, vm.id, false).await?,
            events::task(task, false),
        ];
        events::append(&mut tx, now, changed).await?;
        tx.commit().await?;
        vm.resource_version = version;
        Ok(())
    }
}

pub(super) async fn insert_vm(conn: &mut AnyConnection, vm: &VmRecord) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO vms (id, name, spec, generation, observed_generation, phase, node, pool, \
         pool_path, pid, serial_log, requested_op, last_error_code, last_error_message, \
         deletion_requested, created_at, updated_at, deleted_at, bridge, firmware, \
         annotations, booted_spec, booted_at, retry_kind, retry_attempts, retry_at, project, \
         vcpus, memory_mb, requested_by, resource_version, labels, guest) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
         $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33)",
    )
    .bind(vm.id.to_string())
    .bind(vm.name.clone())
    .bind(spec_json(vm))
    .bind(vm.generation)
    .bind(vm.observed_generation)
    .bind(vm.phase.as_str())
    .bind(vm.node.clone())
    .bind(vm.pool.clone())
    .bind(vm.pool_path.clone())
    .bind(vm.pid.map(i64::from))
    .bind(vm.serial_log.clone())
    .bind(requested_op_json(vm))
    .bind(vm.last_error.as_ref().map(|e| e.code.as_str().to_owned()))
    .bind(vm.last_error.as_ref().map(|e| e.message.clone()))
    .bind(i64::from(vm.deletion_requested))
    .bind(vm.created_at_ms)
    .bind(vm.updated_at_ms)
    .bind(vm.deleted_at_ms)
    .bind(vm.bridge.clone())
    .bind(
        vm.firmware
            .as_ref()
            .map(|f| serde_json::to_string(f).expect("ResolvedFirmware serializes")),
    )
    .bind(annotations_json(vm))
    .bind(booted_spec_json(vm))
    .bind(vm.booted_at_ms)
    .bind(vm.retry_kind.map(|k| k.as_str().to_owned()))
    .bind(i64::from(vm.retry_attempts))
    .bind(vm.retry_at_ms)
    .bind(vm.project.clone())
    .bind(i64::from(vm.spec.vcpus))
    .bind(i64::from(vm.spec.memory_mb))
    .bind(vm.requested_by.clone())
    .bind(vm.resource_version)
    .bind(labels_json(vm))
    .bind(guest_json(vm))
    .execute(&mut *conn)
    .await?;
    move_allocations(conn, None, footprint_of(vm).as_ref()).await
}

/// Compare-and-swap of every mutable column of `vm`: written only if the row still has
/// `vm.resource_version`, which moves to the returned next version. A row changed (or
/// gone) since `vm` was read is [`StoreError::Conflict`].
pub(super) async fn update_vm(
    conn: &mut AnyConnection,
    vm: &VmRecord,
    now_ms: i64,
) -> Result<i64, StoreError> {
    let next = vm.resource_version + 1;
    let held = stored_footprint(conn, vm.id, vm.resource_version).await?;
    let written = sqlx::query(
        "UPDATE vms SET spec = $2, generation = $3, observed_generation = $4, phase = $5, \
         node = $6, pool = $7, pool_path = $8, pid = $9, serial_log = $10, requested_op = $11, \
         last_error_code = $12, last_error_message = $13, deletion_requested = $14, \
         updated_at = $15, deleted_at = $16, annotations = $17, booted_spec = $18, \
         booted_at = $19, retry_kind = $20, retry_attempts = $21, retry_at = $22, vcpus = $23, \
         memory_mb = $24, requested_by = $25, resource_version = $26, labels = $28, guest = $29 \
         WHERE id = $1 AND resource_version = $27",
    )
    .bind(vm.id.to_string())
    .bind(spec_json(vm))
    .bind(vm.generation)
    .bind(vm.observed_generation)
    .bind(vm.phase.as_str())
    .bind(vm.node.clone())
    .bind(vm.pool.clone())
    .bind(vm.pool_path.clone())
    .bind(vm.pid.map(i64::from))
    .bind(vm.serial_log.clone())
    .bind(requested_op_json(vm))
    .bind(vm.last_error.as_ref().map(|e| e.code.as_str().to_owned()))
    .bind(vm.last_error.as_ref().map(|e| e.message.clone()))
    .bind(i64::from(vm.deletion_requested))
    .bind(now_ms)
    .bind(vm.deleted_at_ms)
    .bind(annotations_json(vm))
    .bind(booted_spec_json(vm))
    .bind(vm.booted_at_ms)
    .bind(vm.retry_kind.map(|k| k.as_str().to_owned()))
    .bind(i64::from(vm.retry_attempts))
    .bind(vm.retry_at_ms)
    .bind(i64::from(vm.spec.vcpus))
    .bind(i64::from(vm.spec.memory_mb))
    .bind(vm.requested_by.clone())
    .bind(next)
    .bind(vm.resource_version)
    .bind(labels_json(vm))
    .bind(guest_json(vm))
    .execute(&mut *conn)
    .await?;
    if written.rows_affected() == 1 {
        move_allocations(conn, held.as_ref(), footprint_of(vm).as_ref()).await?;
        return Ok(next);
    }
    let actual: Option<(i64,)> = sqlx::query_as("SELECT resource_version FROM vms WHERE id = $1")
        .bind(vm.id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    Err(StoreError::Conflict {
        kind: "vm",
        name: vm.name.clone(),
        expected: vm.resource_version,
        actual: actual.map(|a| a.0),
    })
}

/// Claims capacity on `node` for the VM rows this transaction wrote (their footprints are
/// already in the node's counters): locks the node row (a touching UPDATE: a row lock on
/// PostgreSQL, the write lock on SQLite) so concurrent claims on one node queue up, then
/// checks that what is allocated there still fits ([`scheduler::fits`]). Lock order:
/// project, then VM, then node.
pub(super) async fn claim_node(conn: &mut AnyConnection, node: &str) -> Result<(), StoreError> {
    let touched = sqlx::query("UPDATE nodes SET vcpus = vcpus WHERE name = $1")
        .bind(node)
        .execute(&mut *conn)
        .await?;
    if touched.rows_affected() == 0 {
        return Err(StoreError::InsufficientCapacity {
            node: node.to_owned(),
            detail: "node not found".to_owned(),
        });
    }
    let row = sqlx::query(
        "SELECT vcpus, memory_mb, allocated_vcpus, allocated_memory_mb FROM nodes \
         WHERE name = $1",
    )
    .bind(node)
    .fetch_one(&mut *conn)
    .await?;
    let get = |col: &str| -> Result<u64, StoreError> {
        Ok(u64::try_from(row.try_get::<i64, _>(col)?).unwrap_or(0))
    };
    let capacity = Capacity {
        vcpus: get("vcpus")?,
        memory_mb: get("memory_mb")?,
    };
    let allocated = Capacity {
        vcpus: get("allocated_vcpus")?,
        memory_mb: get("allocated_memory_mb")?,
    };
    let ratios = super::cluster_settings::read_cluster_settings(conn)
        .await?
        .ratios();
    match fits(capacity, allocated, ratios) {
        Ok(()) => Ok(()),
        Err(detail) => Err(StoreError::InsufficientCapacity {
            node: node.to_owned(),
            detail,
        }),
    }
}

fn spec_json(vm: &VmRecord) -> String {
    serde_json::to_string(&vm.spec).expect("VmSpec serializes")
}

fn requested_op_json(vm: &VmRecord) -> Option<String> {
    vm.requested_op
        .map(|op| serde_json::to_string(&op).expect("RequestedOp serializes"))
}

fn labels_json(vm: &VmRecord) -> String {
    serde_json::to_string(&vm.labels).expect("labels serialize")
}

fn annotations_json(vm: &VmRecord) -> String {
    serde_json::to_string(&vm.annotations).expect("annotations serialize")
}

fn guest_json(vm: &VmRecord) -> Option<String> {
    vm.guest
        .as_ref()
        .map(|g| serde_json::to_string(g).expect("GuestState serializes"))
}

fn booted_spec_json(vm: &VmRecord) -> Option<String> {
    vm.booted_spec
        .as_ref()
        .map(|s| serde_json::to_string(s).expect("VmSpec serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::default_database_url;

    fn spec() -> otherix_api::VmSpec {
        serde_json::from_value(serde_json::json!({
            "image_url": "http://127.0.0.1:9/img.qcow2", "arch": "amd64"
        }))
        .unwrap()
    }

    #[test]
    fn label_needle_matches_exactly_one_entry_of_the_stored_json() {
        use otherix_api::labels::LabelSelector;
        let stored = |pairs: &[(&str, &str)]| {
            let map: std::collections::BTreeMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            serde_json::to_string(&map).unwrap()
        };
        let sel = |s: &str| LabelSelector::parse("label", s).unwrap();
        // (stored labels, selector, matches)
        let table = [
            (stored(&[("app", "web")]), "app=web", true),
            (stored(&[("app", "web2")]), "app=web", false),
            (stored(&[("app", "web")]), "app=we", false),
            (stored(&[("xapp", "web")]), "app=web", false),
            (stored(&[("App", "web")]), "app=web", false),
            (stored(&[("a", "app"), ("b", "web")]), "app=web", false),
            (stored(&[("a", "x"), ("app", "web")]), "app=web", true),
            (stored(&[("app", "")]), "app=", true),
            (stored(&[("app", "web")]), "app=", false),
            (
                stored(&[("example.com/tier", "db")]),
                "example.com/tier=db",
                true,
            ),
            (stored(&[]), "app=web", false),
        ];
        for (json, selector, want) in table {
            let got = json.contains(&label_needle(&sel(selector)));
            assert_eq!(got, want, "{json} {selector}");
        }
    }

    #[tokio::test]
    async fn save_vm_stale_resource_version_is_conflict_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&default_database_url(dir.path()))
            .await
            .unwrap();
        let vm = VmRecord::new("web-1".into(), spec(), store.now_ms());
        insert_vm(&mut store.pool.acquire().await.unwrap(), &vm)
            .await
            .unwrap();

        // Two writers read version 1; the first wins and moves it to 2.
        let mut first = store.vm_by_id(vm.id).await.unwrap().unwrap();
        let mut second = first.clone();
        assert_eq!(first.resource_version, 1);
        first.spec.vcpus = 4;
        store.save_vm(&mut first).await.unwrap();
        assert_eq!(first.resource_version, 2);

        second.spec.vcpus = 8;
        let err = store.save_vm(&mut second).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Conflict {
                    expected: 1,
                    actual: Some(2),
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.is_conflict());
        assert_eq!(
            second.resource_version, 1,
            "a failed write keeps the version"
        );
        let stored = store.vm_by_id(vm.id).await.unwrap().unwrap();
        assert_eq!((stored.spec.vcpus, stored.resource_version), (4, 2));

        // Re-read and retry: the next write succeeds on the fresh version.
        let mut again = stored;
        again.spec.vcpus = 8;
        store.save_vm(&mut again).await.unwrap();
        assert_eq!(again.resource_version, 3);

        // A transaction that loses the race writes neither the VM nor its task.
        let mut stale = second;
        let task = TaskRecord::pending(TaskKind::VmStart, &stale, None, store.now_ms());
        let err = store
            .save_vm_with_new_task(&mut stale, &task, None)
            .await
            .unwrap_err();
        assert!(err.is_conflict(), "{err:?}");
        assert!(store.task(task.id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn save_vm_guest_round_trips_and_clears() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&default_database_url(dir.path()))
            .await
            .unwrap();
        let vm = VmRecord::new("web-1".into(), spec(), store.now_ms());
        insert_vm(&mut store.pool.acquire().await.unwrap(), &vm)
            .await
            .unwrap();
        assert_eq!(store.vm_by_id(vm.id).await.unwrap().unwrap().guest, None);
        let guest = crate::model::GuestState {
            connected: true,
            addresses: vec!["10.0.2.15/24".into()],
            os_name: "Busybox".into(),
            os_version: "1".into(),
            answered: true,
        };
        let mut v = store.vm_by_id(vm.id).await.unwrap().unwrap();
        v.guest = Some(guest.clone());
        store.save_vm(&mut v).await.unwrap();
        let mut v = store.vm_by_id(vm.id).await.unwrap().unwrap();
        assert_eq!(v.guest, Some(guest));
        v.guest = None;
        store.save_vm(&mut v).await.unwrap();
        assert_eq!(store.vm_by_id(vm.id).await.unwrap().unwrap().guest, None);
    }
}
