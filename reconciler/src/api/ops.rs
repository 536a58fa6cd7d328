//! `POST /v1/tasks/{id}/cancel`, `GET /v1/vms/{name}/logs`, `GET /v1/pools/{name}/images`,
//! `POST /v1/pools/{name}/prune-images`, and the Idempotency-Key middleware of
//! task-creating requests.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use otherix_api::{ApiError, CachedImage, ListResponse, LogChunk, Task, TaskAccepted};
use serde::Deserialize;

use super::auth::Scope;
use super::error::HttpError;
use super::extract::{ApiQuery, NameOrId, TaskId, VmName};
use super::AppState;
use crate::auth::Caller;
use crate::error_chain;
use crate::service::ops::{idempotency_stamp, request_fingerprint, validate_idempotency_key};

/// The request header that makes a retried task-creating request safe.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Largest request (and 202 answer) body the middleware buffers.
const MAX_BUFFERED: usize = 4 * 1024 * 1024;

pub async fn cancel_task(
    State(s): State<AppState>,
    caller: Caller,
    TaskId(id): TaskId,
) -> Result<Json<Task>, HttpError> {
    Ok(Json(s.ops.cancel_task(&caller, id).await?))
}

#[derive(Deserialize)]
pub struct LogParams {
    offset: Option<u64>,
    max_bytes: Option<u64>,
}

pub async fn vm_logs(
    State(s): State<AppState>,
    scope: Scope,
    VmName(name): VmName,
    ApiQuery(p): ApiQuery<LogParams>,
) -> Result<Json<LogChunk>, HttpError> {
    Ok(Json(
        s.ops
            .vm_logs(scope.project()?, &name, p.offset, p.max_bytes)
            .await?,
    ))
}

pub async fn pool_images(
    State(s): State<AppState>,
    NameOrId(name): NameOrId,
) -> Result<Json<ListResponse<CachedImage>>, HttpError> {
    Ok(Json(s.ops.pool_images(&name, false).await?))
}

pub async fn prune_pool_images(
    State(s): State<AppState>,
    NameOrId(name): NameOrId,
) -> Result<Json<ListResponse<CachedImage>>, HttpError> {
    Ok(Json(s.ops.pool_images(&name, true).await?))
}

/// Idempotency-Key on POST and DELETE: a request whose key already created a task gets
/// that task's `TaskAccepted` again (202) instead of running twice; the same key on a
/// different request (method, path, query, body) is 409. The key (scoped to the caller's
/// token) is handed to the handler as a `model::IdempotencyStamp` request extension and
/// stored with the task in the transaction that inserts it; a unique index refuses a
/// second task with it. A request that fails because a concurrent duplicate got there
/// first (the key, the VM name or the VM's one in-flight task already taken) answers that
/// duplicate's task. Requests without the header pass through untouched.
pub async fn idempotency(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if !matches!(*req.method(), Method::POST | Method::DELETE) {
        return next.run(req).await;
    }
    let Some(raw_key) = req.headers().get(IDEMPOTENCY_KEY) else {
        return next.run(req).await;
    };
    let key = match raw_key.to_str() {
        Ok(k) => k.trim().to_owned(),
        Err(_) => String::new(),
    };
    if let Err(e) = validate_idempotency_key(&key) {
        return HttpError::from(e).into_response();
    }
    let caller = req
        .extensions()
        .get::<Caller>()
        .map(|c| c.name.clone())
        .unwrap_or_default();
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BUFFERED).await {
        Ok(b) => b,
        Err(e) => {
            return HttpError::from(ApiError::validation(format!("request body: {e}")))
                .into_response()
        }
    };
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let fingerprint = request_fingerprint(parts.method.as_str(), path, &bytes);
    match s.ops.idempotent_replay(&caller, &key, &fingerprint).await {
        Ok(Some(accepted)) => return (StatusCode::ACCEPTED, Json(accepted)).into_response(),
        Ok(None) => {}
        Err(e) => return HttpError::from(e).into_response(),
    }
    let mut parts = parts;
    parts
        .extensions
        .insert(idempotency_stamp(&caller, &key, &fingerprint));
    let resp = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    if resp.status() != StatusCode::ACCEPTED {
        if resp.status().is_client_error() {
            // Lost a race with a concurrent duplicate that committed first: its answer.
            match s.ops.idempotent_replay(&caller, &key, &fingerprint).await {
                Ok(Some(accepted)) => {
                    return (StatusCode::ACCEPTED, Json(accepted)).into_response()
                }
                Ok(None) => {}
                Err(e) => return HttpError::from(e).into_response(),
            }
        }
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BUFFERED).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "buffering a 202 answer failed");
            return HttpError::from(ApiError::internal("reading the answer failed"))
                .into_response();
        }
    };
    match serde_json::from_slice::<TaskAccepted>(&bytes) {
        Ok(accepted) => {
            if let Err(e) = s
                .ops
                .record_idempotency(accepted.task.id, &caller, &key, &fingerprint)
                .await
            {
                // The task exists; only a retry with this key would run again.
                tracing::warn!(task = %accepted.task.id, error = %error_chain(&e), "recording the Idempotency-Key failed");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "a 202 answer is not a TaskAccepted; Idempotency-Key not recorded")
        }
    }
    Response::from_parts(parts, Body::from(bytes))
}
