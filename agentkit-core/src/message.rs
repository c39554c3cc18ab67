//! Conversation types that belong to no provider: messages, tool calls and results, usage.

use std::ops::{Add, AddAssign};

use serde::{Deserialize, Serialize};

/// Who wrote a [`Message`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Instructions that frame the conversation.
    System,
    /// The end user (or the calling program).
    User,
    /// The model.
    Assistant,
    /// Results of tool calls, sent back to the model.
    Tool,
}

impl Role {
    /// The lowercase name (`"user"`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Tool => "tool",
        }
    }
}

/// A model's request to call a tool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Identifier the result must quote back.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments exactly as the model wrote them: JSON text, possibly invalid.
    pub arguments: String,
}

/// The outcome of a tool call, sent back to the model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolResult {
    /// The [`ToolCall::id`] this answers.
    pub call_id: String,
    /// The tool's output (usually JSON text), or a description of the error.
    pub content: String,
    /// Whether `content` describes an error the model should correct.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_error: bool,
}

/// One part of a message's content.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", try_from = "RawPart")]
pub enum ContentPart {
    /// Plain text.
    Text {
        /// The text.
        text: String,
    },
    /// A tool call made by the assistant.
    ToolCall(ToolCall),
    /// A tool result sent back to the model.
    ToolResult(ToolResult),
}

/// [`ContentPart`] as it is read: serde's internally tagged enums buffer every part into an
/// intermediate tree before choosing the variant. One flat struct reads in a single pass; the
/// variant is chosen afterwards. The wire format is the same.
#[derive(Deserialize)]
struct RawPart {
    #[serde(rename = "type")]
    kind: PartKind,
    text: Option<String>,
    id: Option<String>,
    name: Option<String>,
    arguments: Option<String>,
    call_id: Option<String>,
    content: Option<String>,
    #[serde(default)]
    is_error: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum PartKind {
    Text,
    ToolCall,
    ToolResult,
}

impl TryFrom<RawPart> for ContentPart {
    type Error = String;

    fn try_from(raw: RawPart) -> Result<Self, String> {
        fn field(value: Option<String>, name: &str) -> Result<String, String> {
            value.ok_or_else(|| format!("missing field `{name}`"))
        }
        Ok(match raw.kind {
            PartKind::Text => Self::Text {
                text: field(raw.text, "text")?,
            },
            PartKind::ToolCall => Self::ToolCall(ToolCall {
                id: field(raw.id, "id")?,
                name: field(raw.name, "name")?,
                arguments: field(raw.arguments, "arguments")?,
            }),
            PartKind::ToolResult => Self::ToolResult(ToolResult {
                call_id: field(raw.call_id, "call_id")?,
                content: field(raw.content, "content")?,
                is_error: raw.is_error,
            }),
        })
    }
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// Its parts, in order.
    pub content: Vec<ContentPart>,
}

impl Message {
    /// A message of `role` holding one text part.
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Self {
            role,
            content: vec![ContentPart::Text { text: text.into() }],
        }
    }

    /// A user message.
    pub fn user(text: impl Into<String>) -> Self {
        Self::text(Role::User, text)
    }

    /// An assistant message.
    pub fn assistant(text: impl Into<String>) -> Self {
        Self::text(Role::Assistant, text)
    }

    /// A system message.
    pub fn system(text: impl Into<String>) -> Self {
        Self::text(Role::System, text)
    }

    /// A tool message carrying results.
    pub fn tool_results(results: impl IntoIterator<Item = ToolResult>) -> Self {
        Self {
            role: Role::Tool,
            content: results.into_iter().map(ContentPart::ToolResult).collect(),
        }
    }

    /// The concatenation of the text parts.
    pub fn text_content(&self) -> String {
        let mut parts = self.content.iter().filter_map(|p| match p {
            ContentPart::Text { text } => Some(text.as_str()),
            _ => None,
        });
        match (parts.next(), parts.next()) {
            (None, _) => String::new(),
            (Some(one), None) => one.to_owned(),
            (Some(first), Some(second)) => {
                let mut out = String::from(first);
                out.push_str(second);
                parts.for_each(|p| out.push_str(p));
                out
            }
        }
    }

    /// The tool calls in this message, in order.
    pub fn tool_calls(&self) -> impl Iterator<Item = &ToolCall> {
        self.content.iter().filter_map(|p| match p {
            ContentPart::ToolCall(call) => Some(call),
            _ => None,
        })
    }

    /// The tool results in this message, in order.
    pub fn tool_results_iter(&self) -> impl Iterator<Item = &ToolResult> {
        self.content.iter().filter_map(|p| match p {
            ContentPart::ToolResult(result) => Some(result),
            _ => None,
        })
    }

    /// Whether this message asks for at least one tool call.
    pub fn has_tool_calls(&self) -> bool {
        self.content
            .iter()
            .any(|p| matches!(p, ContentPart::ToolCall(_)))
    }

    /// Total length in bytes of the textual payload (text, arguments, results).
    pub fn payload_len(&self) -> usize {
        self.content
            .iter()
            .map(|p| match p {
                ContentPart::Text { text } => text.len(),
                ContentPart::ToolCall(c) => c.name.len() + c.arguments.len(),
                ContentPart::ToolResult(r) => r.content.len(),
            })
            .sum()
    }
}

/// Tokens spent by one model call, or summed over a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens, including cached ones.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// The part of `input_tokens` served from the provider's prompt cache.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached_input_tokens: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Usage {
    /// Input plus output tokens.
    pub const fn total_tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }
}

impl Add for Usage {
    type Output = Usage;

    fn add(mut self, rhs: Usage) -> Usage {
        self += rhs;
        self
    }
}

impl AddAssign for Usage {
    fn add_assign(&mut self, rhs: Usage) {
        self.input_tokens += rhs.input_tokens;
        self.output_tokens += rhs.output_tokens;
        self.cached_input_tokens += rhs.cached_input_tokens;
    }
}

/// Why the model stopped generating.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// A natural end of the answer.
    #[default]
    EndTurn,
    /// The model asked for tool calls.
    ToolUse,
    /// The output token limit was reached.
    MaxTokens,
    /// The provider's content filter stopped the output.
    ContentFilter,
    /// A reason this version does not know.
    Other,
}

impl StopReason {
    /// The `snake_case` name, as used in the GenAI `finish_reasons`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::EndTurn => "stop",
            Self::ToolUse => "tool_calls",
            Self::MaxTokens => "length",
            Self::ContentFilter => "content_filter",
            Self::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_json() {
        let message = Message {
            role: Role::Assistant,
            content: vec![
                ContentPart::Text {
                    text: "let me add".into(),
                },
                ContentPart::ToolCall(ToolCall {
                    id: "c1".into(),
                    name: "add".into(),
                    arguments: r#"{"a":1,"b":2}"#.into(),
                }),
            ],
        };
        let json = serde_json::to_string(&message).unwrap();
        assert!(json.contains(r#""type":"tool_call""#), "{json}");
        let back: Message = serde_json::from_str(&json).unwrap();
        assert_eq!(back, message);
        assert_eq!(back.tool_calls().count(), 1);
        assert_eq!(back.text_content(), "let me add");
    }

    #[test]
    fn parts_read_in_any_key_order_and_bad_ones_are_named() {
        let parts: Vec<ContentPart> = serde_json::from_str(
            r#"[{"content":"boom","call_id":"c1","type":"tool_result","is_error":true},
                {"type":"tool_result","call_id":"c2","content":"42","extra":1},
                {"text":"hi","type":"text"}]"#,
        )
        .unwrap();
        assert_eq!(
            parts,
            vec![
                ContentPart::ToolResult(ToolResult {
                    call_id: "c1".into(),
                    content: "boom".into(),
                    is_error: true,
                }),
                ContentPart::ToolResult(ToolResult {
                    call_id: "c2".into(),
                    content: "42".into(),
                    is_error: false,
                }),
                ContentPart::Text { text: "hi".into() },
            ]
        );
        let missing =
            serde_json::from_str::<ContentPart>(r#"{"type":"tool_call","id":"c1","name":"add"}"#)
                .unwrap_err();
        assert!(
            missing.to_string().contains("missing field `arguments`"),
            "{missing}"
        );
        let unknown =
            serde_json::from_str::<ContentPart>(r#"{"type":"image","url":"x"}"#).unwrap_err();
        assert!(
            unknown.to_string().contains("unknown variant `image`"),
            "{unknown}"
        );
        let untyped = serde_json::from_str::<ContentPart>(r#"{"text":"hi"}"#).unwrap_err();
        assert!(
            untyped.to_string().contains("missing field `type`"),
            "{untyped}"
        );
    }

    #[test]
    fn usage_adds_up() {
        let a = Usage {
            input_tokens: 3,
            output_tokens: 4,
            cached_input_tokens: 1,
        };
        let sum = a + a;
        assert_eq!(sum.total_tokens(), 14);
        assert_eq!(sum.cached_input_tokens, 2);
    }
}
