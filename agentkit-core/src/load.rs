//! Synthetic load for staging: drives an executor at a set pace for a set time and reports
//! what it did: throughput, latency percentiles, errors by code, tokens and cost.
//!
//! The executor is whatever is to be loaded: an in-process [`Agent`](crate::Agent), or a
//! deployed service through `agentkit_transport::RemoteExecutor`. A [`Scenario`] says what
//! each invocation asks ([`Prompts`]: texts in turn, optionally over a set of sessions and a
//! tenant); the generator gives each one its own request id and deadline.
//!
//! Two paces ([`Pace`]):
//! - **open loop** (`rate`): invocations start on a fixed schedule whatever the answers'
//!   speed, and each one's latency counts from its *scheduled* start, so a service that falls
//!   behind shows it in its percentiles instead of slowing the generator down with it
//!   ("coordinated omission"). At most `max_in_flight` run at once; a start due while that
//!   many are running is skipped and counted as `missed`.
//! - **closed loop** (`concurrency`): a set number of callers, each starting its next
//!   invocation when its last one ends.
//!
//! A plan that [streams](LoadPlan::stream) reads each answer as events and reports the time
//! to its first text as well (`first_token`), the latency a user of a streamed answer feels.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use agentkit_core::load::{self, LoadPlan, Prompts};
//! use agentkit_core::model::ScriptedModel;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let agent = agentkit_core::demo::assistant_builder(Arc::new(ScriptedModel::demo())).build()?;
//! let plan = LoadPlan::rate(200.0).duration(Duration::from_millis(100));
//! let report = load::run(&agent, &plan, &Prompts::new(["What is 2 + 3?"])).await?;
//! assert_eq!(report.scheduled, 20);
//! assert_eq!(report.succeeded + report.failed + report.missed, 20);
//! # Ok::<_, agentkit_core::Error>(())
//! # }).unwrap();
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::Serialize;
use tokio::time::Instant;

use crate::executor::{AgentEvent, Executor, Invocation, Reply};
use crate::{Error, Result};

/// How invocations are started.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    /// Open loop: this many starts a second, on a fixed schedule.
    Rate(f64),
    /// Closed loop: this many callers, each waiting for its last answer.
    Concurrency(usize),
}

/// The most callers a closed loop may have: each is an invocation held in memory.
const MAX_CALLERS: usize = 100_000;

/// What a load run does: its pace, for how long, and its bounds.
#[derive(Clone, Debug)]
#[must_use]
pub struct LoadPlan {
    pace: Pace,
    duration: Duration,
    limit: Option<u64>,
    max_in_flight: usize,
    timeout: Duration,
    streaming: bool,
    ramp: Duration,
}

impl LoadPlan {
    /// Open loop at `per_second` starts a second (10 s, at most 1,024 in flight, a 30 s
    /// deadline each, unless set otherwise).
    pub fn rate(per_second: f64) -> Self {
        Self::new(Pace::Rate(per_second))
    }

    /// Closed loop with `callers` callers (10 s and a 30 s deadline each, unless set
    /// otherwise).
    pub fn concurrency(callers: usize) -> Self {
        Self::new(Pace::Concurrency(callers))
    }

    fn new(pace: Pace) -> Self {
        Self {
            pace,
            duration: Duration::from_secs(10),
            limit: None,
            max_in_flight: 1024,
            timeout: Duration::from_secs(30),
            streaming: false,
            ramp: Duration::ZERO,
        }
    }

    /// Open loop: the rate rises linearly from nothing over `ramp`, then holds (a service
    /// that scales out, and its caches, get to warm up as they would in production).
    pub fn ramp(mut self, ramp: Duration) -> Self {
        self.ramp = ramp;
        self
    }

    /// Calls the executor's `stream` rather than `execute`, and times the first piece of each
    /// answer's text too ([`LoadReport::first_token`]): what a user waiting on a streamed
    /// answer feels.
    pub fn stream(mut self) -> Self {
        self.streaming = true;
        self
    }

    /// How long invocations keep starting. Those in flight at the end are waited for, up to
    /// their deadline.
    pub fn duration(mut self, duration: Duration) -> Self {
        self.duration = duration;
        self
    }

    /// Starts at most `invocations` in all, ending the run early when they are done.
    pub fn limit(mut self, invocations: u64) -> Self {
        self.limit = Some(invocations);
        self
    }

    /// Open loop: at most this many invocations at once (default 1,024).
    pub fn max_in_flight(mut self, invocations: usize) -> Self {
        self.max_in_flight = invocations;
        self
    }

    /// Each invocation's deadline (default 30 s): its context carries it, and one that has
    /// not answered by then counts as failed with `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The pace.
    pub fn pace(&self) -> Pace {
        self.pace
    }

    fn validate(&self) -> Result<()> {
        let bad = match self.pace {
            Pace::Rate(rate) if !(rate.is_finite() && rate > 0.0) => {
                Some(format!("the rate must be a positive number, not {rate}"))
            }
            Pace::Rate(rate) if rate > 1_000_000.0 => Some(format!(
                "a rate of {rate} a second is beyond what one process can pace"
            )),
            Pace::Concurrency(0) => Some("the concurrency must be at least 1".to_owned()),
            Pace::Concurrency(callers) if callers > MAX_CALLERS => Some(format!(
                "a concurrency of {callers} is beyond what one generator holds ({MAX_CALLERS})"
            )),
            _ if self.duration.is_zero() => Some("the duration must not be zero".to_owned()),
            _ if self.max_in_flight == 0 => Some("max_in_flight must be at least 1".to_owned()),
            _ if self.timeout.is_zero() => Some("the timeout must not be zero".to_owned()),
            _ => None,
        };
        bad.map_or(Ok(()), |message| Err(Error::invalid_input(message)))
    }
}

/// What each invocation of a load run asks.
///
/// ```
/// use agentkit_core::load::Scenario;
/// use agentkit_core::{Context, Invocation};
///
/// /// Every tenth caller asks for a sum; the rest say hello.
/// struct Mix;
///
/// impl Scenario for Mix {
///     fn invocation(&self, index: u64) -> Invocation {
///         let text = if index % 10 == 0 { "What is 1 + 2?" } else { "hello" };
///         Invocation::text(text).with_context(Context::new().with_tenant("load-test"))
///     }
/// }
/// # let _ = Mix.invocation(0);
/// ```
pub trait Scenario: Send + Sync {
    /// The `index`th invocation of the run (from 0). The generator replaces its request id
    /// and sets its deadline; tenant, session, history and metadata are kept.
    fn invocation(&self, index: u64) -> Invocation;
}

/// Texts asked in turn; with [`sessions`](Prompts::sessions), spread over that many sessions
/// (invocation `i` in session `load-{i mod n}`), each turn a next message of its session.
#[derive(Clone, Debug)]
pub struct Prompts {
    texts: Vec<String>,
    sessions: Option<u64>,
    tenant: Option<String>,
}

impl Prompts {
    /// The texts, asked in turn. An empty list asks an empty message, which agents refuse.
    pub fn new<I, S>(texts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            texts: texts.into_iter().map(Into::into).collect(),
            sessions: None,
            tenant: None,
        }
    }

    /// Spreads the invocations over `sessions` sessions.
    #[must_use]
    pub fn sessions(mut self, sessions: u64) -> Self {
        self.sessions = Some(sessions.max(1));
        self
    }

    /// In `tenant`.
    #[must_use]
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }
}

impl Scenario for Prompts {
    fn invocation(&self, index: u64) -> Invocation {
        let text = match self.texts.len() {
            0 => "",
            n => &self.texts[(index % n as u64) as usize],
        };
        let mut invocation = Invocation::text(text);
        if let Some(tenant) = &self.tenant {
            invocation.context = invocation.context.with_tenant(tenant.as_str());
        }
        if let Some(sessions) = self.sessions {
            let session = format!("load-{}", index % sessions);
            invocation.context = invocation.context.with_session_id(session);
        }
        invocation
    }
}

/// Latency percentiles of the invocations that ended, in milliseconds (within 1.6%).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// The slowest, exact.
    pub max_ms: f64,
    /// The mean, exact.
    pub mean_ms: f64,
}

/// What a load run did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LoadReport {
    /// From the first start to the last answer (`elapsed_s` in JSON, in seconds).
    #[serde(rename = "elapsed_s", serialize_with = "seconds")]
    pub elapsed: Duration,
    /// Open loop: starts the schedule had; closed loop: invocations started.
    pub scheduled: u64,
    /// Invocations that answered.
    pub succeeded: u64,
    /// Invocations that failed (by code in `errors`).
    pub failed: u64,
    /// Open loop: starts skipped because `max_in_flight` invocations were running.
    pub missed: u64,
    /// Failures by error code (`timeout`, `rate_limited`, `unavailable`, ...).
    pub errors: BTreeMap<String, u64>,
    /// Answers a second over the run (`throughput_per_s` in JSON).
    #[serde(rename = "throughput_per_s")]
    pub throughput: f64,
    /// Of every invocation that ended, answered or failed.
    pub latency: Latency,
    /// Streaming runs: from each start (as due) to the first piece of the answer's text, of
    /// the invocations that sent one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_token: Option<Latency>,
    /// Tokens the answers spent.
    pub tokens: u64,
    /// What the answers cost, in US dollars.
    pub cost_usd: f64,
}

fn seconds<S: serde::Serializer>(
    duration: &Duration,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

/// Bounds a load run must stay within, for a staging gate.
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct LoadLimits {
    max_error_rate: Option<f64>,
    max_p99: Option<Duration>,
    max_missed_rate: Option<f64>,
}

impl LoadLimits {
    /// No bounds.
    pub fn new() -> Self {
        Self::default()
    }

    /// At most this share of the invocations that ended may fail (0.01: one in a hundred).
    pub fn max_error_rate(mut self, share: f64) -> Self {
        self.max_error_rate = Some(share);
        self
    }

    /// The 99th percentile latency at most this.
    pub fn max_p99(mut self, latency: Duration) -> Self {
        self.max_p99 = Some(latency);
        self
    }

    /// Open loop: at most this share of the scheduled starts may be missed.
    pub fn max_missed_rate(mut self, share: f64) -> Self {
        self.max_missed_rate = Some(share);
        self
    }
}

impl LoadReport {
    /// The share of the invocations that ended that failed (0 when none ended).
    pub fn error_rate(&self) -> f64 {
        ratio(self.failed, self.succeeded + self.failed)
    }

    /// The share of the scheduled starts that were missed.
    pub fn missed_rate(&self) -> f64 {
        ratio(self.missed, self.scheduled)
    }

    /// What breaks `limits`, one line each; empty when the run stayed within them. A run in
    /// which nothing ended breaks every limit that is set.
    pub fn check(&self, limits: &LoadLimits) -> Vec<String> {
        let mut broken = Vec::new();
        let ended = self.succeeded + self.failed;
        if let Some(max) = limits.max_error_rate
            && (ended == 0 || self.error_rate() > max)
        {
            broken.push(format!(
                "error rate {:.4} above {max} ({} of {ended} failed: {:?})",
                self.error_rate(),
                self.failed,
                self.errors
            ));
        }
        if let Some(max) = limits.max_p99 {
            let max_ms = max.as_secs_f64() * 1000.0;
            if ended == 0 || self.latency.p99_ms > max_ms {
                broken.push(format!(
                    "p99 latency {:.1} ms above {max_ms:.1} ms",
                    self.latency.p99_ms
                ));
            }
        }
        if let Some(max) = limits.max_missed_rate
            && (self.scheduled == 0 || self.missed_rate() > max)
        {
            broken.push(format!(
                "{} of {} scheduled starts missed ({:.4}, above {max}): the service did not keep up",
                self.missed,
                self.scheduled,
                self.missed_rate()
            ));
        }
        broken
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Runs `scenario` against `executor` as `plan` says and reports what happened. Invocations
/// run concurrently on the calling task; an in-process agent's own work therefore shares it,
/// which bounds what one generator can drive: for a deployed service the work is elsewhere.
///
/// Fails only for a plan that cannot run (a rate or concurrency of zero, ...); the
/// invocations' failures are in the report.
pub async fn run<E: Executor + ?Sized>(
    executor: &E,
    plan: &LoadPlan,
    scenario: &dyn Scenario,
) -> Result<LoadReport> {
    run_reporting(executor, plan, scenario, None, |_| {}).await
}

/// [`run`], handing `progress` the report so far every `every` (a long staging run shows its
/// drift as it goes, not only at the end).
pub async fn run_reporting<E: Executor + ?Sized>(
    executor: &E,
    plan: &LoadPlan,
    scenario: &dyn Scenario,
    every: Option<Duration>,
    mut progress: impl FnMut(&LoadReport),
) -> Result<LoadReport> {
    plan.validate()?;
    let run_id = crate::generate_id();
    let start = Instant::now();
    let stop = start + plan.duration;
    let mut tally = Tally::default();
    let mut running = FuturesUnordered::new();
    let mut next: u64 = 0;
    let limit = plan.limit.unwrap_or(u64::MAX);
    let call = |index: u64, scheduled: Instant| {
        let mut invocation = scenario.invocation(index);
        invocation.context = invocation
            .context
            .with_request_id(format!("load-{run_id}-{index}"))
            .with_timeout(plan.timeout);
        invoke(
            executor,
            invocation,
            plan.streaming,
            scheduled,
            plan.timeout,
        )
    };
    // Open loop: every start the schedule holds, whatever happens to the answers.
    let schedule = match plan.pace {
        Pace::Rate(rate) => Some(Schedule::new(rate, plan.ramp, plan.duration, limit)),
        Pace::Concurrency(callers) => {
            while next < limit && running.len() < callers && Instant::now() < stop {
                running.push(call(next, Instant::now()));
                next += 1;
            }
            None
        }
    };
    let every = every.filter(|every| !every.is_zero());
    let mut report_at = every.map(|every| start + every);
    loop {
        let due = schedule
            .as_ref()
            .filter(|schedule| next < schedule.starts)
            .map(|schedule| start + schedule.due(next));
        if running.is_empty() && due.is_none() {
            break;
        }
        // (A disabled branch's future is made all the same, so each has an instant.)
        tokio::select! {
            biased;
            Some(ended) = running.next(), if !running.is_empty() => {
                tally.add(ended);
                if schedule.is_none() && next < limit && Instant::now() < stop {
                    running.push(call(next, Instant::now()));
                    next += 1;
                }
            }
            () = tokio::time::sleep_until(due.unwrap_or(start)), if due.is_some() => {
                let due = due.unwrap_or(start);
                if running.len() < plan.max_in_flight {
                    running.push(call(next, due));
                } else {
                    tally.missed += 1;
                }
                next += 1;
            }
            () = tokio::time::sleep_until(report_at.unwrap_or(start)), if report_at.is_some() => {
                let mut so_far = tally.report(start.elapsed());
                so_far.scheduled = next;
                progress(&so_far);
                report_at = report_at.zip(every).map(|(at, every)| at + every);
            }
        }
    }
    tally.scheduled = schedule.map_or(next, |schedule| schedule.starts);
    Ok(tally.report(start.elapsed()))
}

/// An open loop's starts: evenly spaced at the rate, or, while ramping, spaced so that the
/// rate rises linearly from nothing.
struct Schedule {
    rate: f64,
    ramp: f64,
    /// How many starts the run holds.
    starts: u64,
}

impl Schedule {
    fn new(rate: f64, ramp: Duration, duration: Duration, limit: u64) -> Self {
        let (ramp, duration) = (ramp.as_secs_f64(), duration.as_secs_f64());
        // Starts due by `t` seconds in: the area under the rate.
        let by = |t: f64| {
            if t < ramp {
                rate * t * t / (2.0 * ramp)
            } else {
                rate * (t - ramp / 2.0)
            }
        };
        // (Less a hair, so that 0.3 s at 10 a second is 3 starts, not 4.)
        let starts = ((by(duration) - 1e-9).ceil().max(1.0) as u64).min(limit);
        Self { rate, ramp, starts }
    }

    /// When start `k` (from 0) is due, from the run's start.
    fn due(&self, k: u64) -> Duration {
        let k = k as f64;
        let seconds = if k < self.rate * self.ramp / 2.0 {
            (2.0 * k * self.ramp / self.rate).sqrt()
        } else {
            k / self.rate + self.ramp / 2.0
        };
        Duration::from_secs_f64(seconds)
    }
}

/// One invocation's end: its latency from its scheduled start (and, streaming, that of its
/// first text), and its reply or error.
struct Ended {
    latency: Duration,
    first_token: Option<Duration>,
    outcome: Result<Reply>,
}

/// Runs one invocation (streamed or not), at most `timeout`: an executor that ignores its
/// context's deadline still ends there. Times it from `scheduled`.
async fn invoke<E: Executor + ?Sized>(
    executor: &E,
    invocation: Invocation,
    streaming: bool,
    scheduled: Instant,
    timeout: Duration,
) -> Ended {
    let mut first_token = None;
    let work = async {
        if !streaming {
            return executor.execute(invocation).await;
        }
        let mut events = executor.stream(invocation).await?;
        while let Some(event) = events.next().await {
            match event? {
                AgentEvent::TextDelta { text } if first_token.is_none() && !text.is_empty() => {
                    first_token = Some(scheduled.elapsed());
                }
                AgentEvent::Done(reply) => return Ok(*reply),
                _ => {}
            }
        }
        Err(Error::unavailable(
            "the event stream ended without an answer",
        ))
    };
    let outcome = match tokio::time::timeout(timeout, work).await {
        Ok(outcome) => outcome,
        Err(_) => Err(Error::timeout(
            "the invocation did not answer by its deadline",
        )),
    };
    Ended {
        latency: scheduled.elapsed(),
        first_token,
        outcome,
    }
}

/// Counts as invocations end.
#[derive(Default)]
struct Tally {
    scheduled: u64,
    succeeded: u64,
    failed: u64,
    missed: u64,
    errors: BTreeMap<String, u64>,
    latency: Histogram,
    first_token: Option<Histogram>,
    tokens: u64,
    cost_usd: f64,
}

impl Tally {
    fn add(&mut self, ended: Ended) {
        let Ended {
            latency,
            first_token,
            outcome,
        } = ended;
        self.latency.record(latency);
        if let Some(first) = first_token {
            self.first_token
                .get_or_insert_with(Histogram::default)
                .record(first);
        }
        match outcome {
            Ok(reply) => {
                self.succeeded += 1;
                self.tokens += reply.usage.input_tokens + reply.usage.output_tokens;
                self.cost_usd += reply.cost_usd;
            }
            Err(error) => {
                self.failed += 1;
                *self.errors.entry(error.code().to_owned()).or_default() += 1;
            }
        }
    }

    fn report(&self, elapsed: Duration) -> LoadReport {
        let seconds = elapsed.as_secs_f64();
        LoadReport {
            elapsed,
            scheduled: self.scheduled,
            succeeded: self.succeeded,
            failed: self.failed,
            missed: self.missed,
            errors: self.errors.clone(),
            throughput: if seconds > 0.0 {
                self.succeeded as f64 / seconds
            } else {
                0.0
            },
            latency: self.latency.summary(),
            first_token: self.first_token.as_ref().map(Histogram::summary),
            tokens: self.tokens,
            cost_usd: self.cost_usd,
        }
    }
}

/// Sub-buckets per power of two: a value is placed within 1/64 (1.6%) of itself.
const SUB_BUCKETS: u64 = 64;
/// Powers of two of microseconds covered: up to about 2^40 µs, 12 days.
const OCTAVES: u64 = 41;

/// Latencies in fixed memory (log-linear buckets of microseconds, as HdrHistogram keeps
/// them), so a long run does not keep every sample.
struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum_us: f64,
    max_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; (SUB_BUCKETS * OCTAVES) as usize],
            total: 0,
            sum_us: 0.0,
            max_us: 0,
        }
    }
}

impl Histogram {
    fn bucket(us: u64) -> usize {
        if us < SUB_BUCKETS {
            return us as usize;
        }
        // The octave above the first, and the top six bits below the leading one.
        let octave = u64::from(63 - us.leading_zeros()) - 5;
        let sub = (us >> (octave - 1)) - SUB_BUCKETS;
        ((octave * SUB_BUCKETS + sub) as usize).min((SUB_BUCKETS * OCTAVES) as usize - 1)
    }

    /// The middle of a bucket, in microseconds.
    fn value(bucket: usize) -> f64 {
        let bucket = bucket as u64;
        if bucket < SUB_BUCKETS {
            return bucket as f64;
        }
        let (octave, sub) = (bucket / SUB_BUCKETS, bucket % SUB_BUCKETS);
        let width = 1u64 << (octave - 1);
        ((SUB_BUCKETS + sub) * width) as f64 + (width as f64 - 1.0) / 2.0
    }

    fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.counts[Self::bucket(us)] += 1;
        self.total += 1;
        self.sum_us += us as f64;
        self.max_us = self.max_us.max(us);
    }

    /// The value at quantile `q` (0..=1), in microseconds.
    fn quantile(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Self::value(bucket).min(self.max_us as f64);
            }
        }
        self.max_us as f64
    }

    fn summary(&self) -> Latency {
        let ms = |us: f64| us / 1000.0;
        Latency {
            p50_ms: ms(self.quantile(0.50)),
            p90_ms: ms(self.quantile(0.90)),
            p99_ms: ms(self.quantile(0.99)),
            max_ms: ms(self.max_us as f64),
            mean_ms: if self.total == 0 {
                0.0
            } else {
                ms(self.sum_us / self.total as f64)
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_two_percent_and_the_max_exact() {
        let mut histogram = Histogram::default();
        for ms in 1..=1000u64 {
            histogram.record(Duration::from_millis(ms));
        }
        let latency = histogram.summary();
        for (got, want) in [
            (latency.p50_ms, 500.0),
            (latency.p90_ms, 900.0),
            (latency.p99_ms, 990.0),
        ] {
            assert!((got - want).abs() / want < 0.02, "{got} against {want}");
        }
        assert_eq!(latency.max_ms, 1000.0);
        assert!((latency.mean_ms - 500.5).abs() < 1e-9);
    }

    #[test]
    fn every_bucket_holds_the_values_placed_in_it() {
        for us in (0..200_000u64).chain([u64::MAX / 2, u64::MAX]) {
            let bucket = Histogram::bucket(us);
            let middle = Histogram::value(bucket);
            if us < 1 << 40 {
                assert!(
                    (middle - us as f64).abs() <= (us as f64 / 64.0).max(0.5),
                    "{us} µs placed at {middle}"
                );
            }
            if us > 0 {
                assert!(
                    bucket >= Histogram::bucket(us - 1),
                    "buckets rise with values"
                );
            }
        }
    }

    #[test]
    fn a_plan_that_cannot_run_is_refused() {
        for plan in [
            LoadPlan::rate(0.0),
            LoadPlan::rate(f64::NAN),
            LoadPlan::rate(-3.0),
            LoadPlan::concurrency(0),
            LoadPlan::concurrency(MAX_CALLERS + 1),
            LoadPlan::rate(10.0).duration(Duration::ZERO),
            LoadPlan::rate(10.0).max_in_flight(0),
            LoadPlan::concurrency(2).timeout(Duration::ZERO),
        ] {
            let error = plan.validate().unwrap_err();
            assert_eq!(error.kind(), crate::ErrorKind::InvalidInput, "{plan:?}");
        }
        assert!(LoadPlan::rate(0.5).validate().is_ok());
    }

    #[test]
    fn limits_name_what_broke() {
        let report = LoadReport {
            scheduled: 100,
            succeeded: 90,
            failed: 8,
            missed: 2,
            errors: BTreeMap::from([("timeout".to_owned(), 8)]),
            latency: Latency {
                p99_ms: 250.0,
                ..Latency::default()
            },
            ..LoadReport::default()
        };
        assert!(report.check(&LoadLimits::new()).is_empty());
        let loose = LoadLimits::new()
            .max_error_rate(0.1)
            .max_p99(Duration::from_millis(300))
            .max_missed_rate(0.05);
        assert!(
            report.check(&loose).is_empty(),
            "{:?}",
            report.check(&loose)
        );
        let tight = LoadLimits::new()
            .max_error_rate(0.05)
            .max_p99(Duration::from_millis(200))
            .max_missed_rate(0.01);
        let broken = report.check(&tight);
        assert_eq!(broken.len(), 3, "{broken:?}");
        assert!(broken[0].contains("8 of 98 failed") && broken[0].contains("timeout"));
        assert!(broken[1].starts_with("p99 latency 250.0 ms above 200.0 ms"));
        assert!(broken[2].starts_with("2 of 100 scheduled starts missed"));
        let nothing = LoadReport::default();
        assert_eq!(
            nothing.check(&loose).len(),
            3,
            "a run where nothing ended passes nothing"
        );
    }
}
