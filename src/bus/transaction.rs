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
//! `send_offsets_to_transaction` with the consumer's current group metadata, so a worker
//! that lost its partitions in a rebalance is fenced by the broker (KIP-447). Any other
//! error aborts and retries the batch; a fatal or fenced producer is rebuilt; retries back
//! off exponentially with jitter.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{ConsumerGroupMetadata, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::offsets::{Book, Ledger};
use super::outputs::Output;
use super::record::to_base_record;

/// How long one transactional call may block.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Most completions gathered before a transaction begins (the drain at its start, under
/// the ledger lock, may add what arrived meanwhile).
const MAX_BATCH: usize = 500;
/// How long a batch of start marks alone waits for other completions to join it: a run
/// shorter than this commits its start and its end in one transaction, and is spared a
/// second transaction right behind the first (which meets CONCURRENT_TRANSACTIONS until
/// the first one's markers are written). Longer runs, the usual case, commit their start
/// while they run.
pub const START_MARK_LINGER: Duration = Duration::from_millis(20);
/// How often the delivery of a transaction's records is checked before its commit.
const DELIVERY_CHECK: Duration = Duration::from_micros(200);

/// What the worker hands the committer: a finished event (its outputs and offsets), a
/// start mark (offsets and metadata carrying a start count, no records), or a run update
/// (a `running` or `aborted` record, no offsets).
#[derive(Debug)]
pub struct Completion {
    /// Partition of the consumed event.
    pub partition: i32,
    /// The partition's assignment epoch when the event was read.
    pub epoch: u64,
    /// Records to produce.
    pub outputs: Vec<Output>,
    /// Whether it changed its partition's offsets (a start or a completion, not a run
    /// update): the transaction then commits that partition's watermark and metadata,
    /// read from the ledger.
    pub moves_offsets: bool,
    /// Set when the transaction holding this completion has committed.
    pub committed: Option<Arc<AtomicBool>>,
    /// A run update: still published after its partition is revoked once its run's
    /// start mark has committed (an `aborted` record, a `running` record of a run that
    /// ran); dropped with the partition otherwise, since the run will start again under
    /// the same id.
    pub kept_once_started: Option<Arc<AtomicBool>>,
}

impl Completion {
    /// A start mark (no records) or a run update (no offsets): nothing waits on it, so a
    /// batch of only these lingers [`START_MARK_LINGER`] for company.
    fn is_lazy(&self) -> bool {
        self.outputs.is_empty() || !self.moves_offsets
    }

    /// Whether the committer still publishes it, given the partitions owned now.
    fn is_current(&self, owned: &HashMap<i32, u64>) -> bool {
        owned.get(&self.partition) == Some(&self.epoch)
            || self
                .kept_once_started
                .as_ref()
                .is_some_and(|started| started.load(Ordering::Acquire))
    }
}

/// Partitions this worker owns now, with their assignment epochs; shared with the
/// rebalance callback, which updates it before librdkafka moves the partitions.
pub type Assignment = Arc<Mutex<HashMap<i32, u64>>>;

/// Everything the committer needs.
pub struct Committer {
    /// Producer settings, `transactional.id` included (kept to rebuild the producer).
    pub config: ClientConfig,
    /// The input topic, whose offsets are committed.
    pub topic: String,
    /// The owned partitions' offsets.
    pub ledger: Ledger,
    /// The consumer, for its current group metadata.
    pub consumer: Arc<StreamConsumer<super::worker::WorkerContext>>,
    /// Partitions owned now.
    pub assignment: Assignment,
    /// Ticked once per pass of the commit loop (`/healthz` watches it).
    pub heartbeat: crate::telemetry::heartbeat::Heartbeat,
    /// Called with each commit's latency (for metrics and benchmarks).
    pub on_commit: Option<Box<dyn Fn(Duration, usize) + Send>>,
    /// Called when a transaction failed (for metrics and readiness).
    pub on_failure: Option<Box<dyn Fn() + Send>>,
}

/// Why the committer stopped.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The producer could not be created or initialised (a configuration problem).
    #[error("cannot start the transactional producer: {0}")]
    Start(KafkaError),
}

/// The transactional producer the committer drives.
pub type TransactionalProducer = ThreadedProducer<rdkafka::producer::DefaultProducerContext>;

/// Creates the transactional producer and initialises its transactions (fencing an
/// earlier instance with the same `transactional.id`). Blocks up to 30 s.
pub fn start(config: &ClientConfig) -> Result<TransactionalProducer, CommitError> {
    build(config).map_err(CommitError::Start)
}

fn build(config: &ClientConfig) -> Result<TransactionalProducer, KafkaError> {
    let producer: ThreadedProducer<_> = config.create()?;
    producer.init_transactions(CALL_TIMEOUT)?;
    Ok(producer)
}

fn needs_rebuild(error: &KafkaError) -> bool {
    match error {
        KafkaError::Transaction(e) => e.is_fatal(),
        other => matches!(
            other.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
            )
        ),
    }
}

impl Committer {
    /// Commits completions from `completions` with `producer` (from [`start`]) until the
    /// channel closes (the worker is stopping) and everything received has been committed
    /// or dropped as revoked.
    pub fn run(self, mut producer: TransactionalProducer, completions: Receiver<Completion>) {
        let mut pending: Vec<Completion> = Vec::new();
        let mut closed = false;
        let mut failures: u32 = 0;
        let mut delays = retry_delays();
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
            let offsets = {
                let ledger = self.ledger.lock();
                // Whatever changed the books is in the channel by now (see `Ledger`).
                loop {
                    match completions.try_recv() {
                        Ok(c) => pending.push(c),
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
                self.drop_revoked(&mut pending);
                self.offsets(&ledger, &pending)
            };
            if pending.is_empty() {
                continue;
            }
            let started = Instant::now();
            match self.commit(&producer, &pending, offsets) {
                Ok(()) => {
                    if let Some(on_commit) = &self.on_commit {
                        on_commit(started.elapsed(), pending.len());
                    }
                    for completion in pending.drain(..) {
                        if let Some(committed) = completion.committed {
                            committed.store(true, Ordering::Release);
                        }
                    }
                    failures = 0;
                    delays = retry_delays();
                }
                Err(error) => {
                    failures += 1;
                    if let Some(on_failure) = &self.on_failure {
                        on_failure();
                    }
                    tracing::warn!(%error, attempt = failures, "transaction failed; retrying the batch");
                    if needs_rebuild(&error) || failures % 5 == 0 {
                        tracing::warn!("rebuilding the transactional producer");
                        drop(producer);
                        producer = rebuild(&self.config);
                    } else if let Err(abort) = producer.abort_transaction(CALL_TIMEOUT) {
                        // Any failure inside a transaction leaves it open (a retriable
                        // error too), and the next begin would fail with "not valid in
                        // state InTransaction": always abort. With no transaction open the
                        // abort fails harmlessly; a timed-out abort is retried next time.
                        tracing::debug!(error = %abort, "aborting the failed transaction");
                    }
                    std::thread::sleep(delays.next().unwrap_or(Duration::from_secs(10)));
                }
            }
        }
    }

    /// Drops completions of partitions this worker no longer owns: the new owner runs
    /// them again.
    fn drop_revoked(&self, pending: &mut Vec<Completion>) {
        let owned = self
            .assignment
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default();
        pending.retain(|c| c.is_current(&owned));
    }

    /// The watermark and metadata of each partition whose offsets moved in `batch`.
    fn offsets(&self, ledger: &HashMap<i32, Book>, batch: &[Completion]) -> TopicPartitionList {
        let moved: BTreeSet<(i32, u64)> = batch
            .iter()
            .filter(|c| c.moves_offsets)
            .map(|c| (c.partition, c.epoch))
            .collect();
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

    fn commit(
        &self,
        producer: &ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
        batch: &[Completion],
        offsets: TopicPartitionList,
    ) -> Result<(), KafkaError> {
        let metadata: ConsumerGroupMetadata =
            rdkafka::consumer::Consumer::group_metadata(self.consumer.as_ref())
                .ok_or(KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownMemberId))?;
        producer.begin_transaction()?;
        for completion in batch {
            for output in &completion.outputs {
                send(producer, output)?;
            }
        }
        producer.send_offsets_to_transaction(&offsets, &metadata, CALL_TIMEOUT)?;
        await_delivery(producer)?;
        producer.commit_transaction(CALL_TIMEOUT)
    }
}

/// Waits until every record of the transaction is acknowledged (the producer's polling
/// thread serves the delivery reports). `commit_transaction` flushes first, and
/// rust-rdkafka's flush, finding anything outstanding, polls for a full 100 ms however
/// soon the reports arrive: every transaction would last at least 100 ms.
pub fn await_delivery(
    producer: &ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
) -> Result<(), KafkaError> {
    let deadline = Instant::now() + CALL_TIMEOUT;
    while producer.in_flight_count() > 0 {
        if Instant::now() >= deadline {
            return Err(KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut));
        }
        std::thread::sleep(DELIVERY_CHECK);
    }
    Ok(())
}

fn send(
    producer: &ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    output: &Output,
) -> Result<(), KafkaError> {
    let deadline = Instant::now() + CALL_TIMEOUT;
    loop {
        match producer.send(to_base_record(&output.topic, &output.message)) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                if Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((error, _)) => return Err(error),
        }
    }
}

fn rebuild(config: &ClientConfig) -> ThreadedProducer<rdkafka::producer::DefaultProducerContext> {
    let mut delays = retry_delays();
    let mut failures = 0;
    loop {
        match build(config) {
            Ok(producer) => return producer,
            Err(error) => {
                failures += 1;
                tracing::error!(%error, attempt = failures, "cannot rebuild the transactional producer; retrying");
                std::thread::sleep(delays.next().unwrap_or(Duration::from_secs(10)));
            }
        }
    }
}

/// Exponential backoff with jitter, from 100 ms up to 10 s, without end.
fn retry_delays() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .without_max_times()
        .build()
}
