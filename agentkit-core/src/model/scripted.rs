//! [`ScriptedModel`]: a deterministic model for tests, examples, load tests and benches.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::message::{ContentPart, Message, Role, StopReason, ToolCall, Usage};
use crate::model::{Model, ModelEvent, ModelRequest, ModelResponse, ModelStream};
use crate::{Context, Error, Result};

/// One scripted answer: optional text and any number of tool calls.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScriptedTurn {
    /// The answer's text (may be empty when the turn only calls tools).
    pub text: String,
    /// The tool calls of the answer.
    pub calls: Vec<ScriptedCall>,
}

/// One scripted tool call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptedCall {
    /// The tool to call.
    pub name: String,
    /// The arguments, as JSON text (may be deliberately invalid in tests).
    pub arguments: String,
}

impl ScriptedTurn {
    /// A final answer.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            calls: Vec::new(),
        }
    }

    /// A turn that calls `name` with `arguments` serialized as JSON.
    pub fn call(name: impl Into<String>, arguments: impl Serialize) -> Self {
        Self::default().and_call(name, arguments)
    }

    /// A turn that calls `name` with raw argument text (which may be invalid JSON).
    pub fn call_raw(name: impl Into<String>, arguments: impl Into<String>) -> Self {
        Self::default().and_call_raw(name, arguments)
    }

    /// Adds a call, for several tool calls in one turn.
    #[must_use]
    pub fn and_call(self, name: impl Into<String>, arguments: impl Serialize) -> Self {
        let arguments = serde_json::to_string(&arguments).unwrap_or_else(|_| "null".to_owned());
        self.and_call_raw(name, arguments)
    }

    /// Adds a call with raw argument text.
    #[must_use]
    pub fn and_call_raw(mut self, name: impl Into<String>, arguments: impl Into<String>) -> Self {
        self.calls.push(ScriptedCall {
            name: name.into(),
            arguments: arguments.into(),
        });
        self
    }
}

type Rule = Box<dyn Fn(&ModelRequest<'_>) -> Option<ScriptedTurn> + Send + Sync>;

enum Source {
    Turns(Vec<ScriptedTurn>),
    Rules(Vec<Rule>),
}

struct Inner {
    id: String,
    source: Source,
    latency: Duration,
    count_tokens: bool,
    chunk_bytes: usize,
    unique_call_ids: bool,
}

/// A deterministic model, the embedded default.
///
/// It answers from a fixed script of turns or from rules:
///
/// - **Script** ([`ScriptedModel::new`]): the answer to a request is turn number *n* of the
///   script, where *n* is the number of assistant messages already in the request (wrapping
///   around at the end). So a script `[call add, "done"]` calls the tool, then answers, and does
///   the same again on the next turn of a session.
/// - **Rules** ([`ScriptedModelBuilder::rule`]): the first rule that returns a turn answers.
/// - **Demo** ([`ScriptedModel::demo`]): a user message containing `17 + 25` calls the `add`
///   tool (one call per sum, in parallel); the tool results yield `17 + 25 = 42`; anything else
///   is echoed as `You said: ...`.
///
/// Token counts are simulated (about four bytes per token) and latency can be added, so examples,
/// load tests and benches behave like a real model.
///
/// ```
/// use agentkit_core::model::{Model, ModelRequest, ScriptedModel, ScriptedTurn};
/// use agentkit_core::{Context, Message};
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let model = ScriptedModel::new([ScriptedTurn::text("hi there")]);
/// let messages = [Message::user("hello")];
/// let response = model.complete(&ModelRequest::new(&messages), &Context::new()).await?;
/// assert_eq!(response.message.text_content(), "hi there");
/// assert!(response.usage.input_tokens > 0);
/// # Ok::<_, agentkit_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct ScriptedModel {
    inner: Arc<Inner>,
}

impl fmt::Debug for ScriptedModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptedModel")
            .field("id", &self.inner.id)
            .field("latency", &self.inner.latency)
            .finish_non_exhaustive()
    }
}

impl ScriptedModel {
    /// A model that answers from `turns` (see the type's documentation).
    pub fn new(turns: impl IntoIterator<Item = ScriptedTurn>) -> Self {
        Self::builder().turns(turns).build()
    }

    /// The demo model: sums call the `add` tool, tool results become the answer, the rest is echoed.
    pub fn demo() -> Self {
        Self::builder().demo_rules().build()
    }

    /// A builder for latency, token counting, id, turns and rules.
    pub fn builder() -> ScriptedModelBuilder {
        ScriptedModelBuilder {
            id: "scripted".to_owned(),
            turns: Vec::new(),
            rules: Vec::new(),
            latency: Duration::ZERO,
            count_tokens: true,
            chunk_bytes: 4,
            unique_call_ids: false,
        }
    }

    fn answer(&self, request: &ModelRequest<'_>) -> Result<ScriptedTurn> {
        match &self.inner.source {
            Source::Turns(turns) if turns.is_empty() => {
                Err(Error::internal("the scripted model has no turns"))
            }
            Source::Turns(turns) => {
                let n = assistant_count(request.messages);
                Ok(turns[n % turns.len()].clone())
            }
            Source::Rules(rules) => rules.iter().find_map(|rule| rule(request)).ok_or_else(|| {
                Error::internal("no rule of the scripted model matched the request")
            }),
        }
    }

    fn respond(&self, request: &ModelRequest<'_>, turn: ScriptedTurn) -> ModelResponse {
        let step = assistant_count(request.messages);
        let has_calls = !turn.calls.is_empty();
        let mut content = Vec::with_capacity(usize::from(!turn.text.is_empty()) + turn.calls.len());
        if !turn.text.is_empty() {
            content.push(ContentPart::Text { text: turn.text });
        }
        for (i, call) in turn.calls.into_iter().enumerate() {
            content.push(ContentPart::ToolCall(ToolCall {
                id: if self.inner.unique_call_ids {
                    format!("call_{:016x}", fastrand::u64(..))
                } else {
                    format!("call_{step}_{i}")
                },
                name: call.name,
                arguments: call.arguments,
            }));
        }
        let message = Message {
            role: Role::Assistant,
            content,
        };
        let usage = if self.inner.count_tokens {
            simulated_usage(request, &message)
        } else {
            Usage::default()
        };
        ModelResponse {
            message,
            usage,
            stop_reason: if has_calls {
                StopReason::ToolUse
            } else {
                StopReason::EndTurn
            },
            model: None,
        }
    }

    async fn wait(&self) {
        if !self.inner.latency.is_zero() {
            tokio::time::sleep(self.inner.latency).await;
        }
    }
}

#[async_trait]
impl Model for ScriptedModel {
    fn id(&self) -> &str {
        &self.inner.id
    }

    fn provider(&self) -> &str {
        "scripted"
    }

    async fn complete(&self, request: &ModelRequest<'_>, _cx: &Context) -> Result<ModelResponse> {
        let turn = self.answer(request)?;
        self.wait().await;
        Ok(self.respond(request, turn))
    }

    async fn stream(&self, request: &ModelRequest<'_>, _cx: &Context) -> Result<ModelStream> {
        let turn = self.answer(request)?;
        self.wait().await;
        let response = self.respond(request, turn);
        let events = chunk_events(response, self.inner.chunk_bytes);
        Ok(Box::pin(futures::stream::iter(events.into_iter().map(Ok))))
    }
}

/// Builds a [`ScriptedModel`].
#[must_use]
pub struct ScriptedModelBuilder {
    id: String,
    turns: Vec<ScriptedTurn>,
    rules: Vec<Rule>,
    latency: Duration,
    count_tokens: bool,
    chunk_bytes: usize,
    unique_call_ids: bool,
}

impl fmt::Debug for ScriptedModelBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptedModelBuilder")
            .field("id", &self.id)
            .field("turns", &self.turns.len())
            .field("rules", &self.rules.len())
            .finish_non_exhaustive()
    }
}

impl ScriptedModelBuilder {
    /// The model id (default `"scripted"`); also the key of its price.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Answers from these turns (see [`ScriptedModel`]); rules take precedence when both are set.
    pub fn turns(mut self, turns: impl IntoIterator<Item = ScriptedTurn>) -> Self {
        self.turns = turns.into_iter().collect();
        self
    }

    /// Adds a rule; the first rule that returns a turn answers.
    pub fn rule<F>(mut self, rule: F) -> Self
    where
        F: Fn(&ModelRequest<'_>) -> Option<ScriptedTurn> + Send + Sync + 'static,
    {
        self.rules.push(Box::new(rule));
        self
    }

    /// Adds the demo rules: sums call `add`, tool results are summarized, the rest is echoed.
    pub fn demo_rules(self) -> Self {
        self.rule(summarize_tool_results)
            .rule(call_add_for_sums)
            .rule(echo)
    }

    /// Waits this long before every answer (default none).
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Whether to simulate token counts (default on, about four bytes per token).
    pub fn count_tokens(mut self, on: bool) -> Self {
        self.count_tokens = on;
        self
    }

    /// The size of streamed text pieces in bytes (default 4, about one token).
    pub fn chunk_bytes(mut self, bytes: usize) -> Self {
        self.chunk_bytes = bytes.max(1);
        self
    }

    /// Gives every tool call a fresh random id, as hosted models do (default off: the id of
    /// the `i`th call of step `n` is `call_{n}_{i}`, the same on every run). Tests of
    /// redelivered jobs use it to show that nothing depends on a model repeating its ids.
    pub fn unique_call_ids(mut self, on: bool) -> Self {
        self.unique_call_ids = on;
        self
    }

    /// The model.
    pub fn build(self) -> ScriptedModel {
        let source = if self.rules.is_empty() {
            Source::Turns(self.turns)
        } else {
            Source::Rules(self.rules)
        };
        ScriptedModel {
            inner: Arc::new(Inner {
                id: self.id,
                source,
                latency: self.latency,
                count_tokens: self.count_tokens,
                chunk_bytes: self.chunk_bytes,
                unique_call_ids: self.unique_call_ids,
            }),
        }
    }
}

fn assistant_count(messages: &[Message]) -> usize {
    messages
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .count()
}

fn tokens_for(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4)
}

fn simulated_usage(request: &ModelRequest<'_>, answer: &Message) -> Usage {
    let mut bytes = request.system.map_or(0, str::len);
    bytes += request
        .messages
        .iter()
        .map(Message::payload_len)
        .sum::<usize>();
    bytes += request
        .tools
        .iter()
        .map(|t| t.name.len() + t.description.len())
        .sum::<usize>();
    Usage {
        input_tokens: tokens_for(bytes).max(1),
        output_tokens: tokens_for(answer.payload_len()).max(1),
        cached_input_tokens: 0,
    }
}

fn chunk_events(response: ModelResponse, chunk_bytes: usize) -> Vec<ModelEvent> {
    let mut events = Vec::new();
    let mut index = 0;
    for part in response.message.content {
        match part {
            ContentPart::Text { text } => {
                let mut rest = text.as_str();
                while !rest.is_empty() {
                    let mut cut = chunk_bytes.min(rest.len());
                    while !rest.is_char_boundary(cut) {
                        cut += 1;
                    }
                    events.push(ModelEvent::TextDelta(rest[..cut].to_owned()));
                    rest = &rest[cut..];
                }
            }
            ContentPart::ToolCall(call) => {
                // Split the arguments in two, as real providers do, to exercise accumulation.
                let mut mid = call.arguments.len() / 2;
                while !call.arguments.is_char_boundary(mid) {
                    mid += 1;
                }
                let (first, second) = call.arguments.split_at(mid);
                events.push(ModelEvent::ToolCallDelta {
                    index,
                    id: Some(call.id),
                    name: Some(call.name),
                    arguments: first.to_owned(),
                });
                events.push(ModelEvent::ToolCallDelta {
                    index,
                    id: None,
                    name: None,
                    arguments: second.to_owned(),
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

/// Demo rule: after tool results, answer with `a + b = result` for each `add` call.
fn summarize_tool_results(request: &ModelRequest<'_>) -> Option<ScriptedTurn> {
    let last = request.messages.last()?;
    if last.role != Role::Tool {
        return None;
    }
    let calls = request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == Role::Assistant)?;
    let mut lines = Vec::new();
    for result in last.tool_results_iter() {
        let call = calls.tool_calls().find(|c| c.id == result.call_id);
        let line = match call {
            Some(call) if result.is_error => {
                format!("The {} tool failed: {}", call.name, result.content)
            }
            Some(call) if call.name == "add" => {
                let args: serde_json::Value = serde_json::from_str(&call.arguments).ok()?;
                format!(
                    "{} + {} = {}",
                    args.get("a")?,
                    args.get("b")?,
                    tidy_number(&result.content)
                )
            }
            Some(call) => format!("{} returned {}", call.name, result.content),
            None => format!("A tool returned {}", result.content),
        };
        lines.push(line);
    }
    Some(ScriptedTurn::text(lines.join("\n")))
}

/// Demo rule: a user message with sums (`17 + 25`) calls `add` once per sum.
fn call_add_for_sums(request: &ModelRequest<'_>) -> Option<ScriptedTurn> {
    let last = request.messages.last()?;
    if last.role != Role::User || !request.tools.iter().any(|t| t.name == "add") {
        return None;
    }
    let text = last.text_content();
    let sums = find_sums(&text);
    if sums.is_empty() {
        return None;
    }
    let mut turn = ScriptedTurn::default();
    for (a, b) in sums {
        turn = turn.and_call_raw("add", format!(r#"{{"a":{a},"b":{b}}}"#));
    }
    Some(turn)
}

/// Demo rule: echo the last user message (a conversation without one, such as a system
/// message alone, is answered too).
fn echo(request: &ModelRequest<'_>) -> Option<ScriptedTurn> {
    let last = request.messages.iter().rev().find(|m| m.role == Role::User);
    Some(ScriptedTurn::text(match last {
        Some(last) => format!("You said: {}", last.text_content()),
        None => "You said nothing yet.".to_owned(),
    }))
}

/// Finds `number + number` expressions, returning the numbers as written.
fn find_sums(text: &str) -> Vec<(&str, &str)> {
    let bytes = text.as_bytes();
    let mut sums = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let Some((a, after_a)) = number_at(text, i) else {
            i += 1;
            continue;
        };
        let mut j = skip_spaces(bytes, after_a);
        if bytes.get(j) != Some(&b'+') {
            i = after_a.max(i + 1);
            continue;
        }
        j = skip_spaces(bytes, j + 1);
        match number_at(text, j) {
            Some((b, after_b)) => {
                sums.push((a, b));
                i = after_b;
            }
            None => i = j.max(i + 1),
        }
    }
    sums
}

fn skip_spaces(bytes: &[u8], mut i: usize) -> usize {
    while bytes.get(i) == Some(&b' ') {
        i += 1;
    }
    i
}

/// A decimal number starting at `start` (not inside a word), as written, and where it ends.
fn number_at(text: &str, start: usize) -> Option<(&str, usize)> {
    let bytes = text.as_bytes();
    if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'.') {
        return None;
    }
    let mut end = start;
    if bytes.get(end) == Some(&b'-') {
        end += 1;
    }
    let digits_start = end;
    while bytes.get(end).is_some_and(u8::is_ascii_digit) {
        end += 1;
    }
    if end == digits_start {
        return None;
    }
    if bytes.get(end) == Some(&b'.') && bytes.get(end + 1).is_some_and(u8::is_ascii_digit) {
        end += 1;
        while bytes.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
    }
    // Leading zeros are not valid JSON numbers; skip such tokens.
    let digits = &text[digits_start..end];
    if digits.len() > 1 && digits.starts_with('0') && !digits.starts_with("0.") {
        return None;
    }
    Some((&text[start..end], end))
}

/// `42.0` → `42`, anything else unchanged.
fn tidy_number(text: &str) -> String {
    match text.trim().parse::<f64>() {
        Ok(n) if n.fract() == 0.0 && n.abs() < 1e15 => format!("{}", n as i64),
        Ok(n) => n.to_string(),
        Err(_) => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ToolResult;
    use crate::tool::ToolSpec;

    #[test]
    fn finds_sums_as_written() {
        assert_eq!(find_sums("What is 17 + 25?"), vec![("17", "25")]);
        assert_eq!(
            find_sums("1+1, 2 + 2, -3 + 4.5 and x9 + 1"),
            vec![("1", "1"), ("2", "2"), ("-3", "4.5")]
        );
        assert!(find_sums("no sums + here").is_empty());
        assert!(find_sums("007 + 1").is_empty());
    }

    #[tokio::test]
    async fn demo_calls_add_then_answers() {
        let model = ScriptedModel::demo();
        let tools = [ToolSpec::new(
            "add",
            "adds",
            serde_json::json!({"type": "object"}),
        )];
        let mut messages = vec![Message::user("What is 17 + 25?")];
        let mut request = ModelRequest::new(&messages);
        request.tools = &tools;
        let first = model.complete(&request, &Context::new()).await.unwrap();
        let call = first.message.tool_calls().next().unwrap().clone();
        assert_eq!(call.name, "add");
        assert_eq!(call.arguments, r#"{"a":17,"b":25}"#);
        assert_eq!(first.stop_reason, StopReason::ToolUse);

        messages.push(first.message);
        messages.push(Message::tool_results([ToolResult {
            call_id: call.id,
            content: "42.0".into(),
            is_error: false,
        }]));
        let mut request = ModelRequest::new(&messages);
        request.tools = &tools;
        let second = model.complete(&request, &Context::new()).await.unwrap();
        assert_eq!(second.message.text_content(), "17 + 25 = 42");
    }

    #[tokio::test]
    async fn script_follows_assistant_count_and_wraps() {
        let model = ScriptedModel::new([ScriptedTurn::text("one"), ScriptedTurn::text("two")]);
        let cx = Context::new();
        let mut messages = vec![Message::user("a")];
        let r = model
            .complete(&ModelRequest::new(&messages), &cx)
            .await
            .unwrap();
        assert_eq!(r.message.text_content(), "one");
        messages.push(r.message);
        let r = model
            .complete(&ModelRequest::new(&messages), &cx)
            .await
            .unwrap();
        assert_eq!(r.message.text_content(), "two");
        messages.push(r.message);
        let r = model
            .complete(&ModelRequest::new(&messages), &cx)
            .await
            .unwrap();
        assert_eq!(r.message.text_content(), "one");
    }

    #[test]
    fn tidy_numbers() {
        assert_eq!(tidy_number("42.0"), "42");
        assert_eq!(tidy_number("2.5"), "2.5");
        assert_eq!(tidy_number("oops"), "oops");
    }
}
