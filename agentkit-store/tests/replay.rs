//! Replay: runs recorded through the record layer, replayed against candidates that behave the
//! same, answer differently, or fail; session turns with and without their recorded history.

use std::sync::{Arc, Mutex};

use agentkit_core::executor::Reply;
use agentkit_core::model::{ScriptedModel, ScriptedTurn};
use agentkit_core::{Agent, Context, Executor, Invocation, Message, Result, Role};
use agentkit_store::{
    Change, JsonlRecordStore, MemorySessionStore, Outcome, RecordLayer, RecordStore, ReplayOptions,
    Replaying, RunRecord, SessionAgent, replay,
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

/// A model that remembers: asked "what did I say first?", it answers with the conversation's
/// first user message; anything else as the demo does.
fn remembering() -> ScriptedModel {
    ScriptedModel::builder()
        .rule(|request| {
            let asked = request.messages.last()?.text_content();
            (asked == "what did I say first?").then(|| {
                let first = request
                    .messages
                    .iter()
                    .find(|m| m.role == Role::User)
                    .map(Message::text_content)
                    .unwrap_or_default();
                ScriptedTurn::text(format!("you said: {first}"))
            })
        })
        .demo_rules()
        .build()
}

/// Two turns of one session, through a session agent over the recording layer.
async fn session_records(
    layer: impl FnOnce(Arc<dyn RecordStore>) -> RecordLayer,
) -> Vec<RunRecord> {
    let path = std::env::temp_dir().join(format!("replay-{}.jsonl", agentkit_core::generate_id()));
    let store: Arc<dyn RecordStore> = Arc::new(JsonlRecordStore::open(&path).await.unwrap());
    let agent = layer(store.clone()).layer(demo(remembering()).build().unwrap());
    let sessions = SessionAgent::builder(agent, Arc::new(MemorySessionStore::new())).build();
    for (id, text) in [("t-1", "my name is Ada"), ("t-2", "what did I say first?")] {
        let cx = Context::new()
            .with_request_id(id)
            .with_tenant("acme")
            .with_session_id("s-9");
        sessions
            .execute(Invocation::text(text).with_context(cx))
            .await
            .unwrap();
    }
    // Read back from the file: what is replayed is what was stored.
    let mut records = store.recent(None, 10).await.unwrap();
    records.reverse();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(records.len(), 2);
    records
}

/// Delegates to an agent, keeping the history each run was given.
struct Histories {
    agent: Agent,
    seen: Mutex<Vec<Vec<String>>>,
}

impl Executor for Histories {
    async fn execute(&self, invocation: Invocation) -> Result<Reply> {
        let history = invocation
            .history
            .iter()
            .map(Message::text_content)
            .collect();
        self.seen.lock().unwrap().push(history);
        self.agent.execute(invocation).await
    }
}

#[tokio::test]
async fn a_session_turn_replays_with_the_history_it_was_given() {
    let records = session_records(|store| RecordLayer::new(store, "assistant", "1")).await;
    let (first, second) = (&records[0], &records[1]);
    assert_eq!((first.history_len, first.history.len()), (Some(0), 0));
    assert_eq!(
        second.history_len,
        Some(2),
        "the first turn's question and answer"
    );
    assert_eq!(second.history[0].text_content(), "my name is Ada");
    assert_eq!(second.history[1].role, Role::Assistant);
    assert_eq!(second.output.as_deref(), Some("you said: my name is Ada"));
    assert!(!second.history_missing());

    let candidate = Histories {
        agent: demo(remembering()).build().unwrap(),
        seen: Mutex::default(),
    };
    let options = ReplayOptions {
        concurrency: 1,
        ..ReplayOptions::default()
    };
    let report = replay(&records, &candidate, &options).await;
    assert_eq!(report.changed().count(), 0, "{:#?}", report.cases);
    let turn = &report.cases[1];
    assert!(turn.session_turn && !turn.history_missing);
    assert_eq!(
        turn.after.output.as_deref(),
        Some("you said: my name is Ada")
    );
    let seen = candidate.seen.lock().unwrap();
    assert!(seen[0].is_empty(), "the first turn had no history");
    assert_eq!(
        seen[1],
        [
            second.history[0].text_content(),
            second.history[1].text_content()
        ]
    );
}

#[tokio::test]
async fn a_record_without_its_history_says_so_and_replays_without_it() {
    let records =
        session_records(|store| RecordLayer::new(store, "assistant", "1").without_history()).await;
    let second = &records[1];
    assert!(second.history.is_empty());
    assert_eq!(second.history_len, Some(2), "the count is kept");
    assert!(second.history_missing() && !records[0].history_missing());

    let candidate = demo(remembering()).build().unwrap();
    let report = replay(&records, &candidate, &ReplayOptions::default()).await;
    let turn = &report.cases[1];
    assert!(turn.history_missing);
    assert_eq!(
        turn.changes,
        [Change::Output],
        "the candidate never saw the first turn"
    );
    assert_eq!(
        turn.after.output.as_deref(),
        Some("you said: what did I say first?")
    );

    // A record from before history was kept: a session turn with no count.
    let mut old = serde_json::to_value(second).unwrap();
    let fields = old.as_object_mut().unwrap();
    fields.remove("history_len");
    assert!(
        fields.get("history").is_none(),
        "empty history is not written"
    );
    let old: RunRecord = serde_json::from_value(old).unwrap();
    assert_eq!(old.history_len, None);
    assert!(old.history_missing());
    let mut stateless = old.clone();
    stateless.session_id = None;
    assert!(
        !stateless.history_missing(),
        "a run outside a session had none"
    );
}

#[tokio::test]
async fn recorded_traffic_is_load_shaped_like_production() {
    use agentkit_core::load::{self, LoadPlan};
    use agentkit_store::RecordedTraffic;

    let records = recorded().await;
    let candidate = Watching {
        agent: demo(ScriptedModel::demo()).build().unwrap(),
        seen: Mutex::default(),
    };
    let plan = LoadPlan::concurrency(2).limit(10);
    let report = load::run(&candidate, &plan, &RecordedTraffic::new(records))
        .await
        .unwrap();
    // Each of the five records asked twice; the empty one is refused both times.
    assert_eq!((report.succeeded, report.failed), (8, 2), "{report:?}");
    assert_eq!(report.errors.get("invalid_input"), Some(&2));
    let seen = candidate.seen.lock().unwrap();
    let mut customers: Vec<String> = seen
        .iter()
        .map(|(cx, metadata)| {
            assert_eq!(cx.tenant(), Some("acme"), "the recorded tenant");
            assert!(cx.request_id().starts_with("load-"));
            metadata["customer"].as_str().unwrap().to_owned()
        })
        .collect();
    customers.sort();
    customers.dedup();
    assert_eq!(
        customers,
        ["c-r-bad", "c-r-echo", "c-r-sum", "c-r-sum-2", "c-r-turn"],
        "the recorded prompt variables"
    );
}
