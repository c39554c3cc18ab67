//! The observer hook: how telemetry watches runs without the runtime knowing any exporter.
//!
//! The runtime calls an [`Observer`] at the start of a run and gets a [`RunScope`] back; the
//! scope is told of each model call and tool call (each returning its own scope, ended with the
//! outcome) and of the run's end. The observe crate implements these with OpenTelemetry spans,
//! Prometheus metrics and JSON log lines. With no observer installed the runtime pays one
//! atomic load per run.

use std::sync::{Arc, OnceLock};

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
    /// A run starts; the scope sees the rest of it.
    fn start_run(&self, run: &RunStart<'_>) -> Box<dyn RunScope>;
}

/// One observed run.
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

/// One observed model or tool call.
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
