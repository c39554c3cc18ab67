//! Sessions and leases on PostgreSQL: a row per session with a version column for
//! compare-and-set and the history as JSONB; the schema is created on `connect`.

use std::sync::Arc;
use std::time::Duration;

use agentkit_core::{Error, Result};
use async_trait::async_trait;
use deadpool_postgres::Pool;
use tokio::sync::Semaphore;
use tokio_postgres::types::Json;

use super::{
    Body, Lease, LeaseStore, SLIDES_IN_FLIGHT, SaveOptions, Session, SessionPage, SessionStore,
    SessionSummary, conflict, fenced, page_limit, slide_off_path, validate_key,
};
use crate::pg_pool::{self, client, pg_error};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS agentkit_sessions (
        namespace  text        NOT NULL,
        tenant     text        NOT NULL,
        id         text        NOT NULL,
        version    bigint      NOT NULL,
        body       jsonb       NOT NULL,
        ttl_ms     bigint,
        expires_at timestamptz,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (namespace, tenant, id)
    )",
    "CREATE INDEX IF NOT EXISTS agentkit_sessions_expiry
        ON agentkit_sessions (expires_at) WHERE expires_at IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS agentkit_session_leases (
        namespace  text        NOT NULL,
        tenant     text        NOT NULL,
        id         text        NOT NULL,
        owner      text        NOT NULL,
        token      bigint      NOT NULL,
        expires_at timestamptz NOT NULL,
        PRIMARY KEY (namespace, tenant, id)
    )",
];

/// Advisory lock key for the session schema ("agentkit" in ASCII, plus 1).
const LOCK: i64 = 0x6167_656e_746b_6901;

const LIVE: &str = "(expires_at IS NULL OR expires_at > now())";

const NOT_FENCED: &str = "($5::bigint IS NULL OR NOT EXISTS (
    SELECT 1 FROM agentkit_session_leases l
    WHERE l.namespace = $1 AND l.tenant = $2 AND l.id = $3 AND l.token > $5))";

fn expiry(param: &str) -> String {
    format!(
        "CASE WHEN {param}::bigint IS NOT NULL THEN now() + {param} * interval '1 millisecond' END"
    )
}

/// Sessions and leases on PostgreSQL through a deadpool pool.
///
/// Tables `agentkit_sessions` and `agentkit_session_leases`, created (idempotently, under an
/// advisory lock) by [`connect`](Self::connect) or [`migrate`](Self::migrate). Rows are keyed
/// by namespace, tenant and id; the namespace separates applications (or tests) sharing a
/// database. Expired rows are invisible at once and removed by
/// [`purge_expired`](Self::purge_expired).
#[derive(Clone)]
pub struct PostgresSessionStore {
    pool: Pool,
    slides: Arc<Semaphore>,
    namespace: String,
    default_ttl: Option<Duration>,
}

impl std::fmt::Debug for PostgresSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSessionStore")
            .field("namespace", &self.namespace)
            .field("default_ttl", &self.default_ttl)
            .finish_non_exhaustive()
    }
}

impl PostgresSessionStore {
    /// A store on `pool`; call [`migrate`](Self::migrate) once before use.
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            slides: Arc::new(Semaphore::new(SLIDES_IN_FLIGHT)),
            namespace: "default".to_owned(),
            default_ttl: None,
        }
    }

    /// Connects to `url` with a pool of 16 and creates the schema if needed.
    pub async fn connect(url: &str) -> Result<Self> {
        let store = Self::new(pg_pool::pool(url, 16)?);
        store.migrate().await?;
        Ok(store)
    }

    /// Creates the tables and indexes if they do not exist.
    pub async fn migrate(&self) -> Result<()> {
        pg_pool::migrate(&self.pool, LOCK, SCHEMA).await
    }

    /// Keeps this store's rows apart from other namespaces in the same tables.
    #[must_use]
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Sessions without a TTL of their own expire after `ttl` without a load or save.
    #[must_use]
    pub fn with_default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Deletes expired sessions of this namespace; how many.
    pub async fn purge_expired(&self) -> Result<u64> {
        let client = client(&self.pool).await?;
        client
            .execute(
                "DELETE FROM agentkit_sessions WHERE namespace = $1 AND expires_at <= now()",
                &[&self.namespace],
            )
            .await
            .map_err(pg_error)
    }

    /// Slides the TTL of a session loaded a moment ago, off the load's path where it can (see
    /// [`slide_off_path`]). The update sets the TTL the row holds when it runs, so a save
    /// landing in between keeps its own; a session that expires in that moment stays expired.
    async fn slide_ttl(&self, tenant: &str, id: &str) {
        let (pool, key) = (
            self.pool.clone(),
            [self.namespace.clone(), tenant.to_owned(), id.to_owned()],
        );
        let slid = async move {
            let client = client(&pool).await?;
            let statement = client
                .prepare_cached(&format!(
                    "UPDATE agentkit_sessions
                     SET expires_at = now() + ttl_ms * interval '1 millisecond'
                     WHERE namespace = $1 AND tenant = $2 AND id = $3
                       AND ttl_ms IS NOT NULL AND {LIVE}"
                ))
                .await
                .map_err(pg_error)?;
            client
                .execute(&statement, &[&key[0], &key[1], &key[2]])
                .await
                .map(drop)
                .map_err(pg_error)
        };
        slide_off_path(&self.slides, slid).await;
    }
}

fn millis(d: Option<Duration>) -> Option<i64> {
    d.map(|d| d.as_millis().clamp(1, i64::MAX as u128) as i64)
}

#[async_trait]
impl SessionStore for PostgresSessionStore {
    async fn load(&self, tenant: &str, id: &str) -> Result<Option<Session>> {
        validate_key(tenant, id)?;
        let client = client(&self.pool).await?;
        // A plain read: a data-modifying CTE sliding the TTL in the same statement made every
        // load a write (+30 µs under pgbench). Sessions with a TTL have it slid right after.
        let sql = format!(
            "SELECT version, body, ttl_ms, (extract(epoch FROM updated_at) * 1000)::bigint
             FROM agentkit_sessions
             WHERE namespace = $1 AND tenant = $2 AND id = $3 AND {LIVE}"
        );
        let statement = client.prepare_cached(&sql).await.map_err(pg_error)?;
        let row = client
            .query_opt(&statement, &[&self.namespace, &tenant, &id])
            .await
            .map_err(pg_error)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let version: i64 = row.get(0);
        let Json(body): Json<Body> = row
            .try_get(1)
            .map_err(|e| Error::internal(format!("stored session is not valid: {e}")))?;
        let ttl: Option<i64> = row.get(2);
        let updated: i64 = row.get(3);
        if ttl.is_some() {
            self.slide_ttl(tenant, id).await;
        }
        Ok(Some(Session {
            tenant: tenant.to_owned(),
            id: id.to_owned(),
            version: version as u64,
            messages: body.messages,
            metadata: body.metadata,
            ttl: ttl.map(|ms| Duration::from_millis(ms as u64)),
            updated_at_ms: updated.max(0) as u64,
        }))
    }

    async fn save(&self, session: &Session, options: SaveOptions) -> Result<u64> {
        validate_key(&session.tenant, &session.id)?;
        let client = client(&self.pool).await?;
        let body = Json(serde_json::json!({
            "messages": session.messages,
            "metadata": session.metadata,
        }));
        let ttl = millis(session.ttl.or(self.default_ttl));
        let fence = options.fence.map(|f| f as i64);
        let expected = session.version as i64;
        let row = if expected == 0 {
            let sql = format!(
                "INSERT INTO agentkit_sessions (namespace, tenant, id, version, body, ttl_ms, expires_at, updated_at)
                 SELECT $1, $2, $3, 1, $4, $6, {}, now() WHERE {NOT_FENCED}
                 ON CONFLICT (namespace, tenant, id) DO UPDATE
                   SET version = 1, body = excluded.body, ttl_ms = excluded.ttl_ms,
                       expires_at = excluded.expires_at, updated_at = now()
                   WHERE agentkit_sessions.expires_at IS NOT NULL AND agentkit_sessions.expires_at <= now()
                 RETURNING version",
                expiry("$6")
            );
            let statement = client.prepare_cached(&sql).await.map_err(pg_error)?;
            client
                .query_opt(
                    &statement,
                    &[&self.namespace, &session.tenant, &session.id, &body, &fence, &ttl],
                )
                .await
        } else {
            let sql = format!(
                "UPDATE agentkit_sessions
                 SET version = version + 1, body = $4, ttl_ms = $6, expires_at = {}, updated_at = now()
                 WHERE namespace = $1 AND tenant = $2 AND id = $3 AND version = $7 AND {LIVE} AND {NOT_FENCED}
                 RETURNING version",
                expiry("$6")
            );
            let statement = client.prepare_cached(&sql).await.map_err(pg_error)?;
            client
                .query_opt(
                    &statement,
                    &[&self.namespace, &session.tenant, &session.id, &body, &fence, &ttl, &expected],
                )
                .await
        }
        .map_err(pg_error)?;
        if let Some(row) = row {
            let version: i64 = row.get(0);
            return Ok(version as u64);
        }
        if let Some(token) = options.fence {
            let newest: Option<i64> = client
                .query_opt(
                    "SELECT token FROM agentkit_session_leases WHERE namespace = $1 AND tenant = $2 AND id = $3",
                    &[&self.namespace, &session.tenant, &session.id],
                )
                .await
                .map_err(pg_error)?
                .map(|row| row.get(0));
            if newest.is_some_and(|n| n > token as i64) {
                return Err(fenced(&session.tenant, &session.id, token));
            }
        }
        Err(conflict(&session.tenant, &session.id, session.version))
    }

    async fn delete(&self, tenant: &str, id: &str) -> Result<bool> {
        validate_key(tenant, id)?;
        let client = client(&self.pool).await?;
        let sql = format!(
            "DELETE FROM agentkit_sessions WHERE namespace = $1 AND tenant = $2 AND id = $3 RETURNING {LIVE}"
        );
        let row = client
            .query_opt(&sql, &[&self.namespace, &tenant, &id])
            .await
            .map_err(pg_error)?;
        Ok(row.is_some_and(|r| r.get::<_, bool>(0)))
    }

    async fn list(&self, tenant: &str, after: Option<&str>, limit: usize) -> Result<SessionPage> {
        validate_key(tenant, after.unwrap_or("-"))?;
        let limit = page_limit(limit);
        let client = client(&self.pool).await?;
        let sql = format!(
            "SELECT id, version, (extract(epoch FROM updated_at) * 1000)::bigint
             FROM agentkit_sessions
             WHERE namespace = $1 AND tenant = $2 AND ($3::text IS NULL OR id > $3) AND {LIVE}
             ORDER BY id LIMIT $4"
        );
        let statement = client.prepare_cached(&sql).await.map_err(pg_error)?;
        let rows = client
            .query(
                &statement,
                &[&self.namespace, &tenant, &after, &((limit + 1) as i64)],
            )
            .await
            .map_err(pg_error)?;
        let mut sessions: Vec<SessionSummary> = rows
            .iter()
            .map(|row| SessionSummary {
                id: row.get(0),
                version: row.get::<_, i64>(1) as u64,
                updated_at_ms: row.get::<_, i64>(2).max(0) as u64,
            })
            .collect();
        let next = if sessions.len() > limit {
            sessions.truncate(limit);
            sessions.last().map(|s| s.id.clone())
        } else {
            None
        };
        Ok(SessionPage { sessions, next })
    }

    async fn ping(&self) -> Result<()> {
        let client = client(&self.pool).await?;
        client.simple_query("SELECT 1").await.map_err(pg_error)?;
        Ok(())
    }
}

#[async_trait]
impl LeaseStore for PostgresSessionStore {
    async fn acquire(
        &self,
        tenant: &str,
        id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        validate_key(tenant, id)?;
        if owner.is_empty() {
            return Err(Error::invalid_input("a lease owner must not be empty"));
        }
        let client = client(&self.pool).await?;
        let row = client
            .query_opt(
                "INSERT INTO agentkit_session_leases (namespace, tenant, id, owner, token, expires_at)
                 VALUES ($1, $2, $3, $4, 1, now() + $5::bigint * interval '1 millisecond')
                 ON CONFLICT (namespace, tenant, id) DO UPDATE
                   SET owner = excluded.owner, token = agentkit_session_leases.token + 1,
                       expires_at = excluded.expires_at
                   WHERE agentkit_session_leases.expires_at <= now()
                      OR agentkit_session_leases.owner = excluded.owner
                 RETURNING token",
                &[&self.namespace, &tenant, &id, &owner, &millis(Some(ttl))],
            )
            .await
            .map_err(pg_error)?;
        Ok(row.map(|row| Lease {
            tenant: tenant.to_owned(),
            session_id: id.to_owned(),
            owner: owner.to_owned(),
            token: row.get::<_, i64>(0) as u64,
        }))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        let client = client(&self.pool).await?;
        let n = client
            .execute(
                "UPDATE agentkit_session_leases SET expires_at = now() + $6::bigint * interval '1 millisecond'
                 WHERE namespace = $1 AND tenant = $2 AND id = $3 AND owner = $4 AND token = $5
                   AND expires_at > now()",
                &[
                    &self.namespace,
                    &lease.tenant,
                    &lease.session_id,
                    &lease.owner,
                    &(lease.token as i64),
                    &millis(Some(ttl)),
                ],
            )
            .await
            .map_err(pg_error)?;
        Ok(n == 1)
    }

    async fn release(&self, lease: &Lease) -> Result<()> {
        let client = client(&self.pool).await?;
        // The row stays (expired) so the next lease's token keeps increasing.
        client
            .execute(
                "UPDATE agentkit_session_leases SET expires_at = now()
                 WHERE namespace = $1 AND tenant = $2 AND id = $3 AND owner = $4 AND token = $5",
                &[
                    &self.namespace,
                    &lease.tenant,
                    &lease.session_id,
                    &lease.owner,
                    &(lease.token as i64),
                ],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }
}
