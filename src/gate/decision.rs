//! Decisions: whether a flag change is gated at all, whether a step passed, and the one
//! flag command a flag change gets, with a reason a person can read in one line.
//!
//! A change that is not gated is answered at once by [`pass_on`], the one place that
//! decides so: the worker's scheduler asks it before giving the change a run slot, and
//! the pipeline executor before running anything. A change no route takes gets what the
//! operator chose (`worker.unrouted`): `enable`, or `disable` (fail closed); under
//! `dead_letter` it never gets here in the worker (see [`super::selection`]), and is
//! answered `disable` if it does.

use chrono::{DateTime, Utc};

use crate::catalog::Unrouted;
use crate::catalog::assertion::{self, AssertionInput};
use crate::catalog::pipeline::{ChaosStep, FailureOutcome, GatedChange, Pipeline};
use crate::contract::ids;
use crate::contract::run_record::AssertionResult;
use crate::contract::{
    ChangeKind, CommandKind, FlagChange, FlagCommand, ReasonCode, RunStatus, StepSummary,
};

/// Whether a flag change waits for its pipeline or is passed on at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gating {
    /// Run the pipeline, then decide.
    Gate,
    /// Answer at once with this command and reason (`requested`, `not_gated`,
    /// `no_pipeline`).
    PassOn(CommandKind, ReasonCode),
}

/// `disable` is never delayed; other kinds are gated when the pipeline says so; with no
/// pipeline, `unrouted` says what the change gets (`enable`, or `disable` for `disable`
/// and `dead_letter`).
pub(crate) fn gating(
    change: &FlagChange,
    pipeline: Option<&Pipeline>,
    unrouted: Unrouted,
) -> Gating {
    if change.change.kind == ChangeKind::Disable {
        return Gating::PassOn(CommandKind::Disable, ReasonCode::Requested);
    }
    let Some(pipeline) = pipeline else {
        let command = match unrouted {
            Unrouted::Enable => CommandKind::Enable,
            Unrouted::Disable | Unrouted::DeadLetter => CommandKind::Disable,
        };
        return Gating::PassOn(command, ReasonCode::NoPipeline);
    };
    let kind = match change.change.kind {
        ChangeKind::Enable => GatedChange::Enable,
        _ => GatedChange::Update,
    };
    if pipeline.gated_changes.contains(&kind) {
        Gating::Gate
    } else {
        Gating::PassOn(CommandKind::Enable, ReasonCode::NotGated)
    }
}

/// The command answering `change` at once, issued now, when it is not gated (see
/// [`gating`]): `disable` for a requested `disable` (reason `requested`); `enable`
/// (`not_gated`) when `pipeline` does not gate this change kind; when `pipeline` is
/// `None`, reason `no_pipeline` and the command `unrouted` says. `None` when `pipeline`
/// gates the change: it must run first.
pub(crate) fn pass_on(
    change: &FlagChange,
    pipeline: Option<&Pipeline>,
    unrouted: Unrouted,
) -> Option<FlagCommand> {
    match gating(change, pipeline, unrouted) {
        Gating::Gate => None,
        gating => Some(flag_command(
            change,
            pipeline,
            gating,
            &Outcome::Passed,
            Vec::new(),
            Utc::now(),
        )),
    }
}

/// A score as people write it: at most two decimals, no trailing zeros.
pub(crate) fn score_text(score: f64) -> String {
    let text = format!("{score:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A step's verdict from its run's score, its expected score and its assertion.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StepVerdict {
    /// `passed`, `failed`, or `error` when the assertion could not be evaluated.
    pub(crate) status: RunStatus,
    /// One line, e.g. `score 42.86 < expected 80`.
    pub(crate) summary: String,
    /// The assertion and its result, when the step has one.
    pub(crate) assertion: Option<AssertionResult>,
}

/// Judges a completed run: passed iff score >= expected and the assertion (if any) holds.
pub(crate) fn judge_step(step: &ChaosStep, measures: &AssertionInput) -> StepVerdict {
    let score = measures.resilience_score;
    let expected = step.expected_resilience_score;
    let score_ok = score >= expected;
    let mut parts = vec![format!(
        "score {} {} expected {}",
        score_text(score),
        if score_ok { ">=" } else { "<" },
        score_text(expected)
    )];
    let mut status = if score_ok {
        RunStatus::Passed
    } else {
        RunStatus::Failed
    };
    let assertion = step.assertion.as_ref().map(|expression| {
        let evaluated = assertion::compile(expression)
            .and_then(|program| assertion::evaluate(&program, measures));
        match evaluated {
            Ok(result) => {
                if !result {
                    status = RunStatus::Failed;
                    parts.push(format!("assertion '{expression}' is false"));
                }
                AssertionResult {
                    expression: expression.clone(),
                    result: Some(result),
                    error: None,
                }
            }
            Err(e) => {
                status = RunStatus::Error;
                let error = format!("assertion '{expression}' {e}");
                parts.push(error.clone());
                AssertionResult {
                    expression: expression.clone(),
                    result: None,
                    error: Some(error),
                }
            }
        }
    });
    StepVerdict {
        status,
        summary: parts.join("; "),
        assertion,
    }
}

/// How a pipeline execution ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Every step passed (or was ignored or marked as success).
    Passed,
    /// A step failed; the reason names it.
    Failed(String),
    /// A run was aborted (kill switch, shutdown); the reason says which.
    Aborted(String),
}

/// The command a guard issues when it fires: the guarded pipeline's failure command
/// (`on_failure`) for the flag whose `enable` answered `change`, with its own id.
pub(crate) fn guard_command(
    change: &FlagChange,
    guard: &crate::contract::GuardRecord,
    reason: String,
    issued_at: DateTime<Utc>,
) -> FlagCommand {
    let command = guard.on_failure;
    FlagCommand {
        command_id: ids::guard_command_id(&change.event_id),
        command,
        project: change.project.clone(),
        environment: change.environment.clone(),
        flag: change.flag.clone(),
        value: (command == CommandKind::Revert)
            .then(|| change.change.from.clone())
            .flatten(),
        reason,
        reason_code: ReasonCode::GuardFired,
        pipeline_id: Some(guard.pipeline_id.clone()),
        pipeline_execution_id: Some(guard.pipeline_execution_id.clone()),
        causation_event_id: change.event_id.clone(),
        steps: Vec::new(),
        dry_run: false,
        issued_at,
    }
}

/// The failure command of `pipeline` (`disable`, or `revert` per `on_failure`).
pub(crate) fn failure_command(pipeline: Option<&Pipeline>) -> CommandKind {
    match pipeline.map(|p| p.on_failure) {
        Some(FailureOutcome::Revert) => CommandKind::Revert,
        _ => CommandKind::Disable,
    }
}

/// The one command answering `change`.
///
/// `pipeline` and `execution` are absent for changes passed on at once.
pub(crate) fn flag_command(
    change: &FlagChange,
    pipeline: Option<&Pipeline>,
    gating: Gating,
    outcome: &Outcome,
    steps: Vec<StepSummary>,
    issued_at: DateTime<Utc>,
) -> FlagCommand {
    let flag = change.flag_key();
    let on_failure = failure_command;
    let (command, reason_code, reason) = match (gating, outcome) {
        (Gating::PassOn(command, code), _) => {
            let reason = match code {
                ReasonCode::Requested => format!("disable of {flag} requested; passed on at once"),
                ReasonCode::NotGated => format!(
                    "pipeline {} does not gate {} changes; passed on at once",
                    pipeline.map_or("?", |p| p.id.as_str()),
                    change.change.kind.as_str()
                ),
                _ if command == CommandKind::Disable => {
                    format!("no pipeline for {flag}; answered disable at once (worker.unrouted)")
                }
                _ => format!("no pipeline for {flag}; passed on at once"),
            };
            (command, code, reason)
        }
        (Gating::Gate, Outcome::Passed) => (
            CommandKind::Enable,
            ReasonCode::Passed,
            format!(
                "pipeline {} passed: {}",
                pipeline.map_or("?", |p| p.id.as_str()),
                steps
                    .iter()
                    .map(|s| format!("{}/{}: {}", s.stage_id, s.step_id, s.summary))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        (Gating::Gate, Outcome::Failed(reason)) => {
            (on_failure(pipeline), ReasonCode::Failed, reason.clone())
        }
        (Gating::Gate, Outcome::Aborted(reason)) => {
            (on_failure(pipeline), ReasonCode::Aborted, reason.clone())
        }
    };
    let gated = gating == Gating::Gate;
    FlagCommand {
        command_id: ids::command_id(&change.event_id),
        command,
        project: change.project.clone(),
        environment: change.environment.clone(),
        flag: change.flag.clone(),
        value: (command == CommandKind::Revert)
            .then(|| change.change.from.clone())
            .flatten(),
        reason,
        reason_code,
        // The pipeline that decided: the one that ran, or the one whose routes said the
        // change is not gated. A requested `disable` is decided by no pipeline.
        pipeline_id: pipeline
            .filter(|_| !matches!(gating, Gating::PassOn(_, ReasonCode::Requested)))
            .map(|p| p.id.clone()),
        pipeline_execution_id: pipeline
            .filter(|_| gated)
            .map(|p| ids::pipeline_execution_id(&change.event_id, &p.id)),
        causation_event_id: change.event_id.clone(),
        steps,
        dry_run: gated && pipeline.is_some_and(|p| p.dry_run),
        issued_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::pipeline::FailureStrategy;
    use crate::contract::flag_change::flag_change_example;

    fn step(expected: f64, assertion: Option<&str>) -> ChaosStep {
        ChaosStep {
            id: "payments-latency".into(),
            name: None,
            experiment: "payments-latency".into(),
            expected_resilience_score: expected,
            assertion: assertion.map(str::to_string),
            failure_strategy: FailureStrategy::Abort,
            timeout: None,
        }
    }

    fn measures(score: f64, probes_failed: i64) -> AssertionInput {
        AssertionInput {
            resilience_score: score,
            expected_resilience_score: 80.0,
            faults_passed: 1,
            faults_failed: 0,
            probes_passed: 2,
            probes_failed,
            duration_seconds: 3.0,
        }
    }

    #[test]
    fn a_step_passes_on_score_and_assertion() {
        let verdict = judge_step(&step(80.0, None), &measures(42.857, 0));
        assert_eq!(verdict.status, RunStatus::Failed);
        assert_eq!(verdict.summary, "score 42.86 < expected 80");

        let verdict = judge_step(&step(80.0, Some("probes_failed == 0")), &measures(80.0, 1));
        assert_eq!(verdict.status, RunStatus::Failed);
        assert_eq!(
            verdict.summary,
            "score 80 >= expected 80; assertion 'probes_failed == 0' is false"
        );

        let verdict = judge_step(&step(80.0, Some("probes_failed")), &measures(90.0, 0));
        assert_eq!(verdict.status, RunStatus::Error);
        assert!(
            verdict.summary.contains("must give true or false"),
            "{}",
            verdict.summary
        );
    }

    #[test]
    fn disable_is_never_gated_and_unrouted_flags_pass_on() {
        let mut change = flag_change_example();
        change.change.kind = ChangeKind::Disable;
        for unrouted in [Unrouted::Enable, Unrouted::Disable, Unrouted::DeadLetter] {
            assert_eq!(
                gating(&change, None, unrouted),
                Gating::PassOn(CommandKind::Disable, ReasonCode::Requested)
            );
        }
        change.change.kind = ChangeKind::Update;
        assert_eq!(
            gating(&change, None, Unrouted::Enable),
            Gating::PassOn(CommandKind::Enable, ReasonCode::NoPipeline)
        );
        let command = flag_command(
            &change,
            None,
            Gating::PassOn(CommandKind::Enable, ReasonCode::NoPipeline),
            &Outcome::Passed,
            Vec::new(),
            Utc::now(),
        );
        assert_eq!(command.command, CommandKind::Enable);
        assert_eq!(command.reason_code, ReasonCode::NoPipeline);
        assert_eq!(command.command_id, ids::command_id(&change.event_id));
    }

    #[test]
    fn only_a_gated_change_is_not_passed_on() {
        let mut pipeline = crate::catalog::pipeline::pipeline_example();
        let mut change = flag_change_example();
        change.change.kind = ChangeKind::Enable;
        assert_eq!(pass_on(&change, Some(&pipeline), Unrouted::Enable), None);
        change.change.kind = ChangeKind::Update;
        assert_eq!(pass_on(&change, Some(&pipeline), Unrouted::Enable), None);

        pipeline.gated_changes = vec![GatedChange::Enable];
        let command = pass_on(&change, Some(&pipeline), Unrouted::Enable).unwrap();
        assert_eq!(command.command, CommandKind::Enable);
        assert_eq!(command.reason_code, ReasonCode::NotGated);
        assert_eq!(command.pipeline_id.as_deref(), Some(pipeline.id.as_str()));
        assert_eq!(command.pipeline_execution_id, None);
        assert!(command.steps.is_empty());

        let command = pass_on(&change, None, Unrouted::Enable).unwrap();
        assert_eq!(command.command, CommandKind::Enable);
        assert_eq!(command.reason_code, ReasonCode::NoPipeline);

        change.change.kind = ChangeKind::Disable;
        let command = pass_on(&change, Some(&pipeline), Unrouted::Enable).unwrap();
        assert_eq!(command.command, CommandKind::Disable);
        assert_eq!(command.reason_code, ReasonCode::Requested);
        assert_eq!(command.pipeline_id, None);
    }

    #[test]
    fn a_requested_disable_names_no_pipeline_that_did_not_run() {
        let pipeline = crate::catalog::pipeline::pipeline_example();
        let mut change = flag_change_example();
        change.change.kind = ChangeKind::Disable;
        let gating = gating(&change, Some(&pipeline), Unrouted::Disable);
        assert_eq!(
            gating,
            Gating::PassOn(CommandKind::Disable, ReasonCode::Requested)
        );
        let command = flag_command(
            &change,
            Some(&pipeline),
            gating,
            &Outcome::Passed,
            Vec::new(),
            Utc::now(),
        );
        assert_eq!(command.command, CommandKind::Disable);
        assert_eq!(command.pipeline_id, None);
        assert_eq!(command.pipeline_execution_id, None);
    }

    #[test]
    fn an_unrouted_change_gets_what_the_operator_chose() {
        let mut change = flag_change_example();
        for kind in [ChangeKind::Enable, ChangeKind::Update] {
            change.change.kind = kind;
            let command = pass_on(&change, None, Unrouted::Enable).unwrap();
            assert_eq!(command.command, CommandKind::Enable);
            assert_eq!(command.reason_code, ReasonCode::NoPipeline);
            assert_eq!(
                command.reason,
                "no pipeline for shop/production/checkout-v2; passed on at once"
            );
            for closed in [Unrouted::Disable, Unrouted::DeadLetter] {
                let command = pass_on(&change, None, closed).unwrap();
                assert_eq!(command.command, CommandKind::Disable, "{closed:?}");
                assert_eq!(command.reason_code, ReasonCode::NoPipeline);
                assert_eq!(
                    command.reason,
                    "no pipeline for shop/production/checkout-v2; answered disable at once (worker.unrouted)"
                );
                assert_eq!(command.pipeline_id, None);
                assert_eq!(command.value, None);
                assert!(!command.dry_run);
            }
        }
        // A routed change is not affected by the choice.
        let pipeline = crate::catalog::pipeline::pipeline_example();
        change.change.kind = ChangeKind::Enable;
        assert_eq!(pass_on(&change, Some(&pipeline), Unrouted::Disable), None);
    }
}
