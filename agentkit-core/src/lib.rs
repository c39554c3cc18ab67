//! The agentkit contract and runtime.
//!
//! - Conversation types that belong to no provider: [`Message`], [`ToolCall`], [`ToolResult`],
//!   [`Usage`], [`StopReason`].
//! - [`Model`](model::Model): one request in, one response or stream out; the deterministic
//!   [`ScriptedModel`](model::ScriptedModel), the OpenAI-compatible client (feature `openai`),
//!   and the [`RetryModel`](model::RetryModel) and [`Fallback`](model::Fallback) wrappers.
//! - [`Tool`](tool::Tool): typed async functions via [`tool_fn`](tool::tool_fn).
//! - [`Agent`]: model + tools + prompt + limits, running the tool loop.
//! - [`Executor`]: what every transport calls; [`BoxExecutor`] and the layers
//!   [`Timeout`](executor::Timeout), [`Retry`](executor::Retry),
//!   [`ConcurrencyLimit`](executor::ConcurrencyLimit), and a `tower::Service` adapter.
//! - [`Context`]: request id, tenant, user, session, deadline, cancellation, trace, extensions.
//! - One [`Error`] whose [`ErrorKind`] says what the caller can do.
//! - [`secret`]: secrets that are never printed and can rotate without a restart.
//! - [`load`]: synthetic load for staging, at a set rate or concurrency, with latency
//!   percentiles and errors by code.
//!
//! This crate names no database, queue, web framework or telemetry exporter.

mod agent;
mod backoff;
mod context;
pub mod demo;
mod error;
pub mod executor;
mod hash;
pub mod load;
mod message;
pub mod model;
pub mod observer;
mod pricing;
pub mod secret;
pub mod tool;
pub mod trace;

pub use agent::{Agent, AgentBuilder, Limits, PromptTemplate, Structured};
pub use backoff::Backoff;
pub use context::{Context, Extensions, IdempotencyKey, generate_id};
pub use error::{BoxError, Error, ErrorKind, Result};
pub use executor::{
    AgentEvent, BoxExecutor, EventStream, Executor, ExecutorExt, Invocation, Reply, SessionState,
};
pub use hash::stable_hash;
pub use message::{ContentPart, Message, Role, StopReason, ToolCall, ToolResult, Usage};
pub use pricing::{Price, PriceTable};
pub use trace::TraceContext;

pub use async_trait::async_trait;
pub use tokio_util::sync::CancellationToken;
