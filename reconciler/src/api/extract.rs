//! Extractors that turn requests into typed values and every rejection into a 400
//! `validation_failed` envelope (never axum's plain-text rejections): JSON bodies (unknown
//! fields, wrong types, missing fields, bad JSON; a body not declared
//! `Content-Type: application/json` is 415, so no browser form can reach a JSON route),
//! query strings, VM names, task ids.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use otherix_api::validate::validate_name;
use otherix_api::ApiError;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::error::HttpError;

/// A JSON body; the error names the path of the offending field.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if !is_json_content_type(content_type) {
            return Err(ApiError::new(
                otherix_api::ErrorCode::UnsupportedMediaType,
                format!(
                    "request body: Content-Type must be application/json (got {})",
                    content_type.unwrap_or("none")
                ),
            )
            .into());
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::validation(format!("request body: {}", e.body_text())))?;
        parse_json(&bytes).map(JsonBody).map_err(HttpError::from)
    }
}

/// `application/json`, with or without parameters (`; charset=utf-8`).
pub fn is_json_content_type(value: Option<&str>) -> bool {
    value
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// Deserializes JSON, naming the field path in the error (`spec.vcpus: invalid type ...`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path == "?" {
            ApiError::validation(format!("request body: {inner}"))
        } else {
            ApiError::validation(format!("{path}: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::validation(format!("request body: {e}")))?;
    Ok(value)
}

/// Query parameters; a malformed one is 400.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::validation(format!("query: {}", e.body_text())).into())
    }
}

/// The `{name}` path segment of a VM, node or pool route, validated as a name
/// (a UUID literal is 400).
pub struct VmName(pub String);

impl<S: Send + Sync> FromRequestParts<S> for VmName {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let name = path_segment(parts, state).await?;
        validate_name("name", &name)?;
        Ok(VmName(name))
    }
}

/// A `{name}` segment that may be a name or a uuid (nodes, pools).
pub struct NameOrId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for NameOrId {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(NameOrId(path_segment(parts, state).await?))
    }
}

/// The `{id}` path segment of a task.
pub struct TaskId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for TaskId {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw = path_segment(parts, state).await?;
        Uuid::parse_str(&raw).map(TaskId).map_err(|_| {
            ApiError::validation(format!("id: {raw:?} is not a task id (uuid)")).into()
        })
    }
}

async fn path_segment<S: Send + Sync>(parts: &mut Parts, state: &S) -> Result<String, HttpError> {
    Path::<String>::from_request_parts(parts, state)
        .await
        .map(|p| p.0)
        .map_err(|e| ApiError::validation(format!("path: {}", e.body_text())).into())
}

/// The `If-Match` header as the resource_version (of the VM, pool, network, firmware,
/// project, token or cluster settings) a write is conditional on (absent: unconditional);
/// not a resource_version is 400.
pub struct IfMatch(pub Option<i64>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(raw) = parts.headers.get(axum::http::header::IF_MATCH) else {
            return Ok(IfMatch(None));
        };
        let raw = raw
            .to_str()
            .map_err(|_| ApiError::validation("If-Match: must be ASCII"))?;
        Ok(IfMatch(Some(crate::service::precondition::parse_if_match(
            raw,
        )?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use otherix_api::CreateVmRequest;

    #[test]
    fn is_json_content_type_accepts_json_only() {
        let table = [
            (Some("application/json"), true),
            (Some("Application/JSON; charset=utf-8"), true),
            (Some("text/plain"), false),
            (Some("application/x-www-form-urlencoded"), false),
            (Some("multipart/form-data; boundary=x"), false),
            (Some("application/jsonx"), false),
            (None, false),
        ];
        for (value, ok) in table {
            assert_eq!(is_json_content_type(value), ok, "{value:?}");
        }
    }

    #[test]
    fn parse_json_errors_name_the_field() {
        let table = [
            (
                r#"{"name":"a","spec":{"image_url":"http://x/i","arch":"amd64","vcpu":2}}"#,
                "unknown field `vcpu`",
            ),
            (
                r#"{"name":"a","spec":{"image_url":"http://x/i","arch":"amd64","vcpus":"two"}}"#,
                "spec.vcpus: invalid type",
            ),
            (
                r#"{"name":"a","spec":{"image_url":"http://x/i"}}"#,
                "spec: missing field `arch`",
            ),
            (
                r#"{"name":"a","spec":{"image_url":"http://x/i","arch":"sparc"}}"#,
                "spec.arch: unknown variant `sparc`",
            ),
            (r#"{"name":"a","#, "request body: EOF"),
            (
                r#"{"name":"a","spec":{"image_url":"http://x/i","arch":"amd64"}} x"#,
                "request body: trailing characters",
            ),
        ];
        for (body, want) in table {
            let err = parse_json::<CreateVmRequest>(body.as_bytes()).unwrap_err();
            assert!(err.message.contains(want), "{body}: {}", err.message);
        }
    }
}
