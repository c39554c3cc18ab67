//! Agent events on the wire: Server-Sent Events and WebSocket frames carry the same JSON, and
//! [`decode`] reads them back (for remote executors).

use agentkit_core::tool::ToolCallRecord;
use agentkit_core::{AgentEvent, Error, ErrorKind, Result, Usage};
use serde_json::{Value, json};

use crate::api::dto::{ErrorBody, InvokeResponse};
use crate::error::ApiError;

/// Who the events belong to, for the `done` document.
#[derive(Clone, Debug)]
pub(crate) struct Origin {
    pub(crate) request_id: String,
    pub(crate) agent: String,
    pub(crate) session_id: Option<String>,
}

/// The event's name and JSON payload.
pub(crate) fn encode(event: AgentEvent, origin: &Origin) -> (&'static str, Value) {
    let name = event.name();
    let data = match event {
        AgentEvent::TextDelta { text } => json!({ "text": text }),
        AgentEvent::ToolCallStarted {
            id,
            name,
            arguments,
        } => {
            json!({ "id": id, "name": name, "arguments": arguments })
        }
        AgentEvent::ToolCallFinished(record) => serde_json::to_value(record).unwrap_or(Value::Null),
        AgentEvent::Usage { usage, cost_usd } => json!({
            "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens},
            "cost_usd": cost_usd,
        }),
        AgentEvent::Done(reply) => serde_json::to_value(InvokeResponse::new(
            &origin.request_id,
            &origin.agent,
            *reply,
            origin.session_id.as_deref(),
        ))
        .unwrap_or(Value::Null),
        other => json!({ "event": format!("{other:?}") }),
    };
    (name, data)
}

/// The `error` event's payload for `error`.
pub(crate) fn encode_error(error: Error, request_id: &str) -> Value {
    let api = ApiError::from(error);
    json!({"error": {"code": api.code(), "message": api.message(), "request_id": request_id}})
}

/// A WebSocket frame: the payload with its `type`.
pub(crate) fn frame(name: &str, mut data: Value) -> String {
    if let Value::Object(map) = &mut data {
        map.insert("type".into(), Value::String(name.to_owned()));
        return data.to_string();
    }
    json!({"type": name, "data": data}).to_string()
}

/// Reads an event back: `Ok(None)` for names this version does not know; an `error` event
/// becomes the error it describes.
pub fn decode(name: &str, data: &str) -> Result<Option<AgentEvent>> {
    let bad = |e: serde_json::Error| {
        Error::unavailable(format!(
            "malformed `{name}` event from the remote agent: {e}"
        ))
    };
    let value: Value = serde_json::from_str(data).map_err(bad)?;
    let text = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Ok(Some(match name {
        "text_delta" => AgentEvent::TextDelta { text: text("text") },
        "tool_call_started" => AgentEvent::ToolCallStarted {
            id: text("id"),
            name: text("name"),
            arguments: text("arguments"),
        },
        "tool_call_finished" => AgentEvent::ToolCallFinished(
            serde_json::from_value::<ToolCallRecord>(value).map_err(bad)?,
        ),
        "usage" => {
            let usage = value.get("usage").cloned().unwrap_or(Value::Null);
            AgentEvent::Usage {
                usage: serde_json::from_value::<Usage>(usage).map_err(bad)?,
                cost_usd: value.get("cost_usd").and_then(Value::as_f64).unwrap_or(0.0),
            }
        }
        "done" => AgentEvent::Done(Box::new(
            serde_json::from_value::<InvokeResponse>(value)
                .map_err(bad)?
                .into_reply(),
        )),
        "error" => {
            let body: ErrorBody = serde_json::from_value(value).map_err(bad)?;
            let kind = ErrorKind::from_code(&body.error.code).unwrap_or(ErrorKind::Internal);
            return Err(Error::new(kind, body.error.message));
        }
        _ => return Ok(None),
    }))
}

/// An SSE response streaming `events`; an error ends the stream with an `error` event.
pub(crate) fn sse_response(
    events: agentkit_core::EventStream,
    origin: Origin,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures::StreamExt;

    let stream = events.scan(false, move |ended, item| {
        if *ended {
            return futures::future::ready(None);
        }
        let event = match item {
            Ok(event) => {
                let (name, data) = encode(event, &origin);
                Event::default().event(name).data(data.to_string())
            }
            Err(error) => {
                *ended = true;
                let data = encode_error(error, &origin.request_id);
                Event::default().event("error").data(data.to_string())
            }
        };
        futures::future::ready(Some(Ok::<_, std::convert::Infallible>(event)))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
        .into_response()
}
