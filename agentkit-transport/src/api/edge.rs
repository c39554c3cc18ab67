//! What every request passes at the edge: its id, its trace context, its credentials, its
//! tenant's rate limit; the result is the request's [`Context`].

use std::sync::Arc;

use agentkit_core::observer::RequestStart;
use agentkit_core::{Context, TraceContext, generate_id};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::api::AppState;
use crate::api::logline::{EdgeFacts, ErrorCode, Finish, finish_with};
use crate::auth::Principal;
use crate::error::{ApiError, REQUEST, RequestScope};

/// The id of the request being handled.
#[derive(Clone, Debug)]
pub(crate) struct RequestId(pub(crate) String);

fn valid_request_id(value: &HeaderValue) -> Option<String> {
    let text = value.to_str().ok()?.trim();
    let ok = !text.is_empty() && text.len() <= 128 && text.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| text.to_owned())
}

/// Gives every request an id (the caller's `x-request-id` when it is sane, else a new one),
/// scopes error rendering to it, echoes it on the response, opens the request's span and writes
/// its log line when the response is done.
pub(crate) async fn request_scope(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = std::time::Instant::now();
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(valid_request_id)
        .unwrap_or_else(generate_id);
    let path = req.uri().path();
    let openai = path == "/v1/chat/completions" || path == "/v1/models";
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let inbound = trace_of(req.headers());
    let facts = Arc::new(EdgeFacts::default());
    let scope = state.observer().and_then(|observer| {
        let mut cx = Context::for_request(id.as_str());
        if let Some(trace) = &inbound {
            cx = cx.with_trace(trace.clone());
        }
        observer.start_request(&RequestStart::new(&method, &route, &cx))
    });
    // Without a tracer, a request still gets a trace id: for its log line and for the
    // traceparent sent to providers, remote agents and queued jobs.
    let trace = scope
        .as_ref()
        .and_then(|s| s.trace())
        .or(inbound)
        .unwrap_or_else(TraceContext::new_root);
    *facts.trace.lock().unwrap_or_else(|p| p.into_inner()) = Some(trace);
    req.extensions_mut().insert(RequestId(id.clone()));
    req.extensions_mut().insert(facts.clone());
    let rendering = RequestScope {
        request_id: id.clone(),
        openai,
    };
    let mut response = REQUEST.scope(rendering, next.run(req)).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    let guard = Finish {
        request_id: id,
        method,
        route,
        status: response.status().as_u16(),
        error_code: response.extensions().get::<ErrorCode>().map(|c| c.0),
        started,
        facts,
        scope,
    };
    finish_with(response, guard)
}

/// Authenticates, rate-limits and builds the request's [`Context`] (for `/v1` routes).
pub(crate) async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        // A header that is there but not text is malformed, not missing.
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .or_else(|| {
            (req.method() == axum::http::Method::GET)
                .then(|| websocket_bearer(req.headers()))
                .flatten()
        });
    let facts = req.extensions().get::<Arc<EdgeFacts>>().cloned();
    state.auth.refresh().await?;
    let principal = state.auth.authenticate(authorization.as_deref())?;
    if let Some(facts) = &facts {
        *facts.tenant.lock().unwrap_or_else(|p| p.into_inner()) = Some(principal.tenant.clone());
    }
    if let Some(limits) = &state.limits {
        limits.check(&principal.tenant)?;
    }
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map_or_else(generate_id, |r| r.0.clone());
    let mut cx = Context::for_request(request_id)
        .with_tenant(principal.tenant.as_str())
        .with_timeout(state.request_timeout);
    if let Some(subject) = &principal.subject {
        cx = cx.with_user(subject.as_str());
    }
    if let Some(scopes) = &principal.scopes {
        cx = cx.with_scopes(scopes.iter().cloned());
    }
    let trace = match &facts {
        Some(facts) => facts
            .trace
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        None => trace_of(req.headers()),
    };
    if let Some(trace) = trace {
        cx = cx.with_trace(trace);
    }
    if let Some(facts) = &facts
        && crate::api::logline::logging()
    {
        cx = cx.with_extension(facts.report.clone());
    }
    req.extensions_mut().insert(cx);
    req.extensions_mut().insert::<Principal>(principal);
    Ok(next.run(req).await)
}

/// The credential a WebSocket upgrade offers as the subprotocol `bearer.<credential>` (browsers
/// cannot set `Authorization` on a WebSocket), as an `Authorization` value.
fn websocket_bearer(headers: &axum::http::HeaderMap) -> Option<String> {
    let upgrade = headers.get(header::UPGRADE)?.to_str().ok()?;
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return None;
    }
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix("bearer."))
        .map(|token| format!("Bearer {token}"))
}

/// The W3C trace context of inbound headers, when valid.
pub(crate) fn trace_of(headers: &axum::http::HeaderMap) -> Option<TraceContext> {
    let parent = headers.get("traceparent")?.to_str().ok()?;
    let trace = TraceContext::parse(parent)?;
    Some(
        match headers.get("tracestate").and_then(|v| v.to_str().ok()) {
            Some(state) => trace.with_tracestate(state),
            None => trace,
        },
    )
}
