//! Conversion between agentkit's types and the wire format.

use std::borrow::Cow;

use crate::message::{ContentPart, Message, Role, StopReason, ToolCall, Usage};
use crate::model::{ModelRequest, ModelResponse, ToolChoice};

use super::wire::{
    ChatRequest, ChatResponse, StreamOptions, WireFunction, WireFunctionCall, WireJsonSchema,
    WireMessage, WireResponseFormat, WireTool, WireToolCall, WireUsage,
};

pub(super) fn request<'a>(
    model: &'a str,
    request: &'a ModelRequest<'a>,
    stream: bool,
) -> ChatRequest<'a> {
    let mut messages = Vec::with_capacity(request.messages.len() + 1);
    if let Some(system) = request.system {
        messages.push(WireMessage {
            role: "system",
            content: Some(Cow::Borrowed(system)),
            tool_calls: Vec::new(),
            tool_call_id: None,
        });
    }
    for message in request.messages {
        push_message(&mut messages, message);
    }
    let tools = request
        .tools
        .iter()
        .map(|t| WireTool {
            kind: "function",
            function: WireFunction {
                name: &t.name,
                description: &t.description,
                parameters: &t.parameters,
            },
        })
        .collect::<Vec<_>>();
    let tool_choice = if tools.is_empty() {
        None
    } else {
        Some(match &request.tool_choice {
            ToolChoice::Auto => "auto".into(),
            ToolChoice::None => "none".into(),
            ToolChoice::Required => "required".into(),
            ToolChoice::Tool(name) => {
                serde_json::json!({"type": "function", "function": {"name": name}})
            }
        })
    };
    ChatRequest {
        model,
        messages,
        tools,
        tool_choice,
        response_format: request.response_format.map(|f| WireResponseFormat {
            kind: "json_schema",
            json_schema: WireJsonSchema {
                name: &f.name,
                schema: &f.schema,
            },
        }),
        max_tokens: request.max_tokens,
        temperature: request.temperature,
        stream,
        stream_options: stream.then_some(StreamOptions {
            include_usage: true,
        }),
    }
}

fn push_message<'a>(out: &mut Vec<WireMessage<'a>>, message: &'a Message) {
    match message.role {
        Role::Tool => {
            // One wire message per result, as the API requires.
            for result in message.tool_results_iter() {
                out.push(WireMessage {
                    role: "tool",
                    content: Some(Cow::Borrowed(&result.content)),
                    tool_calls: Vec::new(),
                    tool_call_id: Some(&result.call_id),
                });
            }
        }
        role => {
            let text = text_of(message);
            let tool_calls: Vec<_> = message
                .tool_calls()
                .map(|c| WireToolCall {
                    id: &c.id,
                    kind: "function",
                    function: WireFunctionCall {
                        name: &c.name,
                        arguments: &c.arguments,
                    },
                })
                .collect();
            let content = if text.is_empty() && !tool_calls.is_empty() {
                None
            } else {
                Some(text)
            };
            out.push(WireMessage {
                role: role.as_str(),
                content,
                tool_calls,
                tool_call_id: None,
            });
        }
    }
}

fn text_of(message: &Message) -> Cow<'_, str> {
    let mut texts = message.content.iter().filter_map(|p| match p {
        ContentPart::Text { text } => Some(text.as_str()),
        _ => None,
    });
    match (texts.next(), texts.next()) {
        (None, _) => Cow::Borrowed(""),
        (Some(one), None) => Cow::Borrowed(one),
        _ => Cow::Owned(message.text_content()),
    }
}

pub(super) fn usage(wire: Option<WireUsage>) -> Usage {
    let wire = wire.unwrap_or_default();
    Usage {
        input_tokens: wire.prompt_tokens,
        output_tokens: wire.completion_tokens,
        cached_input_tokens: wire
            .prompt_tokens_details
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0),
    }
}

pub(super) fn stop_reason(reason: Option<&str>, has_calls: bool) -> StopReason {
    match reason {
        Some("stop") => StopReason::EndTurn,
        Some("tool_calls" | "function_call") => StopReason::ToolUse,
        Some("length") => StopReason::MaxTokens,
        Some("content_filter") => StopReason::ContentFilter,
        None if has_calls => StopReason::ToolUse,
        None => StopReason::EndTurn,
        Some(_) => StopReason::Other,
    }
}

/// The response, or `None` when it has no choice at all.
pub(super) fn response(wire: ChatResponse) -> Option<ModelResponse> {
    let choice = wire.choices.into_iter().next()?;
    let mut content = Vec::with_capacity(1 + choice.message.tool_calls.len());
    let text = choice
        .message
        .content
        .or(choice.message.refusal)
        .unwrap_or_default();
    if !text.is_empty() {
        content.push(ContentPart::Text { text });
    }
    let has_calls = !choice.message.tool_calls.is_empty();
    for (index, call) in choice.message.tool_calls.into_iter().enumerate() {
        content.push(ContentPart::ToolCall(ToolCall {
            id: if call.id.is_empty() {
                format!("call_{index}")
            } else {
                call.id
            },
            name: call.function.name,
            arguments: call.function.arguments,
        }));
    }
    Some(ModelResponse {
        message: Message {
            role: Role::Assistant,
            content,
        },
        usage: usage(wire.usage),
        stop_reason: stop_reason(choice.finish_reason.as_deref(), has_calls),
        model: wire.model,
    })
}
