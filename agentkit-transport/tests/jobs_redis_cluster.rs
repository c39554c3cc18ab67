//! The job queue conformance suite on a Redis Cluster: three primaries this test process
//! starts on loopback (see `agentkit_testkit::cluster`). A queue's keys share one hash tag.

use std::sync::Arc;

use agentkit_store::redis::RedisClient;
use agentkit_transport::jobs::JobQueue;
use agentkit_transport::jobs::redis::RedisJobQueue;

agentkit_testkit::job_queue_conformance!(|name: String| async move {
    let urls = agentkit_testkit::redis_cluster_urls()?;
    let client = RedisClient::connect(&urls, 8).expect("cluster client");
    assert!(client.is_cluster());
    let queue: Arc<dyn JobQueue> = Arc::new(
        RedisJobQueue::new(client, &name)
            .with_visibility_timeout(agentkit_testkit::jobs::VISIBILITY),
    );
    Some(queue)
});
