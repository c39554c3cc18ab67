//! [`AgentObserver`]: the core observer hook implemented with OpenTelemetry spans (GenAI
//! conventions) and Prometheus metrics.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use agentkit_core::model::ModelResponse;
use agentkit_core::observer::{
    CallScope, ModelCallStart, Observer, RequestScope, RequestStart, RunEnd, RunReport, RunScope,
    RunStart,
};
use agentkit_core::tool::ToolCallRecord;
use agentkit_core::{Error, ToolCall, TraceContext};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context as OtelContext, KeyValue};
use opentelemetry_sdk::trace::{Span, Tracer};

use crate::metrics::{
    AgentLabel, AgentOutcome, CostLabels, Metrics, OperationLabels, QueueLabel, TokenLabels,
    ToolLabels,
};
use crate::semconv::Names;

pub(crate) struct Inner {
    pub(crate) tracer: Option<Tracer>,
    pub(crate) metrics: Option<Arc<Metrics>>,
    pub(crate) names: &'static [Names],
    pub(crate) capture: bool,
    pub(crate) log_runs: bool,
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
            .field("tracing", &self.inner.tracer.is_some())
            .field("metrics", &self.inner.metrics.is_some())
            .field("capture_content", &self.inner.capture)
            .finish()
    }
}

/// The OpenTelemetry parent of work continuing `trace` (none: a new root).
fn parent(trace: Option<&TraceContext>) -> OtelContext {
    match trace {
        Some(trace) => {
            let flags = if trace.is_sampled() {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            };
            let context = SpanContext::new(
                TraceId::from_bytes(trace.trace_id().to_be_bytes()),
                SpanId::from_bytes(trace.span_id().to_be_bytes()),
                flags,
                true,
                TraceState::default(),
            );
            OtelContext::new().with_remote_span_context(context)
        }
        None => OtelContext::new(),
    }
}

fn trace_of(context: &SpanContext) -> Option<TraceContext> {
    if !context.is_valid() {
        return None;
    }
    TraceContext::from_parts(
        u128::from_be_bytes(context.trace_id().to_bytes()),
        u64::from_be_bytes(context.span_id().to_bytes()),
        context.is_sampled(),
    )
}

/// An attribute: where its name is in a [`Names`] table, and its value.
type Attr = (fn(&Names) -> &'static str, opentelemetry::Value);

fn child_of(context: &SpanContext) -> OtelContext {
    OtelContext::new().with_remote_span_context(context.clone())
}

impl AgentObserver {
    fn attrs(&self, pairs: &[Attr]) -> Vec<KeyValue> {
        let mut out = Vec::with_capacity(pairs.len() * self.inner.names.len());
        for names in self.inner.names {
            for (name, value) in pairs {
                out.push(KeyValue::new(name(names), value.clone()));
            }
        }
        out
    }

    fn start_span(
        &self,
        name: String,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
        parent: &OtelContext,
    ) -> Option<Span> {
        let tracer = self.inner.tracer.as_ref()?;
        Some(
            tracer
                .span_builder(name)
                .with_kind(kind)
                .with_attributes(attributes)
                .start_with_context(tracer, parent),
        )
    }
}

struct Run {
    observer: AgentObserver,
    span: Mutex<Option<Span>>,
    context: Option<SpanContext>,
    agent: String,
    started: Instant,
    logged_by_edge: bool,
    request_id: String,
    tenant: Option<String>,
    session_id: Option<String>,
    agent_version: String,
}

impl Observer for AgentObserver {
    fn enabled(&self) -> bool {
        let inner = &self.inner;
        inner.tracer.is_some() || inner.metrics.is_some() || inner.log_runs
    }

    fn start_run(&self, run: &RunStart<'_>) -> Box<dyn RunScope> {
        if let Some(metrics) = &self.inner.metrics {
            metrics
                .inflight
                .get_or_create(&AgentLabel {
                    agent: run.agent.to_owned(),
                })
                .inc();
        }
        let mut attributes = self.attrs(&[
            (|n| n.operation_name, "invoke_agent".into()),
            (|n| n.agent_name, run.agent.to_owned().into()),
            (|n| n.provider_name, run.provider.to_owned().into()),
            (|n| n.request_model, run.model.to_owned().into()),
        ]);
        if let Some(session) = run.context.session_id() {
            attributes.extend(self.attrs(&[(|n| n.conversation_id, session.to_owned().into())]));
        }
        attributes.push(KeyValue::new(
            "agentkit.request_id",
            run.context.request_id().to_owned(),
        ));
        attributes.push(KeyValue::new(
            "agentkit.agent.version",
            run.agent_version.to_owned(),
        ));
        if let Some(tenant) = run.context.tenant() {
            attributes.push(KeyValue::new("agentkit.tenant", tenant.to_owned()));
        }
        let span = self.start_span(
            format!("invoke_agent {}", run.agent),
            SpanKind::Internal,
            attributes,
            &parent(run.context.trace()),
        );
        let context = span.as_ref().map(|s| s.span_context().clone());
        Box::new(Run {
            observer: self.clone(),
            span: Mutex::new(span),
            context,
            agent: run.agent.to_owned(),
            started: Instant::now(),
            logged_by_edge: run.context.extension::<RunReport>().is_some(),
            request_id: run.context.request_id().to_owned(),
            tenant: run.context.tenant().map(str::to_owned),
            session_id: run.context.session_id().map(str::to_owned),
            agent_version: run.agent_version.to_owned(),
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
            format!("{} {}", request.method, request.route),
            SpanKind::Server,
            attributes,
            &parent(request.context.trace()),
        )?;
        Some(Box::new(Request {
            span: Mutex::new(Some(span)),
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
    span: Mutex<Option<Span>>,
}

impl RequestScope for Request {
    fn trace(&self) -> Option<TraceContext> {
        let span = self.span.lock().unwrap_or_else(|p| p.into_inner());
        span.as_ref().and_then(|s| trace_of(s.span_context()))
    }

    fn end(self: Box<Self>, status: u16) {
        let Some(mut span) = self.span.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if status >= 500 {
            span.set_attribute(KeyValue::new("error.type", status.to_string()));
            span.set_status(Status::error(format!("HTTP {status}")));
        }
        span.end();
    }
}

enum CallKind {
    Model { model: String, started: Instant },
    Tool,
}

struct Call {
    observer: AgentObserver,
    span: Mutex<Option<Span>>,
    agent: String,
    kind: CallKind,
}

impl RunScope for Run {
    fn trace(&self) -> Option<TraceContext> {
        self.context.as_ref().and_then(trace_of)
    }

    fn start_model_call(&self, call: &ModelCallStart<'_>) -> Box<dyn CallScope> {
        let span = self.context.as_ref().and_then(|parent| {
            let attributes = self.observer.attrs(&[
                (|n| n.operation_name, "chat".into()),
                (|n| n.provider_name, call.provider.to_owned().into()),
                (|n| n.request_model, call.model.to_owned().into()),
            ]);
            self.observer.start_span(
                format!("chat {}", call.model),
                SpanKind::Client,
                attributes,
                &child_of(parent),
            )
        });
        Box::new(Call {
            observer: self.observer.clone(),
            span: Mutex::new(span),
            agent: self.agent.clone(),
            kind: CallKind::Model {
                model: call.model.to_owned(),
                started: Instant::now(),
            },
        })
    }

    fn start_tool_call(&self, call: &ToolCall) -> Box<dyn CallScope> {
        let span = self.context.as_ref().and_then(|parent| {
            let mut attributes = self.observer.attrs(&[
                (|n| n.operation_name, "execute_tool".into()),
                (|n| n.tool_name, call.name.clone().into()),
                (|n| n.tool_call_id, call.id.clone().into()),
            ]);
            if self.observer.inner.capture {
                attributes.push(KeyValue::new(
                    "gen_ai.tool.call.arguments",
                    call.arguments.clone(),
                ));
            }
            self.observer.start_span(
                format!("execute_tool {}", call.name),
                SpanKind::Internal,
                attributes,
                &child_of(parent),
            )
        });
        Box::new(Call {
            observer: self.observer.clone(),
            span: Mutex::new(span),
            agent: self.agent.clone(),
            kind: CallKind::Tool,
        })
    }

    fn end(self: Box<Self>, end: &RunEnd<'_>) {
        let inner = &self.observer.inner;
        let outcome = match end.outcome {
            Ok(_) => "ok",
            Err(error) => error.code(),
        };
        if let Some(metrics) = &inner.metrics {
            let agent = AgentLabel {
                agent: self.agent.clone(),
            };
            metrics.inflight.get_or_create(&agent).dec();
            metrics
                .requests
                .get_or_create(&AgentOutcome {
                    agent: self.agent.clone(),
                    outcome: outcome.to_owned(),
                })
                .inc();
            metrics
                .duration
                .get_or_create(&agent)
                .observe(self.started.elapsed().as_secs_f64());
            if end.cost_usd > 0.0 {
                metrics
                    .cost
                    .get_or_create(&CostLabels {
                        agent: self.agent.clone(),
                        model: end.model.to_owned(),
                    })
                    .inc_by(end.cost_usd);
            }
        }
        if let Some(mut span) = self.span.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let mut attributes = self.observer.attrs(&[
                (|n| n.response_model, end.model.to_owned().into()),
                (|n| n.input_tokens, (end.usage.input_tokens as i64).into()),
                (|n| n.output_tokens, (end.usage.output_tokens as i64).into()),
            ]);
            attributes.push(KeyValue::new("agentkit.cost_usd", end.cost_usd));
            if let Ok(reply) = end.outcome
                && inner.capture
            {
                attributes.extend(
                    self.observer
                        .attrs(&[(|n| n.output_messages, reply.output.clone().into())]),
                );
            }
            span.set_attributes(attributes);
            if let Err(error) = end.outcome {
                fail(&self.observer, &mut span, error);
            }
            span.end();
        }
        if inner.log_runs && !self.logged_by_edge {
            let tool_names: Vec<&str> = end.tool_calls.iter().map(|t| t.name.as_str()).collect();
            let trace = self.trace();
            tracing::info!(
                target: "agentkit::run",
                request_id = %self.request_id,
                trace_id = trace.as_ref().map(TraceContext::trace_id_hex).as_deref(),
                span_id = trace.as_ref().map(TraceContext::span_id_hex).as_deref(),
                tenant = self.tenant.as_deref(),
                agent = %self.agent,
                agent_version = %self.agent_version,
                session_id = self.session_id.as_deref(),
                model = end.model,
                tokens_in = end.usage.input_tokens,
                tokens_out = end.usage.output_tokens,
                tool_calls = end.tool_calls.len(),
                tool_names = %tool_names.join(","),
                cost_usd = end.cost_usd,
                latency_ms = self.started.elapsed().as_secs_f64() * 1000.0,
                outcome = if end.outcome.is_ok() { "ok" } else { "error" },
                error_code = end.outcome.as_ref().err().map(|e| e.code()),
                "agent run finished"
            );
        }
    }
}

fn fail(observer: &AgentObserver, span: &mut Span, error: &Error) {
    span.set_attributes(observer.attrs(&[(|n| n.error_type, error.code().into())]));
    span.set_status(Status::error(error.message().to_owned()));
}

impl CallScope for Call {
    fn trace(&self) -> Option<TraceContext> {
        let span = self.span.lock().unwrap_or_else(|p| p.into_inner());
        span.as_ref().and_then(|s| trace_of(s.span_context()))
    }

    fn end_model(self: Box<Self>, outcome: Result<&ModelResponse, &Error>) {
        let CallKind::Model { model, started } = &self.kind else {
            return;
        };
        let inner = &self.observer.inner;
        if let Some(metrics) = &inner.metrics {
            metrics
                .operations
                .get_or_create(&OperationLabels {
                    model: model.clone(),
                    operation: "chat",
                })
                .observe(started.elapsed().as_secs_f64());
            if let Ok(response) = outcome {
                for (token_type, count) in [
                    ("input", response.usage.input_tokens),
                    ("output", response.usage.output_tokens),
                ] {
                    metrics
                        .tokens
                        .get_or_create(&TokenLabels {
                            agent: self.agent.clone(),
                            model: model.clone(),
                            token_type,
                        })
                        .observe(count as f64);
                }
            }
        }
        let Some(mut span) = self.span.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        match outcome {
            Ok(response) => {
                let answered = response.model.clone().unwrap_or_else(|| model.clone());
                let mut attributes = self.observer.attrs(&[
                    (|n| n.response_model, answered.into()),
                    (
                        |n| n.input_tokens,
                        (response.usage.input_tokens as i64).into(),
                    ),
                    (
                        |n| n.output_tokens,
                        (response.usage.output_tokens as i64).into(),
                    ),
                ]);
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
                    attributes.extend(self.observer.attrs(&[(|n| n.output_messages, text.into())]));
                }
                span.set_attributes(attributes);
            }
            Err(error) => fail(&self.observer, &mut span, error),
        }
        span.end();
    }

    fn end_tool(self: Box<Self>, record: &ToolCallRecord) {
        if let Some(metrics) = &self.observer.inner.metrics {
            metrics
                .tool_calls
                .get_or_create(&ToolLabels {
                    tool: record.name.clone(),
                    outcome: if record.ok { "ok" } else { "error" },
                })
                .inc();
        }
        let Some(mut span) = self.span.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        if !record.ok {
            span.set_attributes(
                self.observer
                    .attrs(&[(|n| n.error_type, "tool_error".into())]),
            );
            span.set_status(Status::error(record.error.clone().unwrap_or_default()));
        }
        span.end();
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
