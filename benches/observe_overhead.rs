//! `observe_overhead`: the one-tool `turn` (scripted model, zero latency) under four telemetry
//! settings, in one group:
//!
//! - `no_hook`: no observer anywhere (the baseline);
//! - `off`: an observer installed with everything switched off (`enabled()` is false);
//! - `json_logs`: a JSON log line per run, written to a sink;
//! - `full`: OpenTelemetry spans (four per turn, batched to an exporter that counts and drops
//!   them), Prometheus metrics, and the JSON log line.
//!
//! Spans and log lines are built on the telemetry thread; after the runs the bench flushes it
//! and checks that every turn's four spans reached the exporter and nothing was dropped, so
//! the figures include no telemetry that was skipped.
//!
//! Goals: `off` within 2% of `no_hook`; `full` at most 25% above it. Timings on a shared 2-core
//! machine drift by several percent between consecutive benchmarks, so the bench also prints
//! the heap allocations of one turn per variant (exact, counted with `stats_alloc`).
//! Run: `cargo bench --bench observe_overhead`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// Counts spans and drops them.
#[derive(Debug, Clone, Default)]
struct Count(Arc<AtomicU64>);

impl SpanExporter for Count {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.fetch_add(batch.len() as u64, Ordering::Relaxed);
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
    telemetry: Vec<agentkit::observe::Telemetry>,
    spans: Count,
}

impl Variants {
    /// Flushes the telemetry threads; panics unless `turns` full turns exported four spans
    /// each and no record was dropped.
    fn check(&self, turns: u64) {
        for telemetry in &self.telemetry {
            telemetry.flush();
            assert_eq!(telemetry.dropped(), 0, "telemetry records were dropped");
        }
        let spans = self.spans.0.load(Ordering::Relaxed);
        assert_eq!(spans, 4 * turns, "every turn's four spans were exported");
        eprintln!("observe_overhead: {turns} full turns, {spans} spans exported, none dropped");
    }
}

fn variants() -> Variants {
    let quiet = || ObserveBuilder::from_env().unwrap().global(false);
    let spans = Count::default();
    let off = quiet().logs(false).metrics(false).init().unwrap();
    let logs = quiet().metrics(false).init().unwrap();
    let full = quiet().span_exporter_batched(spans.clone()).init().unwrap();
    Variants {
        agents: vec![
            ("no_hook", agent(None)),
            ("off", agent(Some(off.observer()))),
            ("json_logs", agent(Some(logs.observer()))),
            ("full", agent(Some(full.observer()))),
        ],
        telemetry: vec![off, logs, full],
        spans,
    }
}

/// An agent that counts its runs.
struct Counted<'a> {
    agent: &'a Agent,
    runs: AtomicU64,
}

impl Counted<'_> {
    async fn turn(&self) {
        self.runs.fetch_add(1, Ordering::Relaxed);
        self.agent
            .execute(Invocation::text(black_box("What is 17 + 25?")))
            .await
            .unwrap();
    }
}

/// JSON lines to a sink, for the variants that log: the process-wide subscriber, as
/// `agentkit_observe::init` installs it in a service.
fn json_to_sink() {
    let subscriber = tracing_subscriber::fmt()
        .event_format(agentkit::observe::JsonLines)
        .with_writer(BoxMakeWriter::new(std::io::sink))
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("the bench's only subscriber");
}

fn overhead(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let variants = variants();
    json_to_sink();
    let mut full = 0;
    for (name, agent) in &variants.agents {
        runtime
            .block_on(agent.execute(Invocation::text("What is 17 + 25?")))
            .unwrap();
        let region = Region::new(GLOBAL);
        runtime
            .block_on(agent.execute(Invocation::text("What is 17 + 25?")))
            .unwrap();
        let used = region.change();
        if *name == "full" {
            full += 2;
        }
        println!(
            "observe_overhead/{name}: {} allocations, {} bytes per turn",
            used.allocations, used.bytes_allocated
        );
    }
    let mut group = c.benchmark_group("observe_overhead");
    for (name, agent) in &variants.agents {
        let counted = Counted {
            agent,
            runs: AtomicU64::new(0),
        };
        group.bench_function(*name, |b| b.to_async(&runtime).iter(|| counted.turn()));
        if *name == "full" {
            full += counted.runs.load(Ordering::Relaxed);
        }
    }
    group.finish();
    variants.check(full);
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
    json_to_sink();
    let agent = &variants
        .agents
        .iter()
        .find(|(name, _)| *name == variant)
        .expect("AGENTKIT_VARIANT names a variant")
        .1;
    let started = std::time::Instant::now();
    runtime.block_on(async {
        for _ in 0..turns {
            agent
                .execute(Invocation::text(black_box("What is 17 + 25?")))
                .await
                .unwrap();
        }
    });
    let elapsed = started.elapsed();
    variants.check(if variant == "full" { turns as u64 } else { 0 });
    eprintln!(
        "observe_overhead/{variant}: {turns} turns in {elapsed:?}, {:?} per turn (flushed after)",
        elapsed / turns.max(1) as u32
    );
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
