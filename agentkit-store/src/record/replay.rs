//! Replay: recorded inputs run again against a candidate (a new prompt, model or agent
//! version), and how its behaviour differs from what was recorded, before it ships.

use std::time::{Duration, Instant};

use agentkit_core::executor::Executor;
use agentkit_core::generate_id;
use futures::StreamExt;
use serde::Serialize;

use super::{Outcome, RunRecord};

/// In the context of a replayed run, naming the request it replays. Replays run real tools:
/// a tool with side effects should look for this (`cx.extension::<Replaying>()`) and not act,
/// or the candidate should be built with tools that cannot (a staging account, stubs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replaying {
    /// The request id of the recorded run.
    pub of: String,
}

/// How a replay runs.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// Runs at once (default 4).
    pub concurrency: usize,
    /// Deadline of each replayed run (default 60 s).
    pub timeout: Duration,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self {
            concurrency: 4,
            timeout: Duration::from_secs(60),
        }
    }
}

/// What one run did, as far as a replay compares it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Behaviour {
    /// How it ended.
    pub outcome: Outcome,
    /// The error's code when it failed.
    pub error_code: Option<String>,
    /// The final answer.
    pub output: Option<String>,
    /// The tools called, in order.
    pub tools: Vec<String>,
    /// Input and output tokens.
    pub tokens: u64,
    /// Cost in US dollars.
    pub cost_usd: f64,
    /// Wall time in milliseconds.
    pub latency_ms: f64,
}

impl Behaviour {
    fn of(record: &RunRecord) -> Self {
        Self {
            outcome: record.outcome,
            error_code: record.error_code.clone(),
            output: record.output.clone(),
            tools: record.tool_calls.iter().map(|t| t.name.clone()).collect(),
            tokens: record.usage.input_tokens + record.usage.output_tokens,
            cost_usd: record.cost_usd,
            latency_ms: record.latency_ms,
        }
    }
}

/// A difference between a recorded run and its replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// It ended differently: it answers where it failed, fails where it answered, or fails
    /// with another error.
    Outcome,
    /// It answered something else (compared with whitespace runs collapsed).
    Output,
    /// It called other tools, or the same in another order.
    Tools,
}

/// One recorded run and its replay.
#[derive(Clone, Debug, Serialize)]
pub struct ReplayCase {
    /// The recorded run's request id.
    pub request_id: String,
    /// The recorded run was a session turn. It is replayed with the history its record keeps
    /// (the candidate is given it as [`Invocation::history`](agentkit_core::executor::Invocation::history); the session store is not read
    /// or written).
    pub session_turn: bool,
    /// The recorded run was given history its record does not keep
    /// ([`RunRecord::history_missing`]), so it was replayed without it: differences may
    /// come from that.
    pub history_missing: bool,
    /// What the recorded run did.
    pub before: Behaviour,
    /// What the candidate did.
    pub after: Behaviour,
    /// How they differ; empty when they behaved alike.
    pub changes: Vec<Change>,
}

impl ReplayCase {
    /// It answered when recorded and fails now.
    pub fn is_regression(&self) -> bool {
        self.before.outcome == Outcome::Ok && self.after.outcome == Outcome::Error
    }
}

/// Every case of a replay, in the order of the records given.
#[derive(Clone, Debug, Serialize)]
pub struct ReplayReport {
    /// One per record replayed.
    pub cases: Vec<ReplayCase>,
}

/// A replay in figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReplaySummary {
    /// Runs replayed.
    pub runs: usize,
    /// Runs that behaved as recorded.
    pub unchanged: usize,
    /// Runs whose answer differs.
    pub output_changed: usize,
    /// Runs whose tool calls differ.
    pub tools_changed: usize,
    /// Runs that answered when recorded and fail now.
    pub regressions: usize,
    /// Runs that failed when recorded and answer now.
    pub fixes: usize,
    /// Cost of all recorded runs and of all replays, US dollars.
    pub cost_usd: (f64, f64),
    /// Tokens of all recorded runs and of all replays.
    pub tokens: (u64, u64),
    /// Median latency of the recorded runs and of the replays, milliseconds.
    pub p50_latency_ms: (f64, f64),
}

impl ReplayReport {
    /// The cases that behaved differently.
    pub fn changed(&self) -> impl Iterator<Item = &ReplayCase> {
        self.cases.iter().filter(|c| !c.changes.is_empty())
    }

    /// The figures.
    pub fn summary(&self) -> ReplaySummary {
        let count = |f: &dyn Fn(&ReplayCase) -> bool| self.cases.iter().filter(|c| f(c)).count();
        let sum = |f: &dyn Fn(&Behaviour) -> f64| {
            let before: f64 = self.cases.iter().map(|c| f(&c.before)).sum();
            let after: f64 = self.cases.iter().map(|c| f(&c.after)).sum();
            (before, after)
        };
        let tokens = |f: &dyn Fn(&ReplayCase) -> &Behaviour| {
            self.cases.iter().map(|c| f(c).tokens).sum::<u64>()
        };
        let p50 = |f: &dyn Fn(&ReplayCase) -> f64| {
            let mut all: Vec<f64> = self.cases.iter().map(f).collect();
            all.sort_by(f64::total_cmp);
            all.get(all.len() / 2).copied().unwrap_or_default()
        };
        ReplaySummary {
            runs: self.cases.len(),
            unchanged: count(&|c| c.changes.is_empty()),
            output_changed: count(&|c| c.changes.contains(&Change::Output)),
            tools_changed: count(&|c| c.changes.contains(&Change::Tools)),
            regressions: count(&ReplayCase::is_regression),
            fixes: count(&|c| c.before.outcome == Outcome::Error && c.after.outcome == Outcome::Ok),
            cost_usd: sum(&|b| b.cost_usd),
            tokens: (tokens(&|c| &c.before), tokens(&|c| &c.after)),
            p50_latency_ms: (p50(&|c| c.before.latency_ms), p50(&|c| c.after.latency_ms)),
        }
    }
}

/// Runs the input of every record against `candidate` (at most `options.concurrency` at
/// once, each in the recorded tenant, with [`Replaying`] in its context) and compares what it
/// does with what was recorded: outcome, answer, tools, tokens, cost and latency.
///
/// Each run is given the recorded input, prompt variables and history (the conversation
/// before a session turn, when the record keeps it: [`ReplayCase::history_missing`]).
pub async fn replay<E: Executor>(
    records: &[RunRecord],
    candidate: &E,
    options: &ReplayOptions,
) -> ReplayReport {
    let cases = futures::stream::iter(records)
        .map(|record| replay_one(record, candidate, options.timeout))
        .buffered(options.concurrency.max(1))
        .collect()
        .await;
    ReplayReport { cases }
}

async fn replay_one<E: Executor>(
    record: &RunRecord,
    candidate: &E,
    timeout: Duration,
) -> ReplayCase {
    let mut invocation = record.invocation();
    invocation.context = invocation
        .context
        .with_request_id(format!("replay-{}", generate_id()))
        .with_timeout(timeout)
        .with_extension(Replaying {
            of: record.request_id.clone(),
        });
    let started = Instant::now();
    let outcome = candidate.execute(invocation).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let after = match outcome {
        Ok(reply) => Behaviour {
            outcome: Outcome::Ok,
            error_code: None,
            output: Some(reply.output),
            tools: reply.tool_calls.into_iter().map(|t| t.name).collect(),
            tokens: reply.usage.input_tokens + reply.usage.output_tokens,
            cost_usd: reply.cost_usd,
            latency_ms,
        },
        Err(error) => Behaviour {
            outcome: Outcome::Error,
            error_code: Some(error.code().to_owned()),
            output: None,
            tools: Vec::new(),
            tokens: 0,
            cost_usd: 0.0,
            latency_ms,
        },
    };
    let before = Behaviour::of(record);
    let mut changes = Vec::new();
    if (before.outcome, &before.error_code) != (after.outcome, &after.error_code) {
        changes.push(Change::Outcome);
    }
    let words = |output: &Option<String>| {
        output
            .as_deref()
            .map(|text| text.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    if before.outcome == Outcome::Ok
        && after.outcome == Outcome::Ok
        && words(&before.output) != words(&after.output)
    {
        changes.push(Change::Output);
    }
    if before.tools != after.tools {
        changes.push(Change::Tools);
    }
    ReplayCase {
        request_id: record.request_id.clone(),
        session_turn: record.session_id.is_some(),
        history_missing: record.history_missing(),
        before,
        after,
        changes,
    }
}
