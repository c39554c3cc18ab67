//! [`Worker`]: claims jobs, runs their agents, finishes each once.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use agentkit_core::observer::{Observer, RunReport, RunSummary};
use agentkit_core::tool::{EffectLedger, JobAttempt, JobId, Ledger};
use agentkit_core::{
    AgentEvent, Backoff, BoxExecutor, Context, Error, ErrorKind, Executor, Invocation, Reply,
    Result, TraceContext, generate_id,
};
use agentkit_store::{LeaseStore, SessionAgent, SessionStore};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::webhook::WebhookSender;
use super::{Delivery, Finish, JobError, JobQueue, JobResult, JobSpec, LiveEvent};
use crate::leases::SessionLeases;

/// The agent of webhook deliveries. A job's callback travels as a job of its own, enqueued
/// before the job is finished: a worker that dies after finishing (or while the receiver is
/// down) leaves the delivery in the queue for another worker, instead of losing it.
pub(crate) const WEBHOOK_AGENT: &str = "agentkit.webhook";

/// The job that delivers the document of the job `job_id` (submitted as `spec`) to `url`
/// once that job has ended: queued by whatever ends it (a worker, or a cancel), keyed by the
/// job so that it is queued once.
pub(crate) fn webhook_job(job_id: &str, spec: &JobSpec, url: &str) -> JobSpec {
    let mut metadata = serde_json::Map::new();
    metadata.insert("job_id".into(), job_id.into());
    JobSpec {
        agent: WEBHOOK_AGENT.to_owned(),
        input: vec![agentkit_core::Message::user(format!(
            "deliver job {job_id} to its callback"
        ))],
        metadata,
        tenant: spec.tenant.clone(),
        callback_url: Some(url.to_owned()),
        idempotency_key: Some(super::webhook_key(job_id)),
        request_id: spec.request_id.clone(),
        traceparent: spec.traceparent.clone(),
        ..JobSpec::default()
    }
}

/// What runs a job (see [`Worker::runner`]).
enum Runner<'a> {
    Session(&'a SessionAgent<BoxExecutor>),
    Stateless(&'a BoxExecutor),
}

/// How many times a webhook delivery is claimed before it is dead: each claim makes several
/// HTTP attempts, and claims that find the job not yet ended wait for it (up to 30 s each).
const WEBHOOK_MAX_ATTEMPTS: u32 = 20;

struct Inner {
    queue: Arc<dyn JobQueue>,
    /// The queue's side-effect ledger, made once.
    ledger: Arc<dyn EffectLedger>,
    agents: HashMap<String, BoxExecutor>,
    sessions: HashMap<String, SessionAgent<BoxExecutor>>,
    id: String,
    concurrency: usize,
    max_attempts: u32,
    backoff: Backoff,
    heartbeat: Duration,
    job_timeout: Duration,
    drain: Duration,
    webhooks: Option<WebhookSender>,
    observer: Option<Arc<dyn Observer>>,
}

/// Runs jobs: claims up to `concurrency` at a time, runs each job's agent in the job's
/// [`Context`] (request id, tenant and trace context from the submission, the job id and the
/// queue's side-effect ledger as extensions), heartbeats while it runs, and finishes it:
///
/// - a reply → succeeded, the result stored once;
/// - a retryable error (unavailable, rate limited, timeout, busy) → released for a retry after
///   an exponential backoff with full jitter, until `max_attempts`, then dead;
/// - any other error → failed;
/// - a delivery already attempted `max_attempts` times (its workers kept dying) → dead.
///
/// Terminal jobs with a `callback_url` get a signed webhook. On shutdown the worker stops
/// claiming, lets running jobs finish for the drain timeout, and hands back the rest.
///
/// ```
/// use std::sync::Arc;
/// use agentkit_core::model::ScriptedModel;
/// use agentkit_transport::jobs::{MemoryJobQueue, Worker};
///
/// let queue = Arc::new(MemoryJobQueue::new());
/// let agent = agentkit_core::demo::assistant_builder(Arc::new(ScriptedModel::demo())).build()?;
/// let worker = Worker::builder(queue).agent("assistant", agent).concurrency(8).build()?;
/// // tokio::spawn(async move { worker.run(agentkit_transport::shutdown_signal()).await });
/// # let _ = worker;
/// # Ok::<_, agentkit_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.inner.id)
            .field("concurrency", &self.inner.concurrency)
            .field("max_attempts", &self.inner.max_attempts)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Worker`].
#[must_use]
pub struct WorkerBuilder {
    queue: Arc<dyn JobQueue>,
    agents: Vec<(String, BoxExecutor)>,
    store: Option<Arc<dyn SessionStore>>,
    leases: Option<SessionLeases>,
    id: Option<String>,
    concurrency: usize,
    max_attempts: u32,
    backoff: Backoff,
    heartbeat: Duration,
    job_timeout: Duration,
    drain: Duration,
    webhooks: Option<WebhookSender>,
    observer: Option<Arc<dyn Observer>>,
}

impl fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("agents", &self.agents.len())
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A builder for a worker of `queue`.
    pub fn builder(queue: Arc<dyn JobQueue>) -> WorkerBuilder {
        WorkerBuilder {
            queue,
            agents: Vec::new(),
            store: None,
            leases: None,
            id: None,
            concurrency: 8,
            max_attempts: 5,
            backoff: Backoff::new()
                .base(Duration::from_millis(500))
                .max_delay(Duration::from_secs(60)),
            heartbeat: Duration::from_secs(10),
            job_timeout: Duration::from_secs(600),
            drain: Duration::from_secs(30),
            webhooks: None,
            observer: None,
        }
    }

    /// This worker's consumer id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }
}

impl WorkerBuilder {
    /// Runs jobs for the agent `name` with `executor`.
    pub fn agent(mut self, name: impl Into<String>, executor: impl Executor + 'static) -> Self {
        self.agents.push((name.into(), BoxExecutor::new(executor)));
        self
    }

    /// Runs session jobs as turns of sessions in `store`.
    pub fn sessions(mut self, store: Arc<dyn SessionStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Runs session jobs under a lease per session in `store`, held by `owner` for `ttl` and
    /// renewed while the turn runs, as the service's instances do
    /// ([`ApiBuilder::session_leases`](crate::ApiBuilder::session_leases)): a session job
    /// then waits for a turn another instance or worker is running on its session instead of
    /// racing it. Give the workers and the service the same lease store. [`build`](Self::build)
    /// refuses an empty owner and a `ttl` under 100 ms.
    pub fn session_leases(
        mut self,
        store: Arc<dyn LeaseStore>,
        owner: impl Into<String>,
        ttl: Duration,
    ) -> Self {
        self.leases = Some(SessionLeases::new(store, owner, ttl));
        self
    }

    /// The consumer id (default: random).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Jobs run at once (default 8).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Attempts before a job is dead (default 5).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// The backoff between attempts of a job (default 500 ms base, 60 s cap, full jitter).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How often a running job is heartbeaten (default 10 s; keep it well under the queue's
    /// visibility timeout).
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// The deadline of one run (default 10 min).
    pub fn job_timeout(mut self, timeout: Duration) -> Self {
        self.job_timeout = timeout;
        self
    }

    /// How long shutdown lets running jobs finish before handing them back (default 30 s).
    pub fn drain(mut self, drain: Duration) -> Self {
        self.drain = drain;
        self
    }

    /// Sends signed webhooks to the jobs' callback URLs.
    pub fn webhooks(mut self, sender: WebhookSender) -> Self {
        self.webhooks = Some(sender);
        self
    }

    /// Reports queue depth to `observer` (default: the process-wide one, if installed).
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<Worker> {
        if self.agents.is_empty() {
            return Err(Error::invalid_input("a worker needs at least one agent"));
        }
        let mut agents = HashMap::new();
        let mut sessions = HashMap::new();
        for (name, executor) in self.agents {
            if let Some(store) = &self.store {
                let mut session = SessionAgent::builder(executor.clone(), store.clone());
                if let Some(leases) = &self.leases {
                    session = leases.apply(session)?;
                }
                sessions.insert(name.clone(), session.build());
            }
            if agents.insert(name.clone(), executor).is_some() {
                return Err(Error::invalid_input(format!(
                    "agent `{name}` is registered twice"
                )));
            }
        }
        Ok(Worker {
            inner: Arc::new(Inner {
                ledger: self.queue.ledger(),
                queue: self.queue,
                agents,
                sessions,
                id: self
                    .id
                    .unwrap_or_else(|| format!("worker-{}", &generate_id()[..12])),
                concurrency: self.concurrency,
                max_attempts: self.max_attempts,
                backoff: self.backoff.max_attempts(self.max_attempts),
                heartbeat: self.heartbeat,
                job_timeout: self.job_timeout,
                drain: self.drain,
                webhooks: self.webhooks,
                observer: self.observer,
            }),
        })
    }
}

impl Worker {
    /// Claims and runs jobs until `shutdown` resolves, then drains (see the type's docs).
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let inner = &self.inner;
        let slots = Arc::new(Semaphore::new(inner.concurrency));
        let hand_back = CancellationToken::new();
        let mut running = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        tracing::info!(worker = %inner.id, concurrency = inner.concurrency, "worker started");
        let reporting = self.report_depth();
        let _stop_reporting = reporting.map(AbortOnDrop);
        loop {
            while running.try_join_next().is_some() {}
            let free = slots.available_permits();
            // Claim in batches: wait for a quarter of the slots to free up (a claim costs round
            // trips whatever its size), unless nothing runs at all.
            let batch = (inner.concurrency / 4).max(1);
            if free < batch && !running.is_empty() {
                tokio::select! {
                    _ = running.join_next() => continue,
                    () = &mut shutdown => break,
                }
            }
            if free == 0 {
                tokio::select! {
                    _ = running.join_next() => continue,
                    () = &mut shutdown => break,
                }
            }
            let claimed = tokio::select! {
                claimed = inner.queue.claim(&inner.id, free, Duration::from_secs(1)) => claimed,
                () = &mut shutdown => break,
            };
            let deliveries = match claimed {
                Ok(deliveries) => deliveries,
                Err(error) => {
                    tracing::warn!(worker = %inner.id, %error, "cannot claim jobs; retrying in 1 s");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        () = &mut shutdown => break,
                    }
                }
            };
            for delivery in deliveries {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    // More than asked for: give it back at once.
                    let _ = inner.queue.release(&delivery, Duration::ZERO, None).await;
                    continue;
                };
                let worker = self.clone();
                let hand_back = hand_back.clone();
                // Boxed once here: the runtime moves a spawned future several times on its
                // way into the task, and a job's is hundreds of bytes.
                running.spawn(Box::pin(async move {
                    worker.process(delivery, hand_back).await;
                    drop(slot);
                }));
            }
        }
        tracing::info!(worker = %inner.id, running = running.len(), "worker stopping: draining running jobs");
        let drained = tokio::time::timeout(inner.drain, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            hand_back.cancel();
            while running.join_next().await.is_some() {}
        }
        tracing::info!(worker = %inner.id, "worker stopped");
        Ok(())
    }

    fn observer(&self) -> Option<&Arc<dyn Observer>> {
        self.inner
            .observer
            .as_ref()
            .or_else(|| agentkit_core::observer::global_observer())
    }

    /// Reports the queue's depth every 5 s while running, when someone observes.
    fn report_depth(&self) -> Option<tokio::task::JoinHandle<()>> {
        let observer = self.observer()?.clone();
        let queue = self.inner.queue.clone();
        Some(tokio::spawn(async move {
            loop {
                if let Ok(depth) = queue.depth().await {
                    observer.queue_depth(queue.name(), depth);
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }))
    }

    fn context(&self, job_id: &str, attempt: u32, spec: &JobSpec) -> Context {
        let request_id = if spec.request_id.is_empty() {
            generate_id()
        } else {
            spec.request_id.clone()
        };
        let mut cx = Context::for_request(request_id)
            .with_tenant(spec.tenant.as_str())
            .with_timeout(self.inner.job_timeout)
            .with_extension(JobId(job_id.into()))
            .with_extension(JobAttempt(attempt))
            .with_extension(Ledger(self.inner.ledger.clone()))
            .with_extension(RunReport::new());
        let trace = spec
            .traceparent
            .as_deref()
            .and_then(TraceContext::parse)
            .unwrap_or_else(TraceContext::new_root);
        cx = cx.with_trace(trace);
        if let Some(session) = &spec.session_id
            && let Ok(stored) = crate::api::stored_session_id(&spec.agent, session)
        {
            cx = cx.with_session_id(stored);
        }
        cx
    }

    /// What runs `spec`: the agent's sessions for a session job, else the agent.
    fn runner(&self, spec: &JobSpec) -> Result<Runner<'_>> {
        if spec.session_id.is_some() {
            let sessions = self.inner.sessions.get(&spec.agent).ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidInput,
                    "this worker keeps no sessions; it cannot run a session job",
                )
            })?;
            return Ok(Runner::Session(sessions));
        }
        let executor = self.inner.agents.get(&spec.agent).ok_or_else(|| {
            Error::not_found(format!("this worker runs no agent named `{}`", spec.agent))
        })?;
        Ok(Runner::Stateless(executor))
    }

    async fn execute(&self, delivery: &Delivery, spec: &JobSpec, cx: Context) -> Result<Reply> {
        let invocation = Invocation {
            input: spec.input.clone(),
            history: spec.history.clone(),
            context: cx,
            metadata: spec.metadata.clone(),
        };
        let runner = self.runner(spec)?;
        if spec.stream {
            return Box::pin(self.execute_live(delivery, runner, invocation)).await;
        }
        match runner {
            // Boxed, as the executors' runs are: a session run's future (load, run, save) is
            // large, and inline it would weigh on every job's task.
            Runner::Session(sessions) => Box::pin(sessions.execute(invocation)).await,
            Runner::Stateless(executor) => executor.execute(invocation).await,
        }
    }

    /// Runs a job submitted with [`JobSpec::stream`]: its events go to the job's live log as
    /// they happen, then the attempt's end marker, whatever the outcome. A live log that
    /// cannot be written does not fail the job (the job's document still gets the whole
    /// reply): the attempt's later events are skipped.
    async fn execute_live(
        &self,
        delivery: &Delivery,
        runner: Runner<'_>,
        invocation: Invocation,
    ) -> Result<Reply> {
        let queue = &self.inner.queue;
        let job_id = &delivery.job.job_id;
        let attempt = delivery.attempt;
        let run = async {
            let mut events = match runner {
                Runner::Session(sessions) => sessions.stream(invocation).await?,
                Runner::Stateless(executor) => executor.stream(invocation).await?,
            };
            let mut publishing = true;
            while let Some(event) = events.next().await {
                match event? {
                    AgentEvent::Done(reply) => return Ok(*reply),
                    event if publishing => {
                        let entry = LiveEvent::event(attempt, event);
                        if let Err(error) = queue.publish_live(job_id, &entry).await {
                            tracing::warn!(%job_id, %error, "cannot write the job's live events; skipping the rest of this attempt's");
                            publishing = false;
                        }
                    }
                    _ => {}
                }
            }
            Err(Error::internal("the run's events ended without its reply"))
        };
        let outcome = run.await;
        if let Err(error) = queue.publish_live(job_id, &LiveEvent::end(attempt)).await {
            tracing::warn!(%job_id, %error, "cannot end the job's live events");
        }
        outcome
    }

    /// Runs `work` while heartbeating `delivery`; `None` when the job ended meanwhile
    /// (cancelled, or finished by another worker after this one lost its claim), and `work`
    /// was dropped. Between heartbeats it awaits the job's end, which the memory, Redis and
    /// NATS queues learn of as it happens, so a cancel stops the run at once.
    async fn heartbeating<T>(
        &self,
        delivery: &Delivery,
        work: impl Future<Output = T>,
    ) -> Option<T> {
        // Work that ends in its first poll (no model or tool call waited) needs no heartbeat:
        // no timer is set and cancelled for it.
        let mut work = std::pin::pin!(work);
        if let std::task::Poll::Ready(out) = futures::poll!(work.as_mut()) {
            return Some(out);
        }
        let queue = &self.inner.queue;
        let job_id = &delivery.job.job_id;
        let beat = async {
            loop {
                match queue.until_ended(job_id, self.inner.heartbeat).await {
                    Ok(Some(doc)) if doc.status.is_terminal() => return,
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%job_id, %error, "cannot read the job's status");
                        tokio::time::sleep(self.inner.heartbeat).await;
                    }
                }
                if let Err(error) = queue.heartbeat(delivery).await {
                    tracing::warn!(%job_id, %error, "heartbeat failed");
                }
            }
        };
        tokio::select! {
            out = work => Some(out),
            () = beat => None,
        }
    }

    async fn process(&self, delivery: Delivery, hand_back: CancellationToken) {
        let inner = &self.inner;
        let job_id = delivery.job.job_id.clone();
        let spec = match delivery.spec() {
            Ok(spec) => spec,
            Err(error) => {
                self.end(&delivery, Finish::Failed(JobError::from(&error)), None)
                    .await;
                return;
            }
        };
        if spec.agent == WEBHOOK_AGENT {
            // Boxed: an HTTP delivery's future is kilobytes, and kept inline it would make
            // every job's task that much larger to allocate and move.
            self.heartbeating(&delivery, Box::pin(self.deliver_webhook(&delivery, spec)))
                .await;
            return;
        }
        if delivery.attempt > inner.max_attempts {
            let error = JobError {
                code: ErrorKind::Unavailable.code().to_owned(),
                message: format!(
                    "gave up after {} attempts: the workers running it stopped or timed out",
                    inner.max_attempts
                ),
            };
            self.end(&delivery, Finish::Dead(error), spec.callback_url.as_deref())
                .await;
            return;
        }
        let cx = self.context(&job_id, delivery.attempt, spec);
        let report = cx.extension::<RunReport>().cloned();
        let trace = cx.trace().cloned();
        let started = std::time::Instant::now();
        let outcome = tokio::select! {
            outcome = self.heartbeating(&delivery, self.execute(&delivery, spec, cx)) => outcome,
            () = hand_back.cancelled() => {
                tracing::info!(%job_id, "handing the job back on shutdown");
                if let Err(error) = inner.queue.release(&delivery, Duration::ZERO, None).await {
                    tracing::warn!(%job_id, %error, "cannot hand the job back; it will be reclaimed after the visibility timeout");
                }
                return;
            }
        };
        let callback = spec.callback_url.as_deref();
        let Some(outcome) = outcome else {
            // The job ended already (cancelled, or finished by another worker); this
            // acknowledges the delivery without changing the job (its callback, if any, was
            // queued by whatever ended it).
            let cancelled = Error::cancelled();
            log_job(
                &delivery,
                spec,
                trace.as_ref(),
                report.as_ref(),
                started,
                Some(&cancelled),
            );
            tracing::info!(%job_id, "the job ended elsewhere (cancelled, or finished by another worker); its run is stopped");
            if spec.stream {
                let end = LiveEvent::end(delivery.attempt);
                if let Err(error) = inner.queue.publish_live(&job_id, &end).await {
                    tracing::warn!(%job_id, %error, "cannot end the job's live events");
                }
            }
            let finish = Finish::Failed(JobError::from(&cancelled));
            if let Err(error) = inner.queue.finish(&delivery, finish).await {
                tracing::warn!(%job_id, %error, "cannot acknowledge the cancelled job; it will be delivered again and skipped");
            }
            return;
        };
        log_job(
            &delivery,
            spec,
            trace.as_ref(),
            report.as_ref(),
            started,
            outcome.as_ref().err(),
        );
        match outcome {
            Ok(reply) => {
                self.end(&delivery, Finish::Succeeded(reply.into()), callback)
                    .await
            }
            Err(error) if error.is_retryable() => {
                match inner.backoff.next_delay(delivery.attempt, &error, None) {
                    Some(delay) => {
                        tracing::warn!(%job_id, attempt = delivery.attempt, %error, delay_ms = delay.as_millis() as u64, "job failed; retrying");
                        if let Err(e) = inner
                            .queue
                            .release(&delivery, delay, Some(JobError::from(&error)))
                            .await
                        {
                            tracing::warn!(%job_id, error = %e, "cannot release the job; it will be reclaimed");
                        }
                    }
                    None => {
                        self.end(&delivery, Finish::Dead(JobError::from(&error)), callback)
                            .await
                    }
                }
            }
            Err(error) => {
                self.end(&delivery, Finish::Failed(JobError::from(&error)), callback)
                    .await
            }
        }
    }

    async fn end(&self, delivery: &Delivery, finish: Finish, callback: Option<&str>) {
        let job_id = &delivery.job.job_id;
        match (callback, &self.inner.webhooks) {
            (Some(url), Some(_)) => {
                if let Err(error) = self.queue_webhook(delivery, url).await {
                    tracing::error!(%job_id, %error, "cannot queue the job's webhook; leaving the job to be delivered again");
                    return;
                }
            }
            (Some(_), None) => {
                tracing::warn!(%job_id, "the job has a callback_url but this worker sends no webhooks (it has no webhook secret); no callback is sent");
            }
            (None, _) => {}
        }
        let status = finish.status();
        let doc = match self.inner.queue.finish(delivery, finish).await {
            Ok(doc) => doc,
            Err(error) => {
                tracing::error!(%job_id, %error, "cannot finish the job; it will be delivered again");
                return;
            }
        };
        tracing::info!(%job_id, status = status.as_str(), attempts = doc.attempts, "job ended");
    }

    /// Enqueues the delivery of `delivery`'s job document to `url` (once per job: the key is
    /// the job's).
    async fn queue_webhook(&self, delivery: &Delivery, url: &str) -> Result<()> {
        let webhook = webhook_job(&delivery.job.job_id, delivery.spec()?, url);
        self.inner.queue.enqueue(webhook).await.map(drop)
    }

    /// Runs a webhook delivery: POSTs the job's stored document once the job has ended.
    async fn deliver_webhook(&self, delivery: &Delivery, spec: &JobSpec) {
        let queue = &self.inner.queue;
        let hook_id = &delivery.job.job_id;
        let target = spec.callback_url.as_deref().zip(
            spec.metadata
                .get("job_id")
                .and_then(serde_json::Value::as_str),
        );
        let Some((url, job_id)) = target else {
            let error =
                Error::invalid_input("a webhook delivery needs a callback_url and a job_id");
            let _ = queue
                .finish(delivery, Finish::Failed(JobError::from(&error)))
                .await;
            return;
        };
        let retry = |error: Error| async move {
            let delay = Backoff::new()
                .base(Duration::from_millis(200))
                .max_delay(Duration::from_secs(30))
                .max_attempts(WEBHOOK_MAX_ATTEMPTS)
                .next_delay(delivery.attempt, &error, None);
            let outcome = match delay {
                Some(delay) => {
                    queue
                        .release(delivery, delay, Some(JobError::from(&error)))
                        .await
                }
                None => {
                    tracing::error!(%job_id, %error, "webhook delivery gave up");
                    queue
                        .finish(delivery, Finish::Dead(JobError::from(&error)))
                        .await
                        .map(drop)
                }
            };
            if let Err(e) = outcome {
                tracing::warn!(%hook_id, error = %e, "cannot release the webhook delivery; it will be reclaimed");
            }
        };
        let Some(sender) = &self.inner.webhooks else {
            return retry(Error::unavailable("this worker has no webhook secret")).await;
        };
        let doc = match queue.get(job_id).await {
            Ok(Some(doc)) if doc.status.is_terminal() => doc,
            Ok(Some(_)) => return retry(Error::unavailable("the job has not ended yet")).await,
            Ok(None) => {
                let error = Error::not_found(format!("job {job_id} is gone"));
                let _ = queue
                    .finish(delivery, Finish::Failed(JobError::from(&error)))
                    .await;
                return;
            }
            Err(error) => return retry(error).await,
        };
        match sender.deliver(url, &doc).await {
            Ok(()) => {
                let done = JobResult {
                    output: format!("delivered job {job_id}"),
                    messages: Vec::new(),
                    usage: agentkit_core::Usage::default(),
                    cost_usd: 0.0,
                    tool_calls: Vec::new(),
                };
                if let Err(error) = queue.finish(delivery, Finish::Succeeded(done)).await {
                    tracing::warn!(%hook_id, %error, "cannot finish the webhook delivery; the receiver may get it twice");
                }
            }
            Err(error) => {
                tracing::warn!(%job_id, %error, "webhook receiver failed; delivering again later");
                retry(error).await;
            }
        }
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One log line per finished job run, with what the run left in its [`RunReport`] (read only
/// when the line is wanted).
fn log_job(
    delivery: &Delivery,
    spec: &JobSpec,
    trace: Option<&TraceContext>,
    report: Option<&RunReport>,
    started: std::time::Instant,
    error: Option<&Error>,
) {
    if !tracing::enabled!(target: "agentkit::job", tracing::Level::INFO) {
        return;
    }
    let s: RunSummary = report.and_then(RunReport::get).unwrap_or_default();
    tracing::info!(
        target: "agentkit::job",
        job_id = %delivery.job.job_id,
        attempt = delivery.attempt,
        request_id = %spec.request_id,
        trace_id = s.trace_id.clone().or_else(|| trace.map(TraceContext::trace_id_hex)).as_deref(),
        span_id = s.span_id.as_deref(),
        tenant = %spec.tenant,
        agent = %spec.agent,
        agent_version = (!s.agent_version.is_empty()).then_some(s.agent_version.as_str()),
        session_id = spec.session_id.as_deref(),
        model = (!s.model.is_empty()).then_some(s.model.as_str()),
        tokens_in = s.tokens_in,
        tokens_out = s.tokens_out,
        tool_calls = s.tool_names.len(),
        tool_names = %s.tool_names.join(","),
        cost_usd = s.cost_usd,
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        outcome = if error.is_none() { "ok" } else { "error" },
        error_code = error.map(Error::code),
        "job run finished"
    );
}
