//! Structured output: run an agent for a typed `T`, with one corrective retry.

use std::borrow::Cow;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use crate::agent::Agent;
use crate::agent::run::{RunState, Silent};
use crate::executor::{Invocation, Reply};
use crate::message::Message;
use crate::model::ResponseFormat;
use crate::{Error, ErrorKind, Result};

/// A typed answer and the reply it came from.
#[derive(Clone, Debug)]
pub struct Structured<T> {
    /// The decoded answer.
    pub value: T,
    /// The run's reply (usage and cost include a corrective retry, if there was one).
    pub reply: Reply,
}

fn format_for<T: JsonSchema>() -> ResponseFormat {
    let mut schema = schemars::schema_for!(T).to_value();
    if let Some(object) = schema.as_object_mut() {
        object.remove("$schema");
    }
    let name: String = T::schema_name()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    ResponseFormat {
        name: if name.is_empty() {
            "output".to_owned()
        } else {
            name
        },
        schema: Arc::new(schema),
    }
}

/// The JSON in a model's answer: the whole text, or the inside of a ``` fence around it.
fn json_text(output: &str) -> Cow<'_, str> {
    let trimmed = output.trim();
    if let Some(rest) = trimmed.strip_prefix("```") {
        let body = rest.trim_start_matches(|c: char| c.is_ascii_alphabetic());
        if let Some(inner) = body.strip_suffix("```") {
            return Cow::Owned(inner.trim().to_owned());
        }
    }
    Cow::Borrowed(trimmed)
}

fn decode<T: DeserializeOwned>(output: &str) -> std::result::Result<T, serde_json::Error> {
    serde_json::from_str(&json_text(output))
}

impl Agent {
    /// Runs for a typed answer: the model is asked for JSON following `T`'s schema; an answer
    /// that does not decode is sent back once with the error, and a second failure is an
    /// [`ErrorKind::InvalidOutput`] error.
    ///
    /// ```
    /// use agentkit_core::model::{ScriptedModel, ScriptedTurn};
    /// use agentkit_core::{Agent, Invocation};
    ///
    /// #[derive(serde::Deserialize, schemars::JsonSchema)]
    /// struct Weather { city: String, celsius: f64 }
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let model = ScriptedModel::new([ScriptedTurn::text(r#"{"city": "Oslo", "celsius": -3.5}"#)]);
    /// let agent = Agent::builder().model(model).build()?;
    /// let weather = agent.run_structured::<Weather>(Invocation::text("Weather in Oslo?")).await?;
    /// assert_eq!(weather.value.city, "Oslo");
    /// # Ok::<_, agentkit_core::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn run_structured<T: DeserializeOwned + JsonSchema>(
        &self,
        invocation: Invocation,
    ) -> Result<Structured<T>> {
        let format = format_for::<T>();
        let system = self.prepare(&invocation)?;
        let context = invocation.context.clone();
        let metadata = invocation.metadata.clone();
        let mut history = invocation.history.clone();
        let first = self
            .run_observed(
                invocation,
                system.clone(),
                Some(&format),
                &mut Silent,
                RunState::default(),
            )
            .await?;
        let problem = match decode::<T>(&first.output) {
            Ok(value) => {
                return Ok(Structured {
                    value,
                    reply: first,
                });
            }
            Err(problem) => problem,
        };
        history.extend(first.messages.iter().cloned());
        let correction = Message::user(format!(
            "Your answer is not valid JSON for the required schema: {problem}. \
             Answer again with only the JSON value."
        ));
        let retry = Invocation {
            input: vec![correction],
            history,
            context,
            metadata,
        };
        let carried = RunState {
            usage: first.usage,
            cost: first.cost_usd,
            records: Vec::new(),
            steps: 0,
        };
        let second = self
            .run_observed(retry, system, Some(&format), &mut Silent, carried)
            .await?;
        let mut reply = second;
        let mut messages = first.messages;
        messages.append(&mut reply.messages);
        reply.messages = messages;
        let mut tool_calls = first.tool_calls;
        tool_calls.append(&mut reply.tool_calls);
        reply.tool_calls = tool_calls;
        reply.steps += first.steps;
        match decode::<T>(&reply.output) {
            Ok(value) => Ok(Structured { value, reply }),
            Err(problem) => Err(Error::new(
                ErrorKind::InvalidOutput,
                format!(
                    "the model's answer is not valid for the schema after one correction: {problem}"
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_are_stripped() {
        assert_eq!(json_text("```json\n{\"a\":1}\n```"), "{\"a\":1}");
        assert_eq!(json_text("  {\"a\":1} "), "{\"a\":1}");
    }
}
