//! Small read queries only the web layer needs: the lists behind the "Pipelines" and
//! "Flags" pages and the row counts for `/metrics`. Everything else comes from
//! `crate::view::query`.
//!
//! The rule that keeps it right: plain `SELECT`s over the store's tables, each one
//! index-backed or bounded (`LIMIT`), so a list page stays fast on a large store.

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use serde::Serialize;

use crate::view::store::{ViewError, from_millis};

fn sql(what: &str) -> impl Fn(rusqlite::Error) -> ViewError + '_ {
    move |source| ViewError::Sqlite {
        what: what.to_string(),
        source,
    }
}

/// Rows per table, for `chaosgate_view_rows{table}`.
pub(crate) fn row_counts(c: &Connection) -> Result<Vec<(String, i64)>, ViewError> {
    let mut out = Vec::new();
    for table in [
        "runs",
        "executions",
        "commands",
        "changes",
        "aborts",
        "dead_letters",
        "problems",
        "holds",
        "guards",
        "approvals",
    ] {
        let n: i64 = c
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .map_err(sql("count rows"))?;
        out.push((table.to_string(), n));
    }
    Ok(out)
}

/// One pipeline in the list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct PipelineItem {
    /// Pipeline id.
    pub(crate) pipeline_id: String,
    /// Executions stored.
    pub(crate) executions: i64,
    /// Of which passed.
    pub(crate) passed: i64,
    /// Of which failed or aborted.
    pub(crate) failed: i64,
    /// Still running.
    pub(crate) running: i64,
    /// Newest execution's start.
    pub(crate) last_started_at: DateTime<Utc>,
    /// Newest execution's status.
    pub(crate) last_status: String,
}

/// Every pipeline with executions, most recently active first (at most 500).
pub(crate) fn pipelines(c: &Connection) -> Result<Vec<PipelineItem>, ViewError> {
    let mut statement = c
        .prepare(
            "SELECT pipeline_id, COUNT(*), SUM(status = 'passed'), SUM(status IN ('failed', 'aborted')),
                    SUM(status = 'running'), MAX(started_at), status
             FROM executions GROUP BY pipeline_id ORDER BY MAX(started_at) DESC LIMIT 500",
        )
        .map_err(sql("list pipelines"))?;
    let rows = statement
        .query_map([], |r| {
            Ok(PipelineItem {
                pipeline_id: r.get(0)?,
                executions: r.get(1)?,
                passed: r.get(2)?,
                failed: r.get(3)?,
                running: r.get(4)?,
                last_started_at: from_millis(r.get(5)?),
                last_status: r.get(6)?,
            })
        })
        .map_err(sql("list pipelines"))?;
    rows.collect::<Result<_, _>>()
        .map_err(sql("read pipelines"))
}

/// One flag in the list, with the last command the gate sent for it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct FlagItem {
    /// Project.
    pub(crate) project: String,
    /// Environment.
    pub(crate) environment: String,
    /// Flag key.
    pub(crate) flag: String,
    /// Changes stored.
    pub(crate) changes: i64,
    /// The newest command (`enable`, `disable`, `revert`), if any.
    pub(crate) last_command: Option<String>,
    /// Its reason code.
    pub(crate) last_reason_code: Option<String>,
    /// When the newest change or command happened.
    pub(crate) last_at: DateTime<Utc>,
}

/// Every flag with changes or commands, most recently active first (at most 500).
pub(crate) fn flags(c: &Connection) -> Result<Vec<FlagItem>, ViewError> {
    // SQLite: a bare column next to MAX() comes from the row holding the maximum.
    let mut statement = c
        .prepare(
            "WITH last_command AS (
                 SELECT project, environment, flag, command, reason_code, MAX(issued_at) AS at
                 FROM commands GROUP BY project, environment, flag),
             change_count AS (
                 SELECT project, environment, flag, COUNT(*) AS n, MAX(occurred_at) AS at
                 FROM changes GROUP BY project, environment, flag),
             keys AS (
                 SELECT project, environment, flag FROM last_command
                 UNION SELECT project, environment, flag FROM change_count)
             SELECT k.project, k.environment, k.flag, COALESCE(cc.n, 0), lc.command, lc.reason_code,
                    MAX(COALESCE(lc.at, 0), COALESCE(cc.at, 0)) AS last
             FROM keys k
             LEFT JOIN last_command lc USING (project, environment, flag)
             LEFT JOIN change_count cc USING (project, environment, flag)
             ORDER BY last DESC LIMIT 500",
        )
        .map_err(sql("list flags"))?;
    let rows = statement
        .query_map([], |r| {
            Ok(FlagItem {
                project: r.get(0)?,
                environment: r.get(1)?,
                flag: r.get(2)?,
                changes: r.get(3)?,
                last_command: r.get(4)?,
                last_reason_code: r.get(5)?,
                last_at: from_millis(r.get(6)?),
            })
        })
        .map_err(sql("list flags"))?;
    rows.collect::<Result<_, _>>().map_err(sql("read flags"))
}
