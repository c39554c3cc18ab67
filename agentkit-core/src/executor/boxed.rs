//! [`BoxExecutor`]: a type-erased, cheaply cloned executor.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::Result;
use crate::executor::{EventStream, Executor, Invocation, Reply};

trait DynExecutor: Send + Sync {
    fn execute_dyn(&self, invocation: Invocation) -> BoxFuture<'_, Result<Reply>>;
    fn stream_dyn(&self, invocation: Invocation) -> BoxFuture<'_, Result<EventStream>>;
}

impl<E: Executor> DynExecutor for E {
    fn execute_dyn(&self, invocation: Invocation) -> BoxFuture<'_, Result<Reply>> {
        Box::pin(self.execute(invocation))
    }

    fn stream_dyn(&self, invocation: Invocation) -> BoxFuture<'_, Result<EventStream>> {
        Box::pin(self.stream(invocation))
    }
}

/// Any executor behind one type, as tower's `BoxCloneSyncService` is for services: for
/// registries of agents, routers and pools whose members differ in type.
#[derive(Clone)]
pub struct BoxExecutor {
    inner: Arc<dyn DynExecutor>,
}

impl BoxExecutor {
    /// Erases `executor`'s type.
    pub fn new(executor: impl Executor + 'static) -> Self {
        Self {
            inner: Arc::new(executor),
        }
    }
}

impl fmt::Debug for BoxExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoxExecutor").finish_non_exhaustive()
    }
}

impl Executor for BoxExecutor {
    fn execute(&self, invocation: Invocation) -> impl Future<Output = Result<Reply>> + Send {
        self.inner.execute_dyn(invocation)
    }

    fn stream(&self, invocation: Invocation) -> impl Future<Output = Result<EventStream>> + Send {
        self.inner.stream_dyn(invocation)
    }
}
