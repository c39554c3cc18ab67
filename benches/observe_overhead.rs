//! `observe_overhead`: the one-tool `turn` (scripted model, zero latency) under four telemetry
//! settings, in one group:
//!
//! - `no_hook`: no observer anywhere (the baseline);
//! - `off`: an observer installed with everything switched off (`enabled()` is false);
//! - `json_logs`: a JSON log line per run, written to a sink;
//! - `full`: OpenTelemetry spans (four per turn, batched to an exporter that drops them),
//!   Prometheus metrics, and the JSON log line.
//!
//! Goals: `off` within 2% of `no_hook`; `full` at most 25% above it. Timings on a shared 2-core
//! machine drift by several percent between consecutive benchmarks, so the bench also prints
//! the heap allocations of one turn per variant (exact, counted with `stats_alloc`).
//! Run: `cargo bench --bench observe_overhead`.

use std::hint::black_box;
use std::sync::Arc;

use agentkit::model::ScriptedModel;
use agentkit::observe::ObserveBuilder;
use agentkit::observer::Observer;
use agentkit::{Agent, Executor, Invocation};
use criterion::{Criterion, criterion_group};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tracing_subscriber::fmt::writer::BoxMakeWriter;

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// Accepts spans and drops them.
#[derive(Debug)]
struct Drop;

impl SpanExporter for Drop {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        black_box(batch);
        Ok(())
    }
}

fn agent(observer: Option<Arc<dyn Observer>>) -> Agent {
    let builder = agentkit::demo::assistant_builder(Arc::new(ScriptedModel::demo()));
    match observer {
        Some(observer) => builder.observer(observer),
        None => builder,
    }
    .build()
    .unwrap()
}

fn overhead(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let quiet = || ObserveBuilder::from_env().unwrap().global(false);
    let off = quiet().logs(false).metrics(false).init().unwrap();
    let logs = quiet().metrics(false).init().unwrap();
    let full = quiet().span_exporter_batched(Drop).init().unwrap();
    let variants = [
        ("no_hook", agent(None)),
        ("off", agent(Some(off.observer()))),
        ("json_logs", agent(Some(logs.observer()))),
        ("full", agent(Some(full.observer()))),
    ];
    // JSON lines to a sink, for the variants that log.
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(BoxMakeWriter::new(std::io::sink))
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    for (name, agent) in &variants {
        runtime
            .block_on(agent.execute(Invocation::text("What is 17 + 25?")))
            .unwrap();
        let region = Region::new(GLOBAL);
        runtime
            .block_on(agent.execute(Invocation::text("What is 17 + 25?")))
            .unwrap();
        let used = region.change();
        println!(
            "observe_overhead/{name}: {} allocations, {} bytes per turn",
            used.allocations, used.bytes_allocated
        );
    }
    let mut group = c.benchmark_group("observe_overhead");
    for (name, agent) in &variants {
        group.bench_function(*name, |b| {
            b.to_async(&runtime).iter(|| async {
                agent
                    .execute(Invocation::text(black_box("What is 17 + 25?")))
                    .await
                    .unwrap()
            })
        });
    }
    group.finish();
    drop((off, logs, full));
}

criterion_group!(benches, overhead);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
