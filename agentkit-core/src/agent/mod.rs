//! [`Agent`]: a model, tools, a prompt and limits, running the tool loop.

mod prompt;
mod run;
mod stream;
mod structured;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::executor::{EventStream, Executor, Invocation, Reply};
use crate::model::Model;
use crate::observer::Observer;
use crate::pricing::{Price, PriceTable};
use crate::tool::{Tool, Toolbox};
use crate::{Error, Result};

pub use prompt::PromptTemplate;
pub use structured::Structured;

/// The limits of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Model calls per run (default 10).
    pub max_steps: u32,
    /// Tokens (input + output) per run; checked before each model call.
    pub token_budget: Option<u64>,
    /// US dollars per run; checked before each model call.
    pub cost_budget: Option<f64>,
    /// Default time one tool call may take (default 30 s); a tool may set its own.
    pub tool_timeout: Duration,
    /// Tool calls of one step that run at once (default 8).
    pub max_parallel_tools: usize,
    /// A deadline for every run, on top of the caller's (default none).
    pub run_timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_steps: 10,
            token_budget: None,
            cost_budget: None,
            tool_timeout: Duration::from_secs(30),
            max_parallel_tools: 8,
            run_timeout: None,
        }
    }
}

pub(crate) struct AgentInner {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) model: Arc<dyn Model>,
    pub(crate) tools: Toolbox,
    pub(crate) prompt: Option<PromptTemplate>,
    pub(crate) limits: Limits,
    pub(crate) prices: PriceTable,
    pub(crate) model_price: Option<Price>,
    pub(crate) observer: Option<Arc<dyn Observer>>,
    pub(crate) max_tokens: Option<u32>,
    pub(crate) temperature: Option<f32>,
}

/// A model with tools, a system prompt and limits, running the loop: model → tool calls (those
/// of one step concurrently, bounded) → results → model, until a final answer, a limit, the
/// deadline or cancellation.
///
/// Cheap to clone (one `Arc`); an [`Executor`], so every transport and layer accepts it.
///
/// ```
/// use agentkit_core::model::ScriptedModel;
/// use agentkit_core::tool::tool_fn;
/// use agentkit_core::{Agent, Executor, Invocation};
///
/// #[derive(serde::Deserialize, schemars::JsonSchema)]
/// struct AddArgs { a: f64, b: f64 }
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let agent = Agent::builder()
///     .name("assistant")
///     .model(ScriptedModel::demo())
///     .system_prompt("You are a careful calculator.")
///     .tool(tool_fn("add", "Adds two numbers", |a: AddArgs| async move {
///         Ok::<_, std::convert::Infallible>(a.a + a.b)
///     }))
///     .build()?;
///
/// let reply = agent.execute(Invocation::text("What is 17 + 25?")).await?;
/// assert_eq!(reply.output, "17 + 25 = 42");
/// assert_eq!(reply.tool_calls[0].name, "add");
/// # Ok::<_, agentkit_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct Agent {
    pub(crate) inner: Arc<AgentInner>,
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("name", &self.inner.name)
            .field("version", &self.inner.version)
            .field("model", &self.inner.model.id())
            .field("tools", &self.inner.tools)
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// A builder; `model` is required.
    pub fn builder() -> AgentBuilder {
        AgentBuilder::default()
    }

    /// The agent's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The agent's version.
    pub fn version(&self) -> &str {
        &self.inner.version
    }

    /// The model.
    pub fn model(&self) -> &Arc<dyn Model> {
        &self.inner.model
    }

    /// The tools.
    pub fn tools(&self) -> &Toolbox {
        &self.inner.tools
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The price table used for cost and cost budgets.
    pub fn prices(&self) -> &PriceTable {
        &self.inner.prices
    }
}

impl Executor for Agent {
    async fn execute(&self, invocation: Invocation) -> Result<Reply> {
        self.run(invocation).await
    }

    async fn stream(&self, invocation: Invocation) -> Result<EventStream> {
        self.run_streaming(invocation)
    }
}

/// Builds an [`Agent`]; [`build`](AgentBuilder::build) validates everything once.
#[must_use]
#[derive(Default)]
pub struct AgentBuilder {
    name: Option<String>,
    version: Option<String>,
    model: Option<Arc<dyn Model>>,
    tools: Vec<Arc<dyn Tool>>,
    prompt: Option<String>,
    limits: Limits,
    prices: Option<PriceTable>,
    observer: Option<Arc<dyn Observer>>,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
}

impl fmt::Debug for AgentBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentBuilder")
            .field("name", &self.name)
            .field("tools", &self.tools.len())
            .finish_non_exhaustive()
    }
}

impl AgentBuilder {
    /// The agent's name (default `"agent"`): in logs, metrics, routes.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The agent's version (default `"1"`): in run records, for canaries and replay.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// The model.
    pub fn model(mut self, model: impl Model + 'static) -> Self {
        self.model = Some(Arc::new(model));
        self
    }

    /// A shared model.
    pub fn shared_model(mut self, model: Arc<dyn Model>) -> Self {
        self.model = Some(model);
        self
    }

    /// Adds a tool.
    pub fn tool(mut self, tool: impl Tool + 'static) -> Self {
        self.tools.push(Arc::new(tool));
        self
    }

    /// Adds a shared tool.
    pub fn shared_tool(mut self, tool: Arc<dyn Tool>) -> Self {
        self.tools.push(tool);
        self
    }

    /// The system prompt: a strict minijinja template over the invocation's metadata.
    pub fn system_prompt(mut self, template: impl Into<String>) -> Self {
        self.prompt = Some(template.into());
        self
    }

    /// All limits at once.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Model calls per run (default 10).
    pub fn max_steps(mut self, steps: u32) -> Self {
        self.limits.max_steps = steps;
        self
    }

    /// Tokens per run.
    pub fn token_budget(mut self, tokens: u64) -> Self {
        self.limits.token_budget = Some(tokens);
        self
    }

    /// US dollars per run.
    pub fn cost_budget(mut self, usd: f64) -> Self {
        self.limits.cost_budget = Some(usd);
        self
    }

    /// Default time one tool call may take.
    pub fn tool_timeout(mut self, timeout: Duration) -> Self {
        self.limits.tool_timeout = timeout;
        self
    }

    /// Tool calls of one step that run at once.
    pub fn max_parallel_tools(mut self, n: usize) -> Self {
        self.limits.max_parallel_tools = n;
        self
    }

    /// A deadline for every run, on top of the caller's.
    pub fn run_timeout(mut self, timeout: Duration) -> Self {
        self.limits.run_timeout = Some(timeout);
        self
    }

    /// Prices for cost and cost budgets (default: [`PriceTable::with_defaults`]).
    pub fn prices(mut self, prices: PriceTable) -> Self {
        self.prices = Some(prices);
        self
    }

    /// Sets the price of one model, on top of the table.
    pub fn price(mut self, model: impl Into<String>, price: Price) -> Self {
        self.prices
            .get_or_insert_with(PriceTable::with_defaults)
            .set(model, price);
        self
    }

    /// The observer of this agent's runs (default: the global one, if installed).
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Upper bound on output tokens per model call.
    pub fn max_tokens(mut self, tokens: u32) -> Self {
        self.max_tokens = Some(tokens);
        self
    }

    /// Sampling temperature.
    pub fn temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }

    /// Validates and builds: a model is required, tool names must be valid and unique, the
    /// prompt template must parse, and the limits must make sense.
    pub fn build(self) -> Result<Agent> {
        let model = self
            .model
            .ok_or_else(|| Error::invalid_input("an agent needs a model"))?;
        let mut tools = Toolbox::new();
        for tool in self.tools {
            tools.insert(tool)?;
        }
        let prompt = self.prompt.map(PromptTemplate::new).transpose()?;
        let limits = self.limits;
        if limits.max_steps == 0 {
            return Err(Error::invalid_input("max_steps must be at least 1"));
        }
        if limits.max_parallel_tools == 0 {
            return Err(Error::invalid_input(
                "max_parallel_tools must be at least 1",
            ));
        }
        if limits
            .cost_budget
            .is_some_and(|c| !(c.is_finite() && c >= 0.0))
        {
            return Err(Error::invalid_input(
                "cost_budget must be a finite, non-negative amount",
            ));
        }
        if self.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            return Err(Error::invalid_input("temperature must be between 0 and 2"));
        }
        let name = self.name.unwrap_or_else(|| "agent".to_owned());
        if name.is_empty() {
            return Err(Error::invalid_input("an agent's name must not be empty"));
        }
        let prices = self.prices.unwrap_or_else(PriceTable::with_defaults);
        let model_price = prices.get(model.id());
        Ok(Agent {
            inner: Arc::new(AgentInner {
                name,
                version: self.version.unwrap_or_else(|| "1".to_owned()),
                model,
                tools,
                prompt,
                limits,
                prices,
                model_price,
                observer: self.observer,
                max_tokens: self.max_tokens,
                temperature: self.temperature,
            }),
        })
    }
}
