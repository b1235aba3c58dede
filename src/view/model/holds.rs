//! Rows of what waits and what watches: a pipeline execution's holds (approval, wait,
//! freeze window), the guard after its `enable`, and the approve or reject requests that
//! named it.
//!
//! Rule: as for every row of the model, values are what the records say: a hold's
//! status is its newest record's (a final one never goes back to `waiting`), and nothing
//! is derived that the records do not carry.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{CommandRow, KafkaPosition};
use crate::contract::ProbeResult;

/// One hold of a pipeline execution: the newest record of its `hold_id`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HoldRow {
    /// Deterministic hold id.
    pub hold_id: String,
    /// `approval`, `wait` or `freeze`.
    pub kind: String,
    /// `waiting`, `approved`, `rejected`, `timed_out`, `done`, `superseded` or `aborted`.
    pub status: String,
    /// Pipeline id.
    pub pipeline_id: String,
    /// The execution held: the id an approve or reject request names.
    pub pipeline_execution_id: String,
    /// Stage id of the approval or wait step (absent for a freeze).
    pub stage_id: Option<String>,
    /// Stage name.
    pub(crate) stage_name: Option<String>,
    /// Step id of the approval or wait step (absent for a freeze).
    pub step_id: Option<String>,
    /// Step name.
    pub(crate) step_name: Option<String>,
    /// Flag project.
    pub project: String,
    /// Flag environment.
    pub environment: String,
    /// Flag key.
    pub flag: String,
    /// `event_id` of the flag-change held.
    pub trigger_event_id: String,
    /// Its `change.kind`: `enable`, `update` (a `disable` is never held).
    pub change_kind: String,
    /// When the hold began.
    pub since: DateTime<Utc>,
    /// When it ends by itself (the wait's end, the approval's timeout, the window's end).
    pub until: Option<DateTime<Utc>>,
    /// When it ended (absent while waiting).
    pub ended_at: Option<DateTime<Utc>>,
    /// Why it waits, or how it ended.
    pub reason: String,
    /// The freeze window's name (freeze holds only).
    pub window: Option<String>,
    /// Who approved or rejected (as the request said).
    pub decided_by: Option<String>,
    /// When the decision was sent.
    pub decided_at: Option<DateTime<Utc>>,
    /// The decision's comment.
    pub comment: Option<String>,
    /// Where the record shown was read.
    pub position: KafkaPosition,
    /// Live-update sequence number.
    pub(crate) seq: i64,
}

impl HoldRow {
    /// `stage / step` for an approval or wait step, `freeze window NAME` for a freeze.
    pub(crate) fn place(&self) -> String {
        match (&self.stage_id, &self.step_id, &self.window) {
            (Some(stage), Some(step), _) => format!("{stage} / {step}"),
            (_, _, Some(window)) => format!("freeze window {window}"),
            _ => self.kind.clone(),
        }
    }
}

/// The guard that watched (or watches) a flag after an execution's `enable`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuardRow {
    /// Deterministic guard id.
    pub guard_id: String,
    /// `watching`, `fired`, `expired`, `superseded` or `aborted`.
    pub status: String,
    /// Pipeline id.
    pub pipeline_id: String,
    /// The execution that issued the `enable`.
    pub pipeline_execution_id: String,
    /// Flag project.
    pub(crate) project: String,
    /// Flag environment.
    pub(crate) environment: String,
    /// Flag key.
    pub(crate) flag: String,
    /// `command_id` of the `enable` it guards.
    pub enable_command_id: String,
    /// What it issues when it fires: `disable` or `revert`.
    pub on_failure: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it stops watching by itself.
    pub deadline: DateTime<Utc>,
    /// When it ended (absent while watching).
    pub ended_at: Option<DateTime<Utc>>,
    /// Its probes as the record gives them.
    pub probes: Vec<ProbeResult>,
    /// Why it ended.
    pub reason: Option<String>,
    /// `command_id` of the command it issued (`fired` only).
    pub command_id: Option<String>,
    /// That command as read from `flag-commands` (absent until the view has read it).
    pub command: Option<CommandRow>,
    /// Where the record shown was read.
    pub position: KafkaPosition,
    /// Live-update sequence number.
    pub(crate) seq: i64,
}

/// An approve or reject request naming an execution, as read from `chaosgate-control`
/// (whether the worker acted on it is told by the hold, not by the request).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApprovalRow {
    /// `approve` or `reject`.
    pub decision: String,
    /// The execution named.
    pub pipeline_execution_id: String,
    /// `stage/step` when the request named one.
    pub step: Option<String>,
    /// Who asked (self-asserted).
    pub requested_by: Option<String>,
    /// Their comment.
    pub comment: Option<String>,
    /// The event's time (else the record's timestamp).
    pub at: DateTime<Utc>,
    /// Where it was read.
    pub position: KafkaPosition,
}
