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

    /// Checks that the messages of a run (`history`, then `input`) make a conversation a model
    /// can be sent, as hosted providers require: tool calls only in assistant messages; tool
    /// results only in tool messages, which hold nothing else; each result answering a call of
    /// the assistant message before it that has no result yet; and every call answered before
    /// the conversation goes on or ends.
    ///
    /// The error ([`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput)) names the first
    /// message at fault by its list and place (`input[1]`). Call ids need only be unique
    /// within one assistant message: models such as the scripted one reuse them from turn to
    /// turn.
    ///
    /// ```
    /// use agentkit_core::{ContentPart, ErrorKind, Message, Role, ToolResult};
    ///
    /// let stray = Message::tool_results([ToolResult {
    ///     call_id: "call_1".into(),
    ///     content: "42".into(),
    ///     is_error: false,
    /// }]);
    /// let error = Message::check_conversation(&[], &[stray]).unwrap_err();
    /// assert_eq!(error.kind(), ErrorKind::InvalidInput);
    /// assert!(Message::check_conversation(&[], &[Message::user("hi")]).is_ok());
    /// ```
    pub fn check_conversation(history: &[Message], input: &[Message]) -> crate::Result<()> {
        let named = |list: &str, at: usize, why: String| {
            crate::Error::invalid_input(format!("{list}[{at}]: {why}"))
        };
        let messages = (history.iter().enumerate().map(|(i, m)| ("history", i, m)))
            .chain(input.iter().enumerate().map(|(i, m)| ("input", i, m)));
        // The calls of the last assistant message that have no result yet.
        let mut open: Vec<&str> = Vec::new();
        let mut asked_at = ("input", 0);
        for (list, at, message) in messages {
            if message.role == Role::Tool {
                if message.content.is_empty() {
                    return Err(named(list, at, "a tool message holds no results".into()));
                }
                for part in &message.content {
                    let ContentPart::ToolResult(result) = part else {
                        return Err(named(
                            list,
                            at,
                            "a tool message holds only tool results".into(),
                        ));
                    };
                    let Some(found) = open.iter().position(|id| *id == result.call_id) else {
                        return Err(named(
                            list,
                            at,
                            format!(
                                "the tool result for `{}` answers no open call of the assistant \
                                 message before it",
                                result.call_id
                            ),
                        ));
                    };
                    open.swap_remove(found);
                }
                continue;
            }
            if let Some(id) = open.first() {
                let (asked_list, asked) = asked_at;
                return Err(named(
                    list,
                    at,
                    format!(
                        "the tool call `{id}` of {asked_list}[{asked}] has no result before it"
                    ),
                ));
            }
            for part in &message.content {
                match part {
                    ContentPart::ToolCall(call) if message.role == Role::Assistant => {
                        open.push(&call.id);
                    }
                    ContentPart::ToolCall(_) => {
                        return Err(named(
                            list,
                            at,
                            format!("a {} message cannot hold tool calls", message.role.as_str()),
                        ));
                    }
                    ContentPart::ToolResult(_) => {
                        return Err(named(
                            list,
                            at,
                            format!(
                                "a {} message cannot hold tool results (they go in tool messages)",
                                message.role.as_str()
                            ),
                        ));
                    }
                    ContentPart::Text { .. } => {}
                }
            }
            asked_at = (list, at);
        }
        match open.first() {
            Some(id) => {
                let (list, at) = asked_at;
                Err(named(
                    list,
                    at,
                    format!("the tool call `{id}` has no result"),
                ))
            }
            None => Ok(()),
        }
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

    fn call(id: &str) -> ContentPart {
        ContentPart::ToolCall(ToolCall {
            id: id.into(),
            name: "add".into(),
            arguments: "{}".into(),
        })
    }

    fn result(id: &str) -> ContentPart {
        ContentPart::ToolResult(ToolResult {
            call_id: id.into(),
            content: "3".into(),
            is_error: false,
        })
    }

    fn message(role: Role, content: Vec<ContentPart>) -> Message {
        Message { role, content }
    }

    /// The message a conversation check blames, or `None` when it passes.
    fn blamed(history: &[Message], input: &[Message]) -> Option<String> {
        Message::check_conversation(history, input).err().map(|e| {
            assert_eq!(e.kind(), crate::ErrorKind::InvalidInput);
            e.message().split(':').next().unwrap().to_owned()
        })
    }

    #[test]
    fn well_formed_conversations_pass() {
        let turn = [
            Message::system("be brief"),
            Message::user("1 + 2 and 3 + 4?"),
            message(Role::Assistant, vec![call("c1"), call("c2")]),
            message(Role::Tool, vec![result("c2")]),
            message(Role::Tool, vec![result("c1")]),
            Message::assistant("3 and 7"),
        ];
        assert_eq!(blamed(&[], &turn), None);
        // Ids repeat from turn to turn; a call asked in the history is answered in the input.
        assert_eq!(blamed(&turn, &turn[1..]), None);
        assert_eq!(blamed(&turn[..3], &turn[3..5]), None);
        assert_eq!(blamed(&[], &[Message::system("only this")]), None);
        assert_eq!(blamed(&[], &[Message::assistant("go on")]), None);
    }

    #[test]
    fn malformed_conversations_name_the_message_at_fault() {
        let asked = message(Role::Assistant, vec![call("c1"), call("c2")]);
        let cases: [(&[Message], &[Message], &str); 8] = [
            (&[], &[message(Role::Tool, vec![result("c1")])], "input[0]"),
            (
                &[],
                &[Message::tool_results([]), Message::user("x")],
                "input[0]",
            ),
            (
                &[],
                &[message(
                    Role::Tool,
                    vec![ContentPart::Text { text: "5".into() }],
                )],
                "input[0]",
            ),
            (&[], &[message(Role::User, vec![call("c1")])], "input[0]"),
            (&[], &[message(Role::User, vec![result("c1")])], "input[0]"),
            (
                &[],
                &[
                    asked.clone(),
                    message(Role::Tool, vec![result("c1")]),
                    Message::user("and?"),
                ],
                "input[2]",
            ),
            (
                &[Message::user("x"), asked.clone()],
                &[Message::user("y")],
                "input[0]",
            ),
            (&[], &[Message::user("x"), asked.clone()], "input[1]"),
        ];
        for (history, input, at) in cases {
            assert_eq!(blamed(history, input).as_deref(), Some(at), "{input:?}");
        }
        // A result answers only the assistant message right before it, once.
        let twice = [
            asked.clone(),
            message(Role::Tool, vec![result("c1"), result("c1")]),
        ];
        assert_eq!(blamed(&[], &twice).as_deref(), Some("input[1]"));
        let stale = [
            message(Role::Assistant, vec![call("c9")]),
            message(Role::Tool, vec![result("c9")]),
            Message::assistant("done"),
            message(Role::Tool, vec![result("c9")]),
        ];
        assert_eq!(
            blamed(&stale[..2], &stale[2..]).as_deref(),
            Some("input[1]")
        );
    }

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
