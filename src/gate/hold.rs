//! Holds: where a pipeline execution stops and waits without running anything (an
//! approval step, a wait step, a freeze window), and how it goes on once the hold ends.
//!
//! The executor returns a [`Parked`] execution at a hold instead of waiting in its task:
//! the worker commits the `waiting` hold record with the flag-change's offset and keeps
//! the execution in its flag-state record, so a wait of hours holds no Kafka resource and
//! survives restarts. When the hold ends (an approve or reject request, a timeout, the
//! wait or window over), the worker runs the execution again with a [`Resume`]: the steps
//! before the hold are not run again, and the hold's step counts by how it ended.

use chrono::{DateTime, Utc};

use crate::catalog::freeze;
use crate::catalog::pipeline::{FailureStrategy, FallbackStrategy, Pipeline, Stage, Step};
use crate::contract::run_record::{FlagRef, StageRef, StepRef};
use crate::contract::{FlagChange, HoldKind, HoldRecord, HoldStatus, RunStatus, StepSummary, ids};

use super::decision::Outcome;

/// An execution stopped at a hold: the `waiting` record and the steps done before it.
#[derive(Debug, Clone, PartialEq)]
pub struct Parked {
    /// The hold, `waiting`.
    pub hold: HoldRecord,
    /// Summaries of the steps done before it, for the command.
    pub steps: Vec<StepSummary>,
}

/// How to run a parked execution on: its hold as it ended, and the steps done before it.
#[derive(Debug, Clone, PartialEq)]
pub struct Resume {
    /// The hold, ended (`approved`, `rejected`, `timed_out` or `done`).
    pub hold: HoldRecord,
    /// Summaries of the steps done before it.
    pub steps: Vec<StepSummary>,
}

/// Where a resumed execution goes on: the first step to run (stage and step indices),
/// the summaries so far, and the outcome when the hold itself ended the pipeline.
pub(crate) struct ResumePoint {
    pub(crate) start: (usize, usize),
    pub(crate) steps: Vec<StepSummary>,
    pub(crate) stop: Option<Outcome>,
}

/// The `waiting` hold a freeze window of `pipeline` puts on `change` at `now`, if any.
pub(crate) fn freeze_hold(
    change: &FlagChange,
    pipeline: &Pipeline,
    now: DateTime<Utc>,
) -> Option<HoldRecord> {
    let hold = freeze::held_at(&pipeline.freeze_windows, now)?;
    let mut record = base(change, pipeline, HoldKind::Freeze, "freeze", now);
    record.until = Some(hold.until);
    record.reason = hold.reason;
    record.window = Some(hold.window);
    Some(record)
}

/// The `waiting` hold of an approval or wait step reached at `now`; `None` for a chaos
/// step.
pub(crate) fn step_hold(
    change: &FlagChange,
    pipeline: &Pipeline,
    stage: &Stage,
    step: &Step,
    now: DateTime<Utc>,
) -> Option<HoldRecord> {
    let (kind, until, reason) = match step {
        Step::Chaos(_) => return None,
        Step::Approval(approval) => {
            let until = now + approval.approval.timeout.duration();
            let asked = approval
                .approval
                .message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            let reason =
                format!("waiting for an approve or reject request naming this execution{asked}");
            (HoldKind::Approval, until, reason)
        }
        Step::Wait(wait) => {
            let until = now + wait.wait.duration();
            let reason = format!("waiting {} (bake time)", wait.wait);
            (HoldKind::Wait, until, reason)
        }
    };
    let place = format!("{}/{}", stage.id, step.id());
    let mut record = base(change, pipeline, kind, &place, now);
    record.stage = Some(StageRef {
        id: stage.id.clone(),
        name: stage.name.clone().unwrap_or_else(|| stage.id.clone()),
        stage_type: stage.stage_type.as_str().to_string(),
    });
    record.step = Some(StepRef {
        id: step.id().to_string(),
        name: step.name().to_string(),
    });
    record.until = Some(until);
    record.reason = reason;
    Some(record)
}

/// `hold` ended at `now` with `status`, for `reason`.
pub fn ended(
    hold: &HoldRecord,
    status: HoldStatus,
    now: DateTime<Utc>,
    reason: String,
) -> HoldRecord {
    HoldRecord {
        status,
        ended_at: Some(now),
        reason,
        ..hold.clone()
    }
}

/// Where `resume` goes on in `pipeline`. A hold whose step the pipeline no longer has
/// (the catalog changed while it waited) ends the pipeline `aborted`, never guessing.
pub(crate) fn resume_point(pipeline: &Pipeline, resume: &Resume) -> ResumePoint {
    let hold = &resume.hold;
    let mut steps = resume.steps.clone();
    let (Some(stage_ref), Some(step_ref)) = (&hold.stage, &hold.step) else {
        // A freeze holds the change before any stage: run it from the start.
        return ResumePoint {
            start: (0, 0),
            steps,
            stop: None,
        };
    };
    let place = format!("stage {} / step {}", stage_ref.id, step_ref.id);
    let found = pipeline
        .stages
        .iter()
        .enumerate()
        .find(|(_, s)| s.id == stage_ref.id)
        .and_then(|(i, stage)| {
            stage
                .steps
                .iter()
                .position(|s| s.id() == step_ref.id && !matches!(s, Step::Chaos(_)))
                .map(|j| (i, j, &stage.steps[j]))
        });
    let Some((stage_index, step_index, step)) = found else {
        return ResumePoint {
            start: (usize::MAX, 0),
            steps,
            stop: Some(Outcome::Aborted(format!(
                "{place}: no longer in pipeline {} (the catalog changed while the execution waited)",
                pipeline.id
            ))),
        };
    };
    let passed = matches!(hold.status, HoldStatus::Approved | HoldStatus::Done);
    let mut summary = StepSummary {
        stage_id: stage_ref.id.clone(),
        step_id: step_ref.id.clone(),
        run_id: hold.hold_id.clone(),
        status: if passed {
            RunStatus::Passed
        } else {
            RunStatus::Failed
        },
        resilience_score: None,
        expected_resilience_score: 0.0,
        summary: hold.reason.clone(),
    };
    let next = (stage_index, step_index + 1);
    if passed {
        steps.push(summary);
        return ResumePoint {
            start: next,
            steps,
            stop: None,
        };
    }
    let strategy = match step {
        Step::Approval(approval) => &approval.failure_strategy,
        _ => &FailureStrategy::Abort,
    };
    let reason = format!("{place}: {}", hold.reason);
    let ended_by_us = matches!(hold.status, HoldStatus::Aborted | HoldStatus::Superseded);
    let (stop, note) = match strategy {
        // The kill switch ends the pipeline whatever the step's failure strategy.
        _ if ended_by_us => (Some(Outcome::Aborted(reason)), None),
        FailureStrategy::Ignore
        | FailureStrategy::Retry {
            fallback: FallbackStrategy::Ignore,
            ..
        } => (None, Some("failure ignored")),
        FailureStrategy::MarkAsSuccess
        | FailureStrategy::Retry {
            fallback: FallbackStrategy::MarkAsSuccess,
            ..
        } => (None, Some("marked as success")),
        _ => (Some(Outcome::Failed(reason)), None),
    };
    if let Some(note) = note {
        summary.summary = format!("{} ({note})", summary.summary);
    }
    steps.push(summary);
    ResumePoint {
        start: if stop.is_some() {
            (usize::MAX, 0)
        } else {
            next
        },
        steps,
        stop,
    }
}

fn base(
    change: &FlagChange,
    pipeline: &Pipeline,
    kind: HoldKind,
    place: &str,
    now: DateTime<Utc>,
) -> HoldRecord {
    let execution_id = ids::pipeline_execution_id(&change.event_id, &pipeline.id);
    HoldRecord {
        hold_id: ids::hold_id(&execution_id, place),
        kind,
        status: HoldStatus::Waiting,
        pipeline_id: pipeline.id.clone(),
        pipeline_execution_id: execution_id,
        stage: None,
        step: None,
        flag: FlagRef {
            project: change.project.clone(),
            environment: change.environment.clone(),
            key: change.flag.clone(),
        },
        trigger_event_id: change.event_id.clone(),
        trigger_change_kind: change.change.kind,
        since: now,
        until: None,
        ended_at: None,
        reason: String::new(),
        window: None,
        decided_by: None,
        decided_at: None,
        comment: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::pipeline::{Approval, ApprovalStep, pipeline_example};
    use crate::catalog::span::Span;
    use crate::contract::flag_change::flag_change_example;

    /// The example pipeline with an approval step `ok` (failure strategy `strategy`) after
    /// its chaos step, and the hold it makes.
    fn approval(strategy: FailureStrategy) -> (Pipeline, HoldRecord) {
        let mut pipeline = pipeline_example();
        pipeline.stages[0].steps.push(Step::Approval(ApprovalStep {
            id: "ok".into(),
            name: None,
            approval: Approval {
                message: Some("look at the dashboards".into()),
                timeout: Span::from_millis(60_000),
            },
            failure_strategy: strategy,
        }));
        let stage = &pipeline.stages[0];
        let hold = step_hold(
            &flag_change_example(),
            &pipeline,
            stage,
            &stage.steps[1],
            Utc::now(),
        )
        .expect("an approval step holds");
        (pipeline, hold)
    }

    fn resumed(pipeline: &Pipeline, hold: &HoldRecord, status: HoldStatus) -> ResumePoint {
        let resume = Resume {
            hold: ended(hold, status, Utc::now(), "as the test says".into()),
            steps: Vec::new(),
        };
        resume_point(pipeline, &resume)
    }

    #[test]
    fn an_approved_hold_goes_on_after_its_step_and_a_rejected_one_follows_the_strategy() {
        let (pipeline, hold) = approval(FailureStrategy::Abort);
        assert_eq!(hold.kind, HoldKind::Approval);
        assert!(
            hold.reason.contains("look at the dashboards"),
            "{}",
            hold.reason
        );
        let approved = resumed(&pipeline, &hold, HoldStatus::Approved);
        assert_eq!(approved.start, (0, 2));
        assert!(approved.stop.is_none());
        assert_eq!(approved.steps[0].status, RunStatus::Passed);
        let rejected = resumed(&pipeline, &hold, HoldStatus::Rejected);
        assert!(matches!(rejected.stop, Some(Outcome::Failed(_))));
        assert_eq!(rejected.steps[0].status, RunStatus::Failed);

        let (pipeline, hold) = approval(FailureStrategy::Ignore);
        let ignored = resumed(&pipeline, &hold, HoldStatus::TimedOut);
        assert!(ignored.stop.is_none());
        assert!(ignored.steps[0].summary.ends_with("(failure ignored)"));
        // The kill switch ends the pipeline whatever the strategy.
        let aborted = resumed(&pipeline, &hold, HoldStatus::Aborted);
        assert!(matches!(aborted.stop, Some(Outcome::Aborted(_))));
    }

    #[test]
    fn a_hold_whose_step_left_the_pipeline_aborts_it() {
        let (mut pipeline, hold) = approval(FailureStrategy::Abort);
        pipeline.stages[0].steps.pop();
        let point = resumed(&pipeline, &hold, HoldStatus::Approved);
        match point.stop {
            Some(Outcome::Aborted(reason)) => {
                assert!(reason.contains("no longer in pipeline"), "{reason}")
            }
            other => panic!("expected an abort, got {other:?}"),
        }
    }
}
