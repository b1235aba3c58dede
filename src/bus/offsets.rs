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
//! Metadata text: `cg1;done=12-14,17;started=15:2,16:1` (offsets absolute). It stays well
//! under the broker's default `offset.metadata.max.bytes` of 4096 because backpressure
//! bounds how far a partition runs ahead of its watermark; [`PartitionOffsets::metadata`]
//! drops start counts (never done offsets) when it would not fit.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write;
use std::sync::{Arc, Mutex, MutexGuard};

/// The metadata version prefix.
const PREFIX: &str = "cg1";
/// Metadata longer than this is trimmed (start counts first).
pub const MAX_METADATA: usize = 3800;

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
        if parts.next() != Some(PREFIX) {
            return offsets;
        }
        for part in parts {
            if let Some(list) = part.strip_prefix("done=") {
                for range in list.split(',').filter(|r| !r.is_empty()) {
                    let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                    if let (Ok(lo), Ok(hi)) = (lo.parse::<i64>(), hi.parse::<i64>()) {
                        offsets
                            .done
                            .extend((lo.max(offsets.next)..=hi).take(100_000));
                    }
                }
            } else if let Some(list) = part.strip_prefix("started=") {
                for entry in list.split(',').filter(|e| !e.is_empty()) {
                    if let Some((offset, count)) = entry.split_once(':')
                        && let (Ok(offset), Ok(count)) =
                            (offset.parse::<i64>(), count.parse::<u32>())
                        && offset >= offsets.next
                    {
                        offsets.started.insert(offset, count);
                    }
                }
            }
        }
        offsets
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
            self.prune();
        }
    }

    fn prune(&mut self) {
        let watermark = self.watermark();
        self.done = self.done.split_off(&watermark);
        self.started = self.started.split_off(&watermark);
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

    /// The metadata to commit with the watermark.
    pub fn metadata(&self) -> String {
        let mut text = String::with_capacity(16 + 12 * (self.done.len() + self.started.len()));
        text.push_str(PREFIX);
        text.push_str(";done=");
        write_ranges(&mut text, &self.done);
        let without_starts = text.len();
        text.push_str(";started=");
        for (i, (offset, count)) in self.started.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            let _ = write!(text, "{offset}:{count}");
        }
        if text.len() > MAX_METADATA {
            text.truncate(without_starts);
        }
        text
    }
}

/// Writes `1,2,3,5,7,8` as `1-3,5,7-8`.
fn write_ranges(text: &mut String, offsets: &BTreeSet<i64>) {
    let mut iter = offsets.iter().copied().peekable();
    let mut first = true;
    while let Some(lo) = iter.next() {
        let mut hi = lo;
        while iter.peek() == Some(&(hi + 1)) {
            hi += 1;
            iter.next();
        }
        if !first {
            text.push(',');
        }
        first = false;
        let _ = if lo == hi {
            write!(text, "{lo}")
        } else {
            write!(text, "{lo}-{hi}")
        };
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
        assert_eq!(
            offsets.metadata(),
            "cg1;done=12-13,15;started=10:1,11:1,14:1"
        );
        offsets.complete(10);
        assert_eq!(offsets.watermark(), 11);
        offsets.complete(11);
        assert_eq!(offsets.watermark(), 14);
        assert_eq!(offsets.metadata(), "cg1;done=15;started=14:1");
        offsets.complete(14);
        assert_eq!(offsets.watermark(), 16);
        assert_eq!(offsets.metadata(), "cg1;done=;started=");
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
        assert_eq!(metadata, "cg1;done=2");
    }
}
