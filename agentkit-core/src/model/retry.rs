//! [`RetryModel`]: retries a model's retryable failures with backoff.

use async_trait::async_trait;

use crate::backoff::pause;
use crate::model::{Model, ModelRequest, ModelResponse, ModelStream};
use crate::{Backoff, Context, Error, Result};

/// Wraps a model and retries rate limits, unavailability and timeouts.
///
/// Waits follow the [`Backoff`] (exponential, full jitter, `Retry-After` honoured) and never end
/// past the request's deadline; a cancelled request stops waiting at once. A stream is retried
/// only while opening it: once events flow, an error is passed through, since the caller may
/// already have shown part of the answer.
///
/// ```
/// use std::time::Duration;
/// use agentkit_core::model::{RetryModel, ScriptedModel};
/// use agentkit_core::Backoff;
///
/// let model = RetryModel::new(ScriptedModel::demo())
///     .with_backoff(Backoff::new().max_attempts(4).base(Duration::from_millis(50)));
/// # let _ = model;
/// ```
#[derive(Clone, Debug)]
pub struct RetryModel<M> {
    inner: M,
    backoff: Backoff,
}

impl<M> RetryModel<M> {
    /// Wraps `inner` with the default [`Backoff`] (three attempts).
    pub fn new(inner: M) -> Self {
        Self {
            inner,
            backoff: Backoff::new(),
        }
    }

    /// Uses `backoff` instead of the default.
    #[must_use]
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The wrapped model.
    pub fn get_ref(&self) -> &M {
        &self.inner
    }
}

impl<M: Model> RetryModel<M> {
    fn should_retry(
        &self,
        attempt: u32,
        error: &Error,
        cx: &Context,
    ) -> Option<std::time::Duration> {
        let delay = self.backoff.next_delay(attempt, error, cx.deadline())?;
        tracing::warn!(
            model = self.inner.id(),
            attempt,
            error.code = error.code(),
            error.message = error.message(),
            delay_ms = delay.as_millis() as u64,
            "model call failed; retrying"
        );
        Some(delay)
    }
}

#[async_trait]
impl<M: Model> Model for RetryModel<M> {
    fn id(&self) -> &str {
        self.inner.id()
    }

    fn provider(&self) -> &str {
        self.inner.provider()
    }

    async fn complete(&self, request: &ModelRequest<'_>, cx: &Context) -> Result<ModelResponse> {
        let mut attempt = 1;
        loop {
            match self.inner.complete(request, cx).await {
                Ok(response) => return Ok(response),
                Err(error) => match self.should_retry(attempt, &error, cx) {
                    Some(delay) => pause(delay, cx).await?,
                    None => return Err(error),
                },
            }
            attempt += 1;
        }
    }

    async fn stream(&self, request: &ModelRequest<'_>, cx: &Context) -> Result<ModelStream> {
        let mut attempt = 1;
        loop {
            match self.inner.stream(request, cx).await {
                Ok(stream) => return Ok(stream),
                Err(error) => match self.should_retry(attempt, &error, cx) {
                    Some(delay) => pause(delay, cx).await?,
                    None => return Err(error),
                },
            }
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::{ErrorKind, Message};

    struct Flaky {
        failures: u32,
        calls: AtomicU32,
        kind: ErrorKind,
    }

    #[async_trait]
    impl Model for Flaky {
        fn id(&self) -> &str {
            "flaky"
        }

        async fn complete(&self, _: &ModelRequest<'_>, _: &Context) -> Result<ModelResponse> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n < self.failures {
                return Err(Error::new(self.kind, "flaky"));
            }
            Ok(ModelResponse {
                message: Message::assistant("ok"),
                usage: Default::default(),
                stop_reason: Default::default(),
                model: None,
            })
        }
    }

    fn flaky(failures: u32, kind: ErrorKind) -> RetryModel<Flaky> {
        RetryModel::new(Flaky {
            failures,
            calls: AtomicU32::new(0),
            kind,
        })
        .with_backoff(
            Backoff::new()
                .max_attempts(3)
                .base(Duration::from_millis(1)),
        )
    }

    #[tokio::test]
    async fn retries_until_success_within_attempts() {
        let model = flaky(2, ErrorKind::Unavailable);
        let messages = [Message::user("hi")];
        let r = model
            .complete(&ModelRequest::new(&messages), &Context::new())
            .await;
        assert_eq!(r.unwrap().message.text_content(), "ok");
        assert_eq!(model.get_ref().calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn gives_up_after_attempts_and_on_final_errors() {
        let model = flaky(5, ErrorKind::Unavailable);
        let messages = [Message::user("hi")];
        let r = model
            .complete(&ModelRequest::new(&messages), &Context::new())
            .await;
        assert_eq!(r.unwrap_err().kind(), ErrorKind::Unavailable);
        assert_eq!(model.get_ref().calls.load(Ordering::SeqCst), 3);

        let model = flaky(5, ErrorKind::InvalidInput);
        let r = model
            .complete(&ModelRequest::new(&messages), &Context::new())
            .await;
        assert_eq!(r.unwrap_err().kind(), ErrorKind::InvalidInput);
        assert_eq!(model.get_ref().calls.load(Ordering::SeqCst), 1);
    }
}
