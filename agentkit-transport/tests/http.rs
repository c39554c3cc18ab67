//! The HTTP API over real loopback HTTP: every route, every error status, streaming order.

mod support;

use std::sync::Arc;
use std::time::Duration;

use agentkit_store::TurnPolicy;
use agentkit_transport::{AgentOptions, Api, RateLimits};
use serde_json::{Value, json};
use support::*;

#[tokio::test]
async fn invoke_answers_with_the_documented_shape() {
    let served = serve(with_demo().build().unwrap()).await;
    let response = client()
        .post(format!("{}/v1/agents/assistant/invoke", served.base))
        .header("x-request-id", "caller-id-1")
        .json(&json!({"input": "What is 17 + 25?", "metadata": {"channel": "test"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "caller-id-1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["request_id"], "caller-id-1");
    assert_eq!(body["agent"], "assistant");
    assert!(body["output"].as_str().unwrap().contains("42"));
    assert_eq!(body["messages"].as_array().unwrap().len(), 4);
    assert!(body["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert!(body["usage"]["output_tokens"].as_u64().unwrap() > 0);
    assert!(body["cost_usd"].is_number());
    let call = &body["tool_calls"][0];
    assert_eq!(call["name"], "add");
    assert_eq!(call["arguments"], r#"{"a":17,"b":25}"#);
    assert_eq!(call["ok"], true);
    assert!(call["duration_ms"].as_f64().unwrap() >= 0.0);

    // Messages as input, in both content styles; a generated id when the caller sends none.
    let response = client()
        .post(format!("{}/v1/agents/assistant/invoke", served.base))
        .json(&json!({"input": [
            {"role": "user", "content": "earlier"},
            {"role": "user", "content": [{"type": "text", "text": "What is 1 + 2?"}]}
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"].len(), 32);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["output"], "1 + 2 = 3");
}

#[tokio::test]
async fn bad_input_is_a_4xx_with_a_json_body_never_a_5xx() {
    let served = serve(with_demo().body_limit(4096).build().unwrap()).await;
    let url = format!("{}/v1/agents/assistant/invoke", served.base);
    let c = client();
    let post = |body: &'static str| {
        c.post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_eq!(
        error_code(post("{not json").await.unwrap(), 400).await,
        "invalid_input"
    );
    assert_eq!(
        error_code(post(r#"{"input": 5}"#).await.unwrap(), 400).await,
        "invalid_input"
    );
    assert_eq!(
        error_code(post(r#"{"input": ""}"#).await.unwrap(), 400).await,
        "invalid_input"
    );
    assert_eq!(
        error_code(post(r#"{"input": []}"#).await.unwrap(), 400).await,
        "invalid_input"
    );
    assert_eq!(
        error_code(post(r#"{"input": "x", "inptu": 1}"#).await.unwrap(), 400).await,
        "invalid_input"
    );
    assert_eq!(
        error_code(
            post(r#"{"input": [{"role": "robot", "content": "x"}]}"#)
                .await
                .unwrap(),
            400
        )
        .await,
        "invalid_input"
    );
    assert_eq!(
        error_code(post("").await.unwrap(), 400).await,
        "invalid_input"
    );
    let big = format!(r#"{{"input": "{}"}}"#, "x".repeat(10_000));
    let response = c
        .post(&url)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response, 413).await, "payload_too_large");
    let response = c
        .post(&url)
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response, 415).await, "unsupported_media_type");
    let response = c
        .post(format!("{}/v1/agents/nobody/invoke", served.base))
        .json(&json!({"input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response, 404).await, "not_found");
    let response = c
        .get(format!("{}/v1/nothing/here", served.base))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response, 404).await, "not_found");
    let response = c.get(&url).send().await.unwrap();
    assert_eq!(error_code(response, 405).await, "method_not_allowed");

    // Garbage of every shape: never a server error.
    let nasty: Vec<Vec<u8>> = vec![
        b"[".repeat(10_000),
        br#"{"input": {"role": "user"}}"#.to_vec(),
        br#"{"input": "x", "metadata": []}"#.to_vec(),
        br#"{"input": [{"role": "user", "content": [{"type": "image"}]}]}"#.to_vec(),
        br#"{"input": "\ud800"}"#.to_vec(),
        vec![0xff, 0xfe, 0x00],
        br#"{"input": 1e999}"#.to_vec(),
        b"null".to_vec(),
    ];
    for body in nasty {
        let response = c
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_client_error(),
            "{} for {:?}",
            response.status(),
            String::from_utf8_lossy(&body)
        );
    }
}

/// A conversation no model can be sent (a stray tool result, a tool call from the user, a
/// call left without its result) is the caller's mistake: a 400 naming the message, on every
/// route that takes messages, and a job is refused at submission rather than failed later.
/// A well-formed conversation without a user message is answered.
#[tokio::test]
async fn malformed_conversations_are_400_on_every_route() {
    let queue = Arc::new(agentkit_transport::jobs::MemoryJobQueue::new());
    let served = serve(with_demo().jobs(queue).build().unwrap()).await;
    let c = client();
    let stray = json!([{"role": "tool", "content": [{"type": "tool_result", "call_id": "c1", "content": "5"}]}]);
    let from_user = json!([{"role": "user", "content": [{"type": "tool_call", "id": "c1", "name": "add", "arguments": "{}"}]}]);
    let text_as_result = json!([{"role": "tool", "content": "5"}]);
    let unanswered = json!([
        {"role": "user", "content": "1 + 2?"},
        {"role": "assistant", "content": [{"type": "tool_call", "id": "c1", "name": "add", "arguments": "{\"a\":1,\"b\":2}"}]}
    ]);
    let routes = [
        "/v1/agents/assistant/invoke",
        "/v1/agents/assistant/sessions/s1/messages",
        "/v1/agents/assistant/jobs",
    ];
    for route in routes {
        let url = format!("{}{route}", served.base);
        for input in [&stray, &from_user, &text_as_result, &unanswered] {
            let response = c
                .post(&url)
                .json(&json!({"input": input}))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            assert_eq!(status, 400, "{route} {input}: {body}");
            assert_eq!(body["error"]["code"], "invalid_input", "{body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("input["),
                "names the message: {body}"
            );
        }
    }
    // Streamed, the refusal comes before the stream: a plain 400.
    let response = c
        .post(format!("{}/v1/agents/assistant/invoke", served.base))
        .header("accept", "text/event-stream")
        .json(&json!({"input": stray}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response, 400).await, "invalid_input");
    // History is checked with the input: a call in the history answered in the input passes.
    let response = c
        .post(format!("{}/v1/agents/assistant/invoke", served.base))
        .json(&json!({"history": unanswered, "input": [
            {"role": "tool", "content": [{"type": "tool_result", "call_id": "c1", "content": "3"}]}
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["output"], "1 + 2 = 3");
    for input in [
        json!([{"role": "system", "content": "be brief"}]),
        json!([{"role": "assistant", "content": "hello"}]),
    ] {
        let response = c
            .post(format!("{}/v1/agents/assistant/invoke", served.base))
            .json(&json!({"input": input}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{input}");
    }
}

#[tokio::test]
async fn the_default_body_limit_is_one_mebibyte() {
    let served = serve(with_demo().build().unwrap()).await;
    let big = format!(r#"{{"input": "{}"}}"#, "x".repeat(1 << 20));
    let response = client()
        .post(format!("{}/v1/agents/assistant/invoke", served.base))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response, 413).await, "payload_too_large");
}

#[tokio::test]
async fn sessions_keep_history_per_tenant_and_version_each_turn() {
    let served = serve(with_demo().build().unwrap()).await;
    let c = client();
    let base = format!("{}/v1/agents/assistant/sessions/chat-1", served.base);
    let first: Value = c
        .post(format!("{base}/messages"))
        .json(&json!({"input": "hello"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["session_id"], "chat-1");
    assert_eq!(first["version"], 1);
    assert_eq!(first["output"], "You said: hello");
    let second: Value = c
        .post(format!("{base}/messages"))
        .json(&json!({"input": "What is 2 + 2?"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(second["version"], 2);
    assert_eq!(second["output"], "2 + 2 = 4");
    let session: Value = c.get(&base).send().await.unwrap().json().await.unwrap();
    assert_eq!(session["session_id"], "chat-1");
    assert_eq!(session["version"], 2);
    assert_eq!(session["messages"].as_array().unwrap().len(), 6);
    let deleted = c.delete(&base).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(
        error_code(c.get(&base).send().await.unwrap(), 404).await,
        "not_found"
    );
    assert_eq!(
        error_code(c.delete(&base).send().await.unwrap(), 404).await,
        "not_found"
    );
}

#[tokio::test]
async fn a_busy_session_under_reject_answers_409() {
    let api = Api::builder()
        .agent_with(
            "assistant",
            slow_agent(Duration::from_millis(300)),
            AgentOptions {
                policy: TurnPolicy::Reject,
                ..AgentOptions::default()
            },
        )
        .build()
        .unwrap();
    let served = serve(api).await;
    let url = format!("{}/v1/agents/assistant/sessions/s/messages", served.base);
    let c = client();
    let first = tokio::spawn({
        let (c, url) = (c.clone(), url.clone());
        async move {
            c.post(url)
                .json(&json!({"input": "one"}))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = c
        .post(&url)
        .json(&json!({"input": "two"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(second, 409).await, "session_busy");
    assert_eq!(first.await.unwrap(), 200);
}

#[tokio::test]
async fn a_session_message_sent_again_with_its_key_gets_the_same_turn() {
    let served = serve(with_demo().build().unwrap()).await;
    let url = format!(
        "{}/v1/agents/assistant/sessions/keyed/messages",
        served.base
    );
    let c = client();
    let send = |key: &str, input: &str| {
        c.post(&url)
            .header("idempotency-key", key)
            .json(&json!({"input": input}))
            .send()
    };
    let first: Value = send("m-1", "What is 2 + 2?")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["version"], 1);
    let again: Value = send("m-1", "What is 2 + 2?")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["output"], first["output"]);
    assert_eq!(again["version"], 1, "not appended again: {again}");
    // Streamed, the retry is the recorded turn's `done` event.
    let events = c
        .post(&url)
        .header("idempotency-key", "m-1")
        .header("accept", "text/event-stream")
        .json(&json!({"input": "What is 2 + 2?"}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let done = parse_sse(&events)
        .into_iter()
        .find(|(name, _)| name == "done")
        .expect("a done event");
    assert_eq!(done.1["output"], first["output"], "{events}");
    assert_eq!(done.1["version"], 1, "{events}");
    let next: Value = send("m-2", "hello").await.unwrap().json().await.unwrap();
    assert_eq!(next["version"], 2);

    // The key may come in the body instead; both, they must agree.
    let in_body: Value = c
        .post(&url)
        .json(&json!({"input": "hello", "idempotency_key": "m-2"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(in_body["version"], 2, "{in_body}");
    let differ = c
        .post(&url)
        .header("idempotency-key", "m-3")
        .json(&json!({"input": "hello", "idempotency_key": "m-4"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(differ, 400).await, "invalid_input");

    let long = "k".repeat(300);
    let refused = send(&long, "hello").await.unwrap();
    assert_eq!(error_code(refused, 400).await, "invalid_input");
}

#[tokio::test]
async fn session_leases_keep_one_turn_at_a_time_across_instances() {
    // Two instances of the service share a store and its leases: a message that reaches the
    // second while the first runs a turn of the same session is refused under `Reject`
    // (without leases, each instance would only know its own turns).
    let store = Arc::new(agentkit_store::MemorySessionStore::new());
    let instance = |owner: &str| {
        Api::builder()
            .agent_with(
                "assistant",
                slow_agent(Duration::from_millis(300)),
                AgentOptions {
                    policy: TurnPolicy::Reject,
                    ..AgentOptions::default()
                },
            )
            .session_store(store.clone())
            .session_leases(store.clone(), owner, Duration::from_secs(5))
            .build()
            .unwrap()
    };
    let (one, two) = (serve(instance("one")).await, serve(instance("two")).await);
    let path = "/v1/agents/assistant/sessions/s/messages";
    let c = client();
    let first = tokio::spawn({
        let (c, url) = (c.clone(), format!("{}{path}", one.base));
        async move {
            c.post(url)
                .json(&json!({"input": "one"}))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = c
        .post(format!("{}{path}", two.base))
        .json(&json!({"input": "two"}))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 409);
    let refused: Value = second.json().await.unwrap();
    assert_eq!(refused["error"]["code"], "session_busy");
    // Refused at once by the lease, not after running the turn and losing the save.
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("another instance"), "{message}");
    assert_eq!(first.await.unwrap(), 200);
    // The lease went back with the turn: the other instance takes the next one.
    let third: Value = c
        .post(format!("{}{path}", two.base))
        .json(&json!({"input": "three"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(third["version"], 2, "{third}");
}

#[test]
fn session_leases_need_an_owner_and_a_lease_long_enough_to_renew() {
    let store = Arc::new(agentkit_store::MemorySessionStore::new());
    let build = |owner: &str, ttl: Duration| {
        with_demo()
            .session_leases(store.clone(), owner, ttl)
            .build()
            .map(|_| ())
    };
    assert!(build("node-1", Duration::from_secs(30)).is_ok());
    for (owner, ttl) in [
        ("", Duration::from_secs(30)),
        ("node-1", Duration::from_millis(10)),
        ("node-1", Duration::ZERO),
    ] {
        let error = build(owner, ttl).unwrap_err();
        assert_eq!(
            error.kind(),
            agentkit_core::ErrorKind::InvalidInput,
            "{owner:?} {ttl:?}"
        );
    }
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after() {
    let served = serve(
        with_demo()
            .rate_limits(RateLimits::new(1, 2).unwrap())
            .build()
            .unwrap(),
    )
    .await;
    let c = client();
    let url = format!("{}/v1/agents/assistant/invoke", served.base);
    for _ in 0..2 {
        assert_eq!(
            c.post(&url)
                .json(&json!({"input": "hi"}))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let limited = c
        .post(&url)
        .json(&json!({"input": "hi"}))
        .send()
        .await
        .unwrap();
    let after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&after));
    assert_eq!(error_code(limited, 429).await, "rate_limited");
    // Health routes are not rate limited.
    assert_eq!(
        c.get(format!("{}/healthz", served.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn an_unavailable_store_is_503_with_retry_after_and_readyz_names_it() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let store =
        agentkit_store::redis::RedisSessionStore::connect(&format!("redis://127.0.0.1:{port}"))
            .unwrap()
            .with_timeout(Duration::from_secs(1));
    let served = serve(with_demo().session_store(Arc::new(store)).build().unwrap()).await;
    let c = client();
    let response = c
        .post(format!(
            "{}/v1/agents/assistant/sessions/s/messages",
            served.base
        ))
        .json(&json!({"input": "hi"}))
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(error_code(response, 503).await, "unavailable");
    let ready = c
        .get(format!("{}/readyz", served.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "unavailable");
    assert_ne!(body["checks"]["sessions"], "ok");
    // Stateless invocations do not need the store.
    let ok = c
        .post(format!("{}/v1/agents/assistant/invoke", served.base))
        .json(&json!({"input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn the_request_deadline_answers_504() {
    let api = Api::builder()
        .agent("assistant", slow_agent(Duration::from_secs(5)))
        .request_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let served = serve(api).await;
    let started = std::time::Instant::now();
    let response = client()
        .post(format!("{}/v1/agents/assistant/invoke", served.base))
        .json(&json!({"input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(response, 504).await, "timeout");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn sse_streams_events_in_order_for_invoke_and_sessions() {
    let served = serve(with_demo().build().unwrap()).await;
    let c = client();
    for (url, session) in [
        (format!("{}/v1/agents/assistant/invoke", served.base), false),
        (
            format!(
                "{}/v1/agents/assistant/sessions/streamed/messages",
                served.base
            ),
            true,
        ),
    ] {
        let response = c
            .post(&url)
            .header("accept", "text/event-stream")
            .json(&json!({"input": "What is 17 + 25?"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        let events = parse_sse(&response.text().await.unwrap());
        let mut names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        names.dedup();
        assert_eq!(
            names,
            [
                "tool_call_started",
                "tool_call_finished",
                "text_delta",
                "usage",
                "done"
            ]
        );
        let text: String = events
            .iter()
            .filter(|(n, _)| n == "text_delta")
            .map(|(_, d)| d["text"].as_str().unwrap())
            .collect();
        let done = &events.last().unwrap().1;
        assert_eq!(done["output"], text.as_str());
        assert_eq!(done["output"], "17 + 25 = 42");
        assert_eq!(events[0].1["name"], "add");
        assert_eq!(events[1].1["ok"], true);
        if session {
            assert_eq!(done["session_id"], "streamed");
            assert_eq!(done["version"], 1);
        }
    }
    // The streamed turn was saved.
    let session: Value = c
        .get(format!(
            "{}/v1/agents/assistant/sessions/streamed",
            served.base
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(session["version"], 1);
}

#[tokio::test]
async fn a_failing_stream_ends_with_an_error_event() {
    let api = Api::builder()
        .agent("assistant", slow_agent(Duration::from_secs(5)))
        .request_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let served = serve(api).await;
    let response = client()
        .post(format!("{}/v1/agents/assistant/invoke", served.base))
        .header("accept", "text/event-stream")
        .json(&json!({"input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let events = parse_sse(&response.text().await.unwrap());
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(data["error"]["code"], "timeout");
    assert!(
        data["error"]["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
}

#[tokio::test]
async fn operations_routes_and_the_openapi_document() {
    let served = serve(with_demo().build().unwrap()).await;
    let c = client();
    let health: Value = c
        .get(format!("{}/healthz", served.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let ready = c
        .get(format!("{}/readyz", served.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["checks"]["sessions"], "ok");
    let metrics = c
        .get(format!("{}/metrics", served.base))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );

    let doc: Value = c
        .get(format!("{}/openapi.json", served.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/agents/{agent}/invoke", "post"),
        ("/v1/agents/{agent}/sessions/{session_id}/messages", "post"),
        ("/v1/agents/{agent}/sessions/{session_id}", "get"),
        ("/v1/agents/{agent}/sessions/{session_id}", "delete"),
        ("/v1/agents/{agent}/sessions/{session_id}/ws", "get"),
        ("/v1/chat/completions", "post"),
        ("/v1/models", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is documented"
        );
    }
    assert!(doc["components"]["schemas"]["InvokeRequest"].is_object());
    // Messages are described part by part, not as bare objects.
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["InvokeResponse"]["properties"]["messages"]["items"]["$ref"],
        "#/components/schemas/MessageDoc"
    );
    let parts = schemas["PartDoc"].to_string();
    for kind in ["\"text\"", "\"tool_call\"", "\"tool_result\""] {
        assert!(parts.contains(kind), "PartDoc lacks {kind}: {parts}");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert_eq!(served.api.openapi().paths.paths.len(), paths.len());
}
