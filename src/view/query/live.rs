//! Live changes: the rows changed after a sequence number, what a live page applies
//! over server-sent events.
//!
//! Rule: every stored row carries the sequence number of its last change, so the events
//! after `seq` are exactly what a page that saw `seq` has not applied.

use rusqlite::{Connection, params};

use super::runs::{RUN_COLUMNS, run_row};
use crate::view::model::{ChangeEvent, ChangeKindRow};
use crate::view::store::{SqliteContext, ViewError};

/// Rows changed after sequence number `seq`, oldest first, at most `limit`: what a live
/// page applies (SSE, with `seq` as the event id, so a reconnect with `Last-Event-ID`
/// resumes). Only a row's last change is kept, under its latest `seq`.
pub fn changes_since(
    c: &Connection,
    seq: i64,
    limit: usize,
) -> Result<Vec<ChangeEvent>, ViewError> {
    let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
    let mut events = Vec::new();
    {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE seq > ? ORDER BY seq LIMIT ?");
        let mut statement = c.prepare_cached(&sql).what("prepare run changes")?;
        let rows = statement
            .query_map(params![seq, limit], run_row)
            .what("query run changes")?;
        for run in rows {
            let run = run.what("read a run change")?;
            events.push(ChangeEvent {
                seq: run.seq,
                kind: ChangeKindRow::Run,
                id: run.run_id.clone(),
                pipeline_execution_id: Some(run.pipeline_execution_id.clone()),
                pipeline_id: None,
                run: Some(run),
            });
        }
    }
    let others: [(&str, ChangeKindRow); 8] = [
        (
            "SELECT seq, command_id, pipeline_execution_id, NULL FROM commands WHERE seq > ?1 \
             ORDER BY seq LIMIT ?2",
            ChangeKindRow::Command,
        ),
        (
            "SELECT seq, event_id, NULL, NULL FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            ChangeKindRow::FlagChange,
        ),
        (
            "SELECT seq, topic || '/' || partition || '/' || \"offset\", \
             CASE WHEN scope = 'pipeline_execution' THEN id END, NULL FROM aborts WHERE seq > ?1 \
             ORDER BY seq LIMIT ?2",
            ChangeKindRow::Abort,
        ),
        (
            "SELECT seq, topic || '/' || partition || '/' || \"offset\", NULL, NULL FROM dead_letters \
             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            ChangeKindRow::DeadLetter,
        ),
        (
            "SELECT seq, topic || '/' || partition || '/' || \"offset\", NULL, NULL FROM problems \
             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            ChangeKindRow::Problem,
        ),
        (
            "SELECT seq, hold_id, pipeline_execution_id, pipeline_id FROM holds WHERE seq > ?1 \
             ORDER BY seq LIMIT ?2",
            ChangeKindRow::Hold,
        ),
        (
            "SELECT seq, guard_id, pipeline_execution_id, pipeline_id FROM guards WHERE seq > ?1 \
             ORDER BY seq LIMIT ?2",
            ChangeKindRow::Guard,
        ),
        (
            "SELECT seq, topic || '/' || partition || '/' || \"offset\", pipeline_execution_id, \
             NULL FROM approvals WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            ChangeKindRow::Approval,
        ),
    ];
    for (sql, kind) in others {
        let mut statement = c.prepare_cached(sql).what("prepare changes")?;
        let rows = statement
            .query_map(params![seq, limit], |row| {
                Ok(ChangeEvent {
                    seq: row.get(0)?,
                    kind,
                    id: row.get(1)?,
                    pipeline_execution_id: row.get(2)?,
                    pipeline_id: row.get(3)?,
                    run: None,
                })
            })
            .what("query changes")?;
        events.extend(rows.collect::<Result<Vec<_>, _>>().what("read changes")?);
    }
    events.sort_by_key(|e| e.seq);
    events.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(events)
}
