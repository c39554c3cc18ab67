//! `RemoteExecutor` against a second service on loopback: delegation, propagated request id and
//! trace, errors mapped back to kinds, streaming.

mod support;

use std::sync::{Arc, Mutex};

use agentkit_core::{Context, ErrorKind, Executor, Invocation, TraceContext};
use agentkit_transport::{Api, Authenticator, RemoteExecutor};
use axum::extract::Request;
use axum::middleware::Next;
use futures::StreamExt;
use serde_json::{Value, json};
use support::*;

type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// The downstream service, recording the request id and traceparent of every call.
async fn downstream(seen: Seen) -> String {
    let api = Api::builder()
        .agent("assistant", demo_agent())
        .auth(Authenticator::none().with_api_key("acme", "dummy-downstream-key"))
        .build()
        .unwrap();
    let router = api.router().layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let seen = seen.clone();
            let header = |name: &str| {
                req.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            };
            seen.lock()
                .unwrap()
                .push((header("x-request-id"), header("traceparent")));
            async move { next.run(req).await }
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// A client of the downstream's `assistant` with its API key.
fn keyed(down: &str) -> agentkit_transport::RemoteExecutorBuilder {
    RemoteExecutor::builder(down, "assistant").bearer("dummy-downstream-key")
}

#[tokio::test]
async fn an_agent_delegates_to_another_service() {
    let seen: Seen = Arc::default();
    let down = downstream(seen.clone()).await;
    let remote = keyed(&down).build().unwrap();
    let upstream = serve(
        Api::builder()
            .agent("delegate", remote.clone())
            .build()
            .unwrap(),
    )
    .await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = client()
        .post(format!("{}/v1/agents/delegate/invoke", upstream.base))
        .header("x-request-id", "req-from-edge")
        .header("traceparent", traceparent)
        .json(&json!({"input": "What is 17 + 25?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["output"], "17 + 25 = 42");
    assert_eq!(
        body["tool_calls"][0]["name"], "add",
        "the remote run's tool calls come back"
    );
    let (request_id, parent) = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(request_id, "req-from-edge");
    let parent = TraceContext::parse(&parent).expect("a traceparent was sent");
    assert_eq!(
        parent.trace_id_hex(),
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "one trace end to end"
    );

    // Streaming through the remote executor.
    let mut events = remote
        .stream(Invocation::text("What is 2 + 2?"))
        .await
        .unwrap();
    let mut names = Vec::new();
    let mut output = None;
    while let Some(event) = events.next().await {
        let event = event.unwrap();
        names.push(event.name());
        if let agentkit_core::AgentEvent::Done(reply) = event {
            output = Some(reply.output);
        }
    }
    assert_eq!(names.first(), Some(&"tool_call_started"));
    assert_eq!(names.last(), Some(&"done"));
    assert_eq!(output.as_deref(), Some("2 + 2 = 4"));
}

#[tokio::test]
async fn remote_errors_come_back_as_their_kinds() {
    let down = downstream(Arc::default()).await;
    let unknown = RemoteExecutor::builder(&down, "nobody")
        .bearer("dummy-downstream-key")
        .build()
        .unwrap();
    let error = unknown.execute(Invocation::text("hi")).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound);
    let unauthenticated = RemoteExecutor::builder(&down, "assistant").build().unwrap();
    let error = unauthenticated
        .execute(Invocation::text("hi"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unauthenticated);
    let error = unauthenticated
        .stream(Invocation::text("hi"))
        .await
        .err()
        .unwrap();
    assert_eq!(error.kind(), ErrorKind::Unauthenticated);

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let nowhere = RemoteExecutor::builder(format!("http://127.0.0.1:{port}"), "assistant")
        .build()
        .unwrap();
    let error = nowhere.execute(Invocation::text("hi")).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable);
    assert!(error.is_retryable());

    let past = Context::new().with_timeout(std::time::Duration::ZERO);
    let error = nowhere
        .execute(Invocation::text("hi").with_context(past))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Timeout);
}

#[tokio::test]
async fn load_over_http_counts_every_answer_and_every_refusal() {
    use agentkit_core::load::{self, LoadLimits, LoadPlan, Prompts};

    let seen: Seen = Arc::default();
    let down = downstream(seen.clone()).await;
    let remote = keyed(&down).build().unwrap();
    let plan = LoadPlan::concurrency(4)
        .limit(40)
        .timeout(std::time::Duration::from_secs(10));
    let prompts = Prompts::new(["What is 2 + 3?", "hello"]);
    let report = load::run(&remote, &plan, &prompts).await.unwrap();
    assert_eq!(
        (report.scheduled, report.succeeded, report.failed),
        (40, 40, 0),
        "{report:?}"
    );
    assert!(report.tokens > 0, "the service's usage comes back");
    assert!(report.latency.p50_ms > 0.0 && report.latency.max_ms >= report.latency.p99_ms);
    let ids: std::collections::BTreeSet<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    assert_eq!(ids.len(), 40, "every request its own id");
    assert!(ids.iter().all(|id| id.starts_with("load-")));

    // Streamed over SSE: the first text comes no later than the whole answer.
    let report = load::run(&remote, &plan.clone().limit(12).stream(), &prompts)
        .await
        .unwrap();
    assert_eq!((report.succeeded, report.failed), (12, 0), "{report:?}");
    let first = report.first_token.expect("the answers' text was streamed");
    assert!(first.max_ms <= report.latency.max_ms);

    // A key the service does not know: every call refused, counted by its code.
    let refused = RemoteExecutor::builder(&down, "assistant")
        .bearer("dummy-unknown-key")
        .build()
        .unwrap();
    let report = load::run(&refused, &plan.clone().limit(10), &prompts)
        .await
        .unwrap();
    assert_eq!((report.succeeded, report.failed), (0, 10));
    assert_eq!(
        report.errors.get("unauthenticated"),
        Some(&10),
        "{report:?}"
    );
    let gate = LoadLimits::new().max_error_rate(0.01);
    assert_eq!(report.check(&gate).len(), 1);
}

#[tokio::test]
async fn a_remote_session_keeps_its_own_history() {
    let seen: Seen = Arc::default();
    let down = downstream(seen.clone()).await;
    let remote = keyed(&down).sessions().build().unwrap();
    let turn = |text: &str, session: &str| {
        let mut invocation =
            Invocation::text(text).with_context(Context::new().with_session_id(session));
        // Sent only to stateless invokes: the remote session has its own.
        invocation.history = vec![agentkit_core::Message::user("not part of the session")];
        invocation
    };
    let first = remote.execute(turn("hello", "s 1/a")).await.unwrap();
    let second = remote.execute(turn("again", "s 1/a")).await.unwrap();
    let session = second
        .session
        .expect("a session turn says where it was saved");
    assert_eq!(first.session.unwrap().version, 1);
    assert_eq!(session.version, 2, "the second turn of the same session");
    assert_eq!(
        session.id, "s 1/a",
        "the id went through as one path segment"
    );
    let other = remote.execute(turn("hi", "s-2")).await.unwrap();
    assert_eq!(other.session.unwrap().version, 1);

    // The remote's stored history: the two turns, not the history sent along.
    let stored: Value = client()
        .get(format!("{down}/v1/agents/assistant/sessions/s%201%2Fa"))
        .bearer_auth("dummy-downstream-key")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let texts: Vec<&str> = stored["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"][0]["text"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(texts, ["hello", "again"], "{stored}");

    // Without `sessions()`, the same invocation is a stateless invoke.
    let stateless = keyed(&down).build().unwrap();
    let reply = stateless.execute(turn("hello", "s 1/a")).await.unwrap();
    assert!(reply.session.is_none());
}

/// A remote whose event stream ends before `done` (it died, or a proxy cut the response off
/// cleanly) is an `unavailable` error after what it sent, not a stream that just stops.
#[tokio::test]
async fn a_stream_cut_off_before_done_ends_in_an_error() {
    let router = axum::Router::new().route(
        "/v1/agents/assistant/invoke",
        axum::routing::post(|| async {
            (
                [("content-type", "text/event-stream")],
                "event: text_delta\ndata: {\"text\":\"half an answ\"}\n\n",
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let remote = RemoteExecutor::builder(format!("http://{addr}"), "assistant")
        .build()
        .unwrap();
    let events: Vec<_> = remote
        .stream(Invocation::text("hi"))
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        matches!(&events[0], Ok(agentkit_core::AgentEvent::TextDelta { text }) if text == "half an answ")
    );
    let Err(error) = &events[1] else {
        panic!("{events:?}")
    };
    assert_eq!(error.kind(), ErrorKind::Unavailable);
}
