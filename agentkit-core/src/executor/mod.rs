//! The [`Executor`] contract every transport calls, its erased twin [`BoxExecutor`], and the
//! layers that wrap any executor ([`Timeout`], [`Retry`], [`ConcurrencyLimit`], [`Guard`]);
//! rollout ([`Canary`], [`Flags`]) and alerting ([`HealthWatch`]).

mod boxed;
mod canary;
mod concurrency;
mod flags;
mod guard;
mod health;
mod pool;
mod retry;
mod router;
mod service;
mod timeout;

use std::future::Future;
use std::time::Duration;

use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::message::{Message, StopReason, Usage};
use crate::tool::ToolCallRecord;
use crate::{Context, Result};

pub use boxed::BoxExecutor;
pub use canary::{Canary, CanaryGuard, CanaryStatus, Sticky};
pub use concurrency::{ConcurrencyLimit, ConcurrencyLimitLayer};
pub use flags::{Flag, FlagRule, FlagSwitch, Flags};
pub use guard::{Guard, GuardLayer, Redactor};
pub use health::{Alert, AlertRule, AlertRules, HealthWatch, Watched};
pub use pool::{Pool, PoolBuilder, Probe};
pub use retry::{Retry, RetryLayer};
pub use router::{Route, Router, RouterBuilder};
pub use service::{ExecutorService, ServiceExecutor};
pub use timeout::{Timeout, TimeoutLayer};

/// One request to an executor: new input, prior history, the request's [`Context`], metadata.
#[derive(Clone, Debug, Default)]
pub struct Invocation {
    /// The new messages of this turn (usually one user message).
    pub input: Vec<Message>,
    /// The conversation before this turn (loaded by a session executor).
    pub history: Vec<Message>,
    /// The request's context.
    pub context: Context,
    /// Caller metadata; also the variables of the agent's prompt template.
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

impl Invocation {
    /// An invocation with one user message.
    pub fn text(text: impl Into<String>) -> Self {
        Self::new(vec![Message::user(text)])
    }

    /// An invocation with these input messages.
    pub fn new(input: Vec<Message>) -> Self {
        Self {
            input,
            history: Vec::new(),
            context: Context::new(),
            metadata: serde_json::Map::new(),
        }
    }

    /// Runs in `context`.
    #[must_use]
    pub fn with_context(mut self, context: Context) -> Self {
        self.context = context;
        self
    }

    /// Continues after `history`.
    #[must_use]
    pub fn with_history(mut self, history: Vec<Message>) -> Self {
        self.history = history;
        self
    }

    /// Adds one metadata value (a prompt template variable).
    #[must_use]
    pub fn with_metadata(
        mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

/// What an executor answers: the output and everything it cost.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// The final answer's text.
    pub output: String,
    /// The messages this turn added: the input, the model's messages and the tool results.
    pub messages: Vec<Message>,
    /// Tokens spent, summed over every model call.
    pub usage: Usage,
    /// Cost in US dollars, summed over every model call.
    pub cost_usd: f64,
    /// One record per tool call, in call order.
    pub tool_calls: Vec<ToolCallRecord>,
    /// Why the final model call stopped.
    pub stop_reason: StopReason,
    /// The model that gave the final answer.
    pub model: String,
    /// How many model calls the run made.
    pub steps: u32,
    /// The session this turn was saved to, when it ran in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionState>,
}

/// Where a session turn was saved.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    /// The session id.
    pub id: String,
    /// The session's version after this turn.
    pub version: u64,
}

/// One event of a streamed run, in order: text deltas and tool calls as they happen, then the
/// run's usage, then [`Done`](AgentEvent::Done) with the whole reply.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentEvent {
    /// A piece of the answer's text.
    TextDelta {
        /// The text.
        text: String,
    },
    /// A tool call is about to run.
    ToolCallStarted {
        /// The model's call id.
        id: String,
        /// The tool.
        name: String,
        /// The arguments as the model wrote them.
        arguments: String,
    },
    /// A tool call ended.
    ToolCallFinished(ToolCallRecord),
    /// The run's tokens and cost.
    Usage {
        /// Tokens, summed over the run.
        usage: Usage,
        /// Cost in US dollars.
        cost_usd: f64,
    },
    /// The run finished.
    Done(Box<Reply>),
}

impl AgentEvent {
    /// The event's name on the wire (`text_delta`, `tool_call_started`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Self::TextDelta { .. } => "text_delta",
            Self::ToolCallStarted { .. } => "tool_call_started",
            Self::ToolCallFinished(_) => "tool_call_finished",
            Self::Usage { .. } => "usage",
            Self::Done(_) => "done",
        }
    }

    /// The events that replay a finished `reply`, for executors that cannot stream.
    pub fn replay(reply: Reply) -> Vec<AgentEvent> {
        let mut events = Vec::with_capacity(reply.tool_calls.len() * 2 + 3);
        for record in &reply.tool_calls {
            events.push(AgentEvent::ToolCallStarted {
                id: record.id.clone(),
                name: record.name.clone(),
                arguments: record.arguments.clone(),
            });
            events.push(AgentEvent::ToolCallFinished(record.clone()));
        }
        if !reply.output.is_empty() {
            events.push(AgentEvent::TextDelta {
                text: reply.output.clone(),
            });
        }
        events.push(AgentEvent::Usage {
            usage: reply.usage,
            cost_usd: reply.cost_usd,
        });
        events.push(AgentEvent::Done(Box::new(reply)));
        events
    }
}

/// A stream of [`AgentEvent`]s; an error ends it.
pub type EventStream = BoxStream<'static, Result<AgentEvent>>;

/// Anything that turns an [`Invocation`] into a [`Reply`]: an agent, a session, a router, a
/// pool, a remote service, a queue. Transports call only this, so executors nest freely.
///
/// Implement [`execute`](Executor::execute); [`stream`](Executor::stream) defaults to replaying
/// the finished reply. The trait is generic for the hot path; [`BoxExecutor`] erases the type
/// when executors of different types must sit side by side.
///
/// ```
/// use agentkit_core::{Executor, Invocation, Reply, Result};
///
/// /// Answers every input with its length.
/// struct Length;
///
/// impl Executor for Length {
///     async fn execute(&self, invocation: Invocation) -> Result<Reply> {
///         let text = invocation.input.iter().map(|m| m.text_content()).collect::<String>();
///         Ok(Reply { output: text.len().to_string(), ..Reply::default() })
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let reply = Length.execute(Invocation::text("hello")).await?;
/// assert_eq!(reply.output, "5");
/// # Ok::<_, agentkit_core::Error>(())
/// # }).unwrap();
/// ```
pub trait Executor: Send + Sync {
    /// Runs the invocation to its end.
    fn execute(&self, invocation: Invocation) -> impl Future<Output = Result<Reply>> + Send;

    /// Runs the invocation, yielding events as they happen.
    fn stream(&self, invocation: Invocation) -> impl Future<Output = Result<EventStream>> + Send {
        async move {
            let reply = self.execute(invocation).await?;
            let events = AgentEvent::replay(reply);
            Ok(Box::pin(futures::stream::iter(events.into_iter().map(Ok))) as EventStream)
        }
    }
}

impl<E: Executor + ?Sized> Executor for std::sync::Arc<E> {
    fn execute(&self, invocation: Invocation) -> impl Future<Output = Result<Reply>> + Send {
        (**self).execute(invocation)
    }

    fn stream(&self, invocation: Invocation) -> impl Future<Output = Result<EventStream>> + Send {
        (**self).stream(invocation)
    }
}

impl<E: Executor + ?Sized> Executor for Box<E> {
    fn execute(&self, invocation: Invocation) -> impl Future<Output = Result<Reply>> + Send {
        (**self).execute(invocation)
    }

    fn stream(&self, invocation: Invocation) -> impl Future<Output = Result<EventStream>> + Send {
        (**self).stream(invocation)
    }
}

/// Conveniences on every executor.
pub trait ExecutorExt: Executor + Sized + 'static {
    /// Erases the type.
    fn boxed(self) -> BoxExecutor {
        BoxExecutor::new(self)
    }

    /// Wraps with a [`Timeout`].
    fn with_timeout(self, timeout: Duration) -> Timeout<Self> {
        Timeout::new(self, timeout)
    }
}

impl<E: Executor + Sized + 'static> ExecutorExt for E {}
