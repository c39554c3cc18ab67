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

mod driver;
mod histogram;
mod report;
mod scenario;

use std::time::Duration;

use crate::{Error, Result};
pub use driver::{run, run_reporting};
pub use report::{Latency, LoadLimits, LoadReport};
pub use scenario::{Prompts, Scenario};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
