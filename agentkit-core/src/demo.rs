//! The demo agent every example, test and bench shares: `assistant`, with an `add` tool, on the
//! scripted model (or a real OpenAI-compatible server when configured).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::model::{Model, ScriptedModel};
use crate::tool::{Tool, tool_fn};
use crate::{Agent, AgentBuilder, Result};

/// Arguments of the demo `add` tool.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct AddArgs {
    /// The first addend.
    pub a: f64,
    /// The second addend.
    pub b: f64,
}

/// The `add` tool: adds two numbers.
pub fn add_tool() -> impl Tool {
    tool_fn(
        "add",
        "Adds two numbers and returns the sum.",
        |args: AddArgs| async move { Ok::<_, Infallible>(args.a + args.b) },
    )
}

/// The model the demo runs on: an OpenAI-compatible server when `OPENAI_API_KEY` is set (with
/// `OPENAI_BASE_URL` and `AGENTKIT_MODEL`, and retries), else [`ScriptedModel::demo`] with
/// `AGENTKIT_SCRIPTED_LATENCY_MS` of simulated latency.
pub fn model_from_env() -> Result<Arc<dyn Model>> {
    #[cfg(feature = "openai")]
    if let Some(model) = crate::model::openai::OpenAiModel::from_env()? {
        return Ok(Arc::new(crate::model::RetryModel::new(model)));
    }
    let latency = std::env::var("AGENTKIT_SCRIPTED_LATENCY_MS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_millis);
    Ok(Arc::new(
        ScriptedModel::builder()
            .demo_rules()
            .latency(latency)
            .build(),
    ))
}

/// A builder for the demo agent `assistant` with the `add` tool; add or change anything before
/// `build()`.
pub fn assistant_builder(model: Arc<dyn Model>) -> AgentBuilder {
    Agent::builder()
        .name("assistant")
        .shared_model(model)
        .system_prompt("You are a helpful assistant. Use the add tool for arithmetic.")
        .tool(add_tool())
}

/// The demo agent `assistant` on the model from [`model_from_env`].
pub fn assistant() -> Result<Agent> {
    assistant_builder(model_from_env()?).build()
}
