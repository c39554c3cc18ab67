//! The load generator against executors whose timing is known: Tokio's clock is paused, so
//! sleeps take exactly their virtual time and every count below is exact.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;

use agentkit_core::executor::{AgentEvent, EventStream, Reply};
use agentkit_core::load::{self, LoadLimits, LoadPlan, LoadReport, Prompts};
use agentkit_core::{Context, Error, Executor, Invocation, Result, Usage};

/// Answers after `delay` (refusing the text "bad"), keeping what it was given and how many
/// calls it had at once.
struct Probe {
    delay: Duration,
    in_flight: AtomicUsize,
    most: AtomicUsize,
    seen: Mutex<Vec<Context>>,
    started: Mutex<Vec<tokio::time::Instant>>,
}

impl Probe {
    fn new(delay: Duration) -> Self {
        Self {
            delay,
            in_flight: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
            seen: Mutex::default(),
            started: Mutex::default(),
        }
    }

    fn most(&self) -> usize {
        self.most.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Context> {
        self.seen.lock().unwrap().clone()
    }
}

impl Executor for Probe {
    async fn execute(&self, invocation: Invocation) -> Result<Reply> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        self.seen.lock().unwrap().push(invocation.context.clone());
        self.started
            .lock()
            .unwrap()
            .push(tokio::time::Instant::now());
        tokio::time::sleep(self.delay).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let text = invocation.input[0].text_content();
        if text == "bad" {
            return Err(Error::invalid_input("bad"));
        }
        Ok(Reply {
            output: text,
            usage: Usage {
                input_tokens: 3,
                output_tokens: 2,
                ..Usage::default()
            },
            cost_usd: 0.001,
            ..Reply::default()
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_closed_loop_keeps_its_callers_busy_and_no_more() {
    let probe = Probe::new(Duration::from_millis(5));
    let plan = LoadPlan::concurrency(4).limit(40);
    let scenario = Prompts::new(["one", "two"]).tenant("acme").sessions(3);
    let report = load::run(&probe, &plan, &scenario).await.unwrap();

    assert_eq!(
        (
            report.scheduled,
            report.succeeded,
            report.failed,
            report.missed
        ),
        (40, 40, 0, 0)
    );
    assert_eq!(probe.most(), 4, "four callers, all busy");
    assert_eq!(
        report.elapsed,
        Duration::from_millis(50),
        "ten rounds of 5 ms"
    );
    assert_eq!(report.latency.p50_ms, 5.0);
    assert_eq!(report.latency.max_ms, 5.0);
    assert_eq!(report.throughput, 800.0);
    assert_eq!(report.tokens, 200);
    assert!((report.cost_usd - 0.04).abs() < 1e-9);
    // What `loadgen` prints, with its units in the names.
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["elapsed_s"], 0.05);
    assert_eq!(json["throughput_per_s"], 800.0);
    assert_eq!(json["latency"]["p99_ms"], 5.0);
    assert_eq!(json["errors"], serde_json::json!({}));

    let seen = probe.seen();
    let ids: BTreeSet<&str> = seen.iter().map(Context::request_id).collect();
    assert_eq!(ids.len(), 40, "each invocation its own request id");
    assert!(ids.iter().all(|id| id.starts_with("load-")));
    for cx in &seen {
        assert_eq!(cx.tenant(), Some("acme"));
        assert!(cx.deadline().is_some(), "every invocation has a deadline");
    }
    // Invocation i asks in session load-{i mod 3}: index 7 (the request id's suffix) in 1.
    let seventh = seen
        .iter()
        .find(|cx| cx.request_id().ends_with("-7"))
        .unwrap();
    assert_eq!(seventh.session_id(), Some("load-1"));
}

#[tokio::test(start_paused = true)]
async fn an_open_loop_keeps_its_schedule_and_counts_the_starts_it_had_to_miss() {
    // 1,000 a second for 50 ms against answers that take 200 ms, at most 8 at once: the
    // first eight start, the other 42 starts find them all still running.
    let probe = Probe::new(Duration::from_millis(200));
    let plan = LoadPlan::rate(1000.0)
        .duration(Duration::from_millis(50))
        .max_in_flight(8);
    let report = load::run(&probe, &plan, &Prompts::new(["hello"]))
        .await
        .unwrap();
    assert_eq!(
        (report.scheduled, report.succeeded, report.missed),
        (50, 8, 42)
    );
    assert_eq!(probe.most(), 8);
    assert!((report.missed_rate() - 0.84).abs() < 1e-9);
    let broken = report.check(&LoadLimits::new().max_missed_rate(0.01));
    assert_eq!(broken.len(), 1, "{broken:?}");

    // At 100 a second, 25 ms answers and one at a time: starts at 0, 30, 60 and 90 ms (the
    // ones due at 10, 20, 40, ... find the last still running).
    let probe = Probe::new(Duration::from_millis(25));
    let plan = LoadPlan::rate(100.0)
        .duration(Duration::from_millis(100))
        .max_in_flight(1);
    let report = load::run(&probe, &plan, &Prompts::new(["hello"]))
        .await
        .unwrap();
    assert_eq!(
        (report.scheduled, report.succeeded, report.missed),
        (10, 4, 6)
    );
    assert_eq!(report.elapsed, Duration::from_millis(115));
}

/// Holds its thread for 50 ms before answering, as CPU-bound work in the generator's own
/// process would: starts due meanwhile begin late.
struct Hogging;

impl Executor for Hogging {
    async fn execute(&self, _invocation: Invocation) -> Result<Reply> {
        std::thread::sleep(Duration::from_millis(50));
        Ok(Reply::default())
    }
}

#[tokio::test]
async fn latency_counts_from_when_a_start_was_due() {
    // Starts due at 0, 10 and 20 ms begin at about 0, 50 and 100 ms and take 50 ms each:
    // from their due times, about 50, 90 and 130 ms. Timed from when each began they would
    // all read 50 ms, hiding that the generator could not keep its schedule.
    let plan = LoadPlan::rate(100.0)
        .duration(Duration::from_millis(30))
        .max_in_flight(8);
    let report = load::run(&Hogging, &plan, &Prompts::new(["hello"]))
        .await
        .unwrap();
    assert_eq!((report.succeeded, report.missed), (3, 0));
    assert!(report.latency.p50_ms >= 85.0, "{:?}", report.latency);
    assert!(report.latency.max_ms >= 125.0, "{:?}", report.latency);
}

#[tokio::test(start_paused = true)]
async fn failures_are_counted_by_code() {
    let probe = Probe::new(Duration::from_millis(1));
    let plan = LoadPlan::concurrency(3).limit(30);
    let report = load::run(&probe, &plan, &Prompts::new(["ok", "ok", "bad"]))
        .await
        .unwrap();
    assert_eq!((report.succeeded, report.failed), (20, 10));
    assert_eq!(report.errors.get("invalid_input"), Some(&10));
    assert_eq!(report.errors.len(), 1);
    assert!((report.error_rate() - 1.0 / 3.0).abs() < 1e-9);
    assert!(
        report
            .check(&LoadLimits::new().max_error_rate(0.5))
            .is_empty()
    );
    let broken = report.check(&LoadLimits::new().max_error_rate(0.1));
    assert!(broken[0].contains("10 of 30 failed"), "{broken:?}");
}

#[tokio::test(start_paused = true)]
async fn an_invocation_past_its_deadline_counts_as_a_timeout() {
    // Ignores its deadline and would answer after ten seconds.
    let probe = Probe::new(Duration::from_secs(10));
    let plan = LoadPlan::concurrency(2)
        .limit(2)
        .timeout(Duration::from_millis(100));
    let report = load::run(&probe, &plan, &Prompts::new(["hello"]))
        .await
        .unwrap();
    assert_eq!((report.succeeded, report.failed), (0, 2));
    assert_eq!(report.errors.get("timeout"), Some(&2));
    assert_eq!(report.elapsed, Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn a_closed_loop_stops_starting_when_its_time_is_up() {
    let probe = Probe::new(Duration::from_millis(30));
    let plan = LoadPlan::concurrency(2).duration(Duration::from_millis(100));
    let report = load::run(&probe, &plan, &Prompts::new(["hello"]))
        .await
        .unwrap();
    // Rounds start at 0, 30, 60 and 90 ms; the last ends at 120.
    assert_eq!((report.scheduled, report.succeeded), (8, 8));
    assert_eq!(report.elapsed, Duration::from_millis(120));
}

#[tokio::test]
async fn a_plan_that_cannot_run_is_an_invalid_input_error() {
    let probe = Probe::new(Duration::ZERO);
    let error = load::run(&probe, &LoadPlan::rate(0.0), &Prompts::new(["hello"]))
        .await
        .unwrap_err();
    assert_eq!(error.code(), "invalid_input");
    assert!(probe.seen().is_empty());
}

/// Streams an answer: its first text after 5 ms, the rest and the end 20 ms later; or, for
/// the text "cut", a stream that stops before its answer.
struct Streaming;

impl Executor for Streaming {
    async fn execute(&self, _invocation: Invocation) -> Result<Reply> {
        unreachable!("a streaming plan calls stream")
    }

    async fn stream(&self, invocation: Invocation) -> Result<EventStream> {
        let cut = invocation.input[0].text_content() == "cut";
        let events = async_stream_of(cut);
        Ok(Box::pin(events))
    }
}

fn async_stream_of(cut: bool) -> impl futures::Stream<Item = Result<AgentEvent>> + Send {
    let steps: Vec<(u64, Option<AgentEvent>)> = vec![
        (5, Some(AgentEvent::TextDelta { text: "he".into() })),
        (20, Some(AgentEvent::TextDelta { text: "llo".into() })),
        (
            0,
            (!cut).then(|| {
                AgentEvent::Done(Box::new(Reply {
                    output: "hello".into(),
                    ..Reply::default()
                }))
            }),
        ),
    ];
    futures::stream::iter(steps).filter_map(|(ms, event)| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        event.map(Ok)
    })
}

#[tokio::test(start_paused = true)]
async fn a_streaming_plan_times_the_first_text_too() {
    let plan = LoadPlan::concurrency(2).limit(6).stream();
    let report = load::run(&Streaming, &plan, &Prompts::new(["hello", "hello", "cut"]))
        .await
        .unwrap();
    assert_eq!((report.succeeded, report.failed), (4, 2));
    assert_eq!(
        report.errors.get("unavailable"),
        Some(&2),
        "a stream cut short"
    );
    let first = report
        .first_token
        .expect("streamed answers have a first token");
    assert_eq!((first.p50_ms, first.max_ms), (5.0, 5.0));
    assert_eq!(report.latency.max_ms, 25.0);

    // Not streaming: no first-token figures, in the report or its JSON.
    let report = load::run(
        &Probe::new(Duration::from_millis(1)),
        &LoadPlan::concurrency(1).limit(2),
        &Prompts::new(["a"]),
    )
    .await
    .unwrap();
    assert!(report.first_token.is_none());
    assert!(
        serde_json::to_value(&report)
            .unwrap()
            .get("first_token")
            .is_none()
    );
}

#[tokio::test(start_paused = true)]
async fn a_ramp_raises_the_rate_from_nothing() {
    // 100 a second reached after a second, held for another: half a second's worth of
    // starts while ramping, then a second's.
    let probe = Probe::new(Duration::from_millis(1));
    let plan = LoadPlan::rate(100.0)
        .ramp(Duration::from_secs(1))
        .duration(Duration::from_secs(2));
    let begun = tokio::time::Instant::now();
    let report = load::run(&probe, &plan, &Prompts::new(["hello"]))
        .await
        .unwrap();
    assert_eq!((report.scheduled, report.succeeded), (150, 150));
    let started = probe.started.lock().unwrap().clone();
    let within = |from: u64, to: u64| {
        started
            .iter()
            .filter(|at| {
                let ms = at.duration_since(begun).as_millis() as u64;
                (from..to).contains(&ms)
            })
            .count()
    };
    assert_eq!(within(0, 1000), 50, "the ramp's area: 100/s × 1 s / 2");
    assert_eq!(within(1000, 2000), 100);
    assert!(within(0, 500) < within(500, 1000), "rising");
}

#[tokio::test(start_paused = true)]
async fn progress_is_reported_as_the_run_goes() {
    let probe = Probe::new(Duration::from_millis(10));
    let plan = LoadPlan::concurrency(1).duration(Duration::from_millis(100));
    let mut seen: Vec<LoadReport> = Vec::new();
    let report = load::run_reporting(
        &probe,
        &plan,
        &Prompts::new(["hello"]),
        Some(Duration::from_millis(30)),
        |so_far| seen.push(so_far.clone()),
    )
    .await
    .unwrap();
    let answered: Vec<u64> = seen.iter().map(|r| r.succeeded).collect();
    assert_eq!(answered, [3, 6, 9], "at 30, 60 and 90 ms");
    assert_eq!(seen[0].elapsed, Duration::from_millis(30));
    assert_eq!(report.succeeded, 10);
}
