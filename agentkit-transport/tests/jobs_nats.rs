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
