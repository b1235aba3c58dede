//! What the worker owes flags of its partitions after their events are done: parked
//! executions waiting at a hold (approval, wait, freeze window) and guards watching a
//! flag after its `enable`. Each is one cheap task holding no slot and no Kafka resource;
//! its state is in the flag-state topic (see [`crate::bus::flag_state`]).
//!
//! Rules that keep it right:
//! - **One per flag.** A flag owes at most one thing. A newer change of the flag, as soon
//!   as the loop receives it, ends what the flag owes (`superseded`): a parked execution
//!   is answered with its pipeline's failure command, a guard ends without a command.
//!   Both happen on the loop, before the newer change is handled, so nothing owed can
//!   issue a command after a newer change of its flag was received.
//! - **Through the committer.** Every output of a hold or guard ending goes to the
//!   committer as a completion of the flag's partition and assignment epoch: it commits
//!   with the partition's offsets (fenced), or not at all when the partition moved on.
//! - **Stale events are dropped.** A task's event counts only while its entry is still
//!   the flag's current one (same hold or guard id); a superseded or revoked entry's
//!   event is ignored.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bus::kill_switch::KillSwitch;
use crate::bus::outputs::{self, Output};
use crate::catalog::Catalog;
use crate::chaos::run::RunContext;
use crate::config::Topics;
use crate::contract::flag_state::{Guarding, Owed as OwedState, Waiting};
use crate::contract::{
    ApprovalDecision, FlagChange, FlagState, GuardRecord, GuardStatus, HoldKind, HoldRecord,
    HoldStatus, ids,
};
use crate::gate::decision::{self, Gating, Outcome};
use crate::gate::guard::{GuardWatch, watch};
use crate::gate::hold;

/// A task's news for the loop.
pub(crate) enum OwedEvent {
    /// A hold ended (approved, rejected, timed out, done, or aborted by the kill switch).
    HoldEnded {
        /// The flag (`project/environment/flag`).
        flag: String,
        /// The hold, ended.
        hold: Box<HoldRecord>,
    },
    /// A guard ended by itself: fired, expired, or aborted by the kill switch.
    GuardEnded {
        /// The flag.
        flag: String,
        /// Which guard.
        guard_id: String,
        /// How the watch ended (`None`: aborted by the kill switch).
        watch: Option<GuardWatch>,
    },
}

/// One thing owed, with the task that waits or watches for it.
pub(crate) struct Entry {
    /// The flag-state record that says what is owed.
    pub(crate) state: FlagState,
    /// The partition's assignment epoch when the entry began.
    pub(crate) epoch: u64,
    stop: CancellationToken,
}

/// Everything owed to flags of the partitions this worker owns, by flag.
pub(crate) struct Owed {
    entries: HashMap<String, Entry>,
    events_tx: mpsc::UnboundedSender<OwedEvent>,
}

impl Owed {
    /// Nothing owed yet; the tasks' events go to `events_tx` (the consumer loop hands them
    /// to [`super::Scheduler::owed_event`]).
    pub(crate) fn new(events_tx: mpsc::UnboundedSender<OwedEvent>) -> Self {
        Owed {
            entries: HashMap::new(),
            events_tx,
        }
    }

    /// Ends what `flag` owes, stopping its task; returns its entry.
    pub(crate) fn take(&mut self, flag: &str) -> Option<Entry> {
        let entry = self.entries.remove(flag)?;
        entry.stop.cancel();
        Some(entry)
    }

    /// Ends `flag`'s entry when it is still the one with `id` (a hold or guard id).
    pub(crate) fn take_current(&mut self, flag: &str, id: &str) -> Option<Entry> {
        let current = self
            .entries
            .get(flag)
            .is_some_and(|e| owed_id(&e.state) == id);
        if current { self.take(flag) } else { None }
    }

    /// Forgets (stops, without any output) everything owed to flags of `partition`, or
    /// of every partition when `None`: its next owner takes it over from the topic.
    pub(crate) fn forget(&mut self, partition: Option<i32>) {
        self.entries.retain(|_, entry| {
            let keep = partition.is_some_and(|p| entry.state.source_partition != p);
            if !keep {
                entry.stop.cancel();
            }
            keep
        });
    }

    /// Waits for `state`'s hold to end: an answer read by `kill_switch` (approvals), its
    /// `until` passing, or `kill` (an abort request naming the execution).
    pub(crate) fn wait(
        &mut self,
        state: FlagState,
        epoch: u64,
        kill_switch: &KillSwitch,
        kill: CancellationToken,
    ) {
        let OwedState::Waiting(waiting) = &state.owed else {
            return;
        };
        let hold = waiting.hold.clone();
        let kill_switch = kill_switch.clone();
        self.keep(state, epoch, move |flag, _stop| async move {
            let ended = hold_end(&hold, &kill_switch, &kill).await;
            Some(OwedEvent::HoldEnded {
                flag,
                hold: Box::new(ended),
            })
        });
    }

    /// Watches `state`'s guard with `guard`'s probes until it fires, expires, or `kill`
    /// (an abort request naming the execution) fires.
    pub(crate) fn watch(
        &mut self,
        state: FlagState,
        epoch: u64,
        guard: crate::catalog::guard::Guard,
        run: RunContext,
        kill: CancellationToken,
    ) {
        let OwedState::Guarding(guarding) = &state.owed else {
            return;
        };
        let record = guarding.guard.clone();
        self.keep(state, epoch, move |flag, stop| async move {
            let ended = tokio::select! {
                watch = watch(&guard, record.started_at, record.deadline, &run, &stop) => {
                    if watch.stopped {
                        return None;
                    }
                    Some(watch)
                }
                () = kill.cancelled() => None,
            };
            Some(OwedEvent::GuardEnded {
                flag,
                guard_id: record.guard_id,
                watch: ended,
            })
        });
    }

    /// Keeps `state` with its task, made by `task` from the flag's key and the entry's
    /// stop token; the task's event (if any) goes to the loop unless the entry was
    /// stopped first.
    fn keep<F>(
        &mut self,
        state: FlagState,
        epoch: u64,
        task: impl FnOnce(String, CancellationToken) -> F,
    ) where
        F: std::future::Future<Output = Option<OwedEvent>> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let events = self.events_tx.clone();
        let run = task(state.flag_key(), stop.clone());
        let task_stop = stop.clone();
        tokio::spawn(async move {
            let event = tokio::select! {
                event = run => event,
                () = task_stop.cancelled() => return,
            };
            if let Some(event) = event {
                let _ = events.send(event);
            }
        });
        self.entries
            .insert(state.flag_key(), Entry { state, epoch, stop });
    }
}

/// The id of what a state owes: its hold's or guard's id.
fn owed_id(state: &FlagState) -> &str {
    match &state.owed {
        OwedState::Waiting(waiting) => &waiting.hold.hold_id,
        OwedState::Guarding(guarding) => &guarding.guard.guard_id,
        OwedState::Idle => "",
    }
}

/// When and how `hold` ends; see [`Owed::wait`].
async fn hold_end(
    hold: &HoldRecord,
    kill_switch: &KillSwitch,
    kill: &CancellationToken,
) -> HoldRecord {
    if hold.status != HoldStatus::Waiting {
        // Ended before a restart, its resume never committed: go on at once.
        return hold.clone();
    }
    let place = hold.place().unwrap_or_default();
    let mut answers = kill_switch.answers();
    loop {
        if hold.kind == HoldKind::Approval
            && let Some((request, sent_at)) =
                kill_switch.answer_for(&hold.pipeline_execution_id, &place, hold.since)
        {
            let who = request
                .requested_by
                .clone()
                .unwrap_or_else(|| "an approver who gave no name (requested_by unset)".into());
            let comment = request
                .comment
                .as_deref()
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            let (status, verb) = match request.decision {
                ApprovalDecision::Approve => (HoldStatus::Approved, "approved"),
                ApprovalDecision::Reject => (HoldStatus::Rejected, "rejected"),
            };
            let mut ended = hold::ended(
                hold,
                status,
                Utc::now(),
                format!("{verb} by {who}{comment}"),
            );
            ended.decided_by = request.requested_by;
            ended.decided_at = Some(sent_at);
            ended.comment = request.comment;
            return ended;
        }
        let until = hold.until.unwrap_or(DateTime::<Utc>::MAX_UTC);
        let left = (until - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            () = tokio::time::sleep(left) => {
                let now = Utc::now();
                let (status, reason) = match hold.kind {
                    HoldKind::Approval => (HoldStatus::TimedOut, "no approve or reject request before the timeout".to_string()),
                    HoldKind::Wait => (HoldStatus::Done, "wait over".to_string()),
                    HoldKind::Freeze => (HoldStatus::Done, format!("freeze window {} over", hold.window.as_deref().unwrap_or("?"))),
                };
                return hold::ended(hold, status, now, reason);
            }
            changed = answers.changed() => {
                if changed.is_err() {
                    // The kill switch is gone (the worker stops): wait for the time alone.
                    tokio::time::sleep(left).await;
                }
            }
            () = kill.cancelled() => {
                return hold::ended(hold, HoldStatus::Aborted, Utc::now(), "aborted by the kill switch".into());
            }
        }
    }
}

/// A flag-state record for `change`'s flag on `partition`.
pub(crate) fn state_of(change: &FlagChange, partition: i32, owed: OwedState) -> FlagState {
    FlagState {
        project: change.project.clone(),
        environment: change.environment.clone(),
        flag: change.flag.clone(),
        source_partition: partition,
        updated_at: Utc::now(),
        owed,
    }
}

/// The state of an execution parked at `hold`.
pub(crate) fn waiting(
    change: &FlagChange,
    partition: i32,
    attempt: u32,
    parked: &hold::Parked,
) -> FlagState {
    state_of(
        change,
        partition,
        OwedState::Waiting(Box::new(Waiting {
            change: change.clone(),
            pipeline_id: parked.hold.pipeline_id.clone(),
            attempt,
            hold: parked.hold.clone(),
            steps_done: parked.steps.clone(),
        })),
    )
}

/// The guard that follows `command` (an `enable` that passed `pipeline`), if the pipeline
/// has one: its `watching` record and its state.
pub(crate) fn guard_for(
    change: &FlagChange,
    partition: i32,
    pipeline: &crate::catalog::Pipeline,
    command: &crate::contract::FlagCommand,
) -> Option<(GuardRecord, FlagState)> {
    let guard = pipeline.guard.as_ref()?;
    let passed = command.command == crate::contract::CommandKind::Enable
        && command.reason_code == crate::contract::ReasonCode::Passed
        && !command.dry_run;
    if !passed {
        return None;
    }
    let started_at = command.issued_at;
    let deadline = started_at + guard.duration.duration();
    let record = GuardRecord {
        guard_id: ids::guard_id(&command.command_id),
        status: GuardStatus::Watching,
        pipeline_id: pipeline.id.clone(),
        pipeline_execution_id: ids::pipeline_execution_id(&change.event_id, &pipeline.id),
        flag: crate::contract::run_record::FlagRef {
            project: change.project.clone(),
            environment: change.environment.clone(),
            key: change.flag.clone(),
        },
        trigger_event_id: change.event_id.clone(),
        enable_command_id: command.command_id.clone(),
        on_failure: decision::failure_command(Some(pipeline)),
        started_at,
        deadline,
        ended_at: None,
        probes: Vec::new(),
        reason: None,
        command_id: None,
    };
    let state = state_of(
        change,
        partition,
        OwedState::Guarding(Box::new(Guarding {
            change: change.clone(),
            guard: record.clone(),
        })),
    );
    Some((record, state))
}

/// The outputs that end `entry` because the newer change `by` (an event id) of its flag
/// arrived: a parked execution gets its pipeline's failure command; a guard just ends.
/// Either way the flag's state becomes `idle` (the newer change writes its own later).
pub(crate) fn superseded(
    topics: &Topics,
    catalog: &Catalog,
    state: &FlagState,
    by: &str,
) -> Vec<Output> {
    let now = Utc::now();
    let mut out = Vec::new();
    match &state.owed {
        OwedState::Waiting(waiting) => {
            let reason = format!(
                "superseded by change {by} of the flag while {}",
                waiting.hold.reason
            );
            let ended = hold::ended(&waiting.hold, HoldStatus::Superseded, now, reason.clone());
            out.push(outputs::hold_record(topics, &ended));
            let pipeline = catalog.pipeline(&waiting.pipeline_id);
            let command = decision::flag_command(
                &waiting.change,
                pipeline,
                Gating::Gate,
                &Outcome::Aborted(reason),
                waiting.steps_done.clone(),
                now,
            );
            out.extend(outputs::answer(topics, &waiting.change, &command));
        }
        OwedState::Guarding(guarding) => {
            let mut ended = guarding.guard.clone();
            ended.status = GuardStatus::Superseded;
            ended.ended_at = Some(now);
            ended.reason = Some(format!("ended by change {by} of the flag"));
            out.push(outputs::guard_record(topics, &ended));
        }
        OwedState::Idle => return out,
    }
    let idle = FlagState {
        updated_at: now,
        owed: OwedState::Idle,
        ..state.clone()
    };
    out.push(outputs::flag_state(topics, &idle));
    out
}

/// The outputs of a guard that ended: its final record, its command when it fired, and the
/// flag's state back to `idle`. `Err` holds why it was aborted.
pub(crate) fn guard_ended(
    topics: &Topics,
    state: &FlagState,
    watch: Result<GuardWatch, String>,
) -> Vec<Output> {
    let OwedState::Guarding(guarding) = &state.owed else {
        return Vec::new();
    };
    let now = Utc::now();
    let mut record = guarding.guard.clone();
    let mut out = Vec::new();
    match watch {
        Ok(watch) => {
            record.ended_at = Some(watch.ended_at);
            record.probes = watch.probes;
            match watch.fired {
                Some(reason) => {
                    let command =
                        decision::guard_command(&guarding.change, &record, reason.clone(), now);
                    record.status = GuardStatus::Fired;
                    record.reason = Some(reason);
                    record.command_id = Some(command.command_id.clone());
                    out.extend(outputs::answer(topics, &guarding.change, &command));
                }
                None => {
                    record.status = GuardStatus::Expired;
                    record.reason = Some("every guard probe held until the deadline".into());
                }
            }
        }
        Err(reason) => {
            record.status = GuardStatus::Aborted;
            record.ended_at = Some(now);
            record.reason = Some(reason);
        }
    }
    out.insert(0, outputs::guard_record(topics, &record));
    let idle = FlagState {
        updated_at: now,
        owed: OwedState::Idle,
        ..state.clone()
    };
    out.push(outputs::flag_state(topics, &idle));
    out
}
