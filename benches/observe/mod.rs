//! The telemetry variants shared by `observe_overhead` (time) and `observe_allocations`
//! (heap allocations): the one-tool turn with no observer, with one switched off, with JSON
//! logs, with tracing and metrics, and with everything (tracing, metrics and JSON logs).
// Each bench uses part of it.
#![allow(dead_code, unreachable_pub)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use agentkit::model::ScriptedModel;
use agentkit::observe::ObserveBuilder;
use agentkit::observer::Observer;
use agentkit::{Agent, Executor, Invocation};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use tracing_subscriber::fmt::writer::BoxMakeWriter;

/// Counts spans and drops them.
#[derive(Debug, Clone, Default)]
pub struct Count(Arc<AtomicU64>);

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

/// The variants, with what keeps their telemetry alive.
pub struct Variants {
    pub agents: Vec<(&'static str, Agent)>,
    /// Each observed variant's telemetry, by name.
    telemetry: Vec<(&'static str, agentkit::observe::Telemetry)>,
    /// The span counters of the variants that trace.
    spans: Vec<(&'static str, Count)>,
}

impl Variants {
    /// The variants, and JSON lines to a sink as the process-wide subscriber (as
    /// `agentkit_observe::init` installs it in a service). Call once per process.
    pub fn new() -> Self {
        Self::with_span_batches(None)
    }

    /// [`new`](Self::new), with the traced variants' spans exported in batches of `batches`
    /// (size, delay) instead of the default 512 or 5 s.
    pub fn with_span_batches(batches: Option<(usize, std::time::Duration)>) -> Self {
        let subscriber = tracing_subscriber::fmt()
            .event_format(agentkit::observe::JsonLines)
            .with_writer(BoxMakeWriter::new(std::io::sink))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the bench's only subscriber");
        // Room for 65,536 records and as many spans waiting for export: under callgrind, and
        // on this shared VM when a thread is descheduled for a few milliseconds, the default
        // 8,192 can fill; a full queue drops records, which `check` refuses.
        let quiet = || {
            ObserveBuilder::from_env()
                .unwrap()
                .global(false)
                .queue_size(1 << 16)
        };
        let traced = |logs: bool, spans: &Count| {
            let builder = quiet().logs(logs).span_exporter_batched(spans.clone());
            match batches {
                Some((size, delay)) => builder.span_batches(size, delay),
                None => builder,
            }
            .init()
            .unwrap()
        };
        let (traces_spans, full_spans) = (Count::default(), Count::default());
        let off = quiet().logs(false).metrics(false).init().unwrap();
        let logs = quiet().metrics(false).init().unwrap();
        let traces = traced(false, &traces_spans);
        let full = traced(true, &full_spans);
        Variants {
            agents: vec![
                ("no_hook", agent(None)),
                ("off", agent(Some(off.observer()))),
                ("json_logs", agent(Some(logs.observer()))),
                ("traces_metrics", agent(Some(traces.observer()))),
                ("full", agent(Some(full.observer()))),
            ],
            telemetry: vec![
                ("off", off),
                ("json_logs", logs),
                ("traces_metrics", traces),
                ("full", full),
            ],
            spans: vec![("traces_metrics", traces_spans), ("full", full_spans)],
        }
    }

    /// The agent of `variant`.
    pub fn agent(&self, variant: &str) -> &Agent {
        &self
            .agents
            .iter()
            .find(|(name, _)| *name == variant)
            .expect("AGENTKIT_VARIANT names a variant")
            .1
    }

    /// Waits until `variant`'s telemetry thread has taken in and exported everything so far
    /// (nothing for `no_hook`), so that the next variant timed does not share the machine
    /// with this one's backlog.
    pub fn settle(&self, variant: &str) {
        for (_, telemetry) in self.telemetry.iter().filter(|(name, _)| *name == variant) {
            telemetry.flush();
        }
    }

    /// Waits until every variant's telemetry thread has taken in and exported everything.
    pub fn flush(&self) {
        for (_, telemetry) in &self.telemetry {
            telemetry.flush();
        }
    }

    /// Flushes the telemetry threads; panics unless every traced variant exported four spans
    /// for each of its `turns(variant)` turns and no record was dropped.
    pub fn check(&self, turns: impl Fn(&str) -> u64) {
        for (variant, telemetry) in &self.telemetry {
            telemetry.flush();
            assert_eq!(
                telemetry.dropped(),
                0,
                "{variant}: telemetry records were dropped"
            );
        }
        for (variant, spans) in &self.spans {
            let (turns, spans) = (turns(variant), spans.0.load(Ordering::Relaxed));
            assert_eq!(
                spans,
                4 * turns,
                "every {variant} turn's four spans were exported"
            );
            eprintln!("observe: {turns} {variant} turns, {spans} spans exported, none dropped");
        }
    }
}

/// An agent that counts its runs.
pub struct Counted<'a> {
    pub agent: &'a Agent,
    pub runs: AtomicU64,
}

impl Counted<'_> {
    pub async fn turn(&self) {
        self.runs.fetch_add(1, Ordering::Relaxed);
        turn(self.agent).await;
    }
}

/// One turn: "What is 17 + 25?", answered with the `add` tool.
pub async fn turn(agent: &Agent) {
    agent
        .execute(Invocation::text(black_box("What is 17 + 25?")))
        .await
        .unwrap();
}
