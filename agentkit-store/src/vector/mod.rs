//! Vector memory: [`Embedder`]s turn text into vectors, a [`VectorMemory`] keeps documents by
//! tenant and answers the nearest to a query (cosine), with metadata filters.
//! [`MemoryVectorIndex`] is the exact in-memory index and `PostgresVectorMemory` (feature
//! `postgres`) the same exact search, durable, in a PostgreSQL table; [`HashingEmbedder`] a
//! deterministic embedder that needs no model; [`memory_search_tool`] lets an agent search.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use agentkit_core::tool::{Tool, ToolContext, ToolSpec};
use agentkit_core::{Context, Error, Result};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::session::validate_key;

#[cfg(feature = "postgres")]
mod postgres;

pub use agentkit_core::model::Embedder;
#[cfg(feature = "postgres")]
pub use postgres::PostgresVectorMemory;

/// A deterministic embedder that needs no model: each lower-cased word (and each pair of
/// neighbouring words) is hashed into one of `dimensions` buckets, and the vector is
/// normalized. Texts sharing words come out near each other; meaning is not understood. For
/// tests, examples and small keyword-like memories.
#[derive(Clone, Copy, Debug)]
pub struct HashingEmbedder {
    dimensions: usize,
}

impl HashingEmbedder {
    /// Vectors of `dimensions` (at least 1).
    pub fn new(dimensions: usize) -> Self {
        Self {
            dimensions: dimensions.max(1),
        }
    }

    fn bucket(&self, token: &str) -> usize {
        (agentkit_core::stable_hash(token.bytes()) % self.dimensions as u64) as usize
    }

    fn vector(&self, text: &str) -> Vec<f32> {
        let words: Vec<String> = text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        let mut vector = vec![0.0; self.dimensions];
        for word in &words {
            vector[self.bucket(word)] += 1.0;
        }
        for pair in words.windows(2) {
            vector[self.bucket(&format!("{} {}", pair[0], pair[1]))] += 0.5;
        }
        normalize(&mut vector);
        vector
    }
}

#[async_trait]
impl Embedder for HashingEmbedder {
    fn dimensions(&self) -> usize {
        self.dimensions
    }

    async fn embed(&self, texts: &[String], _cx: &Context) -> Result<Vec<Vec<f32>>> {
        Ok(texts.iter().map(|t| self.vector(t)).collect())
    }
}

fn normalize(vector: &mut [f32]) {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
}

/// A document kept in vector memory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// Unique within its tenant; upserting the same id replaces it.
    pub id: String,
    /// The text (returned with hits).
    pub text: String,
    /// Filterable fields.
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The text's vector.
    pub vector: Vec<f32>,
}

/// A document found by a query, with its cosine similarity to the query (-1 to 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// The document's id.
    pub id: String,
    /// Its text.
    pub text: String,
    /// Its metadata.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Cosine similarity to the query.
    pub score: f32,
}

/// Documents by tenant, searched by vector. Every tenant's documents are apart from every
/// other's; vectors of one memory have one dimension.
///
/// ```
/// use agentkit_store::vector::{Document, Embedder, HashingEmbedder, MemoryVectorIndex, VectorMemory};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let embedder = HashingEmbedder::new(64);
/// let memory = MemoryVectorIndex::new(64);
/// let texts = vec!["refunds take five days".to_owned()];
/// let cx = agentkit_core::Context::new();
/// let vector = embedder.embed(&texts, &cx).await?.remove(0);
/// memory
///     .upsert("acme", vec![Document {
///         id: "refunds".into(),
///         text: texts[0].clone(),
///         metadata: Default::default(),
///         vector,
///     }])
///     .await?;
/// let query = embedder.embed(&["how long do refunds take".to_owned()], &cx).await?.remove(0);
/// let hits = memory.query("acme", &query, 3, &Default::default()).await?;
/// assert_eq!(hits[0].id, "refunds");
/// # Ok::<_, agentkit_core::Error>(())
/// # }).unwrap();
/// ```
#[async_trait]
pub trait VectorMemory: Send + Sync + 'static {
    /// Adds or replaces `documents` of `tenant`.
    async fn upsert(&self, tenant: &str, documents: Vec<Document>) -> Result<()>;

    /// The `k` documents of `tenant` nearest to `vector` whose metadata holds every pair of
    /// `filter`, best first.
    async fn query(
        &self,
        tenant: &str,
        vector: &[f32],
        k: usize,
        filter: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Vec<Hit>>;

    /// Removes documents of `tenant` by id; how many were there.
    async fn delete(&self, tenant: &str, ids: &[String]) -> Result<usize>;
}

/// The exact in-memory index: every query scores every document of the tenant (fine up to
/// tens of thousands of documents per tenant). Cheap to clone; clones share the documents.
#[derive(Clone, Debug)]
pub struct MemoryVectorIndex {
    dimensions: usize,
    tenants: Arc<RwLock<HashMap<String, HashMap<String, Document>>>>,
}

impl MemoryVectorIndex {
    /// An empty index of `dimensions`-long vectors.
    pub fn new(dimensions: usize) -> Self {
        Self {
            dimensions,
            tenants: Arc::default(),
        }
    }
}

/// The most hits a query answers, whatever `k` it asks for.
pub(crate) const MAX_HITS: usize = 1000;

/// Refuses a vector of another dimension than the memory's, or with a number that is not
/// finite.
pub(crate) fn check_vector(vector: &[f32], dimensions: usize) -> Result<()> {
    if vector.len() != dimensions {
        return Err(Error::invalid_input(format!(
            "a vector of {} dimensions for an index of {dimensions}",
            vector.len()
        )));
    }
    if vector.iter().any(|x| !x.is_finite()) {
        return Err(Error::invalid_input("vectors must be finite numbers"));
    }
    Ok(())
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    dot / (na.sqrt() * nb.sqrt())
}

#[async_trait]
impl VectorMemory for MemoryVectorIndex {
    async fn upsert(&self, tenant: &str, documents: Vec<Document>) -> Result<()> {
        for document in &documents {
            validate_key(tenant, &document.id)?;
            check_vector(&document.vector, self.dimensions)?;
        }
        let mut tenants = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        let docs = tenants.entry(tenant.to_owned()).or_default();
        for document in documents {
            docs.insert(document.id.clone(), document);
        }
        Ok(())
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
        let tenants = self.tenants.read().unwrap_or_else(|p| p.into_inner());
        let Some(docs) = tenants.get(tenant) else {
            return Ok(Vec::new());
        };
        let mut scored: Vec<(f32, &Document)> = docs
            .values()
            .filter(|d| {
                filter
                    .iter()
                    .all(|(key, want)| d.metadata.get(key) == Some(want))
            })
            .map(|d| (cosine(vector, &d.vector), d))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
        Ok(scored
            .into_iter()
            .take(k.min(MAX_HITS))
            .map(|(score, d)| Hit {
                id: d.id.clone(),
                text: d.text.clone(),
                metadata: d.metadata.clone(),
                score,
            })
            .collect())
    }

    async fn delete(&self, tenant: &str, ids: &[String]) -> Result<usize> {
        let mut tenants = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        let Some(docs) = tenants.get_mut(tenant) else {
            return Ok(0);
        };
        Ok(ids.iter().filter(|id| docs.remove(*id).is_some()).count())
    }
}

/// A tool named `search_memory` (`{"query": "...", "k": 5}`) that embeds the query and answers
/// the best hits of the caller's tenant (the context's tenant, else `default`) as JSON.
pub fn memory_search_tool(memory: Arc<dyn VectorMemory>, embedder: Arc<dyn Embedder>) -> impl Tool {
    MemorySearch {
        spec: ToolSpec::new(
            "search_memory",
            "Finds the stored notes most relevant to a query.",
            serde_json::json!({
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "What to look for."},
                    "k": {"type": "integer", "minimum": 1, "maximum": 20,
                          "description": "How many notes (default 5)."}
                },
                "required": ["query"],
                "additionalProperties": false
            }),
        ),
        memory,
        embedder,
    }
}

struct MemorySearch {
    spec: ToolSpec,
    memory: Arc<dyn VectorMemory>,
    embedder: Arc<dyn Embedder>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchArgs {
    query: String,
    #[serde(default)]
    k: Option<usize>,
}

#[async_trait]
impl Tool for MemorySearch {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, arguments: &str, cx: &ToolContext<'_>) -> Result<String> {
        let args: SearchArgs = serde_json::from_str(arguments).map_err(|e| {
            Error::invalid_input(format!("invalid arguments for tool `search_memory`: {e}"))
        })?;
        let k = args.k.unwrap_or(5).clamp(1, 20);
        let vector = self
            .embedder
            .embed(&[args.query], cx.context())
            .await?
            .pop()
            .ok_or_else(|| Error::internal("the embedder returned no vector"))?;
        let tenant = cx.context().tenant().unwrap_or("default");
        let hits = self
            .memory
            .query(tenant, &vector, k, &serde_json::Map::new())
            .await?;
        serde_json::to_string(&hits).map_err(|e| Error::internal(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentkit_core::ErrorKind;

    async fn note(embedder: &HashingEmbedder, id: &str, text: &str, kind: &str) -> Document {
        let vector = embedder
            .embed(&[text.to_owned()], &Context::new())
            .await
            .unwrap()
            .remove(0);
        let mut metadata = serde_json::Map::new();
        metadata.insert("kind".into(), kind.into());
        Document {
            id: id.into(),
            text: text.into(),
            metadata,
            vector,
        }
    }

    // The index itself is checked by the suite every memory passes (`tests/vector.rs`).

    #[tokio::test]
    async fn the_search_tool_answers_the_callers_tenant() {
        let embedder = Arc::new(HashingEmbedder::new(128));
        let index = Arc::new(MemoryVectorIndex::new(128));
        index
            .upsert(
                "acme",
                vec![
                    note(
                        &embedder,
                        "n1",
                        "the wifi password is on the fridge",
                        "note",
                    )
                    .await,
                ],
            )
            .await
            .unwrap();
        let tool = memory_search_tool(index, embedder);
        let cx = Context::new().with_tenant("acme");
        let found = tool
            .call(
                r#"{"query": "where is the wifi password"}"#,
                &ToolContext::new("c1", &cx),
            )
            .await
            .unwrap();
        let hits: Vec<Hit> = serde_json::from_str(&found).unwrap();
        assert_eq!(hits[0].id, "n1");
        let elsewhere = Context::new().with_tenant("beta");
        let none = tool
            .call(
                r#"{"query": "wifi password"}"#,
                &ToolContext::new("c2", &elsewhere),
            )
            .await
            .unwrap();
        assert_eq!(none, "[]");
        let bad = tool
            .call(r#"{"q": "x"}"#, &ToolContext::new("c3", &cx))
            .await
            .unwrap_err();
        assert_eq!(bad.kind(), ErrorKind::InvalidInput);
    }
}
