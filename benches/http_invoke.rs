//! `http_invoke`: requests per second and latency percentiles of
//! `POST /v1/agents/assistant/invoke` (scripted model, zero latency, in-memory store, the full
//! middleware stack) beside a plain axum handler that returns the same response bytes, both
//! driven by the same load generator in the same run.
//!
//! Method: each server runs on its own single-threaded Tokio runtime on its own OS thread; the
//! load generator runs on another: 32 concurrent keep-alive HTTP/1.1 connections (reqwest),
//! each sending the same request in a closed loop. After a 2 s warm-up of each, the servers
//! take turns for five rounds of 4 s (200 ms of warm-up each), so that the VM's noise weighs on
//! both alike; the figure is the median of the five per-round throughput ratios. Latencies are
//! per request, over all rounds. On a 2-core
//! machine the generator and the server share the CPUs, so absolute figures understate a real
//! deployment; the ratio between the two servers is the figure that matters. Goal: at least
//! 0.7× the plain handler's throughput.
//!
//! Run: `cargo bench --bench http_invoke` (add `-- --test` for a quick check that it works).
//! `AGENTKIT_ONESHOT=N` (with `AGENTKIT_ROUTER=plain` for the baseline) instead sends N
//! requests straight through the router, without sockets, for counting instructions per
//! request under callgrind.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentkit::model::ScriptedModel;
use agentkit::transport::Api;
use axum::routing::post;

const CONCURRENCY: usize = 32;
const BODY: &str = r#"{"input": "What is 17 + 25?"}"#;

fn spawn_server(router: axum::Router) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, router).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

struct Run {
    requests: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    /// The rounds of one server as one run.
    fn merge(runs: Vec<Run>) -> Run {
        let mut merged = Run {
            requests: 0,
            elapsed: Duration::ZERO,
            latencies: Vec::new(),
        };
        for run in runs {
            merged.requests += run.requests;
            merged.elapsed += run.elapsed;
            merged.latencies.extend(run.latencies);
        }
        merged.latencies.sort();
        merged
    }

    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        let index = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[index]
    }
}

async fn load(url: &str, warmup: Duration, window: Duration) -> Run {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .unwrap();
    let drive = |until: Instant, record: bool| {
        let tasks: Vec<_> = (0..CONCURRENCY)
            .map(|_| {
                let (client, url) = (client.clone(), url.to_owned());
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    while Instant::now() < until {
                        let started = Instant::now();
                        let response = client
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(BODY)
                            .send()
                            .await
                            .unwrap();
                        assert!(response.status().is_success());
                        response.bytes().await.unwrap();
                        if record {
                            latencies.push(started.elapsed());
                        }
                    }
                    latencies
                })
            })
            .collect();
        async move {
            let mut all = Vec::new();
            for task in tasks {
                all.extend(task.await.unwrap());
            }
            all
        }
    };
    drive(Instant::now() + warmup, false).await;
    let started = Instant::now();
    let mut latencies = drive(started + window, true).await;
    let elapsed = started.elapsed();
    latencies.sort();
    Run {
        requests: latencies.len(),
        elapsed,
        latencies,
    }
}

/// `AGENTKIT_ONESHOT=N [AGENTKIT_ROUTER=plain]`: N requests straight through the router (no
/// sockets), for counting instructions per request under callgrind; exits after.
fn oneshot(n: usize, plain: bool) {
    use tower::ServiceExt;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let agent = agentkit::demo::assistant_builder(Arc::new(ScriptedModel::demo()))
        .build()
        .unwrap();
    let router = if plain {
        let sample: &'static [u8] = Box::leak(vec![b'x'; 626].into_boxed_slice());
        axum::Router::new().route(
            "/v1/agents/assistant/invoke",
            post(move |_body: axum::body::Bytes| async move {
                ([("content-type", "application/json")], sample)
            }),
        )
    } else {
        Api::builder()
            .agent("assistant", agent)
            .build()
            .unwrap()
            .router()
    };
    runtime.block_on(async {
        for _ in 0..n {
            let request = axum::http::Request::post("/v1/agents/assistant/invoke")
                .header("content-type", "application/json")
                .body(axum::body::Body::from(BODY))
                .unwrap();
            let response = router.clone().oneshot(request).await.unwrap();
            assert!(response.status().is_success());
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            std::hint::black_box(body);
        }
    });
}

fn main() {
    if let Ok(n) = std::env::var("AGENTKIT_ONESHOT") {
        let plain = std::env::var("AGENTKIT_ROUTER").is_ok_and(|r| r == "plain");
        oneshot(n.parse().expect("AGENTKIT_ONESHOT is a number"), plain);
        return;
    }
    let quick = std::env::args().any(|a| a == "--test");
    let (warmup, window, rounds) = if quick {
        (Duration::from_millis(50), Duration::from_millis(300), 1)
    } else {
        (Duration::from_secs(2), Duration::from_secs(4), 5)
    };

    let agent = agentkit::demo::assistant_builder(Arc::new(ScriptedModel::demo()))
        .build()
        .unwrap();
    let api = Api::builder().agent("assistant", agent).build().unwrap();
    let agentkit_addr = spawn_server(api.router());
    let url = format!("http://{agentkit_addr}/v1/agents/assistant/invoke");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The plain handler answers with the bytes agentkit answers with.
    let sample: &'static [u8] = runtime.block_on(async {
        let body = reqwest::Client::new()
            .post(&url)
            .header("content-type", "application/json")
            .body(BODY)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        Box::leak(body.to_vec().into_boxed_slice())
    });
    let plain = axum::Router::new().route(
        "/v1/agents/assistant/invoke",
        post(move |_body: axum::body::Bytes| async move {
            ([("content-type", "application/json")], sample)
        }),
    );
    let plain_addr = spawn_server(plain);
    let plain_url = format!("http://{plain_addr}/v1/agents/assistant/invoke");

    // Alternate the two servers in rounds, so that whatever else the machine does at the time
    // weighs on both; the ratio of each round, and their median, are the figures.
    runtime.block_on(load(&plain_url, warmup, Duration::from_millis(100)));
    runtime.block_on(load(&url, warmup, Duration::from_millis(100)));
    let (mut baseline, mut agentkit, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let plain = runtime.block_on(load(&plain_url, Duration::from_millis(200), window));
        let ours = runtime.block_on(load(&url, Duration::from_millis(200), window));
        ratios.push(ours.rps() / plain.rps());
        baseline.push(plain);
        agentkit.push(ours);
    }
    println!(
        "http_invoke ({CONCURRENCY} connections, {rounds} rounds of {window:?} per server, {} bytes per response)",
        sample.len()
    );
    for (name, runs) in [
        ("plain axum handler", Run::merge(baseline)),
        ("agentkit invoke", Run::merge(agentkit)),
    ] {
        println!(
            "  {name:<20} {:>9.0} req/s   p50 {:>8.3} ms   p99 {:>8.3} ms   ({} requests)",
            runs.rps(),
            runs.percentile(0.50).as_secs_f64() * 1000.0,
            runs.percentile(0.99).as_secs_f64() * 1000.0,
            runs.requests
        );
    }
    let rounds: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "  ratio: agentkit / plain = {:.2}x throughput (median of rounds: {})",
        ratios[ratios.len() / 2],
        rounds.join(", ")
    );
}
