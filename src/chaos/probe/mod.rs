//! Probes: checks that watch the target while faults are active.
//!
//! A probe is judged by [`check`]: one check makes up to `attempts` attempts, each bounded
//! by `timeout`, waiting `interval` after a failed one. When a probe runs (its mode,
//! `initial_delay`, `polling_interval`, `stop_on_failure`) is the runner's business.

use std::time::Duration;

use crate::catalog::experiment::Probe;

/// The outcome of one check of a probe.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// Whether the last attempt met the probe's criteria.
    pub passed: bool,
    /// Attempts made (1 when the first passed).
    pub attempts: u32,
    /// Why the last failed attempt failed (a connection error is a failure, not an error).
    pub error: Option<String>,
    /// Time spent, all attempts included.
    pub took: Duration,
}

/// Checks `probe` once, retrying failed attempts as its run properties say.
pub async fn check(probe: &Probe) -> Check {
    Check {
        passed: false,
        attempts: 0,
        error: Some(format!(
            "probe '{}': probes are not implemented yet",
            probe.name
        )),
        took: Duration::ZERO,
    }
}
