//! The consumer's rebalance callback, as librdkafka calls it inside the consumer loop's
//! poll (cooperative-sticky protocol: only the partitions that move).
//!
//! The rules that keep commits exact:
//! - A revoked partition leaves the shared [`Assignment`] and its runs are interrupted
//!   *before* librdkafka lets it go, so the committer stops committing it at once.
//! - A newly assigned partition is paused right after librdkafka assigns it and stays
//!   paused until its committed offset and metadata are read (off this thread, with
//!   retries: see [`super::committed`]); nothing of it runs before it is known which of its
//!   events were done already. The callback itself never waits on the broker.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rdkafka::TopicPartitionList;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bus::transaction::Assignment;
use crate::telemetry::http::Readiness;
use crate::telemetry::metrics;

/// A partition this worker was just given: paused, its offsets not read yet.
#[derive(Debug, Clone)]
pub(super) struct NewPartition {
    pub(crate) partition: i32,
    /// Counts assignments in this process: a partition given back and taken again gets a
    /// new epoch, so nothing of the earlier tenure is committed under the new one.
    pub(crate) epoch: u64,
    /// Cancelled when the partition is revoked or the worker stops.
    pub(crate) interrupt: CancellationToken,
}

/// A rebalance as the consumer loop learns of it.
#[derive(Debug)]
pub(super) enum RebalanceEvent {
    Assigned(Vec<NewPartition>),
    Revoked { partition: i32 },
}

/// The consumer's context: keeps the shared assignment in step with librdkafka's,
/// interrupts runs of revoked partitions, pauses new ones, and reports statistics.
pub(crate) struct WorkerContext {
    topic: String,
    assignment: Assignment,
    epochs: AtomicU64,
    interrupts: Mutex<HashMap<i32, CancellationToken>>,
    events: mpsc::UnboundedSender<RebalanceEvent>,
    readiness: Readiness,
}

impl WorkerContext {
    /// A context for the consumer of `topic`, reporting rebalances on `events`.
    pub(super) fn new(
        topic: String,
        assignment: Assignment,
        events: mpsc::UnboundedSender<RebalanceEvent>,
        readiness: Readiness,
    ) -> Self {
        WorkerContext {
            topic,
            assignment,
            epochs: AtomicU64::new(0),
            interrupts: Mutex::default(),
            events,
            readiness,
        }
    }

    fn report_assigned(&self) {
        let owned = self.assignment.lock().map(|a| a.len()).unwrap_or_default();
        self.readiness.set_assigned(owned);
    }

    fn interrupts(&self) -> std::sync::MutexGuard<'_, HashMap<i32, CancellationToken>> {
        // Every change is one insert or remove: a poisoned map is still whole.
        self.interrupts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ClientContext for WorkerContext {
    fn stats_raw(&self, statistics: &[u8]) {
        if let Err(error) = metrics::consumer_statistics(statistics) {
            tracing::debug!(%error, "unreadable librdkafka statistics");
        }
    }
}

impl ConsumerContext for WorkerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                for element in list.elements_for_topic(&self.topic) {
                    let partition = element.partition();
                    if let Ok(mut assignment) = self.assignment.lock() {
                        assignment.remove(&partition);
                    }
                    if let Some(token) = self.interrupts().remove(&partition) {
                        token.cancel();
                    }
                    let _ = self.events.send(RebalanceEvent::Revoked { partition });
                }
                self.report_assigned();
                tracing::info!(partitions = ?partitions_of(list), lost = consumer.assignment_lost(), "partitions revoked");
            }
            Rebalance::Assign(list) => {
                let mut new = Vec::new();
                for element in list.elements_for_topic(&self.topic) {
                    let partition = element.partition();
                    let epoch = self.epochs.fetch_add(1, Ordering::Relaxed) + 1;
                    let interrupt = CancellationToken::new();
                    if let Ok(mut assignment) = self.assignment.lock() {
                        assignment.insert(partition, epoch);
                    }
                    self.interrupts().insert(partition, interrupt.clone());
                    new.push(NewPartition {
                        partition,
                        epoch,
                        interrupt,
                    });
                }
                let _ = self.events.send(RebalanceEvent::Assigned(new));
                self.report_assigned();
                tracing::info!(partitions = ?partitions_of(list), "partitions assigned");
            }
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance error"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // librdkafka has just assigned them and fetches from the committed offset; the
        // consumer loop resumes each once its offsets metadata is read.
        if let Rebalance::Assign(list) = rebalance
            && let Err(error) = consumer.pause(list)
        {
            tracing::warn!(%error, partitions = ?partitions_of(list), "cannot pause new partitions; their records wait in memory until their offsets are read");
        }
    }
}

fn partitions_of(list: &TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|e| e.partition()).collect()
}
