//! What the worker writes: run records, flag commands and dead letters, each as the
//! Kafka record the contract describes (binary-mode CloudEvents; dead letters keep the
//! original bytes).
//!
//! Each output carries the W3C `traceparent` (and `tracestate`) of a `send <topic>` span,
//! a child of the current span: build outputs inside the flag-change's `process` span
//! (or, for a [`RunUpdate`], inside its run's span, which [`run_update`] enters).

use chrono::Utc;

use crate::config::Topics;
use crate::contract::dead_letter::{
    HEADER_ERROR_CLASS, HEADER_ERROR_MESSAGE, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TOPIC,
};
use crate::contract::flag_change::BadFlagChange;
use crate::contract::flag_command::FLAG_COMMAND_TYPE;
use crate::contract::run_record::RUN_RECORD_TYPE;
use crate::contract::{CloudEvent, FlagCommand, KafkaMessage, RunRecord};
use crate::gate::executor::RunUpdate;
use crate::telemetry::traces;

/// CloudEvents `source` of everything chaosgate writes.
pub const SOURCE: &str = "/chaosgate";

/// A record to produce: topic and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Destination topic.
    pub topic: String,
    /// Key, value and headers.
    pub message: KafkaMessage,
}

/// A run record, keyed by `run_id`. Its CloudEvent id differs per status, so the
/// `running` and the final record of one run are two events.
pub fn run_record(topics: &Topics, record: &RunRecord) -> Output {
    let event = CloudEvent {
        id: format!("{}/{}", record.run_id, record.status.as_str()),
        source: SOURCE.to_string(),
        event_type: RUN_RECORD_TYPE.to_string(),
        time: Some(record.ended_at.unwrap_or(record.started_at)),
        subject: Some(record.run_id.clone()),
        extensions: Default::default(),
        data: serde_json::Value::Null,
    };
    let data = serde_json::to_vec(record).unwrap_or_default();
    let mut message = event.to_binary_with_data(data, Some(&record.run_id));
    traces::inject_send(&topics.runs, &mut message.headers);
    Output {
        topic: topics.runs.clone(),
        message,
    }
}

/// A run record published as it happens, in its run's trace.
pub fn run_update(topics: &Topics, update: &RunUpdate) -> Output {
    let _run = update.span.enter();
    run_record(topics, &update.record)
}

/// A flag command, keyed by the flag.
pub fn flag_command(topics: &Topics, command: &FlagCommand) -> Output {
    let key = format!(
        "{}/{}/{}",
        command.project, command.environment, command.flag
    );
    let event = CloudEvent {
        id: command.command_id.clone(),
        source: SOURCE.to_string(),
        event_type: FLAG_COMMAND_TYPE.to_string(),
        time: Some(command.issued_at),
        subject: Some(key.clone()),
        extensions: Default::default(),
        data: serde_json::Value::Null,
    };
    let data = serde_json::to_vec(command).unwrap_or_default();
    let mut message = event.to_binary_with_data(data, Some(&key));
    traces::inject_send(&topics.commands, &mut message.headers);
    Output {
        topic: topics.commands.clone(),
        message,
    }
}

/// Where a consumed record came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// The original record, byte for byte, plus headers naming the error and its source;
/// its `traceparent` (if any) is replaced by the one of the dead letter's `send` span,
/// which continues the original's trace.
pub fn dead_letter(
    topics: &Topics,
    original: &KafkaMessage,
    bad: &BadFlagChange,
    source: &Source,
) -> Output {
    let mut message = original.clone();
    let message_text: String = bad.message.chars().take(2000).collect();
    message.headers.extend([
        (
            HEADER_ERROR_CLASS.to_string(),
            bad.class.as_str().as_bytes().to_vec(),
        ),
        (HEADER_ERROR_MESSAGE.to_string(), message_text.into_bytes()),
        (
            HEADER_SOURCE_TOPIC.to_string(),
            source.topic.clone().into_bytes(),
        ),
        (
            HEADER_SOURCE_PARTITION.to_string(),
            source.partition.to_string().into_bytes(),
        ),
        (
            HEADER_SOURCE_OFFSET.to_string(),
            source.offset.to_string().into_bytes(),
        ),
        (
            "chaosgate_dead_lettered_at".to_string(),
            Utc::now().to_rfc3339().into_bytes(),
        ),
    ]);
    traces::inject_send(&topics.dead_letter, &mut message.headers);
    Output {
        topic: topics.dead_letter.clone(),
        message,
    }
}
