//! The guard: a pipeline's `guard` probes checked after its `enable`, until a probe fails
//! or the guard's deadline passes.
//!
//! (Skeleton: the watch is being written.)

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::catalog::guard::Guard;
use crate::chaos::run::RunContext;
use crate::contract::ProbeResult;

/// How a watch ended.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardWatch {
    /// Why it fired, in one line (`guard checkout-errors failed 4 min after enable:
    /// error rate 0.07 > 0.02`); `None` when it expired or was stopped.
    pub fired: Option<String>,
    /// `stop` ended it before a failure or the deadline.
    pub stopped: bool,
    /// One entry per guard probe.
    pub probes: Vec<ProbeResult>,
    /// When it ended.
    pub ended_at: DateTime<Utc>,
}

/// Checks `guard`'s probes from now until `deadline` (the guard began at `started_at`);
/// returns at the first failure, at the deadline, or when `stop` fires.
pub async fn watch(
    guard: &Guard,
    started_at: DateTime<Utc>,
    deadline: DateTime<Utc>,
    context: &RunContext,
    stop: &CancellationToken,
) -> GuardWatch {
    let _ = (guard, started_at, context);
    let wait = (deadline - Utc::now()).to_std().unwrap_or_default();
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        () = stop.cancelled() => {}
    }
    GuardWatch {
        fired: None,
        stopped: stop.is_cancelled(),
        probes: Vec::new(),
        ended_at: Utc::now(),
    }
}
