//! Run records: the recording layer, the JSON-lines store and the PostgreSQL store.

use std::sync::Arc;

use agentkit_core::model::ScriptedModel;
use agentkit_core::{Agent, Context, Executor, Invocation};
use agentkit_store::{JsonlRecordStore, Outcome, RecordLayer, RecordStore};
use tower::Layer;

fn agent() -> Agent {
    agentkit_core::demo::assistant_builder(Arc::new(ScriptedModel::demo()))
        .build()
        .unwrap()
}

async fn record_two_runs(store: Arc<dyn RecordStore>, name: &str) {
    let recorded = RecordLayer::new(store, name, "7").layer(agent());
    let cx = Context::new()
        .with_request_id("req-ok")
        .with_tenant("acme")
        .with_session_id("s-1");
    let reply = recorded
        .execute(Invocation::text("What is 2 + 3?").with_context(cx))
        .await
        .unwrap();
    assert_eq!(reply.output, "2 + 3 = 5");
    let error = recorded
        .execute(Invocation::text("").with_context(Context::new().with_request_id("req-bad")))
        .await
        .unwrap_err();
    assert_eq!(error.code(), "invalid_input");
}

async fn check(store: &dyn RecordStore, name: &str) {
    let records = store.recent(Some(name), 10).await.unwrap();
    assert_eq!(records.len(), 2);
    let (failed, ok) = (&records[0], &records[1]);
    assert_eq!(failed.request_id, "req-bad", "newest first");
    assert_eq!(failed.outcome, Outcome::Error);
    assert_eq!(failed.error_code.as_deref(), Some("invalid_input"));
    assert_eq!(ok.request_id, "req-ok");
    assert_eq!(ok.outcome, Outcome::Ok);
    assert_eq!(ok.agent, name);
    assert_eq!(ok.agent_version, "7");
    assert_eq!(ok.tenant.as_deref(), Some("acme"));
    assert_eq!(ok.session_id.as_deref(), Some("s-1"));
    assert_eq!(ok.model, "scripted");
    assert_eq!(ok.input[0].text_content(), "What is 2 + 3?");
    assert_eq!(ok.output.as_deref(), Some("2 + 3 = 5"));
    assert_eq!(ok.tool_calls.len(), 1);
    assert_eq!(ok.tool_calls[0].name, "add");
    assert!(ok.usage.input_tokens > 0);
    assert!(ok.latency_ms >= 0.0 && ok.started_at_ms > 0);
    assert!(
        store
            .recent(Some("no-such-agent"), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn jsonl_records_every_run_and_survives_a_torn_line() {
    let path = std::env::temp_dir().join(format!("{}.jsonl", agentkit_testkit::unique("records")));
    let store = Arc::new(JsonlRecordStore::open(&path).await.unwrap());
    record_two_runs(store.clone(), "assistant").await;
    check(&*store, "assistant").await;
    // A crash mid-write leaves half a line; it is skipped, later records still append.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"request_id\": \"tor"))
        .unwrap();
    let reopened = JsonlRecordStore::open(&path).await.unwrap();
    assert_eq!(reopened.recent(None, 10).await.unwrap().len(), 2);
    std::fs::remove_file(&path).ok();
}

#[tokio::test]
async fn postgres_records_every_run() {
    let Some(url) = agentkit_testkit::database_url() else {
        return;
    };
    let store = Arc::new(
        agentkit_store::postgres::PostgresRecordStore::connect(&url)
            .await
            .unwrap(),
    );
    let name = agentkit_testkit::unique("agent");
    record_two_runs(store.clone(), &name).await;
    check(&*store, &name).await;
}
