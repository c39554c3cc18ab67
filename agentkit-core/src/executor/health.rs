//! [`HealthWatch`]: alerts on latency spikes, error bursts and token surges, judged from the
//! runs of an executor against its own recent past.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;
use tokio::time::Instant;

use super::canary::counts_against;
use crate::Result;
use crate::executor::{AgentEvent, EventStream, Executor, Invocation, Reply};

/// The width of one time bucket.
const BUCKET: Duration = Duration::from_secs(10);

/// Latency classes: class `i` holds latencies below `FIRST_MS * GROWTH^i` milliseconds.
const CLASSES: usize = 48;
const FIRST_MS: f64 = 1.0;
const GROWTH: f64 = 1.35;

/// How often the rules are judged at most (every run records; judging reads every bucket).
const JUDGE_EVERY: Duration = Duration::from_secs(1);

/// The thresholds of a [`HealthWatch`]. Each rule compares the last `recent` span with the
/// `baseline` span before it, and says nothing until both hold `min_runs` runs.
#[derive(Clone, Debug)]
pub struct AlertRules {
    /// The span judged (default 1 minute).
    pub recent: Duration,
    /// The span before it that sets what is normal (default 30 minutes).
    pub baseline: Duration,
    /// Runs a span needs before it is judged (default 20).
    pub min_runs: u64,
    /// Error burst: the share of recent runs that failed for the executor's own reasons
    /// (not bad input, auth, rate limits, budgets or cancellation) at or above this (default
    /// 0.2). Needs no baseline.
    pub max_error_rate: f64,
    /// Latency spike: the recent 95th percentile at least this many times the baseline's
    /// (default 2.0)...
    pub latency_factor: f64,
    /// ...and at least this long (default 1 s), so that a fast service does not alert on
    /// milliseconds.
    pub min_latency: Duration,
    /// Token surge: recent tokens per run at least this many times the baseline's (default
    /// 2.0)...
    pub token_factor: f64,
    /// ...and at least this many (default 1,000).
    pub min_tokens_per_run: f64,
    /// How long a firing rule must stay within its threshold before it resolves (default 1
    /// minute), so that a rate hovering at the limit does not fire and resolve by turns.
    pub resolve_after: Duration,
}

impl Default for AlertRules {
    fn default() -> Self {
        Self {
            recent: Duration::from_secs(60),
            baseline: Duration::from_secs(30 * 60),
            min_runs: 20,
            max_error_rate: 0.2,
            latency_factor: 2.0,
            min_latency: Duration::from_secs(1),
            token_factor: 2.0,
            min_tokens_per_run: 1_000.0,
            resolve_after: Duration::from_secs(60),
        }
    }
}

/// What a rule watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertRule {
    /// Many recent runs failing.
    ErrorBurst,
    /// Recent runs much slower than usual.
    LatencySpike,
    /// Recent runs spending many more tokens than usual.
    TokenSurge,
}

impl AlertRule {
    /// The rule's stable name (`error_burst`, `latency_spike`, `token_surge`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ErrorBurst => "error_burst",
            Self::LatencySpike => "latency_spike",
            Self::TokenSurge => "token_surge",
        }
    }
}

/// A rule that fired or resolved, with the figures that decided it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    /// The watch's name (the agent's, usually).
    pub watch: String,
    /// The rule.
    pub rule: AlertRule,
    /// Whether it is firing (false: it just resolved).
    pub firing: bool,
    /// The figures, for a human: `"error rate 45% over 33 runs in the last 60 s (limit 20%)"`.
    pub detail: String,
}

type OnChange = Arc<dyn Fn(&Alert) + Send + Sync>;

/// Each rule with the detail of how it breaks its threshold, if it does.
type Verdicts = [(AlertRule, Option<String>); 3];

/// Runs within one time bucket.
#[derive(Clone, Copy)]
struct Bucket {
    /// Which bucket (time since the watch started, in buckets): a stale slot is ignored.
    index: u64,
    runs: u64,
    failed: u64,
    tokens: u64,
    latency: [u32; CLASSES],
}

impl Bucket {
    const EMPTY: Bucket = Bucket {
        index: u64::MAX,
        runs: 0,
        failed: 0,
        tokens: 0,
        latency: [0; CLASSES],
    };
}

/// Runs summed over a span.
struct Span {
    runs: u64,
    failed: u64,
    tokens: u64,
    latency: [u64; CLASSES],
}

impl Span {
    /// The upper bound of the class holding the `q` quantile.
    fn quantile(&self, q: f64) -> Duration {
        let wanted = (self.runs as f64 * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (class, count) in self.latency.iter().enumerate() {
            seen += count;
            if seen >= wanted {
                return Duration::from_secs_f64(FIRST_MS * GROWTH.powi(class as i32 + 1) / 1e3);
            }
        }
        Duration::from_secs_f64(FIRST_MS * GROWTH.powi(CLASSES as i32) / 1e3)
    }

    fn tokens_per_run(&self) -> f64 {
        self.tokens as f64 / self.runs.max(1) as f64
    }
}

struct State {
    /// A ring of buckets covering the baseline and the recent span.
    buckets: Vec<Bucket>,
    judged_at: Option<Instant>,
    /// The rules firing, each with when it came back within its threshold, if it has.
    firing: Vec<(AlertRule, Option<Instant>)>,
}

struct Inner {
    name: String,
    rules: AlertRules,
    started: Instant,
    state: Mutex<State>,
    on_change: Mutex<Vec<OnChange>>,
}

/// Watches the runs of an executor (through [`watch`](Self::watch)) and raises an [`Alert`]
/// when the recent ones break an [`AlertRules`] threshold: an error burst, a latency spike or
/// a token surge against the service's own baseline. A firing or resolving alert is logged
/// (target `agentkit::alert`, `warn` when it fires, `info` when it resolves: one JSON line
/// each, for the on-call), passed to the [`on_change`](Self::on_change) functions (the
/// observe crate's `Telemetry::report_alerts` keeps a gauge with one), and listed by
/// [`alerts`](Self::alerts) while it fires; it resolves once back within its threshold for
/// [`AlertRules::resolve_after`]. Memory is fixed (time buckets of 10 s holding
/// counts and a latency histogram); recording a run is a lock and a few additions, and the
/// rules are judged at most once a second. Cheap to clone; clones share the watch.
///
/// ```
/// use agentkit_core::executor::{AlertRules, HealthWatch};
/// use agentkit_core::model::ScriptedModel;
/// use agentkit_core::Agent;
///
/// let agent = Agent::builder().model(ScriptedModel::demo()).build()?;
/// let health = HealthWatch::new("assistant", AlertRules::default())
///     .on_change(|alert| eprintln!("{}: {}", alert.rule.as_str(), alert.detail));
/// let watched = health.watch(agent);
/// assert!(health.alerts().is_empty());
/// # let _ = watched;
/// # Ok::<_, agentkit_core::Error>(())
/// ```
#[derive(Clone)]
pub struct HealthWatch {
    inner: Arc<Inner>,
}

impl fmt::Debug for HealthWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthWatch")
            .field("name", &self.inner.name)
            .field("rules", &self.inner.rules)
            .finish_non_exhaustive()
    }
}

impl HealthWatch {
    /// A watch named `name` (in alerts and logs) judging by `rules`.
    pub fn new(name: impl Into<String>, rules: AlertRules) -> Self {
        let span = rules.recent.saturating_add(rules.baseline);
        let slots = (span.as_secs_f64() / BUCKET.as_secs_f64()).ceil() as usize + 2;
        Self {
            inner: Arc::new(Inner {
                name: name.into(),
                rules,
                started: Instant::now(),
                state: Mutex::new(State {
                    buckets: vec![Bucket::EMPTY; slots.max(4)],
                    judged_at: None,
                    firing: Vec::new(),
                }),
                on_change: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Also calls `f` with each alert that fires or resolves (page someone, post to a
    /// channel, set a gauge), after the functions given before. Clones share them.
    #[must_use]
    pub fn on_change(self, f: impl Fn(&Alert) + Send + Sync + 'static) -> Self {
        self.inner
            .on_change
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::new(f));
        self
    }

    /// `executor`, its runs recorded by this watch.
    pub fn watch<E>(&self, executor: E) -> Watched<E> {
        Watched {
            inner: executor,
            watch: self.clone(),
        }
    }

    /// The alerts firing now (the rules judged afresh).
    pub fn alerts(&self) -> Vec<Alert> {
        let now = Instant::now();
        let (changes, firing) = {
            let mut state = self.inner.lock();
            let (verdicts, changes) = self.inner.judge(&mut state, now);
            (changes, self.inner.firing(&state, verdicts))
        };
        self.inner.tell(&changes);
        firing
    }

    /// Records one run: how long it took, whether it failed for the executor's own reasons,
    /// and the tokens it spent.
    pub fn record(&self, latency: Duration, failed: bool, tokens: u64) {
        let now = Instant::now();
        let changes = {
            let mut state = self.inner.lock();
            let index = self.inner.index(now);
            let slots = state.buckets.len() as u64;
            let bucket = &mut state.buckets[(index % slots) as usize];
            if bucket.index != index {
                *bucket = Bucket {
                    index,
                    ..Bucket::EMPTY
                };
            }
            bucket.runs += 1;
            bucket.failed += u64::from(failed);
            bucket.tokens += tokens;
            let ms = latency.as_secs_f64() * 1e3 / FIRST_MS;
            let class = if ms < 1.0 {
                0
            } else {
                ((ms.ln() / GROWTH.ln()) as usize).min(CLASSES - 1)
            };
            bucket.latency[class] = bucket.latency[class].saturating_add(1);
            let due = state
                .judged_at
                .is_none_or(|at| now.duration_since(at) >= JUDGE_EVERY);
            if due {
                self.inner.judge(&mut state, now).1
            } else {
                Vec::new()
            }
        };
        self.inner.tell(&changes);
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn index(&self, now: Instant) -> u64 {
        (now.duration_since(self.started).as_secs_f64() / BUCKET.as_secs_f64()) as u64
    }

    /// Sums the buckets from `from` (inclusive) to `to` (exclusive), by index.
    fn span(&self, state: &State, from: u64, to: u64) -> Span {
        let mut span = Span {
            runs: 0,
            failed: 0,
            tokens: 0,
            latency: [0; CLASSES],
        };
        for bucket in state
            .buckets
            .iter()
            .filter(|b| b.index >= from && b.index < to)
        {
            span.runs += bucket.runs;
            span.failed += bucket.failed;
            span.tokens += bucket.tokens;
            for (sum, count) in span.latency.iter_mut().zip(bucket.latency) {
                *sum += u64::from(count);
            }
        }
        span
    }

    /// The recent span and the baseline before it, at `now`.
    fn spans(&self, state: &State, now: Instant) -> (Span, Span) {
        let buckets = |d: Duration| (d.as_secs_f64() / BUCKET.as_secs_f64()).ceil() as u64;
        let end = self.index(now) + 1;
        let recent_from = end.saturating_sub(buckets(self.rules.recent));
        let baseline_from = recent_from.saturating_sub(buckets(self.rules.baseline));
        (
            self.span(state, recent_from, end),
            self.span(state, baseline_from, recent_from),
        )
    }

    /// Each rule's verdict at `now`: the detail when it breaks its threshold.
    fn verdicts(&self, state: &State, now: Instant) -> Verdicts {
        let rules = &self.rules;
        let (recent, baseline) = self.spans(state, now);
        let seconds = rules.recent.as_secs();
        let enough = |span: &Span| span.runs >= rules.min_runs.max(1);
        let rate = recent.failed as f64 / recent.runs.max(1) as f64;
        let errors = (enough(&recent) && rate >= rules.max_error_rate).then(|| {
            format!(
                "error rate {:.0}% over {} runs in the last {seconds} s (limit {:.0}%)",
                rate * 100.0,
                recent.runs,
                rules.max_error_rate * 100.0
            )
        });
        let both = enough(&recent) && enough(&baseline);
        let (now_p95, usual_p95) = (recent.quantile(0.95), baseline.quantile(0.95));
        let latency = (both
            && now_p95 >= rules.min_latency
            && now_p95.as_secs_f64() >= usual_p95.as_secs_f64() * rules.latency_factor)
            .then(|| {
                format!(
                    "p95 latency about {} ms over {} runs in the last {seconds} s, against \
                     about {} ms before (limit {}x)",
                    now_p95.as_millis(),
                    recent.runs,
                    usual_p95.as_millis(),
                    rules.latency_factor
                )
            });
        let (now_tokens, usual_tokens) = (recent.tokens_per_run(), baseline.tokens_per_run());
        let tokens = (both
            && now_tokens >= rules.min_tokens_per_run
            && now_tokens >= usual_tokens * rules.token_factor)
            .then(|| {
                format!(
                    "{now_tokens:.0} tokens a run over {} runs in the last {seconds} s, against \
                     {usual_tokens:.0} before (limit {}x)",
                    recent.runs, rules.token_factor
                )
            });
        [
            (AlertRule::ErrorBurst, errors),
            (AlertRule::LatencySpike, latency),
            (AlertRule::TokenSurge, tokens),
        ]
    }

    /// Judges the rules: each one's verdict, and the alerts that fired or resolved.
    fn judge(&self, state: &mut State, now: Instant) -> (Verdicts, Vec<Alert>) {
        state.judged_at = Some(now);
        let mut changes = Vec::new();
        let resolve_after = self.rules.resolve_after;
        let verdicts = self.verdicts(state, now);
        for (rule, verdict) in &verdicts {
            let rule = *rule;
            let at = state.firing.iter().position(|(r, _)| *r == rule);
            match (verdict, at) {
                (Some(detail), None) => {
                    state.firing.push((rule, None));
                    changes.push(self.alert(rule, true, detail.clone()));
                }
                (Some(_), Some(at)) => state.firing[at].1 = None,
                (None, Some(at)) => {
                    let since = *state.firing[at].1.get_or_insert(now);
                    if now.duration_since(since) >= resolve_after {
                        state.firing.remove(at);
                        let detail = format!(
                            "back within its threshold for {} s",
                            resolve_after.as_secs()
                        );
                        changes.push(self.alert(rule, false, detail));
                    }
                }
                (None, None) => {}
            }
        }
        (verdicts, changes)
    }

    /// The alerts firing, with the figures of `verdicts` (just judged).
    fn firing(&self, state: &State, verdicts: Verdicts) -> Vec<Alert> {
        verdicts
            .into_iter()
            .filter(|(rule, _)| state.firing.iter().any(|(r, _)| r == rule))
            .map(|(rule, detail)| {
                let detail =
                    detail.unwrap_or_else(|| "within its threshold, not yet resolved".into());
                self.alert(rule, true, detail)
            })
            .collect()
    }

    fn alert(&self, rule: AlertRule, firing: bool, detail: String) -> Alert {
        Alert {
            watch: self.name.clone(),
            rule,
            firing,
            detail,
        }
    }

    /// Logs the changes and passes them on (outside the lock).
    fn tell(&self, changes: &[Alert]) {
        for alert in changes {
            let rule = alert.rule.as_str();
            if alert.firing {
                tracing::warn!(target: "agentkit::alert", watch = %alert.watch, rule, detail = %alert.detail, "alert firing");
            } else {
                tracing::info!(target: "agentkit::alert", watch = %alert.watch, rule, "alert resolved");
            }
            let callbacks = self
                .on_change
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            for on_change in callbacks {
                on_change(alert);
            }
        }
    }
}

/// An executor whose runs a [`HealthWatch`] records; see [`HealthWatch::watch`].
#[derive(Clone, Debug)]
pub struct Watched<E> {
    inner: E,
    watch: HealthWatch,
}

impl<E: Executor> Executor for Watched<E> {
    fn execute(&self, invocation: Invocation) -> impl Future<Output = Result<Reply>> + Send {
        let watch = self.watch.clone();
        let run = self.inner.execute(invocation);
        async move {
            let started = Instant::now();
            let result = run.await;
            let (failed, tokens) = match &result {
                Ok(reply) => (false, reply.usage.input_tokens + reply.usage.output_tokens),
                Err(error) => (counts_against(error.kind()), 0),
            };
            watch.record(started.elapsed(), failed, tokens);
            result
        }
    }

    fn stream(&self, invocation: Invocation) -> impl Future<Output = Result<EventStream>> + Send {
        let watch = self.watch.clone();
        let open = self.inner.stream(invocation);
        async move {
            let started = Instant::now();
            let events = match open.await {
                Ok(events) => events,
                Err(error) => {
                    watch.record(started.elapsed(), counts_against(error.kind()), 0);
                    return Err(error);
                }
            };
            // Recorded when the stream ends: by its last event.
            let recorded = events.map(move |event| {
                match &event {
                    Ok(AgentEvent::Done(reply)) => watch.record(
                        started.elapsed(),
                        false,
                        reply.usage.input_tokens + reply.usage.output_tokens,
                    ),
                    Err(error) => {
                        watch.record(started.elapsed(), counts_against(error.kind()), 0);
                    }
                    Ok(_) => {}
                }
                event
            });
            Ok(recorded.boxed())
        }
    }
}
