//! [`AgentObserver`]: the core observer hook implemented with OpenTelemetry spans (GenAI
//! conventions) and Prometheus metrics.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use agentkit_core::model::ModelResponse;
use agentkit_core::observer::{
    CallScope, ModelCallStart, Observer, RequestScope, RequestStart, RunEnd, RunReport, RunScope,
    RunStart,
};
use agentkit_core::tool::ToolCallRecord;
use agentkit_core::{Context, Error, StopReason, ToolCall, TraceContext};
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{InstrumentationScope, KeyValue, StringValue};
use tracing::Dispatch;

use crate::background::{Drain, Items, Queue};
use crate::fnv::FnvBuild;
use crate::metrics::{
    AgentMetrics, AgentOutcome, InflightGauge, MAX_LABEL_VALUES, Metrics, ModelMetrics, OVERFLOW,
    PoolLabel, PoolLabels, QueueLabel, ToolMetrics,
};
use crate::semconv::Names;
use crate::spans::{Batch, Clock, Ended, OpenSpan, Sampling, Stamp};
use crate::text::Text;

pub(crate) struct Inner {
    /// Spans are recorded: the sampling decision and ids, on the request path.
    pub(crate) sampling: Option<Sampling>,
    /// To the telemetry thread: ended spans and run log lines.
    pub(crate) queue: Option<Queue<Records>>,
    pub(crate) metrics: Option<Arc<Metrics>>,
    pub(crate) capture: bool,
    pub(crate) log_runs: bool,
    pub(crate) labels: Labels,
}

/// The most distinct names of one kind (agents, models, tools, other values) kept made;
/// past it, names are made afresh for each span.
const MAX_LABELS: usize = 4096;

/// A name that recurs on every run (an agent's, a model's, a tool's, a provider's), made once:
/// its text and the span name for it, kept for the life of the process. Copying a label
/// touches no reference count, which matters because the request path makes them and the
/// telemetry thread drops them: a shared count would bounce between the two cores on every
/// run.
#[derive(Clone)]
pub(crate) enum Label {
    Kept(&'static Named<&'static str>),
    /// Past [`MAX_LABELS`] names of a kind.
    Made(Arc<Named<Box<str>>>),
}

/// A label's text and span name.
pub(crate) struct Named<S> {
    value: S,
    span: S,
}

impl Default for Label {
    /// An empty name, for what is not recorded.
    fn default() -> Self {
        static EMPTY: Named<&str> = Named {
            value: "",
            span: "",
        };
        Label::Kept(&EMPTY)
    }
}

impl Label {
    fn as_str(&self) -> &str {
        match self {
            Label::Kept(named) => named.value,
            Label::Made(named) => &named.value,
        }
    }

    fn value(&self) -> opentelemetry::Value {
        opentelemetry::Value::String(match self {
            Label::Kept(named) => StringValue::from(named.value),
            Label::Made(named) => StringValue::from(String::from(&*named.value)),
        })
    }

    fn span_name(&self) -> Cow<'static, str> {
        match self {
            Label::Kept(named) => Cow::Borrowed(named.span),
            Label::Made(named) => Cow::Owned(String::from(&*named.span)),
        }
    }
}

/// Slots of the per-thread cache of recent labels.
const RECENT_SLOTS: usize = 16;

/// A cached label: the address of its set, and the label.
type Recent = Option<(usize, &'static Named<&'static str>)>;

thread_local! {
    /// Labels found recently on this thread.
    static RECENT: std::cell::RefCell<[Recent; RECENT_SLOTS]> =
        const { std::cell::RefCell::new([None; RECENT_SLOTS]) };
}

/// Names of one kind, with the prefix of their span names.
pub(crate) struct LabelSet {
    prefix: &'static str,
    made: RwLock<HashMap<&'static str, &'static Named<&'static str>, FnvBuild>>,
}

impl LabelSet {
    fn new(prefix: &'static str) -> Self {
        Self {
            prefix,
            made: RwLock::default(),
        }
    }

    /// The label of `name`. Labels are made once per distinct name and kept for the life of
    /// the process (names come from configuration: agents, models, tools; at most
    /// [`MAX_LABELS`] of each kind, after which each run makes its own).
    fn get(&self, name: &str) -> Label {
        // Each run names the same few things: a small per-thread cache answers most lookups
        // without hashing the name or touching the lock.
        let set = std::ptr::from_ref(self) as usize;
        let slot =
            (set >> 4 ^ name.len() ^ usize::from(name.as_bytes().first().copied().unwrap_or(0)))
                % RECENT_SLOTS;
        let cached = RECENT.with(|recent| {
            recent.borrow()[slot].filter(|(owner, named)| *owner == set && named.value == name)
        });
        if let Some((_, named)) = cached {
            return Label::Kept(named);
        }
        let found = self
            .made
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied();
        if let Some(named) = found {
            RECENT.with(|recent| recent.borrow_mut()[slot] = Some((set, named)));
            return Label::Kept(named);
        }
        let named = Named::<Box<str>> {
            value: name.into(),
            span: if self.prefix.is_empty() {
                Box::default()
            } else {
                format!("{} {name}", self.prefix).into()
            },
        };
        let mut made = self.made.write().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = made.get(name) {
            return Label::Kept(found);
        }
        if made.len() >= MAX_LABELS {
            return Label::Made(Arc::new(named));
        }
        let kept: &'static Named<&'static str> = Box::leak(Box::new(Named {
            value: &*Box::leak(named.value),
            span: &*Box::leak(named.span),
        }));
        made.insert(kept.value, kept);
        Label::Kept(kept)
    }
}

/// The label sets of an observer.
pub(crate) struct Labels {
    agents: LabelSet,
    models: LabelSet,
    tools: LabelSet,
    /// Providers and agent versions (no spans named after them).
    values: LabelSet,
}

impl Default for Labels {
    fn default() -> Self {
        Self {
            agents: LabelSet::new("invoke_agent"),
            models: LabelSet::new("chat"),
            tools: LabelSet::new("execute_tool"),
            values: LabelSet::new(""),
        }
    }
}

/// Observes agent runs, model calls, tool calls and HTTP requests: OpenTelemetry spans named and
/// attributed by the GenAI semantic conventions (`invoke_agent {agent}`, `chat {model}`,
/// `execute_tool {tool}`), Prometheus metrics, and a JSON log line for runs no edge logs.
///
/// Metrics are counted on the request path. Spans and log lines are recorded there (ids,
/// times, the values they will carry) and built, formatted and exported on the telemetry
/// thread of the [`Telemetry`](crate::Telemetry) that made the observer.
#[derive(Clone)]
pub struct AgentObserver {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for AgentObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentObserver")
            .field("tracing", &self.inner.sampling.is_some())
            .field("metrics", &self.inner.metrics.is_some())
            .field("capture_content", &self.inner.capture)
            .finish()
    }
}

/// What every run of an agent names, found once per thread and agent.
#[derive(Clone)]
struct AgentNames {
    agent: Label,
    version: Label,
    model: Label,
    provider: Label,
    /// The agent's in-flight gauge (not its other handles: those the telemetry thread reads,
    /// and a count changed on every run beside them would bounce their line).
    inflight: Option<InflightGauge>,
}

thread_local! {
    /// The names of the last agent run on this thread, and the observer they belong to (held
    /// weakly: its address cannot be reused while this is kept).
    static LAST_AGENT: std::cell::RefCell<Option<(std::sync::Weak<Inner>, AgentNames)>> =
        const { std::cell::RefCell::new(None) };
}

impl AgentObserver {
    /// The labels and metric handles of `run`'s agent: the last ones of this thread when
    /// they match (a service runs the same agent again and again), else looked up.
    fn agent_names(&self, run: &RunStart<'_>) -> AgentNames {
        let this = Arc::as_ptr(&self.inner);
        let same = |names: &AgentNames| {
            names.agent.as_str() == run.agent
                && names.version.as_str() == run.agent_version
                && names.model.as_str() == run.model
                && names.provider.as_str() == run.provider
        };
        let last = LAST_AGENT.with(|last| {
            last.borrow()
                .as_ref()
                .filter(|(owner, names)| std::ptr::eq(owner.as_ptr(), this) && same(names))
                .map(|(_, names)| names.clone())
        });
        if let Some(names) = last {
            return names;
        }
        let labels = &self.inner.labels;
        let names = AgentNames {
            agent: labels.agents.get(run.agent),
            version: labels.values.get(run.agent_version),
            model: labels.models.get(run.model),
            provider: labels.values.get(run.provider),
            inflight: (self.inner.metrics.as_ref())
                .map(|all| all.agent(run.agent).inflight.clone()),
        };
        LAST_AGENT.with(|last| {
            *last.borrow_mut() = Some((Arc::downgrade(&self.inner), names.clone()));
        });
        names
    }

    /// Hands a record to the telemetry thread.
    #[inline]
    fn record(&self, add: impl FnOnce(&mut Records)) {
        if let Some(queue) = &self.inner.queue {
            queue.push(add);
        }
    }
}

/// What the request path hands to the telemetry thread, by kind.
pub(crate) struct Records {
    runs: Vec<RunRecord>,
    models: Vec<ModelRecord>,
    tools: Vec<ToolRecord>,
    requests: Vec<RequestRecord>,
}

impl Default for Records {
    /// Room for a few milliseconds of a busy process, so that the vectors rarely grow.
    fn default() -> Self {
        Self {
            runs: Vec::with_capacity(128),
            models: Vec::with_capacity(128),
            tools: Vec::with_capacity(128),
            requests: Vec::with_capacity(16),
        }
    }
}

impl Items for Records {
    fn len(&self) -> usize {
        self.runs.len() + self.models.len() + self.tools.len() + self.requests.len()
    }
}

/// An `error.type` and the status message.
type Failure = (Cow<'static, str>, String);

pub(crate) struct RunRecord {
    /// The run's span: exported when sampled; its ids go into the log line either way.
    span: Option<OpenSpan>,
    /// The provider and the model asked for.
    provider: Label,
    requested: Label,
    started: Stamp,
    end: Stamp,
    agent: Label,
    agent_version: Label,
    /// The model that answered.
    model: Label,
    /// For the span and the log line.
    ids: Option<Ids>,
    tokens_in: u64,
    tokens_out: u64,
    cost_usd: f64,
    /// The error's code, and its message when the span is recorded.
    error: Option<(&'static str, Option<Box<str>>)>,
    /// The answer, when content capture is on and the span is recorded.
    output: Option<String>,
    log: Option<RunLog>,
}

/// Who a run was for.
struct Ids {
    request_id: Text,
    tenant: Option<Text>,
    session_id: Option<Text>,
}

/// What the run's log line adds.
struct RunLog {
    /// The subscriber current where the run ended.
    dispatch: Dispatch,
    tool_calls: usize,
    tool_names: ToolNames,
}

pub(crate) struct ModelRecord {
    /// Recorded spans only.
    span: Option<OpenSpan>,
    /// For the metrics, which are per agent.
    agent: Label,
    started: Stamp,
    end: Stamp,
    model: Label,
    provider: Label,
    /// What the span records of a failure (recorded spans only).
    answered: Result<Answer, Option<Box<Failure>>>,
}

/// What a model call that answered records.
struct Answer {
    model: Label,
    tokens_in: u64,
    tokens_out: u64,
    stop_reason: StopReason,
    /// Content capture only.
    output: Option<String>,
}

pub(crate) struct ToolRecord {
    /// Recorded spans only.
    span: Option<OpenSpan>,
    end: Stamp,
    /// The call's own timing, which gives the span its start.
    took: Duration,
    tool: Label,
    call_id: Text,
    arguments: Option<String>,
    ok: bool,
    /// The error message of a failed call (recorded spans only).
    failed: Option<String>,
}

pub(crate) struct RequestRecord {
    span: OpenSpan,
    end: Stamp,
    name: Text,
    method: Text,
    route: Text,
    request_id: Text,
    status: u16,
}

struct Run {
    /// The run's span (recorded or not: its ids travel either way).
    span: Option<OpenSpan>,
    /// The provider and the model asked for: model calls and the end mostly name them again.
    provider: Label,
    model: Label,
    /// For the in-flight gauge, the one metric kept on the request path.
    inflight: Option<InflightGauge>,
    agent: Label,
    /// The span's start too: one clock read serves both.
    started: Stamp,
    logged_by_edge: bool,
    /// The request's context (request id, tenant, session), held rather than copied.
    context: Context,
    agent_version: Label,
}

impl Observer for AgentObserver {
    fn enabled(&self) -> bool {
        let inner = &self.inner;
        inner.sampling.is_some() || inner.metrics.is_some() || inner.log_runs
    }

    fn start_run(&self, run: &RunStart<'_>) -> Box<dyn RunScope> {
        let AgentNames {
            agent,
            version,
            model,
            provider,
            inflight,
        } = self.agent_names(run);
        if let Some(inflight) = &inflight {
            inflight.inc();
        }
        let started = crate::spans::now();
        let span = self.inner.sampling.as_ref().map(|sampling| {
            let names = &crate::semconv::LATEST;
            sampling.start_with(
                &agent.span_name(),
                &SpanKind::Internal,
                run.context.trace(),
                started,
                &|| {
                    vec![
                        KeyValue::new(names.operation_name, "invoke_agent"),
                        KeyValue::new(names.agent_name, agent.value()),
                        KeyValue::new(names.provider_name, provider.value()),
                        KeyValue::new(names.request_model, model.value()),
                    ]
                },
            )
        });
        Pooled::boxed(
            self,
            Run {
                span,
                provider,
                model,
                inflight,
                agent,
                started,
                logged_by_edge: run.context.extension::<RunReport>().is_some(),
                context: run.context.clone(),
                agent_version: version,
            },
        )
    }

    fn start_request(&self, request: &RequestStart<'_>) -> Option<Box<dyn RequestScope>> {
        let name = format!("{} {}", request.method, request.route);
        let span = self.inner.sampling.as_ref()?.start_with(
            &name,
            &SpanKind::Server,
            request.context.trace(),
            crate::spans::now(),
            &|| {
                vec![
                    KeyValue::new("http.request.method", request.method.to_owned()),
                    KeyValue::new("http.route", request.route.to_owned()),
                ]
            },
        );
        Some(Box::new(Request {
            observer: self.clone(),
            span,
            name: Text::new(&name),
            method: Text::new(request.method),
            route: Text::new(request.route),
            request_id: Text::new(request.context.request_id()),
        }))
    }

    fn queue_depth(&self, queue: &str, depth: u64) {
        if let Some(metrics) = &self.inner.metrics {
            metrics
                .queue_depth
                .get_or_create(&QueueLabel {
                    queue: queue.to_owned(),
                })
                .set(depth.min(i64::MAX as u64) as i64);
        }
    }

    fn pool_member(&self, pool: &str, member: &str, up: bool) {
        if let Some(metrics) = &self.inner.metrics {
            metrics
                .pool_members
                .get_or_create(&PoolLabels {
                    pool: pool.to_owned(),
                    member: member.to_owned(),
                })
                .set(i64::from(up));
        }
    }

    fn session_conflict(&self) {
        if let Some(metrics) = &self.inner.metrics {
            metrics.session_conflicts.inc();
        }
    }

    fn session_lease_wait(&self, waited: Duration) {
        if let Some(metrics) = &self.inner.metrics {
            metrics.session_lease_waits.observe(waited.as_secs_f64());
        }
    }

    fn session_replay(&self) {
        if let Some(metrics) = &self.inner.metrics {
            metrics.session_replays.inc();
        }
    }

    fn pool_resend(&self, pool: &str) {
        if let Some(metrics) = &self.inner.metrics {
            metrics
                .pool_resends
                .get_or_create(&PoolLabel {
                    pool: pool.to_owned(),
                })
                .inc();
        }
    }

    fn capture_content(&self) -> bool {
        self.inner.capture
    }
}

struct Request {
    observer: AgentObserver,
    span: OpenSpan,
    name: Text,
    method: Text,
    route: Text,
    request_id: Text,
}

impl RequestScope for Request {
    fn trace(&self) -> Option<TraceContext> {
        self.span.trace()
    }

    fn end(self: Box<Self>, status: u16) {
        let Request {
            observer,
            span,
            name,
            method,
            route,
            request_id,
        } = *self;
        if span.sampled() {
            let end = crate::spans::now();
            observer.record(|records| {
                records.requests.push(RequestRecord {
                    span,
                    end,
                    name,
                    method,
                    route,
                    request_id,
                    status,
                })
            });
        }
    }
}

enum CallKind {
    Model {
        agent: Label,
        model: Label,
        provider: Label,
        /// The span's start too.
        started: Stamp,
    },
    /// What a tool call records comes with its end ([`ToolCallRecord`]).
    Tool,
}

struct Call {
    /// The call's span (recorded or not: its ids travel either way).
    span: Option<OpenSpan>,
    kind: CallKind,
}

impl RunScope for Pooled<Run> {
    fn trace(&self) -> Option<TraceContext> {
        self.scope.as_ref()?.span.as_ref().and_then(OpenSpan::trace)
    }

    fn start_model_call(&self, call: &ModelCallStart<'_>) -> Box<dyn CallScope> {
        match &self.scope {
            Some(run) => run.start_model_call(&self.observer, call),
            None => Box::new(Unobserved),
        }
    }

    fn start_tool_call(&self, _call: &ToolCall) -> Box<dyn CallScope> {
        match &self.scope {
            Some(run) => run.start_tool_call(&self.observer),
            None => Box::new(Unobserved),
        }
    }

    fn end(self: Box<Self>, end: &RunEnd<'_>) {
        self.finish(|observer, run| run.end(observer, end));
    }
}

impl Run {
    fn start_model_call(
        &self,
        observer: &AgentObserver,
        call: &ModelCallStart<'_>,
    ) -> Box<dyn CallScope> {
        if self.span.is_none() && observer.inner.metrics.is_none() {
            return Box::new(Unobserved);
        }
        let labels = &observer.inner.labels;
        let model = if call.model == self.model.as_str() {
            self.model.clone()
        } else {
            labels.models.get(call.model)
        };
        let provider = if call.provider == self.provider.as_str() {
            self.provider.clone()
        } else {
            labels.values.get(call.provider)
        };
        let started = crate::spans::now();
        Call {
            span: self.span.as_ref().map(|run| run.child(started)),
            kind: CallKind::Model {
                agent: self.agent.clone(),
                model,
                provider,
                started,
            },
        }
        .boxed(observer)
    }

    fn start_tool_call(&self, observer: &AgentObserver) -> Box<dyn CallScope> {
        if self.span.is_none() && observer.inner.metrics.is_none() {
            return Box::new(Unobserved);
        }
        // Started for real when it ends: the call's own timing gives the start, and its
        // record the name, id and arguments.
        let span = self.span.as_ref().map(|run| run.child(self.started));
        Call {
            span,
            kind: CallKind::Tool,
        }
        .boxed(observer)
    }

    /// Records the end of the run, read in place: the run is over 200 bytes, and its record
    /// twice that.
    fn end(&self, observer: &AgentObserver, end: &RunEnd<'_>) {
        let now = crate::spans::now();
        if let Some(inflight) = &self.inflight {
            inflight.dec();
        }
        let inner = &observer.inner;
        let recorded = self.span.as_ref().is_some_and(OpenSpan::sampled);
        let log = (inner.log_runs
            && !self.logged_by_edge
            && tracing::enabled!(target: "agentkit::run", tracing::Level::INFO))
        .then(|| RunLog {
            dispatch: tracing::dispatcher::get_default(Dispatch::clone),
            tool_calls: end.tool_calls.len(),
            tool_names: ToolNames::of(end.tool_calls, &inner.labels.tools),
        });
        if !recorded && log.is_none() && inner.metrics.is_none() {
            return;
        }
        let answered = if end.model == self.model.as_str() {
            self.model.clone()
        } else {
            inner.labels.models.get(end.model)
        };
        let error = end.outcome.err().map(|error| {
            (
                error.code(),
                recorded.then(|| error.message().to_owned().into_boxed_str()),
            )
        });
        let output = match end.outcome {
            Ok(reply) if recorded && inner.capture => Some(reply.output.clone()),
            _ => None,
        };
        let context = &self.context;
        observer.record(|records| {
            records.runs.push(RunRecord {
                span: self.span,
                provider: self.provider.clone(),
                requested: self.model.clone(),
                started: self.started,
                end: now,
                agent: self.agent.clone(),
                agent_version: self.agent_version.clone(),
                model: answered,
                ids: (recorded || log.is_some()).then(|| Ids {
                    request_id: Text::new(context.request_id()),
                    tenant: context.tenant().map(Text::new),
                    session_id: context.session_id().map(Text::new),
                }),
                tokens_in: end.usage.input_tokens,
                tokens_out: end.usage.output_tokens,
                cost_usd: end.cost_usd,
                error,
                output,
                log,
            })
        });
    }
}

/// A call nothing is recorded of (only run logs are on). Zero-sized: boxing it allocates
/// nothing.
struct Unobserved;

impl CallScope for Unobserved {}

/// Boxes of ended runs and calls kept for the next ones, per thread and kind: otherwise a
/// run's box and each call's are made and freed on every run.
const SPARES: usize = 16;

type Spares<T> = std::cell::RefCell<Vec<Box<Pooled<T>>>>;

thread_local! {
    // The boxes are the point: they are what the next scopes reuse.
    #[allow(clippy::vec_box)]
    static SPARE_RUNS: Spares<Run> = const { std::cell::RefCell::new(Vec::new()) };
    #[allow(clippy::vec_box)]
    static SPARE_CALLS: Spares<Call> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A scope kept in a box that goes back to its thread's spares when the scope ends.
pub(crate) trait Spare: Sized + 'static {
    /// This kind's spares.
    fn spares() -> &'static std::thread::LocalKey<Spares<Self>>;
}

impl Spare for Run {
    fn spares() -> &'static std::thread::LocalKey<Spares<Self>> {
        &SPARE_RUNS
    }
}

impl Spare for Call {
    fn spares() -> &'static std::thread::LocalKey<Spares<Self>> {
        &SPARE_CALLS
    }
}

/// A run or a call in a pooled box, with its observer. The observer stays with the box when
/// the scope ends: the next scope of the same observer finds it there, so the request path
/// does not count references to the observer up and down for every run and call (an atomic
/// instruction each way). A box kept as a spare thus holds its last observer until it is
/// reused or its thread ends: at most [`SPARES`] boxes of each kind per thread.
pub(crate) struct Pooled<T> {
    observer: AgentObserver,
    /// `None` once ended.
    scope: Option<T>,
}

impl<T: Spare> Pooled<T> {
    /// `scope` of `observer` in a spare box, or a new one.
    fn boxed(observer: &AgentObserver, scope: T) -> Box<Self> {
        match T::spares().with(|spare| spare.borrow_mut().pop()) {
            Some(mut pooled) => {
                if !Arc::ptr_eq(&pooled.observer.inner, &observer.inner) {
                    pooled.observer = observer.clone();
                }
                pooled.scope = Some(scope);
                pooled
            }
            None => Box::new(Pooled {
                observer: observer.clone(),
                scope: Some(scope),
            }),
        }
    }

    /// Ends the scope in its box (`end` reads it there: a call is about 140 bytes and a run
    /// 200, and moving them out and then into their records copied them twice), then puts
    /// the box back for another.
    fn finish(mut self: Box<Self>, end: impl FnOnce(&AgentObserver, &mut T)) {
        if let Some(scope) = &mut self.scope {
            end(&self.observer, scope);
        }
        self.scope = None;
        // A thread that is exiting has no spares to keep.
        let _ = T::spares().try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < SPARES {
                spare.push(self);
            }
        });
    }
}

impl Call {
    fn boxed(self, observer: &AgentObserver) -> Box<dyn CallScope> {
        Pooled::boxed(observer, self)
    }
}

impl CallScope for Pooled<Call> {
    fn trace(&self) -> Option<TraceContext> {
        self.scope.as_ref()?.span.as_ref().and_then(OpenSpan::trace)
    }

    fn end_model(self: Box<Self>, outcome: Result<&ModelResponse, &Error>) {
        self.finish(|observer, call| call.end_model(observer, outcome));
    }

    fn end_tool(self: Box<Self>, record: &ToolCallRecord) {
        self.finish(|observer, call| call.end_tool(observer, record));
    }
}

impl Call {
    /// Records the end of a model call. The record is built where it is pushed, from the
    /// call's fields in place.
    fn end_model(&mut self, observer: &AgentObserver, outcome: Result<&ModelResponse, &Error>) {
        let Call {
            span,
            kind:
                CallKind::Model {
                    agent,
                    model,
                    provider,
                    started,
                },
        } = self
        else {
            return;
        };
        let inner = &observer.inner;
        let span = span.filter(OpenSpan::sampled);
        if span.is_none() && inner.metrics.is_none() {
            return;
        }
        let now = crate::spans::now();
        let recorded = span.is_some();
        let answered = match outcome {
            Ok(response) => Ok(Answer {
                model: match response.model.as_deref() {
                    Some(answered) if recorded && answered != model.as_str() => {
                        inner.labels.models.get(answered)
                    }
                    _ => model.clone(),
                },
                tokens_in: response.usage.input_tokens,
                tokens_out: response.usage.output_tokens,
                stop_reason: response.stop_reason,
                output: (recorded && inner.capture).then(|| message_text(&response.message)),
            }),
            Err(error) => {
                Err(recorded.then(|| Box::new((error.code().into(), error.message().to_owned()))))
            }
        };
        observer.record(|records| {
            records.models.push(ModelRecord {
                span,
                agent: agent.clone(),
                started: *started,
                end: now,
                model: model.clone(),
                provider: provider.clone(),
                answered,
            })
        });
    }

    /// Records the end of a tool call from the call's record (its name, id, arguments and
    /// timing).
    fn end_tool(&mut self, observer: &AgentObserver, record: &ToolCallRecord) {
        let Call {
            span,
            kind: CallKind::Tool,
        } = self
        else {
            return;
        };
        let inner = &observer.inner;
        let span = span.filter(OpenSpan::sampled);
        if span.is_none() && inner.metrics.is_none() {
            return;
        }
        let end = crate::spans::now();
        let recorded = span.is_some();
        let failed = (recorded && !record.ok).then(|| record.error.clone().unwrap_or_default());
        let tool = inner.labels.tools.get(&record.name);
        observer.record(|records| {
            records.tools.push(ToolRecord {
                span,
                end,
                took: record.duration,
                tool,
                call_id: Text::new(if recorded { &record.id } else { "" }),
                arguments: (recorded && inner.capture).then(|| record.arguments.clone()),
                ok: record.ok,
                failed,
            })
        });
    }
}

/// The telemetry thread's half: builds spans and log lines from records, and counts them.
pub(crate) struct Builder {
    pub(crate) names: &'static [Names],
    pub(crate) scope: InstrumentationScope,
    /// Where spans go; none when only logs are on.
    pub(crate) batch: Option<Batch>,
    /// Turns the records' monotonic times into wall-clock times; set for each batch taken.
    pub(crate) clock: Clock,
    pub(crate) metrics: Option<Counting>,
}

/// The entry of `name` in one of [`Counting`]'s caches, made by `make` on first use. Past
/// [`MAX_LABEL_VALUES`] names, new ones share the entry of [`OVERFLOW`], as the metrics
/// themselves do, so the cache stays as bounded as the registry.
fn local<'a, T>(
    map: &'a mut HashMap<Box<str>, T, FnvBuild>,
    name: &str,
    make: impl FnOnce(&str) -> T,
) -> &'a mut T {
    let name = if map.len() >= MAX_LABEL_VALUES && !map.contains_key(name) {
        OVERFLOW
    } else {
        name
    };
    if !map.contains_key(name) {
        let made = make(name);
        map.insert(name.into(), made);
    }
    map.get_mut(name).expect("inserted above when missing")
}

/// The metrics, with this thread's own cache of their handles (looking them up in the shared
/// maps would bounce those maps' locks and counts between the request path and this thread).
pub(crate) struct Counting {
    metrics: Arc<Metrics>,
    agents: HashMap<Box<str>, AgentCounting, FnvBuild>,
    tools: HashMap<Box<str>, Arc<ToolMetrics>, FnvBuild>,
}

/// An agent's handles, and those of the models it used.
struct AgentCounting {
    handles: Arc<AgentMetrics>,
    models: HashMap<Box<str>, Arc<ModelMetrics>, FnvBuild>,
}

impl Counting {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            agents: HashMap::default(),
            tools: HashMap::default(),
        }
    }

    /// The handles of `agent` (taking the fields apart, so that `metrics` stays usable).
    fn agent_in<'a>(
        metrics: &Metrics,
        agents: &'a mut HashMap<Box<str>, AgentCounting, FnvBuild>,
        agent: &str,
    ) -> &'a mut AgentCounting {
        local(agents, agent, |agent| AgentCounting {
            handles: metrics.agent(agent),
            models: HashMap::default(),
        })
    }

    fn model(&mut self, agent: &str, model: &str) -> &ModelMetrics {
        let agent = Self::agent_in(&self.metrics, &mut self.agents, agent);
        let handles = &agent.handles;
        local(&mut agent.models, model, |model| {
            self.metrics.model(handles, model)
        })
    }

    fn run(&mut self, run: &RunRecord) {
        let agent = run.agent.as_str();
        let handles = &Self::agent_in(&self.metrics, &mut self.agents, agent).handles;
        match run.error {
            None => handles.ok.inc(),
            Some((code, _)) => self
                .metrics
                .requests
                .get_or_create(&AgentOutcome {
                    agent: agent.to_owned(),
                    outcome: code.to_owned(),
                })
                .inc(),
        };
        handles
            .duration
            .observe((run.end - run.started).as_secs_f64());
        if run.cost_usd > 0.0 {
            self.model(agent, run.model.as_str())
                .cost
                .inc_by(run.cost_usd);
        }
    }

    fn model_call(&mut self, call: &ModelRecord) {
        let model = self.model(call.agent.as_str(), call.model.as_str());
        model
            .chat_duration
            .observe((call.end - call.started).as_secs_f64());
        if let Ok(answer) = &call.answered {
            model.input_tokens.observe(answer.tokens_in as f64);
            model.output_tokens.observe(answer.tokens_out as f64);
        }
    }

    fn tool_call(&mut self, call: &ToolRecord) {
        let metrics = &self.metrics;
        let tool = local(&mut self.tools, call.tool.as_str(), |name| {
            metrics.tool(name)
        });
        if call.ok {
            tool.ok.inc();
        } else {
            tool.error.inc();
        }
    }
}

/// Appends `value` under `key` of every name table switched on.
fn gen_ai(
    out: &mut Vec<KeyValue>,
    names: &[Names],
    key: fn(&Names) -> &'static str,
    value: opentelemetry::Value,
) {
    if let Some((last, earlier)) = names.split_last() {
        for table in earlier {
            out.push(KeyValue::new(key(table), value.clone()));
        }
        out.push(KeyValue::new(key(last), value));
    }
}

/// Adds a failure's `error.type` and returns its status.
fn failed(out: &mut Vec<KeyValue>, names: &[Names], failure: Option<Failure>) -> Status {
    match failure {
        Some((kind, message)) => {
            gen_ai(out, names, |n| n.error_type, kind.into());
            Status::error(message)
        }
        None => Status::Unset,
    }
}

impl Builder {
    fn attributes(&self, per_table: usize, more: usize) -> Vec<KeyValue> {
        Vec::with_capacity(per_table * self.names.len() + more)
    }

    fn push(
        &mut self,
        span: &OpenSpan,
        ended: Ended,
        name: Cow<'static, str>,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
        status: Status,
    ) {
        if let Some(batch) = &mut self.batch {
            batch.push(span.data(
                &self.clock,
                ended,
                name,
                kind,
                attributes,
                status,
                &self.scope,
            ));
        }
    }

    fn run(&mut self, record: RunRecord) {
        if let Some(counting) = &mut self.metrics {
            counting.run(&record);
        }
        if let (Some(log), Some(ids)) = (&record.log, &record.ids) {
            log_run(log, ids, &record);
        }
        let RunRecord {
            span,
            provider,
            requested,
            end,
            agent,
            agent_version,
            model,
            ids,
            tokens_in,
            tokens_out,
            cost_usd,
            error,
            output,
            ..
        } = record;
        let (
            Some(span),
            Some(Ids {
                request_id,
                tenant,
                session_id,
            }),
        ) = (span.filter(OpenSpan::sampled), ids)
        else {
            return;
        };
        let names = self.names;
        let mut a = self.attributes(10, 4);
        gen_ai(&mut a, names, |n| n.operation_name, "invoke_agent".into());
        gen_ai(&mut a, names, |n| n.agent_name, agent.value());
        gen_ai(&mut a, names, |n| n.provider_name, provider.value());
        gen_ai(&mut a, names, |n| n.request_model, requested.value());
        if let Some(session) = session_id {
            gen_ai(&mut a, names, |n| n.conversation_id, session.into());
        }
        a.push(KeyValue::new("agentkit.request_id", request_id));
        a.push(KeyValue::new(
            "agentkit.agent.version",
            agent_version.value(),
        ));
        if let Some(tenant) = tenant {
            a.push(KeyValue::new("agentkit.tenant", tenant));
        }
        gen_ai(&mut a, names, |n| n.response_model, model.value());
        gen_ai(&mut a, names, |n| n.input_tokens, (tokens_in as i64).into());
        gen_ai(
            &mut a,
            names,
            |n| n.output_tokens,
            (tokens_out as i64).into(),
        );
        a.push(KeyValue::new("agentkit.cost_usd", cost_usd));
        if let Some(output) = output {
            gen_ai(&mut a, names, |n| n.output_messages, output.into());
        }
        let failure = error.map(|(code, message)| {
            (
                Cow::Borrowed(code),
                message.map(String::from).unwrap_or_default(),
            )
        });
        let status = failed(&mut a, names, failure);
        self.push(
            &span,
            Ended::at(end),
            agent.span_name(),
            SpanKind::Internal,
            a,
            status,
        );
    }

    fn model(&mut self, record: ModelRecord) {
        if let Some(counting) = &mut self.metrics {
            counting.model_call(&record);
        }
        let Some(span) = &record.span else {
            return;
        };
        let names = self.names;
        let mut a = self.attributes(7, 0);
        gen_ai(&mut a, names, |n| n.operation_name, "chat".into());
        gen_ai(&mut a, names, |n| n.provider_name, record.provider.value());
        gen_ai(&mut a, names, |n| n.request_model, record.model.value());
        let status = match record.answered {
            Ok(answer) => {
                gen_ai(&mut a, names, |n| n.response_model, answer.model.value());
                gen_ai(
                    &mut a,
                    names,
                    |n| n.input_tokens,
                    (answer.tokens_in as i64).into(),
                );
                gen_ai(
                    &mut a,
                    names,
                    |n| n.output_tokens,
                    (answer.tokens_out as i64).into(),
                );
                gen_ai(
                    &mut a,
                    names,
                    |n| n.finish_reasons,
                    opentelemetry::Value::Array(
                        vec![StringValue::from(answer.stop_reason.as_str())].into(),
                    ),
                );
                if let Some(output) = answer.output {
                    gen_ai(&mut a, names, |n| n.output_messages, output.into());
                }
                Status::Unset
            }
            Err(failure) => failed(&mut a, names, failure.map(|failure| *failure)),
        };
        self.push(
            span,
            Ended::at(record.end),
            record.model.span_name(),
            SpanKind::Client,
            a,
            status,
        );
    }

    fn tool(&mut self, record: ToolRecord) {
        if let Some(counting) = &mut self.metrics {
            counting.tool_call(&record);
        }
        let Some(span) = &record.span else {
            return;
        };
        let names = self.names;
        let mut a = self.attributes(4, 1);
        gen_ai(&mut a, names, |n| n.operation_name, "execute_tool".into());
        gen_ai(&mut a, names, |n| n.tool_name, record.tool.value());
        gen_ai(&mut a, names, |n| n.tool_call_id, record.call_id.into());
        if let Some(arguments) = record.arguments {
            a.push(KeyValue::new("gen_ai.tool.call.arguments", arguments));
        }
        let status = failed(
            &mut a,
            names,
            record.failed.map(|message| ("tool_error".into(), message)),
        );
        self.push(
            span,
            Ended::after(record.took, record.end),
            record.tool.span_name(),
            SpanKind::Internal,
            a,
            status,
        );
    }

    fn request(&mut self, record: RequestRecord) {
        let mut a = vec![
            KeyValue::new("http.request.method", record.method),
            KeyValue::new("http.route", record.route),
            KeyValue::new("agentkit.request_id", record.request_id),
            KeyValue::new("http.response.status_code", i64::from(record.status)),
        ];
        let status = if record.status >= 500 {
            a.push(KeyValue::new("error.type", record.status.to_string()));
            Status::error(format!("HTTP {}", record.status))
        } else {
            Status::Unset
        };
        self.push(
            &record.span,
            Ended::at(record.end),
            record.name.as_str().to_owned().into(),
            SpanKind::Server,
            a,
            status,
        );
    }
}

impl Drain for Builder {
    type Items = Records;

    fn take(&mut self, records: &mut Records) {
        self.clock = Clock::now();
        for run in records.runs.drain(..) {
            self.run(run);
        }
        for model in records.models.drain(..) {
            self.model(model);
        }
        for tool in records.tools.drain(..) {
            self.tool(tool);
        }
        for request in records.requests.drain(..) {
            self.request(request);
        }
    }

    fn due(&self) -> Option<Instant> {
        self.batch.as_ref().and_then(Batch::due)
    }

    fn send(&mut self, force: bool) {
        if let Some(batch) = &mut self.batch {
            if force {
                batch.flush();
            } else {
                batch.export();
            }
        }
    }

    fn stop(&mut self) {
        if let Some(batch) = &mut self.batch {
            batch.shutdown();
        }
    }
}

/// The run's log line, through the subscriber that was current where the run ended.
fn log_run(log: &RunLog, ids: &Ids, run: &RunRecord) {
    let trace = run.span.as_ref().and_then(OpenSpan::trace);
    let (mut trace_hex, mut span_hex) = ([0u8; 32], [0u8; 16]);
    let trace_id = trace
        .as_ref()
        .map(|t| hex(&mut trace_hex, &t.trace_id().to_be_bytes()));
    let span_id = trace
        .as_ref()
        .map(|t| hex(&mut span_hex, &t.span_id().to_be_bytes()));
    tracing::dispatcher::with_default(&log.dispatch, || {
        tracing::info!(
            target: "agentkit::run",
            request_id = ids.request_id.as_str(),
            trace_id,
            span_id,
            tenant = ids.tenant.as_ref().map(Text::as_str),
            agent = run.agent.as_str(),
            agent_version = run.agent_version.as_str(),
            session_id = ids.session_id.as_ref().map(Text::as_str),
            model = run.model.as_str(),
            tokens_in = run.tokens_in,
            tokens_out = run.tokens_out,
            tool_calls = log.tool_calls,
            tool_names = %log.tool_names,
            cost_usd = run.cost_usd,
            latency_ms = (run.end - run.started).as_secs_f64() * 1000.0,
            outcome = if run.error.is_none() { "ok" } else { "error" },
            error_code = run.error.as_ref().map(|(code, _)| *code),
            "agent run finished"
        );
    });
}

/// `bytes` as lowercase hex digits, written into `out` (two per byte).
fn hex<'a>(out: &'a mut [u8], bytes: &[u8]) -> &'a str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
    std::str::from_utf8(&out[..bytes.len() * 2]).unwrap_or_default()
}

/// The names of a run's tool calls, comma-separated when written; kept without allocating
/// for up to four calls of configured tools.
enum ToolNames {
    Few {
        names: [Option<&'static Named<&'static str>>; 4],
    },
    Joined(String),
}

impl ToolNames {
    fn of(calls: &[ToolCallRecord], labels: &LabelSet) -> Self {
        let mut names = [None; 4];
        if calls.len() <= names.len() {
            let kept =
                calls
                    .iter()
                    .zip(&mut names)
                    .all(|(call, slot)| match labels.get(&call.name) {
                        Label::Kept(named) => {
                            *slot = Some(named);
                            true
                        }
                        Label::Made(_) => false,
                    });
            if kept {
                return ToolNames::Few { names };
            }
        }
        let mut joined = String::with_capacity(calls.iter().map(|c| c.name.len() + 1).sum());
        for (i, call) in calls.iter().enumerate() {
            if i > 0 {
                joined.push(',');
            }
            joined.push_str(&call.name);
        }
        ToolNames::Joined(joined)
    }
}

impl std::fmt::Display for ToolNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ToolNames::Few { names } => {
                for (i, named) in names.iter().map_while(|n| *n).enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    f.write_str(named.value)?;
                }
                Ok(())
            }
            ToolNames::Joined(joined) => f.write_str(joined),
        }
    }
}

/// The message's text parts and tool calls, for content capture.
fn message_text(message: &agentkit_core::Message) -> String {
    let mut out = message.text_content();
    for call in message.tool_calls() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&format!("{}({})", call.name, call.arguments));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metric_handle_caches_stay_bounded() {
        let mut cache: HashMap<Box<str>, usize, FnvBuild> = HashMap::default();
        for i in 0..MAX_LABEL_VALUES * 3 {
            *local(&mut cache, &format!("tool_{i}"), |_| 0) += 1;
        }
        assert_eq!(cache.len(), MAX_LABEL_VALUES + 1);
        assert_eq!(cache[OVERFLOW], MAX_LABEL_VALUES * 2);
        assert_eq!(cache["tool_0"], 1);
    }

    #[test]
    fn ids_are_lowercase_hex_of_every_byte() {
        let trace = TraceContext::from_parts(
            0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c,
            0xb7ad_6b71_6920_3331,
            true,
        )
        .unwrap();
        let mut out = [0u8; 32];
        assert_eq!(
            hex(&mut out, &trace.trace_id().to_be_bytes()),
            trace.trace_id_hex()
        );
        let mut out = [0u8; 16];
        assert_eq!(
            hex(&mut out, &trace.span_id().to_be_bytes()),
            "b7ad6b7169203331"
        );
    }

    #[test]
    fn a_name_gets_the_label_of_its_kind_from_the_cache_too() {
        let labels = Labels::default();
        for _ in 0..3 {
            let agent = labels.agents.get("x");
            let model = labels.models.get("x");
            assert_eq!(
                (agent.as_str(), &*agent.span_name()),
                ("x", "invoke_agent x")
            );
            assert_eq!((model.as_str(), &*model.span_name()), ("x", "chat x"));
            assert_eq!(labels.values.get("x").span_name(), "");
            assert!(matches!(agent, Label::Kept(_)));
        }
        // Another observer's labels of the same name are its own.
        let other = Labels::default();
        assert_eq!(other.tools.get("x").span_name(), "execute_tool x");
        assert_eq!(labels.agents.get("y").as_str(), "y");
    }

    /// Telemetry recording spans to memory (and metrics when `metrics`), not installed
    /// process-wide, with content capture as `capture` says.
    fn traced(
        capture: bool,
        metrics: bool,
    ) -> (
        crate::Telemetry,
        opentelemetry_sdk::trace::InMemorySpanExporter,
    ) {
        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let telemetry = crate::ObserveBuilder::from_env()
            .unwrap()
            .global(false)
            .logs(false)
            .metrics(metrics)
            .capture_content(capture)
            .span_exporter(exporter.clone())
            .init()
            .unwrap();
        (telemetry, exporter)
    }

    /// The value of `span`'s attribute `key`.
    fn attr(span: &opentelemetry_sdk::trace::SpanData, key: &str) -> Option<opentelemetry::Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.clone())
    }

    /// Telemetry with metrics alone, not installed process-wide.
    fn metrics_only() -> crate::Telemetry {
        crate::ObserveBuilder::from_env()
            .unwrap()
            .global(false)
            .logs(false)
            .metrics(true)
            .init()
            .unwrap()
    }

    /// The value of the series `name{labels}` on `/metrics`, if it is there.
    fn series(telemetry: &crate::Telemetry, series: &str) -> Option<String> {
        let text = telemetry.metrics().unwrap().render();
        let prefix = format!("{series} ");
        text.lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .map(str::to_owned)
    }

    /// A health watch reported through telemetry keeps `agentkit_alerts_firing` at 1 while
    /// a rule fires and 0 once it resolves, beside the callbacks given before.
    #[tokio::test]
    async fn alerts_are_kept_as_a_gauge() {
        use agentkit_core::executor::{AlertRules, HealthWatch};
        use std::time::Duration;

        let telemetry = metrics_only();
        let told = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = told.clone();
        let rules = AlertRules {
            min_runs: 2,
            max_error_rate: 0.5,
            resolve_after: Duration::ZERO,
            ..AlertRules::default()
        };
        let watch = HealthWatch::new("billing", rules).on_change(move |_| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        let watch = telemetry.report_alerts(watch);
        let gauge = || {
            series(
                &telemetry,
                r#"agentkit_alerts_firing{watch="billing",rule="error_burst"}"#,
            )
        };
        assert_eq!(gauge(), None, "no series before an alert");

        for _ in 0..2 {
            watch.record(Duration::from_millis(5), true, 0);
        }
        assert_eq!(watch.alerts().len(), 1);
        assert_eq!(gauge().as_deref(), Some("1"));

        for _ in 0..3 {
            watch.record(Duration::from_millis(5), false, 10);
        }
        assert!(watch.alerts().is_empty());
        assert_eq!(gauge().as_deref(), Some("0"));
        assert_eq!(
            told.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "fired, resolved"
        );
    }

    /// An instance of a pool that cannot be reached while `dead`.
    struct Instance(Arc<std::sync::atomic::AtomicBool>);

    impl agentkit_core::Executor for Instance {
        async fn execute(
            &self,
            _invocation: agentkit_core::Invocation,
        ) -> agentkit_core::Result<agentkit_core::executor::Reply> {
            if self.0.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(Error::unavailable("cannot reach the instance"));
            }
            Ok(agentkit_core::executor::Reply::default())
        }
    }

    #[tokio::test]
    async fn pool_members_are_kept_as_a_gauge() {
        use agentkit_core::executor::Pool;
        use agentkit_core::{Executor, Invocation};

        let telemetry = metrics_only();
        let dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pool = Pool::builder()
            .name("assistants")
            .observer(telemetry.observer())
            .member("a", Instance(Arc::default()))
            .member("b", Instance(dead.clone()))
            .mark_down_after(1)
            .cooldown(std::time::Duration::ZERO)
            .build()
            .unwrap();
        let gauge = |member: &str| {
            series(
                &telemetry,
                &format!(r#"agentkit_pool_member_up{{pool="assistants",member="{member}"}}"#),
            )
        };
        assert_eq!(
            (gauge("a").as_deref(), gauge("b").as_deref()),
            (Some("1"), Some("1"))
        );
        let on_b = (0..50)
            .map(|i| format!("s-{i}"))
            .find(|s| pool.owner(s) == Some("b"))
            .unwrap();
        let turn = || {
            Invocation::text("hi")
                .with_context(agentkit_core::Context::new().with_session_id(on_b.as_str()))
        };
        dead.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(pool.execute(turn()).await.is_err());
        assert_eq!(gauge("b").as_deref(), Some("0"), "down");
        dead.store(false, std::sync::atomic::Ordering::SeqCst);
        // With no cooldown it is tried at once; its answer brings it back.
        pool.execute(turn()).await.unwrap();
        assert_eq!(gauge("b").as_deref(), Some("1"), "up again");
        assert_eq!(gauge("a").as_deref(), Some("1"));
    }

    /// Samples the traces of one agent only, by the attribute a run's span starts with.
    #[derive(Debug, Clone)]
    struct OneAgent(&'static str);

    impl opentelemetry_sdk::trace::ShouldSample for OneAgent {
        fn should_sample(
            &self,
            _parent: Option<&opentelemetry::Context>,
            _trace_id: opentelemetry::trace::TraceId,
            _name: &str,
            _kind: &SpanKind,
            attributes: &[KeyValue],
            _links: &[opentelemetry::trace::Link],
        ) -> opentelemetry_sdk::trace::SamplingResult {
            use opentelemetry_sdk::trace::SamplingDecision;
            let wanted = attributes
                .iter()
                .any(|kv| kv.key.as_str() == "gen_ai.agent.name" && kv.value.as_str() == self.0);
            opentelemetry_sdk::trace::SamplingResult {
                decision: if wanted {
                    SamplingDecision::RecordAndSample
                } else {
                    SamplingDecision::Drop
                },
                attributes: Vec::new(),
                trace_state: opentelemetry::trace::TraceState::default(),
            }
        }
    }

    /// A custom sampler sees the attributes a run's span starts with, so it can keep the
    /// traces of one agent; the calls under a run follow its decision.
    #[tokio::test]
    async fn a_custom_sampler_decides_by_the_runs_starting_attributes() {
        use agentkit_core::Executor;
        use opentelemetry_sdk::trace::Sampler;

        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let telemetry = crate::ObserveBuilder::from_env()
            .unwrap()
            .global(false)
            .logs(false)
            .metrics(false)
            .sampler(Sampler::ParentBased(Box::new(OneAgent("billing"))))
            .span_exporter(exporter.clone())
            .init()
            .unwrap();
        for name in ["billing", "support"] {
            let model = Arc::new(agentkit_core::model::ScriptedModel::demo());
            let agent = agentkit_core::demo::assistant_builder(model)
                .name(name)
                .observer(telemetry.observer())
                .build()
                .unwrap();
            agent
                .execute(agentkit_core::Invocation::text("What is 17 + 25?"))
                .await
                .unwrap();
        }
        telemetry.flush();
        let mut names: Vec<String> = exporter
            .get_finished_spans()
            .unwrap()
            .iter()
            .map(|s| s.name.to_string())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "chat scripted",
                "chat scripted",
                "execute_tool add",
                "invoke_agent billing"
            ]
        );
    }

    /// A tool span takes its name, id and (with content capture only) its arguments from the
    /// call's record, and lies between the two model calls around it.
    #[tokio::test]
    async fn a_tool_span_is_built_from_the_calls_record() {
        use agentkit_core::Executor;
        use opentelemetry::Value;

        for capture in [false, true] {
            let (telemetry, exporter) = traced(capture, false);
            let model = Arc::new(agentkit_core::model::ScriptedModel::demo());
            let agent = agentkit_core::demo::assistant_builder(model)
                .observer(telemetry.observer())
                .build()
                .unwrap();
            let reply = agent
                .execute(agentkit_core::Invocation::text("What is 17 + 25?"))
                .await
                .unwrap();
            telemetry.flush();
            let spans = exporter.get_finished_spans().unwrap();
            let tool = spans
                .iter()
                .find(|s| s.name == "execute_tool add")
                .expect("a tool span");
            let call = &reply.tool_calls[0];
            assert_eq!(attr(tool, "gen_ai.tool.name"), Some(Value::from("add")));
            assert_eq!(
                attr(tool, "gen_ai.tool.call.id"),
                Some(Value::from(call.id.clone()))
            );
            assert_eq!(
                attr(tool, "gen_ai.tool.call.arguments"),
                capture.then(|| Value::from(call.arguments.clone())),
                "arguments only with content capture"
            );
            let mut chats: Vec<_> = spans.iter().filter(|s| s.name == "chat scripted").collect();
            chats.sort_by_key(|s| s.start_time);
            assert_eq!(chats.len(), 2);
            assert!(chats[0].end_time <= tool.start_time && tool.start_time <= tool.end_time);
            assert!(tool.end_time <= chats[1].start_time);
        }
    }

    /// A run whose future is dropped midway (a client that went away) is ended as cancelled:
    /// the in-flight gauge comes back down, the run counts as `cancelled`, and the run's span
    /// and the cut-off call's span are exported with `error.type` `cancelled`.
    #[tokio::test]
    async fn a_run_dropped_midway_is_ended_as_cancelled() {
        use std::convert::Infallible;
        use std::time::Duration;

        use agentkit_core::demo::AddArgs;
        use agentkit_core::model::ScriptedModel;
        use agentkit_core::tool::tool_fn;
        use agentkit_core::{Agent, Executor, Invocation};
        use opentelemetry::Value;
        use opentelemetry::trace::Status;

        let (telemetry, exporter) = traced(false, true);
        let slow_model = Agent::builder()
            .name("slow-model")
            .shared_model(Arc::new(
                ScriptedModel::builder()
                    .demo_rules()
                    .latency(Duration::from_secs(30))
                    .build(),
            ))
            .tool(agentkit_core::demo::add_tool())
            .observer(telemetry.observer())
            .build()
            .unwrap();
        let slow_tool = Agent::builder()
            .name("slow-tool")
            .shared_model(Arc::new(ScriptedModel::demo()))
            .tool(tool_fn(
                "add",
                "Adds, slowly.",
                |args: AddArgs| async move {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok::<_, Infallible>(args.a + args.b)
                },
            ))
            .observer(telemetry.observer())
            .build()
            .unwrap();
        for (agent, cut_off) in [
            (&slow_model, "chat scripted"),
            (&slow_tool, "execute_tool add"),
        ] {
            let run = agent.execute(Invocation::text("What is 17 + 25?"));
            let dropped = tokio::time::timeout(Duration::from_millis(100), run).await;
            assert!(dropped.is_err(), "the run was still going when dropped");
            telemetry.flush();
            let metrics = (telemetry.metrics_renderer())();
            let line = |prefix: &str| {
                metrics
                    .lines()
                    .find(|line| line.starts_with(prefix))
                    .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
                    .rsplit(' ')
                    .next()
                    .unwrap()
                    .parse::<f64>()
                    .unwrap()
            };
            let name = agent.name();
            assert_eq!(
                line(&format!("agentkit_inflight_requests{{agent=\"{name}\"}}")),
                0.0
            );
            assert_eq!(
                line(&format!(
                    "agentkit_requests_total{{agent=\"{name}\",outcome=\"cancelled\"}}"
                )),
                1.0
            );
            let spans = exporter.get_finished_spans().unwrap();
            let span = |span_name: &str| {
                spans
                    .iter()
                    .find(|s| s.name == span_name)
                    .unwrap_or_else(|| panic!("no span {span_name}"))
            };
            let run = span(&format!("invoke_agent {name}"));
            let call = span(cut_off);
            assert_eq!(call.parent_span_id, run.span_context.span_id());
            for ended in [run, call] {
                assert!(matches!(ended.status, Status::Error { .. }), "{ended:?}");
                let error = attr(ended, "error.type");
                let expected = if ended.name == "execute_tool add" {
                    "tool_error"
                } else {
                    "cancelled"
                };
                assert_eq!(error, Some(Value::from(expected)), "{}", ended.name);
            }
            exporter.reset();
        }
    }

    #[test]
    fn tool_names_are_comma_separated() {
        let record = |name: &str| ToolCallRecord {
            id: "c".into(),
            name: name.into(),
            arguments: "{}".into(),
            ok: true,
            duration: std::time::Duration::ZERO,
            error: None,
        };
        let labels = LabelSet::new("execute_tool");
        let names = |calls: &[ToolCallRecord]| ToolNames::of(calls, &labels);
        assert_eq!(names(&[]).to_string(), "");
        let two = names(&[record("add"), record("search")]);
        assert!(matches!(two, ToolNames::Few { .. }));
        assert_eq!(two.to_string(), "add,search");
        let five = names(&[0, 1, 2, 3, 4].map(|i| record(&format!("t{i}"))));
        assert!(matches!(five, ToolNames::Joined(_)));
        assert_eq!(five.to_string(), "t0,t1,t2,t3,t4");
    }
}
