//! [`AgentObserver`]: the core observer hook implemented with OpenTelemetry spans (GenAI
//! conventions) and Prometheus metrics.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use agentkit_core::model::ModelResponse;
use agentkit_core::observer::{
    CallScope, ModelCallStart, Observer, RequestScope, RequestStart, RunEnd, RunReport, RunScope,
    RunStart,
};
use agentkit_core::tool::ToolCallRecord;
use agentkit_core::{Context, Error, ToolCall, TraceContext};
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{KeyValue, StringValue};

use crate::fnv::FnvBuild;
use crate::metrics::{AgentMetrics, AgentOutcome, Metrics, QueueLabel};
use crate::semconv::Names;
use crate::spans::{OpenSpan, Pipeline};

pub(crate) struct Inner {
    pub(crate) spans: Option<Pipeline>,
    pub(crate) metrics: Option<Arc<Metrics>>,
    pub(crate) names: &'static [Names],
    pub(crate) capture: bool,
    pub(crate) log_runs: bool,
    pub(crate) labels: Labels,
}

/// The most distinct names of one kind (agents, models, tools, other values) kept made;
/// past it, names are made afresh for each span.
const MAX_LABELS: usize = 4096;

/// A name that recurs on every run (an agent's, a model's, a tool's, a provider's), made once:
/// the attribute value, shared, and the span name for it.
#[derive(Clone)]
pub(crate) struct Label {
    value: StringValue,
    span: Cow<'static, str>,
}

impl Label {
    fn value(&self) -> opentelemetry::Value {
        opentelemetry::Value::String(self.value.clone())
    }
}

/// Names of one kind, with the prefix of their span names.
pub(crate) struct LabelSet {
    prefix: &'static str,
    made: RwLock<HashMap<Box<str>, Label, FnvBuild>>,
}

impl LabelSet {
    fn new(prefix: &'static str) -> Self {
        Self {
            prefix,
            made: RwLock::default(),
        }
    }

    /// The label of `name`. A span name is made once per distinct name and kept for the
    /// life of the process (names come from configuration: agents, models, tools; at most
    /// [`MAX_LABELS`] of them, after which each span gets its own).
    fn get(&self, name: &str) -> Label {
        if let Some(found) = self
            .made
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return found.clone();
        }
        let value = StringValue::from(Arc::<str>::from(name));
        let span = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{} {name}", self.prefix)
        };
        let mut made = self.made.write().unwrap_or_else(|p| p.into_inner());
        if made.len() >= MAX_LABELS {
            return Label {
                value,
                span: span.into(),
            };
        }
        made.entry(name.into())
            .or_insert_with(|| Label {
                value,
                span: Cow::Borrowed(Box::leak(span.into_boxed_str())),
            })
            .clone()
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
#[derive(Clone)]
pub struct AgentObserver {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for AgentObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentObserver")
            .field("tracing", &self.inner.spans.is_some())
            .field("metrics", &self.inner.metrics.is_some())
            .field("capture_content", &self.inner.capture)
            .finish()
    }
}

/// An attribute: where its name is in a [`Names`] table, and its value.
type Attr = (fn(&Names) -> &'static str, opentelemetry::Value);

impl AgentObserver {
    /// The attributes under every name table switched on (values are moved into the last).
    ///
    /// Sized for the attributes a span gets when it ends too, so adding those does not copy.
    fn attrs<const N: usize>(&self, pairs: [Attr; N]) -> Vec<KeyValue> {
        let mut out = Vec::with_capacity((N + 6) * self.inner.names.len() + 3);
        self.attrs_into(&mut out, pairs);
        out
    }

    /// Appends the attributes under every name table switched on to `out`.
    fn attrs_into<const N: usize>(&self, out: &mut Vec<KeyValue>, pairs: [Attr; N]) {
        let tables = self.inner.names;
        if let Some((last, earlier)) = tables.split_last() {
            for names in earlier {
                for (name, value) in &pairs {
                    out.push(KeyValue::new(name(names), value.clone()));
                }
            }
            for (name, value) in pairs {
                out.push(KeyValue::new(name(last), value));
            }
        }
    }

    fn start_span(
        &self,
        name: Cow<'static, str>,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
        parent: Option<&agentkit_core::TraceContext>,
    ) -> Option<OpenSpan> {
        let spans = self.inner.spans.as_ref()?;
        Some(spans.start(name, kind, attributes, parent))
    }

    fn child_span(
        &self,
        parent: &OpenSpan,
        name: Cow<'static, str>,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
    ) -> Option<OpenSpan> {
        let spans = self.inner.spans.as_ref()?;
        Some(spans.child(parent, name, kind, attributes))
    }

    fn end_span(&self, span: OpenSpan) {
        if let Some(spans) = &self.inner.spans {
            spans.end(span);
        }
    }
}

struct Run {
    observer: AgentObserver,
    span: Option<OpenSpan>,
    metrics: Option<Arc<AgentMetrics>>,
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
        inner.spans.is_some() || inner.metrics.is_some() || inner.log_runs
    }

    fn start_run(&self, run: &RunStart<'_>) -> Box<dyn RunScope> {
        let labels = &self.inner.labels;
        let agent = labels.agents.get(run.agent);
        let agent_version = labels.values.get(run.agent_version);
        let metrics = self.inner.metrics.as_ref().map(|m| m.agent(run.agent));
        if let Some(metrics) = &metrics {
            metrics.inflight.inc();
        }
        let span = self.inner.spans.is_some().then(|| {
            let mut attributes = self.attrs([
                (|n| n.operation_name, "invoke_agent".into()),
                (|n| n.agent_name, agent.value()),
                (|n| n.provider_name, labels.values.get(run.provider).value()),
                (|n| n.request_model, labels.models.get(run.model).value()),
            ]);
            if let Some(session) = run.context.session_id() {
                attributes.extend(self.attrs([(|n| n.conversation_id, session.to_owned().into())]));
            }
            attributes.push(KeyValue::new(
                "agentkit.request_id",
                run.context.request_id().to_owned(),
            ));
            attributes.push(KeyValue::new(
                "agentkit.agent.version",
                agent_version.value(),
            ));
            if let Some(tenant) = run.context.tenant() {
                attributes.push(KeyValue::new("agentkit.tenant", tenant.to_owned()));
            }
            self.start_span(
                agent.span.clone(),
                SpanKind::Internal,
                attributes,
                run.context.trace(),
            )
        });
        Box::new(Run {
            observer: self.clone(),
            span: span.flatten(),
            metrics,
            agent,
            started: Instant::now(),
            logged_by_edge: run.context.extension::<RunReport>().is_some(),
            context: run.context.clone(),
            agent_version,
        })
    }

    fn start_request(&self, request: &RequestStart<'_>) -> Option<Box<dyn RequestScope>> {
        let attributes = vec![
            KeyValue::new("http.request.method", request.method.to_owned()),
            KeyValue::new("http.route", request.route.to_owned()),
            KeyValue::new(
                "agentkit.request_id",
                request.context.request_id().to_owned(),
            ),
        ];
        let span = self.start_span(
            format!("{} {}", request.method, request.route).into(),
            SpanKind::Server,
            attributes,
            request.context.trace(),
        )?;
        Some(Box::new(Request {
            observer: self.clone(),
            span,
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
}

impl RequestScope for Request {
    fn trace(&self) -> Option<TraceContext> {
        self.span.trace()
    }

    fn end(self: Box<Self>, status: u16) {
        let Request { observer, mut span } = *self;
        span.add([KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        )]);
        if status >= 500 {
            span.add([KeyValue::new("error.type", status.to_string())]);
            span.set_status(Status::error(format!("HTTP {status}")));
        }
        observer.end_span(span);
    }
}

enum CallKind {
    Model { model: String, started: Instant },
    Tool,
}

struct Call {
    observer: AgentObserver,
    span: Option<OpenSpan>,
    metrics: Option<Arc<AgentMetrics>>,
    kind: CallKind,
}

impl RunScope for Run {
    fn trace(&self) -> Option<TraceContext> {
        self.span.as_ref().and_then(OpenSpan::trace)
    }

    fn start_model_call(&self, call: &ModelCallStart<'_>) -> Box<dyn CallScope> {
        let labels = &self.observer.inner.labels;
        let span = self.span.as_ref().and_then(|parent| {
            let model = labels.models.get(call.model);
            let attributes = self.observer.attrs([
                (|n| n.operation_name, "chat".into()),
                (
                    |n| n.provider_name,
                    labels.values.get(call.provider).value(),
                ),
                (|n| n.request_model, model.value()),
            ]);
            self.observer
                .child_span(parent, model.span, SpanKind::Client, attributes)
        });
        Box::new(Call {
            observer: self.observer.clone(),
            span,
            metrics: self.metrics.clone(),
            kind: CallKind::Model {
                model: call.model.to_owned(),
                started: Instant::now(),
            },
        })
    }

    fn start_tool_call(&self, call: &ToolCall) -> Box<dyn CallScope> {
        let span = self.span.as_ref().and_then(|parent| {
            let tool = self.observer.inner.labels.tools.get(&call.name);
            let mut attributes = self.observer.attrs([
                (|n| n.operation_name, "execute_tool".into()),
                (|n| n.tool_name, tool.value()),
                (|n| n.tool_call_id, call.id.clone().into()),
            ]);
            if self.observer.inner.capture {
                attributes.push(KeyValue::new(
                    "gen_ai.tool.call.arguments",
                    call.arguments.clone(),
                ));
            }
            self.observer
                .child_span(parent, tool.span, SpanKind::Internal, attributes)
        });
        Box::new(Call {
            observer: self.observer.clone(),
            span,
            metrics: None,
            kind: CallKind::Tool,
        })
    }

    fn end(mut self: Box<Self>, end: &RunEnd<'_>) {
        let trace = self.trace();
        let inner = &self.observer.inner;
        let outcome = match end.outcome {
            Ok(_) => "ok",
            Err(error) => error.code(),
        };
        if let (Some(metrics), Some(agent)) = (&inner.metrics, &self.metrics) {
            agent.inflight.dec();
            match end.outcome {
                Ok(_) => {
                    agent.ok.inc();
                }
                Err(_) => {
                    metrics
                        .requests
                        .get_or_create(&AgentOutcome {
                            agent: self.agent.value.to_string(),
                            outcome: outcome.to_owned(),
                        })
                        .inc();
                }
            }
            agent.duration.observe(self.started.elapsed().as_secs_f64());
            if end.cost_usd > 0.0 {
                metrics.model(agent, end.model).cost.inc_by(end.cost_usd);
            }
        }
        if let Some(mut span) = self.span.take() {
            if let Some(attributes) = span.attributes_mut() {
                let observer = &self.observer;
                observer.attrs_into(
                    attributes,
                    [
                        (
                            |n| n.response_model,
                            inner.labels.models.get(end.model).value(),
                        ),
                        (|n| n.input_tokens, (end.usage.input_tokens as i64).into()),
                        (|n| n.output_tokens, (end.usage.output_tokens as i64).into()),
                    ],
                );
                attributes.push(KeyValue::new("agentkit.cost_usd", end.cost_usd));
                if let Ok(reply) = end.outcome
                    && inner.capture
                {
                    observer.attrs_into(
                        attributes,
                        [(|n| n.output_messages, reply.output.clone().into())],
                    );
                }
            }
            if let Err(error) = end.outcome {
                fail(&self.observer, &mut span, error);
            }
            self.observer.end_span(span);
        }
        if inner.log_runs && !self.logged_by_edge {
            let (mut trace_hex, mut span_hex) = ([0u8; 32], [0u8; 16]);
            let trace_id = trace
                .as_ref()
                .map(|t| hex(&mut trace_hex, &t.trace_id().to_be_bytes()));
            let span_id = trace
                .as_ref()
                .map(|t| hex(&mut span_hex, &t.span_id().to_be_bytes()));
            tracing::info!(
                target: "agentkit::run",
                request_id = self.context.request_id(),
                trace_id,
                span_id,
                tenant = self.context.tenant(),
                agent = self.agent.value.as_str(),
                agent_version = self.agent_version.value.as_str(),
                session_id = self.context.session_id(),
                model = end.model,
                tokens_in = end.usage.input_tokens,
                tokens_out = end.usage.output_tokens,
                tool_calls = end.tool_calls.len(),
                tool_names = %ToolNames(end.tool_calls),
                cost_usd = end.cost_usd,
                latency_ms = self.started.elapsed().as_secs_f64() * 1000.0,
                outcome = if end.outcome.is_ok() { "ok" } else { "error" },
                error_code = end.outcome.as_ref().err().map(|e| e.code()),
                "agent run finished"
            );
        }
    }
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

/// The names of a run's tool calls, comma-separated, written without collecting them.
struct ToolNames<'a>(&'a [ToolCallRecord]);

impl std::fmt::Display for ToolNames<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, call) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(&call.name)?;
        }
        Ok(())
    }
}

fn fail(observer: &AgentObserver, span: &mut OpenSpan, error: &Error) {
    span.add(observer.attrs([(|n| n.error_type, error.code().into())]));
    span.set_status(Status::error(error.message().to_owned()));
}

impl CallScope for Call {
    fn trace(&self) -> Option<TraceContext> {
        self.span.as_ref().and_then(OpenSpan::trace)
    }

    fn end_model(mut self: Box<Self>, outcome: Result<&ModelResponse, &Error>) {
        let CallKind::Model { model, started } = &self.kind else {
            return;
        };
        let inner = &self.observer.inner;
        if let (Some(metrics), Some(agent)) = (&inner.metrics, &self.metrics) {
            let model = metrics.model(agent, model);
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
        let Some(mut span) = self.span.take() else {
            return;
        };
        match outcome {
            Ok(response) => {
                let Some(attributes) = span.attributes_mut() else {
                    return self.observer.end_span(span);
                };
                let answered = response.model.as_deref().unwrap_or(model);
                self.observer.attrs_into(
                    attributes,
                    [
                        (
                            |n| n.response_model,
                            inner.labels.models.get(answered).value(),
                        ),
                        (
                            |n| n.input_tokens,
                            (response.usage.input_tokens as i64).into(),
                        ),
                        (
                            |n| n.output_tokens,
                            (response.usage.output_tokens as i64).into(),
                        ),
                    ],
                );
                for names in inner.names {
                    attributes.push(KeyValue::new(
                        names.finish_reasons,
                        opentelemetry::Value::Array(
                            vec![opentelemetry::StringValue::from(
                                response.stop_reason.as_str(),
                            )]
                            .into(),
                        ),
                    ));
                }
                if inner.capture {
                    let text = serde_json_message(&response.message);
                    self.observer
                        .attrs_into(attributes, [(|n| n.output_messages, text.into())]);
                }
            }
            Err(error) => fail(&self.observer, &mut span, error),
        }
        self.observer.end_span(span);
    }

    fn end_tool(mut self: Box<Self>, record: &ToolCallRecord) {
        if let Some(metrics) = &self.observer.inner.metrics {
            let tool = metrics.tool(&record.name);
            if record.ok {
                tool.ok.inc();
            } else {
                tool.error.inc();
            }
        }
        let Some(mut span) = self.span.take() else {
            return;
        };
        if !record.ok {
            span.add(
                self.observer
                    .attrs([(|n| n.error_type, "tool_error".into())]),
            );
            span.set_status(Status::error(record.error.clone().unwrap_or_default()));
        }
        self.observer.end_span(span);
    }
}

/// The message's text parts and tool calls, for content capture.
fn serde_json_message(message: &agentkit_core::Message) -> String {
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
        assert_eq!(ToolNames(&[]).to_string(), "");
        assert_eq!(
            ToolNames(&[record("add"), record("search")]).to_string(),
            "add,search"
        );
    }
}
