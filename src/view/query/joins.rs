//! The joined pages: an execution (trigger → stages → steps → runs → command), a flag's
//! ledger, a pipeline's trends, the overview, ingest problems and live changes.
//!
//! Rule: joins go by the ids the contracts carry (`pipeline_execution_id`,
//! `trigger_event_id` = `causation_event_id` = the change's `event_id`), never by time
//! or position; a side that was not read yet (or was removed by retention) is `None`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};

use super::runs::{RUN_COLUMNS, position_at, run_row, select_runs};
use crate::contract::{RunStatus, StepSummary};
use crate::view::audit::AuditSettings;
use crate::view::model::{
    AbortRow, AttentionRow, ChangeEvent, ChangeKindRow, ChangeRow, CommandRow, DeadLetterRow,
    ExecutionDetail, ExecutionStatus, ExecutionSummary, FlagLedger, IngestProblem, KafkaPosition,
    LedgerEntry, MarginPoint, Overview, Page, PipelineStrip, PipelineSummary, StageRuns,
    StatusCounts, StepRuns, StepTrend,
};
use crate::view::store::{SqliteContext, ViewError, from_millis, to_millis};

/// Changes shown on a flag ledger, newest first.
pub const LEDGER_LIMIT: usize = 100;
/// Final runs per pipeline a trend covers.
pub const TREND_RUNS: usize = 2_000;
/// Executions per pipeline strip on the overview.
const STRIP: usize = 10;
/// Rows of "needs attention", newest first.
const ATTENTION_LIMIT: usize = 100;
/// Problems per page.
const PROBLEMS_PAGE: usize = 100;

const EXECUTION_COLUMNS: &str = "pipeline_execution_id, pipeline_id, trigger_event_id, project, \
    environment, flag, status, started_at, ended_at, command_id";

fn execution_row(row: &Row<'_>) -> rusqlite::Result<ExecutionSummary> {
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
    })
}

const COMMAND_COLUMNS: &str = "command_id, command, reason, reason_code, dry_run, issued_at, \
    pipeline_id, pipeline_execution_id, causation_event_id, project, environment, flag, steps, \
    topic, partition, \"offset\", seq";

fn command_row(row: &Row<'_>) -> rusqlite::Result<(CommandRow, String)> {
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

fn commands_where(
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

const CHANGE_COLUMNS: &str = "event_id, project, environment, flag, kind, from_value, to_value, \
    actor, pipeline_id, occurred_at, topic, partition, \"offset\", seq";

fn json_column(text: Option<String>) -> Option<serde_json::Value> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

fn change_row(row: &Row<'_>) -> rusqlite::Result<ChangeRow> {
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

fn change(c: &Connection, event_id: &str) -> Result<Option<ChangeRow>, ViewError> {
    c.prepare_cached(&format!(
        "SELECT {CHANGE_COLUMNS} FROM changes WHERE event_id = ?"
    ))
    .what("prepare the change")?
    .query_row([event_id], change_row)
    .optional()
    .what("read the change")
}

const ABORT_COLUMNS: &str =
    "scope, id, reason, requested_by, at, topic, partition, \"offset\", seq";

fn abort_row(row: &Row<'_>) -> rusqlite::Result<AbortRow> {
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

const DEAD_LETTER_COLUMNS: &str = "event_id, error_class, error_message, source_topic, \
    source_partition, source_offset, key, at, topic, partition, \"offset\", seq";

fn dead_letter_row(row: &Row<'_>) -> rusqlite::Result<DeadLetterRow> {
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

fn dead_letters_of(c: &Connection, event_id: &str) -> Result<Vec<DeadLetterRow>, ViewError> {
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

fn execution_summary(
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
    let command = commands_where(
        c,
        "WHERE pipeline_execution_id = ?",
        &[Value::Text(pipeline_execution_id.to_string())],
    )?
    .into_iter()
    .next();
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
    }))
}

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
            dead_letters: Vec::new(),
        });
    }
    for command in commands {
        match by_event.get(&command.causation_event_id) {
            Some(&i) => entries[i].command = Some(command),
            None => {
                by_event.insert(command.causation_event_id.clone(), entries.len());
                order.push((command.issued_at, entries.len()));
                entries.push(LedgerEntry {
                    event_id: command.causation_event_id.clone(),
                    change: None,
                    runs: Vec::new(),
                    command: Some(command),
                    dead_letters: Vec::new(),
                });
            }
        }
    }
    for entry in &mut entries {
        entry.runs = select_runs(
            c,
            "WHERE trigger_event_id = ?",
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

fn executions_of(
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

/// A pipeline's per-step margin trends over its last [`TREND_RUNS`] final runs, the
/// steps closest to their threshold, and its last 20 executions.
pub fn pipeline(c: &Connection, pipeline_id: &str) -> Result<PipelineSummary, ViewError> {
    let mut statement = c
        .prepare_cached(
            "SELECT stage_id, step_id, step_name, pipeline_execution_id, run_id, started_at, \
             margin, status FROM runs WHERE pipeline_id = ? AND status != 'running' \
             ORDER BY started_at DESC, run_id DESC LIMIT ?",
        )
        .what("prepare the trend")?;
    let rows = statement
        .query_map(
            params![pipeline_id, i64::try_from(TREND_RUNS).unwrap_or(i64::MAX)],
            |row| {
                let status: String = row.get(7)?;
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    MarginPoint {
                        pipeline_execution_id: row.get(3)?,
                        run_id: row.get(4)?,
                        started_at: from_millis(row.get(5)?),
                        margin: row.get(6)?,
                        status: super::parse_status(&status),
                    },
                ))
            },
        )
        .what("query the trend")?
        .collect::<Result<Vec<_>, _>>()
        .what("read the trend")?;
    let mut steps: Vec<StepTrend> = Vec::new();
    // Oldest first, so steps come in the order they ran and points in time order.
    for (stage_id, step_id, step_name, point) in rows.into_iter().rev() {
        let i = match steps
            .iter()
            .position(|s| s.stage_id == stage_id && s.step_id == step_id)
        {
            Some(i) => i,
            None => {
                steps.push(StepTrend {
                    stage_id,
                    step_id,
                    step_name,
                    points: Vec::new(),
                    runs: 0,
                    passed: 0,
                    pass_rate: None,
                    last_margin: None,
                });
                steps.len() - 1
            }
        };
        let step = &mut steps[i];
        step.runs += 1;
        if point.status == RunStatus::Passed {
            step.passed += 1;
        }
        if point.margin.is_some() {
            step.last_margin = point.margin;
        }
        step.points.push(point);
    }
    for step in &mut steps {
        step.pass_rate = (step.runs > 0).then(|| f64::from(step.passed) / f64::from(step.runs));
    }
    let mut tightest: Vec<(f64, String, String)> = steps
        .iter()
        .filter_map(|s| {
            s.last_margin
                .map(|m| (m, s.stage_id.clone(), s.step_id.clone()))
        })
        .collect();
    tightest.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(PipelineSummary {
        pipeline_id: pipeline_id.to_string(),
        steps,
        tightest: tightest
            .into_iter()
            .take(5)
            .map(|(_, stage, step)| (stage, step))
            .collect(),
        executions: executions_of(c, pipeline_id, 20)?,
    })
}

/// The overview for runs started in `[since, until)`: counts by status, what needs
/// attention (failed, error and aborted runs in the range, and runs `running` past their
/// step's timeout per `settings`, whenever they started), and each pipeline's last 10
/// executions.
pub fn overview(
    c: &Connection,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    settings: &AuditSettings,
) -> Result<Overview, ViewError> {
    let filter = crate::view::model::RunFilter {
        since: Some(since),
        until: Some(until),
        ..Default::default()
    };
    let counts: StatusCounts = super::status_counts(c, &filter)?;
    let now = Utc::now();
    let mut needs_attention = Vec::new();
    for run in crate::view::audit::running_past_timeout(c, now, settings)? {
        needs_attention.push(AttentionRow {
            why: format!(
                "still running {} after it started, past its step's timeout",
                humantime::format_duration(std::time::Duration::from_secs(
                    u64::try_from((now - run.started_at).num_seconds()).unwrap_or(0)
                ))
            ),
            run,
        });
    }
    let bad = select_runs(
        c,
        "WHERE status IN ('failed', 'error', 'aborted') AND started_at >= ? AND started_at < ?",
        &[
            Value::Integer(to_millis(since)),
            Value::Integer(to_millis(until)),
        ],
        &format!("started_at DESC, run_id DESC LIMIT {ATTENTION_LIMIT}"),
    )?;
    for run in bad {
        let why = format!(
            "{}: {}",
            run.status.as_str(),
            run.summary.clone().unwrap_or_default()
        );
        needs_attention.push(AttentionRow { run, why });
    }
    needs_attention.truncate(ATTENTION_LIMIT);
    let pipelines: Vec<String> = {
        let mut statement = c
            .prepare_cached("SELECT DISTINCT pipeline_id FROM executions ORDER BY pipeline_id")
            .what("prepare pipelines")?;
        let rows = statement
            .query_map([], |row| row.get(0))
            .what("query pipelines")?;
        rows.collect::<Result<Vec<_>, _>>().what("read pipelines")?
    };
    let mut strips = Vec::new();
    for pipeline_id in pipelines {
        strips.push(PipelineStrip {
            executions: executions_of(c, &pipeline_id, STRIP)?,
            pipeline_id,
        });
    }
    Ok(Overview {
        since,
        until,
        counts,
        needs_attention,
        pipelines: strips,
    })
}

/// Ingest problems, newest first, [`PROBLEMS_PAGE`] a page; `cursor` is the `next` of the
/// page before (a sequence number).
pub fn problems(c: &Connection, cursor: Option<&str>) -> Result<Page<IngestProblem>, ViewError> {
    let before = match cursor {
        None => i64::MAX,
        Some(text) => text
            .parse::<i64>()
            .map_err(|_| ViewError::BadRequest(format!("cursor '{text}' is not a number")))?,
    };
    let mut statement = c
        .prepare_cached(
            "SELECT topic, partition, \"offset\", reason, at, seq FROM problems \
             WHERE seq < ? ORDER BY seq DESC LIMIT ?",
        )
        .what("prepare problems")?;
    let mut items = statement
        .query_map(
            params![before, i64::try_from(PROBLEMS_PAGE + 1).unwrap_or(i64::MAX)],
            |row| {
                Ok(IngestProblem {
                    position: position_at(row, 0)?,
                    reason: row.get(3)?,
                    at: from_millis(row.get(4)?),
                    seq: row.get(5)?,
                })
            },
        )
        .what("query problems")?
        .collect::<Result<Vec<_>, _>>()
        .what("read problems")?;
    let next = if items.len() > PROBLEMS_PAGE {
        items.truncate(PROBLEMS_PAGE);
        items.last().map(|p| p.seq.to_string())
    } else {
        None
    };
    Ok(Page { items, next })
}

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
                run: Some(run),
            });
        }
    }
    let others: [(&str, ChangeKindRow); 5] = [
        (
            "SELECT seq, command_id, pipeline_execution_id FROM commands WHERE seq > ?1 \
             ORDER BY seq LIMIT ?2",
            ChangeKindRow::Command,
        ),
        (
            "SELECT seq, event_id, NULL FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            ChangeKindRow::FlagChange,
        ),
        (
            "SELECT seq, topic || '/' || partition || '/' || \"offset\", \
             CASE WHEN scope = 'pipeline_execution' THEN id END FROM aborts WHERE seq > ?1 \
             ORDER BY seq LIMIT ?2",
            ChangeKindRow::Abort,
        ),
        (
            "SELECT seq, topic || '/' || partition || '/' || \"offset\", NULL FROM dead_letters \
             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            ChangeKindRow::DeadLetter,
        ),
        (
            "SELECT seq, topic || '/' || partition || '/' || \"offset\", NULL FROM problems \
             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            ChangeKindRow::Problem,
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
