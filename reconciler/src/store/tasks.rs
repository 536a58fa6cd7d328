//! Task rows: lookups, the newest-first listing, redelivery queries, and writes.

use sqlx::AnyConnection;
use uuid::Uuid;

use super::rows::{task_from_row, TASK_COLUMNS};
use super::vms::{bind_all, Bind};
use super::{Store, StoreError};
use crate::model::TaskRecord;

/// One page of tasks, newest first; `next` is the (created_at, id) key of the last item.
#[derive(Debug, Clone)]
pub struct TaskPage {
    pub items: Vec<TaskRecord>,
    pub next: Option<(i64, Uuid)>,
}

impl Store {
    pub async fn task(&self, id: Uuid) -> Result<Option<TaskRecord>, StoreError> {
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(task_from_row).transpose()
    }

    /// The pending or running task of a VM, if any.
    pub async fn in_flight_task(&self, vm_id: Uuid) -> Result<Option<TaskRecord>, StoreError> {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE vm_id = $1 AND status IN ('pending', 'running')"
        );
        let row = sqlx::query(&sql)
            .bind(vm_id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(task_from_row).transpose()
    }

    /// Every non-terminal task assigned to `node`, oldest first (redelivery on register).
    pub async fn open_tasks_for_node(&self, node: &str) -> Result<Vec<TaskRecord>, StoreError> {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE node = $1 \
             AND status IN ('pending', 'running') ORDER BY created_at, id"
        );
        let rows = sqlx::query(&sql).bind(node).fetch_all(&self.pool).await?;
        rows.iter().map(task_from_row).collect()
    }

    /// Tasks newest first, optionally only those of one project (`None` = all) and of VMs
    /// named `vm_name`.
    pub async fn list_tasks(
        &self,
        project: Option<&str>,
        vm_name: Option<&str>,
        before: Option<(i64, Uuid)>,
        limit: u32,
    ) -> Result<TaskPage, StoreError> {
        let mut conds = vec!["1 = 1".to_owned()];
        let mut binds = Vec::new();
        if let Some(project) = project {
            binds.push(Bind::Text(project.to_owned()));
            conds.push(format!("project = ${}", binds.len()));
        }
        if let Some(name) = vm_name {
            binds.push(Bind::Text(name.to_owned()));
            conds.push(format!("vm_name = ${}", binds.len()));
        }
        if let Some((t, id)) = before {
            binds.push(Bind::Int(t));
            let pt = binds.len();
            binds.push(Bind::Text(id.to_string()));
            let pi = binds.len();
            conds.push(format!(
                "(created_at < ${pt} OR (created_at = ${pt} AND id < ${pi}))"
            ));
        }
        binds.push(Bind::Int(i64::from(limit) + 1));
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE {} ORDER BY created_at DESC, id DESC LIMIT ${}",
            conds.join(" AND "),
            binds.len()
        );
        let rows = bind_all(sqlx::query(&sql), binds)
            .fetch_all(&self.pool)
            .await?;
        let mut items = rows
            .iter()
            .map(task_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|t| (t.created_at_ms, t.id))
        } else {
            None
        };
        Ok(TaskPage { items, next })
    }

    /// Inserts a task that belongs to no VM change (e.g. an already-succeeded start).
    pub async fn insert_task(&self, task: &TaskRecord) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        insert_task(&mut tx, task)
            .await
            .map_err(|e| StoreError::from_task_insert(e, task.vm_id.unwrap_or_default(), task))?;
        super::events::append(
            &mut tx,
            self.now_ms(),
            vec![super::events::task(task, true)],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A new leader (`fence`) takes over the unfinished tasks its predecessors emitted:
    /// they carry its epoch from now on, so agents that already saw this epoch still
    /// accept them, and they are announced for delivery again. Returns how many.
    pub async fn adopt_open_tasks(&self, fence: &super::Fence) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        super::lease::check_fence(&mut tx, fence).await?;
        let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "UPDATE tasks SET epoch = $1 WHERE status IN ('pending', 'running') \
             AND epoch IS NOT NULL AND epoch < $1 RETURNING id, status, node",
        )
        .bind(fence.epoch)
        .fetch_all(&mut *tx)
        .await?;
        for (id, status, node) in &rows {
            let payload = format!("{id} {status} {}", node.as_deref().unwrap_or("-"));
            super::relay::notify(&mut tx, super::relay::channel::TASK, &payload).await?;
        }
        tx.commit().await?;
        Ok(rows.len() as u64)
    }

    /// Writes every mutable column of `task`.
    pub async fn save_task(&self, task: &TaskRecord) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        update_task(&mut tx, task).await?;
        super::events::append(
            &mut tx,
            self.now_ms(),
            vec![super::events::task(task, false)],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

pub(super) async fn insert_task(
    conn: &mut AnyConnection,
    t: &TaskRecord,
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO tasks ({TASK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
         $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)"
    );
    sqlx::query(&sql)
        .bind(t.id.to_string())
        .bind(t.kind.as_str())
        .bind(t.vm_id.map(|v| v.to_string()))
        .bind(t.vm_name.clone())
        .bind(t.node.clone())
        .bind(t.status.as_str())
        .bind(t.progress.as_ref().map(|p| p.phase.clone()))
        .bind(
            t.progress
                .as_ref()
                .and_then(|p| p.bytes_done)
                .map(|b| b as i64),
        )
        .bind(
            t.progress
                .as_ref()
                .and_then(|p| p.bytes_total)
                .map(|b| b as i64),
        )
        .bind(t.error.as_ref().map(|e| e.code.as_str().to_owned()))
        .bind(t.error.as_ref().map(|e| e.message.clone()))
        .bind(placement_json(t))
        .bind(t.idempotency_key.clone())
        .bind(t.stop_timeout_ms.map(|ms| ms as i64))
        .bind(t.created_at_ms)
        .bind(t.started_at_ms)
        .bind(t.finished_at_ms)
        .bind(t.project.clone())
        .bind(t.requested_by.clone())
        .bind(t.idempotency_request.clone())
        .bind(t.epoch)
        .execute(&mut *conn)
        .await?;
    announce_task(conn, t).await
}

/// Tells every replica that `t` changed (at commit): long-polls wake, and the replica
/// holding the node's stream delivers a pending task.
async fn announce_task(conn: &mut AnyConnection, t: &TaskRecord) -> Result<(), sqlx::Error> {
    let payload = format!(
        "{} {} {}",
        t.id,
        t.status.as_str(),
        t.node.as_deref().unwrap_or("-")
    );
    super::relay::notify(conn, super::relay::channel::TASK, &payload).await
}

pub(super) async fn update_task(
    conn: &mut AnyConnection,
    t: &TaskRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE tasks SET node = $2, status = $3, phase = $4, bytes_done = $5, bytes_total = $6, \
         error_code = $7, error_message = $8, placement = $9, started_at = $10, \
         finished_at = $11 WHERE id = $1",
    )
    .bind(t.id.to_string())
    .bind(t.node.clone())
    .bind(t.status.as_str())
    .bind(t.progress.as_ref().map(|p| p.phase.clone()))
    .bind(
        t.progress
            .as_ref()
            .and_then(|p| p.bytes_done)
            .map(|b| b as i64),
    )
    .bind(
        t.progress
            .as_ref()
            .and_then(|p| p.bytes_total)
            .map(|b| b as i64),
    )
    .bind(t.error.as_ref().map(|e| e.code.as_str().to_owned()))
    .bind(t.error.as_ref().map(|e| e.message.clone()))
    .bind(placement_json(t))
    .bind(t.started_at_ms)
    .bind(t.finished_at_ms)
    .execute(&mut *conn)
    .await?;
    announce_task(conn, t).await?;
    Ok(())
}

fn placement_json(t: &TaskRecord) -> Option<String> {
    t.placement
        .as_ref()
        .map(|p| serde_json::to_string(p).expect("Placement serializes"))
}
