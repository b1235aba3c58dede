//! The integrity audit: what does not add up in what the worker committed.
//!
//! Four checks, each exact because the worker writes final records, the command and its
//! offsets in one Kafka transaction and the view reads `read_committed`:
//! 1. a run still `running` past its step's timeout, with no final record;
//! 2. a flag command whose steps name a run with no record;
//! 3. a final record with a fault injected and not reverted;
//! 4. a flag-change with no command (nor dead letter) after a delay.
//!
//! Rule: a check only reports what has had time to settle (the timeout, the delay), so
//! the ordinary lag between topics never shows as a finding. Findings are listed up to
//! [`LISTED_PER_KIND`] per kind and counted exactly by [`counts`] (a catch-up or a long
//! outage can leave hundreds of thousands open: a scrape must not hold them all).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use rusqlite::types::Value;

use crate::view::model::{AuditFinding, FindingKind, RunRow};
use crate::view::query::select_runs;
use crate::view::store::{SqliteContext, ViewError, run_key, to_millis};

/// A step named as runs name it: `(pipeline_id, stage_id, step_id)`.
pub(crate) type StepKey = (String, String, String);

/// What the audit needs besides the store.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditSettings {
    /// A flag-change with no command this long after it occurred is a finding
    /// (`[view] audit_command_delay`).
    pub command_delay: Duration,
    /// Each step's timeout, from the catalog (the step's `timeout`, else its
    /// experiment's).
    pub step_timeouts: HashMap<StepKey, Duration>,
    /// The timeout of a step the catalog does not name (`[view] audit_running_timeout`).
    pub default_running_timeout: Duration,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            command_delay: Duration::from_secs(300),
            step_timeouts: HashMap::new(),
            default_running_timeout: Duration::from_secs(3600),
        }
    }
}

impl AuditSettings {
    /// The timeout of the step `run` belongs to.
    pub(crate) fn timeout_of(&self, run: &RunRow) -> Duration {
        let key = (
            run.pipeline_id.clone(),
            run.stage_id.clone(),
            run.step_id.clone(),
        );
        self.step_timeouts
            .get(&key)
            .copied()
            .unwrap_or(self.default_running_timeout)
    }

    /// The settings of `config`: its `[view]` delays and the step timeouts of its
    /// catalog, each plus `worker.target_wait` (a run may wait that long for targets held
    /// by other experiments before its timeout starts); none when the catalog cannot be
    /// read here: a warning is logged and `audit_running_timeout` applies to every step.
    pub fn from_config(config: &crate::config::Config) -> AuditSettings {
        let target_wait = config.worker.target_wait.duration();
        let step_timeouts = match crate::catalog::Catalog::load(&[&config.catalog.path]) {
            Ok(catalog) => AuditSettings::step_timeouts_of(&catalog)
                .into_iter()
                .map(|(step, timeout)| (step, timeout + target_wait))
                .collect(),
            Err(problems) => {
                tracing::warn!(
                    catalog = %config.catalog.path.display(),
                    problems = problems.len(),
                    "the catalog cannot be read here; the audit uses audit_running_timeout for every step"
                );
                HashMap::new()
            }
        };
        AuditSettings {
            command_delay: config.view.audit_command_delay.duration(),
            step_timeouts,
            default_running_timeout: config.view.audit_running_timeout.duration(),
        }
    }

    /// Step timeouts from a catalog: the step's `timeout`, else its experiment's.
    pub(crate) fn step_timeouts_of(
        catalog: &crate::catalog::Catalog,
    ) -> HashMap<StepKey, Duration> {
        let mut timeouts = HashMap::new();
        for pipeline in catalog.pipelines() {
            for stage in &pipeline.stages {
                for step in stage.steps.iter().filter_map(|s| s.chaos()) {
                    let timeout = step
                        .timeout
                        .or_else(|| catalog.experiment(&step.experiment).and_then(|e| e.timeout));
                    if let Some(timeout) = timeout {
                        timeouts.insert(
                            (pipeline.id.clone(), stage.id.clone(), step.id.clone()),
                            timeout.duration(),
                        );
                    }
                }
            }
        }
        timeouts
    }
}

/// Findings listed per kind, oldest first; [`counts`] gives the whole number.
pub(crate) const LISTED_PER_KIND: usize = 1_000;

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Runs whose newest record is `running` and that started longer ago than their step's
/// timeout, oldest first.
pub(crate) fn running_past_timeout(
    c: &Connection,
    now: DateTime<Utc>,
    settings: &AuditSettings,
) -> Result<Vec<RunRow>, ViewError> {
    let shortest = settings
        .step_timeouts
        .values()
        .copied()
        .chain([settings.default_running_timeout])
        .min()
        .unwrap_or_default();
    let running = select_runs(
        c,
        "WHERE status = 'running' AND started_at < ?",
        &[Value::Integer(to_millis(now) - millis(shortest))],
        "started_at, run_id",
    )?;
    Ok(running
        .into_iter()
        .filter(|run| to_millis(run.started_at) + millis(settings.timeout_of(run)) < to_millis(now))
        .collect())
}

/// Every finding at `now`, by kind in [`FindingKind::ALL`] order.
pub fn findings(
    c: &Connection,
    now: DateTime<Utc>,
    settings: &AuditSettings,
) -> Result<Vec<AuditFinding>, ViewError> {
    let mut findings = Vec::new();
    let listed = i64::try_from(LISTED_PER_KIND).unwrap_or(i64::MAX);
    for run in running_past_timeout(c, now, settings)?
        .into_iter()
        .take(LISTED_PER_KIND)
    {
        findings.push(AuditFinding {
            kind: FindingKind::RunningPastTimeout,
            message: format!(
                "run {} (pipeline {}, stage {}, step {}, attempt {}) started at {} and has no \
                 final record, past its step's timeout of {}",
                run.run_id,
                run.pipeline_id,
                run.stage_id,
                run.step_id,
                run.attempt,
                run.started_at.to_rfc3339(),
                humantime::format_duration(settings.timeout_of(&run)),
            ),
            run_id: Some(run.run_id),
            command_id: None,
            event_id: Some(run.trigger_event_id),
            pipeline_execution_id: Some(run.pipeline_execution_id),
        });
    }
    // Commands settle with their runs in one transaction; the delay covers topics read
    // at different speeds.
    let settled = to_millis(now) - millis(settings.command_delay);
    {
        let mut statement = c
            .prepare_cached(
                "SELECT s.command_id, s.run_id, c.pipeline_execution_id, c.causation_event_id \
                 FROM command_steps s JOIN commands c ON c.command_id = s.command_id \
                 WHERE s.found = 0 AND s.issued_at < ? \
                 ORDER BY s.issued_at LIMIT ?",
            )
            .what("prepare the missing-run check")?;
        let rows = statement
            .query_map([settled, listed], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Option<String>>(2)?,
                    row.get::<_, String>(3)?,
                ))
            })
            .what("check commands for missing runs")?;
        let mut stored = c
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM runs WHERE run_key = ? AND run_id = ?)")
            .what("prepare the run check")?;
        for row in rows {
            let (command_id, run_id, execution, event_id) = row.what("read a missing run")?;
            // Ingest removes a step once its run's record arrives; this only guards that.
            let found: bool = stored
                .query_row(rusqlite::params![run_key(&run_id), run_id], |r| r.get(0))
                .what("check a run")?;
            if found {
                continue;
            }
            findings.push(AuditFinding {
                kind: FindingKind::CommandRunMissing,
                message: format!(
                    "flag command {command_id} names run {run_id} in its steps, but no record \
                     of that run was read"
                ),
                run_id: Some(run_id),
                command_id: Some(command_id),
                event_id: Some(event_id),
                pipeline_execution_id: execution,
            });
        }
    }
    // The partial index holds only such runs; without INDEXED BY the planner may walk
    // every run in start order instead (it cannot know the index is small).
    let not_reverted = select_runs(
        c,
        "INDEXED BY runs_not_reverted WHERE faults_not_reverted > 0 AND status != 'running'",
        &[],
        &format!("started_at, run_id LIMIT {LISTED_PER_KIND}"),
    )?;
    for run in not_reverted {
        findings.push(AuditFinding {
            kind: FindingKind::FaultNotReverted,
            message: format!(
                "run {} ended {} with {} fault(s) injected and not reverted",
                run.run_id,
                run.status.as_str(),
                run.faults_not_reverted
            ),
            run_id: Some(run.run_id),
            command_id: None,
            event_id: Some(run.trigger_event_id),
            pipeline_execution_id: Some(run.pipeline_execution_id),
        });
    }
    {
        let mut statement = c
            .prepare_cached(
                "SELECT event_id, project, environment, flag, occurred_at FROM changes \
                 WHERE answered = 0 AND occurred_at < ? ORDER BY occurred_at LIMIT ?",
            )
            .what("prepare the unanswered-change check")?;
        let rows = statement
            .query_map([settled, listed], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, i64>(4)?,
                ))
            })
            .what("check changes for commands")?;
        for row in rows {
            let (event_id, project, environment, flag, at) = row.what("read a change")?;
            findings.push(AuditFinding {
                kind: FindingKind::ChangeWithoutCommand,
                message: format!(
                    "flag-change {event_id} of {project}/{environment}/{flag} at {} has no \
                     command nor dead letter after {}",
                    crate::view::store::from_millis(at).to_rfc3339(),
                    humantime::format_duration(settings.command_delay)
                ),
                run_id: None,
                command_id: None,
                event_id: Some(event_id),
                pipeline_execution_id: None,
            });
        }
    }
    Ok(findings)
}

/// How many findings of each kind there are at `now` (in [`FindingKind::ALL`] order),
/// counted in SQL over the same open rows [`findings`] lists.
pub(crate) fn counts(
    c: &Connection,
    now: DateTime<Utc>,
    settings: &AuditSettings,
) -> Result<Vec<(FindingKind, u64)>, ViewError> {
    let settled = to_millis(now) - millis(settings.command_delay);
    let count = |sql: &str, params: &[i64]| -> Result<u64, ViewError> {
        let n: i64 = c
            .prepare_cached(sql)
            .and_then(|mut s| s.query_row(rusqlite::params_from_iter(params), |r| r.get(0)))
            .what("count audit findings")?;
        Ok(u64::try_from(n).unwrap_or(0))
    };
    let running = running_past_timeout(c, now, settings)?.len() as u64;
    let missing = count(
        "SELECT count(*) FROM command_steps WHERE found = 0 AND issued_at < ?",
        &[settled],
    )?;
    let not_reverted = count(
        "SELECT count(*) FROM runs INDEXED BY runs_not_reverted \
         WHERE faults_not_reverted > 0 AND status != 'running'",
        &[],
    )?;
    let unanswered = count(
        "SELECT count(*) FROM changes WHERE answered = 0 AND occurred_at < ?",
        &[settled],
    )?;
    Ok(vec![
        (FindingKind::RunningPastTimeout, running),
        (FindingKind::CommandRunMissing, missing),
        (FindingKind::FaultNotReverted, not_reverted),
        (FindingKind::ChangeWithoutCommand, unanswered),
    ])
}
