//! The scheduler's side of what flags are owed (see [`super::owed`]): encoding an
//! execution's end (a command, perhaps followed by a guard; or a hold), owing it, ending
//! it when a newer change arrives, resuming a parked execution when its hold ends, and
//! taking over what a newly assigned partition's flags are owed.

use chrono::Utc;

use crate::bus::outputs::{self, Output};
use crate::catalog::Pipeline;
use crate::config::Topics;
use crate::contract::flag_state::Owed as OwedState;
use crate::contract::{FlagState, HoldStatus, ids};
use crate::gate::decision::{self, Gating, Outcome};
use crate::gate::executor::Execution;
use crate::gate::hold::{self, Resume};

use super::owed::{self, OwedEvent};
use super::{ADOPT_LIMIT, Pending, Resuming, Scheduler};

/// An execution's outputs, and what its flag is owed after them (a parked execution, a
/// guard), to keep once they are handed to the committer.
pub(crate) struct Encoded {
    pub(crate) outputs: Vec<Output>,
    pub(crate) owed: Option<FlagState>,
}

/// What an ended execution writes: its run records, then its command (with what a guard
/// of its pipeline starts) or its hold. A resumed execution that ends with a command sets
/// its flag's state back to `idle` (or `guarding`). Nothing for an interrupted one.
pub(crate) fn execution_outputs(
    topics: &Topics,
    pipeline: Option<&Pipeline>,
    pending: &Pending,
    attempt: u32,
    execution: &Execution,
) -> Encoded {
    let mut outputs: Vec<Output> = Vec::new();
    let mut owed = None;
    if execution.command.is_none() && execution.parked.is_none() {
        return Encoded { outputs, owed };
    }
    outputs.extend(
        execution
            .records
            .iter()
            .map(|r| outputs::run_record(topics, r)),
    );
    let change = &pending.change;
    if let Some(command) = &execution.command {
        outputs.extend(outputs::answer(topics, change, command));
        if let Some((record, state)) =
            pipeline.and_then(|p| owed::guard_for(change, pending.partition, p, command))
        {
            outputs.push(outputs::guard_record(topics, &record));
            outputs.push(outputs::flag_state(topics, &state));
            owed = Some(state);
        } else if pending.resume.is_some() {
            let idle = owed::state_of(change, pending.partition, OwedState::Idle);
            outputs.push(outputs::flag_state(topics, &idle));
        }
    } else if let Some(parked) = &execution.parked {
        let state = owed::waiting(change, pending.partition, attempt, parked);
        outputs.push(outputs::hold_record(topics, &parked.hold));
        outputs.push(outputs::flag_state(topics, &state));
        owed = Some(state);
    }
    Encoded { outputs, owed }
}

/// The start mark of a resumed execution: its hold's end, and its flag's state naming the
/// new attempt with the hold ended (so a crash resumes it at once as the next attempt).
pub(crate) fn start_outputs(
    topics: &Topics,
    pending: &Pending,
    resuming: &Resuming,
) -> Vec<Output> {
    let parked = hold::Parked {
        hold: resuming.resume.hold.clone(),
        steps: resuming.resume.steps.clone(),
    };
    let state = owed::waiting(
        &pending.change,
        pending.partition,
        resuming.attempt,
        &parked,
    );
    vec![
        outputs::hold_record(topics, &resuming.resume.hold),
        outputs::flag_state(topics, &state),
    ]
}

impl Scheduler {
    /// Keeps what `state` says its flag is owed, with its task; `kill` (the kill switch's
    /// token for the execution) ends it `aborted`.
    pub(super) fn owe(
        &mut self,
        state: FlagState,
        epoch: u64,
        kill: tokio_util::sync::CancellationToken,
    ) {
        let (execution_id, occurred_at) = match &state.owed {
            OwedState::Waiting(w) => (w.hold.pipeline_execution_id.clone(), w.change.occurred_at),
            OwedState::Guarding(g) => (g.guard.pipeline_execution_id.clone(), g.change.occurred_at),
            OwedState::Idle => return,
        };
        let kill_switch = self.wiring.kill_switch.clone();
        kill_switch.register(&execution_id, kill.clone(), occurred_at);
        match &state.owed {
            OwedState::Waiting(_) => self.owed.wait(state, epoch, &kill_switch, kill),
            OwedState::Guarding(guarding) => {
                let guard = self
                    .wiring
                    .catalog
                    .pipeline(&guarding.guard.pipeline_id)
                    .and_then(|p| p.guard.clone());
                match guard {
                    Some(guard) => {
                        let run = self.wiring.run.clone();
                        self.owed.watch(state, epoch, guard, run, kill);
                    }
                    None => {
                        // Never guess probes: a guard whose pipeline lost it ends here.
                        tracing::warn!(flag = %state.flag_key(), pipeline = %guarding.guard.pipeline_id, "guard ended: its pipeline or its guard is no longer in the catalog");
                        kill_switch.unregister(&execution_id);
                        let reason = format!(
                            "pipeline {} or its guard is no longer in the catalog",
                            guarding.guard.pipeline_id
                        );
                        let outputs = owed::guard_ended(&self.wiring.topics, &state, Err(reason));
                        self.update(state.source_partition, epoch, outputs);
                    }
                }
            }
            OwedState::Idle => {}
        }
    }

    /// A change of `flag` (event `by`) arrived on `partition`: what the flag owed ends
    /// `superseded`, before the change is handled.
    pub(super) fn supersede(&mut self, partition: i32, epoch: u64, flag: &str, by: &str) {
        let adopted = self.partitions.get_mut(&partition).and_then(|p| {
            let at = p.adopt.iter().position(|s| s.flag_key() == flag)?;
            Some(p.adopt.remove(at))
        });
        let state = match (self.owed.take(flag), adopted) {
            (Some(entry), _) => entry.state,
            (None, Some(state)) => state,
            (None, None) => return,
        };
        tracing::info!(flag, by, "a newer change of the flag ends what it was owed");
        if let Some(id) = execution_of(&state) {
            self.wiring.kill_switch.unregister(&id);
        }
        let outputs = owed::superseded(&self.wiring.topics, &self.wiring.catalog, &state, by);
        self.update(partition, epoch, outputs);
    }

    /// Takes over the owed states of assigned partitions that have been read up to where
    /// they ended when their offsets were read (or waited [`ADOPT_LIMIT`] for it).
    pub(crate) fn adopt_due(&mut self) {
        let mut due = Vec::new();
        for (partition, p) in &mut self.partitions {
            if !p.loaded || p.adopt.is_empty() {
                continue;
            }
            let read = p.next + 1 >= p.adopt_at;
            if !read && p.loaded_at.elapsed() < ADOPT_LIMIT {
                continue;
            }
            if !read {
                tracing::warn!(
                    partition,
                    next = p.next,
                    end = p.adopt_at,
                    "partition not read up to its end within {ADOPT_LIMIT:?}; taking over its flags' holds and guards anyway"
                );
            }
            for state in p.adopt.drain(..) {
                due.push((state, p.epoch, p.interrupt.child_token()));
            }
        }
        for (state, epoch, kill) in due {
            tracing::info!(flag = %state.flag_key(), "taking over the flag's hold or guard");
            self.owe(state, epoch, kill);
        }
    }

    /// A hold or guard ended by itself.
    pub(crate) fn owed_event(&mut self, event: OwedEvent) {
        match event {
            OwedEvent::HoldEnded { flag, hold } => {
                let Some(entry) = self.owed.take_current(&flag, &hold.hold_id) else {
                    return;
                };
                self.resume(entry.state, entry.epoch, *hold);
            }
            OwedEvent::GuardEnded {
                flag,
                guard_id,
                watch,
            } => {
                let Some(entry) = self.owed.take_current(&flag, &guard_id) else {
                    return;
                };
                if let Some(id) = execution_of(&entry.state) {
                    self.wiring.kill_switch.unregister(&id);
                }
                let fired = watch.as_ref().and_then(|w| w.fired.clone());
                tracing::info!(
                    flag,
                    fired = fired.as_deref().unwrap_or("no"),
                    "guard ended"
                );
                let watch = watch.ok_or_else(|| "aborted by the kill switch".to_string());
                let outputs = owed::guard_ended(&self.wiring.topics, &entry.state, watch);
                self.update(entry.state.source_partition, entry.epoch, outputs);
            }
        }
    }

    /// Runs a parked execution on from its ended `hold`, after its flag's other events.
    fn resume(&mut self, state: FlagState, epoch: u64, ended: crate::contract::HoldRecord) {
        let OwedState::Waiting(waiting) = state.owed else {
            return;
        };
        let partition = state.source_partition;
        let Some(owner) = self.partitions.get(&partition).filter(|p| p.epoch == epoch) else {
            return;
        };
        let kill = owner.interrupt.child_token();
        let flag = waiting.change.flag_key();
        let execution_id =
            ids::pipeline_execution_id(&waiting.change.event_id, &waiting.pipeline_id);
        tracing::info!(
            flag,
            execution_id,
            hold = ended.kind.as_str(),
            status = ended.status.as_str(),
            "hold ended"
        );
        if self.wiring.catalog.pipeline(&waiting.pipeline_id).is_none() {
            let reason = format!(
                "pipeline {} is no longer in the catalog (it changed while the execution waited)",
                waiting.pipeline_id
            );
            let now = Utc::now();
            let ended = hold::ended(&ended, HoldStatus::Aborted, now, reason.clone());
            let command = decision::flag_command(
                &waiting.change,
                None,
                Gating::Gate,
                &Outcome::Aborted(reason),
                waiting.steps_done.clone(),
                now,
            );
            let mut outputs = vec![outputs::hold_record(&self.wiring.topics, &ended)];
            outputs.extend(outputs::answer(
                &self.wiring.topics,
                &waiting.change,
                &command,
            ));
            let idle = owed::state_of(&waiting.change, partition, OwedState::Idle);
            outputs.push(outputs::flag_state(&self.wiring.topics, &idle));
            self.update(partition, epoch, outputs);
            return;
        }
        self.wiring
            .kill_switch
            .register(&execution_id, kill.clone(), waiting.change.occurred_at);
        let span = tracing::info_span!("resume", flag = %flag, execution_id = %execution_id);
        let pending = Pending {
            partition,
            epoch,
            offset: -1,
            flag: flag.clone(),
            pipeline: Some(waiting.pipeline_id.clone()),
            span,
            execution_id: Some(execution_id),
            kill,
            resume: Some(Resuming {
                resume: Resume {
                    hold: ended,
                    steps: waiting.steps_done.clone(),
                },
                attempt: waiting.attempt + 1,
            }),
            change: waiting.change,
        };
        if let Some(pending) = self.queues.admit(&flag, pending) {
            self.start(pending);
        }
    }
}

/// The execution a state's hold or guard belongs to.
fn execution_of(state: &FlagState) -> Option<String> {
    match &state.owed {
        OwedState::Waiting(w) => Some(w.hold.pipeline_execution_id.clone()),
        OwedState::Guarding(g) => Some(g.guard.pipeline_execution_id.clone()),
        OwedState::Idle => None,
    }
}
