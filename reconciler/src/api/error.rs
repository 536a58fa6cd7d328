//! The one mapping from service errors to HTTP responses: status from
//! `ErrorCode::http_status()`, body the `ErrorEnvelope`. Internal failures are logged with
//! their cause chain and answered with a generic message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use otherix_api::{ApiError, ErrorCode};

use crate::error_chain;
use crate::service::ServiceError;

/// An error on its way to the client.
#[derive(Debug)]
pub struct HttpError(pub ServiceError);

impl From<ServiceError> for HttpError {
    fn from(e: ServiceError) -> Self {
        HttpError(e)
    }
}

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        HttpError(ServiceError::Api(e))
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let api = match self.0 {
            ServiceError::Api(e) if e.code != ErrorCode::Internal => e,
            other => {
                tracing::error!(error = %error_chain(&other), "internal error");
                ApiError::internal("internal error; see the server log")
            }
        };
        let status = StatusCode::from_u16(api.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(api.envelope())).into_response()
    }
}
