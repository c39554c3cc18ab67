//! The bundled service as a real process: SIGTERM stops accepting, lets the request and the
//! stream in flight finish, and the process exits 0.

mod support;

use std::time::{Duration, Instant};

use support::process::Service;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_work_then_exits_zero() {
    let mut service = Service::start(&[
        ("AGENTKIT_SCRIPTED_LATENCY_MS", "400"),
        ("AGENTKIT_DRAIN_TIMEOUT_MS", "10000"),
    ]);
    let client = reqwest::Client::new();
    let url = format!("{}/v1/agents/assistant/invoke", service.base);
    assert_eq!(
        client
            .get(format!("{}/healthz", service.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let plain = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move {
            client
                .post(url)
                .json(&serde_json::json!({"input": "What is 17 + 25?"}))
                .send()
                .await
                .unwrap()
        }
    });
    let streamed = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move {
            client
                .post(url)
                .header("accept", "text/event-stream")
                .json(&serde_json::json!({"input": "What is 1 + 2?"}))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(250)).await;
    service.sigterm();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let refused = reqwest::Client::new()
        .get(format!("{}/healthz", service.base))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(refused.is_err(), "no new connections after SIGTERM");

    let response = plain.await.unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["output"], "17 + 25 = 42");
    let events = streamed.await.unwrap();
    assert!(
        events.contains("event: done"),
        "the open stream finished: {events}"
    );
    assert!(events.contains("1 + 2 = 3"));

    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = service.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the service did not exit after draining"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_job_runs_on_the_embedded_worker_as_a_turn() {
    let service = Service::start(&[]);
    let client = reqwest::Client::new();
    let accepted: serde_json::Value = client
        .post(format!("{}/v1/agents/assistant/jobs", service.base))
        .json(&serde_json::json!({"input": "What is 6 + 7?", "session_id": "job-chat"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job_url = format!(
        "{}/v1/jobs/{}",
        service.base,
        accepted["job_id"].as_str().unwrap()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let doc = loop {
        let doc: serde_json::Value = client
            .get(&job_url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if doc["status"] != "queued" && doc["status"] != "running" {
            break doc;
        }
        assert!(Instant::now() < deadline, "the job did not finish: {doc}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(doc["status"], "succeeded", "{doc}");
    let session: serde_json::Value = client
        .get(format!(
            "{}/v1/agents/assistant/sessions/job-chat",
            service.base
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(session["version"], 1, "{session}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_expire_after_agentkit_session_ttl_ms() {
    let service = Service::start(&[("AGENTKIT_SESSION_TTL_MS", "1500")]);
    let client = reqwest::Client::new();
    let session = |id: &str| format!("{}/v1/agents/assistant/sessions/{id}", service.base);
    for id in ["kept", "left"] {
        let sent = client
            .post(format!("{}/messages", session(id)))
            .json(&serde_json::json!({"input": "What is 2 + 2?"}))
            .send()
            .await
            .unwrap();
        assert_eq!(sent.status(), 200, "{}", sent.text().await.unwrap());
    }
    // `kept` is read within its TTL (which slides it); `left` is not touched again.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let read = client.get(session("kept")).send().await.unwrap();
        assert_eq!(read.status(), 200, "a session read within its TTL expired");
    }
    let gone = client.get(session("left")).send().await.unwrap();
    assert_eq!(gone.status(), 404, "{}", gone.text().await.unwrap());
}

#[test]
fn a_bad_session_ttl_stops_the_service_with_the_variable_named() {
    let output = std::process::Command::new(support::process::example("service"))
        .env("AGENTKIT_ADDR", "127.0.0.1:0")
        .env("AGENTKIT_SESSION_TTL_MS", "500")
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL")
        .env_remove("NATS_URL")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("AGENTKIT_SESSION_TTL_MS"), "{stderr}");
}
