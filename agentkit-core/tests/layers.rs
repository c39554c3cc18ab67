//! Executor layers and the tower adapters.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agentkit_core::executor::{
    ConcurrencyLimitLayer, ExecutorService, RetryLayer, ServiceExecutor, TimeoutLayer,
};
use agentkit_core::{Backoff, BoxExecutor, Error, ErrorKind, Executor, Invocation, Reply, Result};

/// Fails `failures` times with `kind`, then answers; sleeps `delay` each time; tracks the peak
/// number of concurrent invocations.
#[derive(Clone, Default)]
struct Probe {
    failures: usize,
    kind: Option<ErrorKind>,
    delay: Duration,
    calls: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl Executor for Probe {
    async fn execute(&self, _: Invocation) -> Result<Reply> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        match self.kind {
            Some(kind) if n < self.failures => Err(Error::new(kind, "probe failure")),
            _ => Ok(Reply {
                output: format!("ok after {n}"),
                ..Reply::default()
            }),
        }
    }
}

#[tokio::test]
async fn timeout_layer_answers_timeout() {
    let slow = Probe {
        delay: Duration::from_secs(10),
        ..Probe::default()
    };
    let wrapped = tower::ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_millis(50)))
        .service(slow);
    let error = wrapped.execute(Invocation::text("x")).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Timeout);
}

#[tokio::test]
async fn retry_layer_retries_only_retryable_errors() {
    let flaky = Probe {
        failures: 2,
        kind: Some(ErrorKind::Unavailable),
        ..Probe::default()
    };
    let calls = flaky.calls.clone();
    let retry = RetryLayer::new(
        Backoff::new()
            .max_attempts(3)
            .base(Duration::from_millis(1)),
    );
    let wrapped = tower::ServiceBuilder::new()
        .layer(retry.clone())
        .service(flaky);
    let reply = wrapped.execute(Invocation::text("x")).await.unwrap();
    assert_eq!(reply.output, "ok after 2");
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    let bad = Probe {
        failures: 5,
        kind: Some(ErrorKind::InvalidInput),
        ..Probe::default()
    };
    let calls = bad.calls.clone();
    let wrapped = tower::ServiceBuilder::new().layer(retry).service(bad);
    assert_eq!(
        wrapped
            .execute(Invocation::text("x"))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn concurrency_limit_bounds_in_flight_invocations() {
    let probe = Probe {
        delay: Duration::from_millis(30),
        ..Probe::default()
    };
    let peak = probe.peak.clone();
    let limited = Arc::new(
        tower::ServiceBuilder::new()
            .layer(ConcurrencyLimitLayer::new(3))
            .service(probe),
    );
    let runs: Vec<_> = (0..12)
        .map(|_| {
            let limited = limited.clone();
            tokio::spawn(async move { limited.execute(Invocation::text("x")).await })
        })
        .collect();
    for run in runs {
        run.await.unwrap().unwrap();
    }
    assert_eq!(peak.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn tower_middleware_applies_through_the_adapters() {
    // An executor becomes a tower service, gets tower's own middleware, and becomes an
    // executor again, erased behind BoxExecutor.
    let service = ExecutorService::new(Probe::default());
    let buffered = tower::ServiceBuilder::new().service(service);
    let executor = BoxExecutor::new(ServiceExecutor::new(buffered));
    let reply = executor.execute(Invocation::text("x")).await.unwrap();
    assert_eq!(reply.output, "ok after 0");
    let replay: Vec<_> = {
        use futures::StreamExt;
        executor
            .stream(Invocation::text("x"))
            .await
            .unwrap()
            .collect()
            .await
    };
    assert_eq!(replay.last().unwrap().as_ref().unwrap().name(), "done");
}

/// A guarded agent: input over the limit never reaches the model; credentials the model
/// repeats come back redacted, whole or streamed in pieces.
#[tokio::test]
async fn guard_limits_input_and_redacts_replies_and_streams() {
    use agentkit_core::executor::{AgentEvent, GuardLayer, Redactor};
    use agentkit_core::model::ScriptedModel;
    use futures::StreamExt;
    use tower::Layer;

    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let model = ScriptedModel::builder()
        .rule(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            None
        })
        .demo_rules()
        .build();
    let agent = agentkit_core::Agent::builder()
        .model(model)
        .build()
        .unwrap();
    let guarded = GuardLayer::new()
        .max_input_bytes(200)
        .redact(Redactor::personal_data())
        .layer(agent);

    let secret = "sk-live-abcdefghijklmnopqrstuv";
    let reply = guarded
        .execute(Invocation::text(format!(
            "my key is {secret}, mail me at bob@example.com"
        )))
        .await
        .unwrap();
    assert_eq!(
        reply.output,
        "You said: my key is [redacted:api_key], mail me at [redacted:email]"
    );
    let all = serde_json::to_string(&reply.messages).unwrap();
    assert!(!all.contains(secret) && !all.contains("bob@"), "{all}");

    let too_big = guarded
        .execute(Invocation::text("x".repeat(201)))
        .await
        .unwrap_err();
    assert_eq!(too_big.kind(), ErrorKind::InvalidInput);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the model never saw it");

    let events: Vec<AgentEvent> = guarded
        .stream(Invocation::text(format!("again: {secret}")))
        .await
        .unwrap()
        .map(|e| e.unwrap())
        .collect()
        .await;
    let streamed: String = events
        .iter()
        .filter_map(|e| match e {
            AgentEvent::TextDelta { text } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(streamed, "You said: again: [redacted:api_key]");
    match events.last() {
        Some(AgentEvent::Done(reply)) => assert_eq!(reply.output, streamed),
        other => panic!("the stream ends with Done, not {other:?}"),
    }
}

/// A canary takes a sticky share of sessions, leaves the caller's own errors out of its
/// judgement, and rolls itself back when its own failures break the guard.
#[tokio::test]
async fn canary_is_sticky_and_rolls_back_when_the_candidate_fails() {
    use agentkit_core::Context;
    use agentkit_core::executor::{Canary, CanaryGuard, CanaryStatus};

    let stable = Probe::default();
    let candidate = Probe {
        failures: usize::MAX,
        kind: Some(ErrorKind::Internal),
        ..Probe::default()
    };
    let in_session =
        |id: String| Invocation::text("hi").with_context(Context::new().with_session_id(id));

    // Share and stickiness, with a guard that never trips.
    let lenient = CanaryGuard {
        max_error_rate: 1.0,
        ..CanaryGuard::default()
    };
    let canary = Canary::new(stable.clone(), candidate.clone(), 10.0).with_guard(lenient);
    let chosen: Vec<bool> = (0..2000)
        .map(|i| canary.routes_to_candidate(&Context::new().with_session_id(format!("s-{i}"))))
        .collect();
    let share = chosen.iter().filter(|c| **c).count();
    assert!(
        (140..=260).contains(&share),
        "10% of 2000 sessions, got {share}"
    );
    for (i, first) in chosen.iter().enumerate().take(200) {
        let again = canary.routes_to_candidate(&Context::new().with_session_id(format!("s-{i}")));
        assert_eq!(*first, again, "session s-{i} switched sides");
    }
    assert!(
        !Canary::new(stable.clone(), candidate.clone(), 0.0)
            .routes_to_candidate(&Context::new().with_session_id("s-1"))
    );

    // Everyone on the candidate; it fails every request; the guard judges 10 at a time.
    let canary = Canary::new(stable.clone(), candidate.clone(), 100.0).with_guard(CanaryGuard {
        window: 10,
        max_error_rate: 0.5,
        ..CanaryGuard::default()
    });
    for i in 0..9 {
        let error = canary
            .execute(in_session(format!("a-{i}")))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Internal);
    }
    assert_eq!(
        canary.status(),
        CanaryStatus::Active,
        "not judged before the window fills"
    );
    canary.execute(in_session("a-9".into())).await.unwrap_err();
    let CanaryStatus::RolledBack { reason } = canary.status() else {
        panic!("ten failures in ten should roll it back");
    };
    assert!(reason.contains("error rate 100%"), "{reason}");
    let before = stable.calls.load(Ordering::SeqCst);
    for i in 0..5 {
        canary.execute(in_session(format!("b-{i}"))).await.unwrap();
    }
    assert_eq!(
        stable.calls.load(Ordering::SeqCst),
        before + 5,
        "all on stable now"
    );

    // The caller's own errors (bad input) are not the candidate's fault.
    let picky = Probe {
        failures: usize::MAX,
        kind: Some(ErrorKind::InvalidInput),
        ..Probe::default()
    };
    let canary = Canary::new(stable.clone(), picky, 100.0).with_guard(CanaryGuard {
        window: 5,
        max_error_rate: 0.0,
        ..CanaryGuard::default()
    });
    for i in 0..20 {
        canary
            .execute(in_session(format!("c-{i}")))
            .await
            .unwrap_err();
    }
    assert_eq!(canary.status(), CanaryStatus::Active);
}

/// A flag switch follows the flag table as it is changed while running.
#[tokio::test]
async fn flag_switch_follows_the_table_at_run_time() {
    use agentkit_core::Context;
    use agentkit_core::executor::{FlagSwitch, Flags};

    let (on, off) = (Probe::default(), Probe::default());
    let flags =
        Flags::from_json(r#"{"new-agent": {"rules": [{"tenants": ["acme"], "on": true}]}}"#)
            .unwrap();
    let switch = FlagSwitch::new(flags.clone(), "new-agent", on.clone(), off.clone());
    let from =
        |tenant: &str| Invocation::text("hi").with_context(Context::new().with_tenant(tenant));
    switch.execute(from("acme")).await.unwrap();
    switch.execute(from("beta")).await.unwrap();
    assert_eq!(
        (
            on.calls.load(Ordering::SeqCst),
            off.calls.load(Ordering::SeqCst)
        ),
        (1, 1)
    );

    flags
        .replace_json(r#"{"new-agent": {"default": true}}"#)
        .unwrap();
    switch.execute(from("beta")).await.unwrap();
    assert_eq!(
        on.calls.load(Ordering::SeqCst),
        2,
        "flipped for everyone, no restart"
    );
}

/// A canary's share ramps while running without moving callers the wrong way, and a rolled-back
/// canary can be put back in service.
#[tokio::test]
async fn canary_ramps_and_resets() {
    use agentkit_core::Context;
    use agentkit_core::executor::{Canary, CanaryGuard, CanaryStatus};

    let failing = Probe {
        failures: 3,
        kind: Some(ErrorKind::Internal),
        ..Probe::default()
    };
    let canary = Canary::new(Probe::default(), failing, 10.0).with_guard(CanaryGuard {
        window: 3,
        max_error_rate: 0.5,
        ..CanaryGuard::default()
    });
    let sessions: Vec<Context> = (0..1000)
        .map(|i| Context::new().with_session_id(format!("r-{i}")))
        .collect();
    let on = |canary: &Canary<Probe, Probe>| -> Vec<bool> {
        sessions
            .iter()
            .map(|cx| canary.routes_to_candidate(cx))
            .collect()
    };
    let at_ten = on(&canary);
    canary.set_percent(50.0).unwrap();
    assert_eq!(canary.percent(), 50.0);
    let at_fifty = on(&canary);
    let share = at_fifty.iter().filter(|c| **c).count();
    assert!((420..=580).contains(&share), "50% of 1000, got {share}");
    for (i, (ten, fifty)) in at_ten.iter().zip(&at_fifty).enumerate() {
        assert!(
            !ten || *fifty,
            "session r-{i} left the candidate as the share rose"
        );
    }
    for bad in [-1.0, 100.5, f64::NAN] {
        assert_eq!(
            canary.set_percent(bad).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }
    assert_eq!(canary.percent(), 50.0, "a refused share changes nothing");

    // All traffic on it; it fails three times in a row and is rolled back; reset re-arms it,
    // and the candidate, healthy now, serves again.
    canary.set_percent(100.0).unwrap();
    for i in 0..3 {
        let cx = Context::new().with_session_id(format!("f-{i}"));
        canary
            .execute(Invocation::text("hi").with_context(cx))
            .await
            .unwrap_err();
    }
    assert!(matches!(canary.status(), CanaryStatus::RolledBack { .. }));
    assert!(!canary.routes_to_candidate(&sessions[0]));
    canary.reset();
    assert_eq!(canary.status(), CanaryStatus::Active);
    assert!(canary.routes_to_candidate(&sessions[0]));
    let cx = Context::new().with_session_id("after-reset");
    canary
        .execute(Invocation::text("hi").with_context(cx))
        .await
        .unwrap();

    // Clones share the share; one configured after cloning goes its own way (no panic).
    canary.clone().set_percent(20.0).unwrap();
    assert_eq!(canary.percent(), 20.0);
    let own = canary.clone().with_guard(CanaryGuard::default());
    own.set_percent(70.0).unwrap();
    assert_eq!((canary.percent(), own.percent()), (20.0, 70.0));
}

/// Flags follow a JSON file: a new version applies, a broken one leaves the table in use, and
/// a broken file at start is an error.
#[tokio::test]
async fn flags_follow_their_file() {
    use std::time::Duration;

    use agentkit_core::Context;
    use agentkit_core::executor::Flags;

    let dir = std::env::temp_dir().join(format!("agentkit-flags-{}", agentkit_core::generate_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("flags.json");
    std::fs::write(&path, r#"{"beta": {"default": false}}"#).unwrap();
    let flags = Flags::default();
    let watcher = flags
        .watch_file(&path, Duration::from_millis(20))
        .await
        .unwrap();
    let cx = Context::new();
    assert!(!flags.is_on("beta", &cx));

    /// Waits (at most 5 s) for the flag to read `want`.
    async fn until(flags: &Flags, cx: &Context, want: bool) -> bool {
        for _ in 0..250 {
            if flags.is_on("beta", cx) == want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
    std::fs::write(&path, r#"{"beta": {"default": true}}"#).unwrap();
    assert!(until(&flags, &cx, true).await, "the new version applies");

    std::fs::write(&path, r#"{"beta": {"default": false, "percent": 400}}"#).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        flags.is_on("beta", &cx),
        "a broken version leaves the table in use"
    );
    std::fs::write(&path, r#"{"beta": {"default": false}}"#).unwrap();
    assert!(
        until(&flags, &cx, false).await,
        "a fixed version applies again"
    );

    // The watcher ends once the flags are gone.
    drop(flags);
    tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("the watcher ends with its flags")
        .unwrap();

    std::fs::write(&path, "not json").unwrap();
    let error = Flags::default()
        .watch_file(&path, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    assert!(error.message().contains("flags.json"), "{error}");
    let error = Flags::default()
        .watch_file(dir.join("absent.json"), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    std::fs::remove_dir_all(&dir).unwrap();
}
