//! What a run gives its caller: the [`ExperimentResult`] at the end, and [`Progress`]
//! events while it goes on (the fault timeline and every probe check).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::experiment::ProbeMode;
use crate::contract::run_record::{FaultResult, PreviousAttemptRevert, ProbeResult, RunStatus};

/// The outcome of one experiment, in the shape the experiment-run record needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentResult {
    /// Experiment id.
    pub experiment_id: String,
    /// Experiment name (the id when it has none).
    pub experiment_name: String,
    /// The engine's verdict: `passed`, `failed`, `aborted` or `error` (see the module doc).
    pub verdict: RunStatus,
    /// Resilience score 0-100, for `passed` and `failed` runs.
    pub resilience_score: Option<f64>,
    /// One entry per fault, in file order.
    pub faults: Vec<FaultResult>,
    /// One entry per probe, in file order.
    pub probes: Vec<ProbeResult>,
    /// Probes whose verdict is `passed`.
    pub probes_passed: u32,
    /// Probes whose verdict is `failed`.
    pub probes_failed: u32,
    /// When the run was asked for (before waiting for its targets).
    pub(crate) started_at: DateTime<Utc>,
    /// When the last revert was done.
    pub(crate) ended_at: DateTime<Utc>,
    /// From `started_at` to `ended_at`, in seconds.
    pub duration_seconds: f64,
    /// Time spent waiting for another experiment on the same target, in seconds.
    pub waited_for_target_seconds: f64,
    /// Why the run ended as it did, in one line.
    pub summary: String,
    /// Short human-readable log, one `HH:MM:SS text` line per event (UTC).
    pub log: Vec<String>,
    /// Why the experiment could not run at all, one problem per entry (`file:line:
    /// field: message` as `chaosgate validate` gives them); empty for a run. Left out of
    /// the JSON when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// What was reverted of an earlier, interrupted attempt's faults before anything was
    /// injected ([`super::RunContext::previous_attempt`]); left out of the JSON when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_attempt_reverts: Vec<PreviousAttemptRevert>,
}

impl ExperimentResult {
    /// The result of an experiment that was refused before it ran (nothing injected,
    /// nothing checked): verdict `error`, `problems` in its summary and log, one per line.
    pub fn refused(experiment_id: &str, problems: &[String]) -> ExperimentResult {
        let now = Utc::now();
        let clock = super::state::clock(now);
        let summary = format!(
            "error: invalid experiment: {} problem(s): {}",
            problems.len(),
            problems.join("; ")
        );
        let mut log: Vec<String> = problems.iter().map(|p| format!("{clock} {p}")).collect();
        log.push(format!("{clock} end: {summary}"));
        ExperimentResult {
            experiment_id: experiment_id.to_string(),
            experiment_name: experiment_id.to_string(),
            verdict: RunStatus::Error,
            resilience_score: None,
            faults: Vec::new(),
            probes: Vec::new(),
            probes_passed: 0,
            probes_failed: 0,
            started_at: now,
            ended_at: now,
            duration_seconds: 0.0,
            waited_for_target_seconds: 0.0,
            summary,
            log,
            problems: problems.to_vec(),
            previous_attempt_reverts: Vec::new(),
        }
    }
}

/// One live progress event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Progress {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened.
    pub event: ProgressEvent,
}

/// What a progress event reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProgressEvent {
    /// Another experiment holds one of these targets; this one waits.
    WaitingForTargets {
        /// The target keys.
        targets: Vec<String>,
    },
    /// The targets are held; the experiment starts.
    Started {
        /// Experiment id.
        experiment: String,
    },
    /// A fault is active until `until`.
    FaultInjected {
        /// Fault name.
        fault: String,
        /// What it does.
        description: String,
        /// When it is due to be reverted.
        until: DateTime<Utc>,
    },
    /// A fault could not be injected.
    FaultFailed {
        /// Fault name.
        fault: String,
        /// Why.
        error: String,
    },
    /// A fault was reverted (or reverting it failed).
    FaultReverted {
        /// Fault name.
        fault: String,
        /// Why the revert failed, if it did.
        error: Option<String>,
    },
    /// A probe was checked once.
    ProbeChecked {
        /// Probe name.
        probe: String,
        /// Its mode.
        mode: ProbeMode,
        /// Whether the check passed.
        passed: bool,
        /// Attempts the check made.
        attempts: u32,
        /// How long the check took, in milliseconds (so `at` minus this is its start).
        took_ms: f64,
        /// Why it failed.
        error: Option<String>,
    },
    /// The run is ending early.
    Stopping {
        /// Why.
        reason: String,
    },
}
