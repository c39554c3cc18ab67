//! The session store conformance suite and the session-agent concurrency cases.
//!
//! Every case takes a fresh store in its own namespace and asserts behaviour; backends run the
//! whole list through [`session_store_conformance!`](crate::session_store_conformance).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use agentkit_core::model::ScriptedModel;
use agentkit_core::{Agent, Context, ErrorKind, Executor, Invocation, Message, Role};
use agentkit_store::{
    HistoryPolicy, LeaseStore, SaveOptions, Session, SessionAgent, SessionStore, TurnPolicy,
};

/// What the suite needs of a backend.
pub trait Backend: SessionStore + LeaseStore + 'static {}

impl<T: SessionStore + LeaseStore + 'static> Backend for T {}

/// Expands into one `#[tokio::test]` per conformance case. `$factory` is an async closure
/// `|namespace: String| -> Option<Store>` (None: the service is missing and the test skips).
#[macro_export]
macro_rules! session_store_conformance {
    ($factory:expr) => {
        $crate::session_store_conformance!(@cases $factory;
            round_trip, version_conflict, concurrent_first_saves, ttl_expiry_slides, tenant_isolation,
            delete, list_paging, invalid_keys, lease_exclusivity, lease_expiry, fencing_of_a_stale_owner,
            enqueue_64_messages, reject_while_busy, interrupt_cancels_the_running_turn,
            two_instances_with_leases, a_dropped_turn_releases_its_lease);
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let factory = $factory;
                let Some(store) = factory($crate::unique(stringify!($case))).await else {
                    return;
                };
                $crate::session::$case(store).await;
            }
        )*
    };
}

fn session(tenant: &str, id: &str, texts: &[&str]) -> Session {
    let mut s = Session::new(tenant, id);
    s.messages = texts.iter().map(|t| Message::user(*t)).collect();
    s
}

/// Save, load, save again from the loaded version.
pub async fn round_trip(store: impl Backend) {
    assert!(store.load("acme", "s1").await.unwrap().is_none());
    let mut s = session("acme", "s1", &["hello"]);
    s.metadata.insert("channel".into(), "web".into());
    assert_eq!(store.save(&s, SaveOptions::default()).await.unwrap(), 1);
    let mut loaded = store
        .load("acme", "s1")
        .await
        .unwrap()
        .expect("saved session loads");
    assert_eq!(loaded.version, 1);
    assert_eq!(loaded.messages, s.messages);
    assert_eq!(loaded.metadata["channel"], "web");
    assert!(loaded.updated_at_ms > 0);
    loaded.messages.push(Message::assistant("hi"));
    assert_eq!(
        store.save(&loaded, SaveOptions::default()).await.unwrap(),
        2
    );
    let again = store.load("acme", "s1").await.unwrap().unwrap();
    assert_eq!(again.version, 2);
    assert_eq!(again.messages.len(), 2);
    assert_eq!(again.messages[1].text_content(), "hi");
    store.ping().await.unwrap();
}

/// A save from a version that is no longer current is a conflict and changes nothing.
pub async fn version_conflict(store: impl Backend) {
    let s = session("acme", "s1", &["one"]);
    store.save(&s, SaveOptions::default()).await.unwrap();
    let first = store.load("acme", "s1").await.unwrap().unwrap();
    let mut a = first.clone();
    a.messages.push(Message::user("from a"));
    let mut b = first;
    b.messages.push(Message::user("from b"));
    assert_eq!(store.save(&a, SaveOptions::default()).await.unwrap(), 2);
    let err = store.save(&b, SaveOptions::default()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    // Creating over an existing session is a conflict too.
    let err = store.save(&s, SaveOptions::default()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let stored = store.load("acme", "s1").await.unwrap().unwrap();
    assert_eq!(stored.version, 2);
    assert_eq!(stored.messages.last().unwrap().text_content(), "from a");
}

/// Many writers race to create the same session: exactly one wins.
pub async fn concurrent_first_saves(store: impl Backend) {
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let s = session("acme", "race", &[&format!("writer {i}")]);
                store.save(&s, SaveOptions::default()).await
            })
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(version) => {
                assert_eq!(version, 1);
                wins += 1;
            }
            Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "{e}"),
        }
    }
    assert_eq!(wins, 1);
}

/// A session expires after its TTL without access; each load slides it.
pub async fn ttl_expiry_slides(store: impl Backend) {
    let mut s = session("acme", "short", &["hi"]);
    // Margins of about 600 ms on each side, for a loaded machine.
    s.ttl = Some(Duration::from_millis(1500));
    store.save(&s, SaveOptions::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(
        store.load("acme", "short").await.unwrap().is_some(),
        "alive within its TTL"
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    // 1.8 s after the save, but 900 ms after the load that slid it.
    let loaded = store.load("acme", "short").await.unwrap();
    assert!(loaded.is_some(), "a load slides the TTL");
    assert_eq!(loaded.unwrap().ttl, Some(Duration::from_millis(1500)));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        store.load("acme", "short").await.unwrap().is_none(),
        "expired"
    );
    let page = store.list("acme", None, 10).await.unwrap();
    assert!(
        page.sessions.iter().all(|s| s.id != "short"),
        "expired sessions are not listed"
    );
    // An expired id can be created afresh.
    assert_eq!(
        store
            .save(
                &session("acme", "short", &["again"]),
                SaveOptions::default()
            )
            .await
            .unwrap(),
        1
    );
}

/// One tenant never sees, changes or deletes another's session of the same id.
pub async fn tenant_isolation(store: impl Backend) {
    store
        .save(
            &session("a", "shared-id", &["secret of a"]),
            SaveOptions::default(),
        )
        .await
        .unwrap();
    assert!(store.load("b", "shared-id").await.unwrap().is_none());
    assert!(!store.delete("b", "shared-id").await.unwrap());
    assert!(store.list("b", None, 10).await.unwrap().sessions.is_empty());
    assert_eq!(
        store
            .save(
                &session("b", "shared-id", &["b's own"]),
                SaveOptions::default()
            )
            .await
            .unwrap(),
        1,
        "b's session of the same id is a different session"
    );
    let a = store.load("a", "shared-id").await.unwrap().unwrap();
    assert_eq!(a.messages[0].text_content(), "secret of a");
    let b = store.load("b", "shared-id").await.unwrap().unwrap();
    assert_eq!(b.messages[0].text_content(), "b's own");
    // Ids that look like key separators do not cross tenants either.
    store
        .save(&session("x:y", "z", &["1"]), SaveOptions::default())
        .await
        .unwrap();
    assert!(store.load("x", "y:z").await.unwrap().is_none());
}

/// Delete removes the session and says whether it existed.
pub async fn delete(store: impl Backend) {
    store
        .save(&session("acme", "gone", &["x"]), SaveOptions::default())
        .await
        .unwrap();
    assert!(store.delete("acme", "gone").await.unwrap());
    assert!(store.load("acme", "gone").await.unwrap().is_none());
    assert!(!store.delete("acme", "gone").await.unwrap());
    assert!(
        store
            .list("acme", None, 10)
            .await
            .unwrap()
            .sessions
            .is_empty()
    );
    assert_eq!(
        store
            .save(&session("acme", "gone", &["y"]), SaveOptions::default())
            .await
            .unwrap(),
        1
    );
}

/// Listing pages through a tenant's sessions by id, each exactly once.
pub async fn list_paging(store: impl Backend) {
    for i in 0..25 {
        store
            .save(
                &session("acme", &format!("s-{i:02}"), &["x"]),
                SaveOptions::default(),
            )
            .await
            .unwrap();
    }
    for i in 0..3 {
        store
            .save(
                &session("other", &format!("s-{i:02}"), &["x"]),
                SaveOptions::default(),
            )
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = store.list("acme", after.as_deref(), 10).await.unwrap();
        pages += 1;
        assert!(page.sessions.len() <= 10);
        seen.extend(page.sessions.iter().map(|s| s.id.clone()));
        assert!(page.sessions.iter().all(|s| s.version == 1));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..25).map(|i| format!("s-{i:02}")).collect();
    assert_eq!(seen, expected);
    let exact = store.list("acme", Some("s-14"), 10).await.unwrap();
    assert_eq!(exact.sessions.len(), 10);
    assert_eq!(exact.sessions[0].id, "s-15");
    assert_eq!(exact.next, None, "the last full page says so");
}

/// Bad keys are invalid input, not a crash or a stray key.
pub async fn invalid_keys(store: impl Backend) {
    for (tenant, id) in [("", "s"), ("t", ""), ("t", "line\nbreak")] {
        let err = store.load(tenant, id).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }
    let long = "x".repeat(300);
    assert_eq!(
        store.load("t", &long).await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

/// One owner at a time; the owner may renew and re-acquire; release frees it.
pub async fn lease_exclusivity(store: impl Backend) {
    let ttl = Duration::from_secs(10);
    let a = store
        .acquire("acme", "s1", "node-a", ttl)
        .await
        .unwrap()
        .expect("free lease");
    assert!(
        store
            .acquire("acme", "s1", "node-b", ttl)
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.renew(&a, ttl).await.unwrap());
    assert!(
        store
            .acquire("acme", "s2", "node-b", ttl)
            .await
            .unwrap()
            .is_some(),
        "per session"
    );
    assert!(
        store
            .acquire("other", "s1", "node-b", ttl)
            .await
            .unwrap()
            .is_some(),
        "per tenant"
    );
    let again = store
        .acquire("acme", "s1", "node-a", ttl)
        .await
        .unwrap()
        .expect("owner re-acquires");
    assert!(again.token > a.token);
    store.release(&again).await.unwrap();
    let b = store
        .acquire("acme", "s1", "node-b", ttl)
        .await
        .unwrap()
        .expect("released lease");
    assert!(b.token > again.token);
    assert!(!store.renew(&a, ttl).await.unwrap(), "a lost it");
}

/// An expired lease can be taken over; the old owner can no longer renew.
pub async fn lease_expiry(store: impl Backend) {
    let a = store
        .acquire("acme", "s1", "node-a", Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    assert!(
        store
            .acquire("acme", "s1", "node-b", Duration::from_secs(5))
            .await
            .unwrap()
            .is_none()
    );
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let b = store
        .acquire("acme", "s1", "node-b", Duration::from_secs(5))
        .await
        .unwrap()
        .expect("expired lease is free");
    assert!(b.token > a.token);
    assert!(!store.renew(&a, Duration::from_secs(5)).await.unwrap());
}

/// A writer whose lease was taken over cannot save, even at the current version.
pub async fn fencing_of_a_stale_owner(store: impl Backend) {
    let a = store
        .acquire("acme", "s1", "node-a", Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    let s = session("acme", "s1", &["by a"]);
    assert_eq!(
        store
            .save(
                &s,
                SaveOptions {
                    fence: Some(a.token)
                }
            )
            .await
            .unwrap(),
        1
    );
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let b = store
        .acquire("acme", "s1", "node-b", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    let mut current = store.load("acme", "s1").await.unwrap().unwrap();
    current.messages.push(Message::user("by a, too late"));
    let err = store
        .save(
            &current,
            SaveOptions {
                fence: Some(a.token),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.message().contains("stale"), "{err}");
    current.messages.pop();
    current.messages.push(Message::user("by b"));
    assert_eq!(
        store
            .save(
                &current,
                SaveOptions {
                    fence: Some(b.token)
                }
            )
            .await
            .unwrap(),
        2
    );
    let stored = store.load("acme", "s1").await.unwrap().unwrap();
    assert_eq!(stored.messages.last().unwrap().text_content(), "by b");
}

fn echo_agent() -> Agent {
    Agent::builder()
        .model(ScriptedModel::demo())
        .build()
        .expect("demo agent")
}

fn turn(id: &str, text: String) -> Invocation {
    Invocation::text(text).with_context(Context::new().with_tenant("acme").with_session_id(id))
}

/// Every user message appears once, answered right after by its own echo.
fn assert_paired(history: &[Message], answered: &HashSet<String>) {
    assert_eq!(
        history.len(),
        answered.len() * 2,
        "history holds each answered message and its reply"
    );
    let mut seen = HashSet::new();
    for pair in history.chunks(2) {
        assert_eq!(pair[0].role, Role::User);
        assert_eq!(pair[1].role, Role::Assistant);
        let text = pair[0].text_content();
        assert_eq!(
            pair[1].text_content(),
            format!("You said: {text}"),
            "reply follows its own message"
        );
        assert!(answered.contains(&text), "{text} was not answered");
        assert!(seen.insert(text.clone()), "{text} appears twice");
    }
}

/// 64 concurrent messages to one session under `Enqueue`: none lost, none duplicated, each
/// reply after its own message, in arrival order.
pub async fn enqueue_64_messages(store: impl Backend) {
    let store: Arc<dyn SessionStore> = Arc::new(store);
    let sessions = SessionAgent::builder(echo_agent(), store.clone())
        .policy(TurnPolicy::Enqueue)
        .history(HistoryPolicy::Unbounded)
        .build();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let sessions = sessions.clone();
            tokio::spawn(async move { sessions.execute(turn("busy", format!("msg-{i}"))).await })
        })
        .collect();
    let mut answered = HashSet::new();
    let mut versions = HashSet::new();
    for (i, task) in tasks.into_iter().enumerate() {
        let reply = task
            .await
            .unwrap()
            .expect("every enqueued message is answered");
        assert_eq!(reply.output, format!("You said: msg-{i}"));
        assert!(
            versions.insert(reply.session.unwrap().version),
            "each turn saved a new version"
        );
        answered.insert(format!("msg-{i}"));
    }
    let stored = store.load("acme", "busy").await.unwrap().unwrap();
    assert_eq!(stored.version, 64);
    assert_paired(&stored.messages, &answered);
}

/// Under `Reject`, every message is either answered or refused as busy, and the history holds
/// exactly the answered ones.
pub async fn reject_while_busy(store: impl Backend) {
    let store: Arc<dyn SessionStore> = Arc::new(store);
    let slow = Agent::builder()
        .model(
            ScriptedModel::builder()
                .demo_rules()
                .latency(Duration::from_millis(20))
                .build(),
        )
        .build()
        .unwrap();
    let sessions = SessionAgent::builder(slow, store.clone())
        .policy(TurnPolicy::Reject)
        .history(HistoryPolicy::Unbounded)
        .build();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let sessions = sessions.clone();
            tokio::spawn(
                async move { (i, sessions.execute(turn("busy", format!("msg-{i}"))).await) },
            )
        })
        .collect();
    let mut answered = HashSet::new();
    let mut rejected = 0;
    for task in tasks {
        match task.await.unwrap() {
            (i, Ok(reply)) => {
                assert_eq!(reply.output, format!("You said: msg-{i}"));
                answered.insert(format!("msg-{i}"));
            }
            (_, Err(e)) => {
                assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
                rejected += 1;
            }
        }
    }
    assert!(!answered.is_empty());
    assert!(rejected > 0, "concurrent messages were refused");
    assert_eq!(answered.len() + rejected, 64);
    let stored = store.load("acme", "busy").await.unwrap().unwrap();
    assert_paired(&stored.messages, &answered);
}

/// Under `Interrupt`, a new message cancels the running turn, which saves nothing.
pub async fn interrupt_cancels_the_running_turn(store: impl Backend) {
    let store: Arc<dyn SessionStore> = Arc::new(store);
    let slow = Agent::builder()
        .model(
            ScriptedModel::builder()
                .demo_rules()
                .latency(Duration::from_millis(1500))
                .build(),
        )
        .build()
        .unwrap();
    let sessions = SessionAgent::builder(slow, store.clone())
        .policy(TurnPolicy::Interrupt)
        .build();
    let first = {
        let sessions = sessions.clone();
        tokio::spawn(async move { sessions.execute(turn("s", "first".into())).await })
    };
    // Long enough for the first turn to be running on a loaded machine.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = sessions.execute(turn("s", "second".into())).await.unwrap();
    assert_eq!(second.output, "You said: second");
    let first = first.await.unwrap().unwrap_err();
    assert_eq!(first.kind(), ErrorKind::Cancelled);
    let stored = store.load("acme", "s").await.unwrap().unwrap();
    let texts: Vec<String> = stored.messages.iter().map(Message::text_content).collect();
    assert_eq!(
        texts,
        ["second", "You said: second"],
        "the interrupted turn left nothing"
    );
}

/// A turn dropped midway (its caller went away) hands its lease back: another instance takes
/// the session at once, not when the lease expires, and the dropped turn saved nothing.
pub async fn a_dropped_turn_releases_its_lease(store: impl Backend) {
    let store = Arc::new(store);
    let build = |owner: &str, agent: Agent| {
        SessionAgent::builder(agent, store.clone() as Arc<dyn SessionStore>)
            .policy(TurnPolicy::Reject)
            .lease(
                store.clone() as Arc<dyn LeaseStore>,
                owner,
                Duration::from_secs(30),
            )
            .build()
    };
    let slow = Agent::builder()
        .model(
            ScriptedModel::builder()
                .demo_rules()
                .latency(Duration::from_secs(30))
                .build(),
        )
        .build()
        .unwrap();
    let a = build("node-a", slow);
    let b = build("node-b", echo_agent());
    let first = a.execute(turn("s", "first".into()));
    let dropped = tokio::time::timeout(Duration::from_millis(200), first).await;
    assert!(dropped.is_err(), "the slow turn was still running");
    // Kept, the lease would refuse node-b as busy for 30 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let second = loop {
        match b.execute(turn("s", "second".into())).await {
            Ok(reply) => break reply,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the dropped turn's lease was never handed back"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(second.output, "You said: second");
    let stored = store.load("acme", "s").await.unwrap().unwrap();
    let texts: Vec<String> = stored.messages.iter().map(Message::text_content).collect();
    assert_eq!(texts, ["second", "You said: second"]);
}

/// Two instances (separate gates) share a store and serialize turns through leases.
pub async fn two_instances_with_leases(store: impl Backend) {
    let store = Arc::new(store);
    let build = |owner: &str| {
        SessionAgent::builder(echo_agent(), store.clone() as Arc<dyn SessionStore>)
            .policy(TurnPolicy::Enqueue)
            .history(HistoryPolicy::Unbounded)
            .lease(
                store.clone() as Arc<dyn LeaseStore>,
                owner,
                Duration::from_secs(5),
            )
            .build()
    };
    let instances = [build("node-a"), build("node-b")];
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let sessions = instances[i % 2].clone();
            tokio::spawn(async move { sessions.execute(turn("shared", format!("msg-{i}"))).await })
        })
        .collect();
    let mut answered = HashSet::new();
    for (i, task) in tasks.into_iter().enumerate() {
        task.await.unwrap().expect("answered across instances");
        answered.insert(format!("msg-{i}"));
    }
    let stored = store.load("acme", "shared").await.unwrap().unwrap();
    assert_eq!(stored.version, 32);
    assert_paired(&stored.messages, &answered);
}
