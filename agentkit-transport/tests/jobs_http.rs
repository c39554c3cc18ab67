//! Job routes over real HTTP with an in-process worker: 202 then the result, idempotency keys,
//! tenant isolation, the status stream, signed webhooks with retries, and QueueExecutor.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentkit_core::{Backoff, Executor, Invocation, Reply, Result};
use agentkit_store::{LeaseStore, SessionStore};
use agentkit_testkit::jobs::RunningWorker;
use agentkit_transport::jobs::{
    JobQueue, MemoryJobQueue, QueueExecutor, SIGNATURE_HEADER, WebhookSender, Worker, verify,
};
use agentkit_transport::{Api, Authenticator};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use support::*;

const WEBHOOK_SECRET: &[u8] = b"dummy-webhook-secret";

/// Counts the runs of the demo agent.
#[derive(Clone)]
struct Counted {
    runs: Arc<AtomicUsize>,
}

impl Executor for Counted {
    async fn execute(&self, invocation: Invocation) -> Result<Reply> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        demo_agent().execute(invocation).await
    }
}

struct Setup {
    served: Served,
    queue: Arc<dyn JobQueue>,
    runs: Arc<AtomicUsize>,
    _worker: RunningWorker,
}

async fn setup() -> Setup {
    let queue: Arc<dyn JobQueue> = Arc::new(MemoryJobQueue::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = Counted { runs: runs.clone() };
    let api = Api::builder()
        .agent("assistant", counted.clone())
        .auth(
            Authenticator::none()
                .with_api_key("acme", "dummy-key-acme")
                .with_api_key("beta", "dummy-key-beta"),
        )
        .jobs(queue.clone())
        .keyed_invokes_as_jobs(true)
        .allow_private_callbacks(true) // the receivers here are on loopback
        .build()
        .unwrap();
    let webhooks = test_webhooks(5);
    let worker = Worker::builder(queue.clone())
        .agent("assistant", counted)
        .webhooks(webhooks)
        .build()
        .unwrap();
    Setup {
        served: serve(api).await,
        queue,
        runs,
        _worker: RunningWorker::spawn(worker),
    }
}

async fn submit(
    base: &str,
    key: &str,
    body: Value,
    extra: Option<(&str, &str)>,
) -> reqwest::Response {
    let mut request = client()
        .post(format!("{base}/v1/agents/assistant/jobs"))
        .header("authorization", format!("Bearer {key}"))
        .json(&body);
    if let Some((name, value)) = extra {
        request = request.header(name, value);
    }
    request.send().await.unwrap()
}

/// `GET /v1/jobs/{job_id}/events` as tenant `acme`'s.
async fn follow_job(base: &str, job_id: &str) -> reqwest::Response {
    client()
        .get(format!("{base}/v1/jobs/{job_id}/events"))
        .header("authorization", "Bearer dummy-key-acme")
        .send()
        .await
        .unwrap()
}

/// `GET /v1/jobs/{job_id}` as tenant `key`'s.
async fn job_doc(base: &str, key: &str, job_id: &str) -> Value {
    client()
        .get(format!("{base}/v1/jobs/{job_id}"))
        .header("authorization", format!("Bearer {key}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn wait_done(base: &str, key: &str, job_id: &str) -> Value {
    for _ in 0..200 {
        let doc = job_doc(base, key, job_id).await;
        if ["succeeded", "failed", "dead"].contains(&doc["status"].as_str().unwrap()) {
            return doc;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("job {job_id} did not finish");
}

#[tokio::test]
async fn a_job_is_accepted_at_once_and_finishes_on_a_worker() {
    let s = setup().await;
    let response = submit(
        &s.served.base,
        "dummy-key-acme",
        json!({"input": "What is 17 + 25?"}),
        None,
    )
    .await;
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["status"], "queued");
    let job_id = accepted["job_id"].as_str().unwrap();
    assert_eq!(location, format!("/v1/jobs/{job_id}"));
    let doc = wait_done(&s.served.base, "dummy-key-acme", job_id).await;
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(doc["agent"], "assistant");
    assert_eq!(doc["attempts"], 1);
    assert_eq!(doc["result"]["output"], "17 + 25 = 42");
    assert!(doc.get("spec").is_none(), "the spec is not shown");

    // Another tenant cannot see it.
    let other = client()
        .get(format!("{}/v1/jobs/{job_id}", s.served.base))
        .header("authorization", "Bearer dummy-key-beta")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(other, 404).await, "not_found");
}

#[tokio::test]
async fn one_idempotency_key_is_one_job_and_one_run() {
    let s = setup().await;
    let body = json!({"input": "What is 1 + 1?", "idempotency_key": "order-17"});
    let first: Value = submit(&s.served.base, "dummy-key-acme", body.clone(), None)
        .await
        .json()
        .await
        .unwrap();
    let second: Value = submit(&s.served.base, "dummy-key-acme", body, None)
        .await
        .json()
        .await
        .unwrap();
    let third: Value = submit(
        &s.served.base,
        "dummy-key-acme",
        json!({"input": "What is 1 + 1?"}),
        Some(("idempotency-key", "order-17")),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(first["job_id"], second["job_id"]);
    assert_eq!(first["job_id"], third["job_id"]);
    wait_done(
        &s.served.base,
        "dummy-key-acme",
        first["job_id"].as_str().unwrap(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(s.runs.load(Ordering::SeqCst), 1, "one run");
    let conflicting = submit(
        &s.served.base,
        "dummy-key-acme",
        json!({"input": "x", "idempotency_key": "a"}),
        Some(("idempotency-key", "b")),
    )
    .await;
    assert_eq!(error_code(conflicting, 400).await, "invalid_input");
    // The key again for another input names the first job: a 409, not that job.
    let reused = submit(
        &s.served.base,
        "dummy-key-acme",
        json!({"input": "What is 2 + 2?", "idempotency_key": "order-17"}),
        None,
    )
    .await;
    assert_eq!(error_code(reused, 409).await, "conflict");
    assert_eq!(s.queue.depth().await.unwrap(), 0);
}

#[tokio::test]
async fn bad_submissions_are_4xx() {
    let s = setup().await;
    for body in [
        json!({"input": ""}),
        json!({"input": "x", "callback_url": "ftp://example.com"}),
        json!({"input": "x", "callback_url": "not a url"}),
        json!({"input": "x", "unknown": 1}),
    ] {
        let response = submit(&s.served.base, "dummy-key-acme", body.clone(), None).await;
        assert_eq!(error_code(response, 400).await, "invalid_input", "{body}");
    }
    // By default a callback the workers would refuse to call is refused at once.
    let strict = serve(
        with_demo()
            .jobs(Arc::new(MemoryJobQueue::new()))
            .build()
            .unwrap(),
    )
    .await;
    for hook in [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://[fd00::1]/",
    ] {
        let response = client()
            .post(format!("{}/v1/agents/assistant/jobs", strict.base))
            .json(&json!({"input": "x", "callback_url": hook}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{hook}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(
            body.to_string().contains("private address"),
            "{hook}: {body}"
        );
    }
    // A service whose workers send no webhooks refuses a callback it could never make.
    let silent = serve(
        with_demo()
            .jobs(Arc::new(MemoryJobQueue::new()))
            .accept_callbacks(false)
            .build()
            .unwrap(),
    )
    .await;
    let jobs = format!("{}/v1/agents/assistant/jobs", silent.base);
    let response = client()
        .post(&jobs)
        .json(&json!({"input": "x", "callback_url": "https://example.com/hook"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body.to_string().contains("sends no webhooks"), "{body}");
    let response = client()
        .post(&jobs)
        .json(&json!({"input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "jobs without a callback are taken");
    let none = serve(with_demo().build().unwrap()).await;
    let response = client()
        .post(format!("{}/v1/agents/assistant/jobs", none.base))
        .json(&json!({"input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response, 501).await, "not_implemented");
}

#[tokio::test]
async fn the_events_stream_follows_the_job_to_its_end() {
    let s = setup().await;
    let accepted: Value = submit(
        &s.served.base,
        "dummy-key-acme",
        json!({"input": "What is 2 + 2?"}),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    let job_id = accepted["job_id"].as_str().unwrap();
    let text = follow_job(&s.served.base, job_id)
        .await
        .text()
        .await
        .unwrap();
    let events = parse_sse(&text);
    assert!(events.iter().all(|(name, _)| name == "status"));
    let last = &events.last().unwrap().1;
    assert_eq!(last["status"], "succeeded");
    assert_eq!(last["result"]["output"], "2 + 2 = 4");
}

/// A webhook receiver that fails `failures` times, then records what it gets.
async fn receiver(
    failures: usize,
) -> (
    String,
    Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    Arc<AtomicUsize>,
) {
    let received: Arc<Mutex<Vec<(HeaderMap, Bytes)>>> = Arc::default();
    let attempts = Arc::new(AtomicUsize::new(0));
    let (r, a) = (received.clone(), attempts.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let (r, a) = (r.clone(), a.clone());
            async move {
                if a.fetch_add(1, Ordering::SeqCst) < failures {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                r.lock().unwrap().push((headers, body));
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), received, attempts)
}

async fn delivered(received: &Arc<Mutex<Vec<(HeaderMap, Bytes)>>>, n: usize) {
    for _ in 0..200 {
        if received.lock().unwrap().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the webhook did not arrive");
}

#[tokio::test]
async fn webhooks_are_signed_and_retried_until_the_receiver_answers() {
    let s = setup().await;
    let (hook, received, _) = receiver(0).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let accepted: Value = submit(
            &s.served.base,
            "dummy-key-acme",
            json!({"input": format!("What is {i} + 1?"), "callback_url": hook}),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
        ids.push(accepted["job_id"].as_str().unwrap().to_owned());
    }
    delivered(&received, 3).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 3, "one POST per job");
    for (headers, body) in &got {
        let signature = headers[SIGNATURE_HEADER].to_str().unwrap();
        assert!(
            verify(WEBHOOK_SECRET, body, signature),
            "the signature verifies"
        );
        assert!(!verify(b"another-secret", body, signature));
        let doc: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(doc["status"], "succeeded");
        assert!(ids.contains(&doc["job_id"].as_str().unwrap().to_owned()));
    }

    let (flaky, received, attempts) = receiver(2).await;
    submit(
        &s.served.base,
        "dummy-key-acme",
        json!({"input": "What is 5 + 5?", "callback_url": flaky}),
        None,
    )
    .await;
    delivered(&received, 1).await;
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        3,
        "failed twice, then answered"
    );
    let (_, body) = received.lock().unwrap()[0].clone();
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["result"]["output"], "5 + 5 = 10");
}

/// A receiver that answers 503 until `up` is set, then records what it gets.
async fn switchable_receiver(
    up: Arc<std::sync::atomic::AtomicBool>,
) -> (String, Arc<Mutex<Vec<Bytes>>>, Arc<AtomicUsize>) {
    let received: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let refused = Arc::new(AtomicUsize::new(0));
    let (r, f) = (received.clone(), refused.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: Bytes| {
            let (r, f, up) = (r.clone(), f.clone(), up.clone());
            async move {
                if !up.load(Ordering::SeqCst) {
                    f.fetch_add(1, Ordering::SeqCst);
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                r.lock().unwrap().push(body);
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), received, refused)
}

/// A sender for the loopback receivers here, with `attempts` quick tries.
fn test_webhooks(attempts: u32) -> WebhookSender {
    WebhookSender::new(WEBHOOK_SECRET)
        .unwrap()
        .allow_private_targets(true) // the receivers here are on loopback
        .unwrap()
        .with_backoff(
            Backoff::new()
                .max_attempts(attempts)
                .base(Duration::from_millis(20)),
        )
}

fn webhook_worker(queue: Arc<dyn JobQueue>) -> Worker {
    let webhooks = test_webhooks(2);
    Worker::builder(queue)
        .agent("assistant", demo_agent())
        .webhooks(webhooks)
        .heartbeat(Duration::from_millis(100))
        .build()
        .unwrap()
}

/// The worker that finished a job dies (its task is dropped, as a killed process would stop)
/// while the receiver is down; the webhook is still delivered, once, by the next worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_outlives_the_worker_that_finished_its_job() {
    let queue: Arc<dyn JobQueue> =
        Arc::new(MemoryJobQueue::new().with_visibility_timeout(Duration::from_millis(400)));
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (hook, received, refused) = switchable_receiver(up.clone()).await;
    let spec = agentkit_transport::jobs::JobSpec {
        agent: "assistant".into(),
        input: vec![agentkit_core::Message::user("What is 3 + 4?")],
        tenant: "acme".into(),
        callback_url: Some(hook),
        ..Default::default()
    };
    let job_id = queue.enqueue(spec).await.unwrap().job_id;

    let first = RunningWorker::spawn(webhook_worker(queue.clone()));
    // The job ends; the receiver refuses the webhook at least once.
    for _ in 0..1000 {
        let ended = queue
            .get(&job_id)
            .await
            .unwrap()
            .unwrap()
            .status
            .is_terminal();
        if ended && refused.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused.load(Ordering::SeqCst) > 0, "the receiver was tried");
    first.abort().await;

    up.store(true, Ordering::SeqCst);
    let second = RunningWorker::spawn(webhook_worker(queue.clone()));
    for _ in 0..400 {
        if !received.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    second.stop().await.unwrap();
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "delivered once");
    let doc: Value = serde_json::from_slice(&got[0]).unwrap();
    assert_eq!(doc["job_id"], job_id.as_str());
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(doc["result"]["output"], "3 + 4 = 7");
}

#[tokio::test]
async fn reserved_idempotency_keys_are_refused() {
    let s = setup().await;
    let response = submit(
        &s.served.base,
        "dummy-key-acme",
        json!({"input": "hi", "idempotency_key": "agentkit:webhook:123"}),
        None,
    )
    .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_input");
}

#[tokio::test]
async fn agents_call_each_other_over_the_queue() {
    let s = setup().await;
    let delegate = QueueExecutor::new(s.queue.clone(), "assistant");
    let reply = delegate
        .execute(
            Invocation::text("What is 20 + 22?")
                .with_context(agentkit_core::Context::new().with_tenant("acme")),
        )
        .await
        .unwrap();
    assert_eq!(reply.output, "20 + 22 = 42");
    let missing = QueueExecutor::new(s.queue.clone(), "nobody");
    let error = missing.execute(Invocation::text("hi")).await.unwrap_err();
    assert_eq!(error.kind(), agentkit_core::ErrorKind::NotFound);
}

#[tokio::test]
async fn a_keyed_call_over_the_queue_made_again_awaits_the_same_job() {
    let s = setup().await;
    let delegate = QueueExecutor::new(s.queue.clone(), "assistant");
    let keyed = |key: &str| {
        Invocation::text("What is 5 + 5?").with_context(
            agentkit_core::Context::new()
                .with_tenant("acme")
                .with_extension(agentkit_core::IdempotencyKey::new(key).unwrap()),
        )
    };
    let first = delegate.execute(keyed("call-1")).await.unwrap();
    let again = delegate.execute(keyed("call-1")).await.unwrap();
    assert_eq!(again.output, first.output);
    assert_eq!(s.runs.load(Ordering::SeqCst), 1, "one job, one run");
    delegate.execute(keyed("call-2")).await.unwrap();
    assert_eq!(s.runs.load(Ordering::SeqCst), 2);
    let reserved = delegate.execute(keyed("agentkit:x")).await.unwrap_err();
    assert_eq!(reserved.kind(), agentkit_core::ErrorKind::InvalidInput);
}

/// An API and a worker sharing a job queue and a session store, as the bundled service runs
/// them by default.
async fn session_setup() -> (Served, RunningWorker) {
    let queue: Arc<dyn JobQueue> = Arc::new(MemoryJobQueue::new());
    let store = Arc::new(agentkit_store::MemorySessionStore::new());
    let api = Api::builder()
        .agent("assistant", demo_agent())
        .auth(Authenticator::none().with_api_key("acme", "dummy-key-acme"))
        .session_store(store.clone())
        .jobs(queue.clone())
        .build()
        .unwrap();
    let worker = Worker::builder(queue)
        .agent("assistant", demo_agent())
        .sessions(store)
        .build()
        .unwrap();
    (serve(api).await, RunningWorker::spawn(worker))
}

#[tokio::test]
async fn a_session_job_is_a_turn_of_the_session() {
    let (served, _worker) = session_setup().await;
    let base = &served.base;
    let accepted: Value = submit(
        base,
        "dummy-key-acme",
        json!({"input": "What is 2 + 3?", "session_id": "chat-9"}),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    let doc = wait_done(base, "dummy-key-acme", accepted["job_id"].as_str().unwrap()).await;
    assert_eq!(doc["status"], "succeeded", "{doc}");
    assert_eq!(doc["result"]["output"], "2 + 3 = 5");

    // The job's turn is in the session, and the next message (over HTTP) goes on from it.
    let session = |c: reqwest::Client| async move {
        c.get(format!("{base}/v1/agents/assistant/sessions/chat-9"))
            .header("authorization", "Bearer dummy-key-acme")
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let after_job = session(client()).await;
    assert_eq!(after_job["version"], 1, "{after_job}");
    let next: Value = client()
        .post(format!(
            "{base}/v1/agents/assistant/sessions/chat-9/messages"
        ))
        .header("authorization", "Bearer dummy-key-acme")
        .json(&json!({"input": "hello"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(next["version"], 2, "{next}");
    let texts: Vec<String> = session(client()).await["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| {
            m["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(texts, ["What is 2 + 3?", "hello"]);
}

/// Submits `text` as a job of `acme`'s session `session` straight to the queue; its id.
async fn session_job(queue: &dyn JobQueue, session: &str, text: &str) -> String {
    let spec = agentkit_transport::jobs::JobSpec {
        agent: "assistant".into(),
        input: vec![agentkit_core::Message::user(text)],
        session_id: Some(session.into()),
        tenant: "acme".into(),
        ..Default::default()
    };
    queue.enqueue(spec).await.unwrap().job_id
}

/// The job's document once it has ended (at most 5 s from now).
async fn ended(queue: &dyn JobQueue, job: &str) -> agentkit_transport::jobs::JobDoc {
    for _ in 0..200 {
        let doc = queue.get(job).await.unwrap().unwrap();
        if doc.status.is_terminal() {
            return doc;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("job {job} did not end");
}

#[tokio::test]
async fn a_session_job_waits_for_the_lease_another_instance_holds() {
    let queue: Arc<dyn JobQueue> = Arc::new(MemoryJobQueue::new());
    let store = Arc::new(agentkit_store::MemorySessionStore::new());
    let worker = Worker::builder(queue.clone())
        .agent("assistant", demo_agent())
        .sessions(store.clone())
        .session_leases(store.clone(), "worker-1", Duration::from_secs(5))
        .build()
        .unwrap();
    let _worker = RunningWorker::spawn(worker);

    // A service instance is running a turn of the session (the API keeps an agent's sessions
    // under `{agent}/{id}`).
    let held = store
        .acquire(
            "acme",
            "assistant/chat-l",
            "instance-1",
            Duration::from_secs(5),
        )
        .await
        .unwrap()
        .expect("the lease is free");
    let job = session_job(queue.as_ref(), "chat-l", "What is 4 + 4?").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let status = queue.get(&job).await.unwrap().unwrap().status;
    assert!(
        !status.is_terminal(),
        "the job ran while another instance held the session"
    );

    // The instance's turn ends: the job's turn runs.
    store.release(&held).await.unwrap();
    let doc = ended(queue.as_ref(), &job).await;
    assert_eq!(
        doc.status,
        agentkit_transport::jobs::JobStatus::Succeeded,
        "{doc:?}"
    );
    let session = store
        .load("acme", "assistant/chat-l")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(session.version, 1);
}

#[test]
fn a_workers_session_leases_need_an_owner() {
    let store = Arc::new(agentkit_store::MemorySessionStore::new());
    let built = Worker::builder(Arc::new(MemoryJobQueue::new()))
        .agent("assistant", demo_agent())
        .sessions(store.clone())
        .session_leases(store, "", Duration::from_secs(5))
        .build();
    assert_eq!(
        built.unwrap_err().kind(),
        agentkit_core::ErrorKind::InvalidInput
    );
}

/// A queue whose first finish of each job is lost, as when a worker saves a session turn and
/// dies before acknowledging its job.
struct LosesFirstFinish {
    inner: Arc<dyn JobQueue>,
    lost: Mutex<std::collections::HashSet<String>>,
}

#[async_trait::async_trait]
impl JobQueue for LosesFirstFinish {
    async fn enqueue(
        &self,
        spec: agentkit_transport::jobs::JobSpec,
    ) -> Result<agentkit_transport::jobs::Enqueued> {
        self.inner.enqueue(spec).await
    }

    async fn claim(
        &self,
        consumer: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<agentkit_transport::jobs::Delivery>> {
        self.inner.claim(consumer, max, wait).await
    }

    async fn heartbeat(&self, delivery: &agentkit_transport::jobs::Delivery) -> Result<()> {
        self.inner.heartbeat(delivery).await
    }

    async fn finish(
        &self,
        delivery: &agentkit_transport::jobs::Delivery,
        finish: agentkit_transport::jobs::Finish,
    ) -> Result<agentkit_transport::jobs::JobDoc> {
        if self
            .lost
            .lock()
            .unwrap()
            .insert(delivery.job.job_id.clone())
        {
            return Err(agentkit_core::Error::unavailable("the worker died"));
        }
        self.inner.finish(delivery, finish).await
    }

    async fn release(
        &self,
        delivery: &agentkit_transport::jobs::Delivery,
        delay: Duration,
        error: Option<agentkit_transport::jobs::JobError>,
    ) -> Result<()> {
        self.inner.release(delivery, delay, error).await
    }

    async fn get(&self, job_id: &str) -> Result<Option<agentkit_transport::jobs::JobDoc>> {
        self.inner.get(job_id).await
    }

    async fn depth(&self) -> Result<u64> {
        self.inner.depth().await
    }

    fn ledger(&self) -> Arc<dyn agentkit_core::tool::EffectLedger> {
        self.inner.ledger()
    }
}

#[tokio::test]
async fn a_session_job_delivered_again_after_its_turn_was_saved_is_not_applied_twice() {
    let inner: Arc<dyn JobQueue> =
        Arc::new(MemoryJobQueue::new().with_visibility_timeout(Duration::from_millis(200)));
    let queue: Arc<dyn JobQueue> = Arc::new(LosesFirstFinish {
        inner,
        lost: Mutex::default(),
    });
    let store = Arc::new(agentkit_store::MemorySessionStore::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let worker = Worker::builder(queue.clone())
        .agent("assistant", Counted { runs: runs.clone() })
        .sessions(store.clone())
        .heartbeat(Duration::from_millis(50))
        .build()
        .unwrap();
    let _worker = RunningWorker::spawn(worker);
    let job = session_job(queue.as_ref(), "again", "What is 8 + 9?").await;
    let doc = ended(queue.as_ref(), &job).await;
    assert_eq!(
        doc.status,
        agentkit_transport::jobs::JobStatus::Succeeded,
        "{doc:?}"
    );
    assert_eq!(doc.attempts, 2, "delivered again");
    assert_eq!(doc.result.unwrap().output, "8 + 9 = 17");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the turn ran once");
    let session = store
        .load("acme", "assistant/again")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(session.version, 1, "saved once");
}

async fn invoke(base: &str, key: &str, body: Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client()
        .post(format!("{base}/v1/agents/assistant/invoke"))
        .header("authorization", format!("Bearer {key}"))
        .json(&body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// The output of the `done` event of a 200 event stream.
async fn done_output(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), 200);
    let events = parse_sse(&response.text().await.unwrap());
    let done = events.iter().find(|(name, _)| name == "done");
    done.unwrap_or_else(|| panic!("no done event in {events:?}"))
        .1["output"]
        .clone()
}

/// An invoke that must answer 200: its JSON.
async fn answered(base: &str, key: &str, body: Value, headers: &[(&str, &str)]) -> Value {
    let response = invoke(base, key, body, headers).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn a_keyed_invoke_runs_once_and_its_retries_answer_from_its_job() {
    let s = setup().await;
    let base = &s.served.base;
    let ask = json!({"input": "What is 20 + 22?"});
    let first = answered(
        base,
        "dummy-key-acme",
        ask.clone(),
        &[("idempotency-key", "inv-1")],
    )
    .await;
    assert_eq!(first["output"], "20 + 22 = 42", "{first}");
    assert_eq!(s.runs.load(Ordering::SeqCst), 1);

    // The same key again, in the header or the body, and streamed: the first run's answer.
    let again = answered(
        base,
        "dummy-key-acme",
        ask.clone(),
        &[("idempotency-key", "inv-1")],
    )
    .await;
    assert_eq!(again["output"], first["output"]);
    let in_body = json!({"input": "What is 20 + 22?", "idempotency_key": "inv-1"});
    let again = answered(base, "dummy-key-acme", in_body, &[]).await;
    assert_eq!(again["output"], first["output"]);
    let streamed = invoke(
        base,
        "dummy-key-acme",
        ask.clone(),
        &[
            ("idempotency-key", "inv-1"),
            ("accept", "text/event-stream"),
        ],
    )
    .await;
    assert_eq!(done_output(streamed).await, first["output"]);
    assert_eq!(
        s.runs.load(Ordering::SeqCst),
        1,
        "a keyed retry ran the agent again"
    );

    // Keys are per tenant, and unkeyed invokes run every time.
    let other = answered(
        base,
        "dummy-key-beta",
        ask.clone(),
        &[("idempotency-key", "inv-1")],
    )
    .await;
    assert_eq!(other["output"], first["output"]);
    assert_eq!(s.runs.load(Ordering::SeqCst), 2);
    for _ in 0..2 {
        assert_eq!(
            invoke(base, "dummy-key-acme", ask.clone(), &[])
                .await
                .status(),
            200
        );
    }
    assert_eq!(s.runs.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn an_invoke_key_used_for_another_request_is_a_409() {
    let s = setup().await;
    let base = &s.served.base;
    let keyed = [("idempotency-key", "inv-2")];
    let first = invoke(
        base,
        "dummy-key-acme",
        json!({"input": "What is 1 + 2?"}),
        &keyed,
    )
    .await;
    assert_eq!(first.status(), 200);
    let other = invoke(
        base,
        "dummy-key-acme",
        json!({"input": "What is 3 + 4?"}),
        &keyed,
    )
    .await;
    assert_eq!(error_code(other, 409).await, "conflict");
    // A job submitted with the key is another request too.
    let job = submit(
        base,
        "dummy-key-acme",
        json!({"input": "What is 5 + 6?", "idempotency_key": "inv-3"}),
        None,
    )
    .await;
    assert_eq!(job.status(), 202);
    let job: Value = job.json().await.unwrap();
    wait_done(base, "dummy-key-acme", job["job_id"].as_str().unwrap()).await;
    let invoked = invoke(
        base,
        "dummy-key-acme",
        json!({"input": "What is 7 + 8?"}),
        &[("idempotency-key", "inv-3")],
    )
    .await;
    assert_eq!(error_code(invoked, 409).await, "conflict");
    // Reserved keys are refused here as on job submissions.
    let reserved = invoke(
        base,
        "dummy-key-acme",
        json!({"input": "What is 1 + 2?"}),
        &[("idempotency-key", "agentkit:x")],
    )
    .await;
    assert_eq!(error_code(reserved, 400).await, "invalid_input");
    assert_eq!(
        s.runs.load(Ordering::SeqCst),
        1 + 1,
        "the first invoke and the job"
    );
}

#[tokio::test]
async fn a_remote_executor_passes_a_stateless_calls_key_on() {
    let s = setup().await;
    let remote = agentkit_transport::RemoteExecutor::builder(&s.served.base, "assistant")
        .bearer("dummy-key-acme")
        .build()
        .unwrap();
    let call = || {
        Invocation::text("What is 9 + 9?").with_context(
            agentkit_core::Context::new()
                .with_extension(agentkit_core::IdempotencyKey::new("remote-1").unwrap()),
        )
    };
    let first = remote.execute(call()).await.unwrap();
    let again = remote.execute(call()).await.unwrap();
    assert_eq!(first.output, "9 + 9 = 18");
    assert_eq!(again.output, first.output);
    assert_eq!(s.runs.load(Ordering::SeqCst), 1, "the retry ran again");
}

#[tokio::test]
async fn without_keyed_invokes_as_jobs_an_invoke_key_only_travels_on() {
    let queue: Arc<dyn JobQueue> = Arc::new(MemoryJobQueue::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let api = Api::builder()
        .agent("assistant", Counted { runs: runs.clone() })
        .auth(Authenticator::none().with_api_key("acme", "dummy-key-acme"))
        .jobs(queue.clone())
        .build()
        .unwrap();
    let served = serve(api).await;
    let keyed = [("idempotency-key", "inv-4")];
    for _ in 0..2 {
        answered(
            &served.base,
            "dummy-key-acme",
            json!({"input": "hi"}),
            &keyed,
        )
        .await;
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2, "run inline, each time");
    assert_eq!(queue.depth().await.unwrap(), 0, "no job");
}

/// A keyed invoke streamed as a job answers at once and keeps the connection while the job
/// waits for a worker; its events come when the job ends.
#[tokio::test]
async fn a_streamed_keyed_invoke_answers_before_its_job_ends() {
    let queue: Arc<dyn JobQueue> = Arc::new(MemoryJobQueue::new());
    let api = Api::builder()
        .agent("assistant", demo_agent())
        .auth(Authenticator::none().with_api_key("acme", "dummy-key-acme"))
        .jobs(queue.clone())
        .keyed_invokes_as_jobs(true)
        .build()
        .unwrap();
    let served = serve(api).await;
    // No worker yet: the job cannot end before the answer's head has come.
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        invoke(
            &served.base,
            "dummy-key-acme",
            json!({"input": "What is 3 + 4?"}),
            &[
                ("idempotency-key", "inv-5"),
                ("accept", "text/event-stream"),
            ],
        ),
    )
    .await
    .expect("the stream opened without waiting for the job");
    assert_eq!(queue.depth().await.unwrap(), 1, "the job waits");
    let worker = Worker::builder(queue.clone())
        .agent("assistant", demo_agent())
        .build()
        .unwrap();
    let _worker = RunningWorker::spawn(worker);
    assert_eq!(done_output(response).await, "3 + 4 = 7");
}

/// The demo agent whose model takes `latency` a call, so a job runs long enough to be seen
/// running.
fn slow_agent(latency: Duration) -> agentkit_core::Agent {
    let model = agentkit_core::model::ScriptedModel::builder()
        .demo_rules()
        .latency(latency)
        .build();
    agentkit_core::demo::assistant_builder(Arc::new(model))
        .build()
        .unwrap()
}

/// Reads an SSE response to its end, as it comes; calls `seen` with the events so far after
/// each chunk.
async fn read_sse(
    mut response: reqwest::Response,
    mut seen: impl AsyncFnMut(&[(String, Value)]),
) -> Vec<(String, Value)> {
    let mut buffer = String::new();
    let mut events = Vec::new();
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(20), response.chunk())
            .await
            .expect("the stream moves")
            .unwrap();
        let Some(chunk) = chunk else { return events };
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            events.extend(parse_sse(&block));
        }
        seen(&events).await;
    }
}

fn texts(events: &[(String, Value)]) -> (usize, String) {
    let deltas: Vec<&str> = events
        .iter()
        .filter(|(name, _)| name == "text_delta")
        .map(|(_, data)| data["text"].as_str().unwrap())
        .collect();
    (deltas.len(), deltas.concat())
}

/// A job submitted with `stream` sends its run's events to its followers as they happen (the
/// tool call is seen while the job still runs), its text deltas add up to its output, and the
/// terminal status comes last. A keyed invoke streamed as a job gets its text as it comes too,
/// not replayed in one piece at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_job_sends_its_run_as_it_happens() {
    let queue: Arc<dyn JobQueue> = Arc::new(MemoryJobQueue::new());
    let latency = Duration::from_millis(300);
    let api = Api::builder()
        .agent("assistant", slow_agent(latency))
        .auth(Authenticator::none().with_api_key("acme", "dummy-key-acme"))
        .jobs(queue.clone())
        .keyed_invokes_as_jobs(true)
        .build()
        .unwrap();
    let served = serve(api).await;
    let worker = Worker::builder(queue.clone())
        .agent("assistant", slow_agent(latency))
        .build()
        .unwrap();
    let _worker = RunningWorker::spawn(worker);
    let accepted: Value = submit(
        &served.base,
        "dummy-key-acme",
        json!({"input": "What is 2 + 5?", "stream": true}),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    let job_id = accepted["job_id"].as_str().unwrap().to_owned();
    let response = follow_job(&served.base, &job_id).await;
    let mut status_at_tool_call = None;
    let events = read_sse(response, async |events: &[(String, Value)]| {
        if status_at_tool_call.is_none() && events.iter().any(|(n, _)| n == "tool_call_started") {
            let doc = job_doc(&served.base, "dummy-key-acme", &job_id).await;
            status_at_tool_call = Some(doc["status"].as_str().unwrap().to_owned());
        }
    })
    .await;
    assert_eq!(
        status_at_tool_call.as_deref(),
        Some("running"),
        "the tool call was sent while the job ran: {events:?}"
    );
    let (deltas, text) = texts(&events);
    assert!(deltas > 1, "the text came in pieces: {events:?}");
    assert_eq!(text, "2 + 5 = 7");
    let (last, doc) = events.last().unwrap();
    assert_eq!(last, "status", "{events:?}");
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(doc["result"]["output"], "2 + 5 = 7");
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"tool_call_finished") && names.contains(&"usage"),
        "{names:?}"
    );

    // A job without `stream` sends its status alone.
    let plain: Value = submit(
        &served.base,
        "dummy-key-acme",
        json!({"input": "What is 1 + 1?"}),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    let response = follow_job(&served.base, plain["job_id"].as_str().unwrap()).await;
    let events = read_sse(response, async |_: &[(String, Value)]| {}).await;
    assert!(events.iter().all(|(n, _)| n == "status"), "{events:?}");

    // A keyed invoke run as a job, streamed.
    let response = invoke(
        &served.base,
        "dummy-key-acme",
        json!({"input": "What is 6 + 1?"}),
        &[
            ("idempotency-key", "live-1"),
            ("accept", "text/event-stream"),
        ],
    )
    .await;
    let events = read_sse(response, async |_: &[(String, Value)]| {}).await;
    let (deltas, text) = texts(&events);
    assert!(
        deltas > 1,
        "the text came live, not replayed whole: {events:?}"
    );
    assert_eq!(text, "6 + 1 = 7");
    let (last, done) = events.last().unwrap();
    assert_eq!(last, "done", "{events:?}");
    assert_eq!(done["output"], "6 + 1 = 7");
    assert_eq!(
        events
            .iter()
            .filter(|(n, _)| n == "tool_call_started")
            .count(),
        1,
        "each event once: {events:?}"
    );
}

/// `POST /v1/jobs/{job_id}/{action}` (`cancel`, `retry`).
async fn act(base: &str, key: &str, job_id: &str, action: &str) -> reqwest::Response {
    client()
        .post(format!("{base}/v1/jobs/{job_id}/{action}"))
        .header("authorization", format!("Bearer {key}"))
        .send()
        .await
        .unwrap()
}

async fn cancel(base: &str, key: &str, job_id: &str) -> reqwest::Response {
    act(base, key, job_id, "cancel").await
}

/// An API running `agent`'s jobs on `queue`, for the tenants `acme` and `beta`, its callbacks
/// allowed on loopback (where the test receivers are).
fn job_api(agent: impl Executor + 'static, queue: &Arc<dyn JobQueue>) -> Api {
    Api::builder()
        .agent("assistant", agent)
        .auth(
            Authenticator::none()
                .with_api_key("acme", "dummy-key-acme")
                .with_api_key("beta", "dummy-key-beta"),
        )
        .jobs(queue.clone())
        .allow_private_callbacks(true)
        .build()
        .unwrap()
}

/// Submits `body` as tenant `acme`; the job's id.
async fn submit_id(base: &str, body: Value) -> String {
    let accepted: Value = submit(base, "dummy-key-acme", body, None)
        .await
        .json()
        .await
        .unwrap();
    accepted["job_id"].as_str().unwrap().to_owned()
}

/// `POST /v1/jobs/{id}/cancel`: a queued job ends `cancelled` and never runs, its callback
/// gets the cancelled document, cancelling again answers the same; a job that ended is a
/// 409, another tenant's or an unknown job a 404 (whose message does not echo a long id
/// whole), and the events stream of a cancelled job ends with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_never_runs_and_its_callback_says_so() {
    let queue: Arc<dyn JobQueue> = Arc::new(MemoryJobQueue::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = Counted { runs: runs.clone() };
    let served = serve(job_api(counted.clone(), &queue)).await;
    let (hook, received, _) = receiver(0).await;
    let job_id = submit_id(
        &served.base,
        json!({"input": "What is 1 + 1?", "callback_url": hook}),
    )
    .await;

    let other = cancel(&served.base, "dummy-key-beta", &job_id).await;
    assert_eq!(other.status(), 404, "another tenant's job is not there");
    let response = cancel(&served.base, "dummy-key-acme", &job_id).await;
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.unwrap();
    assert_eq!(doc["status"], "cancelled");
    assert_eq!(doc["error"]["code"], "cancelled");
    let again = cancel(&served.base, "dummy-key-acme", &job_id).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap()["status"], "cancelled");
    let events = follow_job(&served.base, &job_id)
        .await
        .text()
        .await
        .unwrap();
    let events = parse_sse(&events);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].1["status"], "cancelled");

    let long = "x".repeat(5000);
    let missing = cancel(&served.base, "dummy-key-acme", &long).await;
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.len() < 200, "the id is cut short: {message}");

    // Workers now: the cancelled job does not run; its callback comes, signed.
    let worker = Worker::builder(queue.clone())
        .agent("assistant", counted)
        .webhooks(test_webhooks(5))
        .build()
        .unwrap();
    let _worker = RunningWorker::spawn(worker);
    delivered(&received, 1).await;
    let (headers, body) = received.lock().unwrap()[0].clone();
    assert!(verify(
        WEBHOOK_SECRET,
        &body,
        headers[SIGNATURE_HEADER].to_str().unwrap()
    ));
    let hooked: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(hooked["job_id"], job_id.as_str());
    assert_eq!(hooked["status"], "cancelled");

    let ran = submit_id(&served.base, json!({"input": "What is 2 + 2?"})).await;
    assert_eq!(
        wait_done(&served.base, "dummy-key-acme", &ran).await["status"],
        "succeeded"
    );
    let ended = cancel(&served.base, "dummy-key-acme", &ran).await;
    assert_eq!(ended.status(), 409);
    assert_eq!(
        ended.json::<Value>().await.unwrap()["error"]["code"],
        "conflict"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "only the job not cancelled ran"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(received.lock().unwrap().len(), 1, "one callback");
}

/// Fails its first run with an error retrying cannot fix, then runs the demo agent.
#[derive(Clone)]
struct FailsFirst {
    runs: Arc<AtomicUsize>,
}

impl Executor for FailsFirst {
    async fn execute(&self, invocation: Invocation) -> Result<Reply> {
        if self.runs.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(agentkit_core::Error::invalid_input(
                "the tool's configuration is wrong",
            ));
        }
        demo_agent().execute(invocation).await
    }
}

async fn retry(base: &str, key: &str, job_id: &str) -> reqwest::Response {
    act(base, key, job_id, "retry").await
}

/// `POST /v1/jobs/{id}/retry`: a failed job (the fault since fixed) runs again and succeeds,
/// and its callback comes again with the new ending; a job that did not fail is a 409,
/// another tenant's a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_retried_runs_again_and_calls_back_again() {
    let queue: Arc<dyn JobQueue> = Arc::new(MemoryJobQueue::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let agent = FailsFirst { runs: runs.clone() };
    let served = serve(job_api(agent.clone(), &queue)).await;
    let worker = Worker::builder(queue.clone())
        .agent("assistant", agent)
        .webhooks(test_webhooks(5))
        .build()
        .unwrap();
    let _worker = RunningWorker::spawn(worker);
    let (hook, received, _) = receiver(0).await;
    let job_id = submit_id(
        &served.base,
        json!({"input": "What is 2 + 3?", "callback_url": hook}),
    )
    .await;
    let failed = wait_done(&served.base, "dummy-key-acme", &job_id).await;
    assert_eq!(failed["status"], "failed");
    delivered(&received, 1).await;

    assert_eq!(
        retry(&served.base, "dummy-key-beta", &job_id)
            .await
            .status(),
        404
    );
    let response = retry(&served.base, "dummy-key-acme", &job_id).await;
    assert_eq!(response.status(), 200);
    let queued: Value = response.json().await.unwrap();
    assert_eq!(queued["status"], "queued");
    assert_eq!(queued["attempts"], 0);
    let done = wait_done(&served.base, "dummy-key-acme", &job_id).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["result"]["output"], "2 + 3 = 5");
    delivered(&received, 2).await;
    let got = received.lock().unwrap().clone();
    let statuses: Vec<Value> = got
        .iter()
        .map(|(_, body)| serde_json::from_slice::<Value>(body).unwrap()["status"].clone())
        .collect();
    assert_eq!(statuses, [json!("failed"), json!("succeeded")]);

    let again = retry(&served.base, "dummy-key-acme", &job_id).await;
    assert_eq!(again.status(), 409, "a succeeded job is not retried");
    assert_eq!(
        again.json::<Value>().await.unwrap()["error"]["code"],
        "conflict"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// Runs until dropped; counts its starts and its drops.
#[derive(Clone)]
struct Forever {
    started: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

impl Executor for Forever {
    async fn execute(&self, _: Invocation) -> Result<Reply> {
        struct Dropped(Arc<AtomicUsize>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        self.started.fetch_add(1, Ordering::SeqCst);
        let _dropped = Dropped(self.dropped.clone());
        std::future::pending().await
    }
}

/// A running job cancelled over HTTP stops at once, not at its worker's next heartbeat (a
/// minute away here): the worker awaits the job's end between heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_cancelled_stops_before_its_next_heartbeat() {
    let queue: Arc<dyn JobQueue> = Arc::new(MemoryJobQueue::new());
    let forever = Forever {
        started: Arc::new(AtomicUsize::new(0)),
        dropped: Arc::new(AtomicUsize::new(0)),
    };
    let served = serve(job_api(forever.clone(), &queue)).await;
    let worker = Worker::builder(queue.clone())
        .agent("assistant", forever.clone())
        .heartbeat(Duration::from_secs(60))
        .build()
        .unwrap();
    let _worker = RunningWorker::spawn(worker);
    let job_id = submit_id(&served.base, json!({"input": "run forever"})).await;
    for _ in 0..200 {
        if forever.started.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(forever.started.load(Ordering::SeqCst), 1, "the run started");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let response = cancel(&served.base, "dummy-key-acme", &job_id).await;
    assert_eq!(response.status(), 200);
    for _ in 0..200 {
        if forever.dropped.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        forever.dropped.load(Ordering::SeqCst),
        1,
        "the run was dropped within 5 s, not at the heartbeat a minute away"
    );
    let doc = job_doc(&served.base, "dummy-key-acme", &job_id).await;
    assert_eq!(doc["status"], "cancelled");
}
