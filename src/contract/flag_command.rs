//! The flag command (v1): what chaosgate tells the flag service to do after gating.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::run_record::RunStatus;

/// CloudEvents `type` of a flag command.
pub const FLAG_COMMAND_TYPE: &str = "dev.chaosgate.flag.command.v1";

/// The one command every valid flag-change yields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "FlagCommand",
    description = "A flag command (v1), the data of a CloudEvent on the flag-commands topic.",
    example = flag_command_example()
)]
pub struct FlagCommand {
    /// Deterministic id (UUIDv5 of the triggering event id).
    pub command_id: String,
    /// What the flag service should do.
    pub command: CommandKind,
    /// Flag service project.
    pub project: String,
    /// Environment.
    pub environment: String,
    /// Flag key.
    pub flag: String,
    /// For `revert`: the value to put back (the change's `from`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    /// Why, in one line a person can read.
    pub reason: String,
    /// Machine-readable reason.
    pub reason_code: ReasonCode,
    /// The pipeline that decided the command: the one that ran (`passed`, `failed`,
    /// `aborted`), or the one whose routes do not gate this kind of change
    /// (`not_gated`). Absent for `requested` (a `disable` is passed on before any
    /// pipeline runs) and `no_pipeline`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_id: Option<String>,
    /// This execution of the pipeline, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_execution_id: Option<String>,
    /// The flag-change `event_id` this command answers.
    pub causation_event_id: String,
    /// One entry per chaos step that ran.
    #[serde(default)]
    pub steps: Vec<StepSummary>,
    /// The pipeline was a dry run: the command is advice, not an order.
    pub dry_run: bool,
    /// When the command was issued.
    pub issued_at: DateTime<Utc>,
}

/// What the flag service should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// Apply the change (turn the flag on, or apply the update).
    Enable,
    /// Turn the flag off.
    Disable,
    /// Put the flag back to `value`.
    Revert,
}

impl CommandKind {
    /// The command's name as written on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            CommandKind::Enable => "enable",
            CommandKind::Disable => "disable",
            CommandKind::Revert => "revert",
        }
    }
}

/// Why a command was issued, for machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// The pipeline passed.
    Passed,
    /// The pipeline failed.
    Failed,
    /// A run was aborted (kill switch, shutdown).
    Aborted,
    /// A `disable` request, passed on at once.
    Requested,
    /// No pipeline matches the flag; answered at once with what the operator chose for
    /// unrouted flags (`worker.unrouted`): `enable` by default, or `disable`.
    NoPipeline,
    /// The pipeline does not gate this change kind; passed on at once.
    NotGated,
    /// The pipeline's guard saw a probe fail after the `enable` (a guard's command, not
    /// the answer to a flag-change: `causation_event_id` is the change the `enable`
    /// answered).
    GuardFired,
}

/// One chaos step's outcome, in the command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepSummary {
    /// Stage id.
    pub stage_id: String,
    /// Step id.
    pub step_id: String,
    /// Run id of the step's last attempt.
    pub run_id: String,
    /// Final status of the run.
    pub status: RunStatus,
    /// Score obtained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resilience_score: Option<f64>,
    /// Score required.
    pub expected_resilience_score: f64,
    /// One line: why the step passed or failed.
    pub summary: String,
}

/// The example carried by the schema and used in tests and docs.
pub fn flag_command_example() -> FlagCommand {
    FlagCommand {
        command_id: "6d2b3c58-2f1e-5a3b-9c55-0f7d8e9a1b2c".into(),
        command: CommandKind::Disable,
        project: "shop".into(),
        environment: "production".into(),
        flag: "checkout-v2".into(),
        value: None,
        reason: "stage canary / step payments-latency: score 42.86 < expected 80".into(),
        reason_code: ReasonCode::Failed,
        pipeline_id: Some("checkout-rollout".into()),
        pipeline_execution_id: Some("3f0c1a4e-8b7d-5e2f-a1c3-5d9e7f6b4a20".into()),
        causation_event_id: "0b6f3f0e-4d5c-4c0b-9a51-8d7a6f1f2c11".into(),
        steps: vec![StepSummary {
            stage_id: "canary".into(),
            step_id: "payments-latency".into(),
            run_id: "9a8b7c6d-5e4f-5a3b-8c2d-1e0f9a8b7c6d".into(),
            status: RunStatus::Failed,
            resilience_score: Some(42.86),
            expected_resilience_score: 80.0,
            summary: "score 42.86 < expected 80".into(),
        }],
        dry_run: false,
        issued_at: DateTime::parse_from_rfc3339("2026-11-27T09:31:02Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default(),
    }
}
