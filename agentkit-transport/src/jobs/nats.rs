//! Jobs on NATS JetStream: a work-queue stream per queue, a durable pull consumer with explicit
//! acks and `ack_wait` as the visibility timeout, in-progress acks while a job runs, and job
//! documents, idempotency keys and side effects in a key-value bucket (compare-and-set updates).
//!
//! A submission is one message on the job's own subject (`agentkit.jobs.{queue}.{job_id}`)
//! carrying the queued document, as cheap as a raw publish. Its first delivery writes nothing
//! until the job ends: the job's document enters the bucket with its outcome (or when it is
//! released for a retry, or redelivered). Until then a read of the job finds the message,
//! running once the consumer has delivered it (attempts 1: a delivery count is not kept per
//! message where a read can see it).

use std::sync::Arc;
use std::time::Duration;

use agentkit_core::tool::EffectLedger;
use agentkit_core::{Error, Result, generate_id};
use async_nats::jetstream::consumer::pull::Config as PullConfig;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer};
use async_nats::jetstream::kv::{CreateErrorKind, Store};
use async_nats::jetstream::stream::{
    Config as StreamConfig, DiscardPolicy, LastRawMessageErrorKind, RetentionPolicy,
};
use async_nats::jetstream::{self, AckKind};
use async_trait::async_trait;
use futures::StreamExt;

use super::live::{LIVE_EVENTS_KEPT, LIVE_RETENTION};
use super::{
    Delivery, Encoder, Enqueued, Finish, JobDoc, JobError, JobQueue, JobSpec, JobStatus, LiveEvent,
    LiveEvents, RETENTION, Receipt, Stored, now_ms, validate,
};

/// The most bytes the live stream of one queue keeps (the oldest entries go first).
const LIVE_BYTES_KEPT: i64 = 256 * 1024 * 1024;

fn unavailable(what: &str, error: impl std::fmt::Display) -> Error {
    Error::unavailable(format!("NATS {what}: {error}"))
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Whether `text` can be one token of a subject (job ids are).
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The job id of a submission's subject (`{queue subject}.{job_id}`).
fn job_of_subject<'a>(subject: &'a str, queue: &str) -> Option<&'a str> {
    let job = subject.strip_prefix(queue)?.strip_prefix('.')?;
    is_token(job).then_some(job)
}

/// What a NATS delivery keeps: the message to ack, and the job as this delivery knows it
/// with its revision in the bucket (`None`: a submission's first delivery, which writes
/// nothing until it ends).
pub(crate) struct NatsReceipt {
    message: jetstream::Message,
    known: Stored,
    revision: Option<u64>,
}

impl NatsReceipt {
    /// The job as last written by this delivery, for a compare-and-set update.
    fn written(&self) -> Option<(Stored, u64)> {
        self.revision.map(|revision| (self.known.clone(), revision))
    }
}

impl std::fmt::Debug for NatsReceipt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsReceipt")
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

/// A job queue on NATS JetStream.
#[derive(Clone)]
pub struct NatsJobQueue {
    client: async_nats::Client,
    name: String,
    js: jetstream::Context,
    /// The queue's subject; each job is published on a subject of its own below it.
    subject: String,
    stream: jetstream::stream::Stream,
    consumer: PullConsumer,
    kv: Store,
    /// The jobs' live logs: a stream in memory, a subject per job below `live_subject`.
    live: jetstream::stream::Stream,
    live_subject: String,
    timeout: Duration,
    /// Submissions and the bucket's documents, each in a buffer sized by the last.
    submissions: Arc<Encoder>,
    documents: Arc<Encoder>,
}

impl std::fmt::Debug for NatsJobQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsJobQueue")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl NatsJobQueue {
    /// Connects to `url` and opens (creating if needed) the queue `name` with a 30 s
    /// visibility timeout.
    pub async fn connect(url: &str, name: &str) -> Result<Self> {
        Self::connect_with(url, name, Duration::from_secs(30)).await
    }

    /// Like [`connect`](Self::connect), with the visibility timeout (`ack_wait`) given.
    pub async fn connect_with(url: &str, name: &str, visibility: Duration) -> Result<Self> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| unavailable("connect", e))?;
        Self::open(client, name, visibility).await
    }

    /// Opens the queue `name` on an existing client.
    pub async fn open(
        client: async_nats::Client,
        name: &str,
        visibility: Duration,
    ) -> Result<Self> {
        if !is_token(name) {
            return Err(Error::invalid_input(
                "a NATS queue name must be [A-Za-z0-9_-]+",
            ));
        }
        let js = jetstream::new(client.clone());
        let stream_name = format!("AGENTKIT_JOBS_{name}");
        let subject = format!("agentkit.jobs.{name}");
        // The queue's own subject takes messages of earlier versions (which carry a job id
        // only); the per-job subjects below it, submissions.
        let subjects = vec![subject.clone(), format!("{subject}.>")];
        let stream = js
            .get_or_create_stream(StreamConfig {
                name: stream_name.clone(),
                subjects: subjects.clone(),
                retention: RetentionPolicy::WorkQueue,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("stream", e))?;
        let config = stream.cached_info().config.clone();
        if config.subjects != subjects {
            js.update_stream(StreamConfig { subjects, ..config })
                .await
                .map_err(|e| unavailable("stream update", e))?;
        }
        let consumer: PullConsumer = stream
            .get_or_create_consumer(
                "workers",
                PullConfig {
                    durable_name: Some("workers".to_owned()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: visibility,
                    max_deliver: -1,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| unavailable("consumer", e))?;
        let bucket = format!("AGENTKIT_JOBS_{name}");
        let kv = match js.get_key_value(&bucket).await {
            Ok(kv) => kv,
            Err(_) => {
                // The bucket's stream is made here rather than by `create_key_value`, which first
                // reads account information in a shape older servers (2.9) do not send.
                js.get_or_create_stream(StreamConfig {
                    name: format!("KV_{bucket}"),
                    subjects: vec![format!("$KV.{bucket}.>")],
                    max_messages_per_subject: 1,
                    max_age: RETENTION,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    discard: DiscardPolicy::New,
                    duplicate_window: Duration::from_secs(120),
                    ..Default::default()
                })
                .await
                .map_err(|e| unavailable("key-value stream", e))?;
                js.get_key_value(&bucket)
                    .await
                    .map_err(|e| unavailable("key-value bucket", e))?
            }
        };
        // Live logs are a view of runs, not their record: kept in the server's memory, for an
        // hour, bounded per job and in all.
        let live_subject = format!("agentkit.live.{name}");
        let live = js
            .get_or_create_stream(StreamConfig {
                name: format!("AGENTKIT_LIVE_{name}"),
                subjects: vec![format!("{live_subject}.>")],
                storage: jetstream::stream::StorageType::Memory,
                max_age: LIVE_RETENTION,
                max_messages_per_subject: LIVE_EVENTS_KEPT as i64,
                max_bytes: LIVE_BYTES_KEPT,
                discard: DiscardPolicy::Old,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("live stream", e))?;
        Ok(Self {
            client,
            name: name.to_owned(),
            js,
            subject,
            stream,
            consumer,
            kv,
            live,
            live_subject,
            timeout: Duration::from_secs(5),
            submissions: Arc::default(),
            documents: Arc::default(),
        })
    }

    /// The subject of the job's live log.
    fn live_subject(&self, job_id: &str) -> Result<String> {
        if !is_token(job_id) {
            return Err(Error::not_found(format!("no job {job_id} on this queue")));
        }
        Ok(format!("{}.{job_id}", self.live_subject))
    }

    async fn load(&self, job_id: &str) -> Result<Option<(Stored, u64)>> {
        let entry = self
            .kv
            .entry(format!("job.{job_id}"))
            .await
            .map_err(|e| unavailable("read", e))?;
        let Some(entry) = entry else { return Ok(None) };
        if entry.value.is_empty() {
            return Ok(None);
        }
        let stored: Stored = serde_json::from_slice(&entry.value)
            .map_err(|e| Error::internal(format!("stored job {job_id} is not valid: {e}")))?;
        Ok(Some((stored, entry.revision)))
    }

    /// Applies `change` to the job with compare-and-set, retrying on a concurrent update.
    /// `known` is the job as last written by this process (saves a read while still current).
    async fn change<T>(
        &self,
        job_id: &str,
        mut known: Option<(Stored, u64)>,
        mut change: impl FnMut(&mut Stored) -> Option<T>,
    ) -> Result<Option<(T, Stored, u64)>> {
        for _ in 0..16 {
            let current = match known.take() {
                Some(known) => Some(known),
                None => self.load(job_id).await?,
            };
            let Some((mut stored, revision)) = current else {
                return Ok(None);
            };
            let Some(out) = change(&mut stored) else {
                return Ok(None);
            };
            let bytes = self.documents.encode(&stored)?;
            match self
                .kv
                .update(format!("job.{job_id}"), bytes.into(), revision)
                .await
            {
                Ok(revision) => return Ok(Some((out, stored, revision))),
                Err(error) => tracing::debug!(%job_id, %error, "concurrent job update; retrying"),
            }
        }
        Err(Error::unavailable(format!(
            "job {job_id} kept changing under this update"
        )))
    }

    /// Makes the job's document in the bucket; `None` when one is there already.
    async fn create(&self, job_id: &str, stored: &Stored) -> Result<Option<u64>> {
        let bytes = self.documents.encode(stored)?;
        match self.kv.create(format!("job.{job_id}"), bytes.into()).await {
            Ok(revision) => Ok(Some(revision)),
            Err(error) if error.kind() == CreateErrorKind::AlreadyExists => Ok(None),
            Err(error) => Err(unavailable("write", error)),
        }
    }

    /// The delivery of a fetched message; `None` (and the message acked) when its job already
    /// ended or is gone.
    ///
    /// A submission's first delivery runs at once and writes nothing: until it ends, the job
    /// reads as running because the consumer has delivered its message. Any other delivery
    /// marks the document there is running, or makes it from the message (with the delivery
    /// count as attempts) when no earlier delivery wrote one.
    async fn start(&self, message: jetstream::Message) -> Result<Option<Delivery>> {
        let submitted: Option<Stored> = match message.payload.first() {
            Some(b'{') => Some(
                serde_json::from_slice(&message.payload)
                    .map_err(|e| Error::internal(format!("a submitted job is not valid: {e}")))?,
            ),
            _ => None,
        };
        let job_id = match &submitted {
            Some(_) => job_of_subject(&message.subject, &self.subject)
                .ok_or_else(|| {
                    Error::internal(format!("a job message on {} names no job", message.subject))
                })?
                .to_owned(),
            None => String::from_utf8_lossy(&message.payload).into_owned(),
        };
        let delivered = message
            .info()
            .map_or(0, |info| u32::try_from(info.delivered).unwrap_or(u32::MAX));
        let submitted = match (submitted, delivered) {
            (Some(mut stored), 1) => {
                stored.attempts = 1;
                stored.status = JobStatus::Running;
                stored.updated_at_ms = now_ms();
                return Ok(Some(Self::delivery(job_id, stored, None, message)));
            }
            (submitted, _) => submitted,
        };
        let mut started = self
            .change(&job_id, None, |stored| {
                if stored.status.is_terminal() {
                    return None;
                }
                stored.attempts += 1;
                stored.status = JobStatus::Running;
                stored.updated_at_ms = now_ms();
                Some(())
            })
            .await?;
        if started.is_none()
            && let Some(mut stored) = submitted
            && self.load(&job_id).await?.is_none()
        {
            // No delivery wrote a document (they died first): make it from the message.
            stored.attempts = delivered.max(1);
            stored.status = JobStatus::Running;
            stored.updated_at_ms = now_ms();
            if let Some(revision) = self.create(&job_id, &stored).await? {
                started = Some(((), stored, revision));
            }
        }
        match started {
            Some(((), stored, revision)) => Ok(Some(Self::delivery(
                job_id,
                stored,
                Some(revision),
                message,
            ))),
            None => {
                message.ack().await.map_err(|e| unavailable("ack", e))?;
                Ok(None)
            }
        }
    }

    fn delivery(
        job_id: String,
        stored: Stored,
        revision: Option<u64>,
        message: jetstream::Message,
    ) -> Delivery {
        Delivery {
            attempt: stored.attempts,
            job: stored.clone().doc(&job_id),
            receipt: Receipt::Nats(Box::new(NatsReceipt {
                message,
                known: stored,
                revision,
            })),
        }
    }

    /// Writes `prepared` (the job as this delivery ends or releases it) as the job's first
    /// document; when another delivery wrote one meanwhile, applies the same fields to that
    /// one unless `keep` says it must stay as it is.
    async fn create_or_change(
        &self,
        job_id: &str,
        prepared: Stored,
        keep: impl Fn(&Stored) -> bool,
    ) -> Result<Option<Stored>> {
        if self.create(job_id, &prepared).await?.is_some() {
            return Ok(Some(prepared));
        }
        let changed = self
            .change(job_id, None, |stored| {
                if keep(stored) {
                    return None;
                }
                stored.status = prepared.status;
                stored.result.clone_from(&prepared.result);
                if prepared.error.is_some() {
                    stored.error.clone_from(&prepared.error);
                }
                stored.updated_at_ms = prepared.updated_at_ms;
                Some(())
            })
            .await?;
        Ok(changed.map(|((), stored, _)| stored))
    }

    fn receipt(delivery: &Delivery) -> Result<&NatsReceipt> {
        match &delivery.receipt {
            Receipt::Nats(receipt) => Ok(receipt),
            #[allow(unreachable_patterns)]
            _ => Err(Error::invalid_input(
                "this delivery belongs to another queue",
            )),
        }
    }
}

#[async_trait]
impl JobQueue for NatsJobQueue {
    async fn enqueue(&self, spec: JobSpec) -> Result<Enqueued> {
        validate(&spec)?;
        let job_id = generate_id();
        let idem = spec
            .idempotency_key
            .as_ref()
            .map(|key| format!("idem.{}.{}", hex(&spec.tenant), hex(key)));
        if let Some(idem) = &idem {
            match self.kv.create(idem, job_id.clone().into()).await {
                Ok(_) => {}
                Err(error) if error.kind() == CreateErrorKind::AlreadyExists => {
                    let existing = self
                        .kv
                        .get(idem.as_str())
                        .await
                        .map_err(|e| unavailable("read", e))?;
                    if let Some(existing) = existing {
                        return Ok(Enqueued {
                            job_id: String::from_utf8_lossy(&existing).into_owned(),
                            created: false,
                        });
                    }
                    return Err(Error::unavailable(
                        "an idempotency key vanished while being read; retry",
                    ));
                }
                Err(error) => return Err(unavailable("write", error)),
            }
        }
        let now = now_ms();
        // Headers for whoever watches the subject; the job travels in the payload. No
        // `Nats-Msg-Id`: the job id is new to each call, so the server's duplicate check could
        // never match one, and it keeps every id it is given for its duplicate window.
        let mut headers = async_nats::HeaderMap::new();
        if !spec.request_id.is_empty() {
            headers.insert("x-request-id", spec.request_id.as_str());
        }
        if let Some(parent) = &spec.traceparent {
            headers.insert("traceparent", parent.as_str());
        }
        let stored = Stored {
            spec: Arc::new(spec),
            status: JobStatus::Queued,
            attempts: 0,
            result: None,
            error: None,
            created_at_ms: now,
            updated_at_ms: now,
        };
        let bytes = self.submissions.encode(&stored)?;
        let published = async {
            let subject = format!("{}.{job_id}", self.subject);
            let ack = if headers.is_empty() {
                self.js.publish(subject, bytes.into()).await
            } else {
                self.js
                    .publish_with_headers(subject, headers, bytes.into())
                    .await
            }
            .map_err(|e| unavailable("publish", e))?;
            ack.await.map_err(|e| unavailable("publish ack", e))?;
            Ok::<_, Error>(())
        }
        .await;
        if let Err(error) = published {
            // Do not leave a key pointing at a job that will never run.
            if let Some(idem) = &idem {
                let _ = self.kv.delete(idem).await;
            }
            return Err(error);
        }
        Ok(Enqueued {
            job_id,
            created: true,
        })
    }

    async fn claim(&self, _consumer: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(max.max(1))
            .expires(wait.max(Duration::from_millis(100)))
            .messages()
            .await
            .map_err(|e| unavailable("fetch", e))?;
        let mut messages = Vec::new();
        while let Some(message) = batch.next().await {
            messages.push(message.map_err(|e| unavailable("fetch", e))?);
        }
        let started =
            futures::future::join_all(messages.into_iter().map(|message| self.start(message)))
                .await;
        let mut deliveries = Vec::with_capacity(started.len());
        for delivery in started {
            if let Some(delivery) = delivery? {
                deliveries.push(delivery);
            }
        }
        Ok(deliveries)
    }

    async fn heartbeat(&self, delivery: &Delivery) -> Result<()> {
        Self::receipt(delivery)?
            .message
            .ack_with(AckKind::Progress)
            .await
            .map_err(|e| unavailable("in-progress ack", e))
    }

    async fn finish(&self, delivery: &Delivery, finish: Finish) -> Result<JobDoc> {
        let job_id = &delivery.job.job_id;
        let receipt = Self::receipt(delivery)?;
        let ended = match receipt.written() {
            // The first delivery ends the job with its first write.
            None => {
                let mut prepared = receipt.known.clone();
                finish.apply_to(
                    &mut prepared.status,
                    &mut prepared.result,
                    &mut prepared.error,
                    &mut prepared.updated_at_ms,
                );
                self.create_or_change(job_id, prepared, |stored| stored.status.is_terminal())
                    .await?
            }
            Some(written) => {
                let mut finish = Some(finish);
                self.change(job_id, Some(written), |stored| {
                    if stored.status.is_terminal() {
                        return None;
                    }
                    finish.take()?.apply_to(
                        &mut stored.status,
                        &mut stored.result,
                        &mut stored.error,
                        &mut stored.updated_at_ms,
                    );
                    Some(())
                })
                .await?
                .map(|((), stored, _)| stored)
            }
        };
        // A lost ack only means one more delivery, which sees the job ended and acks again.
        receipt
            .message
            .ack()
            .await
            .map_err(|e| unavailable("ack", e))?;
        if let Some(stored) = ended {
            return Ok(stored.doc(job_id));
        }
        self.get(job_id)
            .await?
            .ok_or_else(|| Error::not_found(format!("job {job_id} vanished")))
    }

    async fn release(
        &self,
        delivery: &Delivery,
        delay: Duration,
        error: Option<JobError>,
    ) -> Result<()> {
        let job_id = &delivery.job.job_id;
        let attempt = delivery.attempt;
        let receipt = Self::receipt(delivery)?;
        // A newer delivery owns the job, or it ended: leave it be.
        let keep = |stored: &Stored| stored.status.is_terminal() || stored.attempts != attempt;
        match receipt.written() {
            None => {
                let mut prepared = receipt.known.clone();
                prepared.status = JobStatus::Queued;
                prepared.updated_at_ms = now_ms();
                match error {
                    Some(error) => prepared.error = Some(error),
                    // Handed back: the next delivery is the same attempt again.
                    None => prepared.attempts = prepared.attempts.saturating_sub(1),
                }
                self.create_or_change(job_id, prepared, keep).await?;
            }
            Some(written) => {
                let mut error = error;
                let handed_back = error.is_none();
                self.change(job_id, Some(written), |stored| {
                    if keep(stored) {
                        return None;
                    }
                    stored.status = JobStatus::Queued;
                    stored.updated_at_ms = now_ms();
                    if let Some(error) = error.take() {
                        stored.error = Some(error);
                    }
                    if handed_back {
                        stored.attempts = stored.attempts.saturating_sub(1);
                    }
                    Some(())
                })
                .await?;
            }
        }
        receipt
            .message
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(|e| unavailable("nak", e))
    }

    async fn get(&self, job_id: &str) -> Result<Option<JobDoc>> {
        // Job ids are single subject tokens; anything else names no job (and is no key).
        if !is_token(job_id) {
            return Ok(None);
        }
        if let Some((stored, _)) = self.load(job_id).await? {
            return Ok(Some(stored.doc(job_id)));
        }
        // Not claimed yet: the submission is still on its subject. (Read in this order, a job
        // claimed and finished meanwhile is in the bucket by the time its message is gone.)
        let subject = format!("{}.{job_id}", self.subject);
        match self.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(message) if message.payload.first() == Some(&b'{') => {
                let mut stored: Stored = serde_json::from_slice(&message.payload)
                    .map_err(|e| Error::internal(format!("a submitted job is not valid: {e}")))?;
                // Delivered and not ended: a first delivery runs it (and writes the document
                // when it ends).
                let info = self
                    .consumer
                    .get_info()
                    .await
                    .map_err(|e| unavailable("consumer info", e))?;
                if info.delivered.stream_sequence >= message.sequence {
                    stored.status = JobStatus::Running;
                    stored.attempts = 1;
                }
                return Ok(Some(stored.doc(job_id)));
            }
            Ok(_) => {}
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => {}
            Err(error) => return Err(unavailable("read", error)),
        }
        Ok(self
            .load(job_id)
            .await?
            .map(|(stored, _)| stored.doc(job_id)))
    }

    /// Woken by the job's writes to the bucket, through a subscription to its key's subject
    /// made before looking at the job: its end (the first write of a job's first delivery),
    /// or a redelivery marking it running, after which it looks again. Nothing is sent for
    /// jobs no one awaits. Without the subscription it looks at the job as the default does.
    async fn until_ended(&self, job_id: &str, wait: Duration) -> Result<Option<JobDoc>> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut writes = None;
        if is_token(job_id) {
            let prefix = self.kv.put_prefix.as_deref().unwrap_or(&self.kv.prefix);
            let subject = format!("{prefix}job.{job_id}");
            // Flushed: the server has the subscription before the job is looked at.
            let subscribed = tokio::time::timeout_at(deadline, async {
                let writes = self.client.subscribe(subject).await.ok()?;
                self.client.flush().await.ok()?;
                Some(writes)
            });
            writes = subscribed.await.ok().flatten();
        }
        let mut pause = Duration::from_millis(5);
        loop {
            let doc = self.get(job_id).await?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if super::settled(doc.as_ref(), left) {
                return Ok(doc);
            }
            match &mut writes {
                Some(subscription) => {
                    // A net for a lost message: look again every second anyway.
                    let next =
                        tokio::time::timeout(left.min(Duration::from_secs(1)), subscription.next());
                    if let Ok(None) = next.await {
                        writes = None;
                    }
                }
                None => {
                    tokio::time::sleep(pause.min(left)).await;
                    pause = (pause * 2).min(super::UNTIL_ENDED_POLL);
                }
            }
        }
    }

    async fn depth(&self) -> Result<u64> {
        let info = self
            .consumer
            .get_info()
            .await
            .map_err(|e| unavailable("consumer info", e))?;
        Ok(info.num_pending)
    }

    async fn ping(&self) -> Result<()> {
        tokio::time::timeout(self.timeout, self.client.flush())
            .await
            .map_err(|_| Error::unavailable("NATS did not answer in time"))?
            .map_err(|e| unavailable("flush", e))
    }

    /// Ends the job's document `cancelled` (compare-and-set, so an ending written meanwhile
    /// wins), then deletes its submission from the stream if it is still there, so that no
    /// worker gets it.
    async fn cancel(&self, job_id: &str) -> Result<Option<JobDoc>> {
        let Some(mut doc) = self.get(job_id).await? else {
            return Ok(None);
        };
        if !doc.cancel() {
            return Ok(Some(doc));
        }
        let spec = (doc.spec.clone())
            .ok_or_else(|| Error::internal(format!("job {job_id} has no spec")))?;
        let prepared = Stored {
            spec,
            status: doc.status,
            attempts: doc.attempts,
            result: None,
            error: doc.error.clone(),
            created_at_ms: doc.created_at_ms,
            updated_at_ms: doc.updated_at_ms,
        };
        let Some(cancelled) = self
            .create_or_change(job_id, prepared, |stored| stored.status.is_terminal())
            .await?
        else {
            // It ended meanwhile.
            return self.get(job_id).await;
        };
        let subject = format!("{}.{job_id}", self.subject);
        match self.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => {
                if let Err(error) = self.stream.delete_message(message.sequence).await {
                    tracing::warn!(%job_id, %error, "cannot take the cancelled job's submission off the stream; a worker that gets it will find it ended");
                }
            }
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => {}
            Err(error) => {
                tracing::warn!(%job_id, %error, "cannot look for the cancelled job's submission")
            }
        }
        Ok(Some(cancelled.doc(job_id)))
    }

    /// Queues the job's document again (compare-and-set), forgets its callback's delivery
    /// key, and publishes a message naming it, as a retry's: the delivery that takes it
    /// counts its first attempt.
    async fn retry(&self, job_id: &str) -> Result<Option<JobDoc>> {
        let Some(mut doc) = self.get(job_id).await? else {
            return Ok(None);
        };
        if !doc.requeue() {
            return Ok(Some(doc));
        }
        let requeued = self
            .change(job_id, None, |stored| {
                if !matches!(stored.status, JobStatus::Dead | JobStatus::Failed) {
                    return None;
                }
                stored.status = JobStatus::Queued;
                stored.attempts = 0;
                stored.result = None;
                stored.updated_at_ms = doc.updated_at_ms;
                Some(())
            })
            .await?;
        let Some(((), stored, _)) = requeued else {
            // It changed meanwhile.
            return self.get(job_id).await;
        };
        let hook = super::webhook_key(job_id);
        let hook = format!("idem.{}.{}", hex(&stored.spec.tenant), hex(&hook));
        if let Err(error) = self.kv.delete(&hook).await {
            tracing::warn!(%job_id, %error, "cannot forget the job's callback delivery; its callback may not be sent again");
        }
        let ack = self
            .js
            .publish(self.subject.clone(), job_id.to_owned().into())
            .await
            .map_err(|e| unavailable("publish", e))?;
        ack.await.map_err(|e| unavailable("publish ack", e))?;
        Ok(Some(stored.doc(job_id)))
    }

    /// A job's live log is its subject in the queue's live stream (in the server's memory).
    async fn publish_live(&self, job_id: &str, event: &LiveEvent) -> Result<()> {
        let subject = self.live_subject(job_id)?;
        let body = event.encode()?;
        let ack = self
            .js
            .publish(subject, body.into())
            .await
            .map_err(|e| unavailable("live publish", e))?;
        match tokio::time::timeout(self.timeout, ack).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(unavailable("live publish", error)),
            Err(_) => Err(Error::timeout(
                "NATS did not acknowledge a live job event in time",
            )),
        }
    }

    /// Reads the job's live log through an ordered consumer of its own (ephemeral: the server
    /// forgets it once the stream is dropped).
    async fn follow_live(&self, job_id: &str) -> Result<Option<LiveEvents>> {
        let consumer = self
            .live
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: self.live_subject(job_id)?,
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("live consumer", e))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| unavailable("live consumer", e))?;
        Ok(Some(Box::pin(messages.filter_map(|message| async move {
            match message {
                Ok(message) => LiveEvent::decode(&message.payload).map(Ok),
                Err(error) => Some(Err(unavailable("live read", error))),
            }
        }))))
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn ledger(&self) -> Arc<dyn EffectLedger> {
        Arc::new(NatsLedger {
            kv: self.kv.clone(),
        })
    }
}

/// Side effects recorded in the queue's key-value bucket.
#[derive(Clone)]
struct NatsLedger {
    kv: Store,
}

#[async_trait]
impl EffectLedger for NatsLedger {
    async fn recorded(&self, key: &str) -> Result<Option<String>> {
        let value = self
            .kv
            .get(format!("effect.{}", hex(key)))
            .await
            .map_err(|e| unavailable("read", e))?;
        Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    async fn record(&self, key: &str, output: &str) -> Result<()> {
        self.kv
            .put(format!("effect.{}", hex(key)), output.to_owned().into())
            .await
            .map(|_| ())
            .map_err(|e| unavailable("write", e))
    }
}
