//! How far each partition of the commands topic is done: the offset the bridge may
//! commit.
//!
//! The rule that keeps commands from being lost: a partition's commit point is the offset
//! of its first command not yet finished (applied, skipped as stale, a dry run, or
//! reported as failed), or, when none is pending, one past the last record read. A
//! command still running (retrying, say) holds back every later offset of its partition,
//! even if those finished, so a restart or a rebalance delivers it again; the later ones
//! then come again too and are applied again (turning a flag on or off twice is
//! harmless), or skipped as stale.
//!
//! A record delivered again in the same process (the consumer went back to the committed
//! offset after a rebalance) is recognised: still pending, it is left to the run that has
//! it; already finished, it is not applied a second time.

use std::collections::{BTreeMap, BTreeSet};

use super::order::Position;

/// What a record read at some position is to this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Read for the first time: handle it.
    New,
    /// Read before and still being handled.
    Pending,
    /// Read before and finished.
    Finished,
}

/// Every partition's pending offsets and commit point.
#[derive(Debug, Default)]
pub struct Progress {
    partitions: BTreeMap<i32, Partition>,
}

#[derive(Debug, Default)]
struct Partition {
    pending: BTreeSet<i64>,
    /// One past the highest offset read.
    next: Option<i64>,
    /// The last commit point handed to [`Progress::committed`].
    committed: Option<i64>,
}

impl Partition {
    fn point(&self) -> Option<i64> {
        self.pending.first().copied().or(self.next)
    }
}

impl Progress {
    /// A record was read at `at`: what it is, and (when [`Seen::New`]) it is pending now.
    pub fn read(&mut self, at: Position) -> Seen {
        let partition = self.partitions.entry(at.partition).or_default();
        if partition.pending.contains(&at.offset) {
            return Seen::Pending;
        }
        if partition.next.is_some_and(|next| at.offset < next) {
            return Seen::Finished;
        }
        partition.pending.insert(at.offset);
        partition.next = Some(at.offset + 1);
        Seen::New
    }

    /// The record at `at` is finished.
    pub fn finished(&mut self, at: Position) {
        if let Some(partition) = self.partitions.get_mut(&at.partition) {
            partition.pending.remove(&at.offset);
        }
    }

    /// Partitions whose commit point moved since [`Progress::committed`] was last told
    /// of it, or (`all`) every partition with a commit point: `(partition, offset)`,
    /// the offset being the next one to read, as Kafka commits it.
    pub fn to_commit(&self, all: bool) -> Vec<(i32, i64)> {
        self.partitions
            .iter()
            .filter_map(|(number, p)| {
                let point = p.point()?;
                (all || p.committed != Some(point)).then_some((*number, point))
            })
            .collect()
    }

    /// `offset` was handed to Kafka as `partition`'s commit point.
    pub fn committed(&mut self, partition: i32, offset: i64) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            p.committed = Some(offset);
        }
    }

    /// Whether a record of `partition` was read before.
    pub fn knows(&self, partition: i32) -> bool {
        self.partitions.contains_key(&partition)
    }

    /// Records read and not finished, all partitions together.
    pub fn pending(&self) -> usize {
        self.partitions.values().map(|p| p.pending.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: i32, offset: i64) -> Position {
        Position { partition, offset }
    }

    #[test]
    fn the_commit_point_waits_for_the_first_unfinished_command() {
        let mut progress = Progress::default();
        for offset in 10..13 {
            assert_eq!(progress.read(at(0, offset)), Seen::New);
        }
        assert_eq!(progress.to_commit(false), vec![(0, 10)]);
        progress.committed(0, 10);
        assert_eq!(progress.to_commit(false), vec![]);
        assert_eq!(progress.to_commit(true), vec![(0, 10)]);
        progress.finished(at(0, 11));
        progress.finished(at(0, 12));
        assert_eq!(progress.to_commit(false), vec![], "10 still pending");
        progress.finished(at(0, 10));
        assert_eq!(progress.to_commit(false), vec![(0, 13)]);
        assert_eq!(progress.pending(), 0);
    }

    #[test]
    fn partitions_are_apart_and_a_record_read_again_is_recognised() {
        let mut progress = Progress::default();
        assert!(!progress.knows(0));
        progress.read(at(0, 5));
        assert!(progress.knows(0));
        progress.read(at(1, 7));
        progress.finished(at(1, 7));
        assert_eq!(progress.to_commit(false), vec![(0, 5), (1, 8)]);
        assert_eq!(progress.read(at(0, 5)), Seen::Pending);
        assert_eq!(progress.read(at(1, 7)), Seen::Finished);
        assert_eq!(
            progress.read(at(1, 9)),
            Seen::New,
            "a gap (a transaction marker)"
        );
        assert_eq!(progress.to_commit(false), vec![(0, 5), (1, 9)]);
    }
}
