//! A `Pool` of two service instances on loopback sharing a session store: each session's
//! turns land on one instance; when that instance dies, its sessions go on on the other with
//! their whole history.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use agentkit_core::executor::Pool;
use agentkit_core::{Context, ErrorKind, Executor, IdempotencyKey, Invocation};
use agentkit_store::{MemorySessionStore, SessionStore};
use agentkit_transport::{Api, Authenticator, RemoteExecutor};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::IntoResponse;
use support::demo_agent;

/// The session ids an instance served.
type Served = Arc<Mutex<Vec<String>>>;

/// A service instance on a runtime and thread of its own, so that killing it closes its
/// listener and every connection it holds, as a crashed process would.
struct Instance {
    base: String,
    served: Served,
    /// While set, the instance runs each request and then answers 502, as a proxy in front
    /// of it might when the connection drops after the work was done.
    lose_answers: Arc<AtomicBool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Instance {
    fn start(store: Arc<dyn SessionStore>) -> Self {
        let served = Served::default();
        let lose_answers = Arc::new(AtomicBool::new(false));
        let losing = lose_answers.clone();
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let seen = served.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let api = Api::builder()
                    .agent("assistant", demo_agent())
                    .session_store(store)
                    .auth(Authenticator::none().with_api_key("acme", "dummy-pool-key"))
                    .build()
                    .unwrap();
                let router = api.router().layer(axum::middleware::from_fn(
                    move |request: Request, next: Next| {
                        // `/v1/agents/assistant/sessions/{id}/messages`
                        let path: Vec<&str> = request.uri().path().split('/').collect();
                        if let Some(id) = path.get(5) {
                            seen.lock().unwrap().push((*id).to_owned());
                        }
                        let losing = losing.clone();
                        async move {
                            let response = next.run(request).await;
                            if losing.load(Ordering::SeqCst) {
                                return axum::http::StatusCode::BAD_GATEWAY.into_response();
                            }
                            response
                        }
                    },
                ));
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                address_tx.send(listener.local_addr().unwrap()).unwrap();
                tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
                let _ = stopped.await;
            });
            // Dropping the runtime drops the server and every connection task with it.
            drop(runtime);
        });
        let address = address_rx.recv().unwrap();
        Self {
            base: format!("http://{address}"),
            served,
            lose_answers,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }

    fn sessions(&self) -> BTreeSet<String> {
        self.served.lock().unwrap().iter().cloned().collect()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

fn client(instance: &Instance) -> RemoteExecutor {
    RemoteExecutor::builder(&instance.base, "assistant")
        .bearer("dummy-pool-key")
        .sessions()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap()
}

fn turn(session: &str, text: &str) -> Invocation {
    Invocation::text(text).with_context(Context::new().with_session_id(session))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instances_sessions_go_on_elsewhere_with_their_history() {
    let store: Arc<dyn SessionStore> = Arc::new(MemorySessionStore::new());
    let mut instances = [Instance::start(store.clone()), Instance::start(store)];
    let pool = Pool::builder()
        .member("a", client(&instances[0]))
        .member("b", client(&instances[1]))
        .mark_down_after(1)
        .cooldown(std::time::Duration::from_secs(60))
        .build()
        .unwrap();

    let sessions: Vec<String> = (0..20).map(|i| format!("s-{i}")).collect();
    for text in ["What is 1 + 1?", "hello"] {
        for session in &sessions {
            pool.execute(turn(session, text)).await.unwrap();
        }
    }
    let (on_a, on_b) = (instances[0].sessions(), instances[1].sessions());
    assert!(
        on_a.is_disjoint(&on_b),
        "no session on both: {on_a:?} {on_b:?}"
    );
    assert_eq!(on_a.len() + on_b.len(), 20);
    assert!(!on_a.is_empty() && !on_b.is_empty(), "spread over both");

    // `a` dies. A turn of one of its sessions fails (whether it ran is unknown to the
    // caller, so the pool does not resend it); `a` is marked down.
    instances[0].kill();
    let orphans: Vec<&String> = sessions.iter().filter(|s| on_a.contains(*s)).collect();
    let error = pool
        .execute(turn(orphans[0], "What is 2 + 2?"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert_eq!(pool.up(), ["b"]);

    // Tried again, and every other turn from now on, on `b`: the sessions go on from their
    // stored history (two turns each), nothing lost.
    let mut versions = BTreeMap::new();
    for session in &sessions {
        let reply = pool.execute(turn(session, "What is 2 + 2?")).await.unwrap();
        versions.insert(session.clone(), reply.session.unwrap().version);
        assert_eq!(reply.output, "2 + 2 = 4");
    }
    assert!(versions.values().all(|&v| v == 3), "{versions:?}");
    let now_on_b = instances[1].sessions();
    assert!(
        on_a.iter().all(|s| now_on_b.contains(s)),
        "a's sessions moved to b"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_turn_whose_answer_was_lost_is_not_run_twice() {
    let store: Arc<dyn SessionStore> = Arc::new(MemorySessionStore::new());
    let instances = [
        Instance::start(store.clone()),
        Instance::start(store.clone()),
    ];
    let pool = Pool::builder()
        .member("a", client(&instances[0]))
        .member("b", client(&instances[1]))
        .build()
        .unwrap();
    let session = (0..100)
        .map(|i| format!("lost-{i}"))
        .find(|s| pool.owner(s) == Some("a"))
        .unwrap();
    pool.execute(turn(&session, "hello")).await.unwrap();

    // `a` runs the turn and saves it, but its answer never reaches the caller. The pool sends
    // the keyed turn on to `b`, which finds it in the session and answers with it.
    instances[0].lose_answers.store(true, Ordering::SeqCst);
    let keyed = Invocation::text("What is 20 + 22?").with_context(
        Context::new()
            .with_session_id(session.as_str())
            .with_extension(IdempotencyKey::new("order-17-confirm").unwrap()),
    );
    let reply = pool.execute(keyed.clone()).await.unwrap();
    assert_eq!(reply.output, "20 + 22 = 42");
    assert_eq!(
        reply.session.as_ref().unwrap().version,
        2,
        "saved once, by `a`"
    );
    assert_eq!(instances[1].sessions().len(), 1, "`b` answered");

    // Sent again by the caller later, to whichever instance: the same turn, not a new one.
    instances[0].lose_answers.store(false, Ordering::SeqCst);
    let again = pool.execute(keyed).await.unwrap();
    assert_eq!(again.output, reply.output);
    assert_eq!(again.session.unwrap().version, 2);
    let stored = store
        .load("acme", &format!("assistant/{session}"))
        .await
        .unwrap()
        .unwrap();
    let asked: Vec<String> = (stored.messages.iter())
        .filter(|m| m.role == agentkit_core::Role::User)
        .map(|m| m.text_content())
        .collect();
    assert_eq!(asked, ["hello", "What is 20 + 22?"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_of_readyz_find_a_dead_instance_before_any_turn_does() {
    let store: Arc<dyn SessionStore> = Arc::new(MemorySessionStore::new());
    let mut instances = [Instance::start(store.clone()), Instance::start(store)];
    let pool = Pool::builder()
        .member("a", client(&instances[0]))
        .member("b", client(&instances[1]))
        .probe(
            std::time::Duration::from_millis(50),
            |remote: &RemoteExecutor| Box::pin(remote.ready()),
        )
        .build()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    assert_eq!(pool.up(), ["a", "b"], "both answer /readyz");

    instances[0].kill();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pool.up() != ["b"] {
        assert!(std::time::Instant::now() < deadline, "{:?}", pool.up());
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // Every session's turn now lands on `b`, none failing first.
    for i in 0..10 {
        let reply = pool.execute(turn(&format!("probed-{i}"), "hello")).await;
        assert_eq!(reply.unwrap().output, "You said: hello");
    }
}
