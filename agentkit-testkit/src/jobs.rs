//! The job queue conformance suite: every [`JobQueue`] backend runs these cases, each on a fresh
//! queue of its own, with a one-second visibility timeout.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agentkit_core::model::{ScriptedModel, ScriptedTurn};
use agentkit_core::tool::tool_fn_with_context;
use agentkit_core::{
    Agent, AgentEvent, Backoff, Error, Executor, Invocation, Message, Reply, Result,
};
use agentkit_transport::jobs::{
    Finish, JobDoc, JobQueue, JobSpec, JobStatus, LiveEvent, LiveEvents, Worker,
};
use futures::StreamExt;

/// The visibility timeout every conformance queue is made with.
pub const VISIBILITY: Duration = Duration::from_secs(1);

/// Expands into one `#[tokio::test]` per case. `$factory` is an async closure
/// `|name: String| -> Option<Arc<dyn JobQueue>>` building a queue with [`VISIBILITY`].
#[macro_export]
macro_rules! job_queue_conformance {
    ($factory:expr) => {
        $crate::job_queue_conformance!(@cases $factory;
            enqueue_claim_finish_once, idempotency_keys, release_with_a_delay, reclaim_after_silence,
            heartbeats_keep_the_claim, depth_counts_waiting_jobs, ledger_round_trip,
            an_empty_claim_waits_then_takes_what_arrives,
            poison_job_is_dead_after_n_attempts, worker_runs_everything,
            redelivery_does_not_repeat_side_effects, concurrent_finishes_each_land_once,
            until_ended_wakes_when_the_job_ends, a_hand_back_is_not_an_attempt,
            a_streamed_job_writes_its_run_live, a_cancelled_job_does_not_run,
            a_dead_job_runs_again_when_retried);
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let factory = $factory;
                let Some(queue) = factory($crate::unique(stringify!($case)).replace(['.', ':'], "-")).await else {
                    return;
                };
                $crate::jobs::$case(queue).await;
            }
        )*
    };
}

/// A [`Worker`] running in a task of its own until [`stop`](Self::stop)ped (or dropped, which
/// stops it too).
#[derive(Debug)]
pub struct RunningWorker {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl RunningWorker {
    /// Runs `worker` on the current runtime.
    pub fn spawn(worker: Worker) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            worker
                .run(async {
                    let _ = stopped.await;
                })
                .await
        });
        Self { stop, task }
    }

    /// Asks the worker to stop and waits until it has drained.
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.task
            .await
            .map_err(|e| Error::internal(format!("the worker task failed: {e}")))?
    }

    /// Kills the worker's task where it stands, as a killed process would stop.
    pub async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A job spec for `agent` with `text` as input.
pub fn spec(agent: &str, text: &str) -> JobSpec {
    JobSpec {
        agent: agent.into(),
        input: vec![Message::user(text)],
        tenant: "acme".into(),
        request_id: agentkit_core::generate_id(),
        ..JobSpec::default()
    }
}

/// A job result whose answer is `output`.
pub fn job_result(output: &str) -> agentkit_transport::jobs::JobResult {
    agentkit_transport::jobs::JobResult::from(Reply {
        output: output.into(),
        ..Reply::default()
    })
}

/// Claims one delivery as consumer `c`, waiting up to `wait`; `None` when none came.
pub async fn claim_one(
    queue: &dyn JobQueue,
    wait: Duration,
) -> Option<agentkit_transport::jobs::Delivery> {
    queue.claim("conformance", 1, wait).await.unwrap().pop()
}

async fn wait_for(queue: &dyn JobQueue, job_id: &str, within: Duration) -> JobDoc {
    let until = tokio::time::Instant::now() + within;
    loop {
        let doc = queue.get(job_id).await.unwrap().expect("the job exists");
        if doc.status.is_terminal() {
            return doc;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "job {job_id} stuck in {:?}",
            doc.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Enqueue, claim, finish; a second finish changes nothing (the result is stored once).
pub async fn enqueue_claim_finish_once(queue: Arc<dyn JobQueue>) {
    let job = queue.enqueue(spec("assistant", "hi")).await.unwrap();
    assert!(job.created);
    let doc = queue.get(&job.job_id).await.unwrap().unwrap();
    assert_eq!(doc.status, JobStatus::Queued);
    assert_eq!(doc.tenant(), Some("acme"));
    let delivery = claim_one(queue.as_ref(), Duration::from_secs(2))
        .await
        .expect("a delivery");
    assert_eq!(delivery.job.job_id, job.job_id);
    assert_eq!(delivery.attempt, 1);
    assert_eq!(delivery.spec().unwrap().input[0].text_content(), "hi");
    assert_eq!(
        queue.get(&job.job_id).await.unwrap().unwrap().status,
        JobStatus::Running
    );
    let result = job_result("first");
    let doc = queue
        .finish(&delivery, Finish::Succeeded(result))
        .await
        .unwrap();
    assert_eq!(doc.status, JobStatus::Succeeded);
    assert_eq!(doc.result.as_ref().unwrap().output, "first");
    let again = job_result("second");
    let doc = queue
        .finish(&delivery, Finish::Succeeded(again))
        .await
        .unwrap();
    assert_eq!(
        doc.result.unwrap().output,
        "first",
        "a result is stored once"
    );
    assert!(
        claim_one(queue.as_ref(), Duration::from_millis(200))
            .await
            .is_none(),
        "acknowledged"
    );
    assert!(queue.get("no-such-job").await.unwrap().is_none());
    // An id no backend could have made (not a key, a subject token or an entry id) is not
    // found either, rather than an error.
    assert!(queue.get("no.such>job *").await.unwrap().is_none());
}

/// [`JobQueue::until_ended`], which callers awaiting jobs use (as
/// [`QueueExecutor`](agentkit_transport::jobs::QueueExecutor) does): a caller waiting for a
/// job that succeeds and one that fails gets the ended document when the job ends (not
/// before); an ended job's document comes at once; a wait that is up gives the job as it
/// stands; an unknown job is `None`. How soon after the end a caller hears of it is
/// measured by the `queue_throughput` bench, not here.
pub async fn until_ended_wakes_when_the_job_ends(queue: Arc<dyn JobQueue>) {
    let succeeds = queue.enqueue(spec("assistant", "hi")).await.unwrap().job_id;
    let fails = queue.enqueue(spec("assistant", "hi")).await.unwrap().job_id;
    let open = queue
        .until_ended(&succeeds, Duration::from_millis(100))
        .await
        .unwrap()
        .expect("a queued job");
    assert_eq!(
        open.status,
        JobStatus::Queued,
        "a wait that is up: as it stands"
    );
    let mut deliveries = Vec::new();
    while deliveries.len() < 2 {
        let delivery = claim_one(queue.as_ref(), Duration::from_secs(5))
            .await
            .expect("both jobs delivered");
        deliveries.push(delivery);
    }
    let waiter = |job: &str| {
        let (queue, job) = (queue.clone(), job.to_owned());
        tokio::spawn(async move { queue.until_ended(&job, Duration::from_secs(600)).await })
    };
    for (job, finish, status) in [
        (
            &succeeds,
            Finish::Succeeded(job_result("done")),
            JobStatus::Succeeded,
        ),
        (
            &fails,
            Finish::Failed("no good".parse().unwrap()),
            JobStatus::Failed,
        ),
    ] {
        let waiting = waiter(job);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "answered before the job ended");
        let delivery = deliveries.iter().find(|d| &d.job.job_id == job).unwrap();
        queue.finish(delivery, finish).await.unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(20), waiting)
            .await
            .unwrap_or_else(|_| panic!("the caller awaiting the {status:?} job heard of its end"))
            .unwrap()
            .unwrap()
            .expect("the job's document");
        assert_eq!(ended.job_id, *job);
        assert_eq!(ended.status, status);
        let again = tokio::time::timeout(
            Duration::from_secs(10),
            queue.until_ended(job, Duration::from_secs(600)),
        )
        .await
        .expect("an ended job's document comes at once")
        .unwrap()
        .unwrap();
        assert_eq!(again.status, status);
    }
    let unknown = tokio::time::timeout(
        Duration::from_secs(10),
        queue.until_ended("no-such-job", Duration::from_secs(600)),
    )
    .await
    .expect("an unknown job is answered at once");
    assert!(unknown.unwrap().is_none());
}

/// Forty jobs claimed in batches and finished all at once (backends may group finishes into
/// one call): each ends with its own result, once; a finish dropped half-way leaves its job
/// claimed (redelivered later), not lost or mixed up with another's.
pub async fn concurrent_finishes_each_land_once(queue: Arc<dyn JobQueue>) {
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(
            queue
                .enqueue(spec("assistant", &format!("job {i}")))
                .await
                .unwrap()
                .job_id,
        );
    }
    let mut deliveries = Vec::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while deliveries.len() < ids.len() && tokio::time::Instant::now() < until {
        deliveries.extend(
            queue
                .claim("conformance", 16, Duration::from_millis(500))
                .await
                .unwrap(),
        );
    }
    assert_eq!(deliveries.len(), ids.len(), "every job claimed once");
    let dropped = deliveries.pop().unwrap();
    let finishes = deliveries.iter().map(|delivery| {
        let input = delivery.spec().unwrap().input[0].text_content();
        let result = job_result(&format!("done: {input}"));
        queue.finish(delivery, Finish::Succeeded(result))
    });
    // One finish abandoned at once, while the others are in flight.
    let abandoned = async {
        let result = agentkit_transport::jobs::JobResult::from(Reply::default());
        let finish = queue.finish(&dropped, Finish::Succeeded(result));
        let _ = tokio::time::timeout(Duration::ZERO, finish).await;
    };
    let (docs, ()) = tokio::join!(futures::future::join_all(finishes), abandoned);
    for (doc, delivery) in docs.into_iter().zip(&deliveries) {
        let doc = doc.unwrap();
        assert_eq!(doc.job_id, delivery.job.job_id);
        assert_eq!(doc.status, JobStatus::Succeeded);
        let stored = queue.get(&doc.job_id).await.unwrap().unwrap();
        let input = delivery.spec().unwrap().input[0].text_content();
        assert_eq!(stored.status, JobStatus::Succeeded);
        assert_eq!(stored.result.unwrap().output, format!("done: {input}"));
    }
    // The abandoned one either landed whole or is still held (and comes back once its claim
    // lapses); finishing it now stores a result exactly once.
    let stored = queue.get(&dropped.job.job_id).await.unwrap().unwrap();
    assert!(
        matches!(stored.status, JobStatus::Running | JobStatus::Succeeded),
        "abandoned finish left {:?}",
        stored.status
    );
    let result = job_result("late");
    let doc = queue
        .finish(&dropped, Finish::Succeeded(result))
        .await
        .unwrap();
    assert_eq!(doc.status, JobStatus::Succeeded);
}

/// The same key twice yields the same job; another tenant's key is another job.
pub async fn idempotency_keys(queue: Arc<dyn JobQueue>) {
    let mut keyed = spec("assistant", "charge 5");
    keyed.idempotency_key = Some("order-17".into());
    let first = queue.enqueue(keyed.clone()).await.unwrap();
    let second = queue.enqueue(keyed.clone()).await.unwrap();
    assert!(first.created);
    assert!(!second.created);
    assert_eq!(first.job_id, second.job_id);
    // What the key's job asked for can be read back, so a submission that reuses the key for
    // another request can be told apart.
    let doc = queue.get(&first.job_id).await.unwrap().unwrap();
    assert_eq!(doc.spec.as_deref(), Some(&keyed));
    let mut other = keyed.clone();
    other.tenant = "beta".into();
    let third = queue.enqueue(other).await.unwrap();
    assert!(third.created);
    assert_ne!(third.job_id, first.job_id);
    assert_eq!(queue.depth().await.unwrap(), 2);
    let mut empty = keyed;
    empty.input.clear();
    assert_eq!(
        queue.enqueue(empty).await.unwrap_err().kind(),
        agentkit_core::ErrorKind::InvalidInput
    );
}

/// A released job comes back after its delay, as a new attempt, with the error kept.
pub async fn release_with_a_delay(queue: Arc<dyn JobQueue>) {
    let job = queue.enqueue(spec("assistant", "retry me")).await.unwrap();
    let delivery = claim_one(queue.as_ref(), Duration::from_secs(2))
        .await
        .unwrap();
    let error = "model unavailable".parse().unwrap();
    queue
        .release(&delivery, Duration::from_millis(600), Some(error))
        .await
        .unwrap();
    let doc = queue.get(&job.job_id).await.unwrap().unwrap();
    assert_eq!(doc.status, JobStatus::Queued);
    assert_eq!(doc.error.unwrap().message, "model unavailable");
    assert!(
        claim_one(queue.as_ref(), Duration::from_millis(100))
            .await
            .is_none(),
        "not before its delay"
    );
    let again = claim_one(queue.as_ref(), Duration::from_secs(3)).await;
    let again = match again {
        Some(d) => d,
        None => claim_one(queue.as_ref(), Duration::from_secs(2))
            .await
            .expect("released job comes back"),
    };
    assert_eq!(again.job.job_id, job.job_id);
    assert_eq!(again.attempt, 2);
}

/// A job handed back without an error (a worker stopping) comes back as the same attempt,
/// so rolling restarts during a long job do not bring it nearer to the dead letters; a retry
/// (released with its error) is the next attempt.
pub async fn a_hand_back_is_not_an_attempt(queue: Arc<dyn JobQueue>) {
    let job = queue.enqueue(spec("assistant", "long job")).await.unwrap();
    // A claim may come back empty before its wait is up; a handed-back job comes back soon.
    let next = || async {
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(delivery) = claim_one(queue.as_ref(), Duration::from_secs(2)).await {
                return delivery;
            }
            assert!(tokio::time::Instant::now() < until, "the job came back");
        }
    };
    let mut delivery = next().await;
    assert_eq!(delivery.attempt, 1);
    for _ in 0..3 {
        queue
            .release(&delivery, Duration::ZERO, None)
            .await
            .unwrap();
        let doc = queue.get(&job.job_id).await.unwrap().unwrap();
        assert_eq!(doc.status, JobStatus::Queued);
        assert!(doc.error.is_none(), "{:?}", doc.error);
        delivery = next().await;
        assert_eq!(delivery.job.job_id, job.job_id);
        assert_eq!(delivery.attempt, 1, "a hand-back is not an attempt");
    }
    let error = "model unavailable".parse().unwrap();
    queue
        .release(&delivery, Duration::ZERO, Some(error))
        .await
        .unwrap();
    let retried = next().await;
    assert_eq!(retried.attempt, 2, "a retry is");
    let doc = queue
        .finish(&retried, Finish::Succeeded(job_result("done")))
        .await
        .unwrap();
    assert_eq!(doc.status, JobStatus::Succeeded);
    assert_eq!(doc.attempts, 2);
}

/// Waits out the [`VISIBILITY`] timeout of a claim nobody heartbeats, then claims as
/// `consumer` until the job comes back (a few tries: backends reclaim on their own schedule).
pub async fn reclaim(queue: &dyn JobQueue, consumer: &str) -> agentkit_transport::jobs::Delivery {
    tokio::time::sleep(VISIBILITY + Duration::from_millis(300)).await;
    for _ in 0..5 {
        let claimed = queue.claim(consumer, 1, Duration::from_secs(1)).await;
        if let Some(delivery) = claimed.unwrap().pop() {
            return delivery;
        }
    }
    panic!("no claim came back to {consumer}");
}

/// A claim nobody finishes or heartbeats is delivered again.
pub async fn reclaim_after_silence(queue: Arc<dyn JobQueue>) {
    let job = queue
        .enqueue(spec("assistant", "the worker dies"))
        .await
        .unwrap();
    let first = claim_one(queue.as_ref(), Duration::from_secs(2))
        .await
        .unwrap();
    drop(first); // the worker went silent
    let again = reclaim(queue.as_ref(), "another-worker").await;
    assert_eq!(again.job.job_id, job.job_id);
    assert_eq!(again.attempt, 2);
    let read = queue.get(&job.job_id).await.unwrap().unwrap();
    assert_eq!((read.status, read.attempts), (JobStatus::Running, 2));
    let result = job_result("second time");
    queue
        .finish(&again, Finish::Succeeded(result))
        .await
        .unwrap();
    let read = queue.get(&job.job_id).await.unwrap().unwrap();
    assert_eq!((read.status, read.attempts), (JobStatus::Succeeded, 2));
    assert_eq!(read.tenant(), Some("acme"), "the spec is kept");
    assert_eq!(read.result.unwrap().output, "second time");
}

/// Heartbeats keep a long job claimed past the visibility timeout.
pub async fn heartbeats_keep_the_claim(queue: Arc<dyn JobQueue>) {
    queue.enqueue(spec("assistant", "long job")).await.unwrap();
    let delivery = claim_one(queue.as_ref(), Duration::from_secs(2))
        .await
        .unwrap();
    for _ in 0..8 {
        tokio::time::sleep(VISIBILITY / 4).await;
        queue.heartbeat(&delivery).await.unwrap();
    }
    let stolen = queue
        .claim("another-worker", 1, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(
        stolen.is_empty(),
        "a heartbeaten job is not handed to another worker"
    );
    queue
        .finish(&delivery, Finish::Failed("done".parse().unwrap()))
        .await
        .unwrap();
}

/// Depth counts jobs waiting to run.
pub async fn depth_counts_waiting_jobs(queue: Arc<dyn JobQueue>) {
    assert_eq!(queue.depth().await.unwrap(), 0);
    for i in 0..3 {
        queue
            .enqueue(spec("assistant", &format!("job {i}")))
            .await
            .unwrap();
    }
    assert_eq!(queue.depth().await.unwrap(), 3);
    let _held = claim_one(queue.as_ref(), Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(queue.depth().await.unwrap(), 2);
    queue.ping().await.unwrap();
}

/// A claim on an empty queue waits for work rather than returning at once (an idle worker
/// would otherwise poll its server in a tight loop), returns empty when its wait ends, and
/// takes a job submitted while it waits.
pub async fn an_empty_claim_waits_then_takes_what_arrives(queue: Arc<dyn JobQueue>) {
    let wait = Duration::from_millis(600);
    let started = tokio::time::Instant::now();
    let claimed = queue.claim("idle", 4, wait).await.unwrap();
    let waited = started.elapsed();
    assert!(claimed.is_empty());
    assert!(
        waited >= wait / 2,
        "an empty claim returned after {waited:?} of its {wait:?}"
    );
    assert!(waited < wait * 10, "an empty claim took {waited:?}");

    let submitter = {
        let queue = queue.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            queue
                .enqueue(spec("assistant", "late"))
                .await
                .unwrap()
                .job_id
        })
    };
    let started = tokio::time::Instant::now();
    let mut claimed = Vec::new();
    // A claim may return empty at the end of a wait slice; the job comes within a few.
    while claimed.is_empty() && started.elapsed() < Duration::from_secs(10) {
        claimed = queue
            .claim("idle", 4, Duration::from_secs(2))
            .await
            .unwrap();
    }
    let job_id = submitter.await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].job.job_id, job_id);
}

/// The queue's side-effect ledger keeps what it is told.
pub async fn ledger_round_trip(queue: Arc<dyn JobQueue>) {
    let ledger = queue.ledger();
    assert_eq!(ledger.recorded("job-1:call_0_0").await.unwrap(), None);
    ledger
        .record("job-1:call_0_0", "{\"charged\":100}")
        .await
        .unwrap();
    assert_eq!(
        ledger.recorded("job-1:call_0_0").await.unwrap().as_deref(),
        Some("{\"charged\":100}")
    );
}

/// An executor that always fails with a retryable error.
struct AlwaysDown;

impl Executor for AlwaysDown {
    async fn execute(&self, _: Invocation) -> Result<Reply> {
        Err(Error::unavailable("the model provider is down"))
    }
}

fn quick_worker(queue: Arc<dyn JobQueue>) -> agentkit_transport::jobs::WorkerBuilder {
    Worker::builder(queue)
        .max_attempts(3)
        .backoff(
            Backoff::new()
                .base(Duration::from_millis(20))
                .max_delay(Duration::from_millis(50)),
        )
        .heartbeat(Duration::from_millis(250))
        .drain(Duration::from_secs(5))
}

/// A job whose executor always fails is dead after exactly N attempts with the last error,
/// and does not block the jobs behind it.
pub async fn poison_job_is_dead_after_n_attempts(queue: Arc<dyn JobQueue>) {
    let poison = queue.enqueue(spec("poison", "fail")).await.unwrap();
    let healthy = queue
        .enqueue(spec("assistant", "What is 1 + 2?"))
        .await
        .unwrap();
    let agent = agentkit_core::demo::assistant_builder(Arc::new(ScriptedModel::demo()))
        .build()
        .unwrap();
    let worker = quick_worker(queue.clone())
        .agent("poison", AlwaysDown)
        .agent("assistant", agent)
        .concurrency(1)
        .build()
        .unwrap();
    let running = RunningWorker::spawn(worker);
    let good = wait_for(queue.as_ref(), &healthy.job_id, Duration::from_secs(20)).await;
    assert_eq!(good.status, JobStatus::Succeeded);
    assert_eq!(good.result.unwrap().output, "1 + 2 = 3");
    let dead = wait_for(queue.as_ref(), &poison.job_id, Duration::from_secs(20)).await;
    assert_eq!(dead.status, JobStatus::Dead);
    assert_eq!(dead.attempts, 3, "exactly N attempts");
    let error = dead.error.unwrap();
    assert_eq!(error.code, "unavailable");
    assert_eq!(error.message, "the model provider is down");
    running.stop().await.unwrap();
}

/// A worker runs a batch of jobs to success, with the job's request id and tenant.
pub async fn worker_runs_everything(queue: Arc<dyn JobQueue>) {
    let agent = agentkit_core::demo::assistant_builder(Arc::new(ScriptedModel::demo()))
        .build()
        .unwrap();
    let worker = quick_worker(queue.clone())
        .agent("assistant", agent)
        .concurrency(4)
        .build()
        .unwrap();
    let mut jobs = Vec::new();
    for i in 0..20 {
        jobs.push((
            i,
            queue
                .enqueue(spec("assistant", &format!("What is {i} + 1?")))
                .await
                .unwrap(),
        ));
    }
    let unknown = queue.enqueue(spec("nobody", "hi")).await.unwrap();
    let running = RunningWorker::spawn(worker);
    for (i, job) in jobs {
        let doc = wait_for(queue.as_ref(), &job.job_id, Duration::from_secs(30)).await;
        assert_eq!(doc.status, JobStatus::Succeeded);
        assert_eq!(doc.attempts, 1);
        assert_eq!(doc.result.unwrap().output, format!("{i} + 1 = {}", i + 1));
    }
    let failed = wait_for(queue.as_ref(), &unknown.job_id, Duration::from_secs(10)).await;
    assert_eq!(
        failed.status,
        JobStatus::Failed,
        "an unknown agent is not retried"
    );
    assert_eq!(failed.attempts, 1);
    assert_eq!(queue.depth().await.unwrap(), 0);
    running.stop().await.unwrap();
}

/// Fails the first run after the agent did its work (as if the worker died before the ack).
struct FailFirstRun {
    agent: Agent,
    runs: AtomicUsize,
}

impl Executor for FailFirstRun {
    async fn execute(&self, invocation: Invocation) -> Result<Reply> {
        let reply = self.agent.execute(invocation).await?;
        if self.runs.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(Error::unavailable(
                "lost the connection after the side effect",
            ));
        }
        Ok(reply)
    }
}

/// A job run again after its side-effecting tool completed gets the recorded result: the
/// tool body runs once.
pub async fn redelivery_does_not_repeat_side_effects(queue: Arc<dyn JobQueue>) {
    let charges = Arc::new(AtomicUsize::new(0));
    let counter = charges.clone();
    #[derive(serde::Deserialize, schemars::JsonSchema)]
    struct Charge {
        cents: u64,
    }
    let charge = tool_fn_with_context(
        "charge",
        "Charges the card",
        move |args: Charge, cx: agentkit_core::tool::OwnedToolContext| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>(
                    serde_json::json!({"charged": args.cents, "key": cx.idempotency_key()}),
                )
            }
        },
    )
    .with_side_effects();
    let model = ScriptedModel::new([
        ScriptedTurn::call("charge", serde_json::json!({"cents": 500})),
        ScriptedTurn::text("charged"),
    ]);
    let agent = Agent::builder().model(model).tool(charge).build().unwrap();
    let executor = FailFirstRun {
        agent,
        runs: AtomicUsize::new(0),
    };
    let worker = quick_worker(queue.clone())
        .agent("billing", executor)
        .concurrency(1)
        .build()
        .unwrap();
    let job = queue.enqueue(spec("billing", "charge 500")).await.unwrap();
    let running = RunningWorker::spawn(worker);
    let doc = wait_for(queue.as_ref(), &job.job_id, Duration::from_secs(20)).await;
    assert_eq!(doc.status, JobStatus::Succeeded);
    assert_eq!(doc.attempts, 2, "the job ran twice");
    assert_eq!(
        charges.load(Ordering::SeqCst),
        1,
        "the side effect ran once"
    );
    let result = doc.result.unwrap();
    let recorded: serde_json::Value = serde_json::from_str(
        &result.messages[2]
            .tool_results_iter()
            .next()
            .unwrap()
            .content,
    )
    .unwrap();
    assert_eq!(recorded["key"], format!("{}:call_0_0", job.job_id));
    running.stop().await.unwrap();
}

/// Reads `live` up to and with the end marker of `attempt`, within `within`.
async fn live_until_end(live: &mut LiveEvents, attempt: u32, within: Duration) -> Vec<LiveEvent> {
    let mut read = Vec::new();
    let until = tokio::time::Instant::now() + within;
    loop {
        let entry = tokio::time::timeout_at(until, live.next())
            .await
            .unwrap_or_else(|_| panic!("no end marker of attempt {attempt}; read {read:?}"))
            .expect("the live log does not end by itself")
            .expect("the live log reads");
        let end = entry.is_end() && entry.attempt == attempt;
        read.push(entry);
        if end {
            return read;
        }
    }
}

/// A job submitted with `stream` has its run's events in its live log, in order, as they
/// happen: a follower that was there first sees the text deltas add up to the job's output,
/// and the tool call, then the end marker; one that comes after the job ended reads the same
/// from the start. A job without `stream` writes none.
pub async fn a_streamed_job_writes_its_run_live(queue: Arc<dyn JobQueue>) {
    let agent = agentkit_core::demo::assistant_builder(Arc::new(ScriptedModel::demo()))
        .build()
        .unwrap();
    let worker = quick_worker(queue.clone())
        .agent("assistant", agent)
        .concurrency(2)
        .build()
        .unwrap();
    let mut streamed = spec("assistant", "What is 2 + 3?");
    streamed.stream = true;
    let job = queue.enqueue(streamed).await.unwrap();
    let mut early =
        (queue.follow_live(&job.job_id).await.unwrap()).expect("this queue keeps live logs");
    let plain = queue
        .enqueue(spec("assistant", "What is 4 + 4?"))
        .await
        .unwrap();
    let running = RunningWorker::spawn(worker);
    let entries = live_until_end(&mut early, 1, Duration::from_secs(20)).await;
    let doc = wait_for(queue.as_ref(), &job.job_id, Duration::from_secs(20)).await;
    assert_eq!(doc.status, JobStatus::Succeeded);
    let output = doc.result.unwrap().output;
    assert_eq!(output, "2 + 3 = 5");
    assert!(entries.iter().all(|e| e.attempt == 1), "{entries:?}");
    let events: Vec<&AgentEvent> = entries.iter().filter_map(|e| e.event.as_ref()).collect();
    let text: String = events
        .iter()
        .filter_map(|e| match e {
            AgentEvent::TextDelta { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, output, "the deltas add up to the output");
    let deltas = events
        .iter()
        .filter(|e| matches!(e, AgentEvent::TextDelta { .. }))
        .count();
    assert!(deltas > 1, "the text came in pieces: {events:?}");
    let started = events
        .iter()
        .position(|e| matches!(e, AgentEvent::ToolCallStarted { name, .. } if name == "add"))
        .expect("the tool call is there");
    let finished = events
        .iter()
        .position(|e| matches!(e, AgentEvent::ToolCallFinished(_)))
        .expect("the tool call's end is there");
    assert!(started < finished, "{events:?}");
    assert!(
        events.iter().any(|e| matches!(e, AgentEvent::Usage { .. })),
        "{events:?}"
    );
    assert!(
        !events.iter().any(|e| matches!(e, AgentEvent::Done(_))),
        "the reply is the document's, not the live log's"
    );
    let mut late = (queue.follow_live(&job.job_id).await.unwrap()).expect("live logs");
    let replayed = live_until_end(&mut late, 1, Duration::from_secs(10)).await;
    assert_eq!(
        replayed, entries,
        "a late follower reads the same from the start"
    );

    let plain = wait_for(queue.as_ref(), &plain.job_id, Duration::from_secs(20)).await;
    assert_eq!(plain.status, JobStatus::Succeeded);
    let mut none = (queue.follow_live(&plain.job_id).await.unwrap()).expect("live logs");
    let nothing = tokio::time::timeout(Duration::from_millis(700), none.next()).await;
    assert!(
        nothing.is_err(),
        "a job without `stream` writes no live events: {nothing:?}"
    );
    running.stop().await.unwrap();
}

/// Runs `forever` until dropped (and anything else at once), counting its runs and its
/// runs dropped.
struct Endless {
    started: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

impl Executor for Endless {
    async fn execute(&self, invocation: Invocation) -> Result<Reply> {
        struct Dropped(Arc<AtomicUsize>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        self.started.fetch_add(1, Ordering::SeqCst);
        let text = invocation.input[0].text_content();
        if text != "forever" {
            return Ok(Reply {
                output: text,
                ..Reply::default()
            });
        }
        let _dropped = Dropped(self.dropped.clone());
        std::future::pending().await
    }
}

async fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen in {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A cancelled job ends `cancelled` at once: queued, it never runs and no longer counts in
/// the depth; running, its worker drops the run (at once, or at its next heartbeat at the
/// latest) and goes on with other jobs, and what the run would have returned does not
/// replace the cancel. A job that ended
/// keeps its ending; cancelling twice is the same as once; an unknown job is `None`.
pub async fn a_cancelled_job_does_not_run(queue: Arc<dyn JobQueue>) {
    let queued = queue
        .enqueue(spec("endless", "forever"))
        .await
        .unwrap()
        .job_id;
    let doc = queue
        .cancel(&queued)
        .await
        .unwrap()
        .expect("the job exists");
    assert_eq!(doc.status, JobStatus::Cancelled);
    assert_eq!(doc.error.as_ref().unwrap().code, "cancelled");
    let read = queue.get(&queued).await.unwrap().unwrap();
    assert_eq!(read.status, JobStatus::Cancelled);
    assert_eq!(
        queue.depth().await.unwrap(),
        0,
        "a cancelled job waits no more"
    );
    let again = queue.cancel(&queued).await.unwrap().unwrap();
    assert_eq!(again.status, JobStatus::Cancelled);
    let ended = queue
        .until_ended(&queued, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended.status, JobStatus::Cancelled);

    let done = queue.enqueue(spec("endless", "done")).await.unwrap().job_id;
    let delivery = claim_one(queue.as_ref(), Duration::from_secs(2))
        .await
        .expect("the second job is delivered, not the cancelled one");
    assert_eq!(delivery.job.job_id, done);
    queue
        .finish(&delivery, Finish::Succeeded(job_result("done")))
        .await
        .unwrap();
    let kept = queue.cancel(&done).await.unwrap().unwrap();
    assert_eq!(
        kept.status,
        JobStatus::Succeeded,
        "an ended job keeps its ending"
    );
    assert!(queue.cancel("0-1").await.unwrap().is_none(), "no such job");

    let started = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let worker = quick_worker(queue.clone())
        .agent(
            "endless",
            Endless {
                started: started.clone(),
                dropped: dropped.clone(),
            },
        )
        .concurrency(2)
        .build()
        .unwrap();
    let running = RunningWorker::spawn(worker);
    let long = queue
        .enqueue(spec("endless", "forever"))
        .await
        .unwrap()
        .job_id;
    until("the run's start", Duration::from_secs(10), || {
        started.load(Ordering::SeqCst) == 1
    })
    .await;
    let doc = queue.cancel(&long).await.unwrap().unwrap();
    assert_eq!(doc.status, JobStatus::Cancelled);
    until("the run's stop", Duration::from_secs(5), || {
        dropped.load(Ordering::SeqCst) == 1
    })
    .await;
    let after = queue
        .enqueue(spec("endless", "after"))
        .await
        .unwrap()
        .job_id;
    let doc = wait_for(queue.as_ref(), &after, Duration::from_secs(10)).await;
    assert_eq!(doc.status, JobStatus::Succeeded, "the worker goes on");
    let doc = queue.get(&long).await.unwrap().unwrap();
    assert_eq!(
        doc.status,
        JobStatus::Cancelled,
        "the stopped run changed nothing"
    );
    assert_eq!(
        started.load(Ordering::SeqCst),
        2,
        "the job cancelled while queued never ran"
    );
    running.stop().await.unwrap();
}

/// A dead job retried is queued again with its attempts starting over and its last error
/// kept, its callback's delivery key free again, runs (its first delivery counting attempt 1)
/// and can succeed; a job that is queued or succeeded is left as it is; an unknown job is
/// `None`.
pub async fn a_dead_job_runs_again_when_retried(queue: Arc<dyn JobQueue>) {
    let dead = queue
        .enqueue(spec("assistant", "first"))
        .await
        .unwrap()
        .job_id;
    let delivery = claim_one(queue.as_ref(), Duration::from_secs(2))
        .await
        .expect("delivered");
    queue
        .finish(
            &delivery,
            Finish::Dead("the model provider is down".parse().unwrap()),
        )
        .await
        .unwrap();
    // Its callback's delivery, as the worker that ended it queues it.
    let mut hook = spec("agentkit.webhook", "deliver");
    hook.idempotency_key = Some(format!("agentkit:webhook:{dead}"));
    assert!(queue.enqueue(hook.clone()).await.unwrap().created);
    let waiting = queue
        .enqueue(spec("assistant", "second"))
        .await
        .unwrap()
        .job_id;
    let left = queue.retry(&waiting).await.unwrap().unwrap();
    assert_eq!(left.status, JobStatus::Queued);
    assert_eq!(left.attempts, 0);

    let doc = queue.retry(&dead).await.unwrap().expect("the job exists");
    assert_eq!(doc.status, JobStatus::Queued);
    assert_eq!(doc.attempts, 0, "its attempts start over");
    let read = queue.get(&dead).await.unwrap().unwrap();
    assert_eq!(read.status, JobStatus::Queued);
    assert_eq!(read.error.unwrap().message, "the model provider is down");
    assert_eq!(queue.depth().await.unwrap(), 3);
    assert!(
        queue.enqueue(hook).await.unwrap().created,
        "its callback is delivered again when it ends again"
    );

    let mut again = None;
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while again.is_none() {
        assert!(
            tokio::time::Instant::now() < until,
            "the retried job is not delivered"
        );
        for delivery in queue
            .claim("conformance", 4, Duration::from_secs(1))
            .await
            .unwrap()
        {
            if delivery.job.job_id == dead {
                again = Some(delivery);
            }
        }
    }
    let again = again.unwrap();
    assert_eq!(again.attempt, 1, "the first attempt of its new run");
    assert_eq!(
        again.job.error.as_ref().map(|e| e.message.as_str()),
        Some("the model provider is down"),
        "the delivery knows the last error"
    );
    let ended = queue
        .finish(&again, Finish::Succeeded(job_result("second time")))
        .await
        .unwrap();
    assert_eq!(ended.status, JobStatus::Succeeded);
    let read = queue.get(&dead).await.unwrap().unwrap();
    assert_eq!(read.status, JobStatus::Succeeded);
    assert_eq!(read.attempts, 1);
    assert_eq!(read.result.unwrap().output, "second time");
    let kept = queue.retry(&dead).await.unwrap().unwrap();
    assert_eq!(
        kept.status,
        JobStatus::Succeeded,
        "a succeeded job is not retried"
    );
    assert!(queue.retry("0-1").await.unwrap().is_none(), "no such job");
}
