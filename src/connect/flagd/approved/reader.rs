//! Reading the approved-flags topic: one thread per bridge with a consumer that assigns
//! every partition itself, from the beginning, `read_committed`; reads to the end as it
//! stood at start (the high watermark of each partition then), tells [`follow`]'s caller,
//! and keeps applying records to the watch until shutdown.
//!
//! Rule: the reader never gives up on Kafka: every error is logged (with the topic, and
//! the partition and offset of a record); metadata requests are retried with backoff,
//! and polling goes on without a pause while librdkafka reconnects, so a replica keeps
//! serving the last configuration it read while the brokers are away, and reads on as
//! soon as they are back.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::{Approved, ApprovedWatch, decode};
use crate::config::{Config, KafkaConfig};
use crate::connect::flagd::FlagdError;
use crate::contract::KafkaMessage;

/// How long one poll waits for a record (also how soon shutdown is noticed).
const POLL: Duration = Duration::from_millis(100);
/// How often the topic's partitions are looked up again (partitions added later).
const METADATA_EVERY: Duration = Duration::from_secs(10);
/// Time allowed for a metadata or watermark request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The first and the longest wait after a Kafka error (doubling in between).
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Reads the approved-flags topic to its end (as it stood at the call), then keeps
/// following it in a thread until `shutdown`; returns once caught up (or when `shutdown`
/// fires first, with what was read). The watch gets a new value only when a record
/// changed the configuration.
///
/// Kafka errors are never fatal: a failed metadata request is retried with backoff (0.1 s
/// doubling to 5 s); error events (a broker down) are logged and the reader goes on
/// polling while librdkafka reconnects. A topic that does not exist yet is waited for
/// the same way (logged with what to do): nothing is served before it exists, since an
/// empty configuration would turn every flag off in flagd and the providers. Partitions
/// added later are found within 10 s (read from their beginning).
///
/// "The end" is each partition's high watermark at start; with `read_committed` the
/// reader cannot pass a transaction still open there, so a start waits for such a
/// transaction to commit or abort (at most the producer's `transaction.timeout.ms`).
///
/// Errors: [`FlagdError::Kafka`] when the consumer cannot be created (a bad librdkafka
/// property in `[kafka.properties]`), or its thread cannot start or ends before reading
/// to the end.
pub async fn follow(
    config: &Config,
    shutdown: CancellationToken,
) -> Result<ApprovedWatch, FlagdError> {
    let consumer: BaseConsumer = consumer_config(&config.kafka)
        .create()
        .map_err(|e| FlagdError::Kafka(format!("cannot create the approved-flags reader: {e}")))?;
    let (sender, receiver) = watch::channel(Arc::new(Approved::default()));
    let (caught_up, on_caught_up) = oneshot::channel();
    let mut reader = Reader {
        consumer,
        topic: config.kafka.topics.approved_flags.clone(),
        sender,
        assigned: BTreeSet::new(),
        targets: None,
        next: HashMap::new(),
        caught_up: Some(caught_up),
        errors: 0,
    };
    let stop = shutdown.clone();
    std::thread::Builder::new()
        .name("flagd-approved".into())
        .spawn(move || reader.run(&stop))
        .map_err(|e| FlagdError::Kafka(format!("cannot start the approved-flags reader: {e}")))?;
    tokio::select! {
        caught_up = on_caught_up => if caught_up.is_err() && !shutdown.is_cancelled() {
            return Err(FlagdError::Kafka(
                "the approved-flags reader stopped before reading its topic to the end".into(),
            ));
        },
        () = shutdown.cancelled() => {}
    }
    Ok(receiver)
}

/// The reader's settings: the worker's client settings, `read_committed`, no commits,
/// from the beginning. librdkafka refuses `assign` without a `group.id`
/// (`_UNKNOWN_GROUP`), so one is set (`GROUP_ID-flagd`), but the reader never subscribes
/// or commits: no group is joined, every replica reads every partition.
fn consumer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = crate::bus::client::client_config(kafka);
    config
        .set("group.id", format!("{}-flagd", kafka.group_id))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    config
}

/// The reading thread's state.
struct Reader {
    consumer: BaseConsumer,
    topic: String,
    sender: watch::Sender<Arc<Approved>>,
    assigned: BTreeSet<i32>,
    /// Partitions still to reach the high watermark they had at start (`None` before
    /// the first metadata answer).
    targets: Option<BTreeMap<i32, i64>>,
    /// Next offset per partition, from the records read.
    next: HashMap<i32, i64>,
    /// Told once caught up.
    caught_up: Option<oneshot::Sender<()>>,
    /// Consecutive Kafka errors (backoff and log rate).
    errors: u32,
}

impl Reader {
    fn run(&mut self, stop: &CancellationToken) {
        let mut last_metadata: Option<Instant> = None;
        while !stop.is_cancelled() {
            let due = match last_metadata {
                None => true,
                Some(t) if self.targets.is_none() => t.elapsed() >= self.backoff(),
                Some(t) => t.elapsed() >= METADATA_EVERY,
            };
            if due {
                last_metadata = Some(Instant::now());
                if let Err(problem) = self.assign_new_partitions() {
                    self.kafka_error(&problem);
                }
            }
            match self.consumer.poll(POLL) {
                None => {}
                Some(Ok(message)) => {
                    self.errors = 0;
                    let (partition, offset) = (message.partition(), message.offset());
                    self.next.insert(partition, offset + 1);
                    let record = crate::bus::record::from_rdkafka(&message);
                    drop(message);
                    self.read(partition, offset, &record);
                }
                // An error event (a broker down, a transport failure): librdkafka
                // reconnects by itself. No sleep here: the events queued during an
                // outage are drained at once, or a long outage would leave hundreds of
                // them, each followed by a wait, between the reader and the records
                // written after the brokers came back.
                Some(Err(err)) => self.kafka_error(&err.to_string()),
            }
            self.check_caught_up();
        }
        tracing::debug!(topic = %self.topic, "approved-flags reader stopped");
    }

    fn backoff(&self) -> Duration {
        let doubled = BACKOFF_FIRST.saturating_mul(1 << self.errors.min(10));
        doubled.min(BACKOFF_MAX)
    }

    fn kafka_error(&mut self, problem: &str) {
        self.errors = self.errors.saturating_add(1);
        if self.errors == 1 || self.errors.is_multiple_of(20) {
            tracing::warn!(topic = %self.topic, errors = self.errors, error = %problem,
                "approved-flags reader: Kafka error, retrying");
        }
    }

    /// Applies one record at `partition`/`offset`, or logs why it is skipped.
    fn read(&mut self, partition: i32, offset: i64, record: &KafkaMessage) {
        crate::telemetry::metrics::flagd_approved_record();
        match decode(record) {
            Ok((set, flag, approved)) => {
                let key = format!("{set}/{flag}");
                let changed = self
                    .sender
                    .send_if_modified(|current| Arc::make_mut(current).apply(set, flag, approved));
                tracing::debug!(topic = %self.topic, partition, offset, key, changed, "approved-flag record read");
            }
            Err(problem) => tracing::warn!(
                topic = %self.topic, partition, offset, problem = %problem,
                "approved-flag record skipped: the flag keeps its previous definition"
            ),
        }
    }

    /// Assigns partitions of the topic not assigned yet, from their beginning; the first
    /// time, notes each one's high watermark as the catch-up target.
    fn assign_new_partitions(&mut self) -> Result<(), String> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), REQUEST_TIMEOUT)
            .map_err(|e| format!("metadata of topic {}: {e}", self.topic))?;
        // A topic not there yet (or not readable) has no partitions: it counts as empty.
        let found: Vec<i32> = crate::bus::client::partitions_of(&metadata, &self.topic)
            .into_iter()
            .filter(|id| !self.assigned.contains(id))
            .collect();
        let first = self.targets.is_none();
        if first && found.is_empty() {
            // Serving `{"flags":{}}` now would make every flagd and provider drop every
            // flag: a missing topic is a deployment not finished, or a typo.
            return Err(format!(
                "topic {} does not exist (or has no partitions): nothing is served until it \
                 does; the worker creates it with kafka.create_topics = true, or create it \
                 compacted (cleanup.policy=compact)",
                self.topic
            ));
        }
        let mut targets = BTreeMap::new();
        if !found.is_empty() {
            let mut list = TopicPartitionList::new();
            for partition in &found {
                list.add_partition_offset(&self.topic, *partition, Offset::Beginning)
                    .map_err(|e| format!("assign {}/{partition}: {e}", self.topic))?;
            }
            if first {
                for partition in &found {
                    let (low, high) = self
                        .consumer
                        .fetch_watermarks(&self.topic, *partition, REQUEST_TIMEOUT)
                        .map_err(|e| format!("watermarks of {}/{partition}: {e}", self.topic))?;
                    if high > low {
                        targets.insert(*partition, high);
                    }
                }
            }
            self.consumer
                .incremental_assign(&list)
                .map_err(|e| format!("assign partitions of {}: {e}", self.topic))?;
            tracing::debug!(topic = %self.topic, partitions = ?found, "approved-flags partitions assigned");
            self.assigned.extend(found);
        }
        self.errors = 0;
        if first {
            self.targets = Some(targets);
        }
        Ok(())
    }

    /// Tells [`follow`] once every partition reached the high watermark it had at start.
    fn check_caught_up(&mut self) {
        if self.caught_up.is_none() {
            return;
        }
        let Some(targets) = &mut self.targets else {
            return;
        };
        if !targets.is_empty() {
            // Where the consumer stands: past the last record read, and past control
            // records and aborted transactions, which are never handed out.
            let mut at: HashMap<i32, i64> = self.next.clone();
            if let Ok(positions) = self.consumer.position() {
                for element in positions.elements_for_topic(&self.topic) {
                    if let Offset::Offset(offset) = element.offset() {
                        let entry = at.entry(element.partition()).or_insert(offset);
                        *entry = (*entry).max(offset);
                    }
                }
            }
            targets.retain(|partition, high| at.get(partition).is_none_or(|at| at < high));
        }
        if targets.is_empty()
            && let Some(caught_up) = self.caught_up.take()
        {
            let flags: usize = self.sender.borrow().sets.values().map(BTreeMap::len).sum();
            tracing::info!(topic = %self.topic, flags, "approved configuration read to the end of its topic");
            let _ = caught_up.send(());
        }
    }
}
