//! Pipeline execution: the stages of a flag change's pipeline, their chaos steps in order,
//! failure strategies, step timeouts, and the run records each run leaves behind.
//!
//! Two ways to stop an execution early, and they mean different things:
//! - `kill` (the kill switch): the running experiment is aborted, its record says
//!   `aborted`, and the pipeline's failure outcome applies: the execution is final.
//! - `interrupt` (shutdown, partition revoked): the experiment is aborted and recorded as
//!   `aborted`, but the execution is not final: no command, and the event is run again
//!   from the start, as the next attempt, by whoever owns it next.
//!
//! `kill` should be a child of `interrupt`, so an interrupt also stops the run.
//!
//! Re-runs: an attempt after the first may follow one that was cut off hard (the worker
//! and its guards killed) with faults still active. Each step's first run then reverts
//! what the earlier attempt may have left of its experiment's faults before it injects
//! anything (`previous_attempt_reverts` in its record, and a log line per fault); when
//! that fails the run ends `error` naming the fault, and the step's next run (a retry)
//! tries again. For this to cover every fault, a run injects nothing before its
//! attempt's start is durable (`start_committed`): an attempt cut off before that runs
//! again under the same attempt number, with no cleanup.
//!
//! Telemetry: each stage runs in a `stage` span and each run of a step in a `step` span
//! carrying its `run_id` (children of the caller's span, the worker's `process` span), so
//! traces show the pipeline's shape and every log line of a run names it. Run records
//! are scrubbed of known secrets ([`crate::telemetry::redact`]) before they leave.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::catalog::assertion::AssertionInput;
use crate::catalog::credentials::credential_fields;
use crate::catalog::pipeline::{
    ChaosStep, FailureStrategy, FallbackStrategy, Pipeline, Stage, Step,
};
use crate::catalog::{Catalog, Unrouted};
use crate::chaos::run::{ExperimentResult, RunContext, run_experiment};
use crate::contract::run_record::{ExperimentRef, FlagRef, StageRef, StepRef};
use crate::contract::{FlagChange, FlagCommand, RunRecord, RunStatus, StepSummary, Verdict, ids};
use crate::telemetry::{redact, traces};

use super::decision::{self, Gating, Outcome, StepVerdict, judge_step};
use super::hold::{self, Parked, Resume};

/// What an execution needs besides the flag change and its pipeline.
#[derive(Debug, Clone)]
pub struct ExecutionContext {
    /// Settings shared by every run (lease, target locks, proxies); its `cancel` is
    /// replaced per run.
    pub run: RunContext,
    /// 1 for the first execution of this event; higher after a crash or rebalance.
    pub attempt: u32,
    /// The kill switch for this execution.
    pub kill: CancellationToken,
    /// Shutdown or partition revoked.
    pub interrupt: CancellationToken,
    /// What a change with no pipeline gets (`worker.unrouted`; the worker dead-letters
    /// such changes itself under `dead_letter`, and they are answered `disable` here).
    pub unrouted: Unrouted,
    /// Receives each run's `running` record when it starts, and the `aborted` record of a
    /// run cut off by an interrupt.
    pub updates: Option<UpdateSink>,
    /// Set once this attempt's start is durable (the worker's start mark committed). A
    /// run interrupted before that runs again under the same attempt and run id, so no
    /// `aborted` record is published for it (its id must not end twice). `None`: durable.
    pub start_committed: Option<Arc<AtomicBool>>,
    /// Go on with a parked execution whose hold ended (see [`super::hold`]); `None` runs
    /// the pipeline from its start.
    pub resume: Option<Resume>,
}

/// Where run records go as they happen (the worker hands them to its committer). Called
/// in the run's task, so a run's `running` record is handed over before its end is.
#[derive(Clone)]
pub struct UpdateSink(Arc<dyn Fn(RunUpdate) + Send + Sync>);

impl UpdateSink {
    /// A sink calling `publish` with each update.
    pub(crate) fn new(publish: impl Fn(RunUpdate) + Send + Sync + 'static) -> Self {
        UpdateSink(Arc::new(publish))
    }

    fn publish(&self, update: RunUpdate) {
        (self.0)(update)
    }
}

impl std::fmt::Debug for UpdateSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpdateSink")
    }
}

/// A run record to publish as it happens, with the span of its run: the record's
/// `traceparent` header names that span.
#[derive(Debug, Clone)]
pub(crate) struct RunUpdate {
    /// The record (`running`, or `aborted` after an interrupt).
    pub(crate) record: RunRecord,
    /// The run's `step` span.
    pub(crate) span: tracing::Span,
}

/// Where a run sits in its pipeline execution: stage and step (indices in the pipeline)
/// and the step's retry. With the event and the attempt it names the run id, so a later
/// attempt can close a run an earlier one left `running` ([`superseded_record`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RunPosition {
    /// Index of the stage in the pipeline.
    pub(crate) stage: usize,
    /// Index of the step in its stage.
    pub(crate) step: usize,
    /// The step's retry (0 for its first run).
    pub(crate) retry: u32,
}

/// Where `record`, a run of `pipeline` for `change`, sits; `None` when the pipeline has
/// no such step (a run of another pipeline).
pub(crate) fn run_position(
    change: &FlagChange,
    pipeline: &Pipeline,
    record: &RunRecord,
) -> Option<RunPosition> {
    let stage = pipeline
        .stages
        .iter()
        .position(|s| s.id == record.stage.id)?;
    let stage_ref = &pipeline.stages[stage];
    let step = stage_ref
        .steps
        .iter()
        .position(|s| s.id() == record.step.id)?;
    let step_ref = stage_ref.steps[step].chaos()?;
    let retries = match &step_ref.failure_strategy {
        FailureStrategy::Retry { count, .. } => *count,
        _ => 0,
    };
    (0..=retries)
        .find(|retry| {
            ids::run_id(
                &change.event_id,
                &pipeline.id,
                &stage_ref.id,
                &step_ref.id,
                record.attempt,
                *retry,
            ) == record.run_id
        })
        .map(|retry| RunPosition { stage, step, retry })
}

/// The final record of the run at `position` of `attempt`, left `running` when that
/// attempt was cut off (a crash, a lost partition): `aborted`, "superseded by attempt
/// `by`". `None` when the pipeline no longer has that step.
pub(crate) fn superseded_record(
    change: &FlagChange,
    pipeline: &Pipeline,
    catalog: &Catalog,
    position: RunPosition,
    attempt: u32,
    by: u32,
) -> Option<RunRecord> {
    let stage = pipeline.stages.get(position.stage)?;
    let step = stage.steps.get(position.step)?.chaos()?;
    let name = catalog
        .experiment(&step.experiment)
        .and_then(|e| e.name.clone())
        .unwrap_or_else(|| step.experiment.clone());
    let run_id = ids::run_id(
        &change.event_id,
        &pipeline.id,
        &stage.id,
        &step.id,
        attempt,
        position.retry,
    );
    let mut record = base_record(change, pipeline, stage, step, &name, run_id, attempt);
    let now = Utc::now();
    record.status = RunStatus::Aborted;
    record.summary = Some(format!(
        "superseded by attempt {by}: the run was cut off (worker stopped or partition lost) before it ended"
    ));
    record.ended_at = Some(now);
    record.duration_seconds = Some(0.0);
    Some(record)
}

/// What an execution produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Execution {
    /// Final records of every run, in order.
    pub records: Vec<RunRecord>,
    /// The flag command; `None` when the execution was interrupted (not final) or parked.
    pub(crate) command: Option<FlagCommand>,
    /// Where the execution stopped to wait (an approval or wait step, a freeze window);
    /// the worker resumes it when the hold ends.
    pub parked: Option<Parked>,
}

/// Answers a flag change: runs its pipeline when it is gated, or passes it on at once.
///
/// `pipeline` is the routed pipeline (`None` when no pipeline matches). An experiment the
/// catalog lacks cannot happen with a validated catalog; it is recorded as a step `error`.
pub async fn execute(
    change: &FlagChange,
    pipeline: Option<&Pipeline>,
    catalog: &Catalog,
    context: &ExecutionContext,
) -> Execution {
    let pipeline = match (
        decision::pass_on(change, pipeline, context.unrouted),
        pipeline,
    ) {
        (None, Some(pipeline)) => pipeline,
        // Passed on (which every change without a pipeline is).
        (command, _) => {
            return Execution {
                records: Vec::new(),
                command,
                parked: None,
            };
        }
    };
    let gating = Gating::Gate;
    let mut records = Vec::new();
    let interrupted = |records| Execution {
        records,
        command: None,
        parked: None,
    };
    if context.interrupt.is_cancelled() {
        return interrupted(records);
    }
    let now = Utc::now();
    let (start, mut steps, mut outcome) = match &context.resume {
        Some(resume) => {
            let point = hold::resume_point(pipeline, resume);
            (
                point.start,
                point.steps,
                point.stop.unwrap_or(Outcome::Passed),
            )
        }
        None => ((0, 0), Vec::new(), Outcome::Passed),
    };
    if context.kill.is_cancelled() {
        // Aborted while it waited for its flag, a slot or a hold: nothing runs.
        let outcome = Outcome::Aborted("aborted by the kill switch before it started".into());
        let command = decision::flag_command(change, Some(pipeline), gating, &outcome, steps, now);
        return Execution {
            records,
            command: Some(command),
            parked: None,
        };
    }
    // A change is held by the freeze windows when it first runs, and again when a freeze
    // hold ends (a window may have begun meanwhile, or the hold ended at its bound).
    let from_freeze = context
        .resume
        .as_ref()
        .is_some_and(|r| r.hold.kind == crate::contract::HoldKind::Freeze);
    if (context.resume.is_none() || from_freeze)
        && let Some(hold) = hold::freeze_hold(change, pipeline, now)
    {
        return Execution {
            records,
            command: None,
            parked: Some(Parked { hold, steps }),
        };
    }
    'stages: for (stage_index, stage) in pipeline.stages.iter().enumerate() {
        let stage_span = traces::stage_span(&stage.id, stage.stage_type.as_str());
        for (step_index, step) in stage.steps.iter().enumerate() {
            if (stage_index, step_index) < start
                || matches!(outcome, Outcome::Failed(_) | Outcome::Aborted(_))
            {
                continue;
            }
            let step = match step {
                Step::Chaos(step) => step,
                Step::Approval(_) | Step::Wait(_) => {
                    let hold = hold::step_hold(change, pipeline, stage, step, Utc::now());
                    return Execution {
                        records,
                        command: None,
                        parked: hold.map(|hold| Parked { hold, steps }),
                    };
                }
            };
            let result = run_step(change, pipeline, stage, step, catalog, context)
                .instrument(stage_span.clone())
                .await;
            records.extend(result.records);
            if context.interrupt.is_cancelled() {
                return interrupted(records);
            }
            steps.push(result.summary);
            if let Some(stop) = result.stop {
                outcome = stop;
                break 'stages;
            }
        }
    }
    let command =
        decision::flag_command(change, Some(pipeline), gating, &outcome, steps, Utc::now());
    Execution {
        records,
        command: Some(command),
        parked: None,
    }
}

/// One step's runs, its summary for the command, and whether it stops the pipeline.
struct StepRuns {
    records: Vec<RunRecord>,
    summary: StepSummary,
    stop: Option<Outcome>,
}

async fn run_step(
    change: &FlagChange,
    pipeline: &Pipeline,
    stage: &Stage,
    step: &ChaosStep,
    catalog: &Catalog,
    context: &ExecutionContext,
) -> StepRuns {
    let (retries, backoff, fallback) = match &step.failure_strategy {
        FailureStrategy::Retry {
            count,
            backoff,
            fallback,
        } => (*count, backoff.duration(), *fallback),
        FailureStrategy::Abort => (0, Duration::ZERO, FallbackStrategy::Abort),
        FailureStrategy::Ignore => (0, Duration::ZERO, FallbackStrategy::Ignore),
        FailureStrategy::MarkAsSuccess => (0, Duration::ZERO, FallbackStrategy::MarkAsSuccess),
    };
    let place = format!("stage {} / step {}", stage.id, step.id);
    let mut records = Vec::new();
    let mut retry = 0;
    // A later attempt first reverts what an earlier one may have left, in each step, until
    // one of the step's runs has done so (see "Re-runs").
    let mut leftovers_cleared = context.attempt <= 1;
    loop {
        let previous_attempt = (!leftovers_cleared).then(|| context.attempt - 1);
        let record = run_once(
            change,
            pipeline,
            stage,
            step,
            catalog,
            context,
            RunOf {
                retry,
                previous_attempt,
            },
        )
        .await;
        leftovers_cleared |= !record.previous_attempt_reverts.is_empty()
            && record.previous_attempt_reverts.iter().all(|r| r.reverted);
        let status = record.status;
        let summary = StepSummary {
            stage_id: stage.id.clone(),
            step_id: step.id.clone(),
            run_id: record.run_id.clone(),
            status,
            resilience_score: record.resilience_score,
            expected_resilience_score: step.expected_resilience_score,
            summary: record.summary.clone().unwrap_or_default(),
        };
        records.push(record);
        if status == RunStatus::Passed {
            return StepRuns {
                records,
                summary,
                stop: None,
            };
        }
        if context.interrupt.is_cancelled() {
            return StepRuns {
                records,
                summary,
                stop: Some(Outcome::Aborted(format!("{place}: interrupted"))),
            };
        }
        if context.kill.is_cancelled() {
            let reason = format!("{place}: aborted by the kill switch");
            return StepRuns {
                records,
                summary,
                stop: Some(Outcome::Aborted(reason)),
            };
        }
        if retry < retries {
            let wait = backoff.saturating_mul(1 << retry.min(16));
            retry += 1;
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = context.kill.cancelled() => {}
            }
            continue;
        }
        let reason = format!("{place}: {}", summary.summary);
        let (stop, note) = match fallback {
            FallbackStrategy::Abort => (Some(Outcome::Failed(reason)), None),
            FallbackStrategy::Ignore => (None, Some("failure ignored")),
            FallbackStrategy::MarkAsSuccess => (None, Some("marked as success")),
        };
        let summary = match note {
            Some(note) => StepSummary {
                summary: format!("{} ({note})", summary.summary),
                ..summary
            },
            None => summary,
        };
        return StepRuns {
            records,
            summary,
            stop,
        };
    }
}

fn base_record(
    change: &FlagChange,
    pipeline: &Pipeline,
    stage: &Stage,
    step: &ChaosStep,
    experiment_name: &str,
    run_id: String,
    attempt: u32,
) -> RunRecord {
    RunRecord {
        run_id,
        attempt,
        status: RunStatus::Running,
        pipeline_id: pipeline.id.clone(),
        pipeline_execution_id: ids::pipeline_execution_id(&change.event_id, &pipeline.id),
        stage: StageRef {
            id: stage.id.clone(),
            name: stage.name.clone().unwrap_or_else(|| stage.id.clone()),
            stage_type: stage.stage_type.as_str().to_string(),
        },
        step: StepRef {
            id: step.id.clone(),
            name: step.name.clone().unwrap_or_else(|| step.id.clone()),
        },
        experiment: ExperimentRef {
            id: step.experiment.clone(),
            name: experiment_name.to_string(),
        },
        flag: FlagRef {
            project: change.project.clone(),
            environment: change.environment.clone(),
            key: change.flag.clone(),
        },
        trigger_event_id: change.event_id.clone(),
        trigger_actor: change.actor.clone(),
        trigger_change_kind: Some(change.change.kind),
        // Called inside the run's step span: its trace is the one the records carry.
        trace_id: traces::trace_id(&tracing::Span::current()),
        resilience_score: None,
        expected_resilience_score: step.expected_resilience_score,
        assertion: None,
        faults: Vec::new(),
        probes: Vec::new(),
        probes_passed: 0,
        probes_failed: 0,
        started_at: Utc::now(),
        ended_at: None,
        duration_seconds: None,
        waited_for_target_seconds: 0.0,
        summary: None,
        log: Vec::new(),
        previous_attempt_reverts: Vec::new(),
    }
}

/// Which run of a step: its retry, and the earlier attempt whose leftovers it reverts
/// first, if any.
#[derive(Debug, Clone, Copy)]
struct RunOf {
    retry: u32,
    previous_attempt: Option<u32>,
}

/// Runs the step's experiment once and returns its final record.
async fn run_once(
    change: &FlagChange,
    pipeline: &Pipeline,
    stage: &Stage,
    step: &ChaosStep,
    catalog: &Catalog,
    context: &ExecutionContext,
    RunOf {
        retry,
        previous_attempt,
    }: RunOf,
) -> RunRecord {
    let run_id = ids::run_id(
        &change.event_id,
        &pipeline.id,
        &stage.id,
        &step.id,
        context.attempt,
        retry,
    );
    let span = traces::step_span(&step.id, &step.experiment, &run_id, context.attempt);
    async move {
        let Some(experiment) = catalog.experiment(&step.experiment) else {
            let mut record = base_record(
                change,
                pipeline,
                stage,
                step,
                &step.experiment,
                run_id,
                context.attempt,
            );
            record.status = RunStatus::Error;
            record.summary = Some(format!(
                "experiment '{}' is not in the catalog",
                step.experiment
            ));
            record.ended_at = Some(Utc::now());
            record.duration_seconds = Some(0.0);
            return record;
        };
        let name = experiment
            .name
            .clone()
            .unwrap_or_else(|| experiment.id.clone());
        let mut record = base_record(
            change,
            pipeline,
            stage,
            step,
            &name,
            run_id,
            context.attempt,
        );
        if retry > 0 {
            record.log.push(format!("retry {retry} of the step"));
        }
        if let Some(updates) = &context.updates {
            updates.publish(RunUpdate {
                record: record.clone(),
                span: tracing::Span::current(),
            });
        }

        // Nothing is injected before this attempt's start is durable: a crash before that
        // runs the event again under the same attempt, which would not know to revert
        // what this run left (see "Re-runs").
        if let Some(committed) = &context.start_committed {
            start_durable(committed, &context.kill).await;
        }
        let cancel = context.kill.child_token();
        let timed_out = CancellationToken::new();
        let targets_granted = CancellationToken::new();
        // The step's timeout counts from when the run holds its targets: a wait behind
        // another flag's experiment is bounded by `worker.target_wait`, and named so.
        let timer = step.timeout.map(|timeout| {
            let cancel = cancel.clone();
            let timed_out = timed_out.clone();
            let granted = targets_granted.clone();
            tokio::spawn(async move {
                granted.cancelled().await;
                tokio::time::sleep(timeout.duration()).await;
                timed_out.cancel();
                cancel.cancel();
            })
        });
        let run_context = RunContext {
            cancel,
            targets_granted,
            previous_attempt,
            ..context.run.clone()
        };
        let result = run_experiment(experiment, &run_context).await;
        if let Some(timer) = timer {
            timer.abort();
        }
        finish_record(&mut record, step, result, timed_out.is_cancelled());
        let mut secrets = redact::installed()
            .map(|installed| (*installed).clone())
            .unwrap_or_default();
        let fields = credential_fields(experiment);
        secrets.add_credentials(fields.headers, fields.urls);
        secrets.add_variables(fields.variables);
        secrets.scrub_run_record(&mut record);
        tracing::info!(
            status = record.status.as_str(),
            resilience_score = record.resilience_score,
            summary = record.summary.as_deref().unwrap_or_default(),
            "run finished"
        );
        let start_committed = context
            .start_committed
            .as_ref()
            .is_none_or(|committed| committed.load(Ordering::Acquire));
        if context.interrupt.is_cancelled()
            && start_committed
            && let Some(updates) = &context.updates
        {
            updates.publish(RunUpdate {
                record: record.clone(),
                span: tracing::Span::current(),
            });
        }
        record
    }
    .instrument(span)
    .await
}

/// Returns once `committed` is set (the attempt's start mark committed, usually within
/// some 30 ms), polled every 5 ms, or when `stop` (the kill switch, which an interrupt
/// also cancels) fires.
async fn start_durable(committed: &AtomicBool, stop: &CancellationToken) {
    while !committed.load(Ordering::Acquire) && !stop.is_cancelled() {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
            () = stop.cancelled() => {}
        }
    }
}

/// Fills the record from the experiment's result and the step's verdict.
fn finish_record(
    record: &mut RunRecord,
    step: &ChaosStep,
    result: ExperimentResult,
    timed_out: bool,
) {
    let faults_passed = count(&result.faults, |f| f.verdict == Verdict::Passed);
    let faults_failed = count(&result.faults, |f| f.verdict != Verdict::Passed);
    record.started_at = result.started_at;
    record.ended_at = Some(result.ended_at);
    record.duration_seconds = Some(result.duration_seconds);
    record.waited_for_target_seconds = result.waited_for_target_seconds;
    record.resilience_score = result.resilience_score;
    record.probes_passed = result.probes_passed;
    record.probes_failed = result.probes_failed;
    record.log.extend(result.log);
    record.faults = result.faults;
    record.probes = result.probes;
    record.previous_attempt_reverts = result.previous_attempt_reverts;
    let verdict = match (result.verdict, result.resilience_score) {
        (RunStatus::Passed | RunStatus::Failed, Some(score)) => judge_step(
            step,
            &AssertionInput {
                resilience_score: score,
                expected_resilience_score: step.expected_resilience_score,
                faults_passed: i64::from(faults_passed),
                faults_failed: i64::from(faults_failed),
                probes_passed: i64::from(result.probes_passed),
                probes_failed: i64::from(result.probes_failed),
                duration_seconds: result.duration_seconds,
            },
        ),
        (RunStatus::Aborted, _) if timed_out => StepVerdict {
            status: RunStatus::Aborted,
            summary: format!(
                "step timeout {} exceeded; experiment aborted",
                step.timeout.map(|t| t.to_string()).unwrap_or_default()
            ),
            assertion: None,
        },
        (status, _) => StepVerdict {
            status: if status == RunStatus::Passed || status == RunStatus::Failed {
                RunStatus::Error
            } else {
                status
            },
            summary: result.summary,
            assertion: None,
        },
    };
    record.status = verdict.status;
    record.summary = Some(verdict.summary);
    record.assertion = verdict.assertion;
}

fn count<T>(items: &[T], keep: impl Fn(&T) -> bool) -> u32 {
    u32::try_from(items.iter().filter(|item| keep(item)).count()).unwrap_or(u32::MAX)
}
