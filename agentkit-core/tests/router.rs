//! `Router`: rules in order, a classifier agent, the fallback, and the route in the context.

use std::sync::Arc;

use agentkit_core::executor::{AgentEvent, Reply, Route, Router};
use agentkit_core::model::{ScriptedModel, ScriptedTurn};
use agentkit_core::{Agent, Error, ErrorKind, Executor, Invocation, Result};
use futures::StreamExt;
use serde_json::json;

/// Answers with its name and the route its context names.
struct Desk(&'static str);

impl Executor for Desk {
    async fn execute(&self, invocation: Invocation) -> Result<Reply> {
        let route = invocation.context.extension::<Route>().cloned();
        Ok(Reply {
            output: format!("{} via {}", self.0, route.map(|r| r.0).unwrap_or_default()),
            ..Reply::default()
        })
    }
}

/// A classifier agent: "billing" for invoices, "refunds" for refunds, "???" otherwise, and
/// an error for "crash".
fn classifier() -> Agent {
    let model = ScriptedModel::builder()
        .rule(|request| {
            let text = request.messages.last()?.text_content();
            let answer = if text.contains("invoice") {
                " billing\n"
            } else if text.contains("refund") {
                "refunds"
            } else {
                "???"
            };
            Some(ScriptedTurn::text(answer))
        })
        .build();
    Agent::builder()
        .name("classifier")
        .model(Arc::new(model))
        .build()
        .unwrap()
}

fn router(fallback: bool) -> Router {
    let mut builder = Router::builder()
        .route("billing", Desk("billing"))
        .route("refunds", Desk("refunds"))
        .route("support", Desk("support"))
        .rule("support", |i: &Invocation| {
            i.metadata.get("tier") == Some(&json!("vip"))
        })
        .rule("billing", |i: &Invocation| {
            i.input
                .iter()
                .any(|m| m.text_content().contains("VIP invoice"))
        })
        .classifier(classifier());
    if fallback {
        builder = builder.fallback("support");
    }
    builder.build().unwrap()
}

async fn answer(router: &Router, invocation: Invocation) -> Result<String> {
    router.execute(invocation).await.map(|reply| reply.output)
}

#[tokio::test]
async fn rules_come_first_in_order_then_the_classifier_then_the_fallback() {
    let router = router(true);
    // The first rule wins over the second and over the classifier.
    let mut vip = Invocation::text("a VIP invoice question");
    vip.metadata.insert("tier".into(), json!("vip"));
    assert_eq!(answer(&router, vip).await.unwrap(), "support via support");
    assert_eq!(
        answer(&router, Invocation::text("a VIP invoice question"))
            .await
            .unwrap(),
        "billing via billing"
    );
    // The classifier's answer, trimmed.
    assert_eq!(
        answer(&router, Invocation::text("my invoice is wrong"))
            .await
            .unwrap(),
        "billing via billing"
    );
    assert_eq!(
        answer(&router, Invocation::text("I want a refund"))
            .await
            .unwrap(),
        "refunds via refunds"
    );
    // It names no route: the fallback.
    assert_eq!(
        answer(&router, Invocation::text("hello")).await.unwrap(),
        "support via support"
    );
}

#[tokio::test]
async fn without_a_fallback_an_unroutable_invocation_is_invalid_input() {
    let router = router(false);
    let error = answer(&router, Invocation::text("hello"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    assert_eq!(
        router
            .choose(&Invocation::text("an invoice"))
            .await
            .unwrap(),
        "billing"
    );
}

/// A classifier that cannot be reached.
struct Down;

impl Executor for Down {
    async fn execute(&self, _invocation: Invocation) -> Result<Reply> {
        Err(Error::unavailable("the classifier is down"))
    }
}

#[tokio::test]
async fn a_failing_classifier_takes_the_fallback_or_fails_the_invocation() {
    let with_fallback = Router::builder()
        .route("a", Desk("a"))
        .classifier(Down)
        .fallback("a")
        .build()
        .unwrap();
    assert_eq!(
        answer(&with_fallback, Invocation::text("hi"))
            .await
            .unwrap(),
        "a via a"
    );
    let without = Router::builder()
        .route("a", Desk("a"))
        .classifier(Down)
        .build()
        .unwrap();
    let error = answer(&without, Invocation::text("hi")).await.unwrap_err();
    assert_eq!(
        error.kind(),
        ErrorKind::Unavailable,
        "the classifier's own error"
    );
}

#[tokio::test]
async fn a_stream_is_routed_too() {
    let router = router(true);
    let events: Vec<AgentEvent> = router
        .stream(Invocation::text("about my invoice"))
        .await
        .unwrap()
        .map(|event| event.unwrap())
        .collect()
        .await;
    let Some(AgentEvent::Done(reply)) = events.last() else {
        panic!("{events:?}");
    };
    assert_eq!(reply.output, "billing via billing");
}

#[test]
fn a_router_that_cannot_route_is_refused() {
    let refused = [
        Router::builder().build().err(),
        Router::builder()
            .route("a", Desk("a"))
            .route("a", Desk("b"))
            .build()
            .err(),
        Router::builder().route(" ", Desk("a")).build().err(),
        Router::builder()
            .route("a", Desk("a"))
            .rule("b", |_: &Invocation| true)
            .build()
            .err(),
        Router::builder()
            .route("a", Desk("a"))
            .fallback("b")
            .build()
            .err(),
    ];
    for error in refused {
        assert_eq!(error.unwrap().kind(), ErrorKind::InvalidInput);
    }
}
