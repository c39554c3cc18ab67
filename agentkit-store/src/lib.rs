//! agentkit stores.
//!
//! - [`SessionStore`]: conversation state with compare-and-set saves, sliding TTL, tenant
//!   namespaces and paged listing; [`LeaseStore`]: one owner per session with fencing tokens.
//!   Backends: [`MemorySessionStore`] (the embedded default), Redis (feature `redis`,
//!   [`redis::RedisSessionStore`]) and PostgreSQL (feature `postgres`,
//!   [`postgres::PostgresSessionStore`]).
//! - [`SessionAgent`]: an executor that runs turns of a session one at a time, with a declared
//!   policy for a message that arrives mid-turn, and a bounded history.
//! - [`RecordStore`]: one [`RunRecord`] per run, for audit, analytics and replay: JSON lines
//!   ([`JsonlRecordStore`]) and PostgreSQL. [`replay`] runs recorded inputs against a
//!   candidate version and reports how its behaviour differs ([`ReplayReport`]).
//! - [`vector`]: vector memory by tenant ([`VectorMemory`](vector::VectorMemory), the exact
//!   in-memory [`MemoryVectorIndex`](vector::MemoryVectorIndex), and the same exact search in
//!   PostgreSQL with feature `postgres`), [`Embedder`](vector::Embedder)s, and a search tool
//!   for agents.

mod record;
mod session;
mod session_agent;
pub mod vector;

#[cfg(feature = "postgres")]
mod pg_pool;
#[cfg(feature = "redis")]
mod redis_pool;

pub use record::{
    Behaviour, Change, JsonlRecordStore, Outcome, RecordLayer, RecordStore, Recorded,
    RecordedTraffic, ReplayCase, ReplayOptions, ReplayReport, ReplaySummary, Replaying, RunRecord,
    replay,
};
pub use session::{
    Lease, LeaseStore, MemorySessionStore, SaveOptions, Session, SessionPage, SessionStore,
    SessionSummary, validate_key,
};
pub use session_agent::{
    HistoryPolicy, JOB_TURNS_KEY, SessionAgent, SessionAgentBuilder, TurnPolicy,
};

/// Redis backends and the shared connection pool.
#[cfg(feature = "redis")]
pub mod redis {
    pub use crate::redis_pool::{
        ClusterConnection, Connection, DEFAULT_TIMEOUT, DedicatedConnection, MultiplexedConnection,
        Pool, RedisClient, RedisConnection, connection, pool, redis_error,
    };
    pub use crate::session::redis::RedisSessionStore;
}

/// PostgreSQL backends and the shared connection pool.
#[cfg(feature = "postgres")]
pub mod postgres {
    pub use crate::pg_pool::{Client, DEFAULT_TIMEOUT, Pool, client, pg_error, pool};
    pub use crate::record::postgres::PostgresRecordStore;
    pub use crate::session::postgres::PostgresSessionStore;
    pub use crate::vector::PostgresVectorMemory;
}
