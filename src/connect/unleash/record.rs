//! A record of the commands topic as the Unleash bridge reads it: a flag command (v1
//! CloudEvent) or the reason it is not one, what the command means for Unleash, and the
//! dead letter that reports a command the bridge cannot apply.
//!
//! The rule: every record becomes exactly one of a command to apply, a command to skip,
//! or a dead letter; nothing is guessed and nothing is dropped without a trace.

use chrono::Utc;

use crate::contract::dead_letter;
use crate::contract::flag_change::KEY_RULE;
use crate::contract::flag_change::is_key_name;
use crate::contract::flag_command::FLAG_COMMAND_TYPE;
use crate::contract::{
    CloudEvent, CloudEventError, CommandKind, ErrorClass, FlagCommand, KafkaMessage,
};

use super::order::Position;

/// Why a record is not a flag command the bridge reads, or a command it cannot apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", class.as_str())]
pub struct NotApplied {
    /// The dead-letter class.
    pub class: ErrorClass,
    /// What is wrong, naming the attribute, field or the flag service's answer.
    pub message: String,
}

impl NotApplied {
    fn new(class: ErrorClass, message: impl Into<String>) -> NotApplied {
        NotApplied {
            class,
            message: message.into(),
        }
    }
}

/// Decodes one record as a flag command: a CloudEvent 1.0 (binary or structured mode)
/// of type [`FLAG_COMMAND_TYPE`] whose data is a [`FlagCommand`] with key names for
/// project, environment and flag.
///
/// Errors: [`ErrorClass::Undecodable`] (not a CloudEvent, not JSON),
/// [`ErrorClass::UnknownVersion`] (another `specversion` or `type`),
/// [`ErrorClass::SchemaViolation`] (the data is not a flag command).
pub fn decode_command(message: &KafkaMessage) -> Result<FlagCommand, NotApplied> {
    let event = CloudEvent::decode(message).map_err(|e| match e {
        CloudEventError::UnsupportedSpecVersion(_) => {
            NotApplied::new(ErrorClass::UnknownVersion, e.to_string())
        }
        _ => NotApplied::new(ErrorClass::Undecodable, e.to_string()),
    })?;
    if event.event_type != FLAG_COMMAND_TYPE {
        return Err(NotApplied::new(
            ErrorClass::UnknownVersion,
            format!(
                "CloudEvent type '{}' is not one chaosgate reads (expected {FLAG_COMMAND_TYPE})",
                event.event_type
            ),
        ));
    }
    let command: FlagCommand = serde_json::from_value(event.data)
        .map_err(|e| NotApplied::new(ErrorClass::SchemaViolation, format!("data: {e}")))?;
    for (field, value) in [
        ("project", &command.project),
        ("environment", &command.environment),
        ("flag", &command.flag),
    ] {
        if !is_key_name(value) {
            return Err(NotApplied::new(
                ErrorClass::SchemaViolation,
                format!("data.{field} {value:?}: not a key name ({KEY_RULE})"),
            ));
        }
    }
    Ok(command)
}

/// What a command asks of Unleash, in its environment.
#[derive(Debug, Clone, PartialEq)]
pub enum Wanted {
    /// The flag on (`true`) or off.
    Enabled(bool),
    /// An old activation strategy back: its `id` and the configuration to put back
    /// ([`super::strategy`]).
    Strategy {
        /// The strategy's id when the change was made.
        id: String,
        /// Its configuration as a request body.
        body: serde_json::Value,
    },
}

/// What `command` asks of Unleash.
///
/// `enable` is on, `disable` off; `revert` puts back the change's `from`
/// ([`FlagCommand::value`]): an on/off state (`true`/`false` or `{"enabled": bool}`),
/// or an Unleash strategy (an object with `id` and `name`, from a strategy `update` or
/// removal). Errors ([`ErrorClass::CommandNotApplied`]): a `revert` without a value (the
/// change added a strategy, which had no `from`) or to anything else.
pub fn wanted(command: &FlagCommand) -> Result<Wanted, NotApplied> {
    match command.command {
        CommandKind::Enable => Ok(Wanted::Enabled(true)),
        CommandKind::Disable => Ok(Wanted::Enabled(false)),
        CommandKind::Revert => {
            let value = command.value.as_ref();
            let state = value.and_then(|v| {
                v.as_bool()
                    .or_else(|| v.get("enabled").and_then(serde_json::Value::as_bool))
            });
            if let Some(on) = state {
                return Ok(Wanted::Enabled(on));
            }
            if let Some((id, body)) = value.and_then(super::strategy::parse) {
                return Ok(Wanted::Strategy { id, body });
            }
            let shown = value.map_or("nothing".to_string(), |v| {
                v.to_string().chars().take(200).collect()
            });
            Err(NotApplied::new(
                ErrorClass::CommandNotApplied,
                format!(
                    "revert to {shown}: the Unleash bridge puts back an on/off state (true, false \
                     or {{\"enabled\": bool}}) or a strategy (with its id and name); a revert \
                     without a value (of an added strategy) must be done by hand"
                ),
            ))
        }
    }
}

/// The dead letter of the record read at `at` on `source_topic`: the original record
/// byte for byte, plus the project's dead-letter headers (`chaosgate_error_class`,
/// `chaosgate_error_message` cut to 2,000 characters, `chaosgate_source_topic`,
/// `chaosgate_source_partition`, `chaosgate_source_offset`,
/// `chaosgate_dead_lettered_at`), as the worker writes them for flag-changes.
pub fn dead_letter(
    original: &KafkaMessage,
    why: &NotApplied,
    source_topic: &str,
    at: Position,
) -> KafkaMessage {
    let mut message = original.clone();
    message.headers.extend(dead_letter::headers(
        why.class,
        &why.message,
        source_topic,
        at.partition,
        at.offset,
        Utc::now(),
    ));
    message
}

/// The dead letter for an Admin API answer that will not change: `status` and Unleash's
/// `reason`.
pub fn refused(status: u16, reason: &str) -> NotApplied {
    NotApplied::new(
        ErrorClass::CommandNotApplied,
        format!("Unleash refused the command ({status}): {reason}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::dead_letter::{
        HEADER_ERROR_CLASS, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION, HEADER_SOURCE_TOPIC,
    };
    use crate::contract::flag_command::flag_command_example;
    use serde_json::json;

    fn encoded(command: &FlagCommand) -> KafkaMessage {
        CloudEvent {
            id: command.command_id.clone(),
            source: "/chaosgate".into(),
            event_type: FLAG_COMMAND_TYPE.into(),
            time: Some(command.issued_at),
            subject: None,
            extensions: Default::default(),
            data: serde_json::to_value(command).unwrap(),
        }
        .to_binary(Some("shop/production/checkout-v2"))
    }

    #[test]
    fn a_command_decodes_and_bad_records_are_classified() {
        let command = flag_command_example();
        assert_eq!(decode_command(&encoded(&command)), Ok(command.clone()));
        let not_json = KafkaMessage {
            value: Some(b"{".to_vec()),
            ..encoded(&command)
        };
        assert_eq!(
            decode_command(&not_json).unwrap_err().class,
            ErrorClass::Undecodable
        );
        let mut wrong_type = encoded(&command);
        for (name, value) in &mut wrong_type.headers {
            if name == "ce_type" {
                *value = b"dev.chaosgate.flag.change.v1".to_vec();
            }
        }
        assert_eq!(
            decode_command(&wrong_type).unwrap_err().class,
            ErrorClass::UnknownVersion
        );
        let mut bad_flag = command.clone();
        bad_flag.flag = "a/b".into();
        let err = decode_command(&encoded(&bad_flag)).unwrap_err();
        assert_eq!(err.class, ErrorClass::SchemaViolation);
        assert!(err.message.contains("data.flag"), "{err}");
        let mut value = serde_json::to_value(&command).unwrap();
        value["command"] = json!("toggle");
        let mut toggle = encoded(&command);
        toggle.value = Some(value.to_string().into_bytes());
        let err = decode_command(&toggle).unwrap_err();
        assert_eq!(err.class, ErrorClass::SchemaViolation);
        assert!(err.message.contains("toggle"), "{err}");
    }

    #[test]
    fn revert_puts_back_an_on_off_state_or_a_strategy() {
        let mut command = flag_command_example();
        assert_eq!(wanted(&command), Ok(Wanted::Enabled(false)));
        command.command = CommandKind::Enable;
        assert_eq!(wanted(&command), Ok(Wanted::Enabled(true)));
        command.command = CommandKind::Revert;
        for (value, state) in [
            (json!(true), true),
            (json!(false), false),
            (json!({"enabled": true}), true),
        ] {
            command.value = Some(value);
            assert_eq!(wanted(&command), Ok(Wanted::Enabled(state)));
        }
        command.value =
            Some(json!({"id": "s-1", "name": "flexibleRollout", "parameters": {"rollout": "50"}}));
        assert!(
            matches!(wanted(&command), Ok(Wanted::Strategy { id, .. }) if id == "s-1"),
            "{:?}",
            wanted(&command)
        );
        command.value = Some(json!({"name": "flexibleRollout", "parameters": {"rollout": "50"}}));
        let err = wanted(&command).unwrap_err();
        assert_eq!(err.class, ErrorClass::CommandNotApplied);
        assert!(err.message.contains("flexibleRollout"), "{err}");
        command.value = None;
        assert!(wanted(&command).unwrap_err().message.contains("nothing"));
    }

    #[test]
    fn a_dead_letter_keeps_the_record_and_names_class_and_source() {
        let original = encoded(&flag_command_example());
        let why = refused(404, "POST http://u/api/...: 404 Not Found");
        let letter = dead_letter(
            &original,
            &why,
            "flag-commands",
            Position {
                partition: 3,
                offset: 41,
            },
        );
        assert_eq!(letter.key, original.key);
        assert_eq!(letter.value, original.value);
        assert_eq!(
            &letter.headers[..original.headers.len()],
            &original.headers[..]
        );
        assert_eq!(
            letter.header(HEADER_ERROR_CLASS),
            Some(&b"command_not_applied"[..])
        );
        assert_eq!(letter.header(HEADER_SOURCE_OFFSET), Some(&b"41"[..]));
        assert_eq!(letter.header(HEADER_SOURCE_PARTITION), Some(&b"3"[..]));
        assert_eq!(
            letter.header(HEADER_SOURCE_TOPIC),
            Some(&b"flag-commands"[..])
        );
    }
}
