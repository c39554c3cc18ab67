//! The job queue conformance suite on Redis Streams (`REDIS_URL`, default loopback).

use std::sync::Arc;

use agentkit_transport::jobs::JobQueue;
use agentkit_transport::jobs::redis::RedisJobQueue;

agentkit_testkit::job_queue_conformance!(|name: String| async move {
    let url = agentkit_testkit::redis_url()?;
    let queue: Arc<dyn JobQueue> = Arc::new(
        RedisJobQueue::connect(&url, &name)
            .unwrap()
            .with_visibility_timeout(agentkit_testkit::jobs::VISIBILITY),
    );
    Some(queue)
});

/// Finished jobs' stream entries are trimmed away by the claims' housekeeping (a node at a
/// time, not deleted one by one); the depth stays right and the jobs stay readable.
#[tokio::test]
async fn acknowledged_entries_are_trimmed() {
    use std::time::Duration;

    use agentkit_core::Reply;
    use agentkit_store::redis::RedisClient;
    use agentkit_transport::jobs::{Finish, JobResult, JobStatus};

    let Some(url) = agentkit_testkit::redis_url() else {
        return;
    };
    let name = agentkit_testkit::unique("trim");
    let client = RedisClient::connect(&url, 4).unwrap();
    let queue = RedisJobQueue::new(client.clone(), &name);
    let stream = format!("agentkit:{{jobs:{name}}}:stream");
    let length = || {
        let (client, stream) = (client.clone(), stream.clone());
        async move {
            client
                .run(Duration::from_secs(2), |mut c| async move {
                    redis::cmd("XLEN")
                        .arg(&stream)
                        .query_async::<u64>(&mut c)
                        .await
                })
                .await
                .unwrap()
        }
    };
    let mut ids = Vec::new();
    for i in 0..450 {
        let spec = agentkit_testkit::jobs::spec("assistant", &format!("job {i}"));
        ids.push(queue.enqueue(spec).await.unwrap().job_id);
    }
    assert_eq!(queue.depth().await.unwrap(), 450);
    let waiting = queue
        .get(&ids[449])
        .await
        .unwrap()
        .expect("a queued job reads");
    assert_eq!(waiting.status, JobStatus::Queued);
    assert_eq!(waiting.attempts, 0);
    assert_eq!(waiting.spec.unwrap().input[0].text_content(), "job 449");
    assert!(waiting.created_at_ms > 0);
    // Claim and finish the first 400 only.
    let mut finished = 0;
    while finished < 400 {
        let want = (400 - finished).min(64);
        let deliveries = queue
            .claim("c", want, Duration::from_secs(1))
            .await
            .unwrap();
        for delivery in &deliveries {
            let result = JobResult::from(Reply {
                output: delivery.job.job_id.clone(),
                ..Reply::default()
            });
            queue
                .finish(delivery, Finish::Succeeded(result))
                .await
                .unwrap();
        }
        finished += deliveries.len();
    }
    assert_eq!(queue.depth().await.unwrap(), 50);
    // A claim after the housekeeping interval trims whole nodes below the oldest entry still
    // needed (claims above may have trimmed some already).
    tokio::time::sleep(Duration::from_millis(150)).await;
    let held = queue.claim("c", 1, Duration::from_secs(1)).await.unwrap();
    assert_eq!(held.len(), 1);
    let left = length().await;
    assert!((50..450).contains(&left), "{left} entries left");
    assert_eq!(queue.depth().await.unwrap(), 49);
    let done = queue
        .get(&ids[0])
        .await
        .unwrap()
        .expect("a finished job reads");
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.result.unwrap().output, ids[0]);
    assert_eq!(
        queue.get(&ids[449]).await.unwrap().unwrap().status,
        JobStatus::Queued
    );
    assert!(queue.get("1-0").await.unwrap().is_none());
    assert!(queue.get("not-an-entry").await.unwrap().is_none());
}
