//! `PUT /v1/vms/{name}` and `POST /v1/apply`: declarative apply of one VM, or of many in
//! one request.

use axum::extract::State;
use axum::Json;
use otherix_api::{ApplyBatchRequest, ApplyBatchResponse, ApplyRequest, ApplyResponse, Vm, VmSpec};

use super::auth::Scope;
use super::error::HttpError;
use super::extract::{IfMatch, JsonBody, VmName};
use super::AppState;

pub async fn put_vm(
    State(s): State<AppState>,
    scope: Scope,
    VmName(name): VmName,
    IfMatch(if_match): IfMatch,
    JsonBody(req): JsonBody<ApplyRequest<VmSpec>>,
) -> Result<Json<ApplyResponse<Vm>>, HttpError> {
    let actor = scope.actor()?.with_if_match(if_match);
    Ok(Json(s.apply.apply_vm(&actor, &name, req).await?))
}

pub async fn apply_many(
    State(s): State<AppState>,
    scope: Scope,
    JsonBody(req): JsonBody<ApplyBatchRequest>,
) -> Result<Json<ApplyBatchResponse>, HttpError> {
    // No If-Match: one version cannot be the precondition of many objects.
    let actor = scope.actor()?;
    let vms = s.apply.apply_vms(&actor, req.vms).await?;
    Ok(Json(ApplyBatchResponse { vms }))
}
