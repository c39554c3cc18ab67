//! The generator itself: starts invocations as the plan says and counts how they end.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;

use super::histogram::Histogram;
use super::{LoadPlan, LoadReport, Pace, Scenario};
use crate::executor::{AgentEvent, Executor, Invocation, Reply};
use crate::{Error, Result};

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
