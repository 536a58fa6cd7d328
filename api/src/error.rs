//! Error codes, the JSON error envelope, and the one code -> HTTP status table.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Every stable error code otherix reports, over HTTP or on a failed task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    ValidationFailed,
    NotFound,
    Conflict,
    DefaultPoolNotSet,
    PoolNotOnNode,
    ImmutableField,
    InsufficientCapacity,
    NoNodeAvailable,
    AgentUnavailable,
    Internal,
    Unauthenticated,
    Forbidden,
    QuotaExceeded,
    UnsupportedMediaType,
    // An event-stream cursor older than the retained window (or not from this log).
    CursorExpired,
    // Task failure codes.
    StopTimeout,
    ImageChecksumMismatch,
    ImageDownloadFailed,
    DiskTooSmall,
    DiskFailed,
    QemuFailed,
    Cancelled,
    AgentLost,
    ImageUrlRefused,
    ImageTooLarge,
    ImageFormatRefused,
    FirmwareRefused,
}

impl ErrorCode {
    /// The HTTP status for this code: the only place that mapping lives.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::ValidationFailed | ErrorCode::DefaultPoolNotSet => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::CursorExpired => 410,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::Conflict
            | ErrorCode::PoolNotOnNode
            | ErrorCode::ImmutableField
            | ErrorCode::InsufficientCapacity
            | ErrorCode::NoNodeAvailable
            | ErrorCode::QuotaExceeded => 409,
            ErrorCode::AgentUnavailable => 503,
            ErrorCode::Internal
            | ErrorCode::StopTimeout
            | ErrorCode::ImageChecksumMismatch
            | ErrorCode::ImageDownloadFailed
            | ErrorCode::DiskTooSmall
            | ErrorCode::DiskFailed
            | ErrorCode::QemuFailed
            | ErrorCode::Cancelled
            | ErrorCode::AgentLost
            | ErrorCode::ImageUrlRefused
            | ErrorCode::ImageTooLarge
            | ErrorCode::ImageFormatRefused
            | ErrorCode::FirmwareRefused => 500,
        }
    }

    /// The snake_case wire name, e.g. `validation_failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ValidationFailed => "validation_failed",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::DefaultPoolNotSet => "default_pool_not_set",
            ErrorCode::PoolNotOnNode => "pool_not_on_node",
            ErrorCode::ImmutableField => "immutable_field",
            ErrorCode::InsufficientCapacity => "insufficient_capacity",
            ErrorCode::NoNodeAvailable => "no_node_available",
            ErrorCode::AgentUnavailable => "agent_unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::StopTimeout => "stop_timeout",
            ErrorCode::ImageChecksumMismatch => "image_checksum_mismatch",
            ErrorCode::ImageDownloadFailed => "image_download_failed",
            ErrorCode::DiskTooSmall => "disk_too_small",
            ErrorCode::DiskFailed => "disk_failed",
            ErrorCode::QemuFailed => "qemu_failed",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::AgentLost => "agent_lost",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::CursorExpired => "cursor_expired",
            ErrorCode::ImageUrlRefused => "image_url_refused",
            ErrorCode::ImageTooLarge => "image_too_large",
            ErrorCode::ImageFormatRefused => "image_format_refused",
            ErrorCode::FirmwareRefused => "firmware_refused",
        }
    }

    /// Parses a wire name; unknown names (from a newer agent) map to `Internal`.
    pub fn from_wire(s: &str) -> ErrorCode {
        serde_json::from_value(serde_json::Value::String(s.to_owned()))
            .unwrap_or(ErrorCode::Internal)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A code plus a human message: the body of every error, on the wire and on tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

/// The JSON envelope every HTTP error response carries: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

/// An error as services produce it; transports map it with [`ErrorCode::http_status`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ValidationFailed, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code,
            message: self.message.clone(),
        }
    }
    pub fn envelope(&self) -> ErrorEnvelope {
        ErrorEnvelope { error: self.body() }
    }
}

impl From<ErrorBody> for ApiError {
    fn from(b: ErrorBody) -> Self {
        ApiError {
            code: b.code,
            message: b.message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_code_wire_names_match_serde() {
        for code in [
            ErrorCode::ValidationFailed,
            ErrorCode::DefaultPoolNotSet,
            ErrorCode::PoolNotOnNode,
            ErrorCode::StopTimeout,
            ErrorCode::ImageChecksumMismatch,
            ErrorCode::Unauthenticated,
            ErrorCode::QuotaExceeded,
            ErrorCode::UnsupportedMediaType,
            ErrorCode::CursorExpired,
            ErrorCode::ImageUrlRefused,
            ErrorCode::ImageFormatRefused,
        ] {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json.as_str().unwrap(), code.as_str());
            assert_eq!(ErrorCode::from_wire(code.as_str()), code);
        }
    }

    #[test]
    fn error_code_unknown_wire_name_maps_to_internal() {
        assert_eq!(ErrorCode::from_wire("no_such_code"), ErrorCode::Internal);
    }

    #[test]
    fn http_status_table_covers_client_errors() {
        assert_eq!(ErrorCode::ValidationFailed.http_status(), 400);
        assert_eq!(ErrorCode::DefaultPoolNotSet.http_status(), 400);
        assert_eq!(ErrorCode::NotFound.http_status(), 404);
        assert_eq!(ErrorCode::Conflict.http_status(), 409);
        assert_eq!(ErrorCode::PoolNotOnNode.http_status(), 409);
        assert_eq!(ErrorCode::ImmutableField.http_status(), 409);
        assert_eq!(ErrorCode::CursorExpired.http_status(), 410);
    }

    #[test]
    fn envelope_serializes_code_and_message() {
        let e = ApiError::validation("spec.vcpus: must be 1..128");
        let v = serde_json::to_value(e.envelope()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"code": "validation_failed", "message": "spec.vcpus: must be 1..128"}})
        );
    }
}
