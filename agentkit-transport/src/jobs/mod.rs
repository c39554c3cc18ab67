//! Event-driven execution: jobs on real queues, workers that may die, nothing lost, nothing done
//! twice.
//!
//! A caller [`enqueue`](JobQueue::enqueue)s a [`JobSpec`] (optionally with an idempotency key:
//! the same key twice within the retention window yields the same job). A [`Worker`] claims
//! deliveries with a visibility timeout, heartbeats while it runs them, and finishes each once:
//! succeeded, failed (a final error), or dead (retries exhausted). A delivery whose worker went
//! silent is reclaimed by another. Backends: [`MemoryJobQueue`], Redis Streams (feature
//! `redis`) and NATS JetStream (feature `nats`), all passing one conformance suite.

mod executor;
pub mod live;
mod memory;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "redis")]
mod redis_live;
mod watch;
pub(crate) mod webhook;
mod worker;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentkit_core::tool::ToolCallRecord;
use agentkit_core::{Error, Message, Reply, Result, Usage};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use executor::QueueExecutor;
pub use live::{LiveEvent, LiveEvents};
pub use memory::MemoryJobQueue;
pub use webhook::{SIGNATURE_HEADER, WebhookSender, sign, verify};
pub(crate) use worker::webhook_job;
pub use worker::{Worker, WorkerBuilder};

/// Idempotency keys starting with this belong to agentkit (a job's webhook delivery is keyed
/// `agentkit:webhook:{job_id}`); the HTTP API refuses them from callers.
pub const RESERVED_KEY_PREFIX: &str = "agentkit:";

/// The idempotency key of the webhook delivery of `job_id`'s callback.
pub(crate) fn webhook_key(job_id: &str) -> String {
    format!("{RESERVED_KEY_PREFIX}webhook:{job_id}")
}

/// An invalid-input error for a caller's job key in agentkit's [`RESERVED_KEY_PREFIX`].
pub(crate) fn check_caller_key(key: &str) -> Result<()> {
    if key.starts_with(RESERVED_KEY_PREFIX) {
        return Err(Error::invalid_input(format!(
            "idempotency keys starting with `{RESERVED_KEY_PREFIX}` are reserved"
        )));
    }
    Ok(())
}

/// What to run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The agent to run.
    pub agent: String,
    /// The input messages.
    pub input: Vec<Message>,
    /// Conversation before the input, for a stateless job.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Message>,
    /// Run as a turn of this session (within `tenant`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Caller metadata (the agent's prompt variables).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Who submitted it; only this tenant can read it.
    pub tenant: String,
    /// Where to POST the job document when it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// Deduplicates submissions within the retention window (per tenant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The submitting request's id, continued by the run.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request_id: String,
    /// The submitting request's W3C `traceparent`, continued by the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Publish the run's events as they happen to the job's live log
    /// ([`JobQueue::follow_live`]): text deltas, tool calls and usage, for a caller that
    /// streams the job. Off by default, since each event is a write to the queue's server.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
}

/// Enqueues `spec`. A repeated idempotency key names a job already there: its document comes
/// back with it, and a key that names another request's job is a
/// [`Conflict`](agentkit_core::ErrorKind::Conflict) rather than that job.
pub(crate) async fn enqueue_once(
    queue: &dyn JobQueue,
    spec: JobSpec,
) -> Result<(Enqueued, Option<JobDoc>)> {
    let sent = spec.idempotency_key.is_some().then(|| spec.clone());
    let enqueued = queue.enqueue(spec).await?;
    let Some(sent) = sent.filter(|_| !enqueued.created) else {
        return Ok((enqueued, None));
    };
    let existing = queue.get(&enqueued.job_id).await?;
    if let Some(first) = existing.as_ref().and_then(|doc| doc.spec.as_deref())
        && !first.same_request(&sent)
    {
        return Err(Error::new(
            agentkit_core::ErrorKind::Conflict,
            format!(
                "the idempotency key was used for another request (job {}); use a new key",
                enqueued.job_id
            ),
        ));
    }
    Ok((enqueued, existing))
}

impl JobSpec {
    /// Whether `other` asks for the same run: the agent, the conversation and the metadata
    /// (not who sent it, nor where its outcome goes).
    pub(crate) fn same_request(&self, other: &JobSpec) -> bool {
        self.agent == other.agent
            && self.input == other.input
            && self.history == other.history
            && self.session_id == other.session_id
            && self.metadata == other.metadata
    }
}

/// Where a job is. New statuses may be added (as `Cancelled` was), so a `match` needs a
/// wildcard arm.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for a worker (or for its retry time).
    Queued,
    /// A worker runs it.
    Running,
    /// It finished with a result.
    Succeeded,
    /// It ended with an error that retrying cannot fix.
    Failed,
    /// Its retries ran out (dead-lettered).
    Dead,
    /// A caller cancelled it ([`JobQueue::cancel`]) before it ended.
    Cancelled,
}

impl JobStatus {
    /// Whether the job will not change any more.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Dead | Self::Cancelled
        )
    }

    /// The `snake_case` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A job's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// The final answer.
    pub output: String,
    /// The messages the run added.
    pub messages: Vec<Message>,
    /// Tokens spent.
    pub usage: Usage,
    /// Cost in US dollars.
    pub cost_usd: f64,
    /// The tool calls made.
    pub tool_calls: Vec<ToolCallRecord>,
}

impl From<Reply> for JobResult {
    fn from(reply: Reply) -> Self {
        Self {
            output: reply.output,
            messages: reply.messages,
            usage: reply.usage,
            cost_usd: reply.cost_usd,
            tool_calls: reply.tool_calls,
        }
    }
}

/// The last error of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    /// The error's code (`unavailable`, `timeout`, ...).
    pub code: String,
    /// Its message.
    pub message: String,
}

impl From<&Error> for JobError {
    fn from(error: &Error) -> Self {
        Self {
            code: error.code().to_owned(),
            message: error.message().to_owned(),
        }
    }
}

/// A job and where it is: what `GET /v1/jobs/{id}` answers and webhooks carry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobDoc {
    /// The job id.
    pub job_id: String,
    /// The agent.
    pub agent: String,
    /// Its status.
    pub status: JobStatus,
    /// How many times a worker started it.
    pub attempts: u32,
    /// The result, once succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<JobResult>,
    /// The last error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    /// The session, for session jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// When it was submitted (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// When it last changed.
    pub updated_at_ms: u64,
    /// What to run (not shown to callers). Shared: a submitted spec never changes, so the
    /// copies of a job's document a delivery and its outcome make share it.
    #[serde(skip)]
    pub spec: Option<Arc<JobSpec>>,
}

impl JobDoc {
    /// Ends the job `cancelled` unless it has ended; whether it changed.
    pub(crate) fn cancel(&mut self) -> bool {
        if self.status.is_terminal() {
            return false;
        }
        self.status = JobStatus::Cancelled;
        self.error = Some(JobError {
            code: agentkit_core::ErrorKind::Cancelled.code().to_owned(),
            message: "cancelled by a caller".to_owned(),
        });
        self.updated_at_ms = now_ms();
        true
    }

    /// Queues a job that ended `dead` or `failed` again, its attempts starting over; whether
    /// it changed.
    pub(crate) fn requeue(&mut self) -> bool {
        if !matches!(self.status, JobStatus::Dead | JobStatus::Failed) {
            return false;
        }
        self.status = JobStatus::Queued;
        self.attempts = 0;
        self.result = None;
        self.updated_at_ms = now_ms();
        true
    }

    /// A new, queued job.
    pub fn queued(job_id: String, spec: impl Into<Arc<JobSpec>>) -> Self {
        let spec = spec.into();
        let now = now_ms();
        Self {
            job_id,
            agent: spec.agent.clone(),
            status: JobStatus::Queued,
            attempts: 0,
            result: None,
            error: None,
            session_id: spec.session_id.clone(),
            created_at_ms: now,
            updated_at_ms: now,
            spec: Some(spec),
        }
    }

    /// The tenant that owns the job.
    pub fn tenant(&self) -> Option<&str> {
        self.spec.as_ref().map(|s| s.tenant.as_str())
    }
}

/// What [`JobQueue::enqueue`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enqueued {
    /// The job id (an existing one when the idempotency key was seen before).
    pub job_id: String,
    /// Whether a new job was created.
    pub created: bool,
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Finish {
    /// With a result.
    Succeeded(JobResult),
    /// With an error retrying cannot fix.
    Failed(JobError),
    /// With retries exhausted.
    Dead(JobError),
}

impl Finish {
    pub(crate) fn status(&self) -> JobStatus {
        match self {
            Self::Succeeded(_) => JobStatus::Succeeded,
            Self::Failed(_) => JobStatus::Failed,
            Self::Dead(_) => JobStatus::Dead,
        }
    }

    /// Applies this ending to `doc` unless it already ended; whether it changed.
    pub(crate) fn apply(self, doc: &mut JobDoc) -> bool {
        if doc.status.is_terminal() {
            return false;
        }
        self.apply_to(
            &mut doc.status,
            &mut doc.result,
            &mut doc.error,
            &mut doc.updated_at_ms,
        );
        true
    }

    /// Ends a job kept in fields of its own (as a backend stores it).
    pub(crate) fn apply_to(
        self,
        status: &mut JobStatus,
        result: &mut Option<JobResult>,
        error: &mut Option<JobError>,
        updated_at_ms: &mut u64,
    ) {
        *status = self.status();
        *updated_at_ms = now_ms();
        match self {
            Self::Succeeded(ok) => {
                *result = Some(ok);
                *error = None;
            }
            Self::Failed(failed) | Self::Dead(failed) => *error = Some(failed),
        }
    }
}

/// Encodes a queue's job documents as JSON into a buffer sized by the last one it encoded
/// (one queue's documents are much alike), rather than one that starts small and is copied
/// at every doubling: an outcome is a kilobyte or more, and a large block taken while
/// growing is the allocator's slow path.
#[cfg(any(feature = "redis", feature = "nats"))]
#[derive(Debug, Default)]
pub(crate) struct Encoder {
    last: std::sync::atomic::AtomicUsize,
}

#[cfg(any(feature = "redis", feature = "nats"))]
impl Encoder {
    /// The smallest buffer it starts with.
    const MIN: usize = 128;

    pub(crate) fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>> {
        use std::sync::atomic::Ordering::Relaxed;
        // A little over the last size, so that a document slightly larger still fits.
        let last = self.last.load(Relaxed);
        let mut buf = Vec::with_capacity((last + last / 8).max(Self::MIN));
        serde_json::to_writer(&mut buf, value)
            .map_err(|e| Error::internal(format!("cannot encode: {e}")))?;
        self.last.store(buf.len(), Relaxed);
        Ok(buf)
    }
}

/// A job as a backend keeps it in one document (a NATS bucket entry, a Redis job's outcome).
#[cfg(any(feature = "redis", feature = "nats"))]
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Stored {
    pub(crate) spec: Arc<JobSpec>,
    pub(crate) status: JobStatus,
    pub(crate) attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) result: Option<JobResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<JobError>,
    pub(crate) created_at_ms: u64,
    pub(crate) updated_at_ms: u64,
}

#[cfg(any(feature = "redis", feature = "nats"))]
impl Stored {
    pub(crate) fn doc(self, job_id: &str) -> JobDoc {
        let mut doc = JobDoc::queued(job_id.to_owned(), self.spec);
        doc.status = self.status;
        doc.attempts = self.attempts;
        doc.result = self.result;
        doc.error = self.error;
        doc.created_at_ms = self.created_at_ms;
        doc.updated_at_ms = self.updated_at_ms;
        doc
    }
}

/// [`Stored`] written from a [`JobDoc`] without copying it (the same fields, borrowed).
#[cfg(feature = "redis")]
#[derive(Serialize)]
pub(crate) struct StoredRef<'a> {
    spec: &'a JobSpec,
    status: JobStatus,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a JobResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a JobError>,
    created_at_ms: u64,
    updated_at_ms: u64,
}

#[cfg(feature = "redis")]
impl<'a> StoredRef<'a> {
    /// `doc` as stored; `None` when it carries no spec.
    pub(crate) fn of(doc: &'a JobDoc) -> Option<Self> {
        Some(Self {
            spec: doc.spec.as_deref()?,
            status: doc.status,
            attempts: doc.attempts,
            result: doc.result.as_ref(),
            error: doc.error.as_ref(),
            created_at_ms: doc.created_at_ms,
            updated_at_ms: doc.updated_at_ms,
        })
    }
}

/// One claimed job, held by one worker until finished, released or reclaimed.
#[derive(Debug)]
pub struct Delivery {
    /// The job, with its spec.
    pub job: JobDoc,
    /// This delivery's attempt number (1 for the first run).
    pub attempt: u32,
    pub(crate) receipt: Receipt,
}

impl Delivery {
    /// The job's spec.
    pub fn spec(&self) -> Result<&JobSpec> {
        self.job
            .spec
            .as_deref()
            .ok_or_else(|| Error::internal(format!("job {} has no spec", self.job.job_id)))
    }
}

/// How a backend finds a delivery again.
#[derive(Debug)]
pub(crate) enum Receipt {
    Memory {
        token: u64,
    },
    #[cfg(feature = "redis")]
    Redis {
        entry: String,
        consumer: String,
        /// A submission's first delivery: nothing of the job was written when it was claimed.
        fresh: bool,
    },
    #[cfg(feature = "nats")]
    Nats(Box<nats::NatsReceipt>),
}

/// A queue of jobs with at-least-once delivery.
///
/// ```
/// use std::time::Duration;
/// use agentkit_core::Message;
/// use agentkit_transport::jobs::{Finish, JobQueue, JobSpec, JobStatus, MemoryJobQueue};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let queue = MemoryJobQueue::new();
/// let spec = JobSpec {
///     agent: "assistant".into(),
///     input: vec![Message::user("hi")],
///     tenant: "acme".into(),
///     idempotency_key: Some("order-17".into()),
///     ..JobSpec::default()
/// };
/// let first = queue.enqueue(spec.clone()).await?;
/// let again = queue.enqueue(spec).await?;
/// assert_eq!(first.job_id, again.job_id); // one job per key
///
/// let delivery = queue.claim("worker-1", 1, Duration::from_millis(10)).await?.pop().unwrap();
/// assert_eq!(delivery.attempt, 1);
/// let doc = queue.finish(&delivery, Finish::Failed("nope".parse().unwrap())).await;
/// # let _ = doc;
/// # Ok::<_, agentkit_core::Error>(())
/// # }).unwrap();
/// ```
#[async_trait]
pub trait JobQueue: Send + Sync {
    /// Adds a job; with an idempotency key seen within the retention window, returns that job.
    async fn enqueue(&self, spec: JobSpec) -> Result<Enqueued>;

    /// Claims up to `max` jobs for `consumer`, waiting up to `wait` for the first. Each claim
    /// counts as an attempt and marks the job running; a claim not finished, released or
    /// heartbeaten within the visibility timeout is delivered again.
    async fn claim(&self, consumer: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>>;

    /// Tells the queue the job is still being worked on (extends the visibility timeout).
    async fn heartbeat(&self, delivery: &Delivery) -> Result<()>;

    /// Ends the job (once: a job that already ended keeps its first ending) and acknowledges
    /// the delivery; the job's document afterwards.
    async fn finish(&self, delivery: &Delivery, finish: Finish) -> Result<JobDoc>;

    /// Gives the delivery back to run again after `delay`: a retry, whose `error` is kept as
    /// the job's last error, or, without an error, a hand-back (a worker stopping, or one
    /// that claimed more than it can run), which does not count as an attempt, so rolling
    /// restarts during a long job do not bring it nearer to the dead letters.
    async fn release(
        &self,
        delivery: &Delivery,
        delay: Duration,
        error: Option<JobError>,
    ) -> Result<()>;

    /// The job's document.
    async fn get(&self, job_id: &str) -> Result<Option<JobDoc>>;

    /// Jobs waiting to run (not claimed).
    async fn depth(&self) -> Result<u64>;

    /// Whether the backend answers.
    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    /// The job's document once it has ended, waiting at most `wait` for that; when the wait
    /// is up first, the document as it stands (`None`: no such job). What a caller awaiting a
    /// job uses ([`QueueExecutor`], the job events stream) rather than polling
    /// [`get`](Self::get). The default polls `get`, every 5 ms at first and at most every
    /// 250 ms; the memory, Redis and NATS queues learn of each end as it happens.
    async fn until_ended(&self, job_id: &str, wait: Duration) -> Result<Option<JobDoc>> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(5);
        loop {
            let doc = self.get(job_id).await?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if settled(doc.as_ref(), left) {
                return Ok(doc);
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(UNTIL_ENDED_POLL);
        }
    }

    /// Cancels the job unless it has ended: it ends `cancelled` at once. A queued job will
    /// not run; a running one's worker, which awaits the job's end between heartbeats
    /// ([`until_ended`](Self::until_ended)), drops the run as soon as it hears of it (at the
    /// next heartbeat at the latest, for a queue that does not wake its callers). Returns the
    /// job's document afterwards (`None`: no such job), which for a job that had ended
    /// already is its ending, unchanged. The default refuses: this queue cannot cancel jobs.
    async fn cancel(&self, job_id: &str) -> Result<Option<JobDoc>> {
        let _ = job_id;
        Err(Error::new(
            agentkit_core::ErrorKind::Conflict,
            "this job queue cannot cancel jobs",
        ))
    }

    /// Puts a job that ended `dead` or `failed` back in the queue to run again (after the
    /// outage or the bug that ended it is fixed): it is `queued`, its attempts start over, and
    /// its last error stays until the next run ends. Its callback, if any, is sent again when
    /// it ends. Returns the job's document afterwards (`None`: no such job), which for a job in
    /// any other status is unchanged. The default refuses: this queue cannot retry jobs.
    async fn retry(&self, job_id: &str) -> Result<Option<JobDoc>> {
        let _ = job_id;
        Err(Error::new(
            agentkit_core::ErrorKind::Conflict,
            "this job queue cannot retry jobs",
        ))
    }

    /// Appends `event` to the job's live log (see [`live`]): what a worker does for each
    /// event of a job submitted with [`JobSpec::stream`]. The default keeps no live logs.
    async fn publish_live(&self, job_id: &str, event: &LiveEvent) -> Result<()> {
        let _ = (job_id, event);
        Ok(())
    }

    /// The job's live log from its first entry, as entries come (see [`live`]); `None` when
    /// this queue keeps no live logs (the default). The memory, Redis and NATS queues keep
    /// them.
    async fn follow_live(&self, job_id: &str) -> Result<Option<LiveEvents>> {
        let _ = job_id;
        Ok(None)
    }

    /// The queue's name, for metrics and logs.
    fn name(&self) -> &str {
        "jobs"
    }

    /// The ledger of side effects kept with this queue, so that a job redelivered to another
    /// worker does not repeat them.
    fn ledger(&self) -> std::sync::Arc<dyn agentkit_core::tool::EffectLedger>;
}

const _: Option<&dyn JobQueue> = None;

/// Whether [`JobQueue::until_ended`] has its answer, having looked at the job with `left` of
/// its wait to go: the job ended or is gone, or the wait is up.
pub(crate) fn settled(doc: Option<&JobDoc>, left: Duration) -> bool {
    left.is_zero() || doc.is_none_or(|doc| doc.status.is_terminal())
}

/// The longest [`JobQueue::until_ended`] goes without looking at the job when nothing tells it
/// of the job's end.
pub(crate) const UNTIL_ENDED_POLL: Duration = Duration::from_millis(250);

impl std::str::FromStr for JobError {
    type Err = std::convert::Infallible;

    /// An internal error with this message (for tests and tools).
    fn from_str(message: &str) -> std::result::Result<Self, Self::Err> {
        Ok(Self {
            code: "internal".to_owned(),
            message: message.to_owned(),
        })
    }
}

/// How long idempotency keys, finished jobs and recorded side effects are kept: 7 days.
pub const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Checks a spec before it is queued.
pub(crate) fn validate(spec: &JobSpec) -> Result<()> {
    if spec.agent.is_empty() {
        return Err(Error::invalid_input("a job needs an agent"));
    }
    if spec.input.is_empty() || spec.input.iter().all(|m| m.payload_len() == 0) {
        return Err(Error::invalid_input("a job's input must not be empty"));
    }
    // Refused here, with a 400 to its submitter, rather than failing on a worker later.
    Message::check_conversation(&spec.history, &spec.input)?;
    if spec.tenant.is_empty() {
        return Err(Error::invalid_input("a job needs a tenant"));
    }
    if let Some(key) = &spec.idempotency_key
        && (key.is_empty() || key.len() > 256)
    {
        return Err(Error::invalid_input(
            "an idempotency key must be 1 to 256 bytes long",
        ));
    }
    Ok(())
}

#[cfg(all(test, any(feature = "redis", feature = "nats")))]
mod tests {
    use super::*;

    #[test]
    fn the_encoder_writes_plain_json_into_a_buffer_sized_by_the_last() {
        let encoder = Encoder::default();
        let long = JobSpec {
            agent: "assistant".into(),
            input: vec![Message::user("x".repeat(5000))],
            ..JobSpec::default()
        };
        let first = encoder.encode(&long).unwrap();
        assert_eq!(first, serde_json::to_vec(&long).unwrap());
        // The next starts at the last one's size and an eighth: it never grew on the way.
        let again = encoder.encode(&long).unwrap();
        assert_eq!(again, first);
        assert_eq!(again.capacity(), first.len() + first.len() / 8);
        // A small one after it still encodes whole, and the size follows it down.
        let short = encoder.encode("short").unwrap();
        assert_eq!(short, b"\"short\"");
        assert_eq!(encoder.encode("short").unwrap().capacity(), Encoder::MIN);
    }

    #[test]
    fn a_queued_job_is_stored_without_empty_fields_and_older_documents_still_read() {
        let stored = Stored {
            spec: Arc::new(JobSpec {
                agent: "assistant".into(),
                input: vec![Message::user("What is 1 + 1?")],
                tenant: "acme".into(),
                ..JobSpec::default()
            }),
            status: JobStatus::Queued,
            attempts: 0,
            result: None,
            error: None,
            created_at_ms: 1,
            updated_at_ms: 1,
        };
        let text = serde_json::to_string(&stored).unwrap();
        for absent in ["metadata", "request_id", "result", "error", "null"] {
            assert!(!text.contains(absent), "{absent} in {text}");
        }
        let back: Stored = serde_json::from_str(&text).unwrap();
        assert_eq!(back.spec.input, stored.spec.input);
        assert_eq!((back.spec.tenant.as_str(), back.attempts), ("acme", 0));
        // As earlier versions wrote it: every field, empty ones included.
        let older = r#"{"spec":{"agent":"assistant","input":[],"metadata":{},"tenant":"acme",
            "request_id":""},"status":"queued","attempts":0,"result":null,"error":null,
            "created_at_ms":1,"updated_at_ms":1}"#;
        let older: Stored = serde_json::from_str(older).unwrap();
        assert!(older.result.is_none() && older.error.is_none());
        assert!(older.spec.metadata.is_empty() && older.spec.request_id.is_empty());
    }
}
