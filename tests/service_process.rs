//! The bundled service as a real process: SIGTERM stops accepting, lets the request and the
//! stream in flight finish, and the process exits 0.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The example binary cargo built next to this test (`target/<profile>/examples/NAME`).
pub fn example(name: &str) -> PathBuf {
    let mut dir = std::env::current_exe().expect("test binary path");
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: cargo test builds examples",
        path.display()
    );
    path
}

struct Service {
    child: Child,
    base: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(envs: &[(&str, &str)]) -> Service {
    let mut command = Command::new(example("service"));
    command
        .env("AGENTKIT_ADDR", "127.0.0.1:0")
        .env_remove("OPENAI_API_KEY")
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL")
        .env_remove("AGENTKIT_API_KEYS")
        .env_remove("AGENTKIT_JWT_SECRET")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in envs {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("the service starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    // Log lines (JSON) may come first; the address line is plain text.
    let base = loop {
        let line = lines
            .next()
            .expect("the service printed its address")
            .unwrap();
        if let Some(base) = line.strip_prefix("listening on ") {
            break base.to_owned();
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::mem::forget(rx);
    Service { child, base }
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_work_then_exits_zero() {
    let mut service = start(&[
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
    sigterm(&service.child);
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
