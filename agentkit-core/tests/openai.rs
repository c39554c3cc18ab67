//! The OpenAI-compatible client against a real local HTTP server speaking the API (no network).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentkit_core::model::openai::OpenAiModel;
use agentkit_core::model::{Model, ModelEvent, ModelRequest, ResponseBuilder, RetryModel};
use agentkit_core::tool::{ToolSpec, tool_fn};
use agentkit_core::{
    Agent, Backoff, Context, ErrorKind, Executor, Invocation, Message, StopReason, TraceContext,
};
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};

type Responder = Arc<dyn Fn(usize, &Value) -> Response + Send + Sync>;

#[derive(Clone)]
struct Recorded {
    headers: HeaderMap,
    body: Value,
}

/// A local server speaking chat completions; `respond(n, body)` answers request number `n`.
struct FakeOpenAi {
    base_url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl FakeOpenAi {
    async fn start(respond: impl Fn(usize, &Value) -> Response + Send + Sync + 'static) -> Self {
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let responder: Responder = Arc::new(respond);
        let recorded = requests.clone();
        let app = axum::Router::new().route(
            "/v1/chat/completions",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let recorded = recorded.clone();
                let responder = responder.clone();
                async move {
                    let body: Value = serde_json::from_slice(&body).expect("client sent JSON");
                    let n = {
                        let mut all = recorded.lock().unwrap();
                        all.push(Recorded {
                            headers,
                            body: body.clone(),
                        });
                        all.len() - 1
                    };
                    responder(n, &body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            base_url: format!("http://{addr}/v1"),
            requests,
        }
    }

    fn model(&self) -> OpenAiModel {
        OpenAiModel::builder()
            .base_url(&self.base_url)
            .api_key("sk-test-dummy")
            .model("gpt-4o-mini")
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn completion(message: Value, finish: &str) -> Response {
    json_response(
        StatusCode::OK,
        json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17,
                      "prompt_tokens_details": {"cached_tokens": 4}}
        }),
    )
}

/// An SSE body delivered in the given raw pieces, with a pause between them, so the client
/// sees events split across reads.
fn sse(pieces: Vec<String>) -> Response {
    let stream = futures::stream::iter(pieces).then(|piece| async move {
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok::<_, Infallible>(Bytes::from(piece))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn tools() -> Vec<ToolSpec> {
    vec![ToolSpec::new(
        "add",
        "Adds",
        json!({"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}),
    )]
}

#[tokio::test]
async fn a_plain_reply_with_usage_headers_and_trace() {
    let server = FakeOpenAi::start(|_, _| {
        completion(json!({"role": "assistant", "content": "Hello!"}), "stop")
    })
    .await;
    let model = server.model();
    let messages = [Message::user("Hi")];
    let mut request = ModelRequest::new(&messages);
    request.system = Some("Be brief.");
    request.max_tokens = Some(50);
    let trace =
        TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
    let cx = Context::new().with_request_id("req-1").with_trace(trace);
    let response = model.complete(&request, &cx).await.unwrap();

    assert_eq!(response.message.text_content(), "Hello!");
    assert_eq!(response.stop_reason, StopReason::EndTurn);
    assert_eq!(response.usage.input_tokens, 12);
    assert_eq!(response.usage.output_tokens, 5);
    assert_eq!(response.usage.cached_input_tokens, 4);
    assert_eq!(response.model.as_deref(), Some("gpt-4o-mini-2024-07-18"));

    let sent = &server.requests()[0];
    assert_eq!(sent.headers["authorization"], "Bearer sk-test-dummy");
    assert_eq!(sent.headers["x-request-id"], "req-1");
    assert_eq!(
        sent.headers["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(sent.body["model"], "gpt-4o-mini");
    assert_eq!(sent.body["max_tokens"], 50);
    assert_eq!(
        sent.body["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(
        sent.body["messages"][1],
        json!({"role": "user", "content": "Hi"})
    );
    assert!(sent.body.get("tools").is_none());
    assert!(sent.body.get("stream").is_none());
}

#[tokio::test]
async fn tool_calls_round_trip_through_an_agent() {
    let server = FakeOpenAi::start(|n, _| match n {
        0 => completion(
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_abc", "type": "function", "function": {"name": "add", "arguments": "{\"a\":17,\"b\":25}"}}
            ]}),
            "tool_calls",
        ),
        _ => completion(json!({"role": "assistant", "content": "17 + 25 = 42"}), "stop"),
    })
    .await;
    #[derive(serde::Deserialize, schemars::JsonSchema)]
    struct AddArgs {
        a: f64,
        b: f64,
    }
    let agent = Agent::builder()
        .model(server.model())
        .tool(tool_fn(
            "add",
            "Adds two numbers",
            |x: AddArgs| async move { Ok::<_, Infallible>(x.a + x.b) },
        ))
        .build()
        .unwrap();
    let reply = agent
        .execute(Invocation::text("What is 17 + 25?"))
        .await
        .unwrap();
    assert_eq!(reply.output, "17 + 25 = 42");
    assert_eq!(reply.tool_calls[0].id, "call_abc");
    assert_eq!(reply.usage.input_tokens, 24, "usage summed over both calls");
    assert!(reply.cost_usd > 0.0, "priced as gpt-4o-mini");

    let requests = server.requests();
    let first = &requests[0].body;
    assert_eq!(first["tools"][0]["type"], "function");
    assert_eq!(first["tools"][0]["function"]["name"], "add");
    assert_eq!(first["tool_choice"], "auto");
    let second = &requests[1].body["messages"];
    assert_eq!(second[1]["role"], "assistant");
    assert_eq!(second[1]["content"], Value::Null);
    assert_eq!(second[1]["tool_calls"][0]["id"], "call_abc");
    assert_eq!(
        second[1]["tool_calls"][0]["function"]["arguments"],
        "{\"a\":17,\"b\":25}"
    );
    assert_eq!(
        second[2],
        json!({"role": "tool", "content": "42.0", "tool_call_id": "call_abc"})
    );
}

fn chunk(delta: Value, finish: Option<&str>) -> String {
    let body = json!({"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o-mini-2024-07-18",
                      "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {body}\n\n")
}

#[tokio::test]
async fn streaming_joins_tool_arguments_split_over_chunks_and_reports_usage() {
    let server = FakeOpenAi::start(|_, _| {
        let mut events = vec![
            chunk(json!({"role": "assistant", "content": "Let me "}), None),
            chunk(json!({"content": "add."}), None),
            chunk(json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "add", "arguments": ""}}]}), None),
            chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]}), None),
            chunk(json!({"tool_calls": [{"index": 1, "id": "call_2", "type": "function", "function": {"name": "add", "arguments": "{\"a\":3,"}}]}), None),
            chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "1,\"b\":2}"}}]}), None),
            chunk(json!({"tool_calls": [{"index": 1, "function": {"arguments": "\"b\":4}"}}]}), None),
            chunk(json!({}), Some("tool_calls")),
            format!("data: {}\n\n", json!({"id": "c", "choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 9}})),
            "data: [DONE]\n\n".to_owned(),
        ];
        // Cut one event in the middle to prove the SSE parser buffers across reads.
        let cut = events.remove(3);
        let (a, b) = cut.split_at(cut.len() / 2);
        events.insert(3, b.to_owned());
        events.insert(3, a.to_owned());
        sse(events)
    })
    .await;
    let model = server.model();
    let messages = [Message::user("1+2 and 3+4")];
    let tools = tools();
    let mut request = ModelRequest::new(&messages);
    request.tools = &tools;
    let mut stream = model.stream(&request, &Context::new()).await.unwrap();
    let mut builder = ResponseBuilder::new();
    let mut saw_usage = false;
    let mut deltas = 0;
    while let Some(event) = stream.next().await {
        let event = event.unwrap();
        match &event {
            ModelEvent::Usage(u) => {
                saw_usage = true;
                assert_eq!((u.input_tokens, u.output_tokens), (30, 9));
            }
            ModelEvent::ToolCallDelta { .. } => deltas += 1,
            _ => {}
        }
        builder.push(&event).unwrap();
    }
    assert!(saw_usage, "usage arrives in the stream");
    assert!(deltas >= 5);
    let response = builder.finish().unwrap();
    assert_eq!(response.message.text_content(), "Let me add.");
    let calls: Vec<_> = response.message.tool_calls().collect();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        (calls[0].id.as_str(), calls[0].arguments.as_str()),
        ("call_1", r#"{"a":1,"b":2}"#)
    );
    assert_eq!(
        (calls[1].id.as_str(), calls[1].arguments.as_str()),
        ("call_2", r#"{"a":3,"b":4}"#)
    );
    assert_eq!(response.stop_reason, StopReason::ToolUse);
    assert_eq!(response.model.as_deref(), Some("gpt-4o-mini-2024-07-18"));

    let sent = &server.requests()[0].body;
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn rate_limit_with_retry_after_is_honoured_then_succeeds() {
    let server = FakeOpenAi::start(|n, _| match n {
        0 => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            axum::Json(json!({"error": {"message": "Rate limit reached", "type": "requests"}})),
        )
            .into_response(),
        _ => completion(json!({"role": "assistant", "content": "ok"}), "stop"),
    })
    .await;

    let messages = [Message::user("Hi")];
    let request = ModelRequest::new(&messages);
    let bare = server
        .model()
        .complete(&request, &Context::new())
        .await
        .unwrap_err();
    assert_eq!(bare.kind(), ErrorKind::RateLimited);
    assert_eq!(bare.retry_after(), Some(Duration::from_secs(1)));
    assert!(bare.message().contains("Rate limit reached"));

    let server = FakeOpenAi::start(|n, _| match n {
        0 => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            "slow down",
        )
            .into_response(),
        _ => completion(json!({"role": "assistant", "content": "ok"}), "stop"),
    })
    .await;
    let model = RetryModel::new(server.model()).with_backoff(
        Backoff::new()
            .max_attempts(3)
            .base(Duration::from_millis(1)),
    );
    let started = Instant::now();
    let response = model.complete(&request, &Context::new()).await.unwrap();
    assert_eq!(response.message.text_content(), "ok");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited as the server asked"
    );
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn server_errors_are_retried_until_attempts_run_out() {
    let server = FakeOpenAi::start(|_, _| {
        (StatusCode::INTERNAL_SERVER_ERROR, "upstream exploded").into_response()
    })
    .await;
    let model = RetryModel::new(server.model()).with_backoff(
        Backoff::new()
            .max_attempts(3)
            .base(Duration::from_millis(5)),
    );
    let messages = [Message::user("Hi")];
    let error = model
        .complete(&ModelRequest::new(&messages), &Context::new())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable);
    assert!(error.message().contains("500"), "{error}");
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test]
async fn client_errors_map_to_their_kinds() {
    let server = FakeOpenAi::start(|n, _| {
        let status = [
            StatusCode::BAD_REQUEST,
            StatusCode::UNAUTHORIZED,
            StatusCode::FORBIDDEN,
        ][n % 3];
        json_response(status, json!({"error": {"message": "nope"}}))
    })
    .await;
    let model = server.model();
    let messages = [Message::user("Hi")];
    let request = ModelRequest::new(&messages);
    let kinds: Vec<ErrorKind> = [
        model
            .complete(&request, &Context::new())
            .await
            .unwrap_err()
            .kind(),
        model
            .complete(&request, &Context::new())
            .await
            .unwrap_err()
            .kind(),
        model
            .complete(&request, &Context::new())
            .await
            .unwrap_err()
            .kind(),
    ]
    .into();
    assert_eq!(
        kinds,
        [
            ErrorKind::InvalidInput,
            ErrorKind::Unauthenticated,
            ErrorKind::PermissionDenied
        ]
    );
}

#[tokio::test]
async fn malformed_bodies_are_clear_errors() {
    let server = FakeOpenAi::start(|n, _| match n {
        0 => (
            StatusCode::OK,
            [("content-type", "application/json")],
            "{\"choices\": [ {not json",
        )
            .into_response(),
        1 => json_response(StatusCode::OK, json!({"choices": []})),
        _ => sse(vec![
            "data: {\"choices\": [{\"delta\": {\"content\": 5}}]}\n\n".to_owned(),
        ]),
    })
    .await;
    let model = server.model();
    let messages = [Message::user("Hi")];
    let request = ModelRequest::new(&messages);
    for _ in 0..2 {
        let error = model.complete(&request, &Context::new()).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Unavailable);
        assert!(error.message().contains("malformed"), "{error}");
    }
    let mut stream = model.stream(&request, &Context::new()).await.unwrap();
    let error = stream.next().await.unwrap().unwrap_err();
    assert!(error.message().contains("malformed"), "{error}");
}

#[tokio::test]
async fn a_stream_cut_short_is_an_error() {
    let server = FakeOpenAi::start(|_, _| sse(vec![chunk(json!({"content": "Hel"}), None)])).await;
    let messages = [Message::user("Hi")];
    let mut stream = server
        .model()
        .stream(&ModelRequest::new(&messages), &Context::new())
        .await
        .unwrap();
    assert!(matches!(
        stream.next().await,
        Some(Ok(ModelEvent::TextDelta(_)))
    ));
    let error = stream.next().await.unwrap().unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable);
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket); // accept, read nothing, answer nothing
        }
    });
    let model = OpenAiModel::builder()
        .base_url(format!("http://{addr}/v1"))
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let messages = [Message::user("Hi")];
    let started = Instant::now();
    let error = model
        .complete(&ModelRequest::new(&messages), &Context::new())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Timeout);
    assert!(started.elapsed() < Duration::from_secs(3));

    // The request's own deadline is shorter than the client's timeout: it wins.
    let model = OpenAiModel::builder()
        .base_url(format!("http://{addr}/v1"))
        .build()
        .unwrap();
    let cx = Context::new().with_timeout(Duration::from_millis(100));
    let started = Instant::now();
    let error = model
        .stream(&ModelRequest::new(&messages), &cx)
        .await
        .err()
        .unwrap();
    assert_eq!(error.kind(), ErrorKind::Timeout);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn nothing_listening_is_unavailable_and_debug_hides_the_key() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let model = OpenAiModel::builder()
        .base_url(format!("http://{addr}/v1"))
        .api_key("sk-live-secret-value")
        .build()
        .unwrap();
    let messages = [Message::user("Hi")];
    let error = model
        .complete(&ModelRequest::new(&messages), &Context::new())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable);
    assert!(error.is_retryable());
    assert!(!format!("{model:?}").contains("sk-live-secret-value"));
    assert!(!format!("{error:?}").contains("sk-live-secret-value"));
    assert!(OpenAiModel::builder().base_url("ftp://x").build().is_err());
}

/// A key kept in a file (as a mounted secret) is rotated while the client runs: the call
/// made with the old key is refused, and the next one carries the new key, without a new
/// client.
#[tokio::test]
async fn a_rotated_key_file_takes_effect_without_a_restart() {
    use agentkit_core::secret::{CachedSecret, FileSecrets};

    let dir = std::env::temp_dir().join(format!(
        "agentkit-openai-key-{}",
        agentkit_core::generate_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("openai-key"), "sk-dummy-old\n").unwrap();
    let accepted = Arc::new(Mutex::new("Bearer sk-dummy-old".to_owned()));
    // A provider that accepts only the current key.
    let app_accepts = accepted.clone();
    let gate = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |headers: HeaderMap| {
            let accepted = app_accepts.clone();
            async move {
                let sent = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                if sent == *accepted.lock().unwrap() {
                    completion(json!({"role": "assistant", "content": "ok"}), "stop")
                } else {
                    json_response(
                        StatusCode::UNAUTHORIZED,
                        json!({"error": {"message": "invalid key"}}),
                    )
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, gate).await.unwrap() });

    let key = CachedSecret::new(
        Arc::new(FileSecrets::new(&dir)),
        "openai-key",
        Duration::from_secs(3600),
    );
    let model = OpenAiModel::builder()
        .base_url(format!("http://{addr}/v1"))
        .api_key_secret(key)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    assert!(
        !format!("{model:?}").contains("sk-dummy"),
        "the key is not printed"
    );
    let messages = [Message::user("Hi")];
    let request = ModelRequest::new(&messages);
    let cx = Context::new();
    let call = || model.complete(&request, &cx);
    assert_eq!(call().await.unwrap().message.text_content(), "ok");

    // Rotation: the provider now takes only the new key, and the file holds it.
    std::fs::write(dir.join("openai-key"), "sk-dummy-new\n").unwrap();
    *accepted.lock().unwrap() = "Bearer sk-dummy-new".to_owned();
    let refused = call().await.unwrap_err();
    assert_eq!(
        refused.kind(),
        ErrorKind::Unauthenticated,
        "the cached old key"
    );
    assert_eq!(
        call().await.unwrap().message.text_content(),
        "ok",
        "the new key, same client"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The embedder posts the texts to `/embeddings` with the key, puts the vectors back in input
/// order, and refuses answers of the wrong shape.
#[tokio::test]
async fn embeddings_come_back_in_order_and_of_the_declared_dimension() {
    use agentkit_core::model::Embedder;

    let seen: Arc<Mutex<Vec<(HeaderMap, Value)>>> = Arc::default();
    let app = {
        let seen = seen.clone();
        axum::Router::new().route(
            "/v1/embeddings",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let seen = seen.clone();
                async move {
                    let body: Value = serde_json::from_slice(&body).unwrap();
                    let texts = body["input"].as_array().unwrap().len();
                    seen.lock().unwrap().push((headers, body.clone()));
                    if body["input"][0] == "short" {
                        return json_response(
                            StatusCode::OK,
                            json!({"data": [{"index": 0, "embedding": [1.0]}]}),
                        );
                    }
                    // Answered out of order, as the API allows.
                    let data: Vec<Value> = (0..texts)
                        .rev()
                        .map(|i| json!({"index": i, "embedding": [i as f32, 1.0, 0.5]}))
                        .collect();
                    json_response(StatusCode::OK, json!({"data": data, "model": "emb"}))
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let model = OpenAiModel::builder()
        .base_url(format!("http://{addr}/v1"))
        .api_key("sk-test-dummy")
        .build()
        .unwrap();
    let embedder = model
        .embedder("text-embedding-3-small", 3)
        .request_dimensions();
    let texts = ["a".to_owned(), "b".to_owned(), "c".to_owned()];
    let vectors = embedder.embed(&texts, &Context::new()).await.unwrap();
    assert_eq!(vectors.len(), 3);
    assert_eq!(vectors[2], [2.0, 1.0, 0.5], "in input order");
    let (headers, body) = seen.lock().unwrap()[0].clone();
    assert_eq!(headers["authorization"], "Bearer sk-test-dummy");
    assert_eq!(body["model"], "text-embedding-3-small");
    assert_eq!(body["dimensions"], 3);

    let wrong = embedder
        .embed(&["short".to_owned()], &Context::new())
        .await
        .unwrap_err();
    assert_eq!(wrong.kind(), ErrorKind::Unavailable);
    assert!(wrong.message().contains("1 dimensions, not 3"), "{wrong}");
}
