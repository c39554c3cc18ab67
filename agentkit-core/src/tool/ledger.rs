//! Side effects that must not happen twice: the [`EffectLedger`] remembers the result of each
//! side-effecting tool call by idempotency key, so a redelivered job gets the recorded result
//! instead of charging the card again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
///
/// Bounded like the shared backends: an entry is kept for a retention (7 days by default, as
/// the Redis and NATS ledgers keep theirs) and, past `max_entries` (100,000 by default), the
/// oldest is forgotten first, so a worker that runs for months does not grow without end. A
/// job redelivered after its entries were forgotten runs its side effects again, so the
/// bounds must outlast any job's redeliveries.
#[derive(Clone, Debug)]
pub struct MemoryLedger {
    entries: Arc<Mutex<Entries>>,
}

#[derive(Debug)]
struct Entries {
    /// Key → (output, the write's sequence number, when it was written).
    map: HashMap<String, (String, u64, Instant)>,
    /// Writes, oldest first; a write that a later one of its key replaced is skipped.
    order: VecDeque<(u64, String)>,
    sequence: u64,
    max_entries: usize,
    retention: Duration,
}

impl Entries {
    /// Forgets what expired, then the oldest while there are too many.
    fn evict(&mut self, now: Instant) {
        while let Some((sequence, key)) = self.order.front() {
            let live = self.map.get(key).filter(|(_, s, _)| s == sequence);
            let expired = live.is_some_and(|(_, _, at)| now.duration_since(*at) >= self.retention);
            if live.is_some() && !expired && self.map.len() <= self.max_entries {
                break;
            }
            if live.is_some() {
                self.map.remove(key);
            }
            self.order.pop_front();
        }
        // Keys written again leave their older writes queued; drop those now and then.
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order
                .retain(|(sequence, key)| map.get(key).is_some_and(|(_, s, _)| s == sequence));
        }
    }
}

impl Default for MemoryLedger {
    fn default() -> Self {
        Self::new(100_000, Duration::from_secs(7 * 24 * 3600))
    }
}

impl MemoryLedger {
    /// A ledger that keeps at most `max_entries` entries (at least one), each for `retention`.
    pub fn new(max_entries: usize, retention: Duration) -> Self {
        Self {
            entries: Arc::new(Mutex::new(Entries {
                map: HashMap::new(),
                order: VecDeque::new(),
                sequence: 0,
                max_entries: max_entries.max(1),
                retention,
            })),
        }
    }

    /// How many entries it keeps now (expired ones included until the next write).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether it keeps no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl EffectLedger for MemoryLedger {
    async fn recorded(&self, key: &str) -> Result<Option<String>> {
        let entries = self.lock();
        let retention = entries.retention;
        Ok(entries
            .map
            .get(key)
            .filter(|(_, _, at)| at.elapsed() < retention)
            .map(|(output, _, _)| output.clone()))
    }

    async fn record(&self, key: &str, output: &str) -> Result<()> {
        let mut entries = self.lock();
        let now = Instant::now();
        entries.sequence += 1;
        let sequence = entries.sequence;
        entries
            .map
            .insert(key.to_owned(), (output.to_owned(), sequence, now));
        entries.order.push_back((sequence, key.to_owned()));
        entries.evict(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn recorded(ledger: &MemoryLedger, key: &str) -> Option<String> {
        ledger.recorded(key).await.unwrap()
    }

    #[tokio::test]
    async fn the_oldest_entries_are_forgotten_past_the_limit() {
        let ledger = MemoryLedger::new(3, Duration::from_secs(3600));
        for key in ["a", "b", "c"] {
            ledger.record(key, key).await.unwrap();
        }
        // Written again, `a` is now the newest: `b` goes first.
        ledger.record("a", "a2").await.unwrap();
        ledger.record("d", "d").await.unwrap();
        assert_eq!(ledger.len(), 3);
        assert_eq!(recorded(&ledger, "b").await, None);
        assert_eq!(recorded(&ledger, "a").await.as_deref(), Some("a2"));
        assert_eq!(recorded(&ledger, "c").await.as_deref(), Some("c"));
        assert_eq!(recorded(&ledger, "d").await.as_deref(), Some("d"));
    }

    #[tokio::test]
    async fn a_key_written_many_times_keeps_one_entry_and_a_bounded_order() {
        let ledger = MemoryLedger::new(10, Duration::from_secs(3600));
        for i in 0..10_000 {
            ledger.record("job:progress", &i.to_string()).await.unwrap();
        }
        assert_eq!(ledger.len(), 1);
        assert!(ledger.lock().order.len() <= 2 + 64, "the write order grew");
        assert_eq!(
            recorded(&ledger, "job:progress").await.as_deref(),
            Some("9999")
        );
    }

    #[tokio::test]
    async fn entries_expire_after_the_retention() {
        let ledger = MemoryLedger::new(100, Duration::from_millis(40));
        ledger.record("old", "1").await.unwrap();
        assert_eq!(recorded(&ledger, "old").await.as_deref(), Some("1"));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(recorded(&ledger, "old").await, None, "expired, yet read");
        // The next write forgets it.
        ledger.record("new", "2").await.unwrap();
        assert_eq!(ledger.len(), 1);
        assert_eq!(recorded(&ledger, "new").await.as_deref(), Some("2"));
    }
}
