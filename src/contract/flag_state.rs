//! The flag-state record (v1): what the worker still owes a flag, on the compacted
//! flag-state topic (`kafka.topics.flag_state`, default `chaosgate-flag-state`), keyed
//! `project/environment/flag`.
//!
//! A flag owes at most one thing at a time, because a flag's changes are handled in order
//! and a newer change ends whatever the flag owed:
//! - `waiting`: a pipeline execution parked at an approval or wait step, or held by a
//!   freeze window. Its flag-change's offset is already committed; this record is how
//!   the execution survives restarts and rebalances without holding a Kafka resource.
//! - `guarding`: a guard watching the flag after its `enable`.
//! - `idle`: nothing (what the record becomes when the wait or guard ends).
//!
//! The worker writes each record in the same Kafka transaction as the records and
//! command that change the flag's state, so the topic never disagrees with the commands:
//! a `waiting` record commits with the flag-change's offset, the `enable` with its
//! `guarding` record, a guard's `disable` with `idle`. The owner of the flag's partition
//! of `flag-changes` (`source_partition`) acts on it; every worker reads the whole topic.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::flag_change::FlagChange;
use super::flag_command::StepSummary;
use super::guard_record::GuardRecord;
use super::hold_record::HoldRecord;

/// CloudEvents `type` of a flag-state record.
pub const FLAG_STATE_TYPE: &str = "dev.chaosgate.flag.state.v1";

/// What the worker owes one flag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "FlagState",
    description = "A flag-state record (v1), the data of a CloudEvent on the compacted flag-state topic: a parked pipeline execution or a guard, by flag.",
    example = flag_state_example()
)]
pub struct FlagState {
    /// Flag service project.
    pub project: String,
    /// Environment.
    pub environment: String,
    /// Flag key.
    pub flag: String,
    /// The partition of `flag-changes` the flag's changes are on: its owner acts on this
    /// record.
    pub source_partition: i32,
    /// When the record was written.
    pub updated_at: DateTime<Utc>,
    /// What is owed.
    pub owed: Owed,
}

impl FlagState {
    /// The Kafka key: `project/environment/flag`.
    pub fn flag_key(&self) -> String {
        format!("{}/{}/{}", self.project, self.environment, self.flag)
    }
}

/// What a flag is owed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum Owed {
    /// Nothing.
    Idle,
    /// A parked pipeline execution.
    Waiting(Box<Waiting>),
    /// A guard after an `enable`.
    Guarding(Box<Guarding>),
}

/// A pipeline execution parked at a hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Waiting {
    /// The flag-change the execution answers.
    pub change: FlagChange,
    /// The pipeline.
    pub pipeline_id: String,
    /// The execution's attempt.
    pub attempt: u32,
    /// The hold, as its `waiting` record said.
    pub hold: HoldRecord,
    /// Summaries of the steps already done, in order, for the command.
    #[serde(default)]
    pub steps_done: Vec<StepSummary>,
}

/// A guard watching a flag after its `enable`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Guarding {
    /// The flag-change the `enable` answered (a `revert` puts back its `from`).
    pub change: FlagChange,
    /// The guard, as its `watching` record said.
    pub guard: GuardRecord,
}

/// The example carried by the schema and used in tests and docs: an execution waiting
/// for an approval.
pub fn flag_state_example() -> FlagState {
    let change = super::flag_change::flag_change_example();
    let mut hold = super::hold_record::hold_record_example();
    hold.status = super::HoldStatus::Waiting;
    hold.ended_at = None;
    hold.decided_by = None;
    hold.decided_at = None;
    hold.comment = None;
    hold.reason =
        "waiting for an approve or reject request naming this execution: check the canary dashboards"
            .into();
    FlagState {
        project: change.project.clone(),
        environment: change.environment.clone(),
        flag: change.flag.clone(),
        source_partition: 3,
        updated_at: hold.since,
        owed: Owed::Waiting(Box::new(Waiting {
            pipeline_id: hold.pipeline_id.clone(),
            attempt: 1,
            steps_done: Vec::new(),
            hold,
            change,
        })),
    }
}
