//! [`QueueExecutor`]: an executor that runs its invocations as jobs on a queue.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use agentkit_core::{
    AgentEvent, Context, Error, ErrorKind, EventStream, Executor, IdempotencyKey, Invocation,
    Reply, Result,
};
use futures::StreamExt;
use futures::future::BoxFuture;

use super::{JobQueue, JobSpec, JobStatus, LiveEvent, LiveEvents};

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
    async fn submit(&self, invocation: Invocation, stream: bool) -> Result<(String, Context)> {
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
            stream,
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
            JobStatus::Failed | JobStatus::Dead | JobStatus::Cancelled => {
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
        let (job_id, cx) = self.submit(invocation, false).await?;
        self.reply(&job_id, &cx).await
    }

    /// Submits at once (so a refused submission is an error here), with
    /// [`JobSpec::stream`] set, and returns a stream of the run's events as the worker
    /// publishes them, then [`Done`](AgentEvent::Done) when the job ends: a transport can
    /// answer before the job ends and show its text as it comes. A queue that keeps no live
    /// logs (or a keyed call that found a job submitted without `stream`) replays the reply
    /// when the job ends instead. When a retry starts after events of an earlier attempt were
    /// sent, no more are: `Done` carries the reply of the attempt that succeeded.
    async fn stream(&self, invocation: Invocation) -> Result<EventStream> {
        let (job_id, cx) = self.submit(invocation, true).await?;
        let live = match self.queue.follow_live(&job_id).await {
            Ok(live) => live,
            Err(error) => {
                tracing::warn!(%job_id, %error, "cannot follow the job's live events; its reply comes when it ends");
                None
            }
        };
        let this = self.clone();
        let ended: BoxFuture<'static, Result<Reply>> =
            Box::pin(async move { this.reply(&job_id, &cx).await });
        let Some(live) = live else {
            return Ok(Box::pin(
                futures::stream::once(ended)
                    .flat_map(|reply| futures::stream::iter(replayed(reply))),
            ));
        };
        let follow = Follow::new(live, ended);
        Ok(Box::pin(futures::stream::unfold(
            follow,
            |mut f| async move {
                loop {
                    if let Some(event) = f.out.pop_front() {
                        return Some((event, f));
                    }
                    if f.ended.is_none() && f.reply.is_none() {
                        return None;
                    }
                    if f.live.is_none() {
                        // Nothing more to forward: the reply, once it comes.
                        if let Some(ended) = f.ended.take() {
                            f.reply = Some(ended.await);
                        }
                        f.finish();
                        continue;
                    }
                    if f.grace.is_some_and(|g| g <= tokio::time::Instant::now()) {
                        f.finish();
                        continue;
                    }
                    let grace = f.grace;
                    let pause = async move {
                        match grace {
                            Some(grace) => tokio::time::sleep_until(grace).await,
                            None => std::future::pending().await,
                        }
                    };
                    let woke = {
                        let live = f.live.as_mut().expect("checked above");
                        let ended = &mut f.ended;
                        let awaiting = ended.is_some();
                        tokio::select! {
                            entry = live.next() => Woke::Entry(entry),
                            reply = async { ended.as_mut().expect("while awaited").await }, if awaiting => {
                                Woke::Reply(reply)
                            }
                            () = pause => Woke::Grace,
                        }
                    };
                    match woke {
                        Woke::Entry(entry) => f.entry(entry),
                        Woke::Reply(reply) => f.replied(reply),
                        Woke::Grace => f.finish(),
                    }
                }
            },
        )))
    }
}

/// How long a streamed call waits, once the job ended, for the rest of its live events.
const LIVE_GRACE: Duration = Duration::from_secs(2);

/// The events of a reply replayed whole (or its error).
fn replayed(reply: Result<Reply>) -> Vec<Result<AgentEvent>> {
    match reply {
        Ok(reply) => AgentEvent::replay(reply).into_iter().map(Ok).collect(),
        Err(error) => vec![Err(error)],
    }
}

/// What woke a streamed call's follower.
enum Woke {
    Entry(Option<Result<LiveEvent>>),
    Reply(Result<Reply>),
    Grace,
}

/// A streamed call following its job's live log (see [`QueueExecutor::stream`]).
struct Follow {
    live: Option<LiveEvents>,
    /// The job's reply, until it came.
    ended: Option<BoxFuture<'static, Result<Reply>>>,
    reply: Option<Result<Reply>>,
    /// Once the reply came: until when its attempt's end marker may take to arrive.
    grace: Option<tokio::time::Instant>,
    /// The attempt whose events are forwarded.
    attempt: u32,
    /// The last attempt whose end marker came.
    ended_attempt: u32,
    forwarded: bool,
    /// A later attempt started after events were forwarded: none are any more.
    stale: bool,
    out: VecDeque<Result<AgentEvent>>,
}

impl Follow {
    fn new(live: LiveEvents, ended: BoxFuture<'static, Result<Reply>>) -> Self {
        Self {
            live: Some(live),
            ended: Some(ended),
            reply: None,
            grace: None,
            attempt: 0,
            ended_attempt: 0,
            forwarded: false,
            stale: false,
            out: VecDeque::new(),
        }
    }

    fn entry(&mut self, entry: Option<Result<LiveEvent>>) {
        let entry = match entry {
            Some(Ok(entry)) => entry,
            Some(Err(error)) => {
                tracing::warn!(%error, "cannot read the job's live events; its reply comes when it ends");
                self.live = None;
                return;
            }
            None => {
                self.live = None;
                return;
            }
        };
        if entry.attempt > self.attempt {
            if self.forwarded {
                self.stale = true;
            }
            self.attempt = entry.attempt;
        }
        match entry.event {
            Some(event) if !self.stale && entry.attempt == self.attempt => {
                self.forwarded = true;
                self.out.push_back(Ok(event));
            }
            Some(_) => {}
            // The attempt that made the reply ended: every event it made is out (once the
            // reply is here too; an end marker may come before it).
            None => {
                self.ended_attempt = self.ended_attempt.max(entry.attempt);
                if self.reply.is_some() && self.ended_attempt >= self.attempt {
                    self.finish();
                }
            }
        }
    }

    /// The job ended with `reply`: sent at once when it is an error or its attempt's end
    /// marker came before it, else once the marker comes or [`LIVE_GRACE`] is up.
    fn replied(&mut self, reply: Result<Reply>) {
        self.ended = None;
        let failed = reply.is_err();
        self.reply = Some(reply);
        // A failed job's error is all there is to send (a cancelled job's run was dropped
        // and writes no end marker).
        if failed || (self.attempt > 0 && self.ended_attempt >= self.attempt) {
            self.finish();
        } else {
            self.grace = Some(tokio::time::Instant::now() + LIVE_GRACE);
        }
    }

    /// Sends the reply: `Done` after the events forwarded, or the whole replay when none
    /// were.
    fn finish(&mut self) {
        self.live = None;
        let Some(reply) = self.reply.take() else {
            return;
        };
        match reply {
            Ok(reply) if self.forwarded => {
                self.out.push_back(Ok(AgentEvent::Done(Box::new(reply))))
            }
            reply => self.out.extend(replayed(reply)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follow() -> Follow {
        Follow::new(
            Box::pin(futures::stream::pending()),
            Box::pin(std::future::pending()),
        )
    }

    fn text(attempt: u32, text: &str) -> LiveEvent {
        LiveEvent::event(attempt, AgentEvent::TextDelta { text: text.into() })
    }

    fn reply(output: &str) -> Result<Reply> {
        Ok(Reply {
            output: output.into(),
            ..Reply::default()
        })
    }

    fn names(f: &Follow) -> Vec<&'static str> {
        f.out.iter().map(|e| e.as_ref().unwrap().name()).collect()
    }

    #[test]
    fn the_reply_goes_at_once_when_its_end_marker_came_first() {
        let mut f = follow();
        f.entry(Some(Ok(text(1, "hi"))));
        f.entry(Some(Ok(LiveEvent::end(1))));
        assert_eq!(
            names(&f),
            ["text_delta"],
            "nothing to send before the reply"
        );
        f.replied(reply("hi"));
        assert_eq!(names(&f), ["text_delta", "done"]);
        assert!(f.live.is_none() && f.reply.is_none(), "the call is over");
    }

    #[test]
    fn the_reply_waits_for_its_end_marker() {
        let mut f = follow();
        f.entry(Some(Ok(text(1, "h"))));
        f.replied(reply("hi"));
        assert_eq!(names(&f), ["text_delta"]);
        assert!(f.grace.is_some());
        f.entry(Some(Ok(text(1, "i"))));
        f.entry(Some(Ok(LiveEvent::end(1))));
        assert_eq!(names(&f), ["text_delta", "text_delta", "done"]);
    }

    #[test]
    fn a_retry_after_text_was_sent_sends_no_more_of_it() {
        let mut f = follow();
        f.entry(Some(Ok(text(1, "partial"))));
        f.entry(Some(Ok(LiveEvent::end(1))));
        f.entry(Some(Ok(text(2, "whole"))));
        f.entry(Some(Ok(LiveEvent::end(2))));
        f.replied(reply("whole"));
        assert_eq!(names(&f), ["text_delta", "done"]);
    }

    #[test]
    fn an_error_goes_at_once() {
        let mut f = follow();
        f.entry(Some(Ok(text(1, "partial"))));
        f.replied(Err(agentkit_core::Error::cancelled()));
        assert!(f.live.is_none(), "no end marker is waited for");
        assert!(f.out.back().unwrap().is_err());
    }

    #[test]
    fn a_reply_with_nothing_live_is_replayed_whole() {
        let mut f = follow();
        f.entry(None);
        f.replied(reply("hi"));
        f.finish();
        assert_eq!(names(&f), ["text_delta", "usage", "done"]);
    }
}
