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
//! The metadata's text and its bound are [`super::offset_metadata`]'s. The rule that
//! keeps it under the broker's `offset.metadata.max.bytes`: at most [`MAX_PENDING`]
//! offsets of one partition are unfinished at once and its done offsets run at most
//! [`MAX_SPAN`] ahead of its watermark; the worker holds a partition's further records
//! while [`PartitionOffsets::is_full`] says so. Done offsets are never dropped from the
//! text (that would run them again); start counts are, when they would not fit.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

pub(crate) use crate::gate::executor::RunPosition;

use super::offset_metadata;

pub use super::offset_metadata::{MAX_METADATA, MAX_PENDING, MAX_SPAN};

/// The worker's settings let more offsets of one partition be unfinished at once than its
/// offsets metadata can record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "worker.max_in_flight = {max_in_flight} lets up to {unfinished} events of one partition run at once, \
     but the offsets metadata committed with them (the broker's offset.metadata.max.bytes, 4096 bytes by default) \
     can record at most {MAX_PENDING} unfinished events of one partition: \
     set worker.max_in_flight to at most {most}"
)]
pub struct CapacityError {
    /// The configured `worker.max_in_flight`.
    pub(crate) max_in_flight: usize,
    /// Unfinished events one partition may hold with it.
    pub(crate) unfinished: usize,
    /// The largest `max_in_flight` that fits.
    pub(crate) most: usize,
}

/// Checks at start that `max_in_flight` running events of one partition fit in its
/// offsets metadata. Events waiting beyond that are held back from the partition's book
/// ([`PartitionOffsets::is_full`]), so they never count.
pub(crate) fn check_capacity(max_in_flight: usize) -> Result<(), CapacityError> {
    if max_in_flight <= MAX_PENDING {
        return Ok(());
    }
    Err(CapacityError {
        max_in_flight,
        unfinished: max_in_flight,
        most: MAX_PENDING,
    })
}

/// The offset books of the partitions this worker owns, with their assignment epochs.
///
/// The rule that keeps commits exact: whoever starts or completes an offset hands the
/// matching completion to the committer before unlocking, and the committer drains its
/// channel while it holds the lock. So the offsets and metadata it reads never claim more
/// than the records it commits with them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ledger(Arc<Mutex<HashMap<i32, Book>>>);

/// One partition's entry in the [`Ledger`].
#[derive(Debug)]
pub(crate) struct Book {
    /// The assignment epoch these offsets belong to.
    pub(crate) epoch: u64,
    /// The bookkeeping.
    pub(crate) offsets: PartitionOffsets,
}

impl Ledger {
    /// Locks the ledger (a poisoned lock still holds consistent books: every change is a
    /// single call on one of them).
    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<i32, Book>> {
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
pub(crate) struct PartitionOffsets {
    /// One past the highest offset received (or the committed offset).
    next: i64,
    /// Offsets received and not done yet.
    pending: BTreeSet<i64>,
    /// Done offsets above the watermark (from this owner, or read back from metadata).
    done: Ranges,
    /// Offsets above the watermark that were started, and how often.
    started: BTreeMap<i64, u32>,
    /// Runs of an offset's last attempt whose `running` record went out and whose final
    /// record did not.
    open: BTreeMap<i64, Vec<RunPosition>>,
}

/// Offsets as disjoint, non-adjacent ranges `start -> end` (`end` exclusive).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Ranges(BTreeMap<i64, i64>);

impl Ranges {
    /// The end of the range holding `offset`.
    fn end_of(&self, offset: i64) -> Option<i64> {
        self.0
            .range(..=offset)
            .next_back()
            .map(|(_, end)| *end)
            .filter(|end| offset < *end)
    }

    fn contains(&self, offset: i64) -> bool {
        self.end_of(offset).is_some()
    }

    /// Adds `[start, end)`, merging what it touches.
    fn insert(&mut self, mut start: i64, mut end: i64) {
        if start >= end {
            return;
        }
        if let Some((&s, &e)) = self.0.range(..=start).next_back()
            && e >= start
        {
            start = s;
            end = end.max(e);
            self.0.remove(&s);
        }
        while let Some((&s, &e)) = self.0.range(start..=end).next() {
            end = end.max(e);
            self.0.remove(&s);
        }
        self.0.insert(start, end);
    }

    /// Drops every offset below `from`.
    fn prune(&mut self, from: i64) {
        let mut kept = self.0.split_off(&from);
        if let Some((_, &end)) = self.0.iter().next_back()
            && end > from
        {
            kept.insert(from, end);
        }
        self.0 = kept;
    }

    /// One past the highest offset held.
    fn end(&self) -> Option<i64> {
        self.0.values().next_back().copied()
    }

    /// The ranges that end after `from`.
    fn after(&self, from: i64) -> impl Iterator<Item = (i64, i64)> + '_ {
        let first = self
            .0
            .range(..=from)
            .next_back()
            .filter(|(_, end)| **end > from)
            .map(|(s, e)| (*s, *e));
        first.into_iter().chain(
            self.0
                .range(from.saturating_add(1)..)
                .map(|(s, e)| (*s, *e)),
        )
    }
}

/// What to do with a received record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Receipt {
    /// Process it.
    Process,
    /// It was done by an earlier owner: skip it.
    Skip,
}

impl PartitionOffsets {
    /// Records received and not done yet.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Bookkeeping resumed from a committed offset and its metadata (any version
    /// [`super::offset_metadata`] reads).
    pub(crate) fn resume(committed: i64, metadata: &str) -> Self {
        let next = committed.max(0);
        let mut decoded = offset_metadata::decode(next, metadata);
        let mut offsets = PartitionOffsets {
            next,
            ..Default::default()
        };
        for (start, end) in decoded.done {
            offsets.done.insert(start.max(next), end);
        }
        offsets.started = decoded.started.split_off(&next);
        offsets.open = decoded.open.split_off(&next);
        offsets
    }

    /// A run of `offset`'s current attempt published its `running` record.
    pub(crate) fn opened(&mut self, offset: i64, run: RunPosition) {
        if self.pending.contains(&offset) {
            self.open.entry(offset).or_default().push(run);
        }
    }

    /// A run of `offset`'s current attempt published its final record; returns whether
    /// it was open.
    pub(crate) fn closed(&mut self, offset: i64, run: RunPosition) -> bool {
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
    pub(crate) fn supersede(&mut self, offset: i64) -> Vec<RunPosition> {
        self.open.remove(&offset).unwrap_or_default()
    }

    /// Whether the partition's further records must wait (held by the worker, not
    /// received here) for its metadata to stay within its bound: [`MAX_PENDING`] offsets
    /// unfinished, or received offsets [`MAX_SPAN`] ahead of the watermark.
    pub(crate) fn is_full(&self) -> bool {
        self.pending.len() >= MAX_PENDING
            || u64::try_from(self.next - self.watermark()).unwrap_or(0) >= MAX_SPAN
    }

    /// Registers a received record. Skipped: anything below the watermark (done, or
    /// below the committed offset), done above it, or already in progress (a record
    /// delivered twice must not run twice).
    pub(crate) fn receive(&mut self, offset: i64) -> Receipt {
        let seen = offset < self.watermark()
            || self.done.contains(offset)
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
    pub(crate) fn start(&mut self, offset: i64) -> u32 {
        let count = self.started.entry(offset).or_insert(0);
        *count += 1;
        *count
    }

    /// Marks `offset` done; its start count is no longer needed.
    pub(crate) fn complete(&mut self, offset: i64) {
        if self.pending.remove(&offset) {
            self.done.insert(offset, offset + 1);
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
        self.done.prune(watermark);
        self.started = self.started.split_off(&watermark);
        self.open = self.open.split_off(&watermark);
    }

    /// The offset to commit: every offset received below it is done.
    pub(crate) fn watermark(&self) -> i64 {
        match self.pending.first() {
            Some(lowest) => *lowest,
            // Everything received is done; done offsets read back from metadata may
            // continue right after it.
            None => self.done.end_of(self.next).unwrap_or(self.next),
        }
    }

    /// The metadata to commit with the watermark (see [`super::offset_metadata`]).
    ///
    /// Offsets below `next` that are neither pending nor done were never delivered
    /// (markers, aborted records: a `read_committed` consumer reads in order and never
    /// past the last stable offset), so they count as done and only pending offsets break
    /// a done run; at or past `next`, offsets not known done were not received in this
    /// assignment (an earlier owner may have left them unfinished) and count as not done.
    pub(crate) fn metadata(&self) -> String {
        let base = self.watermark();
        let end = self.done.end().unwrap_or(base).max(base);
        let received = self.pending.range(base..end).map(|p| (*p, *p + 1));
        let mut cursor = self.next.max(base);
        let unknown = self.done.after(cursor).filter_map(move |(start, stop)| {
            let gap = (start > cursor).then_some((cursor, start));
            cursor = cursor.max(stop);
            gap
        });
        let mut runs: Vec<(i64, i64)> = Vec::new();
        for (start, stop) in received.chain(unknown) {
            match runs.last_mut() {
                Some(last) if last.1 == start => last.1 = stop,
                _ => runs.push((start, stop)),
            }
        }
        offset_metadata::encode(base, end, runs.into_iter(), &self.started, &self.open)
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
        assert_eq!(offsets.metadata(), "cg3;r=02211;s=011131");
        offsets.complete(10);
        assert_eq!(offsets.watermark(), 11);
        offsets.complete(11);
        assert_eq!(offsets.watermark(), 14);
        assert_eq!(offsets.metadata(), "cg3;r=011;s=01");
        offsets.complete(14);
        assert_eq!(offsets.watermark(), 16);
        assert_eq!(offsets.metadata(), "cg3;r=;s=");
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
        assert_eq!(metadata, "cg3;r=;s=11;o=1:0.1.2");
        let mut resumed = PartitionOffsets::resume(10, &metadata);
        assert_eq!(resumed.receive(11), Receipt::Process);
        assert_eq!(resumed.start(11), 2);
        assert_eq!(resumed.supersede(11), [second]);
        assert_eq!(resumed.supersede(11), []);
        resumed.opened(11, first);
        assert_eq!(resumed.metadata(), "cg3;r=;s=02;o=0:0.0.0");
        resumed.complete(11);
        assert_eq!(resumed.metadata(), "cg3;r=;s=");
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
        assert_eq!(metadata, "cg3;r=021");
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
        assert_eq!(metadata, "cg3;r=02231;s=11");
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
        // One unfinished offset, then one done run of 398 offsets (two digits).
        assert_eq!(offsets.metadata(), "cg3;r=01Kc;s=");
        // An earlier owner's done offsets past what was received stay apart.
        let resumed = PartitionOffsets::resume(10, "cg2;done=2,5");
        assert_eq!(resumed.metadata(), "cg3;r=02121;s=");
    }

    #[test]
    fn a_full_book_of_isolated_unfinished_offsets_fits_the_broker_limit() {
        // The watermark's event unfinished, then unfinished offsets one by one, each after
        // a long done run, until the book is full, as far ahead as the bound allows.
        let mut offsets = PartitionOffsets::resume(0, "");
        let step = (MAX_SPAN / MAX_PENDING as u64) as i64 - 1;
        offsets.receive(0);
        let mut offset = 0;
        while !offsets.is_full() {
            offset += step;
            offsets.receive(offset - 1);
            offsets.complete(offset - 1);
            offsets.receive(offset);
        }
        assert_eq!(offsets.pending(), MAX_PENDING);
        let metadata = offsets.metadata();
        assert!(metadata.len() <= MAX_METADATA, "{}", metadata.len());
        assert!(metadata.len() > MAX_METADATA / 2, "{}", metadata.len());
        let mut resumed = PartitionOffsets::resume(0, &metadata);
        for k in [1, 2, MAX_PENDING as i64 - 1] {
            assert_eq!(resumed.receive(k * step - 1), Receipt::Skip, "{k}");
            assert_eq!(resumed.receive(k * step), Receipt::Process, "{k}");
        }
    }

    #[test]
    fn a_book_too_far_ahead_of_its_watermark_is_full() {
        let mut offsets = PartitionOffsets::resume(0, "");
        offsets.receive(0);
        assert!(!offsets.is_full());
        let far = MAX_SPAN as i64;
        offsets.receive(far);
        offsets.complete(far);
        assert!(offsets.is_full());
        offsets.complete(0);
        assert!(!offsets.is_full());
    }

    #[test]
    fn a_max_in_flight_whose_runs_cannot_be_recorded_is_refused() {
        assert_eq!(check_capacity(256), Ok(()));
        let error = check_capacity(MAX_PENDING + 1).expect_err("too many");
        assert_eq!(error.most, MAX_PENDING);
        assert!(
            error
                .to_string()
                .contains("set worker.max_in_flight to at most"),
            "{error}"
        );
    }

    #[test]
    fn what_the_previous_version_committed_is_read_and_kept() {
        // A worker upgraded mid-stream: the previous version committed offset 10 with
        // 12-13 and 15 done (an unfinished offset between, and 14 never received).
        let mut resumed = PartitionOffsets::resume(10, "cg2;done=2-3,5;started=1:2;open=1:0.1.2");
        let written = resumed.metadata();
        assert!(written.starts_with("cg3;"), "{written}");
        let mut again = PartitionOffsets::resume(10, &written);
        for book in [&mut resumed, &mut again] {
            let skipped: Vec<i64> = (10..=16)
                .filter(|offset| book.receive(*offset) == Receipt::Skip)
                .collect();
            assert_eq!(skipped, [12, 13, 15]);
            assert_eq!(book.start(11), 3);
            assert_eq!(book.supersede(11).len(), 1);
        }
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
