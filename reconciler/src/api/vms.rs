//! `/v1/vms` handlers.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use otherix_api::{CreateVmRequest, ListResponse, TaskAccepted, Vm};
use serde::Deserialize;

use super::auth::Scope;
use super::error::HttpError;
use super::extract::{ApiQuery, IfMatch, JsonBody, VmName};
use super::AppState;
use crate::service::ListVmsQuery;

type Accepted = Result<(StatusCode, Json<TaskAccepted>), HttpError>;

fn accepted(t: TaskAccepted) -> (StatusCode, Json<TaskAccepted>) {
    (StatusCode::ACCEPTED, Json(t))
}

pub async fn create(
    State(s): State<AppState>,
    scope: Scope,
    JsonBody(req): JsonBody<CreateVmRequest>,
) -> Accepted {
    Ok(accepted(s.vms.create(&scope.actor()?, req).await?))
}

#[derive(Deserialize)]
pub struct ListParams {
    limit: Option<u32>,
    cursor: Option<String>,
    pool: Option<String>,
    node: Option<String>,
    status: Option<String>,
    label: Option<String>,
}

pub async fn list(
    State(s): State<AppState>,
    scope: Scope,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<ListResponse<Vm>>, HttpError> {
    let q = ListVmsQuery {
        project: scope.projects.filter().map(str::to_owned),
        limit: p.limit,
        cursor: p.cursor,
        pool: p.pool,
        node: p.node,
        status: p.status,
        label: p.label,
    };
    Ok(Json(s.vms.list(q).await?))
}

pub async fn get(
    State(s): State<AppState>,
    scope: Scope,
    VmName(name): VmName,
) -> Result<Json<Vm>, HttpError> {
    Ok(Json(s.vms.get(scope.project()?, &name).await?))
}

pub async fn delete(
    State(s): State<AppState>,
    scope: Scope,
    VmName(name): VmName,
    IfMatch(if_match): IfMatch,
) -> Accepted {
    let actor = scope.actor()?.with_if_match(if_match);
    Ok(accepted(s.vms.delete(&actor, &name).await?))
}

pub async fn start(
    State(s): State<AppState>,
    scope: Scope,
    VmName(name): VmName,
    IfMatch(if_match): IfMatch,
) -> Accepted {
    let actor = scope.actor()?.with_if_match(if_match);
    Ok(accepted(s.vms.start(&actor, &name).await?))
}

#[derive(Deserialize)]
pub struct StopParams {
    timeout_secs: Option<u32>,
}

pub async fn stop(
    State(s): State<AppState>,
    scope: Scope,
    VmName(name): VmName,
    IfMatch(if_match): IfMatch,
    ApiQuery(p): ApiQuery<StopParams>,
) -> Accepted {
    let actor = scope.actor()?.with_if_match(if_match);
    Ok(accepted(s.vms.stop(&actor, &name, p.timeout_secs).await?))
}

pub async fn poweroff(
    State(s): State<AppState>,
    scope: Scope,
    VmName(name): VmName,
    IfMatch(if_match): IfMatch,
) -> Accepted {
    let actor = scope.actor()?.with_if_match(if_match);
    Ok(accepted(s.vms.poweroff(&actor, &name).await?))
}

pub async fn reboot(
    State(s): State<AppState>,
    scope: Scope,
    VmName(name): VmName,
    IfMatch(if_match): IfMatch,
) -> Accepted {
    let actor = scope.actor()?.with_if_match(if_match);
    Ok(accepted(s.vms.reboot(&actor, &name).await?))
}

pub async fn pause(
    State(s): State<AppState>,
    scope: Scope,
    VmName(name): VmName,
) -> Result<Json<Vm>, HttpError> {
    Ok(Json(s.vms.pause(scope.project()?, &name).await?))
}

pub async fn resume(
    State(s): State<AppState>,
    scope: Scope,
    VmName(name): VmName,
) -> Result<Json<Vm>, HttpError> {
    Ok(Json(s.vms.resume(scope.project()?, &name).await?))
}

pub async fn reset(
    State(s): State<AppState>,
    scope: Scope,
    VmName(name): VmName,
) -> Result<Json<Vm>, HttpError> {
    Ok(Json(s.vms.reset(scope.project()?, &name).await?))
}
