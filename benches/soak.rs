//! The soak for longer (`cargo bench --bench soak`): chaosgate's worker behind its own
//! fault proxy, cycling latency, bandwidth limits, connection resets, a blackhole, broker
//! and worker SIGKILLs under a steady stream of gated flag changes over 50 flags (see
//! `tests/support/soak.rs`). Prints the events, the faults injected, the longest gap,
//! the worst answer time and every broken invariant; exits with 1 when one broke.
//!
//! `SOAK_SECS` (default 1800) sets how long the faults cycle; `SOAK_EVENTS_PER_SECOND`
//! (default 4, twice the test's) and `SOAK_MAX_IN_FLIGHT` (default 8) the load.

#[path = "../tests/support/kafka.rs"]
mod kafka;
#[path = "../tests/support/proxied_kafka.rs"]
mod proxied_kafka;
#[path = "../tests/support/soak.rs"]
mod soak;
#[path = "../tests/support/worker.rs"]
mod worker;

use std::time::{Duration, Instant};

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let plan = soak::Plan {
        duration: Duration::from_secs(setting("SOAK_SECS", 1800)),
        flags: 50,
        events_per_second: setting("SOAK_EVENTS_PER_SECOND", 4.0),
        max_in_flight: setting("SOAK_MAX_IN_FLIGHT", 8),
    };
    println!("soak: {plan:?}");
    let started = Instant::now();
    let report = soak::run(plan).await;
    println!("{}", report.summary());
    println!("took {:.0} s in all", started.elapsed().as_secs_f64());
    if !report.violations.is_empty() {
        println!("{}", report.diagnostics);
        std::process::exit(1);
    }
}
