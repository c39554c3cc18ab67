//! A worker process for the crash tests (not a user-facing program).
//!
//! Runs the agent `charger`, whose side-effecting `charge` tool POSTs `{key, cents}` to a
//! payment provider at `PROVIDER_URL`, passing the job's idempotency key as real providers take
//! it. Environment: `QUEUE_BACKEND` (`redis` or `nats`), `QUEUE_URL`, `QUEUE_NAME`,
//! `VISIBILITY_MS`, `LATENCY_MS`; with `SESSIONS_URL` (Redis) and `SESSIONS_PREFIX`, session
//! jobs run as turns of sessions there, under leases of `LEASE_MS` held by this process.
//! Prints `worker ready` once claiming; SIGTERM drains.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use agentkit_core::model::{ScriptedModel, ScriptedTurn};
use agentkit_core::tool::{OwnedToolContext, tool_fn_with_context};
use agentkit_core::{Agent, Error};
use agentkit_transport::jobs::{JobQueue, Worker};

fn env(name: &str) -> Result<String, Error> {
    std::env::var(name).map_err(|_| Error::invalid_input(format!("{name} is not set")))
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Charge {
    cents: u64,
}

async fn run() -> Result<(), Error> {
    let visibility = Duration::from_millis(env("VISIBILITY_MS")?.parse().unwrap_or(2000));
    let latency = Duration::from_millis(env("LATENCY_MS")?.parse().unwrap_or(20));
    let (url, name) = (env("QUEUE_URL")?, env("QUEUE_NAME")?);
    let queue: Arc<dyn JobQueue> = match env("QUEUE_BACKEND")?.as_str() {
        "redis" => Arc::new(
            agentkit_transport::jobs::redis::RedisJobQueue::connect(&url, &name)?
                .with_visibility_timeout(visibility),
        ),
        "nats" => Arc::new(
            agentkit_transport::jobs::nats::NatsJobQueue::connect_with(&url, &name, visibility)
                .await?,
        ),
        other => {
            return Err(Error::invalid_input(format!(
                "unknown QUEUE_BACKEND {other}"
            )));
        }
    };
    let provider = env("PROVIDER_URL")?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| Error::internal(e.to_string()))?;
    let charge = tool_fn_with_context(
        "charge",
        "Charges the customer's card",
        move |args: Charge, cx: OwnedToolContext| {
            let (http, provider) = (http.clone(), provider.clone());
            async move {
                let key = cx
                    .idempotency_key()
                    .ok_or_else(|| Error::invalid_input("no idempotency key outside a job"))?;
                let response = http
                    .post(&provider)
                    .json(&serde_json::json!({"key": key, "cents": args.cents}))
                    .send()
                    .await
                    .map_err(|e| Error::unavailable(format!("payment provider: {e}")))?;
                let body: serde_json::Value = response
                    .json()
                    .await
                    .map_err(|e| Error::unavailable(format!("payment provider: {e}")))?;
                Ok::<_, Error>(body)
            }
        },
    )
    .with_side_effects();
    let model = ScriptedModel::builder()
        .turns([
            ScriptedTurn::call("charge", serde_json::json!({"cents": 100})),
            ScriptedTurn::text("charged"),
        ])
        .latency(latency)
        // Fresh call ids on every model call, as hosted models give: a redelivered job keeps
        // its keys only by resuming from its recorded progress.
        .unique_call_ids(true)
        .build();
    let agent = Agent::builder()
        .name("charger")
        .model(model)
        .tool(charge)
        .build()?;
    let mut worker = Worker::builder(queue)
        .agent("charger", agent)
        .concurrency(8)
        .max_attempts(10)
        .heartbeat(visibility / 4)
        .drain(Duration::from_secs(10));
    if let Ok(url) = std::env::var("SESSIONS_URL") {
        let store = Arc::new(
            agentkit_store::redis::RedisSessionStore::connect(&url)?
                .with_prefix(env("SESSIONS_PREFIX")?),
        );
        let lease = Duration::from_millis(env("LEASE_MS")?.parse().unwrap_or(1000));
        let owner = format!("crash-worker-{}", std::process::id());
        worker = worker
            .sessions(store.clone())
            .session_leases(store, owner, lease);
    }
    let worker = worker.build()?;
    println!("worker ready");
    worker.run(agentkit_transport::shutdown_signal()).await
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("crash_worker: {error}");
            ExitCode::FAILURE
        }
    }
}
