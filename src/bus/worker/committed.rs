//! Reading the committed offset and offsets metadata of partitions just assigned.
//!
//! The metadata says which events above the committed offset were done already and how
//! often each was started (see [`crate::bus::offsets`]). Going on without it would run
//! done events again and repeat run ids, so a read that fails (a timeout, the coordinator
//! moving, `UNSTABLE_OFFSET_COMMIT` while a transaction that commits offsets of the
//! partition is still open) is retried with backoff until it succeeds or the partition
//! is revoked. Meanwhile the partition stays paused (see [`super::rebalance`]).
//!
//! The read blocks (librdkafka's `rd_kafka_committed`), so it runs on a blocking thread,
//! never in the consumer loop or the rebalance callback. A partition with nothing
//! committed (a new group) starts empty at the offset librdkafka fetches from.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::bus::offsets::PartitionOffsets;

use super::rebalance::NewPartition;

/// How long one read may block.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Waits between failed reads: from 100 ms, doubling, up to this.
const MAX_WAIT: Duration = Duration::from_secs(5);

/// A partition's offsets, read.
#[derive(Debug)]
pub(super) struct Loaded {
    pub(crate) partition: i32,
    pub(crate) epoch: u64,
    pub(crate) offsets: PartitionOffsets,
}

/// Reads the committed offsets of `partitions` in a task of its own, sending each on
/// `loaded` once read; gives up on a partition when its interrupt fires.
pub(super) fn spawn_read<C: ConsumerContext + 'static>(
    consumer: Arc<StreamConsumer<C>>,
    topic: String,
    partitions: Vec<NewPartition>,
    loaded: mpsc::UnboundedSender<Loaded>,
) {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut waiting = partitions;
        let mut failures: u32 = 0;
        let mut wait = Duration::from_millis(100);
        loop {
            waiting.retain(|p| !p.interrupt.is_cancelled());
            if waiting.is_empty() {
                return;
            }
            let mut list = TopicPartitionList::new();
            for p in &waiting {
                list.add_partition(&topic, p.partition);
            }
            let reader = consumer.clone();
            let read =
                tokio::task::spawn_blocking(move || reader.committed_offsets(list, READ_TIMEOUT))
                    .await;
            let error = match read {
                Ok(Ok(committed)) => {
                    let mut problem = None;
                    waiting.retain(|p| {
                        let Some(element) = committed.find_partition(&topic, p.partition) else {
                            problem =
                                Some(format!("partition {} missing from the answer", p.partition));
                            return true;
                        };
                        if let Err(error) = element.error() {
                            problem = Some(format!("partition {}: {error}", p.partition));
                            return true;
                        }
                        let offsets = match element.offset() {
                            Offset::Offset(offset) => {
                                PartitionOffsets::resume(offset, element.metadata())
                            }
                            // Nothing committed yet for this group.
                            _ => PartitionOffsets::default(),
                        };
                        let _ = loaded.send(Loaded {
                            partition: p.partition,
                            epoch: p.epoch,
                            offsets,
                        });
                        false
                    });
                    match problem {
                        None => {
                            if failures > 0 {
                                tracing::info!(failures, waited = ?started.elapsed(), "committed offsets read");
                            }
                            return;
                        }
                        Some(problem) => problem,
                    }
                }
                Ok(Err(error)) => error.to_string(),
                Err(error) => format!("the read's thread failed: {error}"),
            };
            failures += 1;
            let partitions: Vec<i32> = waiting.iter().map(|p| p.partition).collect();
            tracing::warn!(%topic, ?partitions, error, failures, ?wait, "cannot read committed offsets; the partitions stay paused and the read is retried");
            let all_revoked = async {
                for p in &waiting {
                    p.interrupt.cancelled().await;
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = all_revoked => return,
            }
            wait = (wait * 2).min(MAX_WAIT);
        }
    });
}
