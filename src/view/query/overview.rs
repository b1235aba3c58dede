//! The overview: counts by status for a time range, what needs attention, what waits
//! (holds) and watches (guards) now, and each pipeline's latest executions as a status
//! strip.
//!
//! Rule: every list is bounded (attention rows, strip length), and runs `running` past
//! their step's timeout come from the audit's own check, so the two never disagree.

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use rusqlite::types::Value;

use super::rows::executions_of;
use super::runs::select_runs;
use crate::view::audit::AuditSettings;
use crate::view::model::{AttentionRow, Overview, PipelineStrip, StatusCounts};
use crate::view::store::{SqliteContext, ViewError, to_millis};

/// Executions per pipeline strip on the overview.
const STRIP: usize = 10;
/// Rows of "needs attention", newest first.
const ATTENTION_LIMIT: usize = 100;

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
        waiting: super::waiting(c, None)?,
        watching: super::watching(c)?,
    })
}
