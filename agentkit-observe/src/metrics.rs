//! Prometheus metrics (prometheus-client): request counts by outcome, latency, GenAI token usage
//! and operation duration, tool calls, cost, in-flight requests, queue depth, session conflicts,
//! lease waits and replays, pool members and resends.
//! Labels stay low-cardinality: agent, model, tool, outcome, token type, queue; never a
//! request, session or user id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{Atomic, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::background::Queue;
use crate::fnv::FnvBuild;
use crate::observer::Records;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AgentOutcome {
    pub(crate) agent: String,
    pub(crate) outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AgentLabel {
    pub(crate) agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TokenLabels {
    pub(crate) agent: String,
    pub(crate) model: String,
    pub(crate) token_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OperationLabels {
    pub(crate) model: String,
    pub(crate) operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ToolLabels {
    pub(crate) tool: String,
    pub(crate) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CostLabels {
    pub(crate) agent: String,
    pub(crate) model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct QueueLabel {
    pub(crate) queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PoolLabels {
    pub(crate) pool: String,
    pub(crate) member: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PoolLabel {
    pub(crate) pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AlertLabels {
    pub(crate) watch: String,
    pub(crate) rule: &'static str,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    ]
    .into_iter()
}

fn token_buckets() -> impl Iterator<Item = f64> {
    [
        1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0,
    ]
    .into_iter()
}

/// The metric families, registered in one registry.
pub(crate) struct Metrics {
    pub(crate) registry: Registry,
    pub(crate) requests: Family<AgentOutcome, Counter>,
    pub(crate) duration: Family<AgentLabel, Histogram>,
    pub(crate) tokens: Family<TokenLabels, Histogram>,
    pub(crate) operations: Family<OperationLabels, Histogram>,
    pub(crate) tool_calls: Family<ToolLabels, Counter>,
    pub(crate) cost: Family<CostLabels, Counter<f64, AtomicU64>>,
    pub(crate) inflight: Family<AgentLabel, InflightGauge>,
    pub(crate) queue_depth: Family<QueueLabel, Gauge>,
    pub(crate) pool_members: Family<PoolLabels, Gauge>,
    pub(crate) alerts: Family<AlertLabels, Gauge>,
    pub(crate) session_conflicts: Counter,
    pub(crate) session_lease_waits: Histogram,
    pub(crate) session_replays: Counter,
    pub(crate) pool_resends: Family<PoolLabel, Counter>,
    /// Records the telemetry thread never got (it was behind or stopped).
    telemetry_dropped: Counter,
    agents: RwLock<HashMap<String, Arc<AgentMetrics>, FnvBuild>>,
    tools: RwLock<HashMap<String, Arc<ToolMetrics>, FnvBuild>>,
}

/// The in-flight gauge: the one metric the request path writes (up at a run's start, down
/// at its end), so its value and its handle's count sit on cache lines of their own. Beside
/// a metric the telemetry thread updates, or in the agent's handles that thread reads, every
/// write would take the line back from the other core.
pub(crate) type InflightGauge = Gauge<i64, Padded>;

/// An `AtomicI64` alone on its cache line (128 bytes: x86 fetches lines in pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded(AtomicI64);

impl Atomic<i64> for Padded {
    fn inc(&self) -> i64 {
        self.inc_by(1)
    }

    fn inc_by(&self, v: i64) -> i64 {
        self.0.fetch_add(v, Ordering::Relaxed)
    }

    fn dec(&self) -> i64 {
        self.dec_by(1)
    }

    fn dec_by(&self, v: i64) -> i64 {
        self.0.fetch_sub(v, Ordering::Relaxed)
    }

    fn set(&self, v: i64) -> i64 {
        self.0.swap(v, Ordering::Relaxed)
    }

    fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One agent's metric handles, found once per run rather than by label on every update
/// (each lookup by label allocates its label strings and hashes them under a lock).
pub(crate) struct AgentMetrics {
    name: String,
    pub(crate) inflight: InflightGauge,
    pub(crate) ok: Counter,
    pub(crate) duration: Histogram,
    models: RwLock<HashMap<String, Arc<ModelMetrics>, FnvBuild>>,
}

/// The handles of one model as used by one agent.
pub(crate) struct ModelMetrics {
    pub(crate) input_tokens: Histogram,
    pub(crate) output_tokens: Histogram,
    pub(crate) chat_duration: Histogram,
    pub(crate) cost: Counter<f64, AtomicU64>,
}

/// A tool's call counters: ok and error.
pub(crate) struct ToolMetrics {
    pub(crate) ok: Counter,
    pub(crate) error: Counter,
}

/// Most distinct values of one label the metrics take (per agent, for models); further
/// values share [`OVERFLOW`]. Tool and model names come from the model and the provider: a
/// model that calls tools that do not exist, or a prompt that makes it, must not grow the
/// registry (and every scrape) without end.
pub(crate) const MAX_LABEL_VALUES: usize = 128;

/// The label value that stands for the values past [`MAX_LABEL_VALUES`].
pub(crate) const OVERFLOW: &str = "_other";

/// The cached value of `key`, made by `make` on first use; past [`MAX_LABEL_VALUES`] keys,
/// the value of [`OVERFLOW`].
fn cached<T>(
    map: &RwLock<HashMap<String, Arc<T>, FnvBuild>>,
    key: &str,
    make: impl FnOnce(&str) -> T,
) -> Arc<T> {
    if let Some(found) = map.read().unwrap_or_else(|p| p.into_inner()).get(key) {
        return found.clone();
    }
    let mut map = map.write().unwrap_or_else(|p| p.into_inner());
    let key = if map.len() >= MAX_LABEL_VALUES && !map.contains_key(key) {
        OVERFLOW
    } else {
        key
    };
    map.entry(key.to_owned())
        .or_insert_with(|| Arc::new(make(key)))
        .clone()
}

impl Metrics {
    /// The handles of `agent`'s metrics.
    pub(crate) fn agent(&self, agent: &str) -> Arc<AgentMetrics> {
        cached(&self.agents, agent, |agent| {
            let label = AgentLabel {
                agent: agent.to_owned(),
            };
            AgentMetrics {
                name: agent.to_owned(),
                inflight: self.inflight.get_or_create(&label).clone(),
                ok: self
                    .requests
                    .get_or_create(&AgentOutcome {
                        agent: agent.to_owned(),
                        outcome: "ok".to_owned(),
                    })
                    .clone(),
                duration: self.duration.get_or_create(&label).clone(),
                models: RwLock::default(),
            }
        })
    }

    /// The handles of `model` as used by `agent`.
    pub(crate) fn model(&self, agent: &AgentMetrics, model: &str) -> Arc<ModelMetrics> {
        cached(&agent.models, model, |model| {
            let tokens = |token_type| {
                self.tokens
                    .get_or_create(&TokenLabels {
                        agent: agent.name.clone(),
                        model: model.to_owned(),
                        token_type,
                    })
                    .clone()
            };
            ModelMetrics {
                input_tokens: tokens("input"),
                output_tokens: tokens("output"),
                chat_duration: self
                    .operations
                    .get_or_create(&OperationLabels {
                        model: model.to_owned(),
                        operation: "chat",
                    })
                    .clone(),
                cost: self
                    .cost
                    .get_or_create(&CostLabels {
                        agent: agent.name.clone(),
                        model: model.to_owned(),
                    })
                    .clone(),
            }
        })
    }

    /// The counters of `tool`.
    pub(crate) fn tool(&self, tool: &str) -> Arc<ToolMetrics> {
        cached(&self.tools, tool, |tool| {
            let counter = |outcome| {
                self.tool_calls
                    .get_or_create(&ToolLabels {
                        tool: tool.to_owned(),
                        outcome,
                    })
                    .clone()
            };
            ToolMetrics {
                ok: counter("ok"),
                error: counter("error"),
            }
        })
    }

    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<AgentOutcome, Counter>::default();
        registry.register(
            "agentkit_requests",
            "Agent runs by outcome (ok or the error code)",
            requests.clone(),
        );
        let duration = Family::<AgentLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register_with_unit(
            "agentkit_request_duration",
            "Wall time of agent runs",
            Unit::Seconds,
            duration.clone(),
        );
        let tokens = Family::<TokenLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(token_buckets())
        });
        registry.register(
            "gen_ai_client_token_usage",
            "Tokens per model call, by type (input, output)",
            tokens.clone(),
        );
        let operations = Family::<OperationLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register_with_unit(
            "gen_ai_client_operation_duration",
            "Duration of model calls",
            Unit::Seconds,
            operations.clone(),
        );
        let tool_calls = Family::<ToolLabels, Counter>::default();
        registry.register(
            "agentkit_tool_calls",
            "Tool calls by outcome (ok or error)",
            tool_calls.clone(),
        );
        let cost = Family::<CostLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "agentkit_cost_usd",
            "Cost of agent runs in US dollars",
            cost.clone(),
        );
        let inflight = Family::<AgentLabel, InflightGauge>::default();
        registry.register(
            "agentkit_inflight_requests",
            "Agent runs in progress",
            inflight.clone(),
        );
        let queue_depth = Family::<QueueLabel, Gauge>::default();
        registry.register(
            "agentkit_queue_depth",
            "Jobs waiting in a queue",
            queue_depth.clone(),
        );
        let pool_members = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "agentkit_pool_member_up",
            "1 while a pool's member takes its sessions, 0 while it is down",
            pool_members.clone(),
        );
        let alerts = Family::<AlertLabels, Gauge>::default();
        registry.register(
            "agentkit_alerts_firing",
            "1 while a health watch's rule (error_burst, latency_spike, token_surge) fires",
            alerts.clone(),
        );
        let session_conflicts = Counter::default();
        registry.register(
            "agentkit_session_conflicts",
            "Session saves that lost a compare-and-set race",
            session_conflicts.clone(),
        );
        let session_lease_waits = Histogram::new(latency_buckets());
        registry.register(
            "agentkit_session_lease_wait_seconds",
            "How long session turns waited for another instance's lease on their session",
            session_lease_waits.clone(),
        );
        let session_replays = Counter::default();
        registry.register(
            "agentkit_session_replays",
            "Keyed session turns answered from their session without running (retries)",
            session_replays.clone(),
        );
        let pool_resends = Family::<PoolLabel, Counter>::default();
        registry.register(
            "agentkit_pool_resends",
            "Keyed turns a pool sent on to another member after theirs could not be reached",
            pool_resends.clone(),
        );
        let telemetry_dropped = Counter::default();
        registry.register(
            "agentkit_telemetry_dropped",
            "Spans, run logs and metric observations dropped because the telemetry thread was behind",
            telemetry_dropped.clone(),
        );
        Self {
            registry,
            requests,
            duration,
            tokens,
            operations,
            tool_calls,
            cost,
            inflight,
            queue_depth,
            pool_members,
            alerts,
            session_conflicts,
            session_lease_waits,
            session_replays,
            pool_resends,
            telemetry_dropped,
            agents: RwLock::default(),
            tools: RwLock::default(),
        }
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// A handle on the metrics, for serving `/metrics` (see [`crate::Telemetry::metrics`]).
#[derive(Clone)]
pub struct MetricsHandle {
    pub(crate) metrics: Arc<Metrics>,
    /// Runs and calls counted on the telemetry thread, taken in before rendering.
    pub(crate) pending: Option<Queue<Records>>,
}

impl std::fmt::Debug for MetricsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsHandle")
    }
}

impl MetricsHandle {
    /// The Prometheus text exposition of every metric. Runs and calls that ended before the
    /// call are counted first (the telemetry thread counts them; this waits for it, at most
    /// a second).
    pub fn render(&self) -> String {
        if let Some(pending) = &self.pending {
            if !pending.sync(Duration::from_secs(1)) {
                tracing::warn!(
                    target: "agentkit::telemetry",
                    "the telemetry thread is behind; /metrics may miss the latest runs"
                );
            }
            // Renders may race; the count only ever rises to the queue's.
            self.metrics
                .telemetry_dropped
                .inner()
                .fetch_max(pending.dropped(), std::sync::atomic::Ordering::Relaxed);
        }
        self.metrics.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_names_past_the_limit_share_one_series() {
        let metrics = Metrics::new();
        for i in 0..MAX_LABEL_VALUES + 100 {
            metrics.tool(&format!("made_up_{i}")).error.inc();
        }
        metrics.tool("made_up_0").ok.inc();
        let text = metrics.render();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("agentkit_tool_calls_total{") && l.contains("error"))
            .collect();
        assert_eq!(series.len(), MAX_LABEL_VALUES + 1, "{text}");
        let overflow = series
            .iter()
            .find(|l| l.contains("tool=\"_other\""))
            .expect("an overflow series");
        assert!(overflow.ends_with(" 100"), "{overflow}");
        // A name seen before the limit keeps its own series.
        assert!(
            text.lines().any(|l| l.contains("tool=\"made_up_0\"")
                && l.contains("outcome=\"ok\"")
                && l.ends_with(" 1")),
            "{text}"
        );
    }
}
