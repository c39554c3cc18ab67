//! Run records: one [`RunRecord`] per run, for audit, analytics and replay.

mod jsonl;
mod layer;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
mod replay;

use agentkit_core::executor::Invocation;
use agentkit_core::load::Scenario;
use agentkit_core::tool::ToolCallRecord;
use agentkit_core::{Message, Result, Usage};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use jsonl::JsonlRecordStore;
pub use layer::{RecordLayer, Recorded};
pub use replay::{
    Behaviour, Change, ReplayCase, ReplayOptions, ReplayReport, ReplaySummary, Replaying, replay,
};

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It answered.
    Ok,
    /// It failed; see [`RunRecord::error_code`].
    Error,
}

/// Everything one run did: who asked what, which agent and model answered what, with which
/// tools, at what cost, how fast, and how it ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The request id.
    pub request_id: String,
    /// The tenant, when known.
    pub tenant: Option<String>,
    /// The session, when the run was a session turn.
    pub session_id: Option<String>,
    /// The agent's name.
    pub agent: String,
    /// The agent's version.
    pub agent_version: String,
    /// The model that answered (empty when the run failed before one did).
    pub model: String,
    /// The input messages.
    pub input: Vec<Message>,
    /// The final answer, when there was one.
    pub output: Option<String>,
    /// The tool calls made.
    pub tool_calls: Vec<ToolCallRecord>,
    /// Tokens spent.
    pub usage: Usage,
    /// Cost in US dollars.
    pub cost_usd: f64,
    /// Wall time in milliseconds.
    pub latency_ms: f64,
    /// How it ended.
    pub outcome: Outcome,
    /// The error's code when it failed (`"timeout"`, `"budget_exceeded"`, ...).
    pub error_code: Option<String>,
    /// When it started, in milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// The caller's metadata (the agent's prompt variables), so that a replay asks the same.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The conversation before this turn, as the agent was given it (a session turn's stored
    /// history, after the session's [`HistoryPolicy`](crate::HistoryPolicy)), so that a replay
    /// gives the same. Empty when there was none, or when the layer leaves it out
    /// ([`RecordLayer::without_history`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Message>,
    /// How many messages of history the run was given, kept or not; `None` in records written
    /// before agentkit kept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_len: Option<usize>,
}

impl RunRecord {
    /// What the run was asked, to ask it again: its input, history and prompt variables, in
    /// its tenant, with a fresh request id and no deadline.
    pub fn invocation(&self) -> Invocation {
        let mut invocation = Invocation::new(self.input.clone());
        invocation.history = self.history.clone();
        invocation.metadata = self.metadata.clone();
        if let Some(tenant) = &self.tenant {
            invocation.context = invocation.context.with_tenant(tenant.as_str());
        }
        invocation
    }

    /// The run was given history that this record does not keep, so a replay runs without
    /// it: the layer left it out, or the record predates history being kept (a session turn
    /// with no count).
    pub fn history_missing(&self) -> bool {
        match self.history_len {
            Some(len) => self.history.len() < len,
            None => self.session_id.is_some() && self.history.is_empty(),
        }
    }
}

/// Recorded runs as a load [`Scenario`]: each invocation asks what a recorded run asked
/// ([`RunRecord::invocation`]), the records in turn, so staging gets production's shape of
/// traffic (its prompts, history lengths, tenants and prompt variables).
///
/// ```
/// use agentkit_core::load::Scenario;
/// use agentkit_store::RecordedTraffic;
///
/// let traffic = RecordedTraffic::new(Vec::new());
/// assert!(traffic.is_empty());
/// ```
#[derive(Clone, Debug)]
pub struct RecordedTraffic {
    records: Vec<RunRecord>,
}

impl RecordedTraffic {
    /// The records, asked again in this order.
    pub fn new(records: Vec<RunRecord>) -> Self {
        Self { records }
    }

    /// Whether there is no record (every invocation then asks an empty message, which
    /// agents refuse).
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

impl Scenario for RecordedTraffic {
    fn invocation(&self, index: u64) -> Invocation {
        match self.records.len() {
            0 => Invocation::default(),
            n => self.records[(index % n as u64) as usize].invocation(),
        }
    }
}

/// Where run records go.
///
/// ```
/// use agentkit_store::{JsonlRecordStore, RecordStore};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let path = std::env::temp_dir().join(format!("records-doc-{}.jsonl", std::process::id()));
/// let store = JsonlRecordStore::open(&path).await?;
/// assert!(store.recent(None, 10).await?.is_empty());
/// # std::fs::remove_file(&path).ok();
/// # Ok::<_, agentkit_core::Error>(())
/// # }).unwrap();
/// ```
#[async_trait]
pub trait RecordStore: Send + Sync {
    /// Appends one record durably.
    async fn append(&self, record: &RunRecord) -> Result<()>;

    /// The most recent `limit` records, newest first, of one agent or of all.
    async fn recent(&self, agent: Option<&str>, limit: usize) -> Result<Vec<RunRecord>>;
}

const _: Option<&dyn RecordStore> = None;

#[async_trait]
impl<S: RecordStore + ?Sized> RecordStore for std::sync::Arc<S> {
    async fn append(&self, record: &RunRecord) -> Result<()> {
        (**self).append(record).await
    }

    async fn recent(&self, agent: Option<&str>, limit: usize) -> Result<Vec<RunRecord>> {
        (**self).recent(agent, limit).await
    }
}
