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

use crate::bus::flag_state::FlagStates;
use crate::bus::offsets::PartitionOffsets;
use crate::contract::FlagState;

use super::rebalance::NewPartition;

/// How long one read may block.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Waits between failed reads: from 100 ms, doubling, up to this.
const MAX_WAIT: Duration = Duration::from_secs(5);

/// A partition's offsets, read, with what its flags are owed.
#[derive(Debug)]
pub(super) struct Loaded {
    pub(crate) partition: i32,
    pub(crate) epoch: u64,
    pub(crate) offsets: PartitionOffsets,
    /// The flag-state records of the partition's flags that owe something, read after the
    /// offsets (see [`crate::bus::flag_state`]).
    pub(crate) owed: Vec<FlagState>,
    /// The partition's end offset (high watermark) after the offsets were read.
    pub(crate) end: i64,
}

/// Reads the committed offsets of `partitions` in a task of its own, then (once `states`
/// has read the flag-state topic up to its end of that time) what their flags are owed,
/// sending each on `loaded`; gives up on a partition when its interrupt fires.
pub(super) fn spawn_read<C: ConsumerContext + 'static>(
    consumer: Arc<StreamConsumer<C>>,
    topic: String,
    partitions: Vec<NewPartition>,
    loaded: mpsc::UnboundedSender<Loaded>,
    states: FlagStates,
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
                    let mut read = Vec::new();
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
                        read.push((p.partition, p.epoch, offsets));
                        false
                    });
                    if !read.is_empty() {
                        states.read_up_to_now().await;
                        let ends = end_offsets(&consumer, &topic, &read).await;
                        for (partition, epoch, offsets) in read {
                            let _ = loaded.send(Loaded {
                                partition,
                                epoch,
                                offsets,
                                owed: states.owed_in(partition),
                                end: ends.get(&partition).copied().unwrap_or(0),
                            });
                        }
                    }
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

/// The end offsets (high watermarks) of the partitions just read; a partition whose end
/// cannot be read gets none (its owed states are then taken over after the wait bound).
async fn end_offsets<C: ConsumerContext + 'static>(
    consumer: &Arc<StreamConsumer<C>>,
    topic: &str,
    read: &[(i32, u64, PartitionOffsets)],
) -> std::collections::HashMap<i32, i64> {
    let consumer = consumer.clone();
    let topic = topic.to_string();
    let partitions: Vec<i32> = read.iter().map(|(p, _, _)| *p).collect();
    tokio::task::spawn_blocking(move || {
        partitions
            .into_iter()
            .map(|partition| {
                match consumer.fetch_watermarks(&topic, partition, READ_TIMEOUT) {
                    Ok((_, high)) => (partition, high),
                    Err(error) => {
                        tracing::warn!(%error, %topic, partition, "cannot read the partition's end offset");
                        (partition, i64::MAX)
                    }
                }
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}
