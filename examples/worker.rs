//! A worker process for the demo agent: claims jobs from the queue the service enqueues to.
//!
//!     REDIS_URL=redis://127.0.0.1:6379 cargo run --example worker
//!     NATS_URL=nats://127.0.0.1:4222 cargo run --example worker
//!
//! Runs `assistant` jobs (the demo agent; `AGENTKIT_SCRIPTED_LATENCY_MS` makes them take time)
//! from the queue `AGENTKIT_QUEUE` (default `agentkit`), session jobs against the same Redis or
//! `DATABASE_URL`, and signs webhooks with `AGENTKIT_WEBHOOK_SECRET`. SIGTERM stops claiming,
//! lets running jobs finish (up to `AGENTKIT_DRAIN_TIMEOUT_MS`) and hands back the rest. Error
//! bursts, latency spikes and token surges of its runs are `warn` log lines (`agentkit::alert`).

use std::process::ExitCode;
use std::sync::Arc;

use agentkit::executor::{AlertRules, HealthWatch};
use agentkit::store::SessionStore;
use agentkit::transport::ServiceConfig;
use agentkit::transport::jobs::Worker;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("worker failed: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> agentkit::Result<()> {
    let _telemetry = agentkit::observe::init()?;
    let config = ServiceConfig::from_env()?;
    let queue = config.job_queue().await?.ok_or_else(|| {
        agentkit::Error::invalid_input(
            "set REDIS_URL or NATS_URL: a worker needs a queue shared with the service",
        )
    })?;
    // Error bursts, latency spikes and token surges of the jobs' runs: `warn` log lines
    // (target `agentkit::alert`) when they fire, `info` when they resolve.
    let agent =
        HealthWatch::new("assistant", AlertRules::default()).watch(agentkit::demo::assistant()?);
    let mut worker = Worker::builder(queue)
        .agent("assistant", agent)
        .drain(config.drain_timeout)
        .heartbeat(config.visibility / 3);
    let sessions: Option<Arc<dyn SessionStore>> = if let Some(url) = &config.redis_url {
        Some(Arc::new(
            agentkit::store::redis::RedisSessionStore::connect(url)?,
        ))
    } else if let Some(url) = &config.database_url {
        Some(Arc::new(
            agentkit::store::postgres::PostgresSessionStore::connect(url).await?,
        ))
    } else {
        None
    };
    if let Some(store) = sessions {
        worker = worker.sessions(store);
    }
    if let Some(webhooks) = config.webhooks()? {
        worker = worker.webhooks(webhooks);
    }
    let worker = worker.build()?;
    println!("worker {} ready", worker.id());
    worker.run(agentkit::transport::shutdown_signal()).await?;
    println!("worker stopped");
    Ok(())
}
