//! The verdict of a run: each probe's (from its checks in each phase), each fault's (its
//! probes' success percentage), the run's, the resilience score and the one-line summary.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::plan::{judges, plan};
use super::progress::ExperimentResult;
use super::state::{PhaseTally, Run, Stop, clock, mode_name};
use crate::catalog::experiment::{Experiment, Probe, ProbeMode};
use crate::chaos::score;
use crate::contract::run_record::{FaultResult, ProbeResult, RunStatus, Verdict};

/// A probe's outcome in one phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PhaseOutcome {
    /// The phase stopped before the probe checked.
    NotRun,
    /// The phase ran to its end, and no check of the probe fell inside its window.
    Unchecked,
    /// Some checks, fewer than its mode needs (an `edge` probe's second), none failed.
    Incomplete,
    Failed,
    Passed,
}

/// The outcome of `probe` in a phase from its tally there; `completed` when the phase ran
/// to its end.
pub(super) fn phase_outcome(
    probe: &Probe,
    tally: Option<&PhaseTally>,
    completed: bool,
) -> PhaseOutcome {
    let Some(tally) = tally.filter(|t| t.checks > 0) else {
        return if completed {
            PhaseOutcome::Unchecked
        } else {
            PhaseOutcome::NotRun
        };
    };
    let needed = if probe.mode == ProbeMode::Edge { 2 } else { 1 };
    if tally.failed > 0 {
        PhaseOutcome::Failed
    } else if tally.checks < needed {
        PhaseOutcome::Incomplete
    } else {
        PhaseOutcome::Passed
    }
}

/// Why a probe's verdict is `error` when it had no check inside its window.
fn unchecked_reason(probe: &Probe, late: u32) -> String {
    let window = match probe.mode {
        ProbeMode::OnChaos => "while its faults were active",
        ProbeMode::Continuous => "during its phase",
        ProbeMode::Sot => "before the faults were injected",
        ProbeMode::Eot => "after the faults were reverted",
        ProbeMode::Edge => "before and after the faults",
    };
    let delay = probe.run_properties.initial_delay;
    let late = match late {
        0 => String::new(),
        1 => "; a check ended after the window closed and does not count".to_string(),
        n => format!("; {n} checks ended after the window closed and do not count"),
    };
    format!(
        "no check inside its window ({window}; initial_delay {delay}){late}: nothing was observed, so it is not a pass"
    )
}

/// The result of the run of `experiment` from its tallies; `invalid` when it could not
/// run at all (the rules it breaks, in one line).
pub(super) fn result(
    experiment: &Experiment,
    run: &Run,
    started_at: DateTime<Utc>,
    waited: Duration,
    invalid: Option<String>,
) -> ExperimentResult {
    let phases = if invalid.is_some() {
        Vec::new()
    } else {
        plan(experiment)
    };
    let tallies = run.tally();
    let stop = tallies.stop.clone();
    let aborted = matches!(
        stop,
        Some(Stop::Cancelled | Stop::TimedOut(_) | Stop::TargetsBusy(..))
    );

    let probes: Vec<ProbeResult> = experiment
        .probes
        .iter()
        .enumerate()
        .map(|(p, probe)| {
            let entry = &tallies.probes[p];
            let outcomes: Vec<PhaseOutcome> = tallies
                .phases_started
                .iter()
                .filter(|ph| phases[**ph].probes.contains(&p))
                .map(|ph| {
                    let completed = tallies.phases_completed.contains(ph);
                    phase_outcome(probe, entry.by_phase.get(ph), completed)
                })
                .collect();
            let unchecked = outcomes.contains(&PhaseOutcome::Unchecked);
            let mut last_error = entry.last_error.clone();
            let verdict = if invalid.is_some() {
                Verdict::Error
            } else if outcomes.contains(&PhaseOutcome::Failed) {
                Verdict::Failed
            } else if unchecked {
                let late: u32 = entry.by_phase.values().map(|t| t.late).sum();
                last_error = Some(unchecked_reason(probe, late));
                Verdict::Error
            } else if !outcomes.is_empty() && outcomes.iter().all(|o| *o == PhaseOutcome::Passed) {
                Verdict::Passed
            } else if outcomes.iter().all(|o| *o == PhaseOutcome::NotRun) {
                Verdict::Skipped
            } else {
                Verdict::Aborted
            };
            ProbeResult {
                name: probe.name.clone(),
                probe_type: probe.probe_type.name().to_string(),
                mode: mode_name(probe.mode).to_string(),
                verdict,
                attempts: entry.attempts,
                last_error,
                first_check_at: entry.first_check_at,
                last_check_at: entry.last_check_at,
            }
        })
        .collect();

    let faults: Vec<FaultResult> = experiment
        .faults
        .iter()
        .enumerate()
        .map(|(f, fault)| {
            let entry = &tallies.faults[f];
            let phase = phases.iter().position(|ph| ph.faults.contains(&f));
            let judged: Vec<usize> = phase.map(|_| judges(experiment, fault)).unwrap_or_default();
            let passed = judged
                .iter()
                .filter(|p| {
                    phase.is_some_and(|ph| {
                        phase_outcome(
                            &experiment.probes[**p],
                            tallies.probes[**p].by_phase.get(&ph),
                            tallies.phases_completed.contains(&ph),
                        ) == PhaseOutcome::Passed
                    })
                })
                .count();
            let pct = if entry.started_at.is_some() {
                score::probe_success_percentage(passed, judged.len())
            } else {
                0.0
            };
            let verdict = if invalid.is_some() || entry.error.is_some() {
                Verdict::Error
            } else if entry.started_at.is_none() {
                Verdict::Skipped
            } else if !entry.phase_completed && aborted {
                Verdict::Aborted
            } else if pct >= 100.0 {
                Verdict::Passed
            } else {
                Verdict::Failed
            };
            FaultResult {
                name: fault.name.clone(),
                kind: fault.kind.name().to_string(),
                weight: fault.weight,
                verdict,
                probe_success_percentage: pct,
                started_at: entry.started_at,
                ended_at: entry.ended_at,
                reverted: entry.reverted,
                error: entry.error.clone(),
            }
        })
        .collect();

    let count = |v: Verdict| probes.iter().filter(|p| p.verdict == v).count();
    let probes_passed = count(Verdict::Passed);
    let probes_failed = count(Verdict::Failed);
    // A fault whose revert was not confirmed comes first: it may still be active.
    let fault_error = faults
        .iter()
        .filter(|f| f.error.is_some())
        .min_by_key(|f| f.started_at.is_none() || f.reverted)
        .and_then(|f| {
            let error = f.error.as_ref()?;
            Some(if f.started_at.is_some() && !f.reverted {
                format!("fault '{}' may still be active: {error}", f.name)
            } else {
                format!("fault '{}': {error}", f.name)
            })
        });
    // Something an earlier attempt may have left is still there: nothing was injected.
    let leftover = tallies
        .previous_attempt_reverts
        .iter()
        .find(|r| !r.reverted)
        .map(|r| {
            format!(
                "fault '{}' may still be active from attempt {}: {}; nothing was injected",
                r.fault,
                r.attempt,
                r.error.as_deref().unwrap_or(&r.outcome)
            )
        });
    let fault_error = leftover.or(fault_error);
    let unchecked = probes.iter().find(|p| p.verdict == Verdict::Error);
    let verdict = if invalid.is_some() || fault_error.is_some() {
        RunStatus::Error
    } else if aborted {
        RunStatus::Aborted
    } else if probes_failed > 0 || matches!(stop, Some(Stop::ProbeFailed(_))) {
        RunStatus::Failed
    } else if unchecked.is_some() {
        RunStatus::Error
    } else {
        RunStatus::Passed
    };
    let resilience_score = match verdict {
        RunStatus::Passed | RunStatus::Failed if faults.is_empty() => {
            Some(score::probe_success_percentage(probes_passed, probes.len()))
        }
        RunStatus::Passed | RunStatus::Failed => score::resilience_score(
            &faults
                .iter()
                .map(|f| (f.weight, f.probe_success_percentage))
                .collect::<Vec<_>>(),
        ),
        _ => None,
    };
    let tally = format!("{probes_passed} of {} probes passed", probes.len());
    let summary = match (&verdict, &invalid, &fault_error, &stop) {
        (_, Some(problem), _, _) => format!("error: invalid experiment: {problem}"),
        (_, _, Some(fault), _) => format!("error: {fault}"),
        (RunStatus::Error, _, _, _) if let Some(probe) = unchecked => format!(
            "error: probe '{}' ({}): {}",
            probe.name,
            probe.mode,
            probe
                .last_error
                .as_deref()
                .unwrap_or("no check inside its window")
        ),
        (RunStatus::Aborted, _, _, Some(reason)) => format!("aborted: {}", reason.describe()),
        (_, _, _, Some(Stop::ProbeFailed(name))) => format!(
            "failed: probe '{name}' failed and has stop_on_failure; score {} ({tally})",
            resilience_score.unwrap_or(0.0)
        ),
        _ => format!(
            "{}: score {} ({tally})",
            verdict.as_str(),
            resilience_score.unwrap_or(0.0)
        ),
    };
    let ended_at = Utc::now();
    let mut log = tallies.log.clone();
    log.push(format!("{} end: {summary}", clock(ended_at)));
    ExperimentResult {
        experiment_id: experiment.id.clone(),
        experiment_name: experiment
            .name
            .clone()
            .unwrap_or_else(|| experiment.id.clone()),
        verdict,
        resilience_score,
        faults,
        probes,
        probes_passed: u32::try_from(probes_passed).unwrap_or(u32::MAX),
        probes_failed: u32::try_from(probes_failed).unwrap_or(u32::MAX),
        started_at,
        ended_at,
        duration_seconds: (ended_at - started_at).num_milliseconds() as f64 / 1000.0,
        waited_for_target_seconds: score::round2(waited.as_secs_f64()),
        summary,
        log,
        problems: Vec::new(),
        previous_attempt_reverts: tallies.previous_attempt_reverts.clone(),
    }
}
