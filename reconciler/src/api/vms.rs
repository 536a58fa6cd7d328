//! `/v1/vms` handlers.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use otherix_api::{CreateVmRequest, ListResponse, TaskAccepted, Vm};
use serde::Deserialize;

use super::error::HttpError;
use super::extract::{ApiQuery, JsonBody, VmName};
use super::AppState;
use crate::service::ListVmsQuery;

type Accepted = Result<(StatusCode, Json<TaskAccepted>), HttpError>;

fn accepted(t: TaskAccepted) -> (StatusCode, Json<TaskAccepted>) {
    (StatusCode::ACCEPTED, Json(t))
}

pub async fn create(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<CreateVmRequest>,
) -> Accepted {
    Ok(accepted(s.vms.create(req).await?))
}

#[derive(Deserialize)]
pub struct ListParams {
    limit: Option<u32>,
    cursor: Option<String>,
    pool: Option<String>,
    node: Option<String>,
    status: Option<String>,
}

pub async fn list(
    State(s): State<AppState>,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<ListResponse<Vm>>, HttpError> {
    let q = ListVmsQuery {
        limit: p.limit,
        cursor: p.cursor,
        pool: p.pool,
        node: p.node,
        status: p.status,
    };
    Ok(Json(s.vms.list(q).await?))
}

pub async fn get(State(s): State<AppState>, VmName(name): VmName) -> Result<Json<Vm>, HttpError> {
    Ok(Json(s.vms.get(&name).await?))
}

pub async fn delete(State(s): State<AppState>, VmName(name): VmName) -> Accepted {
    Ok(accepted(s.vms.delete(&name).await?))
}

pub async fn start(State(s): State<AppState>, VmName(name): VmName) -> Accepted {
    Ok(accepted(s.vms.start(&name).await?))
}

#[derive(Deserialize)]
pub struct StopParams {
    timeout_secs: Option<u32>,
}

pub async fn stop(
    State(s): State<AppState>,
    VmName(name): VmName,
    ApiQuery(p): ApiQuery<StopParams>,
) -> Accepted {
    Ok(accepted(s.vms.stop(&name, p.timeout_secs).await?))
}

pub async fn poweroff(State(s): State<AppState>, VmName(name): VmName) -> Accepted {
    Ok(accepted(s.vms.poweroff(&name).await?))
}

pub async fn reboot(State(s): State<AppState>, VmName(name): VmName) -> Accepted {
    Ok(accepted(s.vms.reboot(&name).await?))
}

pub async fn pause(State(s): State<AppState>, VmName(name): VmName) -> Result<Json<Vm>, HttpError> {
    Ok(Json(s.vms.pause(&name).await?))
}

pub async fn resume(
    State(s): State<AppState>,
    VmName(name): VmName,
) -> Result<Json<Vm>, HttpError> {
    Ok(Json(s.vms.resume(&name).await?))
}

pub async fn reset(State(s): State<AppState>, VmName(name): VmName) -> Result<Json<Vm>, HttpError> {
    Ok(Json(s.vms.reset(&name).await?))
}
