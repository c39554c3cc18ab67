//! `dispatch`: what agentkit adds around one tool call.
//!
//! - `serde_baseline`: decode the argument bytes into the typed struct with serde_json, add,
//!   encode the sum: the work any hand-written dispatcher must do.
//! - `tool_call`: the same bytes through agentkit: registry lookup by name, the typed tool's
//!   decode, the call and the encode, with a fresh `ToolContext` as the agent loop builds it.
//! - `inline_tool_call`: the same for a tool made with `tool_fn_inline` (a plain function, for
//!   tools that never wait), called through `Tool::call_inline`: no future to box.
//! - `toolbox_call`: the loop's full safety net on top: per-call timeout, panic catching,
//!   timing, the error-to-result mapping and the `ToolCallRecord`; `inline_toolbox_call` the
//!   same for the inline tool (no timer: it never waits).
//!
//! Goal: within 1.25× of `serde_baseline`. Run: `cargo bench --bench dispatch`.
//!
//! Criterion times each case seconds apart, and on a shared VM the machine moves between them
//! by more than the difference measured. After criterion's figures, the bench therefore prints
//! a paired one for each case: 51 rounds, each timing a block of 10,000 baseline calls and a
//! block of 10,000 calls of the case back to back (in alternating order); the figure is the
//! median of the per-round ratios.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use agentkit::tool::{ToolContext, Toolbox, tool_fn, tool_fn_inline};
use agentkit::{Context, ToolCall};
use criterion::{Criterion, criterion_group};

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
    let add_inline = tool_fn_inline("add_inline", "Adds two numbers", |args: AddArgs| {
        Ok::<_, std::convert::Infallible>(args.a + args.b)
    });
    tools.insert(std::sync::Arc::new(add_inline)).unwrap();
    tools
}

fn dispatch(c: &mut Criterion) {
    let tools = toolbox();
    let cx = Context::new();
    let call_id = "call_0_0".to_owned();
    let mut group = c.benchmark_group("dispatch");

    group.bench_function("serde_baseline", |b| b.iter(baseline));

    group.bench_function("tool_call", |b| {
        b.iter(|| {
            let tool = tools.get(black_box("add")).unwrap();
            now(tool.call(black_box(ARGS), &ToolContext::new(&call_id, &cx))).unwrap()
        })
    });

    group.bench_function("inline_tool_call", |b| {
        b.iter(|| {
            let tool = tools.get(black_box("add_inline")).unwrap();
            let cx = ToolContext::new(&call_id, &cx);
            tool.call_inline(black_box(ARGS), &cx).unwrap().unwrap()
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
    let inline_call = ToolCall {
        name: "add_inline".into(),
        ..call.clone()
    };
    group.bench_function("inline_toolbox_call", |b| {
        b.to_async(&runtime)
            .iter(|| tools.call(black_box(&inline_call), &cx, Duration::from_secs(30)))
    });
    group.finish();

    // Criterion's name filters: the arguments that are neither options nor their numbers.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-') && a.parse::<f64>().is_err())
        .collect();
    let selected = |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f));
    if selected("dispatch/tool_call") {
        paired("tool_call", || {
            let tool = tools.get(black_box("add")).unwrap();
            now(tool.call(black_box(ARGS), &ToolContext::new(&call_id, &cx))).unwrap()
        });
    }
    if selected("dispatch/inline_tool_call") {
        paired("inline_tool_call", || {
            let tool = tools.get(black_box("add_inline")).unwrap();
            let cx = ToolContext::new(&call_id, &cx);
            tool.call_inline(black_box(ARGS), &cx).unwrap().unwrap()
        });
    }
}

fn baseline() -> String {
    let args: AddArgs = serde_json::from_str(black_box(ARGS)).unwrap();
    serde_json::to_string(&(args.a + args.b)).unwrap()
}

/// Times blocks of `baseline` and `case` back to back and prints the median per-round ratio.
fn paired(name: &str, mut case: impl FnMut() -> String) {
    let quick = std::env::args().any(|a| a == "--test");
    let (rounds, calls) = if quick { (1, 10) } else { (51, 10_000) };
    let block = |f: &mut dyn FnMut() -> String| {
        let started = Instant::now();
        for _ in 0..calls {
            black_box(f());
        }
        started.elapsed().as_secs_f64()
    };
    let mut ratios: Vec<f64> = (0..rounds)
        .map(|round| {
            let (base, timed) = if round % 2 == 0 {
                let base = block(&mut baseline);
                (base, block(&mut case))
            } else {
                let timed = block(&mut case);
                (block(&mut baseline), timed)
            };
            timed / base
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "dispatch/{name}/paired: {rounds} rounds of {calls} calls: median ratio to the baseline \
         {:.2}× (quartiles {:.2}-{:.2})",
        ratios[rounds / 2],
        ratios[rounds / 4],
        ratios[rounds * 3 / 4],
    );
}

/// `AGENTKIT_CALLS=N AGENTKIT_VARIANT=serde_baseline|tool_call`: makes N calls of one variant
/// and exits, for counting instructions under callgrind (see `benches/instructions.sh`).
fn calls_only(calls: usize, variant: &str) {
    let tools = toolbox();
    let cx = Context::new();
    let call_id = "call_0_0".to_owned();
    for _ in 0..calls {
        let out = match variant {
            "serde_baseline" => baseline(),
            "tool_call" => {
                let tool = tools.get(black_box("add")).unwrap();
                now(tool.call(black_box(ARGS), &ToolContext::new(&call_id, &cx))).unwrap()
            }
            "inline_tool_call" => {
                let tool = tools.get(black_box("add_inline")).unwrap();
                let cx = ToolContext::new(&call_id, &cx);
                tool.call_inline(black_box(ARGS), &cx).unwrap().unwrap()
            }
            other => panic!("unknown variant {other}"),
        };
        black_box(out);
    }
}

criterion_group!(benches, dispatch);

fn main() {
    if let Ok(calls) = std::env::var("AGENTKIT_CALLS") {
        let variant = std::env::var("AGENTKIT_VARIANT").unwrap_or_else(|_| "tool_call".into());
        calls_only(calls.parse().expect("AGENTKIT_CALLS is a number"), &variant);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
