//! `POST /v1/chat/completions` speaks OpenAI's wire format (the official Python client is
//! exercised by `.ci/openai_client.py`); errors use OpenAI's error shape.

mod support;

use serde_json::{Value, json};
use support::*;

#[tokio::test]
async fn a_plain_completion() {
    let served = serve(with_demo().build().unwrap()).await;
    let response = client()
        .post(format!("{}/v1/chat/completions", served.base))
        .json(&json!({
            "model": "assistant",
            "messages": [
                {"role": "system", "content": "Be exact."},
                {"role": "user", "content": "What is 17 + 25?"}
            ],
            "temperature": 0.2
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "assistant");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], "17 + 25 = 42");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let usage = &body["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn a_streamed_completion_ends_with_usage_and_done() {
    let served = serve(with_demo().build().unwrap()).await;
    let text = client()
        .post(format!("{}/v1/chat/completions", served.base))
        .json(&json!({
            "model": "assistant",
            "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": [{"type": "text", "text": "What is 17 + 25?"}]}]
        }))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events = parse_sse(&text);
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<&Value> = events
        .iter()
        .map(|(_, d)| d)
        .filter(|d| d.is_object())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "17 + 25 = 42");
    let finish = chunks
        .iter()
        .find(|c| c["choices"][0]["finish_reason"] == "stop");
    assert!(finish.is_some());
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
}

/// A history with the tool calls an assistant made and their results (as OpenAI clients
/// send it back) reaches the agent whole; a tool message answering no call is a 400.
#[tokio::test]
async fn a_history_with_tool_calls_is_taken_whole() {
    let served = serve(with_demo().build().unwrap()).await;
    let url = format!("{}/v1/chat/completions", served.base);
    let history = json!([
        {"role": "user", "content": "What is 1 + 2?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_7", "type": "function", "function": {"name": "add", "arguments": "{\"a\":1,\"b\":2}"}}
        ]},
        {"role": "tool", "tool_call_id": "call_7", "content": "3"},
        {"role": "assistant", "content": "1 + 2 = 3"},
    ]);
    let mut messages = history.as_array().unwrap().clone();
    messages.push(json!({"role": "user", "content": "thanks"}));
    let response = client()
        .post(&url)
        .json(&json!({"model": "assistant", "messages": messages}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "You said: thanks");
    // Without the call it answers, the tool message is refused.
    let mut orphaned = history.as_array().unwrap().clone();
    orphaned.remove(1);
    orphaned.push(json!({"role": "user", "content": "thanks"}));
    let response = client()
        .post(&url)
        .json(&json!({"model": "assistant", "messages": orphaned}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("history[1]"),
        "{body}"
    );
}

#[tokio::test]
async fn errors_use_openais_shape() {
    let served = serve(with_demo().build().unwrap()).await;
    let c = client();
    let url = format!("{}/v1/chat/completions", served.base);
    let unknown = c
        .post(&url)
        .json(&json!({"model": "gpt-nope", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["code"], "not_found");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gpt-nope")
    );
    let no_user = c
        .post(&url)
        .json(&json!({"model": "assistant", "messages": [{"role": "system", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_user.status(), 400);
    let body: Value = no_user.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    // What the route cannot do as asked is refused, not answered with something else.
    for (field, value) in [
        ("n", json!(2)),
        (
            "tools",
            json!([{"type": "function", "function": {"name": "lookup", "parameters": {}}}]),
        ),
    ] {
        let mut body =
            json!({"model": "assistant", "messages": [{"role": "user", "content": "hi"}]});
        body[field] = value;
        let response = c.post(&url).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 400, "{field}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(
            body["error"]["message"].as_str().unwrap().contains(field),
            "{body}"
        );
    }
    let ok = c
        .post(&url)
        .json(&json!({"model": "assistant", "n": 1, "tools": [], "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200, "n = 1 and no tools are fine");
    let malformed = c
        .post(&url)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    let body: Value = malformed.json().await.unwrap();
    assert!(body["error"]["message"].is_string());

    let models: Value = c
        .get(format!("{}/v1/models", served.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "assistant");
}
