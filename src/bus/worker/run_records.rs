//! Run records on their way to the committer, and the runs they leave open.
//!
//! A run publishes a `running` record when it starts and, if it is cut off, an `aborted`
//! one (the executor's [`UpdateSink`]); its other final records go with the execution's
//! command. The partition's book tracks which runs of an event's current attempt
//! published `running` and not yet a final record ([`RunPosition`]s, committed in the
//! offsets metadata in the same transaction as those records). The rules:
//! - **Superseded runs.** When an event starts again as the next attempt, the runs its
//!   last attempt left open get a final `aborted` record ("superseded by attempt N"), in
//!   the transaction of the new start mark. So no run stays `running` for good, and none
//!   gets two final records.
//! - A run cut off by a **lost partition** publishes no final record of its own: the book
//!   went with the partition, and its next owner closes the run as superseded. One cut
//!   off by a **shutdown** (the partition still owned) publishes its own, and so do the
//!   runs its execution finished before (earlier steps).

use std::sync::Arc;

use crate::bus::kill_switch::KillSwitch;
use crate::bus::offsets::{Ledger, RunPosition};
use crate::bus::outputs::{self, Output};
use crate::bus::transaction::{Assignment, Completion, CompletionKind};
use crate::catalog::Catalog;
use crate::config::Topics;
use crate::contract::{FlagChange, RunRecord, RunStatus};
use crate::gate::executor::{RunUpdate, UpdateSink, run_position, superseded_record};

/// What run records need to reach the committer with their book kept right.
#[derive(Clone)]
pub(super) struct RunRecords {
    pub(crate) topics: Arc<Topics>,
    /// Partitions owned now: the rebalance callback drops a revoked one before it
    /// interrupts its runs, so a run's `aborted` record always finds it gone.
    pub(crate) assignment: Assignment,
    pub(crate) ledger: Ledger,
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) kill_switch: KillSwitch,
    pub(crate) completions: std::sync::mpsc::Sender<Completion>,
}

/// The event an execution answers, and where it was read.
pub(super) struct EventAt<'a> {
    pub(crate) partition: i32,
    pub(crate) epoch: u64,
    pub(crate) offset: i64,
    pub(crate) change: &'a FlagChange,
    pub(crate) pipeline: Option<&'a str>,
}

impl RunRecords {
    /// Whether `partition` is still owned under `epoch` (read before the ledger is
    /// locked: the committer locks the assignment under the ledger's lock).
    fn owns(&self, partition: i32, epoch: u64) -> bool {
        self.assignment
            .lock()
            .is_ok_and(|owned| owned.get(&partition) == Some(&epoch))
    }

    /// Final `aborted` records for the runs the attempt before `attempt` left open, encoded
    /// for the new start mark (see "Superseded runs").
    pub(crate) fn superseded(
        &self,
        event: &EventAt<'_>,
        open: Vec<RunPosition>,
        attempt: u32,
    ) -> Vec<Output> {
        let Some(pipeline) = event.pipeline.and_then(|id| self.catalog.pipeline(id)) else {
            return Vec::new();
        };
        let records: Vec<Output> = open
            .into_iter()
            .filter_map(|position| {
                superseded_record(
                    event.change,
                    pipeline,
                    &self.catalog,
                    position,
                    attempt.saturating_sub(1),
                    attempt,
                )
            })
            .map(|record| outputs::run_record(&self.topics, &record))
            .collect();
        if !records.is_empty() {
            tracing::info!(
                offset = event.offset,
                runs = records.len(),
                previous_attempt = attempt.saturating_sub(1),
                "runs of the cut-off attempt superseded"
            );
        }
        records
    }

    /// An execution interrupted while its partition is still owned (a shutdown): publishes
    /// the final records of its runs still open.
    pub(crate) fn close_open_runs(&self, event: &EventAt<'_>, records: &[RunRecord]) {
        let Some(pipeline) = event.pipeline.and_then(|id| self.catalog.pipeline(id)) else {
            return;
        };
        if !self.owns(event.partition, event.epoch) {
            return;
        }
        let mut ledger = self.ledger.lock();
        let Some(book) = ledger
            .get_mut(&event.partition)
            .filter(|b| b.epoch == event.epoch)
        else {
            return;
        };
        let mut closing = Vec::new();
        for record in records.iter().filter(|r| r.status != RunStatus::Running) {
            if let Some(position) = run_position(event.change, pipeline, record)
                && book.offsets.closed(event.offset, position)
            {
                closing.push(outputs::run_record(&self.topics, record));
            }
        }
        if !closing.is_empty() {
            // Under the ledger lock: see `Ledger`.
            let _ = self.completions.send(Completion {
                partition: event.partition,
                epoch: event.epoch,
                outputs: closing,
                // Owned now; dropped if revoked before it commits (the next owner closes
                // the runs).
                kind: CompletionKind::RunUpdate,
            });
        }
    }

    /// Where an execution's run updates go: to the committer, with the run opened or
    /// closed in the partition's book. A `running` record also registers its run with
    /// the kill switch.
    pub(crate) fn update_sink(&self, event: &EventAt<'_>) -> UpdateSink {
        let records = self.clone();
        let change = event.change.clone();
        let pipeline = event.pipeline.map(str::to_string);
        let (partition, epoch, offset) = (event.partition, event.epoch, event.offset);
        UpdateSink::new(move |update: RunUpdate| {
            let record = &update.record;
            let running = record.status == RunStatus::Running;
            if running {
                records
                    .kill_switch
                    .register_run(&record.run_id, &record.pipeline_execution_id);
            }
            let position = pipeline
                .as_deref()
                .and_then(|id| records.catalog.pipeline(id))
                .and_then(|pipeline| run_position(&change, pipeline, record));
            let owned = records.owns(partition, epoch);
            let mut ledger = records.ledger.lock();
            let book = ledger
                .get_mut(&partition)
                .filter(|b| owned && b.epoch == epoch);
            match (book, position) {
                (Some(book), Some(position)) if running => book.offsets.opened(offset, position),
                (Some(book), Some(position)) => {
                    book.offsets.closed(offset, position);
                }
                // Revoked: nothing of the partition commits here any more. Its next owner
                // runs the event again and closes the runs the committed metadata names
                // open; a `running` record sent now would name a run nobody closes.
                (None, Some(_)) => return,
                _ => {}
            }
            let _ = records.completions.send(Completion {
                partition,
                epoch,
                outputs: vec![outputs::run_update(&records.topics, &update)],
                kind: CompletionKind::RunUpdate,
            });
        })
    }
}
