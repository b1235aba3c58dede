//! What the worker writes: run, hold and guard records, flag commands, approved flagd
//! definitions, flag-state records and dead letters, each as the Kafka record the contract describes (binary-mode
//! CloudEvents; dead letters keep the original bytes).
//!
//! Each output carries the W3C `traceparent` (and `tracestate`, only when it is not empty)
//! of a `send <topic>` span, a child of the current span: build outputs inside the
//! flag-change's `process` span (or, for a [`RunUpdate`], inside its run's span, which
//! [`run_update`] enters).
//!
//! No output may be larger than the producer accepts: [`cut_to_fit`] cuts a refused
//! record's value (keeping its key and headers, with a header saying so), so one record
//! cannot stall every commit.

use chrono::Utc;

use crate::config::Topics;
use crate::contract::approved_flag::APPROVED_FLAG_TYPE;
use crate::contract::dead_letter::{self, HEADER_VALUE_TRUNCATED};
use crate::contract::flag_change::BadFlagChange;
use crate::contract::flag_command::FLAG_COMMAND_TYPE;
use crate::contract::flag_state::FLAG_STATE_TYPE;
use crate::contract::guard_record::GUARD_RECORD_TYPE;
use crate::contract::hold_record::HOLD_RECORD_TYPE;
use crate::contract::run_record::RUN_RECORD_TYPE;
use crate::contract::{
    ApprovedFlag, CloudEvent, FlagChange, FlagCommand, FlagState, GuardRecord, HoldRecord,
    KafkaMessage, RunRecord,
};
use crate::gate::executor::RunUpdate;
use crate::telemetry::traces::inject_send;

/// CloudEvents `source` of everything chaosgate writes.
pub(crate) const SOURCE: &str = "/chaosgate";

/// A record to produce: topic and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Output {
    /// Destination topic.
    pub(crate) topic: String,
    /// Key, value and headers.
    pub(crate) message: KafkaMessage,
}

/// One of chaosgate's own records: a binary-mode CloudEvent (`source` [`SOURCE`], subject
/// and Kafka key `key`) whose data is `data` as JSON, carrying the `send` span's trace
/// context, bound for `topic`.
fn own_record(
    topic: &str,
    id: String,
    event_type: &str,
    time: chrono::DateTime<Utc>,
    key: &str,
    data: &impl serde::Serialize,
) -> Output {
    let event = CloudEvent {
        id,
        source: SOURCE.to_string(),
        event_type: event_type.to_string(),
        time: Some(time),
        subject: Some(key.to_string()),
        extensions: Default::default(),
        data: serde_json::Value::Null,
    };
    let data = serde_json::to_vec(data).unwrap_or_default();
    let mut message = event.to_binary_with_data(data, Some(key));
    inject_send(topic, &mut message.headers);
    Output {
        topic: topic.to_string(),
        message,
    }
}

/// A run record, keyed by `run_id`. Its CloudEvent id differs per status, so the
/// `running` and the final record of one run are two events.
pub(crate) fn run_record(topics: &Topics, record: &RunRecord) -> Output {
    own_record(
        &topics.runs,
        format!("{}/{}", record.run_id, record.status.as_str()),
        RUN_RECORD_TYPE,
        record.ended_at.unwrap_or(record.started_at),
        &record.run_id,
        record,
    )
}

/// A hold record, keyed by its execution id (with the execution's run records). Its
/// CloudEvent id differs per status.
pub(crate) fn hold_record(topics: &Topics, record: &HoldRecord) -> Output {
    crate::telemetry::metrics::hold(record.kind.as_str(), record.status.as_str());
    own_record(
        &topics.runs,
        format!("{}/{}", record.hold_id, record.status.as_str()),
        HOLD_RECORD_TYPE,
        record.ended_at.unwrap_or(record.since),
        &record.pipeline_execution_id,
        record,
    )
}

/// A guard record, keyed by the execution id of the `enable` it guards. Its CloudEvent id
/// differs per status.
pub(crate) fn guard_record(topics: &Topics, record: &GuardRecord) -> Output {
    crate::telemetry::metrics::guard(record.status.as_str());
    own_record(
        &topics.runs,
        format!("{}/{}", record.guard_id, record.status.as_str()),
        GUARD_RECORD_TYPE,
        record.ended_at.unwrap_or(record.started_at),
        &record.pipeline_execution_id,
        record,
    )
}

/// A flag-state record, keyed by the flag (the topic is compacted: the newest record of a
/// key is what the flag is owed).
pub(crate) fn flag_state(topics: &Topics, state: &FlagState) -> Output {
    own_record(
        &topics.flag_state,
        uuid::Uuid::new_v4().to_string(),
        FLAG_STATE_TYPE,
        state.updated_at,
        &state.flag_key(),
        state,
    )
}

/// A run record published as it happens, in its run's trace.
pub(crate) fn run_update(topics: &Topics, update: &RunUpdate) -> Output {
    let _run = update.span.enter();
    run_record(topics, &update.record)
}

/// A flag command, keyed by the flag.
pub(crate) fn flag_command(topics: &Topics, command: &FlagCommand) -> Output {
    let key = format!(
        "{}/{}/{}",
        command.project, command.environment, command.flag
    );
    own_record(
        &topics.commands,
        command.command_id.clone(),
        FLAG_COMMAND_TYPE,
        command.issued_at,
        &key,
        command,
    )
}

/// The records that answer `change`: its flag command, and, when the change's values are
/// flagd definitions, the definition the command approves (same transaction, same
/// trace; [`crate::flagd::approval`]).
pub(crate) fn answer(topics: &Topics, change: &FlagChange, command: &FlagCommand) -> Vec<Output> {
    let mut outputs = vec![flag_command(topics, command)];
    if let Some(approved) = crate::flagd::approval::approved(change, command) {
        outputs.push(approved_flag(topics, &approved));
    }
    outputs
}

/// An approved flagd definition, keyed by the flag (the topic is compacted: the newest
/// record of a key is the flag's approved definition). Its CloudEvent id is the command's.
pub(crate) fn approved_flag(topics: &Topics, approved: &ApprovedFlag) -> Output {
    own_record(
        &topics.approved_flags,
        approved.command_id.clone(),
        APPROVED_FLAG_TYPE,
        approved.approved_at,
        &approved.flag_key(),
        approved,
    )
}

/// Where a consumed record came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Source {
    /// Topic.
    pub(crate) topic: String,
    /// Partition.
    pub(crate) partition: i32,
    /// Offset.
    pub(crate) offset: i64,
}

/// The original record, byte for byte, plus headers naming the error and its source;
/// its `traceparent` (if any) is replaced by the one of the dead letter's `send` span,
/// which continues the original's trace.
pub(crate) fn dead_letter(
    topics: &Topics,
    original: &KafkaMessage,
    bad: &BadFlagChange,
    source: &Source,
) -> Output {
    let mut message = original.clone();
    message.headers.extend(dead_letter::headers(
        bad.class,
        &bad.message,
        &source.topic,
        source.partition,
        source.offset,
        Utc::now(),
    ));
    inject_send(&topics.dead_letter, &mut message.headers);
    Output {
        topic: topics.dead_letter.clone(),
        message,
    }
}

/// Bytes librdkafka counts for a record beyond its key, value and header bytes, with
/// room to spare (record framing and a header's name/length fields).
const RECORD_OVERHEAD: usize = 512;

/// The bytes a record counts against a size limit, with room to spare: key, value,
/// headers and framing.
pub(crate) fn record_size(message: &KafkaMessage) -> usize {
    message.key.as_ref().map_or(0, Vec::len)
        + message.value.as_ref().map_or(0, Vec::len)
        + message
            .headers
            .iter()
            .map(|(name, value)| name.len() + value.len() + 16)
            .sum::<usize>()
        + RECORD_OVERHEAD
}

/// `output` with its value cut so the whole record fits in `max_bytes`, and a
/// [`HEADER_VALUE_TRUNCATED`] header giving the original value's length (kept from an
/// earlier cut). `None` when cutting the value cannot bring it under `max_bytes` (it is
/// small already, or the key and headers alone are too large).
pub(crate) fn cut_to_fit(output: &Output, max_bytes: usize) -> Option<Output> {
    let value_len = output.message.value.as_ref().map_or(0, Vec::len);
    let original = output
        .message
        .headers
        .iter()
        .find(|(name, _)| name == HEADER_VALUE_TRUNCATED)
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<usize>().ok())
        .unwrap_or(value_len);
    let mut message = output.message.clone();
    message
        .headers
        .retain(|(name, _)| name != HEADER_VALUE_TRUNCATED);
    message.headers.push((
        HEADER_VALUE_TRUNCATED.to_string(),
        original.to_string().into_bytes(),
    ));
    let fixed = record_size(&message) - value_len;
    let room = max_bytes.checked_sub(fixed)?;
    if room >= value_len {
        return None;
    }
    if let Some(value) = &mut message.value {
        value.truncate(room);
    }
    Some(Output {
        topic: output.topic.clone(),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::dead_letter::{HEADER_ERROR_CLASS, HEADER_ERROR_MESSAGE};

    fn big(len: usize) -> Output {
        Output {
            topic: "flag-changes-dlq".into(),
            message: KafkaMessage {
                key: Some(b"p/e/f".to_vec()),
                value: Some(vec![b'x'; len]),
                headers: vec![
                    (HEADER_ERROR_CLASS.into(), b"undecodable".to_vec()),
                    (HEADER_ERROR_MESSAGE.into(), b"not JSON".to_vec()),
                ],
            },
        }
    }

    #[test]
    fn a_record_cut_to_fit_keeps_key_and_headers_and_says_so() {
        let cut = cut_to_fit(&big(1_100_000), 1_000_000).expect("fits once cut");
        let value = cut.message.value.as_ref().expect("value");
        let size = value.len()
            + cut.message.key.as_ref().map_or(0, Vec::len)
            + cut
                .message
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum::<usize>();
        assert!(size < 1_000_000, "{size}");
        assert!(value.len() > 990_000, "{}", value.len());
        assert_eq!(cut.message.key.as_deref(), Some(&b"p/e/f"[..]));
        assert!(
            cut.message
                .headers
                .contains(&(HEADER_VALUE_TRUNCATED.to_string(), b"1100000".to_vec()))
        );
        assert!(
            cut.message
                .headers
                .iter()
                .any(|(n, v)| n == HEADER_ERROR_CLASS && v == b"undecodable")
        );
        assert_eq!(cut_to_fit(&cut, 1_000_000), None, "it fits already");
        let again = cut_to_fit(&cut, 100_000).expect("a smaller limit (the broker's)");
        assert!(record_size(&again.message) <= 100_000);
        assert!(
            again
                .message
                .headers
                .contains(&(HEADER_VALUE_TRUNCATED.to_string(), b"1100000".to_vec()))
        );
    }

    #[test]
    fn outputs_carry_no_empty_tracestate() {
        let mut headers = vec![("tracestate".to_string(), Vec::new())];
        inject_send("t", &mut headers);
        assert!(
            !headers
                .iter()
                .any(|(n, v)| n == "tracestate" && v.is_empty()),
            "{headers:?}"
        );
    }
}
