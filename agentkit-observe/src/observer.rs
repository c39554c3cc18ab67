//! [`AgentObserver`]: the core observer hook implemented with OpenTelemetry spans (GenAI
//! conventions) and Prometheus metrics.

use std::sync::Arc;
use std::time::Instant;

use agentkit_core::model::ModelResponse;
use agentkit_core::observer::{
    CallScope, ModelCallStart, Observer, RequestScope, RequestStart, RunEnd, RunReport, RunScope,
    RunStart,
};
use agentkit_core::tool::ToolCallRecord;
use agentkit_core::{Error, ToolCall, TraceContext};
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanKind, Status};

use crate::metrics::{AgentMetrics, AgentOutcome, Metrics, QueueLabel};
use crate::semconv::Names;
use crate::spans::{OpenSpan, Pipeline};

pub(crate) struct Inner {
    pub(crate) spans: Option<Pipeline>,
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
    fn attrs<const N: usize>(&self, pairs: [Attr; N]) -> Vec<KeyValue> {
        let tables = self.inner.names;
        let mut out = Vec::with_capacity(N * tables.len() + 3);
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
        out
    }

    fn start_span(
        &self,
        name: String,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
        parent: Option<&agentkit_core::TraceContext>,
    ) -> Option<OpenSpan> {
        let spans = self.inner.spans.as_ref()?;
        Some(spans.start(name.into(), kind, attributes, parent))
    }

    fn child_span(
        &self,
        parent: &OpenSpan,
        name: String,
        kind: SpanKind,
        attributes: Vec<KeyValue>,
    ) -> Option<OpenSpan> {
        let spans = self.inner.spans.as_ref()?;
        Some(spans.child(parent, name.into(), kind, attributes))
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
        inner.spans.is_some() || inner.metrics.is_some() || inner.log_runs
    }

    fn start_run(&self, run: &RunStart<'_>) -> Box<dyn RunScope> {
        let metrics = self.inner.metrics.as_ref().map(|m| m.agent(run.agent));
        if let Some(metrics) = &metrics {
            metrics.inflight.inc();
        }
        let span = self.inner.spans.is_some().then(|| {
            let mut attributes = self.attrs([
                (|n| n.operation_name, "invoke_agent".into()),
                (|n| n.agent_name, run.agent.to_owned().into()),
                (|n| n.provider_name, run.provider.to_owned().into()),
                (|n| n.request_model, run.model.to_owned().into()),
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
                run.agent_version.to_owned(),
            ));
            if let Some(tenant) = run.context.tenant() {
                attributes.push(KeyValue::new("agentkit.tenant", tenant.to_owned()));
            }
            self.start_span(
                format!("invoke_agent {}", run.agent),
                SpanKind::Internal,
                attributes,
                run.context.trace(),
            )
        });
        Box::new(Run {
            observer: self.clone(),
            span: span.flatten(),
            metrics,
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
        let span = self.span.as_ref().and_then(|parent| {
            let attributes = self.observer.attrs([
                (|n| n.operation_name, "chat".into()),
                (|n| n.provider_name, call.provider.to_owned().into()),
                (|n| n.request_model, call.model.to_owned().into()),
            ]);
            self.observer.child_span(
                parent,
                format!("chat {}", call.model),
                SpanKind::Client,
                attributes,
            )
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
            let mut attributes = self.observer.attrs([
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
            self.observer.child_span(
                parent,
                format!("execute_tool {}", call.name),
                SpanKind::Internal,
                attributes,
            )
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
                            agent: self.agent.clone(),
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
            let mut attributes = self.observer.attrs([
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
                        .attrs([(|n| n.output_messages, reply.output.clone().into())]),
                );
            }
            span.add(attributes);
            if let Err(error) = end.outcome {
                fail(&self.observer, &mut span, error);
            }
            self.observer.end_span(span);
        }
        if inner.log_runs && !self.logged_by_edge {
            let tool_names: Vec<&str> = end.tool_calls.iter().map(|t| t.name.as_str()).collect();
            let trace_id = trace.as_ref().map(TraceContext::trace_id_hex);
            let span_id = trace.as_ref().map(TraceContext::span_id_hex);
            tracing::info!(
                target: "agentkit::run",
                request_id = self.request_id.as_str(),
                trace_id = trace_id.as_deref(),
                span_id = span_id.as_deref(),
                tenant = self.tenant.as_deref(),
                agent = self.agent.as_str(),
                agent_version = self.agent_version.as_str(),
                session_id = self.session_id.as_deref(),
                model = end.model,
                tokens_in = end.usage.input_tokens,
                tokens_out = end.usage.output_tokens,
                tool_calls = end.tool_calls.len(),
                tool_names = tool_names.join(",").as_str(),
                cost_usd = end.cost_usd,
                latency_ms = self.started.elapsed().as_secs_f64() * 1000.0,
                outcome = if end.outcome.is_ok() { "ok" } else { "error" },
                error_code = end.outcome.as_ref().err().map(|e| e.code()),
                "agent run finished"
            );
        }
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
                let answered = response.model.clone().unwrap_or_else(|| model.clone());
                let mut attributes = self.observer.attrs([
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
                    attributes.extend(self.observer.attrs([(|n| n.output_messages, text.into())]));
                }
                span.add(attributes);
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
