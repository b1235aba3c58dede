//! A run's shared state: the tallies of its faults and probes, its log, why it stopped,
//! and the progress events it sends. The run and its probe tasks share one [`Run`]; the
//! tallies sit behind one lock, held only to update or read them, never across an await.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::RunContext;
use super::progress::{Progress, ProgressEvent};
use crate::catalog::experiment::{Experiment, Fault, Probe, ProbeMode};
use crate::chaos::probe::Check;
use crate::contract::run_record::PreviousAttemptRevert;

/// Why a run ended before its schedule did.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Stop {
    Cancelled,
    TimedOut(Duration),
    /// Waited this long for these targets, held by other experiments, and gave up.
    TargetsBusy(Duration, Vec<String>),
    ProbeFailed(String),
    FaultError(String),
}

impl Stop {
    pub(super) fn describe(&self) -> String {
        match self {
            Stop::Cancelled => "cancelled".to_string(),
            Stop::TimedOut(after) => format!("timed out after {}", crate::catalog::Span(*after)),
            Stop::TargetsBusy(after, targets) => format!(
                "waited {} for target {}, held by another experiment (worker.target_wait, or --target-wait of experiment run); \
                 nothing was injected",
                crate::catalog::Span(*after),
                targets.join(", ")
            ),
            Stop::ProbeFailed(name) => format!("probe '{name}' failed and has stop_on_failure"),
            Stop::FaultError(message) => message.clone(),
        }
    }
}

/// One probe's checks in one phase.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct PhaseTally {
    /// Checks counted in the probe's window.
    pub(super) checks: u32,
    /// Of those, the failed ones.
    pub(super) failed: u32,
    /// Checks that ended after the window closed: not counted.
    pub(super) late: u32,
}

/// One probe's checks over the run, by phase, and what its result reports.
#[derive(Debug, Default)]
pub(super) struct ProbeTally {
    pub(super) by_phase: HashMap<usize, PhaseTally>,
    pub(super) attempts: u32,
    pub(super) last_error: Option<String>,
    pub(super) first_check_at: Option<DateTime<Utc>>,
    pub(super) last_check_at: Option<DateTime<Utc>>,
}

/// One fault's timeline (injected, reverted, or why not) and its phase's progress.
#[derive(Debug, Default)]
pub(super) struct FaultTally {
    pub(super) started_at: Option<DateTime<Utc>>,
    pub(super) ended_at: Option<DateTime<Utc>>,
    pub(super) reverted: bool,
    pub(super) error: Option<String>,
    pub(super) phase_started: bool,
    pub(super) phase_completed: bool,
}

/// Everything a run has counted so far, behind [`Run`]'s one lock.
#[derive(Debug, Default)]
pub(super) struct RunTally {
    pub(super) probes: Vec<ProbeTally>,
    pub(super) faults: Vec<FaultTally>,
    pub(super) log: Vec<String>,
    pub(super) stop: Option<Stop>,
    pub(super) phases_started: Vec<usize>,
    /// Phases that ran to their end (not stopped early).
    pub(super) phases_completed: Vec<usize>,
    /// What was reverted of an earlier attempt's leftovers before anything was injected
    /// (see [`super::leftovers`]).
    pub(super) previous_attempt_reverts: Vec<PreviousAttemptRevert>,
}

/// State shared by the run and its probe tasks.
pub(super) struct Run {
    pub(super) faults: Vec<Fault>,
    pub(super) probes: Vec<Probe>,
    pub(super) tally: Mutex<RunTally>,
    pub(super) progress: Option<UnboundedSender<Progress>>,
    pub(super) stop: CancellationToken,
    pub(super) panic_probe: Option<String>,
    /// The faults' lease ([`RunContext::lease`]): how long a failed revert is retried.
    pub(super) lease: Duration,
    /// The caller's span (the worker's step span): parent of fault and probe spans.
    pub(super) span: tracing::Span,
}

pub(super) fn clock(at: DateTime<Utc>) -> String {
    at.format("%H:%M:%S").to_string()
}

impl Run {
    /// The state of a run of `experiment` that has not started: nothing checked or
    /// injected yet; `stop` ends it early.
    pub(super) fn new(
        experiment: &Experiment,
        context: &RunContext,
        stop: CancellationToken,
    ) -> Run {
        Run {
            faults: experiment.faults.clone(),
            probes: experiment.probes.clone(),
            tally: Mutex::new(RunTally {
                probes: experiment
                    .probes
                    .iter()
                    .map(|_| ProbeTally::default())
                    .collect(),
                faults: experiment
                    .faults
                    .iter()
                    .map(|_| FaultTally::default())
                    .collect(),
                ..RunTally::default()
            }),
            progress: context.progress.clone(),
            stop,
            panic_probe: context.panic_probe.clone(),
            lease: context.lease,
            span: tracing::Span::current(),
        }
    }

    pub(super) fn tally(&self) -> std::sync::MutexGuard<'_, RunTally> {
        self.tally
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn emit(&self, event: ProgressEvent) {
        if let Some(progress) = &self.progress {
            let _ = progress.send(Progress {
                at: Utc::now(),
                event,
            });
        }
    }

    pub(super) fn log(&self, line: impl std::fmt::Display) {
        let line = format!("{} {line}", clock(Utc::now()));
        tracing::debug!(target: "chaosgate::run", parent: &self.span, "{line}");
        self.tally().log.push(line);
    }

    /// Ends the run early for `reason`, unless it is already ending for another.
    pub(super) fn stop_with(&self, reason: Stop) {
        let first = {
            let mut tallies = self.tally();
            if tallies.stop.is_none() {
                tallies.stop = Some(reason.clone());
                true
            } else {
                false
            }
        };
        if first {
            let text = reason.describe();
            self.log(format!("stopping: {text}"));
            self.emit(ProgressEvent::Stopping { reason: text });
        }
        self.stop.cancel();
    }

    /// Notes a check of polling probe `p` that ended after its window closed: it may have
    /// looked at the target outside the window (for `on_chaos`, during the revert), so it
    /// counts neither as passed nor as failed.
    pub(super) fn record_late(&self, p: usize, phase: usize, check: &Check) {
        let probe = &self.probes[p];
        let first = {
            let mut tallies = self.tally();
            let tally = tallies.probes[p].by_phase.entry(phase).or_default();
            tally.late += 1;
            tally.late == 1
        };
        if first {
            let outcome = match (&check.passed, &check.error) {
                (true, _) => "passed".to_string(),
                (false, Some(error)) => format!("failed: {error}"),
                (false, None) => "failed".to_string(),
            };
            self.log(format!(
                "probe {} ({}) check ended after its window closed, not counted ({outcome})",
                probe.name,
                mode_name(probe.mode)
            ));
        }
    }

    /// Records a check of probe `p` in `phase` made inside its window; `polling` logs only
    /// the first failure (a polling probe checks many times).
    pub(super) fn record_check(&self, p: usize, phase: usize, check: &Check, polling: bool) {
        let probe = &self.probes[p];
        let first_failure = {
            let mut tallies = self.tally();
            let entry = &mut tallies.probes[p];
            let tally = entry.by_phase.entry(phase).or_default();
            tally.checks += 1;
            let first_failure = !check.passed && tally.failed == 0;
            if !check.passed {
                tally.failed += 1;
                entry.last_error = Some(
                    check
                        .error
                        .clone()
                        .unwrap_or_else(|| "the check failed".to_string()),
                );
            }
            entry.attempts += check.attempts;
            let ended = Utc::now();
            let started = chrono::Duration::from_std(check.took)
                .ok()
                .and_then(|took| ended.checked_sub_signed(took))
                .unwrap_or(ended);
            entry.first_check_at = Some(entry.first_check_at.map_or(started, |t| t.min(started)));
            entry.last_check_at = Some(entry.last_check_at.map_or(ended, |t| t.max(ended)));
            first_failure
        };
        let mode = mode_name(probe.mode);
        if !polling {
            match (&check.passed, &check.error) {
                (true, _) => self.log(format!("probe {} ({mode}) passed", probe.name)),
                (false, Some(e)) => self.log(format!("probe {} ({mode}) failed: {e}", probe.name)),
                (false, None) => self.log(format!("probe {} ({mode}) failed", probe.name)),
            }
        } else if first_failure {
            let error = check.error.as_deref().unwrap_or("the check failed");
            self.log(format!("probe {} ({mode}) failed: {error}", probe.name));
        }
        self.emit(ProgressEvent::ProbeChecked {
            probe: probe.name.clone(),
            mode: probe.mode,
            passed: check.passed,
            attempts: check.attempts,
            took_ms: check.took.as_secs_f64() * 1_000.0,
            error: if check.passed {
                None
            } else {
                check.error.clone()
            },
        });
        if !check.passed && probe.run_properties.stop_on_failure {
            self.stop_with(Stop::ProbeFailed(probe.name.clone()));
        }
    }
}

pub(super) fn mode_name(mode: ProbeMode) -> &'static str {
    match mode {
        ProbeMode::Sot => "sot",
        ProbeMode::Eot => "eot",
        ProbeMode::Edge => "edge",
        ProbeMode::Continuous => "continuous",
        ProbeMode::OnChaos => "on_chaos",
    }
}

/// Aborts a task when dropped, so nothing a run started outlives it.
pub(super) struct AbortOnDrop<T>(pub(super) JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
