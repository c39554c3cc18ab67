//! [`RemoteExecutor`]: an executor that calls an agent of another agentkit service over HTTP.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use agentkit_core::{
    AgentEvent, Context, Error, ErrorKind, EventStream, Executor, IdempotencyKey, Invocation,
    Message, Reply, Result,
};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue};
use serde::Serialize;

use crate::api::dto::{ErrorBody, InvokeResponse};
use crate::events;

struct Inner {
    client: reqwest::Client,
    /// `{base}`, parsed.
    base: reqwest::Url,
    endpoint: String,
    agent: String,
    bearer: Option<HeaderValue>,
    timeout: Duration,
    sessions: bool,
}

/// Calls `POST {base}/v1/agents/{agent}/invoke` of another agentkit service, so one agent can
/// delegate to another over HTTP. The request id and W3C trace context travel in headers; the
/// context's deadline bounds the call; the remote error's code comes back as the same
/// [`ErrorKind`]. Cheap to clone.
///
/// ```no_run
/// use agentkit_transport::RemoteExecutor;
///
/// let billing = RemoteExecutor::builder("http://billing.internal:8080", "billing")
///     .bearer("dummy-token")
///     .build()?;
/// # Ok::<_, agentkit_core::Error>(())
/// ```
#[derive(Clone)]
pub struct RemoteExecutor {
    inner: Arc<Inner>,
}

impl fmt::Debug for RemoteExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteExecutor")
            .field("endpoint", &self.inner.endpoint)
            .field("agent", &self.inner.agent)
            .finish_non_exhaustive()
    }
}

/// Builds a [`RemoteExecutor`].
#[must_use]
pub struct RemoteExecutorBuilder {
    base: String,
    agent: String,
    bearer: Option<String>,
    timeout: Duration,
    sessions: bool,
}

impl fmt::Debug for RemoteExecutorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteExecutorBuilder")
            .field("base", &self.base)
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

impl RemoteExecutor {
    /// A builder for the agent `agent` of the service at `base` (`http://host:port`).
    pub fn builder(base: impl Into<String>, agent: impl Into<String>) -> RemoteExecutorBuilder {
        RemoteExecutorBuilder {
            base: base.into(),
            agent: agent.into(),
            bearer: None,
            timeout: Duration::from_secs(120),
            sessions: false,
        }
    }
}

impl RemoteExecutorBuilder {
    /// Sends `Authorization: Bearer <token>` (an API key or a JWT of the remote service).
    pub fn bearer(mut self, token: impl Into<String>) -> Self {
        self.bearer = Some(token.into());
        self
    }

    /// The longest a call may take when its context has no earlier deadline (default 120 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// A context's session id names a session of the remote service: such a turn goes to
    /// `POST {base}/v1/agents/{agent}/sessions/{session_id}/messages`, where the remote keeps
    /// the history (the invocation's own history is not sent). Without this (the default),
    /// every call is a stateless invoke carrying the invocation's history, whatever its
    /// context names. A call whose context carries an [`IdempotencyKey`] sends it as
    /// `Idempotency-Key` either way, so that a retry gets the remote's recorded turn, or its
    /// keyed invoke's job, back instead of running again.
    pub fn sessions(mut self) -> Self {
        self.sessions = true;
        self
    }

    /// Validates the URL and builds.
    pub fn build(self) -> Result<RemoteExecutor> {
        let base = self.base.trim_end_matches('/');
        let parsed = reqwest::Url::parse(base)
            .map_err(|e| Error::invalid_input(format!("invalid base URL {base:?}: {e}")))?;
        if parsed.cannot_be_a_base() {
            return Err(Error::invalid_input(format!(
                "invalid base URL {base:?}: it cannot hold a path"
            )));
        }
        let bearer = self
            .bearer
            .map(|t| {
                let mut value = HeaderValue::try_from(format!("Bearer {t}")).map_err(|_| {
                    Error::invalid_input("the token contains characters not allowed in a header")
                })?;
                value.set_sensitive(true);
                Ok::<_, Error>(value)
            })
            .transpose()?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| Error::internal(format!("cannot build the HTTP client: {e}")))?;
        Ok(RemoteExecutor {
            inner: Arc::new(Inner {
                client,
                base: parsed,
                endpoint: format!("{base}/v1/agents/{}/invoke", self.agent),
                agent: self.agent,
                bearer,
                timeout: self.timeout,
                sessions: self.sessions,
            }),
        })
    }
}

#[derive(Serialize)]
struct Body<'a> {
    input: &'a [Message],
    history: &'a [Message],
    metadata: &'a serde_json::Map<String, serde_json::Value>,
}

fn transport_error(error: reqwest::Error) -> Error {
    if error.is_timeout() {
        Error::timeout(format!("the remote agent timed out: {error}"))
    } else {
        Error::unavailable(format!("cannot reach the remote agent: {error}")).with_source(error)
    }
}

async fn remote_error(response: reqwest::Response) -> Error {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let bytes = response.bytes().await.unwrap_or_default();
    let mut error = match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(body) => Error::new(
            ErrorKind::from_code(&body.error.code).unwrap_or(ErrorKind::Unavailable),
            format!("remote agent: {}", body.error.message),
        ),
        Err(_) if status.is_server_error() => {
            Error::unavailable(format!("remote agent answered {status}"))
        }
        Err(_) => Error::internal(format!(
            "remote agent answered {status} without an error body"
        )),
    };
    if let Some(after) = retry_after {
        error = error.with_retry_after(after);
    }
    error
}

impl RemoteExecutor {
    /// Asks the remote service whether it is ready (`GET {base}/readyz`, within the call
    /// timeout and at most 5 s): `Ok` for a 2xx, an `Unavailable` error otherwise. A pool of
    /// remote instances checks them with it (`PoolBuilder::probe`).
    pub async fn ready(&self) -> Result<()> {
        let mut url = self.inner.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push("readyz");
        }
        let response = (self.inner.client.get(url))
            .timeout(self.inner.timeout.min(Duration::from_secs(5)))
            .send()
            .await
            .map_err(|e| Error::unavailable(format!("cannot reach the remote service: {e}")))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(Error::unavailable(format!(
                "the remote service is not ready: {}",
                response.status()
            )))
        }
    }

    /// `{base}/v1/agents/{agent}/sessions/{session}/messages`, each part encoded as a path
    /// segment.
    fn session_endpoint(&self, session: &str) -> String {
        let mut url = self.inner.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend([
                "v1",
                "agents",
                &self.inner.agent,
                "sessions",
                session,
                "messages",
            ]);
        }
        url.into()
    }

    async fn post(&self, invocation: &Invocation, stream: bool) -> Result<reqwest::Response> {
        let cx: &Context = &invocation.context;
        let wait = cx
            .remaining()
            .map_or(self.inner.timeout, |r| r.min(self.inner.timeout));
        if wait.is_zero() {
            return Err(Error::timeout("the request deadline passed"));
        }
        let session = cx.session_id().filter(|_| self.inner.sessions);
        let body = Body {
            input: &invocation.input,
            // A remote session keeps its own history.
            history: if session.is_some() {
                &[]
            } else {
                &invocation.history
            },
            metadata: &invocation.metadata,
        };
        let endpoint = match session {
            Some(session) => self.session_endpoint(session),
            None => self.inner.endpoint.clone(),
        };
        let mut request = self
            .inner
            .client
            .post(endpoint)
            .header("x-request-id", cx.request_id())
            .json(&body);
        if let Some(trace) = cx.trace() {
            request = request.header("traceparent", trace.new_child().traceparent());
            if let Some(state) = trace.tracestate() {
                request = request.header("tracestate", state);
            }
        }
        if let Some(bearer) = &self.inner.bearer {
            request = request.header(AUTHORIZATION, bearer.clone());
        }
        // The remote recognises a retried turn by it (a session's record, or the job a keyed
        // invoke runs as).
        if let Some(key) = cx.extension::<IdempotencyKey>() {
            request = request.header("idempotency-key", key.as_str());
        }
        if stream {
            request = request.header(ACCEPT, "text/event-stream");
        } else {
            request = request.timeout(wait);
        }
        let response = tokio::select! {
            sent = tokio::time::timeout(wait, request.send()) => match sent {
                Ok(result) => result.map_err(transport_error)?,
                Err(_) => return Err(Error::timeout("the remote agent did not answer in time")),
            },
            () = cx.cancellation().cancelled() => return Err(Error::cancelled()),
        };
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(remote_error(response).await)
        }
    }
}

impl Executor for RemoteExecutor {
    async fn execute(&self, invocation: Invocation) -> Result<Reply> {
        let response = self.post(&invocation, false).await?;
        let bytes = response.bytes().await.map_err(transport_error)?;
        let doc: InvokeResponse = serde_json::from_slice(&bytes).map_err(|e| {
            Error::unavailable(format!("malformed reply from the remote agent: {e}"))
        })?;
        Ok(doc.into_reply())
    }

    async fn stream(&self, invocation: Invocation) -> Result<EventStream> {
        let response = self.post(&invocation, true).await?;
        let events = response
            .bytes_stream()
            .eventsource()
            .filter_map(|item| async move {
                match item {
                    Ok(event) => events::decode(&event.event, &event.data).transpose(),
                    Err(eventsource_stream::EventStreamError::Transport(e)) => {
                        Some(Err(transport_error(e)))
                    }
                    Err(e) => Some(Err(Error::unavailable(format!(
                        "malformed event stream from the remote agent: {e}"
                    )))),
                }
            });
        // Stop after `done` or the first error, whatever the server sends after; a stream
        // that ends before either was cut off (the remote died, or a proxy gave up on it).
        let events = futures::stream::unfold(
            (Box::pin(events), false),
            |(mut events, ended)| async move {
                if ended {
                    return None;
                }
                let item = events.next().await.unwrap_or_else(|| {
                    Err(Error::unavailable(
                        "the remote agent's event stream ended before its answer",
                    ))
                });
                let ended = matches!(item, Err(_) | Ok(AgentEvent::Done(_)));
                Some((item, (events, ended)))
            },
        );
        Ok(Box::pin(events))
    }
}
