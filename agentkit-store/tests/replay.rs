//! Replay: runs recorded through the record layer, replayed against candidates that behave the
//! same, answer differently, or fail.

use std::sync::{Arc, Mutex};

use agentkit_core::executor::Reply;
use agentkit_core::model::{ScriptedModel, ScriptedTurn};
use agentkit_core::{Agent, Context, Executor, Invocation, Result};
use agentkit_store::{
    Change, JsonlRecordStore, Outcome, RecordLayer, RecordStore, ReplayOptions, Replaying,
    RunRecord, replay,
};
use tower::Layer;

fn demo(model: ScriptedModel) -> agentkit_core::AgentBuilder {
    agentkit_core::demo::assistant_builder(Arc::new(model))
}

/// Five recorded runs of the demo agent: two sums (each calls `add`), an echo, a session turn
/// and a failure.
async fn recorded() -> Vec<RunRecord> {
    let path = std::env::temp_dir().join(format!("replay-{}.jsonl", agentkit_core::generate_id()));
    let store: Arc<dyn RecordStore> = Arc::new(JsonlRecordStore::open(&path).await.unwrap());
    let agent = RecordLayer::new(store.clone(), "assistant", "1")
        .layer(demo(ScriptedModel::demo()).build().unwrap());
    for (id, text, session) in [
        ("r-sum", "What is 2 + 3?", None),
        ("r-echo", "hello there", None),
        ("r-sum-2", "What is 10 + 5?", None),
        ("r-turn", "What is 1 + 1?", Some("s-1")),
        ("r-bad", "", None),
    ] {
        let mut cx = Context::new().with_request_id(id).with_tenant("acme");
        if let Some(session) = session {
            cx = cx.with_session_id(session);
        }
        let mut invocation = Invocation::text(text).with_context(cx);
        invocation
            .metadata
            .insert("customer".into(), format!("c-{id}").into());
        let _ = agent.execute(invocation).await;
    }
    let mut records = store.recent(Some("assistant"), 10).await.unwrap();
    records.reverse();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(records.len(), 5);
    records
}

/// What a replayed run was given: its context and metadata.
type Given = (Context, serde_json::Map<String, serde_json::Value>);

/// Delegates to an agent, keeping what each replayed run was given.
struct Watching {
    agent: Agent,
    seen: Mutex<Vec<Given>>,
}

impl Executor for Watching {
    async fn execute(&self, invocation: Invocation) -> Result<Reply> {
        let given = (invocation.context.clone(), invocation.metadata.clone());
        self.seen.lock().unwrap().push(given);
        self.agent.execute(invocation).await
    }
}

#[tokio::test]
async fn the_same_version_replays_unchanged_in_the_recorded_tenant() {
    let records = recorded().await;
    let candidate = Watching {
        agent: demo(ScriptedModel::demo()).build().unwrap(),
        seen: Mutex::default(),
    };
    let report = replay(&records, &candidate, &ReplayOptions::default()).await;
    assert_eq!(report.cases.len(), 5);
    assert_eq!(
        report.changed().count(),
        0,
        "{:#?}",
        report.changed().collect::<Vec<_>>()
    );
    let ids: Vec<&str> = report.cases.iter().map(|c| c.request_id.as_str()).collect();
    assert_eq!(
        ids,
        ["r-sum", "r-echo", "r-sum-2", "r-turn", "r-bad"],
        "in record order"
    );
    assert!(report.cases[3].session_turn && !report.cases[0].session_turn);
    assert_eq!(
        report.cases[4].after.error_code.as_deref(),
        Some("invalid_input")
    );

    let summary = report.summary();
    assert_eq!(
        (summary.runs, summary.unchanged, summary.regressions),
        (5, 5, 0)
    );
    assert_eq!(
        summary.tokens.0, summary.tokens.1,
        "same model, same tokens"
    );

    let seen = candidate.seen.lock().unwrap();
    let mut replayed: Vec<String> = seen
        .iter()
        .map(|(cx, metadata)| {
            assert_eq!(cx.tenant(), Some("acme"));
            assert!(cx.deadline().is_some(), "a replay has a deadline");
            assert!(cx.request_id().starts_with("replay-"));
            let of = cx
                .extension::<Replaying>()
                .expect("marked as a replay")
                .of
                .clone();
            assert_eq!(
                metadata["customer"],
                format!("c-{of}"),
                "the recorded variables"
            );
            of
        })
        .collect();
    replayed.sort();
    assert_eq!(replayed, ["r-bad", "r-echo", "r-sum", "r-sum-2", "r-turn"]);
}

#[tokio::test]
async fn a_candidate_that_answers_without_the_tool_or_fails_is_reported() {
    let records = recorded().await;

    // Answers sums from memory: no tool call, another wording.
    let guessing = ScriptedModel::builder()
        .rule(|request| {
            let text = request.messages.last()?.text_content();
            text.contains('+')
                .then(|| ScriptedTurn::text(format!("I think it is {text}")))
        })
        .demo_rules()
        .build();
    let report = replay(
        &records,
        &demo(guessing).build().unwrap(),
        &ReplayOptions::default(),
    )
    .await;
    let summary = report.summary();
    assert_eq!(
        summary.unchanged, 2,
        "the echo and the failure: {summary:?}"
    );
    assert_eq!(
        (
            summary.output_changed,
            summary.tools_changed,
            summary.regressions
        ),
        (3, 3, 0)
    );
    let sum = &report.cases[0];
    assert_eq!(sum.changes, [Change::Output, Change::Tools]);
    assert_eq!(sum.before.tools, ["add"]);
    assert!(sum.after.tools.is_empty());
    assert_eq!(sum.before.output.as_deref(), Some("2 + 3 = 5"));

    // A version whose step limit leaves no room for the tool's answer: the sums regress.
    let strict = demo(ScriptedModel::demo()).max_steps(1).build().unwrap();
    let options = ReplayOptions {
        concurrency: 1,
        ..ReplayOptions::default()
    };
    let report = replay(&records, &strict, &options).await;
    let regressions: Vec<&str> = report
        .cases
        .iter()
        .filter(|c| c.is_regression())
        .map(|c| c.request_id.as_str())
        .collect();
    assert_eq!(regressions, ["r-sum", "r-sum-2", "r-turn"]);
    let regressed = &report.cases[0];
    assert_eq!(regressed.after.outcome, Outcome::Error);
    assert_eq!(regressed.after.error_code.as_deref(), Some("step_limit"));
    assert!(regressed.changes.contains(&Change::Outcome));
    assert_eq!(report.summary().regressions, 3);
    assert!(report.summary().cost_usd.1 <= report.summary().cost_usd.0);
}
