//! Turning one Kafka record of a topic the view reads into the row it stores, or the
//! reason it cannot.
//!
//! Rule: a record decodes only through [`crate::contract`] (the same CloudEvents and v1
//! types the worker writes), and a record that does not decode yields a reason naming
//! what is wrong, never a guess: ingest stores the reason as an ingest problem and moves
//! on.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::contract::control::{ABORT_REQUEST_TYPE, APPROVAL_REQUEST_TYPE};
use crate::contract::dead_letter::{
    HEADER_ERROR_CLASS, HEADER_ERROR_MESSAGE, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TOPIC,
};
use crate::contract::flag_change::decode_flag_change;
use crate::contract::flag_command::FLAG_COMMAND_TYPE;
use crate::contract::guard_record::GUARD_RECORD_TYPE;
use crate::contract::hold_record::HOLD_RECORD_TYPE;
use crate::contract::run_record::RUN_RECORD_TYPE;
use crate::contract::{
    AbortRequest, AbortScope, ApprovalRequest, CloudEvent, FlagChange, FlagCommand, GuardRecord,
    GuardStatus, HoldRecord, HoldStatus, KafkaMessage, RunRecord, RunStatus,
};

/// What a topic carries, as the view reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum TopicRole {
    /// `chaos-experiment-runs`: run records, hold records and guard records.
    Runs,
    /// `flag-commands`: flag commands.
    Commands,
    /// `flag-changes`: flag-change events.
    Changes,
    /// `flag-changes-dlq`: dead letters.
    DeadLetters,
    /// `chaosgate-control`: abort and approval requests.
    Control,
}

/// A run record and what the view derives from its envelope.
#[derive(Debug, Clone)]
pub(crate) struct DecodedRun {
    /// The record.
    pub(crate) record: RunRecord,
    /// Its trace id: `trace_id` in the data, else the `traceparent` header's.
    pub(crate) trace_id: Option<String>,
}

/// A dead letter's headers, read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DecodedDeadLetter {
    /// The original's event id, when its bytes still say it.
    pub(crate) event_id: Option<String>,
    /// Error class header.
    pub(crate) error_class: String,
    /// Error message header.
    pub(crate) error_message: String,
    /// Source topic, partition and offset headers.
    pub(crate) source: Option<(String, i32, i64)>,
    /// The original key.
    pub(crate) key: Option<String>,
}

/// One record, decoded.
#[derive(Debug, Clone)]
pub(crate) enum Decoded {
    /// A run record.
    Run(Box<DecodedRun>),
    /// A flag command.
    Command(Box<FlagCommand>),
    /// A flag-change.
    Change(Box<FlagChange>),
    /// A dead letter.
    DeadLetter(Box<DecodedDeadLetter>),
    /// An abort request, with the event's time.
    Abort(Box<AbortRequest>, Option<DateTime<Utc>>),
    /// A hold record (an execution waiting for an approval, a wait or a freeze window).
    Hold(Box<HoldRecord>),
    /// A guard record (a guard watching a flag after its `enable`).
    Guard(Box<GuardRecord>),
    /// An approve or reject request, with the event's time.
    Approval(Box<ApprovalRequest>, Option<DateTime<Utc>>),
}

/// A record any size passes: the worker's limit is for its input, not for the view.
const NO_SIZE_LIMIT: usize = usize::MAX;

fn typed_event(message: &KafkaMessage, expected: &str) -> Result<CloudEvent, String> {
    let event = CloudEvent::decode(message).map_err(|e| e.to_string())?;
    if event.event_type != expected {
        return Err(format!(
            "CloudEvent type '{}' is not one the view reads here (expected {expected})",
            event.event_type
        ));
    }
    Ok(event)
}

fn data_of<T: serde::de::DeserializeOwned>(event: CloudEvent, what: &str) -> Result<T, String> {
    serde_path_to_error::deserialize(event.data)
        .map_err(|e| format!("{what} data: {} ({})", e.inner(), e.path()))
}

/// The data of a record of CloudEvents `type` `expected`, and the event's `time`.
///
/// Binary mode (what the worker writes): the attributes are checked by the contract's
/// decoder on the headers alone, with a stand-in value, and the data is deserialised
/// straight from the bytes (no intermediate JSON tree: ingest's hot path). Structured
/// mode goes through [`CloudEvent::decode`] whole.
fn typed_data<T: serde::de::DeserializeOwned>(
    message: &KafkaMessage,
    expected: &str,
    what: &str,
) -> Result<(T, Option<DateTime<Utc>>), String> {
    let structured = message
        .header(crate::contract::cloudevents::CONTENT_TYPE_HEADER)
        .is_some_and(|ct| {
            ct.to_ascii_lowercase()
                .starts_with(b"application/cloudevents")
        });
    if structured {
        let event = typed_event(message, expected)?;
        let time = event.time;
        return Ok((data_of(event, what)?, time));
    }
    let headers_only = KafkaMessage {
        key: None,
        value: Some(b"null".to_vec()),
        headers: message.headers.clone(),
    };
    let event = typed_event(&headers_only, expected)?;
    let value = message
        .value
        .as_deref()
        .ok_or("value is not valid JSON: the record has no value")?;
    let mut deserializer = serde_json::Deserializer::from_slice(value);
    let data: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        if e.inner().is_syntax() || e.inner().is_eof() {
            format!("value is not valid JSON: {}", e.inner())
        } else {
            format!("{what} data: {} ({})", e.inner(), e.path())
        }
    })?;
    deserializer
        .end()
        .map_err(|e| format!("value is not valid JSON: {e}"))?;
    Ok((data, event.time))
}

/// The trace id of a W3C `traceparent` header value (`00-<trace id>-<span id>-<flags>`).
pub(crate) fn trace_id_of_traceparent(value: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(value).ok()?;
    let mut parts = text.split('-');
    let _version = parts.next()?;
    let trace = parts.next()?;
    (trace.len() == 32
        && trace.bytes().all(|b| b.is_ascii_hexdigit())
        && trace.bytes().any(|b| b != b'0'))
    .then(|| trace.to_ascii_lowercase())
}

/// The CloudEvents `type` of `message`: the `ce_type` header in binary mode, the `type`
/// attribute in structured mode; `None` when neither says (the decoder then names why).
fn event_type(message: &KafkaMessage) -> Option<String> {
    if let Some(value) = message.header("ce_type") {
        return Some(String::from_utf8_lossy(value).into_owned());
    }
    #[derive(serde::Deserialize)]
    struct Envelope {
        #[serde(rename = "type")]
        event_type: String,
    }
    let envelope: Envelope = serde_json::from_slice(message.value.as_deref()?).ok()?;
    Some(envelope.event_type)
}

fn header_text(message: &KafkaMessage, name: &str) -> Option<String> {
    message
        .header(name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Decodes `message` read from a topic of `role`.
pub(crate) fn decode(role: TopicRole, message: &KafkaMessage) -> Result<Decoded, String> {
    // The runs and control topics carry several types; the others one each.
    let ty = match role {
        TopicRole::Runs | TopicRole::Control => event_type(message),
        _ => None,
    };
    match role {
        TopicRole::Runs if ty.as_deref() == Some(HOLD_RECORD_TYPE) => {
            let (hold, _) = typed_data(message, HOLD_RECORD_TYPE, "hold record")?;
            Ok(Decoded::Hold(Box::new(hold)))
        }
        TopicRole::Runs if ty.as_deref() == Some(GUARD_RECORD_TYPE) => {
            let (guard, _) = typed_data(message, GUARD_RECORD_TYPE, "guard record")?;
            Ok(Decoded::Guard(Box::new(guard)))
        }
        TopicRole::Control if ty.as_deref() == Some(APPROVAL_REQUEST_TYPE) => {
            let (approval, time) = typed_data(message, APPROVAL_REQUEST_TYPE, "approval request")?;
            Ok(Decoded::Approval(Box::new(approval), time))
        }
        TopicRole::Runs => {
            let (record, _): (RunRecord, _) = typed_data(message, RUN_RECORD_TYPE, "run record")?;
            let trace_id = record.trace_id.clone().or_else(|| {
                message
                    .header(crate::telemetry::traces::TRACEPARENT)
                    .and_then(trace_id_of_traceparent)
            });
            Ok(Decoded::Run(Box::new(DecodedRun { record, trace_id })))
        }
        TopicRole::Commands => {
            let (command, _) = typed_data(message, FLAG_COMMAND_TYPE, "flag command")?;
            Ok(Decoded::Command(Box::new(command)))
        }
        TopicRole::Changes => decode_flag_change(message, NO_SIZE_LIMIT)
            .map(|(_, change)| Decoded::Change(Box::new(change)))
            .map_err(|e| e.to_string()),
        TopicRole::Control => {
            let (abort, time) = typed_data(message, ABORT_REQUEST_TYPE, "abort request")?;
            Ok(Decoded::Abort(Box::new(abort), time))
        }
        TopicRole::DeadLetters => {
            let error_class = header_text(message, HEADER_ERROR_CLASS)
                .ok_or_else(|| format!("dead letter without a '{HEADER_ERROR_CLASS}' header"))?;
            let error_message = header_text(message, HEADER_ERROR_MESSAGE).unwrap_or_default();
            let source = match (
                header_text(message, HEADER_SOURCE_TOPIC),
                header_text(message, HEADER_SOURCE_PARTITION).and_then(|p| p.parse().ok()),
                header_text(message, HEADER_SOURCE_OFFSET).and_then(|o| o.parse().ok()),
            ) {
                (Some(topic), Some(partition), Some(offset)) => Some((topic, partition, offset)),
                _ => None,
            };
            // The original may be anything; its id is read when it is readable.
            let event_id = header_text(message, "ce_id").or_else(|| {
                let value: Value = serde_json::from_slice(message.value.as_deref()?).ok()?;
                value
                    .get("data")
                    .and_then(|d| d.get("event_id"))
                    .or_else(|| value.get("event_id"))
                    .or_else(|| value.get("id"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
            Ok(Decoded::DeadLetter(Box::new(DecodedDeadLetter {
                event_id,
                error_class,
                error_message,
                source,
                key: message
                    .key
                    .as_deref()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
            })))
        }
    }
}

/// Whether a status is final (the run ended).
pub(crate) fn is_final(status: RunStatus) -> bool {
    status != RunStatus::Running
}

/// Whether a hold status is final (the hold ended).
pub(crate) fn hold_is_final(status: HoldStatus) -> bool {
    status != HoldStatus::Waiting
}

/// Whether a guard status is final (the guard ended).
pub(crate) fn guard_is_final(status: GuardStatus) -> bool {
    status != GuardStatus::Watching
}

/// The name of an abort scope as stored.
pub(crate) fn scope_name(scope: AbortScope) -> &'static str {
    match scope {
        AbortScope::Run => "run",
        AbortScope::PipelineExecution => "pipeline_execution",
        AbortScope::All => "all",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::run_record::run_record_example;

    fn run_event(data: Value) -> CloudEvent {
        CloudEvent {
            id: "r".into(),
            source: "/chaosgate".into(),
            event_type: RUN_RECORD_TYPE.into(),
            time: None,
            subject: None,
            extensions: Default::default(),
            data,
        }
    }

    #[test]
    fn a_run_record_decodes_in_both_modes_with_its_trace_id() {
        let record = run_record_example();
        let event = run_event(serde_json::to_value(&record).unwrap());
        let mut binary = event.to_binary(Some("k"));
        binary.headers.push((
            "traceparent".into(),
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec(),
        ));
        for message in [binary, event.to_structured(None)] {
            let Decoded::Run(run) = decode(TopicRole::Runs, &message).unwrap() else {
                panic!("not a run");
            };
            assert_eq!(run.record.run_id, record.run_id);
            if message.header("traceparent").is_some() {
                assert_eq!(
                    run.trace_id.as_deref(),
                    Some("4bf92f3577b34da6a3ce929d0e0e4736")
                );
            }
        }
    }

    #[test]
    fn hold_guard_and_approval_records_decode_beside_run_records_and_aborts() {
        use crate::contract::control::approval_request_example;
        use crate::contract::guard_record::guard_record_example;
        use crate::contract::hold_record::hold_record_example;
        let typed = |event_type: &str, data: Value| CloudEvent {
            event_type: event_type.into(),
            ..run_event(data)
        };
        let hold = typed(
            HOLD_RECORD_TYPE,
            serde_json::to_value(hold_record_example()).unwrap(),
        );
        for message in [hold.to_binary(Some("e")), hold.to_structured(None)] {
            let Ok(Decoded::Hold(decoded)) = decode(TopicRole::Runs, &message) else {
                panic!("not a hold");
            };
            assert_eq!(*decoded, hold_record_example());
        }
        let guard = typed(
            GUARD_RECORD_TYPE,
            serde_json::to_value(guard_record_example()).unwrap(),
        );
        assert!(matches!(
            decode(TopicRole::Runs, &guard.to_binary(Some("e"))),
            Ok(Decoded::Guard(g)) if g.guard_id == guard_record_example().guard_id
        ));
        let approval = typed(
            APPROVAL_REQUEST_TYPE,
            serde_json::to_value(approval_request_example()).unwrap(),
        );
        assert!(matches!(
            decode(TopicRole::Control, &approval.to_binary(None)),
            Ok(Decoded::Approval(a, _)) if a.pipeline_execution_id == approval_request_example().pipeline_execution_id
        ));
        // A hold on the control topic, or a hold with a bad field, is a problem named.
        assert!(
            decode(TopicRole::Control, &hold.to_binary(None))
                .unwrap_err()
                .contains(HOLD_RECORD_TYPE)
        );
        let mut bad = serde_json::to_value(hold_record_example()).unwrap();
        bad["status"] = "paused".into();
        let err = decode(
            TopicRole::Runs,
            &typed(HOLD_RECORD_TYPE, bad).to_binary(None),
        )
        .unwrap_err();
        assert!(
            err.contains("hold record data") && err.contains("status"),
            "{err}"
        );
    }

    #[test]
    fn bad_records_name_what_is_wrong() {
        let mut data = serde_json::to_value(run_record_example()).unwrap();
        data["attempt"] = "two".into();
        let err = decode(TopicRole::Runs, &run_event(data).to_binary(None)).unwrap_err();
        assert!(err.contains("attempt"), "{err}");

        let mut event = run_event(serde_json::to_value(run_record_example()).unwrap());
        event.event_type = "dev.chaosgate.experiment.run.v2".into();
        let err = decode(TopicRole::Runs, &event.to_binary(None)).unwrap_err();
        assert!(err.contains("run.v2"), "{err}");

        let garbage = KafkaMessage {
            key: None,
            value: Some(vec![0xff, 0x00]),
            headers: vec![],
        };
        assert!(decode(TopicRole::Commands, &garbage).is_err());
        assert!(
            decode(TopicRole::DeadLetters, &garbage)
                .unwrap_err()
                .contains(HEADER_ERROR_CLASS)
        );
    }
}
