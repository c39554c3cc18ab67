//! Redis connections: one deadpool pool per URL, shared by the session store, the lease store
//! and (in agentkit-transport) the job queue; every command bounded by a timeout.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentkit_core::{Error, ErrorKind, Result};
pub use deadpool_redis::{Connection, Pool};
use deadpool_redis::{PoolConfig, Runtime, Timeouts};
use redis::RedisFuture;
use redis::aio::ConnectionLike;
pub use redis::aio::MultiplexedConnection;
pub use redis::cluster_async::ClusterConnection;

/// How long a pool waits for a connection, creates one or checks one, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A pool of connections to the Redis server at `url` (`redis://127.0.0.1:6379/0`), with
/// `max_size` connections at most and every wait bounded by [`DEFAULT_TIMEOUT`]. No connection
/// is opened until the first command, so a server that is down at start-up is not an error
/// here; a server that goes away later comes back by itself (broken connections are replaced).
pub fn pool(url: &str, max_size: usize) -> Result<Pool> {
    let mut config = deadpool_redis::Config::from_url(url);
    config.pool = Some(pool_config(max_size));
    config
        .create_pool(Some(Runtime::Tokio1))
        .map_err(|e| Error::invalid_input(format!("invalid Redis configuration {url:?}: {e}")))
}

/// `max_size` connections at most, every wait bounded by [`DEFAULT_TIMEOUT`].
fn pool_config(max_size: usize) -> PoolConfig {
    let mut pool = PoolConfig::new(max_size.max(1));
    pool.timeouts = Timeouts {
        wait: Some(DEFAULT_TIMEOUT),
        create: Some(DEFAULT_TIMEOUT),
        recycle: Some(DEFAULT_TIMEOUT),
    };
    pool
}

/// Takes a connection from `pool`, as an agentkit error.
pub async fn connection(pool: &Pool) -> Result<Connection> {
    pool.get().await.map_err(|e| match e {
        deadpool_redis::PoolError::Backend(e) => redis_error(e),
        other => Error::unavailable(format!("no Redis connection available: {other}")),
    })
}

/// A connection for one command, pipeline or script: the shared multiplexed connection to a
/// single server, or to a Redis Cluster (commands routed by their keys' slots).
#[derive(Clone)]
pub enum RedisConnection {
    /// One server.
    Single(MultiplexedConnection),
    /// A cluster.
    Cluster(ClusterConnection),
}

/// `ConnectionLike` for an enum of a single-server and a cluster connection, by delegation.
macro_rules! delegate_connection_like {
    ($name:ident) => {
        impl ConnectionLike for $name {
            fn req_packed_command<'a>(
                &'a mut self,
                cmd: &'a redis::Cmd,
            ) -> RedisFuture<'a, redis::Value> {
                match self {
                    Self::Single(conn) => conn.req_packed_command(cmd),
                    Self::Cluster(conn) => conn.req_packed_command(cmd),
                }
            }

            fn req_packed_commands<'a>(
                &'a mut self,
                pipeline: &'a redis::Pipeline,
                offset: usize,
                count: usize,
            ) -> RedisFuture<'a, Vec<redis::Value>> {
                match self {
                    Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
                    Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
                }
            }

            fn get_db(&self) -> i64 {
                match self {
                    Self::Single(conn) => conn.get_db(),
                    Self::Cluster(conn) => conn.get_db(),
                }
            }
        }
    };
}

delegate_connection_like!(RedisConnection);

/// A connection of its own, from the pool, for a blocking command (`XREADGROUP BLOCK`) that
/// must not hold up the shared connection; back to the pool when dropped.
pub enum DedicatedConnection {
    /// To one server.
    Single(Connection),
    /// To a cluster.
    Cluster(deadpool_redis::cluster::Connection),
}

delegate_connection_like!(DedicatedConnection);

/// Where a client's connections come from.
#[derive(Clone)]
enum Pools {
    Single(Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

/// A client of one Redis server or of a Redis Cluster: a shared multiplexed connection for
/// ordinary commands (one round trip each, pipelined between concurrent callers) and a pool for
/// blocking ones.
///
/// The shared connection is taken out of the pool on first use and replaced by a fresh one
/// when a command fails on it for connection reasons, so a restarted server is picked up
/// without rebuilding anything. Cheap to clone.
///
/// On a cluster, every agentkit key carries a hash tag (one per session, one per job queue),
/// so each script and pipeline touches one slot; what spans sessions (a tenant's paging index,
/// listing) is sent as separate commands.
#[derive(Clone)]
pub struct RedisClient {
    pools: Pools,
    shared: Arc<Mutex<Option<RedisConnection>>>,
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, status) = match &self.pools {
            Pools::Single(pool) => ("single", pool.status()),
            Pools::Cluster(pool) => ("cluster", pool.status()),
        };
        f.debug_struct("RedisClient")
            .field("kind", &kind)
            .field("pool", &status)
            .finish()
    }
}

impl RedisClient {
    /// A client on `pool` (one server).
    pub fn new(pool: Pool) -> Self {
        Self {
            pools: Pools::Single(pool),
            shared: Arc::default(),
        }
    }

    /// A client of the server at `url` with a pool of `max_size` (see [`pool`]); a
    /// comma-separated list of URLs (`redis://10.0.0.1:6379,redis://10.0.0.2:6379`) names the
    /// seed nodes of a Redis Cluster instead (see [`connect_cluster`](Self::connect_cluster)).
    pub fn connect(url: &str, max_size: usize) -> Result<Self> {
        if url.contains(',') {
            let urls: Vec<&str> = url.split(',').map(str::trim).collect();
            return Self::connect_cluster(&urls, max_size);
        }
        Ok(Self::new(pool(url, max_size)?))
    }

    /// A client of the Redis Cluster whose seed nodes are `urls`, with a pool of `max_size`
    /// cluster connections (each reaching every node); waits bounded as in [`pool`]. The
    /// cluster's layout is discovered on first use and followed as slots move.
    pub fn connect_cluster(urls: &[&str], max_size: usize) -> Result<Self> {
        if urls.is_empty() || urls.iter().any(|u| u.is_empty()) {
            return Err(Error::invalid_input(
                "a Redis Cluster needs at least one seed URL, and no empty ones",
            ));
        }
        let mut config = deadpool_redis::cluster::Config::from_urls(
            urls.iter().map(|u| (*u).to_owned()).collect::<Vec<_>>(),
        );
        config.pool = Some(pool_config(max_size));
        let pool = config.create_pool(Some(Runtime::Tokio1)).map_err(|e| {
            Error::invalid_input(format!("invalid Redis Cluster configuration {urls:?}: {e}"))
        })?;
        Ok(Self {
            pools: Pools::Cluster(pool),
            shared: Arc::default(),
        })
    }

    /// Whether this client talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.pools, Pools::Cluster(_))
    }

    /// A connection of its own for a blocking command, bounded by the pool's wait.
    pub async fn dedicated(&self) -> Result<DedicatedConnection> {
        match &self.pools {
            Pools::Single(pool) => Ok(DedicatedConnection::Single(connection(pool).await?)),
            Pools::Cluster(pool) => {
                pool.get()
                    .await
                    .map(DedicatedConnection::Cluster)
                    .map_err(|e| match e {
                        deadpool_redis::cluster::PoolError::Backend(e) => redis_error(e),
                        other => Error::unavailable(format!(
                            "no Redis Cluster connection available: {other}"
                        )),
                    })
            }
        }
    }

    async fn shared(&self) -> Result<RedisConnection> {
        if let Some(conn) = self
            .shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return Ok(conn.clone());
        }
        // Connecting is the rare path, and its future (the pool's wait and the handshake) is
        // kilobytes: boxed, it stays out of every command's future, which async callers move
        // (copy) into a box of their own on each call.
        let conn = match Box::pin(self.dedicated()).await? {
            DedicatedConnection::Single(conn) => {
                RedisConnection::Single(deadpool_redis::Connection::take(conn))
            }
            DedicatedConnection::Cluster(conn) => {
                RedisConnection::Cluster(deadpool_redis::cluster::Connection::take(conn))
            }
        };
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        Ok(shared.get_or_insert(conn).clone())
    }

    /// Runs one command (or pipeline, or script) on the shared connection within `timeout`.
    pub async fn run<T, F, Fut>(&self, timeout: Duration, f: F) -> Result<T>
    where
        F: FnOnce(RedisConnection) -> Fut,
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

impl RedisClient {
    /// Runs `commands`, which may touch different slots, within `timeout`: as one pipeline on
    /// a single server, as concurrent commands on a cluster (whose pipelines must stay within
    /// one slot). The answers come in the order of the commands.
    pub async fn run_each<T>(&self, timeout: Duration, commands: &[redis::Cmd]) -> Result<Vec<T>>
    where
        T: redis::FromRedisValue + Send,
    {
        self.run(timeout, |conn| async move {
            match conn {
                RedisConnection::Single(mut conn) => {
                    let mut pipe = redis::pipe();
                    for command in commands {
                        pipe.add_command(command.clone());
                    }
                    pipe.query_async(&mut conn).await
                }
                RedisConnection::Cluster(conn) => {
                    futures::future::try_join_all(commands.iter().map(|command| {
                        let mut conn = conn.clone();
                        async move { command.query_async::<T>(&mut conn).await }
                    }))
                    .await
                }
            }
        })
        .await
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
