//! `GET /v1/agents/{agent}/sessions/{session_id}/ws`: a WebSocket that takes `{"input": ...}`
//! frames and answers each with the session turn's events as JSON frames.
//!
//! Credentials come in the `Authorization` header or, for browsers (which cannot set headers on
//! a WebSocket), as the subprotocol `bearer.<credential>` offered beside `agentkit`; the server
//! then selects `agentkit`.

use std::sync::Arc;

use agentkit_core::{BoxExecutor, Context, Error, Executor};
use agentkit_store::SessionAgent;
use axum::Extension;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use futures::StreamExt;

use crate::api::dto::{ErrorBody, InvokeRequest};
use crate::api::invoke::invocation;
use crate::api::sessions::stored_id;
use crate::api::{ApiPath, AppState};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::events::{Origin, encode, encode_error, frame};

struct Socket {
    sessions: SessionAgent<BoxExecutor>,
    principal: Principal,
    base: Context,
    agent: String,
    session_id: String,
    stored: String,
    timeout: std::time::Duration,
    /// The largest frame taken, in bytes.
    body_limit: usize,
}

/// Opens a WebSocket on a session.
#[utoipa::path(
    get,
    path = "/v1/agents/{agent}/sessions/{session_id}/ws",
    tag = "sessions",
    params(("agent" = String, Path), ("session_id" = String, Path)),
    responses(
        (status = 101, description = "Switching protocols: send `{\"input\": ...}` text frames; each is answered with JSON frames `{\"type\": \"text_delta\" | \"tool_call_started\" | \"tool_call_finished\" | \"usage\" | \"done\" | \"error\", ...}`"),
        (status = 401, description = "Missing or bad credentials (in `Authorization`, or as the subprotocol `bearer.<credential>` beside `agentkit`)", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn session_socket(
    State(state): State<Arc<AppState>>,
    Extension(cx): Extension<Context>,
    Extension(principal): Extension<Principal>,
    ApiPath((agent, session_id)): ApiPath<(String, String)>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let mounted = state.agent(&agent, &principal)?;
    let stored = stored_id(&agent, &session_id)?;
    let socket = Socket {
        sessions: mounted.sessions.clone(),
        principal,
        base: cx,
        agent,
        session_id,
        stored,
        timeout: state.request_timeout,
        body_limit: state.body_limit,
    };
    Ok(upgrade
        .max_message_size(state.body_limit)
        .protocols(["agentkit"])
        .on_upgrade(move |ws| socket.serve(ws)))
}

impl Socket {
    /// A fresh context per message: its own request id and deadline, the connection's caller.
    fn context(&self, n: u64) -> Context {
        let mut cx = Context::new()
            .with_request_id(format!("{}-{n}", self.base.request_id()))
            .with_tenant(self.principal.tenant.as_str())
            .with_session_id(self.stored.as_str())
            .with_timeout(self.timeout);
        if let Some(subject) = &self.principal.subject {
            cx = cx.with_user(subject.as_str());
        }
        if let Some(scopes) = &self.principal.scopes {
            cx = cx.with_scopes(scopes.iter().cloned());
        }
        if let Some(trace) = self.base.trace() {
            cx = cx.with_trace(trace.new_child());
        }
        cx
    }

    async fn serve(self, mut ws: WebSocket) {
        let mut n = 0u64;
        while let Some(message) = ws.recv().await {
            let text = match message {
                Ok(Message::Text(text)) => text,
                Ok(Message::Binary(_)) => {
                    let error =
                        Error::invalid_input("send text frames with JSON: {\"input\": \"...\"}");
                    if send(
                        &mut ws,
                        frame("error", encode_error(error, self.base.request_id())),
                    )
                    .await
                    .is_err()
                    {
                        return;
                    }
                    continue;
                }
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(Message::Close(_)) => return,
                Err(error) => {
                    // Tell the client why, rather than dropping the connection: a frame over
                    // the body limit is 1009 (the error is matched by its text, as axum does
                    // not expose its WebSocket library's error type), anything else 1002.
                    let too_big = error.to_string().contains("Message too long");
                    let (code, reason) = if too_big {
                        (
                            close_code::SIZE,
                            format!("a frame is limited to {} bytes", self.body_limit),
                        )
                    } else {
                        (close_code::PROTOCOL, "invalid WebSocket frame".to_owned())
                    };
                    tracing::debug!(%error, code, "closing a websocket after a bad frame");
                    let close = CloseFrame {
                        code,
                        reason: reason.into(),
                    };
                    let _ = ws.send(Message::Close(Some(close))).await;
                    return;
                }
            };
            n += 1;
            let cx = self.context(n);
            let request_id = cx.request_id().to_owned();
            if self.turn(&mut ws, &text, cx).await.is_err() {
                tracing::debug!(request_id, "websocket closed during a turn");
                return;
            }
        }
    }

    /// Runs one turn, sending its events; `Err` when the socket is gone.
    async fn turn(&self, ws: &mut WebSocket, text: &str, cx: Context) -> Result<(), axum::Error> {
        let request_id = cx.request_id().to_owned();
        let started = serde_json::from_str::<InvokeRequest>(text)
            .map_err(|e| Error::invalid_input(format!("invalid frame: {e}")))
            .and_then(|request| invocation(request, cx));
        let events = match started {
            Ok(mut invocation) => {
                invocation.history.clear();
                self.sessions.stream(invocation).await
            }
            Err(error) => Err(error),
        };
        let mut events = match events {
            Ok(events) => events,
            Err(error) => return send(ws, frame("error", encode_error(error, &request_id))).await,
        };
        let origin = Origin {
            request_id: request_id.clone(),
            agent: self.agent.clone(),
            session_id: Some(self.session_id.clone()),
        };
        while let Some(event) = events.next().await {
            let out = match event {
                Ok(event) => {
                    let (name, data) = encode(event, &origin);
                    frame(name, data)
                }
                Err(error) => {
                    send(ws, frame("error", encode_error(error, &request_id))).await?;
                    return Ok(());
                }
            };
            send(ws, out).await?;
        }
        Ok(())
    }
}

async fn send(ws: &mut WebSocket, text: String) -> Result<(), axum::Error> {
    ws.send(Message::Text(text.into())).await
}
