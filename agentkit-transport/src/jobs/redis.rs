//! Jobs on Redis Streams: one stream per queue with a consumer group, `XAUTOCLAIM` for stalled
//! deliveries, job status in a hash, delayed retries in a sorted set, side effects in keys with
//! a TTL. Every key of a queue shares one hash tag, so its scripts run on one Redis Cluster slot.
//!
//! A job's life costs what the raw queue's does, plus one write:
//!
//! - a submission is one `XADD`: the entry carries the spec, and its id is the job's id;
//! - a claim is one `XREADGROUP`: while the entry is pending, the group's pending list says the
//!   job is running and how many times it was delivered;
//! - a finish writes the job's outcome document once (`SET NX`, so the first finish wins) and
//!   acknowledges the entry, a batch of jobs per script call.
//!
//! Only jobs that are retried or reclaimed get a hash of their own (status, attempts, spec),
//! which carries them across stream entries. Reading a job looks at its outcome, then its hash,
//! then its entry. Acknowledged entries are trimmed a stream node at a time (`XTRIM MINID`) by
//! the claims' housekeeping, not deleted one by one, and the queue's depth is the consumer
//! group's `lag`.
//!
//! Each finish call also appends one entry naming the jobs it ended to the queue's end
//! notices (a stream capped at about 1,024 entries). A process awaiting jobs
//! ([`JobQueue::until_ended`], which [`QueueExecutor`](super::QueueExecutor) uses) reads them
//! with one blocking `XREAD` while any job is awaited, so it learns of an end as it happens
//! rather than at its next poll. That reader holds one connection of the client's pool (as a
//! worker's idle claim does) for as long as jobs of the queue are awaited.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentkit_core::tool::EffectLedger;
use agentkit_core::{Error, Result};
use agentkit_store::redis::{DedicatedConnection, RedisClient, redis_error};
use async_trait::async_trait;
use redis::streams::{StreamAutoClaimReply, StreamId};
use redis::{Script, Value};
use tokio::sync::{oneshot, watch};

use super::live::{LIVE_EVENTS_KEPT, LIVE_RETENTION};
use super::redis_live::LiveFollowers;
use super::watch::{OnDrop, Watchers};
use super::{
    Delivery, Encoder, Enqueued, Finish, JobDoc, JobError, JobQueue, JobResult, JobSpec, JobStatus,
    LiveEvent, LiveEvents, RETENTION, Receipt, Stored, StoredRef, now_ms, validate,
};

const GROUP: &str = "workers";

/// The longest one `XREADGROUP BLOCK` waits (under redis-rs's 500 ms response timeout).
const BLOCK_SLICE: Duration = Duration::from_millis(300);

/// How often claims promote due retries and reclaim stalled deliveries (each costs a round
/// trip, so not on every claim).
const HOUSEKEEPING_MS: u64 = 100;

/// Enqueues with an idempotency key: KEYS are the key's entry and the stream; ARGV the spec,
/// created and the retention. Returns the job id (the stream entry's id) and whether it is new.
const ENQUEUE: &str = r"
local existing = redis.call('GET', KEYS[1])
if existing then return {existing, 0} end
local id = redis.call('XADD', KEYS[2], '*', 'spec', ARGV[1], 'created', ARGV[2])
redis.call('SET', KEYS[1], id, 'EX', ARGV[3])
return {id, 1}
";

/// For the scripts below: a field of a consumer group's `XINFO GROUPS` entry (false when the
/// group or the field is missing, or the field is null).
const GROUP_FIELD_FN: &str = r"
local function group_field(stream, group, field)
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local name, value
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] elseif g[i] == field then value = g[i + 1] end
    end
    if name == group then return value end
  end
  return false
end
";

/// Housekeeping: moves due retries (KEYS[1], a sorted set) back onto the stream (KEYS[2]), and
/// trims the stream below the oldest entry the group (ARGV[3]) still needs: the oldest pending
/// one, or else the last delivered one. Acknowledged entries are not deleted one by one (`XDEL`
/// costs a walk of the entry's stream node each time); whole nodes go here instead.
const HOUSEKEEP: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('XADD', KEYS[2], '*', 'job', id)
end
local last = group_field(KEYS[2], ARGV[3], 'last-delivered-id')
if last then
  local pending = redis.call('XPENDING', KEYS[2], ARGV[3])
  if pending[1] > 0 then last = pending[2] end
  redis.call('XTRIM', KEYS[2], 'MINID', '~', last)
end
return #due
";

/// For the scripts below: whether a job's status is final.
const TERMINAL_FN: &str = r"
local function terminal(status)
  return status == 'succeeded' or status == 'failed' or status == 'dead' or status == 'cancelled'
end
";

/// Marks a delivered entry running, for the scripts below, when the entry is a retry (field
/// `job`) or was delivered before (reclaimed from a silent worker). Keys are built from the
/// queue's prefix inside the script (they are not known before the read); they share the
/// stream's hash tag, so they live on its Cluster slot.
///
/// The job's hash carries it across entries: a retry adds an attempt to it; a submission
/// reclaimed before anything was written starts it, counting its deliveries so far. An entry
/// whose job ended (or is gone) is acknowledged instead. Appends to `out`, per entry kept:
/// entry id, job id, spec, attempts, created, last error.
const MARK_FN: &str = r"
local function mark(stream, group, prefix, now, retention, out, entry, job, spec, created)
  local key = prefix .. 'job:' .. job
  if job == '' or redis.call('EXISTS', prefix .. 'done:' .. job) == 1 then
    redis.call('XACK', stream, group, entry)
    return
  end
  local f = redis.call('HMGET', key, 'status', 'attempts', 'spec', 'created', 'error')
  local status = f[1]
  if terminal(status) or (not status and not spec) then
    redis.call('XACK', stream, group, entry)
    return
  end
  local attempts
  if status then
    attempts = (tonumber(f[2]) or 0) + 1
    spec, created = f[3], f[4]
  else
    local p = redis.call('XPENDING', stream, group, entry, entry, 1)
    attempts = p[1] and tonumber(p[1][4]) or 1
    redis.call('HSET', key, 'spec', spec, 'created', created)
  end
  redis.call('HSET', key, 'status', 'running', 'attempts', attempts, 'entry', entry, 'updated', now)
  redis.call('EXPIRE', key, retention)
  out[#out + 1] = {entry, job, spec, attempts, created, f[5]}
end
";

/// Marks entries delivered to this consumer (see `MARK_FN`): ARGV are the group, now, the
/// queue's key prefix and the retention, then per entry its id, job id, spec and created ('' for
/// a retry's entry).
const MARK: &str = r"
local out = {}
for i = 5, #ARGV, 4 do
  local spec = ARGV[i + 2] ~= '' and ARGV[i + 2]
  mark(KEYS[1], ARGV[1], ARGV[3], ARGV[2], ARGV[4], out, ARGV[i], ARGV[i + 1], spec, ARGV[i + 3])
end
return out
";

const HEARTBEAT: &str = r"
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #pending == 0 then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
";

/// Finishes a batch of jobs: KEYS are the stream, the dead list, the end notices, then per job
/// its outcome key and its hash; ARGV the group, the retention and the notices kept, then per
/// job its status, outcome document, entry, job id and whether it may have a hash ('1': a
/// retry or a reclaimed delivery, whose hash may say it already ended). The first finish of a
/// job writes its outcome (`SET NX`); later ones change nothing. The entries are acknowledged
/// with one `XACK`, and the jobs ended named in one notice. Returns, per job, 1 when this call
/// ended it and 0 when it had already ended.
const FINISH: &str = r"
local out, entries, ended = {}, {}, {}
for i = 0, (#KEYS - 3) / 2 - 1 do
  local k, a = 4 + 2 * i, 4 + 5 * i
  entries[#entries + 1] = ARGV[a + 2]
  local hashed = ARGV[a + 4] == '1'
  local open = not (hashed and terminal(redis.call('HGET', KEYS[k + 1], 'status')))
  if open and redis.call('SET', KEYS[k], ARGV[a + 1], 'NX', 'EX', ARGV[2]) then
    if hashed then redis.call('DEL', KEYS[k + 1]) end
    if ARGV[a] ~= 'succeeded' then
      redis.call('LPUSH', KEYS[2], ARGV[a + 3])
      redis.call('LTRIM', KEYS[2], 0, 9999)
    end
    out[#out + 1] = 1
    ended[#ended + 1] = ARGV[a + 3]
  else
    out[#out + 1] = 0
  end
end
redis.call('XACK', KEYS[1], ARGV[1], unpack(entries))
if #ended > 0 then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'job', table.concat(ended, ' '))
end
return out
";

/// The most finishes one script call carries.
const FINISH_BATCH: usize = 64;

/// End notices kept (about: trimmed a stream node at a time). Each names the jobs one finish
/// call ended (space-separated: job ids are entry ids). A reader that falls further behind
/// misses some; its callers look again when their wait is up, as without notices.
const ENDED_KEPT: usize = 1024;

/// Hands a delivery back for a retry at ARGV[3]: KEYS are the job's hash, the stream, the
/// delayed set and the job's outcome key; ARGV the entry, group, ready time, job id, last
/// error, now, spec, created, retention and consumer. Only the consumer still holding the
/// entry releases it (a worker whose job was reclaimed meanwhile does not). A submission's
/// first delivery wrote nothing, so its hash starts here. Without an error (a hand-back) the
/// delivery is taken off the attempts, so the next claim counts the same attempt again.
/// Returns 1 when released, 0 when the job had ended or this delivery no longer held it.
const RELEASE: &str = r"
local status = redis.call('HGET', KEYS[1], 'status')
if redis.call('EXISTS', KEYS[4]) == 1 or terminal(status) then
  redis.call('XACK', KEYS[2], ARGV[2], ARGV[1])
  return 0
end
local p = redis.call('XPENDING', KEYS[2], ARGV[2], ARGV[1], ARGV[1], 1)[1]
if not p or p[2] ~= ARGV[10] then return 0 end
redis.call('XACK', KEYS[2], ARGV[2], ARGV[1])
if status then
  if redis.call('HGET', KEYS[1], 'entry') ~= ARGV[1] then return 0 end
else
  redis.call('HSET', KEYS[1], 'spec', ARGV[7], 'created', ARGV[8], 'attempts', p[4], 'entry', ARGV[1])
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'updated', ARGV[6])
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'error', ARGV[5])
else
  redis.call('HINCRBY', KEYS[1], 'attempts', -1)
end
redis.call('EXPIRE', KEYS[1], ARGV[9])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
return 1
";

/// Cancels a job: KEYS are its outcome key, its hash, the stream, the delayed set and the end
/// notices; ARGV the cancelled document, the retention, the submission's entry id (or ''),
/// the group, the job id and the notices kept. A job that ended keeps its ending (returns
/// 0 and its outcome, if it has one). Otherwise the outcome is written, the job's hash and
/// its retry (if one waits) dropped, and its submission deleted from the stream unless it
/// was delivered (a running job's worker hears of the end notice and drops its run).
/// Returns 1.
const CANCEL: &str = r"
local done = redis.call('GET', KEYS[1])
if done then return {0, done} end
if terminal(redis.call('HGET', KEYS[2], 'status')) then return {0} end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[4], ARGV[5])
if ARGV[3] ~= '' and not redis.call('XPENDING', KEYS[3], ARGV[4], ARGV[3], ARGV[3], 1)[1] then
  redis.call('XDEL', KEYS[3], ARGV[3])
end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[6], '*', 'job', ARGV[5])
return {1}
";

/// Queues a job that ended dead or failed again: KEYS are its outcome key, its hash, the
/// stream, the dead list and its callback's delivery key; ARGV its spec, created, now, the
/// retention, the job id and its last error. The job's hash carries it again (queued, no
/// attempts yet), its outcome and its callback's delivery key go, and an entry naming it is
/// added to the stream, as a retry's is. Returns 1, or 0 when the job had not ended so.
const RETRY: &str = r"
local done = redis.call('GET', KEYS[1])
if not done then return 0 end
local status = cjson.decode(done)['status']
if status ~= 'dead' and status ~= 'failed' then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'spec', ARGV[1], 'created', ARGV[2], 'status', 'queued', 'attempts', 0, 'updated', ARGV[3])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[2], 'error', ARGV[6]) end
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('DEL', KEYS[1], KEYS[5])
redis.call('LREM', KEYS[4], 0, ARGV[5])
redis.call('XADD', KEYS[3], '*', 'job', ARGV[5])
return 1
";

/// Reads a job: KEYS are its outcome key, its hash and the stream; ARGV the job id when it is
/// an entry id (else ''), the group and now. Returns the outcome document alone when the job
/// ended; else false, then spec, status, attempts, created, updated, result, error: from the
/// hash, or from the submission's entry (running while pending, with its deliveries as
/// attempts; queued before).
const GET: &str = r"
local done = redis.call('GET', KEYS[1])
if done then return {done} end
local f = redis.call('HMGET', KEYS[2], 'spec', 'status', 'attempts', 'created', 'updated', 'result', 'error')
if f[2] or ARGV[1] == '' then return {false, f[1], f[2], f[3], f[4], f[5], f[6], f[7]} end
local e = redis.call('XRANGE', KEYS[3], ARGV[1], ARGV[1])[1]
if not e then return {false} end
local spec, created = false, false
for i = 1, #e[2], 2 do
  if e[2][i] == 'spec' then spec = e[2][i + 1] elseif e[2][i] == 'created' then created = e[2][i + 1] end
end
if not spec then return {false} end
local p = redis.call('XPENDING', KEYS[3], ARGV[2], ARGV[1], ARGV[1], 1)[1]
if p then return {false, spec, 'running', p[4], created, ARGV[3] - p[3]} end
return {false, spec, 'queued', 0, created, created}
";

/// The number of entries not yet delivered to the group (ARGV[1]), from its `lag` where the
/// server keeps one (Redis 7) and else from the stream's length less what is pending, plus the
/// retries waiting in KEYS[2].
const DEPTH: &str = r"
local lag = group_field(KEYS[1], ARGV[1], 'lag')
if not lag then
  lag = redis.call('XLEN', KEYS[1]) - redis.call('XPENDING', KEYS[1], ARGV[1])[1]
  if lag < 0 then lag = 0 end
end
return lag + redis.call('ZCARD', KEYS[2])
";

struct Scripts {
    enqueue: Script,
    housekeep: Script,
    mark: Script,
    heartbeat: Script,
    finish: Script,
    release: Script,
    get: Script,
    depth: Script,
    cancel: Script,
    retry: Script,
}

/// A job queue on Redis Streams, sharing a [`RedisClient`] with the session store.
#[derive(Clone)]
pub struct RedisJobQueue {
    client: RedisClient,
    name: String,
    prefix: String,
    visibility: Duration,
    timeout: Duration,
    scripts: Arc<Scripts>,
    /// The stream, delayed set, dead list and end notices keys, made once.
    stream: Arc<str>,
    delayed: Arc<str>,
    dead: Arc<str>,
    ended: Arc<str>,
    /// The jobs this process awaits, and whether their notices are being read.
    awaited: Arc<Mutex<Awaited>>,
    /// The jobs whose live logs this process follows.
    live: LiveFollowers,
    grouped: Arc<AtomicBool>,
    /// When delayed jobs were last promoted and stalled ones reclaimed (ms since the epoch).
    housekept: Arc<AtomicU64>,
    finishes: Arc<Mutex<Finishes>>,
    /// Submitted specs and outcome documents, each in a buffer sized by the last.
    submissions: Arc<Encoder>,
    outcomes: Arc<Encoder>,
}

/// The jobs awaited in this process.
#[derive(Default)]
struct Awaited {
    watchers: Watchers,
    /// While a task reads the end notices (it stops once no job is awaited): whether it has
    /// found where to read from, so that an end from then on reaches its callers.
    reader: Option<watch::Receiver<bool>>,
}

/// The longest a caller awaiting a job goes without looking at it while notices are read: a
/// net for notices lost (a reader that fell [`ENDED_KEPT`] behind, workers of earlier
/// versions, which write none).
const NOTICED_POLL: Duration = Duration::from_secs(1);

/// Reads the queue's end notices and wakes the callers of the jobs they name, while any job is
/// awaited. It starts after the newest notice, and says so through `positioned`: callers look
/// at their job after that, so no end falls between their look and the notices read.
async fn read_notices(
    client: RedisClient,
    notices: Arc<str>,
    awaited: Arc<Mutex<Awaited>>,
    positioned: watch::Sender<bool>,
) {
    let lock = || awaited.lock().unwrap_or_else(|p| p.into_inner());
    let read = async {
        let mut conn = client.dedicated().await?;
        let newest: Value = redis::cmd("XREVRANGE")
            .arg(&*notices)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(redis_error)?;
        let mut last = match newest {
            Value::Array(entries) => (entries.into_iter())
                .find_map(|entry| match entry {
                    Value::Array(parts) => parts.into_iter().next(),
                    _ => None,
                })
                .and_then(|id| redis::from_redis_value::<String>(id).ok()),
            _ => None,
        }
        .unwrap_or_else(|| "0-0".to_owned());
        positioned.send_replace(true);
        loop {
            {
                let mut awaited = lock();
                if awaited.watchers.is_empty() {
                    awaited.reader = None;
                    return Ok::<(), Error>(());
                }
            }
            // In slices under the client's response timeout, as a blocking claim reads.
            let reply: Value = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(ENDED_KEPT)
                .arg("BLOCK")
                .arg(BLOCK_SLICE.as_millis() as u64)
                .arg("STREAMS")
                .arg(&*notices)
                .arg(&last)
                .query_async(&mut conn)
                .await
                .map_err(redis_error)?;
            for entry in read_entries(reply) {
                let woken: Vec<_> = {
                    let mut awaited = lock();
                    (entry.job.iter())
                        .flat_map(|ids| ids.split(' '))
                        .filter_map(|id| awaited.watchers.ended(id))
                        .collect()
                };
                for watching in woken {
                    watching.notify_waiters();
                }
                last = entry.id;
            }
        }
    };
    if let Err(error) = read.await {
        // Its callers look at their jobs now (and start another reader), rather than when
        // their next look is due.
        tracing::debug!(%error, "reading job end notices failed");
        let watchers = {
            let mut awaited = lock();
            awaited.reader = None;
            awaited.watchers.all()
        };
        for watching in watchers {
            watching.notify_waiters();
        }
    }
}

/// One job's part of a finish script call.
struct Finishing {
    job_id: String,
    entry: String,
    status: &'static str,
    /// The job's outcome document (a [`Stored`], JSON).
    stored: Vec<u8>,
    /// Whether the job may have a hash (see `FINISH`).
    hashed: bool,
}

impl Finishing {
    /// Whether ending it takes no more than writing its outcome once and acknowledging its
    /// entry: a first delivery (no hash) that succeeded (nothing for the dead list).
    fn plain(&self) -> bool {
        !self.hashed && self.status == JobStatus::Succeeded.as_str()
    }
}

/// Room per argument, when sizing a command's buffer, for what the sizes do not count: short
/// names and numbers written as text.
const COMMAND_ARG_OVERHEAD: usize = 16;

/// Finishes waiting for the script call in flight (group commit: a finish that finds no call
/// in flight leads one, carrying everything that queued up meanwhile; when it ends, the lead
/// passes to the next finish waiting).
#[derive(Default)]
struct Finishes {
    leading: bool,
    waiting: VecDeque<(Arc<Finishing>, oneshot::Sender<Turn>)>,
}

/// What a waiting finish is told.
enum Turn {
    /// Its job was finished in another's call: whether that call ended it.
    Done(Result<bool>),
    /// It leads the next call.
    Lead,
}

/// Passes the lead on when a leading finish ends, or is dropped half-way.
struct Lead<'a>(&'a Mutex<Finishes>);

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        let mut finishes = self.0.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((_, next)) = finishes.waiting.pop_front() {
            if next.send(Turn::Lead).is_ok() {
                return;
            }
        }
        finishes.leading = false;
    }
}

impl std::fmt::Debug for RedisJobQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisJobQueue")
            .field("prefix", &self.prefix)
            .field("visibility", &self.visibility)
            .finish_non_exhaustive()
    }
}

impl RedisJobQueue {
    /// The queue `name` on `client` (keys under `agentkit:{jobs:NAME}`), with a 30 s
    /// visibility timeout.
    pub fn new(client: RedisClient, name: &str) -> Self {
        let prefix = format!("agentkit:{{jobs:{name}}}");
        Self {
            client,
            name: name.to_owned(),
            stream: format!("{prefix}:stream").into(),
            delayed: format!("{prefix}:delayed").into(),
            dead: format!("{prefix}:dead").into(),
            ended: format!("{prefix}:ended").into(),
            awaited: Arc::default(),
            live: LiveFollowers::default(),
            prefix,
            visibility: Duration::from_secs(30),
            timeout: agentkit_store::redis::DEFAULT_TIMEOUT,
            scripts: Arc::new(Scripts {
                enqueue: Script::new(ENQUEUE),
                housekeep: Script::new(&format!("{GROUP_FIELD_FN}{HOUSEKEEP}")),
                mark: Script::new(&format!("{TERMINAL_FN}{MARK_FN}{MARK}")),
                heartbeat: Script::new(HEARTBEAT),
                finish: Script::new(&format!("{TERMINAL_FN}{FINISH}")),
                release: Script::new(&format!("{TERMINAL_FN}{RELEASE}")),
                get: Script::new(GET),
                depth: Script::new(&format!("{GROUP_FIELD_FN}{DEPTH}")),
                cancel: Script::new(&format!("{TERMINAL_FN}{CANCEL}")),
                retry: Script::new(RETRY),
            }),
            grouped: Arc::default(),
            housekept: Arc::default(),
            finishes: Arc::default(),
            submissions: Arc::default(),
            outcomes: Arc::default(),
        }
    }

    /// The queue `name` on a new client of `url`.
    pub fn connect(url: &str, name: &str) -> Result<Self> {
        Ok(Self::new(RedisClient::connect(url, 16)?, name))
    }

    /// How long a claim lasts without a heartbeat before `XAUTOCLAIM` hands it to another worker.
    #[must_use]
    pub fn with_visibility_timeout(mut self, visibility: Duration) -> Self {
        self.visibility = visibility;
        self
    }

    fn key(&self, part: &str) -> String {
        format!("{}:{part}", self.prefix)
    }

    fn job_key(&self, id: &str) -> String {
        let mut key = String::new();
        self.write_key(&mut key, "job", id);
        key
    }

    fn live_key(&self, id: &str) -> String {
        let mut key = String::new();
        self.write_key(&mut key, "live", id);
        key
    }

    fn done_key(&self, id: &str) -> String {
        let mut key = String::new();
        self.write_key(&mut key, "done", id);
        key
    }

    /// Writes the key of `kind` (`job`, `done`) for the job `id` into `out`, in place of what
    /// it held: commands that name many jobs reuse one buffer.
    fn write_key(&self, out: &mut String, kind: &str, id: &str) {
        out.clear();
        out.reserve(self.prefix.len() + kind.len() + id.len() + 2);
        for part in [&*self.prefix, ":", kind, ":", id] {
            out.push_str(part);
        }
    }

    /// Watches `job_id`, starting the notices' reader if none runs; whether the reader is
    /// positioned.
    fn watch(&self, job_id: &str) -> (Arc<tokio::sync::Notify>, watch::Receiver<bool>) {
        let mut awaited = self.awaited.lock().unwrap_or_else(|p| p.into_inner());
        let watching = awaited.watchers.watch(job_id);
        let positioned = match &awaited.reader {
            Some(positioned) => positioned.clone(),
            None => {
                let (sender, positioned) = watch::channel(false);
                awaited.reader = Some(positioned.clone());
                tokio::spawn(read_notices(
                    self.client.clone(),
                    self.ended.clone(),
                    self.awaited.clone(),
                    sender,
                ));
                positioned
            }
        };
        (watching, positioned)
    }

    /// The end notice naming `jobs`.
    fn notice<'a>(&self, jobs: impl Iterator<Item = &'a str>) -> redis::Cmd {
        let mut ids = String::new();
        for id in jobs {
            if !ids.is_empty() {
                ids.push(' ');
            }
            ids.push_str(id);
        }
        let mut notice = redis::cmd("XADD");
        notice
            .arg(&*self.ended)
            .arg("MAXLEN")
            .arg("~")
            .arg(ENDED_KEPT)
            .arg("*")
            .arg("job")
            .arg(ids);
        notice
    }

    async fn ensure_group(&self) -> Result<()> {
        if self.grouped.load(Ordering::Relaxed) {
            return Ok(());
        }
        let stream = &*self.stream;
        let created = self
            .client
            .run(self.timeout, |mut c| async move {
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(stream)
                    .arg(GROUP)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async::<()>(&mut c)
                    .await
            })
            .await;
        match created {
            Ok(()) => {}
            Err(error) if error.message().contains("BUSYGROUP") => {}
            Err(error) => return Err(error),
        }
        self.grouped.store(true, Ordering::Relaxed);
        Ok(())
    }

    fn entry(delivery: &Delivery) -> Result<(&str, &str, bool)> {
        match &delivery.receipt {
            Receipt::Redis {
                entry,
                consumer,
                fresh,
            } => Ok((entry, consumer, *fresh)),
            #[allow(unreachable_patterns)]
            _ => Err(Error::invalid_input(
                "this delivery belongs to another queue",
            )),
        }
    }

    /// Ends the jobs of `batch`; per job, whether this call ended it.
    async fn finish_batch(&self, batch: &[&Finishing]) -> Result<Vec<bool>> {
        if batch.iter().all(|f| f.plain()) {
            self.finish_plain(batch).await
        } else {
            self.finish_scripted(batch).await
        }
    }

    /// Ends jobs that need no script: first deliveries that succeeded (no hash to check or
    /// delete, nothing for the dead list). Their outcomes are written `SET NX` (the first
    /// finish wins) and their entries acknowledged, pipelined: what the raw queue does, and
    /// what the script did for them, without its cost on the server (its arguments copied
    /// into Lua, a call into Redis per command). A worker that dies between the two leaves
    /// entries pending; reclaimed, they find their outcome written and are acknowledged.
    async fn finish_plain(&self, batch: &[&Finishing]) -> Result<Vec<bool>> {
        let stream = &*self.stream;
        let replies: Vec<redis::Value> = self
            .client
            .run(self.timeout, |mut c| async move {
                let retention = RETENTION.as_secs();
                let mut pipe = redis::Pipeline::with_capacity(batch.len() + 1);
                let mut key = String::new();
                for f in batch {
                    self.write_key(&mut key, "done", &f.job_id);
                    let size = key.len() + f.stored.len() + 5 * COMMAND_ARG_OVERHEAD;
                    let mut set = redis::Cmd::with_capacity(6, size);
                    set.arg("SET")
                        .arg(key.as_str())
                        .arg(&f.stored)
                        .arg("NX")
                        .arg("EX")
                        .arg(retention);
                    pipe.add_command(set);
                }
                let entries = batch.iter().map(|f| f.entry.as_str());
                pipe.cmd("XACK")
                    .arg(stream)
                    .arg(GROUP)
                    .arg(entries.collect::<Vec<_>>());
                // The notice names every job of the batch: one that had ended already wakes
                // its callers once more, and they find it ended.
                pipe.add_command(self.notice(batch.iter().map(|f| f.job_id.as_str())))
                    .ignore();
                pipe.query_async(&mut c).await
            })
            .await?;
        if replies.len() != batch.len() + 1 {
            return Err(Error::internal(
                "the finish pipeline answered for the wrong number of commands",
            ));
        }
        // `SET NX` answers OK when it wrote, nil when an outcome was there already.
        Ok(replies[..batch.len()]
            .iter()
            .map(|reply| !matches!(reply, redis::Value::Nil))
            .collect())
    }

    /// Runs the finish script for `batch`; per job, whether this call ended it.
    async fn finish_scripted(&self, batch: &[&Finishing]) -> Result<Vec<bool>> {
        let stream = &*self.stream;
        let dead = &*self.dead;
        let notices = &*self.ended;
        let ended: Vec<u8> = self
            .client
            .run(self.timeout, |mut c| async move {
                // `EVALSHA` written straight into one command: a `ScriptInvocation` would
                // copy every job's document once more. Sized up front: grown as it is
                // written, a batch's command (kilobytes per job) is copied again at every
                // doubling, and large blocks are the allocator's slow path.
                let per_job = |f: &&Finishing| {
                    f.stored.len() + f.entry.len() + 3 * f.job_id.len() + 2 * self.prefix.len()
                };
                let size = batch.iter().map(per_job).sum::<usize>()
                    + batch.len() * COMMAND_ARG_OVERHEAD * 7
                    + stream.len()
                    + dead.len()
                    + notices.len()
                    + 128;
                let mut call = redis::Cmd::with_capacity(9 + 7 * batch.len(), size);
                call.arg("EVALSHA")
                    .arg(self.scripts.finish.get_hash())
                    .arg(3 + 2 * batch.len())
                    .arg(stream)
                    .arg(dead)
                    .arg(notices);
                // The keys are written through one buffer rather than a string each.
                let mut key = String::new();
                for f in batch {
                    for kind in ["done", "job"] {
                        self.write_key(&mut key, kind, &f.job_id);
                        call.arg(key.as_str());
                    }
                }
                call.arg(GROUP).arg(RETENTION.as_secs()).arg(ENDED_KEPT);
                for f in batch {
                    call.arg(f.status)
                        .arg(&f.stored)
                        .arg(&f.entry)
                        .arg(&f.job_id)
                        .arg(if f.hashed { "1" } else { "0" });
                }
                match call.query_async(&mut c).await {
                    Err(error)
                        if error.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                    {
                        self.scripts
                            .finish
                            .prepare_invoke()
                            .load_async(&mut c)
                            .await?;
                        call.query_async(&mut c).await
                    }
                    answer => answer,
                }
            })
            .await?;
        if ended.len() != batch.len() {
            return Err(Error::internal(
                "the finish script answered for the wrong number of jobs",
            ));
        }
        Ok(ended.into_iter().map(|e| e == 1).collect())
    }

    /// Finishes one job together with whatever other finishes are waiting (one script call
    /// per batch instead of one per job); whether this call ended the job.
    async fn finish_grouped(&self, finishing: Finishing) -> Result<bool> {
        let finishing = Arc::new(finishing);
        let (sender, receiver) = oneshot::channel();
        let wait = {
            let mut finishes = self.finishes.lock().unwrap_or_else(|p| p.into_inner());
            if finishes.leading {
                finishes.waiting.push_back((finishing.clone(), sender));
                true
            } else {
                finishes.leading = true;
                false
            }
        };
        if wait {
            match receiver.await {
                Ok(Turn::Done(ended)) => return ended,
                Ok(Turn::Lead) => {}
                // The call carrying it was dropped half-way: finish alone.
                Err(_) => return Ok(self.finish_batch(&[&finishing]).await?[0]),
            }
        }
        let lead = Lead(&self.finishes);
        let others: Vec<_> = {
            let mut finishes = self.finishes.lock().unwrap_or_else(|p| p.into_inner());
            let take = finishes.waiting.len().min(FINISH_BATCH - 1);
            finishes.waiting.drain(..take).collect()
        };
        let batch: Vec<&Finishing> = std::iter::once(&*finishing)
            .chain(others.iter().map(|(f, _)| &**f))
            .collect();
        let outcome = self.finish_batch(&batch).await;
        for (i, (_, reply)) in others.into_iter().enumerate() {
            let ended = match &outcome {
                Ok(ended) => Ok(ended[i + 1]),
                Err(error) => Err(error.clone()),
            };
            let _ = reply.send(Turn::Done(ended));
        }
        drop(lead);
        Ok(outcome?[0])
    }

    /// Turns the rows of the mark script into deliveries.
    fn deliveries(&self, rows: Vec<Marked>, consumer: &str) -> Result<Vec<Delivery>> {
        rows.into_iter()
            .map(|(entry, job_id, spec, attempts, created, error)| {
                let mut delivery =
                    delivery(entry, job_id, &spec, attempts, created, consumer, false)?;
                delivery.job.error = error.and_then(|e| serde_json::from_str(&e).ok());
                Ok(delivery)
            })
            .collect()
    }

    /// Marks entries this consumer was just given (see `MARK_FN`), ending those whose job
    /// ended.
    async fn mark(&self, entries: Vec<Entry>, consumer: &str) -> Result<Vec<Delivery>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let stream = &*self.stream;
        let prefix = format!("{}:", self.prefix);
        let rows: Vec<Marked> = self
            .client
            .run(self.timeout, |mut c| async move {
                let mut call = self.scripts.mark.key(stream);
                call.arg(GROUP)
                    .arg(now_ms())
                    .arg(&prefix)
                    .arg(RETENTION.as_secs());
                for entry in &entries {
                    let job = match &entry.spec {
                        Some(_) => entry.id.as_str(),
                        None => entry.job.as_deref().unwrap_or_default(),
                    };
                    call.arg(&entry.id)
                        .arg(job)
                        .arg(entry.spec.as_deref().unwrap_or_default())
                        .arg(entry.created.as_deref().unwrap_or_default());
                }
                call.invoke_async(&mut c).await
            })
            .await?;
        self.deliveries(rows, consumer)
    }

    /// Turns entries just read for the first time into deliveries: a submission needs no
    /// round trip (the pending list says it runs), a retry's entry is marked.
    async fn take(&self, entries: Vec<Entry>, consumer: &str) -> Result<Vec<Delivery>> {
        let mut deliveries = Vec::with_capacity(entries.len());
        let mut retries = Vec::new();
        for entry in entries {
            match entry.spec {
                Some(spec) => {
                    let created = entry
                        .created
                        .as_deref()
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0);
                    let id = entry.id.clone();
                    deliveries.push(delivery(entry.id, id, &spec, 1, created, consumer, true)?);
                }
                None => retries.push(entry),
            }
        }
        deliveries.extend(self.mark(retries, consumer).await?);
        Ok(deliveries)
    }

    /// Reads up to `max` new entries for `consumer`, waiting up to `block` when given (on a
    /// connection of its own: the shared one must not wait).
    async fn read(
        &self,
        consumer: &str,
        max: usize,
        block: Option<(&mut DedicatedConnection, u64)>,
    ) -> Result<Vec<Entry>> {
        let stream = &*self.stream;
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(max);
        let reply: Value = match block {
            Some((conn, ms)) => {
                read.arg("BLOCK")
                    .arg(ms)
                    .arg("STREAMS")
                    .arg(stream)
                    .arg(">");
                read.query_async(conn).await.map_err(redis_error)?
            }
            None => {
                read.arg("STREAMS").arg(stream).arg(">");
                self.client
                    .run(self.timeout, |mut c| async move {
                        read.query_async(&mut c).await
                    })
                    .await?
            }
        };
        Ok(read_entries(reply))
    }
}

/// A delivery of `job_id` read from `entry`, running (`fresh`: see [`Receipt::Redis`]).
fn delivery(
    entry: String,
    job_id: String,
    spec: &str,
    attempts: u32,
    created: u64,
    consumer: &str,
    fresh: bool,
) -> Result<Delivery> {
    let spec: JobSpec = serde_json::from_str(spec)
        .map_err(|e| Error::internal(format!("stored job {job_id} is not valid: {e}")))?;
    let mut doc = JobDoc::queued(job_id, spec);
    doc.status = JobStatus::Running;
    doc.attempts = attempts;
    doc.created_at_ms = created;
    Ok(Delivery {
        attempt: attempts,
        job: doc,
        receipt: Receipt::Redis {
            entry,
            consumer: consumer.to_owned(),
            fresh,
        },
    })
}

/// A stream entry as the queue reads it: a submission (`spec`, `created`), a retry (`job`),
/// or an entry of a job's live log (`e`).
#[derive(Default)]
pub(super) struct Entry {
    pub(super) id: String,
    spec: Option<String>,
    job: Option<String>,
    created: Option<String>,
    pub(super) live: Option<String>,
}

impl From<StreamId> for Entry {
    fn from(id: StreamId) -> Self {
        let field = |name: &str| id.get::<String>(name);
        Self {
            spec: field("spec"),
            job: field("job"),
            created: field("created"),
            live: None,
            id: id.id,
        }
    }
}

/// The entries of an `XREADGROUP` reply of one stream (RESP2 arrays or a RESP3 map), read
/// straight from the reply: a map per entry costs more than the whole claim.
pub(super) fn read_entries(reply: Value) -> Vec<Entry> {
    let streams = match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
                _ => None,
            })
            .collect(),
        Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
        _ => Vec::new(),
    };
    let text = |value: Value| match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        _ => None,
    };
    let mut out = Vec::new();
    for entries in streams {
        let Value::Array(entries) = entries else {
            continue;
        };
        for entry in entries {
            let Value::Array(parts) = entry else { continue };
            let mut parts = parts.into_iter();
            let (Some(id), Some(Value::Array(fields))) =
                (parts.next().and_then(text), parts.next())
            else {
                continue;
            };
            let mut entry = Entry {
                id,
                ..Entry::default()
            };
            let mut fields = fields.into_iter();
            while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
                let slot = match &name {
                    Value::BulkString(name) if name == b"spec" => &mut entry.spec,
                    Value::BulkString(name) if name == b"job" => &mut entry.job,
                    Value::BulkString(name) if name == b"created" => &mut entry.created,
                    Value::BulkString(name) if name == b"e" => &mut entry.live,
                    _ => continue,
                };
                *slot = text(value);
            }
            out.push(entry);
        }
    }
    out
}

/// Whether `id` has the shape of a stream entry id (`ms-seq`), as a job id on Redis does.
fn is_entry_id(id: &str) -> bool {
    let Some((ms, seq)) = id.split_once('-') else {
        return false;
    };
    let digits = |part: &str| {
        !part.is_empty() && part.len() <= 20 && part.bytes().all(|b| b.is_ascii_digit())
    };
    digits(ms) && digits(seq)
}

/// A row of a claim script: entry id, job id, spec, attempts, created, last error.
type Marked = (String, String, String, u32, u64, Option<String>);

fn json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::internal(format!("cannot encode: {e}")))
}

#[async_trait]
impl JobQueue for RedisJobQueue {
    async fn enqueue(&self, spec: JobSpec) -> Result<Enqueued> {
        validate(&spec)?;
        self.ensure_group().await?;
        let body = self.submissions.encode(&spec)?;
        let stream = &*self.stream;
        let now = now_ms();
        let Some(key) = &spec.idempotency_key else {
            // A submission is one stream entry, as cheap as the raw queue's: its id is the
            // job's, and the job's hash is made when a worker first claims it.
            let job_id: String = self
                .client
                .run(self.timeout, |mut c| async move {
                    // Sized up front, as the finish's command is.
                    let size = stream.len() + body.len() + 32 + 7 * COMMAND_ARG_OVERHEAD;
                    redis::Cmd::with_capacity(7, size)
                        .arg("XADD")
                        .arg(stream)
                        .arg("*")
                        .arg("spec")
                        .arg(&body)
                        .arg("created")
                        .arg(now)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            return Ok(Enqueued {
                job_id,
                created: true,
            });
        };
        let idem = self.key(&format!("idem:{}:{}:{key}", spec.tenant.len(), spec.tenant));
        let (job_id, created): (String, u8) = self
            .client
            .run(self.timeout, |mut c| async move {
                self.scripts
                    .enqueue
                    .key(&idem)
                    .key(stream)
                    .arg(&body)
                    .arg(now)
                    .arg(RETENTION.as_secs())
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(Enqueued {
            job_id,
            created: created == 1,
        })
    }

    async fn claim(&self, consumer: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        self.ensure_group().await?;
        let max = max.max(1);
        let stream = &*self.stream;
        let delayed = &*self.delayed;
        let now = now_ms();
        let last = self.housekept.load(Ordering::Relaxed);
        let mut entries: Vec<Entry> = Vec::new();
        if now.saturating_sub(last) >= HOUSEKEEPING_MS
            && self
                .housekept
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let _: u64 = self
                .client
                .run(self.timeout, |mut c| async move {
                    self.scripts
                        .housekeep
                        .key(delayed)
                        .key(stream)
                        .arg(now)
                        .arg(100)
                        .arg(GROUP)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            let idle = self.visibility.as_millis() as u64;
            let reclaimed: StreamAutoClaimReply = self
                .client
                .run(self.timeout, |mut c| async move {
                    redis::cmd("XAUTOCLAIM")
                        .arg(stream)
                        .arg(GROUP)
                        .arg(consumer)
                        .arg(idle)
                        .arg("0-0")
                        .arg("COUNT")
                        .arg(max)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            entries = reclaimed.claimed.into_iter().map(Entry::from).collect();
        }
        let mut deliveries = self.mark(entries, consumer).await?;
        if deliveries.len() >= max {
            return Ok(deliveries);
        }
        // Under load, new entries are there to read at once.
        let read = self.read(consumer, max - deliveries.len(), None).await?;
        deliveries.extend(self.take(read, consumer).await?);
        if !deliveries.is_empty() {
            return Ok(deliveries);
        }
        // Nothing waiting: block for new entries on a connection of our own (not the shared
        // one), in slices shorter than the client's 500 ms response timeout.
        let mut conn = self.client.dedicated().await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let block = left.min(BLOCK_SLICE).as_millis().max(1) as u64;
            let read = self.read(consumer, max, Some((&mut conn, block))).await?;
            if !read.is_empty() {
                drop(conn);
                return self.take(read, consumer).await;
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Vec::new());
            }
        }
    }

    async fn heartbeat(&self, delivery: &Delivery) -> Result<()> {
        let (entry, consumer, _) = Self::entry(delivery)?;
        let stream = &*self.stream;
        let _: u8 = self
            .client
            .run(self.timeout, |mut c| async move {
                self.scripts
                    .heartbeat
                    .key(stream)
                    .arg(GROUP)
                    .arg(consumer)
                    .arg(entry)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }

    async fn finish(&self, delivery: &Delivery, finish: Finish) -> Result<JobDoc> {
        let (entry, _, fresh) = Self::entry(delivery)?;
        let job_id = &delivery.job.job_id;
        let status = finish.status().as_str();
        let mut doc = delivery.job.clone();
        finish.apply(&mut doc);
        let stored = StoredRef::of(&doc)
            .ok_or_else(|| Error::internal(format!("job {job_id} has no spec")))?;
        let finishing = Finishing {
            job_id: job_id.clone(),
            entry: entry.to_owned(),
            status,
            stored: self.outcomes.encode(&stored)?,
            hashed: !fresh,
        };
        if self.finish_grouped(finishing).await? {
            return Ok(doc);
        }
        self.get(job_id)
            .await?
            .ok_or_else(|| Error::not_found(format!("job {job_id} vanished")))
    }

    async fn release(
        &self,
        delivery: &Delivery,
        delay: Duration,
        error: Option<JobError>,
    ) -> Result<()> {
        let (entry, consumer, _) = Self::entry(delivery)?;
        let job_id = &delivery.job.job_id;
        let error = error.as_ref().map(json).transpose()?.unwrap_or_default();
        let spec = json(delivery.spec()?)?;
        let job = self.job_key(job_id);
        let done = self.done_key(job_id);
        let stream = &*self.stream;
        let delayed = &*self.delayed;
        let ready_at = now_ms() + delay.as_millis() as u64;
        let _: u8 = self
            .client
            .run(self.timeout, |mut c| async move {
                self.scripts
                    .release
                    .key(&job)
                    .key(stream)
                    .key(delayed)
                    .key(&done)
                    .arg(entry)
                    .arg(GROUP)
                    .arg(ready_at)
                    .arg(job_id)
                    .arg(&error)
                    .arg(now_ms())
                    .arg(&spec)
                    .arg(delivery.job.created_at_ms)
                    .arg(RETENTION.as_secs())
                    .arg(consumer)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }

    async fn get(&self, job_id: &str) -> Result<Option<JobDoc>> {
        let done = self.done_key(job_id);
        let job = self.job_key(job_id);
        let stream = &*self.stream;
        // Only an entry id can name a submission whose entry is all there is of it.
        let entry = if is_entry_id(job_id) { job_id } else { "" };
        let fields: Vec<Option<String>> = self
            .client
            .run(self.timeout, |mut c| async move {
                self.scripts
                    .get
                    .key(&done)
                    .key(&job)
                    .key(stream)
                    .arg(entry)
                    .arg(GROUP)
                    .arg(now_ms())
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let mut fields = fields.into_iter();
        if let Some(Some(stored)) = fields.next() {
            let stored: Stored = serde_json::from_str(&stored)
                .map_err(|e| Error::internal(format!("stored job {job_id} is not valid: {e}")))?;
            return Ok(Some(stored.doc(job_id)));
        }
        let mut next = || fields.next().flatten();
        let (Some(spec), Some(status)) = (next(), next()) else {
            return Ok(None);
        };
        let number = |field: Option<String>| field.and_then(|f| f.parse::<u64>().ok());
        let (attempts, created, updated) = (number(next()), number(next()), number(next()));
        let spec: JobSpec = serde_json::from_str(&spec)
            .map_err(|e| Error::internal(format!("stored job {job_id} is not valid: {e}")))?;
        let status: JobStatus = serde_json::from_value(serde_json::Value::String(status))
            .map_err(|e| Error::internal(format!("stored job {job_id} has a bad status: {e}")))?;
        let mut doc = JobDoc::queued(job_id.to_owned(), spec);
        doc.status = status;
        doc.attempts = attempts.unwrap_or(0) as u32;
        doc.created_at_ms = created.unwrap_or(0);
        doc.updated_at_ms = updated.unwrap_or(0);
        doc.result = next().and_then(|r| serde_json::from_str::<JobResult>(&r).ok());
        doc.error = next().and_then(|e| serde_json::from_str::<JobError>(&e).ok());
        Ok(Some(doc))
    }

    /// Woken by the queue's end notices (see the module's documentation). Without them (no
    /// connection for their reader) it looks at the job as the default does.
    async fn until_ended(&self, job_id: &str, wait: Duration) -> Result<Option<JobDoc>> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(5);
        loop {
            let (watching, mut positioned) = self.watch(job_id);
            let _forget = OnDrop::new(|| {
                (self.awaited.lock().unwrap_or_else(|p| p.into_inner()))
                    .watchers
                    .forget(job_id, &watching);
            });
            let mut notified = std::pin::pin!(watching.notified());
            notified.as_mut().enable();
            let noticed = *positioned.borrow()
                || tokio::time::timeout_at(deadline, positioned.wait_for(|p| *p))
                    .await
                    .is_ok_and(|p| p.is_ok());
            // Looked at once its end would be noticed, so it is either ended here or noticed.
            let doc = self.get(job_id).await;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if doc
                .as_ref()
                .map_or(true, |doc| super::settled(doc.as_ref(), left))
            {
                return doc;
            }
            let nap = if noticed { NOTICED_POLL } else { pause };
            let _ = tokio::time::timeout(nap.min(left), notified).await;
            pause = (pause * 2).min(super::UNTIL_ENDED_POLL);
        }
    }

    async fn depth(&self) -> Result<u64> {
        self.ensure_group().await?;
        let stream = &*self.stream;
        let delayed = &*self.delayed;
        self.client
            .run(self.timeout, |mut c| async move {
                self.scripts
                    .depth
                    .key(stream)
                    .key(delayed)
                    .arg(GROUP)
                    .invoke_async(&mut c)
                    .await
            })
            .await
    }

    async fn ping(&self) -> Result<()> {
        self.client
            .run(self.timeout, |mut c| async move {
                redis::cmd("PING").query_async::<()>(&mut c).await
            })
            .await
    }

    async fn cancel(&self, job_id: &str) -> Result<Option<JobDoc>> {
        self.ensure_group().await?;
        let Some(mut doc) = self.get(job_id).await? else {
            return Ok(None);
        };
        if !doc.cancel() {
            return Ok(Some(doc));
        }
        let stored = StoredRef::of(&doc)
            .ok_or_else(|| Error::internal(format!("job {job_id} has no spec")))?;
        let body = self.outcomes.encode(&stored)?;
        let (done, job) = (self.done_key(job_id), self.job_key(job_id));
        let (stream, delayed, notices) = (&*self.stream, &*self.delayed, &*self.ended);
        let entry = if is_entry_id(job_id) { job_id } else { "" };
        let reply: Vec<Value> = self
            .client
            .run(self.timeout, |mut c| async move {
                self.scripts
                    .cancel
                    .key(&done)
                    .key(&job)
                    .key(stream)
                    .key(delayed)
                    .key(notices)
                    .arg(&body)
                    .arg(RETENTION.as_secs())
                    .arg(entry)
                    .arg(GROUP)
                    .arg(job_id)
                    .arg(ENDED_KEPT)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        match reply.first() {
            Some(Value::Int(1)) => Ok(Some(doc)),
            // It ended meanwhile (or a cancel came first).
            _ => self.get(job_id).await,
        }
    }

    async fn retry(&self, job_id: &str) -> Result<Option<JobDoc>> {
        self.ensure_group().await?;
        let Some(mut doc) = self.get(job_id).await? else {
            return Ok(None);
        };
        if !doc.requeue() {
            return Ok(Some(doc));
        }
        let spec = (doc.spec.as_deref())
            .ok_or_else(|| Error::internal(format!("job {job_id} has no spec")))?;
        let body = json(spec)?;
        let error = doc
            .error
            .as_ref()
            .map(json)
            .transpose()?
            .unwrap_or_default();
        let tenant = &spec.tenant;
        let hook = super::webhook_key(job_id);
        let hook = self.key(&format!("idem:{}:{tenant}:{hook}", tenant.len()));
        let (done, job) = (self.done_key(job_id), self.job_key(job_id));
        let (stream, dead) = (&*self.stream, &*self.dead);
        let created = doc.created_at_ms;
        let requeued: u8 = self
            .client
            .run(self.timeout, |mut c| async move {
                self.scripts
                    .retry
                    .key(&done)
                    .key(&job)
                    .key(stream)
                    .key(dead)
                    .key(&hook)
                    .arg(&body)
                    .arg(created)
                    .arg(now_ms())
                    .arg(RETENTION.as_secs())
                    .arg(job_id)
                    .arg(&error)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        if requeued == 1 {
            Ok(Some(doc))
        } else {
            // It changed meanwhile.
            self.get(job_id).await
        }
    }

    /// A job's live log is a stream of its own (`{prefix}:live:{job_id}`, capped at about
    /// [`LIVE_EVENTS_KEPT`] entries, expiring [`LIVE_RETENTION`] after its last).
    async fn publish_live(&self, job_id: &str, event: &LiveEvent) -> Result<()> {
        let key = self.live_key(job_id);
        let body = event.encode()?;
        self.client
            .run(self.timeout, |mut c| async move {
                redis::pipe()
                    .cmd("XADD")
                    .arg(&key)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(LIVE_EVENTS_KEPT)
                    .arg("*")
                    .arg("e")
                    .arg(&body)
                    .ignore()
                    .cmd("EXPIRE")
                    .arg(&key)
                    .arg(LIVE_RETENTION.as_secs())
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
    }

    /// Reads the job's live log from its first entry. Every job of this queue followed in
    /// this process is read by one blocking `XREAD` on one connection of the client's pool.
    async fn follow_live(&self, job_id: &str) -> Result<Option<LiveEvents>> {
        let key = self.live_key(job_id);
        let live = self.live.follow(&self.client, key, self.timeout).await?;
        Ok(Some(live))
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn ledger(&self) -> Arc<dyn EffectLedger> {
        Arc::new(RedisLedger {
            client: self.client.clone(),
            prefix: self.key("effect"),
            timeout: self.timeout,
        })
    }
}

/// Side effects recorded in Redis keys that expire after [`RETENTION`].
#[derive(Clone)]
struct RedisLedger {
    client: RedisClient,
    prefix: String,
    timeout: Duration,
}

#[async_trait]
impl EffectLedger for RedisLedger {
    async fn recorded(&self, key: &str) -> Result<Option<String>> {
        let key = format!("{}:{key}", self.prefix);
        self.client
            .run(self.timeout, |mut c| async move {
                redis::cmd("GET").arg(&key).query_async(&mut c).await
            })
            .await
    }

    async fn record(&self, key: &str, output: &str) -> Result<()> {
        let key = format!("{}:{key}", self.prefix);
        self.client
            .run(self.timeout, |mut c| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(output)
                    .arg("EX")
                    .arg(RETENTION.as_secs())
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[(&str, &str)]) -> Value {
        let fields = fields
            .iter()
            .flat_map(|(name, value)| [bulk(name), bulk(value)])
            .collect();
        Value::Array(vec![bulk(id), Value::Array(fields)])
    }

    fn entries() -> Value {
        Value::Array(vec![
            entry("1-0", &[("spec", "{}"), ("created", "5")]),
            entry("2-0", &[("job", "1-0"), ("other", "x")]),
        ])
    }

    fn check(read: Vec<Entry>) {
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].id, "1-0");
        assert_eq!(read[0].spec.as_deref(), Some("{}"));
        assert_eq!(read[0].created.as_deref(), Some("5"));
        assert_eq!(read[0].job, None);
        assert_eq!(read[1].id, "2-0");
        assert_eq!(read[1].job.as_deref(), Some("1-0"));
        assert_eq!(
            (read[1].spec.as_deref(), read[1].created.as_deref()),
            (None, None)
        );
    }

    #[test]
    fn entries_read_from_a_resp2_reply() {
        let reply = Value::Array(vec![Value::Array(vec![bulk("stream"), entries()])]);
        check(read_entries(reply));
    }

    #[test]
    fn entries_read_from_a_resp3_reply() {
        let reply = Value::Map(vec![(bulk("stream"), entries())]);
        check(read_entries(reply));
    }

    #[test]
    fn nothing_read_from_an_empty_or_malformed_reply() {
        assert!(read_entries(Value::Nil).is_empty());
        assert!(read_entries(Value::Array(vec![bulk("stream")])).is_empty());
        // An entry without its fields (deleted under a pending read) is skipped.
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("stream"),
            Value::Array(vec![Value::Array(vec![bulk("3-0"), Value::Nil])]),
        ])]);
        assert!(read_entries(reply).is_empty());
    }
}
