//! The wire contracts (v1): flag-change events and control requests in; experiment-run,
//! hold and guard records, flag commands, dead letters, approved flagd definitions and
//! the flag-state records out; all as CloudEvents on Kafka (README, "Contracts").
//!
//! These types are the public surface. Their JSON Schemas in `schemas/` are generated
//! from them, and a test fails when the committed schemas are stale.

pub mod approved_flag;
pub(crate) mod cloudevents;
pub mod control;
pub mod dead_letter;
pub mod flag_change;
pub mod flag_command;
pub mod flag_state;
pub mod guard_record;
pub mod hold_record;
pub mod ids;
pub mod run_record;

pub use approved_flag::ApprovedFlag;
pub use cloudevents::{CloudEvent, CloudEventError, KafkaMessage};
pub use control::{AbortRequest, AbortScope, ApprovalDecision, ApprovalRequest, ControlRequest};
pub use dead_letter::{DeadLetter, ErrorClass};
pub use flag_change::{Change, ChangeKind, FlagChange, ValueFormat};
pub use flag_command::{CommandKind, FlagCommand, ReasonCode, StepSummary};
pub use flag_state::FlagState;
pub use guard_record::{GuardRecord, GuardStatus};
pub use hold_record::{HoldKind, HoldRecord, HoldStatus};
pub use run_record::{FaultResult, ProbeResult, RunRecord, RunStatus, Verdict};

/// The JSON Schema (draft 2020-12) of `T`, with the `$id` chaosgate publishes it under.
pub(crate) fn schema_of<T: schemars::JsonSchema>(name: &str) -> serde_json::Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let schema = generator.into_root_schema_for::<T>();
    let mut value = schema.to_value();
    if let Some(object) = value.as_object_mut() {
        object.insert(
            "$id".into(),
            format!("https://chaosgate.dev/schemas/v1/{name}.schema.json").into(),
        );
    }
    value
}
