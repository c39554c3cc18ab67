//! The in-memory job queue, the embedded default.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agentkit_core::tool::{EffectLedger, MemoryLedger};
use agentkit_core::{Error, Result, generate_id};
use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::live::MemoryLive;
use super::watch::{OnDrop, Watchers, woken};
use super::{
    Delivery, Enqueued, Finish, JobDoc, JobError, JobQueue, JobSpec, JobStatus, LiveEvent,
    LiveEvents, RETENTION, Receipt, now_ms, validate,
};

/// Finished jobs kept for lookups; older ones are forgotten first.
const KEEP_FINISHED: usize = 100_000;
/// Side effects and job progress kept; older ones are forgotten first (a job with side
/// effects writes two or three).
const KEEP_LEDGER: usize = 4 * KEEP_FINISHED;

#[derive(Default)]
struct State {
    jobs: HashMap<String, (JobDoc, u64)>,
    /// Queued jobs by the time they may run (then submission order).
    ready: BTreeMap<(Instant, u64), String>,
    /// Claimed jobs by the time their claim expires.
    leases: HashMap<String, Instant>,
    idempotency: HashMap<(String, String), (String, Instant)>,
    /// Idempotency keys by expiry, oldest first (one that was taken again after it expired
    /// is queued twice; only its last entry counts).
    keys_by_expiry: VecDeque<(Instant, (String, String))>,
    finished: VecDeque<String>,
    sequence: u64,
    /// Callers awaiting a job's end.
    watchers: Watchers,
}

/// Jobs in this process's memory: for single-process services, tests and the embedded default.
/// Nothing survives the process. Cheap to clone (shared state).
#[derive(Clone)]
pub struct MemoryJobQueue {
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
    visibility: Duration,
    ledger: MemoryLedger,
    live: MemoryLive,
}

impl std::fmt::Debug for MemoryJobQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryJobQueue")
            .field("visibility", &self.visibility)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryJobQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryJobQueue {
    /// An empty queue with a 30 s visibility timeout.
    pub fn new() -> Self {
        Self {
            state: Arc::default(),
            wake: Arc::default(),
            visibility: Duration::from_secs(30),
            ledger: MemoryLedger::new(KEEP_LEDGER, RETENTION),
            live: MemoryLive::default(),
        }
    }

    /// How long a claim lasts without a heartbeat before the job is delivered again.
    #[must_use]
    pub fn with_visibility_timeout(mut self, visibility: Duration) -> Self {
        self.visibility = visibility;
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn token(delivery: &Delivery) -> Result<u64> {
        match delivery.receipt {
            Receipt::Memory { token } => Ok(token),
            #[allow(unreachable_patterns)]
            _ => Err(Error::invalid_input(
                "this delivery belongs to another queue",
            )),
        }
    }

    /// Takes due and expired jobs, up to `max`.
    fn take(&self, state: &mut State, max: usize, now: Instant) -> Vec<Delivery> {
        let mut ids = Vec::new();
        let expired: Vec<String> = state
            .leases
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(id, _)| id.clone())
            .take(max)
            .collect();
        for id in expired {
            state.leases.remove(&id);
            ids.push(id);
        }
        while ids.len() < max {
            let Some(entry) = state.ready.first_entry() else {
                break;
            };
            if entry.key().0 > now {
                break;
            }
            ids.push(entry.remove());
        }
        let mut deliveries = Vec::with_capacity(ids.len());
        for id in ids {
            state.sequence += 1;
            let token = state.sequence;
            let Some((doc, current)) = state.jobs.get_mut(&id) else {
                continue;
            };
            if doc.status.is_terminal() {
                continue;
            }
            doc.attempts += 1;
            doc.status = JobStatus::Running;
            doc.updated_at_ms = now_ms();
            *current = token;
            state.leases.insert(id, now + self.visibility);
            deliveries.push(Delivery {
                attempt: doc.attempts,
                job: doc.clone(),
                receipt: Receipt::Memory { token },
            });
        }
        deliveries
    }

    /// When the next job becomes due or the next claim expires.
    fn next_event(state: &State) -> Option<Instant> {
        let ready = state.ready.keys().next().map(|(at, _)| *at);
        let lease = state.leases.values().min().copied();
        match (ready, lease) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Forgets idempotency keys that expired, and the oldest past [`KEEP_FINISHED`] (their
    /// jobs are forgotten by then too).
    fn forget_keys(state: &mut State, now: Instant) {
        while let Some((until, key)) = state.keys_by_expiry.front() {
            let current = state.idempotency.get(key).is_some_and(|(_, u)| u == until);
            if current && *until > now && state.idempotency.len() < KEEP_FINISHED {
                break;
            }
            if current {
                state.idempotency.remove(key);
            }
            state.keys_by_expiry.pop_front();
        }
    }

    fn forget_old(state: &mut State, id: &str) {
        state.finished.push_back(id.to_owned());
        while state.finished.len() > KEEP_FINISHED {
            if let Some(old) = state.finished.pop_front() {
                state.jobs.remove(&old);
            }
        }
    }
}

#[async_trait]
impl JobQueue for MemoryJobQueue {
    async fn enqueue(&self, spec: JobSpec) -> Result<Enqueued> {
        validate(&spec)?;
        let now = Instant::now();
        let mut state = self.lock();
        let key = spec
            .idempotency_key
            .clone()
            .map(|k| (spec.tenant.clone(), k));
        if let Some(key) = &key
            && let Some((job_id, until)) = state.idempotency.get(key)
            && *until > now
        {
            return Ok(Enqueued {
                job_id: job_id.clone(),
                created: false,
            });
        }
        let job_id = generate_id();
        if let Some(key) = key {
            Self::forget_keys(&mut state, now);
            let until = now + RETENTION;
            state.keys_by_expiry.push_back((until, key.clone()));
            state.idempotency.insert(key, (job_id.clone(), until));
        }
        state.sequence += 1;
        let seq = state.sequence;
        state.ready.insert((now, seq), job_id.clone());
        state
            .jobs
            .insert(job_id.clone(), (JobDoc::queued(job_id.clone(), spec), 0));
        drop(state);
        self.wake.notify_waiters();
        Ok(Enqueued {
            job_id,
            created: true,
        })
    }

    async fn claim(&self, _consumer: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let deadline = Instant::now() + wait;
        loop {
            // Registered before looking, so an enqueue in between is not missed.
            let mut notified = std::pin::pin!(self.wake.notified());
            notified.as_mut().enable();
            let next = {
                let mut state = self.lock();
                let now = Instant::now();
                let taken = self.take(&mut state, max.max(1), now);
                if !taken.is_empty() {
                    return Ok(taken);
                }
                Self::next_event(&state)
            };
            let until = next.map_or(deadline, |n| n.min(deadline));
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    async fn heartbeat(&self, delivery: &Delivery) -> Result<()> {
        let token = Self::token(delivery)?;
        let mut state = self.lock();
        let id = &delivery.job.job_id;
        let current = state.jobs.get(id).map(|(_, t)| *t);
        if current == Some(token) && state.leases.contains_key(id) {
            state
                .leases
                .insert(id.clone(), Instant::now() + self.visibility);
        }
        Ok(())
    }

    async fn finish(&self, delivery: &Delivery, finish: Finish) -> Result<JobDoc> {
        let mut state = self.lock();
        let id = delivery.job.job_id.clone();
        let Some((doc, _)) = state.jobs.get_mut(&id) else {
            return Err(Error::not_found(format!("no job {id}")));
        };
        let changed = finish.apply(doc);
        let doc = doc.clone();
        let mut watching = None;
        if changed {
            state.leases.remove(&id);
            Self::forget_old(&mut state, &id);
            watching = state.watchers.ended(&id);
        }
        drop(state);
        if let Some(watching) = watching {
            watching.notify_waiters();
        }
        Ok(doc)
    }

    async fn release(
        &self,
        delivery: &Delivery,
        delay: Duration,
        error: Option<JobError>,
    ) -> Result<()> {
        let token = Self::token(delivery)?;
        let mut state = self.lock();
        let id = delivery.job.job_id.clone();
        let Some((doc, current)) = state.jobs.get_mut(&id) else {
            return Ok(());
        };
        if *current != token || doc.status.is_terminal() {
            return Ok(());
        }
        doc.status = JobStatus::Queued;
        doc.updated_at_ms = now_ms();
        match error {
            Some(error) => doc.error = Some(error),
            // Handed back: the next claim is the same attempt again.
            None => doc.attempts = doc.attempts.saturating_sub(1),
        }
        state.leases.remove(&id);
        state.sequence += 1;
        let seq = state.sequence;
        state.ready.insert((Instant::now() + delay, seq), id);
        drop(state);
        self.wake.notify_waiters();
        Ok(())
    }

    async fn until_ended(&self, job_id: &str, wait: Duration) -> Result<Option<JobDoc>> {
        let deadline = Instant::now() + wait;
        // Whether the job is still open (`None`: a job this queue does not know, or forgot).
        let open =
            |state: &State| (state.jobs.get(job_id)).map(|(doc, _)| !doc.status.is_terminal());
        loop {
            let watching = {
                let mut state = self.lock();
                match state.jobs.get(job_id) {
                    None => return Ok(None),
                    Some((doc, _)) if doc.status.is_terminal() || Instant::now() >= deadline => {
                        return Ok(Some(doc.clone()));
                    }
                    Some(_) => state.watchers.watch(job_id),
                }
            };
            let _forget = OnDrop::new(|| self.lock().watchers.forget(job_id, &watching));
            // Registered before looking again, so a finish in between is not missed.
            let left = deadline.saturating_duration_since(Instant::now());
            woken(&watching, left, async { open(&self.lock()) == Some(true) }).await;
        }
    }

    async fn get(&self, job_id: &str) -> Result<Option<JobDoc>> {
        Ok(self.lock().jobs.get(job_id).map(|(doc, _)| doc.clone()))
    }

    async fn depth(&self) -> Result<u64> {
        Ok(self.lock().ready.len() as u64)
    }

    async fn cancel(&self, job_id: &str) -> Result<Option<JobDoc>> {
        let mut state = self.lock();
        let Some((doc, _)) = state.jobs.get_mut(job_id) else {
            return Ok(None);
        };
        if !doc.cancel() {
            return Ok(Some(doc.clone()));
        }
        let doc = doc.clone();
        // Off the ready list (so the depth counts it no more) and the claims.
        state.ready.retain(|_, id| id != job_id);
        state.leases.remove(job_id);
        Self::forget_old(&mut state, job_id);
        let watching = state.watchers.ended(job_id);
        drop(state);
        if let Some(watching) = watching {
            watching.notify_waiters();
        }
        Ok(Some(doc))
    }

    async fn retry(&self, job_id: &str) -> Result<Option<JobDoc>> {
        let mut state = self.lock();
        let Some((doc, _)) = state.jobs.get_mut(job_id) else {
            return Ok(None);
        };
        if !doc.requeue() {
            return Ok(Some(doc.clone()));
        }
        let doc = doc.clone();
        let tenant = doc.tenant().unwrap_or_default().to_owned();
        // The callback is sent again when the job ends again.
        state
            .idempotency
            .remove(&(tenant, super::webhook_key(job_id)));
        state.finished.retain(|id| id != job_id);
        state.sequence += 1;
        let seq = state.sequence;
        state.ready.insert((Instant::now(), seq), job_id.to_owned());
        drop(state);
        self.wake.notify_waiters();
        Ok(Some(doc))
    }

    async fn publish_live(&self, job_id: &str, event: &LiveEvent) -> Result<()> {
        self.live.publish(job_id, event);
        Ok(())
    }

    async fn follow_live(&self, job_id: &str) -> Result<Option<LiveEvents>> {
        Ok(Some(self.live.follow(job_id)))
    }

    fn ledger(&self) -> Arc<dyn EffectLedger> {
        Arc::new(self.ledger.clone())
    }
}
