//! One suite for every `VectorMemory`: the in-memory index and PostgreSQL (`DATABASE_URL`,
//! default loopback; a missing server fails under `CI`). The two must answer alike, scores
//! included.

use agentkit_core::{Context, ErrorKind};
use agentkit_store::postgres::pool;
use agentkit_store::vector::{
    Document, Embedder, HashingEmbedder, Hit, MemoryVectorIndex, PostgresVectorMemory, VectorMemory,
};
use serde_json::{Map, Value, json};

const DIMENSIONS: usize = 128;

async fn vector(text: &str) -> Vec<f32> {
    HashingEmbedder::new(DIMENSIONS)
        .embed(&[text.to_owned()], &Context::new())
        .await
        .unwrap()
        .remove(0)
}

async fn document(id: &str, text: &str, metadata: Value) -> Document {
    Document {
        id: id.into(),
        text: text.into(),
        metadata: metadata.as_object().cloned().unwrap_or_default(),
        vector: vector(text).await,
    }
}

fn filter(value: Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap()
}

fn ids(hits: &[Hit]) -> Vec<&str> {
    hits.iter().map(|h| h.id.as_str()).collect()
}

/// The suite, in tenants of its own; returns the hits of one query for comparing backends.
async fn conformance(memory: &dyn VectorMemory) -> Vec<Hit> {
    let run = agentkit_core::generate_id();
    let (acme, other) = (format!("acme-{run}"), format!("other-{run}"));
    memory
        .upsert(
            &acme,
            vec![
                document(
                    "refunds",
                    "refunds are paid within five days",
                    json!({"kind": "policy", "tags": ["money", "time"]}),
                )
                .await,
                document(
                    "shipping",
                    "shipping takes two days by courier",
                    json!({"kind": "policy", "tags": ["time"]}),
                )
                .await,
                document("faq-refund", "how do refunds work", json!({"kind": "faq"})).await,
            ],
        )
        .await
        .unwrap();
    memory
        .upsert(
            &other,
            vec![document("x", "refunds refunds refunds", json!({"kind": "policy"})).await],
        )
        .await
        .unwrap();
    let query = vector("when are refunds paid").await;

    // Nearest first, `k` at most, one tenant only.
    let hits = memory.query(&acme, &query, 2, &Map::new()).await.unwrap();
    assert_eq!(ids(&hits), ["refunds", "faq-refund"]);
    assert!(hits[0].score > hits[1].score && hits[0].score <= 1.0 + 1e-6);
    assert_eq!(hits[0].text, "refunds are paid within five days");
    assert_eq!(hits[0].metadata["tags"], json!(["money", "time"]));
    let all = memory.query(&acme, &query, 10, &Map::new()).await.unwrap();
    assert_eq!(all.len(), 3, "another tenant's document stays out");

    // Filters: each key must hold exactly its value.
    let policy = memory
        .query(&acme, &query, 10, &filter(json!({"kind": "policy"})))
        .await
        .unwrap();
    assert_eq!(ids(&policy), ["refunds", "shipping"]);
    let part = filter(json!({"tags": ["money"]}));
    assert!(
        memory
            .query(&acme, &query, 10, &part)
            .await
            .unwrap()
            .is_empty()
    );
    let whole = filter(json!({"kind": "policy", "tags": ["money", "time"]}));
    assert_eq!(
        ids(&memory.query(&acme, &query, 10, &whole).await.unwrap()),
        ["refunds"]
    );
    let missing = filter(json!({"lang": "en"}));
    assert!(
        memory
            .query(&acme, &query, 10, &missing)
            .await
            .unwrap()
            .is_empty()
    );

    // A zero vector scores nothing, without failing.
    let zero = memory
        .query(&acme, &vec![0.0; DIMENSIONS], 1, &Map::new())
        .await
        .unwrap();
    assert_eq!(zero[0].score, 0.0);

    // Upserting an id replaces it; deleting says how many were there.
    memory
        .upsert(
            &acme,
            vec![document("shipping", "refunds paid when parcels return", json!({})).await],
        )
        .await
        .unwrap();
    let after = memory.query(&acme, &query, 10, &Map::new()).await.unwrap();
    assert_eq!(after.len(), 3);
    let shipping = after.iter().find(|h| h.id == "shipping").unwrap();
    assert_eq!(shipping.text, "refunds paid when parcels return");
    assert!(shipping.metadata.is_empty());
    let deleted = memory
        .delete(&acme, &["faq-refund".into(), "nope".into()])
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    assert_eq!(
        memory
            .query(&acme, &query, 10, &Map::new())
            .await
            .unwrap()
            .len(),
        2
    );

    // Bad input is refused with a clear kind.
    let short = memory
        .query(&acme, &[1.0, 2.0], 1, &Map::new())
        .await
        .unwrap_err();
    assert_eq!(short.kind(), ErrorKind::InvalidInput);
    let mut nan = vector("x").await;
    nan[0] = f32::NAN;
    let bad = Document {
        vector: nan,
        ..document("nan", "x", json!({})).await
    };
    assert_eq!(
        memory.upsert(&acme, vec![bad]).await.unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    let unnamed = memory.query("", &query, 1, &Map::new()).await.unwrap_err();
    assert_eq!(unnamed.kind(), ErrorKind::InvalidInput);

    let compared = memory.query(&acme, &query, 10, &Map::new()).await.unwrap();
    memory
        .delete(&acme, &["refunds".into(), "shipping".into()])
        .await
        .unwrap();
    memory.delete(&other, &["x".into()]).await.unwrap();
    compared
}

#[tokio::test]
async fn memory_index() {
    conformance(&MemoryVectorIndex::new(DIMENSIONS)).await;
}

#[tokio::test]
async fn postgres_answers_as_the_memory_index_does() {
    let Some(url) = agentkit_testkit::database_url() else {
        return;
    };
    let memory = PostgresVectorMemory::connect(&url, DIMENSIONS)
        .await
        .unwrap();
    let in_postgres = conformance(&memory).await;
    let in_memory = conformance(&MemoryVectorIndex::new(DIMENSIONS)).await;
    assert_eq!(ids(&in_postgres), ids(&in_memory));
    for (a, b) in in_postgres.iter().zip(&in_memory) {
        assert!(
            (a.score - b.score).abs() < 1e-5,
            "{} {} {}",
            a.id,
            a.score,
            b.score
        );
    }

    // Memories of another dimension share the table without seeing each other's documents.
    let run = agentkit_core::generate_id();
    let tenant = format!("dims-{run}");
    let small = PostgresVectorMemory::new(pool(&url, 2).unwrap(), 2);
    small
        .upsert(
            &tenant,
            vec![Document {
                id: "tiny".into(),
                text: "tiny".into(),
                metadata: Map::new(),
                vector: vec![1.0, 0.0],
            }],
        )
        .await
        .unwrap();
    memory
        .upsert(&tenant, vec![document("big", "refunds", json!({})).await])
        .await
        .unwrap();
    assert_eq!(
        ids(&small
            .query(&tenant, &[1.0, 0.0], 5, &Map::new())
            .await
            .unwrap()),
        ["tiny"]
    );
    let big = memory
        .query(&tenant, &vector("refunds").await, 5, &Map::new())
        .await
        .unwrap();
    assert_eq!(ids(&big), ["big"]);
    small.delete(&tenant, &["tiny".into()]).await.unwrap();
    memory.delete(&tenant, &["big".into()]).await.unwrap();
}
