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

/// The four variants, with what keeps their telemetry alive.
struct Variants {
    agents: Vec<(&'static str, Agent)>,
    _telemetry: Vec<agentkit::observe::Telemetry>,
}

fn variants() -> Variants {
    let quiet = || ObserveBuilder::from_env().unwrap().global(false);
    let off = quiet().logs(false).metrics(false).init().unwrap();
    let logs = quiet().metrics(false).init().unwrap();
    let full = quiet().span_exporter_batched(Drop).init().unwrap();
    Variants {
        agents: vec![
            ("no_hook", agent(None)),
            ("off", agent(Some(off.observer()))),
            ("json_logs", agent(Some(logs.observer()))),
            ("full", agent(Some(full.observer()))),
        ],
        _telemetry: vec![off, logs, full],
    }
}

/// JSON lines to a sink, for the variants that log.
fn json_to_sink() -> tracing::subscriber::DefaultGuard {
    let subscriber = tracing_subscriber::fmt()
        .event_format(agentkit::observe::JsonLines)
        .with_writer(BoxMakeWriter::new(std::io::sink))
        .finish();
    tracing::subscriber::set_default(subscriber)
}

fn overhead(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let variants = variants();
    let _logging = json_to_sink();
    for (name, agent) in &variants.agents {
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
    for (name, agent) in &variants.agents {
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
}

/// `AGENTKIT_TURNS=N AGENTKIT_VARIANT=name`: runs N turns of one variant and exits, for
/// counting instructions under callgrind (see `benches/instructions.sh`), which, unlike
/// timings on a shared VM, repeat exactly.
fn turns_only(turns: usize, variant: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let variants = variants();
    let _logging = json_to_sink();
    let agent = &variants
        .agents
        .iter()
        .find(|(name, _)| *name == variant)
        .expect("AGENTKIT_VARIANT names a variant")
        .1;
    runtime.block_on(async {
        for _ in 0..turns {
            agent
                .execute(Invocation::text(black_box("What is 17 + 25?")))
                .await
                .unwrap();
        }
    });
}

criterion_group!(benches, overhead);

fn main() {
    if let Ok(turns) = std::env::var("AGENTKIT_TURNS") {
        let variant = std::env::var("AGENTKIT_VARIANT").unwrap_or_else(|_| "full".into());
        turns_only(turns.parse().expect("AGENTKIT_TURNS is a number"), &variant);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
