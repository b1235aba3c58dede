//! The scheduler: what the consumer loop does with each record, rebalance and ended run.
//!
//! It owns all bookkeeping of the loop: the partitions owned (and whether their offsets
//! are read yet), events waiting for their flag ([`FlagQueues`]) or for a slot, and the
//! execution tasks running (under a [`Supervisor`]). It never waits: executions run as
//! their own tasks, at most `max_in_flight` at once, so a ten-minute experiment cannot
//! exceed `max.poll.interval.ms`.
//!
//! Rules that keep it right:
//! - **Flow.** A partition is paused while its offsets are unread, while its book is
//!   full (its unfinished events or how far they run ahead reach what its offsets
//!   metadata can record: `PartitionOffsets::is_full`), while the backlog (events read
//!   but not started) is over `8 × max_in_flight` until it halves, and while draining.
//!   Records that arrive while its offsets are unread or its book is full are held, in
//!   order, and let in once it has room. [`Scheduler::flow`] compares that with what librdkafka was told, per
//!   partition, so a partition assigned during backpressure is paused too.
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

use super::admission::{self, Pending, Wiring};
use super::committed::Loaded;
use super::rebalance::{NewPartition, RebalanceEvent};
use super::run_records::RunRecords;
use super::supervisor::{Panicked, Supervisor};

/// Events waiting (for their flag or a slot) beyond `BACKLOG_FACTOR × max_in_flight`
/// pause consumption until the backlog halves.
pub(super) const BACKLOG_FACTOR: usize = 8;

/// An execution that ended, with its records and command encoded (in its own task,
/// not in the consumer loop).
pub(super) struct Finished {
    pending: Pending,
    execution: Execution,
    outputs: Vec<Output>,
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
}

/// Partitions to pause and to resume at librdkafka.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct FlowChange {
    pub pause: Vec<i32>,
    pub resume: Vec<i32>,
}

/// The consumer loop's state; see the module docs.
pub(super) struct Scheduler {
    wiring: Wiring,
    records: RunRecords,
    partitions: HashMap<i32, Partition>,
    queues: FlagQueues<Pending>,
    ready: VecDeque<Pending>,
    runs: Supervisor<Finished, Ticket>,
    backpressure: bool,
    draining: bool,
}

impl Scheduler {
    pub fn new(wiring: Wiring) -> Self {
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
            backpressure: false,
            draining: false,
        }
    }

    /// Owned partitions whose committed offsets are not read yet.
    pub fn loading(&self) -> usize {
        self.partitions.values().filter(|p| !p.loaded).count()
    }

    /// Executions running now.
    pub fn running(&self) -> usize {
        self.runs.len()
    }

    /// The next execution to end (pending while none runs).
    pub async fn next_ended(&mut self) -> Result<Finished, Panicked<Ticket>> {
        self.runs.next().await
    }

    /// Applies a rebalance the callback reported.
    pub fn rebalance(&mut self, event: &RebalanceEvent) {
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
            },
        );
    }

    fn revoked(&mut self, partition: i32) {
        self.wiring.ledger.lock().remove(&partition);
        self.partitions.remove(&partition);
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
    pub fn loaded(&mut self, loaded: Loaded) {
        let Some(partition) = self
            .partitions
            .get_mut(&loaded.partition)
            .filter(|p| p.epoch == loaded.epoch && !p.loaded)
        else {
            return;
        };
        partition.loaded = true;
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
    }

    /// What to pause and resume now; see "Flow" in the module docs. The caller tells
    /// librdkafka, and [`Scheduler::flow_failed`] when that fails.
    pub fn flow(&mut self) -> FlowChange {
        self.admit_held();
        let backlog = self.queues.waiting()
            + self.ready.len()
            + self
                .partitions
                .values()
                .map(|p| p.held.len())
                .sum::<usize>();
        let limit = self.wiring.max_in_flight * BACKLOG_FACTOR;
        if !self.backpressure && backlog > limit {
            self.backpressure = true;
            tracing::info!(backlog, limit, "backpressure: partitions paused");
        } else if self.backpressure && backlog <= limit / 2 {
            self.backpressure = false;
            tracing::info!(backlog, limit, "backpressure: partitions resumed");
        }
        let mut change = FlowChange::default();
        for (id, partition) in &mut self.partitions {
            let pause = self.draining
                || self.backpressure
                || !partition.loaded
                || !partition.held.is_empty();
            if pause != partition.paused {
                partition.paused = pause;
                if pause {
                    change.pause.push(*id);
                } else {
                    change.resume.push(*id);
                }
            }
        }
        change
    }

    /// Lets in the records held for partitions whose books have room again (see "Flow").
    fn admit_held(&mut self) {
        if self.draining || self.partitions.values().all(|p| p.held.is_empty()) {
            return;
        }
        let ready: Vec<i32> = {
            let ledger = self.wiring.ledger.lock();
            self.partitions
                .iter()
                .filter(|(id, p)| {
                    p.loaded
                        && !p.held.is_empty()
                        && ledger.get(id).is_some_and(|b| !b.offsets.is_full())
                })
                .map(|(id, _)| *id)
                .collect()
        };
        for id in ready {
            let Some(partition) = self.partitions.get_mut(&id) else {
                continue;
            };
            // What the book cannot take yet goes back to `held`, in order.
            for (offset, message) in std::mem::take(&mut partition.held) {
                self.receive(id, offset, message);
            }
        }
    }

    /// librdkafka refused `change`: the next [`Scheduler::flow`] tries again.
    pub fn flow_failed(&mut self, change: &FlowChange) {
        for (ids, paused) in [(&change.pause, false), (&change.resume, true)] {
            for id in ids {
                if let Some(partition) = self.partitions.get_mut(id) {
                    partition.paused = paused;
                }
            }
        }
    }

    /// Stops starting anything and interrupts every run (shutdown).
    pub fn drain(&mut self) {
        self.draining = true;
        for partition in self.partitions.values() {
            partition.interrupt.cancel();
        }
    }

    /// Lets the runs still going after the grace period run on unwatched.
    pub fn abandon(&mut self) {
        self.runs.detach_all();
    }

    /// Handles one consumed record: hold, skip, dead-letter, or queue for its flag.
    pub fn receive(&mut self, partition: i32, offset: i64, message: KafkaMessage) {
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
            let gating = decision::gating(&pending.change, pipeline);
            if gating == decision::Gating::Gate {
                if self.runs.len() >= self.wiring.max_in_flight {
                    self.ready.push_back(pending);
                    return;
                }
                self.spawn(pending);
                return;
            }
            let command = decision::flag_command(
                &pending.change,
                pipeline,
                gating,
                &decision::Outcome::Passed,
                Vec::new(),
                chrono::Utc::now(),
            );
            tracing::info!(flag = %pending.flag, command = command.command.as_str(), reason = %command.reason, "passed on");
            if let Some(id) = &pending.execution_id {
                self.wiring.kill_switch.unregister(id);
            }
            metrics::event_gated(command.command, command.reason_code);
            let output = outputs::flag_command(&self.wiring.topics, &command);
            self.complete(
                pending.partition,
                pending.epoch,
                pending.offset,
                vec![output],
            );
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
        let attempt = {
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
        let context = ExecutionContext {
            run: self.wiring.run.clone(),
            attempt,
            kill: pending.kill.clone(),
            interrupt,
            updates: Some(self.records.update_sink(&pending.at())),
            start_committed: Some(start_committed),
        };
        let catalog = self.wiring.catalog.clone();
        let topics = self.wiring.topics.clone();
        tracing::info!(flag = %pending.flag, pipeline = ?pending.pipeline, attempt, offset = pending.offset, "gating");
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
                }
            };
            let mut encoded: Vec<Output> = Vec::new();
            if let Some(command) = &execution.command {
                encoded.extend(
                    execution
                        .records
                        .iter()
                        .map(|record| outputs::run_record(&topics, record)),
                );
                encoded.push(outputs::flag_command(&topics, command));
            }
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
    pub fn finish(&mut self, finished: Finished) {
        let Finished {
            pending,
            execution,
            outputs,
        } = finished;
        if let Some(id) = &pending.execution_id {
            self.wiring.kill_switch.unregister(id);
        }
        let entered = pending.span.enter();
        if let Some(command) = &execution.command {
            tracing::info!(flag = %pending.flag, command = command.command.as_str(), reason = %command.reason, "gated");
            metrics::event_gated(command.command, command.reason_code);
            for record in &execution.records {
                let duration =
                    Duration::from_secs_f64(record.duration_seconds.unwrap_or(0.0).max(0.0));
                metrics::run_finished(record.status, record.resilience_score, duration);
                metrics::step_finished(record.status, duration);
            }
            self.complete(pending.partition, pending.epoch, pending.offset, outputs);
        } else {
            tracing::info!(flag = %pending.flag, offset = pending.offset, "interrupted; left for the next owner");
            self.records
                .close_open_runs(&pending.at(), &execution.records);
        }
        drop(entered);
        self.release(&pending.flag);
    }

    /// An execution task panicked: an interrupted run (see "Supervision").
    pub fn panicked(&mut self, panicked: Panicked<Ticket>) {
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
mod tests {
    use super::*;
    use crate::bus::kill_switch::KillSwitch;
    use crate::bus::offsets::{Ledger, PartitionOffsets};
    use crate::catalog::Catalog;
    use crate::chaos::runner::RunContext;
    use crate::config::Topics;
    use crate::contract::{Change, ChangeKind, FlagChange};
    use tokio_util::sync::CancellationToken;

    fn pending(offset: i64) -> Pending {
        let change = FlagChange {
            event_id: format!("event-{offset}"),
            occurred_at: chrono::Utc::now(),
            project: "p".into(),
            environment: "e".into(),
            flag: "f".into(),
            change: Change {
                kind: ChangeKind::Enable,
                from: None,
                to: None,
            },
            pipeline_id: None,
            actor: None,
            account: None,
        };
        Pending {
            partition: 0,
            epoch: 1,
            offset,
            flag: change.flag_key(),
            change,
            pipeline: None,
            span: tracing::Span::none(),
            execution_id: None,
            kill: CancellationToken::new(),
        }
    }

    /// A scheduler with one slot, an empty catalog and partition 0 (epoch 1) assigned,
    /// its offsets not read yet; with its ledger and what it hands the committer.
    fn one_partition() -> (Scheduler, Ledger, std::sync::mpsc::Receiver<Completion>) {
        let (completions, committed) = std::sync::mpsc::channel();
        let catalog = Catalog::from_parts(Vec::new(), Vec::new()).expect("empty catalog");
        let ledger = Ledger::default();
        let mut scheduler = Scheduler::new(Wiring {
            topics: Arc::new(Topics::default()),
            group: "g".into(),
            max_message_bytes: 1 << 20,
            max_in_flight: 1,
            catalog: Arc::new(catalog),
            run: RunContext::default(),
            ledger: ledger.clone(),
            assignment: Arc::new(std::sync::Mutex::new(HashMap::from([(0, 1)]))),
            kill_switch: KillSwitch::default(),
            completions,
        });
        scheduler.rebalance(&RebalanceEvent::Assigned(vec![NewPartition {
            partition: 0,
            epoch: 1,
            interrupt: CancellationToken::new(),
        }]));
        (scheduler, ledger, committed)
    }

    #[tokio::test]
    async fn a_panicking_run_frees_its_slot_and_its_flag_and_keeps_its_offset() {
        let (mut scheduler, ledger, committed) = one_partition();
        scheduler.loaded(Loaded {
            partition: 0,
            epoch: 1,
            offsets: PartitionOffsets::default(),
        });
        // Offset 0 runs (its flag busy, the one slot taken) and panics; offset 1 of the
        // same flag waits behind it.
        for offset in [0, 1] {
            let book = ledger.lock().get_mut(&0).map(|b| b.offsets.receive(offset));
            assert_eq!(book, Some(Receipt::Process));
        }
        let first = pending(0);
        assert!(scheduler.queues.admit(&first.flag.clone(), first).is_some());
        let ticket = Ticket {
            partition: 0,
            offset: 0,
            flag: "p/e/f".into(),
            execution_id: None,
            attempt: 1,
        };
        scheduler.runs.spawn(ticket, async { panic!("boom") });
        let second = pending(1);
        assert!(
            scheduler
                .queues
                .admit(&second.flag.clone(), second)
                .is_none()
        );

        match scheduler.next_ended().await {
            Err(panicked) => scheduler.panicked(panicked),
            Ok(_) => panic!("the run did not panic"),
        }
        assert_eq!(scheduler.running(), 0, "the slot is free");
        // The flag moved on: offset 1 (not gated) was answered at once.
        let completion = committed.try_recv().expect("offset 1 answered");
        assert_eq!(completion.outputs.len(), 1);
        // Offset 0 stays unfinished: the watermark holds for the next owner.
        assert_eq!(
            ledger.lock().get(&0).map(|b| b.offsets.watermark()),
            Some(0)
        );
    }

    #[test]
    fn records_of_a_full_book_wait_in_order_until_it_has_room() {
        let (mut scheduler, ledger, committed) = one_partition();
        // Every offset its metadata can record is unfinished.
        let mut offsets = PartitionOffsets::default();
        let full = crate::bus::offsets::MAX_PENDING as i64;
        for offset in 0..full {
            offsets.receive(offset);
        }
        scheduler.loaded(Loaded {
            partition: 0,
            epoch: 1,
            offsets,
        });
        assert!(scheduler.flow().pause.is_empty());
        // Two more records (bad input, dead-lettered once let in) wait, and the partition
        // pauses.
        let bad = || KafkaMessage {
            key: None,
            value: Some(b"not a flag change".to_vec()),
            headers: Vec::new(),
        };
        scheduler.receive(0, full, bad());
        scheduler.receive(0, full + 1, bad());
        assert_eq!(scheduler.flow().pause, [0]);
        assert!(committed.try_recv().is_err(), "nothing was let in");
        // One unfinished offset finishes: the records go in, in order (each is answered at
        // once, so the next fits too), and the partition resumes.
        if let Some(book) = ledger.lock().get_mut(&0) {
            book.offsets.complete(0);
        }
        assert_eq!(scheduler.flow().resume, [0]);
        assert!(committed.try_recv().is_ok(), "offset {full} let in");
        assert!(committed.try_recv().is_ok(), "offset {} let in", full + 1);
        let book = ledger
            .lock()
            .get_mut(&0)
            .map(|b| b.offsets.receive(full + 1));
        assert_eq!(book, Some(Receipt::Skip), "done, in order");
    }
}
