//! One log line per finished request, and the request's span: the edge's part of
//! observability. The line is written when the response body is done (for streams, after the
//! last event), with what the agent run left in the request's [`RunReport`].

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use agentkit_core::TraceContext;
use agentkit_core::observer::{RequestScope, RunReport};
use axum::body::Body;
use axum::http::Response;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

/// The code of an error response, left by [`ApiError`](crate::ApiError) for the log line.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ErrorCode(pub(crate) &'static str);

/// What the edge learns about a request while handling it.
#[derive(Default)]
pub(crate) struct EdgeFacts {
    pub(crate) tenant: Mutex<Option<String>>,
    pub(crate) report: RunReport,
    pub(crate) trace: Mutex<Option<TraceContext>>,
}

/// Writes the line and ends the request span, once, when dropped.
pub(crate) struct Finish {
    pub(crate) request_id: String,
    pub(crate) method: String,
    pub(crate) route: String,
    pub(crate) status: u16,
    pub(crate) error_code: Option<&'static str>,
    pub(crate) started: Instant,
    pub(crate) facts: Arc<EdgeFacts>,
    pub(crate) scope: Option<Box<dyn RequestScope>>,
}

/// Whether anyone takes request log lines (when not, the edge neither asks runs for a summary
/// nor builds the line).
pub(crate) fn logging() -> bool {
    tracing::enabled!(target: "agentkit::request", tracing::Level::INFO)
}

impl Drop for Finish {
    fn drop(&mut self) {
        if logging() {
            self.log();
        }
        if let Some(scope) = self.scope.take() {
            scope.end(self.status);
        }
    }
}

impl Finish {
    fn log(&self) {
        let summary = self.facts.report.get();
        let request_trace = self
            .facts
            .trace
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let trace_id = summary
            .as_ref()
            .and_then(|s| s.trace_id.clone())
            .or_else(|| request_trace.as_ref().map(TraceContext::trace_id_hex));
        let span_id = summary
            .as_ref()
            .and_then(|s| s.span_id.clone())
            .or_else(|| request_trace.as_ref().map(TraceContext::span_id_hex));
        let tenant = self
            .facts
            .tenant
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let error_code = self
            .error_code
            .or_else(|| summary.as_ref().and_then(|s| s.error_code));
        let outcome = if self.status < 400 && error_code.is_none() {
            "ok"
        } else {
            "error"
        };
        let s = summary.unwrap_or_default();
        tracing::info!(
            target: "agentkit::request",
            request_id = %self.request_id,
            trace_id = trace_id.as_deref(),
            span_id = span_id.as_deref(),
            tenant = tenant.as_deref().or(s.tenant.as_deref()),
            agent = (!s.agent.is_empty()).then_some(s.agent.as_str()),
            agent_version = (!s.agent_version.is_empty()).then_some(s.agent_version.as_str()),
            session_id = s.session_id.as_deref(),
            model = (!s.model.is_empty()).then_some(s.model.as_str()),
            tokens_in = s.tokens_in,
            tokens_out = s.tokens_out,
            tool_calls = s.tool_names.len(),
            tool_names = %s.tool_names.join(","),
            cost_usd = s.cost_usd,
            latency_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            outcome,
            error_code,
            method = %self.method,
            route = %self.route,
            status = self.status,
            output = s.output.as_deref(),
            "request finished"
        );
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps the [`Finish`] guard until the body ends or is dropped.
    struct Finishing {
        #[pin]
        inner: Body,
        guard: Option<Finish>,
    }
}

impl HttpBody for Finishing {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(None) = &polled {
            this.guard.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Attaches `guard` to the response, to fire when its body is done.
pub(crate) fn finish_with(response: Response<Body>, guard: Finish) -> Response<Body> {
    response.map(|inner| {
        Body::new(Finishing {
            inner,
            guard: Some(guard),
        })
    })
}
