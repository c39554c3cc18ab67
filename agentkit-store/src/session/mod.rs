//! Sessions: the [`SessionStore`] contract (load, compare-and-set save, delete, paged list,
//! sliding TTL, tenant namespaces) and the [`LeaseStore`] contract (one owner per session with a
//! fencing token).

mod memory;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "redis")]
pub(crate) mod redis;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentkit_core::{Error, Message, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use memory::MemorySessionStore;

/// A conversation's stored state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// The tenant that owns it; no other tenant can load it.
    pub tenant: String,
    /// Its id within the tenant.
    pub id: String,
    /// The version it was loaded at: 0 for a session never saved. A save succeeds only if the
    /// stored version still equals it.
    pub version: u64,
    /// The history.
    pub messages: Vec<Message>,
    /// Free-form data kept with the session.
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// This session's time to live, sliding on every load and save; `None` uses the store's.
    #[serde(default)]
    pub ttl: Option<Duration>,
    /// When it was last saved, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub updated_at_ms: u64,
}

impl Session {
    /// A new, never-saved session.
    pub fn new(tenant: impl Into<String>, id: impl Into<String>) -> Self {
        Self {
            tenant: tenant.into(),
            id: id.into(),
            ..Self::default()
        }
    }
}

/// What a store keeps of a session besides its key, version and TTL: one JSON document.
#[cfg(any(feature = "redis", feature = "postgres"))]
#[derive(Serialize, Deserialize)]
pub(crate) struct Body {
    #[serde(default)]
    pub(crate) messages: Vec<Message>,
    #[serde(default)]
    pub(crate) metadata: serde_json::Map<String, serde_json::Value>,
}

#[cfg(feature = "redis")]
impl Body {
    pub(crate) fn encode(session: &Session) -> Result<String> {
        #[derive(Serialize)]
        struct Borrowed<'a> {
            messages: &'a [Message],
            metadata: &'a serde_json::Map<String, serde_json::Value>,
        }
        serde_json::to_string(&Borrowed {
            messages: &session.messages,
            metadata: &session.metadata,
        })
        .map_err(|e| Error::internal(format!("cannot encode session: {e}")))
    }

    pub(crate) fn decode(text: &str) -> Result<Self> {
        serde_json::from_str(text)
            .map_err(|e| Error::internal(format!("stored session is not valid: {e}")))
    }
}

/// How to save.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SaveOptions {
    /// Reject the save if a lease with a newer fencing token was issued for this session since
    /// the caller's lease (whose token this is): the caller lost ownership.
    pub fence: Option<u64>,
}

/// One entry of a [`SessionPage`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSummary {
    /// The session id.
    pub id: String,
    /// Its stored version.
    pub version: u64,
    /// When it was last saved (ms since the Unix epoch).
    pub updated_at_ms: u64,
}

/// A page of a tenant's sessions, ordered by id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionPage {
    /// The sessions of this page.
    pub sessions: Vec<SessionSummary>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next: Option<String>,
}

/// Where sessions live.
///
/// Every backend keeps sessions per tenant (a session id is only meaningful within its
/// tenant), saves with compare-and-set on the version so that two concurrent turns cannot both
/// win, slides the TTL on every load and save, and maps a lost connection to the retryable
/// [`ErrorKind::Unavailable`](agentkit_core::ErrorKind::Unavailable).
///
/// ```
/// use agentkit_store::{MemorySessionStore, SaveOptions, Session, SessionStore};
/// use agentkit_core::{ErrorKind, Message};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store = MemorySessionStore::new();
/// let mut session = Session::new("acme", "s-1");
/// session.messages.push(Message::user("hi"));
/// let v1 = store.save(&session, SaveOptions::default()).await?;
/// assert_eq!(v1, 1);
///
/// // A second writer that also started from version 0 loses.
/// let stale = store.save(&session, SaveOptions::default()).await.unwrap_err();
/// assert_eq!(stale.kind(), ErrorKind::Conflict);
///
/// let loaded = store.load("acme", "s-1").await?.unwrap();
/// assert_eq!(loaded.version, 1);
/// assert!(store.load("other-tenant", "s-1").await?.is_none());
/// # Ok::<_, agentkit_core::Error>(())
/// # }).unwrap();
/// ```
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// The session, or `None` if it does not exist (or expired). Slides its TTL.
    async fn load(&self, tenant: &str, id: &str) -> Result<Option<Session>>;

    /// Saves if the stored version equals `session.version` (0: it must not exist yet) and
    /// returns the new version; [`ErrorKind::Conflict`](agentkit_core::ErrorKind::Conflict)
    /// otherwise, or when `options.fence` is stale.
    async fn save(&self, session: &Session, options: SaveOptions) -> Result<u64>;

    /// Deletes the session; whether it existed.
    async fn delete(&self, tenant: &str, id: &str) -> Result<bool>;

    /// A page of at most `limit` sessions of `tenant` with ids after `after`, by id.
    async fn list(&self, tenant: &str, after: Option<&str>, limit: usize) -> Result<SessionPage>;

    /// Whether the backend answers (for readiness probes).
    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

const _: Option<&dyn SessionStore> = None;

#[async_trait]
impl<S: SessionStore + ?Sized> SessionStore for std::sync::Arc<S> {
    async fn load(&self, tenant: &str, id: &str) -> Result<Option<Session>> {
        (**self).load(tenant, id).await
    }

    async fn save(&self, session: &Session, options: SaveOptions) -> Result<u64> {
        (**self).save(session, options).await
    }

    async fn delete(&self, tenant: &str, id: &str) -> Result<bool> {
        (**self).delete(tenant, id).await
    }

    async fn list(&self, tenant: &str, after: Option<&str>, limit: usize) -> Result<SessionPage> {
        (**self).list(tenant, after, limit).await
    }

    async fn ping(&self) -> Result<()> {
        (**self).ping().await
    }
}

/// One owner's hold on a session, until it expires or is released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The session's tenant.
    pub tenant: String,
    /// The session.
    pub session_id: String,
    /// Who holds it (an instance id).
    pub owner: String,
    /// Increases with every lease issued for the session; pass it as [`SaveOptions::fence`] so a
    /// holder whose lease was taken over cannot write any more.
    pub token: u64,
}

/// Session leases: at most one owner per session at a time, with expiry, renewal and a
/// fencing token.
///
/// ```
/// use std::time::Duration;
/// use agentkit_store::{LeaseStore, MemorySessionStore};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let store = MemorySessionStore::new();
/// let ttl = Duration::from_secs(5);
/// let lease = store.acquire("acme", "s-1", "instance-a", ttl).await?.unwrap();
/// assert!(store.acquire("acme", "s-1", "instance-b", ttl).await?.is_none());
/// store.release(&lease).await?;
/// let next = store.acquire("acme", "s-1", "instance-b", ttl).await?.unwrap();
/// assert!(next.token > lease.token);
/// # Ok::<_, agentkit_core::Error>(())
/// # }).unwrap();
/// ```
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Takes the lease for `ttl` if nobody else holds it (the holder itself may re-acquire);
    /// `None` when another owner holds it.
    async fn acquire(
        &self,
        tenant: &str,
        id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>>;

    /// Extends a held lease; `false` when it was lost (expired and taken, or released).
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool>;

    /// Gives the lease up, if still held.
    async fn release(&self, lease: &Lease) -> Result<()>;
}

const _: Option<&dyn LeaseStore> = None;

/// Checks a tenant and a session id: 1 to 256 bytes, no control characters.
pub fn validate_key(tenant: &str, id: &str) -> Result<()> {
    for (what, value) in [("tenant", tenant), ("session id", id)] {
        if value.is_empty() || value.len() > 256 {
            return Err(Error::invalid_input(format!(
                "a {what} must be 1 to 256 bytes long"
            )));
        }
        if value.chars().any(char::is_control) {
            return Err(Error::invalid_input(format!(
                "a {what} must not contain control characters"
            )));
        }
    }
    Ok(())
}

/// How many TTL slides a store runs on their own tasks at once; past that, loads wait for
/// their slide (backpressure rather than a pile of tasks while the server is slow).
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) const SLIDES_IN_FLIGHT: usize = 64;

/// Runs `slide` (sliding a loaded session's TTL) on its own task when a permit is free, so the
/// load need not wait for it; otherwise awaits it. Failures are logged: the next load or save
/// slides the TTL again.
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) async fn slide_off_path(
    permits: &std::sync::Arc<tokio::sync::Semaphore>,
    slide: impl std::future::Future<Output = Result<()>> + Send + 'static,
) {
    let report = |slid: Result<()>| {
        if let Err(error) = slid {
            tracing::warn!(%error, "cannot slide a session's TTL");
        }
    };
    match permits.clone().try_acquire_owned() {
        Ok(permit) => {
            tokio::spawn(async move {
                report(slide.await);
                drop(permit);
            });
        }
        Err(_) => report(slide.await),
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn conflict(tenant: &str, id: &str, expected: u64) -> Error {
    Error::new(
        agentkit_core::ErrorKind::Conflict,
        format!(
            "session {tenant}/{id} is no longer at version {expected}: another writer saved first"
        ),
    )
}

pub(crate) fn fenced(tenant: &str, id: &str, token: u64) -> Error {
    Error::new(
        agentkit_core::ErrorKind::Conflict,
        format!(
            "lease token {token} of session {tenant}/{id} is stale: another owner took the session over"
        ),
    )
}

/// The page size actually used: at least 1, at most 1000.
pub(crate) fn page_limit(limit: usize) -> usize {
    limit.clamp(1, 1000)
}

#[cfg(all(test, any(feature = "redis", feature = "postgres")))]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use tokio::sync::{Semaphore, oneshot};

    use super::slide_off_path;

    /// Slides run on their own tasks while permits last; past the bound the load waits for its
    /// slide, and a finished slide gives its permit back.
    #[tokio::test]
    async fn slides_go_aside_up_to_the_bound_then_inline() {
        let permits = Arc::new(Semaphore::new(1));
        let (release, held) = oneshot::channel::<()>();
        slide_off_path(&permits, async move {
            let _ = held.await;
            Ok(())
        })
        .await;
        assert_eq!(permits.available_permits(), 0, "the first slide runs aside");

        let ran = Arc::new(AtomicBool::new(false));
        let inline = ran.clone();
        slide_off_path(&permits, async move {
            inline.store(true, Ordering::SeqCst);
            Ok(())
        })
        .await;
        assert!(
            ran.load(Ordering::SeqCst),
            "past the bound, the caller waits for it"
        );

        release.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while permits.available_permits() == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the permit comes back when the slide ends");
    }
}
