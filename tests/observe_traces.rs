//! Spans through the HTTP service: `invoke_agent` → `chat` / `execute_tool` under the request's
//! span, with the GenAI attributes; and one trace id from an HTTP request through the queue to
//! the worker's run. (One process-wide observer with an in-memory exporter per test binary.)

mod support;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use agentkit::Executor;
use agentkit::model::ScriptedModel;
use agentkit::transport::Api;
use agentkit::transport::jobs::{JobQueue, MemoryJobQueue, Worker};
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use serde_json::json;
use support::*;

fn exporter() -> &'static InMemorySpanExporter {
    static TELEMETRY: OnceLock<(agentkit::observe::Telemetry, InMemorySpanExporter)> =
        OnceLock::new();
    &TELEMETRY
        .get_or_init(|| {
            let exporter = InMemorySpanExporter::default();
            let telemetry = agentkit::observe::ObserveBuilder::from_env()
                .unwrap()
                .logs(false)
                .span_exporter(exporter.clone())
                .init()
                .unwrap();
            (telemetry, exporter)
        })
        .1
}

fn spans_of(trace_id: &str) -> Vec<SpanData> {
    exporter()
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| s.span_context.trace_id().to_string() == trace_id)
        .collect()
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

fn agent() -> agentkit::Agent {
    agentkit::demo::assistant_builder(Arc::new(ScriptedModel::demo()))
        .build()
        .unwrap()
}

async fn wait_for_spans(trace_id: &str, predicate: impl Fn(&[SpanData]) -> bool) -> Vec<SpanData> {
    for _ in 0..200 {
        let spans = spans_of(trace_id);
        if predicate(&spans) {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "spans did not arrive: {:#?}",
        spans_of(trace_id)
            .iter()
            .map(|s| s.name.to_string())
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_a_tool_yields_the_three_span_kinds_parented_correctly() {
    exporter();
    let base = serve(Api::builder().agent("assistant", agent()).build().unwrap()).await;
    let (parent, trace_id) = traceparent();
    let response = reqwest::Client::new()
        .post(format!(
            "{base}/v1/agents/assistant/sessions/chat-7/messages"
        ))
        .header("traceparent", &parent)
        .json(&json!({"input": "What is 17 + 25?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let spans = wait_for_spans(&trace_id, |s| s.iter().any(|s| s.name.starts_with("POST"))).await;
    let find = |name: &str| {
        spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
            panic!(
                "no span {name}: {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        })
    };
    let request = find("POST /v1/agents/{agent}/sessions/{session_id}/messages");
    let run = find("invoke_agent assistant");
    let chats: Vec<&SpanData> = spans.iter().filter(|s| s.name == "chat scripted").collect();
    let tool = find("execute_tool add");

    assert_eq!(request.span_kind, SpanKind::Server);
    assert_eq!(
        request.parent_span_id.to_string(),
        parent.split('-').nth(2).unwrap(),
        "continues the inbound trace"
    );
    assert_eq!(
        attr(request, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(run.parent_span_id, request.span_context.span_id());
    assert_eq!(chats.len(), 2);
    for chat in &chats {
        assert_eq!(chat.parent_span_id, run.span_context.span_id());
        assert_eq!(chat.span_kind, SpanKind::Client);
        assert_eq!(attr(chat, "gen_ai.operation.name").as_deref(), Some("chat"));
        assert_eq!(
            attr(chat, "gen_ai.provider.name").as_deref(),
            Some("scripted")
        );
        assert_eq!(
            attr(chat, "gen_ai.request.model").as_deref(),
            Some("scripted")
        );
        assert_eq!(
            attr(chat, "gen_ai.response.model").as_deref(),
            Some("scripted")
        );
        assert!(
            attr(chat, "gen_ai.usage.input_tokens")
                .unwrap()
                .parse::<u64>()
                .unwrap()
                > 0
        );
        assert!(
            attr(chat, "gen_ai.usage.output_tokens")
                .unwrap()
                .parse::<u64>()
                .unwrap()
                > 0
        );
        assert!(attr(chat, "gen_ai.response.finish_reasons").is_some());
    }
    assert_eq!(tool.parent_span_id, run.span_context.span_id());
    assert_eq!(
        attr(tool, "gen_ai.operation.name").as_deref(),
        Some("execute_tool")
    );
    assert_eq!(attr(tool, "gen_ai.tool.name").as_deref(), Some("add"));
    assert_eq!(
        attr(tool, "gen_ai.tool.call.id").as_deref(),
        Some("call_0_0")
    );
    assert_eq!(
        attr(run, "gen_ai.operation.name").as_deref(),
        Some("invoke_agent")
    );
    assert_eq!(attr(run, "gen_ai.agent.name").as_deref(), Some("assistant"));
    assert_eq!(
        attr(run, "gen_ai.conversation.id").as_deref(),
        Some("assistant/chat-7")
    );
    assert!(attr(run, "gen_ai.usage.input_tokens").is_some());
    // The tool's call happened between the two model calls.
    let (first, second) = if chats[0].start_time < chats[1].start_time {
        (chats[0], chats[1])
    } else {
        (chats[1], chats[0])
    };
    assert!(first.end_time <= tool.start_time && tool.end_time <= second.start_time);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_run_marks_its_span_with_the_error_type() {
    exporter();
    let slow = agentkit::demo::assistant_builder(Arc::new(
        ScriptedModel::builder()
            .demo_rules()
            .latency(Duration::from_secs(5))
            .build(),
    ))
    .build()
    .unwrap();
    let base = serve(
        Api::builder()
            .agent("assistant", slow)
            .request_timeout(Duration::from_millis(100))
            .build()
            .unwrap(),
    )
    .await;
    let (parent, trace_id) = traceparent();
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/agents/assistant/invoke"))
        .header("traceparent", &parent)
        .json(&json!({"input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    let spans = wait_for_spans(&trace_id, |s| s.iter().any(|s| s.name.starts_with("POST"))).await;
    let run = spans
        .iter()
        .find(|s| s.name == "invoke_agent assistant")
        .unwrap();
    assert_eq!(attr(run, "error.type").as_deref(), Some("timeout"));
    assert!(matches!(run.status, Status::Error { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_enqueued_over_http_and_run_by_a_worker_is_one_trace() {
    exporter();
    let queue: Arc<dyn JobQueue> = Arc::new(MemoryJobQueue::new());
    let worker = Worker::builder(queue.clone())
        .agent("assistant", agent())
        .build()
        .unwrap();
    let running = agentkit_testkit::jobs::RunningWorker::spawn(worker);
    let base = serve(
        Api::builder()
            .agent("assistant", agent())
            .jobs(queue)
            .build()
            .unwrap(),
    )
    .await;
    let (parent, trace_id) = traceparent();
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/agents/assistant/jobs"))
        .header("traceparent", &parent)
        .json(&json!({"input": "What is 2 + 2?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let spans = wait_for_spans(&trace_id, |s| {
        s.iter().any(|s| s.name == "invoke_agent assistant")
    })
    .await;
    let submit = spans
        .iter()
        .find(|s| s.name == "POST /v1/agents/{agent}/jobs")
        .expect("the request's span");
    let run = spans
        .iter()
        .find(|s| s.name == "invoke_agent assistant")
        .unwrap();
    assert_eq!(
        run.span_context.trace_id(),
        submit.span_context.trace_id(),
        "one trace across HTTP, queue and worker"
    );
    assert_eq!(
        run.parent_span_id,
        submit.span_context.span_id(),
        "the worker's run continues the request's span"
    );
    running.stop().await.unwrap();
}

/// Runs and calls reuse their boxes on a thread, and a box keeps its last observer: runs of
/// two observers taking turns on one thread must each still reach their own exporter.
#[tokio::test(flavor = "current_thread")]
async fn observers_taking_turns_on_one_thread_keep_their_own_spans() {
    let observed = |name: &str| {
        let exporter = InMemorySpanExporter::default();
        let telemetry = agentkit::observe::ObserveBuilder::from_env()
            .unwrap()
            .global(false)
            .logs(false)
            .metrics(false)
            .span_exporter(exporter.clone())
            .init()
            .unwrap();
        let agent = agentkit::demo::assistant_builder(Arc::new(ScriptedModel::demo()))
            .name(name)
            .observer(telemetry.observer())
            .build()
            .unwrap();
        (telemetry, exporter, agent)
    };
    let (first, first_spans, first_agent) = observed("first");
    let (second, second_spans, second_agent) = observed("second");
    for _ in 0..3 {
        for agent in [&first_agent, &second_agent] {
            agent
                .execute(agentkit::Invocation::text("What is 17 + 25?"))
                .await
                .unwrap();
        }
    }
    for (telemetry, exporter, name) in [
        (&first, &first_spans, "first"),
        (&second, &second_spans, "second"),
    ] {
        telemetry.flush();
        let spans = exporter.get_finished_spans().unwrap();
        let runs: Vec<_> = spans
            .iter()
            .filter(|s| s.name.starts_with("invoke_agent"))
            .collect();
        assert_eq!(runs.len(), 3, "{name}: one run span per run");
        assert!(
            runs.iter()
                .all(|s| s.name == format!("invoke_agent {name}")),
            "{name}: only its own runs"
        );
        assert_eq!(
            spans.len(),
            12,
            "{name}: a run, two model calls and a tool call each"
        );
        for span in spans.iter().filter(|s| !s.name.starts_with("invoke_agent")) {
            assert!(
                runs.iter()
                    .any(|run| run.span_context.span_id() == span.parent_span_id),
                "{name}: {} is under one of its own runs",
                span.name
            );
        }
    }
}
