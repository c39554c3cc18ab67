//! Folding a stream of [`ModelEvent`]s back into a [`ModelResponse`], and the reverse.

use crate::message::{ContentPart, Message, Role, StopReason, ToolCall, Usage};
use crate::model::{ModelEvent, ModelResponse};
use crate::{Error, Result};

/// The most tool calls one streamed answer may carry; a higher index is a protocol error.
const MAX_STREAMED_TOOL_CALLS: usize = 128;

/// Assembles streamed increments into a complete [`ModelResponse`].
///
/// Tool-call arguments may arrive split across any number of deltas; the pieces of one call
/// share an `index`, and the id and name come in the first piece.
#[derive(Debug, Default)]
pub struct ResponseBuilder {
    text: String,
    calls: Vec<PartialCall>,
    usage: Usage,
    stop_reason: Option<StopReason>,
    model: Option<String>,
}

#[derive(Debug, Default)]
struct PartialCall {
    id: Option<String>,
    name: Option<String>,
    arguments: String,
}

impl ResponseBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Folds one event in.
    pub fn push(&mut self, event: &ModelEvent) -> Result<()> {
        match event {
            ModelEvent::TextDelta(text) => self.text.push_str(text),
            ModelEvent::ToolCallDelta {
                index,
                id,
                name,
                arguments,
            } => {
                if *index >= MAX_STREAMED_TOOL_CALLS {
                    return Err(Error::unavailable(format!(
                        "malformed stream from the model provider: tool call index {index} is out of range"
                    )));
                }
                if self.calls.len() <= *index {
                    self.calls.resize_with(index + 1, PartialCall::default);
                }
                let call = &mut self.calls[*index];
                if let Some(id) = id.as_ref().filter(|id| !id.is_empty()) {
                    call.id = Some(id.clone());
                }
                if let Some(name) = name.as_ref().filter(|name| !name.is_empty()) {
                    match &mut call.name {
                        // Some servers stream the name in pieces as well.
                        Some(existing) if existing != name => existing.push_str(name),
                        Some(_) => {}
                        None => call.name = Some(name.clone()),
                    }
                }
                call.arguments.push_str(arguments);
            }
            ModelEvent::Usage(usage) => self.usage = *usage,
            ModelEvent::Finish { stop_reason, model } => {
                self.stop_reason = Some(*stop_reason);
                if model.is_some() {
                    self.model.clone_from(model);
                }
            }
        }
        Ok(())
    }

    /// The text received so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The complete response; an error if a tool call never received its name.
    pub fn finish(self) -> Result<ModelResponse> {
        let mut content = Vec::with_capacity(usize::from(!self.text.is_empty()) + self.calls.len());
        if !self.text.is_empty() {
            content.push(ContentPart::Text { text: self.text });
        }
        let has_calls = !self.calls.is_empty();
        for (index, call) in self.calls.into_iter().enumerate() {
            let name = call.name.ok_or_else(|| {
                Error::unavailable(format!(
                    "malformed stream from the model provider: tool call {index} has no name"
                ))
            })?;
            content.push(ContentPart::ToolCall(ToolCall {
                id: call.id.unwrap_or_else(|| format!("call_{index}")),
                name,
                arguments: call.arguments,
            }));
        }
        let stop_reason = match self.stop_reason {
            Some(reason) => reason,
            None if has_calls => StopReason::ToolUse,
            None => StopReason::EndTurn,
        };
        Ok(ModelResponse {
            message: Message {
                role: Role::Assistant,
                content,
            },
            usage: self.usage,
            stop_reason,
            model: self.model,
        })
    }

    /// The events that stream `response`: its text, each tool call, usage, finish.
    pub fn events_of(response: ModelResponse) -> Vec<ModelEvent> {
        let mut events = Vec::with_capacity(response.message.content.len() + 2);
        let mut index = 0;
        for part in response.message.content {
            match part {
                ContentPart::Text { text } => events.push(ModelEvent::TextDelta(text)),
                ContentPart::ToolCall(call) => {
                    events.push(ModelEvent::ToolCallDelta {
                        index,
                        id: Some(call.id),
                        name: Some(call.name),
                        arguments: call.arguments,
                    });
                    index += 1;
                }
                ContentPart::ToolResult(_) => {}
            }
        }
        events.push(ModelEvent::Usage(response.usage));
        events.push(ModelEvent::Finish {
            stop_reason: response.stop_reason,
            model: response.model,
        });
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_arguments_are_joined_per_call() {
        let mut b = ResponseBuilder::new();
        let events = [
            ModelEvent::ToolCallDelta {
                index: 0,
                id: Some("a".into()),
                name: Some("add".into()),
                arguments: "{\"a\":".into(),
            },
            ModelEvent::ToolCallDelta {
                index: 1,
                id: Some("b".into()),
                name: Some("add".into()),
                arguments: "{\"a\":3,".into(),
            },
            ModelEvent::ToolCallDelta {
                index: 0,
                id: None,
                name: None,
                arguments: "1,\"b\":2}".into(),
            },
            ModelEvent::ToolCallDelta {
                index: 1,
                id: None,
                name: None,
                arguments: "\"b\":4}".into(),
            },
            ModelEvent::Usage(Usage {
                input_tokens: 10,
                output_tokens: 5,
                cached_input_tokens: 0,
            }),
        ];
        for e in &events {
            b.push(e).unwrap();
        }
        let response = b.finish().unwrap();
        let calls: Vec<_> = response.message.tool_calls().collect();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].arguments, r#"{"a":1,"b":2}"#);
        assert_eq!(calls[1].arguments, r#"{"a":3,"b":4}"#);
        assert_eq!(response.stop_reason, StopReason::ToolUse);
        assert_eq!(response.usage.total_tokens(), 15);
    }

    #[test]
    fn hostile_indexes_and_nameless_calls_are_errors() {
        let mut b = ResponseBuilder::new();
        let huge = ModelEvent::ToolCallDelta {
            index: usize::MAX,
            id: None,
            name: None,
            arguments: String::new(),
        };
        assert!(b.push(&huge).is_err());
        let mut b = ResponseBuilder::new();
        b.push(&ModelEvent::ToolCallDelta {
            index: 0,
            id: None,
            name: None,
            arguments: "{}".into(),
        })
        .unwrap();
        assert!(b.finish().is_err());
    }
}
