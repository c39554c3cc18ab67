//! What the bundled `service` and `worker` share: where sessions live.

use std::sync::Arc;

use agentkit::store::{LeaseStore, SessionStore};
use agentkit::transport::ServiceConfig;

/// Sessions in a server, shared by the instances of the service and the workers: the store,
/// which keeps the sessions' leases as well.
pub(crate) struct SharedSessions {
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) leases: Arc<dyn LeaseStore>,
}

/// The session store the environment names: Redis for `REDIS_URL`, else PostgreSQL for
/// `DATABASE_URL`, else `None` (sessions in this process's memory).
pub(crate) async fn shared_sessions(
    config: &ServiceConfig,
) -> agentkit::Result<Option<SharedSessions>> {
    if let Some(url) = &config.redis_url {
        let store = Arc::new(agentkit::store::redis::RedisSessionStore::connect(url)?);
        return Ok(Some(SharedSessions {
            store: store.clone(),
            leases: store,
        }));
    }
    if let Some(url) = &config.database_url {
        let store = Arc::new(agentkit::store::postgres::PostgresSessionStore::connect(url).await?);
        return Ok(Some(SharedSessions {
            store: store.clone(),
            leases: store,
        }));
    }
    Ok(None)
}
