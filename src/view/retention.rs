//! Retention: executions older than `[view] retention` leave the store, in the
//! background, a bounded chunk per transaction so ingest never waits long.
//!
//! Rule: an execution goes as a whole (its runs, its command and the command's steps, its
//! trigger change, its holds, guards and approval requests), judged by its last activity
//! (the command's time, else its start), never while a hold of it still waits;
//! rows that belong to no execution (ungated changes and their commands, aborts, dead
//! letters, ingest problems) go by their own time. The topics stay the source of truth:
//! `--rebuild` reads back whatever Kafka still holds.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};
use tokio_util::sync::CancellationToken;

use crate::view::store::{SqliteContext, Store, ViewError, to_millis};

/// Executions removed per transaction.
const CHUNK: i64 = 500;

/// What one pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Removed {
    /// Executions (with their runs, command and trigger change).
    pub(crate) executions: u64,
    /// Runs.
    pub(crate) runs: u64,
    /// Other rows: commands and changes outside executions, aborts, dead letters,
    /// problems.
    pub(crate) other: u64,
}

/// Removes everything older than `cutoff` (see the module rule), in chunks.
pub(crate) fn remove_older(
    c: &mut Connection,
    cutoff: DateTime<Utc>,
) -> Result<Removed, ViewError> {
    let cutoff = to_millis(cutoff);
    let mut removed = Removed::default();
    loop {
        let tx = c.transaction().what("begin retention")?;
        let executions: Vec<(String, String, Option<String>)> = {
            let mut statement = tx
                .prepare_cached(
                    "SELECT pipeline_execution_id, trigger_event_id, command_id FROM executions \
                     WHERE started_at < ?1 AND IFNULL(ended_at, started_at) < ?1 \
                     AND waiting IS NULL LIMIT ?2",
                )
                .what("prepare retention")?;
            let rows = statement
                .query_map(params![cutoff, CHUNK], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .what("find old executions")?;
            rows.collect::<Result<Vec<_>, _>>()
                .what("find old executions")?
        };
        if executions.is_empty() {
            tx.commit().what("commit retention")?;
            break;
        }
        for (execution, event_id, command_id) in &executions {
            removed.runs += tx
                .prepare_cached("DELETE FROM runs WHERE pipeline_execution_id = ?")
                .and_then(|mut s| s.execute([execution]))
                .what("remove runs")? as u64;
            if let Some(command_id) = command_id {
                tx.prepare_cached("DELETE FROM command_steps WHERE command_id = ?")
                    .and_then(|mut s| s.execute([command_id]))
                    .what("remove command steps")?;
                tx.prepare_cached("DELETE FROM commands WHERE command_id = ?")
                    .and_then(|mut s| s.execute([command_id]))
                    .what("remove commands")?;
            }
            tx.prepare_cached("DELETE FROM changes WHERE event_id = ?")
                .and_then(|mut s| s.execute([event_id]))
                .what("remove changes")?;
            for sql in [
                "DELETE FROM holds WHERE pipeline_execution_id = ?",
                "DELETE FROM guards WHERE pipeline_execution_id = ?",
                "DELETE FROM approvals WHERE pipeline_execution_id = ?",
            ] {
                removed.other += tx
                    .prepare_cached(sql)
                    .and_then(|mut s| s.execute([execution]))
                    .what("remove holds and guards")? as u64;
            }
            tx.prepare_cached("DELETE FROM executions WHERE pipeline_execution_id = ?")
                .and_then(|mut s| s.execute([execution]))
                .what("remove executions")?;
        }
        removed.executions += executions.len() as u64;
        tx.commit().what("commit retention")?;
    }
    let tx = c.transaction().what("begin retention")?;
    for sql in [
        "DELETE FROM commands WHERE issued_at < ?1 AND (pipeline_execution_id IS NULL \
         OR pipeline_execution_id NOT IN (SELECT pipeline_execution_id FROM executions))",
        "DELETE FROM command_steps WHERE issued_at < ?1 AND command_id NOT IN \
         (SELECT command_id FROM commands)",
        "DELETE FROM changes WHERE occurred_at < ?1 AND event_id NOT IN \
         (SELECT trigger_event_id FROM executions)",
        "DELETE FROM aborts WHERE at < ?1",
        "DELETE FROM approvals WHERE at < ?1 AND pipeline_execution_id NOT IN \
         (SELECT pipeline_execution_id FROM executions)",
        "DELETE FROM dead_letters WHERE at < ?1",
        "DELETE FROM problems WHERE at < ?1",
    ] {
        removed.other += tx.execute(sql, [cutoff]).what("remove old rows")? as u64;
    }
    tx.commit().what("commit retention")?;
    Ok(removed)
}

/// Runs [`remove_older`] with `now - retention` at start and then every `every`, until
/// `stop`; failures are logged and tried again next time.
pub async fn run(store: Store, retention: Duration, every: Duration, stop: CancellationToken) {
    loop {
        let cutoff =
            Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        match store.write(move |c| remove_older(c, cutoff)).await {
            Ok(removed) if removed != Removed::default() => tracing::info!(
                executions = removed.executions,
                runs = removed.runs,
                other = removed.other,
                "view retention removed old rows"
            ),
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "view retention failed; trying again later"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
