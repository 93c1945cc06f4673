//! The one error type every HTTP handler returns: it maps to a status and a JSON body that names
//! the problem for the client, hides internals, and is logged exactly once.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::storage::{FailureKind, StorageError};

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    MalformedJson(String),
    #[error("{message}")]
    Contract { field: String, message: String },
    #[error("{0}")]
    Forbidden(String),
    #[error("body exceeds the limit of {limit} bytes{after}")]
    TooLarge { limit: usize, after: &'static str },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    BadEncoding(String),
    #[error("request body not received in time")]
    Timeout,
    #[error("storage unavailable, retry later")]
    Unavailable(#[source] StorageError),
    #[error("the ingest is at capacity, retry later")]
    Saturated,
    /// This appliance already has `max_in_flight_per_appliance` reports in flight: its share.
    #[error("this appliance already has {0} reports in flight; retry later")]
    OverShare(usize),
    #[error("internal error")]
    Internal(#[source] StorageError),
    /// A query parameter (or path segment) of the operations API the server cannot use; the
    /// body names it so a client can fix the request.
    #[error("{message}")]
    BadParameter { parameter: String, message: String },
    /// The operations API has nothing at this address (an unknown serial, a report not kept).
    #[error("{0}")]
    NotFound(String),
    /// This ingest is not set up for what was asked (no issuing CA for enrolment).
    #[error("{0}")]
    NotConfigured(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    /// Stable machine-readable code, also the `result` label of `phonehome_reports_total`.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::Contract { .. } => "contract_violation",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::TooLarge { .. } => "too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::BadEncoding(_) => "bad_encoding",
            ApiError::Timeout => "timeout",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Saturated => "saturated",
            ApiError::OverShare(_) => "over_share",
            ApiError::Internal(_) => "internal",
            ApiError::BadParameter { .. } => "bad_parameter",
            ApiError::NotFound(_) => "not_found",
            ApiError::NotConfigured(_) => "not_configured",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_)
            | ApiError::BadEncoding(_)
            | ApiError::BadParameter { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Contract { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Timeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::OverShare(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) | ApiError::Saturated | ApiError::NotConfigured(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Seconds a refused collector should wait: 15 to 45, spread at random so that a fleet turned
/// away together does not come back together.
pub fn retry_after() -> u64 {
    let random = uuid::Uuid::new_v4().as_u128();
    15 + (random % 31) as u64
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e.kind() {
            FailureKind::Transient => ApiError::Unavailable(e),
            FailureKind::BadData => ApiError::Contract {
                field: String::new(),
                // A data exception describes the client's own value, not our internals.
                message: format!("the report holds a value the database cannot store: {e}"),
            },
            FailureKind::Internal => ApiError::Internal(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        // Internals (SQL errors, connection strings) go to the log, never to the client.
        match &self {
            ApiError::Unavailable(e) => {
                tracing::warn!(error = %e, "request refused: storage unavailable")
            }
            ApiError::Internal(e) => tracing::error!(error = %e, "request failed"),
            // Under overload one line per refusal would add to the load; the counter tells.
            ApiError::Saturated => tracing::debug!("request refused: at capacity"),
            ApiError::OverShare(_) => tracing::debug!("request refused: appliance over its share"),
            other => tracing::info!(
                status = status.as_u16(),
                code = other.code(),
                "request refused: {other}"
            ),
        }
        let field = match &self {
            ApiError::Contract { field, .. } => Some(field.as_str()),
            ApiError::BadParameter { parameter, .. } => Some(parameter.as_str()),
            _ => None,
        };
        let body = ErrorBody {
            error: self.code(),
            message: self.to_string(),
            field,
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after()));
        }
        response
    }
}
