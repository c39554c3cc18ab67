//! The per-request [`Context`]: identity, deadline, cancellation, trace and extensions.

use std::any::{Any, TypeId};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::trace::TraceContext;

/// Everything a request carries from the edge to the last tool call.
///
/// Created once where the request enters (an HTTP handler, a queue consumer, a test) and passed
/// by reference or cheap clone everywhere after. Cloning shares the cancellation token: cancel
/// one clone and every holder sees it.
///
/// ```
/// use std::time::Duration;
/// use agentkit_core::Context;
///
/// let cx = Context::new()
///     .with_tenant("acme")
///     .with_session_id("s-1")
///     .with_timeout(Duration::from_secs(30));
/// assert_eq!(cx.tenant(), Some("acme"));
/// assert!(cx.remaining().unwrap() <= Duration::from_secs(30));
/// assert_eq!(cx.request_id().len(), 32);
/// ```
#[derive(Clone)]
pub struct Context {
    inner: Arc<Inner>,
    /// Beside the shared part: every model and tool call continues the trace under a span of
    /// its own, and setting it must not copy the rest.
    trace: Option<TraceContext>,
}

/// Cloning a context is one reference-count increment; the builder methods copy on write.
#[derive(Clone)]
struct Inner {
    request_id: Arc<str>,
    tenant: Option<Arc<str>>,
    user: Option<Arc<str>>,
    session_id: Option<Arc<str>>,
    scopes: Option<Arc<[String]>>,
    deadline: Option<Instant>,
    cancel: CancellationToken,
    extensions: Extensions,
}

impl Default for Context {
    fn default() -> Self {
        Self::new()
    }
}

impl Context {
    /// A context with a freshly generated request id and nothing else.
    pub fn new() -> Self {
        Self::for_request(generate_id())
    }

    /// A context for the request `request_id` (the caller's, already checked) and nothing else.
    pub fn for_request(request_id: impl Into<Arc<str>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                request_id: request_id.into(),
                tenant: None,
                user: None,
                session_id: None,
                scopes: None,
                deadline: None,
                cancel: CancellationToken::new(),
                extensions: Extensions::default(),
            }),
            trace: None,
        }
    }

    fn edit(&mut self) -> &mut Inner {
        Arc::make_mut(&mut self.inner)
    }

    /// Uses the caller's request id instead of the generated one.
    #[must_use]
    pub fn with_request_id(mut self, id: impl Into<Arc<str>>) -> Self {
        self.edit().request_id = id.into();
        self
    }

    /// Sets the tenant (the isolation boundary for sessions, limits and records).
    #[must_use]
    pub fn with_tenant(mut self, tenant: impl Into<Arc<str>>) -> Self {
        self.edit().tenant = Some(tenant.into());
        self
    }

    /// Sets the end user.
    #[must_use]
    pub fn with_user(mut self, user: impl Into<Arc<str>>) -> Self {
        self.edit().user = Some(user.into());
        self
    }

    /// Sets the session this request belongs to.
    #[must_use]
    pub fn with_session_id(mut self, session_id: impl Into<Arc<str>>) -> Self {
        self.edit().session_id = Some(session_id.into());
        self
    }

    /// Sets the scopes the caller was granted (from an API key or a JWT).
    #[must_use]
    pub fn with_scopes(mut self, scopes: impl IntoIterator<Item = String>) -> Self {
        self.edit().scopes = Some(scopes.into_iter().collect());
        self
    }

    /// Sets an absolute deadline, keeping the earlier one if there already is one.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        let inner = self.edit();
        inner.deadline = Some(match inner.deadline {
            Some(existing) => existing.min(deadline),
            None => deadline,
        });
        self
    }

    /// Sets a deadline `timeout` from now, keeping an earlier one.
    #[must_use]
    pub fn with_timeout(self, timeout: Duration) -> Self {
        self.with_deadline(Instant::now() + timeout)
    }

    /// Uses `token` for cancellation.
    #[must_use]
    pub fn with_cancellation(mut self, token: CancellationToken) -> Self {
        self.edit().cancel = token;
        self
    }

    /// Sets the W3C trace context this request continues.
    #[must_use]
    pub fn with_trace(mut self, trace: TraceContext) -> Self {
        self.trace = Some(trace);
        self
    }

    /// Adds a typed value that layers and tools can read back.
    #[must_use]
    pub fn with_extension<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.edit().extensions.insert(value);
        self
    }

    /// A clone whose cancellation is a child of this one: cancelling the parent cancels the child,
    /// cancelling the child leaves the parent running.
    pub fn child(&self) -> Self {
        let mut child = self.clone();
        child.edit().cancel = self.inner.cancel.child_token();
        child
    }

    /// The request id (the caller's, or a generated 32-hex-digit one).
    pub fn request_id(&self) -> &str {
        &self.inner.request_id
    }

    /// The tenant, when known.
    pub fn tenant(&self) -> Option<&str> {
        self.inner.tenant.as_deref()
    }

    /// The end user, when known.
    pub fn user(&self) -> Option<&str> {
        self.inner.user.as_deref()
    }

    /// The session id, when this request belongs to a session.
    pub fn session_id(&self) -> Option<&str> {
        self.inner.session_id.as_deref()
    }

    /// The caller's scopes; `None` when the edge does not authenticate.
    pub fn scopes(&self) -> Option<&[String]> {
        self.inner.scopes.as_deref()
    }

    /// Whether the caller holds `scope` (always true when the edge does not authenticate).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.inner
            .scopes
            .as_deref()
            .is_none_or(|s| s.iter().any(|have| have == scope || have == "*"))
    }

    /// The absolute deadline, when there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.inner.deadline
    }

    /// Time left before the deadline (zero once it passed), or `None` without a deadline.
    pub fn remaining(&self) -> Option<Duration> {
        self.inner
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The cancellation token of this request.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.inner.cancel
    }

    /// Whether the request was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// The trace context this request continues, when it has one.
    pub fn trace(&self) -> Option<&TraceContext> {
        self.trace.as_ref()
    }

    /// A typed value added with [`with_extension`](Context::with_extension).
    pub fn extension<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.inner.extensions.get::<T>()
    }

    /// The typed extensions.
    pub fn extensions(&self) -> &Extensions {
        &self.inner.extensions
    }

    /// The typed extensions, for adding values in place.
    pub fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.edit().extensions
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        f.debug_struct("Context")
            .field("request_id", &inner.request_id)
            .field("tenant", &inner.tenant)
            .field("user", &inner.user)
            .field("session_id", &inner.session_id)
            .field("scopes", &inner.scopes)
            .field("deadline", &inner.deadline)
            .field("cancelled", &inner.cancel.is_cancelled())
            .field("trace", &self.trace)
            .finish_non_exhaustive()
    }
}

/// A type map of values attached to a [`Context`]; cloning shares the values.
#[derive(Clone, Default)]
pub struct Extensions {
    /// A request carries a handful of extensions: a list searched in order costs less than
    /// hashing a type id on every insert and lookup.
    map: Option<Arc<Vec<Extension>>>,
}

/// One extension: its type, and the value.
type Extension = (TypeId, Arc<dyn Any + Send + Sync>);

/// Room made on the first insert: a job's context carries four extensions.
const EXTENSIONS: usize = 6;

impl Extensions {
    /// Inserts `value`, replacing a previous value of the same type.
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        let map = self
            .map
            .get_or_insert_with(|| Arc::new(Vec::with_capacity(EXTENSIONS)));
        let map = Arc::make_mut(map);
        let (id, value) = (TypeId::of::<T>(), Arc::new(value));
        match map.iter_mut().find(|(key, _)| *key == id) {
            Some((_, slot)) => *slot = value,
            None => map.push((id, value)),
        }
    }

    /// The value of type `T`, when present.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        let id = TypeId::of::<T>();
        self.map
            .as_ref()?
            .iter()
            .find(|(key, _)| *key == id)
            .and_then(|(_, value)| value.downcast_ref::<T>())
    }

    /// Whether no value was inserted.
    pub fn is_empty(&self) -> bool {
        self.map.as_ref().is_none_or(|m| m.is_empty())
    }
}

impl fmt::Debug for Extensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extensions")
            .field("len", &self.map.as_ref().map_or(0, |m| m.len()))
            .finish()
    }
}

/// The caller's key for one invocation, the same on every retry of it (an `Idempotency-Key`
/// header at the edge), kept in the [`Context`] as an extension.
///
/// What honours it: a session turn whose key its session already holds returns the recorded
/// reply instead of running again (`SessionAgent` in agentkit-store), `RemoteExecutor` sends
/// it on as `Idempotency-Key`, `QueueExecutor` submits its job with it (a second call awaits
/// the first call's job), and [`Pool`](crate::executor::Pool) sends a keyed session turn
/// on to the next instance when the first could not be reached, since the session applies it
/// once.
///
/// ```
/// use agentkit_core::{Context, IdempotencyKey};
///
/// let cx = Context::new().with_extension(IdempotencyKey::new("order-17-confirm")?);
/// assert_eq!(cx.extension::<IdempotencyKey>().unwrap().as_str(), "order-17-confirm");
/// assert!(IdempotencyKey::new("").is_err());
/// # Ok::<_, agentkit_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(Arc<str>);

impl IdempotencyKey {
    /// The longest key taken, in bytes.
    pub const MAX_LEN: usize = 256;

    /// `key`, when it is 1-256 bytes without control characters; an invalid-input error
    /// otherwise.
    pub fn new(key: &str) -> crate::Result<Self> {
        let valid =
            !key.is_empty() && key.len() <= Self::MAX_LEN && !key.chars().any(char::is_control);
        if !valid {
            return Err(crate::Error::invalid_input(
                "an idempotency key must be 1 to 256 bytes long, without control characters",
            ));
        }
        Ok(Self(key.into()))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A random 128-bit identifier as 32 lowercase hex digits.
///
/// Good for request, job and call ids (unique, not secret); not for tokens.
pub fn generate_id() -> String {
    let mut id = String::with_capacity(32);
    crate::trace::push_hex(&mut id, &crate::trace::random_id().to_be_bytes());
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_are_typed_and_shared_by_clones() {
        #[derive(Debug, PartialEq)]
        struct Plan(&'static str);
        let cx = Context::new()
            .with_extension(Plan("pro"))
            .with_extension(7u32);
        let clone = cx.clone();
        assert_eq!(clone.extension::<Plan>(), Some(&Plan("pro")));
        assert_eq!(clone.extension::<u32>(), Some(&7));
        assert!(clone.extension::<u64>().is_none());
        // A value of a type already there replaces it; the clone made before keeps its own.
        let cx = cx.with_extension(8u32).with_extension(Plan("team"));
        assert_eq!(cx.extension::<u32>(), Some(&8));
        assert_eq!(cx.extension::<Plan>(), Some(&Plan("team")));
        assert_eq!(clone.extension::<u32>(), Some(&7));
        assert_eq!(clone.extension::<Plan>(), Some(&Plan("pro")));
    }

    #[tokio::test]
    async fn deadlines_only_shrink() {
        let cx = Context::new()
            .with_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(60));
        assert!(cx.remaining().unwrap() <= Duration::from_secs(1));
    }

    #[test]
    fn child_cancellation_is_one_way() {
        let parent = Context::new();
        let child = parent.child();
        child.cancellation().cancel();
        assert!(!parent.is_cancelled());
        let child = parent.child();
        parent.cancellation().cancel();
        assert!(child.is_cancelled());
    }

    #[test]
    fn scopes_gate_only_when_known() {
        assert!(Context::new().has_scope("agents:invoke"));
        let cx = Context::new().with_scopes(vec!["agents:invoke".to_owned()]);
        assert!(cx.has_scope("agents:invoke"));
        assert!(!cx.has_scope("admin"));
    }
}
