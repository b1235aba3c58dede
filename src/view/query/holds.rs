//! Holds, guards and approval requests: those of one execution (its page), the holds
//! still waiting and the guards still watching (the overview's "waiting now", a
//! pipeline's page).
//!
//! Rule: as every query, through an index and bounded: an execution's rows by
//! `pipeline_execution_id`, what waits or watches by the partial indexes on unfinished
//! rows (`holds_waiting`, `guards_watching`), at most [`WAITING_LIMIT`] rows.

use rusqlite::types::Value;
use rusqlite::{Connection, Row, params_from_iter};

use super::rows::commands_where;
use super::runs::position_at;
use crate::view::model::{ApprovalRow, GuardRow, HoldRow};
use crate::view::store::{SqliteContext, ViewError, from_millis};

/// At most this many waiting holds or watching guards are listed.
pub const WAITING_LIMIT: usize = 200;

const HOLD_COLUMNS: &str = "hold_id, kind, status, pipeline_id, pipeline_execution_id, \
    stage_id, stage_name, step_id, step_name, project, environment, flag, trigger_event_id, \
    change_kind, since, until, ended_at, reason, window_name, decided_by, decided_at, comment, \
    topic, partition, \"offset\", seq";

fn hold_row(row: &Row<'_>) -> rusqlite::Result<HoldRow> {
    Ok(HoldRow {
        hold_id: row.get(0)?,
        kind: row.get(1)?,
        status: row.get(2)?,
        pipeline_id: row.get(3)?,
        pipeline_execution_id: row.get(4)?,
        stage_id: row.get(5)?,
        stage_name: row.get(6)?,
        step_id: row.get(7)?,
        step_name: row.get(8)?,
        project: row.get(9)?,
        environment: row.get(10)?,
        flag: row.get(11)?,
        trigger_event_id: row.get(12)?,
        change_kind: row.get(13)?,
        since: from_millis(row.get(14)?),
        until: row.get::<_, Option<i64>>(15)?.map(from_millis),
        ended_at: row.get::<_, Option<i64>>(16)?.map(from_millis),
        reason: row.get(17)?,
        window: row.get(18)?,
        decided_by: row.get(19)?,
        decided_at: row.get::<_, Option<i64>>(20)?.map(from_millis),
        comment: row.get(21)?,
        position: position_at(row, 22)?,
        seq: row.get(25)?,
    })
}

const GUARD_COLUMNS: &str = "guard_id, status, pipeline_id, pipeline_execution_id, project, \
    environment, flag, enable_command_id, on_failure, started_at, deadline, ended_at, probes, \
    reason, command_id, topic, partition, \"offset\", seq";

fn guard_row(row: &Row<'_>) -> rusqlite::Result<GuardRow> {
    let probes: String = row.get(12)?;
    Ok(GuardRow {
        guard_id: row.get(0)?,
        status: row.get(1)?,
        pipeline_id: row.get(2)?,
        pipeline_execution_id: row.get(3)?,
        project: row.get(4)?,
        environment: row.get(5)?,
        flag: row.get(6)?,
        enable_command_id: row.get(7)?,
        on_failure: row.get(8)?,
        started_at: from_millis(row.get(9)?),
        deadline: from_millis(row.get(10)?),
        ended_at: row.get::<_, Option<i64>>(11)?.map(from_millis),
        // Written by ingest from the record's own probes: it parses.
        probes: serde_json::from_str(&probes).unwrap_or_default(),
        reason: row.get(13)?,
        command_id: row.get(14)?,
        command: None,
        position: position_at(row, 15)?,
        seq: row.get(18)?,
    })
}

fn approval_row(row: &Row<'_>) -> rusqlite::Result<ApprovalRow> {
    Ok(ApprovalRow {
        decision: row.get(0)?,
        pipeline_execution_id: row.get(1)?,
        step: row.get(2)?,
        requested_by: row.get(3)?,
        comment: row.get(4)?,
        at: from_millis(row.get(5)?),
        position: position_at(row, 6)?,
    })
}

fn select<T>(
    c: &Connection,
    sql: &str,
    args: &[Value],
    read: fn(&Row<'_>) -> rusqlite::Result<T>,
    what: &str,
) -> Result<Vec<T>, ViewError> {
    let mut statement = c.prepare_cached(sql).what(what)?;
    let rows = statement
        .query_map(params_from_iter(args.iter()), read)
        .what(what)?;
    rows.collect::<Result<Vec<_>, _>>().what(what)
}

/// The holds of one execution, in the order they began.
pub(crate) fn holds_of(c: &Connection, execution: &str) -> Result<Vec<HoldRow>, ViewError> {
    select(
        c,
        &format!(
            "SELECT {HOLD_COLUMNS} FROM holds WHERE pipeline_execution_id = ? ORDER BY since, hold_id"
        ),
        &[Value::Text(execution.to_string())],
        hold_row,
        "read an execution's holds",
    )
}

/// The guards of one execution, in the order they started, each with the command it
/// issued.
pub(crate) fn guards_of(c: &Connection, execution: &str) -> Result<Vec<GuardRow>, ViewError> {
    let mut guards = select(
        c,
        &format!(
            "SELECT {GUARD_COLUMNS} FROM guards WHERE pipeline_execution_id = ? \
             ORDER BY started_at, guard_id"
        ),
        &[Value::Text(execution.to_string())],
        guard_row,
        "read an execution's guards",
    )?;
    for guard in &mut guards {
        if let Some(id) = &guard.command_id {
            guard.command = commands_where(c, "WHERE command_id = ?", &[Value::Text(id.clone())])?
                .into_iter()
                .next();
        }
    }
    Ok(guards)
}

/// The approve and reject requests naming one execution, in the order they were sent.
pub(crate) fn approvals_of(c: &Connection, execution: &str) -> Result<Vec<ApprovalRow>, ViewError> {
    select(
        c,
        "SELECT decision, pipeline_execution_id, step, requested_by, comment, at, topic, \
         partition, \"offset\" FROM approvals WHERE pipeline_execution_id = ? ORDER BY at, \"offset\"",
        &[Value::Text(execution.to_string())],
        approval_row,
        "read an execution's approval requests",
    )
}

/// Holds still waiting, oldest first (of `pipeline_id` when given), at most
/// [`WAITING_LIMIT`].
pub fn waiting(c: &Connection, pipeline_id: Option<&str>) -> Result<Vec<HoldRow>, ViewError> {
    let (filter, args) = match pipeline_id {
        Some(p) => ("AND pipeline_id = ?", vec![Value::Text(p.to_string())]),
        None => ("", Vec::new()),
    };
    // The newest waiting rows by the partial index, then oldest first for the page.
    let mut rows = select(
        c,
        &format!(
            "SELECT {HOLD_COLUMNS} FROM holds WHERE is_final = 0 {filter} \
             ORDER BY since DESC LIMIT {WAITING_LIMIT}"
        ),
        &args,
        hold_row,
        "read waiting holds",
    )?;
    rows.reverse();
    Ok(rows)
}

/// Guards still watching, soonest deadline first, at most [`WAITING_LIMIT`].
pub fn watching(c: &Connection) -> Result<Vec<GuardRow>, ViewError> {
    select(
        c,
        &format!(
            "SELECT {GUARD_COLUMNS} FROM guards WHERE is_final = 0 \
             ORDER BY deadline LIMIT {WAITING_LIMIT}"
        ),
        &[],
        guard_row,
        "read watching guards",
    )
}
