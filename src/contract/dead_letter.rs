//! The dead-letter envelope: a bad flag-change (or a flag command a bridge could not
//! apply) keeps its original bytes and headers and gains headers that say what was wrong
//! and where it came from.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Header naming the error class (see [`ErrorClass`]).
pub const HEADER_ERROR_CLASS: &str = "chaosgate_error_class";
/// Header holding the error message.
pub const HEADER_ERROR_MESSAGE: &str = "chaosgate_error_message";
/// Header holding the source topic.
pub const HEADER_SOURCE_TOPIC: &str = "chaosgate_source_topic";
/// Header holding the source partition (decimal).
pub const HEADER_SOURCE_PARTITION: &str = "chaosgate_source_partition";
/// Header holding the source offset (decimal).
pub const HEADER_SOURCE_OFFSET: &str = "chaosgate_source_offset";
/// Header present when the record's value was cut to fit the producer's size limit
/// (`message.max.bytes`): the original value's length in bytes (decimal). The key and
/// every header are kept; the value is its first bytes, so it may not decode.
pub const HEADER_VALUE_TRUNCATED: &str = "chaosgate_value_truncated_from";

/// Header holding when the record was dead-lettered (RFC 3339).
pub const HEADER_DEAD_LETTERED_AT: &str = "chaosgate_dead_lettered_at";
/// The error message header holds at most this many characters of the message.
pub const MAX_ERROR_MESSAGE_CHARS: usize = 2000;

/// The headers a dead letter adds to the original record's (which it keeps byte for
/// byte): the error `class`, the `message` (its first [`MAX_ERROR_MESSAGE_CHARS`]
/// characters), where the original was read (`source_topic`, `partition`, `offset`,
/// both numbers in decimal) and when it was dead-lettered (`at`).
pub fn headers(
    class: ErrorClass,
    message: &str,
    source_topic: &str,
    partition: i32,
    offset: i64,
    at: chrono::DateTime<chrono::Utc>,
) -> Vec<(String, Vec<u8>)> {
    let message: String = message.chars().take(MAX_ERROR_MESSAGE_CHARS).collect();
    [
        (HEADER_ERROR_CLASS, class.as_str().to_string()),
        (HEADER_ERROR_MESSAGE, message),
        (HEADER_SOURCE_TOPIC, source_topic.to_string()),
        (HEADER_SOURCE_PARTITION, partition.to_string()),
        (HEADER_SOURCE_OFFSET, offset.to_string()),
        (HEADER_DEAD_LETTERED_AT, at.to_rfc3339()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value.into_bytes()))
    .collect()
}

/// Why a message was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Not a CloudEvent, or not JSON.
    Undecodable,
    /// The data does not match the flag-change schema (the flag-command schema, for a
    /// record a bridge read from the commands topic).
    SchemaViolation,
    /// `ce_specversion` or the event `type` is not one chaosgate reads.
    UnknownVersion,
    /// Bigger than the configured limit.
    Oversized,
    /// The event names a `pipeline_id` the catalog does not have.
    UnknownPipeline,
    /// The event names a `pipeline_id` whose routes do not take its flag, and that
    /// pipeline does not allow explicit selection (`allow_explicit`).
    PipelineNotRouted,
    /// No route takes the event's flag and the worker is configured to dead-letter such
    /// events (`worker.unrouted = "dead_letter"`).
    Unrouted,
    /// A flag command a flag-service bridge could not apply, and will not apply if tried
    /// again: the flag service refused it for good (401, 403, 404 of the flag, another
    /// 4xx), or it asks for something the bridge cannot do (a `revert` to a value it
    /// cannot put back). The record is the original flag command.
    CommandNotApplied,
}

impl ErrorClass {
    /// The class as written in the header.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Undecodable => "undecodable",
            ErrorClass::SchemaViolation => "schema_violation",
            ErrorClass::UnknownVersion => "unknown_version",
            ErrorClass::Oversized => "oversized",
            ErrorClass::UnknownPipeline => "unknown_pipeline",
            ErrorClass::PipelineNotRouted => "pipeline_not_routed",
            ErrorClass::Unrouted => "unrouted",
            ErrorClass::CommandNotApplied => "command_not_applied",
        }
    }
}

/// A dead letter as a whole: the original message plus why and from where.
///
/// On Kafka the original key, value and headers are kept byte for byte and the other
/// fields travel as headers; this type is their JSON view (for tools and the schema).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "DeadLetter",
    description = "A dead-lettered record: a flag-change the worker could not process, or a flag command a flag-service bridge could not read or apply; the original bytes and headers, plus headers naming the error and the source.",
    example = dead_letter_example()
)]
pub struct DeadLetter {
    /// Error class.
    pub(crate) error_class: ErrorClass,
    /// Error message, naming the field or attribute at fault.
    pub(crate) error_message: String,
    /// Source topic.
    pub(crate) source_topic: String,
    /// Source partition.
    pub(crate) source_partition: i32,
    /// Source offset.
    pub(crate) source_offset: i64,
    /// Original key, as UTF-8 when it is (lossy otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) key: Option<String>,
    /// Original headers, name and value (lossy UTF-8).
    #[serde(default)]
    pub(crate) headers: Vec<(String, String)>,
    /// Original value, as UTF-8 when it is (lossy otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) value: Option<String>,
}

/// The example carried by the schema and used in tests and docs.
pub fn dead_letter_example() -> DeadLetter {
    DeadLetter {
        error_class: ErrorClass::SchemaViolation,
        error_message: "data.change.kind: 'toggle' is not one of enable, disable, update".into(),
        source_topic: "flag-changes".into(),
        source_partition: 2,
        source_offset: 1041,
        key: Some("shop/production/checkout-v2".into()),
        headers: vec![("ce_type".into(), "dev.chaosgate.flag.change.v1".into())],
        value: Some("{\"event_id\":\"e-1\",\"change\":{\"kind\":\"toggle\"}}".into()),
    }
}
