//! [`Canary`]: a candidate version of an agent takes a sticky share of the traffic, and is
//! rolled back by itself when it breaks its guard.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::Either;

use crate::executor::{AgentEvent, EventStream, Executor, Invocation, Reply};
use crate::{Context, ErrorKind, Result, stable_hash};

/// What keeps a caller on one side of a canary: the same key, the same side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sticky {
    /// The session id (then the user, the tenant, the request): a conversation never switches
    /// versions mid-way.
    #[default]
    Session,
    /// The user id (then the tenant, the request).
    User,
    /// The tenant (then the request).
    Tenant,
}

impl Sticky {
    fn key(self, cx: &Context) -> &str {
        let session = || cx.session_id();
        let user = || cx.user();
        let tenant = || cx.tenant();
        let chosen = match self {
            Self::Session => session().or_else(user).or_else(tenant),
            Self::User => user().or_else(tenant),
            Self::Tenant => tenant(),
        };
        chosen.unwrap_or_else(|| cx.request_id())
    }
}

/// When the candidate is rolled back: over its last `window` requests (once it has that
/// many), an error rate, a mean latency or a mean cost above the limit.
#[derive(Clone, Copy, Debug)]
pub struct CanaryGuard {
    /// How many of the candidate's latest requests are judged.
    pub window: usize,
    /// The highest share of those that may fail for the candidate's own reasons (0.0-1.0).
    pub max_error_rate: f64,
    /// The highest mean latency.
    pub max_mean_latency: Option<Duration>,
    /// The highest mean cost per request, in US dollars.
    pub max_mean_cost_usd: Option<f64>,
}

impl Default for CanaryGuard {
    fn default() -> Self {
        Self {
            window: 50,
            max_error_rate: 0.1,
            max_mean_latency: None,
            max_mean_cost_usd: None,
        }
    }
}

/// Where a canary stands.
#[derive(Clone, Debug, PartialEq)]
pub enum CanaryStatus {
    /// The candidate takes its share.
    Active,
    /// The candidate broke its guard; all traffic goes to the stable version.
    RolledBack {
        /// Which limit it broke, with the figures.
        reason: String,
    },
}

/// One finished candidate request.
#[derive(Clone, Copy)]
struct Outcome {
    failed: bool,
    latency: Duration,
    cost_usd: f64,
}

struct State {
    /// The candidate's share of callers, 0-100.
    percent: f64,
    recent: VecDeque<Outcome>,
    status: CanaryStatus,
}

struct Shared {
    sticky: Sticky,
    guard: CanaryGuard,
    state: Mutex<State>,
}

impl Clone for Shared {
    fn clone(&self) -> Self {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Self {
            sticky: self.sticky,
            guard: self.guard,
            state: Mutex::new(State {
                percent: state.percent,
                recent: state.recent.clone(),
                status: state.status.clone(),
            }),
        }
    }
}

impl Shared {
    fn record(&self, outcome: Outcome) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.status != CanaryStatus::Active {
            return;
        }
        state.recent.push_back(outcome);
        if state.recent.len() > self.guard.window {
            state.recent.pop_front();
        }
        if state.recent.len() < self.guard.window {
            return;
        }
        let n = state.recent.len() as f64;
        let failed = state.recent.iter().filter(|o| o.failed).count() as f64;
        let latency = state.recent.iter().map(|o| o.latency).sum::<Duration>() / n as u32;
        let cost = state.recent.iter().map(|o| o.cost_usd).sum::<f64>() / n;
        let broken = if failed / n > self.guard.max_error_rate {
            Some(format!(
                "error rate {:.0}% over its last {n} requests (limit {:.0}%)",
                failed / n * 100.0,
                self.guard.max_error_rate * 100.0
            ))
        } else if let Some(max) = self.guard.max_mean_latency.filter(|max| latency > *max) {
            Some(format!(
                "mean latency {} ms over its last {n} requests (limit {} ms)",
                latency.as_millis(),
                max.as_millis()
            ))
        } else {
            self.guard
                .max_mean_cost_usd
                .filter(|max| cost > *max)
                .map(|max| {
                    format!("mean cost ${cost:.6} over its last {n} requests (limit ${max:.6})")
                })
        };
        if let Some(reason) = broken {
            tracing::error!(%reason, "canary rolled back");
            state.status = CanaryStatus::RolledBack { reason };
        }
    }

    fn to_candidate(&self, cx: &Context) -> bool {
        let percent = {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if state.status != CanaryStatus::Active {
                return false;
            }
            state.percent
        };
        let bucket = (stable_hash(self.sticky.key(cx).bytes()) % 10_000) as f64;
        bucket < percent * 100.0
    }
}

/// Whether an error is the executor's doing (not the caller's, nor a budget the caller set):
/// what a canary's guard and a health watch count as failures.
pub(super) fn counts_against(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::Internal
            | ErrorKind::Unavailable
            | ErrorKind::Timeout
            | ErrorKind::StepLimit
            | ErrorKind::InvalidOutput
    )
}

/// Sends a sticky `percent` of callers (by [`Sticky`] key: a session stays on one version) to
/// `candidate` and the rest to `stable`, and rolls the candidate back by itself when it breaks
/// its [`CanaryGuard`] (until [`reset`](Self::reset)); [`status`](Self::status) says which.
/// [`set_percent`](Self::set_percent) ramps the share while running. Only errors that are the
/// candidate's doing count against it (not bad input, auth, rate limits or cancellation).
/// Cheap to clone; clones share the judgement.
///
/// ```
/// use agentkit_core::executor::{Canary, CanaryGuard, CanaryStatus};
/// use agentkit_core::model::ScriptedModel;
/// use agentkit_core::Agent;
///
/// let stable = Agent::builder().model(ScriptedModel::demo()).build()?;
/// let candidate = Agent::builder().model(ScriptedModel::demo()).build()?;
/// let canary = Canary::new(stable, candidate, 5.0).with_guard(CanaryGuard {
///     max_error_rate: 0.05,
///     ..CanaryGuard::default()
/// });
/// assert_eq!(canary.status(), CanaryStatus::Active);
/// # Ok::<_, agentkit_core::Error>(())
/// ```
#[derive(Clone)]
pub struct Canary<S, C> {
    stable: S,
    candidate: C,
    shared: Arc<Shared>,
}

impl<S, C> std::fmt::Debug for Canary<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Canary")
            .field("percent", &self.percent())
            .field("sticky", &self.shared.sticky)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl<S, C> Canary<S, C> {
    /// `percent` (0-100) of callers to `candidate`, sticky by session, with the default guard.
    pub fn new(stable: S, candidate: C, percent: f64) -> Self {
        Self {
            stable,
            candidate,
            shared: Arc::new(Shared {
                sticky: Sticky::default(),
                guard: CanaryGuard::default(),
                state: Mutex::new(State {
                    percent: percent.clamp(0.0, 100.0),
                    recent: VecDeque::new(),
                    status: CanaryStatus::Active,
                }),
            }),
        }
    }

    /// The settings to change. A canary configured after it was cloned gets settings, and
    /// from then on a judgement, of its own (starting from a copy of the shared state).
    fn edit(&mut self) -> &mut Shared {
        Arc::make_mut(&mut self.shared)
    }

    /// What keeps a caller on one side (default: the session).
    #[must_use]
    pub fn sticky_by(mut self, sticky: Sticky) -> Self {
        self.edit().sticky = sticky;
        self
    }

    /// When to roll the candidate back.
    #[must_use]
    pub fn with_guard(mut self, guard: CanaryGuard) -> Self {
        self.edit().guard = CanaryGuard {
            window: guard.window.max(1),
            ..guard
        };
        self
    }

    /// Active, or rolled back and why.
    pub fn status(&self) -> CanaryStatus {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .status
            .clone()
    }

    /// Ramps the candidate's share to `percent` (0-100) while running, for every clone. The
    /// buckets are stable, so raising the share keeps every caller already on the candidate
    /// there and lowering it moves only callers off it. An
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind) for a share outside 0-100.
    pub fn set_percent(&self, percent: f64) -> Result<()> {
        if !(0.0..=100.0).contains(&percent) {
            return Err(crate::Error::invalid_input(format!(
                "a canary's share must be between 0 and 100, not {percent}"
            )));
        }
        self.shared
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .percent = percent;
        Ok(())
    }

    /// The candidate's share of callers now, 0-100.
    pub fn percent(&self) -> f64 {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .percent
    }

    /// Puts a rolled-back candidate back in service with its share and a fresh window (after
    /// the cause was found elsewhere, say a dependency's outage); an active one just forgets
    /// the requests judged so far.
    pub fn reset(&self) {
        let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        state.recent.clear();
        if let CanaryStatus::RolledBack { reason } = &state.status {
            tracing::warn!(%reason, "canary put back in service");
        }
        state.status = CanaryStatus::Active;
    }

    /// Whether the caller of `cx` is on the candidate now.
    pub fn routes_to_candidate(&self, cx: &Context) -> bool {
        self.shared.to_candidate(cx)
    }
}

impl<S: Executor, C: Executor> Executor for Canary<S, C> {
    fn execute(&self, invocation: Invocation) -> impl Future<Output = Result<Reply>> + Send {
        let candidate = self.shared.to_candidate(&invocation.context);
        let shared = self.shared.clone();
        let run = if candidate {
            Either::Right(self.candidate.execute(invocation))
        } else {
            Either::Left(self.stable.execute(invocation))
        };
        async move {
            let run = match run {
                Either::Left(stable) => return stable.await,
                Either::Right(candidate) => candidate,
            };
            let started = Instant::now();
            let result = run.await;
            shared.record(Outcome {
                failed: result.as_ref().is_err_and(|e| counts_against(e.kind())),
                latency: started.elapsed(),
                cost_usd: result.as_ref().map_or(0.0, |r| r.cost_usd),
            });
            result
        }
    }

    fn stream(&self, invocation: Invocation) -> impl Future<Output = Result<EventStream>> + Send {
        let candidate = self.shared.to_candidate(&invocation.context);
        let shared = self.shared.clone();
        let open = if candidate {
            Either::Right(self.candidate.stream(invocation))
        } else {
            Either::Left(self.stable.stream(invocation))
        };
        async move {
            let open = match open {
                Either::Left(stable) => return stable.await,
                Either::Right(candidate) => candidate,
            };
            let started = Instant::now();
            let events = match open.await {
                Ok(events) => events,
                Err(error) => {
                    shared.record(Outcome {
                        failed: counts_against(error.kind()),
                        latency: started.elapsed(),
                        cost_usd: 0.0,
                    });
                    return Err(error);
                }
            };
            // Judged when the stream ends: by its last event.
            let judged = events.map(move |event| {
                match &event {
                    Ok(AgentEvent::Done(reply)) => shared.record(Outcome {
                        failed: false,
                        latency: started.elapsed(),
                        cost_usd: reply.cost_usd,
                    }),
                    Err(error) => shared.record(Outcome {
                        failed: counts_against(error.kind()),
                        latency: started.elapsed(),
                        cost_usd: 0.0,
                    }),
                    Ok(_) => {}
                }
                event
            });
            Ok(judged.boxed())
        }
    }
}
