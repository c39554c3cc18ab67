//! The in-memory session and lease store, the embedded default.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agentkit_core::{Error, Result};
use async_trait::async_trait;
use tokio::time::Instant;

use super::{
    Lease, LeaseStore, SaveOptions, Session, SessionPage, SessionStore, SessionSummary, conflict,
    fenced, now_ms, page_limit, validate_key,
};

struct Stored {
    session: Session,
    expires_at: Option<Instant>,
}

struct Held {
    owner: String,
    token: u64,
    expires_at: Instant,
}

#[derive(Default)]
struct State {
    /// Per tenant, by id (ordered, for paging).
    sessions: HashMap<String, BTreeMap<String, Stored>>,
    leases: HashMap<(String, String), Held>,
    /// The fencing token of the last lease issued per session, kept while it is held and
    /// until the next sweep after (a save fenced with an older token is refused).
    tokens: HashMap<(String, String), u64>,
    /// The last token issued, to any session. Tokens come from one counter so that a session
    /// whose entry in `tokens` was swept out still gets tokens newer than any a stale holder
    /// of it may carry.
    last_token: u64,
    /// Saves since expired sessions were last swept out.
    saves: usize,
    /// Saves after which the next sweep runs: as many as sessions were left by the last one
    /// (at least [`SWEEP_EVERY`]), so sweeping costs each save O(1) on average.
    sweep_after: usize,
}

/// The fewest saves between two sweeps of expired sessions.
const SWEEP_EVERY: usize = 1024;

impl State {
    /// Forgets expired sessions and leases: a session nobody loads again would otherwise stay
    /// in memory after it expired.
    fn sweep(&mut self, now: Instant) {
        let mut left = 0;
        self.sessions.retain(|_, sessions| {
            sessions.retain(|_, stored| MemorySessionStore::live(stored, now));
            left += sessions.len();
            !sessions.is_empty()
        });
        self.leases.retain(|_, held| held.expires_at > now);
        // A session nobody holds needs no fence: its next lease's token is newer than any
        // issued before, and without one a late save of a lapsed holder meets the version
        // check alone, as an unleased save does.
        let leases = &self.leases;
        self.tokens.retain(|key, _| leases.contains_key(key));
        self.saves = 0;
        self.sweep_after = left.max(SWEEP_EVERY);
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.sessions.values().map(BTreeMap::len).sum()
    }
}

/// Sessions and leases in this process's memory: the embedded default, and the reference the
/// other backends are tested against. Cheap to clone (shared state).
#[derive(Clone, Default)]
pub struct MemorySessionStore {
    state: Arc<Mutex<State>>,
    default_ttl: Option<Duration>,
}

impl std::fmt::Debug for MemorySessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemorySessionStore")
            .field("default_ttl", &self.default_ttl)
            .finish_non_exhaustive()
    }
}

impl MemorySessionStore {
    /// An empty store whose sessions never expire.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sessions without a TTL of their own expire after `ttl` without a load or save.
    #[must_use]
    pub fn with_default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than losing the store, so recover the guard.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn live(stored: &Stored, now: Instant) -> bool {
        stored.expires_at.is_none_or(|at| at > now)
    }
}

#[async_trait]
impl SessionStore for MemorySessionStore {
    async fn load(&self, tenant: &str, id: &str) -> Result<Option<Session>> {
        validate_key(tenant, id)?;
        let now = Instant::now();
        let mut state = self.lock();
        let Some(sessions) = state.sessions.get_mut(tenant) else {
            return Ok(None);
        };
        let Some(stored) = sessions.get_mut(id) else {
            return Ok(None);
        };
        if !Self::live(stored, now) {
            sessions.remove(id);
            return Ok(None);
        }
        if let Some(ttl) = stored.session.ttl.or(self.default_ttl) {
            stored.expires_at = Some(now + ttl);
        }
        Ok(Some(stored.session.clone()))
    }

    async fn save(&self, session: &Session, options: SaveOptions) -> Result<u64> {
        validate_key(&session.tenant, &session.id)?;
        let now = Instant::now();
        let mut state = self.lock();
        let key = (session.tenant.clone(), session.id.clone());
        if let Some(fence) = options.fence {
            let issued = state.tokens.get(&key).copied().unwrap_or(0);
            if issued > fence {
                return Err(fenced(&session.tenant, &session.id, fence));
            }
        }
        let sessions = state.sessions.entry(session.tenant.clone()).or_default();
        let current = sessions
            .get(&session.id)
            .filter(|s| Self::live(s, now))
            .map_or(0, |s| s.session.version);
        if current != session.version {
            return Err(conflict(&session.tenant, &session.id, session.version));
        }
        let mut saved = session.clone();
        saved.version = current + 1;
        saved.updated_at_ms = now_ms();
        let expires_at = saved.ttl.or(self.default_ttl).map(|ttl| now + ttl);
        let version = saved.version;
        sessions.insert(
            session.id.clone(),
            Stored {
                session: saved,
                expires_at,
            },
        );
        state.saves += 1;
        if state.saves >= state.sweep_after.max(SWEEP_EVERY) {
            state.sweep(now);
        }
        Ok(version)
    }

    async fn delete(&self, tenant: &str, id: &str) -> Result<bool> {
        validate_key(tenant, id)?;
        let now = Instant::now();
        let mut state = self.lock();
        let removed = state
            .sessions
            .get_mut(tenant)
            .and_then(|s| s.remove(id))
            .is_some_and(|s| Self::live(&s, now));
        Ok(removed)
    }

    async fn list(&self, tenant: &str, after: Option<&str>, limit: usize) -> Result<SessionPage> {
        validate_key(tenant, after.unwrap_or("-"))?;
        let limit = page_limit(limit);
        let now = Instant::now();
        let state = self.lock();
        let Some(sessions) = state.sessions.get(tenant) else {
            return Ok(SessionPage::default());
        };
        let range = match after {
            Some(after) => sessions
                .range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => sessions.range::<str, _>(..),
        };
        let mut page: Vec<SessionSummary> = range
            .filter(|(_, s)| Self::live(s, now))
            .take(limit + 1)
            .map(|(id, s)| SessionSummary {
                id: id.clone(),
                version: s.session.version,
                updated_at_ms: s.session.updated_at_ms,
            })
            .collect();
        let next = if page.len() > limit {
            page.truncate(limit);
            page.last().map(|s| s.id.clone())
        } else {
            None
        };
        Ok(SessionPage {
            sessions: page,
            next,
        })
    }
}

#[async_trait]
impl LeaseStore for MemorySessionStore {
    async fn acquire(
        &self,
        tenant: &str,
        id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        validate_key(tenant, id)?;
        if owner.is_empty() {
            return Err(Error::invalid_input("a lease owner must not be empty"));
        }
        let now = Instant::now();
        let key = (tenant.to_owned(), id.to_owned());
        let mut state = self.lock();
        if let Some(held) = state.leases.get(&key)
            && held.expires_at > now
            && held.owner != owner
        {
            return Ok(None);
        }
        state.last_token += 1;
        let token = state.last_token;
        state.tokens.insert(key.clone(), token);
        state.leases.insert(
            key,
            Held {
                owner: owner.to_owned(),
                token,
                expires_at: now + ttl,
            },
        );
        Ok(Some(Lease {
            tenant: tenant.to_owned(),
            session_id: id.to_owned(),
            owner: owner.to_owned(),
            token,
        }))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        let now = Instant::now();
        let mut state = self.lock();
        let key = (lease.tenant.clone(), lease.session_id.clone());
        match state.leases.get_mut(&key) {
            Some(held)
                if held.token == lease.token
                    && held.owner == lease.owner
                    && held.expires_at > now =>
            {
                held.expires_at = now + ttl;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        let mut state = self.lock();
        let key = (lease.tenant.clone(), lease.session_id.clone());
        if state
            .leases
            .get(&key)
            .is_some_and(|held| held.token == lease.token && held.owner == lease.owner)
        {
            state.leases.remove(&key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn save(store: &MemorySessionStore, id: &str) {
        let session = Session::new("t", id);
        store.save(&session, SaveOptions::default()).await.unwrap();
    }

    #[tokio::test]
    async fn expired_sessions_leave_memory_though_nobody_loads_them() {
        let store = MemorySessionStore::new().with_default_ttl(Duration::from_millis(30));
        for i in 0..1_100 {
            save(&store, &format!("old-{i}")).await;
        }
        std::thread::sleep(Duration::from_millis(60));
        for i in 0..1_100 {
            save(&store, &format!("new-{i}")).await;
        }
        // The sweep that ran during the second batch took the first out.
        assert_eq!(store.lock().held(), 1_100);
        let page = store.list("t", None, 10).await.unwrap();
        assert!(page.sessions.iter().all(|s| s.id.starts_with("new-")));
    }

    #[tokio::test]
    async fn fences_of_sessions_nobody_holds_are_swept_and_still_fence() {
        let store = MemorySessionStore::new();
        let lapsed = (store
            .acquire("t", "s-0", "a", Duration::from_millis(20))
            .await)
            .unwrap()
            .unwrap();
        for i in 1..1_100 {
            store
                .acquire("t", &format!("s-{i}"), "a", Duration::from_millis(20))
                .await
                .unwrap()
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(40));
        for i in 0..1_100 {
            save(&store, &format!("other-{i}")).await;
        }
        assert!(store.lock().tokens.is_empty(), "swept with their leases");
        // The session's next owner gets a newer token than the lapsed one's, and the lapsed
        // holder's late save is refused.
        let next = (store
            .acquire("t", "s-0", "b", Duration::from_secs(60))
            .await)
            .unwrap()
            .unwrap();
        assert!(next.token > lapsed.token);
        let late = store
            .save(
                &Session::new("t", "s-0"),
                SaveOptions {
                    fence: Some(lapsed.token),
                },
            )
            .await
            .unwrap_err();
        assert_eq!(late.kind(), agentkit_core::ErrorKind::Conflict, "{late}");
    }

    #[tokio::test]
    async fn sessions_without_a_ttl_are_kept() {
        let store = MemorySessionStore::new();
        for i in 0..2_100 {
            save(&store, &format!("s-{i}")).await;
        }
        assert_eq!(store.lock().held(), 2_100);
    }
}
