//! A `Pool` over two `service` processes that keep sessions in Redis with leases: one is
//! killed with SIGKILL in the middle of a keyed turn. Its lease outlives it; the pool sends the
//! turn on to the other instance, which runs it once the lease has expired, on the stored
//! history, and the caller sees no error. Every acknowledged message is in the history once,
//! and the killed attempt left nothing behind. The same holds for a streamed turn whose
//! instance dies after its stream opened and before its first event.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use agentkit::executor::Pool;
use agentkit::store::redis::RedisSessionStore;
use agentkit::store::{LeaseStore, SessionStore};
use agentkit::transport::RemoteExecutor;
use agentkit::{Context, Executor, IdempotencyKey, Invocation, Role};
use support::process::Service;

/// The lease the instances take on each session.
const LEASE: Duration = Duration::from_millis(2_000);

fn member(service: &Service) -> RemoteExecutor {
    RemoteExecutor::builder(&service.base, "assistant")
        .sessions()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

fn turn(session: &str, text: &str) -> Invocation {
    Invocation::text(text).with_context(Context::new().with_session_id(session))
}

/// The store's id of `session` of the agent: the service keeps each agent's sessions apart.
fn stored_id(session: &str) -> String {
    format!("assistant/{session}")
}

/// Two `service` instances `a` and `b` on Redis, sharing sessions under a lease of [`LEASE`],
/// their scripted model taking `latency_ms` a call, and a pool over them that marks a member
/// down at its first failure.
fn two_instances(
    url: &str,
    name: &str,
    latency_ms: u64,
) -> (Service, Service, Pool<RemoteExecutor>) {
    let latency = latency_ms.to_string();
    let lease = LEASE.as_millis().to_string();
    let env = [
        ("REDIS_URL", url),
        ("AGENTKIT_SESSION_LEASE_MS", lease.as_str()),
        ("AGENTKIT_SCRIPTED_LATENCY_MS", latency.as_str()),
        ("RUST_LOG", "warn"),
    ];
    let start = |instance: &str| {
        let id = format!("{name}-{instance}");
        Service::start(&[&env[..], &[("AGENTKIT_INSTANCE_ID", id.as_str())]].concat())
    };
    let (a, b) = (start("a"), start("b"));
    let pool = Pool::builder()
        .member("a", member(&a))
        .member("b", member(&b))
        .mark_down_after(1)
        .cooldown(Duration::from_secs(60))
        .build()
        .unwrap();
    (a, b, pool)
}

/// The user messages of a stored session, in order.
async fn said(store: &RedisSessionStore, session: &str) -> Vec<String> {
    let stored = (store.load("default", &stored_id(session)).await)
        .unwrap()
        .unwrap();
    stored
        .messages
        .iter()
        .filter(|m| m.role == Role::User)
        .map(|m| m.text_content())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_sessions_go_on_elsewhere_after_its_lease() {
    let Some(url) = agentkit_testkit::services::redis_url() else {
        return;
    };
    // Each model call takes 150 ms, so a turn can be caught midway.
    let (mut a, _b, pool) = two_instances(&url, "pool-test", 150);
    let store = RedisSessionStore::connect(&url).unwrap();

    // Two turns for each of eight sessions, the sessions side by side.
    let run = agentkit_testkit::unique("pool");
    let sessions: Vec<String> = (0..8).map(|i| format!("{run}-{i}")).collect();
    let first = ["What is 1 + 1?", "hello"];
    futures::future::join_all(sessions.iter().map(|session| {
        let pool = pool.clone();
        async move {
            for text in first {
                pool.execute(turn(session, text)).await.unwrap();
            }
        }
    }))
    .await;
    let on_a: Vec<&String> = (sessions.iter())
        .filter(|s| pool.owner(s) == Some("a"))
        .collect();
    assert!(
        !on_a.is_empty() && on_a.len() < sessions.len(),
        "sessions on both"
    );

    // A turn of one of `a`'s sessions starts, keyed (the caller's idempotency key); once `a`
    // holds the session's lease (the key `{prefix}:l:{tag}` the store documents), `a` is
    // killed midway through the turn.
    let victim = on_a[0].clone();
    let started = Instant::now();
    let in_flight = tokio::spawn({
        let (pool, victim) = (pool.clone(), victim.clone());
        async move {
            let keyed = turn(&victim, "What is 3 + 4?");
            let cx = (keyed.context.clone())
                .with_extension(IdempotencyKey::new("pool-test-3-plus-4").unwrap());
            pool.execute(keyed.with_context(cx)).await
        }
    });
    until_leased(&url, &victim).await;
    a.kill();

    // The dead instance's lease outlives it: nobody else can take the session yet.
    let probe = store
        .acquire(
            "default",
            &stored_id(&victim),
            "pool-test-probe",
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    assert!(probe.is_none(), "the lease died with its owner");

    // The pool sends the keyed turn on to `b`, which waits for the lease to expire, then runs
    // it on the stored history (two turns: the killed one saved nothing). The caller sees
    // no error.
    let reply = in_flight.await.unwrap().unwrap();
    assert!(
        started.elapsed() >= LEASE,
        "the turn ran before the dead owner's lease expired ({:?})",
        started.elapsed()
    );
    assert_eq!(reply.output, "3 + 4 = 7");
    assert_eq!(reply.session.unwrap().version, 3);
    assert_eq!(pool.up(), ["b"]);

    // Every session goes on, on `b` for those of `a` (already known to be down), from its
    // whole history.
    let mut versions = BTreeMap::new();
    for session in &sessions {
        let reply = pool.execute(turn(session, "What is 5 + 6?")).await.unwrap();
        versions.insert(session.as_str(), reply.session.unwrap().version);
    }
    for session in &sessions {
        let expected: Vec<&str> = if *session == victim {
            vec![first[0], first[1], "What is 3 + 4?", "What is 5 + 6?"]
        } else {
            vec![first[0], first[1], "What is 5 + 6?"]
        };
        assert_eq!(said(&store, session).await, expected, "session {session}");
        assert_eq!(versions[session.as_str()], expected.len() as u64);
    }

    for session in &sessions {
        store.delete("default", &stored_id(session)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_through_a_pool_sees_no_errors_when_an_instance_is_killed() {
    let Some(url) = agentkit_testkit::services::redis_url() else {
        return;
    };
    // Sessions of their own for this run: the load generator names them `load-N` in its
    // tenant.
    let tenant = agentkit_testkit::unique("loadpool");
    let keys = format!("{tenant}:dummy-load-key");
    let env = [
        ("REDIS_URL", url.as_str()),
        ("AGENTKIT_SESSION_LEASE_MS", "1000"),
        ("AGENTKIT_SCRIPTED_LATENCY_MS", "20"),
        ("AGENTKIT_API_KEYS", keys.as_str()),
        ("RUST_LOG", "warn"),
    ];
    let mut a = Service::start(&env);
    let b = Service::start(&env);
    let mut load = std::process::Command::new(support::process::example("loadgen"))
        .args([
            "--url",
            &format!("{},{}", a.base, b.base),
            "--sessions",
            "8",
            "--rate",
            "40",
            "--duration",
            "4",
            "--timeout",
            "30",
            "--progress",
            "0",
            "--max-error-rate",
            "0",
        ])
        .env("AGENTKIT_LOAD_TOKEN", "dummy-load-key")
        .env_remove("AGENTKIT_LOAD_TOKEN_FILE")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the load generator starts");

    // A third of the way in, `a` dies with turns in flight.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    a.kill();

    let stdout = load.stdout.take().unwrap();
    let finished = tokio::task::spawn_blocking(move || {
        let report: serde_json::Value = serde_json::from_reader(stdout).expect("a JSON report");
        (load.wait().expect("the load generator ran"), report)
    });
    let (status, report) = tokio::time::timeout(Duration::from_secs(90), finished)
        .await
        .expect("the load generator finished")
        .unwrap();
    assert!(status.success(), "{status}: {report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert!(report["succeeded"].as_u64().unwrap() > 100, "{report}");
    drop(b);

    let store = RedisSessionStore::connect(&url).unwrap();
    for i in 0..8 {
        store
            .delete(&tenant, &stored_id(&format!("load-{i}")))
            .await
            .unwrap();
    }
}

/// Polls until an instance holds the lease of `session` (the key `{prefix}:l:{tag}` the
/// store documents).
async fn until_leased(url: &str, session: &str) {
    let lease_key = format!("agentkit:l:{{7:default:{}}}", stored_id(session));
    let redis = redis::Client::open(url).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let started = Instant::now();
    loop {
        let held: bool = redis::cmd("EXISTS")
            .arg(&lease_key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if held {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the session was never leased"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_keyed_turn_cut_off_before_its_first_event_goes_on_elsewhere() {
    use futures::StreamExt;

    let Some(url) = agentkit_testkit::services::redis_url() else {
        return;
    };
    // The first event comes after a model call of 300 ms: time to kill its instance.
    let (mut a, b, pool) = two_instances(&url, "stream-test", 300);
    let store = RedisSessionStore::connect(&url).unwrap();
    let run = agentkit_testkit::unique("pool-stream");
    let session = (0..64)
        .map(|i| format!("{run}-{i}"))
        .find(|s| pool.owner(s) == Some("a"))
        .expect("a session of `a`");
    pool.execute(turn(&session, "hello")).await.unwrap();

    // The stream opens on `a` (the response head came back), and `a` dies holding the
    // session's lease, before the model's first answer.
    let started = Instant::now();
    let keyed = turn(&session, "What is 3 + 4?");
    let cx = (keyed.context.clone())
        .with_extension(IdempotencyKey::new("pool-stream-3-plus-4").unwrap());
    let events = pool.stream(keyed.with_context(cx)).await.unwrap();
    until_leased(&url, &session).await;
    a.kill();

    // The pool opens it again on `b`, which runs it once the lease has expired; the caller
    // sees the whole answer and no error.
    let events: Vec<_> = tokio::time::timeout(Duration::from_secs(60), events.collect())
        .await
        .expect("the stream ended");
    assert!(events.iter().all(Result::is_ok), "{events:?}");
    let Some(Ok(agentkit::AgentEvent::Done(reply))) = events.last() else {
        panic!("no answer: {events:?}");
    };
    assert_eq!(reply.output, "3 + 4 = 7");
    assert!(
        started.elapsed() >= LEASE,
        "the turn ran before the dead owner's lease expired ({:?})",
        started.elapsed()
    );
    assert_eq!(pool.up(), ["b"]);
    assert_eq!(said(&store, &session).await, ["hello", "What is 3 + 4?"]);
    drop(b);
    store.delete("default", &stored_id(&session)).await.unwrap();
}
