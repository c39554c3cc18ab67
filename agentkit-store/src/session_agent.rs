//! [`SessionAgent`]: stateful turns over any executor, one at a time per session.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentkit_core::executor::{AgentEvent, EventStream, Executor, Invocation, Reply, SessionState};
use agentkit_core::tool::JobId;
use agentkit_core::{
    CancellationToken, Context, Error, ErrorKind, IdempotencyKey, Message, Result, Role,
};
use futures::StreamExt;
use tokio::sync::{OwnedMutexGuard, mpsc};

use crate::session::{Lease, LeaseStore, SaveOptions, Session, SessionStore, validate_key};

/// What happens to a message that arrives while its session is running a turn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TurnPolicy {
    /// Refuse it with [`ErrorKind::Busy`] (HTTP 409 `session_busy`).
    Reject,
    /// Run it after the running turn, in arrival order (bounded queue, bounded wait).
    #[default]
    Enqueue,
    /// Cancel the running turn (its partial output is discarded, nothing of it is saved) and run
    /// this one. The latest message wins: one still waiting for the turn when a newer one
    /// arrives does not run either (it ends with [`ErrorKind::Cancelled`]).
    Interrupt,
}

/// How much history a session keeps, so it cannot grow without limit. Trimming cuts at a user
/// message, so a tool call is never kept without its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryPolicy {
    /// Keep everything (only for sessions known to stay short).
    Unbounded,
    /// Keep about the last `n` messages.
    LastMessages(usize),
    /// Keep about the last `n` tokens (estimated at four bytes per token).
    TokenWindow(u64),
}

impl Default for HistoryPolicy {
    fn default() -> Self {
        Self::LastMessages(200)
    }
}

impl HistoryPolicy {
    /// Drops the oldest messages beyond the policy.
    pub fn apply(self, messages: &mut Vec<Message>) {
        let len = messages.len();
        let cut = match self {
            Self::Unbounded => 0,
            Self::LastMessages(n) => len.saturating_sub(n),
            Self::TokenWindow(tokens) => {
                let mut kept = 0u64;
                let mut cut = len;
                for (i, m) in messages.iter().enumerate().rev() {
                    kept += (m.payload_len() as u64).div_ceil(4).max(1);
                    if kept > tokens {
                        break;
                    }
                    cut = i;
                }
                cut
            }
        };
        if cut == 0 {
            return;
        }
        let start = (cut..len)
            .find(|&i| messages[i].role == Role::User)
            .unwrap_or_else(|| {
                (cut..len)
                    .find(|&i| messages[i].role != Role::Tool)
                    .unwrap_or(len)
            });
        messages.drain(..start);
    }
}

/// A session's turn gate: a FIFO lock, the number waiting, and the running turn's token.
#[derive(Default)]
struct Gate {
    turn: Arc<tokio::sync::Mutex<()>>,
    queued: AtomicUsize,
    /// Under [`TurnPolicy::Interrupt`]: the latest arrival and the running turn.
    interrupts: Mutex<Interrupts>,
}

/// Who may run under [`TurnPolicy::Interrupt`]; one lock orders arrivals against the start of
/// a turn, so a message arriving just as another starts either cancels it or supersedes it.
#[derive(Default)]
struct Interrupts {
    /// The number of the latest message to arrive.
    latest: u64,
    /// The running turn (by number) and its cancellation.
    running: Option<(u64, CancellationToken)>,
}

type SessionKey = (String, String);
type Gates = Mutex<HashMap<SessionKey, Arc<Gate>>>;

/// Forgets `gate` when the map and the caller hold its last two references (nobody waits).
fn forget_idle(gates: &Gates, key: &SessionKey, gate: &Arc<Gate>) {
    let mut gates = gates.lock().unwrap_or_else(|p| p.into_inner());
    if Arc::strong_count(gate) <= 2 {
        gates.remove(key);
    }
}

struct Leasing {
    store: Arc<dyn LeaseStore>,
    owner: String,
    ttl: Duration,
}

impl Leasing {
    /// Tries to take the session's lease. The call to the store runs whole on its own task:
    /// a caller that goes away while the store answers (a timeout, a dropped request) would
    /// otherwise leave a lease taken that no turn holds, keeping every instance off the
    /// session until it expires. A lease taken after the caller left is handed back.
    async fn acquire(&self, key: &SessionKey) -> Result<Option<Lease>> {
        let (sent, answer) = tokio::sync::oneshot::channel();
        let store = self.store.clone();
        let (tenant, id, owner, ttl) = (key.0.clone(), key.1.clone(), self.owner.clone(), self.ttl);
        tokio::spawn(async move {
            let acquired = store.acquire(&tenant, &id, &owner, ttl).await;
            if let Err(Ok(Some(lease))) = sent.send(acquired) {
                hand_back(store, lease).await;
            }
        });
        answer
            .await
            .map_err(|_| Error::internal("the session lease request was lost"))?
    }
}

struct Inner<E> {
    executor: E,
    store: Arc<dyn SessionStore>,
    policy: TurnPolicy,
    history: HistoryPolicy,
    ttl: Option<Duration>,
    max_queue: usize,
    max_wait: Duration,
    conflict_retries: u32,
    default_tenant: String,
    leasing: Option<Leasing>,
    keyed_turns: usize,
    gates: Arc<Gates>,
}

/// Runs turns of a session over any executor: loads the history, runs the turn, saves with the
/// version it loaded (compare-and-set), one turn at a time per session.
///
/// The session is named by the invocation's [`Context::session_id`] within its
/// [`Context::tenant`]. A message arriving mid-turn follows the [`TurnPolicy`]. Within one
/// process turns are serialized by a per-session FIFO gate; across processes by the version
/// check (a lost race re-runs the turn on the fresh history, up to a bound) and, when a
/// [`LeaseStore`] is configured, by a lease whose fencing token guards the save.
///
/// ```
/// use std::sync::Arc;
/// use agentkit_core::model::ScriptedModel;
/// use agentkit_core::{Agent, Context, Executor, Invocation};
/// use agentkit_store::{MemorySessionStore, SessionAgent, TurnPolicy};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let agent = Agent::builder().model(ScriptedModel::demo()).build()?;
/// let sessions = SessionAgent::builder(agent, Arc::new(MemorySessionStore::new()))
///     .policy(TurnPolicy::Reject)
///     .build();
/// let cx = Context::new().with_tenant("acme").with_session_id("s-1");
/// let reply = sessions.execute(Invocation::text("hello").with_context(cx.clone())).await?;
/// assert_eq!(reply.session.unwrap().version, 1);
/// let reply = sessions.execute(Invocation::text("again").with_context(cx)).await?;
/// assert_eq!(reply.session.unwrap().version, 2);
/// # Ok::<_, agentkit_core::Error>(())
/// # }).unwrap();
/// ```
pub struct SessionAgent<E> {
    inner: Arc<Inner<E>>,
}

impl<E> Clone for SessionAgent<E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<E> fmt::Debug for SessionAgent<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionAgent")
            .field("policy", &self.inner.policy)
            .field("history", &self.inner.history)
            .field("ttl", &self.inner.ttl)
            .finish_non_exhaustive()
    }
}

/// Builds a [`SessionAgent`].
#[must_use]
pub struct SessionAgentBuilder<E> {
    executor: E,
    store: Arc<dyn SessionStore>,
    policy: TurnPolicy,
    history: HistoryPolicy,
    ttl: Option<Duration>,
    max_queue: usize,
    max_wait: Duration,
    conflict_retries: u32,
    default_tenant: String,
    leasing: Option<Leasing>,
    keyed_turns: usize,
}

impl<E> fmt::Debug for SessionAgentBuilder<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionAgentBuilder")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<E> SessionAgent<E> {
    /// A builder running `executor` over sessions in `store`.
    pub fn builder(executor: E, store: Arc<dyn SessionStore>) -> SessionAgentBuilder<E> {
        SessionAgentBuilder {
            executor,
            store,
            policy: TurnPolicy::default(),
            history: HistoryPolicy::default(),
            ttl: None,
            max_queue: 256,
            max_wait: Duration::from_secs(60),
            conflict_retries: 3,
            keyed_turns: KEYED_TURNS_KEPT,
            default_tenant: "default".to_owned(),
            leasing: None,
        }
    }

    /// The session store.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.inner.store
    }

    /// The policy for a message that arrives mid-turn.
    pub fn policy(&self) -> TurnPolicy {
        self.inner.policy
    }

    /// The tenant used when the context names none.
    pub fn default_tenant(&self) -> &str {
        &self.inner.default_tenant
    }

    /// The wrapped executor.
    pub fn executor(&self) -> &E {
        &self.inner.executor
    }
}

impl<E> SessionAgentBuilder<E> {
    /// The mid-turn policy (default [`TurnPolicy::Enqueue`]).
    pub fn policy(mut self, policy: TurnPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The history bound (default the last 200 messages).
    pub fn history(mut self, history: HistoryPolicy) -> Self {
        self.history = history;
        self
    }

    /// The sessions' TTL, sliding on every turn (default: the store's).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// At most this many messages wait per session under [`TurnPolicy::Enqueue`] (default 256);
    /// beyond it a message is refused with [`ErrorKind::Busy`].
    pub fn max_queue(mut self, n: usize) -> Self {
        self.max_queue = n.max(1);
        self
    }

    /// The longest a message waits for its turn when its context has no deadline (default 60 s).
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }

    /// How often a turn that lost a compare-and-set race is re-run on the fresh history
    /// (default 3).
    pub fn conflict_retries(mut self, n: u32) -> Self {
        self.conflict_retries = n;
        self
    }

    /// How many keyed turns (job turns and turns with an
    /// [`IdempotencyKey`](agentkit_core::IdempotencyKey)) a session remembers (default 16, at
    /// least 1): a key sent again after this many newer keyed turns runs again. Each record
    /// keeps its turn's output in the session's metadata, so this bounds what keys cost.
    pub fn keyed_turns(mut self, n: usize) -> Self {
        self.keyed_turns = n.max(1);
        self
    }

    /// The tenant of contexts that name none (default `"default"`).
    pub fn default_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.default_tenant = tenant.into();
        self
    }

    /// Serializes turns across processes with a lease per session held by `owner` (this
    /// instance's id) for `ttl`, renewed while a turn runs; saves carry its fencing token.
    pub fn lease(
        mut self,
        store: Arc<dyn LeaseStore>,
        owner: impl Into<String>,
        ttl: Duration,
    ) -> Self {
        self.leasing = Some(Leasing {
            store,
            owner: owner.into(),
            ttl,
        });
        self
    }

    /// The session agent.
    pub fn build(self) -> SessionAgent<E> {
        SessionAgent {
            inner: Arc::new(Inner {
                executor: self.executor,
                store: self.store,
                policy: self.policy,
                history: self.history,
                ttl: self.ttl,
                max_queue: self.max_queue,
                max_wait: self.max_wait,
                conflict_retries: self.conflict_retries,
                default_tenant: self.default_tenant,
                leasing: self.leasing,
                keyed_turns: self.keyed_turns,
                gates: Arc::default(),
            }),
        }
    }
}

/// The session metadata key listing the last keyed turns applied to a session (the job id or
/// `key:{idempotency key}`, output, messages added), so that a job delivered again after its
/// worker saved the turn and died before finishing the job, or a message sent again with the
/// same [`IdempotencyKey`] after its answer was lost, gets that turn back instead of
/// appending it twice.
pub const JOB_TURNS_KEY: &str = "agentkit.job_turns";

/// How many keyed turns a session remembers by default.
const KEYED_TURNS_KEPT: usize = 16;

/// Tells the process-wide observer that a keyed turn was answered from its session.
fn replayed() {
    if let Some(observer) = agentkit_core::observer::global_observer() {
        observer.session_replay();
    }
}

/// What identifies a turn across deliveries and retries: its job, else the caller's
/// idempotency key (prefixed, so that it never names a job).
fn turn_id(cx: &Context) -> Option<Arc<str>> {
    if let Some(job) = cx.extension::<JobId>() {
        return Some(job.0.clone());
    }
    let key = cx.extension::<IdempotencyKey>()?;
    Some(format!("key:{key}").into())
}

/// The reply the turn `id` (see [`turn_id`]) left in `session`, if the session holds it
/// already.
fn applied_turn(session: &Session, id: &str) -> Option<Reply> {
    let turns = session.metadata.get(JOB_TURNS_KEY)?.as_array()?;
    let (index, record) = turns
        .iter()
        .enumerate()
        .find(|(_, t)| t.get("job").and_then(|j| j.as_str()) == Some(id))?;
    // Only the last turn's messages are still at the end of the history.
    let messages = if index + 1 == turns.len() {
        let added = record.get("added").and_then(|a| a.as_u64()).unwrap_or(0) as usize;
        session.messages[session.messages.len().saturating_sub(added)..].to_vec()
    } else {
        Vec::new()
    };
    Some(Reply {
        output: record.get("output")?.as_str()?.to_owned(),
        messages,
        model: record
            .get("model")
            .and_then(|m| m.as_str())
            .unwrap_or_default()
            .to_owned(),
        ..Reply::default()
    })
}

fn busy(tenant: &str, id: &str, why: &str) -> Error {
    Error::new(ErrorKind::Busy, format!("session {tenant}/{id} {why}"))
}

/// The error of a turn a newer message interrupted, under [`TurnPolicy::Interrupt`].
fn interrupted(key: &SessionKey) -> Error {
    Error::new(
        ErrorKind::Cancelled,
        format!(
            "session {}/{}: interrupted by a newer message",
            key.0, key.1
        ),
    )
}

/// Releases a lease whose holder went away (a dropped turn, or a caller that left while the
/// lease was being taken).
async fn hand_back(store: Arc<dyn LeaseStore>, lease: Lease) {
    if let Err(error) = store.release(&lease).await {
        tracing::warn!(%error, "cannot hand back the session lease of a turn that went away; it will expire");
    }
}

/// A turn in progress: holds the session's gate (and lease) until dropped.
struct Turn {
    key: SessionKey,
    gate: Arc<Gate>,
    token: Option<(u64, CancellationToken)>,
    lease: Option<Lease>,
    /// Where the lease is kept, to hand it back if the turn is dropped holding it.
    leases: Option<Arc<dyn LeaseStore>>,
    gates: Arc<Gates>,
    _guard: OwnedMutexGuard<()>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some((number, _)) = &self.token {
            let mut interrupts = self
                .gate
                .interrupts
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if interrupts
                .running
                .as_ref()
                .is_some_and(|(n, _)| n == number)
            {
                interrupts.running = None;
            }
        }
        forget_idle(&self.gates, &self.key, &self.gate);
        // A turn dropped midway (its caller went away) hands its lease back, rather than
        // keeping other instances off the session until the lease expires. Releasing names
        // the lease's token, so a later lease of the session is left alone.
        if let (Some(lease), Some(store)) = (self.lease.take(), self.leases.take())
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(hand_back(store, lease));
        }
    }
}

impl<E: Executor + 'static> SessionAgent<E> {
    fn key(&self, cx: &Context) -> Result<SessionKey> {
        let id = cx
            .session_id()
            .ok_or_else(|| Error::invalid_input("a session turn needs a session id"))?;
        let tenant = cx.tenant().unwrap_or(&self.inner.default_tenant);
        validate_key(tenant, id)?;
        Ok((tenant.to_owned(), id.to_owned()))
    }

    fn gate(&self, key: &SessionKey) -> Arc<Gate> {
        let mut gates = self.inner.gates.lock().unwrap_or_else(|p| p.into_inner());
        gates.entry(key.clone()).or_default().clone()
    }

    async fn wait_turn(
        &self,
        gate: &Arc<Gate>,
        cx: &Context,
        key: &SessionKey,
    ) -> Result<OwnedMutexGuard<()>> {
        let wait = cx
            .remaining()
            .map_or(self.inner.max_wait, |r| r.min(self.inner.max_wait));
        tokio::select! {
            guard = tokio::time::timeout(wait, gate.turn.clone().lock_owned()) => guard.map_err(|_| {
                busy(&key.0, &key.1, "stayed busy longer than this message could wait").with_retry_after(Duration::from_secs(1))
            }),
            () = cx.cancellation().cancelled() => Err(Error::cancelled()),
        }
    }

    async fn begin(&self, cx: &Context) -> Result<Turn> {
        let key = self.key(cx)?;
        let gate = self.gate(&key);
        let acquired = match self.inner.policy {
            TurnPolicy::Reject => gate
                .turn
                .clone()
                .try_lock_owned()
                .map(|guard| (guard, None))
                .map_err(|_| busy(&key.0, &key.1, "is running another turn")),
            TurnPolicy::Enqueue => {
                if gate.queued.fetch_add(1, Ordering::SeqCst) >= self.inner.max_queue {
                    gate.queued.fetch_sub(1, Ordering::SeqCst);
                    Err(busy(&key.0, &key.1, "has too many messages waiting")
                        .with_retry_after(Duration::from_secs(1)))
                } else {
                    let guard = self.wait_turn(&gate, cx, &key).await;
                    gate.queued.fetch_sub(1, Ordering::SeqCst);
                    guard.map(|guard| (guard, None))
                }
            }
            TurnPolicy::Interrupt => {
                let number = {
                    let mut interrupts = gate.interrupts.lock().unwrap_or_else(|p| p.into_inner());
                    interrupts.latest += 1;
                    if let Some((_, running)) = interrupts.running.take() {
                        running.cancel();
                    }
                    interrupts.latest
                };
                self.wait_turn(&gate, cx, &key).await.and_then(|guard| {
                    let mut interrupts = gate.interrupts.lock().unwrap_or_else(|p| p.into_inner());
                    if interrupts.latest != number {
                        return Err(interrupted(&key));
                    }
                    let token = cx.cancellation().child_token();
                    interrupts.running = Some((number, token.clone()));
                    Ok((guard, Some((number, token))))
                })
            }
        };
        let (guard, token) = match acquired {
            Ok(acquired) => acquired,
            Err(error) => {
                forget_idle(&self.inner.gates, &key, &gate);
                return Err(error);
            }
        };
        let mut turn = Turn {
            key,
            gate,
            token,
            lease: None,
            leases: self.inner.leasing.as_ref().map(|l| l.store.clone()),
            gates: self.inner.gates.clone(),
            _guard: guard,
        };
        turn.lease = self.take_lease(&turn.key, cx).await?;
        Ok(turn)
    }

    async fn take_lease(&self, key: &SessionKey, cx: &Context) -> Result<Option<Lease>> {
        let Some(leasing) = &self.inner.leasing else {
            return Ok(None);
        };
        let started = tokio::time::Instant::now();
        let deadline = started
            + cx.remaining()
                .map_or(self.inner.max_wait, |r| r.min(self.inner.max_wait));
        let mut pause = Duration::from_millis(5);
        // A wait (the lease was held at the first try) is reported when it ends, however it
        // ends.
        let mut waited = false;
        let report = |waited: bool| {
            if let (true, Some(observer)) = (waited, agentkit_core::observer::global_observer()) {
                observer.session_lease_wait(started.elapsed());
            }
        };
        loop {
            let acquired = leasing.acquire(key).await;
            if !matches!(acquired, Ok(None)) {
                report(waited);
                return acquired;
            }
            if self.inner.policy == TurnPolicy::Reject {
                return Err(busy(
                    &key.0,
                    &key.1,
                    "is running a turn on another instance",
                ));
            }
            if tokio::time::Instant::now() + pause >= deadline {
                report(waited);
                return Err(
                    busy(&key.0, &key.1, "stayed leased by another instance too long")
                        .with_retry_after(Duration::from_secs(1)),
                );
            }
            waited = true;
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = cx.cancellation().cancelled() => {
                    report(waited);
                    return Err(Error::cancelled());
                }
            }
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Runs `work` while renewing the turn's lease in the background.
    async fn with_renewal<T>(&self, lease: Option<&Lease>, work: impl Future<Output = T>) -> T {
        let (Some(lease), Some(leasing)) = (lease, &self.inner.leasing) else {
            return work.await;
        };
        let renew = async {
            loop {
                tokio::time::sleep(leasing.ttl / 3).await;
                match leasing.store.renew(lease, leasing.ttl).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(session = %lease.session_id, "session lease lost mid-turn; the save will be fenced");
                        return std::future::pending().await;
                    }
                    Err(error) => tracing::warn!(%error, "cannot renew the session lease"),
                }
            }
        };
        tokio::select! {
            out = work => out,
            never = renew => never,
        }
    }

    async fn release(&self, turn: &mut Turn) {
        // The turn keeps the lease until the store has it back: dropped midway, the turn
        // hands it back on its own.
        if let (Some(lease), Some(leasing)) = (&turn.lease, &self.inner.leasing)
            && let Err(error) = leasing.store.release(lease).await
        {
            tracing::warn!(%error, "cannot release the session lease; it will expire");
        }
        turn.lease = None;
    }

    async fn load(&self, key: &SessionKey) -> Result<Session> {
        Ok(self
            .inner
            .store
            .load(&key.0, &key.1)
            .await?
            .unwrap_or_else(|| Session::new(&key.0, &key.1)))
    }

    /// Appends the turn to the session and saves it (a keyed turn with its record); the new
    /// version.
    async fn save(
        &self,
        mut session: Session,
        reply: &Reply,
        lease: Option<&Lease>,
        keyed: Option<&str>,
    ) -> Result<u64> {
        session.messages.extend(reply.messages.iter().cloned());
        if let Some(id) = keyed {
            let turns = session
                .metadata
                .entry(JOB_TURNS_KEY)
                .or_insert_with(|| serde_json::Value::Array(Vec::new()));
            if !turns.is_array() {
                *turns = serde_json::Value::Array(Vec::new());
            }
            if let Some(turns) = turns.as_array_mut() {
                turns.push(serde_json::json!({
                    "job": id,
                    "output": reply.output,
                    "model": reply.model,
                    "added": reply.messages.len(),
                }));
                let excess = turns.len().saturating_sub(self.inner.keyed_turns);
                turns.drain(..excess);
            }
        }
        self.inner.history.apply(&mut session.messages);
        if self.inner.ttl.is_some() {
            session.ttl = self.inner.ttl;
        }
        let options = SaveOptions {
            fence: lease.map(|l| l.token),
        };
        let saved = self.inner.store.save(&session, options).await;
        if saved
            .as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::Conflict)
            && let Some(observer) = agentkit_core::observer::global_observer()
        {
            observer.session_conflict();
        }
        saved
    }

    async fn run_turn(&self, turn: &Turn, mut invocation: Invocation) -> Result<Reply> {
        if let Some((_, token)) = &turn.token {
            invocation.context = invocation.context.with_cancellation(token.clone());
        }
        let keyed = turn_id(&invocation.context);
        let mut attempt = 0;
        loop {
            let session = self.load(&turn.key).await?;
            if let Some(id) = &keyed
                && let Some(mut reply) = applied_turn(&session, id)
            {
                tracing::info!(session = %turn.key.1, turn = %id, "the turn is already in the session; not running it again");
                replayed();
                reply.session = Some(SessionState {
                    id: turn.key.1.clone(),
                    version: session.version,
                });
                return Ok(reply);
            }
            let mut run = invocation.clone();
            run.history = session.messages.clone();
            let mut reply = self
                .with_renewal(turn.lease.as_ref(), self.inner.executor.execute(run))
                .await?;
            // An executor that finished without noticing it was interrupted saves nothing.
            if let Some((_, token)) = &turn.token
                && token.is_cancelled()
            {
                return Err(interrupted(&turn.key));
            }
            match self
                .save(session, &reply, turn.lease.as_ref(), keyed.as_deref())
                .await
            {
                Ok(version) => {
                    reply.session = Some(SessionState {
                        id: turn.key.1.clone(),
                        version,
                    });
                    return Ok(reply);
                }
                Err(error) if error.kind() == ErrorKind::Conflict => {
                    if self.inner.policy == TurnPolicy::Reject {
                        return Err(busy(
                            &turn.key.0,
                            &turn.key.1,
                            "changed while this turn ran",
                        ));
                    }
                    if attempt >= self.inner.conflict_retries || turn.lease.is_some() {
                        return Err(error);
                    }
                    attempt += 1;
                    tracing::warn!(session = %turn.key.1, attempt, "session changed during the turn; running it again");
                }
                Err(error) => return Err(error),
            }
        }
    }
}

impl<E: Executor + 'static> Executor for SessionAgent<E> {
    async fn execute(&self, invocation: Invocation) -> Result<Reply> {
        let mut turn = self.begin(&invocation.context).await?;
        let outcome = self.run_turn(&turn, invocation).await;
        self.release(&mut turn).await;
        outcome
    }

    async fn stream(&self, mut invocation: Invocation) -> Result<EventStream> {
        let mut turn = self.begin(&invocation.context).await?;
        if let Some((_, token)) = &turn.token {
            invocation.context = invocation.context.with_cancellation(token.clone());
        }
        let keyed = turn_id(&invocation.context);
        let opened = async {
            let session = self.load(&turn.key).await?;
            // A keyed turn the session holds already: its reply, as the stream's one event.
            if let Some(id) = &keyed
                && let Some(mut reply) = applied_turn(&session, id)
            {
                replayed();
                reply.session = Some(SessionState {
                    id: turn.key.1.clone(),
                    version: session.version,
                });
                return Ok(Err(reply));
            }
            invocation.history = session.messages.clone();
            let events = self.inner.executor.stream(invocation).await?;
            Ok::<_, Error>(Ok((session, events)))
        }
        .await;
        let (session, mut events) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(applied)) => {
                self.release(&mut turn).await;
                let done: EventStream = Box::pin(futures::stream::once(async {
                    Ok(AgentEvent::Done(Box::new(applied)))
                }));
                return Ok(done);
            }
            Err(error) => {
                self.release(&mut turn).await;
                return Err(error);
            }
        };
        let (tx, rx) = mpsc::channel::<Result<AgentEvent>>(32);
        let this = self.clone();
        tokio::spawn(async move {
            let mut session = Some(session);
            let forward = async {
                while let Some(event) = events.next().await {
                    let event = match event {
                        Ok(AgentEvent::Done(_))
                            if turn
                                .token
                                .as_ref()
                                .is_some_and(|(_, token)| token.is_cancelled()) =>
                        {
                            session = None;
                            Err(interrupted(&turn.key))
                        }
                        Ok(AgentEvent::Done(mut reply)) => match session.take() {
                            Some(session) => {
                                match this
                                    .save(session, &reply, turn.lease.as_ref(), keyed.as_deref())
                                    .await
                                {
                                    Ok(version) => {
                                        reply.session = Some(SessionState {
                                            id: turn.key.1.clone(),
                                            version,
                                        });
                                        Ok(AgentEvent::Done(reply))
                                    }
                                    Err(error) if error.kind() == ErrorKind::Conflict => Err(busy(
                                        &turn.key.0,
                                        &turn.key.1,
                                        "changed while this turn ran",
                                    )),
                                    Err(error) => Err(error),
                                }
                            }
                            None => Ok(AgentEvent::Done(reply)),
                        },
                        other => other,
                    };
                    // The consumer went away: dropping `events` cancels the run.
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
            };
            this.with_renewal(turn.lease.as_ref(), forward).await;
            this.release(&mut turn).await;
        });
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|event| (event, rx))
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentkit_core::{ContentPart, ToolCall, ToolResult};

    fn call_turn(n: usize) -> Vec<Message> {
        vec![
            Message::user(format!("q{n}")),
            Message {
                role: Role::Assistant,
                content: vec![ContentPart::ToolCall(ToolCall {
                    id: format!("c{n}"),
                    name: "add".into(),
                    arguments: "{}".into(),
                })],
            },
            Message::tool_results([ToolResult {
                call_id: format!("c{n}"),
                content: "1".into(),
                is_error: false,
            }]),
            Message::assistant(format!("a{n}")),
        ]
    }

    #[tokio::test]
    async fn idle_sessions_leave_no_gate_behind() {
        use agentkit_core::model::ScriptedModel;
        let agent = agentkit_core::Agent::builder()
            .model(ScriptedModel::demo())
            .build()
            .unwrap();
        for policy in [
            TurnPolicy::Enqueue,
            TurnPolicy::Reject,
            TurnPolicy::Interrupt,
        ] {
            let sessions =
                SessionAgent::builder(agent.clone(), Arc::new(crate::MemorySessionStore::new()))
                    .policy(policy)
                    .build();
            for i in 0..50 {
                let cx = Context::new().with_session_id(format!("s-{i}"));
                sessions
                    .execute(Invocation::text("hi").with_context(cx))
                    .await
                    .unwrap();
            }
            let missing = sessions.execute(Invocation::text("hi")).await.unwrap_err();
            assert_eq!(missing.kind(), ErrorKind::InvalidInput, "no session id");
            assert!(
                sessions.inner.gates.lock().unwrap().is_empty(),
                "{policy:?} leaked gates"
            );
        }
    }

    /// A job delivered again after its worker saved the turn (and died before finishing the
    /// job) gets its turn back; it is not appended twice.
    #[tokio::test]
    async fn a_job_turn_is_applied_once() {
        use agentkit_core::model::ScriptedModel;
        let agent = agentkit_core::Agent::builder()
            .model(ScriptedModel::demo())
            .build()
            .unwrap();
        let store: Arc<dyn SessionStore> = Arc::new(crate::MemorySessionStore::new());
        let sessions = SessionAgent::builder(agent, store.clone()).build();
        let job = |id: &str, text: &str| {
            Invocation::text(text).with_context(
                Context::new()
                    .with_tenant("acme")
                    .with_session_id("s-1")
                    .with_extension(JobId(id.into())),
            )
        };
        let first = sessions.execute(job("job-1", "hello")).await.unwrap();
        let again = sessions.execute(job("job-1", "hello")).await.unwrap();
        assert_eq!(again.output, first.output);
        assert_eq!(again.messages, first.messages);
        assert_eq!(
            again.session, first.session,
            "the same version: nothing saved"
        );
        let session = store.load("acme", "s-1").await.unwrap().unwrap();
        assert_eq!(session.messages.len(), first.messages.len(), "one turn");

        // Another job is another turn; the first is still known, without its messages.
        sessions.execute(job("job-2", "bye")).await.unwrap();
        let late = sessions.execute(job("job-1", "hello")).await.unwrap();
        assert_eq!(late.output, first.output);
        assert!(late.messages.is_empty());
        let session = store.load("acme", "s-1").await.unwrap().unwrap();
        assert_eq!(session.messages.len(), 4, "two turns of two messages");
    }

    /// A turn dropped while the lease store was still answering its acquire leaves no lease
    /// behind: the lease it got is handed back, and another instance takes the session at
    /// once rather than when the lease expires.
    #[tokio::test]
    async fn a_turn_dropped_while_taking_its_lease_leaves_none() {
        use agentkit_core::model::ScriptedModel;
        /// Answers an acquire only well after the lease is taken (a slow store, a cold pool).
        struct Slow(Arc<crate::MemorySessionStore>);
        #[async_trait::async_trait]
        impl LeaseStore for Slow {
            async fn acquire(
                &self,
                tenant: &str,
                id: &str,
                owner: &str,
                ttl: Duration,
            ) -> Result<Option<Lease>> {
                let acquired = self.0.acquire(tenant, id, owner, ttl).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                acquired
            }
            async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
                self.0.renew(lease, ttl).await
            }
            async fn release(&self, lease: &Lease) -> Result<()> {
                self.0.release(lease).await
            }
        }
        let store = Arc::new(crate::MemorySessionStore::new());
        let agent = agentkit_core::Agent::builder()
            .model(ScriptedModel::demo())
            .build()
            .unwrap();
        let slow = SessionAgent::builder(agent, store.clone())
            .policy(TurnPolicy::Reject)
            .lease(
                Arc::new(Slow(store.clone())),
                "node-a",
                Duration::from_secs(30),
            )
            .build();
        let turn = Invocation::text("first")
            .with_context(Context::new().with_tenant("acme").with_session_id("s"));
        let dropped = tokio::time::timeout(Duration::from_millis(100), slow.execute(turn)).await;
        assert!(dropped.is_err(), "the turn was still taking its lease");
        // The store hands the lease to the dropped turn 300 ms in; it must come back.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let Some(lease) = store
                .acquire("acme", "s", "node-b", Duration::from_secs(30))
                .await
                .unwrap()
            {
                store.release(&lease).await.unwrap();
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the dropped turn's lease was kept"
            );
        }
        let saved = store.load("acme", "s").await.unwrap();
        assert!(saved.is_none(), "the dropped turn saved nothing");
    }

    /// A message sent again with the same idempotency key (its answer was lost) gets the
    /// recorded turn back, streamed or not; the executor does not run again. Keys never match
    /// jobs, and another key is another turn.
    #[tokio::test]
    async fn a_keyed_message_is_applied_once() {
        use agentkit_core::model::ScriptedModel;
        /// Counts its runs.
        #[derive(Clone)]
        struct Counted(agentkit_core::Agent, Arc<AtomicUsize>);
        impl Executor for Counted {
            async fn execute(&self, invocation: Invocation) -> Result<Reply> {
                self.1.fetch_add(1, Ordering::SeqCst);
                self.0.execute(invocation).await
            }
            async fn stream(&self, invocation: Invocation) -> Result<EventStream> {
                self.1.fetch_add(1, Ordering::SeqCst);
                self.0.stream(invocation).await
            }
        }
        let agent = agentkit_core::Agent::builder()
            .model(ScriptedModel::demo())
            .build()
            .unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let store: Arc<dyn SessionStore> = Arc::new(crate::MemorySessionStore::new());
        let sessions = SessionAgent::builder(Counted(agent, runs.clone()), store.clone()).build();
        let keyed = |key: &str, text: &str| {
            Invocation::text(text).with_context(
                Context::new()
                    .with_tenant("acme")
                    .with_session_id("s-1")
                    .with_extension(IdempotencyKey::new(key).unwrap()),
            )
        };
        let first = sessions.execute(keyed("k-1", "hello")).await.unwrap();
        let again = sessions.execute(keyed("k-1", "hello")).await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1, "not run again");
        assert_eq!(again.output, first.output);
        assert_eq!(again.session, first.session, "nothing saved");

        let mut streamed = sessions.stream(keyed("k-1", "hello")).await.unwrap();
        let mut events = Vec::new();
        while let Some(event) = streamed.next().await {
            events.push(event.unwrap());
        }
        match events.as_slice() {
            [AgentEvent::Done(reply)] => {
                assert_eq!(reply.output, first.output);
                assert_eq!(reply.session, first.session);
            }
            other => panic!("one done event, got {other:?}"),
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1, "not streamed again");

        // A job named like the key is not the keyed turn, and another key is another turn.
        let job = Invocation::text("hello").with_context(
            Context::new()
                .with_tenant("acme")
                .with_session_id("s-1")
                .with_extension(JobId("k-1".into())),
        );
        let as_job = sessions.execute(job).await.unwrap();
        assert_eq!(as_job.session.unwrap().version, 2);
        let other = sessions.execute(keyed("k-2", "hello")).await.unwrap();
        assert_eq!(other.session.unwrap().version, 3);
        let session = store.load("acme", "s-1").await.unwrap().unwrap();
        assert_eq!(session.messages.len(), 6, "three turns of two messages");
    }

    /// A session remembers as many keyed turns as configured: the oldest key past that runs
    /// again, the newer ones are answered from the session.
    #[tokio::test]
    async fn a_session_remembers_its_configured_number_of_keyed_turns() {
        use agentkit_core::model::ScriptedModel;
        let agent = agentkit_core::Agent::builder()
            .model(ScriptedModel::demo())
            .build()
            .unwrap();
        let store: Arc<dyn SessionStore> = Arc::new(crate::MemorySessionStore::new());
        let sessions = SessionAgent::builder(agent, store.clone())
            .keyed_turns(2)
            .build();
        let keyed = |key: &str| {
            Invocation::text("hello").with_context(
                Context::new()
                    .with_tenant("acme")
                    .with_session_id("s-1")
                    .with_extension(IdempotencyKey::new(key).unwrap()),
            )
        };
        for key in ["k-1", "k-2", "k-3"] {
            sessions.execute(keyed(key)).await.unwrap();
        }
        let version = |reply: Reply| reply.session.unwrap().version;
        // k-2 and k-3 are remembered: answered from the session, nothing saved.
        assert_eq!(version(sessions.execute(keyed("k-3")).await.unwrap()), 3);
        assert_eq!(version(sessions.execute(keyed("k-2")).await.unwrap()), 3);
        // k-1 was forgotten: it runs again, as a fourth turn.
        assert_eq!(version(sessions.execute(keyed("k-1")).await.unwrap()), 4);
        let session = store.load("acme", "s-1").await.unwrap().unwrap();
        let records = session.metadata[JOB_TURNS_KEY].as_array().unwrap();
        assert_eq!(records.len(), 2, "{records:?}");
    }

    /// Runs the slow demo agent to the end whatever happens to the request: an executor that
    /// does not notice cancellation.
    #[derive(Clone)]
    struct Stubborn(agentkit_core::Agent);

    impl Executor for Stubborn {
        async fn execute(&self, mut invocation: Invocation) -> Result<Reply> {
            invocation.context = invocation
                .context
                .with_cancellation(CancellationToken::new());
            self.0.execute(invocation).await
        }
    }

    /// Under `Interrupt` the latest message wins: a turn interrupted after its executor had
    /// finished saves nothing, and a message still waiting when a newer one arrives never runs.
    #[tokio::test]
    async fn interrupt_lets_the_latest_message_win() {
        use agentkit_core::model::ScriptedModel;
        let slow = agentkit_core::Agent::builder()
            .model(
                ScriptedModel::builder()
                    .demo_rules()
                    .latency(Duration::from_millis(300))
                    .build(),
            )
            .build()
            .unwrap();
        let store: Arc<dyn SessionStore> = Arc::new(crate::MemorySessionStore::new());
        let sessions = SessionAgent::builder(Stubborn(slow), store.clone())
            .policy(TurnPolicy::Interrupt)
            .build();
        let send = |text: &'static str| {
            let sessions = sessions.clone();
            let cx = Context::new().with_tenant("acme").with_session_id("s-1");
            tokio::spawn(async move {
                sessions
                    .execute(Invocation::text(text).with_context(cx))
                    .await
            })
        };
        let first = send("first");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = send("second");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let third = send("third");

        let first = first.await.unwrap().unwrap_err();
        assert_eq!(first.kind(), ErrorKind::Cancelled, "{first}");
        let second = second.await.unwrap().unwrap_err();
        assert_eq!(second.kind(), ErrorKind::Cancelled, "{second}");
        let third = third.await.unwrap().unwrap();
        assert_eq!(third.output, "You said: third");
        let stored = store.load("acme", "s-1").await.unwrap().unwrap();
        let texts: Vec<String> = stored.messages.iter().map(Message::text_content).collect();
        assert_eq!(texts, ["third", "You said: third"]);
        assert_eq!(stored.version, 1, "one turn saved");
        assert!(
            sessions.inner.gates.lock().unwrap().is_empty(),
            "gate left behind"
        );
    }

    #[test]
    fn trimming_keeps_whole_turns() {
        let mut history: Vec<Message> = (0..5).flat_map(call_turn).collect();
        HistoryPolicy::LastMessages(6).apply(&mut history);
        // Six would start mid-turn; the cut moves forward to the next user message.
        assert_eq!(history.len(), 4);
        assert_eq!(history[0].text_content(), "q4");

        let mut history: Vec<Message> = (0..5).flat_map(call_turn).collect();
        HistoryPolicy::Unbounded.apply(&mut history);
        assert_eq!(history.len(), 20);

        let mut history: Vec<Message> = (0..50).map(|i| Message::user(format!("{i:04}"))).collect();
        HistoryPolicy::TokenWindow(10).apply(&mut history);
        assert_eq!(history.len(), 10, "one token per four-byte message");
        assert_eq!(history[0].text_content(), "0040");
    }
}
