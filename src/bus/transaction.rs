//! The transactional committer: final run records, flag commands, dead letters and the
//! consumed offsets go to Kafka in one transaction, so a `read_committed` consumer sees
//! each exactly once, and a crash before the commit leaves nothing visible.
//!
//! `running` records go through it too: they become visible with (or after) the start
//! mark of their run, and a run cut off before its start committed leaves no record.
//!
//! It runs on its own thread (librdkafka's transaction calls block) and batches whatever
//! completed while the previous transaction was committing. A batch holding only start
//! marks and run updates waits [`START_MARK_LINGER`] for company, so a short run's start
//! and end share one transaction. Offsets go through
//! `send_offsets_to_transaction` with the consumer's group metadata, read under the ledger
//! lock *before* the batch is checked against the assignment, so a worker that lost a
//! partition cannot commit it under a newer generation: either the check drops it, or the
//! broker fences the older generation (KIP-447).
//!
//! Errors follow librdkafka's transactional contract ([`super::producer`]): abort and run
//! the batch again, rebuild the producer, or resume a commit whose outcome is unknown
//! (never abort it). An output the producer refuses outright (too large) is cut to fit
//! with a header saying so ([`super::outputs::cut_to_fit`]), so one record cannot stall
//! every commit. Retries back off exponentially with jitter.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::offsets::{Book, Ledger};
use super::outputs::{Output, cut_to_fit, record_size};
use super::producer::{self, ABORT_TIMEOUT, Attempt, TransactionalProducer, retry_delays};

/// Most completions gathered before a transaction begins (the drain at its start, under
/// the ledger lock, may add what arrived meanwhile).
const MAX_BATCH: usize = 500;
/// How long a batch of start marks alone waits for other completions to join it: a run
/// shorter than this commits its start and its end in one transaction, and is spared a
/// second transaction right behind the first (which meets CONCURRENT_TRANSACTIONS until
/// the first one's markers are written). Longer runs, the usual case, commit their start
/// while they run.
pub(crate) const START_MARK_LINGER: Duration = Duration::from_millis(20);
/// librdkafka's default `message.max.bytes`, the producer's limit when the configuration
/// does not set one.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// What the worker hands the committer: records to produce for one partition, and with
/// them that partition's offsets (the transaction commits the watermark and metadata of
/// every partition it holds a completion of, read from the ledger).
#[derive(Debug)]
pub(crate) struct Completion {
    /// Partition of the consumed event.
    pub(crate) partition: i32,
    /// The partition's assignment epoch when the event was read.
    pub(crate) epoch: u64,
    /// Records to produce.
    pub(crate) outputs: Vec<Output>,
    /// Which of the three it is.
    pub(crate) kind: CompletionKind,
}

/// The three kinds of [`Completion`].
#[derive(Debug)]
pub(crate) enum CompletionKind {
    /// An event answered or dead-lettered: its records and command; its offset is done.
    Finished,
    /// An execution started: the metadata carries its start count, and the outputs close
    /// the runs its previous attempt left open. `committed` is set once it has committed.
    StartMark {
        /// Set when the transaction holding the mark has committed.
        committed: Arc<AtomicBool>,
    },
    /// A run's record as it happens (`running`, or the final record of a run cut off),
    /// the run opened or closed in the book. Like the others, dropped when its partition
    /// is revoked before it commits: a `running` record must commit with the offsets
    /// metadata that names its run open, since that is how the partition's next owner
    /// finds the run to close as superseded. Published without it, the run would stay
    /// `running` for good.
    RunUpdate,
}

impl Completion {
    /// A start mark or a run update: nothing waits on it, so a batch of only these
    /// lingers [`START_MARK_LINGER`] for company.
    fn is_lazy(&self) -> bool {
        !matches!(self.kind, CompletionKind::Finished)
    }

    /// Whether the committer still publishes it, given the partitions owned now.
    fn is_current(&self, owned: &HashMap<i32, u64>) -> bool {
        owned.get(&self.partition) == Some(&self.epoch)
    }
}

/// Partitions this worker owns now, with their assignment epochs; shared with the
/// rebalance callback, which updates it before librdkafka moves the partitions.
pub(crate) type Assignment = Arc<Mutex<HashMap<i32, u64>>>;

/// The consumer group's current metadata (member, generation), as
/// `rdkafka::consumer::Consumer::group_metadata` gives it; `None` while the consumer is
/// not in the group.
pub(crate) type GroupMetadata = Box<dyn Fn() -> Option<ConsumerGroupMetadata> + Send>;

/// Everything the committer needs.
pub(crate) struct Committer {
    /// Producer settings, `transactional.id` included (kept to rebuild the producer).
    pub(crate) config: ClientConfig,
    /// The input topic, whose offsets are committed.
    pub(crate) topic: String,
    /// The owned partitions' offsets.
    pub(crate) ledger: Ledger,
    /// Reads the consumer's current group metadata (called under the ledger lock, before
    /// the batch is checked against [`Committer::assignment`]).
    pub(crate) group_metadata: GroupMetadata,
    /// Partitions owned now.
    pub(crate) assignment: Assignment,
    /// Ticked once per pass of the commit loop (`/healthz` watches it).
    pub(crate) heartbeat: crate::telemetry::heartbeat::Heartbeat,
    /// Called with each commit's latency (for metrics and benchmarks).
    pub(crate) on_commit: Option<Box<dyn Fn(Duration, usize) + Send>>,
    /// Called when a transaction failed (for metrics and readiness).
    pub(crate) on_failure: Option<Box<dyn Fn() + Send>>,
}

/// Why the committer could not start.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The producer could not be created or initialised (a configuration problem).
    #[error("cannot start the transactional producer: {0}")]
    Start(KafkaError),
}

/// Creates the transactional producer and initialises its transactions (fencing an
/// earlier instance with the same `transactional.id`). Blocks up to 30 s.
pub fn start(config: &ClientConfig) -> Result<TransactionalProducer, CommitError> {
    producer::build(config).map_err(CommitError::Start)
}

/// A batch ready for its transaction: what survived the assignment check, with the group
/// metadata read before that check and the offsets read in the same critical section.
struct Prepared {
    group: Option<ConsumerGroupMetadata>,
    offsets: TopicPartitionList,
}

impl Committer {
    /// Commits completions from `completions` with `producer` (from [`start`]) until the
    /// channel closes (the worker is stopping) and everything received has been committed
    /// or dropped as revoked.
    pub(crate) fn run(
        self,
        mut producer: TransactionalProducer,
        completions: Receiver<Completion>,
    ) {
        let mut pending: Vec<Completion> = Vec::new();
        let mut closed = false;
        let mut failures: u32 = 0;
        let mut delays = retry_delays();
        let limit = message_max_bytes(&self.config);
        let attempt_timeout = producer::attempt_timeout(&self.config);
        while !(closed && pending.is_empty()) {
            self.heartbeat.tick();
            if pending.is_empty() {
                match completions.recv_timeout(Duration::from_millis(200)) {
                    Ok(c) => pending.push(c),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => {
                        closed = true;
                        continue;
                    }
                }
            }
            let linger_until = Instant::now() + START_MARK_LINGER;
            while pending.len() < MAX_BATCH {
                let wait = if pending.iter().all(Completion::is_lazy) {
                    linger_until.saturating_duration_since(Instant::now())
                } else {
                    Duration::ZERO
                };
                match completions.recv_timeout(wait) {
                    Ok(c) => pending.push(c),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            let prepared = self.prepare(&mut pending, &completions, &mut closed);
            if pending.is_empty() {
                continue;
            }
            let started = Instant::now();
            let mut outcome = match &prepared.group {
                Some(group) => producer::attempt(
                    &producer,
                    pending.iter().flat_map(|c| c.outputs.iter()),
                    &prepared.offsets,
                    group,
                    started + attempt_timeout,
                ),
                None => Attempt::Abort(KafkaError::MetadataFetch(
                    rdkafka::error::RDKafkaErrorCode::UnknownMemberId,
                )),
            };
            let back_off = loop {
                self.heartbeat.tick();
                match outcome {
                    Attempt::Committed => {
                        if let Some(on_commit) = &self.on_commit {
                            on_commit(started.elapsed(), pending.len());
                        }
                        for completion in pending.drain(..) {
                            if let CompletionKind::StartMark { committed } = completion.kind {
                                committed.store(true, Ordering::Release);
                            }
                        }
                        failures = 0;
                        delays = retry_delays();
                        break false;
                    }
                    Attempt::InDoubt(error) => {
                        // The commit may have landed: only a commit may follow it.
                        self.failed(&mut failures);
                        tracing::warn!(%error, attempt = failures, "commit outcome unknown; resuming the commit (never aborting it)");
                        std::thread::sleep(delays.next().unwrap_or(Duration::from_secs(10)));
                        outcome = producer::resume_commit(&producer);
                    }
                    Attempt::Refused { output, error } => {
                        self.failed(&mut failures);
                        tracing::warn!(%error, "the producer refused a record; cutting it to fit");
                        refit(&mut pending, output, limit);
                        producer = self.abort_or_rebuild(producer);
                        // The refused record changed: the batch can go again at once.
                        break false;
                    }
                    Attempt::Abort(error) => {
                        self.failed(&mut failures);
                        tracing::warn!(%error, attempt = failures, "transaction failed; aborting and retrying the batch");
                        producer = self.abort_or_rebuild(producer);
                        break true;
                    }
                    Attempt::Rebuild(error) => {
                        self.failed(&mut failures);
                        tracing::warn!(%error, attempt = failures, "transactional producer unusable; rebuilding it and retrying the batch");
                        drop(producer);
                        producer = producer::rebuild(&self.config, &self.heartbeat);
                        break true;
                    }
                }
            };
            if back_off {
                std::thread::sleep(delays.next().unwrap_or(Duration::from_secs(10)));
            }
        }
    }

    fn failed(&self, failures: &mut u32) {
        *failures += 1;
        if let Some(on_failure) = &self.on_failure {
            on_failure();
        }
    }

    /// Aborts the open transaction; a producer that cannot abort within [`ABORT_TIMEOUT`]
    /// is rebuilt (its successor's `init_transactions` aborts it).
    fn abort_or_rebuild(&self, producer: TransactionalProducer) -> TransactionalProducer {
        match producer::abort(&producer, Instant::now() + ABORT_TIMEOUT) {
            Ok(()) => producer,
            Err(error) => {
                tracing::warn!(%error, "cannot abort the transaction; rebuilding the producer");
                drop(producer);
                producer::rebuild(&self.config, &self.heartbeat)
            }
        }
    }

    /// Under the ledger lock: reads the group metadata, takes what else is in the channel,
    /// drops completions of partitions no longer owned, and reads the offsets to commit.
    ///
    /// The group metadata comes first: read after the assignment check, it could carry the
    /// generation of a rejoin that followed a revoke, and the broker would accept offsets of
    /// a partition another member owns now.
    fn prepare(
        &self,
        pending: &mut Vec<Completion>,
        completions: &Receiver<Completion>,
        closed: &mut bool,
    ) -> Prepared {
        let ledger = self.ledger.lock();
        let group = (self.group_metadata)();
        // Whatever changed the books is in the channel by now (see `Ledger`).
        loop {
            match completions.try_recv() {
                Ok(c) => pending.push(c),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    *closed = true;
                    break;
                }
            }
        }
        self.drop_revoked(pending);
        let offsets = self.offsets(&ledger, pending);
        Prepared { group, offsets }
    }

    /// Drops completions of partitions this worker no longer owns: the new owner runs
    /// them again. A poisoned lock counts as owning nothing (nothing is committed that
    /// might not be ours).
    fn drop_revoked(&self, pending: &mut Vec<Completion>) {
        let owned = self
            .assignment
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default();
        pending.retain(|c| c.is_current(&owned));
    }

    /// The watermark and metadata of each partition with a completion in `batch`.
    fn offsets(&self, ledger: &HashMap<i32, Book>, batch: &[Completion]) -> TopicPartitionList {
        let moved: BTreeSet<(i32, u64)> = batch.iter().map(|c| (c.partition, c.epoch)).collect();
        let mut offsets = TopicPartitionList::new();
        for (partition, epoch) in moved {
            let Some(book) = ledger.get(&partition).filter(|b| b.epoch == epoch) else {
                continue;
            };
            let mut element = offsets.add_partition(&self.topic, partition);
            // An offset is never negative here, and metadata is plain text.
            let _ = element.set_offset(Offset::Offset(book.offsets.watermark()));
            element.set_metadata(book.offsets.metadata());
        }
        offsets
    }
}

/// Replaces the refused output (its index in the batch's flattened outputs) by a copy cut
/// to fit: under `limit` (the producer's `message.max.bytes`) when it is larger, else to
/// half its size (the broker refused it: its topic's limit is lower, and unknown here).
/// One that cutting cannot help is dropped with an error: never retried forever.
fn refit(pending: &mut [Completion], index: usize, limit: usize) {
    let mut left = index;
    for completion in pending.iter_mut() {
        if left >= completion.outputs.len() {
            left -= completion.outputs.len();
            continue;
        }
        let slot = &mut completion.outputs[left];
        let size = record_size(&slot.message);
        let target = if size > limit { limit } else { size / 2 };
        match cut_to_fit(slot, target) {
            Some(cut) => *slot = cut,
            None => {
                tracing::error!(topic = %slot.topic, key = ?slot.message.key.as_deref().map(String::from_utf8_lossy), size, "a record Kafka refuses, which cutting its value cannot fix; dropped");
                completion.outputs.remove(left);
            }
        }
        return;
    }
}

/// The producer's `message.max.bytes` from its configuration.
fn message_max_bytes(config: &ClientConfig) -> usize {
    config
        .get("message.max.bytes")
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::offsets::PartitionOffsets;
    use rdkafka::consumer::{BaseConsumer, Consumer};

    fn finished(partition: i32, epoch: u64) -> Completion {
        Completion {
            partition,
            epoch,
            outputs: Vec::new(),
            kind: CompletionKind::Finished,
        }
    }

    #[test]
    fn a_run_update_of_a_revoked_partition_is_dropped_even_after_its_start_committed() {
        // Partition 0 was ours under epoch 1 and is now revoked; partition 1 is ours.
        let committer = Committer {
            config: ClientConfig::new(),
            topic: "t".into(),
            ledger: Ledger::default(),
            group_metadata: Box::new(|| None),
            assignment: Arc::new(Mutex::new(HashMap::from([(1, 1)]))),
            heartbeat: crate::telemetry::heartbeat::Heartbeat::new("committer"),
            on_commit: None,
            on_failure: None,
        };
        let update = |partition| Completion {
            partition,
            epoch: 1,
            outputs: Vec::new(),
            kind: CompletionKind::RunUpdate,
        };
        let mut pending = vec![update(0), update(1)];
        committer.drop_revoked(&mut pending);
        // A `running` record committed without the metadata naming its run open would
        // leave that run `running` for good: its partition's next owner never learns of it.
        let kept: Vec<i32> = pending.iter().map(|c| c.partition).collect();
        assert_eq!(kept, vec![1]);
    }

    #[test]
    fn group_metadata_is_read_before_the_revoke_check() {
        let assignment: Assignment = Arc::new(Mutex::new(HashMap::from([(0, 1)])));
        let ledger = Ledger::default();
        ledger.lock().insert(
            0,
            Book {
                epoch: 1,
                offsets: PartitionOffsets::resume(0, ""),
            },
        );
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("group.id", "g")
            .create()
            .expect("consumer");
        let revoke = assignment.clone();
        let committer = Committer {
            config: ClientConfig::new(),
            topic: "t".into(),
            ledger,
            // A revoke and a rejoin land just as the metadata is read: it carries the new
            // generation, under which partition 0 is no longer ours.
            group_metadata: Box::new(move || {
                revoke.lock().expect("assignment").remove(&0);
                consumer.group_metadata()
            }),
            assignment,
            heartbeat: crate::telemetry::heartbeat::Heartbeat::new("committer"),
            on_commit: None,
            on_failure: None,
        };
        let (_tx, rx) = std::sync::mpsc::channel();
        let mut pending = vec![finished(0, 1)];
        let mut closed = false;
        let prepared = committer.prepare(&mut pending, &rx, &mut closed);
        assert!(prepared.group.is_some());
        assert!(
            pending.is_empty(),
            "a completion of a partition revoked before the metadata was read survived"
        );
        assert_eq!(prepared.offsets.count(), 0);
    }
}
