//! `/v1/whoami`, `/v1/tokens` and `/v1/projects` handlers.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use otherix_api::{
    ApplyRequest, ApplyResponse, CreateObjectRequest, CreateTokenRequest, CreatedToken,
    ListResponse, Project, ProjectSpec, Token, WhoAmI,
};

use super::error::HttpError;
use super::extract::{IfMatch, JsonBody, NameOrId};
use super::AppState;
use crate::auth::Caller;

pub async fn whoami(State(s): State<AppState>, caller: Caller) -> Json<WhoAmI> {
    Json(s.identity.whoami(&caller))
}

pub async fn create_token(
    State(s): State<AppState>,
    caller: Caller,
    JsonBody(req): JsonBody<CreateTokenRequest>,
) -> Result<(StatusCode, Json<CreatedToken>), HttpError> {
    Ok((
        StatusCode::CREATED,
        Json(s.identity.create_token(&caller, req).await?),
    ))
}

pub async fn list_tokens(
    State(s): State<AppState>,
) -> Result<Json<ListResponse<Token>>, HttpError> {
    Ok(Json(s.identity.list_tokens().await?))
}

pub async fn revoke_token(
    State(s): State<AppState>,
    caller: Caller,
    NameOrId(name): NameOrId,
    IfMatch(if_match): IfMatch,
) -> Result<StatusCode, HttpError> {
    s.identity.revoke_token(&caller, &name, if_match).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn create_project(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<CreateObjectRequest<ProjectSpec>>,
) -> Result<(StatusCode, Json<Project>), HttpError> {
    let project = s
        .identity
        .create_project(&req.name, req.spec, req.annotations)
        .await?;
    Ok((StatusCode::CREATED, Json(project)))
}

pub async fn apply_project(
    State(s): State<AppState>,
    NameOrId(name): NameOrId,
    IfMatch(if_match): IfMatch,
    JsonBody(req): JsonBody<ApplyRequest<ProjectSpec>>,
) -> Result<Json<ApplyResponse<Project>>, HttpError> {
    req.refuse_labels("project")?;
    let (object, outcome) = s
        .identity
        .apply_project(&name, req.spec, req.annotations, if_match)
        .await?;
    Ok(Json(ApplyResponse {
        outcome,
        object,
        task: None,
    }))
}

pub async fn list_projects(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<Json<ListResponse<Project>>, HttpError> {
    Ok(Json(s.identity.list_projects(&caller).await?))
}

pub async fn get_project(
    State(s): State<AppState>,
    caller: Caller,
    NameOrId(name): NameOrId,
) -> Result<Json<Project>, HttpError> {
    Ok(Json(s.identity.project(&caller, &name).await?))
}

pub async fn delete_project(
    State(s): State<AppState>,
    NameOrId(name): NameOrId,
    IfMatch(if_match): IfMatch,
) -> Result<StatusCode, HttpError> {
    s.identity.delete_project(&name, if_match).await?;
    Ok(StatusCode::NO_CONTENT)
}
