//! Redis connections: one deadpool pool per URL, shared by the session store, the lease store
//! and (in agentkit-transport) the job queue; every command bounded by a timeout.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentkit_core::{Error, ErrorKind, Result};
pub use deadpool_redis::{Connection, Pool};
use deadpool_redis::{PoolConfig, Runtime, Timeouts};
pub use redis::aio::MultiplexedConnection;

/// How long a pool waits for a connection, creates one or checks one, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A pool of connections to the Redis server at `url` (`redis://127.0.0.1:6379/0`), with
/// `max_size` connections at most and every wait bounded by [`DEFAULT_TIMEOUT`]. No connection
/// is opened until the first command, so a server that is down at start-up is not an error
/// here; a server that goes away later comes back by itself (broken connections are replaced).
pub fn pool(url: &str, max_size: usize) -> Result<Pool> {
    let mut config = deadpool_redis::Config::from_url(url);
    let mut pool = PoolConfig::new(max_size.max(1));
    pool.timeouts = Timeouts {
        wait: Some(DEFAULT_TIMEOUT),
        create: Some(DEFAULT_TIMEOUT),
        recycle: Some(DEFAULT_TIMEOUT),
    };
    config.pool = Some(pool);
    config
        .create_pool(Some(Runtime::Tokio1))
        .map_err(|e| Error::invalid_input(format!("invalid Redis configuration {url:?}: {e}")))
}

/// Takes a connection from `pool`, as an agentkit error.
pub async fn connection(pool: &Pool) -> Result<Connection> {
    pool.get().await.map_err(|e| match e {
        deadpool_redis::PoolError::Backend(e) => redis_error(e),
        other => Error::unavailable(format!("no Redis connection available: {other}")),
    })
}

/// A client of one Redis server: a shared multiplexed connection for ordinary commands (one
/// round trip each, pipelined between concurrent callers) and the pool for blocking ones.
///
/// The shared connection is taken out of the pool on first use and replaced by a fresh one
/// when a command fails on it for connection reasons, so a restarted server is picked up
/// without rebuilding anything. Cheap to clone.
#[derive(Clone)]
pub struct RedisClient {
    pool: Pool,
    shared: Arc<Mutex<Option<MultiplexedConnection>>>,
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisClient")
            .field("pool", &self.pool.status())
            .finish()
    }
}

impl RedisClient {
    /// A client on `pool`.
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            shared: Arc::default(),
        }
    }

    /// A client of the server at `url` with a pool of `max_size` (see [`pool`]).
    pub fn connect(url: &str, max_size: usize) -> Result<Self> {
        Ok(Self::new(pool(url, max_size)?))
    }

    /// The pool, for blocking commands that need a connection of their own.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    async fn shared(&self) -> Result<MultiplexedConnection> {
        if let Some(conn) = self
            .shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return Ok(conn.clone());
        }
        let conn = deadpool_redis::Connection::take(connection(&self.pool).await?);
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        Ok(shared.get_or_insert(conn).clone())
    }

    /// Runs one command (or pipeline, or script) on the shared connection within `timeout`.
    pub async fn run<T, F, Fut>(&self, timeout: Duration, f: F) -> Result<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let work = async {
            let conn = self.shared().await?;
            match f(conn).await {
                Ok(value) => Ok(value),
                Err(error) => {
                    if error.is_io_error()
                        || error.is_connection_dropped()
                        || error.is_connection_refusal()
                    {
                        self.shared.lock().unwrap_or_else(|p| p.into_inner()).take();
                    }
                    Err(redis_error(error))
                }
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => {
                // A connection that stopped answering is not trusted again.
                self.shared.lock().unwrap_or_else(|p| p.into_inner()).take();
                Err(Error::unavailable(format!(
                    "Redis did not answer within {} ms",
                    timeout.as_millis()
                )))
            }
        }
    }
}

/// Maps a Redis error: connection trouble is [`ErrorKind::Unavailable`] (retryable), the rest
/// [`ErrorKind::Internal`].
pub fn redis_error(error: redis::RedisError) -> Error {
    let transient = error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || matches!(
            error.code(),
            Some("LOADING" | "BUSY" | "TRYAGAIN" | "CLUSTERDOWN" | "MASTERDOWN")
        );
    let kind = if transient {
        ErrorKind::Unavailable
    } else {
        ErrorKind::Internal
    };
    Error::new(kind, format!("Redis: {error}")).with_source(error)
}

/// `{len:tenant:id}`: a hash tag that keeps one session's keys in one Redis Cluster slot, and
/// cannot be confused between tenants (the length prefix makes the split unambiguous).
pub(crate) fn session_tag(tenant: &str, id: &str) -> String {
    format!("{{{}:{tenant}:{id}}}", tenant.len())
}
