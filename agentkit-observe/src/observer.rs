//! [`AgentObserver`]: the core observer hook implemented with OpenTelemetry spans (GenAI
//! conventions) and Prometheus metrics.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime};

use agentkit_core::model::ModelResponse;
use agentkit_core::observer::{
    CallScope, ModelCallStart, Observer, RequestScope, RequestStart, RunEnd, RunReport, RunScope,
    RunStart,
};
use agentkit_core::tool::ToolCallRecord;
use agentkit_core::{Context, Error, StopReason, ToolCall, TraceContext, Usage};
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{InstrumentationScope, KeyValue, StringValue};
use tracing::Dispatch;

use crate::background::{Drain, Queue};
use crate::fnv::FnvBuild;
use crate::metrics::{AgentMetrics, AgentOutcome, Metrics, ModelMetrics, QueueLabel};
use crate::semconv::Names;
use crate::spans::{Batch, OpenSpan, Sampling};
use crate::text::Text;

pub(crate) struct Inner {
    /// Spans are recorded: the sampling decision and ids, on the request path.
    pub(crate) sampling: Option<Sampling>,
    /// To the telemetry thread: ended spans and run log lines.
    pub(crate) queue: Option<Queue<Record>>,
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

    /// The text, for the life of the process when the label is kept.
    fn kept(&self) -> Option<&'static str> {
        match self {
            Label::Kept(named) => Some(named.value),
            Label::Made(_) => None,
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
        if let Some(found) = self
            .made
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Label::Kept(found);
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

impl AgentObserver {
    #[inline]
    fn record(&self, record: Record) {
        if let Some(queue) = &self.inner.queue {
            queue.push(record);
        }
    }
}

/// What the request path hands to the telemetry thread.
pub(crate) enum Record {
    Run(RunRecord),
    Model(ModelRecord),
    Tool(ToolRecord),
    Request(RequestRecord),
}

/// An `error.type` and the status message.
type Failure = (Cow<'static, str>, String);

pub(crate) struct RunRecord {
    /// The recorded `invoke_agent` span, with the provider and requested model.
    span: Option<(OpenSpan, Label, Label)>,
    end: SystemTime,
    agent: Label,
    agent_version: Label,
    /// The model that answered.
    model: Label,
    request_id: Text,
    tenant: Option<Text>,
    session_id: Option<Text>,
    usage: Usage,
    cost_usd: f64,
    failure: Option<Failure>,
    output: Option<String>,
    log: Option<RunLog>,
}

/// What the run's log line adds.
struct RunLog {
    /// The subscriber current where the run ended.
    dispatch: Dispatch,
    trace: Option<TraceContext>,
    tool_calls: usize,
    tool_names: ToolNames,
    latency_ms: f64,
    error_code: Option<&'static str>,
}

pub(crate) struct ModelRecord {
    span: OpenSpan,
    end: SystemTime,
    model: Label,
    provider: Label,
    answered: Result<(Label, Usage, StopReason, Option<String>), Failure>,
}

pub(crate) struct ToolRecord {
    span: OpenSpan,
    end: SystemTime,
    tool: Label,
    call_id: Text,
    arguments: Option<String>,
    /// The error message of a failed call.
    failed: Option<String>,
}

pub(crate) struct RequestRecord {
    span: OpenSpan,
    end: SystemTime,
    name: Text,
    method: Text,
    route: Text,
    request_id: Text,
    status: u16,
}

struct Run {
    observer: AgentObserver,
    /// The run's span (recorded or not: its ids travel either way).
    span: Option<OpenSpan>,
    /// The provider and the model asked for: model calls and the end mostly name them again.
    provider: Label,
    model: Label,
    metrics: Option<Arc<AgentMetrics>>,
    model_metrics: Option<Arc<ModelMetrics>>,
    agent: Label,
    started: Instant,
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
        let labels = &self.inner.labels;
        let agent = labels.agents.get(run.agent);
        let agent_version = labels.values.get(run.agent_version);
        let model = labels.models.get(run.model);
        let (metrics, model_metrics) = match &self.inner.metrics {
            Some(all) => {
                let agent = all.agent(run.agent);
                agent.inflight.inc();
                let model = all.model(&agent, run.model);
                (Some(agent), Some(model))
            }
            None => (None, None),
        };
        let span = self.inner.sampling.as_ref().map(|sampling| {
            sampling.start(&agent.span_name(), &SpanKind::Internal, run.context.trace())
        });
        Box::new(Run {
            observer: self.clone(),
            span,
            provider: labels.values.get(run.provider),
            model,
            metrics,
            model_metrics,
            agent,
            started: Instant::now(),
            logged_by_edge: run.context.extension::<RunReport>().is_some(),
            context: run.context.clone(),
            agent_version,
        })
    }

    fn start_request(&self, request: &RequestStart<'_>) -> Option<Box<dyn RequestScope>> {
        let name = format!("{} {}", request.method, request.route);
        let span =
            self.inner
                .sampling
                .as_ref()?
                .start(&name, &SpanKind::Server, request.context.trace());
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

    fn session_conflict(&self) {
        if let Some(metrics) = &self.inner.metrics {
            metrics.session_conflicts.inc();
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
            observer.record(Record::Request(RequestRecord {
                span,
                end: SystemTime::now(),
                name,
                method,
                route,
                request_id,
                status,
            }));
        }
    }
}

enum CallKind {
    Model {
        model: Label,
        provider: Label,
        /// When metrics are kept.
        started: Option<Instant>,
        metrics: Option<Arc<ModelMetrics>>,
    },
    Tool {
        tool: Label,
        call_id: Text,
        arguments: Option<String>,
    },
}

struct Call {
    observer: AgentObserver,
    /// The call's span (recorded or not: its ids travel either way).
    span: Option<OpenSpan>,
    kind: CallKind,
}

impl RunScope for Run {
    fn trace(&self) -> Option<TraceContext> {
        self.span.as_ref().and_then(OpenSpan::trace)
    }

    fn start_model_call(&self, call: &ModelCallStart<'_>) -> Box<dyn CallScope> {
        let inner = &self.observer.inner;
        let (model, metrics) = if call.model == self.model.as_str() {
            (self.model.clone(), self.model_metrics.clone())
        } else {
            let metrics = inner
                .metrics
                .as_ref()
                .zip(self.metrics.as_ref())
                .map(|(all, agent)| all.model(agent, call.model));
            (inner.labels.models.get(call.model), metrics)
        };
        let provider = if call.provider == self.provider.as_str() {
            self.provider.clone()
        } else {
            inner.labels.values.get(call.provider)
        };
        Box::new(Call {
            observer: self.observer.clone(),
            span: self
                .span
                .as_ref()
                .filter(|s| s.sampled())
                .map(OpenSpan::child),
            kind: CallKind::Model {
                model,
                provider,
                started: metrics.as_ref().map(|_| Instant::now()),
                metrics,
            },
        })
    }

    fn start_tool_call(&self, call: &ToolCall) -> Box<dyn CallScope> {
        let span = self.span.as_ref().map(OpenSpan::child);
        let inner = &self.observer.inner;
        let kind = match span.as_ref().filter(|s| s.sampled()) {
            Some(_) => CallKind::Tool {
                tool: inner.labels.tools.get(&call.name),
                call_id: Text::new(&call.id),
                arguments: inner.capture.then(|| call.arguments.clone()),
            },
            None => CallKind::Tool {
                tool: Label::default(),
                call_id: Text::new(""),
                arguments: None,
            },
        };
        Box::new(Call {
            observer: self.observer.clone(),
            span,
            kind,
        })
    }

    fn end(self: Box<Self>, end: &RunEnd<'_>) {
        let Run {
            observer,
            span,
            provider,
            model,
            metrics: agent_metrics,
            model_metrics,
            agent,
            started,
            logged_by_edge,
            context,
            agent_version,
        } = *self;
        let inner = &observer.inner;
        if let (Some(metrics), Some(agent_metrics)) = (&inner.metrics, &agent_metrics) {
            agent_metrics.inflight.dec();
            match end.outcome {
                Ok(_) => {
                    agent_metrics.ok.inc();
                }
                Err(error) => {
                    metrics
                        .requests
                        .get_or_create(&AgentOutcome {
                            agent: agent.as_str().to_owned(),
                            outcome: error.code().to_owned(),
                        })
                        .inc();
                }
            }
            agent_metrics
                .duration
                .observe(started.elapsed().as_secs_f64());
            if end.cost_usd > 0.0 {
                match model_metrics.filter(|_| end.model == model.as_str()) {
                    Some(same) => same.cost.inc_by(end.cost_usd),
                    None => metrics
                        .model(agent_metrics, end.model)
                        .cost
                        .inc_by(end.cost_usd),
                };
            }
        }
        let trace = span.as_ref().and_then(OpenSpan::trace);
        let answered = if end.model == model.as_str() {
            model.clone()
        } else {
            inner.labels.models.get(end.model)
        };
        let span = span
            .filter(OpenSpan::sampled)
            .map(|span| (span, provider, model));
        let log = (inner.log_runs
            && !logged_by_edge
            && tracing::enabled!(target: "agentkit::run", tracing::Level::INFO))
        .then(|| RunLog {
            dispatch: tracing::dispatcher::get_default(Dispatch::clone),
            trace,
            tool_calls: end.tool_calls.len(),
            tool_names: ToolNames::of(end.tool_calls, &inner.labels.tools),
            latency_ms: started.elapsed().as_secs_f64() * 1000.0,
            error_code: end.outcome.as_ref().err().map(|e| e.code()),
        });
        if span.is_none() && log.is_none() {
            return;
        }
        let recorded = span.is_some();
        observer.record(Record::Run(RunRecord {
            span,
            end: SystemTime::now(),
            model: answered,
            agent,
            agent_version,
            request_id: Text::new(context.request_id()),
            tenant: context.tenant().map(Text::new),
            session_id: context.session_id().map(Text::new),
            usage: end.usage,
            cost_usd: end.cost_usd,
            failure: end
                .outcome
                .err()
                .filter(|_| recorded)
                .map(|error| (error.code().into(), error.message().to_owned())),
            output: match end.outcome {
                Ok(reply) if recorded && inner.capture => Some(reply.output.clone()),
                _ => None,
            },
            log,
        }));
    }
}

impl CallScope for Call {
    fn trace(&self) -> Option<TraceContext> {
        self.span.as_ref().and_then(OpenSpan::trace)
    }

    fn end_model(self: Box<Self>, outcome: Result<&ModelResponse, &Error>) {
        let Call {
            observer,
            span,
            kind:
                CallKind::Model {
                    model,
                    provider,
                    started,
                    metrics,
                },
        } = *self
        else {
            return;
        };
        let inner = &observer.inner;
        if let (Some(model), Some(started)) = (&metrics, started) {
            model.chat_duration.observe(started.elapsed().as_secs_f64());
            if let Ok(response) = outcome {
                model
                    .input_tokens
                    .observe(response.usage.input_tokens as f64);
                model
                    .output_tokens
                    .observe(response.usage.output_tokens as f64);
            }
        }
        let Some(span) = span.filter(OpenSpan::sampled) else {
            return;
        };
        let answered = match outcome {
            Ok(response) => Ok((
                match response.model.as_deref() {
                    Some(answered) if answered != model.as_str() => {
                        inner.labels.models.get(answered)
                    }
                    _ => model.clone(),
                },
                response.usage,
                response.stop_reason,
                inner.capture.then(|| message_text(&response.message)),
            )),
            Err(error) => Err((error.code().into(), error.message().to_owned())),
        };
        observer.record(Record::Model(ModelRecord {
            span,
            end: SystemTime::now(),
            model,
            provider,
            answered,
        }));
    }

    fn end_tool(self: Box<Self>, record: &ToolCallRecord) {
        if let Some(metrics) = &self.observer.inner.metrics {
            let tool = metrics.tool(&record.name);
            if record.ok {
                tool.ok.inc();
            } else {
                tool.error.inc();
            }
        }
        let Call {
            observer,
            span: Some(span),
            kind:
                CallKind::Tool {
                    tool,
                    call_id,
                    arguments,
                },
            ..
        } = *self
        else {
            return;
        };
        if !span.sampled() {
            return;
        }
        observer.record(Record::Tool(ToolRecord {
            span,
            end: SystemTime::now(),
            tool,
            call_id,
            arguments,
            failed: (!record.ok).then(|| record.error.clone().unwrap_or_default()),
        }));
    }
}

/// The telemetry thread's half: builds spans and log lines from records.
pub(crate) struct Builder {
    pub(crate) names: &'static [Names],
    pub(crate) scope: InstrumentationScope,
    /// Where spans go; none when only logs are on.
    pub(crate) batch: Option<Batch>,
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
        end: SystemTime,
        name: Cow<'static, str>,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
        status: Status,
    ) {
        if let Some(batch) = &mut self.batch {
            batch.push(span.data(end, name, kind, attributes, status, &self.scope));
        }
    }

    fn run(&mut self, record: RunRecord) {
        if let Some(log) = &record.log {
            log_run(log, &record);
        }
        let RunRecord {
            span,
            end,
            agent,
            agent_version,
            model,
            request_id,
            tenant,
            session_id,
            usage,
            cost_usd,
            failure,
            output,
            log: _,
        } = record;
        let Some((span, provider, requested)) = span else {
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
        gen_ai(
            &mut a,
            names,
            |n| n.input_tokens,
            (usage.input_tokens as i64).into(),
        );
        gen_ai(
            &mut a,
            names,
            |n| n.output_tokens,
            (usage.output_tokens as i64).into(),
        );
        a.push(KeyValue::new("agentkit.cost_usd", cost_usd));
        if let Some(output) = output {
            gen_ai(&mut a, names, |n| n.output_messages, output.into());
        }
        let status = failed(&mut a, names, failure);
        self.push(&span, end, agent.span_name(), SpanKind::Internal, a, status);
    }

    fn model(&mut self, record: ModelRecord) {
        let names = self.names;
        let mut a = self.attributes(7, 0);
        gen_ai(&mut a, names, |n| n.operation_name, "chat".into());
        gen_ai(&mut a, names, |n| n.provider_name, record.provider.value());
        gen_ai(&mut a, names, |n| n.request_model, record.model.value());
        let status = match record.answered {
            Ok((answered, usage, stop_reason, output)) => {
                gen_ai(&mut a, names, |n| n.response_model, answered.value());
                gen_ai(
                    &mut a,
                    names,
                    |n| n.input_tokens,
                    (usage.input_tokens as i64).into(),
                );
                gen_ai(
                    &mut a,
                    names,
                    |n| n.output_tokens,
                    (usage.output_tokens as i64).into(),
                );
                gen_ai(
                    &mut a,
                    names,
                    |n| n.finish_reasons,
                    opentelemetry::Value::Array(
                        vec![StringValue::from(stop_reason.as_str())].into(),
                    ),
                );
                if let Some(output) = output {
                    gen_ai(&mut a, names, |n| n.output_messages, output.into());
                }
                Status::Unset
            }
            Err(failure) => failed(&mut a, names, Some(failure)),
        };
        self.push(
            &record.span,
            record.end,
            record.model.span_name(),
            SpanKind::Client,
            a,
            status,
        );
    }

    fn tool(&mut self, record: ToolRecord) {
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
            &record.span,
            record.end,
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
            record.end,
            record.name.as_str().to_owned().into(),
            SpanKind::Server,
            a,
            status,
        );
    }
}

impl Drain for Builder {
    type Item = Record;

    fn take(&mut self, items: &mut Vec<Record>) {
        for record in items.drain(..) {
            match record {
                Record::Run(run) => self.run(run),

                Record::Model(model) => self.model(model),
                Record::Tool(tool) => self.tool(tool),
                Record::Request(request) => self.request(request),
            }
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
fn log_run(log: &RunLog, run: &RunRecord) {
    let (mut trace_hex, mut span_hex) = ([0u8; 32], [0u8; 16]);
    let trace_id = log
        .trace
        .as_ref()
        .map(|t| hex(&mut trace_hex, &t.trace_id().to_be_bytes()));
    let span_id = log
        .trace
        .as_ref()
        .map(|t| hex(&mut span_hex, &t.span_id().to_be_bytes()));
    tracing::dispatcher::with_default(&log.dispatch, || {
        tracing::info!(
            target: "agentkit::run",
            request_id = run.request_id.as_str(),
            trace_id,
            span_id,
            tenant = run.tenant.as_ref().map(Text::as_str),
            agent = run.agent.as_str(),
            agent_version = run.agent_version.as_str(),
            session_id = run.session_id.as_ref().map(Text::as_str),
            model = run.model.as_str(),
            tokens_in = run.usage.input_tokens,
            tokens_out = run.usage.output_tokens,
            tool_calls = log.tool_calls,
            tool_names = %log.tool_names,
            cost_usd = run.cost_usd,
            latency_ms = log.latency_ms,
            outcome = if log.error_code.is_none() { "ok" } else { "error" },
            error_code = log.error_code,
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
        names: [&'static str; 4],
        len: usize,
    },
    Joined(String),
}

impl ToolNames {
    fn of(calls: &[ToolCallRecord], labels: &LabelSet) -> Self {
        let mut names = [""; 4];
        if calls.len() <= names.len() {
            let kept = calls.iter().zip(&mut names).all(|(call, slot)| {
                match labels.get(&call.name).kept() {
                    Some(kept) => {
                        *slot = kept;
                        true
                    }
                    None => false,
                }
            });
            if kept {
                return ToolNames::Few {
                    names,
                    len: calls.len(),
                };
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
            ToolNames::Few { names, len } => {
                for (i, name) in names[..*len].iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    f.write_str(name)?;
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
        assert!(matches!(two, ToolNames::Few { len: 2, .. }));
        assert_eq!(two.to_string(), "add,search");
        let five = names(&[0, 1, 2, 3, 4].map(|i| record(&format!("t{i}"))));
        assert!(matches!(five, ToolNames::Joined(_)));
        assert_eq!(five.to_string(), "t0,t1,t2,t3,t4");
    }
}
