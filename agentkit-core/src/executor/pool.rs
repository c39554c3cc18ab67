//! [`Pool`]: instances of one agent behind one executor, with session affinity.

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use super::{AgentEvent, EventStream, Executor, Invocation, Reply};
use crate::observer::Observer;
use crate::{Error, ErrorKind, IdempotencyKey, Result, stable_hash};

/// Instances of one agent (typically `agentkit_transport::RemoteExecutor`s, one per
/// instance) behind one executor. A session's turns all go to the instance that owns it, by
/// rendezvous hashing of the session id over the instances that are up: every caller with
/// the same members agrees on the owner without talking to the others, and when an instance
/// goes down only its own sessions move (each to its next choice), and come back when it
/// does. Invocations without a session take the instances in turn.
///
/// An instance is down after [`mark_down_after`](PoolBuilder::mark_down_after) invocations
/// in a row fail as [`Unavailable`](ErrorKind::Unavailable) (it cannot be reached, or
/// answers 5xx); other errors are the agent's, not the instance's. After
/// [`cooldown`](PoolBuilder::cooldown) it is tried again: an answer brings it back, a failure
/// marks it down for another cooldown. When every instance is down, all of them are tried
/// rather than none.
///
/// An invocation that finds its instance unreachable is sent to the next one only when it is
/// a session turn whose context carries an [`IdempotencyKey`]: whether the first instance ran
/// it is unknown, and only a keyed turn is safe to send twice (the session returns the
/// recorded turn if it was saved). It goes from instance to instance until one answers, each
/// was tried once, or its deadline passes. Without a key, the error goes back to the caller,
/// who decides whether to try again (which lands on the next owner).
///
/// Members going down and coming back are `warn` and `info` log lines (target
/// `agentkit::pool`) and, with an [`Observer`] (the process-wide one unless
/// [`PoolBuilder::observer`] names one), the gauge `agentkit_pool_member_up{pool,member}`.
///
/// The instances should share their session store, and keep a lease on each session
/// (`ApiBuilder::session_leases` in agentkit-transport, or `SessionAgentBuilder::lease` in
/// agentkit-store; the bundled service does so with sessions in Redis or PostgreSQL): while
/// callers disagree about which instances are up, a session still has one writer; an
/// instance that dies mid-turn keeps its sessions until its lease expires, and the instance
/// that takes one over then loads all its history, so no message is lost.
///
/// ```
/// use agentkit_core::executor::Pool;
/// use agentkit_core::model::ScriptedModel;
/// use agentkit_core::{Agent, Context, Executor, Invocation};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let instance = || Agent::builder().model(ScriptedModel::demo()).build().unwrap();
/// let pool = Pool::builder()
///     .member("a", instance())
///     .member("b", instance())
///     .build()?;
/// let owner = pool.owner("s-42").unwrap().to_owned();
/// let turn = Invocation::text("hello").with_context(Context::new().with_session_id("s-42"));
/// pool.execute(turn).await?;
/// assert_eq!(pool.owner("s-42"), Some(owner.as_str()), "the same instance, turn after turn");
/// # Ok::<_, agentkit_core::Error>(())
/// # }).unwrap();
/// ```
pub struct Pool<E> {
    inner: Arc<Inner<E>>,
}

impl<E> Clone for Pool<E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<E> std::fmt::Debug for Pool<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let members: Vec<(&str, bool)> = (self.inner.members.iter())
            .map(|m| (m.name.as_str(), m.is_up(self.inner.now_ms())))
            .collect();
        f.debug_struct("Pool").field("members", &members).finish()
    }
}

struct Inner<E> {
    name: String,
    observer: Option<Arc<dyn Observer>>,
    members: Vec<Member<E>>,
    failures_to_down: u32,
    cooldown: Duration,
    /// The next member for invocations without a session.
    turn: AtomicUsize,
    epoch: Instant,
}

struct Member<E> {
    name: String,
    /// Mixed into every session's hash for this member.
    key: u64,
    executor: E,
    /// `Unavailable` failures in a row.
    failures: AtomicU32,
    /// Milliseconds since the pool's epoch until which it is down; 0 when up.
    down_until: AtomicU64,
}

impl<E> Member<E> {
    fn is_up(&self, now_ms: u64) -> bool {
        self.down_until.load(Ordering::Relaxed) <= now_ms
    }
}

/// Builds a [`Pool`].
#[must_use]
pub struct PoolBuilder<E> {
    name: String,
    observer: Option<Arc<dyn Observer>>,
    members: Vec<(String, E)>,
    failures_to_down: u32,
    cooldown: Duration,
    probe: Option<(Duration, Probe<E>)>,
}

/// A readiness check of one member (see [`PoolBuilder::probe`]).
pub type Probe<E> = Arc<dyn for<'a> Fn(&'a E) -> BoxFuture<'a, Result<()>> + Send + Sync>;

/// `down_until` of a member whose probe failed: down until a probe answers.
const PROBED_DOWN: u64 = u64::MAX;

impl<E> std::fmt::Debug for PoolBuilder<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.members.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("PoolBuilder")
            .field("name", &self.name)
            .field("members", &names)
            .field("failures_to_down", &self.failures_to_down)
            .field("cooldown", &self.cooldown)
            .field("probe_every", &self.probe.as_ref().map(|(every, _)| every))
            .finish()
    }
}

impl<E> Default for PoolBuilder<E> {
    fn default() -> Self {
        Self {
            name: "pool".to_owned(),
            observer: None,
            members: Vec::new(),
            failures_to_down: 3,
            cooldown: Duration::from_secs(10),
            probe: None,
        }
    }
}

impl<E: Executor> Pool<E> {
    /// A builder with no members, marking one down after 3 failures in a row for 10 s.
    pub fn builder() -> PoolBuilder<E> {
        PoolBuilder::default()
    }

    /// The instance that owns `session` now (among those up), by name.
    pub fn owner(&self, session: &str) -> Option<&str> {
        let index = (self.inner).pick(Some(stable_hash(session.bytes())), &[])?;
        Some(&self.inner.members[index].name)
    }

    /// The instances that are up now, by name.
    pub fn up(&self) -> Vec<&str> {
        let now = self.inner.now_ms();
        (self.inner.members.iter())
            .filter(|m| m.is_up(now))
            .map(|m| m.name.as_str())
            .collect()
    }
}

impl<E> PoolBuilder<E> {
    /// The pool's name in its metric (default `pool`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Tells `observer` of members going down and coming back (default: the process-wide
    /// one, if installed when the pool is built).
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Adds an instance named `name` (stable across restarts and the same for every
    /// caller: it decides which sessions the instance owns).
    pub fn member(mut self, name: impl Into<String>, executor: E) -> Self {
        self.members.push((name.into(), executor));
        self
    }

    /// Marks an instance down after this many `Unavailable` failures in a row (default 3).
    pub fn mark_down_after(mut self, failures: u32) -> Self {
        self.failures_to_down = failures;
        self
    }

    /// How long an instance stays down before one invocation tries it again (default 10 s).
    pub fn cooldown(mut self, cooldown: Duration) -> Self {
        self.cooldown = cooldown;
        self
    }

    /// Checks every member with `probe` every `every` (each check bounded by `every`), on a
    /// task of the Tokio runtime the pool is built in, which ends with the pool. A member
    /// whose check fails (or takes too long) is down until a check answers, before any
    /// invocation has to fail on it; failures of invocations still mark members down for
    /// the cooldown as without probes. For `RemoteExecutor` members,
    /// `|remote| Box::pin(remote.ready())` checks the instance's `/readyz`.
    pub fn probe<F>(mut self, every: Duration, probe: F) -> Self
    where
        F: for<'a> Fn(&'a E) -> BoxFuture<'a, Result<()>> + Send + Sync + 'static,
    {
        self.probe = Some((every, Arc::new(probe)));
        self
    }
}

impl<E: Send + Sync + 'static> PoolBuilder<E> {
    /// Checks the members (at least one, names unique and not empty) and builds; with a
    /// [`probe`](Self::probe), starts it (which needs a Tokio runtime).
    pub fn build(self) -> Result<Pool<E>> {
        if self.members.is_empty() {
            return Err(Error::invalid_input("a pool needs at least one member"));
        }
        if self.failures_to_down == 0 {
            return Err(Error::invalid_input("mark_down_after must be at least 1"));
        }
        let mut names: Vec<&str> = self.members.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        if let Some(name) = names.iter().find(|name| name.is_empty()) {
            return Err(Error::invalid_input(format!(
                "a pool member needs a name, not {name:?}"
            )));
        }
        if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(Error::invalid_input(format!(
                "two pool members are named {:?}",
                pair[0]
            )));
        }
        let members: Vec<Member<E>> = (self.members.into_iter())
            .map(|(name, executor)| Member {
                key: stable_hash(name.bytes()),
                name,
                executor,
                failures: AtomicU32::new(0),
                down_until: AtomicU64::new(0),
            })
            .collect();
        let observer = (self.observer).or_else(|| crate::observer::global_observer().cloned());
        if let Some(observer) = &observer {
            for member in &members {
                observer.pool_member(&self.name, &member.name, true);
            }
        }
        let runtime = match &self.probe {
            Some((every, _)) if every.is_zero() => {
                return Err(Error::invalid_input(
                    "a pool's probe interval must not be zero",
                ));
            }
            Some(_) => Some(tokio::runtime::Handle::try_current().map_err(|_| {
                Error::invalid_input("a pool with a probe must be built inside a Tokio runtime")
            })?),
            None => None,
        };
        let inner = Arc::new(Inner {
            name: self.name,
            observer,
            members,
            failures_to_down: self.failures_to_down,
            cooldown: self.cooldown,
            turn: AtomicUsize::new(0),
            epoch: Instant::now(),
        });
        if let (Some(runtime), Some((every, probe))) = (runtime, self.probe) {
            runtime.spawn(probe_members(Arc::downgrade(&inner), every, probe));
        }
        Ok(Pool { inner })
    }
}

/// Checks every member each `every` until the pool is dropped.
async fn probe_members<E>(pool: Weak<Inner<E>>, every: Duration, probe: Probe<E>) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = pool.upgrade() else {
            return;
        };
        let checks = inner.members.iter().map(|member| {
            let check = tokio::time::timeout(every, probe(&member.executor));
            async move {
                match check.await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(error.to_string()),
                    Err(_) => Err(format!("no answer within {every:?}")),
                }
            }
        });
        let outcomes = futures::future::join_all(checks).await;
        for (member, outcome) in inner.members.iter().zip(outcomes) {
            inner.probed(member, outcome);
        }
    }
}

/// A 64-bit finalizer (SplitMix64's): spreads a session's hash mixed with a member's key.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl<E> Inner<E> {
    fn now_ms(&self) -> u64 {
        // At least 1: 0 means "up" in `down_until`.
        (self.epoch.elapsed().as_millis() as u64).max(1)
    }

    /// The member for an invocation: the owner of the session whose id hashes to `session`
    /// among the members up (all of them when none is), or the next in turn; members in
    /// `tried` are left out.
    fn pick(&self, session: Option<u64>, tried: &[usize]) -> Option<usize> {
        let now = self.now_ms();
        let untried = |i: &usize| !tried.contains(i);
        let any_up = (0..self.members.len())
            .filter(untried)
            .any(|i| self.members[i].is_up(now));
        let mut candidates = (0..self.members.len())
            .filter(untried)
            .filter(|&i| !any_up || self.members[i].is_up(now));
        match session {
            Some(hash) => candidates.max_by_key(|&i| (mix(hash ^ self.members[i].key), i)),
            None => {
                let count = candidates.clone().count();
                let turn = self.turn.fetch_add(1, Ordering::Relaxed);
                candidates.nth(turn % count.max(1))
            }
        }
    }

    /// Tells the observer, if any, that `member` went up or down.
    fn tell(&self, member: &Member<E>, up: bool) {
        if let Some(observer) = &self.observer {
            observer.pool_member(&self.name, &member.name, up);
        }
    }

    /// Takes in a member's check: a failure marks it down until a check answers; an answer
    /// brings back a member that a check had marked down (not one that invocations did: it
    /// waits out its cooldown).
    fn probed(&self, member: &Member<E>, outcome: std::result::Result<(), String>) {
        match outcome {
            Ok(()) => {
                if (member.down_until)
                    .compare_exchange(PROBED_DOWN, 0, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    member.failures.store(0, Ordering::Relaxed);
                    self.tell(member, true);
                    tracing::info!(
                        target: "agentkit::pool",
                        member = %member.name,
                        "pool member answers its probe again: its sessions come back"
                    );
                }
            }
            Err(error) => {
                let was = member.down_until.swap(PROBED_DOWN, Ordering::Relaxed);
                if was <= self.now_ms() {
                    self.tell(member, false);
                    tracing::warn!(
                        target: "agentkit::pool",
                        member = %member.name,
                        %error,
                        "pool member down: its probe failed; its sessions go to their next owner"
                    );
                }
            }
        }
    }

    /// Counts how the member's invocation went.
    fn observe<T>(&self, index: usize, outcome: &Result<T>) {
        let member = &self.members[index];
        match outcome {
            Err(error) if error.kind() == ErrorKind::Unavailable => {
                let failures = member.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures >= self.failures_to_down {
                    let now = self.now_ms();
                    let until = now + self.cooldown.as_millis() as u64;
                    // The later of the two: a member its probe marked down stays down.
                    if member.down_until.fetch_max(until, Ordering::Relaxed) <= now {
                        self.tell(member, false);
                        tracing::warn!(
                            target: "agentkit::pool",
                            member = %member.name,
                            failures,
                            cooldown_ms = self.cooldown.as_millis() as u64,
                            %error,
                            "pool member down: its sessions go to their next owner"
                        );
                    }
                }
            }
            _ => {
                member.failures.store(0, Ordering::Relaxed);
                if member.down_until.swap(0, Ordering::Relaxed) != 0 {
                    self.tell(member, true);
                    tracing::info!(
                        target: "agentkit::pool",
                        member = %member.name,
                        "pool member up again: its sessions come back"
                    );
                }
            }
        }
    }
}

/// Whether the invocation may be sent to another member when its own is unreachable: a
/// session turn with an [`IdempotencyKey`] (only a session records keyed turns; a stateless
/// invocation run twice runs twice).
fn resendable(invocation: &Invocation) -> bool {
    invocation.context.session_id().is_some()
        && invocation.context.extension::<IdempotencyKey>().is_some()
}

impl<E: Executor> Pool<E> {
    /// Calls `call` on the invocation's member. A session turn with an [`IdempotencyKey`] that
    /// finds its member unreachable goes to the next one (its session applies it once), until
    /// one answers, every member was tried, or its deadline passed.
    async fn call<'a, T, F, Fut>(&'a self, invocation: Invocation, call: F) -> Result<T>
    where
        F: Fn(&'a E, Invocation) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut tried = Vec::new();
        let (_, outcome) = self.call_from(&mut tried, invocation, call).await?;
        Ok(outcome)
    }

    /// [`call`](Self::call), skipping the members in `tried` (and adding those it tries, for a
    /// keyed turn); which member answered.
    async fn call_from<'a, T, F, Fut>(
        &'a self,
        tried: &mut Vec<usize>,
        invocation: Invocation,
        call: F,
    ) -> Result<(usize, T)>
    where
        F: Fn(&'a E, Invocation) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let inner = &*self.inner;
        let session = (invocation.context.session_id()).map(|id| stable_hash(id.bytes()));
        let keyed = resendable(&invocation);
        let mut invocation = invocation;
        loop {
            let index = (inner.pick(session, tried))
                .ok_or_else(|| Error::unavailable("the pool has no member"))?;
            // Only a keyed turn goes on, so only it keeps count (and allocates for it).
            let spare = if keyed {
                tried.push(index);
                (tried.len() < inner.members.len()).then(|| invocation.clone())
            } else {
                None
            };
            let member = &inner.members[index];
            let outcome = call(&member.executor, invocation).await;
            inner.observe(index, &outcome);
            match (outcome, spare) {
                (Err(error), Some(spare))
                    if error.kind() == ErrorKind::Unavailable
                        && spare.context.remaining() != Some(Duration::ZERO) =>
                {
                    inner.resent(member, &error);
                    invocation = spare;
                }
                (outcome, _) => return outcome.map(|outcome| (index, outcome)),
            }
        }
    }
}

impl<E> Inner<E> {
    /// Logs and counts a keyed turn sent on from `member`.
    fn resent(&self, member: &Member<E>, error: &Error) {
        tracing::info!(
            target: "agentkit::pool",
            member = %member.name,
            %error,
            "keyed invocation sent to the next member"
        );
        if let Some(observer) = &self.observer {
            observer.pool_resend(&self.name);
        }
    }
}

/// A keyed turn's stream while nothing of it has reached the caller: where it is, and what
/// it takes to open it on the next member.
struct Resending<E> {
    pool: Pool<E>,
    tried: Vec<usize>,
    invocation: Invocation,
    /// The member streaming it.
    index: usize,
    events: EventStream,
    /// Whether an event reached the caller (after which the turn stays where it is).
    delivered: bool,
}

impl<E: Executor + 'static> Resending<E> {
    /// The next event; a stream broken as unreachable before its first event is opened again
    /// on the next member, as a turn that could not be sent is.
    async fn next(mut self) -> Option<(Result<AgentEvent>, Option<Self>)> {
        use futures::StreamExt;
        loop {
            let item = self.events.next().await?;
            let inner = &*self.pool.inner;
            match item {
                Err(error)
                    if !self.delivered
                        && error.kind() == ErrorKind::Unavailable
                        && self.tried.len() < inner.members.len()
                        && self.invocation.context.remaining() != Some(Duration::ZERO) =>
                {
                    inner.observe::<()>(self.index, &Err(error.clone()));
                    inner.resent(&inner.members[self.index], &error);
                    let opened = (self.pool)
                        .call_from(&mut self.tried, self.invocation.clone(), |member, turn| {
                            member.stream(turn)
                        })
                        .await;
                    match opened {
                        Ok((index, events)) => {
                            self.index = index;
                            self.events = events;
                        }
                        Err(error) => return Some((Err(error), None)),
                    }
                }
                item => {
                    self.delivered |= item.is_ok();
                    return Some((item, Some(self)));
                }
            }
        }
    }
}

impl<E: Executor + 'static> Executor for Pool<E> {
    async fn execute(&self, invocation: Invocation) -> Result<Reply> {
        self.call(invocation, |member, invocation| member.execute(invocation))
            .await
    }

    /// Streams from the invocation's member. A keyed session turn goes on to the next member
    /// when its own cannot be reached, as [`execute`](Executor::execute) does, and also when
    /// its stream breaks before its first event (the member died once it had taken the turn);
    /// after an event has reached the caller, a broken stream is the caller's error.
    async fn stream(&self, invocation: Invocation) -> Result<EventStream> {
        if !resendable(&invocation) {
            return self
                .call(invocation, |member, invocation| member.stream(invocation))
                .await;
        }
        let mut tried = Vec::new();
        let spare = invocation.clone();
        let (index, events) = self
            .call_from(&mut tried, invocation, |member, turn| member.stream(turn))
            .await?;
        let resending = Resending {
            pool: self.clone(),
            tried,
            invocation: spare,
            index,
            events,
            delivered: false,
        };
        Ok(Box::pin(futures::stream::unfold(
            Some(resending),
            |state| async move { state?.next().await },
        )))
    }
}
