//! Server-sent chat-completion chunks → [`ModelEvent`]s.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use eventsource_stream::Event;
use futures::Stream;
use futures::stream::BoxStream;

use crate::model::ModelEvent;
use crate::{Error, Result};

use super::convert;
use super::wire::ChatChunk;

type RawEvents = BoxStream<'static, std::result::Result<Event, Error>>;

/// Turns SSE events into model events; finishes after `[DONE]`, or at the end of the body when
/// a finish reason arrived (some servers omit `[DONE]`).
pub(super) struct ChunkStream {
    events: RawEvents,
    queue: VecDeque<ModelEvent>,
    finish_reason: Option<String>,
    saw_calls: bool,
    model: Option<String>,
    done: bool,
}

impl ChunkStream {
    pub(super) fn new(events: RawEvents) -> Self {
        Self {
            events,
            queue: VecDeque::new(),
            finish_reason: None,
            saw_calls: false,
            model: None,
            done: false,
        }
    }

    fn finish(&mut self) {
        self.done = true;
        self.queue.push_back(ModelEvent::Finish {
            stop_reason: convert::stop_reason(self.finish_reason.as_deref(), self.saw_calls),
            model: self.model.take(),
        });
    }

    fn absorb(&mut self, data: &str) -> Result<()> {
        let chunk: ChatChunk = serde_json::from_str(data).map_err(|e| {
            Error::unavailable(format!(
                "malformed stream chunk from the model provider: {e}"
            ))
        })?;
        if chunk.model.is_some() {
            self.model = chunk.model;
        }
        if let Some(choice) = chunk.choices.into_iter().next() {
            if let Some(text) = choice.delta.content.filter(|t| !t.is_empty()) {
                self.queue.push_back(ModelEvent::TextDelta(text));
            }
            for call in choice.delta.tool_calls {
                self.saw_calls = true;
                let (name, arguments) = match call.function {
                    Some(f) => (f.name, f.arguments.unwrap_or_default()),
                    None => (None, String::new()),
                };
                self.queue.push_back(ModelEvent::ToolCallDelta {
                    index: call.index,
                    id: call.id,
                    name,
                    arguments,
                });
            }
            if choice.finish_reason.is_some() {
                self.finish_reason = choice.finish_reason;
            }
        }
        if let Some(usage) = chunk.usage {
            self.queue
                .push_back(ModelEvent::Usage(convert::usage(Some(usage))));
        }
        Ok(())
    }
}

impl Stream for ChunkStream {
    type Item = Result<ModelEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(event) = this.queue.pop_front() {
                return Poll::Ready(Some(Ok(event)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match this.events.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(event))) => {
                    let data = event.data.trim();
                    if data == "[DONE]" {
                        this.finish();
                    } else if !data.is_empty()
                        && let Err(error) = this.absorb(data)
                    {
                        this.done = true;
                        return Poll::Ready(Some(Err(error)));
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Ready(None) if this.finish_reason.is_some() => this.finish(),
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(Error::unavailable(
                        "the model provider closed the stream before the answer finished",
                    ))));
                }
            }
        }
    }
}
