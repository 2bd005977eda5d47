//! What can go wrong in the inspector, and the HTTP status each answer gets.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use es_core::StoreError;

/// An inspector request that could not be answered. Every kind but [`Store`](Self::Store)
/// is the caller's: a 4xx with the message, never a panic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectError {
    /// There is no such category, aggregate or projection (404).
    #[error("{0}")]
    NotFound(String),
    /// A malformed parameter: a version that is no number, a page too large (400).
    #[error("{0}")]
    BadRequest(String),
    /// A write to a read-only inspector (403).
    #[error("{0}")]
    Forbidden(String),
    /// No or a wrong bearer token (401).
    #[error("{0}")]
    Unauthorized(String),
    /// A stored entry the registered aggregate type cannot decode (422): the message
    /// names the key, the entry and the field.
    #[error("{0}")]
    Undecodable(String),
    /// The store failed (a lost connection: 503; anything else: 500), or refused the
    /// request (400).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The CLI could not write its output.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    /// The inspector could not start: an address it cannot bind, or one it refuses to
    /// bind without a token.
    #[error("{0}")]
    Serve(String),
}

impl InspectError {
    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            InspectError::NotFound(_) => StatusCode::NOT_FOUND,
            InspectError::BadRequest(_) => StatusCode::BAD_REQUEST,
            InspectError::Forbidden(_) => StatusCode::FORBIDDEN,
            InspectError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            InspectError::Undecodable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            InspectError::Store(StoreError::InvalidRequest(_)) => StatusCode::BAD_REQUEST,
            InspectError::Store(StoreError::Decode { .. }) => StatusCode::UNPROCESSABLE_ENTITY,
            InspectError::Store(StoreError::Connection { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            InspectError::Store(_) | InspectError::Serve(_) | InspectError::Output(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

/// `{"error": "<message>"}` with [`InspectError::status`].
impl IntoResponse for InspectError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "inspector request failed");
        }
        let body = serde_json::json!({ "error": self.to_string() });
        (status, Json(body)).into_response()
    }
}
