//! Session routes: send a message, read, delete. Sessions belong to the caller's tenant; another
//! tenant asking for the same id gets 404.

use std::sync::Arc;

use agentkit_core::{Context, Error, Executor};
use agentkit_store::validate_key;
use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::api::dto::{ErrorBody, InvokeRequest, InvokeResponse, SessionDoc};
use crate::api::invoke::invocation;
use crate::api::{ApiJson, ApiPath, AppState, idempotency_key, ok_json, wants_event_stream};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::events::{Origin, sse_response};

/// Sessions of different agents never share history: the stored id is `{agent}/{session}`.
pub(crate) fn stored_id(agent: &str, session_id: &str) -> Result<String, Error> {
    if session_id.is_empty() || session_id.len() > 128 {
        return Err(Error::invalid_input(
            "a session id must be 1 to 128 bytes long",
        ));
    }
    let id = format!("{agent}/{session_id}");
    validate_key("tenant", &id)?;
    Ok(id)
}

/// Sends one message to a session and runs the turn. With an `Idempotency-Key`, a message
/// sent again after its answer was lost gets the recorded turn back (the session remembers its
/// last 16 keyed turns) instead of running and appending it twice.
#[utoipa::path(
    post,
    path = "/v1/agents/{agent}/sessions/{session_id}/messages",
    tag = "sessions",
    params(
        ("agent" = String, Path, description = "The agent's name"),
        ("session_id" = String, Path, description = "The session id (chosen by the caller)"),
        ("Idempotency-Key" = Option<String>, Header, description = "The same on every retry of this message (1-256 bytes): a retry gets the recorded turn back"),
    ),
    request_body = InvokeRequest,
    responses(
        (status = 200, description = "The turn's reply with `session_id` and `version` (or SSE with `Accept: text/event-stream`)", body = InvokeResponse),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 401, description = "Missing or bad credentials", body = ErrorBody),
        (status = 403, description = "The caller may not use this agent", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody),
        (status = 409, description = "`session_busy`: a turn is running and the agent rejects concurrent messages", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody),
        (status = 503, description = "The session store is unavailable", body = ErrorBody),
        (status = 504, description = "Deadline exceeded", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn post_message(
    State(state): State<Arc<AppState>>,
    Extension(cx): Extension<Context>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiPath((agent, session_id)): ApiPath<(String, String)>,
    ApiJson(mut request): ApiJson<InvokeRequest>,
) -> Result<Response, ApiError> {
    let mounted = state.agent(&agent, &principal)?;
    let stored = stored_id(&agent, &session_id)?;
    let request_id = cx.request_id().to_owned();
    request.idempotency_key = idempotency_key(request.idempotency_key.take(), &headers)?;
    let mut invocation = invocation(request, cx.with_session_id(stored))?;
    // A session's history comes from the store, never from the request.
    invocation.history.clear();
    if wants_event_stream(&headers) {
        let events = mounted.sessions.stream(invocation).await?;
        let origin = Origin {
            request_id,
            agent,
            session_id: Some(session_id),
        };
        return Ok(sse_response(events, origin));
    }
    let reply = mounted.sessions.execute(invocation).await?;
    Ok(ok_json(InvokeResponse::new(
        &request_id,
        &agent,
        reply,
        Some(&session_id),
    )))
}

/// Reads a session.
#[utoipa::path(
    get,
    path = "/v1/agents/{agent}/sessions/{session_id}",
    tag = "sessions",
    params(("agent" = String, Path), ("session_id" = String, Path)),
    responses(
        (status = 200, description = "The session", body = SessionDoc),
        (status = 404, description = "No such agent or session (for this tenant)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_session(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath((agent, session_id)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    state.agent(&agent, &principal)?;
    let stored = stored_id(&agent, &session_id)?;
    let session = state
        .store
        .load(&principal.tenant, &stored)
        .await?
        .ok_or_else(|| Error::not_found(format!("no session `{session_id}`")))?;
    Ok(ok_json(SessionDoc {
        session_id,
        version: session.version,
        messages: session.messages,
    }))
}

/// Deletes a session.
#[utoipa::path(
    delete,
    path = "/v1/agents/{agent}/sessions/{session_id}",
    tag = "sessions",
    params(("agent" = String, Path), ("session_id" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such agent or session (for this tenant)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn delete_session(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    ApiPath((agent, session_id)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    state.agent(&agent, &principal)?;
    let stored = stored_id(&agent, &session_id)?;
    if state.store.delete(&principal.tenant, &stored).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(Error::not_found(format!("no session `{session_id}`")).into())
    }
}
