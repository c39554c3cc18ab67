//! The bundled service: the demo agent `assistant` behind the agentkit HTTP API.
//!
//!     cargo run --example service
//!
//! Serves on 127.0.0.1:8080 (`AGENTKIT_ADDR`) with the scripted model and in-memory sessions.
//! `REDIS_URL` / `DATABASE_URL` keep sessions in Redis / PostgreSQL (with `DATABASE_URL`, run
//! records go to PostgreSQL too), with a lease per session (`AGENTKIT_SESSION_LEASE_MS`,
//! `AGENTKIT_INSTANCE_ID`) so that instances sharing the store take a session's turns one at a
//! time; `OPENAI_API_KEY` (+ `OPENAI_BASE_URL`, `AGENTKIT_MODEL`)
//! switches to a real model; `AGENTKIT_API_KEYS` / `AGENTKIT_JWT_SECRET` (or their `_FILE`
//! forms, which rotate) require credentials;
//! `AGENTKIT_RATE_LIMIT` limits each tenant. Logs are JSON lines on stdout (`RUST_LOG`,
//! `AGENTKIT_LOG_FORMAT=pretty`), metrics are on `/metrics`, and traces go to
//! `OTEL_EXPORTER_OTLP_ENDPOINT` when set; error bursts, latency spikes and token surges are
//! `warn` lines (target `agentkit::alert`) and `agentkit_alerts_firing` on `/metrics`. Jobs (`POST /v1/agents/assistant/jobs`) go to
//! `NATS_URL` or `REDIS_URL` for `cargo run --example worker` to run; with neither, to an
//! in-memory queue with a worker inside this process. SIGTERM drains in-flight requests, then
//! exits 0.
//!
//!     curl -s localhost:8080/v1/agents/assistant/invoke -H 'content-type: application/json' \
//!          -d '{"input": "What is 17 + 25?"}'

use std::process::ExitCode;
use std::sync::Arc;

use agentkit::executor::{AlertRules, HealthWatch};
use agentkit::store::{MemorySessionStore, RecordLayer, RecordStore, SessionStore};
use agentkit::transport::jobs::{JobQueue, MemoryJobQueue, Worker};
use agentkit::transport::{Api, ServiceConfig};
use agentkit::{BoxExecutor, ExecutorExt};
use tower::Layer;

mod common;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("service failed: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> agentkit::Result<()> {
    // JSON logs, Prometheus metrics and (with OTEL_EXPORTER_OTLP_ENDPOINT) traces.
    let telemetry = agentkit::observe::init()?;
    let config = ServiceConfig::from_env()?;
    let agent = agentkit::demo::assistant()?;
    let (name, version) = (agent.name().to_owned(), agent.version().to_owned());
    // Error bursts, latency spikes and token surges against the last half hour: each alert
    // is a `warn` log line (target `agentkit::alert`) when it fires and `info` when it
    // resolves, and the gauge `agentkit_alerts_firing` on /metrics.
    let agent = telemetry
        .report_alerts(HealthWatch::new(&name, AlertRules::default()))
        .watch(agent);
    let executor: BoxExecutor = match &config.database_url {
        Some(url) => {
            let records: Arc<dyn RecordStore> =
                Arc::new(agentkit::store::postgres::PostgresRecordStore::connect(url).await?);
            RecordLayer::new(records, &name, &version)
                .layer(agent)
                .boxed()
        }
        None => agent.boxed(),
    };
    let shared = common::shared_sessions(&config).await?;
    let store: Arc<dyn SessionStore> = match &shared {
        Some(shared) => shared.store.clone(),
        // Sessions in this process's memory, expiring as `AGENTKIT_SESSION_TTL_MS` says.
        None => match config.session_ttl {
            Some(ttl) => Arc::new(MemorySessionStore::new().with_default_ttl(ttl)),
            None => Arc::new(MemorySessionStore::new()),
        },
    };
    let shared_queue = config.job_queue().await?;
    // With the embedded worker, keyed invokes can always run as jobs; with a shared queue
    // only where the operator says workers run.
    let keyed_invokes_as_jobs = (config.keyed_invokes_as_jobs).unwrap_or(shared_queue.is_none());
    let queue: Arc<dyn JobQueue> = match shared_queue {
        Some(queue) => queue,
        None => {
            // Embedded default: the queue and a worker live in this process, and session jobs
            // are turns of the sessions this service keeps.
            let queue: Arc<dyn JobQueue> = Arc::new(MemoryJobQueue::new());
            let mut worker = Worker::builder(queue.clone())
                .agent("assistant", executor.clone())
                .sessions(store.clone());
            if let (Some(shared), Some(ttl)) = (&shared, config.session_lease) {
                worker = worker.session_leases(shared.leases.clone(), &config.instance_id, ttl);
            }
            if let Some(webhooks) = config.webhooks()? {
                worker = worker.webhooks(webhooks);
            }
            let worker = worker.build()?;
            tokio::spawn(async move { worker.run(agentkit::transport::shutdown_signal()).await });
            queue
        }
    };
    let mut api = Api::builder()
        .agent("assistant", executor)
        .jobs(queue)
        .keyed_invokes_as_jobs(keyed_invokes_as_jobs)
        .allow_private_callbacks(config.webhook_allow_private)
        // Its workers (embedded or `worker` processes) read the same secret.
        .accept_callbacks(config.webhook_secret.is_some() || config.webhook_secret_file.is_some())
        .session_store(store)
        .auth(config.auth.clone())
        .request_timeout(config.request_timeout)
        .body_limit(config.body_limit)
        .metrics(telemetry.metrics_renderer());
    if let Some(limits) = config.rate_limits.clone() {
        api = api.rate_limits(limits);
    }
    if let (Some(shared), Some(ttl)) = (shared, config.session_lease) {
        api = api.session_leases(shared.leases, &config.instance_id, ttl);
    }
    let api = api.build()?;

    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|e| agentkit::Error::unavailable(format!("cannot bind {}: {e}", config.addr)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| agentkit::Error::internal(e.to_string()))?;
    // Tests and scripts read this line to find the port.
    println!("listening on http://{addr}");
    agentkit::transport::serve(
        listener,
        api.router(),
        agentkit::transport::shutdown_signal(),
        config.drain_timeout,
    )
    .await
    .map_err(|e| agentkit::Error::internal(format!("server error: {e}")))?;
    println!("drained; bye");
    drop(telemetry);
    Ok(())
}
