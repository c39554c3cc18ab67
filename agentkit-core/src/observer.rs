//! The observer hook: how telemetry watches runs without the runtime knowing any exporter.
//!
//! The runtime calls an [`Observer`] at the start of a run and gets a [`RunScope`] back; the
//! scope is told of each model call and tool call (each returning its own scope, ended with the
//! outcome) and of the run's end. The observe crate implements these with OpenTelemetry spans,
//! Prometheus metrics and JSON log lines. With no observer installed the runtime pays one
//! atomic load per run.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::executor::Reply;
use crate::message::{ToolCall, Usage};
use crate::model::ModelResponse;
use crate::tool::ToolCallRecord;
use crate::trace::TraceContext;
use crate::{Context, Error};

/// What the runtime knows when a run starts.
#[derive(Debug)]
#[non_exhaustive]
pub struct RunStart<'a> {
    /// The agent's name.
    pub agent: &'a str,
    /// The agent's version (for canaries and replay).
    pub agent_version: &'a str,
    /// The model id requested.
    pub model: &'a str,
    /// The model's provider.
    pub provider: &'a str,
    /// The request's context (request id, tenant, session, trace).
    pub context: &'a Context,
}

/// What the runtime knows when a model call starts.
#[derive(Debug)]
#[non_exhaustive]
pub struct ModelCallStart<'a> {
    /// The model id requested.
    pub model: &'a str,
    /// The model's provider.
    pub provider: &'a str,
    /// 1 for the first call of the run.
    pub step: u32,
    /// Whether the call streams.
    pub streaming: bool,
}

/// How a run ended, with what it spent whether it succeeded or not.
#[derive(Debug)]
#[non_exhaustive]
pub struct RunEnd<'a> {
    /// The reply, or the error that ended the run.
    pub outcome: Result<&'a Reply, &'a Error>,
    /// Tokens spent by the model calls that completed.
    pub usage: Usage,
    /// Their cost in US dollars.
    pub cost_usd: f64,
    /// The tool calls made.
    pub tool_calls: &'a [ToolCallRecord],
    /// The model that answered last (or was asked).
    pub model: &'a str,
    /// Model calls made.
    pub steps: u32,
}

/// What the edge knows when an HTTP request starts.
#[derive(Debug)]
#[non_exhaustive]
pub struct RequestStart<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The matched route template (`/v1/agents/{agent}/invoke`), never the raw path.
    pub route: &'a str,
    /// The request's context so far (request id, inbound trace).
    pub context: &'a Context,
}

impl<'a> RequestStart<'a> {
    /// What a transport tells the observer when a request starts.
    pub fn new(method: &'a str, route: &'a str, context: &'a Context) -> Self {
        Self {
            method,
            route,
            context,
        }
    }
}

/// One observed HTTP request.
pub trait RequestScope: Send + Sync {
    /// The trace context of the request's span: the parent of the runs and jobs it starts.
    fn trace(&self) -> Option<TraceContext> {
        None
    }

    /// The response was sent with `status`.
    fn end(self: Box<Self>, status: u16);
}

/// Watches runs. Installed per agent ([`AgentBuilder::observer`](crate::AgentBuilder::observer))
/// or for the whole process ([`set_global_observer`]).
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use agentkit_core::observer::{Observer, RunEnd, RunScope, RunStart};
///
/// #[derive(Default)]
/// struct CountRuns(AtomicUsize);
///
/// struct Scope;
/// impl RunScope for Scope {
///     fn end(self: Box<Self>, _end: &RunEnd<'_>) {}
/// }
///
/// impl Observer for CountRuns {
///     fn start_run(&self, _run: &RunStart<'_>) -> Box<dyn RunScope> {
///         self.0.fetch_add(1, Ordering::Relaxed);
///         Box::new(Scope)
///     }
/// }
///
/// let observer: Arc<dyn Observer> = Arc::new(CountRuns::default());
/// # let _ = observer;
/// ```
pub trait Observer: Send + Sync {
    /// Whether this observer records anything; when `false` the runtime skips it entirely, so
    /// telemetry that is switched off costs one call per run.
    fn enabled(&self) -> bool {
        true
    }

    /// A run starts; the scope sees the rest of it.
    fn start_run(&self, run: &RunStart<'_>) -> Box<dyn RunScope>;

    /// An HTTP request starts (called by transports); `None` to not trace requests.
    fn start_request(&self, _request: &RequestStart<'_>) -> Option<Box<dyn RequestScope>> {
        None
    }

    /// A queue holds `depth` jobs waiting (reported periodically by workers).
    fn queue_depth(&self, _queue: &str, _depth: u64) {}

    /// A [`Pool`](crate::executor::Pool)'s member is up or down (reported when it is built and
    /// at each change).
    fn pool_member(&self, _pool: &str, _member: &str, _up: bool) {}

    /// A session save lost a compare-and-set race.
    fn session_conflict(&self) {}

    /// A session turn waited `waited` for another instance's lease on its session (reported
    /// when it got the lease or gave up; not when the lease was free).
    fn session_lease_wait(&self, _waited: std::time::Duration) {}

    /// A keyed session turn was answered from its session without running (a retry of a
    /// turn already applied).
    fn session_replay(&self) {}

    /// A [`Pool`](crate::executor::Pool) sent a keyed turn on to another member after its
    /// own could not be reached.
    fn pool_resend(&self, _pool: &str) {}

    /// Whether prompt and completion text may be recorded (off unless switched on).
    fn capture_content(&self) -> bool {
        false
    }
}

/// One observed run. The runtime ends every run it starts exactly once, including one whose
/// future is dropped midway (a client that disconnected, a job handed back): that run ends
/// with an error of kind [`Cancelled`](crate::ErrorKind::Cancelled) and what it spent so far.
pub trait RunScope: Send + Sync {
    /// The trace context of the run, for outbound calls and child work.
    fn trace(&self) -> Option<TraceContext> {
        None
    }

    /// A model call starts.
    fn start_model_call(&self, _call: &ModelCallStart<'_>) -> Box<dyn CallScope> {
        Box::new(NoCall)
    }

    /// A tool call starts.
    fn start_tool_call(&self, _call: &ToolCall) -> Box<dyn CallScope> {
        Box::new(NoCall)
    }

    /// The run ended.
    fn end(self: Box<Self>, end: &RunEnd<'_>);
}

/// One observed model or tool call, ended exactly once like its run. A call cut off by its
/// run being dropped ends as cancelled: a model call with a `Cancelled` error, a tool call
/// with a failed record of no duration (the toolbox's timing went with it).
pub trait CallScope: Send + Sync {
    /// The trace context of this call, injected into the provider request or the tool's context.
    fn trace(&self) -> Option<TraceContext> {
        None
    }

    /// A model call ended.
    fn end_model(self: Box<Self>, _outcome: Result<&ModelResponse, &Error>) {}

    /// A tool call ended.
    fn end_tool(self: Box<Self>, _record: &ToolCallRecord) {}
}

struct NoCall;

impl CallScope for NoCall {}

/// What a finished run tells whoever logs the request or job around it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunSummary {
    /// The agent's name.
    pub agent: String,
    /// The agent's version.
    pub agent_version: String,
    /// The model that answered last (or was asked).
    pub model: String,
    /// The tenant of the run's context.
    pub tenant: Option<String>,
    /// The session of the run's context.
    pub session_id: Option<String>,
    /// Input tokens.
    pub tokens_in: u64,
    /// Output tokens.
    pub tokens_out: u64,
    /// The names of the tools called, in order.
    pub tool_names: Vec<String>,
    /// Cost in US dollars.
    pub cost_usd: f64,
    /// The error code when the run failed.
    pub error_code: Option<&'static str>,
    /// The run's trace id (32 hex digits), when traced.
    pub trace_id: Option<String>,
    /// The run's span id (16 hex digits), when traced.
    pub span_id: Option<String>,
    /// The final answer (kept only when content capture is on).
    pub output: Option<String>,
    /// How long the run took.
    pub duration: Duration,
}

/// A slot the edge (an HTTP handler, a queue worker) puts in the [`Context`] as an extension;
/// the agent loop leaves the [`RunSummary`] of its run there, so one log line per request can
/// carry what the run did.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    summary: Arc<Mutex<Option<RunSummary>>>,
}

impl RunReport {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Leaves `summary` (the last run wins).
    pub fn set(&self, summary: RunSummary) {
        *self.summary.lock().unwrap_or_else(|p| p.into_inner()) = Some(summary);
    }

    /// The summary left, if any.
    pub fn get(&self) -> Option<RunSummary> {
        self.summary
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

static GLOBAL: OnceLock<Arc<dyn Observer>> = OnceLock::new();

/// Installs the observer of every agent that has none of its own. Only the first call takes
/// effect; it returns `false` when an observer was already installed.
pub fn set_global_observer(observer: Arc<dyn Observer>) -> bool {
    GLOBAL.set(observer).is_ok()
}

/// The process-wide observer, when one was installed.
pub fn global_observer() -> Option<&'static Arc<dyn Observer>> {
    GLOBAL.get()
}
