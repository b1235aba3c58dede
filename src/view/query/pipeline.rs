//! A pipeline's trends: per step, score − expected across its latest final runs, the
//! pass rate, the steps closest to their threshold, and its latest executions.
//!
//! Rule: a trend covers a bounded number of runs ([`TREND_RUNS`]), newest first from the
//! pipeline index, so its time does not grow with the history stored.

use rusqlite::{Connection, params};

use super::rows::executions_of;
use crate::contract::RunStatus;
use crate::view::model::{MarginPoint, PipelineSummary, StepTrend};
use crate::view::store::{SqliteContext, ViewError, from_millis};

/// Final runs per pipeline a trend covers.
pub const TREND_RUNS: usize = 2_000;

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
        waiting: super::waiting(c, Some(pipeline_id))?,
    })
}
