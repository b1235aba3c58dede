//! The approved flag (v1): a flag definition a flag command approved, on the
//! approved-flags topic (`kafka.topics.approved_flags`, compacted, keyed
//! `project/environment/flag`).
//!
//! Only for changes whose values are flagd definitions ([`super::ValueFormat::Flagd`]):
//! the worker writes one in the same Kafka transaction as the command that answers the
//! change, so the approved configuration moves exactly when, and only when, a command is
//! committed. `chaosgate connect flagd` reads the topic to its end and serves the newest
//! record of each flag to flagd and the OpenFeature SDKs. What a command publishes is
//! [`crate::flagd::approval`]'s rule.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::flag_command::{CommandKind, ReasonCode};

/// CloudEvents `type` of an approved flag.
pub const APPROVED_FLAG_TYPE: &str = "dev.chaosgate.flag.approved.v1";

/// One flag's approved definition, and the command that approved it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(
    title = "ApprovedFlag",
    description = "An approved flag (v1), the data of a CloudEvent on the approved-flags topic.",
    example = approved_flag_example()
)]
pub struct ApprovedFlag {
    /// Flag service project (a key name).
    pub project: String,
    /// Environment (a key name).
    pub environment: String,
    /// Flag key (a key name).
    pub flag: String,
    /// The flagd flag definition to serve (`state`, `variants`, `defaultVariant`, and
    /// `targeting` and `metadata` when set).
    pub definition: serde_json::Value,
    /// The definition the gate answered: the change's `to`. A proposal equal to it has
    /// been decided and is not proposed again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposed: Option<serde_json::Value>,
    /// The command that approved it.
    pub command: CommandKind,
    /// That command's `command_id`.
    pub command_id: String,
    /// That command's `reason_code`.
    pub reason_code: ReasonCode,
    /// The command was a dry run's advice: the proposal was published as it stands.
    pub dry_run: bool,
    /// The flag-change `event_id` the command answers.
    pub causation_event_id: String,
    /// The pipeline that decided, if one ran or was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_id: Option<String>,
    /// That pipeline's execution, if one ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_execution_id: Option<String>,
    /// When the command was issued.
    pub approved_at: DateTime<Utc>,
}

impl ApprovedFlag {
    /// The Kafka key: `project/environment/flag`.
    pub fn flag_key(&self) -> String {
        format!("{}/{}/{}", self.project, self.environment, self.flag)
    }
}

/// The example carried by the schema and used in tests and docs.
pub fn approved_flag_example() -> ApprovedFlag {
    let definition = serde_json::json!({
        "state": "ENABLED",
        "variants": { "on": true, "off": false },
        "defaultVariant": "on"
    });
    ApprovedFlag {
        project: "shop".into(),
        environment: "production".into(),
        flag: "checkout-v2".into(),
        definition: definition.clone(),
        proposed: Some(definition),
        command: CommandKind::Enable,
        command_id: "6d2b3c58-2f1e-5a3b-9c55-0f7d8e9a1b2c".into(),
        reason_code: ReasonCode::Passed,
        dry_run: false,
        causation_event_id: "flagd:shop/production/checkout-v2:5e0c7d1a".into(),
        pipeline_id: Some("checkout-rollout".into()),
        pipeline_execution_id: Some("3f0c1a4e-8b7d-5e2f-a1c3-5d9e7f6b4a20".into()),
        approved_at: DateTime::parse_from_rfc3339("2026-11-27T09:31:02Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default(),
    }
}
