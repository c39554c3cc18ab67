//! [`Timeout`]: a deadline for every invocation of an executor.

use std::future::Future;
use std::time::Duration;

use crate::executor::{EventStream, Executor, Invocation, Reply};
use crate::{Error, Result};

/// Gives each invocation at most `timeout`, keeping an earlier deadline the caller set.
///
/// The deadline is written into the invocation's [`Context`](crate::Context), so everything
/// underneath (model calls, tool calls, retries) stops waiting in time; the wrapper also stops
/// waiting itself when the deadline passes and answers [`ErrorKind::Timeout`](crate::ErrorKind).
#[derive(Clone, Debug)]
pub struct Timeout<E> {
    inner: E,
    timeout: Duration,
}

impl<E> Timeout<E> {
    /// Wraps `inner`.
    pub fn new(inner: E, timeout: Duration) -> Self {
        Self { inner, timeout }
    }
}

/// Applies [`Timeout`]; composes with `tower::ServiceBuilder`.
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    timeout: Duration,
}

impl TimeoutLayer {
    /// A layer giving each invocation at most `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<E> tower::Layer<E> for TimeoutLayer {
    type Service = Timeout<E>;

    fn layer(&self, inner: E) -> Timeout<E> {
        Timeout::new(inner, self.timeout)
    }
}

fn elapsed(timeout: Duration) -> Error {
    Error::timeout(format!(
        "the request did not finish within its deadline ({} ms)",
        timeout.as_millis()
    ))
}

impl<E: Executor> Executor for Timeout<E> {
    fn execute(&self, mut invocation: Invocation) -> impl Future<Output = Result<Reply>> + Send {
        invocation.context = invocation.context.with_timeout(self.timeout);
        let deadline = invocation.context.deadline();
        let run = self.inner.execute(invocation);
        let timeout = self.timeout;
        async move {
            match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, run)
                    .await
                    .unwrap_or_else(|_| Err(elapsed(timeout))),
                None => run.await,
            }
        }
    }

    fn stream(
        &self,
        mut invocation: Invocation,
    ) -> impl Future<Output = Result<EventStream>> + Send {
        invocation.context = invocation.context.with_timeout(self.timeout);
        let deadline = invocation.context.deadline();
        let open = self.inner.stream(invocation);
        let timeout = self.timeout;
        async move {
            match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, open)
                    .await
                    .unwrap_or_else(|_| Err(elapsed(timeout))),
                None => open.await,
            }
        }
    }
}
