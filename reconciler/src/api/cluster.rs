//! `/v1/nodes` and `/v1/pools` handlers.

use axum::extract::State;
use axum::Json;
use otherix_api::{ListResponse, Node, Pool};

use super::error::HttpError;
use super::extract::NameOrId;
use super::AppState;

pub async fn nodes(State(s): State<AppState>) -> Result<Json<ListResponse<Node>>, HttpError> {
    Ok(Json(s.cluster.nodes().await?))
}

pub async fn node(
    State(s): State<AppState>,
    NameOrId(name): NameOrId,
) -> Result<Json<Node>, HttpError> {
    Ok(Json(s.cluster.node(&name).await?))
}

pub async fn pools(State(s): State<AppState>) -> Result<Json<ListResponse<Pool>>, HttpError> {
    Ok(Json(s.cluster.pools().await?))
}

pub async fn pool(
    State(s): State<AppState>,
    NameOrId(name): NameOrId,
) -> Result<Json<Pool>, HttpError> {
    Ok(Json(s.cluster.pool(&name).await?))
}
