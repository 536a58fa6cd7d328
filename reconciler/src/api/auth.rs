//! Authentication and authorization of HTTP requests: [`authenticate`] (outermost layer:
//! every route but `/healthz` needs a valid bearer token, else 401), [`authorize`] (after
//! routing: the matched route's access class against the caller's role, else 403), and the
//! [`Caller`] and [`Scope`] extractors handlers use.

use axum::extract::{FromRequestParts, MatchedPath, Query, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use otherix_api::ApiError;
use serde::Deserialize;

use super::error::HttpError;
use super::AppState;
use crate::auth::{self, Caller, ProjectScope};
use crate::model::IdempotencyStamp;
use crate::service::Actor;

/// Routes that answer without a token.
const PUBLIC_PATHS: [&str; 1] = ["/healthz"];

/// Resolves the bearer token into a [`Caller`] request extension; 401 without one.
pub async fn authenticate(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    if PUBLIC_PATHS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    match s.identity.authenticate(header).await {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => {
            tracing::info!(method = %req.method(), path = %req.uri().path(), "request refused: unauthenticated");
            HttpError::from(e).into_response()
        }
    }
}

/// Checks the matched route's access class against the caller's role; 403 otherwise. A
/// route missing from `auth::route_access` is refused for everyone.
pub async fn authorize(req: Request, next: Next) -> Response {
    let Some(pattern) = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
    else {
        return next.run(req).await;
    };
    if PUBLIC_PATHS.contains(&pattern.as_str()) {
        return next.run(req).await;
    }
    let Some(caller) = req.extensions().get::<Caller>() else {
        return HttpError::from(ApiError::unauthenticated("no caller")).into_response();
    };
    let method = req.method().as_str().to_owned();
    let verdict = match auth::route_access(&method, &pattern) {
        Some(access) => auth::authorize(caller, access, &method, req.uri().path()),
        None => Err(ApiError::forbidden(format!(
            "{method} {pattern} has no access rule; refused for every caller"
        ))),
    };
    match verdict {
        Ok(()) => next.run(req).await,
        Err(e) => {
            tracing::info!(token = %caller.name, method, path = %req.uri().path(), "request refused: forbidden");
            HttpError::from(e).into_response()
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::unauthenticated("no caller").into())
    }
}

#[derive(Deserialize)]
struct ScopeParams {
    project: Option<String>,
    all_projects: Option<bool>,
}

/// The caller and the project(s) the request is about (`?project=`, `?all_projects=true`).
pub struct Scope {
    pub caller: Caller,
    pub projects: ProjectScope,
    /// The Idempotency-Key of the request, as the idempotency middleware stamped it.
    pub idempotency: Option<IdempotencyStamp>,
}

impl Scope {
    /// The one project of a single-object request.
    pub fn project(&self) -> Result<&str, HttpError> {
        self.projects.one().map_err(HttpError::from)
    }

    /// The caller acting in the request's one project.
    pub fn actor(&self) -> Result<Actor, HttpError> {
        let mut actor = Actor::new(self.project()?, self.caller.name.clone());
        actor.idempotency = self.idempotency.clone();
        Ok(actor)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Scope {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let params = Query::<ScopeParams>::try_from_uri(&parts.uri)
            .map_err(|e| ApiError::validation(format!("query: {}", e.body_text())))?
            .0;
        let projects = auth::resolve_scope(
            &caller,
            params.project.as_deref(),
            params.all_projects.unwrap_or(false),
        )?;
        let idempotency = parts.extensions.get::<IdempotencyStamp>().cloned();
        Ok(Scope {
            caller,
            projects,
            idempotency,
        })
    }
}
