//! The wire shapes of the HTTP API, documented in the OpenAPI description.

use agentkit_core::{ContentPart, Message, Reply, Role};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

/// One message as callers may write it: `content` is a string or a list of parts.
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct InputMessage {
    /// Who wrote it.
    #[schema(value_type = RoleDoc)]
    pub role: Role,
    /// Text, or the parts of the message (as returned in `messages`).
    #[serde(deserialize_with = "content")]
    #[schema(value_type = ContentDoc)]
    pub content: Vec<ContentPart>,
}

fn content<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ContentPart>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Content {
        Text(String),
        Parts(Vec<ContentPart>),
    }
    Ok(match Content::deserialize(d)? {
        Content::Text(text) => vec![ContentPart::Text { text }],
        Content::Parts(parts) => parts,
    })
}

impl From<InputMessage> for Message {
    fn from(m: InputMessage) -> Self {
        Message {
            role: m.role,
            content: m.content,
        }
    }
}

/// A message as the API returns it (`messages` of replies and sessions): the schema of
/// [`Message`]'s wire format, for the OpenAPI description.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct MessageDoc {
    /// Who wrote it.
    pub role: RoleDoc,
    /// Its parts, in order.
    pub content: Vec<PartDoc>,
}

/// Who wrote a message: the schema of [`Role`].
#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoleDoc {
    /// Instructions.
    System,
    /// The person (or program) talking to the agent.
    User,
    /// The model.
    Assistant,
    /// Tool results.
    Tool,
}

/// One part of a message, told apart by `type`: the schema of [`ContentPart`].
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PartDoc {
    /// Plain text.
    Text {
        /// The text.
        text: String,
    },
    /// A tool call made by the assistant.
    ToolCall {
        /// The id its result quotes back.
        id: String,
        /// The tool.
        name: String,
        /// The arguments as the model wrote them (JSON text).
        arguments: String,
    },
    /// A tool's result, sent back to the model.
    ToolResult {
        /// The id of the call it answers.
        call_id: String,
        /// The output (usually JSON text), or a description of the error.
        content: String,
        /// Whether `content` describes an error (omitted when false).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        is_error: bool,
    },
}

/// A message's content as callers may write it: text, or parts.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ContentDoc {
    /// One text part.
    Text(String),
    /// The parts, as returned in `messages`.
    Parts(Vec<PartDoc>),
}

/// Text, or a list of messages.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Input {
    /// One user message.
    Text(String),
    /// Several messages.
    Messages(Vec<InputMessage>),
}

impl Input {
    pub(crate) fn into_messages(self) -> Vec<Message> {
        match self {
            Input::Text(text) => vec![Message::user(text)],
            Input::Messages(messages) => messages.into_iter().map(Message::from).collect(),
        }
    }
}

/// `POST /v1/agents/{agent}/invoke` and session messages.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvokeRequest {
    /// The input: text or messages.
    pub input: Input,
    /// Prior conversation for a stateless call (ignored by session routes, whose history is stored).
    #[serde(default)]
    pub history: Vec<InputMessage>,
    /// Caller metadata; also the variables of the agent's prompt template.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The same on every retry of this message (1-256 bytes; or the `Idempotency-Key` header):
    /// a session message or WebSocket frame sent again with it gets the recorded turn back
    /// instead of running twice. A stateless invoke records nothing, so it has no effect there.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// Tokens of a reply.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct UsageDoc {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
}

/// One tool call of a reply.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ToolCallDoc {
    /// The model's call id.
    #[serde(default)]
    pub id: String,
    /// The tool.
    pub name: String,
    /// The arguments as the model wrote them (JSON text).
    pub arguments: String,
    /// Whether the tool answered without error.
    pub ok: bool,
    /// Wall time.
    pub duration_ms: f64,
    /// The error sent back to the model, when the call failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The answer of an invocation (and, with `session_id` and `version`, of a session turn).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct InvokeResponse {
    /// The request id.
    pub request_id: String,
    /// The agent that answered.
    pub agent: String,
    /// The final answer.
    pub output: String,
    /// The messages this turn added.
    #[schema(value_type = Vec<MessageDoc>)]
    pub messages: Vec<Message>,
    /// Tokens spent.
    pub usage: UsageDoc,
    /// Cost in US dollars.
    pub cost_usd: f64,
    /// The tool calls made.
    pub tool_calls: Vec<ToolCallDoc>,
    /// The session, for session turns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The session's version after the turn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

impl InvokeResponse {
    pub(crate) fn new(
        request_id: &str,
        agent: &str,
        reply: Reply,
        session_id: Option<&str>,
    ) -> Self {
        Self {
            request_id: request_id.to_owned(),
            agent: agent.to_owned(),
            output: reply.output,
            messages: reply.messages,
            usage: UsageDoc {
                input_tokens: reply.usage.input_tokens,
                output_tokens: reply.usage.output_tokens,
            },
            cost_usd: reply.cost_usd,
            tool_calls: reply
                .tool_calls
                .into_iter()
                .map(|t| ToolCallDoc {
                    id: t.id,
                    name: t.name,
                    arguments: t.arguments,
                    ok: t.ok,
                    duration_ms: t.duration.as_secs_f64() * 1000.0,
                    error: t.error,
                })
                .collect(),
            version: reply.session.as_ref().map(|s| s.version),
            session_id: session_id.map(str::to_owned),
        }
    }
}

impl InvokeResponse {
    /// The reply this response describes (for clients of the API, such as
    /// [`RemoteExecutor`](crate::RemoteExecutor)).
    pub fn into_reply(self) -> Reply {
        Reply {
            output: self.output,
            messages: self.messages,
            usage: agentkit_core::Usage {
                input_tokens: self.usage.input_tokens,
                output_tokens: self.usage.output_tokens,
                cached_input_tokens: 0,
            },
            cost_usd: self.cost_usd,
            tool_calls: self
                .tool_calls
                .into_iter()
                .map(|t| agentkit_core::tool::ToolCallRecord {
                    id: t.id,
                    name: t.name,
                    arguments: t.arguments,
                    ok: t.ok,
                    duration: std::time::Duration::from_secs_f64(t.duration_ms.max(0.0) / 1000.0),
                    error: t.error,
                })
                .collect(),
            stop_reason: agentkit_core::StopReason::EndTurn,
            model: String::new(),
            steps: 0,
            session: match (self.session_id, self.version) {
                (Some(id), Some(version)) => Some(agentkit_core::SessionState { id, version }),
                _ => None,
            },
        }
    }
}

/// `GET /v1/agents/{agent}/sessions/{session_id}`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionDoc {
    /// The session id.
    pub session_id: String,
    /// Its version.
    pub version: u64,
    /// Its history.
    #[schema(value_type = Vec<MessageDoc>)]
    pub messages: Vec<Message>,
}

/// The error body of every route except the OpenAI-compatible ones.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable `snake_case` code (`invalid_input`, `session_busy`, `rate_limited`, ...).
    pub code: String,
    /// A message for humans.
    pub message: String,
    /// The request id, to quote when reporting the problem.
    pub request_id: String,
}

/// `GET /healthz` and `GET /readyz`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct HealthDoc {
    /// `ok`, `ready` or `unavailable`.
    pub status: String,
    /// Per dependency: `ok` or the error.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub checks: std::collections::BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentkit_core::{ToolCall, ToolResult};

    /// The schema types describe what the API really sends: a message with every kind of part
    /// reads into them and writes back unchanged.
    #[test]
    fn message_docs_match_the_wire_format() {
        let messages = [
            Message {
                role: Role::Assistant,
                content: vec![
                    ContentPart::Text {
                        text: "adding".into(),
                    },
                    ContentPart::ToolCall(ToolCall {
                        id: "c1".into(),
                        name: "add".into(),
                        arguments: r#"{"a":1}"#.into(),
                    }),
                ],
            },
            Message::tool_results([
                ToolResult {
                    call_id: "c1".into(),
                    content: "oops".into(),
                    is_error: true,
                },
                ToolResult {
                    call_id: "c2".into(),
                    content: "2".into(),
                    is_error: false,
                },
            ]),
        ];
        for message in messages {
            let wire = serde_json::to_value(&message).unwrap();
            let doc: MessageDoc = serde_json::from_value(wire.clone()).unwrap();
            assert_eq!(serde_json::to_value(&doc).unwrap(), wire);
        }
    }
}
