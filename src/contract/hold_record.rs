//! The hold record (v1): a pipeline execution waiting, published on
//! `chaos-experiment-runs` (keyed by `pipeline_execution_id`) when the wait begins and
//! when it ends, beside the experiment-run records of the same execution.
//!
//! Three things hold an execution, and none holds a Kafka resource while it does (the
//! worker parks the execution in its flag-state record, see `docs/architecture.md`):
//! - an `approval` step, until an approve or reject request on `chaosgate-control`
//!   names the execution, or its timeout passes;
//! - a `wait` step (a bake time), for its duration;
//! - a freeze window of the pipeline, which holds a gated change until the window ends.
//!
//! Each hold is one `hold_id`; its `waiting` record is followed by exactly one final
//! record (any status but `waiting`) with the same id.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::flag_change::ChangeKind;
use super::run_record::{FlagRef, StageRef, StepRef};

/// CloudEvents `type` of a hold record.
pub const HOLD_RECORD_TYPE: &str = "dev.chaosgate.pipeline.hold.v1";

/// One hold of a pipeline execution: why it waits, since and until when, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "PipelineHold",
    description = "A hold record (v1), the data of a CloudEvent on the chaos-experiment-runs topic: a pipeline execution waiting for an approval, a bake time or a freeze window.",
    example = hold_record_example()
)]
pub struct HoldRecord {
    /// Deterministic id: UUIDv5 of the execution id and where it waits (the step, or
    /// `freeze`).
    pub hold_id: String,
    /// What holds the execution.
    pub kind: HoldKind,
    /// Where the hold is.
    pub status: HoldStatus,
    /// The pipeline.
    pub pipeline_id: String,
    /// The execution held (UUIDv5 of the trigger event id and the pipeline id).
    pub pipeline_execution_id: String,
    /// The stage of the approval or wait step (absent for a freeze, which holds the
    /// change before any stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<StageRef>,
    /// The approval or wait step (absent for a freeze).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<StepRef>,
    /// The flag whose change is held.
    pub flag: FlagRef,
    /// `event_id` of the flag-change.
    pub trigger_event_id: String,
    /// The flag-change's `change.kind`.
    pub trigger_change_kind: ChangeKind,
    /// When the hold began.
    pub since: DateTime<Utc>,
    /// When it ends by itself: the wait's end, the approval's timeout, the freeze
    /// window's end (absent for an approval step without a timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// When it ended (absent while `waiting`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    /// Why it waits, or how it ended, in one line, e.g. `held by freeze window "weekend"
    /// (every Friday at 18:00 Europe/Berlin, for 63h) until 2026-11-30T08:00:00Z` or
    /// `waiting for an approve or reject request naming this execution: check the
    /// dashboards` (`until` says until when).
    pub reason: String,
    /// The freeze window's name (freeze holds only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Who approved or rejected, as the request said (`requested_by`; self-asserted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// When the approve or reject request was sent (its Kafka timestamp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<DateTime<Utc>>,
    /// The request's comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

impl HoldRecord {
    /// `stage-id/step-id` of the approval or wait step held at (what an approval
    /// request's `step` names); `None` for a freeze.
    pub fn place(&self) -> Option<String> {
        let (stage, step) = (self.stage.as_ref()?, self.step.as_ref()?);
        Some(format!("{}/{}", stage.id, step.id))
    }
}

/// What holds an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HoldKind {
    /// An `approval` step waiting for a person.
    Approval,
    /// A `wait` step (bake time).
    Wait,
    /// A freeze window of the pipeline.
    Freeze,
}

impl HoldKind {
    /// The kind as written in records.
    pub const fn as_str(self) -> &'static str {
        match self {
            HoldKind::Approval => "approval",
            HoldKind::Wait => "wait",
            HoldKind::Freeze => "freeze",
        }
    }
}

/// Where a hold is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HoldStatus {
    /// Still holding.
    Waiting,
    /// An approve request ended it: the pipeline goes on.
    Approved,
    /// A reject request ended it: the step failed.
    Rejected,
    /// The approval's timeout passed: the step failed (its failure strategy applies).
    TimedOut,
    /// A wait or a freeze window ended: the pipeline goes on.
    Done,
    /// A newer change of the same flag arrived: the pipeline's failure outcome was issued
    /// for this one.
    Superseded,
    /// The kill switch, or a pipeline no longer in the catalog, ended it with the
    /// pipeline's failure outcome.
    Aborted,
}

impl HoldStatus {
    /// The status as written in records.
    pub const fn as_str(self) -> &'static str {
        match self {
            HoldStatus::Waiting => "waiting",
            HoldStatus::Approved => "approved",
            HoldStatus::Rejected => "rejected",
            HoldStatus::TimedOut => "timed_out",
            HoldStatus::Done => "done",
            HoldStatus::Superseded => "superseded",
            HoldStatus::Aborted => "aborted",
        }
    }
}

/// The example carried by the schema and used in tests and docs.
pub fn hold_record_example() -> HoldRecord {
    let at = |s: &str| {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    };
    HoldRecord {
        hold_id: "0c3e5a7b-2d4f-5e6a-9b8c-7d6e5f4a3b2c".into(),
        kind: HoldKind::Approval,
        status: HoldStatus::Approved,
        pipeline_id: "checkout-rollout".into(),
        pipeline_execution_id: "3f0c1a4e-8b7d-5e2f-a1c3-5d9e7f6b4a20".into(),
        stage: Some(StageRef {
            id: "canary".into(),
            name: "Canary".into(),
            stage_type: "feature_flag".into(),
        }),
        step: Some(StepRef {
            id: "oncall-ok".into(),
            name: "On-call approves".into(),
        }),
        flag: FlagRef {
            project: "shop".into(),
            environment: "production".into(),
            key: "checkout-v2".into(),
        },
        trigger_event_id: "4b6f0c1e-9a2d-4c3b-8e7f-1a2b3c4d5e6f".into(),
        trigger_change_kind: ChangeKind::Enable,
        since: at("2026-11-27T09:30:00Z"),
        until: Some(at("2026-11-27T13:30:00Z")),
        ended_at: Some(at("2026-11-27T09:41:12Z")),
        reason: "approved by oncall@example.com: dashboards look fine after the canary".into(),
        window: None,
        decided_by: Some("oncall@example.com".into()),
        decided_at: Some(at("2026-11-27T09:41:11Z")),
        comment: Some("dashboards look fine after the canary".into()),
    }
}
