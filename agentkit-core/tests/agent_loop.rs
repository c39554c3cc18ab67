//! The agent loop's behaviour: tool round trips, failures the model can correct from, limits,
//! deadlines, cancellation, streaming order and structured output.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use agentkit_core::model::{Model, ModelRequest, ModelResponse, ScriptedModel, ScriptedTurn};
use agentkit_core::tool::{Tool, tool_fn};
use agentkit_core::{
    Agent, AgentEvent, Context, Error, ErrorKind, Executor, Invocation, Message, Price, Role,
};
use futures::StreamExt;
use serde::Deserialize;

#[derive(Deserialize, schemars::JsonSchema)]
struct AddArgs {
    a: f64,
    b: f64,
}

fn add_tool() -> impl Tool {
    tool_fn("add", "Adds two numbers", |args: AddArgs| async move {
        Ok::<_, Infallible>(args.a + args.b)
    })
}

fn demo_agent() -> Agent {
    Agent::builder()
        .name("assistant")
        .model(ScriptedModel::demo())
        .tool(add_tool())
        .build()
        .unwrap()
}

/// Counts model calls of an inner model.
struct Counting<M> {
    inner: M,
    calls: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl<M: Model> Model for Counting<M> {
    fn id(&self) -> &str {
        self.inner.id()
    }

    async fn complete(
        &self,
        r: &ModelRequest<'_>,
        cx: &Context,
    ) -> agentkit_core::Result<ModelResponse> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.complete(r, cx).await
    }
}

#[tokio::test]
async fn a_tool_round_trip_answers_with_the_result() {
    let reply = demo_agent()
        .execute(Invocation::text("What is 17 + 25?"))
        .await
        .unwrap();
    assert_eq!(reply.output, "17 + 25 = 42");
    assert_eq!(reply.steps, 2);
    assert_eq!(reply.tool_calls.len(), 1);
    let record = &reply.tool_calls[0];
    assert_eq!(record.name, "add");
    assert_eq!(record.arguments, r#"{"a":17,"b":25}"#);
    assert!(record.ok);
    let roles: Vec<Role> = reply.messages.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [Role::User, Role::Assistant, Role::Tool, Role::Assistant]
    );
    let result = reply.messages[2].tool_results_iter().next().unwrap();
    assert_eq!(result.content, "42.0");
    assert!(reply.usage.input_tokens > 0 && reply.usage.output_tokens > 0);
}

#[tokio::test]
async fn parallel_tool_calls_run_concurrently_within_the_bound() {
    async fn run(max_parallel: usize) -> (usize, Vec<String>) {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (f, p) = (in_flight.clone(), peak.clone());
        #[derive(Deserialize, schemars::JsonSchema)]
        struct Slow {
            n: u32,
        }
        let slow = tool_fn("slow", "Slow echo", move |args: Slow| {
            let (f, p) = (f.clone(), p.clone());
            async move {
                let now = f.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                // Later calls finish first, so result order must be restored.
                tokio::time::sleep(Duration::from_millis(40 * u64::from(5 - args.n))).await;
                f.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, Infallible>(args.n)
            }
        });
        let mut turn = ScriptedTurn::default();
        for n in 1..=4 {
            turn = turn.and_call("slow", serde_json::json!({ "n": n }));
        }
        let agent = Agent::builder()
            .model(ScriptedModel::new([turn, ScriptedTurn::text("done")]))
            .tool(slow)
            .max_parallel_tools(max_parallel)
            .build()
            .unwrap();
        let reply = agent.execute(Invocation::text("go")).await.unwrap();
        let results = reply.messages[2]
            .tool_results_iter()
            .map(|r| r.content.clone())
            .collect();
        (peak.load(Ordering::SeqCst), results)
    }
    let (peak, results) = run(8).await;
    assert_eq!(peak, 4, "all four calls of the step ran at once");
    assert_eq!(results, ["1", "2", "3", "4"], "results keep call order");
    let (peak, _) = run(2).await;
    assert_eq!(peak, 2, "the bound holds");
}

#[tokio::test]
async fn an_unknown_tool_is_an_error_result_the_model_sees() {
    let model = ScriptedModel::new([
        ScriptedTurn::call("subtract", serde_json::json!({"a": 1})),
        ScriptedTurn::text("sorry, I will add instead"),
    ]);
    let agent = Agent::builder()
        .model(model)
        .tool(add_tool())
        .build()
        .unwrap();
    let reply = agent.execute(Invocation::text("1 - 1?")).await.unwrap();
    assert_eq!(reply.output, "sorry, I will add instead");
    assert!(!reply.tool_calls[0].ok);
    let result = reply.messages[2].tool_results_iter().next().unwrap();
    assert!(result.is_error);
    assert!(
        result.content.contains("unknown tool `subtract`"),
        "{}",
        result.content
    );
    assert!(result.content.contains("add"), "lists the available tools");
}

#[tokio::test]
async fn invalid_arguments_go_back_to_the_model_which_corrects_them() {
    let model = ScriptedModel::new([
        ScriptedTurn::call_raw("add", r#"{"a": "seventeen", "b": 25}"#),
        ScriptedTurn::call("add", serde_json::json!({"a": 17, "b": 25})),
        ScriptedTurn::text("42"),
    ]);
    let agent = Agent::builder()
        .model(model)
        .tool(add_tool())
        .build()
        .unwrap();
    let reply = agent.execute(Invocation::text("17 + 25")).await.unwrap();
    assert_eq!(reply.output, "42");
    assert_eq!(reply.tool_calls.len(), 2);
    assert!(!reply.tool_calls[0].ok);
    assert!(
        reply.tool_calls[0]
            .error
            .as_deref()
            .unwrap()
            .contains("invalid arguments for tool `add`"),
        "{:?}",
        reply.tool_calls[0].error
    );
    assert!(reply.tool_calls[1].ok);

    // Truncated JSON is the same kind of mistake.
    let model = ScriptedModel::new([
        ScriptedTurn::call_raw("add", r#"{"a": 1, "#),
        ScriptedTurn::text("ok"),
    ]);
    let agent = Agent::builder()
        .model(model)
        .tool(add_tool())
        .build()
        .unwrap();
    let reply = agent.execute(Invocation::text("x")).await.unwrap();
    assert!(!reply.tool_calls[0].ok);
}

#[tokio::test]
async fn a_tool_error_is_reported_and_the_run_goes_on() {
    #[derive(Deserialize, schemars::JsonSchema)]
    struct Charge {
        #[allow(dead_code)]
        cents: u64,
    }
    let charge = tool_fn("charge", "Charges", |_: Charge| async move {
        Err::<u64, _>(Error::new(ErrorKind::PermissionDenied, "card declined"))
    });
    let model = ScriptedModel::new([
        ScriptedTurn::call("charge", serde_json::json!({"cents": 100})),
        ScriptedTurn::text("the card was declined"),
    ]);
    let agent = Agent::builder().model(model).tool(charge).build().unwrap();
    let reply = agent.execute(Invocation::text("pay")).await.unwrap();
    assert_eq!(reply.output, "the card was declined");
    let result = reply.messages[2].tool_results_iter().next().unwrap();
    assert!(result.is_error);
    assert!(
        result.content.contains("permission_denied"),
        "{}",
        result.content
    );
    assert!(result.content.contains("card declined"));
}

#[tokio::test]
async fn a_panicking_tool_is_an_error_result_not_a_crash() {
    #[derive(Deserialize, schemars::JsonSchema)]
    struct Nothing {}
    let boom = tool_fn("boom", "Panics", |_: Nothing| async move {
        if true {
            panic!("bug in a user tool");
        }
        Ok::<u8, Infallible>(0)
    });
    let model = ScriptedModel::new([
        ScriptedTurn::call("boom", serde_json::json!({})),
        ScriptedTurn::text("recovered"),
    ]);
    let agent = Agent::builder().model(model).tool(boom).build().unwrap();
    let reply = agent.execute(Invocation::text("x")).await.unwrap();
    assert_eq!(reply.output, "recovered");
    assert!(
        reply.tool_calls[0]
            .error
            .as_deref()
            .unwrap()
            .contains("panicked")
    );
}

#[tokio::test]
async fn a_slow_tool_times_out_into_an_error_result() {
    #[derive(Deserialize, schemars::JsonSchema)]
    struct Nothing {}
    let slow = tool_fn("slow", "Never finishes", |_: Nothing| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok::<u8, Infallible>(0)
    });
    let model = ScriptedModel::new([
        ScriptedTurn::call("slow", serde_json::json!({})),
        ScriptedTurn::text("gave up"),
    ]);
    let agent = Agent::builder()
        .model(model)
        .tool(slow)
        .tool_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let reply = agent.execute(Invocation::text("x")).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(reply.output, "gave up");
    let error = reply.tool_calls[0].error.as_deref().unwrap();
    assert!(
        error.contains("timeout") && error.contains("50 ms"),
        "{error}"
    );
}

#[tokio::test]
async fn the_step_limit_ends_a_run_that_never_answers() {
    let calls = Arc::new(AtomicUsize::new(0));
    let model = Counting {
        inner: ScriptedModel::new([ScriptedTurn::call(
            "add",
            serde_json::json!({"a": 1, "b": 1}),
        )]),
        calls: calls.clone(),
    };
    let agent = Agent::builder()
        .model(model)
        .tool(add_tool())
        .max_steps(3)
        .build()
        .unwrap();
    let error = agent.execute(Invocation::text("loop")).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::StepLimit);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn token_and_cost_budgets_stop_before_the_next_model_call() {
    let looping = || {
        ScriptedModel::new([ScriptedTurn::call(
            "add",
            serde_json::json!({"a": 1, "b": 1}),
        )])
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let agent = Agent::builder()
        .model(Counting {
            inner: looping(),
            calls: calls.clone(),
        })
        .tool(add_tool())
        .token_budget(1)
        .build()
        .unwrap();
    let error = agent.execute(Invocation::text("loop")).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::BudgetExceeded);
    assert!(error.message().contains("tokens"), "{error}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "checked before the second call"
    );

    let calls = Arc::new(AtomicUsize::new(0));
    let agent = Agent::builder()
        .model(Counting {
            inner: looping(),
            calls: calls.clone(),
        })
        .tool(add_tool())
        .price("scripted", Price::per_million(1_000_000.0, 1_000_000.0))
        .cost_budget(20.0)
        .build()
        .unwrap();
    let error = agent.execute(Invocation::text("loop")).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::BudgetExceeded);
    assert!(error.message().contains('$'), "{error}");
    let n = calls.load(Ordering::SeqCst);
    assert!(
        (1..10).contains(&n),
        "stopped by the budget, not the step limit ({n} calls)"
    );
}

#[tokio::test]
async fn cost_is_priced_from_the_table() {
    let agent = Agent::builder()
        .model(ScriptedModel::demo())
        .tool(add_tool())
        .price("scripted", Price::per_million(1.0, 2.0))
        .build()
        .unwrap();
    let reply = agent
        .execute(Invocation::text("What is 1 + 2?"))
        .await
        .unwrap();
    let expected =
        (reply.usage.input_tokens as f64 * 1.0 + reply.usage.output_tokens as f64 * 2.0) / 1e6;
    assert!((reply.cost_usd - expected).abs() < 1e-12);
    assert!(reply.cost_usd > 0.0);
}

#[tokio::test]
async fn the_deadline_ends_a_slow_run() {
    let model = ScriptedModel::builder()
        .turns([ScriptedTurn::text("late")])
        .latency(Duration::from_secs(10))
        .build();
    let agent = Agent::builder().model(model).build().unwrap();
    let cx = Context::new().with_timeout(Duration::from_millis(100));
    let started = std::time::Instant::now();
    let error = agent
        .execute(Invocation::text("hi").with_context(cx))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Timeout);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn cancellation_mid_tool_stops_the_run_and_drops_the_tool() {
    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let started = Arc::new(tokio::sync::Notify::new());
    let dropped = Arc::new(AtomicBool::new(false));
    let (s, d) = (started.clone(), dropped.clone());
    #[derive(Deserialize, schemars::JsonSchema)]
    struct Nothing {}
    let wait = tool_fn("wait", "Waits", move |_: Nothing| {
        let (s, d) = (s.clone(), d.clone());
        async move {
            let _flag = Flag(d);
            s.notify_one();
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<u8, Infallible>(0)
        }
    });
    let model = ScriptedModel::new([
        ScriptedTurn::call("wait", serde_json::json!({})),
        ScriptedTurn::text("never"),
    ]);
    let agent = Agent::builder().model(model).tool(wait).build().unwrap();
    let cx = Context::new();
    let token = cx.cancellation().clone();
    let run =
        tokio::spawn(async move { agent.execute(Invocation::text("go").with_context(cx)).await });
    started.notified().await;
    token.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(2), run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.unwrap_err().kind(), ErrorKind::Cancelled);
    assert!(
        dropped.load(Ordering::SeqCst),
        "the tool's future was dropped"
    );
}

#[tokio::test]
async fn a_stream_yields_events_in_order() {
    let mut stream = demo_agent()
        .stream(Invocation::text("What is 17 + 25?"))
        .await
        .unwrap();
    let mut names = Vec::new();
    let mut text = String::new();
    let mut done = None;
    while let Some(event) = stream.next().await {
        let event = event.unwrap();
        names.push(event.name());
        match event {
            AgentEvent::TextDelta { text: t } => text.push_str(&t),
            AgentEvent::Done(reply) => done = Some(reply),
            _ => {}
        }
    }
    let mut collapsed = names.clone();
    collapsed.dedup();
    assert_eq!(
        collapsed,
        [
            "tool_call_started",
            "tool_call_finished",
            "text_delta",
            "usage",
            "done"
        ],
        "{names:?}"
    );
    assert!(
        names.iter().filter(|n| **n == "text_delta").count() > 1,
        "text arrives in pieces"
    );
    let reply = done.unwrap();
    assert_eq!(text, reply.output);
    assert_eq!(reply.output, "17 + 25 = 42");
}

#[tokio::test]
async fn dropping_a_stream_cancels_its_run() {
    let dropped = Arc::new(AtomicBool::new(false));
    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let d = dropped.clone();
    #[derive(Deserialize, schemars::JsonSchema)]
    struct Nothing {}
    let wait = tool_fn("wait", "Waits", move |_: Nothing| {
        let d = d.clone();
        async move {
            let _flag = Flag(d);
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<u8, Infallible>(0)
        }
    });
    let model = ScriptedModel::new([
        ScriptedTurn::call("wait", serde_json::json!({})),
        ScriptedTurn::text("never"),
    ]);
    let agent = Agent::builder().model(model).tool(wait).build().unwrap();
    let mut stream = agent.stream(Invocation::text("go")).await.unwrap();
    assert_eq!(
        stream.next().await.unwrap().unwrap().name(),
        "tool_call_started"
    );
    drop(stream);
    for _ in 0..100 {
        if dropped.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the run kept going after its stream was dropped");
}

#[tokio::test]
async fn structured_output_gets_one_corrective_retry() {
    #[derive(Debug, Deserialize, schemars::JsonSchema, PartialEq)]
    struct Verdict {
        approved: bool,
        reason: String,
    }
    let model = ScriptedModel::new([
        ScriptedTurn::text("Sure! It is approved."),
        ScriptedTurn::text(r#"{"approved": true, "reason": "complete"}"#),
    ]);
    let agent = Agent::builder().model(model).build().unwrap();
    let out = agent
        .run_structured::<Verdict>(Invocation::text("review"))
        .await
        .unwrap();
    assert_eq!(
        out.value,
        Verdict {
            approved: true,
            reason: "complete".into()
        }
    );
    assert_eq!(out.reply.steps, 2);
    let correction = &out.reply.messages[2];
    assert_eq!(correction.role, Role::User);
    assert!(correction.text_content().contains("not valid JSON"));

    let stubborn = ScriptedModel::new([ScriptedTurn::text("nope")]);
    let agent = Agent::builder().model(stubborn).build().unwrap();
    let error = agent
        .run_structured::<Verdict>(Invocation::text("review"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidOutput);
}

#[tokio::test]
async fn prompt_templates_are_strict() {
    assert_eq!(
        Agent::builder()
            .model(ScriptedModel::demo())
            .system_prompt("{% for %}")
            .build()
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );
    let agent = Agent::builder()
        .model(ScriptedModel::demo())
        .system_prompt("You serve {{ customer }}.")
        .build()
        .unwrap();
    let error = agent.execute(Invocation::text("hi")).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    assert!(
        error.message().contains("customer") || error.message().contains("undefined"),
        "{error}"
    );
    let reply = agent
        .execute(Invocation::text("hi").with_metadata("customer", "Acme"))
        .await
        .unwrap();
    assert_eq!(reply.output, "You said: hi");
}

#[tokio::test]
async fn empty_input_and_bad_builders_are_refused() {
    let error = demo_agent()
        .execute(Invocation::text(""))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    let error = demo_agent()
        .execute(Invocation::new(vec![]))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    assert!(Agent::builder().build().is_err(), "a model is required");
    let twice = Agent::builder()
        .model(ScriptedModel::demo())
        .tool(add_tool())
        .tool(add_tool())
        .build();
    assert!(twice.unwrap_err().message().contains("twice"));
    let history = vec![Message::user("earlier"), Message::assistant("noted")];
    let reply = demo_agent()
        .execute(Invocation::text("now").with_history(history))
        .await
        .unwrap();
    assert_eq!(
        reply.messages.len(),
        2,
        "only this turn's messages are returned"
    );
}

/// Records the tool names each model call was offered, then plays its script.
struct Offered {
    inner: ScriptedModel,
    offered: Arc<std::sync::Mutex<Vec<Vec<String>>>>,
}

#[async_trait::async_trait]
impl Model for Offered {
    fn id(&self) -> &str {
        self.inner.id()
    }

    async fn complete(
        &self,
        r: &ModelRequest<'_>,
        cx: &Context,
    ) -> agentkit_core::Result<ModelResponse> {
        let names = r.tools.iter().map(|t| t.name.clone()).collect();
        self.offered.lock().unwrap().push(names);
        self.inner.complete(r, cx).await
    }
}

/// A tool that needs a scope is offered only to callers holding it, and a call to it from a
/// caller without it (a model may name any tool) is refused as an error result, unrun.
#[tokio::test]
async fn scoped_tools_are_offered_and_run_only_for_callers_granted_the_scope() {
    #[derive(Deserialize, schemars::JsonSchema)]
    struct Refund {
        amount: f64,
    }
    let refunds = Arc::new(AtomicUsize::new(0));
    let offered = Arc::new(std::sync::Mutex::new(Vec::new()));
    let agent = {
        let refunds = refunds.clone();
        Agent::builder()
            .model(Offered {
                inner: ScriptedModel::new([
                    ScriptedTurn::call("refund", serde_json::json!({"amount": 5.0})),
                    ScriptedTurn::text("done"),
                ]),
                offered: offered.clone(),
            })
            .tool(add_tool())
            .tool(
                tool_fn("refund", "Refunds an order", move |args: Refund| {
                    let refunds = refunds.clone();
                    async move {
                        refunds.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(args.amount)
                    }
                })
                .requires_scope("payments:write"),
            )
            .build()
            .unwrap()
    };
    let run = |cx: Context| agent.execute(Invocation::text("refund order 7").with_context(cx));

    let reader = run(Context::new().with_scopes(["orders:read".to_owned()]))
        .await
        .unwrap();
    assert_eq!(
        refunds.load(Ordering::SeqCst),
        0,
        "not run for a caller without the scope"
    );
    let call = &reader.tool_calls[0];
    assert!(!call.ok);
    assert!(
        call.error.as_deref().unwrap().contains("payments:write"),
        "{:?}",
        call.error
    );
    assert_eq!(offered.lock().unwrap()[0], ["add"], "not offered either");

    offered.lock().unwrap().clear();
    let clerk = run(Context::new().with_scopes(["payments:write".to_owned()]))
        .await
        .unwrap();
    assert!(clerk.tool_calls[0].ok);
    assert_eq!(refunds.load(Ordering::SeqCst), 1);
    assert_eq!(offered.lock().unwrap()[0], ["add", "refund"]);
}
