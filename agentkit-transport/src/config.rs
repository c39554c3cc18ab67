//! Service configuration from the environment.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use agentkit_core::{Error, Result};

use crate::auth::Authenticator;
use crate::limit::RateLimits;

/// What the bundled service reads from the environment.
///
/// | variable | meaning | default |
/// | --- | --- | --- |
/// | `AGENTKIT_ADDR` | bind address | `127.0.0.1:8080` |
/// | `REDIS_URL` | sessions (and jobs) on Redis | in memory |
/// | `DATABASE_URL` | sessions on PostgreSQL when Redis is not set; run records | none |
/// | `NATS_URL` | jobs on NATS JetStream | none |
/// | `AGENTKIT_API_KEYS` | `tenant:key,...`; when set (or a JWT secret), `/v1` needs `Authorization: Bearer` | none |
/// | `AGENTKIT_API_KEYS_FILE` | a file holding such pairs (commas or lines), read again every 30 s: keys rotate without a restart | none |
/// | `AGENTKIT_JWT_SECRET` | HS256 secret for JWTs with `tenant`, `exp`, `sub`, `scope` | none |
/// | `AGENTKIT_JWT_SECRET_FILE` | a file of such secrets, one per line (the new one and, while rotating, the old), read again every 30 s | none |
/// | `AGENTKIT_RATE_LIMIT` | per tenant: `N` or `N/BURST` requests per second | none |
/// | `AGENTKIT_REQUEST_TIMEOUT_MS` | deadline of each request | 120000 |
/// | `AGENTKIT_DRAIN_TIMEOUT_MS` | how long shutdown waits for in-flight requests | 30000 |
/// | `AGENTKIT_BODY_LIMIT` | largest request body, bytes | 1048576 |
/// | `AGENTKIT_QUEUE` | job queue name | `agentkit` |
/// | `AGENTKIT_VISIBILITY_MS` | how long a claimed job may go without a heartbeat | 30000 |
/// | `AGENTKIT_WEBHOOK_SECRET` | HMAC secret for job webhooks | none (no webhooks) |
/// | `AGENTKIT_WEBHOOK_SECRET_FILE` | a file holding it instead, read again every 30 s (rotation without a restart) | none |
/// | `AGENTKIT_WEBHOOK_ALLOW_PRIVATE` | `true`: webhooks may call loopback and private addresses | `false` |
/// | `AGENTKIT_SESSION_LEASE_MS` | with sessions in Redis or PostgreSQL, how long a session's lease lasts (renewed while a turn runs; an instance that dies mid-turn holds its sessions this long); `0` turns leases off | 10000 |
/// | `AGENTKIT_SESSION_TTL_MS` | how long a session lives after its last load or save, in any store; `0`: sessions never expire | 604800000 (7 days) |
/// | `AGENTKIT_KEYED_INVOKES_AS_JOBS` | `true`: an invoke with an idempotency key runs as a job with that key, so a retry answers from it (needs workers on the queue); `false`: the key only travels on | `true` with the embedded queue and worker, `false` with `REDIS_URL` or `NATS_URL` |
/// | `AGENTKIT_INSTANCE_ID` | this instance's name as a lease owner, unique in the fleet | `{HOSTNAME}-{pid}-{random}` |
#[derive(Clone)]
pub struct ServiceConfig {
    /// Bind address.
    pub addr: SocketAddr,
    /// `REDIS_URL`.
    pub redis_url: Option<String>,
    /// `DATABASE_URL`.
    pub database_url: Option<String>,
    /// `NATS_URL`.
    pub nats_url: Option<String>,
    /// Who may call.
    pub auth: Authenticator,
    /// Per-tenant rate limits.
    pub rate_limits: Option<RateLimits>,
    /// Deadline of each request.
    pub request_timeout: Duration,
    /// How long shutdown drains.
    pub drain_timeout: Duration,
    /// Largest body.
    pub body_limit: usize,
    /// Job queue name.
    pub queue_name: String,
    /// Job visibility timeout.
    pub visibility: Duration,
    /// Job webhook secret.
    pub webhook_secret: Option<String>,
    /// A file holding the job webhook secret (wins over `webhook_secret`).
    pub webhook_secret_file: Option<std::path::PathBuf>,
    /// Whether webhooks may call loopback and private addresses.
    pub webhook_allow_private: bool,
    /// How long a session lease lasts, when sessions are kept in a server; `None`: no leases.
    pub session_lease: Option<Duration>,
    /// This instance's name as a lease owner.
    pub instance_id: String,
    /// How long a session lives after its last load or save; `None`: for good.
    pub session_ttl: Option<Duration>,
    /// Whether keyed invokes run as jobs; `None`: only when the service runs its own worker.
    pub keyed_invokes_as_jobs: Option<bool>,
}

impl fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // URLs may carry passwords; only say whether they are set.
        f.debug_struct("ServiceConfig")
            .field("addr", &self.addr)
            .field("redis", &self.redis_url.is_some())
            .field("postgres", &self.database_url.is_some())
            .field("nats", &self.nats_url.is_some())
            .field("auth", &self.auth)
            .field("rate_limits", &self.rate_limits)
            .field("request_timeout", &self.request_timeout)
            .field("drain_timeout", &self.drain_timeout)
            .field("body_limit", &self.body_limit)
            .field("queue_name", &self.queue_name)
            .field("visibility", &self.visibility)
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("webhook_allow_private", &self.webhook_allow_private)
            .field("session_lease", &self.session_lease)
            .field("instance_id", &self.instance_id)
            .finish()
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The secret file `variable` names, read again every 30 s; an error naming the variable
/// unless it can be read now.
fn rotating_file(variable: &str, path: &str) -> Result<agentkit_core::secret::CachedSecret> {
    let path = path.trim();
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => {}
        Ok(_) => return Err(Error::invalid_input(format!("{variable}: {path} is empty"))),
        Err(e) => {
            return Err(Error::invalid_input(format!(
                "{variable}: cannot read {path}: {e}"
            )));
        }
    }
    agentkit_core::secret::CachedSecret::from_file(path, Duration::from_secs(30))
        .map_err(|e| Error::invalid_input(format!("{variable}: {}", e.message())))
}

fn millis(name: &str, default: u64) -> Result<Duration> {
    match var(name) {
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| Error::invalid_input(format!("{name} must be a number of milliseconds"))),
        None => Ok(Duration::from_millis(default)),
    }
}

/// `{HOSTNAME}-{pid}-{random}`: the random part makes each start of a process a new owner,
/// so a restarted container (same host name, often the same pid) never passes for the
/// instance that died holding a lease.
fn default_instance_id() -> String {
    let host = var("HOSTNAME")
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().chars().take(64).collect::<String>())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "agentkit".to_owned());
    let random = agentkit_core::generate_id();
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &random[..8.min(random.len())]
    )
}

impl ServiceConfig {
    /// Reads the environment; an error names the variable that is wrong.
    pub fn from_env() -> Result<Self> {
        let addr = var("AGENTKIT_ADDR")
            .unwrap_or_else(|| "127.0.0.1:8080".to_owned())
            .parse()
            .map_err(|_| {
                Error::invalid_input("AGENTKIT_ADDR must be host:port, like 127.0.0.1:8080")
            })?;
        let mut auth = Authenticator::none();
        if let Some(keys) = var("AGENTKIT_API_KEYS") {
            auth = auth.with_api_keys_spec(&keys)?;
        }
        if let Some(secret) = var("AGENTKIT_JWT_SECRET") {
            auth = auth.with_jwt_secret(secret.as_bytes())?;
        }
        if let Some(path) = var("AGENTKIT_API_KEYS_FILE") {
            auth = auth.with_api_keys_from(rotating_file("AGENTKIT_API_KEYS_FILE", &path)?);
        }
        if let Some(path) = var("AGENTKIT_JWT_SECRET_FILE") {
            auth = auth.with_jwt_secrets_from(rotating_file("AGENTKIT_JWT_SECRET_FILE", &path)?);
        }
        let rate_limits = var("AGENTKIT_RATE_LIMIT")
            .map(|spec| RateLimits::from_spec(&spec))
            .transpose()?;
        let body_limit = match var("AGENTKIT_BODY_LIMIT") {
            Some(v) => v.trim().parse().map_err(|_| {
                Error::invalid_input("AGENTKIT_BODY_LIMIT must be a number of bytes")
            })?,
            None => 1 << 20,
        };
        let session_lease =
            Some(millis("AGENTKIT_SESSION_LEASE_MS", 10_000)?).filter(|lease| !lease.is_zero());
        if session_lease.is_some_and(|lease| lease < Duration::from_millis(100)) {
            return Err(Error::invalid_input(
                "AGENTKIT_SESSION_LEASE_MS must be 0 (no leases) or at least 100",
            ));
        }
        let session_ttl = Some(millis("AGENTKIT_SESSION_TTL_MS", 7 * 24 * 3_600_000)?)
            .filter(|ttl| !ttl.is_zero());
        if session_ttl.is_some_and(|ttl| ttl < Duration::from_secs(1)) {
            return Err(Error::invalid_input(
                "AGENTKIT_SESSION_TTL_MS must be 0 (sessions never expire) or at least 1000",
            ));
        }
        let instance_id = match var("AGENTKIT_INSTANCE_ID") {
            Some(id) if id.trim().len() > 128 => {
                return Err(Error::invalid_input(
                    "AGENTKIT_INSTANCE_ID must be at most 128 characters",
                ));
            }
            Some(id) => id.trim().to_owned(),
            None => default_instance_id(),
        };
        Ok(Self {
            addr,
            redis_url: var("REDIS_URL"),
            database_url: var("DATABASE_URL"),
            nats_url: var("NATS_URL"),
            auth,
            rate_limits,
            request_timeout: millis("AGENTKIT_REQUEST_TIMEOUT_MS", 120_000)?,
            drain_timeout: millis("AGENTKIT_DRAIN_TIMEOUT_MS", 30_000)?,
            body_limit,
            queue_name: var("AGENTKIT_QUEUE").unwrap_or_else(|| "agentkit".to_owned()),
            visibility: millis("AGENTKIT_VISIBILITY_MS", 30_000)?,
            webhook_secret: var("AGENTKIT_WEBHOOK_SECRET"),
            webhook_secret_file: var("AGENTKIT_WEBHOOK_SECRET_FILE").map(Into::into),
            webhook_allow_private: match var("AGENTKIT_WEBHOOK_ALLOW_PRIVATE").as_deref() {
                None | Some("false" | "0") => false,
                Some("true" | "1") => true,
                Some(other) => {
                    return Err(Error::invalid_input(format!(
                        "AGENTKIT_WEBHOOK_ALLOW_PRIVATE must be true or false, not {other:?}"
                    )));
                }
            },
            session_lease,
            instance_id,
            session_ttl,
            keyed_invokes_as_jobs: match var("AGENTKIT_KEYED_INVOKES_AS_JOBS").as_deref() {
                None => None,
                Some("true" | "1") => Some(true),
                Some("false" | "0") => Some(false),
                Some(other) => {
                    return Err(Error::invalid_input(format!(
                        "AGENTKIT_KEYED_INVOKES_AS_JOBS must be true or false, not {other:?}"
                    )));
                }
            },
        })
    }

    /// The job queue the environment names: NATS JetStream for `NATS_URL`, else Redis Streams
    /// for `REDIS_URL`, else `None` (the caller picks the in-memory queue).
    pub async fn job_queue(&self) -> Result<Option<std::sync::Arc<dyn crate::jobs::JobQueue>>> {
        if let Some(url) = &self.nats_url {
            #[cfg(feature = "nats")]
            {
                let queue = crate::jobs::nats::NatsJobQueue::connect_with(
                    url,
                    &self.queue_name,
                    self.visibility,
                )
                .await?;
                return Ok(Some(std::sync::Arc::new(queue)));
            }
            #[cfg(not(feature = "nats"))]
            {
                let _ = url;
                return Err(Error::invalid_input(
                    "NATS_URL is set but this build lacks the `nats` feature",
                ));
            }
        }
        if let Some(url) = &self.redis_url {
            #[cfg(feature = "redis")]
            {
                let queue = crate::jobs::redis::RedisJobQueue::connect(url, &self.queue_name)?
                    .with_visibility_timeout(self.visibility);
                return Ok(Some(std::sync::Arc::new(queue)));
            }
            #[cfg(not(feature = "redis"))]
            {
                let _ = url;
                return Err(Error::invalid_input(
                    "REDIS_URL is set but this build lacks the `redis` feature",
                ));
            }
        }
        Ok(None)
    }

    /// The webhook sender, when `AGENTKIT_WEBHOOK_SECRET_FILE` or `AGENTKIT_WEBHOOK_SECRET` is
    /// set.
    pub fn webhooks(&self) -> Result<Option<crate::jobs::WebhookSender>> {
        let sender = if let Some(path) = &self.webhook_secret_file {
            let secret =
                agentkit_core::secret::CachedSecret::from_file(path, Duration::from_secs(30))?;
            crate::jobs::WebhookSender::with_rotating_secret(secret)?
        } else if let Some(secret) = &self.webhook_secret {
            crate::jobs::WebhookSender::new(secret.as_bytes())?
        } else {
            return Ok(None);
        };
        sender
            .allow_private_targets(self.webhook_allow_private)
            .map(Some)
    }
}
