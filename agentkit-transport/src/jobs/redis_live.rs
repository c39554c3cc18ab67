//! Followers of jobs' live logs on Redis (see [`live`](super::live)): one reader per queue and
//! process reads every followed job's stream with one blocking `XREAD` on one connection of
//! the client's pool, however many jobs and followers there are, so followers (an SSE client
//! each) cannot take the pool's connections from the workers' claims.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentkit_core::{Error, Result};
use agentkit_store::redis::{RedisClient, redis_error};
use futures::StreamExt;
use redis::Value;
use tokio::sync::mpsc;

use super::LiveEvents;
use super::live::LiveEvent;
use super::redis::read_entries;

/// The longest one `XREAD BLOCK` of the reader waits: also the longest a new follower waits
/// for the reader to take its job in.
const BLOCK: Duration = Duration::from_millis(100);

/// Entries one follower may have waiting to be read; one that falls further behind is let go
/// (its stream ends; the job's document still has the whole reply).
const FOLLOWER_BUFFER: usize = 1024;

/// The jobs followed in this process on one queue, and whether a reader runs.
#[derive(Clone, Default)]
pub(crate) struct LiveFollowers {
    inner: Arc<Mutex<Followed>>,
}

#[derive(Default)]
struct Followed {
    /// By live log key.
    jobs: HashMap<String, FollowedJob>,
    reading: bool,
}

struct FollowedJob {
    /// The id of the last entry sent to the followers (`0-0`: none yet).
    last: String,
    followers: Vec<mpsc::Sender<Result<LiveEvent>>>,
}

impl LiveFollowers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Followed> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows the live log at `key` from its first entry, starting the reader if none runs.
    pub(crate) async fn follow(
        &self,
        client: &RedisClient,
        key: String,
        timeout: Duration,
    ) -> Result<LiveEvents> {
        let (sender, receiver) = mpsc::channel(FOLLOWER_BUFFER);
        // Entries the reader sent before this follower came are read here, up to where the
        // reader is; the reader sends it what comes after.
        let sent_up_to = {
            let mut followed = self.lock();
            let job = followed
                .jobs
                .entry(key.clone())
                .or_insert_with(|| FollowedJob {
                    last: "0-0".to_owned(),
                    followers: Vec::new(),
                });
            job.followers.push(sender);
            let last = job.last.clone();
            if !followed.reading {
                followed.reading = true;
                tokio::spawn(read(client.clone(), self.clone()));
            }
            last
        };
        let earlier = if sent_up_to == "0-0" {
            Vec::new()
        } else {
            let reply: Value = client
                .run(timeout, |mut c| async move {
                    redis::cmd("XRANGE")
                        .arg(&key)
                        .arg("-")
                        .arg(&sent_up_to)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            decode(read_range(reply))
        };
        let later = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|entry| (entry, receiver))
        });
        Ok(Box::pin(
            futures::stream::iter(earlier.into_iter().map(Ok)).chain(later),
        ))
    }
}

/// The live events of `entries` (entries that are not one are skipped).
fn decode(entries: Vec<super::redis::Entry>) -> Vec<LiveEvent> {
    (entries.into_iter())
        .filter_map(|entry| LiveEvent::decode(entry.live?.as_bytes()))
        .collect()
}

/// The entries of an `XRANGE` reply, read as `XREAD`'s would be.
fn read_range(reply: Value) -> Vec<super::redis::Entry> {
    read_entries(Value::Array(vec![Value::Array(vec![Value::Nil, reply])]))
}

/// Reads every followed job's live log and sends each entry to its followers, while any job
/// is followed. A read that fails ends every follower's stream with the error.
async fn read(client: RedisClient, followers: LiveFollowers) {
    let mut conn = None;
    loop {
        let (keys, lasts): (Vec<String>, Vec<String>) = {
            let mut followed = followers.lock();
            followed.jobs.retain(|_, job| {
                job.followers.retain(|f| !f.is_closed());
                !job.followers.is_empty()
            });
            if followed.jobs.is_empty() {
                followed.reading = false;
                return;
            }
            (followed.jobs.iter())
                .map(|(key, job)| (key.clone(), job.last.clone()))
                .unzip()
        };
        let reply = async {
            if conn.is_none() {
                conn = Some(client.dedicated().await?);
            }
            let conn = conn.as_mut().expect("made above");
            redis::cmd("XREAD")
                .arg("COUNT")
                .arg(256)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&keys)
                .arg(&lasts)
                .query_async::<Value>(conn)
                .await
                .map_err(redis_error)
        }
        .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(error) => {
                tracing::warn!(%error, "reading jobs' live events failed");
                let mut followed = followers.lock();
                for (_, job) in followed.jobs.drain() {
                    for follower in job.followers {
                        let _ = follower.try_send(Err(Error::unavailable(format!(
                            "reading the job's live events failed: {error}"
                        ))));
                    }
                }
                followed.reading = false;
                return;
            }
        };
        for (key, entries) in by_stream(reply) {
            let mut followed = followers.lock();
            let Some(job) = followed.jobs.get_mut(&key) else {
                continue;
            };
            for entry in entries {
                job.last.clone_from(&entry.id);
                let Some(event) = entry.live.and_then(|e| LiveEvent::decode(e.as_bytes())) else {
                    continue;
                };
                job.followers.retain(|follower| {
                    match follower.try_send(Ok(event.clone())) {
                        Ok(()) => true,
                        Err(mpsc::error::TrySendError::Closed(_)) => false,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            tracing::warn!(key = %key, "a follower of a job's live events fell behind; letting it go");
                            false
                        }
                    }
                });
            }
        }
    }
}

/// The entries of an `XREAD` reply, by stream key.
fn by_stream(reply: Value) -> Vec<(String, Vec<super::redis::Entry>)> {
    let streams: Vec<(Value, Value)> = match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(pair) if pair.len() == 2 => {
                    let mut pair = pair.into_iter();
                    Some((pair.next()?, pair.next()?))
                }
                _ => None,
            })
            .collect(),
        Value::Map(streams) => streams,
        _ => Vec::new(),
    };
    streams
        .into_iter()
        .filter_map(|(key, entries)| {
            let key = redis::from_redis_value::<String>(key).ok()?;
            let entries = read_entries(Value::Array(vec![Value::Array(vec![Value::Nil, entries])]));
            Some((key, entries))
        })
        .collect()
}
