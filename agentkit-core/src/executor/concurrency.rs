//! [`ConcurrencyLimit`]: at most N invocations in flight.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::executor::{EventStream, Executor, Invocation, Reply};
use crate::{Error, ErrorKind, Result};

/// Lets at most `max` invocations run at once; the others wait for a slot until their deadline
/// (or `max_wait`, 30 s by default) and then fail with [`ErrorKind::Unavailable`], which is
/// retryable and carries a `Retry-After` hint. A streamed invocation holds its slot until the
/// stream is dropped.
#[derive(Clone, Debug)]
pub struct ConcurrencyLimit<E> {
    inner: E,
    permits: Arc<Semaphore>,
    max_wait: Duration,
}

impl<E> ConcurrencyLimit<E> {
    /// Wraps `inner` with `max` slots.
    pub fn new(inner: E, max: usize) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(max.max(1))),
            max_wait: Duration::from_secs(30),
        }
    }

    /// How long an invocation may wait for a slot (bounded further by its deadline).
    #[must_use]
    pub fn with_max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// Free slots right now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    async fn acquire(&self, invocation: &Invocation) -> Result<OwnedSemaphorePermit> {
        let cx = &invocation.context;
        let wait = cx
            .remaining()
            .map_or(self.max_wait, |r| r.min(self.max_wait));
        let acquire = self.permits.clone().acquire_owned();
        tokio::select! {
            permit = tokio::time::timeout(wait, acquire) => match permit {
                Ok(Ok(permit)) => Ok(permit),
                Ok(Err(_closed)) => Err(Error::internal("concurrency limit closed")),
                Err(_) => Err(Error::new(
                    ErrorKind::Unavailable,
                    "too many requests in flight; no slot freed up in time",
                )
                .with_retry_after(Duration::from_secs(1))),
            },
            () = cx.cancellation().cancelled() => Err(Error::cancelled()),
        }
    }
}

/// Applies [`ConcurrencyLimit`]; composes with `tower::ServiceBuilder`. Every service the
/// layer builds has its own slots.
#[derive(Clone, Copy, Debug)]
pub struct ConcurrencyLimitLayer {
    max: usize,
}

impl ConcurrencyLimitLayer {
    /// A layer with `max` slots per wrapped executor.
    pub fn new(max: usize) -> Self {
        Self { max }
    }
}

impl<E> tower::Layer<E> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<E>;

    fn layer(&self, inner: E) -> ConcurrencyLimit<E> {
        ConcurrencyLimit::new(inner, self.max)
    }
}

impl<E: Executor> Executor for ConcurrencyLimit<E> {
    async fn execute(&self, invocation: Invocation) -> Result<Reply> {
        let _permit = self.acquire(&invocation).await?;
        self.inner.execute(invocation).await
    }

    async fn stream(&self, invocation: Invocation) -> Result<EventStream> {
        let permit = self.acquire(&invocation).await?;
        let stream = self.inner.stream(invocation).await?;
        Ok(Box::pin(stream.map(move |event| {
            let _held = &permit;
            event
        })))
    }
}
