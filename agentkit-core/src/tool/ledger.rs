//! Side effects that must not happen twice: the [`EffectLedger`] remembers the result of each
//! side-effecting tool call by idempotency key, so a redelivered job gets the recorded result
//! instead of charging the card again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::Result;

/// Results of side-effecting tool calls, by idempotency key, and the progress of job runs
/// (see [`JobId`](crate::tool::JobId)).
///
/// A queue worker puts a [`Ledger`] in the job's [`Context`](crate::Context); the toolbox then
/// looks up every call of a tool whose [`Tool::side_effects`](crate::tool::Tool::side_effects)
/// is true before running it, and records its result after. Backends live with the queues
/// (memory here; Redis and NATS in agentkit-transport).
///
/// ```
/// use agentkit_core::tool::{EffectLedger, MemoryLedger};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let ledger = MemoryLedger::default();
/// assert_eq!(ledger.recorded("job-1:call_0").await?, None);
/// ledger.record("job-1:call_0", "{\"charged\":500}").await?;
/// assert_eq!(ledger.recorded("job-1:call_0").await?.as_deref(), Some("{\"charged\":500}"));
/// # Ok::<_, agentkit_core::Error>(())
/// # }).unwrap();
/// ```
#[async_trait]
pub trait EffectLedger: Send + Sync {
    /// The recorded result of the call with this key, if it completed before.
    async fn recorded(&self, key: &str) -> Result<Option<String>>;

    /// Records the result of the call with this key.
    async fn record(&self, key: &str, output: &str) -> Result<()>;
}

const _: Option<&dyn EffectLedger> = None;

/// The ledger of a run, as a [`Context`](crate::Context) extension.
#[derive(Clone)]
pub struct Ledger(pub Arc<dyn EffectLedger>);

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ledger")
    }
}

/// A ledger in this process's memory (single-process workers and tests).
#[derive(Clone, Debug, Default)]
pub struct MemoryLedger {
    entries: Arc<Mutex<HashMap<String, String>>>,
}

#[async_trait]
impl EffectLedger for MemoryLedger {
    async fn recorded(&self, key: &str) -> Result<Option<String>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        Ok(entries.get(key).cloned())
    }

    async fn record(&self, key: &str, output: &str) -> Result<()> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.insert(key.to_owned(), output.to_owned());
        Ok(())
    }
}
