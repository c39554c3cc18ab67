//! `POST /v1/agents/{agent}/invoke`: one stateless run, as JSON or as Server-Sent Events.

use std::sync::Arc;

use agentkit_core::{Context, Error, Executor, IdempotencyKey, Invocation, Message};
use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use crate::api::dto::{ErrorBody, InvokeRequest, InvokeResponse};
use crate::api::{ApiJson, ApiPath, AppState, idempotency_key, ok_json, wants_event_stream};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::events::{Origin, sse_response};
use crate::jobs::QueueExecutor;

/// Checks the input and builds the invocation.
pub(crate) fn invocation(request: InvokeRequest, cx: Context) -> Result<Invocation, Error> {
    let input: Vec<Message> = request.input.into_messages();
    if input.is_empty() || input.iter().all(|m| m.payload_len() == 0) {
        return Err(Error::invalid_input("`input` must not be empty"));
    }
    let cx = match &request.idempotency_key {
        Some(key) => cx.with_extension(IdempotencyKey::new(key)?),
        None => cx,
    };
    let mut invocation = Invocation::new(input).with_context(cx);
    invocation.history = request.history.into_iter().map(Message::from).collect();
    invocation.metadata = request.metadata;
    Ok(invocation)
}

/// Runs an agent once. With an idempotency key (the `Idempotency-Key` header or the body's
/// `idempotency_key`) on a service that runs keyed invokes as jobs
/// ([`ApiBuilder::keyed_invokes_as_jobs`](crate::ApiBuilder::keyed_invokes_as_jobs)), the run is
/// a job with that key: the same key again awaits or answers from that job (streamed, as its
/// events replayed at the end), and a key used for another request is a 409.
#[utoipa::path(
    post,
    path = "/v1/agents/{agent}/invoke",
    tag = "agents",
    params(("agent" = String, Path, description = "The agent's name")),
    request_body = InvokeRequest,
    responses(
        (status = 200, description = "The reply (or, with `Accept: text/event-stream`, events `text_delta`, `tool_call_started`, `tool_call_finished`, `usage`, `done`, `error`)", body = InvokeResponse),
        (status = 400, description = "Malformed JSON, wrong types or empty input", body = ErrorBody),
        (status = 401, description = "Missing or bad credentials", body = ErrorBody),
        (status = 403, description = "The caller may not use this agent", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody),
        (status = 409, description = "The idempotency key was used for another request", body = ErrorBody),
        (status = 413, description = "Body over the limit", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 429, description = "Rate limited (see Retry-After)", body = ErrorBody),
        (status = 503, description = "A dependency is unavailable (see Retry-After)", body = ErrorBody),
        (status = 504, description = "Deadline exceeded", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn invoke(
    State(state): State<Arc<AppState>>,
    Extension(cx): Extension<Context>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiPath(agent): ApiPath<String>,
    ApiJson(mut request): ApiJson<InvokeRequest>,
) -> Result<Response, ApiError> {
    let mounted = state.agent(&agent, &principal)?;
    let request_id = cx.request_id().to_owned();
    request.idempotency_key = idempotency_key(request.idempotency_key.take(), &headers)?;
    // A keyed invoke runs as a job with that key (when the service says so), so a retry
    // (after a timeout or a dropped connection) awaits or answers from the first call's job
    // instead of running again.
    let queued = (state.jobs.as_ref())
        .filter(|_| state.keyed_invokes_as_jobs && request.idempotency_key.is_some())
        .map(|queue| QueueExecutor::new(queue.clone(), &agent));
    let invocation = invocation(request, cx)?;
    if wants_event_stream(&headers) {
        let events = match &queued {
            Some(queued) => queued.stream(invocation).await?,
            None => mounted.executor.stream(invocation).await?,
        };
        let origin = Origin {
            request_id,
            agent,
            session_id: None,
        };
        return Ok(sse_response(events, origin));
    }
    let reply = match &queued {
        Some(queued) => queued.execute(invocation).await?,
        None => mounted.executor.execute(invocation).await?,
    };
    Ok(ok_json(InvokeResponse::new(
        &request_id,
        &agent,
        reply,
        None,
    )))
}
