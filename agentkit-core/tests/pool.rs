//! `Pool`: session affinity by rendezvous hashing, members marked down and back up, turns
//! without a session taken in turn.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use agentkit_core::executor::{AgentEvent, EventStream, Pool, Reply};
use agentkit_core::{Context, Error, ErrorKind, Executor, IdempotencyKey, Invocation, Result};

/// An instance: answers with its name, or fails as unreachable while `dead`. Its streams
/// replay the answer, breaking as unreachable after `breaks_after` events.
#[derive(Clone)]
struct Instance {
    name: &'static str,
    dead: Arc<AtomicBool>,
    breaks_after: Arc<AtomicUsize>,
    /// Streams it opened.
    streams: Arc<AtomicUsize>,
}

impl Instance {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            dead: Arc::default(),
            breaks_after: Arc::new(AtomicUsize::new(usize::MAX)),
            streams: Arc::default(),
        }
    }

    /// Its streams break after `events` events (as an instance that dies mid-turn).
    fn break_streams_after(&self, events: usize) {
        self.breaks_after.store(events, Ordering::SeqCst);
    }

    fn kill(&self, dead: bool) {
        self.dead.store(dead, Ordering::SeqCst);
    }
}

impl Executor for Instance {
    async fn execute(&self, invocation: Invocation) -> Result<Reply> {
        if self.dead.load(Ordering::SeqCst) {
            return Err(Error::unavailable(format!("cannot reach {}", self.name)));
        }
        if invocation.input[0].text_content() == "bad" {
            return Err(Error::invalid_input("bad"));
        }
        Ok(Reply {
            output: self.name.to_owned(),
            ..Reply::default()
        })
    }

    async fn stream(&self, invocation: Invocation) -> Result<EventStream> {
        let reply = self.execute(invocation).await?;
        self.streams.fetch_add(1, Ordering::SeqCst);
        let events = AgentEvent::replay(reply);
        let breaks_after = self.breaks_after.load(Ordering::SeqCst);
        let broken = breaks_after < events.len();
        let mut items: Vec<Result<AgentEvent>> =
            events.into_iter().take(breaks_after).map(Ok).collect();
        if broken {
            items.push(Err(Error::unavailable(format!(
                "{} died mid-stream",
                self.name
            ))));
        }
        Ok(Box::pin(futures::stream::iter(items)))
    }
}

/// Everything a stream yields.
async fn drain(events: EventStream) -> Vec<Result<AgentEvent>> {
    use futures::StreamExt;
    events.collect().await
}

fn pool(instances: &[Instance], down_after: u32, cooldown: Duration) -> Pool<Instance> {
    let mut builder = Pool::builder()
        .mark_down_after(down_after)
        .cooldown(cooldown);
    for instance in instances {
        builder = builder.member(instance.name, instance.clone());
    }
    builder.build().unwrap()
}

fn turn(session: &str, text: &str) -> Invocation {
    Invocation::text(text).with_context(Context::new().with_session_id(session))
}

/// Who answered each session's turn.
async fn owners(pool: &Pool<Instance>, sessions: &[String]) -> BTreeMap<String, String> {
    let mut owners = BTreeMap::new();
    for session in sessions {
        let reply = pool.execute(turn(session, "hello")).await.unwrap();
        owners.insert(session.clone(), reply.output);
    }
    owners
}

/// The sessions of `owners` that `instance` answered.
fn owned_by<'a>(owners: &'a BTreeMap<String, String>, instance: &str) -> Vec<&'a String> {
    (owners.iter())
        .filter(|(_, owner)| *owner == instance)
        .map(|(session, _)| session)
        .collect()
}

fn sessions(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("session-{i}")).collect()
}

#[tokio::test]
async fn a_sessions_turns_stay_on_one_instance_and_sessions_spread() {
    let instances = [Instance::new("a"), Instance::new("b"), Instance::new("c")];
    let pool = pool(&instances, 3, Duration::from_secs(10));
    let sessions = sessions(300);
    let first = owners(&pool, &sessions).await;
    let second = owners(&pool, &sessions).await;
    assert_eq!(
        first, second,
        "every session on the same instance, turn after turn"
    );
    for (session, owner) in &first {
        assert_eq!(pool.owner(session), Some(owner.as_str()));
    }
    let mut load: BTreeMap<&str, usize> = BTreeMap::new();
    for owner in first.values() {
        *load.entry(owner.as_str()).or_default() += 1;
    }
    assert_eq!(load.len(), 3, "{load:?}");
    assert!(load.values().all(|&n| (60..=140).contains(&n)), "{load:?}");

    // Another pool with the same members, built apart (another caller): the same owners.
    let elsewhere = pool_of_same(&instances);
    for (session, owner) in &first {
        assert_eq!(elsewhere.owner(session), Some(owner.as_str()));
    }
}

fn pool_of_same(instances: &[Instance]) -> Pool<Instance> {
    // Members added in another order: ownership depends on names, not on order.
    let mut reversed = instances.to_vec();
    reversed.reverse();
    pool(&reversed, 3, Duration::from_secs(10))
}

#[tokio::test]
async fn only_a_downed_instances_sessions_move_and_they_come_back() {
    let instances = [Instance::new("a"), Instance::new("b"), Instance::new("c")];
    let pool = pool(&instances, 2, Duration::from_millis(200));
    let sessions = sessions(120);
    let before = owners(&pool, &sessions).await;
    let on_b = owned_by(&before, "b");
    assert!(!on_b.is_empty());

    instances[1].kill(true);
    // Two failures in a row mark it down; the failed turns are not sent elsewhere.
    for session in &on_b[..2] {
        let error = pool.execute(turn(session, "hello")).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Unavailable);
    }
    assert_eq!(pool.up(), ["a", "c"]);
    let during = owners(&pool, &sessions).await;
    for (session, owner) in &before {
        if owner == "b" {
            assert_ne!(during[session], "b", "{session} moved to its next choice");
        } else {
            assert_eq!(&during[session], owner, "{session} stayed where it was");
        }
    }

    // Back after the cooldown: the first answer brings it up, and its sessions return.
    instances[1].kill(false);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let after = owners(&pool, &sessions).await;
    assert_eq!(after, before);
    assert_eq!(pool.up(), ["a", "b", "c"]);
}

fn keyed(session: &str, key: &str) -> Invocation {
    Invocation::text("hello").with_context(
        Context::new()
            .with_session_id(session)
            .with_extension(IdempotencyKey::new(key).unwrap()),
    )
}

#[tokio::test]
async fn a_keyed_turn_goes_on_to_the_next_instance_when_its_owner_is_unreachable() {
    let instances = [Instance::new("a"), Instance::new("b"), Instance::new("c")];
    let pool = pool(&instances, 3, Duration::from_secs(60));
    let sessions = sessions(60);
    let before = owners(&pool, &sessions).await;
    let on_b = owned_by(&before, "b");
    instances[1].kill(true);

    // Unkeyed, the failure goes back to the caller; keyed, the turn lands on the session's
    // next choice, the owner it will have once `b` is down.
    let error = pool.execute(turn(on_b[0], "hello")).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable);
    let reply = pool.execute(keyed(on_b[1], "k-1")).await.unwrap();
    assert_ne!(reply.output, "b");
    assert_eq!(pool.up(), ["a", "b", "c"], "two failures of three");
    pool.execute(turn(on_b[2], "hello")).await.unwrap_err();
    assert_eq!(pool.up(), ["a", "c"]);
    assert_eq!(pool.owner(on_b[1]), Some(reply.output.as_str()));

    // With every instance unreachable, each is tried once and the error comes back.
    instances[0].kill(true);
    instances[2].kill(true);
    let error = pool.execute(keyed(on_b[3], "k-2")).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable);
    // The agent's own errors are not sent on.
    instances[0].kill(false);
    let bad = Invocation::text("bad").with_context(
        Context::new()
            .with_session_id(on_b[3].as_str())
            .with_extension(IdempotencyKey::new("k-3").unwrap()),
    );
    assert_eq!(
        pool.execute(bad).await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

#[tokio::test]
async fn a_keyed_streamed_turn_whose_stream_breaks_before_its_first_event_goes_on() {
    let instances = [Instance::new("a"), Instance::new("b"), Instance::new("c")];
    let pool = pool(&instances, 1, Duration::from_secs(60));
    let sessions = sessions(60);
    let before = owners(&pool, &sessions).await;
    let on_a = owned_by(&before, "a");
    // `a` takes the turn, then dies before its first event.
    instances[0].break_streams_after(0);
    let events = drain(pool.stream(keyed(on_a[0], "k-s1")).await.unwrap()).await;
    let Some(Ok(AgentEvent::Done(reply))) = events.last() else {
        panic!("the turn ended elsewhere: {events:?}");
    };
    assert!(events.iter().all(Result::is_ok), "{events:?}");
    assert_ne!(reply.output, "a");
    assert_eq!(pool.owner(on_a[0]), Some(reply.output.as_str()));
    assert_eq!(
        pool.up(),
        ["b", "c"],
        "the broken stream counts as a failure"
    );
    let streamed: usize = (instances.iter())
        .map(|i| i.streams.load(Ordering::SeqCst))
        .sum();
    assert_eq!(streamed, 2, "opened on `a`, then on the next owner only");
}

#[tokio::test]
async fn a_stream_broken_after_its_first_event_or_unkeyed_is_the_callers_error() {
    let instances = [Instance::new("a"), Instance::new("b")];
    let pool = pool(&instances, 3, Duration::from_secs(60));
    let sessions = sessions(40);
    let before = owners(&pool, &sessions).await;
    let on_a = owned_by(&before, "a");

    // Part of the answer reached the caller: sent again, it would be said twice.
    instances[0].break_streams_after(1);
    let events = drain(pool.stream(keyed(on_a[0], "k-s2")).await.unwrap()).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(matches!(&events[0], Ok(AgentEvent::TextDelta { text }) if text == "a"));
    let Err(error) = &events[1] else {
        panic!("{events:?}")
    };
    assert_eq!(error.kind(), ErrorKind::Unavailable);

    // Unkeyed, nothing would apply it once.
    instances[0].break_streams_after(0);
    let events = drain(pool.stream(turn(on_a[1], "hello")).await.unwrap()).await;
    assert!(matches!(&events[..], [Err(e)] if e.kind() == ErrorKind::Unavailable));
    assert_eq!(
        instances[1].streams.load(Ordering::SeqCst),
        0,
        "nothing went to `b`"
    );
}

#[tokio::test]
async fn a_keyed_invocation_without_a_session_is_not_sent_on() {
    // Nothing would apply it once: run twice, it would run twice.
    let instances = [Instance::new("a"), Instance::new("b")];
    let pool = pool(&instances, 3, Duration::from_secs(60));
    instances[0].kill(true);
    let stateless = Invocation::text("hello")
        .with_context(Context::new().with_extension(IdempotencyKey::new("k-0").unwrap()));
    let mut failed = 0;
    for _ in 0..4 {
        if let Err(error) = pool.execute(stateless.clone()).await {
            assert_eq!(error.kind(), ErrorKind::Unavailable);
            failed += 1;
        }
    }
    assert_eq!(failed, 2, "the turns that went to `a` failed back");
}

#[tokio::test]
async fn a_failure_after_the_cooldown_marks_it_down_again() {
    let instances = [Instance::new("a"), Instance::new("b")];
    let pool = pool(&instances, 1, Duration::from_millis(100));
    instances[0].kill(true);
    let on_a = sessions(40)
        .into_iter()
        .find(|s| pool.owner(s) == Some("a"))
        .unwrap();
    assert!(pool.execute(turn(&on_a, "hello")).await.is_err());
    assert_eq!(pool.up(), ["b"]);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(pool.up(), ["a", "b"], "tried again after the cooldown");
    assert!(pool.execute(turn(&on_a, "hello")).await.is_err());
    assert_eq!(pool.up(), ["b"], "still dead: down for another cooldown");
    assert_eq!(
        pool.execute(turn(&on_a, "hello")).await.unwrap().output,
        "b"
    );
}

#[tokio::test]
async fn the_agents_own_errors_do_not_mark_an_instance_down() {
    let instances = [Instance::new("a"), Instance::new("b")];
    let pool = pool(&instances, 1, Duration::from_secs(10));
    for session in sessions(20) {
        let error = pool.execute(turn(&session, "bad")).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidInput);
    }
    assert_eq!(pool.up(), ["a", "b"]);
}

#[tokio::test]
async fn turns_without_a_session_take_the_instances_up_in_turn() {
    let instances = [Instance::new("a"), Instance::new("b"), Instance::new("c")];
    let pool = pool(&instances, 1, Duration::from_secs(10));
    let mut answered = Vec::new();
    for _ in 0..6 {
        answered.push(pool.execute(Invocation::text("hi")).await.unwrap().output);
    }
    assert_eq!(answered, ["a", "b", "c", "a", "b", "c"]);

    instances[2].kill(true);
    let mut seen = BTreeSet::new();
    for _ in 0..6 {
        if let Ok(reply) = pool.execute(Invocation::text("hi")).await {
            seen.insert(reply.output);
        }
    }
    assert_eq!(pool.up(), ["a", "b"]);
    assert_eq!(seen, BTreeSet::from(["a".to_owned(), "b".to_owned()]));
}

#[tokio::test]
async fn with_every_instance_down_all_are_still_tried() {
    let instances = [Instance::new("a"), Instance::new("b")];
    let pool = pool(&instances, 1, Duration::from_secs(60));
    for instance in &instances {
        instance.kill(true);
    }
    for session in sessions(10) {
        let _ = pool.execute(turn(&session, "hello")).await;
    }
    assert!(pool.up().is_empty());
    instances[0].kill(false);
    let answered: BTreeSet<String> =
        futures::future::join_all(sessions(10).iter().map(|s| pool.execute(turn(s, "hello"))))
            .await
            .into_iter()
            .filter_map(|r| r.ok().map(|reply| reply.output))
            .collect();
    assert_eq!(
        answered,
        BTreeSet::from(["a".to_owned()]),
        "the live one answers"
    );
    assert_eq!(pool.up(), ["a"]);
}

#[test]
fn a_pool_that_cannot_work_is_refused() {
    let refused = [
        Pool::<Instance>::builder().build().err(),
        Pool::builder()
            .member("a", Instance::new("a"))
            .member("a", Instance::new("a"))
            .build()
            .err(),
        Pool::builder().member("", Instance::new("a")).build().err(),
        Pool::builder()
            .member("a", Instance::new("a"))
            .mark_down_after(0)
            .build()
            .err(),
    ];
    for error in refused {
        assert_eq!(error.unwrap().kind(), ErrorKind::InvalidInput);
    }
}

/// Checks an instance as a readiness probe would: down while it is dead.
fn probe(instance: &Instance) -> futures::future::BoxFuture<'_, Result<()>> {
    Box::pin(async move {
        if instance.dead.load(Ordering::SeqCst) {
            Err(Error::unavailable(format!(
                "{} is not ready",
                instance.name
            )))
        } else {
            Ok(())
        }
    })
}

/// Waits (at most 5 s) until the pool's members up are `expected`.
async fn until_up(pool: &Pool<Instance>, expected: &[&str]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while pool.up() != expected {
        assert!(
            std::time::Instant::now() < deadline,
            "members up: {:?}, expected {expected:?}",
            pool.up()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_probe_marks_a_member_down_before_any_turn_fails_and_brings_it_back() {
    let instances = [Instance::new("a"), Instance::new("b")];
    let pool = Pool::builder()
        .member("a", instances[0].clone())
        .member("b", instances[1].clone())
        .cooldown(Duration::from_secs(60))
        .probe(Duration::from_millis(20), probe)
        .build()
        .unwrap();
    let sessions = sessions(20);
    let before = owners(&pool, &sessions).await;

    instances[0].kill(true);
    until_up(&pool, &["b"]).await;
    // No turn fails: `a`'s sessions go to `b` from the start.
    let during = owners(&pool, &sessions).await;
    assert!(during.values().all(|owner| owner == "b"), "{during:?}");

    // Ready again: back at the next probe, long before the cooldown, with its sessions.
    instances[0].kill(false);
    until_up(&pool, &["a", "b"]).await;
    assert_eq!(owners(&pool, &sessions).await, before);
}

#[tokio::test]
async fn a_probe_does_not_cut_short_the_cooldown_of_failed_turns() {
    // The instance answers its probe but fails turns (say, overloaded): it waits out its
    // cooldown rather than flapping back at every probe.
    let instances = [Instance::new("a"), Instance::new("b")];
    let pool = Pool::builder()
        .member("a", instances[0].clone())
        .member("b", instances[1].clone())
        .mark_down_after(1)
        .cooldown(Duration::from_secs(60))
        .probe(Duration::from_millis(10), |_: &Instance| {
            Box::pin(async { Ok(()) })
        })
        .build()
        .unwrap();
    let session = (sessions(50).into_iter())
        .find(|s| pool.owner(s) == Some("a"))
        .unwrap();
    instances[0].kill(true);
    pool.execute(turn(&session, "hello")).await.unwrap_err();
    assert_eq!(pool.up(), ["b"]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(pool.up(), ["b"], "still cooling down");
}

#[test]
fn a_probe_needs_an_interval_and_a_runtime() {
    let build = |every| {
        Pool::builder()
            .member("a", Instance::new("a"))
            .probe(every, probe)
            .build()
            .map(|_| ())
    };
    assert_eq!(
        build(Duration::from_secs(1)).unwrap_err().kind(),
        ErrorKind::InvalidInput,
        "no runtime here"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    assert!(build(Duration::from_secs(1)).is_ok());
    assert_eq!(
        build(Duration::ZERO).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}
