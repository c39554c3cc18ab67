//! [`QueueExecutor`]: an executor that runs its invocations as jobs on a queue.

use std::sync::Arc;
use std::time::Duration;

use agentkit_core::{
    AgentEvent, Context, Error, ErrorKind, EventStream, Executor, IdempotencyKey, Invocation,
    Reply, Result,
};
use futures::StreamExt;

use super::{JobQueue, JobSpec, JobStatus};

/// Enqueues each invocation as a job for `agent` and awaits its result: agents calling each
/// other over a queue, with the queue's retries, dead-lettering and crash safety in between.
/// The wait is bounded by the invocation's deadline (or `max_wait`); a cancelled or timed-out
/// wait leaves the job to finish on its own. An invocation whose context carries an
/// [`IdempotencyKey`] submits with that key: called again with it (after a timeout, say), it
/// awaits the job the first call made instead of running another. A key that names a job of
/// another request (another agent, input, history or metadata) is a
/// [`Conflict`](ErrorKind::Conflict).
#[derive(Clone)]
pub struct QueueExecutor {
    queue: Arc<dyn JobQueue>,
    agent: String,
    max_wait: Duration,
}

impl std::fmt::Debug for QueueExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueExecutor")
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

impl QueueExecutor {
    /// Runs invocations as jobs of `agent` on `queue`.
    pub fn new(queue: Arc<dyn JobQueue>, agent: impl Into<String>) -> Self {
        Self {
            queue,
            agent: agent.into(),
            max_wait: Duration::from_secs(600),
        }
    }

    /// The longest to wait for a result when the invocation has no deadline (default 10 min).
    #[must_use]
    pub fn with_max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }
}

impl QueueExecutor {
    /// Enqueues the invocation as a job (a retried call with the same key finds the job the
    /// first one made); its id, and the context to await it under.
    async fn submit(&self, invocation: Invocation) -> Result<(String, Context)> {
        let cx = invocation.context;
        let idempotency_key = cx
            .extension::<IdempotencyKey>()
            .map(|key| key.as_str().to_owned());
        if let Some(key) = &idempotency_key {
            super::check_caller_key(key)?;
        }
        let spec = JobSpec {
            agent: self.agent.clone(),
            input: invocation.input,
            history: invocation.history,
            session_id: None,
            metadata: invocation.metadata,
            tenant: cx.tenant().unwrap_or("default").to_owned(),
            callback_url: None,
            idempotency_key,
            request_id: cx.request_id().to_owned(),
            traceparent: cx.trace().map(|t| t.new_child().traceparent()),
        };
        // A key already taken names a job; it must be this call's job, not another's.
        let (job, _) = super::enqueue_once(&*self.queue, spec).await?;
        Ok((job.job_id, cx))
    }

    /// Waits for the job to end, within the context's deadline (or `max_wait`); its reply.
    async fn reply(&self, job_id: &str, cx: &Context) -> Result<Reply> {
        let wait = cx
            .remaining()
            .map_or(self.max_wait, |r| r.min(self.max_wait));
        let doc = tokio::select! {
            doc = self.queue.until_ended(job_id, wait) => doc?,
            () = cx.cancellation().cancelled() => return Err(Error::cancelled()),
        };
        let Some(doc) = doc else {
            return Err(Error::not_found(format!("job {job_id} is gone")));
        };
        match doc.status {
            JobStatus::Succeeded => {
                let result = doc
                    .result
                    .ok_or_else(|| Error::internal("a succeeded job has no result"))?;
                Ok(Reply {
                    output: result.output,
                    messages: result.messages,
                    usage: result.usage,
                    cost_usd: result.cost_usd,
                    tool_calls: result.tool_calls,
                    ..Reply::default()
                })
            }
            JobStatus::Failed | JobStatus::Dead => {
                let error = doc.error.unwrap_or_else(|| {
                    "the job ended without a result"
                        .parse()
                        .unwrap_or_else(|e| match e {})
                });
                let kind = ErrorKind::from_code(&error.code).unwrap_or(ErrorKind::Internal);
                Err(Error::new(
                    kind,
                    format!("job {job_id} {}: {}", doc.status.as_str(), error.message),
                ))
            }
            JobStatus::Queued | JobStatus::Running => Err(Error::timeout(format!(
                "job {job_id} did not finish in time"
            ))),
        }
    }
}

impl Executor for QueueExecutor {
    async fn execute(&self, invocation: Invocation) -> Result<Reply> {
        let (job_id, cx) = self.submit(invocation).await?;
        self.reply(&job_id, &cx).await
    }

    /// Submits at once (so a refused submission is an error here) and returns a stream that
    /// awaits the job, then replays its reply: a transport can answer before the job ends
    /// (and keep the connection alive while it runs).
    async fn stream(&self, invocation: Invocation) -> Result<EventStream> {
        let (job_id, cx) = self.submit(invocation).await?;
        let this = self.clone();
        let ended = async move { this.reply(&job_id, &cx).await };
        Ok(Box::pin(futures::stream::once(ended).flat_map(|reply| {
            let events: Vec<Result<AgentEvent>> = match reply {
                Ok(reply) => AgentEvent::replay(reply).into_iter().map(Ok).collect(),
                Err(error) => vec![Err(error)],
            };
            futures::stream::iter(events)
        })))
    }
}
