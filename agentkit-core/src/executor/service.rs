//! Adapters between [`Executor`] and `tower::Service`, so tower's middleware applies.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use futures::future::BoxFuture;

use crate::executor::{Executor, Invocation, Reply};
use crate::{Error, Result};

/// An executor as a `tower::Service<Invocation>`; always ready, cheap to clone.
///
/// ```
/// use agentkit_core::executor::{Executor, ExecutorService, Invocation, Reply};
/// use tower::Service;
///
/// struct Echo;
/// impl Executor for Echo {
///     async fn execute(&self, i: Invocation) -> agentkit_core::Result<Reply> {
///         Ok(Reply { output: i.input[0].text_content(), ..Reply::default() })
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let mut service = ExecutorService::new(Echo);
/// let reply = service.call(Invocation::text("hi")).await?;
/// assert_eq!(reply.output, "hi");
/// # Ok::<_, agentkit_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct ExecutorService<E> {
    inner: Arc<E>,
}

impl<E> Clone for ExecutorService<E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<E> ExecutorService<E> {
    /// Wraps `executor`.
    pub fn new(executor: E) -> Self {
        Self {
            inner: Arc::new(executor),
        }
    }
}

impl<E: Executor + 'static> tower::Service<Invocation> for ExecutorService<E> {
    type Response = Reply;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Reply>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, invocation: Invocation) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { inner.execute(invocation).await })
    }
}

/// A `tower::Service<Invocation>` (for instance an [`ExecutorService`] under tower middleware)
/// as an executor again.
#[derive(Clone, Debug)]
pub struct ServiceExecutor<S> {
    service: S,
}

impl<S> ServiceExecutor<S> {
    /// Wraps `service`; it is cloned for every invocation, as tower expects.
    pub fn new(service: S) -> Self {
        Self { service }
    }
}

impl<S> Executor for ServiceExecutor<S>
where
    S: tower::Service<Invocation, Response = Reply, Error = Error> + Clone + Send + Sync + 'static,
    S::Future: Send,
{
    fn execute(&self, invocation: Invocation) -> impl Future<Output = Result<Reply>> + Send {
        let mut service = self.service.clone();
        async move {
            futures::future::poll_fn(|cx| service.poll_ready(cx)).await?;
            service.call(invocation).await
        }
    }
}
