//! [`Guard`]: limits on what goes in before the model sees it, and redaction of credentials
//! and personal data in what comes out before the caller sees it.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use regex::{Captures, Regex};

use crate::executor::{AgentEvent, EventStream, Executor, Invocation, Reply};
use crate::message::{ContentPart, Message};
use crate::{Error, Result};

/// One kind of thing to redact: a label (`[redacted:LABEL]`), a pattern, and optionally a
/// check a match must pass (the Luhn checksum of a card number).
#[derive(Clone)]
struct Rule {
    label: String,
    pattern: Regex,
    check: Option<fn(&str) -> bool>,
}

/// Finds credentials and personal data in text and replaces each with `[redacted:KIND]`.
///
/// [`credentials`](Self::credentials) knows API keys of the common shapes (OpenAI and Stripe
/// `sk-`, AWS `AKIA`, GitHub `ghp_`, Slack `xox`), bearer tokens, JWTs and PEM private keys;
/// [`personal_data`](Self::personal_data) adds e-mail addresses and card numbers (those that
/// pass the Luhn check). [`with_pattern`](Self::with_pattern) adds your own. Cheap to clone.
#[derive(Clone)]
pub struct Redactor {
    rules: Arc<Vec<Rule>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.rules.iter().map(|r| &r.label))
            .finish()
    }
}

fn rule(label: &str, pattern: &str, check: Option<fn(&str) -> bool>) -> Rule {
    Rule {
        label: label.to_owned(),
        pattern: Regex::new(pattern).expect("built-in redaction patterns compile"),
        check,
    }
}

/// Whether the digits of `text` pass the Luhn checksum (card numbers do).
fn luhn(text: &str) -> bool {
    let digits: Vec<u32> = text.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| match (i % 2, d * 2) {
            (0, _) => d,
            (_, doubled) if doubled > 9 => doubled - 9,
            (_, doubled) => doubled,
        })
        .sum();
    sum.is_multiple_of(10)
}

impl Redactor {
    /// Credentials: API keys, bearer tokens, JWTs, private keys.
    pub fn credentials() -> Self {
        Self {
            rules: Arc::new(vec![
                rule(
                    "private_key",
                    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
                    None,
                ),
                rule(
                    "jwt",
                    r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}",
                    None,
                ),
                rule(
                    "bearer",
                    r"\b(?:[Bb]earer|BEARER)\s+[A-Za-z0-9._~+/-]{16,}=*",
                    None,
                ),
                rule(
                    "api_key",
                    r"\b(?:sk|rk|pk)[-_](?:[A-Za-z0-9]+[-_])?[A-Za-z0-9_-]{16,}",
                    None,
                ),
                rule("api_key", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", None),
                rule("api_key", r"\bgh[pousr]_[A-Za-z0-9]{30,}", None),
                rule("api_key", r"\bxox[abpr]-[A-Za-z0-9-]{10,}", None),
            ]),
        }
    }

    /// Credentials, and personal data: e-mail addresses and card numbers.
    pub fn personal_data() -> Self {
        let mut rules = Self::credentials();
        let own = Arc::make_mut(&mut rules.rules);
        own.push(rule(
            "email",
            r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b",
            None,
        ));
        own.push(rule("card", r"\b\d(?:[ -]?\d){12,18}\b", Some(luhn)));
        rules
    }

    /// Adds a pattern of your own, redacted as `[redacted:LABEL]`; an error if it does not
    /// compile.
    pub fn with_pattern(mut self, label: &str, pattern: &str) -> Result<Self> {
        let pattern = Regex::new(pattern).map_err(|e| {
            Error::invalid_input(format!("redaction pattern {label:?} does not compile: {e}"))
        })?;
        Arc::make_mut(&mut self.rules).push(Rule {
            label: label.to_owned(),
            pattern,
            check: None,
        });
        Ok(self)
    }

    /// `text` with every finding replaced (borrowed when there is none).
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut text = Cow::Borrowed(text);
        for rule in self.rules.iter() {
            let replaced = rule.pattern.replace_all(&text, |found: &Captures<'_>| {
                let found = &found[0];
                match rule.check {
                    Some(check) if !check(found) => found.to_owned(),
                    _ => format!("[redacted:{}]", rule.label),
                }
            });
            if let Cow::Owned(replaced) = replaced
                && replaced != *text
            {
                text = Cow::Owned(replaced);
            }
        }
        text
    }

    fn redact_in_place(&self, text: &mut String) {
        if let Cow::Owned(redacted) = self.redact(text) {
            *text = redacted;
        }
    }

    fn redact_message(&self, message: &mut Message) {
        for part in &mut message.content {
            match part {
                ContentPart::Text { text } => self.redact_in_place(text),
                ContentPart::ToolCall(call) => self.redact_in_place(&mut call.arguments),
                ContentPart::ToolResult(result) => self.redact_in_place(&mut result.content),
            }
        }
    }

    fn redact_reply(&self, reply: &mut Reply) {
        self.redact_in_place(&mut reply.output);
        for message in &mut reply.messages {
            self.redact_message(message);
        }
        for call in &mut reply.tool_calls {
            self.redact_in_place(&mut call.arguments);
            if let Some(error) = &mut call.error {
                self.redact_in_place(error);
            }
        }
    }
}

#[derive(Debug, Default)]
struct GuardConfig {
    max_input_bytes: Option<usize>,
    redactor: Option<Redactor>,
}

/// Guards an executor: refuses input over a size limit before the model sees it, and redacts
/// credentials and personal data (see [`Redactor`]) from the reply before the caller sees it,
/// in the output, the messages (text, tool arguments, tool results) and the tool records.
///
/// Streams are redacted too. Since a secret can arrive split over several text deltas, text is
/// held back until the model's step ends (its tool calls start, its usage is reported, or the
/// run is done) and then sent, redacted, as one delta; tool events pass, redacted, in order.
#[derive(Clone, Debug)]
pub struct Guard<E> {
    inner: E,
    config: Arc<GuardConfig>,
}

/// Builds [`Guard`]s; composes with `tower::ServiceBuilder`.
#[derive(Clone, Debug, Default)]
pub struct GuardLayer {
    config: Arc<GuardConfig>,
}

impl GuardLayer {
    /// A layer that lets everything through; add limits and redaction.
    pub fn new() -> Self {
        Self::default()
    }

    fn edit(&mut self) -> &mut GuardConfig {
        Arc::get_mut(&mut self.config).expect("a layer is configured before it is shared")
    }

    /// Refuses (with [`ErrorKind::InvalidInput`](crate::ErrorKind)) input whose text is over
    /// `bytes`.
    #[must_use]
    pub fn max_input_bytes(mut self, bytes: usize) -> Self {
        self.edit().max_input_bytes = Some(bytes);
        self
    }

    /// Redacts replies with `redactor`.
    #[must_use]
    pub fn redact(mut self, redactor: Redactor) -> Self {
        self.edit().redactor = Some(redactor);
        self
    }
}

impl<E> tower::Layer<E> for GuardLayer {
    type Service = Guard<E>;

    fn layer(&self, inner: E) -> Guard<E> {
        Guard {
            inner,
            config: self.config.clone(),
        }
    }
}

impl<E> Guard<E> {
    fn check_input(&self, invocation: &Invocation) -> Result<()> {
        let Some(max) = self.config.max_input_bytes else {
            return Ok(());
        };
        let size: usize = invocation
            .input
            .iter()
            .flat_map(|m| &m.content)
            .map(|part| match part {
                ContentPart::Text { text } => text.len(),
                ContentPart::ToolCall(call) => call.arguments.len(),
                ContentPart::ToolResult(result) => result.content.len(),
            })
            .sum();
        if size > max {
            return Err(Error::invalid_input(format!(
                "the input is {size} bytes; this agent takes at most {max}"
            )));
        }
        Ok(())
    }
}

impl<E: Executor> Executor for Guard<E> {
    fn execute(&self, invocation: Invocation) -> impl Future<Output = Result<Reply>> + Send {
        let checked = self.check_input(&invocation);
        let config = self.config.clone();
        let run = checked.map(|()| self.inner.execute(invocation));
        async move {
            let mut reply = run?.await?;
            if let Some(redactor) = &config.redactor {
                redactor.redact_reply(&mut reply);
            }
            Ok(reply)
        }
    }

    fn stream(&self, invocation: Invocation) -> impl Future<Output = Result<EventStream>> + Send {
        let checked = self.check_input(&invocation);
        let config = self.config.clone();
        let open = checked.map(|()| self.inner.stream(invocation));
        async move {
            let events = open?.await?;
            let Some(redactor) = config.redactor.clone() else {
                return Ok(events);
            };
            Ok(redacted(events, redactor))
        }
    }
}

/// `events` with tool events redacted as they pass and text held back until the end.
fn redacted(events: EventStream, redactor: Redactor) -> EventStream {
    let held = String::new();
    futures::stream::unfold(
        (events, redactor, held, Vec::<Result<AgentEvent>>::new()),
        |(mut events, redactor, mut held, mut ready)| async move {
            loop {
                if let Some(event) = ready.pop() {
                    return Some((event, (events, redactor, held, ready)));
                }
                let flush = |held: &mut String, redactor: &Redactor| {
                    (!held.is_empty()).then(|| {
                        let text = redactor.redact(held).into_owned();
                        held.clear();
                        Ok(AgentEvent::TextDelta { text })
                    })
                };
                match events.next().await {
                    Some(Ok(AgentEvent::TextDelta { text })) => {
                        held.push_str(&text);
                        continue;
                    }
                    Some(Ok(AgentEvent::ToolCallStarted {
                        id,
                        name,
                        mut arguments,
                    })) => {
                        redactor.redact_in_place(&mut arguments);
                        ready.push(Ok(AgentEvent::ToolCallStarted {
                            id,
                            name,
                            arguments,
                        }));
                    }
                    Some(Ok(AgentEvent::ToolCallFinished(mut record))) => {
                        redactor.redact_in_place(&mut record.arguments);
                        if let Some(error) = &mut record.error {
                            redactor.redact_in_place(error);
                        }
                        ready.push(Ok(AgentEvent::ToolCallFinished(record)));
                    }
                    Some(Ok(AgentEvent::Done(mut reply))) => {
                        redactor.redact_reply(&mut reply);
                        ready.push(Ok(AgentEvent::Done(reply)));
                    }
                    Some(other) => ready.push(other),
                    None => {
                        let last = flush(&mut held, &redactor)?;
                        return Some((last, (events, redactor, held, ready)));
                    }
                }
                // Popped from the end: the step's held text goes out before the event.
                ready.extend(flush(&mut held, &redactor));
            }
        },
    )
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted_and_ordinary_text_is_left_alone() {
        let redactor = Redactor::credentials();
        let text = "key sk-proj-abcdefghijklmnopqrstu, aws AKIAABCDEFGHIJKLMNOP, \
                    Authorization: Bearer abcdefghijklmnopqrstuvwx, \
                    jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.c2lnbmF0dXJlX2hlcmU, \
                    gh ghp_abcdefghijklmnopqrstuvwxyz0123456789";
        let redacted = redactor.redact(text);
        for secret in ["sk-proj", "AKIA", "abcdefghijklmnopqrstuvwx", "eyJ", "ghp_"] {
            assert!(!redacted.contains(secret), "{secret} left in {redacted}");
        }
        assert!(redacted.contains("[redacted:api_key]"), "{redacted}");
        assert!(redacted.contains("[redacted:jwt]"), "{redacted}");
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIB\nabc\n-----END RSA PRIVATE KEY-----";
        assert_eq!(redactor.redact(pem), "[redacted:private_key]");
        let plain = "The sky-blue task-force met at 17:00; ask Bob.";
        assert!(
            matches!(redactor.redact(plain), Cow::Borrowed(_)),
            "nothing to redact"
        );
    }

    #[test]
    fn personal_data_takes_cards_that_pass_luhn_and_emails() {
        let redactor = Redactor::personal_data()
            .with_pattern("order", r"\bORD-\d{6}\b")
            .unwrap();
        let text = "mail bob.smith@example.co.uk, card 4111 1111 1111 1111, \
                    not a card 4111 1111 1111 1112, order ORD-123456";
        assert_eq!(
            redactor.redact(text),
            "mail [redacted:email], card [redacted:card], \
             not a card 4111 1111 1111 1112, order [redacted:order]"
        );
        assert!(Redactor::credentials().with_pattern("bad", "(").is_err());
    }
}
