//! Heartbeats: a thread or task that must keep going (the worker's consumer loop, its
//! committer) ticks its [`Heartbeat`]; `/healthz` answers 503 when one has not ticked for
//! `worker.liveness_timeout`, so Kubernetes restarts a wedged worker.
//!
//! The rule that keeps it honest: tick where the work loops (once per pass), never from a
//! timer of its own, so a stuck loop stops the ticks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One loop's last sign of life. Cheap to clone; all clones share one tick.
#[derive(Debug, Clone)]
pub(crate) struct Heartbeat {
    name: &'static str,
    state: Arc<Beat>,
}

#[derive(Debug)]
struct Beat {
    /// A fixed point in this process's monotonic clock.
    origin: Instant,
    /// Milliseconds from `origin` to the last tick.
    last: AtomicU64,
}

impl Heartbeat {
    /// A heartbeat named `name` (as `/healthz` and `/readyz` show it), ticked now.
    pub(crate) fn new(name: &'static str) -> Self {
        Heartbeat {
            name,
            state: Arc::new(Beat {
                origin: Instant::now(),
                last: AtomicU64::new(0),
            }),
        }
    }

    /// The name given at creation.
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// Records a sign of life now.
    pub(crate) fn tick(&self) {
        let now = u64::try_from(self.state.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.state.last.store(now, Ordering::Relaxed);
    }

    /// Time since the last tick.
    pub(crate) fn age(&self) -> Duration {
        let last = Duration::from_millis(self.state.last.load(Ordering::Relaxed));
        self.state.origin.elapsed().saturating_sub(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_grows_until_the_next_tick() {
        let beat = Heartbeat::new("loop");
        std::thread::sleep(Duration::from_millis(30));
        assert!(beat.age() >= Duration::from_millis(30));
        beat.clone().tick();
        assert!(beat.age() < Duration::from_millis(30));
        assert_eq!(beat.name(), "loop");
    }
}
