//! Serving an API on a real loopback port for the tests.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use agentkit_core::model::ScriptedModel;
use agentkit_core::{Agent, Executor};
use agentkit_transport::{Api, ApiBuilder};

/// A running service: its base URL; dropped with the test's runtime.
pub struct Served {
    pub base: String,
    pub api: Api,
}

pub async fn serve(api: Api) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = api.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Served {
        base: format!("http://{addr}"),
        api,
    }
}

pub fn demo_agent() -> Agent {
    agentkit_core::demo::assistant_builder(Arc::new(ScriptedModel::demo()))
        .build()
        .unwrap()
}

pub fn slow_agent(latency: Duration) -> Agent {
    let model = ScriptedModel::builder()
        .demo_rules()
        .latency(latency)
        .build();
    agentkit_core::demo::assistant_builder(Arc::new(model))
        .build()
        .unwrap()
}

pub fn with_demo() -> ApiBuilder {
    Api::builder().agent("assistant", demo_agent())
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Asserts the JSON error shape and returns its code; the request id matches the header.
pub async fn error_code(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status().as_u16(), status, "status");
    let header_id = response
        .headers()
        .get("x-request-id")
        .expect("x-request-id on every response")
        .to_str()
        .unwrap()
        .to_owned();
    let body: serde_json::Value = response.json().await.expect("a JSON error body");
    let error = &body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(error["request_id"], header_id.as_str(), "{body}");
    error["code"].as_str().expect("a code").to_owned()
}

pub fn boxed(agent: impl Executor + 'static) -> agentkit_core::BoxExecutor {
    agentkit_core::BoxExecutor::new(agent)
}

/// Server-sent events of a response body as (name, JSON data).
pub fn parse_sse(text: &str) -> Vec<(String, serde_json::Value)> {
    let mut events = Vec::new();
    for block in text.split("\n\n") {
        let mut name = "message".to_owned();
        let mut data = String::new();
        for line in block.lines() {
            if let Some(n) = line.strip_prefix("event:") {
                name = n.trim().to_owned();
            } else if let Some(d) = line.strip_prefix("data:") {
                data.push_str(d.trim_start());
            }
        }
        if !data.is_empty() {
            let value = serde_json::from_str(&data).unwrap_or(serde_json::Value::String(data));
            events.push((name, value));
        }
    }
    events
}
