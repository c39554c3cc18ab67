//! An OpenAI-compatible chat-completions client: OpenAI, Azure OpenAI, vLLM, Ollama, llama.cpp,
//! LiteLLM and any other server of that API.

mod convert;
mod embed;
mod stream;
mod wire;

pub use embed::OpenAiEmbedder;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};

use crate::model::{Model, ModelRequest, ModelResponse, ModelStream};
use crate::secret::CachedSecret;
use crate::{Context, Error, ErrorKind, Result};

/// The default API root.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
/// The model used when none is configured.
pub const DEFAULT_MODEL: &str = "gpt-4o-mini";

/// Bodies above this size are refused rather than buffered.
const MAX_BODY_BYTES: usize = 32 << 20;

struct Inner {
    client: reqwest::Client,
    /// A key looked up per request (cached), so that a rotated key takes effect at once.
    key: Option<CachedSecret>,
    endpoint: String,
    base_url: String,
    model: String,
    provider: String,
    timeout: Duration,
}

/// A client of an OpenAI-compatible `POST /chat/completions` endpoint.
///
/// Cheap to clone. Streams over SSE with usage (`stream_options.include_usage`); maps HTTP 429
/// to [`ErrorKind::RateLimited`] with the server's `Retry-After`, 5xx and connection failures to
/// [`ErrorKind::Unavailable`], 400 to [`ErrorKind::InvalidInput`], 401/403 to the auth kinds, and
/// a malformed body to a clear [`ErrorKind::Unavailable`] error. Retries are not done here: wrap
/// it in a [`RetryModel`](crate::model::RetryModel).
///
/// ```no_run
/// use agentkit_core::model::openai::OpenAiModel;
///
/// let model = OpenAiModel::builder()
///     .base_url("http://localhost:11434/v1") // Ollama
///     .model("llama3.1")
///     .build()?;
/// # Ok::<_, agentkit_core::Error>(())
/// ```
#[derive(Clone)]
pub struct OpenAiModel {
    inner: Arc<Inner>,
}

impl fmt::Debug for OpenAiModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The API key is never printed.
        f.debug_struct("OpenAiModel")
            .field("base_url", &self.inner.base_url)
            .field("model", &self.inner.model)
            .finish_non_exhaustive()
    }
}

impl OpenAiModel {
    /// A builder with OpenAI's defaults.
    pub fn builder() -> OpenAiModelBuilder {
        OpenAiModelBuilder {
            base_url: DEFAULT_BASE_URL.to_owned(),
            api_key: None,
            api_key_secret: None,
            model: DEFAULT_MODEL.to_owned(),
            provider: "openai".to_owned(),
            headers: Vec::new(),
            timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }

    /// A client from the environment: the key from `OPENAI_API_KEY`, or from the file named by
    /// `OPENAI_API_KEY_FILE` (read again every 30 s and after a 401, so a rotated key takes
    /// effect without a restart); `OPENAI_BASE_URL`, `AGENTKIT_MODEL`. `Ok(None)` when neither
    /// key variable is set.
    pub fn from_env() -> Result<Option<Self>> {
        let set = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let mut builder = if let Some(path) = set("OPENAI_API_KEY_FILE") {
            let key =
                CachedSecret::from_file(path.trim(), Duration::from_secs(30)).map_err(|e| {
                    Error::invalid_input(format!("OPENAI_API_KEY_FILE: {}", e.message()))
                })?;
            Self::builder().api_key_secret(key)
        } else if let Some(key) = set("OPENAI_API_KEY") {
            Self::builder().api_key(key)
        } else {
            return Ok(None);
        };
        if let Some(url) = set("OPENAI_BASE_URL") {
            builder = builder.base_url(url);
        }
        if let Some(model) = set("AGENTKIT_MODEL") {
            builder = builder.model(model);
        }
        builder.build().map(Some)
    }

    /// The API root this client talks to.
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    fn post(&self, url: &str, cx: &Context) -> reqwest::RequestBuilder {
        let mut request = self
            .inner
            .client
            .post(url)
            .header("x-request-id", cx.request_id());
        if let Some(trace) = cx.trace() {
            request = request.header("traceparent", trace.traceparent());
            if let Some(state) = trace.tracestate() {
                request = request.header("tracestate", state);
            }
        }
        request
    }

    fn time_left(&self, cx: &Context) -> Result<Duration> {
        match cx.remaining() {
            Some(left) if left.is_zero() => Err(Error::timeout("the request deadline passed")),
            Some(left) => Ok(left.min(self.inner.timeout)),
            None => Ok(self.inner.timeout),
        }
    }

    async fn send(&self, body: Vec<u8>, cx: &Context, stream: bool) -> Result<reqwest::Response> {
        self.send_to(&self.inner.endpoint, body, cx, stream).await
    }

    /// POSTs `body` to `url` of this API with the key, request id and trace headers, within
    /// the request's deadline; a non-2xx status is an error of its kind.
    async fn send_to(
        &self,
        url: &str,
        body: Vec<u8>,
        cx: &Context,
        stream: bool,
    ) -> Result<reqwest::Response> {
        let wait = self.time_left(cx)?;
        let mut request = self
            .post(url, cx)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(key) = &self.inner.key {
            request = request.header(AUTHORIZATION, bearer(key.get().await?.expose())?);
        }
        if stream {
            request = request.header(reqwest::header::ACCEPT, "text/event-stream");
        } else {
            request = request.timeout(wait);
        }
        let sending = request.send();
        let response = tokio::select! {
            r = tokio::time::timeout(wait, sending) => match r {
                Ok(result) => result.map_err(transport_error)?,
                Err(_) => return Err(timed_out(wait)),
            },
            () = cx.cancellation().cancelled() => return Err(Error::cancelled()),
        };
        if response.status().is_success() {
            return Ok(response);
        }
        if response.status() == reqwest::StatusCode::UNAUTHORIZED
            && let Some(key) = &self.inner.key
        {
            // The key may have been rotated: look it up again on the next call.
            key.invalidate();
        }
        Err(status_error(response).await)
    }
}

#[async_trait]
impl Model for OpenAiModel {
    fn id(&self) -> &str {
        &self.inner.model
    }

    fn provider(&self) -> &str {
        &self.inner.provider
    }

    async fn complete(&self, request: &ModelRequest<'_>, cx: &Context) -> Result<ModelResponse> {
        let body = serde_json::to_vec(&convert::request(&self.inner.model, request, false))
            .map_err(|e| Error::internal(format!("cannot encode the request: {e}")))?;
        let response = self.send(body, cx, false).await?;
        if response
            .content_length()
            .is_some_and(|n| n > MAX_BODY_BYTES as u64)
        {
            return Err(Error::unavailable(
                "the model provider's response is too large",
            ));
        }
        let bytes = response.bytes().await.map_err(transport_error)?;
        let wire: wire::ChatResponse = serde_json::from_slice(&bytes).map_err(|e| {
            Error::unavailable(format!("malformed response from the model provider: {e}"))
        })?;
        convert::response(wire).ok_or_else(|| {
            Error::unavailable("malformed response from the model provider: no choices")
        })
    }

    async fn stream(&self, request: &ModelRequest<'_>, cx: &Context) -> Result<ModelStream> {
        let body = serde_json::to_vec(&convert::request(&self.inner.model, request, true))
            .map_err(|e| Error::internal(format!("cannot encode the request: {e}")))?;
        let response = self.send(body, cx, true).await?;
        let events = response
            .bytes_stream()
            .eventsource()
            .map(|event| {
                event.map_err(|e| match e {
                    eventsource_stream::EventStreamError::Transport(e) => transport_error(e),
                    other => Error::unavailable(format!(
                        "malformed event stream from the model provider: {other}"
                    )),
                })
            })
            .boxed();
        Ok(Box::pin(stream::ChunkStream::new(events)))
    }
}

fn timed_out(wait: Duration) -> Error {
    Error::timeout(format!(
        "the model provider did not answer within {} ms",
        wait.as_millis()
    ))
}

fn transport_error(error: reqwest::Error) -> Error {
    if error.is_timeout() {
        Error::timeout(format!("the model provider timed out: {error}")).with_source(error)
    } else {
        Error::unavailable(format!("cannot reach the model provider: {error}")).with_source(error)
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        return Some(Duration::from_secs_f64(ms.max(0.0) / 1000.0));
    }
    header("retry-after")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite())
        .map(|s| Duration::from_secs_f64(s.max(0.0)))
}

async fn status_error(response: reqwest::Response) -> Error {
    let status = response.status();
    let after = retry_after(response.headers());
    let body = response.bytes().await.unwrap_or_default();
    let detail = serde_json::from_slice::<wire::ErrorBody>(&body)
        .map(|b| b.error.message)
        .unwrap_or_else(|_| {
            let text = String::from_utf8_lossy(&body);
            text.chars().take(500).collect()
        });
    let kind = match status.as_u16() {
        400 | 404 | 409 | 413 | 422 => ErrorKind::InvalidInput,
        401 => ErrorKind::Unauthenticated,
        403 => ErrorKind::PermissionDenied,
        408 => ErrorKind::Timeout,
        429 => ErrorKind::RateLimited,
        _ => ErrorKind::Unavailable,
    };
    let mut error = Error::new(
        kind,
        format!("the model provider answered {status}: {detail}"),
    );
    if let Some(after) = after {
        error = error.with_retry_after(after);
    }
    error
}

/// `Bearer {key}` as a sensitive header value.
fn bearer(key: &str) -> Result<HeaderValue> {
    let mut value = HeaderValue::try_from(format!("Bearer {key}")).map_err(|_| {
        Error::invalid_input("the API key contains characters not allowed in a header")
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Builds an [`OpenAiModel`].
#[must_use]
pub struct OpenAiModelBuilder {
    base_url: String,
    api_key: Option<String>,
    api_key_secret: Option<CachedSecret>,
    model: String,
    provider: String,
    headers: Vec<(String, String)>,
    timeout: Duration,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

impl fmt::Debug for OpenAiModelBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiModelBuilder")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("api_key_secret", &self.api_key_secret)
            .finish_non_exhaustive()
    }
}

impl OpenAiModelBuilder {
    /// The API root (default `https://api.openai.com/v1`); `/chat/completions` is appended.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }

    /// The API key, sent as `Authorization: Bearer`; local servers may need none.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// The API key as a secret kept fresh: looked up (through its cache) for each request and
    /// invalidated when the provider answers 401, so a rotated key takes effect without a
    /// restart. Replaces [`api_key`](Self::api_key).
    pub fn api_key_secret(mut self, secret: CachedSecret) -> Self {
        self.api_key_secret = Some(secret);
        self
    }

    /// The model id (default `gpt-4o-mini`).
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = model.into();
        self
    }

    /// The provider name in telemetry (default `openai`; e.g. `azure.ai.openai`, `vllm`).
    pub fn provider(mut self, provider: impl Into<String>) -> Self {
        self.provider = provider.into();
        self
    }

    /// An extra header on every request (Azure's `api-key`, an org id, a gateway token).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The longest a non-streamed call, or the wait for a stream's first byte, may take
    /// (default 120 s; the request's deadline may cut it shorter).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The longest connecting may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The longest a stream may stay silent between chunks (default 60 s).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Validates the URL and headers and builds the client.
    pub fn build(self) -> Result<OpenAiModel> {
        let base = self.base_url.trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&base)
            .map_err(|e| Error::invalid_input(format!("invalid base URL {base:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::invalid_input(format!(
                "base URL {base:?} must be http or https"
            )));
        }
        if self.model.trim().is_empty() {
            return Err(Error::invalid_input("the model id must not be empty"));
        }
        let mut headers = HeaderMap::new();
        if let (Some(key), None) = (&self.api_key, &self.api_key_secret) {
            headers.insert(AUTHORIZATION, bearer(key)?);
        }
        for (name, value) in &self.headers {
            let name = HeaderName::try_from(name.as_str())
                .map_err(|_| Error::invalid_input(format!("invalid header name {name:?}")))?;
            let mut value = HeaderValue::try_from(value.as_str())
                .map_err(|_| Error::invalid_input(format!("invalid value for header {name}")))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.idle_timeout)
            .build()
            .map_err(|e| Error::internal(format!("cannot build the HTTP client: {e}")))?;
        Ok(OpenAiModel {
            inner: Arc::new(Inner {
                client,
                key: self.api_key_secret,
                endpoint: format!("{base}/chat/completions"),
                base_url: base,
                model: self.model,
                provider: self.provider,
                timeout: self.timeout,
            }),
        })
    }
}
