//! The job queue conformance suite on the in-memory queue.

use std::sync::Arc;

use agentkit_transport::jobs::{JobQueue, MemoryJobQueue};

agentkit_testkit::job_queue_conformance!(|_name: String| async move {
    let queue: Arc<dyn JobQueue> =
        Arc::new(MemoryJobQueue::new().with_visibility_timeout(agentkit_testkit::jobs::VISIBILITY));
    Some(queue)
});

/// The in-memory queue knows more than the conformance suite asks (which checks that an end
/// wakes its callers): a job that ended returns at once, and one it does not know waits out
/// its time.
#[tokio::test]
async fn until_ended_returns_at_once_for_an_ended_job() {
    use std::time::Duration;

    use agentkit_testkit::jobs::{claim_one, job_result, spec};
    use agentkit_transport::jobs::Finish;

    let queue = Arc::new(MemoryJobQueue::new());
    let job = queue.enqueue(spec("assistant", "hi")).await.unwrap().job_id;
    let delivery = claim_one(queue.as_ref(), Duration::from_secs(2))
        .await
        .unwrap();
    queue
        .finish(&delivery, Finish::Succeeded(job_result("done")))
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        queue.until_ended(&job, Duration::from_secs(600)),
    )
    .await
    .expect("an ended job returns at once");
    let unknown = tokio::time::timeout(
        Duration::from_millis(100),
        queue.until_ended("no-such-job", Duration::from_secs(600)),
    )
    .await;
    assert!(unknown.is_err(), "an unknown job waits out its time");
}
