//! [`Toolbox`]: the tools of an agent, looked up by name and called safely.

use std::borrow::Cow;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::time::Instant;

use crate::message::{ToolCall, ToolResult};
use crate::tool::{Ledger, Tool, ToolCallRecord, ToolContext, ToolSpec};
use crate::{Context, Error, ErrorKind, Result};

/// The tools an agent may call, with their specs ready to send to the model.
///
/// Calling through the toolbox turns every failure into an error *result* for the model: an
/// unknown name, arguments that do not decode, an error from the tool, a timeout, even a panic.
/// None of them ends the run.
#[derive(Clone, Default)]
pub struct Toolbox {
    tools: Vec<(Box<str>, Arc<dyn Tool>)>,
    specs: Arc<[ToolSpec]>,
    /// Whether some tool needs a scope (else every caller gets every spec, unfiltered).
    scoped: bool,
}

impl fmt::Debug for Toolbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.tools.iter().map(|(name, _)| name))
            .finish()
    }
}

impl Toolbox {
    /// An empty toolbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tool; an error if the name is taken or not a valid tool name.
    pub fn insert(&mut self, tool: Arc<dyn Tool>) -> Result<()> {
        let name = tool.spec().name.clone();
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(Error::invalid_input(format!(
                "tool name {name:?} must be 1-64 characters of [a-zA-Z0-9_-]"
            )));
        }
        if self.get(&name).is_some() {
            return Err(Error::invalid_input(format!(
                "tool `{name}` is registered twice"
            )));
        }
        self.scoped |= tool.required_scope().is_some();
        self.tools.push((name.into_boxed_str(), tool));
        self.specs = self.tools.iter().map(|(_, t)| t.spec().clone()).collect();
        Ok(())
    }

    /// The tool called `name`.
    pub fn get(&self, name: &str) -> Option<&dyn Tool> {
        // A linear scan beats hashing for the handful of tools an agent has (the length is
        // compared before the bytes).
        self.tools
            .iter()
            .find(|(n, _)| **n == *name)
            .map(|(_, tool)| &**tool)
    }

    /// The specs of all tools, in insertion order.
    pub fn specs(&self) -> &[ToolSpec] {
        &self.specs
    }

    /// The specs of the tools the caller of `cx` may use, in insertion order (all of them,
    /// borrowed, when no tool needs a scope).
    pub fn specs_for(&self, cx: &Context) -> Cow<'_, [ToolSpec]> {
        if !self.scoped {
            return Cow::Borrowed(&self.specs);
        }
        Cow::Owned(
            self.tools
                .iter()
                .filter(|(_, tool)| tool.required_scope().is_none_or(|s| cx.has_scope(s)))
                .map(|(_, tool)| tool.spec().clone())
                .collect(),
        )
    }

    /// The number of tools.
    pub fn len(&self) -> usize {
        self.tools.len()
    }

    /// Whether there are no tools.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// Runs `call`, bounded by `timeout` (or the tool's own), and reports the result for the
    /// model together with a record of the call.
    pub async fn call(
        &self,
        call: &ToolCall,
        cx: &Context,
        timeout: Duration,
    ) -> (ToolResult, ToolCallRecord) {
        let started = Instant::now();
        let outcome = self.try_call(call, cx, timeout).await;
        let duration = started.elapsed();
        let (content, is_error, error) = match outcome {
            Ok(content) => (content, false, None),
            Err(error) => {
                let text = ToolCallRecord::error_text(&error);
                (text.clone(), true, Some(text))
            }
        };
        let record = ToolCallRecord {
            id: call.id.clone(),
            name: call.name.clone(),
            arguments: call.arguments.clone(),
            ok: !is_error,
            duration,
            error,
        };
        let result = ToolResult {
            call_id: call.id.clone(),
            content,
            is_error,
        };
        (result, record)
    }

    async fn try_call(&self, call: &ToolCall, cx: &Context, timeout: Duration) -> Result<String> {
        let Some(tool) = self.get(&call.name) else {
            let known: Vec<&str> = self.tools.iter().map(|(n, _)| &**n).collect();
            return Err(Error::not_found(format!(
                "unknown tool `{}`; available tools: {}",
                call.name,
                known.join(", ")
            )));
        };
        if let Some(scope) = tool.required_scope()
            && !cx.has_scope(scope)
        {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "tool `{}` needs the scope `{scope}`, which this caller was not granted",
                    call.name
                ),
            ));
        }
        let timeout = tool.timeout().unwrap_or(timeout);
        let tool_cx = ToolContext::new(&call.id, cx);
        // A side-effecting call of a job that already completed is not run again.
        let ledger = match (tool.side_effects(), cx.extension::<Ledger>()) {
            (true, Some(ledger)) => tool_cx.idempotency_key().map(|key| (ledger, key)),
            _ => None,
        };
        if let Some((ledger, key)) = &ledger {
            match ledger.0.recorded(key).await {
                Ok(Some(recorded)) => {
                    tracing::info!(tool = %call.name, key = %key, "side effect already done; returning the recorded result");
                    return Ok(recorded);
                }
                Ok(None) => {}
                Err(error) => {
                    return Err(Error::unavailable(format!(
                        "cannot check whether `{}` already ran ({error}); not running it twice",
                        call.name
                    )));
                }
            }
        }
        let inline = std::panic::catch_unwind(AssertUnwindSafe(|| {
            tool.call_inline(&call.arguments, &tool_cx)
        }));
        let finished = match inline {
            Ok(Some(result)) => Ok(result),
            Ok(None) => {
                let running = AssertUnwindSafe(tool.call(&call.arguments, &tool_cx)).catch_unwind();
                match tokio::time::timeout(timeout, running).await {
                    Ok(finished) => finished,
                    Err(_) => {
                        return Err(Error::timeout(format!(
                            "tool `{}` did not finish within {} ms",
                            call.name,
                            timeout.as_millis()
                        )));
                    }
                }
            }
            Err(panic) => Err(panic),
        };
        let Ok(result) = finished else {
            tracing::error!(tool = %call.name, "tool panicked");
            return Err(Error::new(
                ErrorKind::Internal,
                format!("tool `{}` panicked", call.name),
            ));
        };
        if let (Ok(output), Some((ledger, key))) = (&result, &ledger)
            && let Err(error) = ledger.0.record(key, output).await
        {
            tracing::error!(tool = %call.name, key = %key, %error, "cannot record a side effect; a redelivery may repeat it");
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;
    use crate::tool::{tool_fn, tool_fn_inline};

    #[derive(serde::Deserialize, schemars::JsonSchema)]
    struct AddArgs {
        a: i64,
        b: i64,
    }

    fn named(name: &str) -> Arc<dyn Tool> {
        let owned = name.to_owned();
        Arc::new(tool_fn_inline(name, "Names itself", move |_: AddArgs| {
            Ok::<_, Infallible>(owned.clone())
        }))
    }

    fn call(name: &str, arguments: &str) -> ToolCall {
        ToolCall {
            id: "call_1".into(),
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    #[test]
    fn lookup_finds_each_name_and_no_other() {
        const NAMES: [&str; 6] = [
            "add",
            "lookup_city_a",
            "lookup_city_b",
            "a",
            "lookup_c",
            "lookup_",
        ];
        let mut tools = Toolbox::new();
        for name in NAMES {
            tools.insert(named(name)).unwrap();
        }
        for name in NAMES {
            assert_eq!(tools.get(name).unwrap().spec().name, name);
        }
        for absent in ["ad", "add_", "lookup_city_c", "lookup_d", "lookup", "", "b"] {
            assert!(tools.get(absent).is_none(), "{absent} found");
        }
        let long = "x".repeat(300);
        assert!(tools.get(&long).is_none());
        assert!(tools.insert(named("lookup_city_b")).is_err());
    }

    #[tokio::test]
    async fn inline_tools_answer_fail_and_panic_like_async_ones() {
        let mut tools = Toolbox::new();
        let add = tool_fn_inline("add", "Adds", |args: AddArgs| {
            Ok::<_, Infallible>(args.a + args.b)
        });
        tools.insert(Arc::new(add)).unwrap();
        let boom = tool_fn_inline("boom", "Panics", |_: AddArgs| -> Result<i64> {
            panic!("inline tool blew up")
        });
        tools.insert(Arc::new(boom)).unwrap();
        let slow_add = tool_fn("slow_add", "Adds later", |args: AddArgs| async move {
            tokio::task::yield_now().await;
            Ok::<_, Infallible>(args.a + args.b)
        });
        tools.insert(Arc::new(slow_add)).unwrap();
        let cx = Context::new();
        let timeout = Duration::from_secs(5);

        let (result, record) = tools
            .call(&call("add", r#"{"a":17,"b":25}"#), &cx, timeout)
            .await;
        assert_eq!((result.content.as_str(), result.is_error), ("42", false));
        assert!(record.ok);

        let (result, record) = tools.call(&call("add", r#"{"a":17}"#), &cx, timeout).await;
        assert!(result.is_error);
        assert!(
            result.content.contains("missing field `b`"),
            "{}",
            result.content
        );
        assert!(!record.ok);

        let (result, _) = tools
            .call(&call("boom", r#"{"a":1,"b":2}"#), &cx, timeout)
            .await;
        assert!(result.is_error);
        assert!(result.content.contains("panicked"), "{}", result.content);

        // The async path is unchanged beside it.
        let (result, _) = tools
            .call(&call("slow_add", r#"{"a":1,"b":2}"#), &cx, timeout)
            .await;
        assert_eq!((result.content.as_str(), result.is_error), ("3", false));
        let async_tool = tools.get("slow_add").unwrap();
        assert!(
            async_tool
                .call_inline("{}", &ToolContext::new("c", &cx))
                .is_none()
        );
    }
}
