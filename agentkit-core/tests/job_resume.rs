//! A redelivered job continues from its recorded progress, so a side-effecting tool call keeps
//! its id, and hence its idempotency key, even with a model that names calls afresh each time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentkit_core::model::{
    Model, ModelRequest, ModelResponse, ModelStream, ScriptedModel, ScriptedTurn,
};
use agentkit_core::tool::{JobAttempt, JobId, Ledger, MemoryLedger, OwnedToolContext};
use agentkit_core::{Agent, Context, Error, Executor, Invocation, Result, Role, tool};

/// Provider calls by idempotency key, as a payment provider would see them.
type Calls = Arc<Mutex<HashMap<String, u32>>>;

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Charge {
    cents: u64,
}

/// The scripted model with fresh call ids, failing (once armed) when asked to go on after a
/// tool result: the attempt dies between the side effect and the final answer.
struct Flaky {
    inner: ScriptedModel,
    fail_after_tools: AtomicBool,
}

impl Flaky {
    fn check(&self, request: &ModelRequest<'_>) -> Result<()> {
        let after_tools = request
            .messages
            .last()
            .is_some_and(|m| m.role == Role::Tool);
        if after_tools && self.fail_after_tools.load(Ordering::SeqCst) {
            return Err(Error::unavailable("the worker died"));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Model for Flaky {
    fn id(&self) -> &str {
        self.inner.id()
    }

    async fn complete(&self, request: &ModelRequest<'_>, cx: &Context) -> Result<ModelResponse> {
        self.check(request)?;
        self.inner.complete(request, cx).await
    }

    async fn stream(&self, request: &ModelRequest<'_>, cx: &Context) -> Result<ModelStream> {
        self.check(request)?;
        self.inner.stream(request, cx).await
    }
}

fn scripted() -> ScriptedModel {
    ScriptedModel::builder()
        .turns([
            ScriptedTurn::call("charge", serde_json::json!({"cents": 100})),
            ScriptedTurn::text("charged"),
        ])
        .unique_call_ids(true)
        .build()
}

/// An agent whose `charge` tool records the call under its idempotency key, then waits for
/// `hang` to be false (a worker killed mid-call never returns).
fn agent(model: impl Model + 'static, calls: Calls, hang: Arc<AtomicBool>) -> Agent {
    let charge = tool::tool_fn_with_context(
        "charge",
        "Charges the card",
        move |args: Charge, cx: OwnedToolContext| {
            let (calls, hang) = (calls.clone(), hang.clone());
            async move {
                let key = cx.idempotency_key().expect("a job run has keys");
                *calls.lock().unwrap().entry(key).or_insert(0) += 1;
                while hang.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Ok::<_, Error>(serde_json::json!({"charged": args.cents}))
            }
        },
    )
    .with_side_effects();
    Agent::builder()
        .name("charger")
        .model(model)
        .tool(charge)
        .build()
        .unwrap()
}

fn attempt(ledger: &MemoryLedger, n: u32) -> Invocation {
    Invocation::text("charge me").with_context(
        Context::new()
            .with_extension(JobId("job-7".into()))
            .with_extension(JobAttempt(n))
            .with_extension(Ledger(Arc::new(ledger.clone()))),
    )
}

#[tokio::test]
async fn a_redelivered_job_resumes_after_its_side_effects() {
    let (calls, ledger) = (Calls::default(), MemoryLedger::default());
    let flaky = Arc::new(Flaky {
        inner: scripted(),
        fail_after_tools: AtomicBool::new(true),
    });
    let agent = agent(flaky.clone(), calls.clone(), Arc::default());
    let first = agent.execute(attempt(&ledger, 1)).await;
    assert!(first.is_err(), "the first attempt dies after charging");
    flaky.fail_after_tools.store(false, Ordering::SeqCst);

    let reply = agent.execute(attempt(&ledger, 2)).await.unwrap();
    assert_eq!(reply.output, "charged");
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls.len(),
        1,
        "charged once, not again under a new key: {calls:?}"
    );
    assert_eq!(calls.values().sum::<u32>(), 1);
    let key = calls.keys().next().unwrap();
    assert!(key.starts_with("job-7:call_"), "{key}");
    // The reply is the whole run: the resumed call, its result and the answer.
    let roles: Vec<Role> = reply.messages.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [Role::User, Role::Assistant, Role::Tool, Role::Assistant]
    );
    assert_eq!(reply.steps, 2, "steps count across attempts");
}

#[tokio::test]
async fn a_call_cut_short_runs_again_under_the_same_key() {
    let (calls, ledger) = (Calls::default(), MemoryLedger::default());
    let hang = Arc::new(AtomicBool::new(true));
    let agent = agent(scripted(), calls.clone(), hang.clone());
    // The first attempt is dropped mid-call, as a killed worker would be.
    let first = tokio::time::timeout(
        Duration::from_millis(100),
        agent.execute(attempt(&ledger, 1)),
    );
    assert!(first.await.is_err(), "the first attempt hangs in the tool");
    hang.store(false, Ordering::SeqCst);

    let reply = agent.execute(attempt(&ledger, 2)).await.unwrap();
    assert_eq!(reply.output, "charged");
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls.len(),
        1,
        "the repeat carries the first call's idempotency key: {calls:?}"
    );
    assert_eq!(
        calls.values().sum::<u32>(),
        2,
        "the provider saw the key twice"
    );

    // A third delivery (say, the finish was lost) answers from the ledger, calling nothing.
    let again = agent.execute(attempt(&ledger, 3)).await.unwrap();
    assert_eq!(again.output, "charged");
    assert_eq!(calls.values().sum::<u32>(), 2);
}

#[tokio::test]
async fn first_attempts_decide_afresh() {
    // A first attempt does not look for recorded progress, even where some exists: the same
    // job run twice as attempt 1 asks the model twice (two keys); as attempt 2 it resumes.
    let (calls, ledger) = (Calls::default(), MemoryLedger::default());
    let agent = agent(scripted(), calls.clone(), Arc::default());
    agent.execute(attempt(&ledger, 1)).await.unwrap();
    agent.execute(attempt(&ledger, 1)).await.unwrap();
    assert_eq!(
        calls.lock().unwrap().len(),
        2,
        "two first attempts, two decisions"
    );
    agent.execute(attempt(&ledger, 2)).await.unwrap();
    assert_eq!(
        calls.lock().unwrap().len(),
        2,
        "a redelivery decides nothing anew"
    );
}
