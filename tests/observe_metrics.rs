//! `/metrics` parses as Prometheus (OpenMetrics) text and its counters move by the right
//! amounts for a known sequence of requests, failures included.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentkit::model::{Model, ModelRequest, ModelResponse, ScriptedModel};
use agentkit::transport::Api;
use agentkit::{Context, Error, Price};
use serde_json::{Value, json};
use support::*;

/// A model whose provider is down.
struct Down;

#[agentkit::async_trait]
impl Model for Down {
    fn id(&self) -> &str {
        "down-model"
    }

    async fn complete(&self, _: &ModelRequest<'_>, _: &Context) -> agentkit::Result<ModelResponse> {
        Err(Error::unavailable("the provider is down"))
    }
}

/// One sample: name, labels, value.
type Sample = (String, HashMap<String, String>, f64);

/// Parses the OpenMetrics text format strictly enough to catch malformed output: every line is a
/// `# HELP`/`# TYPE`/`# UNIT` comment, a sample of a declared family, or the final `# EOF`.
fn parse(text: &str) -> Vec<Sample> {
    let mut families: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "OpenMetrics ends with # EOF");
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                [
                    "counter",
                    "gauge",
                    "histogram",
                    "summary",
                    "unknown",
                    "info",
                    "stateset",
                    "gaugehistogram"
                ]
                .contains(&kind)
            );
            families.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line:?}");
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                let labels = body
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (k, v) = pair
                            .split_once("=\"")
                            .unwrap_or_else(|| panic!("bad label in {line:?}"));
                        (k.to_owned(), v.trim_end_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels)
            }
            None => (series.to_owned(), HashMap::new()),
        };
        let family = ["_total", "_bucket", "_count", "_sum", "_created"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|f| families.contains_key(*f))
            })
            .unwrap_or(&name);
        assert!(
            families.contains_key(family),
            "sample {name} of an undeclared family"
        );
        samples.push((name, labels, value));
    }
    samples
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_the_right_amounts() {
    let telemetry = agentkit::observe::ObserveBuilder::from_env()
        .unwrap()
        .logs(false)
        .init()
        .unwrap();
    let assistant = agentkit::demo::assistant_builder(Arc::new(ScriptedModel::demo()))
        .price("scripted", Price::per_million(1.0, 2.0))
        .build()
        .unwrap();
    let broken = agentkit::Agent::builder()
        .name("broken")
        .model(Down)
        .build()
        .unwrap();
    // A job queue with no worker: its backlog shows at the scrape all the same.
    let queue = Arc::new(agentkit::transport::jobs::MemoryJobQueue::new());
    let api = Api::builder()
        .agent("assistant", assistant)
        .agent("broken", broken)
        .jobs(queue.clone())
        .metrics(telemetry.metrics_renderer())
        .build()
        .unwrap();
    let base = serve(api).await;
    let client = reqwest::Client::new();
    for _ in 0..4 {
        let status = client
            .post(format!("{base}/v1/agents/assistant/jobs"))
            .json(&json!({"input": "later"}))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 202);
    }
    let mut cost = 0.0;
    for i in 0..3 {
        let body: Value = client
            .post(format!("{base}/v1/agents/assistant/invoke"))
            .json(&json!({"input": format!("What is {i} + 1?")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        cost += body["cost_usd"].as_f64().unwrap();
    }
    for _ in 0..2 {
        let status = client
            .post(format!("{base}/v1/agents/broken/invoke"))
            .json(&json!({"input": "hi"}))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 503);
    }
    // Refused before any run: not an agent request.
    let refused = client
        .post(format!("{base}/v1/agents/assistant/invoke"))
        .json(&json!({"input": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);

    let response = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = response.text().await.unwrap();
    let samples = parse(&text);
    let assistant = [("agent", "assistant")];
    let name = agentkit::transport::jobs::JobQueue::name(queue.as_ref()).to_owned();
    assert_eq!(
        value(
            &samples,
            "agentkit_queue_depth",
            &[("queue", name.as_str())]
        ),
        4.0,
        "jobs waiting with no worker to take them"
    );
    assert_eq!(
        value(
            &samples,
            "agentkit_requests_total",
            &[("agent", "assistant"), ("outcome", "ok")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &samples,
            "agentkit_requests_total",
            &[("agent", "broken"), ("outcome", "unavailable")]
        ),
        2.0
    );
    assert_eq!(
        value(&samples, "agentkit_requests_total", &assistant),
        3.0,
        "the refused request ran nothing"
    );
    assert_eq!(
        value(
            &samples,
            "agentkit_request_duration_seconds_count",
            &assistant
        ),
        3.0
    );
    assert_eq!(
        value(
            &samples,
            "agentkit_tool_calls_total",
            &[("tool", "add"), ("outcome", "ok")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &samples,
            "gen_ai_client_token_usage_count",
            &[
                ("agent", "assistant"),
                ("model", "scripted"),
                ("token_type", "input")
            ]
        ),
        6.0,
        "two model calls per run"
    );
    assert!(
        value(
            &samples,
            "gen_ai_client_token_usage_sum",
            &[("agent", "assistant"), ("token_type", "output")]
        ) > 0.0
    );
    assert_eq!(
        value(
            &samples,
            "gen_ai_client_operation_duration_seconds_count",
            &[("model", "scripted"), ("operation", "chat")]
        ),
        6.0
    );
    assert_eq!(
        value(
            &samples,
            "gen_ai_client_operation_duration_seconds_count",
            &[("model", "down-model"), ("operation", "chat")]
        ),
        2.0
    );
    assert_eq!(
        value(&samples, "agentkit_inflight_requests", &assistant),
        0.0
    );
    let counted = value(
        &samples,
        "agentkit_cost_usd_total",
        &[("agent", "assistant"), ("model", "scripted")],
    );
    assert!((counted - cost).abs() < 1e-12, "{counted} vs {cost}");
    assert!(
        samples
            .iter()
            .all(|(_, labels, _)| !labels.contains_key("request_id")
                && !labels.contains_key("session_id"))
    );

    // Two instances (separate turn gates, no leases) racing on one session: the loser of the
    // compare-and-set is counted, and its turn runs again.
    let before = value(&samples, "agentkit_session_conflicts_total", &[]);
    let store: Arc<dyn agentkit::store::SessionStore> =
        Arc::new(agentkit::store::MemorySessionStore::new());
    let slow = || {
        let model = ScriptedModel::builder()
            .demo_rules()
            .latency(std::time::Duration::from_millis(50))
            .build();
        agentkit::Agent::builder().model(model).build().unwrap()
    };
    let instances = [
        agentkit::store::SessionAgent::builder(slow(), store.clone()).build(),
        agentkit::store::SessionAgent::builder(slow(), store.clone()).build(),
    ];
    let turns = instances.iter().map(|sessions| {
        use agentkit::Executor;
        let cx = Context::new().with_session_id("raced");
        sessions.execute(agentkit::Invocation::text("hi").with_context(cx))
    });
    for outcome in futures::future::join_all(turns).await {
        outcome.unwrap();
    }
    let samples = parse(&telemetry.metrics().unwrap().render());
    assert!(value(&samples, "agentkit_session_conflicts_total", &[]) >= before + 1.0);
    let saved = store.load("default", "raced").await.unwrap().unwrap();
    assert_eq!(saved.version, 2, "both turns saved");

    // The same race between instances that lease the session: the second turn waits for the
    // first's lease, and the wait is measured.
    let waits_before = value(&samples, "agentkit_session_lease_wait_seconds_count", &[]);
    let store = Arc::new(agentkit::store::MemorySessionStore::new());
    let leased = |owner: &str| {
        agentkit::store::SessionAgent::builder(slow(), store.clone())
            .lease(store.clone(), owner, Duration::from_secs(5))
            .build()
    };
    let instances = [leased("one"), leased("two")];
    let turns = instances.iter().map(|sessions| {
        use agentkit::Executor;
        let cx = Context::new().with_session_id("leased");
        sessions.execute(agentkit::Invocation::text("hi").with_context(cx))
    });
    for outcome in futures::future::join_all(turns).await {
        outcome.unwrap();
    }
    let samples = parse(&telemetry.metrics().unwrap().render());
    let waits = value(&samples, "agentkit_session_lease_wait_seconds_count", &[]);
    assert!(waits >= waits_before + 1.0, "{waits} waits");
    assert!(value(&samples, "agentkit_session_lease_wait_seconds_sum", &[]) >= 0.02);

    // A keyed turn sent again is answered from the session, and counted.
    let replays_before = value(&samples, "agentkit_session_replays_total", &[]);
    let keyed = || {
        let cx = Context::new()
            .with_session_id("leased")
            .with_extension(agentkit::IdempotencyKey::new("metrics-key").unwrap());
        agentkit::Invocation::text("hello").with_context(cx)
    };
    for _ in 0..2 {
        use agentkit::Executor;
        instances[0].execute(keyed()).await.unwrap();
    }
    let samples = parse(&telemetry.metrics().unwrap().render());
    assert_eq!(
        value(&samples, "agentkit_session_replays_total", &[]),
        replays_before + 1.0
    );

    // A pool sends a keyed turn on from a member it cannot reach, and counts it.
    let pool = agentkit::executor::Pool::builder()
        .name("metrics-pool")
        .member("unreachable", agentkit::BoxExecutor::new(Unreachable))
        .member("up", agentkit::BoxExecutor::new(instances[1].clone()))
        .build()
        .unwrap();
    let session = (0..100)
        .map(|i| format!("pooled-{i}"))
        .find(|s| pool.owner(s) == Some("unreachable"))
        .unwrap();
    let cx = Context::new()
        .with_session_id(session.as_str())
        .with_extension(agentkit::IdempotencyKey::new("pool-key").unwrap());
    {
        use agentkit::Executor;
        pool.execute(agentkit::Invocation::text("hello").with_context(cx))
            .await
            .unwrap();
    }
    let samples = parse(&telemetry.metrics().unwrap().render());
    assert_eq!(
        value(
            &samples,
            "agentkit_pool_resends_total",
            &[("pool", "metrics-pool")]
        ),
        1.0
    );
}

/// A pool member that cannot be reached.
struct Unreachable;

impl agentkit::Executor for Unreachable {
    async fn execute(&self, _: agentkit::Invocation) -> agentkit::Result<agentkit::Reply> {
        Err(Error::unavailable("connection refused"))
    }
}

/// Two observers in one process (and one thread) count their own runs of the same agent: the
/// names and handles a thread keeps for the agent it ran last belong to one observer.
#[test]
fn two_observers_on_one_thread_count_only_their_own_runs() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let telemetry = || {
        agentkit::observe::ObserveBuilder::from_env()
            .unwrap()
            .global(false)
            .logs(false)
            .init()
            .unwrap()
    };
    let (first, second) = (telemetry(), telemetry());
    let run = |telemetry: &agentkit::observe::Telemetry, times: usize| {
        let agent = agentkit::demo::assistant_builder(Arc::new(ScriptedModel::demo()))
            .observer(telemetry.observer())
            .build()
            .unwrap();
        for _ in 0..times {
            use agentkit::Executor;
            runtime
                .block_on(agent.execute(agentkit::Invocation::text("What is 17 + 25?")))
                .unwrap();
        }
    };
    run(&first, 2);
    run(&second, 3);
    run(&first, 1);
    for (telemetry, runs) in [(&first, 3.0), (&second, 3.0)] {
        let samples = parse(&telemetry.metrics().unwrap().render());
        let ok = [("agent", "assistant"), ("outcome", "ok")];
        assert_eq!(value(&samples, "agentkit_requests_total", &ok), runs);
        let calls = [("tool", "add"), ("outcome", "ok")];
        assert_eq!(value(&samples, "agentkit_tool_calls_total", &calls), runs);
        let inflight = [("agent", "assistant")];
        assert_eq!(
            value(&samples, "agentkit_inflight_requests", &inflight),
            0.0
        );
    }
    drop(first);
    // A new observer, possibly where the first one was, starts from nothing.
    let third = telemetry();
    run(&third, 1);
    let samples = parse(&third.metrics().unwrap().render());
    let ok = [("agent", "assistant"), ("outcome", "ok")];
    assert_eq!(value(&samples, "agentkit_requests_total", &ok), 1.0);
}

/// An exporter that hangs until told to go on.
#[derive(Debug, Clone)]
struct Hanging(Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

impl Hanging {
    fn release(&self) {
        *self.0.0.lock().unwrap() = true;
        self.0.1.notify_all();
    }
}

impl opentelemetry_sdk::trace::SpanExporter for Hanging {
    async fn export(
        &self,
        _: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        let (released, wake) = &*self.0;
        let mut released = released.lock().unwrap();
        while !*released {
            released = wake.wait(released).unwrap();
        }
        Ok(())
    }
}

/// A collector that hangs an export costs spans only: runs go on at their own pace, metrics
/// count every run, the spans the exporter cannot take are dropped and counted, and once it
/// answers again spans flow.
#[test]
fn a_hanging_exporter_drops_telemetry_and_never_blocks_runs() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let exporter = Hanging(Arc::default());
    let telemetry = agentkit::observe::ObserveBuilder::from_env()
        .unwrap()
        .global(false)
        .logs(false)
        .queue_size(8192)
        .span_exporter_batched(exporter.clone())
        .span_batches(1, std::time::Duration::ZERO)
        .init()
        .unwrap();
    let agent = agentkit::demo::assistant_builder(Arc::new(ScriptedModel::demo()))
        .observer(telemetry.observer())
        .build()
        .unwrap();
    // 2,100 runs make 8,400 spans, exported one by one by an exporter that never returns,
    // against room for 8,192 waiting: if a run waited for telemetry, this would not end
    // before the deadline.
    runtime.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(30), async {
            for _ in 0..2100 {
                use agentkit::Executor;
                agent
                    .execute(agentkit::Invocation::text("What is 17 + 25?"))
                    .await
                    .unwrap();
            }
        })
        .await
        .expect("runs finish while the exporter hangs")
    });
    let samples = parse(&telemetry.metrics().unwrap().render());
    let dropped = telemetry.dropped();
    assert!(
        (200..=208).contains(&dropped),
        "spans the exporter could not take: {dropped} dropped"
    );
    assert_eq!(
        value(&samples, "agentkit_telemetry_dropped_total", &[]),
        dropped as f64
    );
    let ok = [("agent", "assistant"), ("outcome", "ok")];
    assert_eq!(
        value(&samples, "agentkit_requests_total", &ok),
        2100.0,
        "metrics count every run while spans wait"
    );
    exporter.release();
    telemetry.flush();
    runtime.block_on(async {
        use agentkit::Executor;
        agent
            .execute(agentkit::Invocation::text("What is 17 + 25?"))
            .await
            .unwrap();
    });
    telemetry.flush();
    assert_eq!(
        telemetry.dropped(),
        dropped,
        "nothing dropped once it answers"
    );
}

/// A client that gives up on a run: the server drops the run's future, the run ends as
/// `cancelled`, and no request stays in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_leaves_no_run_in_flight() {
    let telemetry = agentkit::observe::ObserveBuilder::from_env()
        .unwrap()
        .global(false)
        .logs(false)
        .init()
        .unwrap();
    let model = ScriptedModel::builder()
        .demo_rules()
        .latency(Duration::from_secs(3))
        .build();
    let slow = agentkit::demo::assistant_builder(Arc::new(model))
        .name("slow")
        .observer(telemetry.observer())
        .build()
        .unwrap();
    let api = Api::builder()
        .agent("slow", slow)
        .metrics(telemetry.metrics_renderer())
        .build()
        .unwrap();
    let base = serve(api).await;
    let client = reqwest::Client::new();
    let gave_up = client
        .post(format!("{base}/v1/agents/slow/invoke"))
        .json(&json!({"input": "What is 1 + 1?"}))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client gave up before the answer");
    // Well before the model would have answered (3 s), the run is over.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let samples = parse(&text);
        let inflight = value(&samples, "agentkit_inflight_requests", &[("agent", "slow")]);
        let cancelled = value(
            &samples,
            "agentkit_requests_total",
            &[("agent", "slow"), ("outcome", "cancelled")],
        );
        if inflight == 0.0 && cancelled == 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "in flight {inflight}, cancelled {cancelled}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
