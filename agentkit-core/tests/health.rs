//! `HealthWatch`: error bursts, latency spikes and token surges against the service's own
//! baseline, on a paused clock; and runs recorded through a watched agent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentkit_core::executor::{AlertRule, AlertRules, HealthWatch};
use agentkit_core::model::ScriptedModel;
use agentkit_core::{Agent, Executor, Invocation};
use futures::StreamExt;
use tokio::time::advance;

type Seen = Arc<Mutex<Vec<(AlertRule, bool)>>>;

fn watch(rules: AlertRules) -> (HealthWatch, Seen) {
    let seen: Seen = Arc::default();
    let told = seen.clone();
    let health = HealthWatch::new("assistant", rules)
        .on_change(move |alert| told.lock().unwrap().push((alert.rule, alert.firing)));
    (health, seen)
}

/// `n` runs one `every` apart, each taking `latency` and spending `tokens`; `failing(i)` says
/// which fail.
async fn runs(
    health: &HealthWatch,
    n: usize,
    every: Duration,
    latency: Duration,
    tokens: u64,
    failing: impl Fn(usize) -> bool,
) {
    for i in 0..n {
        health.record(latency, failing(i), tokens);
        advance(every).await;
    }
}

#[tokio::test(start_paused = true)]
async fn bursts_spikes_and_surges_fire_against_the_baseline_and_resolve() {
    let (health, seen) = watch(AlertRules {
        min_latency: Duration::from_millis(200),
        min_tokens_per_run: 100.0,
        ..AlertRules::default()
    });
    let (ms, s) = (Duration::from_millis, Duration::from_secs);
    let last = || *seen.lock().unwrap().last().unwrap();

    // Half an hour of normal traffic: nothing fires.
    runs(&health, 600, s(3), ms(100), 150, |_| false).await;
    assert!(seen.lock().unwrap().is_empty());
    assert!(health.alerts().is_empty());

    // Half of 40 runs fail: an error burst.
    runs(&health, 40, s(1), ms(100), 150, |i| i % 2 == 0).await;
    assert_eq!(*seen.lock().unwrap(), [(AlertRule::ErrorBurst, true)]);
    let firing = health.alerts();
    assert_eq!(firing.len(), 1);
    let detail = &firing[0].detail;
    assert!(
        detail.starts_with("error rate 4") && detail.ends_with("(limit 20%)"),
        "{detail}"
    );
    assert_eq!(firing[0].watch, "assistant");

    // Three good minutes: the burst leaves the window, then stays out of it for a minute.
    runs(&health, 60, s(1), ms(100), 150, |_| false).await;
    assert_eq!(
        last(),
        (AlertRule::ErrorBurst, true),
        "not resolved at once"
    );
    runs(&health, 120, s(1), ms(100), 150, |_| false).await;
    assert_eq!(last(), (AlertRule::ErrorBurst, false));
    assert!(health.alerts().is_empty());

    // Six times slower for a minute: a latency spike (a quarter slower would not be).
    runs(&health, 60, s(1), ms(125), 150, |_| false).await;
    assert_eq!(last(), (AlertRule::ErrorBurst, false), "not a spike");
    runs(&health, 60, s(1), ms(600), 150, |_| false).await;
    assert_eq!(last(), (AlertRule::LatencySpike, true));
    let detail = &health.alerts()[0].detail;
    assert!(detail.contains("p95 latency"), "{detail}");

    runs(&health, 180, s(1), ms(100), 150, |_| false).await;
    assert_eq!(last(), (AlertRule::LatencySpike, false));

    // Seven times the tokens: a surge.
    runs(&health, 60, s(1), ms(100), 1_000, |_| false).await;
    assert_eq!(last(), (AlertRule::TokenSurge, true));
    assert_eq!(health.alerts()[0].rule, AlertRule::TokenSurge);
    assert_eq!(seen.lock().unwrap().len(), 5, "{:?}", seen.lock().unwrap());
}

#[tokio::test(start_paused = true)]
async fn too_few_runs_say_nothing() {
    let (health, seen) = watch(AlertRules::default());
    // Every run fails, but there are only ten a minute.
    runs(
        &health,
        30,
        Duration::from_secs(6),
        Duration::from_millis(100),
        150,
        |_| true,
    )
    .await;
    assert!(seen.lock().unwrap().is_empty());
    assert!(health.alerts().is_empty());
}

#[tokio::test]
async fn a_watched_agent_counts_its_own_failures_not_its_callers() {
    let (health, seen) = watch(AlertRules {
        min_runs: 3,
        max_error_rate: 0.5,
        ..AlertRules::default()
    });
    // A model with nothing to say fails every run (internal): the agent's doing.
    let broken = health.watch(
        Agent::builder()
            .model(ScriptedModel::new([]))
            .build()
            .unwrap(),
    );
    // Empty input is the caller's doing: it does not count.
    for _ in 0..5 {
        let error = broken.execute(Invocation::text("")).await.unwrap_err();
        assert_eq!(error.code(), "invalid_input");
    }
    assert!(seen.lock().unwrap().is_empty());
    for _ in 0..2 {
        let error = broken.execute(Invocation::text("hello")).await.unwrap_err();
        assert_eq!(error.code(), "internal");
    }
    // Through a stream too: the error ends it.
    let mut events = broken.stream(Invocation::text("hello")).await.unwrap();
    while let Some(event) = events.next().await {
        if event.is_err() {
            break;
        }
    }
    drop(events);
    // 3 of 8 runs failed for the agent's own reasons: under half.
    assert!(seen.lock().unwrap().is_empty());
    for _ in 0..3 {
        broken.execute(Invocation::text("hello")).await.unwrap_err();
    }
    // Judged at most once a second: the alert list judges afresh.
    let firing = health.alerts();
    assert_eq!(firing.len(), 1, "{firing:?}");
    assert_eq!(firing[0].rule, AlertRule::ErrorBurst);
    assert_eq!(*seen.lock().unwrap(), [(AlertRule::ErrorBurst, true)]);
}
