//! `dispatch`: what agentkit adds around one tool call.
//!
//! - `serde_baseline`: decode the argument bytes into the typed struct with serde_json, add,
//!   encode the sum: the work any hand-written dispatcher must do.
//! - `tool_call`: the same bytes through agentkit: registry lookup by name, the typed tool's
//!   decode, the call and the encode, with a fresh `ToolContext` as the agent loop builds it.
//! - `toolbox_call`: the loop's full safety net on top: per-call timeout, panic catching,
//!   timing, the error-to-result mapping and the `ToolCallRecord`.
//!
//! Goal: `tool_call` within 1.25× of `serde_baseline`. Run: `cargo bench --bench dispatch`.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use agentkit::tool::{ToolContext, Toolbox, tool_fn};
use agentkit::{Context, ToolCall};
use criterion::{Criterion, criterion_group, criterion_main};

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct AddArgs {
    a: f64,
    b: f64,
}

const ARGS: &str = r#"{"a":17,"b":25}"#;

/// Polls a future that completes without waiting (the tool never awaits anything).
fn now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut TaskContext::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the benchmarked future waited"),
    }
}

fn toolbox() -> Toolbox {
    let mut tools = Toolbox::new();
    for name in ["search", "fetch", "weather", "calendar"] {
        let tool = tool_fn(name, "filler", |args: AddArgs| async move {
            Ok::<_, std::convert::Infallible>(args.a - args.b)
        });
        tools.insert(std::sync::Arc::new(tool)).unwrap();
    }
    let add = tool_fn("add", "Adds two numbers", |args: AddArgs| async move {
        Ok::<_, std::convert::Infallible>(args.a + args.b)
    });
    tools.insert(std::sync::Arc::new(add)).unwrap();
    tools
}

fn dispatch(c: &mut Criterion) {
    let tools = toolbox();
    let cx = Context::new();
    let call_id = "call_0_0".to_owned();
    let mut group = c.benchmark_group("dispatch");

    group.bench_function("serde_baseline", |b| {
        b.iter(|| {
            let args: AddArgs = serde_json::from_str(black_box(ARGS)).unwrap();
            serde_json::to_string(&(args.a + args.b)).unwrap()
        })
    });

    group.bench_function("tool_call", |b| {
        b.iter(|| {
            let tool = tools.get(black_box("add")).unwrap();
            now(tool.call(black_box(ARGS), &ToolContext::new(&call_id, &cx))).unwrap()
        })
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let call = ToolCall {
        id: call_id.clone(),
        name: "add".into(),
        arguments: ARGS.into(),
    };
    group.bench_function("toolbox_call", |b| {
        b.to_async(&runtime)
            .iter(|| tools.call(black_box(&call), &cx, Duration::from_secs(30)))
    });
    group.finish();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
