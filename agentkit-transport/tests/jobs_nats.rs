//! The job queue conformance suite on NATS JetStream (`NATS_URL`, default loopback).

use std::sync::Arc;

use agentkit_transport::jobs::JobQueue;
use agentkit_transport::jobs::nats::NatsJobQueue;

agentkit_testkit::job_queue_conformance!(|name: String| async move {
    let url = agentkit_testkit::nats_url()?;
    let queue = NatsJobQueue::connect_with(&url, &name, agentkit_testkit::jobs::VISIBILITY)
        .await
        .unwrap();
    Some(Arc::new(queue) as Arc<dyn JobQueue>)
});

/// A queue name no other test uses, valid for NATS.
fn queue_name(prefix: &str) -> String {
    agentkit_testkit::unique(prefix).replace(['.', ':'], "-")
}

/// A submission whose first claim died before writing the job's document (a first delivery
/// writes none until the job ends) is still run: the next delivery makes the document from
/// the message, counting the dead claim as an attempt.
#[tokio::test]
async fn a_claim_that_died_before_marking_loses_nothing() {
    use std::time::Duration;

    use agentkit_transport::jobs::JobStatus;
    use futures::StreamExt;

    let Some(url) = agentkit_testkit::nats_url() else {
        return;
    };
    let name = queue_name("died");
    let queue = NatsJobQueue::connect_with(&url, &name, Duration::from_millis(500))
        .await
        .unwrap();
    let job = queue
        .enqueue(agentkit_testkit::jobs::spec("assistant", "hello"))
        .await
        .unwrap();
    assert_eq!(
        queue.get(&job.job_id).await.unwrap().unwrap().status,
        JobStatus::Queued
    );
    // A claim that takes the message and dies before it writes anything.
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(format!("AGENTKIT_JOBS_{name}"))
        .await
        .unwrap()
        .get_consumer("workers")
        .await
        .unwrap();
    let mut taken = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .unwrap();
    assert!(
        taken.next().await.is_some(),
        "the dead claim took the message"
    );
    drop(taken);
    // Past the visibility timeout it comes back; this claim marks it from the message.
    let delivery = agentkit_testkit::jobs::claim_one(&queue, Duration::from_secs(3))
        .await
        .expect("redelivered");
    assert_eq!(delivery.job.job_id, job.job_id);
    assert_eq!(
        delivery.attempt, 2,
        "the claim that died counts as an attempt"
    );
    let doc = queue.get(&job.job_id).await.unwrap().unwrap();
    assert_eq!(doc.status, JobStatus::Running);
    assert_eq!(doc.spec.unwrap().input[0].text_content(), "hello");
    assert!(queue.get("no.such>job").await.unwrap().is_none());
}

/// A queue opened on the stream of an earlier version (one subject, messages carrying a job
/// id whose document is in the bucket) takes the per-job subjects too, and runs the old
/// messages as well as new ones.
#[tokio::test]
async fn messages_of_an_earlier_version_still_run() {
    use std::time::Duration;

    use agentkit_transport::jobs::JobStatus;

    let Some(url) = agentkit_testkit::nats_url() else {
        return;
    };
    let name = queue_name("older");
    let client = async_nats::connect(&url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let subject = format!("agentkit.jobs.{name}");
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: format!("AGENTKIT_JOBS_{name}"),
        subjects: vec![subject.clone()],
        retention: async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await
    .unwrap();
    let queue = NatsJobQueue::connect_with(&url, &name, Duration::from_secs(1))
        .await
        .unwrap();
    // An old submission: the document in the bucket, the job id on the queue's subject.
    let old_id = "0123456789abcdef0123456789abcdef";
    let kv = js
        .get_key_value(format!("AGENTKIT_JOBS_{name}"))
        .await
        .unwrap();
    let spec = agentkit_testkit::jobs::spec("assistant", "old");
    let document = serde_json::json!({
        "spec": spec, "status": "queued", "attempts": 0,
        "created_at_ms": 1, "updated_at_ms": 1,
    });
    kv.create(format!("job.{old_id}"), document.to_string().into())
        .await
        .unwrap();
    js.publish(subject, old_id.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let new = queue
        .enqueue(agentkit_testkit::jobs::spec("assistant", "new"))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let delivery = agentkit_testkit::jobs::claim_one(&queue, Duration::from_secs(3))
            .await
            .expect("both run");
        assert_eq!(delivery.attempt, 1);
        seen.push(delivery.job.job_id.clone());
    }
    seen.sort();
    let mut expected = vec![old_id.to_owned(), new.job_id];
    expected.sort();
    assert_eq!(seen, expected);
    assert_eq!(
        queue.get(old_id).await.unwrap().unwrap().status,
        JobStatus::Running
    );
}
