//! The JSON Schemas chaosgate publishes in `schemas/`: one per message and catalog file,
//! plus the configuration. `chaosgate schema NAME` prints one; a test keeps the committed
//! files in step with the Rust types.

use serde_json::Value;

use crate::catalog::{Experiment, Pipeline};
use crate::config::Config;
use crate::contract::{
    AbortRequest, ApprovalRequest, ApprovedFlag, DeadLetter, FlagChange, FlagCommand, FlagState,
    GuardRecord, HoldRecord, RunRecord, schema_of,
};

/// Names of every published schema, in the order `chaosgate schema` lists them.
pub const NAMES: [&str; 13] = [
    "flag-change",
    "experiment-run",
    "pipeline-hold",
    "guard-run",
    "flag-command",
    "approved-flag",
    "flag-state",
    "dead-letter",
    "abort-request",
    "approval-request",
    "pipeline",
    "experiment",
    "config",
];

/// The schema called `name`, if there is one.
pub fn schema(name: &str) -> Option<Value> {
    Some(match name {
        "flag-change" => schema_of::<FlagChange>(name),
        "experiment-run" => schema_of::<RunRecord>(name),
        "flag-command" => schema_of::<FlagCommand>(name),
        "approved-flag" => schema_of::<ApprovedFlag>(name),
        "pipeline-hold" => schema_of::<HoldRecord>(name),
        "guard-run" => schema_of::<GuardRecord>(name),
        "flag-state" => schema_of::<FlagState>(name),
        "approval-request" => schema_of::<ApprovalRequest>(name),
        "dead-letter" => schema_of::<DeadLetter>(name),
        "abort-request" => schema_of::<AbortRequest>(name),
        "pipeline" => schema_of::<Pipeline>(name),
        "experiment" => schema_of::<Experiment>(name),
        "config" => schema_of::<Config>(name),
        _ => return None,
    })
}

/// The file a schema is committed as, relative to `schemas/`.
pub fn file_name(name: &str) -> String {
    format!("{name}.schema.json")
}

/// The schema as committed: pretty JSON with a final newline.
pub fn rendered(name: &str) -> Option<String> {
    schema(name).map(|value| {
        let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
        text.push('\n');
        text
    })
}
