//! `PUT /v1/vms/{name}`: declarative apply of a VM.

use axum::extract::State;
use axum::Json;
use otherix_api::{ApplyRequest, ApplyResponse, Vm, VmSpec};

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
