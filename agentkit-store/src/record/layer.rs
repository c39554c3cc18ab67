//! [`Recorded`]: writes a [`RunRecord`] for every invocation of an executor.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use agentkit_core::executor::{Executor, Invocation, Reply};
use agentkit_core::{Result, Usage};

use super::{Outcome, RecordStore, RunRecord};

/// Wraps an executor and appends a [`RunRecord`] for each invocation, success or failure. A
/// record that cannot be written is logged; it does not fail the caller's request.
#[derive(Clone)]
pub struct Recorded<E> {
    inner: E,
    store: Arc<dyn RecordStore>,
    agent: Arc<str>,
    version: Arc<str>,
    history: bool,
}

impl<E> std::fmt::Debug for Recorded<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorded")
            .field("agent", &self.agent)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Applies [`Recorded`]; composes with `tower::ServiceBuilder`.
///
/// Placed under a [`SessionAgent`](crate::SessionAgent) (the layer wraps the agent, the
/// session agent wraps the layer), each record keeps the history the turn was given, so that
/// [`replay`](crate::replay) runs session turns as they ran. A record then grows with its
/// conversation; [`without_history`](Self::without_history) keeps only the count.
#[derive(Clone)]
pub struct RecordLayer {
    store: Arc<dyn RecordStore>,
    agent: Arc<str>,
    version: Arc<str>,
    history: bool,
}

impl std::fmt::Debug for RecordLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordLayer")
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

impl RecordLayer {
    /// Records runs of the agent `agent` at `version` into `store`.
    pub fn new(store: Arc<dyn RecordStore>, agent: &str, version: &str) -> Self {
        Self {
            store,
            agent: agent.into(),
            version: version.into(),
            history: true,
        }
    }

    /// Records how many messages of history each run was given, not the messages: smaller
    /// records, but session turns replay without their conversation
    /// ([`RunRecord::history_missing`]).
    pub fn without_history(mut self) -> Self {
        self.history = false;
        self
    }
}

impl<E> tower::Layer<E> for RecordLayer {
    type Service = Recorded<E>;

    fn layer(&self, inner: E) -> Recorded<E> {
        Recorded {
            inner,
            store: self.store.clone(),
            agent: self.agent.clone(),
            version: self.version.clone(),
            history: self.history,
        }
    }
}

impl<E: Executor> Executor for Recorded<E> {
    async fn execute(&self, invocation: Invocation) -> Result<Reply> {
        let started = std::time::Instant::now();
        let started_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let cx = invocation.context.clone();
        let input = invocation.input.clone();
        let metadata = invocation.metadata.clone();
        let history_len = invocation.history.len();
        let history = if self.history {
            invocation.history.clone()
        } else {
            Vec::new()
        };
        let outcome = self.inner.execute(invocation).await;
        let mut record = RunRecord {
            request_id: cx.request_id().to_owned(),
            tenant: cx.tenant().map(str::to_owned),
            session_id: cx.session_id().map(str::to_owned),
            agent: self.agent.to_string(),
            agent_version: self.version.to_string(),
            model: String::new(),
            input,
            output: None,
            tool_calls: Vec::new(),
            usage: Usage::default(),
            cost_usd: 0.0,
            latency_ms: started.elapsed().as_secs_f64() * 1000.0,
            outcome: Outcome::Ok,
            error_code: None,
            started_at_ms,
            metadata,
            history,
            history_len: Some(history_len),
        };
        match &outcome {
            Ok(reply) => {
                record.model.clone_from(&reply.model);
                record.output = Some(reply.output.clone());
                record.tool_calls.clone_from(&reply.tool_calls);
                record.usage = reply.usage;
                record.cost_usd = reply.cost_usd;
            }
            Err(error) => {
                record.outcome = Outcome::Error;
                record.error_code = Some(error.code().to_owned());
            }
        }
        if let Err(error) = self.store.append(&record).await {
            tracing::error!(%error, request_id = %record.request_id, "cannot write the run record");
        }
        outcome
    }
}
