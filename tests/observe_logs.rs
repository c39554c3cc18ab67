//! JSON logs: one line per request (and per job) with every field operators need, and never a
//! credential: API keys and JWTs sent through the service do not appear anywhere in the logs.

mod support;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentkit::Executor;
use agentkit::model::ScriptedModel;
use agentkit::transport::jobs::{JobQueue, MemoryJobQueue, Worker};
use agentkit::transport::{Api, Authenticator};
use serde_json::{Value, json};
use support::*;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

const API_KEY: &str = "ak-dummy-0123456789abcdef-never-log-me";
const JWT_SECRET: &[u8] = b"dummy-jwt-secret-for-log-tests";

fn capture() -> &'static Capture {
    static LOGS: OnceLock<(agentkit::observe::Telemetry, Capture)> = OnceLock::new();
    &LOGS
        .get_or_init(|| {
            let capture = Capture::default();
            let writer = capture.clone();
            let telemetry = agentkit::observe::ObserveBuilder::from_env()
                .unwrap()
                .log_filter("debug")
                .log_writer(BoxMakeWriter::new(move || writer.clone()))
                .init()
                .unwrap();
            (telemetry, capture)
        })
        .1
}

fn jwt() -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "user-42", "tenant": "acme", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET),
    )
    .unwrap()
}

fn line_of<'a>(lines: &'a [Value], request_id: &str, message: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["request_id"] == request_id && l["message"] == message)
        .unwrap_or_else(|| panic!("no `{message}` line for {request_id}"))
}

const FIELDS: [&str; 17] = [
    "timestamp",
    "level",
    "request_id",
    "trace_id",
    "span_id",
    "tenant",
    "agent",
    "agent_version",
    "model",
    "tokens_in",
    "tokens_out",
    "tool_calls",
    "tool_names",
    "cost_usd",
    "latency_ms",
    "outcome",
    "session_id",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_line_per_request_with_every_field_and_no_credentials() {
    let logs = capture();
    let auth = Authenticator::none()
        .with_api_key("acme", API_KEY)
        .with_jwt_secret(JWT_SECRET)
        .unwrap();
    let agent = agentkit::demo::assistant_builder(Arc::new(ScriptedModel::demo()))
        .build()
        .unwrap();
    let base = serve(
        Api::builder()
            .agent("assistant", agent)
            .auth(auth)
            .build()
            .unwrap(),
    )
    .await;
    let client = reqwest::Client::new();
    let token = jwt();
    let (parent, trace_id) = traceparent();

    let session = client
        .post(format!("{base}/v1/agents/assistant/sessions/s-1/messages"))
        .header("authorization", format!("Bearer {API_KEY}"))
        .header("x-request-id", "log-req-1")
        .header("traceparent", &parent)
        .json(&json!({"input": "What is 17 + 25?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(session.status(), 200);
    let streamed = client
        .post(format!("{base}/v1/agents/assistant/invoke"))
        .header("authorization", format!("Bearer {token}"))
        .header("x-request-id", "log-req-2")
        .header("accept", "text/event-stream")
        .json(&json!({"input": "What is 1 + 2?"}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(streamed.contains("event: done"));
    let refused = client
        .post(format!("{base}/v1/agents/assistant/invoke"))
        .header("authorization", format!("Bearer {API_KEY}-wrong"))
        .header("x-request-id", "log-req-3")
        .json(&json!({"input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let lines = logs.lines();
    let first = line_of(&lines, "log-req-1", "request finished");
    for field in FIELDS {
        assert!(!first[field].is_null(), "field {field} missing in {first}");
    }
    assert_eq!(first["level"], "INFO");
    assert_eq!(first["trace_id"], trace_id.as_str(), "the inbound trace");
    assert_eq!(first["tenant"], "acme");
    assert_eq!(first["agent"], "assistant");
    assert_eq!(first["agent_version"], "1");
    assert_eq!(first["session_id"], "assistant/s-1");
    assert_eq!(first["model"], "scripted");
    assert_eq!(first["tool_calls"], 1);
    assert_eq!(first["tool_names"], "add");
    assert_eq!(first["outcome"], "ok");
    assert_eq!(first["status"], 200);
    assert!(first["tokens_in"].as_u64().unwrap() > 0);
    assert!(first["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(
        first.get("output").is_none() || first["output"].is_null(),
        "no completion text without content capture"
    );

    let second = line_of(&lines, "log-req-2", "request finished");
    assert_eq!(second["tenant"], "acme", "from the JWT");
    assert_eq!(second["tool_names"], "add");
    assert!(
        second["trace_id"].as_str().is_some_and(|t| t.len() == 32),
        "a trace even without an inbound one"
    );

    let third = line_of(&lines, "log-req-3", "request finished");
    assert_eq!(third["outcome"], "error");
    assert_eq!(third["error_code"], "unauthenticated");
    assert_eq!(third["status"], 401);

    assert_eq!(
        lines
            .iter()
            .filter(|l| l["request_id"] == "log-req-1" && l["message"] == "request finished")
            .count(),
        1
    );
    let all = logs.text();
    assert!(!all.contains(API_KEY), "the API key leaked into the logs");
    assert!(!all.contains("never-log-me"));
    assert!(!all.contains(&token), "the JWT leaked into the logs");
    assert!(
        !all.contains(token.split('.').nth(2).unwrap()),
        "the JWT's signature leaked"
    );
    assert!(!all.contains(std::str::from_utf8(JWT_SECRET).unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_line_per_job_run() {
    let logs = capture();
    let queue: Arc<dyn JobQueue> = Arc::new(MemoryJobQueue::new());
    let agent = agentkit::demo::assistant_builder(Arc::new(ScriptedModel::demo()))
        .build()
        .unwrap();
    let worker = Worker::builder(queue.clone())
        .agent("assistant", agent)
        .build()
        .unwrap();
    let running = agentkit_testkit::jobs::RunningWorker::spawn(worker);
    let spec = agentkit::transport::jobs::JobSpec {
        agent: "assistant".into(),
        input: vec![agentkit::Message::user("What is 3 + 4?")],
        tenant: "acme".into(),
        request_id: "log-job-1".into(),
        ..Default::default()
    };
    let job = queue.enqueue(spec).await.unwrap();
    for _ in 0..100 {
        if queue
            .get(&job.job_id)
            .await
            .unwrap()
            .unwrap()
            .status
            .is_terminal()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let lines = logs.lines();
    let line = line_of(&lines, "log-job-1", "job run finished");
    assert_eq!(line["job_id"], job.job_id.as_str());
    assert_eq!(line["attempt"], 1);
    for field in [
        "agent",
        "model",
        "tokens_in",
        "tokens_out",
        "tool_calls",
        "cost_usd",
        "latency_ms",
        "outcome",
        "trace_id",
    ] {
        assert!(!line[field].is_null(), "field {field} missing in {line}");
    }
    running.stop().await.unwrap();
}

/// A run that no edge logs (an agent called from the caller's own code) gets its line from
/// the observer. The line is written on the telemetry thread, through the subscriber that was
/// current where the run ended (here one set for this thread only), and its ids are those of
/// the run's exported span.
#[test]
fn a_run_outside_any_edge_logs_its_own_line_through_the_callers_subscriber() {
    let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
    let telemetry = agentkit::observe::ObserveBuilder::from_env()
        .unwrap()
        .global(false)
        .metrics(false)
        .span_exporter_batched(exporter.clone())
        .init()
        .unwrap();
    let agent = agentkit::demo::assistant_builder(Arc::new(ScriptedModel::demo()))
        .observer(telemetry.observer())
        .build()
        .unwrap();
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .event_format(agentkit::observe::JsonLines)
        .with_writer(BoxMakeWriter::new(move || writer.clone()))
        .finish();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tracing::subscriber::with_default(subscriber, || {
        let invocation = agentkit::Invocation::text("What is 17 + 25?");
        runtime.block_on(agent.execute(invocation)).unwrap();
    });
    telemetry.flush();

    let lines = capture.lines();
    let [line] = lines.as_slice() else {
        panic!("one line, got {lines:?}")
    };
    assert_eq!(line["message"], "agent run finished");
    assert_eq!(line["target"], "agentkit::run");
    assert_eq!(line["agent"], "assistant");
    assert_eq!(line["tool_calls"], 1);
    assert_eq!(line["tool_names"], "add");
    assert_eq!(line["outcome"], "ok");
    assert!(line["tokens_in"].as_u64().unwrap() > 0, "{line}");
    assert!(line["latency_ms"].as_f64().unwrap() >= 0.0, "{line}");
    let spans = exporter.get_finished_spans().unwrap();
    let run = spans
        .iter()
        .find(|s| s.name.starts_with("invoke_agent"))
        .expect("the run's span was exported by the flush");
    assert_eq!(line["trace_id"], run.span_context.trace_id().to_string());
    assert_eq!(line["span_id"], run.span_context.span_id().to_string());
    assert_eq!(spans.len(), 4, "invoke_agent, two chats, one tool");
    assert_eq!(telemetry.dropped(), 0);
}
