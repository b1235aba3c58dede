//! The Kafka side of ingest: assigns every partition of the view's topics itself (no
//! consumer group), polls records and hands each to the writer's open transaction as it
//! is read (no batch is held in memory), ends a transaction at a size or time bound,
//! and tracks catch-up and lag against the brokers' high watermarks.
//!
//! Rule: the next offset of a partition advances only from a committed batch (the
//! writer returns it), so what the reader believes stored is what the store holds.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use super::status::{IngestStatus, PartitionLag};
use super::writer::{Batch, Pending};
use crate::config::KafkaConfig;
use crate::view::decode::TopicRole;
use crate::view::store::{Location, Store, ViewError};

/// Records applied per SQLite transaction, at most. Records are written as they are
/// read, so a batch is not held in memory: the bound is what one transaction leaves in
/// the WAL and how long readers wait to see it.
const MAX_BATCH: usize = 10_000;
/// A transaction ends when no record came for this long.
const BATCH_WINDOW: Duration = Duration::from_millis(100);
/// The longest a transaction stays open while the view catches up: larger transactions
/// write each page they dirty (the hot pages of every index) once for more records.
const MAX_OPEN_CATCH_UP: Duration = Duration::from_secs(5);
/// The longest a transaction stays open once caught up (live updates wait for it), and
/// always in a memory store.
const MAX_OPEN_LIVE: Duration = Duration::from_millis(250);
/// How often partitions are looked for again (new topics, added partitions).
const METADATA_EVERY: Duration = Duration::from_secs(10);
/// How often lag is measured against the brokers' high watermarks.
const LAG_EVERY: Duration = Duration::from_secs(5);
/// Time allowed for a metadata or watermark request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The consumer settings: the worker's client settings, `read_committed`, no group, no
/// commits (offsets live in the store), a bounded prefetch (view RSS).
pub(super) fn consumer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = crate::bus::client::client_config(kafka);
    if !kafka.properties.contains_key("queued.max.messages.kbytes") {
        config.set("queued.max.messages.kbytes", "4096");
    }
    config
        .set("group.id", format!("{}-view", kafka.group_id))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    config
}

/// The ingest loop's state.
pub(super) struct Projection {
    pub(super) consumer: BaseConsumer,
    pub(super) store: Store,
    pub(super) status: IngestStatus,
    pub(super) roles: HashMap<String, TopicRole>,
    /// Next offset per partition, as committed in the store.
    pub(super) next: HashMap<(String, i32), i64>,
    /// Last sequence number used.
    pub(super) seq: i64,
    /// Partitions assigned, with the high watermark each had when first assigned.
    pub(super) assigned: BTreeMap<(String, i32), i64>,
    /// Partitions still to reach their start high watermark (`None` before the first
    /// metadata answer).
    pub(super) targets: Option<BTreeMap<(String, i32), i64>>,
    /// Kafka errors seen (logged now and then).
    pub(super) errors: u64,
}

impl Projection {
    pub(super) fn run(&mut self, stop: &AtomicBool) -> Result<(), ViewError> {
        let mut last_metadata: Option<Instant> = None;
        let mut last_lag = Instant::now();
        while !stop.load(Ordering::Acquire) {
            if last_metadata.is_none_or(|t| t.elapsed() >= METADATA_EVERY) {
                last_metadata = Some(Instant::now());
                if let Err(err) = self.assign_new_partitions() {
                    tracing::warn!(error = %err, "view ingest: cannot read topic metadata yet");
                }
            }
            // A batch's first record is awaited outside its transaction.
            if let Some(first) = self.next_record(Duration::from_millis(100)) {
                self.apply_from(first, stop)?;
            }
            self.check_caught_up();
            if last_lag.elapsed() >= LAG_EVERY {
                last_lag = Instant::now();
                self.measure_lag();
            }
        }
        Ok(())
    }

    /// The next record of a topic the view reads, waiting up to `timeout`: `None` when
    /// none came (or Kafka reported an error, logged).
    fn next_record(&mut self, timeout: Duration) -> Option<Pending> {
        let deadline = Instant::now() + timeout;
        loop {
            let message = match self
                .consumer
                .poll(deadline.saturating_duration_since(Instant::now()))?
            {
                Ok(message) => message,
                Err(err) => {
                    self.errors += 1;
                    if self.errors == 1 || self.errors.is_multiple_of(50) {
                        tracing::warn!(error = %err, errors = self.errors, "view ingest: Kafka error");
                    }
                    return None;
                }
            };
            let topic = message.topic().to_string();
            let Some(role) = self.roles.get(&topic).copied() else {
                continue;
            };
            return Some(Pending {
                role,
                partition: message.partition(),
                offset: message.offset(),
                timestamp: message.timestamp().to_millis(),
                message: crate::bus::record::from_rdkafka(&message),
                topic,
            });
        }
    }

    /// Writes `first` and the records that follow it in one transaction, with the
    /// partitions' next offsets, then publishes its counts and last sequence number.
    /// The transaction ends when [`MAX_BATCH`] records are written, none came for
    /// [`BATCH_WINDOW`] (in a memory store: none is waiting), it has been open for
    /// [`MAX_OPEN_CATCH_UP`] (before the view caught up) or [`MAX_OPEN_LIVE`] (after),
    /// or ingest is stopped.
    fn apply_from(&mut self, first: Pending, stop: &AtomicBool) -> Result<(), ViewError> {
        let store = self.store.clone();
        // A memory store's readers share the writer's connection and wait for the open
        // transaction: there it takes only the records already read, never waits for more.
        let (open_for, wait) = if self.store.location() == &Location::Memory {
            (MAX_OPEN_LIVE, Duration::ZERO)
        } else if self.status.caught_up() {
            (MAX_OPEN_LIVE, BATCH_WINDOW)
        } else {
            (MAX_OPEN_CATCH_UP, BATCH_WINDOW)
        };
        let seq = self.seq;
        let applied = store.write_blocking(|c| {
            let opened = Instant::now();
            let mut batch = Batch::begin(c, seq)?;
            batch.apply(&first)?;
            drop(first);
            while batch.records() < MAX_BATCH
                && opened.elapsed() < open_for
                && !stop.load(Ordering::Acquire)
            {
                match self.next_record(wait) {
                    Some(pending) => batch.apply(&pending)?,
                    None => break,
                }
            }
            batch.commit()
        })?;
        tracing::debug!(
            records = applied.records,
            rows = applied.rows,
            "view ingest: batch committed"
        );
        self.seq = applied.seq;
        for (key, next) in applied.offsets {
            self.next.insert(key, next);
        }
        let inner = &self.status.inner;
        inner.records.fetch_add(applied.records, Ordering::Relaxed);
        inner.rows.fetch_add(applied.rows, Ordering::Relaxed);
        inner
            .problems
            .fetch_add(applied.problems, Ordering::Relaxed);
        inner.batches.fetch_add(1, Ordering::Relaxed);
        inner
            .seq
            .send_replace(u64::try_from(applied.seq).unwrap_or(0));
        Ok(())
    }

    /// Assigns partitions of the view's topics not assigned yet, from their stored
    /// offsets, and notes their high watermarks (the first time: the catch-up target).
    fn assign_new_partitions(&mut self) -> Result<(), ViewError> {
        let mut found: Vec<(String, i32)> = Vec::new();
        let topics: Vec<String> = self.roles.keys().cloned().collect();
        for topic in &topics {
            let metadata = self
                .consumer
                .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
                .map_err(|e| ViewError::Task(format!("metadata of topic {topic}: {e}")))?;
            for t in metadata.topics() {
                if t.error().is_some() {
                    continue;
                }
                for p in t.partitions() {
                    let key = (t.name().to_string(), p.id());
                    if !self.assigned.contains_key(&key) {
                        found.push(key);
                    }
                }
            }
        }
        let first = self.targets.is_none();
        let targets = self.targets.get_or_insert_with(BTreeMap::new);
        if found.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for (topic, partition) in &found {
            let offset = match self.next.get(&(topic.clone(), *partition)) {
                Some(next) => Offset::Offset(*next),
                None => Offset::Beginning,
            };
            list.add_partition_offset(topic, *partition, offset)
                .map_err(|e| ViewError::Task(format!("assign {topic}/{partition}: {e}")))?;
        }
        self.consumer
            .incremental_assign(&list)
            .map_err(|e| ViewError::Task(format!("assign partitions: {e}")))?;
        for (topic, partition) in found {
            let high = self
                .consumer
                .fetch_watermarks(&topic, partition, REQUEST_TIMEOUT)
                .map(|(_, high)| high)
                .unwrap_or(0);
            tracing::debug!(topic, partition, high, "view ingest: partition assigned");
            if first {
                targets.insert((topic.clone(), partition), high);
            }
            self.assigned.insert((topic, partition), high);
        }
        Ok(())
    }

    /// Marks the status caught up once every partition reached its target.
    fn check_caught_up(&mut self) {
        if self.status.caught_up() {
            return;
        }
        let Some(targets) = &mut self.targets else {
            return;
        };
        if !targets.is_empty() {
            let positions = self.consumer.position().ok();
            let position = |topic: &str, partition: i32| {
                positions
                    .as_ref()
                    .and_then(|p| p.find_partition(topic, partition))
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    })
                    .unwrap_or(-1)
            };
            let next = &self.next;
            targets.retain(|(topic, partition), high| {
                let at = next
                    .get(&(topic.clone(), *partition))
                    .copied()
                    .unwrap_or(0)
                    .max(position(topic, *partition));
                at < *high
            });
        }
        if targets.is_empty() {
            tracing::info!(seq = self.seq, "view ingest caught up");
            self.status.inner.caught_up.store(true, Ordering::Release);
        }
    }

    fn measure_lag(&mut self) {
        let mut lags = Vec::new();
        for (topic, partition) in self.assigned.keys() {
            let Ok((_, high)) = self
                .consumer
                .fetch_watermarks(topic, *partition, REQUEST_TIMEOUT)
            else {
                continue;
            };
            let next = self
                .next
                .get(&(topic.clone(), *partition))
                .copied()
                .unwrap_or(0);
            lags.push(PartitionLag {
                topic: topic.clone(),
                partition: *partition,
                next_offset: next,
                high_watermark: high,
                lag: (high - next).max(0),
            });
        }
        if let Ok(mut lag) = self.status.inner.lag.lock() {
            *lag = lags;
        }
    }
}
