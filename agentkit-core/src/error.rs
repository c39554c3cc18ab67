//! The one error type of agentkit, and the kinds that tell a caller what to do next.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A boxed error that can cross threads, kept as the source of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with agentkit's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, phrased as what the caller can do about it.
///
/// Every transport maps a kind to its status in one place ([`ErrorKind::http_status`],
/// [`ErrorKind::code`]), so the same failure reads the same over HTTP, a queue or a log line.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The input is malformed or violates a limit: fix it and send again.
    InvalidInput,
    /// No credentials, or credentials that are not valid: re-authenticate.
    Unauthenticated,
    /// Valid credentials that may not do this: ask for another scope or tenant.
    PermissionDenied,
    /// The agent, session, job or route does not exist (or is not visible to this tenant).
    NotFound,
    /// A compare-and-set lost against a concurrent writer: reload and decide again.
    Conflict,
    /// The session is running another turn and its policy rejects a second one.
    Busy,
    /// Too many requests: retry after [`Error::retry_after`].
    RateLimited,
    /// A dependency (model provider, store, queue) cannot answer right now: retry.
    Unavailable,
    /// A deadline passed before the work finished.
    Timeout,
    /// The run's token or cost budget was spent before it could finish.
    BudgetExceeded,
    /// The run reached its maximum number of model steps without a final answer.
    StepLimit,
    /// The caller cancelled the work.
    Cancelled,
    /// The model's output did not satisfy the requested schema or a guardrail.
    InvalidOutput,
    /// A bug or an unexpected state inside agentkit or a user component.
    Internal,
}

impl ErrorKind {
    /// The stable `snake_case` code used in JSON error bodies, logs and metrics.
    pub const fn code(self) -> &'static str {
        match self {
            Self::InvalidInput => "invalid_input",
            Self::Unauthenticated => "unauthenticated",
            Self::PermissionDenied => "permission_denied",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::Busy => "session_busy",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::BudgetExceeded => "budget_exceeded",
            Self::StepLimit => "step_limit",
            Self::Cancelled => "cancelled",
            Self::InvalidOutput => "invalid_output",
            Self::Internal => "internal",
        }
    }

    /// The kind whose [`code`](ErrorKind::code) is `code`, for clients reading an error body.
    pub fn from_code(code: &str) -> Option<Self> {
        const ALL: [ErrorKind; 14] = [
            ErrorKind::InvalidInput,
            ErrorKind::Unauthenticated,
            ErrorKind::PermissionDenied,
            ErrorKind::NotFound,
            ErrorKind::Conflict,
            ErrorKind::Busy,
            ErrorKind::RateLimited,
            ErrorKind::Unavailable,
            ErrorKind::Timeout,
            ErrorKind::BudgetExceeded,
            ErrorKind::StepLimit,
            ErrorKind::Cancelled,
            ErrorKind::InvalidOutput,
            ErrorKind::Internal,
        ];
        ALL.into_iter().find(|k| k.code() == code)
    }

    /// The HTTP status a transport answers with for this kind.
    pub const fn http_status(self) -> u16 {
        match self {
            Self::InvalidInput => 400,
            Self::Unauthenticated => 401,
            Self::PermissionDenied => 403,
            Self::NotFound => 404,
            Self::Conflict | Self::Busy => 409,
            Self::BudgetExceeded | Self::StepLimit => 422,
            Self::RateLimited => 429,
            // nginx's "client closed request": the caller went away or cancelled.
            Self::Cancelled => 499,
            Self::Internal => 500,
            Self::InvalidOutput => 502,
            Self::Unavailable => 503,
            Self::Timeout => 504,
        }
    }

    /// Whether the same request may succeed if sent again later.
    pub const fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::RateLimited | Self::Unavailable | Self::Timeout | Self::Busy
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// The error of every agentkit operation.
///
/// Cheap to clone (the source is shared), small on the stack (one pointer), and carrying what a
/// caller needs to decide: the [`kind`](Error::kind), a human message, an optional
/// [`retry_after`](Error::retry_after) hint and the original error as
/// [`source`](std::error::Error::source) for downcasting.
#[derive(Clone)]
pub struct Error {
    inner: Box<Inner>,
}

#[derive(Clone)]
struct Inner {
    kind: ErrorKind,
    message: Cow<'static, str>,
    retry_after: Option<Duration>,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// An error of `kind` with a message for humans.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            inner: Box::new(Inner {
                kind,
                message: message.into(),
                retry_after: None,
                source: None,
            }),
        }
    }

    /// Keeps `source` as the cause of this error.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.inner.source = Some(Arc::from(source.into()));
        self
    }

    /// Attaches a hint of how long to wait before retrying.
    #[must_use]
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.inner.retry_after = Some(after);
        self
    }

    /// Shorthand for [`ErrorKind::InvalidInput`].
    pub fn invalid_input(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// Shorthand for [`ErrorKind::NotFound`].
    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// Shorthand for [`ErrorKind::Unavailable`].
    pub fn unavailable(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    /// Shorthand for [`ErrorKind::Internal`].
    pub fn internal(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// Shorthand for [`ErrorKind::Timeout`].
    pub fn timeout(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Timeout, message)
    }

    /// Shorthand for [`ErrorKind::Cancelled`].
    pub fn cancelled() -> Self {
        Self::new(ErrorKind::Cancelled, "the operation was cancelled")
    }

    /// What went wrong, as what the caller can do.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The human-readable message, without the source chain.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// Whether sending the same request again later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.inner.kind.is_retryable()
    }

    /// How long the other side asked us to wait before retrying, when it said.
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// The stable code of the kind (`"rate_limited"`, ...).
    pub fn code(&self) -> &'static str {
        self.inner.kind.code()
    }

    /// Turns any error into an agentkit error, keeping an agentkit error's kind.
    pub fn from_boxed(kind: ErrorKind, error: BoxError) -> Self {
        match error.downcast::<Error>() {
            Ok(own) => *own,
            Err(other) => Self::new(kind, other.to_string()).with_source(other),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind)
            .field("message", &self.inner.message);
        if let Some(after) = self.inner.retry_after {
            d.field("retry_after", &after);
        }
        if let Some(source) = &self.inner.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.inner.kind, self.inner.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<serde_json::Error> for Error {
    fn from(error: serde_json::Error) -> Self {
        Self::invalid_input(format!("invalid JSON: {error}")).with_source(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_codes_statuses_and_retryability() {
        assert_eq!(ErrorKind::Busy.code(), "session_busy");
        assert_eq!(ErrorKind::RateLimited.http_status(), 429);
        assert!(ErrorKind::Unavailable.is_retryable());
        assert!(!ErrorKind::InvalidInput.is_retryable());
        assert!(!ErrorKind::Cancelled.is_retryable());
        for kind in [ErrorKind::Busy, ErrorKind::Timeout, ErrorKind::Internal] {
            assert_eq!(ErrorKind::from_code(kind.code()), Some(kind));
        }
        assert_eq!(ErrorKind::from_code("nope"), None);
    }

    #[test]
    fn source_is_kept_for_downcasting() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let error = Error::unavailable("store down").with_source(io);
        let source = std::error::Error::source(&error).expect("source kept");
        assert!(source.downcast_ref::<std::io::Error>().is_some());
        assert_eq!(error.to_string(), "unavailable: store down");
    }

    #[test]
    fn from_boxed_keeps_an_agentkit_kind() {
        let boxed: BoxError = Box::new(Error::new(ErrorKind::NotFound, "no such user"));
        assert_eq!(
            Error::from_boxed(ErrorKind::Internal, boxed).kind(),
            ErrorKind::NotFound
        );
        let boxed: BoxError = "plain".into();
        let error = Error::from_boxed(ErrorKind::Internal, boxed);
        assert_eq!(error.kind(), ErrorKind::Internal);
        assert_eq!(error.message(), "plain");
    }

    #[test]
    fn error_is_one_pointer_wide() {
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
    }
}
