//! One pipeline execution: trigger → stages → steps → runs → command, with the aborts
//! and dead letters that concern it, its holds, its guard and the approval requests
//! naming it; and the latest finished execution of a pipeline
//! (for `chaosgate view check`).
//!
//! Rule: joins go by the ids the contracts carry (`pipeline_execution_id`,
//! `trigger_event_id` = `causation_event_id` = the change's `event_id`), never by time
//! or position; a side that was not read yet (or was removed by retention) is `None`.

use chrono::{DateTime, Utc};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params};

use super::rows::{
    ABORT_COLUMNS, EXECUTION_COLUMNS, abort_row, change, commands_where, dead_letters_of,
    execution_row, execution_summary,
};
use super::runs::select_runs;
use crate::view::model::{ExecutionDetail, ExecutionSummary, StageRuns, StepRuns};
use crate::view::store::{SqliteContext, ViewError, to_millis};

/// Groups runs (in start order) into stages and steps in the order they first ran.
fn stages_of(runs: Vec<crate::view::model::RunRow>) -> Vec<StageRuns> {
    let mut stages: Vec<StageRuns> = Vec::new();
    for run in runs {
        let stage = match stages.iter().position(|s| s.stage_id == run.stage_id) {
            Some(i) => &mut stages[i],
            None => {
                stages.push(StageRuns {
                    stage_id: run.stage_id.clone(),
                    stage_name: run.stage_name.clone(),
                    stage_type: run.stage_type.clone(),
                    steps: Vec::new(),
                });
                let last = stages.len() - 1;
                &mut stages[last]
            }
        };
        match stage.steps.iter().position(|s| s.step_id == run.step_id) {
            Some(i) => stage.steps[i].runs.push(run),
            None => stage.steps.push(StepRuns {
                step_id: run.step_id.clone(),
                step_name: run.step_name.clone(),
                runs: vec![run],
            }),
        }
    }
    stages
}

/// One pipeline execution: its trigger, stages → steps → runs in order, its command, and
/// the aborts and dead letters that concern it; `None` when the view has none of it.
pub fn execution(
    c: &Connection,
    pipeline_execution_id: &str,
) -> Result<Option<ExecutionDetail>, ViewError> {
    let Some(execution) = execution_summary(c, pipeline_execution_id)? else {
        return Ok(None);
    };
    let runs = select_runs(
        c,
        "WHERE pipeline_execution_id = ?",
        &[Value::Text(pipeline_execution_id.to_string())],
        "started_at, attempt, run_id",
    )?;
    let run_ids: Vec<String> = runs.iter().map(|r| r.run_id.clone()).collect();
    let trigger = change(c, &execution.trigger_event_id)?;
    let command = match &execution.command_id {
        Some(command_id) => commands_where(
            c,
            "WHERE command_id = ?",
            &[Value::Text(command_id.clone())],
        )?
        .into_iter()
        .next(),
        None => None,
    };
    // Aborts naming the execution or one of its runs, and `all` aborts while it ran.
    let until = execution
        .ended_at
        .map_or(i64::MAX, |t| to_millis(t).saturating_add(1));
    let mut aborts = Vec::new();
    {
        let mut statement = c
            .prepare_cached(&format!(
                "SELECT {ABORT_COLUMNS} FROM aborts WHERE id = ? \
                 UNION SELECT {ABORT_COLUMNS} FROM aborts \
                 WHERE scope = 'all' AND at >= ? AND at < ?"
            ))
            .what("prepare aborts")?;
        let rows = statement
            .query_map(
                params![
                    pipeline_execution_id,
                    to_millis(execution.started_at),
                    until
                ],
                abort_row,
            )
            .what("query aborts")?;
        aborts.extend(rows.collect::<Result<Vec<_>, _>>().what("read aborts")?);
        let mut statement = c
            .prepare_cached(&format!(
                "SELECT {ABORT_COLUMNS} FROM aborts WHERE id = ? AND scope = 'run'"
            ))
            .what("prepare run aborts")?;
        for run_id in &run_ids {
            let rows = statement
                .query_map([run_id], abort_row)
                .what("query run aborts")?;
            aborts.extend(rows.collect::<Result<Vec<_>, _>>().what("read aborts")?);
        }
    }
    aborts.sort_by_key(|a| a.at);
    let dead_letters = dead_letters_of(c, &execution.trigger_event_id)?;
    Ok(Some(ExecutionDetail {
        execution,
        trigger,
        stages: stages_of(runs),
        command,
        aborts,
        dead_letters,
        holds: super::holds::holds_of(c, pipeline_execution_id)?,
        guards: super::holds::guards_of(c, pipeline_execution_id)?,
        approvals: super::holds::approvals_of(c, pipeline_execution_id)?,
    }))
}

/// The newest finished execution (one with a command) of `pipeline_id` started at or
/// after `since`, for `chaosgate view check`; executions still running are not counted.
pub fn latest_execution(
    c: &Connection,
    pipeline_id: &str,
    since: Option<DateTime<Utc>>,
) -> Result<Option<ExecutionSummary>, ViewError> {
    let since = since.map_or(i64::MIN, to_millis);
    c.prepare_cached(&format!(
        "SELECT {EXECUTION_COLUMNS} FROM executions WHERE pipeline_id = ? AND started_at >= ? \
         AND status != 'running' ORDER BY started_at DESC LIMIT 1"
    ))
    .what("prepare the latest execution")?
    .query_row(params![pipeline_id, since], execution_row)
    .optional()
    .what("read the latest execution")
}
