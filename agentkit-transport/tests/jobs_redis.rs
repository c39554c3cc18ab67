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
