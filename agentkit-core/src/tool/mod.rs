//! Tools: the [`Tool`] contract, typed tools over plain async functions, and the [`Toolbox`].

mod ledger;
mod record;
mod toolbox;
mod typed;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{Context, Result};

pub use ledger::{EffectLedger, Ledger, MemoryLedger};
pub use record::ToolCallRecord;
pub use toolbox::Toolbox;
pub use typed::{
    ArgsOnly, FnTool, Inline, WithContext, tool_fn, tool_fn_inline, tool_fn_with_context,
};

/// What the model is told about a tool: its name, what it does, and its arguments' JSON Schema.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// The name the model calls it by (`[a-zA-Z0-9_-]{1,64}` for most providers).
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// The JSON Schema of its arguments (an object schema).
    pub parameters: Arc<serde_json::Value>,
}

impl ToolSpec {
    /// A spec from its parts.
    pub fn new(
        name: impl Into<String>,
        description: impl Into<String>,
        parameters: serde_json::Value,
    ) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            parameters: Arc::new(parameters),
        }
    }
}

/// What a tool call knows about the call and the request around it, borrowed from the loop so
/// a call that does not look at it costs nothing.
#[derive(Clone, Copy, Debug)]
pub struct ToolContext<'a> {
    call_id: &'a str,
    context: &'a Context,
}

/// The job a run belongs to, put in the [`Context`] by a queue worker; tools derive their
/// idempotency keys from it.
///
/// With a [`Ledger`] beside it, the agent loop also keeps the job's progress there: before a
/// step's side-effecting tool calls run, and again after, it records the conversation so far
/// under `{job}:progress`. A redelivered job (see [`JobAttempt`]) continues from that record:
/// the tool calls the last attempt had decided keep their ids, hence their idempotency keys,
/// instead of being decided again by a model that would name them afresh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobId(pub Arc<str>);

/// Which attempt at its job a run is (1 for the first), put in the [`Context`] by a queue
/// worker beside [`JobId`]; from the second on, the agent loop resumes from the job's recorded
/// progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobAttempt(pub u32);

impl<'a> ToolContext<'a> {
    /// The context of the call `call_id` in the request `context`.
    pub fn new(call_id: &'a str, context: &'a Context) -> Self {
        Self { call_id, context }
    }

    /// The model's id for this call.
    pub fn call_id(&self) -> &'a str {
        self.call_id
    }

    /// The request's context (tenant, deadline, cancellation, extensions, ...).
    pub fn context(&self) -> &'a Context {
        self.context
    }

    /// A key that is the same every time this call of this job runs again (a redelivered job),
    /// derived from the job id and the call id; `None` outside a job. The call id survives a
    /// redelivery because the job resumes from its recorded progress (see [`JobId`]) rather
    /// than asking the model again.
    ///
    /// Pass it to the payment provider, the mailer, the ticket system, so that a job run twice
    /// does not charge, mail or file twice.
    pub fn idempotency_key(&self) -> Option<String> {
        let job = self.context.extension::<JobId>()?;
        Some(format!("{}:{}", job.0, self.call_id))
    }

    /// An owned copy, for code that keeps it across `.await` points.
    pub fn to_owned(&self) -> OwnedToolContext {
        OwnedToolContext {
            call_id: self.call_id.to_owned(),
            context: self.context.clone(),
        }
    }
}

/// An owned [`ToolContext`], as given to [`tool_fn_with_context`] functions.
#[derive(Clone, Debug)]
pub struct OwnedToolContext {
    call_id: String,
    context: Context,
}

impl OwnedToolContext {
    /// The borrowed view, with every accessor.
    pub fn borrow(&self) -> ToolContext<'_> {
        ToolContext::new(&self.call_id, &self.context)
    }

    /// The model's id for this call.
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// The request's context.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// See [`ToolContext::idempotency_key`].
    pub fn idempotency_key(&self) -> Option<String> {
        self.borrow().idempotency_key()
    }
}

/// A function the model can call.
///
/// Most tools are typed async functions made with [`tool_fn`]; implement this trait directly
/// for tools whose schema is only known at run time (an MCP server's, a plugin's).
///
/// ```
/// use agentkit_core::tool::{Tool, ToolContext, ToolSpec};
/// use agentkit_core::{Context, Result};
///
/// struct Clock {
///     spec: ToolSpec,
/// }
///
/// #[async_trait::async_trait]
/// impl Tool for Clock {
///     fn spec(&self) -> &ToolSpec {
///         &self.spec
///     }
///
///     async fn call(&self, _arguments: &str, _cx: &ToolContext<'_>) -> Result<String> {
///         Ok("\"12:00\"".to_owned())
///     }
/// }
///
/// let clock = Clock {
///     spec: ToolSpec::new("clock", "The current time", serde_json::json!({"type": "object"})),
/// };
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let cx = Context::new();
/// let out = clock.call("{}", &ToolContext::new("call_1", &cx)).await?;
/// assert_eq!(out, "\"12:00\"");
/// # Ok::<_, agentkit_core::Error>(())
/// # }).unwrap();
/// ```
#[async_trait]
pub trait Tool: Send + Sync {
    /// Name, description and argument schema.
    fn spec(&self) -> &ToolSpec;

    /// Whether calling it changes the world (charges, sends, writes). Side-effecting calls of a
    /// job are recorded by idempotency key and not repeated when the job runs again.
    fn side_effects(&self) -> bool {
        false
    }

    /// How long one call may take; `None` uses the agent's default.
    fn timeout(&self) -> Option<Duration> {
        None
    }

    /// The scope a caller must hold to use the tool (see [`Context::has_scope`]); `None`: any
    /// caller. A tool the caller may not use is left out of the tools offered to the model,
    /// and a call to it anyway is refused with an error result.
    ///
    /// [`Context::has_scope`]: crate::Context::has_scope
    fn required_scope(&self) -> Option<&str> {
        None
    }

    /// Runs the tool on the model's argument text and returns the content for the model
    /// (usually JSON). An error goes back to the model as an error result it can correct from.
    async fn call(&self, arguments: &str, cx: &ToolContext<'_>) -> Result<String>;

    /// The same result as [`call`](Tool::call), computed on the spot, for tools that never
    /// wait (pure computation: arithmetic, formatting, a lookup in memory); `None`, the
    /// default, for every other tool. The [`Toolbox`] tries this first and, when it answers,
    /// makes no future, no allocation for one and no timer for the call's timeout (a call that
    /// never waits cannot be timed out anyway). See [`tool_fn_inline`].
    fn call_inline(&self, arguments: &str, cx: &ToolContext<'_>) -> Option<Result<String>> {
        let _ = (arguments, cx);
        None
    }
}

const _: Option<&dyn Tool> = None;

#[async_trait]
impl<T: Tool + ?Sized> Tool for Arc<T> {
    fn spec(&self) -> &ToolSpec {
        (**self).spec()
    }

    fn side_effects(&self) -> bool {
        (**self).side_effects()
    }

    fn timeout(&self) -> Option<Duration> {
        (**self).timeout()
    }

    fn required_scope(&self) -> Option<&str> {
        (**self).required_scope()
    }

    async fn call(&self, arguments: &str, cx: &ToolContext<'_>) -> Result<String> {
        (**self).call(arguments, cx).await
    }

    fn call_inline(&self, arguments: &str, cx: &ToolContext<'_>) -> Option<Result<String>> {
        (**self).call_inline(arguments, cx)
    }
}

#[async_trait]
impl<T: Tool + ?Sized> Tool for Box<T> {
    fn spec(&self) -> &ToolSpec {
        (**self).spec()
    }

    fn side_effects(&self) -> bool {
        (**self).side_effects()
    }

    fn timeout(&self) -> Option<Duration> {
        (**self).timeout()
    }

    fn required_scope(&self) -> Option<&str> {
        (**self).required_scope()
    }

    async fn call(&self, arguments: &str, cx: &ToolContext<'_>) -> Result<String> {
        (**self).call(arguments, cx).await
    }

    fn call_inline(&self, arguments: &str, cx: &ToolContext<'_>) -> Option<Result<String>> {
        (**self).call_inline(arguments, cx)
    }
}
