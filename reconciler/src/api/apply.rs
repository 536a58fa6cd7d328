//! `PUT /v1/vms/{name}`: declarative apply of a VM.

use axum::extract::State;
use axum::Json;
use otherix_api::{ApplyRequest, ApplyResponse, Vm, VmSpec};

use super::auth::Scope;
use super::error::HttpError;
use super::extract::{JsonBody, VmName};
use super::AppState;

pub async fn put_vm(
    State(s): State<AppState>,
    scope: Scope,
    VmName(name): VmName,
    JsonBody(req): JsonBody<ApplyRequest<VmSpec>>,
) -> Result<Json<ApplyResponse<Vm>>, HttpError> {
    Ok(Json(s.apply.apply_vm(&scope.actor()?, &name, req).await?))
}
