//! The HTTP API: an `axum::Router` to mount or serve.

pub mod dto;
mod edge;
mod extract;
mod health;
mod invoke;
pub(crate) mod jobs;
pub(crate) mod logline;
mod openai;
mod sessions;
mod ws;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use agentkit_core::observer::Observer;
use agentkit_core::{BoxExecutor, Error, ErrorKind, Executor, Result};
use agentkit_store::{
    HistoryPolicy, LeaseStore, MemorySessionStore, SessionAgent, SessionStore, TurnPolicy,
};
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Router, middleware};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use extract::{ApiJson, ApiPath};
pub(crate) use sessions::stored_id as stored_session_id;

use crate::auth::{Authenticator, Principal};
use crate::error::ApiError;
use crate::leases::SessionLeases;
use crate::limit::RateLimits;

/// A readiness check: `Ok` when the dependency answers.
pub type ReadinessCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<()>> + Send>> + Send + Sync>;

/// Renders the Prometheus exposition text for `/metrics`.
pub type MetricsRenderer = Arc<dyn Fn() -> String + Send + Sync>;

/// How an agent is served.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// What happens to a session message that arrives mid-turn (default [`TurnPolicy::Enqueue`]).
    pub policy: TurnPolicy,
    /// How much history a session keeps (default the last 200 messages).
    pub history: HistoryPolicy,
    /// The sessions' TTL (default: the store's).
    pub session_ttl: Option<Duration>,
    /// The tenants that may use the agent; `None`: every tenant.
    pub tenants: Option<Vec<String>>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            policy: TurnPolicy::Enqueue,
            history: HistoryPolicy::default(),
            session_ttl: None,
            tenants: None,
        }
    }
}

pub(crate) struct Mounted {
    pub(crate) executor: BoxExecutor,
    pub(crate) sessions: SessionAgent<BoxExecutor>,
    tenants: Option<HashSet<String>>,
}

pub(crate) struct AppState {
    pub(crate) agents: HashMap<String, Mounted>,
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) auth: Authenticator,
    pub(crate) limits: Option<RateLimits>,
    pub(crate) request_timeout: Duration,
    pub(crate) body_limit: usize,
    pub(crate) readiness: Vec<(String, ReadinessCheck)>,
    pub(crate) metrics: Option<MetricsRenderer>,
    pub(crate) jobs: Option<Arc<dyn crate::jobs::JobQueue>>,
    /// Keyed invokes run as jobs on `jobs` (when there is one).
    pub(crate) keyed_invokes_as_jobs: bool,
    pub(crate) allow_private_callbacks: bool,
    pub(crate) accept_callbacks: bool,
    pub(crate) observer: Option<Arc<dyn Observer>>,
}

impl AppState {
    /// The observer of this API: its own, else the process-wide one.
    pub(crate) fn observer(&self) -> Option<&Arc<dyn Observer>> {
        self.observer
            .as_ref()
            .or_else(|| agentkit_core::observer::global_observer())
    }

    /// The agent `name` as `principal` may use it: 404 when unknown, 403 when not allowed.
    pub(crate) fn agent(&self, name: &str, principal: &Principal) -> Result<&Mounted> {
        let mounted = self
            .agents
            .get(name)
            .ok_or_else(|| Error::not_found(format!("no agent named `{name}`")))?;
        let tenant_ok = mounted
            .tenants
            .as_ref()
            .is_none_or(|t| t.contains(&principal.tenant));
        if !tenant_ok || !principal.may_use(name) {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!("this caller may not use the agent `{name}`"),
            ));
        }
        Ok(mounted)
    }
}

/// The agentkit HTTP API: agents behind REST, SSE, WebSocket and OpenAI-compatible routes,
/// with auth, rate limits, body limits, request ids and JSON errors.
///
/// ```
/// use std::sync::Arc;
/// use agentkit_core::model::ScriptedModel;
/// use agentkit_transport::Api;
///
/// let agent = agentkit_core::demo::assistant_builder(Arc::new(ScriptedModel::demo())).build()?;
/// let api = Api::builder().agent("assistant", agent).build()?;
/// let app: axum::Router = axum::Router::new().merge(api.router()); // mount in your own app
/// # let _ = app;
/// # Ok::<_, agentkit_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Api {
    state: Arc<AppState>,
}

impl fmt::Debug for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut agents: Vec<&String> = self.state.agents.keys().collect();
        agents.sort();
        f.debug_struct("Api")
            .field("agents", &agents)
            .field("auth", &self.state.auth)
            .field("limits", &self.state.limits)
            .finish_non_exhaustive()
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "agentkit", description = "Agents as a service: invoke, sessions, streaming, OpenAI-compatible chat completions."),
    modifiers(&BearerAuth),
    tags((name = "agents"), (name = "sessions"), (name = "jobs"), (name = "openai"), (name = "operations"))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

impl Api {
    /// A builder.
    pub fn builder() -> ApiBuilder {
        ApiBuilder::default()
    }

    fn assemble(&self) -> (Router, utoipa::openapi::OpenApi) {
        let state = self.state.clone();
        let v1 = OpenApiRouter::new()
            .routes(routes!(invoke::invoke))
            .routes(routes!(sessions::post_message))
            .routes(routes!(sessions::get_session, sessions::delete_session))
            .routes(routes!(ws::session_socket))
            .routes(routes!(openai::chat_completions))
            .routes(routes!(openai::list_models))
            .routes(routes!(jobs::submit))
            .routes(routes!(jobs::get_job))
            .routes(routes!(jobs::job_events))
            .routes(routes!(jobs::cancel_job))
            .routes(routes!(jobs::retry_job))
            .route_layer(middleware::from_fn_with_state(
                state.clone(),
                edge::authenticate,
            ));
        let operations = OpenApiRouter::new()
            .routes(routes!(health::healthz))
            .routes(routes!(health::readyz))
            .routes(routes!(health::metrics))
            .routes(routes!(health::openapi_json));
        OpenApiRouter::with_openapi(ApiDoc::openapi())
            .merge(v1)
            .merge(operations)
            .with_state(state)
            .split_for_parts()
    }

    /// The router, ready to serve or to merge into an application's router.
    pub fn router(&self) -> Router {
        let (router, doc) = self.assemble();
        let doc = Arc::new(doc);
        router
            .layer(axum::Extension(doc))
            .fallback(|| async { ApiError::no_route() })
            .method_not_allowed_fallback(|| async {
                ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "method not allowed on this route",
                )
            })
            .layer(DefaultBodyLimit::max(self.state.body_limit))
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
            .layer(middleware::from_fn_with_state(
                self.state.clone(),
                edge::request_scope,
            ))
    }

    /// The OpenAPI 3.1 description of every route, generated from the handlers.
    pub fn openapi(&self) -> utoipa::openapi::OpenApi {
        self.assemble().1
    }

    /// The session store sessions are kept in.
    pub fn session_store(&self) -> &Arc<dyn SessionStore> {
        &self.state.store
    }
}

fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error",
    )
    .into_response()
}

/// Builds an [`Api`].
#[must_use]
pub struct ApiBuilder {
    agents: Vec<(String, BoxExecutor, AgentOptions)>,
    store: Option<Arc<dyn SessionStore>>,
    leases: Option<SessionLeases>,
    auth: Authenticator,
    limits: Option<RateLimits>,
    request_timeout: Duration,
    body_limit: usize,
    readiness: Vec<(String, ReadinessCheck)>,
    metrics: Option<MetricsRenderer>,
    jobs: Option<Arc<dyn crate::jobs::JobQueue>>,
    keyed_invokes_as_jobs: bool,
    allow_private_callbacks: bool,
    accept_callbacks: bool,
    observer: Option<Arc<dyn Observer>>,
}

impl Default for ApiBuilder {
    fn default() -> Self {
        Self {
            agents: Vec::new(),
            store: None,
            leases: None,
            auth: Authenticator::none(),
            limits: None,
            request_timeout: Duration::from_secs(120),
            body_limit: 1 << 20,
            readiness: Vec::new(),
            metrics: None,
            jobs: None,
            keyed_invokes_as_jobs: false,
            allow_private_callbacks: false,
            accept_callbacks: true,
            observer: None,
        }
    }
}

impl fmt::Debug for ApiBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiBuilder")
            .field("agents", &self.agents.len())
            .finish_non_exhaustive()
    }
}

impl ApiBuilder {
    /// Serves `executor` as the agent `name` with default options.
    pub fn agent(self, name: impl Into<String>, executor: impl Executor + 'static) -> Self {
        self.agent_with(name, executor, AgentOptions::default())
    }

    /// Serves `executor` as the agent `name`.
    pub fn agent_with(
        mut self,
        name: impl Into<String>,
        executor: impl Executor + 'static,
        options: AgentOptions,
    ) -> Self {
        self.agents
            .push((name.into(), BoxExecutor::new(executor), options));
        self
    }

    /// Where sessions live (default: in memory).
    pub fn session_store(mut self, store: Arc<dyn SessionStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Serializes each session's turns across instances of this service with a lease in
    /// `store` (typically the session store itself: Redis and PostgreSQL keep both), held by
    /// `owner` (this instance's id, unique in the fleet) for `ttl` and renewed while a turn
    /// runs. Saves carry the lease's fencing token, so an instance that lost its lease
    /// (paused, partitioned) cannot overwrite the turn of the one that took over. When an
    /// instance dies mid-turn, its lease expires after `ttl` and the next message of the
    /// session waits for that (within the request's deadline) and then runs on the stored
    /// history. Default: no leases; turns of one session are serialized within this
    /// instance only, and concurrent turns on two instances are settled by the store's
    /// versions (the loser's turn runs again on the fresh history). [`build`](Self::build)
    /// refuses an empty owner and a `ttl` under 100 ms.
    pub fn session_leases(
        mut self,
        store: Arc<dyn LeaseStore>,
        owner: impl Into<String>,
        ttl: Duration,
    ) -> Self {
        self.leases = Some(SessionLeases::new(store, owner, ttl));
        self
    }

    /// Who may call (default: everyone, as tenant `default`).
    pub fn auth(mut self, auth: Authenticator) -> Self {
        self.auth = auth;
        self
    }

    /// Per-tenant rate limits (default none).
    pub fn rate_limits(mut self, limits: RateLimits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// The deadline of each request (default 120 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The largest request body in bytes (default 1 MiB).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Adds a dependency `/readyz` checks.
    pub fn readiness_check(mut self, name: impl Into<String>, check: ReadinessCheck) -> Self {
        self.readiness.push((name.into(), check));
        self
    }

    /// What `/metrics` serves (default: a placeholder).
    pub fn metrics(mut self, renderer: MetricsRenderer) -> Self {
        self.metrics = Some(renderer);
        self
    }

    /// Accepts jobs on `queue` (`POST /v1/agents/{agent}/jobs`, `GET /v1/jobs/{id}`); workers
    /// run them. Adds the queue to `/readyz`.
    pub fn jobs(mut self, queue: Arc<dyn crate::jobs::JobQueue>) -> Self {
        self.jobs = Some(queue);
        self
    }

    /// Runs each invoke that carries an idempotency key (`Idempotency-Key`, or the body's
    /// `idempotency_key`) as a job with that key on the [`jobs`](Self::jobs) queue, so the same
    /// key again awaits or answers from that job instead of running the agent again; a key
    /// used for another request is a 409. Streamed, such an invoke opens its stream at once,
    /// keeps it alive while the job runs and sends the job's events when it ends. Workers must
    /// run the agents on that queue: without them a keyed invoke waits until its deadline. Off
    /// by default (the key then only travels on in the context).
    pub fn keyed_invokes_as_jobs(mut self, on: bool) -> Self {
        self.keyed_invokes_as_jobs = on;
        self
    }

    /// Accepts job `callback_url`s on loopback, private and other non-public address literals
    /// (and `localhost`). By default they are refused with a 400 at submission, since workers
    /// refuse to call them (see [`WebhookSender::allow_private_targets`]); set both from the
    /// same setting (`AGENTKIT_WEBHOOK_ALLOW_PRIVATE`).
    ///
    /// [`WebhookSender::allow_private_targets`]: crate::jobs::WebhookSender::allow_private_targets
    pub fn allow_private_callbacks(mut self, allow: bool) -> Self {
        self.allow_private_callbacks = allow;
        self
    }

    /// Whether job submissions may carry a `callback_url` (default `true`). Set it to whether
    /// the workers send webhooks ([`WorkerBuilder::webhooks`]): a worker without a sender
    /// skips callbacks, so a service whose workers have none should refuse them with a 400
    /// rather than accept a callback that will never come. The bundled service sets it from
    /// `AGENTKIT_WEBHOOK_SECRET` / `AGENTKIT_WEBHOOK_SECRET_FILE`, which its workers read too.
    ///
    /// [`WorkerBuilder::webhooks`]: crate::jobs::WorkerBuilder::webhooks
    pub fn accept_callbacks(mut self, accept: bool) -> Self {
        self.accept_callbacks = accept;
        self
    }

    /// Traces requests with `observer` (default: the process-wide one, if installed).
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Validates and builds: at least one agent, unique valid names.
    pub fn build(self) -> Result<Api> {
        if self.agents.is_empty() {
            return Err(Error::invalid_input("an API needs at least one agent"));
        }
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(MemorySessionStore::new()));
        let mut agents = HashMap::new();
        for (name, executor, options) in self.agents {
            let valid = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
            if !valid {
                return Err(Error::invalid_input(format!(
                    "agent name {name:?} must be 1-64 characters of [a-zA-Z0-9._-]"
                )));
            }
            let mut sessions = SessionAgent::builder(executor.clone(), store.clone())
                .policy(options.policy)
                .history(options.history);
            if let Some(ttl) = options.session_ttl {
                sessions = sessions.ttl(ttl);
            }
            if let Some(leases) = &self.leases {
                sessions = leases.apply(sessions)?;
            }
            let mounted = Mounted {
                executor,
                sessions: sessions.build(),
                tenants: options.tenants.map(|t| t.into_iter().collect()),
            };
            if agents.insert(name.clone(), mounted).is_some() {
                return Err(Error::invalid_input(format!(
                    "agent `{name}` is mounted twice"
                )));
            }
        }
        let mut readiness = self.readiness;
        let probe = store.clone();
        readiness.insert(
            0,
            (
                "sessions".to_owned(),
                Arc::new(move || {
                    let store = probe.clone();
                    Box::pin(async move { store.ping().await })
                        as Pin<Box<dyn Future<Output = Result<()>> + Send>>
                }),
            ),
        );
        if let Some(queue) = &self.jobs {
            let probe = queue.clone();
            readiness.push((
                "jobs".to_owned(),
                Arc::new(move || {
                    let queue = probe.clone();
                    Box::pin(async move { queue.ping().await })
                        as Pin<Box<dyn Future<Output = Result<()>> + Send>>
                }),
            ));
        }
        Ok(Api {
            state: Arc::new(AppState {
                agents,
                store,
                auth: self.auth,
                limits: self.limits,
                request_timeout: self.request_timeout,
                body_limit: self.body_limit,
                readiness,
                metrics: self.metrics,
                keyed_invokes_as_jobs: self.keyed_invokes_as_jobs,
                jobs: self.jobs,
                allow_private_callbacks: self.allow_private_callbacks,
                accept_callbacks: self.accept_callbacks,
                observer: self.observer,
            }),
        })
    }
}

/// `Json` of a serializable value with status 200.
/// A 200 with `value` as JSON, serialized into one buffer sized for a typical reply (axum's
/// `Json` starts small and grows through a `BytesMut` writer, which showed in profiles).
pub(crate) fn ok_json<T: serde::Serialize>(value: T) -> Response {
    let mut body = Vec::with_capacity(1024);
    match serde_json::to_writer(&mut body, &value) {
        Ok(()) => (
            [(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(error) => ApiError::from(Error::internal(format!(
            "cannot encode the response: {error}"
        )))
        .into_response(),
    }
}

/// The caller's idempotency key: the body's `idempotency_key` or the `Idempotency-Key`
/// header; an error when the header is not text or the two differ.
pub(crate) fn idempotency_key(
    body: Option<String>,
    headers: &axum::http::HeaderMap,
) -> Result<Option<String>> {
    let header = headers
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::to_owned))
        .transpose()
        .map_err(|_| Error::invalid_input("the Idempotency-Key header is not text"))?;
    match (body, header) {
        (Some(body), Some(header)) if body != header => Err(Error::invalid_input(
            "the idempotency key in the body and the header differ",
        )),
        (body, header) => Ok(body.or(header)),
    }
}

pub(crate) fn wants_event_stream(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}
