//! `GET /v1/events`: the change stream as newline-delimited JSON (`application/x-ndjson`,
//! one `Event` per line, chunked). The response header `Otherix-Cursor` is the cursor the
//! stream starts after, so a client can list first and resume without a gap.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use otherix_api::{ApiError, EventCursor, EventKind};
use serde::Deserialize;

use super::auth::Scope;
use super::error::HttpError;
use super::extract::ApiQuery;
use super::AppState;
use crate::service::EventFilter;

/// The response header naming the cursor a stream starts after.
pub const CURSOR_HEADER: &str = "otherix-cursor";

#[derive(Deserialize)]
pub struct EventParams {
    since: Option<String>,
    kind: Option<String>,
    vm: Option<String>,
}

pub async fn stream(
    State(s): State<AppState>,
    scope: Scope,
    ApiQuery(p): ApiQuery<EventParams>,
) -> Result<Response, HttpError> {
    let since = p
        .since
        .as_deref()
        .map(EventCursor::parse)
        .transpose()
        .map_err(ApiError::validation)?;
    let kinds = p
        .kind
        .as_deref()
        .map(EventKind::parse_list)
        .transpose()
        .map_err(ApiError::validation)?;
    let filter = EventFilter {
        project: scope.projects.filter().map(str::to_owned),
        kinds,
        vm: p.vm,
    };
    let opened = s.events.open(since, filter).await?;
    let lines = opened.events.map(|e| {
        let mut line = serde_json::to_vec(&e).expect("events serialize");
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(line))
    });
    let mut response = Body::from_stream(lines).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        CURSOR_HEADER,
        HeaderValue::from_str(&opened.start.to_string()).expect("digits"),
    );
    Ok(response)
}
