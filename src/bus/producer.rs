//! The transactional producer and librdkafka's error contract for it: one transaction
//! attempt (begin, produce, offsets, delivery, commit) under one deadline, and for every
//! error the one recovery librdkafka prescribes.
//!
//! The rules (librdkafka `rdkafka.h`, "Transactional producer API", and
//! `INTRODUCTION.md`, "Transactional Producer"), as a closed list ([`recovery`]):
//! - `rd_kafka_error_is_fatal()`: the producer is unusable; build a new one (its
//!   `init_transactions` fences the old instance and ends its open transaction);
//! - `rd_kafka_error_txn_requires_abort()`: abort, then start the batch again;
//! - `rd_kafka_error_is_retriable()`: call the *same* function again (a timeout is
//!   retriable: the operation goes on in the background and the call resumes it);
//! - anything else: treat it as fatal, as librdkafka recommends.
//!
//! The rule that keeps output exactly once: once `commit_transaction` has been called, the
//! batch is never aborted by us and never published again while the commit's outcome is
//! unknown. A commit that timed out is resumed as a commit ([`Attempt::InDoubt`]); only an
//! abortable or fatal answer from the coordinator (it did not commit) lets the batch run
//! again.
//!
//! rust-rdkafka's `commit_transaction(t)` flushes for up to `t` before it commits for up
//! to `t` (`rdkafka-0.39 producer/base_producer.rs`), so a call is given half of what is
//! left, and the records' delivery is awaited first ([`await_delivery`]) so the flush
//! finds nothing outstanding.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::telemetry::heartbeat::Heartbeat;
use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, TopicPartitionList};

use super::outputs::Output;
use super::record::to_base_record_with;

/// The transactional producer the committer drives.
pub(crate) type TransactionalProducer = ThreadedProducer<DeliveryWatch>;

/// The transactional producer's context: remembers which records of the current attempt
/// the producer or the broker refused outright (by their index in the attempt), so one bad
/// record is singled out instead of failing every attempt of its batch.
#[derive(Debug, Default)]
pub struct DeliveryWatch {
    refused: Mutex<Vec<(usize, KafkaError)>>,
}

impl DeliveryWatch {
    fn clear(&self) {
        if let Ok(mut refused) = self.refused.lock() {
            refused.clear();
        }
    }

    fn first_refused(&self) -> Option<(usize, KafkaError)> {
        self.refused
            .lock()
            .ok()
            .and_then(|refused| refused.iter().min_by_key(|(i, _)| *i).cloned())
    }
}

impl ClientContext for DeliveryWatch {}

impl ProducerContext for DeliveryWatch {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        if let Err((error, _)) = result
            && is_refusal(error)
            && let Ok(mut refused) = self.refused.lock()
        {
            refused.push((index, error.clone()));
        }
    }
}

/// librdkafka's default `transaction.timeout.ms`.
const DEFAULT_TRANSACTION_TIMEOUT_MS: u64 = 60_000;

/// How long one transaction attempt may take, begin to commit: half the producer's
/// `transaction.timeout.ms` (30 s by default), so the coordinator never times out an
/// attempt that is still within its deadline, and one attempt is one deadline rather than
/// a 30 s bound on each of its calls.
pub(crate) fn attempt_timeout(config: &ClientConfig) -> Duration {
    let ms = config
        .get("transaction.timeout.ms")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(DEFAULT_TRANSACTION_TIMEOUT_MS);
    Duration::from_millis(ms / 2).max(Duration::from_millis(500))
}
/// How long `init_transactions` may block when a producer is (re)built.
const INIT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest single blocking call while a commit's outcome is unknown, so the committer
/// logs and backs off between calls instead of one long wait.
const IN_DOUBT_CALL: Duration = Duration::from_secs(5);
/// The longest an abort may take before the producer is rebuilt instead (its successor's
/// `init_transactions` ends the transaction): an abort answers in milliseconds when the
/// coordinator is there, and waiting longer only adds a second long wait to the attempt's.
pub(crate) const ABORT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the delivery of a transaction's records is checked before its commit.
const DELIVERY_CHECK: Duration = Duration::from_micros(200);
/// The pause before a retriable call is made again (librdkafka: "preferably after a
/// shorter grace period, to avoid busy-looping").
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// What librdkafka's transactional error contract says to do after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recovery {
    /// Call the same function again (`rd_kafka_error_is_retriable`).
    Retry,
    /// Abort the transaction, then run the batch again (`rd_kafka_error_txn_requires_abort`).
    Abort,
    /// The producer cannot go on (`rd_kafka_error_is_fatal`, or an error with neither the
    /// retriable nor the abortable flag): build a new one.
    Rebuild,
}

/// The recovery for an error of a transactional call. Errors that are not transaction
/// errors come from rust-rdkafka's own flush inside `commit_transaction` (a timed-out
/// flush is retriable: the commit flushes again) or from our own waits.
pub(crate) fn recovery(error: &KafkaError) -> Recovery {
    match error {
        KafkaError::Transaction(e) if e.is_fatal() => Recovery::Rebuild,
        KafkaError::Transaction(e) if e.txn_requires_abort() => Recovery::Abort,
        KafkaError::Transaction(e) if e.is_retriable() => Recovery::Retry,
        KafkaError::Transaction(_) => Recovery::Rebuild,
        KafkaError::Flush(
            RDKafkaErrorCode::OperationTimedOut | RDKafkaErrorCode::MessageTimedOut,
        ) => Recovery::Retry,
        other => match other.rdkafka_error_code() {
            Some(
                RDKafkaErrorCode::Fatal
                | RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch,
            ) => Recovery::Rebuild,
            _ => Recovery::Abort,
        },
    }
}

/// How one transaction attempt ended.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// Committed: the batch is visible to `read_committed` readers.
    Committed,
    /// Not committed, and the transaction (if one was begun) must be aborted before the
    /// batch runs again.
    Abort(KafkaError),
    /// The producer must be rebuilt before the batch runs again.
    Rebuild(KafkaError),
    /// An output the producer refuses outright (too large, say), which no retry can fix:
    /// its position in the batch's outputs. The transaction must be aborted.
    Refused {
        /// Index in the flattened outputs of the batch.
        output: usize,
        /// The producer's error.
        error: KafkaError,
    },
    /// `commit_transaction` was called and its outcome is not known yet (it timed out, or
    /// the deadline passed while it was retried): resume it with [`resume_commit`], never
    /// abort it.
    InDoubt(KafkaError),
}

/// Creates a transactional producer and initialises its transactions (fencing an earlier
/// instance with the same `transactional.id` and ending its open transaction). Blocks up
/// to 30 s.
pub(crate) fn build(config: &ClientConfig) -> Result<TransactionalProducer, KafkaError> {
    let producer: TransactionalProducer = config.create_with_context(DeliveryWatch::default())?;
    producer.init_transactions(INIT_TIMEOUT)?;
    Ok(producer)
}

/// Builds a producer, retrying with backoff until it works (the cluster may be away).
/// Ticks `heartbeat` before each attempt and through each wait, so a committer that only
/// waits for the cluster stays live for `/healthz` (one attempt blocks up to 30 s).
pub(crate) fn rebuild(config: &ClientConfig, heartbeat: &Heartbeat) -> TransactionalProducer {
    let mut delays = retry_delays();
    let mut failures = 0;
    loop {
        heartbeat.tick();
        match build(config) {
            Ok(producer) => return producer,
            Err(error) => {
                failures += 1;
                tracing::error!(%error, attempt = failures, "cannot rebuild the transactional producer; retrying");
                let until = Instant::now() + delays.next().unwrap_or(Duration::from_secs(10));
                loop {
                    heartbeat.tick();
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    std::thread::sleep(left.min(Duration::from_millis(500)));
                }
            }
        }
    }
}

/// One transaction attempt for `outputs` and `offsets`, all under one `deadline`.
pub(crate) fn attempt<'a>(
    producer: &TransactionalProducer,
    outputs: impl Iterator<Item = &'a Output>,
    offsets: &TopicPartitionList,
    group: &ConsumerGroupMetadata,
    deadline: Instant,
) -> Attempt {
    producer.context().clear();
    if let Err(error) = producer.begin_transaction() {
        // Nothing is open when begin fails; an abort is harmless and clears a state error.
        return match recovery(&error) {
            Recovery::Rebuild => Attempt::Rebuild(error),
            _ => Attempt::Abort(error),
        };
    }
    for (index, output) in outputs.enumerate() {
        if let Err(error) = send(producer, output, index, deadline) {
            return if is_refusal(&error) {
                Attempt::Refused {
                    output: index,
                    error,
                }
            } else if recovery(&error) == Recovery::Rebuild {
                Attempt::Rebuild(error)
            } else {
                Attempt::Abort(error)
            };
        }
    }
    if offsets.count() > 0 {
        let result = retrying(deadline, |left| {
            producer.send_offsets_to_transaction(offsets, group, left)
        });
        if let Err(error) = result {
            if error.rdkafka_error_code() == Some(RDKafkaErrorCode::OffsetMetadataTooLarge) {
                tracing::error!(%error, bound = super::offsets::MAX_METADATA, "the broker refuses offsets metadata within chaosgate's bound: its offset.metadata.max.bytes is below the 4096-byte default; raise it (no retry can fix this)");
            }
            return match recovery(&error) {
                Recovery::Rebuild => Attempt::Rebuild(error),
                _ => Attempt::Abort(error),
            };
        }
    }
    let delivered = await_delivery_until(producer, deadline);
    // A record the broker refused (too large for its topic, say) fails every attempt of
    // its batch: single it out.
    if let Some((output, error)) = producer.context().first_refused() {
        return Attempt::Refused { output, error };
    }
    if let Err(error) = delivered {
        return Attempt::Abort(error);
    }
    commit(producer, deadline)
}

/// Calls `commit_transaction` until it answers, retrying retriable errors until
/// `deadline`; past it the commit is [`Attempt::InDoubt`].
fn commit(producer: &TransactionalProducer, deadline: Instant) -> Attempt {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Half: rust-rdkafka flushes for up to the timeout, then commits for up to it.
        match producer.commit_transaction((left / 2).max(Duration::from_millis(1))) {
            Ok(()) => return Attempt::Committed,
            Err(error) => match recovery(&error) {
                Recovery::Retry if Instant::now() + RETRY_PAUSE < deadline => {
                    tracing::debug!(%error, "commit not finished yet; resuming it");
                    std::thread::sleep(RETRY_PAUSE);
                }
                Recovery::Retry => return Attempt::InDoubt(error),
                Recovery::Abort => return Attempt::Abort(error),
                Recovery::Rebuild => return Attempt::Rebuild(error),
            },
        }
    }
}

/// Resumes a commit whose outcome is unknown: one bounded `commit_transaction` call.
/// `InDoubt` again means "still unknown; call again later".
pub(crate) fn resume_commit(producer: &TransactionalProducer) -> Attempt {
    commit(producer, Instant::now() + IN_DOUBT_CALL)
}

/// Aborts the open transaction (retrying retriable errors until `deadline`). An error
/// means the producer must be rebuilt (which ends the transaction in its place).
pub(crate) fn abort(producer: &TransactionalProducer, deadline: Instant) -> Result<(), KafkaError> {
    match retrying(deadline, |left| producer.abort_transaction(left)) {
        Ok(()) => Ok(()),
        // No transaction open (begin failed, or nothing was begun): nothing to abort.
        Err(KafkaError::Transaction(e)) if e.code() == RDKafkaErrorCode::State => Ok(()),
        Err(error) => Err(error),
    }
}

/// Calls `call` with the time left until it succeeds, fails without the retriable flag,
/// or `deadline` passes.
fn retrying(
    deadline: Instant,
    mut call: impl FnMut(Duration) -> Result<(), KafkaError>,
) -> Result<(), KafkaError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match call(left.max(Duration::from_millis(1))) {
            Ok(()) => return Ok(()),
            Err(error)
                if recovery(&error) == Recovery::Retry
                    && Instant::now() + RETRY_PAUSE < deadline =>
            {
                tracing::debug!(%error, "retriable transactional error; calling again");
                std::thread::sleep(RETRY_PAUSE);
            }
            Err(error) => return Err(error),
        }
    }
}

/// Whether the producer or the broker refused a record outright: no retry of the same
/// record can work.
fn is_refusal(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::MessageBatchTooLarge
        )
    )
}

fn await_delivery_until<C: ProducerContext + 'static>(
    producer: &ThreadedProducer<C>,
    deadline: Instant,
) -> Result<(), KafkaError> {
    while producer.in_flight_count() > 0 {
        if Instant::now() >= deadline {
            return Err(KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut));
        }
        std::thread::sleep(DELIVERY_CHECK);
    }
    Ok(())
}

fn send(
    producer: &TransactionalProducer,
    output: &Output,
    index: usize,
    deadline: Instant,
) -> Result<(), KafkaError> {
    loop {
        match producer.send(to_base_record_with(&output.topic, &output.message, index)) {
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

/// Exponential backoff with jitter, from 100 ms up to 10 s, without end.
pub(crate) fn retry_delays() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timed_out_flush_inside_commit_is_retried_not_aborted() {
        assert_eq!(
            recovery(&KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)),
            Recovery::Retry
        );
    }

    #[test]
    fn fenced_producers_are_rebuilt() {
        for code in [
            RDKafkaErrorCode::ProducerFenced,
            RDKafkaErrorCode::InvalidProducerEpoch,
            RDKafkaErrorCode::Fenced,
        ] {
            assert_eq!(
                recovery(&KafkaError::MessageProduction(code)),
                Recovery::Rebuild
            );
        }
    }

    #[test]
    fn oversized_records_are_refused_not_retried() {
        assert!(is_refusal(&KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge
        )));
        assert!(!is_refusal(&KafkaError::MessageProduction(
            RDKafkaErrorCode::QueueFull
        )));
    }
}
