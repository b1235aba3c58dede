//! The experiment-run record (v1): one per run of a chaos step, published on
//! `chaos-experiment-runs` when the run starts (`running`) and when it ends.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::flag_change::ChangeKind;

/// CloudEvents `type` of a run record.
pub const RUN_RECORD_TYPE: &str = "dev.chaosgate.experiment.run.v1";

/// Everything an auditor or the chaos experiments view needs about one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "ExperimentRun",
    description = "An experiment-run record (v1), the data of a CloudEvent on the chaos-experiment-runs topic.",
    example = run_record_example()
)]
pub struct RunRecord {
    /// Deterministic id: UUIDv5 of the trigger event id, step path and attempt.
    pub run_id: String,
    /// 1 for the first try; a run cut off by a crash or rebalance runs again as the next.
    pub attempt: u32,
    /// Where the run is.
    pub status: RunStatus,
    /// Pipeline the step belongs to.
    pub pipeline_id: String,
    /// This execution of the pipeline (UUIDv5 of the trigger event id).
    pub pipeline_execution_id: String,
    /// The stage.
    pub stage: StageRef,
    /// The step.
    pub step: StepRef,
    /// The experiment run.
    pub experiment: ExperimentRef,
    /// The flag whose change triggered the run.
    pub flag: FlagRef,
    /// `event_id` of the flag-change.
    pub trigger_event_id: String,
    /// Who made the flag-change (its `actor`), when it said (added in v1; older records
    /// lack it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_actor: Option<String>,
    /// The flag-change's `change.kind` (added in v1; older records lack it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_change_kind: Option<ChangeKind>,
    /// W3C trace id (32 lowercase hex digits) of the trace the run belongs to, as in the
    /// record's `traceparent` header (added in v1; absent without tracing and in older
    /// records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) trace_id: Option<String>,
    /// Score obtained, 0-100 (absent while running or on error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resilience_score: Option<f64>,
    /// Score required.
    pub expected_resilience_score: f64,
    /// The step's assertion, if any, and its result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) assertion: Option<AssertionResult>,
    /// One entry per fault.
    #[serde(default)]
    pub faults: Vec<FaultResult>,
    /// One entry per probe.
    #[serde(default)]
    pub probes: Vec<ProbeResult>,
    /// Probes that passed.
    pub(crate) probes_passed: u32,
    /// Probes that failed.
    pub(crate) probes_failed: u32,
    /// When the run started.
    pub started_at: DateTime<Utc>,
    /// When the run ended (absent while running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    /// Run time in seconds (absent while running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    /// How long the run waited for another experiment on the same target, in seconds.
    #[serde(default)]
    pub waited_for_target_seconds: f64,
    /// Why the run ended as it did, in one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// A short human-readable log of the run.
    #[serde(default)]
    pub(crate) log: Vec<String>,
    /// What this run reverted, before injecting anything, of what an earlier attempt of
    /// the same event (cut off by a crash, a shutdown or a lost partition) may have left
    /// active: one entry per fault of the experiment (added in v1; absent on a first
    /// attempt and in older records).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_attempt_reverts: Vec<PreviousAttemptRevert>,
}

/// One fault an earlier, interrupted attempt of the run may have left active, and what
/// this attempt did about it before it injected anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviousAttemptRevert {
    /// Fault name.
    pub fault: String,
    /// `network`, `http`, `toxiproxy`, `process` or `command`.
    pub kind: String,
    /// The attempt whose leftovers these are (this run's attempt minus one).
    pub attempt: u32,
    /// Whether the fault is known gone now (reverted, or nothing of it was left).
    pub reverted: bool,
    /// What was done, e.g. `revert command exit 0`, `toxics a, b deleted or absent`,
    /// `resumed pid 4242`, `no selected process stopped`, `left to its proxy lease`.
    pub outcome: String,
    /// Why the revert failed (then nothing was injected: the run ends `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Status of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Started, not finished.
    Running,
    /// Score and assertion met.
    Passed,
    /// Score or assertion not met.
    Failed,
    /// Stopped by the kill switch, a timeout, shutdown or a rebalance.
    Aborted,
    /// The experiment could not run (a fault could not be injected, ...).
    Error,
}

impl RunStatus {
    /// The status as written on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Passed => "passed",
            RunStatus::Failed => "failed",
            RunStatus::Aborted => "aborted",
            RunStatus::Error => "error",
        }
    }
}

/// A stage, as the record names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StageRef {
    /// Stage id.
    pub id: String,
    /// Stage name.
    pub(crate) name: String,
    /// `feature_flag`, `deploy` or `custom`.
    #[serde(rename = "type")]
    pub(crate) stage_type: String,
}

/// A step, as the record names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepRef {
    /// Step id.
    pub id: String,
    /// Step name.
    pub name: String,
}

/// An experiment, as the record names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExperimentRef {
    /// Experiment id.
    pub id: String,
    /// Experiment name.
    pub(crate) name: String,
}

/// A flag, as the record names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlagRef {
    /// Project.
    pub project: String,
    /// Environment.
    pub environment: String,
    /// Flag key.
    pub key: String,
}

/// A step's assertion and what it evaluated to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AssertionResult {
    /// The CEL expression.
    pub(crate) expression: String,
    /// Its value, when it evaluated to a boolean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) result: Option<bool>,
    /// Why it could not be evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

/// Verdict of one fault or probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Held up.
    Passed,
    /// Did not hold up.
    Failed,
    /// Cut short.
    Aborted,
    /// Could not be judged.
    Error,
    /// Never ran.
    Skipped,
}

/// One fault's part in the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultResult {
    /// Fault name.
    pub name: String,
    /// `network`, `http`, `toxiproxy`, `process` or `command`.
    pub kind: String,
    /// Weight in the score.
    pub weight: u8,
    /// Verdict.
    pub verdict: Verdict,
    /// Share of this fault's probes that passed, 0-100.
    pub probe_success_percentage: f64,
    /// When it was injected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it was reverted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    /// Whether it was reverted (false only when it was never injected or revert failed).
    pub reverted: bool,
    /// Why injecting or reverting failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One probe's part in the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeResult {
    /// Probe name.
    pub name: String,
    /// `http`, `tcp`, `command` or `prometheus`.
    #[serde(rename = "type")]
    pub probe_type: String,
    /// `sot`, `eot`, `edge`, `continuous` or `on_chaos`.
    pub mode: String,
    /// Verdict.
    pub verdict: Verdict,
    /// Attempts made.
    pub attempts: u32,
    /// The last failure, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When its first check started (added in v1; absent when it never ran and in older
    /// records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_check_at: Option<DateTime<Utc>>,
    /// When its last check ended (added in v1; absent when it never ran and in older
    /// records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_at: Option<DateTime<Utc>>,
}

/// The example carried by the schema and used in tests and docs.
pub fn run_record_example() -> RunRecord {
    let at = |s: &str| {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    };
    RunRecord {
        run_id: "9a8b7c6d-5e4f-5a3b-8c2d-1e0f9a8b7c6d".into(),
        attempt: 1,
        status: RunStatus::Failed,
        pipeline_id: "checkout-rollout".into(),
        pipeline_execution_id: "3f0c1a4e-8b7d-5e2f-a1c3-5d9e7f6b4a20".into(),
        stage: StageRef {
            id: "canary".into(),
            name: "Canary".into(),
            stage_type: "feature_flag".into(),
        },
        step: StepRef {
            id: "payments-latency".into(),
            name: "Payments 200 ms slower".into(),
        },
        experiment: ExperimentRef {
            id: "payments-latency".into(),
            name: "Payments latency".into(),
        },
        flag: FlagRef {
            project: "shop".into(),
            environment: "production".into(),
            key: "checkout-v2".into(),
        },
        trigger_event_id: "0b6f3f0e-4d5c-4c0b-9a51-8d7a6f1f2c11".into(),
        trigger_actor: Some("alice@example.com".into()),
        trigger_change_kind: Some(ChangeKind::Enable),
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        resilience_score: Some(42.86),
        expected_resilience_score: 80.0,
        assertion: Some(AssertionResult {
            expression: "probes_failed == 0".into(),
            result: Some(false),
            error: None,
        }),
        faults: vec![FaultResult {
            name: "payments-latency".into(),
            kind: "network".into(),
            weight: 8,
            verdict: Verdict::Failed,
            probe_success_percentage: 50.0,
            started_at: Some(at("2026-11-27T09:30:01Z")),
            ended_at: Some(at("2026-11-27T09:30:31Z")),
            reverted: true,
            error: None,
        }],
        probes: vec![ProbeResult {
            name: "checkout-answers-fast".into(),
            probe_type: "http".into(),
            mode: "continuous".into(),
            verdict: Verdict::Failed,
            attempts: 15,
            last_error: Some("response took 412 ms, more than 300 ms".into()),
            first_check_at: Some(at("2026-11-27T09:30:01Z")),
            last_check_at: Some(at("2026-11-27T09:30:30Z")),
        }],
        probes_passed: 1,
        probes_failed: 1,
        started_at: at("2026-11-27T09:30:00Z"),
        ended_at: Some(at("2026-11-27T09:30:32Z")),
        duration_seconds: Some(32.0),
        waited_for_target_seconds: 0.0,
        summary: Some("score 42.86 < expected 80".into()),
        log: vec![
            "09:30:01 inject payments-latency (network latency 200ms)".into(),
            "09:30:31 revert payments-latency".into(),
        ],
        previous_attempt_reverts: Vec::new(),
    }
}
