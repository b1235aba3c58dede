//! Time-aligned reading: during a catch-up, partitions are read at the pace of the one
//! furthest behind in record time, so records of one moment are stored together.
//!
//! Why: the topics hold records of very different sizes (a run record is ~1.6 KB, a
//! flag-change a few hundred bytes), and librdkafka fetches by bytes, so a catch-up left
//! alone reads the commands and changes of days ahead of their runs. Every command then
//! leaves its steps open until their runs arrive (a random-keyed table of up to a million
//! rows, each written and then deleted), and each run reaches back to an execution, a
//! command and a change long out of SQLite's page cache. Read in time order, they are
//! stored while their neighbours are still in the cache.
//!
//! Rule: a partition is paused while its last record's Kafka timestamp is more than
//! [`WINDOW_MS`] ahead of the floor, and resumed once it is not; the floor is the
//! earliest last timestamp among partitions not paused that still have records to read
//! (by the last high watermark seen) and delivered one within [`STALL`]. So a partition
//! that is drained, stalled (a broker away) or has no timestamps never holds the others
//! back, and once every partition is drained (a caught-up view reading live records)
//! nothing stays paused. Pausing only chooses which partition is read next: librdkafka
//! resumes a partition at the next record the view has not been given, so no record is
//! skipped or read twice (`rd_kafka_pause_partitions`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How far (Kafka timestamp milliseconds) a partition may read ahead of the floor; a
/// paused one is resumed once it is less than half of this ahead (so a partition is not
/// paused and resumed on every decision: each pause drops what librdkafka prefetched).
pub(super) const WINDOW_MS: i64 = 2_000;
/// A partition that delivered nothing for this long (since it last delivered or was
/// resumed) does not hold the others back.
pub(super) const STALL: Duration = Duration::from_secs(2);

/// A topic partition.
pub(super) type PartitionKey = (String, i32);

/// What was last read from one partition.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    /// Kafka timestamp of its last record (ms since the epoch), if it had one.
    timestamp: Option<i64>,
    /// Offset after its last record.
    next: i64,
    /// When it was read.
    at: Instant,
}

/// The reading pace of every assigned partition.
#[derive(Debug, Default)]
pub(super) struct Alignment {
    arrivals: BTreeMap<PartitionKey, Arrival>,
    /// The last high watermark seen per partition.
    high: BTreeMap<PartitionKey, i64>,
    paused: BTreeSet<PartitionKey>,
}

/// Partitions to pause and to resume.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Decision {
    pub(super) pause: Vec<PartitionKey>,
    pub(super) resume: Vec<PartitionKey>,
}

impl Alignment {
    /// Notes a record read from `key` at `offset` with Kafka timestamp `timestamp`.
    pub(super) fn delivered(
        &mut self,
        key: &PartitionKey,
        offset: i64,
        timestamp: Option<i64>,
        now: Instant,
    ) {
        let arrival = Arrival {
            timestamp,
            next: offset + 1,
            at: now,
        };
        match self.arrivals.get_mut(key) {
            Some(known) => *known = arrival,
            None => {
                self.arrivals.insert(key.clone(), arrival);
            }
        }
    }

    /// Notes a partition's high watermark.
    pub(super) fn high_watermark(&mut self, key: &PartitionKey, high: i64) {
        self.high.insert(key.clone(), high);
    }

    /// Decides which partitions to pause and resume now.
    pub(super) fn decide(&self, now: Instant) -> Decision {
        let floor = self
            .arrivals
            .iter()
            .filter(|(key, arrival)| {
                !self.paused.contains(*key)
                    && self.high.get(*key).is_some_and(|high| arrival.next < *high)
                    && now.saturating_duration_since(arrival.at) < STALL
            })
            .filter_map(|(_, arrival)| arrival.timestamp)
            .min();
        let mut decision = Decision::default();
        for (key, arrival) in &self.arrivals {
            let paused = self.paused.contains(key);
            let limit = if paused { WINDOW_MS / 2 } else { WINDOW_MS };
            let ahead = match (floor, arrival.timestamp) {
                (Some(floor), Some(at)) => at > floor.saturating_add(limit),
                _ => false,
            };
            if ahead && !paused {
                decision.pause.push(key.clone());
            } else if !ahead && paused {
                decision.resume.push(key.clone());
            }
        }
        // A paused partition never read again (no arrival: cannot happen) is resumed.
        for key in &self.paused {
            if !self.arrivals.contains_key(key) {
                decision.resume.push(key.clone());
            }
        }
        decision
    }

    /// Notes that `keys` were paused (`true`) or resumed at `now`.
    pub(super) fn applied(&mut self, keys: &[PartitionKey], paused: bool, now: Instant) {
        for key in keys {
            if paused {
                self.paused.insert(key.clone());
            } else {
                self.paused.remove(key);
                // Resumed: it has STALL to deliver before it stops counting.
                if let Some(arrival) = self.arrivals.get_mut(key) {
                    arrival.at = now;
                }
            }
        }
    }

    /// Partitions paused now.
    #[cfg(test)]
    fn paused(&self) -> Vec<PartitionKey> {
        self.paused.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(topic: &str) -> PartitionKey {
        (topic.to_string(), 0)
    }

    fn apply(alignment: &mut Alignment, now: Instant) -> Decision {
        let decision = alignment.decide(now);
        alignment.applied(&decision.pause, true, now);
        alignment.applied(&decision.resume, false, now);
        decision
    }

    #[test]
    fn a_partition_ahead_of_the_slowest_is_paused_until_it_catches_up() {
        let now = Instant::now();
        let mut a = Alignment::default();
        a.high_watermark(&key("runs"), 1_000);
        a.high_watermark(&key("commands"), 1_000);
        a.delivered(&key("runs"), 10, Some(100_000), now);
        a.delivered(&key("commands"), 10, Some(100_000 + WINDOW_MS + 1), now);
        let decision = apply(&mut a, now);
        assert_eq!(decision.pause, vec![key("commands")]);
        assert_eq!(a.paused(), vec![key("commands")]);
        // The runs advance to within the window: commands stay paused until they are
        // less than half of it ahead.
        a.delivered(&key("runs"), 11, Some(100_002), now);
        assert_eq!(apply(&mut a, now), Decision::default());
        a.delivered(&key("runs"), 12, Some(100_000 + WINDOW_MS / 2 + 2), now);
        let decision = apply(&mut a, now);
        assert_eq!(decision.resume, vec![key("commands")]);
        assert!(a.paused().is_empty());
    }

    #[test]
    fn a_drained_or_stalled_partition_holds_nothing_back() {
        let now = Instant::now();
        let mut a = Alignment::default();
        a.high_watermark(&key("runs"), 11);
        a.high_watermark(&key("commands"), 1_000);
        a.delivered(&key("commands"), 10, Some(500_000), now);
        // Runs drained (next offset 11 = high watermark): no floor from them.
        a.delivered(&key("runs"), 10, Some(100_000), now);
        assert_eq!(apply(&mut a, now), Decision::default());
        // Runs have records again but stalled past STALL: still nothing paused.
        a.high_watermark(&key("runs"), 50);
        let later = now + STALL + Duration::from_millis(1);
        a.delivered(&key("commands"), 11, Some(500_001), later);
        assert_eq!(apply(&mut a, later), Decision::default());
        // Runs deliver again: commands, far ahead, are paused; once runs stall, resumed.
        a.delivered(&key("runs"), 11, Some(100_001), later);
        assert_eq!(apply(&mut a, later).pause, vec![key("commands")]);
        let stalled = later + STALL;
        assert_eq!(apply(&mut a, stalled).resume, vec![key("commands")]);
    }

    #[test]
    fn records_without_timestamps_are_never_paused() {
        let now = Instant::now();
        let mut a = Alignment::default();
        a.high_watermark(&key("runs"), 1_000);
        a.high_watermark(&key("control"), 1_000);
        a.delivered(&key("runs"), 1, Some(100_000), now);
        a.delivered(&key("control"), 1, None, now);
        assert_eq!(apply(&mut a, now), Decision::default());
    }
}
