//! Run records in PostgreSQL.

use agentkit_core::{Error, Result};
use async_trait::async_trait;
use deadpool_postgres::Pool;
use tokio_postgres::types::Json;

use super::{RecordStore, RunRecord};
use crate::pg_pool::{self, client, pg_error};

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS agentkit_run_records (
        seq           bigserial   PRIMARY KEY,
        request_id    text        NOT NULL,
        tenant        text,
        session_id    text,
        agent         text        NOT NULL,
        agent_version text        NOT NULL,
        model         text        NOT NULL,
        outcome       text        NOT NULL,
        error_code    text,
        tokens_in     bigint      NOT NULL,
        tokens_out    bigint      NOT NULL,
        cost_usd      double precision NOT NULL,
        latency_ms    double precision NOT NULL,
        started_at    timestamptz NOT NULL,
        record        jsonb       NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS agentkit_run_records_agent ON agentkit_run_records (agent, seq DESC)",
    "CREATE INDEX IF NOT EXISTS agentkit_run_records_request ON agentkit_run_records (request_id)",
];

const LOCK: i64 = 0x6167_656e_746b_6902;

/// Run records in the `agentkit_run_records` table: the queryable columns (agent, outcome,
/// tokens, cost, latency, time) plus the whole record as JSONB.
#[derive(Clone)]
pub struct PostgresRecordStore {
    pool: Pool,
}

impl std::fmt::Debug for PostgresRecordStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresRecordStore")
            .finish_non_exhaustive()
    }
}

impl PostgresRecordStore {
    /// A store on `pool`; call [`migrate`](Self::migrate) once.
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// Connects to `url` and creates the table if needed.
    pub async fn connect(url: &str) -> Result<Self> {
        let store = Self::new(pg_pool::pool(url, 8)?);
        store.migrate().await?;
        Ok(store)
    }

    /// Creates the table and indexes if they do not exist.
    pub async fn migrate(&self) -> Result<()> {
        pg_pool::migrate(&self.pool, LOCK, SCHEMA).await
    }
}

#[async_trait]
impl RecordStore for PostgresRecordStore {
    async fn append(&self, record: &RunRecord) -> Result<()> {
        let client = client(&self.pool).await?;
        let statement = client
            .prepare_cached(
                "INSERT INTO agentkit_run_records (request_id, tenant, session_id, agent, agent_version, model,
                    outcome, error_code, tokens_in, tokens_out, cost_usd, latency_ms, started_at, record)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
                    to_timestamp($13::double precision / 1000.0), $14)",
            )
            .await
            .map_err(pg_error)?;
        let outcome = match record.outcome {
            super::Outcome::Ok => "ok",
            super::Outcome::Error => "error",
        };
        client
            .execute(
                &statement,
                &[
                    &record.request_id,
                    &record.tenant,
                    &record.session_id,
                    &record.agent,
                    &record.agent_version,
                    &record.model,
                    &outcome,
                    &record.error_code,
                    &(record.usage.input_tokens as i64),
                    &(record.usage.output_tokens as i64),
                    &record.cost_usd,
                    &record.latency_ms,
                    &(record.started_at_ms as f64),
                    &Json(record),
                ],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    async fn recent(&self, agent: Option<&str>, limit: usize) -> Result<Vec<RunRecord>> {
        let client = client(&self.pool).await?;
        let rows = client
            .query(
                "SELECT record FROM agentkit_run_records WHERE ($1::text IS NULL OR agent = $1)
                 ORDER BY seq DESC LIMIT $2",
                &[&agent, &(limit.min(10_000) as i64)],
            )
            .await
            .map_err(pg_error)?;
        rows.iter()
            .map(|row| {
                row.try_get::<_, Json<RunRecord>>(0)
                    .map(|Json(r)| r)
                    .map_err(|e| Error::internal(format!("stored run record is not valid: {e}")))
            })
            .collect()
    }
}
