//! `/v1/tasks` handlers.

use axum::extract::State;
use axum::Json;
use otherix_api::{ListResponse, Task};
use serde::Deserialize;

use super::auth::Scope;
use super::error::HttpError;
use super::extract::{ApiQuery, TaskId};
use super::AppState;
use crate::auth::Caller;

#[derive(Deserialize)]
pub struct GetParams {
    wait_secs: Option<u64>,
    status: Option<String>,
}

pub async fn get(
    State(s): State<AppState>,
    caller: Caller,
    TaskId(id): TaskId,
    ApiQuery(p): ApiQuery<GetParams>,
) -> Result<Json<Task>, HttpError> {
    let task = match p.wait_secs {
        Some(secs) => s.tasks.wait(&caller, id, secs, p.status.as_deref()).await?,
        None => s.tasks.get(&caller, id).await?,
    };
    Ok(Json(task))
}

#[derive(Deserialize)]
pub struct ListParams {
    vm: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

pub async fn list(
    State(s): State<AppState>,
    scope: Scope,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<ListResponse<Task>>, HttpError> {
    Ok(Json(
        s.tasks
            .list(
                scope.projects.filter(),
                p.vm.as_deref(),
                p.limit,
                p.cursor.as_deref(),
            )
            .await?,
    ))
}
