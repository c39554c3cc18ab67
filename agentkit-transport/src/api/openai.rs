//! OpenAI-compatible routes: `POST /v1/chat/completions` (where `model` names an agent) and
//! `GET /v1/models`, so any OpenAI client library can call an agent. Errors use OpenAI's shape.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use agentkit_core::{
    AgentEvent, ContentPart, Context, Error, Executor, Invocation, Message, Reply, Role, ToolCall,
    ToolResult,
};
use axum::Extension;
use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::api::{ApiJson, AppState, ok_json};
use crate::auth::Principal;
use crate::error::ApiError;

/// A chat message as OpenAI clients send it.
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub(crate) struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub(crate) role: String,
    /// Text, or a list of `{"type": "text", "text": ...}` parts.
    #[serde(default, deserialize_with = "chat_content")]
    #[schema(value_type = Object)]
    pub(crate) content: String,
    /// For `tool` messages: the call answered.
    #[serde(default)]
    pub(crate) tool_call_id: Option<String>,
    /// For `assistant` messages: the calls it made, which the `tool` messages after it answer.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub(crate) tool_calls: Vec<ChatToolCall>,
}

/// A tool call of an assistant message, as OpenAI clients send it back in the history.
#[derive(Clone, Debug, Deserialize)]
pub(crate) struct ChatToolCall {
    id: String,
    function: ChatFunction,
}

/// The function a [`ChatToolCall`] names.
#[derive(Clone, Debug, Deserialize)]
struct ChatFunction {
    name: String,
    #[serde(default)]
    arguments: String,
}

fn chat_content<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Content {
        Text(String),
        Parts(Vec<Value>),
        Null(()),
    }
    Ok(match Content::deserialize(d)? {
        Content::Text(text) => text,
        Content::Parts(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        Content::Null(_) => String::new(),
    })
}

/// Options of a streamed completion.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
pub(crate) struct StreamOptions {
    /// Send a last chunk with the usage.
    #[serde(default)]
    pub(crate) include_usage: bool,
}

/// `POST /v1/chat/completions`; fields this service does not use (temperature, ...) are accepted
/// and ignored: the agent decides. Two that would change what the caller gets back are
/// refused instead: `n` above 1 (one choice comes back) and the caller's own `tools` (the
/// agent runs its own and answers with text, never with calls for the caller to make).
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub(crate) struct ChatCompletionRequest {
    /// The agent to run.
    pub(crate) model: String,
    /// The conversation; it must end with a user message.
    pub(crate) messages: Vec<ChatMessage>,
    /// Stream chunks over SSE.
    #[serde(default)]
    pub(crate) stream: bool,
    /// Streaming options.
    #[serde(default)]
    pub(crate) stream_options: Option<StreamOptions>,
    /// Choices wanted: only 1.
    #[serde(default)]
    pub(crate) n: Option<u32>,
    /// The caller's own tools: none (the agent has its own).
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub(crate) tools: Option<Vec<Value>>,
}

impl ChatCompletionRequest {
    /// Refuses what this route cannot do as asked, rather than answering something else.
    fn check(&self) -> Result<(), Error> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(Error::invalid_input(
                "`n` must be 1: an agent gives one answer per request",
            ));
        }
        if self.tools.as_ref().is_some_and(|tools| !tools.is_empty()) {
            return Err(Error::invalid_input(
                "`tools` is not supported: the agent runs its own tools and answers with text",
            ));
        }
        Ok(())
    }
}

fn to_message(m: ChatMessage) -> Result<Message, Error> {
    Ok(match m.role.as_str() {
        "system" | "developer" => Message::system(m.content),
        "user" => Message::user(m.content),
        "assistant" if m.tool_calls.is_empty() => Message::assistant(m.content),
        "assistant" => {
            let text = (!m.content.is_empty()).then_some(ContentPart::Text { text: m.content });
            let calls = m.tool_calls.into_iter().map(|call| {
                ContentPart::ToolCall(ToolCall {
                    id: call.id,
                    name: call.function.name,
                    arguments: call.function.arguments,
                })
            });
            Message {
                role: Role::Assistant,
                content: text.into_iter().chain(calls).collect(),
            }
        }
        "tool" => Message::tool_results([ToolResult {
            call_id: m.tool_call_id.unwrap_or_default(),
            content: m.content,
            is_error: false,
        }]),
        other => {
            return Err(Error::invalid_input(format!(
                "unknown message role `{other}`"
            )));
        }
    })
}

/// Splits the conversation: the trailing user messages are the input, the rest the history.
fn split(request_messages: Vec<ChatMessage>) -> Result<(Vec<Message>, Vec<Message>), Error> {
    let mut messages = request_messages
        .into_iter()
        .map(to_message)
        .collect::<Result<Vec<_>, _>>()?;
    let first_input = messages
        .iter()
        .rposition(|m| m.role != Role::User)
        .map_or(0, |i| i + 1);
    let input = messages.split_off(first_input);
    if input.is_empty() || input.iter().all(|m| m.payload_len() == 0) {
        return Err(Error::invalid_input(
            "`messages` must end with a non-empty user message",
        ));
    }
    Ok((messages, input))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn usage_doc(reply: &Reply) -> Value {
    json!({
        "prompt_tokens": reply.usage.input_tokens,
        "completion_tokens": reply.usage.output_tokens,
        "total_tokens": reply.usage.total_tokens(),
    })
}

/// Runs an agent as an OpenAI chat completion.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "openai",
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "A `chat.completion` (or, with `stream: true`, `chat.completion.chunk` events ending in `[DONE]`)", content_type = "application/json"),
        (status = 400, description = "OpenAI-shaped error: `invalid_request_error`"),
        (status = 401, description = "OpenAI-shaped error: `authentication_error`"),
        (status = 404, description = "No agent by that `model`"),
        (status = 429, description = "Rate limited"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Extension(cx): Extension<Context>,
    Extension(principal): Extension<Principal>,
    ApiJson(request): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let mounted = state.agent(&request.model, &principal)?;
    request.check()?;
    let (history, input) = split(request.messages)?;
    let id = format!("chatcmpl-{}", cx.request_id());
    let invocation = Invocation::new(input)
        .with_history(history)
        .with_context(cx);
    let model = request.model;
    if !request.stream {
        let reply = mounted.executor.execute(invocation).await?;
        return Ok(ok_json(json!({
            "id": id,
            "object": "chat.completion",
            "created": now(),
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": reply.output, "refusal": null},
                "logprobs": null,
                "finish_reason": "stop",
            }],
            "usage": usage_doc(&reply),
        })));
    }
    let include_usage = request.stream_options.is_some_and(|o| o.include_usage);
    let events = mounted.executor.stream(invocation).await?;
    let created = now();
    let chunk = move |delta: Value, finish: Option<&str>| {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        })
    };
    let first = chunk(json!({"role": "assistant", "content": ""}), None);
    let body = futures::stream::once(async move { Some(first) })
        .chain(events.flat_map(move |event| {
            let out: Vec<Value> = match event {
                Ok(AgentEvent::TextDelta { text }) => vec![chunk(json!({"content": text}), None)],
                Ok(AgentEvent::Done(reply)) => {
                    let mut last = vec![chunk(json!({}), Some("stop"))];
                    if include_usage {
                        let mut usage = chunk(json!({}), None);
                        usage["choices"] = json!([]);
                        usage["usage"] = usage_doc(&reply);
                        last.push(usage);
                    }
                    last
                }
                Ok(_) => Vec::new(),
                Err(error) => {
                    let api = ApiError::from(error);
                    vec![json!({"error": {"message": api.message(), "type": "server_error", "param": null, "code": api.code()}})]
                }
            };
            futures::stream::iter(out.into_iter().map(Some))
        }))
        .chain(futures::stream::once(async { None }))
        .map(move |item| {
            let data = match item {
                Some(value) => value.to_string(),
                None => "[DONE]".to_owned(),
            };
            Ok::<_, std::convert::Infallible>(Event::default().data(data))
        });
    Ok(Sse::new(body).into_response())
}

/// Lists the agents this caller may use, as OpenAI models.
#[utoipa::path(get, path = "/v1/models", tag = "openai", responses((status = 200, description = "`{\"object\": \"list\", \"data\": [...]}`")), security(("bearer" = [])))]
pub(crate) async fn list_models(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
) -> Response {
    let mut names: Vec<&String> = state
        .agents
        .keys()
        .filter(|name| state.agent(name, &principal).is_ok())
        .collect();
    names.sort();
    let data: Vec<Value> = names
        .into_iter()
        .map(|name| json!({"id": name, "object": "model", "created": 0, "owned_by": "agentkit"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}
