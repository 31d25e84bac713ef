//! Every way a request can fail, the HTTP answer it gets, and how it is logged.

use super::seen_nats::GuardError;
use crate::spool::SpoolError;
use crate::wechat::inbound::Refusal;
use crate::wechat::push::PushError;
use crate::wechat::signature::SignatureError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Unauthorized(#[from] SignatureError),
    #[error("{0}")]
    Rejected(String),
    #[error("source address not allowed")]
    Forbidden,
    #[error("{0}")]
    BadRequest(String),
    #[error("body is larger than the configured max_body_bytes")]
    TooLarge,
    #[error("request took longer than request_timeout")]
    Timeout,
    #[error("too many requests in flight; retry")]
    Busy,
    #[error("{0}")]
    Unavailable(#[from] SpoolError),
    #[error("{0}")]
    GuardUnavailable(#[from] GuardError),
}

impl From<PushError> for AppError {
    fn from(e: PushError) -> Self {
        AppError::BadRequest(e.to_string())
    }
}

impl From<Refusal> for AppError {
    fn from(e: Refusal) -> Self {
        match e {
            Refusal::Signature(e) => AppError::Unauthorized(e),
            Refusal::Rejected(reason) => AppError::Rejected(reason),
            Refusal::Malformed(reason) => AppError::BadRequest(reason),
        }
    }
}

impl AppError {
    /// The outcome label in metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            AppError::Unauthorized(_) => "unauthorized",
            AppError::Rejected(_) => "rejected",
            AppError::Forbidden => "forbidden",
            AppError::BadRequest(_) => "bad_request",
            AppError::TooLarge => "too_large",
            AppError::Timeout => "timeout",
            AppError::Busy => "busy",
            AppError::Unavailable(_) => "unavailable",
            AppError::GuardUnavailable(_) => "guard_unavailable",
        }
    }

    pub fn log(&self, account: &str) {
        match self {
            AppError::Unavailable(e) => {
                tracing::error!(account, outcome = self.kind(), error = %e, "push not stored; answered 503 so WeChat retries")
            }
            AppError::GuardUnavailable(e) => {
                tracing::error!(account, outcome = self.kind(), error = %e, "push not checked for replay; answered 503 so WeChat retries")
            }
            other => {
                tracing::warn!(account, outcome = other.kind(), reason = %other, "request refused")
            }
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, text) = match &self {
            AppError::Unauthorized(e) => (StatusCode::UNAUTHORIZED, e.to_string()),
            AppError::Rejected(reason) => (StatusCode::UNAUTHORIZED, reason.clone()),
            AppError::Forbidden => (StatusCode::FORBIDDEN, self.to_string()),
            AppError::BadRequest(reason) => (StatusCode::BAD_REQUEST, reason.clone()),
            AppError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, self.to_string()),
            AppError::Timeout => (StatusCode::REQUEST_TIMEOUT, self.to_string()),
            AppError::Busy => (StatusCode::SERVICE_UNAVAILABLE, self.to_string()),
            AppError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "push could not be stored; retry later".to_owned(),
            ),
            AppError::GuardUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the replay guard cannot answer; retry later".to_owned(),
            ),
        };
        (status, format!("{text}\n")).into_response()
    }
}
