//! `turn`: a whole agent turn on `ScriptedModel` with zero latency and telemetry off.
//!
//! - `raw_work`: the baseline in the same group: the two scripted model calls and the one tool
//!   call of a turn, made directly, with no agent around them. `one_tool − raw_work` is the
//!   framework's own time.
//! - `one_tool`: user message → one `add` call → final answer, through `Agent::execute`.
//! - `one_tool_streaming`: the same through `Agent::stream`, consuming every event.
//! - `four_parallel_tools`: one step with four concurrent `add` calls.
//! - `hundred_in_flight`: 100 one-tool turns polled together on one thread (per-turn figure via
//!   throughput).
//!
//! It also prints the heap allocations of one turn (counted with `stats_alloc`).
//! Run: `cargo bench --bench turn`.

use std::alloc::System;
use std::hint::black_box;
use std::sync::Arc;

use agentkit::model::{Model, ModelRequest, ScriptedModel};
use agentkit::tool::ToolContext;
use agentkit::{Agent, Context, Executor, Invocation, Message, ToolResult};
use criterion::{Criterion, Throughput, criterion_group};
use futures::StreamExt;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn agent() -> Agent {
    agentkit::demo::assistant_builder(Arc::new(ScriptedModel::demo()))
        .build()
        .unwrap()
}

/// The model and tool work of one turn, without the agent.
async fn raw_work(model: &ScriptedModel, agent: &Agent) -> String {
    let tools = agent.tools().specs();
    let cx = Context::new();
    let mut messages = vec![Message::user("What is 17 + 25?")];
    let mut request = ModelRequest::new(&messages);
    request.tools = tools;
    let first = model.complete(&request, &cx).await.unwrap();
    let call = first.message.tool_calls().next().unwrap().clone();
    let tool = agent.tools().get("add").unwrap();
    let content = tool
        .call(&call.arguments, &ToolContext::new(&call.id, &cx))
        .await
        .unwrap();
    messages.push(first.message);
    messages.push(Message::tool_results([ToolResult {
        call_id: call.id,
        content,
        is_error: false,
    }]));
    let mut request = ModelRequest::new(&messages);
    request.tools = tools;
    model
        .complete(&request, &cx)
        .await
        .unwrap()
        .message
        .text_content()
}

fn turn(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let agent = agent();
    let model = ScriptedModel::demo();
    let mut group = c.benchmark_group("turn");

    group.bench_function("raw_work", |b| {
        b.to_async(&runtime).iter(|| raw_work(&model, &agent))
    });
    group.bench_function("one_tool", |b| {
        b.to_async(&runtime).iter(|| async {
            let reply = agent
                .execute(Invocation::text(black_box("What is 17 + 25?")))
                .await
                .unwrap();
            debug_assert_eq!(reply.output, "17 + 25 = 42");
            reply
        })
    });
    group.bench_function("one_tool_streaming", |b| {
        b.to_async(&runtime).iter(|| async {
            let mut events = agent
                .stream(Invocation::text(black_box("What is 17 + 25?")))
                .await
                .unwrap();
            let mut n = 0;
            while let Some(event) = events.next().await {
                event.unwrap();
                n += 1;
            }
            n
        })
    });
    group.bench_function("four_parallel_tools", |b| {
        b.to_async(&runtime).iter(|| async {
            agent
                .execute(Invocation::text(black_box(
                    "1 + 1, 2 + 2, 3 + 3 and 4 + 4?",
                )))
                .await
                .unwrap()
        })
    });
    group.throughput(Throughput::Elements(100));
    group.bench_function("hundred_in_flight", |b| {
        b.to_async(&runtime).iter(|| async {
            let turns = (0..100).map(|_| agent.execute(Invocation::text("What is 17 + 25?")));
            futures::future::join_all(turns).await
        })
    });
    group.finish();
}

fn count_allocations() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let agent = agent();
    let model = ScriptedModel::demo();
    // Warm up lazily initialised state first.
    runtime
        .block_on(agent.execute(Invocation::text("What is 17 + 25?")))
        .unwrap();
    let region = Region::new(GLOBAL);
    runtime
        .block_on(agent.execute(Invocation::text("What is 17 + 25?")))
        .unwrap();
    let turn = region.change();
    let region = Region::new(GLOBAL);
    runtime.block_on(raw_work(&model, &agent));
    let raw = region.change();
    println!(
        "allocations per one-tool turn: {} ({} bytes); of which the raw model and tool work: {} ({} bytes)",
        turn.allocations, turn.bytes_allocated, raw.allocations, raw.bytes_allocated
    );
}

criterion_group!(benches, turn);

fn main() {
    count_allocations();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
