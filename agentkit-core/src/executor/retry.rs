//! [`Retry`]: retries an executor's retryable failures with backoff.

use crate::executor::{EventStream, Executor, Invocation, Reply};
use crate::{Backoff, Error, Result};

/// Retries invocations that fail with a retryable error (rate limited, unavailable, timeout,
/// busy), following a [`Backoff`] that honours `Retry-After` and the invocation's deadline.
///
/// Only wrap executors whose side effects are idempotent, or whose tools are (see
/// [`Tool::side_effects`](crate::tool::Tool::side_effects)). A stream is retried only while
/// opening it.
#[derive(Clone, Debug)]
pub struct Retry<E> {
    inner: E,
    backoff: Backoff,
}

impl<E> Retry<E> {
    /// Wraps `inner`.
    pub fn new(inner: E, backoff: Backoff) -> Self {
        Self { inner, backoff }
    }
}

/// Applies [`Retry`]; composes with `tower::ServiceBuilder`.
#[derive(Clone, Debug, Default)]
pub struct RetryLayer {
    backoff: Backoff,
}

impl RetryLayer {
    /// A layer retrying with `backoff`.
    pub fn new(backoff: Backoff) -> Self {
        Self { backoff }
    }
}

impl<E> tower::Layer<E> for RetryLayer {
    type Service = Retry<E>;

    fn layer(&self, inner: E) -> Retry<E> {
        Retry::new(inner, self.backoff.clone())
    }
}

impl<E: Executor> Retry<E> {
    async fn wait(&self, attempt: u32, error: &Error, invocation: &Invocation) -> Result<bool> {
        let cx = &invocation.context;
        let Some(delay) = self.backoff.next_delay(attempt, error, cx.deadline()) else {
            return Ok(false);
        };
        tracing::warn!(
            request_id = cx.request_id(),
            attempt,
            error.code = error.code(),
            delay_ms = delay.as_millis() as u64,
            "invocation failed; retrying"
        );
        crate::backoff::pause(delay, cx).await?;
        Ok(true)
    }
}

impl<E: Executor> Executor for Retry<E> {
    async fn execute(&self, invocation: Invocation) -> Result<Reply> {
        let mut attempt = 1;
        loop {
            let last = attempt >= self.backoff.attempts();
            let this = if last { None } else { Some(invocation.clone()) };
            let outcome = match this {
                Some(copy) => self.inner.execute(copy).await,
                None => return self.inner.execute(invocation).await,
            };
            match outcome {
                Ok(reply) => return Ok(reply),
                Err(error) if self.wait(attempt, &error, &invocation).await? => attempt += 1,
                Err(error) => return Err(error),
            }
        }
    }

    async fn stream(&self, invocation: Invocation) -> Result<EventStream> {
        let mut attempt = 1;
        loop {
            let last = attempt >= self.backoff.attempts();
            let this = if last { None } else { Some(invocation.clone()) };
            let outcome = match this {
                Some(copy) => self.inner.stream(copy).await,
                None => return self.inner.stream(invocation).await,
            };
            match outcome {
                Ok(stream) => return Ok(stream),
                Err(error) if self.wait(attempt, &error, &invocation).await? => attempt += 1,
                Err(error) => return Err(error),
            }
        }
    }
}
