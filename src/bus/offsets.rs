//! Offsets that commit correctly when events finish out of order.
//!
//! Events of different flags finish in any order, but Kafka commits one offset per
//! partition: everything below it is done. So each partition commits its contiguous
//! watermark (the lowest offset not yet done) and carries the offsets already done above
//! it in the commit's metadata, the technique of Confluent's Parallel Consumer. After a
//! restart or a rebalance, the new owner reads the metadata back and skips those offsets.
//! The metadata also carries how many times an event above the watermark has been started,
//! so a run cut off by a crash runs again as the next `attempt` (once that start's mark
//! has been committed: see the worker).
//!
//! The books of all owned partitions form the [`Ledger`], shared by the consumer loop,
//! which records receipts, starts and completions, and the committer, which reads each
//! partition's watermark and metadata once per transaction.
//!
//! The metadata also names the runs of the last attempt whose `running` record went out
//! and whose final record did not ([`RunPosition`]s, under `open=`): when the event starts
//! again as the next attempt, those runs get a final `aborted` record ("superseded"), in
//! the transaction that commits the new start, so no run stays `running` for good.
//!
//! Metadata text: `cg2;done=2-4,7;started=5:2,6:1;open=5:0.0.0+0.1.0`, offsets relative to the committed
//! offset (the watermark); a range of done offsets spans offsets that hold no record
//! received and unfinished (transaction markers), so the number of ranges is at most one
//! more than the partition's unfinished offsets. The older `cg1` text (absolute offsets)
//! is still read.
//!
//! The rule that keeps it under the broker's `offset.metadata.max.bytes` (4096 bytes by
//! default; a larger text fails every commit with `OFFSET_METADATA_TOO_LARGE`): at most
//! [`MAX_PENDING`] offsets of one partition are unfinished at once, which the worker's
//! settings must guarantee ([`check_capacity`] at start), and done offsets are never
//! dropped from the text (that would run them again); start counts are, when they would
//! not fit.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write;
use std::sync::{Arc, Mutex, MutexGuard};

pub use crate::gate::executor::RunPosition;

/// The metadata version prefix (offsets relative to the committed offset).
const PREFIX: &str = "cg2";
/// The earlier prefix (absolute offsets), still read.
const PREFIX_V1: &str = "cg1";
/// Metadata longer than this drops its start counts (under the broker's 4096 default).
pub const MAX_METADATA: usize = 3800;
/// The longest a partition's done offsets may run ahead of its watermark for
/// [`MAX_PENDING`] to hold: 10^7 offsets (seven digits per relative offset).
const MAX_AHEAD_DIGITS: usize = 7;
/// The most unfinished offsets one partition may hold so that its done ranges always fit
/// in [`MAX_METADATA`]: each range costs at most two relative offsets, a dash and a comma.
pub const MAX_PENDING: usize =
    (MAX_METADATA - "cg2;done=;started=".len()) / (2 * MAX_AHEAD_DIGITS + 2) - 1;

/// The worker's settings let more offsets of one partition be unfinished at once than its
/// offsets metadata can record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "worker.max_in_flight = {max_in_flight} lets up to {unfinished} events of one partition be unfinished at once \
     (running, or waiting while the partition is not yet paused), but the offsets metadata committed with them \
     (the broker's offset.metadata.max.bytes, 4096 bytes by default) can record at most {MAX_PENDING}: \
     set worker.max_in_flight to at most {most}"
)]
pub struct CapacityError {
    /// The configured `worker.max_in_flight`.
    pub max_in_flight: usize,
    /// Unfinished events one partition may hold with it.
    pub unfinished: usize,
    /// The largest `max_in_flight` that fits.
    pub most: usize,
}

/// Checks at start that `max_in_flight` running events plus `backlog_per_slot` waiting
/// events per slot (the backlog the worker allows before it pauses its partitions) fit
/// in one partition's offsets metadata.
pub fn check_capacity(max_in_flight: usize, backlog_per_slot: usize) -> Result<(), CapacityError> {
    let per_slot = 1 + backlog_per_slot;
    let unfinished = max_in_flight.saturating_mul(per_slot);
    if unfinished <= MAX_PENDING {
        return Ok(());
    }
    Err(CapacityError {
        max_in_flight,
        unfinished,
        most: MAX_PENDING / per_slot,
    })
}

/// The offset books of the partitions this worker owns, with their assignment epochs.
///
/// The rule that keeps commits exact: whoever starts or completes an offset hands the
/// matching completion to the committer before unlocking, and the committer drains its
/// channel while it holds the lock. So the offsets and metadata it reads never claim more
/// than the records it commits with them.
#[derive(Debug, Clone, Default)]
pub struct Ledger(Arc<Mutex<HashMap<i32, Book>>>);

/// One partition's entry in the [`Ledger`].
#[derive(Debug)]
pub struct Book {
    /// The assignment epoch these offsets belong to.
    pub epoch: u64,
    /// The bookkeeping.
    pub offsets: PartitionOffsets,
}

impl Ledger {
    /// Locks the ledger (a poisoned lock still holds consistent books: every change is a
    /// single call on one of them).
    pub fn lock(&self) -> MutexGuard<'_, HashMap<i32, Book>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Offset bookkeeping for one assigned partition.
///
/// Offsets are not contiguous: transaction markers and compaction leave gaps, so the
/// watermark is the lowest offset received and not done, or the one after the last
/// received when everything received is done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// One past the highest offset received (or the committed offset).
    next: i64,
    /// Offsets received and not done yet.
    pending: BTreeSet<i64>,
    /// Done offsets above the watermark (from this owner, or read back from metadata).
    done: BTreeSet<i64>,
    /// Offsets above the watermark that were started, and how often.
    started: BTreeMap<i64, u32>,
    /// Runs of an offset's last attempt whose `running` record went out and whose final
    /// record did not.
    open: BTreeMap<i64, Vec<RunPosition>>,
}

/// A run position as the metadata writes it: `stage.step.retry`.
fn parse_position(text: &str) -> Option<RunPosition> {
    let mut parts = text.split('.');
    let position = RunPosition {
        stage: parts.next()?.parse().ok()?,
        step: parts.next()?.parse().ok()?,
        retry: parts.next()?.parse().ok()?,
    };
    parts.next().is_none().then_some(position)
}

/// What to do with a received record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// Process it.
    Process,
    /// It was done by an earlier owner: skip it.
    Skip,
}

impl PartitionOffsets {
    /// Bookkeeping resumed from a committed offset and its metadata.
    pub fn resume(committed: i64, metadata: &str) -> Self {
        let mut offsets = PartitionOffsets {
            next: committed.max(0),
            ..Default::default()
        };
        let mut parts = metadata.split(';');
        let base = match parts.next() {
            Some(PREFIX) => offsets.next,
            Some(PREFIX_V1) => 0,
            _ => return offsets,
        };
        let absolute = |text: &str| text.parse::<i64>().ok().map(|o| o.saturating_add(base));
        for part in parts {
            if let Some(list) = part.strip_prefix("done=") {
                for range in list.split(',').filter(|r| !r.is_empty()) {
                    let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                    if let (Some(lo), Some(hi)) = (absolute(lo), absolute(hi)) {
                        offsets
                            .done
                            .extend((lo.max(offsets.next)..=hi).take(100_000));
                    }
                }
            } else if let Some(list) = part.strip_prefix("started=") {
                for entry in list.split(',').filter(|e| !e.is_empty()) {
                    if let Some((offset, count)) = entry.split_once(':')
                        && let (Some(offset), Ok(count)) = (absolute(offset), count.parse::<u32>())
                        && offset >= offsets.next
                    {
                        offsets.started.insert(offset, count);
                    }
                }
            } else if let Some(list) = part.strip_prefix("open=") {
                for entry in list.split(',').filter(|e| !e.is_empty()) {
                    if let Some((offset, runs)) = entry.split_once(':')
                        && let Some(offset) = absolute(offset)
                        && offset >= offsets.next
                    {
                        let runs: Vec<RunPosition> = runs
                            .split('+')
                            .filter_map(parse_position)
                            .take(64)
                            .collect();
                        offsets.open.insert(offset, runs);
                    }
                }
            }
        }
        offsets
    }

    /// A run of `offset`'s current attempt published its `running` record.
    pub fn opened(&mut self, offset: i64, run: RunPosition) {
        if self.pending.contains(&offset) {
            self.open.entry(offset).or_default().push(run);
        }
    }

    /// A run of `offset`'s current attempt published its final record; returns whether
    /// it was open.
    pub fn closed(&mut self, offset: i64, run: RunPosition) -> bool {
        let Some(runs) = self.open.get_mut(&offset) else {
            return false;
        };
        let before = runs.len();
        runs.retain(|r| *r != run);
        let was_open = runs.len() < before;
        if runs.is_empty() {
            self.open.remove(&offset);
        }
        was_open
    }

    /// The runs of `offset`'s previous attempt left open (cut off before their final
    /// record): call when it starts again, and give each a final record.
    pub fn supersede(&mut self, offset: i64) -> Vec<RunPosition> {
        self.open.remove(&offset).unwrap_or_default()
    }

    /// Registers a received record. Skipped: anything below the watermark (done, or
    /// below the committed offset), done above it, or already in progress (a record
    /// delivered twice must not run twice).
    pub fn receive(&mut self, offset: i64) -> Receipt {
        let seen = offset < self.watermark()
            || self.done.contains(&offset)
            || self.pending.contains(&offset);
        self.next = self.next.max(offset + 1);
        if seen {
            self.prune();
            return Receipt::Skip;
        }
        self.pending.insert(offset);
        Receipt::Process
    }

    /// Records a start of `offset`'s event and returns its attempt number (1 the first time).
    pub fn start(&mut self, offset: i64) -> u32 {
        let count = self.started.entry(offset).or_insert(0);
        *count += 1;
        *count
    }

    /// Marks `offset` done; its start count is no longer needed.
    pub fn complete(&mut self, offset: i64) {
        if self.pending.remove(&offset) {
            self.done.insert(offset);
            self.started.remove(&offset);
            self.open.remove(&offset);
            self.prune();
        }
    }

    fn prune(&mut self) {
        let watermark = self.watermark();
        // Done offsets read back from metadata can carry the watermark past what was
        // received: everything below it is done, so `next` moves with it (else those
        // offsets, pruned from `done`, would count as new when they arrive).
        self.next = self.next.max(watermark);
        self.done = self.done.split_off(&watermark);
        self.started = self.started.split_off(&watermark);
        self.open = self.open.split_off(&watermark);
    }

    /// The offset to commit: every offset received below it is done.
    pub fn watermark(&self) -> i64 {
        match self.pending.first() {
            Some(lowest) => *lowest,
            None => {
                // Everything received is done; done offsets read back from metadata may
                // continue right after it.
                let mut watermark = self.next;
                while self.done.contains(&watermark) {
                    watermark += 1;
                }
                watermark
            }
        }
    }

    /// Records received and not done yet.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Offsets done above the watermark (a measure of how far the partition runs ahead).
    pub fn done_ahead(&self) -> usize {
        self.done.len()
    }

    /// The metadata to commit with the watermark (see the module doc for its form).
    pub fn metadata(&self) -> String {
        let base = self.watermark();
        let mut text = String::with_capacity(16 + 12 * (self.done.len() + self.started.len()));
        text.push_str(PREFIX);
        text.push_str(";done=");
        self.write_done(&mut text, base);
        let without_starts = text.len();
        text.push_str(";started=");
        for (i, (offset, count)) in self.started.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            let _ = write!(text, "{}:{count}", offset - base);
        }
        let without_open = text.len();
        if !self.open.is_empty() {
            text.push_str(";open=");
            for (i, (offset, runs)) in self.open.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                let _ = write!(text, "{}:", offset - base);
                for (j, run) in runs.iter().enumerate() {
                    let separator = if j > 0 { "+" } else { "" };
                    let _ = write!(text, "{separator}{}.{}.{}", run.stage, run.step, run.retry);
                }
            }
        }
        // Open runs go first (they would stay `running`), then start counts (an attempt
        // would repeat); done offsets never (they would run again).
        if text.len() > MAX_METADATA {
            text.truncate(without_open);
        }
        if text.len() > MAX_METADATA {
            text.truncate(without_starts);
        }
        text
    }

    /// Writes the done offsets as ranges relative to `base`: `2-4,7`. A range goes on
    /// over offsets received past that hold no unfinished record (gaps: transaction
    /// markers, records of aborted transactions), so only an unfinished offset starts a
    /// new range.
    fn write_done(&self, text: &mut String, base: i64) {
        let mut iter = self.done.iter().copied().peekable();
        let mut first = true;
        while let Some(lo) = iter.next() {
            let mut hi = lo;
            while let Some(&next) = iter.peek() {
                // Offsets at or past `self.next` were not received in this assignment yet:
                // an earlier owner may have left them unfinished.
                if next > self.next || self.pending.range(hi + 1..next).next().is_some() {
                    break;
                }
                hi = next;
                iter.next();
            }
            if !first {
                text.push(',');
            }
            first = false;
            let _ = if lo == hi {
                write!(text, "{}", lo - base)
            } else {
                write!(text, "{}-{}", lo - base, hi - base)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_completions_commit_the_contiguous_watermark() {
        let mut offsets = PartitionOffsets::resume(10, "");
        for offset in 10..16 {
            assert_eq!(offsets.receive(offset), Receipt::Process);
            offsets.start(offset);
        }
        offsets.complete(12);
        offsets.complete(13);
        offsets.complete(15);
        assert_eq!(offsets.watermark(), 10);
        assert_eq!(offsets.metadata(), "cg2;done=2-3,5;started=0:1,1:1,4:1");
        offsets.complete(10);
        assert_eq!(offsets.watermark(), 11);
        offsets.complete(11);
        assert_eq!(offsets.watermark(), 14);
        assert_eq!(offsets.metadata(), "cg2;done=1;started=0:1");
        offsets.complete(14);
        assert_eq!(offsets.watermark(), 16);
        assert_eq!(offsets.metadata(), "cg2;done=;started=");
    }

    #[test]
    fn open_runs_of_a_cut_off_attempt_come_back_to_be_superseded() {
        let mut offsets = PartitionOffsets::resume(10, "");
        offsets.receive(10);
        offsets.receive(11);
        assert_eq!(offsets.start(11), 1);
        let first = RunPosition {
            stage: 0,
            step: 0,
            retry: 0,
        };
        let second = RunPosition {
            stage: 0,
            step: 1,
            retry: 2,
        };
        offsets.opened(11, first);
        offsets.opened(11, second);
        offsets.closed(11, first);
        let metadata = offsets.metadata();
        assert_eq!(metadata, "cg2;done=;started=1:1;open=1:0.1.2");
        let mut resumed = PartitionOffsets::resume(10, &metadata);
        assert_eq!(resumed.receive(11), Receipt::Process);
        assert_eq!(resumed.start(11), 2);
        assert_eq!(resumed.supersede(11), [second]);
        assert_eq!(resumed.supersede(11), []);
        resumed.opened(11, first);
        assert_eq!(resumed.metadata(), "cg2;done=;started=0:2;open=0:0.0.0");
        resumed.complete(11);
        assert_eq!(resumed.metadata(), "cg2;done=;started=");
    }

    #[test]
    fn gaps_left_by_transaction_markers_do_not_hold_the_watermark() {
        let mut offsets = PartitionOffsets::resume(0, "");
        offsets.receive(0);
        offsets.receive(2);
        offsets.complete(2);
        assert_eq!(offsets.watermark(), 0);
        offsets.complete(0);
        assert_eq!(offsets.watermark(), 3);
    }

    #[test]
    fn a_new_owner_skips_what_was_done_and_counts_attempts() {
        let mut resumed = PartitionOffsets::resume(10, "cg1;done=12-13,15;started=10:1,11:2,14:1");
        assert_eq!(resumed.receive(9), Receipt::Skip);
        assert_eq!(resumed.receive(10), Receipt::Process);
        assert_eq!(resumed.receive(11), Receipt::Process);
        assert_eq!(resumed.receive(12), Receipt::Skip);
        assert_eq!(resumed.receive(13), Receipt::Skip);
        assert_eq!(resumed.receive(14), Receipt::Process);
        assert_eq!(resumed.receive(15), Receipt::Skip);
        assert_eq!(resumed.start(11), 3);
        assert_eq!(resumed.start(16), 1);
        resumed.complete(10);
        resumed.complete(11);
        assert_eq!(resumed.watermark(), 14);
        resumed.complete(14);
        assert_eq!(resumed.watermark(), 16);
    }

    #[test]
    fn foreign_or_broken_metadata_is_ignored() {
        let mut offsets = PartitionOffsets::resume(5, "something else");
        assert_eq!(offsets.watermark(), 5);
        assert_eq!(offsets.receive(6), Receipt::Process);
        let mut offsets = PartitionOffsets::resume(5, "cg1;done=x-y,7;started=q");
        assert_eq!(offsets.receive(7), Receipt::Skip);
    }

    #[test]
    fn oversized_metadata_drops_start_counts_first() {
        let mut offsets = PartitionOffsets::resume(0, "");
        for offset in 0..4000 {
            offsets.receive(offset);
            offsets.start(offset);
        }
        offsets.complete(2);
        let metadata = offsets.metadata();
        assert!(metadata.len() <= MAX_METADATA);
        assert_eq!(metadata, "cg2;done=2");
    }

    #[test]
    fn metadata_round_trips_relative_to_the_watermark() {
        let mut offsets = PartitionOffsets::resume(1_000_000_000, "");
        for offset in 1_000_000_000..1_000_000_010 {
            offsets.receive(offset);
        }
        offsets.start(1_000_000_001);
        for offset in [1_000_000_002, 1_000_000_003, 1_000_000_007] {
            offsets.complete(offset);
        }
        let metadata = offsets.metadata();
        assert_eq!(metadata, "cg2;done=2-3,7;started=1:1");
        let mut resumed = PartitionOffsets::resume(offsets.watermark(), &metadata);
        for (offset, receipt) in [
            (1_000_000_001, Receipt::Process),
            (1_000_000_002, Receipt::Skip),
            (1_000_000_004, Receipt::Process),
            (1_000_000_007, Receipt::Skip),
        ] {
            assert_eq!(resumed.receive(offset), receipt, "{offset}");
        }
        assert_eq!(resumed.start(1_000_000_001), 2);
    }

    #[test]
    fn ranges_span_transaction_markers_but_not_unfinished_offsets() {
        // Input written transactionally: every other offset is a commit marker.
        let mut offsets = PartitionOffsets::resume(0, "");
        for offset in (0..400).step_by(2) {
            offsets.receive(offset);
        }
        for offset in (2..400).step_by(2) {
            offsets.complete(offset);
        }
        assert_eq!(offsets.metadata(), "cg2;done=2-398;started=");
        // An earlier owner's done offsets past what was received stay apart.
        let resumed = PartitionOffsets::resume(10, "cg2;done=2,5");
        assert_eq!(resumed.metadata(), "cg2;done=2,5;started=");
    }

    #[test]
    fn the_worst_case_metadata_fits_the_broker_limit() {
        // The watermark's event unfinished, then MAX_PENDING ranges of two done offsets,
        // each followed by an unfinished one, as far ahead as the bound allows: every
        // range at its longest.
        let mut offsets = PartitionOffsets::resume(0, "");
        let far: i64 = 9_000_000;
        offsets.receive(0);
        for i in 0..MAX_PENDING as i64 {
            for offset in far + 3 * i..far + 3 * i + 3 {
                offsets.receive(offset);
            }
            offsets.complete(far + 3 * i);
            offsets.complete(far + 3 * i + 1);
        }
        assert_eq!(offsets.pending(), MAX_PENDING + 1);
        let metadata = offsets.metadata();
        assert!(metadata.len() <= MAX_METADATA, "{}", metadata.len());
        assert!(metadata.len() > MAX_METADATA / 2, "{}", metadata.len());
    }

    #[test]
    fn a_max_in_flight_whose_backlog_cannot_be_recorded_is_refused() {
        assert_eq!(check_capacity(16, 8), Ok(()));
        let error = check_capacity(256, 8).expect_err("too many");
        assert!(error.most < 256 && error.most >= 16, "{error}");
        assert!(
            error
                .to_string()
                .contains("set worker.max_in_flight to at most"),
            "{error}"
        );
    }

    #[test]
    fn done_offsets_read_back_stay_done_once_the_watermark_passes_them() {
        // Committed 3 with 4 done: finishing 3 carries the watermark to 5 before offset 4
        // is received again.
        let mut resumed = PartitionOffsets::resume(3, "cg2;done=1;started=");
        assert_eq!(resumed.receive(3), Receipt::Process);
        resumed.complete(3);
        assert_eq!(resumed.watermark(), 5);
        assert_eq!(resumed.receive(4), Receipt::Skip);
        assert_eq!(resumed.receive(5), Receipt::Process);
        assert_eq!(resumed.watermark(), 5);
        resumed.complete(5);
        assert_eq!(resumed.watermark(), 6);
    }

    #[test]
    fn metadata_written_by_the_earlier_version_is_read() {
        let mut resumed = PartitionOffsets::resume(10, "cg1;done=12-13;started=11:2");
        assert_eq!(resumed.receive(10), Receipt::Process);
        assert_eq!(resumed.receive(11), Receipt::Process);
        assert_eq!(resumed.receive(12), Receipt::Skip);
        assert_eq!(resumed.start(11), 3);
    }
}
