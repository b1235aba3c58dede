//! Following a whole topic: every partition from its beginning, then each new record,
//! with no consumer group (nothing is committed; the topic's retention or compaction
//! bounds what is read).
//!
//! Two readers in the worker do this: the kill switch (`chaosgate-control`) and the
//! flag-state reader (the compacted flag-state topic). Both must know what the topic held
//! when they started before the worker takes events, so the follower reports when it has
//! read each partition up to its end offset of that time ("caught up"), or after a bound
//! (a partition whose last offsets are transaction markers never shows a record at its
//! end), or when the topic cannot be read at all.
//!
//! Reads are `read_committed` (librdkafka's default `isolation.level`): records of an
//! aborted or open transaction are never seen.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::contract::KafkaMessage;

use super::record::from_rdkafka;

/// A reader of one whole topic.
pub(crate) struct Follower {
    /// The client settings (bootstrap servers, security).
    pub(crate) client: ClientConfig,
    /// The topic.
    pub(crate) topic: String,
    /// The consumer's `group.id`, a label only: no group is joined.
    pub(crate) label: &'static str,
    /// The longest the backlog is waited for before `caught_up` is called anyway.
    pub(crate) catch_up_limit: Duration,
    /// Every record of the topic is written in a transaction, so each partition ends
    /// with a commit marker no consumer sees: its last record is at end offset - 2.
    pub(crate) transactional: bool,
}

/// One record read, with where it was and when it was sent.
pub(crate) struct Read {
    /// The record.
    pub(crate) message: KafkaMessage,
    /// Its Kafka timestamp (now, when it has none).
    pub(crate) sent_at: DateTime<Utc>,
    /// Its partition.
    pub(crate) partition: i32,
    /// Its offset.
    pub(crate) offset: i64,
}

impl Follower {
    /// Reads the topic until `stop` fires, handing each record to `on_read`; calls
    /// `caught_up` once the backlog is read (with `true`) or the bound passed (`false`),
    /// see the module docs. Returns early, without calling `caught_up`, when the topic
    /// cannot be assigned.
    pub(crate) async fn follow(
        &self,
        stop: &CancellationToken,
        caught_up: impl FnOnce(bool),
        mut on_read: impl FnMut(Read),
    ) {
        let topic = &self.topic;
        let consumer: StreamConsumer = match self
            .client
            .clone()
            // rust-rdkafka serves a consumer's messages from its consumer queue only when
            // it has a group id; partitions are assigned, never subscribed.
            .set("group.id", self.label)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create()
        {
            Ok(consumer) => consumer,
            Err(error) => {
                tracing::error!(%error, %topic, "cannot create a consumer for the topic");
                return;
            }
        };
        let Some(mut behind) = assign_from_beginning(&consumer, &self.client, topic, stop).await
        else {
            return;
        };
        let catch_up_until = Instant::now() + self.catch_up_limit;
        let mut caught_up = Some(caught_up);
        // Read failures in a row: while the cluster is away, each poll fails at once; the
        // first is logged, then one in fifty, and polls slow down to one a second.
        let mut failures: u32 = 0;
        loop {
            if caught_up.is_some() && (behind.is_empty() || Instant::now() >= catch_up_until) {
                if !behind.is_empty() {
                    tracing::warn!(%topic, partitions = ?behind.keys().collect::<Vec<_>>(), "the topic's backlog was not read within {:?}; going on", self.catch_up_limit);
                }
                if let Some(caught_up) = caught_up.take() {
                    caught_up(behind.is_empty());
                }
            }
            let tick = catch_up_until.saturating_duration_since(Instant::now());
            let message = tokio::select! {
                () = stop.cancelled() => return,
                message = consumer.recv() => message,
                () = tokio::time::sleep(tick), if caught_up.is_some() => continue,
            };
            match message {
                Ok(message) => {
                    if failures > 0 {
                        tracing::info!(%topic, failures, "topic readable again");
                        failures = 0;
                    }
                    let partition = message.partition();
                    let marker = i64::from(self.transactional);
                    if behind
                        .get(&partition)
                        .is_some_and(|end| message.offset() + 1 + marker >= *end)
                    {
                        behind.remove(&partition);
                    }
                    let sent_at = message
                        .timestamp()
                        .to_millis()
                        .and_then(DateTime::<Utc>::from_timestamp_millis)
                        .unwrap_or_else(Utc::now);
                    on_read(Read {
                        message: from_rdkafka(&message),
                        sent_at,
                        partition,
                        offset: message.offset(),
                    });
                }
                Err(error) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(50) {
                        tracing::warn!(%error, %topic, failures, "topic read failed");
                    }
                    let wait = Duration::from_millis(200) * failures.min(5);
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }
}

/// Each partition's (low, high) watermarks of `topic` now (blocking: call from a blocking
/// task).
pub(crate) fn watermarks(
    client: &ClientConfig,
    topic: &str,
) -> Result<HashMap<i32, (i64, i64)>, String> {
    let probe: BaseConsumer = client.create().map_err(|e| e.to_string())?;
    let metadata = probe
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let partitions = crate::bus::client::partitions_of(&metadata, topic);
    if partitions.is_empty() {
        return Err(format!("topic {topic} has no partitions (yet)"));
    }
    let mut marks = HashMap::new();
    for partition in partitions {
        let mark = probe
            .fetch_watermarks(topic, partition, Duration::from_secs(5))
            .map_err(|e| format!("partition {partition}: {e}"))?;
        marks.insert(partition, mark);
    }
    Ok(marks)
}

/// Assigns every partition of `topic` from its beginning; returns each partition's end
/// offset at that time, for those that hold records (`None` when it could not assign).
/// Waits for the topic's metadata, retrying until `stop` fires.
async fn assign_from_beginning(
    consumer: &StreamConsumer,
    client: &ClientConfig,
    topic: &str,
    stop: &CancellationToken,
) -> Option<HashMap<i32, i64>> {
    let mut failures: u32 = 0;
    loop {
        let partitions = {
            let client = client.clone();
            let topic = topic.to_string();
            tokio::task::spawn_blocking(move || -> Result<HashMap<i32, i64>, String> {
                Ok(watermarks(&client, &topic)?
                    .into_iter()
                    .map(|(partition, (low, high))| (partition, if high > low { high } else { -1 }))
                    .collect())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
        };
        match partitions {
            Ok(mut ends) => {
                let mut list = TopicPartitionList::new();
                for partition in ends.keys() {
                    let _ = list.add_partition_offset(topic, *partition, Offset::Beginning);
                }
                match consumer.assign(&list) {
                    Ok(()) => {
                        // Empty partitions have nothing to catch up on.
                        ends.retain(|_, end| *end >= 0);
                        return Some(ends);
                    }
                    Err(error) => {
                        tracing::error!(%error, %topic, "cannot assign the topic");
                        return None;
                    }
                }
            }
            Err(error) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(50) {
                    tracing::warn!(%error, %topic, failures, "cannot read the topic's partitions yet");
                }
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(Duration::from_millis(200) * failures.min(5)) => {}
                }
            }
        }
    }
}
