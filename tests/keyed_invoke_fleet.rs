//! Two `service` processes and a `worker` on one Redis queue: a keyed invoke whose caller
//! gave up on one instance, sent again with its key to the other, is answered from the same
//! job, which ran once.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::process::Service;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_invoke_retried_on_another_instance_answers_from_the_same_job() {
    let Some(url) = agentkit_testkit::services::redis_url() else {
        return;
    };
    // A queue of this test's own, so no other test's workers take its job.
    let queue = agentkit_testkit::unique("keyed-fleet");
    let env = [
        ("REDIS_URL", url.as_str()),
        ("AGENTKIT_QUEUE", queue.as_str()),
        // Two model calls of 400 ms: the first caller gives up long before the run ends.
        ("AGENTKIT_SCRIPTED_LATENCY_MS", "400"),
        ("AGENTKIT_KEYED_INVOKES_AS_JOBS", "true"),
        ("RUST_LOG", "warn"),
    ];
    let _worker = Worker::start(&env);
    let a = Service::start(&env);
    let b = Service::start(&env);
    let client = reqwest::Client::new();
    let key = agentkit_testkit::unique("order");
    let body = json!({"input": "What is 5 + 5?"});
    let invoke = |base: &str, wait: Duration| {
        client
            .post(format!("{base}/v1/agents/assistant/invoke"))
            .header("idempotency-key", key.as_str())
            .json(&body)
            .timeout(wait)
            .send()
    };

    let gave_up = invoke(&a.base, Duration::from_millis(200)).await;
    assert!(
        gave_up.as_ref().is_err_and(reqwest::Error::is_timeout),
        "{gave_up:?}"
    );
    let answer = invoke(&b.base, Duration::from_secs(15)).await.unwrap();
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["output"], "5 + 5 = 10", "{answer}");

    // The key names one job, which ran once: the same request submitted as a job with the
    // key finds it, finished.
    let job = client
        .post(format!("{}/v1/agents/assistant/jobs", a.base))
        .header("idempotency-key", key.as_str())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(job.status(), 202);
    let job: Value = job.json().await.unwrap();
    assert_eq!(job["status"], "succeeded", "{job}");
    let doc: Value = client
        .get(format!(
            "{}/v1/jobs/{}",
            b.base,
            job["job_id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["attempts"], 1, "{doc}");
    assert_eq!(doc["result"]["output"], answer["output"]);
}

/// The `worker` example as a child process; killed when dropped.
struct Worker(Child);

impl Worker {
    fn start(envs: &[(&str, &str)]) -> Self {
        let mut command = Command::new(support::process::example("worker"));
        command
            .env_remove("NATS_URL")
            .env_remove("DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in envs {
            command.env(k, v);
        }
        Self(command.spawn().expect("the worker starts"))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
