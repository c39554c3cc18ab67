//! What the bundled `service` and `worker` share: where sessions live.

use std::sync::Arc;
use std::time::Duration;

use agentkit::store::{LeaseStore, SessionStore};
use agentkit::transport::ServiceConfig;

/// Sessions in a server, shared by the instances of the service and the workers: the store,
/// which keeps the sessions' leases as well.
pub(crate) struct SharedSessions {
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) leases: Arc<dyn LeaseStore>,
}

/// How often an instance deletes the expired sessions of a PostgreSQL store (Redis expires
/// keys itself; the memory store sweeps as it saves).
const PURGE_EVERY: Duration = Duration::from_secs(600);

/// The session store the environment names: Redis for `REDIS_URL`, else PostgreSQL for
/// `DATABASE_URL`, else `None` (sessions in this process's memory). Sessions expire
/// `AGENTKIT_SESSION_TTL_MS` after their last load or save.
pub(crate) async fn shared_sessions(
    config: &ServiceConfig,
) -> agentkit::Result<Option<SharedSessions>> {
    if let Some(url) = &config.redis_url {
        let mut store = agentkit::store::redis::RedisSessionStore::connect(url)?;
        if let Some(ttl) = config.session_ttl {
            store = store.with_default_ttl(ttl);
        }
        let store = Arc::new(store);
        return Ok(Some(SharedSessions {
            store: store.clone(),
            leases: store,
        }));
    }
    if let Some(url) = &config.database_url {
        let mut store = agentkit::store::postgres::PostgresSessionStore::connect(url).await?;
        if let Some(ttl) = config.session_ttl {
            store = store.with_default_ttl(ttl);
        }
        let store = Arc::new(store);
        if config.session_ttl.is_some() {
            let purging = Arc::downgrade(&store);
            tokio::spawn(async move {
                let mut every = tokio::time::interval(PURGE_EVERY);
                every.tick().await;
                loop {
                    every.tick().await;
                    let Some(store) = purging.upgrade() else {
                        return;
                    };
                    match store.purge_expired().await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(purged = n, "expired sessions deleted"),
                        Err(error) => tracing::warn!(%error, "cannot delete expired sessions"),
                    }
                }
            });
        }
        return Ok(Some(SharedSessions {
            store: store.clone(),
            leases: store,
        }));
    }
    Ok(None)
}
