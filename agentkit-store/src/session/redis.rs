//! Sessions and leases on Redis: one hash per session (version, body, TTL, update time) under a
//! per-session hash tag, saved by a Lua compare-and-set; a sorted set per tenant for paging.
//! One round trip to load (a plain `HMGET`: on this workload a script costs a tenth more
//! latency than the command it wraps), one to save.

use std::sync::Arc;
use std::time::Duration;

use agentkit_core::Result;
use async_trait::async_trait;
use redis::Script;
use tokio::sync::Semaphore;

use super::{
    Body, Lease, LeaseStore, SLIDES_IN_FLIGHT, SaveOptions, Session, SessionPage, SessionStore,
    SessionSummary, conflict, fenced, now_ms, page_limit, slide_off_path, validate_key,
};
use crate::redis_pool::{self, RedisClient, session_tag};

/// The fields a load reads: version, JSON body, TTL ms (0: none), updated ms.
const FIELDS: [&str; 4] = ["v", "d", "t", "u"];

/// Slides a session's TTL to the one it holds now (so a save racing the slide is not undone).
const SLIDE: &str = r"
local t = tonumber(redis.call('HGET', KEYS[1], 't') or '0')
if t > 0 then redis.call('PEXPIRE', KEYS[1], t) end
return 0
";

/// Compare-and-set: ARGV = expected version, body, ttl ms (0: none), fence token (-1: none), now ms.
/// Returns {new version, 0}, {-1, current} on a version conflict, {-2, issued} when fenced.
const SAVE: &str = r"
local cur = redis.call('HMGET', KEYS[1], 'v', 't')
local expected = tonumber(ARGV[1])
if (not cur[1] and expected ~= 0) or (cur[1] and tonumber(cur[1]) ~= expected) then
  return {-1, tonumber(cur[1] or '0')}
end
local fence = tonumber(ARGV[4])
if fence >= 0 then
  local issued = tonumber(redis.call('GET', KEYS[2]) or '0')
  if issued > fence then return {-2, issued} end
end
local v = expected + 1
redis.call('HSET', KEYS[1], 'v', v, 'd', ARGV[2], 't', ARGV[3], 'u', ARGV[5])
if tonumber(ARGV[3]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
elseif tonumber(cur[2] or '0') > 0 then
  redis.call('PERSIST', KEYS[1])
end
return {v, 0}
";

/// KEYS = lease, token counter; ARGV = owner, ttl ms. Returns the token, or nil when held.
const ACQUIRE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local owner = string.match(cur, '^(.*)|%d+$')
  if owner ~= ARGV[1] then return false end
end
local token = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], 604800000)
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return token
";

/// KEYS = lease; ARGV = owner|token, ttl ms (0: release). Returns 1 when it was held.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  redis.call('DEL', KEYS[1])
end
return 1
";

/// Sessions and leases on Redis through a deadpool pool.
///
/// Keys: `{prefix}:s:{tag}` (hash: `v` version, `d` JSON body, `t` TTL ms, `u` updated ms),
/// `{prefix}:l:{tag}` (lease: `owner|token`), `{prefix}:f:{tag}` (fencing counter) and
/// `{prefix}:idx:{tenant}` (sorted set of ids for paging), where `{tag}` is a per-session hash
/// tag, so the keys a script touches share a Redis Cluster slot.
#[derive(Clone)]
pub struct RedisSessionStore {
    client: RedisClient,
    prefix: String,
    default_ttl: Option<Duration>,
    timeout: Duration,
    slide: Script,
    slides: Arc<Semaphore>,
    save: Script,
    acquire: Script,
    renew: Script,
}

impl std::fmt::Debug for RedisSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSessionStore")
            .field("prefix", &self.prefix)
            .field("default_ttl", &self.default_ttl)
            .finish_non_exhaustive()
    }
}

impl RedisSessionStore {
    /// A store on `client` with keys under `agentkit`.
    pub fn new(client: RedisClient) -> Self {
        Self {
            client,
            prefix: "agentkit".to_owned(),
            default_ttl: None,
            timeout: redis_pool::DEFAULT_TIMEOUT,
            slide: Script::new(SLIDE),
            slides: Arc::new(Semaphore::new(SLIDES_IN_FLIGHT)),
            save: Script::new(SAVE),
            acquire: Script::new(ACQUIRE),
            renew: Script::new(RENEW),
        }
    }

    /// A store on a new client of `url` (pool of 16 connections).
    pub fn connect(url: &str) -> Result<Self> {
        Ok(Self::new(RedisClient::connect(url, 16)?))
    }

    /// Puts every key under `prefix` (one namespace per application or test).
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sessions without a TTL of their own expire after `ttl` without a load or save.
    #[must_use]
    pub fn with_default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// The longest one command may take (default 5 s).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The client, to share with a job queue.
    pub fn client(&self) -> &RedisClient {
        &self.client
    }

    fn key(&self, kind: &str, tenant: &str, id: &str) -> String {
        format!("{}:{kind}:{}", self.prefix, session_tag(tenant, id))
    }

    fn index(&self, tenant: &str) -> String {
        format!("{}:idx:{{{tenant}}}", self.prefix)
    }

    /// Slides the TTL of the session at `key`, loaded a moment ago, off the load's path where it
    /// can (see [`slide_off_path`]). The script sets the TTL the session holds when it runs, so
    /// a save that lands in between keeps its own; a session that expires in that moment stays
    /// expired.
    async fn slide_ttl(&self, key: String) {
        let (client, slide, timeout) = (self.client.clone(), self.slide.clone(), self.timeout);
        let slid = async move {
            client
                .run(timeout, |mut conn| {
                    let (slide, key) = (&slide, &key);
                    async move { slide.key(key).invoke_async::<i64>(&mut conn).await }
                })
                .await
                .map(drop)
        };
        slide_off_path(&self.slides, slid).await;
    }
}

fn millis(d: Option<Duration>) -> u64 {
    d.map_or(0, |d| d.as_millis().max(1) as u64)
}

#[async_trait]
impl SessionStore for RedisSessionStore {
    async fn load(&self, tenant: &str, id: &str) -> Result<Option<Session>> {
        validate_key(tenant, id)?;
        let key = self.key("s", tenant, id);
        let (version, body, ttl, updated): (Option<u64>, Option<String>, Option<u64>, Option<u64>) =
            self.client
                .run(self.timeout, |mut conn| {
                    let key = &key;
                    async move {
                        redis::cmd("HMGET")
                            .arg(key)
                            .arg(&FIELDS)
                            .query_async(&mut conn)
                            .await
                    }
                })
                .await?;
        let (Some(version), Some(body)) = (version, body) else {
            return Ok(None);
        };
        let ttl = ttl.filter(|t| *t > 0);
        if ttl.is_some() {
            self.slide_ttl(key).await;
        }
        let body = Body::decode(&body)?;
        Ok(Some(Session {
            tenant: tenant.to_owned(),
            id: id.to_owned(),
            version,
            messages: body.messages,
            metadata: body.metadata,
            ttl: ttl.map(Duration::from_millis),
            updated_at_ms: updated.unwrap_or(0),
        }))
    }

    async fn save(&self, session: &Session, options: SaveOptions) -> Result<u64> {
        validate_key(&session.tenant, &session.id)?;
        let body = Body::encode(session)?;
        let key = self.key("s", &session.tenant, &session.id);
        let fence_key = self.key("f", &session.tenant, &session.id);
        let index = self.index(&session.tenant);
        let ttl = millis(session.ttl.or(self.default_ttl));
        let fence = options.fence.map_or(-1, |f| f as i64);
        let now = now_ms();
        let pipeline = || {
            let mut invocation = self.save.key(&key);
            invocation
                .key(&fence_key)
                .arg(session.version)
                .arg(&body)
                .arg(ttl)
                .arg(fence)
                .arg(now);
            let mut pipe = redis::pipe();
            pipe.invoke_script(&invocation);
            // The paging index needs the id once: when the session is created. (On a cluster
            // the index lives in another slot, so it is added after the save instead.)
            if session.version == 0 && !self.client.is_cluster() {
                pipe.zadd(&index, &session.id, 0).ignore();
            }
            pipe
        };
        let ((status, detail),): ((i64, u64),) = self
            .client
            .run(self.timeout, |mut conn| async move {
                match pipeline().query_async(&mut conn).await {
                    Err(e) if e.code() == Some("NOSCRIPT") => {
                        self.save.prepare_invoke().load_async(&mut conn).await?;
                        pipeline().query_async(&mut conn).await
                    }
                    other => other,
                }
            })
            .await?;
        if status > 0 && session.version == 0 && self.client.is_cluster() {
            let add = redis::cmd("ZADD")
                .arg(&index)
                .arg(0)
                .arg(&session.id)
                .to_owned();
            self.client.run_each::<()>(self.timeout, &[add]).await?;
        }
        match status {
            -1 => Err(conflict(&session.tenant, &session.id, session.version)),
            -2 => Err(fenced(
                &session.tenant,
                &session.id,
                options.fence.unwrap_or(detail),
            )),
            v => Ok(v as u64),
        }
    }

    async fn delete(&self, tenant: &str, id: &str) -> Result<bool> {
        validate_key(tenant, id)?;
        let key = self.key("s", tenant, id);
        let index = self.index(tenant);
        let commands = [
            redis::cmd("DEL").arg(&key).to_owned(),
            redis::cmd("ZREM").arg(&index).arg(id).to_owned(),
        ];
        let answers: Vec<u64> = self.client.run_each(self.timeout, &commands).await?;
        Ok(answers[0] > 0)
    }

    async fn list(&self, tenant: &str, after: Option<&str>, limit: usize) -> Result<SessionPage> {
        validate_key(tenant, after.unwrap_or("-"))?;
        let limit = page_limit(limit);
        let mut cursor = after.map_or_else(|| "-".to_owned(), |a| format!("({a}"));
        let mut sessions = Vec::with_capacity(limit + 1);
        // Ids whose session expired are dropped from the index as they are met; keep reading
        // until one more than a page is found or the index ends.
        loop {
            let want = limit + 1 - sessions.len();
            let ids = self.index_range(tenant, &cursor, want).await?;
            let found = self.summaries(tenant, &ids).await?;
            let mut gone = Vec::new();
            for (id, summary) in ids.iter().zip(found) {
                match summary {
                    Some(summary) => sessions.push(summary),
                    None => gone.push(id.clone()),
                }
            }
            self.forget(tenant, gone).await?;
            if sessions.len() > limit {
                sessions.truncate(limit);
                let next = sessions.last().map(|s| s.id.clone());
                return Ok(SessionPage { sessions, next });
            }
            match ids.last() {
                Some(last) if ids.len() == want => cursor = format!("({last}"),
                _ => {
                    return Ok(SessionPage {
                        sessions,
                        next: None,
                    });
                }
            }
        }
    }

    async fn ping(&self) -> Result<()> {
        self.client
            .run(self.timeout, |mut conn| async move {
                redis::cmd("PING").query_async::<()>(&mut conn).await
            })
            .await
    }
}

#[async_trait]
impl LeaseStore for RedisSessionStore {
    async fn acquire(
        &self,
        tenant: &str,
        id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        validate_key(tenant, id)?;
        if owner.is_empty() || owner.contains('|') {
            return Err(agentkit_core::Error::invalid_input(
                "a lease owner must be non-empty and contain no '|'",
            ));
        }
        let lease = self.key("l", tenant, id);
        let counter = self.key("f", tenant, id);
        let token: Option<u64> = self
            .client
            .run(self.timeout, |mut conn| async move {
                self.acquire
                    .key(&lease)
                    .key(&counter)
                    .arg(owner)
                    .arg(millis(Some(ttl)))
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(token.map(|token| Lease {
            tenant: tenant.to_owned(),
            session_id: id.to_owned(),
            owner: owner.to_owned(),
            token,
        }))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        let held: u8 = self.renew_or_release(lease, millis(Some(ttl))).await?;
        Ok(held == 1)
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        self.renew_or_release(lease, 0).await.map(|_| ())
    }
}

impl RedisSessionStore {
    async fn index_range(&self, tenant: &str, cursor: &str, count: usize) -> Result<Vec<String>> {
        let index = self.index(tenant);
        self.client
            .run(self.timeout, |mut conn| async move {
                redis::cmd("ZRANGE")
                    .arg(&index)
                    .arg(cursor)
                    .arg("+")
                    .arg("BYLEX")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(count)
                    .query_async(&mut conn)
                    .await
            })
            .await
    }

    async fn summaries(&self, tenant: &str, ids: &[String]) -> Result<Vec<Option<SessionSummary>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let commands: Vec<redis::Cmd> = ids
            .iter()
            .map(|id| {
                redis::cmd("HMGET")
                    .arg(self.key("s", tenant, id))
                    .arg("v")
                    .arg("u")
                    .to_owned()
            })
            .collect();
        let found: Vec<(Option<u64>, Option<u64>)> =
            self.client.run_each(self.timeout, &commands).await?;
        Ok(ids
            .iter()
            .zip(found)
            .map(|(id, (version, updated))| {
                version.map(|version| SessionSummary {
                    id: id.clone(),
                    version,
                    updated_at_ms: updated.unwrap_or(0),
                })
            })
            .collect())
    }

    async fn forget(&self, tenant: &str, gone: Vec<String>) -> Result<()> {
        if gone.is_empty() {
            return Ok(());
        }
        let index = self.index(tenant);
        self.client
            .run(self.timeout, |mut conn| async move {
                redis::cmd("ZREM")
                    .arg(&index)
                    .arg(&gone)
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await
    }

    async fn renew_or_release(&self, lease: &Lease, ttl_ms: u64) -> Result<u8> {
        let key = self.key("l", &lease.tenant, &lease.session_id);
        let value = format!("{}|{}", lease.owner, lease.token);
        self.client
            .run(self.timeout, |mut conn| async move {
                self.renew
                    .key(&key)
                    .arg(&value)
                    .arg(ttl_ms)
                    .invoke_async(&mut conn)
                    .await
            })
            .await
    }
}
