//! The scheduler: what the consumer loop does with each record, rebalance and ended run.
//!
//! It owns all bookkeeping of the loop: the partitions owned (and whether their offsets
//! are read yet), events waiting for their flag ([`FlagQueues`]) or for a slot, and the
//! execution tasks running (under a [`Supervisor`]). It never waits: executions run as
//! their own tasks, at most `max_in_flight` at once, so a ten-minute experiment cannot
//! exceed `max.poll.interval.ms`.
//!
//! Rules that keep it right:
//! - **Flow.** A partition is paused while it may not take records (offsets unread, book
//!   full, backlog over its limit, draining); records a fetch delivers meanwhile are held
//!   in order and let in later. See [`flow`].
//! - **Start marks.** An execution's start count goes to the committer as a start mark
//!   (its offsets, plus the records closing its previous attempt's runs), so a run cut
//!   off by a crash, a shutdown or a rebalance runs again as the next attempt with its
//!   own run id. The run does not wait for it: a crash before the mark commits (the
//!   committer's linger plus one transaction) repeats the attempt and its run id, and its
//!   `running` record, committed with the mark or later, is not visible either; nothing
//!   of that attempt is, so nothing of it needs closing.
//! - **Supervision.** A panicking execution is an interrupted one: its slot and its flag
//!   are released, it is logged with its ids, and its offset is left uncommitted for the
//!   next owner of the partition (a restart runs it again as the next attempt).
//! - **Superseded runs.** A start mark carries the final records of the runs the
//!   event's previous attempt left `running` (see [`super::run_records`]).
//! - **Draining.** Once draining (shutdown), nothing new starts; what ends is committed.
//! - **Owed.** An execution that parks at a hold commits its `waiting` state with its
//!   offset and waits in a cheap task; a passed `enable` with a guard commits its
//!   `guarding` state with the command and is watched by one. A newer change of the flag
//!   ends either first; a partition's new owner takes them over from the flag-state
//!   topic once it has read the partition up to where it ended at assignment, so a newer
//!   change written meanwhile is always seen first. See [`owed`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::bus::flag_queue::FlagQueues;
use crate::bus::offsets::{Book, Receipt};
use crate::bus::outputs::{self, Output};
use crate::bus::transaction::{Completion, CompletionKind};
use crate::contract::KafkaMessage;
use crate::gate::decision;
use crate::gate::executor::{Execution, ExecutionContext, execute};
use crate::telemetry::metrics;

use super::admission::{self, Pending, Resuming, Wiring};
use super::committed::Loaded;
use super::rebalance::{NewPartition, RebalanceEvent};
use super::run_records::RunRecords;
use super::supervisor::{Panicked, Supervisor};

mod flow;
mod owed;
mod resume;
pub(super) use flow::FlowChange;
pub(crate) use owed::OwedEvent;

/// An execution that ended, with its records and command encoded (in its own task,
/// not in the consumer loop).
pub(super) struct Finished {
    pending: Pending,
    execution: Execution,
    outputs: resume::Encoded,
}

/// What names a running execution, kept by the supervisor in case it panics.
#[derive(Debug)]
pub(super) struct Ticket {
    partition: i32,
    offset: i64,
    flag: String,
    execution_id: Option<String>,
    attempt: u32,
}

/// An owned partition as the loop sees it (its offsets, once read, are in the [`Ledger`]).
struct Partition {
    epoch: u64,
    interrupt: CancellationToken,
    /// Its committed offsets are read and its book is in the ledger.
    loaded: bool,
    /// Paused at librdkafka (as last told).
    paused: bool,
    /// Records that arrived before its offsets were read or while its book was full (a
    /// fetch ahead of the pause), in offset order.
    held: VecDeque<(i64, KafkaMessage)>,
    /// What its flags were owed when it was assigned, taken over once it has been read up
    /// to `adopt_at` (or after [`ADOPT_LIMIT`]).
    adopt: Vec<crate::contract::FlagState>,
    /// The partition's end offset when its committed offsets were read.
    adopt_at: i64,
    /// When its committed offsets were read.
    loaded_at: std::time::Instant,
    /// The next offset to receive.
    next: i64,
}

/// The longest an assigned partition's owed states wait for the partition to be read up
/// to where it ended at assignment (a partition ending in transaction markers never
/// shows a record at its end).
const ADOPT_LIMIT: Duration = Duration::from_secs(10);

/// The consumer loop's state; see the module docs.
pub(super) struct Scheduler {
    wiring: Wiring,
    records: RunRecords,
    partitions: HashMap<i32, Partition>,
    queues: FlagQueues<Pending>,
    ready: VecDeque<Pending>,
    runs: Supervisor<Finished, Ticket>,
    owed: owed::Owed,
    backpressure: bool,
    draining: bool,
}

impl Scheduler {
    pub(crate) fn new(wiring: Wiring) -> Self {
        let owed = owed::Owed::new(wiring.owed_events.clone());
        let records = RunRecords {
            topics: wiring.topics.clone(),
            assignment: wiring.assignment.clone(),
            ledger: wiring.ledger.clone(),
            catalog: wiring.catalog.clone(),
            kill_switch: wiring.kill_switch.clone(),
            completions: wiring.completions.clone(),
        };
        Scheduler {
            wiring,
            records,
            partitions: HashMap::new(),
            queues: FlagQueues::default(),
            ready: VecDeque::new(),
            runs: Supervisor::new(),
            owed,
            backpressure: false,
            draining: false,
        }
    }

    /// Owned partitions whose committed offsets are not read yet.
    pub(crate) fn loading(&self) -> usize {
        self.partitions.values().filter(|p| !p.loaded).count()
    }

    /// Executions running now.
    pub(crate) fn running(&self) -> usize {
        self.runs.len()
    }

    /// The next execution to end (pending while none runs).
    pub(crate) async fn next_ended(&mut self) -> Result<Finished, Panicked<Ticket>> {
        self.runs.next().await
    }

    /// The flag-state reader, for partitions being loaded.
    pub(crate) fn flag_states(&self) -> crate::bus::flag_state::FlagStates {
        self.wiring.states.clone()
    }

    /// Applies a rebalance the callback reported.
    pub(crate) fn rebalance(&mut self, event: &RebalanceEvent) {
        match event {
            RebalanceEvent::Assigned(new) => {
                for p in new {
                    self.assigned(p);
                }
            }
            RebalanceEvent::Revoked { partition } => self.revoked(*partition),
        }
    }

    fn assigned(&mut self, new: &NewPartition) {
        self.partitions.insert(
            new.partition,
            Partition {
                epoch: new.epoch,
                interrupt: new.interrupt.clone(),
                loaded: false,
                // The rebalance callback paused it already; the next flow pauses it
                // again, in case that failed.
                paused: false,
                held: VecDeque::new(),
                adopt: Vec::new(),
                adopt_at: 0,
                loaded_at: std::time::Instant::now(),
                next: 0,
            },
        );
    }

    fn revoked(&mut self, partition: i32) {
        self.wiring.ledger.lock().remove(&partition);
        self.partitions.remove(&partition);
        self.owed.forget(Some(partition));
        let kill_switch = &self.wiring.kill_switch;
        let forget = |pending: &Pending| {
            if let Some(id) = &pending.execution_id {
                kill_switch.unregister(id);
            }
        };
        self.queues.discard(|p| {
            let revoked = p.partition == partition;
            if revoked {
                forget(p);
            }
            revoked
        });
        let (revoked, kept): (Vec<Pending>, Vec<Pending>) =
            self.ready.drain(..).partition(|p| p.partition == partition);
        self.ready.extend(kept);
        for pending in revoked {
            forget(&pending);
            // Its flag was busy waiting for a slot; nothing of the partition waits behind it.
            let _ = self.queues.release(&pending.flag);
        }
    }

    /// A partition's committed offsets were read: its book goes into the ledger and the
    /// records held meanwhile are handled.
    pub(crate) fn loaded(&mut self, loaded: Loaded) {
        let Some(partition) = self
            .partitions
            .get_mut(&loaded.partition)
            .filter(|p| p.epoch == loaded.epoch && !p.loaded)
        else {
            return;
        };
        partition.loaded = true;
        partition.adopt = loaded.owed;
        partition.adopt_at = loaded.end;
        partition.loaded_at = std::time::Instant::now();
        // Read up to its committed offset already: a partition with nothing after it takes
        // its owed states over at once.
        partition.next = loaded.offsets.watermark();
        let held = std::mem::take(&mut partition.held);
        tracing::debug!(
            partition = loaded.partition,
            watermark = loaded.offsets.watermark(),
            held = held.len(),
            "committed offsets read"
        );
        self.wiring.ledger.lock().insert(
            loaded.partition,
            Book {
                epoch: loaded.epoch,
                offsets: loaded.offsets,
            },
        );
        for (offset, message) in held {
            self.receive(loaded.partition, offset, message);
        }
        self.adopt_due();
    }

    /// Stops starting anything and interrupts every run (shutdown).
    pub(crate) fn drain(&mut self) {
        self.draining = true;
        for partition in self.partitions.values() {
            partition.interrupt.cancel();
        }
        self.owed.forget(None);
    }

    /// Lets the runs still going after the grace period run on unwatched.
    pub(crate) fn abandon(&mut self) {
        self.runs.detach_all();
    }

    /// Handles one consumed record: hold, skip, dead-letter, or queue for its flag.
    pub(crate) fn receive(&mut self, partition: i32, offset: i64, message: KafkaMessage) {
        let Some(state) = self.partitions.get_mut(&partition) else {
            tracing::debug!(
                partition,
                offset,
                "record of a partition not (or no longer) assigned"
            );
            return;
        };
        if !state.loaded || !state.held.is_empty() {
            state.held.push_back((offset, message));
            return;
        }
        state.next = state.next.max(offset + 1);
        let receipt = self
            .wiring
            .ledger
            .lock()
            .get_mut(&partition)
            .map(|book| (!book.offsets.is_full()).then(|| book.offsets.receive(offset)));
        let receipt = match receipt {
            Some(Some(receipt)) => Some(receipt),
            Some(None) => {
                // Its book is full: the partition pauses and the record waits (see "Flow").
                tracing::info!(
                    partition,
                    offset,
                    unfinished = crate::bus::offsets::MAX_PENDING,
                    "offsets book full: the partition's records wait until its events finish"
                );
                state.held.push_back((offset, message));
                return;
            }
            None => None,
        };
        let epoch = state.epoch;
        let kill = state.interrupt.child_token();
        if receipt != Some(Receipt::Process) {
            tracing::debug!(
                partition,
                offset,
                "already done by an earlier owner; skipped"
            );
            return;
        }
        let pending = match admission::admit(&self.wiring, partition, epoch, offset, &message, kill)
        {
            Ok(pending) => pending,
            Err(dead_letter) => {
                self.complete(partition, epoch, offset, vec![dead_letter]);
                return;
            }
        };
        self.supersede(partition, epoch, &pending.flag, &pending.change.event_id);
        self.adopt_due();
        if let Some(pending) = self.queues.admit(&pending.flag.clone(), pending) {
            self.start(pending);
        }
    }

    /// Starts an event whose flag is free: answers at once, or runs its pipeline when a
    /// slot is free (else it waits in `ready`, its flag held).
    fn start(&mut self, pending: Pending) {
        let mut next = Some(pending);
        while let Some(pending) = next.take() {
            let span = pending.span.clone();
            let _entered = span.enter();
            let catalog = self.wiring.catalog.clone();
            let pipeline = pending
                .pipeline
                .as_deref()
                .and_then(|id| catalog.pipeline(id));
            // A resumed execution was gated when it parked; it goes on whatever the catalog
            // says of its change kind now.
            let pass = if pending.resume.is_some() {
                None
            } else {
                decision::pass_on(&pending.change, pipeline, self.wiring.unrouted)
            };
            let Some(command) = pass else {
                if self.runs.len() >= self.wiring.max_in_flight {
                    self.ready.push_back(pending);
                    return;
                }
                self.spawn(pending);
                return;
            };
            tracing::info!(flag = %pending.flag, command = command.command.as_str(), reason = %command.reason, "passed on");
            if let Some(id) = &pending.execution_id {
                self.wiring.kill_switch.unregister(id);
            }
            metrics::event_gated(command.command, command.reason_code);
            let answer = outputs::answer(&self.wiring.topics, &pending.change, &command);
            self.complete(pending.partition, pending.epoch, pending.offset, answer);
            next = self.queues.release(&pending.flag);
        }
    }

    /// Runs a gated event's pipeline in a supervised task; see "Start marks".
    fn spawn(&mut self, pending: Pending) {
        let Some(partition) = self.partitions.get(&pending.partition) else {
            if let Some(id) = &pending.execution_id {
                self.wiring.kill_switch.unregister(id);
            }
            return;
        };
        let interrupt = partition.interrupt.clone();
        let epoch = partition.epoch;
        let span = pending.span.clone();
        let _entered = span.enter();
        let start_committed = Arc::new(AtomicBool::new(false));
        let attempt = if let Some(resuming) = &pending.resume {
            // Its offset is done: the start mark is the hold's end and the new attempt in
            // the flag's state, so a crash from here on resumes it as the next attempt.
            let _ = self.wiring.completions.send(Completion {
                partition: pending.partition,
                epoch,
                outputs: resume::start_outputs(&self.wiring.topics, &pending, resuming),
                kind: CompletionKind::StartMark {
                    committed: start_committed.clone(),
                },
            });
            resuming.attempt
        } else {
            let mut ledger = self.wiring.ledger.lock();
            let Some(book) = ledger.get_mut(&pending.partition) else {
                // Not reached: a partition's book and its entry change together.
                if let Some(id) = &pending.execution_id {
                    self.wiring.kill_switch.unregister(id);
                }
                return;
            };
            let attempt = book.offsets.start(pending.offset);
            let superseded = self.records.superseded(
                &pending.at(),
                book.offsets.supersede(pending.offset),
                attempt,
            );
            let _ = self.wiring.completions.send(Completion {
                partition: pending.partition,
                epoch,
                outputs: superseded,
                kind: CompletionKind::StartMark {
                    committed: start_committed.clone(),
                },
            });
            attempt
        };
        let resume = pending.resume.as_ref().map(|r| r.resume.clone());
        let context = ExecutionContext {
            run: self.wiring.run.clone(),
            attempt,
            kill: pending.kill.clone(),
            interrupt,
            unrouted: self.wiring.unrouted,
            // A resumed execution's offset is done: its book has no open runs to name, so
            // its runs publish only their final records, with its end.
            updates: resume
                .is_none()
                .then(|| self.records.update_sink(&pending.at())),
            start_committed: Some(start_committed),
            resume,
        };
        let catalog = self.wiring.catalog.clone();
        let topics = self.wiring.topics.clone();
        tracing::info!(
            flag = %pending.flag,
            pipeline = pending.pipeline.as_deref().unwrap_or("none"),
            attempt,
            offset = pending.offset,
            "gating"
        );
        let ticket = Ticket {
            partition: pending.partition,
            offset: pending.offset,
            flag: pending.flag.clone(),
            execution_id: pending.execution_id.clone(),
            attempt,
        };
        let task = async move {
            let _in_flight = metrics::run_started();
            let pipeline = pending
                .pipeline
                .as_deref()
                .and_then(|id| catalog.pipeline(id));
            let execution = if !context.interrupt.is_cancelled() {
                execute(&pending.change, pipeline, &catalog, &context).await
            } else {
                tracing::info!(flag = %pending.flag, offset = pending.offset, "not started: the partition was revoked or the worker is stopping");
                Execution {
                    records: Vec::new(),
                    command: None,
                    parked: None,
                }
            };
            let encoded = resume::execution_outputs(&topics, pipeline, &pending, attempt, &execution);
            Finished {
                pending,
                execution,
                outputs: encoded,
            }
        }
        .instrument(span.clone());
        self.runs.spawn(ticket, task);
    }

    /// An execution ended: commit it when final, then let its flag and a slot go.
    pub(crate) fn finish(&mut self, finished: Finished) {
        let Finished {
            pending,
            execution,
            outputs,
        } = finished;
        if let Some(id) = &pending.execution_id {
            self.wiring.kill_switch.unregister(id);
        }
        let entered = pending.span.enter();
        for record in &execution.records {
            let duration = Duration::from_secs_f64(record.duration_seconds.unwrap_or(0.0).max(0.0));
            metrics::run_finished(record.status, record.resilience_score, duration);
            metrics::step_finished(record.status, duration);
        }
        if execution.command.is_some() || execution.parked.is_some() {
            if let Some(command) = &execution.command {
                tracing::info!(flag = %pending.flag, command = command.command.as_str(), reason = %command.reason, "gated");
                metrics::event_gated(command.command, command.reason_code);
            }
            if let Some(parked) = &execution.parked {
                tracing::info!(flag = %pending.flag, hold = parked.hold.kind.as_str(), reason = %parked.hold.reason, "parked");
            }
            let resume::Encoded { outputs, owed } = outputs;
            if pending.resume.is_some() {
                self.update(pending.partition, pending.epoch, outputs);
            } else {
                self.complete(pending.partition, pending.epoch, pending.offset, outputs);
            }
            if let Some(owed) = owed {
                self.owe(owed, pending.epoch, pending.kill.clone());
            }
        } else if pending.resume.is_some() {
            tracing::info!(flag = %pending.flag, "resumed execution interrupted; its flag's state resumes it under the partition's next owner");
        } else {
            tracing::info!(flag = %pending.flag, offset = pending.offset, "interrupted; left for the next owner");
            self.records
                .close_open_runs(&pending.at(), &execution.records);
        }
        drop(entered);
        self.release(&pending.flag);
    }

    /// An execution task panicked: an interrupted run (see "Supervision").
    pub(crate) fn panicked(&mut self, panicked: Panicked<Ticket>) {
        let Panicked { ticket, message } = panicked;
        tracing::error!(
            partition = ticket.partition,
            offset = ticket.offset,
            flag = %ticket.flag,
            execution_id = ?ticket.execution_id,
            attempt = ticket.attempt,
            panic = %message,
            "execution panicked; treated as interrupted: its offset is left uncommitted and runs again under the partition's next owner (or after a restart)"
        );
        if let Some(id) = &ticket.execution_id {
            self.wiring.kill_switch.unregister(id);
        }
        self.release(&ticket.flag);
    }

    /// A flag's event is done: start its next event, then fill free slots.
    fn release(&mut self, flag: &str) {
        if self.draining {
            return;
        }
        if let Some(next) = self.queues.release(flag) {
            self.start(next);
        }
        while self.runs.len() < self.wiring.max_in_flight {
            let Some(next) = self.ready.pop_front() else {
                break;
            };
            self.spawn(next);
        }
    }

    /// Hands outputs that end nothing in the partition's book (a hold or guard ending, a
    /// resumed execution's end) to the committer, with the partition's offsets (fenced).
    fn update(&self, partition: i32, epoch: u64, outputs: Vec<Output>) {
        let ledger = self.wiring.ledger.lock();
        if ledger.get(&partition).is_none_or(|b| b.epoch != epoch) {
            return;
        }
        let _ = self.wiring.completions.send(Completion {
            partition,
            epoch,
            outputs,
            kind: CompletionKind::RunUpdate,
        });
    }

    /// Marks an offset done and hands its outputs and the partition's offsets to the
    /// committer.
    fn complete(&self, partition: i32, epoch: u64, offset: i64, outputs: Vec<Output>) {
        let mut ledger = self.wiring.ledger.lock();
        let Some(book) = ledger.get_mut(&partition).filter(|b| b.epoch == epoch) else {
            return;
        };
        book.offsets.complete(offset);
        let _ = self.wiring.completions.send(Completion {
            partition,
            epoch,
            outputs,
            kind: CompletionKind::Finished,
        });
    }
}

#[cfg(test)]
mod tests;
