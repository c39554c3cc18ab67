//! `observe_overhead`: the one-tool `turn` (scripted model, zero latency) under four telemetry
//! settings, in one group:
//!
//! - `no_hook`: no observer anywhere (the baseline);
//! - `off`: an observer installed with everything switched off (`enabled()` is false);
//! - `json_logs`: a JSON log line per run, written to a sink;
//! - `traces_metrics`: OpenTelemetry spans (four per turn, batched to an exporter that counts
//!   and drops them) and Prometheus metrics: the "full tracing and metrics";
//! - `full`: all of it, the JSON log line too.
//!
//! Spans, log lines and metric observations are made on the telemetry thread; after the runs
//! the bench flushes it and checks that every turn's four spans reached the exporter and
//! nothing was dropped, so the figures include no telemetry that was skipped.
//!
//! No instrumented allocator here: its shared counters, bumped by every allocation on both
//! threads, cost the telemetry variants more than the telemetry does. Allocations are counted
//! by `observe_allocations`.
//!
//! Goals: `off` within 2% of `no_hook`; full tracing and metrics at most 25% above it
//! (`traces_metrics`; `full` adds the log line, which `json_logs` measures alone).
//!
//! After criterion's figures the bench prints a **paired** one per variant, as `dispatch` and
//! `session_turn` do: criterion times each variant seconds apart, and on a shared VM the
//! machine drifts between them by more than the differences measured. Here 31 rounds each
//! time a block of 5,000 turns of every variant back to back (the order rotating from round to
//! round, each variant's telemetry thread settled before the next block); the figure is the
//! median of the per-round ratios to `no_hook`, with their range.
//! Run: `cargo bench --bench observe_overhead` (`AGENTKIT_PAIRED_ONLY=1` for the paired
//! figures alone).

mod observe;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::Criterion;
use observe::{Counted, Variants};

/// Criterion's figures; returns the turns run per variant.
fn overhead(
    c: &mut Criterion,
    runtime: &tokio::runtime::Runtime,
    variants: &Variants,
) -> Vec<(&'static str, u64)> {
    let mut runs = Vec::new();
    let mut group = c.benchmark_group("observe_overhead");
    for (name, agent) in &variants.agents {
        let counted = Counted {
            agent,
            runs: AtomicU64::new(0),
        };
        group.bench_function(*name, |b| b.to_async(runtime).iter(|| counted.turn()));
        runs.push((*name, counted.runs.load(Ordering::Relaxed)));
    }
    group.finish();
    runs
}

/// The paired figures: blocks of every variant back to back, round after round. Returns the
/// turns run per variant.
fn paired(
    runtime: &tokio::runtime::Runtime,
    variants: &Variants,
    quick: bool,
) -> Vec<(&'static str, u64)> {
    let (rounds, turns) = if quick { (1, 10) } else { (31, 5_000) };
    let names: Vec<&str> = variants.agents.iter().map(|(name, _)| *name).collect();
    // Per variant, the time of its block in each round.
    let mut times = vec![Vec::with_capacity(rounds); names.len()];
    for round in 0..rounds {
        for step in 0..names.len() {
            let index = (round + step) % names.len();
            let agent = variants.agent(names[index]);
            let started = std::time::Instant::now();
            run_turns(runtime, agent, turns);
            times[index].push(started.elapsed().as_secs_f64());
            variants.settle(names[index]);
        }
    }
    let base = &times[0];
    for (name, times) in names.iter().zip(&times).skip(1) {
        let mut ratios: Vec<f64> = times.iter().zip(base).map(|(t, b)| t / b).collect();
        ratios.sort_by(f64::total_cmp);
        let mut per_turn: Vec<f64> = times.iter().map(|t| t * 1e6 / turns as f64).collect();
        per_turn.sort_by(f64::total_cmp);
        println!(
            "observe_overhead/{name:<15} paired: {:.3}x no_hook (median of {rounds} rounds; \
             {:.3}-{:.3}x), {:.2} us a turn",
            ratios[rounds / 2],
            ratios[0],
            ratios[rounds - 1],
            per_turn[rounds / 2],
        );
    }
    names
        .iter()
        .map(|name| (*name, (rounds * turns) as u64))
        .collect()
}

/// `AGENTKIT_TURNS=N AGENTKIT_VARIANT=name`: runs N turns of one variant, prints the time
/// per turn and exits; for counting instructions under callgrind (see
/// `benches/instructions.sh`), which, unlike timings on a shared VM, repeat exactly, and for
/// timing variants in alternation.
fn turns_only(turns: usize, variant: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // `AGENTKIT_ONE_BATCH` (set by `benches/instructions.sh`): one batch, exported by the
    // flush at the end. Under callgrind the threads take turns in long slices, and an export
    // thread that waits for its turn would see batches dropped. The spans are built and
    // exported all the same.
    let one_batch = std::env::var_os("AGENTKIT_ONE_BATCH").is_some();
    let variants =
        Variants::with_span_batches(one_batch.then_some((usize::MAX, Duration::from_secs(3600))));
    let agent = variants.agent(variant);
    let started = std::time::Instant::now();
    run_turns(&runtime, agent, turns);
    let elapsed = started.elapsed();
    eprintln!(
        "observe_overhead/{variant}: {turns} turns in {elapsed:?}, {:?} per turn (flushed after)",
        elapsed / turns.max(1) as u32
    );
    variants.check(|name| if name == variant { turns as u64 } else { 0 });
}

/// The measured part of `turns_only`: `benches/instructions.sh` has callgrind start a new
/// count when this is entered, so start-up (the clock's calibration takes a varying number of
/// instructions) stays out of the figures.
#[inline(never)]
fn run_turns(runtime: &tokio::runtime::Runtime, agent: &agentkit::Agent, turns: usize) {
    runtime.block_on(async {
        for _ in 0..turns {
            observe::turn(agent).await;
        }
    });
}

fn main() {
    if let Ok(turns) = std::env::var("AGENTKIT_TURNS") {
        let variant = std::env::var("AGENTKIT_VARIANT").unwrap_or_else(|_| "full".into());
        turns_only(turns.parse().expect("AGENTKIT_TURNS is a number"), &variant);
        return;
    }
    let quick = std::env::args().any(|a| a == "--test");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // One set of variants for the process: it installs the process-wide subscriber.
    let variants = Variants::new();
    let mut runs = Vec::new();
    if std::env::var_os("AGENTKIT_PAIRED_ONLY").is_none() {
        let mut criterion = Criterion::default().configure_from_args();
        runs.extend(overhead(&mut criterion, &runtime, &variants));
        criterion.final_summary();
    }
    runs.extend(paired(&runtime, &variants, quick));
    variants.check(|variant| {
        runs.iter()
            .filter(|(name, _)| *name == variant)
            .map(|(_, runs)| runs)
            .sum()
    });
}
