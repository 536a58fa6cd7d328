//! Decoding of `AnyRow`s into domain records, and the column lists the queries select.

use otherix_api::{ErrorBody, ErrorCode, TaskKind, TaskProgress, TaskStatus, VmPhase};
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use super::StoreError;
use crate::model::{TaskRecord, VmRecord};

/// The VM columns, selected from `vms v LEFT JOIN nodes n ON n.name = v.node`.
pub(super) const VM_SELECT: &str = "SELECT v.id, v.name, v.spec, v.generation, \
    v.observed_generation, v.phase, v.node, v.pool, v.pool_path, v.pid, v.serial_log, \
    v.requested_op, v.last_error_code, v.last_error_message, v.deletion_requested, \
    v.created_at, v.updated_at, v.deleted_at, v.bridge, v.firmware, n.status AS node_status, \
    v.annotations, v.booted_spec, v.booted_at, v.retry_kind, v.retry_attempts, v.retry_at, \
    v.project, v.requested_by, v.resource_version, v.labels, v.guest, \
    (SELECT t.id FROM tasks t WHERE t.vm_id = v.id AND t.status IN ('pending', 'running') \
    LIMIT 1) AS current_task \
    FROM vms v LEFT JOIN nodes n ON n.name = v.node";

pub(super) const TASK_COLUMNS: &str = "id, kind, vm_id, vm_name, node, status, phase, \
    bytes_done, bytes_total, error_code, error_message, placement, idempotency_key, \
    stop_timeout_ms, created_at, started_at, finished_at, project, requested_by, \
    idempotency_request, epoch";

fn corrupt(table: &'static str, id: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        table,
        id: id.to_owned(),
        detail: detail.to_string(),
    }
}

pub(super) fn parse_uuid(table: &'static str, s: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(s).map_err(|e| corrupt(table, s, e))
}

fn error_body(code: Option<String>, message: Option<String>) -> Option<ErrorBody> {
    code.map(|c| ErrorBody {
        code: ErrorCode::from_wire(&c),
        message: message.unwrap_or_default(),
    })
}

pub(super) fn vm_from_row(row: &AnyRow) -> Result<VmRecord, StoreError> {
    let id: String = row.try_get("id")?;
    let spec: String = row.try_get("spec")?;
    let phase: String = row.try_get("phase")?;
    let requested_op: Option<String> = row.try_get("requested_op")?;
    let node_status: Option<String> = row.try_get("node_status")?;
    let current_task: Option<String> = row.try_get("current_task")?;
    let pid: Option<i64> = row.try_get("pid")?;
    let firmware: Option<String> = row.try_get("firmware")?;
    let annotations: String = row.try_get("annotations")?;
    let labels: String = row.try_get("labels")?;
    let booted_spec: Option<String> = row.try_get("booted_spec")?;
    let retry_kind: Option<String> = row.try_get("retry_kind")?;
    let guest: Option<String> = row.try_get("guest")?;
    Ok(VmRecord {
        id: parse_uuid("vms", &id)?,
        name: row.try_get("name")?,
        project: row.try_get("project")?,
        spec: serde_json::from_str(&spec).map_err(|e| corrupt("vms", &id, e))?,
        generation: row.try_get("generation")?,
        observed_generation: row.try_get("observed_generation")?,
        phase: VmPhase::parse(&phase).ok_or_else(|| corrupt("vms", &id, "phase"))?,
        node: row.try_get("node")?,
        pool: row.try_get("pool")?,
        pool_path: row.try_get("pool_path")?,
        pid: pid.and_then(|p| u32::try_from(p).ok()),
        serial_log: row.try_get("serial_log")?,
        requested_op: requested_op
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|e| corrupt("vms", &id, e))?,
        last_error: error_body(
            row.try_get("last_error_code")?,
            row.try_get("last_error_message")?,
        ),
        deletion_requested: row.try_get::<i64, _>("deletion_requested")? != 0,
        created_at_ms: row.try_get("created_at")?,
        updated_at_ms: row.try_get("updated_at")?,
        deleted_at_ms: row.try_get("deleted_at")?,
        node_ready: node_status.as_deref() != Some("not_ready"),
        current_task: current_task.map(|t| parse_uuid("tasks", &t)).transpose()?,
        bridge: row.try_get("bridge")?,
        firmware: firmware
            .map(|f| serde_json::from_str(&f))
            .transpose()
            .map_err(|e| corrupt("vms", &id, e))?,
        annotations: serde_json::from_str(&annotations).map_err(|e| corrupt("vms", &id, e))?,
        labels: serde_json::from_str(&labels).map_err(|e| corrupt("vms", &id, e))?,
        booted_spec: booted_spec
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|e| corrupt("vms", &id, e))?,
        booted_at_ms: row.try_get("booted_at")?,
        retry_kind: retry_kind
            .map(|k| TaskKind::parse(&k).ok_or_else(|| corrupt("vms", &id, "retry_kind")))
            .transpose()?,
        retry_attempts: u32::try_from(row.try_get::<i64, _>("retry_attempts")?).unwrap_or(0),
        retry_at_ms: row.try_get("retry_at")?,
        requested_by: row.try_get("requested_by")?,
        resource_version: row.try_get("resource_version")?,
        guest: guest
            .map(|g| serde_json::from_str(&g))
            .transpose()
            .map_err(|e| corrupt("vms", &id, e))?,
    })
}

pub(super) fn task_from_row(row: &AnyRow) -> Result<TaskRecord, StoreError> {
    let id: String = row.try_get("id")?;
    let kind: String = row.try_get("kind")?;
    let status: String = row.try_get("status")?;
    let vm_id: Option<String> = row.try_get("vm_id")?;
    let phase: Option<String> = row.try_get("phase")?;
    let bytes_done: Option<i64> = row.try_get("bytes_done")?;
    let bytes_total: Option<i64> = row.try_get("bytes_total")?;
    let placement: Option<String> = row.try_get("placement")?;
    let stop_timeout_ms: Option<i64> = row.try_get("stop_timeout_ms")?;
    Ok(TaskRecord {
        id: parse_uuid("tasks", &id)?,
        kind: TaskKind::parse(&kind).ok_or_else(|| corrupt("tasks", &id, "kind"))?,
        vm_id: vm_id.map(|v| parse_uuid("tasks", &v)).transpose()?,
        vm_name: row.try_get("vm_name")?,
        project: row.try_get("project")?,
        requested_by: row.try_get("requested_by")?,
        node: row.try_get("node")?,
        status: TaskStatus::parse(&status).ok_or_else(|| corrupt("tasks", &id, "status"))?,
        progress: phase.map(|phase| TaskProgress {
            phase,
            bytes_done: bytes_done.map(|b| b as u64),
            bytes_total: bytes_total.map(|b| b as u64),
        }),
        error: error_body(row.try_get("error_code")?, row.try_get("error_message")?),
        placement: placement
            .map(|p| serde_json::from_str(&p))
            .transpose()
            .map_err(|e| corrupt("tasks", &id, e))?,
        idempotency_key: row.try_get("idempotency_key")?,
        idempotency_request: row.try_get("idempotency_request")?,
        stop_timeout_ms: stop_timeout_ms.map(|t| t as u64),
        created_at_ms: row.try_get("created_at")?,
        started_at_ms: row.try_get("started_at")?,
        finished_at_ms: row.try_get("finished_at")?,
        epoch: row.try_get("epoch")?,
    })
}
