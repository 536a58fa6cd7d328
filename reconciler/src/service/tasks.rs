//! Task reads: one task, the long-poll that answers when a task's status moves, and the
//! newest-first listing.

use std::time::Duration;

use otherix_api::validate::validate_name;
use otherix_api::{ApiError, ListResponse, Task, TaskStatus};
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::{check_limit, ServiceError};
use crate::auth::policy::may_see;
use crate::auth::Caller;
use crate::cursor::{decode_cursor, encode_cursor};
use crate::events::TaskEvents;
use crate::model::TaskRecord;
use crate::store::Store;

/// The longest a long-poll waits.
pub const MAX_WAIT_SECS: u64 = 60;

pub struct TaskService {
    store: Store,
    events: TaskEvents,
}

impl TaskService {
    pub fn new(store: Store, events: TaskEvents) -> Self {
        TaskService { store, events }
    }

    pub async fn get(&self, caller: &Caller, id: Uuid) -> Result<Task, ServiceError> {
        Ok(self.task(caller, id).await?.to_api())
    }

    /// Answers as soon as the task's status differs from `unless_status` (or, without
    /// it, is terminal), or after `wait_secs` (at most [`MAX_WAIT_SECS`]).
    pub async fn wait(
        &self,
        caller: &Caller,
        id: Uuid,
        wait_secs: u64,
        unless_status: Option<&str>,
    ) -> Result<Task, ServiceError> {
        let unless = unless_status
            .map(|s| {
                TaskStatus::parse(s).ok_or_else(|| {
                    ApiError::validation(format!("status: {s:?} is not a task status"))
                })
            })
            .transpose()?;
        let done = |t: &TaskRecord| match unless {
            Some(s) => t.status != s,
            None => t.status.is_terminal(),
        };
        // Subscribe before reading so no change between the read and the wait is missed.
        let mut changes = self.events.subscribe();
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(wait_secs.min(MAX_WAIT_SECS));
        let mut task = self.task(caller, id).await?;
        while !done(&task) {
            tokio::select! {
                changed = changes.recv() => match changed {
                    Ok(changed_id) if changed_id != id => continue,
                    Ok(_) | Err(RecvError::Lagged(_)) => task = self.task(caller, id).await?,
                    Err(RecvError::Closed) => break,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    task = self.task(caller, id).await?;
                    break;
                }
            }
        }
        Ok(task.to_api())
    }

    /// Tasks newest first, of one project (`None` = every project), optionally of the VMs
    /// named `vm` (live or deleted).
    pub async fn list(
        &self,
        project: Option<&str>,
        vm: Option<&str>,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<ListResponse<Task>, ServiceError> {
        if let Some(name) = vm {
            validate_name("vm", name)?;
        }
        let limit = check_limit(limit)?;
        let before = cursor.map(decode_cursor).transpose()?;
        let page = self.store.list_tasks(project, vm, before, limit).await?;
        Ok(ListResponse {
            items: page.items.iter().map(TaskRecord::to_api).collect(),
            next_cursor: page.next.map(encode_cursor),
        })
    }

    /// A task the caller may see; another project's task is 404 like a missing one.
    async fn task(&self, caller: &Caller, id: Uuid) -> Result<TaskRecord, ServiceError> {
        self.store
            .task(id)
            .await?
            .filter(|t| may_see(caller, &t.project))
            .ok_or_else(|| ApiError::not_found(format!("task {id} not found")).into())
    }
}
