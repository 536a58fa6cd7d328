//! Per-node allocation counters (`nodes.allocated_vms`, `allocated_vcpus`,
//! `allocated_memory_mb`): moved by [`crate::allocations::deltas`] in the transaction of
//! every VM row write, read by the capacity claim and `GET /v1/nodes` without summing VMs.

use otherix_api::VmPhase;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use crate::allocations::{deltas, Footprint};
use crate::model::VmRecord;

/// What `vm` (as it is about to be written) holds on its node.
pub(super) fn footprint_of(vm: &VmRecord) -> Option<Footprint> {
    Footprint::of(
        vm.node.as_deref(),
        vm.deleted_at_ms.is_some(),
        vm.phase,
        i64::from(vm.spec.vcpus),
        i64::from(vm.spec.memory_mb),
    )
}

/// What the stored row `id` holds while it is still at `version` (`None` when it holds
/// nothing, or is at another version: then the compare-and-swap that follows fails).
/// Its first statement is a write that locks the row (a touching UPDATE): a SQLite
/// transaction that read first could not take the write lock once another connection had
/// written (SQLITE_BUSY), and on PostgreSQL the read then sees the row it holds.
pub(super) async fn stored_footprint(
    conn: &mut AnyConnection,
    id: Uuid,
    version: i64,
) -> Result<Option<Footprint>, sqlx::Error> {
    let locked = sqlx::query(
        "UPDATE vms SET resource_version = resource_version \
         WHERE id = $1 AND resource_version = $2",
    )
    .bind(id.to_string())
    .bind(version)
    .execute(&mut *conn)
    .await?;
    if locked.rows_affected() == 0 {
        return Ok(None);
    }
    let row = sqlx::query(
        "SELECT node, phase, deleted_at, vcpus, memory_mb FROM vms \
         WHERE id = $1 AND resource_version = $2",
    )
    .bind(id.to_string())
    .bind(version)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let node: Option<String> = row.try_get("node")?;
    let phase: String = row.try_get("phase")?;
    let deleted_at: Option<i64> = row.try_get("deleted_at")?;
    // A phase this build does not know still holds its resources: over-counting only
    // refuses a placement, under-counting would overcommit.
    let phase = VmPhase::parse(&phase).unwrap_or(VmPhase::Pending);
    Ok(Footprint::of(
        node.as_deref(),
        deleted_at.is_some(),
        phase,
        row.try_get::<Option<i64>, _>("vcpus")?.unwrap_or(0),
        row.try_get::<Option<i64>, _>("memory_mb")?.unwrap_or(0),
    ))
}

/// Moves the counters of the nodes a row write changed from `old` to `new`.
pub(super) async fn move_allocations(
    conn: &mut AnyConnection,
    old: Option<&Footprint>,
    new: Option<&Footprint>,
) -> Result<(), sqlx::Error> {
    for d in deltas(old, new) {
        sqlx::query(
            "UPDATE nodes SET allocated_vms = allocated_vms + $2, \
             allocated_vcpus = allocated_vcpus + $3, \
             allocated_memory_mb = allocated_memory_mb + $4 WHERE name = $1",
        )
        .bind(d.node)
        .bind(d.vms)
        .bind(d.vcpus)
        .bind(d.memory_mb)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Sets every node's counters from the VM rows (the one full count, for rows written
/// before the counters existed; migration 0014 does the same in SQL).
pub(super) async fn recount_allocations(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    sqlx::query(RECOUNT_SQL).execute(&mut *conn).await?;
    Ok(())
}

const RECOUNT_SQL: &str = "UPDATE nodes SET \
     allocated_vms = (SELECT COUNT(*) FROM vms v WHERE v.node = nodes.name \
       AND v.deleted_at IS NULL AND v.phase <> 'failed'), \
     allocated_vcpus = (SELECT COALESCE(SUM(v.vcpus), 0) FROM vms v WHERE v.node = nodes.name \
       AND v.deleted_at IS NULL AND v.phase <> 'failed'), \
     allocated_memory_mb = (SELECT COALESCE(SUM(v.memory_mb), 0) FROM vms v \
       WHERE v.node = nodes.name AND v.deleted_at IS NULL AND v.phase <> 'failed')";
