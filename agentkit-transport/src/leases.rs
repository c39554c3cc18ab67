//! Session leases as the API and the workers take them.

use std::sync::Arc;
use std::time::Duration;

use agentkit_core::{Error, Executor, Result};
use agentkit_store::{LeaseStore, SessionAgentBuilder};

/// The shortest session lease taken: it is renewed every third of its length.
const MIN_LEASE_TTL: Duration = Duration::from_millis(100);

/// A lease per session in a shared store, held by one owner (an instance or a worker).
pub(crate) struct SessionLeases {
    store: Arc<dyn LeaseStore>,
    owner: String,
    ttl: Duration,
}

impl SessionLeases {
    pub(crate) fn new(store: Arc<dyn LeaseStore>, owner: impl Into<String>, ttl: Duration) -> Self {
        Self {
            store,
            owner: owner.into(),
            ttl,
        }
    }

    /// `session` under these leases; an error for an empty or overlong owner or a lease
    /// too short to renew.
    pub(crate) fn apply<E: Executor + 'static>(
        &self,
        session: SessionAgentBuilder<E>,
    ) -> Result<SessionAgentBuilder<E>> {
        if self.owner.is_empty() || self.owner.len() > 128 {
            return Err(Error::invalid_input(
                "a session lease owner must be 1-128 characters",
            ));
        }
        if self.ttl < MIN_LEASE_TTL {
            return Err(Error::invalid_input(format!(
                "a session lease must last at least {MIN_LEASE_TTL:?} (it is renewed every third of it)"
            )));
        }
        Ok(session.lease(self.store.clone(), &self.owner, self.ttl))
    }
}
