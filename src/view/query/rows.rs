//! Stored rows of executions, commands, changes, aborts and dead letters, read back
//! into [`crate::view::model`]: the column lists and their readers the joined pages share.
//!
//! Rule: each `*_COLUMNS` list and its `*_row` reader name the same columns in the same
//! order; a reader never guesses a missing side (it is `None`).

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};

use super::runs::position_at;
use crate::contract::StepSummary;
use crate::view::model::{
    AbortRow, ChangeRow, CommandRow, DeadLetterRow, ExecutionStatus, ExecutionSummary,
    KafkaPosition,
};
use crate::view::store::{SqliteContext, ViewError, from_millis};

pub(super) const EXECUTION_COLUMNS: &str = "pipeline_execution_id, pipeline_id, trigger_event_id, project, \
    environment, flag, status, started_at, ended_at, command_id, waiting";

pub(super) fn execution_row(row: &Row<'_>) -> rusqlite::Result<ExecutionSummary> {
    let status: String = row.get(6)?;
    Ok(ExecutionSummary {
        pipeline_execution_id: row.get(0)?,
        pipeline_id: row.get(1)?,
        trigger_event_id: row.get(2)?,
        project: row.get(3)?,
        environment: row.get(4)?,
        flag: row.get(5)?,
        status: ExecutionStatus::parse(&status),
        started_at: from_millis(row.get(7)?),
        ended_at: row.get::<_, Option<i64>>(8)?.map(from_millis),
        command_id: row.get(9)?,
        waiting: row.get(10)?,
    })
}

pub(super) const COMMAND_COLUMNS: &str = "command_id, command, reason, reason_code, dry_run, issued_at, \
    pipeline_id, pipeline_execution_id, causation_event_id, project, environment, flag, steps, \
    topic, partition, \"offset\", seq";

pub(super) fn command_row(row: &Row<'_>) -> rusqlite::Result<(CommandRow, String)> {
    let steps: String = row.get(12)?;
    Ok((
        CommandRow {
            command_id: row.get(0)?,
            command: row.get(1)?,
            reason: row.get(2)?,
            reason_code: row.get(3)?,
            dry_run: row.get(4)?,
            issued_at: from_millis(row.get(5)?),
            pipeline_id: row.get(6)?,
            pipeline_execution_id: row.get(7)?,
            causation_event_id: row.get(8)?,
            project: row.get(9)?,
            environment: row.get(10)?,
            flag: row.get(11)?,
            steps: Vec::new(),
            position: position_at(row, 13)?,
            seq: row.get(16)?,
        },
        steps,
    ))
}

pub(super) fn commands_where(
    c: &Connection,
    where_sql: &str,
    params: &[Value],
) -> Result<Vec<CommandRow>, ViewError> {
    let sql = format!("SELECT {COMMAND_COLUMNS} FROM commands {where_sql} ORDER BY issued_at");
    let mut statement = c.prepare_cached(&sql).what("prepare commands")?;
    let rows = statement
        .query_map(params_from_iter(params.iter()), command_row)
        .what("query commands")?
        .collect::<Result<Vec<_>, _>>()
        .what("read commands")?;
    rows.into_iter()
        .map(|(mut command, steps)| {
            command.steps = serde_json::from_str::<Vec<StepSummary>>(&steps).map_err(|e| {
                ViewError::Stored {
                    what: format!("steps of command {}", command.command_id),
                    reason: e.to_string(),
                }
            })?;
            Ok(command)
        })
        .collect()
}

pub(super) const CHANGE_COLUMNS: &str = "event_id, project, environment, flag, kind, from_value, to_value, \
    actor, pipeline_id, occurred_at, topic, partition, \"offset\", seq";

pub(super) fn json_column(text: Option<String>) -> Option<serde_json::Value> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

pub(super) fn change_row(row: &Row<'_>) -> rusqlite::Result<ChangeRow> {
    Ok(ChangeRow {
        event_id: row.get(0)?,
        project: row.get(1)?,
        environment: row.get(2)?,
        flag: row.get(3)?,
        kind: row.get(4)?,
        from: json_column(row.get(5)?),
        to: json_column(row.get(6)?),
        actor: row.get(7)?,
        pipeline_id: row.get(8)?,
        occurred_at: from_millis(row.get(9)?),
        position: position_at(row, 10)?,
        seq: row.get(13)?,
    })
}

pub(super) fn change(c: &Connection, event_id: &str) -> Result<Option<ChangeRow>, ViewError> {
    c.prepare_cached(&format!(
        "SELECT {CHANGE_COLUMNS} FROM changes WHERE event_id = ?"
    ))
    .what("prepare the change")?
    .query_row([event_id], change_row)
    .optional()
    .what("read the change")
}

pub(super) const ABORT_COLUMNS: &str =
    "scope, id, reason, requested_by, at, topic, partition, \"offset\", seq";

pub(super) fn abort_row(row: &Row<'_>) -> rusqlite::Result<AbortRow> {
    Ok(AbortRow {
        scope: row.get(0)?,
        id: row.get(1)?,
        reason: row.get(2)?,
        requested_by: row.get(3)?,
        at: from_millis(row.get(4)?),
        position: position_at(row, 5)?,
        seq: row.get(8)?,
    })
}

pub(super) const DEAD_LETTER_COLUMNS: &str = "event_id, error_class, error_message, source_topic, \
    source_partition, source_offset, key, at, topic, partition, \"offset\", seq";

pub(super) fn dead_letter_row(row: &Row<'_>) -> rusqlite::Result<DeadLetterRow> {
    let source_topic: Option<String> = row.get(3)?;
    let source_partition: Option<i32> = row.get(4)?;
    let source_offset: Option<i64> = row.get(5)?;
    Ok(DeadLetterRow {
        event_id: row.get(0)?,
        error_class: row.get(1)?,
        error_message: row.get(2)?,
        source: match (source_topic, source_partition, source_offset) {
            (Some(topic), Some(partition), Some(offset)) => Some(KafkaPosition {
                topic,
                partition,
                offset,
            }),
            _ => None,
        },
        key: row.get(6)?,
        at: from_millis(row.get(7)?),
        position: position_at(row, 8)?,
        seq: row.get(11)?,
    })
}

pub(super) fn dead_letters_of(
    c: &Connection,
    event_id: &str,
) -> Result<Vec<DeadLetterRow>, ViewError> {
    let mut statement = c
        .prepare_cached(&format!(
            "SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE event_id = ? ORDER BY at"
        ))
        .what("prepare dead letters")?;
    let rows = statement
        .query_map([event_id], dead_letter_row)
        .what("query dead letters")?;
    rows.collect::<Result<Vec<_>, _>>()
        .what("read dead letters")
}

pub(super) fn execution_summary(
    c: &Connection,
    pipeline_execution_id: &str,
) -> Result<Option<ExecutionSummary>, ViewError> {
    c.prepare_cached(&format!(
        "SELECT {EXECUTION_COLUMNS} FROM executions WHERE pipeline_execution_id = ?"
    ))
    .what("prepare the execution")?
    .query_row([pipeline_execution_id], execution_row)
    .optional()
    .what("read the execution")
}

pub(super) fn executions_of(
    c: &Connection,
    pipeline_id: &str,
    limit: usize,
) -> Result<Vec<ExecutionSummary>, ViewError> {
    let mut statement = c
        .prepare_cached(&format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions WHERE pipeline_id = ? \
             ORDER BY started_at DESC LIMIT ?"
        ))
        .what("prepare executions")?;
    let rows = statement
        .query_map(
            params![pipeline_id, i64::try_from(limit).unwrap_or(i64::MAX)],
            execution_row,
        )
        .what("query executions")?;
    rows.collect::<Result<Vec<_>, _>>().what("read executions")
}
