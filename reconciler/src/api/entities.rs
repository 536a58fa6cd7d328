//! `/v1/pools`, `/v1/networks`, `/v1/firmware` and `/v1/cluster` handlers: `POST` creates
//! (201), `PUT` applies (200 `ApplyResponse`), `GET` reads by name or uuid, `DELETE`
//! answers 204. `PUT` and `DELETE` honour `If-Match` (409 `conflict` when stale).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use otherix_api::manifest::{ClusterSettingsSpec, FirmwareSpec, NetworkSpec, PoolSpec};
use otherix_api::{
    ApplyRequest, ApplyResponse, ClusterSettings, CreateObjectRequest, Firmware, ListResponse,
    Network, Pool,
};
use serde::Deserialize;

use super::error::HttpError;
use super::extract::{ApiQuery, IfMatch, JsonBody, NameOrId, VmName};
use super::AppState;
use crate::service::entities::ListQuery;

type Created<T> = Result<(StatusCode, Json<T>), HttpError>;
type Applied<T> = Result<Json<ApplyResponse<T>>, HttpError>;

#[derive(Deserialize)]
pub struct ListParams {
    limit: Option<u32>,
    cursor: Option<String>,
}

impl From<ListParams> for ListQuery {
    fn from(p: ListParams) -> Self {
        ListQuery {
            limit: p.limit,
            cursor: p.cursor,
        }
    }
}

pub async fn create_pool(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<CreateObjectRequest<PoolSpec>>,
) -> Created<Pool> {
    Ok((
        StatusCode::CREATED,
        Json(s.entities.create_pool(req).await?),
    ))
}

/// `PUT /v1/pools/{name}`; the name segment is a name, not a uuid.
pub async fn apply_pool(
    State(s): State<AppState>,
    VmName(name): VmName,
    IfMatch(if_match): IfMatch,
    JsonBody(req): JsonBody<ApplyRequest<PoolSpec>>,
) -> Applied<Pool> {
    Ok(Json(s.entities.apply_pool(&name, req, if_match).await?))
}

pub async fn delete_pool(
    State(s): State<AppState>,
    NameOrId(name): NameOrId,
    IfMatch(if_match): IfMatch,
) -> Result<StatusCode, HttpError> {
    s.entities.delete_pool(&name, if_match).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn networks(
    State(s): State<AppState>,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<ListResponse<Network>>, HttpError> {
    Ok(Json(s.entities.networks(&p.into()).await?))
}

pub async fn network(
    State(s): State<AppState>,
    NameOrId(name): NameOrId,
) -> Result<Json<Network>, HttpError> {
    Ok(Json(s.entities.network(&name).await?))
}

pub async fn create_network(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<CreateObjectRequest<NetworkSpec>>,
) -> Created<Network> {
    Ok((
        StatusCode::CREATED,
        Json(s.entities.create_network(req).await?),
    ))
}

pub async fn apply_network(
    State(s): State<AppState>,
    VmName(name): VmName,
    IfMatch(if_match): IfMatch,
    JsonBody(req): JsonBody<ApplyRequest<NetworkSpec>>,
) -> Applied<Network> {
    Ok(Json(s.entities.apply_network(&name, req, if_match).await?))
}

pub async fn delete_network(
    State(s): State<AppState>,
    NameOrId(name): NameOrId,
    IfMatch(if_match): IfMatch,
) -> Result<StatusCode, HttpError> {
    s.entities.delete_network(&name, if_match).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn firmware_list(
    State(s): State<AppState>,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<ListResponse<Firmware>>, HttpError> {
    Ok(Json(s.entities.firmware_list(&p.into()).await?))
}

pub async fn firmware(
    State(s): State<AppState>,
    NameOrId(name): NameOrId,
) -> Result<Json<Firmware>, HttpError> {
    Ok(Json(s.entities.firmware(&name).await?))
}

pub async fn create_firmware(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<CreateObjectRequest<FirmwareSpec>>,
) -> Created<Firmware> {
    Ok((
        StatusCode::CREATED,
        Json(s.entities.create_firmware(req).await?),
    ))
}

pub async fn apply_firmware(
    State(s): State<AppState>,
    VmName(name): VmName,
    IfMatch(if_match): IfMatch,
    JsonBody(req): JsonBody<ApplyRequest<FirmwareSpec>>,
) -> Applied<Firmware> {
    Ok(Json(s.entities.apply_firmware(&name, req, if_match).await?))
}

pub async fn delete_firmware(
    State(s): State<AppState>,
    NameOrId(name): NameOrId,
    IfMatch(if_match): IfMatch,
) -> Result<StatusCode, HttpError> {
    s.entities.delete_firmware(&name, if_match).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn cluster(State(s): State<AppState>) -> Result<Json<ClusterSettings>, HttpError> {
    Ok(Json(s.entities.cluster().await?))
}

pub async fn apply_cluster(
    State(s): State<AppState>,
    IfMatch(if_match): IfMatch,
    JsonBody(req): JsonBody<ApplyRequest<ClusterSettingsSpec>>,
) -> Applied<ClusterSettings> {
    Ok(Json(s.entities.apply_cluster(req, if_match).await?))
}
