//! A running job's live events: what its agent does as it does it (text deltas, tool calls,
//! usage), for jobs submitted with [`JobSpec::stream`](super::JobSpec::stream).
//!
//! A worker appends each event of the run to the job's live log and, when the attempt ends, an
//! end marker. A follower reads the log from its first event, so one that connects late (or
//! again, after a dropped connection) still gets the whole text so far. The log is kept for
//! [`LIVE_RETENTION`] and at most [`LIVE_EVENTS_KEPT`] events a job: it is a view of the run,
//! not its record, which is the job's document.
//!
//! Each event carries the attempt that made it. A job retried after a failure starts a new
//! attempt whose events come after the earlier attempt's: what the earlier one said is void.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentkit_core::{AgentEvent, Result};
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// How long a job's live log is kept after its last event.
pub const LIVE_RETENTION: Duration = Duration::from_secs(3600);

/// The most events a job's live log keeps (the oldest go first).
pub const LIVE_EVENTS_KEPT: usize = 10_000;

/// One entry of a job's live log: an event of the run, or the end of an attempt.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LiveEvent {
    /// The attempt that made it (from 1).
    pub attempt: u32,
    /// The run's event; `None` marks the end of the attempt (every event it made is before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<AgentEvent>,
}

impl LiveEvent {
    /// An event of `attempt`.
    pub fn event(attempt: u32, event: AgentEvent) -> Self {
        Self {
            attempt,
            event: Some(event),
        }
    }

    /// The end of `attempt`.
    pub fn end(attempt: u32) -> Self {
        Self {
            attempt,
            event: None,
        }
    }

    /// Whether this marks the end of its attempt.
    pub fn is_end(&self) -> bool {
        self.event.is_none()
    }

    pub(crate) fn encode(&self) -> Result<String> {
        serde_json::to_string(self)
            .map_err(|e| agentkit_core::Error::internal(format!("cannot encode a live event: {e}")))
    }

    /// Reads an entry as a backend stored it; `None` (with a warning) for one that is not an
    /// entry, so that a stray message does not end a follower's stream.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        match serde_json::from_slice(bytes) {
            Ok(event) => Some(event),
            Err(error) => {
                tracing::warn!(%error, "skipping a live job event that cannot be read");
                None
            }
        }
    }
}

/// A job's live log from its first entry, as entries come. It does not end by itself (a
/// worker that dies writes no end marker): followers stop at the end marker of the attempt
/// they await, or when the job's document says it ended.
pub type LiveEvents = BoxStream<'static, Result<LiveEvent>>;

/// Jobs whose live logs the memory queue keeps at most (the oldest go first).
const LIVE_JOBS_KEPT: usize = 10_000;

/// Live logs in this process's memory, for the memory queue.
#[derive(Clone, Default)]
pub(crate) struct MemoryLive {
    logs: Arc<Mutex<Logs>>,
}

#[derive(Default)]
struct Logs {
    by_job: HashMap<String, Log>,
    /// Job ids in the order their logs were made, for forgetting the oldest.
    order: VecDeque<String>,
}

struct Log {
    events: VecDeque<LiveEvent>,
    /// Events dropped from the front (so a follower's position survives the trimming).
    dropped: u64,
    /// The number of events ever appended; followers wait for it to move.
    appended: watch::Sender<u64>,
    updated: tokio::time::Instant,
}

impl Log {
    fn new() -> Self {
        Self {
            events: VecDeque::new(),
            dropped: 0,
            appended: watch::Sender::new(0),
            updated: tokio::time::Instant::now(),
        }
    }
}

impl Logs {
    fn log(&mut self, job_id: &str) -> &mut Log {
        if !self.by_job.contains_key(job_id) {
            let now = tokio::time::Instant::now();
            while self.order.len() >= LIVE_JOBS_KEPT
                || self.order.front().is_some_and(|oldest| {
                    self.by_job
                        .get(oldest)
                        .is_none_or(|log| now.duration_since(log.updated) > LIVE_RETENTION)
                })
            {
                let Some(oldest) = self.order.pop_front() else {
                    break;
                };
                self.by_job.remove(&oldest);
            }
            self.order.push_back(job_id.to_owned());
            self.by_job.insert(job_id.to_owned(), Log::new());
        }
        self.by_job.get_mut(job_id).expect("inserted above")
    }
}

impl MemoryLive {
    fn lock(&self) -> std::sync::MutexGuard<'_, Logs> {
        self.logs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn publish(&self, job_id: &str, event: &LiveEvent) {
        let mut logs = self.lock();
        let log = logs.log(job_id);
        if log.events.len() >= LIVE_EVENTS_KEPT {
            log.events.pop_front();
            log.dropped += 1;
        }
        log.events.push_back(event.clone());
        log.updated = tokio::time::Instant::now();
        log.appended.send_modify(|n| *n += 1);
    }

    pub(crate) fn follow(&self, job_id: &str) -> LiveEvents {
        struct Follow {
            live: MemoryLive,
            job_id: String,
            /// The position of the next event to read, counted from the log's first.
            next: u64,
            appended: watch::Receiver<u64>,
        }
        let appended = self.lock().log(job_id).appended.subscribe();
        let follow = Follow {
            live: self.clone(),
            job_id: job_id.to_owned(),
            next: 0,
            appended,
        };
        Box::pin(futures::stream::unfold(follow, |mut f| async move {
            loop {
                f.appended.borrow_and_update();
                let read = {
                    let logs = f.live.lock();
                    let log = logs.by_job.get(&f.job_id)?;
                    let at = f.next.max(log.dropped);
                    (log.events.get((at - log.dropped) as usize)).map(|event| (at, event.clone()))
                };
                if let Some((at, event)) = read {
                    f.next = at + 1;
                    return Some((Ok(event), f));
                }
                // Forgotten (its sender dropped): nothing more will come.
                f.appended.changed().await.ok()?;
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn text(attempt: u32, text: &str) -> LiveEvent {
        LiveEvent::event(
            attempt,
            AgentEvent::TextDelta {
                text: text.to_owned(),
            },
        )
    }

    #[test]
    fn an_entry_reads_back_as_written() {
        for entry in [text(2, "hi"), LiveEvent::end(3)] {
            let json = entry.encode().unwrap();
            assert_eq!(LiveEvent::decode(json.as_bytes()), Some(entry));
        }
        assert_eq!(LiveEvent::decode(b"{\"nope\""), None);
    }

    #[tokio::test]
    async fn a_follower_gets_the_log_from_its_start_then_what_comes() {
        let live = MemoryLive::default();
        live.publish("j", &text(1, "a"));
        let mut follower = live.follow("j");
        assert_eq!(follower.next().await.unwrap().unwrap(), text(1, "a"));
        let waiting = tokio::spawn(async move {
            let b = follower.next().await.unwrap().unwrap();
            let end = follower.next().await.unwrap().unwrap();
            (b, end)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        live.publish("j", &text(1, "b"));
        live.publish("j", &LiveEvent::end(1));
        let (b, end) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(b, text(1, "b"));
        assert!(end.is_end());
        // Another job's log is its own.
        let mut other = live.follow("k");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), other.next())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_long_log_keeps_its_newest_events() {
        let live = MemoryLive::default();
        for i in 0..LIVE_EVENTS_KEPT + 5 {
            live.publish("j", &text(1, &i.to_string()));
        }
        let first = live.follow("j").next().await.unwrap().unwrap();
        assert_eq!(first, text(1, "5"));
    }
}
