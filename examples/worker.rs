//! A worker process for the demo agent: claims jobs from the queue the service enqueues to.
//!
//!     REDIS_URL=redis://127.0.0.1:6379 cargo run --example worker
//!     NATS_URL=nats://127.0.0.1:4222 cargo run --example worker
//!
//! Runs `assistant` jobs (the demo agent; `AGENTKIT_SCRIPTED_LATENCY_MS` makes them take time)
//! from the queue `AGENTKIT_QUEUE` (default `agentkit`), session jobs against the same Redis or
//! `DATABASE_URL` (under the service's session leases: `AGENTKIT_SESSION_LEASE_MS`,
//! `AGENTKIT_INSTANCE_ID`), and signs webhooks with `AGENTKIT_WEBHOOK_SECRET`. SIGTERM stops claiming,
//! lets running jobs finish (up to `AGENTKIT_DRAIN_TIMEOUT_MS`) and hands back the rest. Error
//! bursts, latency spikes and token surges of its runs are `warn` log lines (`agentkit::alert`).

use std::process::ExitCode;

use agentkit::executor::{AlertRules, HealthWatch};
use agentkit::transport::ServiceConfig;
use agentkit::transport::jobs::Worker;

mod common;

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
    // Session jobs are turns of the sessions the service keeps, under the same leases.
    if let Some(shared) = common::shared_sessions(&config).await? {
        worker = worker.sessions(shared.store);
        if let Some(ttl) = config.session_lease {
            worker = worker.session_leases(shared.leases, &config.instance_id, ttl);
        }
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
