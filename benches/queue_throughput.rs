//! `queue_throughput`: jobs per second end to end (enqueue → worker claims → scripted agent
//! runs with zero latency → result stored and acknowledged) on Redis Streams and on NATS
//! JetStream, beside the raw queue operations with the same client in the same run:
//!
//! - Redis: `XADD` by the producers, `XREADGROUP` + one batched `XACK` per read by one
//!   consumer;
//! - NATS: JetStream publish (awaiting the ack) by the producers, pull `fetch` + ack by one
//!   consumer.
//!
//! and, as a second comparator, the same raw operations plus the one write an end-to-end job
//! cannot do without: its outcome document (a real one, from the demo agent, about 850
//! bytes) stored under the job's id. On Redis a `SET NX EX` per entry, pipelined with the
//! batch's `XACK`; on NATS a key-value `create` in a bucket like the job queue's, before each
//! ack, up to 64 at a time as a worker would. This is the floor of any design that stores a
//! result per job, with no agent run and no encoding in it.
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
//! `AGENTKIT_BENCH_ONLY=raw` or `=e2e` runs one phase alone (for profiling it);
//! `AGENTKIT_BENCH_DRAIN_ONLY=1` exits as soon as the first end-to-end queue has drained, so
//! that a profile holds no reads of the results. `AGENTKIT_BENCH_ROUNDS=N` runs each backend N
//! times, raw and end to end back to back, and prints the median ratio.
//!
//! Last, per backend, `QueueExecutor` call latency: one caller at a time invokes the demo agent
//! through the queue (a worker of concurrency 4 runs it, its scripted model taking 10 ms a
//! call, so a job takes about 20 ms), alternating between the queue as it
//! is (whose `until_ended` hears of the job's end as it happens) and the same queue behind a
//! wrapper that leaves `until_ended` to the trait's default, which polls the job every 5 ms at
//! first and at most every 250 ms (as `QueueExecutor` did on Redis and NATS before): the
//! baseline in the same run. `AGENTKIT_BENCH_CALLS` sets the calls of each (default 100).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agentkit::Message;
use agentkit::model::ScriptedModel;
use agentkit::transport::jobs::{JobDoc, JobQueue, JobSpec, JobStatus, Worker};
use agentkit_testkit::services::delete_nats_streams;
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
    let cpu_before = Usage::now();
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
                    ids.push(queue.enqueue(bench_spec(i)).await.unwrap().job_id);
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
    if let (Some(before), Some(after)) = (cpu_before, Usage::now()) {
        println!(
            "  (this process: {} while the queue drained)",
            after.since(&before, n)
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
    // For profiling the drain alone: the reads below are the bench's, not the queue's.
    if std::env::var("AGENTKIT_BENCH_DRAIN_ONLY").is_ok_and(|v| v == "1") {
        std::process::exit(0);
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

/// The raw Redis operations; with `outcome`, each job's outcome stored as well.
async fn redis_raw(
    client: &agentkit::store::redis::RedisClient,
    n: usize,
    outcome: Option<Arc<[u8]>>,
) -> Figures {
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
    let (cpu_before, server_before) = (Usage::now(), redis_cpu(client).await);
    let consumer = {
        let (client, stream) = (client.clone(), stream.clone());
        let outcome = outcome.clone();
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
                let (s, outcome) = (stream.as_str(), outcome.as_deref());
                client
                    .run(timeout, |mut c| async move {
                        let mut pipe = redis::pipe();
                        for id in ids.iter().filter(|_| outcome.is_some()) {
                            pipe.cmd("SET")
                                .arg(format!("{s}:done:{id}"))
                                .arg(outcome)
                                .arg("NX")
                                .arg("EX")
                                .arg(3600)
                                .ignore();
                        }
                        pipe.cmd("XACK").arg(s).arg("g").arg(&ids).ignore();
                        pipe.query_async::<()>(&mut c).await
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
    let phase = phase_name(outcome.is_some());
    if let (Some(before), Some(after)) = (cpu_before, Usage::now()) {
        println!("  ({phase}: this process {})", after.since(&before, n));
    }
    if let (Some(before), Some(after)) = (server_before, redis_cpu(client).await) {
        println!(
            "  ({phase}: the Redis server {:.0} µs of CPU per job)",
            (after - before) * 1e6 / n as f64
        );
    }
    redis_forget(client, &format!("{stream}*")).await;
    Figures::new(n, elapsed, latencies)
}

/// The raw NATS operations; with `outcome`, each job's outcome stored as well.
async fn nats_raw(url: &str, n: usize, outcome: Option<bytes::Bytes>) -> Figures {
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
    let stores = outcome.is_some();
    let outcomes = match outcome {
        Some(outcome) => Some((outcome_bucket(&js, &name).await, outcome)),
        None => None,
    };
    let started = Instant::now();
    let (cpu_before, server_before) = (Usage::now(), nats_server_cpu());
    let reader = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(n);
        // With outcomes, a job's latency runs to its outcome stored and its message acked.
        let mut storing = tokio::task::JoinSet::new();
        let mut taken = 0;
        while taken < n {
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
                taken += 1;
                let Some((kv, outcome)) = &outcomes else {
                    message.ack().await.unwrap();
                    latencies.push(now_us().saturating_sub(sent) as f64 / 1000.0);
                    continue;
                };
                let (kv, outcome) = (kv.clone(), outcome.clone());
                let key = format!("job.{taken}");
                storing.spawn(async move {
                    kv.create(key, outcome).await.unwrap();
                    message.ack().await.unwrap();
                    now_us().saturating_sub(sent) as f64 / 1000.0
                });
                while storing.len() >= CONCURRENCY {
                    latencies.push(storing.join_next().await.unwrap().unwrap());
                }
            }
        }
        while let Some(stored) = storing.join_next().await {
            latencies.push(stored.unwrap());
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
    let phase = phase_name(stores);
    if let (Some(before), Some(after)) = (cpu_before, Usage::now()) {
        println!("  ({phase}: this process {})", after.since(&before, n));
    }
    if let (Some(before), Some(after)) = (server_before, nats_server_cpu()) {
        println!(
            "  ({phase}: the NATS server {:.0} µs of CPU per job)",
            (after - before).as_secs_f64() * 1e6 / n as f64
        );
    }
    delete_nats_streams(&js, |stream| stream.contains(&*name)).await;
    Figures::new(n, elapsed, latencies)
}

/// A queue that forwards everything but [`JobQueue::until_ended`], which it leaves to the
/// trait's default (polling), for the latency baseline.
struct Polled(Arc<dyn JobQueue>);

#[async_trait::async_trait]
impl JobQueue for Polled {
    async fn enqueue(
        &self,
        spec: JobSpec,
    ) -> agentkit::Result<agentkit::transport::jobs::Enqueued> {
        self.0.enqueue(spec).await
    }
    async fn claim(
        &self,
        consumer: &str,
        max: usize,
        wait: Duration,
    ) -> agentkit::Result<Vec<agentkit::transport::jobs::Delivery>> {
        self.0.claim(consumer, max, wait).await
    }
    async fn heartbeat(
        &self,
        delivery: &agentkit::transport::jobs::Delivery,
    ) -> agentkit::Result<()> {
        self.0.heartbeat(delivery).await
    }
    async fn finish(
        &self,
        delivery: &agentkit::transport::jobs::Delivery,
        finish: agentkit::transport::jobs::Finish,
    ) -> agentkit::Result<JobDoc> {
        self.0.finish(delivery, finish).await
    }
    async fn release(
        &self,
        delivery: &agentkit::transport::jobs::Delivery,
        delay: Duration,
        error: Option<agentkit::transport::jobs::JobError>,
    ) -> agentkit::Result<()> {
        self.0.release(delivery, delay, error).await
    }
    async fn get(&self, job_id: &str) -> agentkit::Result<Option<JobDoc>> {
        self.0.get(job_id).await
    }
    async fn depth(&self) -> agentkit::Result<u64> {
        self.0.depth().await
    }
    fn ledger(&self) -> Arc<dyn agentkit::tool::EffectLedger> {
        self.0.ledger()
    }
}

/// `QueueExecutor` call latency on `queue`, woken and polled (see the module's documentation).
async fn executor_latency(name: &str, queue: Arc<dyn JobQueue>, calls: usize) {
    use agentkit::Executor;
    use agentkit::transport::jobs::QueueExecutor;

    let model = ScriptedModel::builder()
        .demo_rules()
        .latency(Duration::from_millis(10))
        .build();
    let agent = agentkit::demo::assistant_builder(Arc::new(model))
        .build()
        .unwrap();
    let worker = Worker::builder(queue.clone())
        .agent("assistant", agent)
        .concurrency(4)
        .build()
        .unwrap();
    let running = agentkit_testkit::jobs::RunningWorker::spawn(worker);
    let woken = QueueExecutor::new(queue.clone(), "assistant");
    let polled = QueueExecutor::new(Arc::new(Polled(queue)), "assistant");
    let (mut woken_ms, mut polled_ms) = (Vec::new(), Vec::new());
    for i in 0..calls {
        for (executor, latencies) in [(&woken, &mut woken_ms), (&polled, &mut polled_ms)] {
            let call = Instant::now();
            let reply = executor
                .execute(agentkit::Invocation::new(bench_spec(i).input))
                .await
                .unwrap();
            latencies.push(call.elapsed().as_secs_f64() * 1e3);
            assert_eq!(reply.output, format!("{i} + 1 = {}", i + 1));
        }
    }
    running.stop().await.unwrap();
    for (how, latencies) in [("woken", woken_ms), ("polled", polled_ms)] {
        let figures = Figures::new(calls, Duration::ZERO, latencies);
        println!(
            "  {name} QueueExecutor call, {how:6}  p50 {:7.2} ms   p99 {:7.2} ms   ({calls} calls)",
            figures.pct(0.5),
            figures.pct(0.99)
        );
    }
}

/// How the CPU lines name a raw phase.
fn phase_name(stores_outcomes: bool) -> &'static str {
    if stores_outcomes {
        "raw + outcome"
    } else {
        "raw"
    }
}

/// A key-value bucket made as the NATS job queue makes its own (one value per key, a
/// retention, compare-and-set creates), for the raw figure with outcomes stored.
async fn outcome_bucket(
    js: &async_nats::jetstream::Context,
    name: &str,
) -> async_nats::jetstream::kv::Store {
    let bucket = format!("RAW_{name}");
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age: Duration::from_secs(3600),
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .unwrap();
    js.get_key_value(&bucket).await.unwrap()
}

/// A real outcome document: the demo agent's answer to a bench job, as a job document.
async fn outcome_document() -> Vec<u8> {
    use agentkit::Executor;
    let agent = agentkit::demo::assistant_builder(Arc::new(ScriptedModel::demo()))
        .build()
        .unwrap();
    let spec = bench_spec(1234);
    let reply = agent
        .execute(agentkit::Invocation::new(spec.input.clone()))
        .await
        .unwrap();
    let mut doc = JobDoc::queued("1795816921035-0".into(), spec);
    doc.status = JobStatus::Succeeded;
    doc.attempts = 1;
    doc.result = Some(reply.into());
    serde_json::to_vec(&doc).unwrap()
}

/// The job the producers submit, the `i`th.
fn bench_spec(i: usize) -> JobSpec {
    JobSpec {
        agent: "assistant".into(),
        input: vec![Message::user(format!("What is {i} + 1?"))],
        tenant: "bench".into(),
        ..JobSpec::default()
    }
}

/// What this process used so far, where `/proc` tells it: CPU time, and context switches
/// summed over its threads (each one a thread that slept or was put off the CPU; a task woken
/// on a thread that was parked costs one).
struct Usage {
    cpu: Duration,
    switches: u64,
}

impl Usage {
    fn now() -> Option<Self> {
        let mut switches = 0;
        for task in std::fs::read_dir("/proc/self/task").ok()? {
            let status = std::fs::read_to_string(task.ok()?.path().join("status")).ok()?;
            switches += status
                .lines()
                .filter(|line| line.contains("ctxt_switches:"))
                .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
        Some(Self {
            cpu: cpu_of("self")?,
            switches,
        })
    }

    /// Per job since `before`, for `n` jobs. Threads that ended between the two readings
    /// drop out of the count of switches (the bench's threads live through a phase).
    fn since(&self, before: &Usage, n: usize) -> String {
        format!(
            "{:.0} µs of CPU and {:.1} context switches per job",
            (self.cpu - before.cpu).as_secs_f64() * 1e6 / n as f64,
            self.switches.saturating_sub(before.switches) as f64 / n as f64
        )
    }
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

/// One backend's figures: raw, raw with outcomes stored, end to end.
struct Backend {
    name: &'static str,
    raw_ops: &'static str,
    raw: Option<Figures>,
    stored: Option<Figures>,
    e2e: Option<Figures>,
}

impl Backend {
    fn new(name: &'static str, raw_ops: &'static str) -> Self {
        Self {
            name,
            raw_ops,
            raw: None,
            stored: None,
            e2e: None,
        }
    }

    fn report(&self) {
        let (name, ops) = (self.name, self.raw_ops);
        if let Some(raw) = &self.raw {
            raw.print(&format!("{name} raw {ops}"));
        }
        if let Some(stored) = &self.stored {
            stored.print(&format!("{name} raw + outcome stored"));
        }
        if let Some(e2e) = &self.e2e {
            e2e.print(&format!("{name} end to end"));
            if let Some(raw) = &self.raw {
                println!("  {name} ratio: {:.2}x of raw", e2e.rate() / raw.rate());
            }
            if let Some(stored) = &self.stored {
                println!(
                    "  {name} ratio: {:.2}x of raw with outcomes stored",
                    e2e.rate() / stored.rate()
                );
            }
        }
    }
}

/// Deletes the keys matching `pattern` (this run's, by its unique names): left behind, every
/// run's keys would grow the server's keyspace under the next runs' figures.
async fn redis_forget(client: &agentkit::store::redis::RedisClient, pattern: &str) {
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = client
            .run(Duration::from_secs(10), |mut c| async move {
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(10_000)
                    .query_async(&mut c)
                    .await
            })
            .await
            .unwrap();
        if !keys.is_empty() {
            client
                .run(Duration::from_secs(10), |mut c| async move {
                    redis::cmd("UNLINK")
                        .arg(&keys)
                        .query_async::<()>(&mut c)
                        .await
                })
                .await
                .unwrap();
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

/// How many rounds of each backend `AGENTKIT_BENCH_ROUNDS` asks for (default 1). Each round
/// runs the raw loops and end to end back to back, so that a ratio compares runs seconds
/// apart: on a shared VM the speed of the machine moves between minutes.
fn rounds_wanted() -> usize {
    std::env::var("AGENTKIT_BENCH_ROUNDS")
        .map(|n| n.parse().expect("AGENTKIT_BENCH_ROUNDS must be a number"))
        .unwrap_or(1)
        .max(1)
}

/// With more than one round: the median ratio of the rounds and their range.
fn summarize(rounds: &[Backend]) {
    let Some(first) = rounds.first().filter(|_| rounds.len() > 1) else {
        return;
    };
    let ratios = |base: fn(&Backend) -> Option<&Figures>| {
        let mut ratios: Vec<f64> = rounds
            .iter()
            .filter_map(|round| Some(round.e2e.as_ref()?.rate() / base(round)?.rate()))
            .collect();
        ratios.sort_by(f64::total_cmp);
        ratios
    };
    for (what, ratios) in [
        ("raw", ratios(|r| r.raw.as_ref())),
        ("raw with outcomes stored", ratios(|r| r.stored.as_ref())),
    ] {
        if let (Some(low), Some(high)) = (ratios.first(), ratios.last()) {
            println!(
                "  {} over {} rounds: median {:.2}x of {what} ({low:.2}-{high:.2}x)",
                first.name,
                ratios.len(),
                ratios[ratios.len() / 2],
            );
        }
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test");
    let n = match std::env::var("AGENTKIT_BENCH_JOBS") {
        Ok(n) => n.parse().expect("AGENTKIT_BENCH_JOBS must be a number"),
        Err(_) if quick => 64,
        Err(_) => 3000,
    };
    let calls = match std::env::var("AGENTKIT_BENCH_CALLS") {
        Ok(n) => n.parse().expect("AGENTKIT_BENCH_CALLS must be a number"),
        Err(_) if quick => 8,
        Err(_) => 100,
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
        let outcome: Arc<[u8]> = outcome_document().await.into();
        if let Some(url) = agentkit_testkit::redis_url() {
            let client = agentkit::store::redis::RedisClient::connect(&url, 16).unwrap();
            let mut rounds = Vec::new();
            for _ in 0..rounds_wanted() {
                let mut backend = Backend::new("redis", "XADD/XREADGROUP/XACK");
                if !only("e2e") {
                    backend.raw = Some(redis_raw(&client, n, None).await);
                    backend.stored = Some(redis_raw(&client, n, Some(outcome.clone())).await);
                }
                if !only("raw") {
                    let name = agentkit_testkit::unique("bench");
                    let queue =
                        agentkit::transport::jobs::redis::RedisJobQueue::new(client.clone(), &name);
                    backend.e2e = Some(end_to_end(Arc::new(queue), n, Some(&client)).await);
                    redis_forget(&client, &format!("*{name}*")).await;
                }
                backend.report();
                rounds.push(backend);
            }
            summarize(&rounds);
            if !only("e2e") && !only("raw") {
                let name = agentkit_testkit::unique("bench-calls");
                let queue =
                    agentkit::transport::jobs::redis::RedisJobQueue::new(client.clone(), &name);
                executor_latency("redis", Arc::new(queue), calls).await;
                redis_forget(&client, &format!("*{name}*")).await;
            }
        }
        if let Some(url) = agentkit_testkit::nats_url() {
            let mut rounds = Vec::new();
            for _ in 0..rounds_wanted() {
                let mut backend = Backend::new("nats", "publish/fetch/ack");
                if !only("e2e") {
                    backend.raw = Some(nats_raw(&url, n, None).await);
                    let outcome = bytes::Bytes::copy_from_slice(&outcome);
                    backend.stored = Some(nats_raw(&url, n, Some(outcome)).await);
                }
                if !only("raw") {
                    let name = agentkit_testkit::unique("bench").replace(['.', ':'], "-");
                    let queue = agentkit::transport::jobs::nats::NatsJobQueue::connect(&url, &name)
                        .await
                        .unwrap();
                    backend.e2e = Some(end_to_end(Arc::new(queue), n, None).await);
                    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
                    delete_nats_streams(&js, |stream| stream.contains(&*name)).await;
                }
                backend.report();
                rounds.push(backend);
            }
            summarize(&rounds);
            if !only("e2e") && !only("raw") {
                let name = agentkit_testkit::unique("bench-calls").replace(['.', ':'], "-");
                let queue = agentkit::transport::jobs::nats::NatsJobQueue::connect(&url, &name)
                    .await
                    .unwrap();
                executor_latency("nats", Arc::new(queue), calls).await;
                let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
                delete_nats_streams(&js, |stream| stream.contains(&*name)).await;
            }
        }
    });
}
