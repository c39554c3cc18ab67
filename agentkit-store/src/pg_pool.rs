//! PostgreSQL connections: a deadpool pool per URL, with bounded waits and error mapping.

use std::str::FromStr;
use std::time::Duration;

use agentkit_core::{Error, ErrorKind, Result};
use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime};
pub use deadpool_postgres::{Object as Client, Pool};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

/// How long a pool waits for, creates or checks a connection, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A pool of at most `max_size` connections to `url` (`postgres://user@host:5432/db`). No
/// connection is opened until first use; connections the server closed (a restart) are
/// replaced on their next checkout.
pub fn pool(url: &str, max_size: usize) -> Result<Pool> {
    let mut config = tokio_postgres::Config::from_str(url)
        .map_err(|e| Error::invalid_input(format!("invalid PostgreSQL URL: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(DEFAULT_TIMEOUT);
    }
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(DEFAULT_TIMEOUT))
        .create_timeout(Some(DEFAULT_TIMEOUT))
        .recycle_timeout(Some(DEFAULT_TIMEOUT))
        .build()
        .map_err(|e| Error::invalid_input(format!("invalid PostgreSQL pool configuration: {e}")))
}

/// Takes a connection from `pool`, as an agentkit error.
pub async fn client(pool: &Pool) -> Result<Client> {
    pool.get().await.map_err(|e| match e {
        deadpool_postgres::PoolError::Backend(e) => pg_error(e),
        other => Error::unavailable(format!("no PostgreSQL connection available: {other}")),
    })
}

/// Maps a PostgreSQL error: lost connections, shutdowns and overload are
/// [`ErrorKind::Unavailable`] (retryable); serialization failures and deadlocks are
/// [`ErrorKind::Conflict`]; the rest [`ErrorKind::Internal`].
pub fn pg_error(error: tokio_postgres::Error) -> Error {
    let kind = match error.code() {
        None if error.is_closed() || io_cause(&error) => ErrorKind::Unavailable,
        None => ErrorKind::Internal,
        Some(code) if code.code().starts_with("08") => ErrorKind::Unavailable,
        Some(code)
            if *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::TOO_MANY_CONNECTIONS
                || *code == SqlState::QUERY_CANCELED =>
        {
            ErrorKind::Unavailable
        }
        Some(code)
            if *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED =>
        {
            ErrorKind::Conflict
        }
        Some(_) => ErrorKind::Internal,
    };
    Error::new(kind, format!("PostgreSQL: {error}")).with_source(error)
}

fn io_cause(error: &tokio_postgres::Error) -> bool {
    let mut cause = std::error::Error::source(error);
    while let Some(e) = cause {
        if e.is::<std::io::Error>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Runs the schema statements under a transaction-scoped advisory lock, so that instances
/// starting together do not race on `CREATE ... IF NOT EXISTS`.
pub(crate) async fn migrate(pool: &Pool, lock_key: i64, statements: &[&str]) -> Result<()> {
    let mut client = client(pool).await?;
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key])
        .await
        .map_err(pg_error)?;
    for statement in statements {
        tx.batch_execute(statement).await.map_err(pg_error)?;
    }
    tx.commit().await.map_err(pg_error)
}
