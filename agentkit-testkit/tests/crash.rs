//! Workers that die: a worker process takes jobs whose tool is side-effecting, is killed with
//! SIGKILL mid-way, a new one takes over; every job succeeds once and every charge happens once.
//! The same for session jobs: every turn in its session once.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentkit_core::Message;
use agentkit_store::SessionStore;
use agentkit_transport::jobs::{JobQueue, JobSpec, JobStatus};
use axum::Json;
use axum::routing::post;

const JOBS: usize = 200;
const CONCURRENCY: usize = 8;
const VISIBILITY: Duration = Duration::from_secs(2);

type Calls = Arc<Mutex<HashMap<String, u32>>>;

/// A payment provider that honours idempotency keys, as real ones do, and counts every call.
async fn provider() -> (String, Calls) {
    let calls: Calls = Arc::default();
    let seen = calls.clone();
    let app = axum::Router::new().route(
        "/charge",
        post(move |Json(body): Json<serde_json::Value>| {
            let seen = seen.clone();
            async move {
                let key = body["key"].as_str().unwrap_or_default().to_owned();
                let mut calls = seen.lock().unwrap();
                let n = calls.entry(key).or_insert(0);
                *n += 1;
                Json(serde_json::json!({"charged": body["cents"], "replayed": *n > 1}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/charge"), calls)
}

fn start_worker(backend: &str, url: &str, name: &str, provider: &str) -> Child {
    start_worker_with(backend, url, name, provider, &[])
}

fn start_worker_with(
    backend: &str,
    url: &str,
    name: &str,
    provider: &str,
    envs: &[(&str, &str)],
) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crash_worker"))
        .envs(envs.iter().copied())
        .env("QUEUE_BACKEND", backend)
        .env("QUEUE_URL", url)
        .env("QUEUE_NAME", name)
        .env("PROVIDER_URL", provider)
        .env("VISIBILITY_MS", VISIBILITY.as_millis().to_string())
        .env("LATENCY_MS", "15")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the worker starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "worker ready");
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    child
}

async fn statuses(queue: &dyn JobQueue, ids: &[String]) -> HashMap<JobStatus, usize> {
    let mut counts = HashMap::new();
    for id in ids {
        let status = queue.get(id).await.unwrap().expect("job exists").status;
        *counts.entry(status).or_insert(0) += 1;
    }
    counts
}

async fn crash_and_recover(queue: Arc<dyn JobQueue>, backend: &str, url: &str, name: &str) {
    let (provider, calls) = provider().await;
    let mut ids = Vec::new();
    for i in 0..JOBS {
        let spec = JobSpec {
            agent: "charger".into(),
            input: vec![Message::user(format!("charge order {i}"))],
            tenant: "acme".into(),
            ..JobSpec::default()
        };
        ids.push(queue.enqueue(spec).await.unwrap().job_id);
    }

    let mut first = start_worker(backend, url, name, &provider);
    let until = Instant::now() + Duration::from_secs(60);
    while calls.lock().unwrap().len() < JOBS / 4 {
        assert!(Instant::now() < until, "the first worker made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().expect("SIGKILL"); // Child::kill is SIGKILL on Unix
    first.wait().unwrap();
    let charged_before = calls.lock().unwrap().len();
    assert!(
        charged_before < JOBS,
        "killed mid-way ({charged_before} charged)"
    );

    let mut second = start_worker(backend, url, name, &provider);
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let counts = statuses(queue.as_ref(), &ids).await;
        if counts.get(&JobStatus::Succeeded) == Some(&JOBS) {
            break;
        }
        assert_eq!(
            counts.get(&JobStatus::Dead),
            None,
            "no job may die: {counts:?}"
        );
        assert!(
            Instant::now() < until,
            "jobs did not all finish: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let status = Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        second.wait().unwrap().success(),
        "the second worker drains and exits 0"
    );

    let calls = calls.lock().unwrap().clone();
    // The model names its calls afresh every time (like a hosted one): each job must still
    // have been charged under exactly one idempotency key.
    let mut keys_per_job: HashMap<&str, Vec<&str>> = HashMap::new();
    for key in calls.keys() {
        let (job, call) = key.split_once(':').expect("keys are job:call");
        keys_per_job.entry(job).or_default().push(call);
    }
    let charged: HashSet<&str> = keys_per_job.keys().copied().collect();
    let expected: HashSet<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(charged, expected, "every job charged");
    for (job, keys) in &keys_per_job {
        assert_eq!(
            keys.len(),
            1,
            "job {job} charged under {} keys: {keys:?}",
            keys.len()
        );
    }
    let repeated: u32 = calls.values().map(|n| n - 1).sum();
    assert!(
        repeated as usize <= CONCURRENCY,
        "only calls cut short by the kill are repeated ({repeated}); completed ones come from the ledger"
    );
    for id in &ids {
        let doc = queue.get(id).await.unwrap().unwrap();
        assert_eq!(doc.status, JobStatus::Succeeded);
        assert_eq!(doc.result.unwrap().output, "charged");
    }
    eprintln!(
        "{backend}: {charged_before} charged before SIGKILL, {repeated} provider calls repeated, 200/200 succeeded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_workers_that_die_lose_nothing_and_charge_once() {
    let Some(url) = agentkit_testkit::redis_url() else {
        return;
    };
    let name = agentkit_testkit::unique("crash");
    let queue = agentkit_transport::jobs::redis::RedisJobQueue::connect(&url, &name)
        .unwrap()
        .with_visibility_timeout(VISIBILITY);
    crash_and_recover(Arc::new(queue), "redis", &url, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_workers_that_die_lose_nothing_and_charge_once() {
    let Some(url) = agentkit_testkit::nats_url() else {
        return;
    };
    let name = agentkit_testkit::unique("crash").replace(['.', ':'], "-");
    let queue = agentkit_transport::jobs::nats::NatsJobQueue::connect_with(&url, &name, VISIBILITY)
        .await
        .unwrap();
    crash_and_recover(Arc::new(queue), "nats", &url, &name).await;
}

/// Session jobs on Redis: 60 jobs over 6 sessions under leases, the worker killed mid-way
/// while it holds some of them, its successor waiting out the dead one's leases. Every job
/// succeeds, is charged once, and is in its session's history exactly once. (A SIGKILL cannot
/// be aimed at the moment between a turn's save and its job's acknowledgement; that a turn
/// saved then is not appended again when its job comes back is the worker test
/// `a_session_job_delivered_again_after_its_turn_was_saved_is_not_applied_twice` in
/// agentkit-transport.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_jobs_survive_a_killed_worker_each_turn_applied_once() {
    const SESSIONS: usize = 6;
    const PER_SESSION: usize = 10;
    let Some(url) = agentkit_testkit::redis_url() else {
        return;
    };
    let name = agentkit_testkit::unique("crashsessions");
    let queue = agentkit_transport::jobs::redis::RedisJobQueue::connect(&url, &name)
        .unwrap()
        .with_visibility_timeout(VISIBILITY);
    let (provider, calls) = provider().await;
    let mut ids = Vec::new();
    for i in 0..SESSIONS * PER_SESSION {
        let spec = JobSpec {
            agent: "charger".into(),
            input: vec![Message::user(format!("charge order {i}"))],
            session_id: Some(format!("s-{}", i % SESSIONS)),
            tenant: "acme".into(),
            ..JobSpec::default()
        };
        ids.push(queue.enqueue(spec).await.unwrap().job_id);
    }
    let envs = [
        ("SESSIONS_URL", url.as_str()),
        ("SESSIONS_PREFIX", name.as_str()),
        ("LEASE_MS", "1000"),
    ];

    let mut first = start_worker_with("redis", &url, &name, &provider, &envs);
    let until = Instant::now() + Duration::from_secs(60);
    while calls.lock().unwrap().len() < ids.len() / 4 {
        assert!(Instant::now() < until, "the first worker made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill().expect("SIGKILL");
    first.wait().unwrap();
    let charged_before = calls.lock().unwrap().len();
    assert!(
        charged_before < ids.len(),
        "killed mid-way ({charged_before} charged)"
    );

    let mut second = start_worker_with("redis", &url, &name, &provider, &envs);
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let counts = statuses(&queue, &ids).await;
        if counts.get(&JobStatus::Succeeded) == Some(&ids.len()) {
            break;
        }
        assert_eq!(
            counts.get(&JobStatus::Dead),
            None,
            "no job may die: {counts:?}"
        );
        assert!(
            Instant::now() < until,
            "jobs did not all finish: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    second.kill().expect("SIGKILL");
    second.wait().unwrap();

    let charged: HashSet<String> = (calls.lock().unwrap().keys())
        .map(|key| key.split_once(':').expect("keys are job:call").0.to_owned())
        .collect();
    assert_eq!(charged.len(), ids.len(), "every job charged");
    let store = agentkit_store::redis::RedisSessionStore::connect(&url)
        .unwrap()
        .with_prefix(name.as_str());
    for s in 0..SESSIONS {
        let stored = format!("charger/s-{s}");
        let session = store
            .load("acme", &stored)
            .await
            .unwrap()
            .expect("the session");
        let mut asked: Vec<String> = (session.messages.iter())
            .filter(|m| m.role == agentkit_core::Role::User)
            .map(|m| m.text_content())
            .collect();
        asked.sort();
        let mut expected: Vec<String> = (0..PER_SESSION)
            .map(|k| format!("charge order {}", k * SESSIONS + s))
            .collect();
        expected.sort();
        assert_eq!(asked, expected, "session s-{s}: each job's turn once");
        store.delete("acme", &stored).await.unwrap();
    }
    eprintln!(
        "redis sessions: {charged_before} charged before SIGKILL, {} jobs in {SESSIONS} sessions, each turn once",
        ids.len()
    );
}
