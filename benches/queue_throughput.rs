//! `queue_throughput`: jobs per second end to end (enqueue → worker claims → scripted agent
//! runs with zero latency → result stored and acknowledged) on Redis Streams and on NATS
//! JetStream, beside the raw queue operations with the same client in the same run:
//!
//! - Redis: `XADD` by the producers, `XREADGROUP` + one batched `XACK` per read by one
//!   consumer;
//! - NATS: JetStream publish (awaiting the ack) by the producers, pull `fetch` + ack by one
//!   consumer.
//!
//! Method: 16 producer tasks submit N jobs (`AGENTKIT_BENCH_JOBS`, default 3,000) as fast as
//! they can while one in-process worker (concurrency 64, as one would set it for jobs that take
//! microseconds; the raw consumer reads 64 at a time too) runs them; throughput is N over the time from the first submission to the
//! last job stored; latency is submit-to-done per job (from the job's timestamps; for the raw
//! figures, from a timestamp carried in the message). Both run on one multi-threaded Tokio
//! runtime with the servers on loopback, so the client, the worker and the server share the
//! machine's 2 cores. Goal: at least 0.5× the raw figure.
//!
//! Run: `cargo bench --bench queue_throughput` (`-- --test` for a quick check). Needs Redis and
//! NATS on loopback (`REDIS_URL`, `NATS_URL`); a missing one is skipped with a message.
//! `AGENTKIT_BENCH_ONLY=raw` or `=e2e` runs one phase alone (for profiling it).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agentkit::Message;
use agentkit::model::ScriptedModel;
use agentkit::transport::jobs::{JobQueue, JobSpec, JobStatus, Worker};
use futures::StreamExt;

const PRODUCERS: usize = 16;
/// The worker's concurrency: jobs here take microseconds, so its slots wait on round trips.
const CONCURRENCY: usize = 64;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

struct Figures {
    jobs: usize,
    elapsed: Duration,
    latencies_ms: Vec<f64>,
}

impl Figures {
    fn new(jobs: usize, elapsed: Duration, mut latencies_ms: Vec<f64>) -> Self {
        latencies_ms.sort_by(|a, b| a.total_cmp(b));
        Self {
            jobs,
            elapsed,
            latencies_ms,
        }
    }

    fn rate(&self) -> f64 {
        self.jobs as f64 / self.elapsed.as_secs_f64()
    }

    fn pct(&self, p: f64) -> f64 {
        if self.latencies_ms.is_empty() {
            return f64::NAN;
        }
        self.latencies_ms[((self.latencies_ms.len() - 1) as f64 * p).round() as usize]
    }

    fn print(&self, name: &str) {
        println!(
            "  {name:<28} {:>8.0} jobs/s   p50 {:>8.2} ms   p99 {:>8.2} ms   ({} in {:.2} s)",
            self.rate(),
            self.pct(0.5),
            self.pct(0.99),
            self.jobs,
            self.elapsed.as_secs_f64()
        );
    }
}

/// Submits `n` jobs from 16 producers while a worker runs them; waits for all to be stored.
async fn end_to_end(
    queue: Arc<dyn JobQueue>,
    n: usize,
    redis: Option<&agentkit::store::redis::RedisClient>,
) -> Figures {
    let agent = agentkit::demo::assistant_builder(Arc::new(ScriptedModel::demo()))
        .build()
        .unwrap();
    let worker = Worker::builder(queue.clone())
        .agent("assistant", agent)
        .concurrency(CONCURRENCY)
        .build()
        .unwrap();
    let running = agentkit_testkit::jobs::RunningWorker::spawn(worker);
    let started = Instant::now();
    let cpu_before = process_cpu();
    let nats_before = nats_server_cpu().filter(|_| redis.is_none());
    let server_before = match redis {
        Some(client) => {
            if commandstats() {
                redis_command(client, &["CONFIG", "RESETSTAT"]).await;
            }
            redis_cpu(client).await
        }
        None => None,
    };
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let queue = queue.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in (p..n).step_by(PRODUCERS) {
                    let spec = JobSpec {
                        agent: "assistant".into(),
                        input: vec![Message::user(format!("What is {i} + 1?"))],
                        tenant: "bench".into(),
                        ..JobSpec::default()
                    };
                    ids.push(queue.enqueue(spec).await.unwrap().job_id);
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::with_capacity(n);
    for producer in producers {
        ids.extend(producer.await.unwrap());
    }
    // Read the jobs' timestamps once the queue has drained, so that this bench's own reads do
    // not compete with the worker for the machine (the raw consumer computes its latencies
    // from the messages it already has). Polling the depth costs one round trip per 10 ms.
    while queue.depth().await.unwrap() > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let (Some(before), Some(after)) = (cpu_before, process_cpu()) {
        println!(
            "  (this process: {:.0} µs of CPU per job while the queue drained)",
            (after - before).as_secs_f64() * 1e6 / n as f64
        );
    }
    if let (Some(before), Some(after)) = (nats_before, nats_server_cpu()) {
        println!(
            "  (the NATS server: {:.0} µs of CPU per job while the queue drained)",
            (after - before).as_secs_f64() * 1e6 / n as f64
        );
    }
    if let (Some(client), Some(before)) = (redis, server_before)
        && let Some(after) = redis_cpu(client).await
    {
        println!(
            "  (the Redis server: {:.0} µs of CPU per job while the queue drained)",
            (after - before) * 1e6 / n as f64
        );
        if commandstats() {
            let stats = redis_command(client, &["INFO", "COMMANDSTATS"]).await;
            for line in stats.lines().filter(|l| l.starts_with("cmdstat_")) {
                println!("    {line}");
            }
        }
    }
    let mut latencies = Vec::with_capacity(n);
    let mut last_done = 0;
    let mut first_created = u64::MAX;
    for id in &ids {
        let doc = loop {
            let doc = queue.get(id).await.unwrap().unwrap();
            if doc.status.is_terminal() {
                break doc;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(doc.status, JobStatus::Succeeded);
        latencies.push(doc.updated_at_ms.saturating_sub(doc.created_at_ms) as f64);
        last_done = last_done.max(doc.updated_at_ms);
        first_created = first_created.min(doc.created_at_ms);
    }
    let _ = started;
    running.stop().await.unwrap();
    let elapsed = Duration::from_millis(last_done.saturating_sub(first_created).max(1));
    Figures::new(n, elapsed, latencies)
}

async fn redis_raw(client: &agentkit::store::redis::RedisClient, n: usize) -> Figures {
    let stream = format!("agentkit-bench-raw:{}", agentkit_testkit::unique("s"));
    let timeout = Duration::from_secs(5);
    let s = stream.clone();
    client
        .run(timeout, |mut c| async move {
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&s)
                .arg("g")
                .arg("0")
                .arg("MKSTREAM")
                .query_async::<()>(&mut c)
                .await
        })
        .await
        .unwrap();
    let started = Instant::now();
    let (cpu_before, server_before) = (process_cpu(), redis_cpu(client).await);
    let consumer = {
        let (client, stream) = (client.clone(), stream.clone());
        tokio::spawn(async move {
            let mut conn = client.dedicated().await.unwrap();
            let mut latencies = Vec::with_capacity(n);
            while latencies.len() < n {
                let reply: Option<redis::streams::StreamReadReply> = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg("g")
                    .arg("c")
                    .arg("COUNT")
                    .arg(64)
                    .arg("BLOCK")
                    .arg(100)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(">")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                let Some(reply) = reply else { continue };
                let entries: Vec<_> = reply.keys.into_iter().flat_map(|k| k.ids).collect();
                let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
                let s = stream.as_str();
                client
                    .run(timeout, |mut c| async move {
                        redis::cmd("XACK")
                            .arg(s)
                            .arg("g")
                            .arg(&ids)
                            .query_async::<()>(&mut c)
                            .await
                    })
                    .await
                    .unwrap();
                for entry in entries {
                    let sent: u64 = entry.get("t").unwrap();
                    latencies.push(now_us().saturating_sub(sent) as f64 / 1000.0);
                }
            }
            latencies
        })
    };
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (client, stream) = (client.clone(), stream.clone());
            tokio::spawn(async move {
                for _ in (p..n).step_by(PRODUCERS) {
                    let s = stream.as_str();
                    client
                        .run(timeout, |mut c| async move {
                            redis::cmd("XADD")
                                .arg(s)
                                .arg("*")
                                .arg("t")
                                .arg(now_us())
                                .query_async::<String>(&mut c)
                                .await
                        })
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for producer in producers {
        producer.await.unwrap();
    }
    let latencies = consumer.await.unwrap();
    let elapsed = started.elapsed();
    if let (Some(before), Some(after)) = (cpu_before, process_cpu()) {
        println!(
            "  (raw: this process {:.0} µs of CPU per job)",
            (after - before).as_secs_f64() * 1e6 / n as f64
        );
    }
    if let (Some(before), Some(after)) = (server_before, redis_cpu(client).await) {
        println!(
            "  (raw: the Redis server {:.0} µs of CPU per job)",
            (after - before) * 1e6 / n as f64
        );
    }
    Figures::new(n, elapsed, latencies)
}

async fn nats_raw(url: &str, n: usize) -> Figures {
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let name = agentkit_testkit::unique("rawbench").replace(['.', ':'], "-");
    let subject = format!("agentkit.bench.{name}");
    let stream = js
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: format!("RAW_{name}"),
            subjects: vec![subject.clone()],
            retention: async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            "c",
            async_nats::jetstream::consumer::pull::Config {
                durable_name: Some("c".into()),
                ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let started = Instant::now();
    let (cpu_before, server_before) = (process_cpu(), nats_server_cpu());
    let reader = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(n);
        while latencies.len() < n {
            let mut batch = consumer
                .fetch()
                .max_messages(64)
                .expires(Duration::from_millis(100))
                .messages()
                .await
                .unwrap();
            while let Some(message) = batch.next().await {
                let message = message.unwrap();
                let sent: u64 = std::str::from_utf8(&message.payload)
                    .unwrap()
                    .parse()
                    .unwrap();
                message.ack().await.unwrap();
                latencies.push(now_us().saturating_sub(sent) as f64 / 1000.0);
            }
        }
        latencies
    });
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (js, subject) = (js.clone(), subject.clone());
            tokio::spawn(async move {
                for _ in (p..n).step_by(PRODUCERS) {
                    js.publish(subject.clone(), now_us().to_string().into())
                        .await
                        .unwrap()
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for producer in producers {
        producer.await.unwrap();
    }
    let latencies = reader.await.unwrap();
    let elapsed = started.elapsed();
    for (who, before, after) in [
        ("this process", cpu_before, process_cpu()),
        ("the NATS server", server_before, nats_server_cpu()),
    ] {
        if let (Some(before), Some(after)) = (before, after) {
            println!(
                "  (raw: {who} {:.0} µs of CPU per job)",
                (after - before).as_secs_f64() * 1e6 / n as f64
            );
        }
    }
    Figures::new(n, elapsed, latencies)
}

/// CPU time (user + system) of this process so far, where `/proc` tells it.
fn process_cpu() -> Option<Duration> {
    cpu_of("self")
}

/// CPU time of the NATS server so far, when it runs on this machine (found by its name in
/// `/proc`).
fn nats_server_cpu() -> Option<Duration> {
    let pid = std::fs::read_dir("/proc").ok()?.find_map(|entry| {
        let pid = entry.ok()?.file_name().into_string().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim() == "nats-server").then_some(pid)
    })?;
    cpu_of(&pid)
}

/// CPU time (user + system) of the process `pid` so far.
fn cpu_of(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at state, field 3.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// The Redis server's own CPU time so far (user + system, from `INFO cpu`), in seconds.
async fn redis_cpu(client: &agentkit::store::redis::RedisClient) -> Option<f64> {
    let info = redis_command(client, &["INFO", "cpu"]).await;
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
    };
    Some(field("used_cpu_user:")? + field("used_cpu_sys:")?)
}

/// Whether `AGENTKIT_BENCH_COMMANDSTATS=1` asks for the Redis server's per-command figures
/// (`INFO COMMANDSTATS`) while the queue drained end to end.
fn commandstats() -> bool {
    std::env::var("AGENTKIT_BENCH_COMMANDSTATS").is_ok_and(|v| v == "1")
}

/// Runs one Redis command for the bench's own reporting; its reply as text (empty on error).
async fn redis_command(client: &agentkit::store::redis::RedisClient, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    client
        .run(Duration::from_secs(2), |mut c| async move {
            redis::cmd(&args[0])
                .arg(&args[1..])
                .query_async::<String>(&mut c)
                .await
        })
        .await
        .unwrap_or_default()
}

/// Whether `AGENTKIT_BENCH_ONLY` asks for this phase alone (`raw` or `e2e`; both by default),
/// for profiling one phase at a time.
fn only(phase: &str) -> bool {
    std::env::var("AGENTKIT_BENCH_ONLY").is_ok_and(|v| v == phase)
}

fn report(backend: &str, raw_ops: &str, raw: Option<Figures>, e2e: Option<Figures>) {
    if let Some(raw) = &raw {
        raw.print(&format!("{backend} raw {raw_ops}"));
    }
    if let Some(e2e) = &e2e {
        e2e.print(&format!("{backend} end to end"));
    }
    if let (Some(raw), Some(e2e)) = (raw, e2e) {
        println!("  {backend} ratio: {:.2}x of raw", e2e.rate() / raw.rate());
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test");
    let n = match std::env::var("AGENTKIT_BENCH_JOBS") {
        Ok(n) => n.parse().expect("AGENTKIT_BENCH_JOBS must be a number"),
        Err(_) if quick => 64,
        Err(_) => 3000,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!(
            "queue_throughput ({n} jobs, {PRODUCERS} producers, worker concurrency {CONCURRENCY})"
        );
        if let Some(url) = agentkit_testkit::redis_url() {
            let client = agentkit::store::redis::RedisClient::connect(&url, 16).unwrap();
            let raw = if only("e2e") {
                None
            } else {
                Some(redis_raw(&client, n).await)
            };
            let name = agentkit_testkit::unique("bench");
            let queue = agentkit::transport::jobs::redis::RedisJobQueue::new(client.clone(), &name);
            let e2e = if only("raw") {
                None
            } else {
                Some(end_to_end(Arc::new(queue), n, Some(&client)).await)
            };
            report("redis", "XADD/XREADGROUP/XACK", raw, e2e);
        }
        if let Some(url) = agentkit_testkit::nats_url() {
            let raw = if only("e2e") {
                None
            } else {
                Some(nats_raw(&url, n).await)
            };
            let name = agentkit_testkit::unique("bench").replace(['.', ':'], "-");
            let queue = agentkit::transport::jobs::nats::NatsJobQueue::connect(&url, &name)
                .await
                .unwrap();
            let e2e = if only("raw") {
                None
            } else {
                Some(end_to_end(Arc::new(queue), n, None).await)
            };
            report("nats", "publish/fetch/ack", raw, e2e);
        }
    });
}
