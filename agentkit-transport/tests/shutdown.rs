//! Graceful shutdown in process: stop accepting, finish the request in flight, return.
//! (The bundled service's SIGTERM handling is tested on the real process in the facade's tests.)

mod support;

use std::time::Duration;

use agentkit_transport::Api;
use serde_json::json;
use support::*;

#[tokio::test]
async fn shutdown_drains_the_request_in_flight() {
    let api = Api::builder()
        .agent("assistant", slow_agent(Duration::from_millis(600)))
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(agentkit_transport::serve(
        listener,
        api.router(),
        async move {
            let _ = stopped.await;
        },
        Duration::from_secs(10),
    ));
    let in_flight = tokio::spawn(async move {
        client()
            .post(format!("http://{addr}/v1/agents/assistant/invoke"))
            .json(&json!({"input": "What is 1 + 1?"}))
            .send()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(()).unwrap();
    let response = in_flight.await.unwrap();
    assert_eq!(response.status(), 200, "the request in flight finished");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["output"], "1 + 1 = 2");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve returned after draining")
        .unwrap()
        .unwrap();
    let refused = reqwest::Client::new()
        .get(format!("http://{addr}/healthz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(refused.is_err(), "no longer accepting");
}

#[tokio::test]
async fn the_drain_timeout_bounds_shutdown() {
    let api = Api::builder()
        .agent("assistant", slow_agent(Duration::from_secs(30)))
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(agentkit_transport::serve(
        listener,
        api.router(),
        async move {
            let _ = stopped.await;
        },
        Duration::from_millis(300),
    ));
    let _stuck = tokio::spawn(async move {
        let _ = client()
            .post(format!("http://{addr}/v1/agents/assistant/invoke"))
            .json(&json!({"input": "hi"}))
            .send()
            .await;
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(()).unwrap();
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
}
