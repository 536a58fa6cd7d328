//! `GET /metrics`: the Prometheus scrape (see [`crate::metrics`]).

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

use super::error::HttpError;
use super::AppState;
use crate::service::ServiceError;

pub async fn scrape(State(s): State<AppState>) -> Result<impl IntoResponse, HttpError> {
    let body = s
        .metrics
        .scrape()
        .await
        .map_err(|e| HttpError::from(ServiceError::from(e)))?;
    Ok(([(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body))
}
