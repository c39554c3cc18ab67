//! Typed tools: an async function over `Args: Deserialize + JsonSchema` becomes a [`Tool`]; so
//! does a plain function, for tools that never wait.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::BoxError;
use crate::tool::{OwnedToolContext, Tool, ToolContext, ToolSpec};
use crate::{Error, ErrorKind, Result};

/// A tool made from an async function; see [`tool_fn`].
pub struct FnTool<A, F, M = WithContext> {
    spec: ToolSpec,
    f: F,
    _mode: PhantomData<fn(M)>,
    side_effects: bool,
    timeout: Option<Duration>,
    scope: Option<String>,
    _args: PhantomData<fn(A)>,
}

/// Marks a [`FnTool`] whose function takes only the arguments.
#[derive(Debug)]
pub enum ArgsOnly {}

/// Marks a [`FnTool`] whose function also takes an [`OwnedToolContext`].
#[derive(Debug)]
pub enum WithContext {}

/// Marks a [`FnTool`] made from a plain function that never waits; see [`tool_fn_inline`].
#[derive(Debug)]
pub enum Inline {}

mod sealed {
    /// The [`FnTool`](super::FnTool) kinds whose calls may wait, hence may time out.
    pub trait MayWait {}
    impl MayWait for super::ArgsOnly {}
    impl MayWait for super::WithContext {}
}

impl<A, F, M> fmt::Debug for FnTool<A, F, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnTool")
            .field("name", &self.spec.name)
            .field("side_effects", &self.side_effects)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<A: JsonSchema, F, M> FnTool<A, F, M> {
    /// A tool of no side effects, timeout or scope, its schema derived from `A`.
    fn new(name: String, description: String, f: F) -> Self {
        FnTool {
            spec: ToolSpec::new(name, description, schema_of::<A>()),
            f,
            _mode: PhantomData,
            side_effects: false,
            timeout: None,
            scope: None,
            _args: PhantomData,
        }
    }
}

impl<A, F, M> FnTool<A, F, M> {
    /// Marks the tool as side-effecting (see [`Tool::side_effects`]).
    #[must_use]
    pub fn with_side_effects(mut self) -> Self {
        self.side_effects = true;
        self
    }

    /// Lets only callers granted `scope` use the tool (see [`Tool::required_scope`]).
    #[must_use]
    pub fn requires_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }
}

impl<A, F, M: sealed::MayWait> FnTool<A, F, M> {
    /// Sets how long one call may take. (An [`Inline`] tool has no timeout: it never waits.)
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// The JSON Schema of `A`, derived once, trimmed of keys providers reject.
fn schema_of<A: JsonSchema>() -> serde_json::Value {
    let mut schema = schemars::schema_for!(A).to_value();
    if let Some(object) = schema.as_object_mut() {
        object.remove("$schema");
        object.remove("title");
        if !object.contains_key("type") && !object.contains_key("$ref") {
            object.insert("type".into(), "object".into());
        }
    }
    schema
}

/// Makes a tool from an async function of typed arguments.
///
/// The arguments' JSON Schema is derived once, here, with schemars; each call decodes the
/// model's argument bytes straight into `A`. Invalid arguments, and any error the function
/// returns, go back to the model as an error result it can correct from.
///
/// ```
/// use agentkit_core::tool::{tool_fn, Tool};
///
/// #[derive(serde::Deserialize, schemars::JsonSchema)]
/// struct AddArgs {
///     /// The first addend.
///     a: f64,
///     /// The second addend.
///     b: f64,
/// }
///
/// let add = tool_fn("add", "Adds two numbers", |args: AddArgs| async move {
///     Ok::<_, std::convert::Infallible>(args.a + args.b)
/// });
/// assert_eq!(add.spec().name, "add");
/// assert!(add.spec().parameters["properties"]["a"].is_object());
/// ```
pub fn tool_fn<A, F, Fut, O, E>(
    name: impl Into<String>,
    description: impl Into<String>,
    f: F,
) -> FnTool<A, F, ArgsOnly>
where
    A: DeserializeOwned + JsonSchema + Send + 'static,
    F: Fn(A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<O, E>> + Send + 'static,
    O: Serialize,
    E: Into<BoxError>,
{
    FnTool::new(name.into(), description.into(), f)
}

/// Like [`tool_fn`], for functions that also need the call's context (tenant, deadline,
/// idempotency key, extensions), as an [`OwnedToolContext`].
///
/// ```
/// use agentkit_core::tool::{tool_fn_with_context, OwnedToolContext};
///
/// #[derive(serde::Deserialize, schemars::JsonSchema)]
/// struct Charge {
///     cents: u64,
/// }
///
/// let charge = tool_fn_with_context("charge", "Charges the card", |args: Charge, cx: OwnedToolContext| async move {
///     let key = cx.idempotency_key(); // pass to the payment provider
///     Ok::<_, String>(serde_json::json!({"charged": args.cents, "key": key}))
/// })
/// .with_side_effects();
/// # let _ = charge;
/// ```
pub fn tool_fn_with_context<A, F, Fut, O, E>(
    name: impl Into<String>,
    description: impl Into<String>,
    f: F,
) -> FnTool<A, F, WithContext>
where
    A: DeserializeOwned + JsonSchema + Send + 'static,
    F: Fn(A, OwnedToolContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<O, E>> + Send + 'static,
    O: Serialize,
    E: Into<BoxError>,
{
    FnTool::new(name.into(), description.into(), f)
}

/// Makes a tool from a plain function of typed arguments, for work that never waits: arithmetic,
/// formatting, a lookup in memory. The [`Toolbox`](crate::tool::Toolbox) runs it on the spot
/// (see [`Tool::call_inline`]): no future, no allocation for one, no timer.
///
/// Nothing that waits belongs here (no I/O, no locks held by others, no long loops): the call
/// runs on the agent's task and cannot be timed out. Use [`tool_fn`] for those.
///
/// ```
/// use agentkit_core::tool::{tool_fn_inline, Tool, ToolContext};
/// use agentkit_core::Context;
///
/// #[derive(serde::Deserialize, schemars::JsonSchema)]
/// struct AddArgs {
///     a: i64,
///     b: i64,
/// }
///
/// let add = tool_fn_inline("add", "Adds two numbers", |args: AddArgs| {
///     Ok::<_, std::convert::Infallible>(args.a + args.b)
/// });
/// let cx = Context::new();
/// let out = add.call_inline(r#"{"a":17,"b":25}"#, &ToolContext::new("call_1", &cx));
/// assert_eq!(out.unwrap().unwrap(), "42");
/// ```
pub fn tool_fn_inline<A, F, O, E>(
    name: impl Into<String>,
    description: impl Into<String>,
    f: F,
) -> FnTool<A, F, Inline>
where
    A: DeserializeOwned + JsonSchema + Send + 'static,
    F: Fn(A) -> std::result::Result<O, E> + Send + Sync + 'static,
    O: Serialize,
    E: Into<BoxError>,
{
    FnTool::new(name.into(), description.into(), f)
}

impl<A, F, M> FnTool<A, F, M>
where
    A: DeserializeOwned,
{
    fn decode(&self, arguments: &str) -> Result<A> {
        match serde_json::from_str(arguments) {
            Ok(args) => Ok(args),
            // Models send "" for tools without arguments.
            Err(_) if arguments.trim().is_empty() => self.decode("{}"),
            Err(e) => Err(Error::invalid_input(format!(
                "invalid arguments for tool `{}`: {e}",
                self.spec.name
            ))),
        }
    }

    fn encode<O: Serialize, E: Into<BoxError>>(
        &self,
        output: std::result::Result<O, E>,
    ) -> Result<String> {
        let output = output.map_err(|e| Error::from_boxed(ErrorKind::Internal, e.into()))?;
        serde_json::to_string(&output).map_err(|e| {
            Error::internal(format!(
                "tool `{}` returned unserializable output: {e}",
                self.spec.name
            ))
        })
    }
}

#[async_trait]
impl<A, F, Fut, O, E> Tool for FnTool<A, F, ArgsOnly>
where
    A: DeserializeOwned + Send + 'static,
    F: Fn(A) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<O, E>> + Send + 'static,
    O: Serialize,
    E: Into<BoxError>,
{
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn side_effects(&self) -> bool {
        self.side_effects
    }

    fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    fn required_scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    async fn call(&self, arguments: &str, _cx: &ToolContext<'_>) -> Result<String> {
        let args = self.decode(arguments)?;
        self.encode((self.f)(args).await)
    }
}

#[async_trait]
impl<A, F, Fut, O, E> Tool for FnTool<A, F, WithContext>
where
    A: DeserializeOwned + Send + 'static,
    F: Fn(A, OwnedToolContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<O, E>> + Send + 'static,
    O: Serialize,
    E: Into<BoxError>,
{
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn side_effects(&self) -> bool {
        self.side_effects
    }

    fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    fn required_scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    async fn call(&self, arguments: &str, cx: &ToolContext<'_>) -> Result<String> {
        let args = self.decode(arguments)?;
        self.encode((self.f)(args, cx.to_owned()).await)
    }
}

#[async_trait]
impl<A, F, O, E> Tool for FnTool<A, F, Inline>
where
    A: DeserializeOwned + Send + 'static,
    F: Fn(A) -> std::result::Result<O, E> + Send + Sync + 'static,
    O: Serialize,
    E: Into<BoxError>,
{
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn side_effects(&self) -> bool {
        self.side_effects
    }

    fn required_scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    async fn call(&self, arguments: &str, cx: &ToolContext<'_>) -> Result<String> {
        self.call_now(arguments, cx)
    }

    fn call_inline(&self, arguments: &str, cx: &ToolContext<'_>) -> Option<Result<String>> {
        Some(self.call_now(arguments, cx))
    }
}

impl<A, F, O, E> FnTool<A, F, Inline>
where
    A: DeserializeOwned,
    F: Fn(A) -> std::result::Result<O, E>,
    O: Serialize,
    E: Into<BoxError>,
{
    fn call_now(&self, arguments: &str, _cx: &ToolContext<'_>) -> Result<String> {
        let args = self.decode(arguments)?;
        self.encode((self.f)(args))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Context;

    #[derive(serde::Deserialize, schemars::JsonSchema)]
    struct AddArgs {
        a: i64,
        b: i64,
    }

    fn add() -> impl Tool {
        tool_fn("add", "Adds", |args: AddArgs| async move {
            Ok::<_, std::convert::Infallible>(args.a + args.b)
        })
    }

    async fn call(tool: &impl Tool, args: &str) -> Result<String> {
        let cx = Context::new();
        tool.call(args, &ToolContext::new("c1", &cx)).await
    }

    #[tokio::test]
    async fn decodes_calls_and_encodes() {
        assert_eq!(call(&add(), r#"{"a":17,"b":25}"#).await.unwrap(), "42");
    }

    #[tokio::test]
    async fn invalid_arguments_are_invalid_input_naming_the_problem() {
        let err = call(&add(), r#"{"a":17}"#).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.message().contains("missing field `b`"), "{err}");
        let err = call(&add(), "not json").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }

    #[test]
    fn schema_is_a_clean_object_schema() {
        let tool = add();
        let schema = &tool.spec().parameters;
        assert_eq!(schema["type"], "object");
        assert!(schema.get("$schema").is_none());
        assert_eq!(schema["required"], serde_json::json!(["a", "b"]));
    }

    #[tokio::test]
    async fn idempotency_key_comes_from_job_and_call() {
        use crate::tool::JobId;
        let cx = Context::new();
        let plain = ToolContext::new("c1", &cx);
        assert_eq!(plain.idempotency_key(), None);
        let cx = Context::new().with_extension(JobId("job-9".into()));
        let in_job = ToolContext::new("c1", &cx);
        assert_eq!(in_job.idempotency_key().as_deref(), Some("job-9:c1"));
    }
}
