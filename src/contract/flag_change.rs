//! The flag-change event (v1): what a flag service publishes on `flag-changes`.
//!
//! The rule that keeps a flag's name safe to use as a key, a URL path and a log field:
//! `project`, `environment` and `flag` are each a key name ([`KEY_RULE`]): 1 to
//! [`MAX_KEY_LEN`] characters from `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`.
//! A `/` in one would make the key `project/environment/flag` ambiguous (`a/b` + `c`
//! and `a` + `b/c` would share it), and a line break or control character could forge a
//! log line. What the flag services allow: LaunchDarkly keys are letters, digits, `.`,
//! `_` and `-` (the rule `^[0-9A-Za-z-_.]+$` that
//! <https://github.com/cashapp/misk/pull/1777> checks for LaunchDarkly, Optimizely,
//! Unleash and Split keys; a LaunchDarkly project may enforce a stricter convention,
//! <https://launchdarkly.com/docs/home/flags/new>); Unleash accepts names that
//! `encodeURIComponent` leaves alone, 1 to 100 characters, not `.` or `..`
//! (unleash-server 7.4.0, `dist/lib/routes/util.js`, `nameType`), which is this set plus
//! `~ ! * ' ( )` and a leading `.` or `-`: such Unleash names are refused here. A name
//! outside the rule is dead-lettered (`schema_violation`) with the field and the rule,
//! before anything else reads it.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// CloudEvents `type` of a flag-change.
pub const FLAG_CHANGE_TYPE: &str = "dev.chaosgate.flag.change.v1";

/// A flag service's report that a flag changed or is about to. Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(
    title = "FlagChange",
    description = "A flag-change event (v1), the data of a CloudEvent on the flag-changes topic.",
    example = flag_change_example()
)]
pub struct FlagChange {
    /// Unique id of this event; every id chaosgate derives for it comes from this.
    pub event_id: String,
    /// When the change was made.
    pub occurred_at: DateTime<Utc>,
    /// Flag service project (a key name: 1 to 128 of `A-Z a-z 0-9 . _ -`, not starting
    /// with `.` or `-`).
    #[schemars(regex(pattern = KEY_PATTERN), length(min = 1, max = 128))]
    pub project: String,
    /// Environment, e.g. `production` (a key name, as `project`).
    #[schemars(regex(pattern = KEY_PATTERN), length(min = 1, max = 128))]
    pub environment: String,
    /// Flag key (a key name, as `project`).
    #[schemars(regex(pattern = KEY_PATTERN), length(min = 1, max = 128))]
    pub flag: String,
    /// What changed.
    pub change: Change,
    /// Run this pipeline instead of routing by project, environment and flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_id: Option<String>,
    /// Who made the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Flag service account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// What `change.from` and `change.to` hold, when chaosgate itself serves the approved
    /// flag: `flagd` for OpenFeature flagd flag definitions (`chaosgate connect flagd`),
    /// whose approved version the worker publishes on the approved-flags topic in the
    /// same transaction as the command. Absent for values only the flag service reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_format: Option<ValueFormat>,
}

/// What a flag change's `from` and `to` hold (see [`FlagChange::value_format`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ValueFormat {
    /// A flagd flag definition (`state`, `variants`, `defaultVariant`, `targeting`,
    /// `metadata`), as in flagd's flag schema <https://flagd.dev/schema/v0/flags.json>;
    /// `$ref`s to shared evaluators are already inlined.
    Flagd,
}

/// The longest `project`, `environment` or `flag`, in characters (Unleash allows 100).
pub const MAX_KEY_LEN: usize = 128;

/// The key-name rule as a JSON Schema `pattern` (together with `maxLength` 128).
pub const KEY_PATTERN: &str = r"^[A-Za-z0-9_][A-Za-z0-9._-]*$";

/// The key-name rule in words, as dead-letter reasons state it.
pub const KEY_RULE: &str = "1 to 128 characters from A-Z a-z 0-9 '.' '_' '-', not starting \
                            with '.' or '-' (a '/' would make project/environment/flag ambiguous)";

/// Whether `name` keeps the key-name rule (see the module doc).
pub fn is_key_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && name.len() <= MAX_KEY_LEN
}

/// The first of `project`, `environment` and `flag` in `data` (an event's JSON data) that
/// is text breaking the key-name rule, as `data.FIELD: "VALUE" ...` (the value escaped
/// as JSON, so it stays one line, and cut to 200 characters). Fields that are missing or
/// not text are the schema's to report.
fn bad_key_field(data: &serde_json::Value) -> Option<String> {
    ["project", "environment", "flag"].iter().find_map(|field| {
        let value = data.get(field)?.as_str()?;
        if is_key_name(value) {
            return None;
        }
        let shown: String = value.chars().take(200).collect();
        let shown = serde_json::Value::String(shown).to_string();
        let length = value.chars().count();
        Some(format!(
            "data.{field}: {shown} ({length} characters) is not a key name: {KEY_RULE}"
        ))
    })
}

impl FlagChange {
    /// The Kafka key of this flag: `project/environment/flag`.
    pub fn flag_key(&self) -> String {
        format!("{}/{}/{}", self.project, self.environment, self.flag)
    }
}

/// What kind of change, and the values before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Change {
    /// `enable`, `disable` or `update`.
    pub kind: ChangeKind,
    /// Value before the change (any JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<serde_json::Value>,
    /// Value after the change (any JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<serde_json::Value>,
}

/// The kind of a flag change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Turn the flag on.
    Enable,
    /// Turn the flag off.
    Disable,
    /// Change the flag's variation or rules.
    Update,
}

impl ChangeKind {
    /// The kind's name as written on the wire.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Enable => "enable",
            ChangeKind::Disable => "disable",
            ChangeKind::Update => "update",
        }
    }
}

/// The example carried by the schema and used in tests and docs.
pub fn flag_change_example() -> FlagChange {
    FlagChange {
        event_id: "0b6f3f0e-4d5c-4c0b-9a51-8d7a6f1f2c11".into(),
        occurred_at: DateTime::parse_from_rfc3339("2026-11-27T09:30:00Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default(),
        project: "shop".into(),
        environment: "production".into(),
        flag: "checkout-v2".into(),
        change: Change {
            kind: ChangeKind::Enable,
            from: Some(serde_json::Value::Bool(false)),
            to: Some(serde_json::Value::Bool(true)),
        },
        pipeline_id: None,
        actor: Some("alice@example.com".into()),
        account: None,
        value_format: None,
    }
}

/// Why a record on `flag-changes` cannot be processed; it goes to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", class.as_str())]
pub struct BadFlagChange {
    /// The dead-letter error class.
    pub(crate) class: super::ErrorClass,
    /// What is wrong, naming the attribute or field.
    pub(crate) message: String,
}

impl BadFlagChange {
    fn new(class: super::ErrorClass, message: impl Into<String>) -> Self {
        BadFlagChange {
            class,
            message: message.into(),
        }
    }
}

static FLAG_CHANGE_VALIDATOR: std::sync::LazyLock<Result<jsonschema::Validator, String>> =
    std::sync::LazyLock::new(|| {
        jsonschema::validator_for(&super::schema_of::<FlagChange>("flag-change"))
            .map_err(|e| e.to_string())
    });

/// Decodes and validates one record from `flag-changes`.
///
/// `max_bytes` bounds key, value and headers together. Every failure is classified for
/// the dead-letter topic and names what is wrong.
pub fn decode_flag_change(
    message: &super::KafkaMessage,
    max_bytes: usize,
) -> Result<(super::CloudEvent, FlagChange), BadFlagChange> {
    use super::ErrorClass;
    let size = message.size();
    if size > max_bytes {
        return Err(BadFlagChange::new(
            ErrorClass::Oversized,
            format!("message is {size} bytes, more than the limit of {max_bytes}"),
        ));
    }
    let event = super::CloudEvent::decode(message).map_err(|e| match e {
        super::CloudEventError::UnsupportedSpecVersion(_) => {
            BadFlagChange::new(ErrorClass::UnknownVersion, e.to_string())
        }
        _ => BadFlagChange::new(ErrorClass::Undecodable, e.to_string()),
    })?;
    if event.event_type != FLAG_CHANGE_TYPE {
        return Err(BadFlagChange::new(
            ErrorClass::UnknownVersion,
            format!(
                "CloudEvent type '{}' is not one chaosgate reads (expected {FLAG_CHANGE_TYPE})",
                event.event_type
            ),
        ));
    }
    if let Some(problem) = bad_key_field(&event.data) {
        return Err(BadFlagChange::new(ErrorClass::SchemaViolation, problem));
    }
    let validator = FLAG_CHANGE_VALIDATOR
        .as_ref()
        .map_err(|e| BadFlagChange::new(ErrorClass::SchemaViolation, e.clone()))?;
    let problems: Vec<String> = validator
        .iter_errors(&event.data)
        .map(|error| {
            let path = error.instance_path().to_string();
            let field = path.trim_start_matches('/').replace('/', ".");
            if field.is_empty() {
                format!("data: {error}")
            } else {
                format!("data.{field}: {error}")
            }
        })
        .collect();
    if !problems.is_empty() {
        return Err(BadFlagChange::new(
            ErrorClass::SchemaViolation,
            problems.join("; "),
        ));
    }
    let change: FlagChange = serde_json::from_value(event.data.clone())
        .map_err(|e| BadFlagChange::new(ErrorClass::SchemaViolation, format!("data: {e}")))?;
    Ok((event, change))
}

/// Wraps a flag-change in a CloudEvent as a flag service would publish it.
pub fn flag_change_event(change: &FlagChange, source: &str) -> super::CloudEvent {
    super::CloudEvent {
        id: change.event_id.clone(),
        source: source.to_string(),
        event_type: FLAG_CHANGE_TYPE.to_string(),
        time: Some(change.occurred_at),
        subject: Some(change.flag_key()),
        extensions: Default::default(),
        data: serde_json::to_value(change).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::ErrorClass;

    #[test]
    fn a_good_event_decodes_in_both_modes() {
        let change = flag_change_example();
        let event = flag_change_event(&change, "/flags");
        for message in [event.to_binary(Some("k")), event.to_structured(Some("k"))] {
            let (_, decoded) = decode_flag_change(&message, 1 << 20).unwrap();
            assert_eq!(decoded, change);
        }
    }

    #[test]
    fn project_environment_and_flag_are_key_names() {
        for good in ["checkout-v2", "app.name", "_x", "A9", &"f".repeat(128)] {
            assert!(is_key_name(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "-x",
            "a/b",
            "a b",
            "line\nforged",
            "tab\t",
            "é",
            &"f".repeat(129),
        ] {
            assert!(!is_key_name(bad), "{bad:?}");
        }
        for field in ["project", "environment", "flag"] {
            let mut event = flag_change_event(&flag_change_example(), "/flags");
            event.data[field] = "x\nINFO forged line".into();
            let err = decode_flag_change(&event.to_binary(None), 1 << 20).unwrap_err();
            assert_eq!(err.class, ErrorClass::SchemaViolation);
            assert!(
                err.message.starts_with(&format!(
                    "data.{field}: \"x\\nINFO forged line\" (18 characters) is not a key name: 1 to 128"
                )),
                "{}",
                err.message
            );
            assert!(!err.message.contains('\n'), "{}", err.message);
        }
        // The published schema says the same.
        let schema = crate::contract::schema_of::<FlagChange>("flag-change");
        let validator = jsonschema::validator_for(&schema).unwrap();
        let mut data = serde_json::to_value(flag_change_example()).unwrap();
        assert!(validator.is_valid(&data));
        for bad in ["a/b", "-x", "a\nb", &"f".repeat(129)] {
            data["flag"] = bad.into();
            assert!(!validator.is_valid(&data), "{bad:?}");
        }
    }

    #[test]
    fn bad_events_are_classified_and_named() {
        let mut event = flag_change_event(&flag_change_example(), "/flags");
        event.data["change"]["kind"] = "toggle".into();
        let err = decode_flag_change(&event.to_binary(None), 1 << 20).unwrap_err();
        assert_eq!(err.class, ErrorClass::SchemaViolation);
        assert!(
            err.message.starts_with("data.change.kind:"),
            "{}",
            err.message
        );

        let event = flag_change_event(&flag_change_example(), "/flags");
        let err = decode_flag_change(&event.to_binary(None), 10).unwrap_err();
        assert_eq!(err.class, ErrorClass::Oversized);

        let mut event = flag_change_event(&flag_change_example(), "/flags");
        event.event_type = "dev.chaosgate.flag.change.v2".into();
        let err = decode_flag_change(&event.to_binary(None), 1 << 20).unwrap_err();
        assert_eq!(err.class, ErrorClass::UnknownVersion);

        let mut event = flag_change_event(&flag_change_example(), "/flags");
        if let Some(o) = event.data.as_object_mut() {
            o.remove("flag");
            o.insert("extra".into(), 1.into());
        }
        let err = decode_flag_change(&event.to_binary(None), 1 << 20).unwrap_err();
        assert!(
            err.message.contains("\"flag\" is a required property"),
            "{}",
            err.message
        );
    }
}
