//! The job queue conformance suite on the in-memory queue.

use std::sync::Arc;

use agentkit_transport::jobs::{JobQueue, MemoryJobQueue};

agentkit_testkit::job_queue_conformance!(|_name: String| async move {
    let queue: Arc<dyn JobQueue> =
        Arc::new(MemoryJobQueue::new().with_visibility_timeout(agentkit_testkit::jobs::VISIBILITY));
    Some(queue)
});
