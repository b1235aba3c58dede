//! A flag's ledger: every change of one flag, newest first, each with its runs and its
//! command: the page that answers "why is this flag off?".
//!
//! Rule: entries join by event id (the change's `event_id` = the runs'
//! `trigger_event_id` = the command's `causation_event_id`); a command or runs whose
//! change the view never read still get an entry (without `change`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rusqlite::types::Value;
use rusqlite::{Connection, params};

use super::rows::{CHANGE_COLUMNS, change_row, commands_where, dead_letters_of};
use super::runs::select_runs;
use crate::view::model::{FlagLedger, LedgerEntry};
use crate::view::store::{SqliteContext, ViewError};

/// Changes shown on a flag ledger, newest first.
pub const LEDGER_LIMIT: usize = 100;

/// Every change of one flag (newest first, at most [`LEDGER_LIMIT`]), each with its runs
/// and its command; commands and runs whose change the view never read get an entry of
/// their own (without `change`).
pub fn flag_ledger(
    c: &Connection,
    project: &str,
    environment: &str,
    flag: &str,
) -> Result<FlagLedger, ViewError> {
    let limit = i64::try_from(LEDGER_LIMIT).unwrap_or(i64::MAX);
    let mut statement = c
        .prepare_cached(&format!(
            "SELECT {CHANGE_COLUMNS} FROM changes WHERE project = ? AND environment = ? \
             AND flag = ? ORDER BY occurred_at DESC LIMIT ?"
        ))
        .what("prepare the flag's changes")?;
    let changes = statement
        .query_map(params![project, environment, flag, limit], change_row)
        .what("query the flag's changes")?
        .collect::<Result<Vec<_>, _>>()
        .what("read the flag's changes")?;
    let commands = commands_where(
        c,
        "WHERE command_id IN (SELECT command_id FROM commands WHERE project = ? \
         AND environment = ? AND flag = ? ORDER BY issued_at DESC LIMIT ?)",
        &[
            Value::Text(project.to_string()),
            Value::Text(environment.to_string()),
            Value::Text(flag.to_string()),
            Value::Integer(limit),
        ],
    )?;
    // Entries by event id, newest first: changes, then commands without a change.
    let mut entries: Vec<LedgerEntry> = Vec::new();
    let mut by_event: HashMap<String, usize> = HashMap::new();
    let mut order: Vec<(DateTime<Utc>, usize)> = Vec::new();
    for change in changes {
        by_event.insert(change.event_id.clone(), entries.len());
        order.push((change.occurred_at, entries.len()));
        entries.push(LedgerEntry {
            event_id: change.event_id.clone(),
            change: Some(change),
            runs: Vec::new(),
            command: None,
            guard_command: None,
            dead_letters: Vec::new(),
        });
    }
    for command in commands {
        let i = match by_event.get(&command.causation_event_id) {
            Some(&i) => i,
            None => {
                by_event.insert(command.causation_event_id.clone(), entries.len());
                order.push((command.issued_at, entries.len()));
                entries.push(LedgerEntry {
                    event_id: command.causation_event_id.clone(),
                    change: None,
                    runs: Vec::new(),
                    command: None,
                    guard_command: None,
                    dead_letters: Vec::new(),
                });
                entries.len() - 1
            }
        };
        // A guard's command comes after the change's own (the enable it guarded).
        if command.reason_code == "guard_fired" {
            entries[i].guard_command = Some(command);
        } else {
            entries[i].command = Some(command);
        }
    }
    for entry in &mut entries {
        entry.runs = select_runs(
            c,
            "WHERE pipeline_execution_id IN (SELECT pipeline_execution_id FROM executions \
             WHERE trigger_event_id = ?1) AND trigger_event_id = ?1",
            &[Value::Text(entry.event_id.clone())],
            "started_at, attempt, run_id",
        )?;
        entry.dead_letters = dead_letters_of(c, &entry.event_id)?;
    }
    order.sort_by_key(|entry| std::cmp::Reverse(entry.0));
    let mut slots: Vec<Option<LedgerEntry>> = entries.into_iter().map(Some).collect();
    let entries = order
        .into_iter()
        .filter_map(|(_, i)| slots.get_mut(i).and_then(Option::take))
        .take(LEDGER_LIMIT)
        .collect();
    Ok(FlagLedger {
        project: project.to_string(),
        environment: environment.to_string(),
        flag: flag.to_string(),
        entries,
    })
}
