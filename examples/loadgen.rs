//! Synthetic load for staging: drives an agent at a set rate or concurrency, prints a JSON
//! report (throughput, latency percentiles, errors by code, tokens, cost) and exits 1 when a
//! gate given on the command line is broken, so a deploy pipeline can stop a release.
//!
//!     cargo run --example loadgen                        # the demo agent, in process
//!     cargo run --example loadgen -- --url http://127.0.0.1:8080 --rate 50 --duration 30 \
//!         --prompts prompts.txt --max-error-rate 0.01 --max-p99-ms 2000
//!
//! Options (all optional):
//! - `--url URL`: the service to load (its `POST /v1/agents/{agent}/invoke`); several,
//!   comma-separated, are the instances of one service called through a `Pool`, as its
//!   callers would: sessions stay on their instance, each instance's `/readyz` is probed every
//!   second, and with `--sessions` each turn carries an idempotency key, so a turn whose
//!   instance dies goes on to the next one (a rolling restart should then cost no errors);
//!   or `--jobs`:
//!   each invocation submitted as a job on the queue `REDIS_URL` or `NATS_URL` names (and
//!   `AGENTKIT_QUEUE`), its result awaited, so the queue and its workers (`cargo run --example
//!   worker`) are what is loaded; without either the demo agent runs in this process
//!   (`AGENTKIT_SCRIPTED_LATENCY_MS` makes it take time).
//! - `--agent NAME` (default `assistant`).
//! - `--rate N` (starts a second, open loop; the default, at 100) or `--concurrency N`
//!   (callers, closed loop); `--duration SECONDS` (default 5); `--limit N` (at most N
//!   invocations); `--max-in-flight N`; `--timeout SECONDS` (each invocation's deadline,
//!   default 30); `--ramp SECONDS` (open loop: the rate rises from nothing over that long);
//!   `--stream` (read answers as they stream, SSE for `--url`, and report the time to the
//!   first text as `first_token`); `--progress SECONDS` (a line on stderr that often with the
//!   figures so far; default 5, 0 for none).
//! - `--prompts FILE`: one prompt a line, asked in turn (default: a sum and a greeting); or
//!   `--records FILE`: run records in JSON lines (`JsonlRecordStore`'s file), the agent's last
//!   10,000 asked again in order, with their history, prompt variables and tenants: staging
//!   gets production's shape of traffic.
//! - `--tenant NAME`; `--sessions N`: turns spread over N sessions (`load-0`, ...), each a
//!   next message of its session: against `--url`, the service's session route; with
//!   `--jobs`, session jobs; in process, the agent run as a session agent over an in-memory
//!   store.
//! - Gates: `--max-error-rate SHARE`, `--max-p99-ms MS`, `--max-missed-rate SHARE`.
//!
//! The bearer token for `--url` (an API key or a JWT of the service) is read from the file
//! named by `AGENTKIT_LOAD_TOKEN_FILE` or from `AGENTKIT_LOAD_TOKEN`, never from the command
//! line, where other users of the machine could read it.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use agentkit::executor::Pool;
use agentkit::load::{self, LoadLimits, LoadPlan, LoadReport, Prompts, Scenario};
use agentkit::store::{
    JsonlRecordStore, MemorySessionStore, RecordStore, RecordedTraffic, SessionAgent,
};
use agentkit::transport::jobs::QueueExecutor;
use agentkit::transport::{RemoteExecutor, ServiceConfig};
use agentkit::{Error, Executor, ExecutorExt, IdempotencyKey};

#[tokio::main]
async fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("loadgen: {error}");
            return ExitCode::from(2);
        }
    };
    match run(&options).await {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).expect("a report encodes")
            );
            let broken = report.check(&options.limits);
            for line in &broken {
                eprintln!("loadgen: gate broken: {line}");
            }
            if broken.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("loadgen: {error}");
            ExitCode::from(2)
        }
    }
}

async fn run(options: &Options) -> agentkit::Result<LoadReport> {
    if let Some(path) = &options.records {
        let records = JsonlRecordStore::open(path)
            .await?
            .recent(Some(&options.agent), 10_000)
            .await?;
        if records.is_empty() {
            return Err(Error::invalid_input(format!(
                "{path} holds no record of the agent {:?}",
                options.agent
            )));
        }
        let traffic = RecordedTraffic::new(records.into_iter().rev().collect());
        return match &options.url {
            Some(urls) => drive(&fleet(options, urls)?, options, &traffic).await,
            None => drive(&agentkit::demo::assistant()?, options, &traffic).await,
        };
    }
    let mut prompts = Prompts::new(options.prompts.clone());
    if let Some(tenant) = &options.tenant {
        prompts = prompts.tenant(tenant.as_str());
    }
    if let Some(sessions) = options.sessions {
        prompts = prompts.sessions(sessions);
    }
    if options.jobs {
        let queue = ServiceConfig::from_env()?
            .job_queue()
            .await?
            .ok_or_else(|| {
                Error::invalid_input(
                    "--jobs needs REDIS_URL or NATS_URL: the queue the workers read",
                )
            })?;
        let jobs = QueueExecutor::new(queue, options.agent.as_str());
        return drive(&jobs, options, &prompts).await;
    }
    if let Some(urls) = &options.url {
        let fleet = fleet(options, urls)?;
        if options.sessions.is_some() {
            return drive(&fleet, options, &Keyed::new(prompts)).await;
        }
        return drive(&fleet, options, &prompts).await;
    }
    let agent = agentkit::demo::assistant()?;
    if options.sessions.is_some() {
        let agent = SessionAgent::builder(agent, Arc::new(MemorySessionStore::new())).build();
        return drive(&agent, options, &prompts).await;
    }
    drive(&agent.boxed(), options, &prompts).await
}

/// Runs the plan, with a progress line on stderr every `--progress` seconds.
async fn drive<E: Executor + ?Sized>(
    executor: &E,
    options: &Options,
    scenario: &dyn Scenario,
) -> agentkit::Result<LoadReport> {
    load::run_reporting(
        executor,
        &options.plan,
        scenario,
        options.progress,
        |so_far| {
            eprintln!(
                "loadgen: {:.0} s: {} answered, {} failed, {} missed; p50 {:.1} ms, p99 {:.1} ms",
                so_far.elapsed.as_secs_f64(),
                so_far.succeeded,
                so_far.failed,
                so_far.missed,
                so_far.latency.p50_ms,
                so_far.latency.p99_ms,
            );
        },
    )
    .await
}

/// The instances at `urls` (comma-separated) as a pool, with the bearer token when one is
/// given.
fn fleet(options: &Options, urls: &str) -> agentkit::Result<Pool<RemoteExecutor>> {
    let token = token()?;
    let mut pool = Pool::builder()
        .name("loadgen")
        .probe(Duration::from_secs(1), |remote: &RemoteExecutor| {
            Box::pin(remote.ready())
        });
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let mut remote =
            RemoteExecutor::builder(url, options.agent.as_str()).timeout(options.plan_timeout);
        if options.sessions.is_some() {
            remote = remote.sessions();
        }
        if let Some(token) = &token {
            remote = remote.bearer(token.as_str());
        }
        pool = pool.member(url, remote.build()?);
    }
    pool.build()
}

/// Each turn of `inner` with an idempotency key of its own (unique to this run), so that
/// the pool may send a turn whose instance died on to the next one.
struct Keyed<S> {
    inner: S,
    run: String,
}

impl<S: Scenario> Keyed<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            run: agentkit::generate_id(),
        }
    }
}

impl<S: Scenario> Scenario for Keyed<S> {
    fn invocation(&self, index: u64) -> agentkit::Invocation {
        let mut invocation = self.inner.invocation(index);
        // Hex and digits: always a valid key.
        if let Ok(key) = IdempotencyKey::new(&format!("load-{}-{index}", self.run)) {
            invocation.context = invocation.context.with_extension(key);
        }
        invocation
    }
}

/// The bearer token, from `AGENTKIT_LOAD_TOKEN_FILE` or `AGENTKIT_LOAD_TOKEN`.
fn token() -> agentkit::Result<Option<String>> {
    if let Some(path) = std::env::var_os("AGENTKIT_LOAD_TOKEN_FILE") {
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::invalid_input(format!(
                "cannot read AGENTKIT_LOAD_TOKEN_FILE {path:?}: {e}"
            ))
        })?;
        return Ok(Some(text.trim().to_owned()));
    }
    Ok(std::env::var("AGENTKIT_LOAD_TOKEN").ok())
}

struct Options {
    url: Option<String>,
    jobs: bool,
    agent: String,
    plan: LoadPlan,
    plan_timeout: Duration,
    prompts: Vec<String>,
    records: Option<String>,
    tenant: Option<String>,
    sessions: Option<u64>,
    limits: LoadLimits,
    progress: Option<Duration>,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut url = None;
        let mut agent = "assistant".to_owned();
        let (mut rate, mut concurrency) = (None, None);
        let mut duration = 5.0;
        let mut timeout = 30.0;
        let (mut limit, mut max_in_flight) = (None, None);
        let mut prompts = vec!["What is 17 + 25?".to_owned(), "hello".to_owned()];
        let (mut tenant, mut sessions, mut records) = (None, None, None);
        let mut limits = LoadLimits::new();
        let (mut stream, mut jobs) = (false, false);
        let (mut ramp, mut progress) = (0.0, 5.0);
        while let Some(flag) = args.next() {
            match flag.as_str() {
                "--stream" => {
                    stream = true;
                    continue;
                }
                "--jobs" => {
                    jobs = true;
                    continue;
                }
                _ => {}
            }
            let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--url" => url = Some(value()?),
                "--agent" => agent = value()?,
                "--rate" => rate = Some(number(&flag, &value()?)?),
                "--concurrency" => concurrency = Some(number(&flag, &value()?)? as usize),
                "--duration" => duration = number(&flag, &value()?)?,
                "--timeout" => timeout = number(&flag, &value()?)?,
                "--ramp" => ramp = number(&flag, &value()?)?,
                "--progress" => progress = number(&flag, &value()?)?,
                "--limit" => limit = Some(number(&flag, &value()?)? as u64),
                "--max-in-flight" => max_in_flight = Some(number(&flag, &value()?)? as usize),
                "--prompts" => {
                    let path = value()?;
                    let text = std::fs::read_to_string(&path)
                        .map_err(|e| format!("cannot read --prompts {path}: {e}"))?;
                    prompts = text
                        .lines()
                        .map(str::trim)
                        .filter(|line| !line.is_empty())
                        .map(str::to_owned)
                        .collect();
                    if prompts.is_empty() {
                        return Err(format!("--prompts {path} holds no prompt"));
                    }
                }
                "--records" => records = Some(value()?),
                "--tenant" => tenant = Some(value()?),
                "--sessions" => sessions = Some(number(&flag, &value()?)? as u64),
                "--max-error-rate" => limits = limits.max_error_rate(number(&flag, &value()?)?),
                "--max-p99-ms" => {
                    let ms = number(&flag, &value()?)?;
                    limits = limits.max_p99(Duration::from_secs_f64(ms / 1000.0));
                }
                "--max-missed-rate" => limits = limits.max_missed_rate(number(&flag, &value()?)?),
                other => return Err(format!("unknown option {other:?} (see the file's header)")),
            }
        }
        if jobs && url.is_some() {
            return Err("give --url or --jobs, not both".into());
        }
        let mut plan = match (rate, concurrency) {
            (Some(_), Some(_)) => return Err("give --rate or --concurrency, not both".into()),
            (_, Some(callers)) => LoadPlan::concurrency(callers),
            (rate, None) => LoadPlan::rate(rate.unwrap_or(100.0)),
        };
        let seconds = |what: &str, value: f64| {
            Duration::try_from_secs_f64(value)
                .map_err(|_| format!("{what} {value} is not a duration"))
        };
        let plan_timeout = seconds("--timeout", timeout)?;
        plan = plan
            .duration(seconds("--duration", duration)?)
            .timeout(plan_timeout);
        if let Some(limit) = limit {
            plan = plan.limit(limit);
        }
        if let Some(max) = max_in_flight {
            plan = plan.max_in_flight(max);
        }
        if stream {
            plan = plan.stream();
        }
        plan = plan.ramp(seconds("--ramp", ramp)?);
        let progress = Some(seconds("--progress", progress)?).filter(|p| !p.is_zero());
        Ok(Self {
            url,
            jobs,
            agent,
            plan,
            plan_timeout,
            prompts,
            records,
            tenant,
            sessions,
            limits,
            progress,
        })
    }
}

fn number(flag: &str, value: &str) -> Result<f64, String> {
    value
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
        .ok_or_else(|| format!("{flag} takes a number, not {value:?}"))
}
