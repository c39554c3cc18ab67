//! `observe_allocations`: heap allocations of the one-tool turn under the four telemetry
//! settings of `observe_overhead`, counted with `stats_alloc` (exact, unlike timings):
//!
//! - on the request path: one turn, counted before the telemetry thread wakes for it;
//! - in all: 1,000 turns and a flush of the telemetry thread, per turn.
//!
//! Run: `cargo bench --bench observe_allocations` (no timing; `-- --test` runs it too).

mod observe;

use observe::Variants;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let variants = Variants::new();
    let turns = if std::env::args().any(|a| a == "--test") {
        10
    } else {
        1000
    };
    let mut runs = Vec::new();
    for (name, agent) in &variants.agents {
        runtime.block_on(observe::turn(agent));
        variants.flush();
        let one = Region::new(GLOBAL);
        runtime.block_on(observe::turn(agent));
        let one = one.change();
        let all = Region::new(GLOBAL);
        runtime.block_on(async {
            for _ in 0..turns {
                observe::turn(agent).await;
            }
        });
        variants.flush();
        let all = all.change();
        runs.push((*name, turns as u64 + 2));
        println!(
            "observe_allocations/{name}: request path {} allocations ({} bytes) per turn; \
             in all {} per turn",
            one.allocations,
            one.bytes_allocated,
            all.allocations / turns
        );
    }
    variants.check(|variant| {
        runs.iter()
            .find(|(name, _)| *name == variant)
            .map_or(0, |(_, runs)| *runs)
    });
}
