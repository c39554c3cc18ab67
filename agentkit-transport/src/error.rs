//! Errors as HTTP responses: `{"error": {"code", "message", "request_id"}}`, or OpenAI's own
//! shape on the OpenAI-compatible routes. The status and code come from the error's kind, in
//! one place ([`ErrorKind::http_status`], [`ErrorKind::code`]).

use std::time::Duration;

use agentkit_core::{Error, ErrorKind};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

tokio::task_local! {
    /// The request being answered: its id and the error shape its route speaks.
    pub(crate) static REQUEST: RequestScope;
}

/// What error responses need to know about the request they answer.
#[derive(Clone, Debug)]
pub(crate) struct RequestScope {
    pub(crate) request_id: String,
    pub(crate) openai: bool,
}

/// An error answer: status, stable code, message, and an optional `Retry-After`.
#[derive(Clone, Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<Duration>,
}

impl ApiError {
    /// An error with an explicit status and code (for HTTP-only failures such as 413 or 415).
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 404 for an unknown route.
    pub fn no_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Renders with the given request id and shape.
    pub(crate) fn render(self, request_id: &str, openai: bool) -> Response {
        let body = if openai {
            let kind = match self.status.as_u16() {
                400 | 404 | 409 | 413 | 415 | 422 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                429 => "rate_limit_error",
                _ => "server_error",
            };
            json!({"error": {"message": self.message, "type": kind, "param": null, "code": self.code}})
        } else {
            json!({"error": {"code": self.code, "message": self.message, "request_id": request_id}})
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        response
            .extensions_mut()
            .insert(crate::api::logline::ErrorCode(self.code));
        if let Some(after) = self.retry_after {
            let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            if let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let kind = error.kind();
        let status =
            StatusCode::from_u16(kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = if kind == ErrorKind::Internal {
            // Internals stay in the log; the caller gets the request id to quote.
            tracing::error!(error = %error, "internal error");
            "internal error".to_owned()
        } else {
            error.message().to_owned()
        };
        let retry_after = match kind {
            ErrorKind::RateLimited | ErrorKind::Unavailable | ErrorKind::Busy => {
                Some(error.retry_after().unwrap_or(Duration::from_secs(1)))
            }
            _ => error.retry_after(),
        };
        Self {
            status,
            code: kind.code(),
            message,
            retry_after,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let scope = REQUEST.try_with(Clone::clone).ok();
        let (id, openai) = scope.map_or((String::new(), false), |s| (s.request_id, s.openai));
        self.render(&id, openai)
    }
}
