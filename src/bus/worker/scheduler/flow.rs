//! Flow control: which owned partitions librdkafka should fetch from, and the records
//! held while a partition may not take them.
//!
//! A partition is paused while its offsets are unread, while its book is full (its
//! unfinished events, or how far they run ahead, reach what its offsets metadata can
//! record: `PartitionOffsets::is_full`), while the backlog (events read but not started,
//! plus records held) is over [`BACKLOG_FACTOR`] × `max_in_flight` until it halves, and
//! while draining. A fetch already under way when a partition is paused still delivers:
//! such records are held, in offset order, and let in once the book has room.
//! [`Scheduler::flow`] compares what should be paused with what librdkafka was last told,
//! per partition, so a partition assigned during backpressure is paused too.

use super::Scheduler;

/// Events waiting (for their flag or a slot) beyond `BACKLOG_FACTOR × max_in_flight`
/// pause consumption until the backlog halves.
const BACKLOG_FACTOR: usize = 8;

/// Partitions to pause and to resume at librdkafka.
#[derive(Debug, Default, PartialEq, Eq)]
pub(in crate::bus::worker) struct FlowChange {
    pub(crate) pause: Vec<i32>,
    pub(crate) resume: Vec<i32>,
}

impl Scheduler {
    /// What to pause and resume now; see "Flow" in the module docs. The caller tells
    /// librdkafka, and [`Scheduler::flow_failed`] when that fails.
    pub(crate) fn flow(&mut self) -> FlowChange {
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
    pub(crate) fn flow_failed(&mut self, change: &FlowChange) {
        for (ids, paused) in [(&change.pause, false), (&change.resume, true)] {
            for id in ids {
                if let Some(partition) = self.partitions.get_mut(id) {
                    partition.paused = paused;
                }
            }
        }
    }
}
