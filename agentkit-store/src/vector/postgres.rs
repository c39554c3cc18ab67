//! [`PostgresVectorMemory`]: vector memory in a PostgreSQL table, searched exactly.

use agentkit_core::{Error, Result};
use async_trait::async_trait;
use deadpool_postgres::Pool;
use tokio_postgres::types::Json;

use super::{Document, Hit, MAX_HITS, VectorMemory, check_vector};
use crate::pg_pool::{self, client, pg_error};
use crate::session::validate_key;

const SCHEMA: &[&str] = &["CREATE TABLE IF NOT EXISTS agentkit_vectors (
        tenant     text             NOT NULL,
        id         text             NOT NULL,
        text       text             NOT NULL,
        metadata   jsonb            NOT NULL,
        embedding  real[]           NOT NULL,
        norm       double precision NOT NULL,
        updated_at timestamptz      NOT NULL DEFAULT now(),
        PRIMARY KEY (tenant, id)
    )"];

const LOCK: i64 = 0x6167_656e_746b_6903;

/// The nearest documents of a tenant: the cosine computed in the database over every
/// document of the tenant (of this memory's dimension) that passes the filter, so the answer
/// is exact, like [`MemoryVectorIndex`](super::MemoryVectorIndex)'s, and the documents are
/// durable and shared by every instance. A filter holds when each of its keys has exactly
/// its value in the document's metadata.
const QUERY: &str = "SELECT id, text, metadata, score::real FROM (
        SELECT id, text, metadata,
            CASE WHEN norm = 0 OR $3::float8 = 0 THEN 0 ELSE
                (SELECT sum(a::float8 * b::float8) FROM unnest(embedding, $2::real[]) AS t(a, b))
                    / (norm * $3::float8)
            END AS score
        FROM agentkit_vectors
        WHERE tenant = $1
            AND cardinality(embedding) = $4
            AND NOT EXISTS (
                SELECT 1 FROM jsonb_each($5::jsonb) AS f
                WHERE metadata -> f.key IS DISTINCT FROM f.value
            )
    ) AS scored
    ORDER BY score DESC, id
    LIMIT $6";

const UPSERT: &str = "INSERT INTO agentkit_vectors (tenant, id, text, metadata, embedding, norm)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (tenant, id) DO UPDATE SET text = EXCLUDED.text, metadata = EXCLUDED.metadata,
        embedding = EXCLUDED.embedding, norm = EXCLUDED.norm, updated_at = now()";

/// Vector memory in PostgreSQL (the `agentkit_vectors` table): documents by tenant, durable
/// and shared by every instance, queried exactly (every document of the tenant is scored in
/// the database, as [`MemoryVectorIndex`](super::MemoryVectorIndex) does in memory: fine up to
/// tens of thousands of documents per tenant; beyond, an approximate index such as pgvector's
/// is the tool). Vectors are stored as `real[]`, so no extension is needed. Memories of
/// different dimensions may share the table: each sees only its own.
#[derive(Clone)]
pub struct PostgresVectorMemory {
    pool: Pool,
    dimensions: usize,
}

impl std::fmt::Debug for PostgresVectorMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresVectorMemory")
            .field("dimensions", &self.dimensions)
            .finish_non_exhaustive()
    }
}

impl PostgresVectorMemory {
    /// A memory of `dimensions`-long vectors on `pool`; call [`migrate`](Self::migrate) once.
    pub fn new(pool: Pool, dimensions: usize) -> Self {
        Self { pool, dimensions }
    }

    /// Connects to `url` and creates the table if needed.
    pub async fn connect(url: &str, dimensions: usize) -> Result<Self> {
        let memory = Self::new(pg_pool::pool(url, 8)?, dimensions);
        memory.migrate().await?;
        Ok(memory)
    }

    /// Creates the table if it does not exist.
    pub async fn migrate(&self) -> Result<()> {
        pg_pool::migrate(&self.pool, LOCK, SCHEMA).await
    }
}

fn norm(vector: &[f32]) -> f64 {
    vector
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt()
}

#[async_trait]
impl VectorMemory for PostgresVectorMemory {
    async fn upsert(&self, tenant: &str, documents: Vec<Document>) -> Result<()> {
        for document in &documents {
            validate_key(tenant, &document.id)?;
            check_vector(&document.vector, self.dimensions)?;
        }
        let mut client = client(&self.pool).await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let upsert = tx.prepare_cached(UPSERT).await.map_err(pg_error)?;
        for document in &documents {
            tx.execute(
                &upsert,
                &[
                    &tenant,
                    &document.id,
                    &document.text,
                    &Json(&document.metadata),
                    &document.vector,
                    &norm(&document.vector),
                ],
            )
            .await
            .map_err(pg_error)?;
        }
        tx.commit().await.map_err(pg_error)
    }

    async fn query(
        &self,
        tenant: &str,
        vector: &[f32],
        k: usize,
        filter: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Vec<Hit>> {
        validate_key(tenant, "query")?;
        check_vector(vector, self.dimensions)?;
        let dimensions = i32::try_from(self.dimensions)
            .map_err(|_| Error::invalid_input("too many dimensions"))?;
        let limit = k.min(MAX_HITS) as i64;
        let client = client(&self.pool).await?;
        let rows = client
            .query(
                QUERY,
                &[
                    &tenant,
                    &vector,
                    &norm(vector),
                    &dimensions,
                    &Json(filter),
                    &limit,
                ],
            )
            .await
            .map_err(pg_error)?;
        rows.iter()
            .map(|row| {
                let Json(metadata) = row
                    .try_get::<_, Json<serde_json::Map<String, serde_json::Value>>>(2)
                    .map_err(pg_error)?;
                Ok(Hit {
                    id: row.try_get(0).map_err(pg_error)?,
                    text: row.try_get(1).map_err(pg_error)?,
                    metadata,
                    score: row.try_get(3).map_err(pg_error)?,
                })
            })
            .collect()
    }

    async fn delete(&self, tenant: &str, ids: &[String]) -> Result<usize> {
        validate_key(tenant, "delete")?;
        let client = client(&self.pool).await?;
        let deleted = client
            .execute(
                "DELETE FROM agentkit_vectors WHERE tenant = $1 AND id = ANY($2)",
                &[&tenant, &ids],
            )
            .await
            .map_err(pg_error)?;
        Ok(deleted as usize)
    }
}
