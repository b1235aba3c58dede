//! The guard record (v1): a pipeline's guard watching a flag after its `enable`,
//! published on `chaos-experiment-runs` (keyed by `pipeline_execution_id`) when the guard
//! starts (`watching`) and when it ends.
//!
//! A guard runs the pipeline's `guard` probes for its duration once the `enable` is
//! committed. It ends in one of four ways, each recorded once per `guard_id`:
//! - `fired`: a probe failed by its criteria and `attempts`; the guard issued the
//!   pipeline's failure command (`disable` or `revert`), named by `command_id`, in the
//!   same Kafka transaction as this record;
//! - `expired`: the duration passed with every probe passing; nothing is issued;
//! - `superseded`: a newer change of the flag arrived; nothing is issued;
//! - `aborted`: the kill switch, or a pipeline no longer in the catalog, ended it;
//!   nothing is issued.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::flag_command::CommandKind;
use super::run_record::{FlagRef, ProbeResult, Verdict};

/// CloudEvents `type` of a guard record.
pub const GUARD_RECORD_TYPE: &str = "dev.chaosgate.guard.run.v1";

/// One guard of one `enable`: its probes, its times, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "GuardRun",
    description = "A guard record (v1), the data of a CloudEvent on the chaos-experiment-runs topic: the probes a pipeline keeps checking after its enable.",
    example = guard_record_example()
)]
pub struct GuardRecord {
    /// Deterministic id: UUIDv5 of the `enable` command's id and `guard`.
    pub guard_id: String,
    /// Where the guard is.
    pub status: GuardStatus,
    /// The pipeline whose guard this is.
    pub pipeline_id: String,
    /// The execution that issued the `enable`.
    pub pipeline_execution_id: String,
    /// The flag watched.
    pub flag: FlagRef,
    /// `event_id` of the flag-change the `enable` answered.
    pub trigger_event_id: String,
    /// `command_id` of that `enable`.
    pub enable_command_id: String,
    /// What the guard issues when it fires: the pipeline's `on_failure` (`disable` or
    /// `revert`).
    pub on_failure: CommandKind,
    /// When the guard started (the `enable` was issued).
    pub started_at: DateTime<Utc>,
    /// When it stops watching by itself (`started_at` plus the guard's duration).
    pub deadline: DateTime<Utc>,
    /// When it ended (absent while `watching`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    /// One entry per guard probe: its verdict so far (`passed` while it holds), attempts
    /// and last failure. Empty while `watching` from a start or a resume.
    #[serde(default)]
    pub probes: Vec<ProbeResult>,
    /// Why it ended, in one line, e.g. `guard checkout-errors failed 4 min after enable:
    /// error rate 0.07 > 0.02`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `command_id` of the command it issued (`fired` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
}

/// Where a guard is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GuardStatus {
    /// Checking its probes.
    Watching,
    /// A probe failed: the failure command was issued.
    Fired,
    /// The duration passed with every probe holding.
    Expired,
    /// A newer change of the flag ended it.
    Superseded,
    /// The kill switch, or a pipeline no longer in the catalog, ended it.
    Aborted,
}

impl GuardStatus {
    /// The status as written in records.
    pub const fn as_str(self) -> &'static str {
        match self {
            GuardStatus::Watching => "watching",
            GuardStatus::Fired => "fired",
            GuardStatus::Expired => "expired",
            GuardStatus::Superseded => "superseded",
            GuardStatus::Aborted => "aborted",
        }
    }
}

/// The example carried by the schema and used in tests and docs.
pub fn guard_record_example() -> GuardRecord {
    let at = |s: &str| {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    };
    GuardRecord {
        guard_id: "5d1c9e2a-7b3f-5a4e-8c6d-2e1f0a9b8c7d".into(),
        status: GuardStatus::Fired,
        pipeline_id: "checkout-rollout".into(),
        pipeline_execution_id: "3f0c1a4e-8b7d-5e2f-a1c3-5d9e7f6b4a20".into(),
        flag: FlagRef {
            project: "shop".into(),
            environment: "production".into(),
            key: "checkout-v2".into(),
        },
        trigger_event_id: "4b6f0c1e-9a2d-4c3b-8e7f-1a2b3c4d5e6f".into(),
        enable_command_id: "6d2b3c58-2f1e-5a3b-9c55-0f7d8e9a1b2c".into(),
        on_failure: CommandKind::Disable,
        started_at: at("2026-11-27T09:31:02Z"),
        deadline: at("2026-11-27T10:01:02Z"),
        ended_at: Some(at("2026-11-27T09:35:10Z")),
        probes: vec![ProbeResult {
            name: "checkout-errors".into(),
            probe_type: "prometheus".into(),
            mode: "continuous".into(),
            verdict: Verdict::Failed,
            attempts: 3,
            last_error: Some("error rate 0.07 > 0.02".into()),
            first_check_at: Some(at("2026-11-27T09:31:02Z")),
            last_check_at: Some(at("2026-11-27T09:35:10Z")),
        }],
        reason: Some(
            "guard checkout-errors failed 4 min after enable: error rate 0.07 > 0.02".into(),
        ),
        command_id: Some("8e2f4a6c-1b3d-5f7e-9a0c-2b4d6f8a0c1e".into()),
    }
}
