//! One receiver's consumer: reads the committed records of `flag-commands` and
//! `chaos-experiment-runs` in the receiver's own consumer group, and delivers the
//! notifications they give ([`super::event`]) in tasks of their own.
//!
//! The rule that keeps notifications from being lost: a partition's offset is committed
//! only up to its first record whose notifications are not all delivered or given up
//! ([`crate::connect::unleash::progress`], one per topic); a record cut off by shutdown,
//! a crash or a rebalance is delivered again, with the same idempotency key. A receiver
//! that fails only lags its own group: the worker never waits for it. At most
//! [`MAX_IN_FLIGHT`] records (one for a Slack-compatible receiver) are being delivered
//! at once; while that many are, the
//! consumer reads no further (its `max.poll.interval.ms` is librdkafka's longest, a day,
//! so a receiver that is down does not make it leave its group).
//!
//! Where a new group starts: at the beginning of each partition (`earliest`), skipping
//! records written more than [`FRESH_SLACK`] before this notifier started, on partitions
//! the group has no committed offset for: the topics' history is not told again, and a
//! record written while the group was still joining is not missed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::util::Timeout;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::NotifyError;
use super::deliver::{Delivery, Receiver, deliver};
use super::event::notifications;
use crate::bus::client::client_config;
use crate::bus::record::from_rdkafka;
use crate::config::{Config, EventKind};
use crate::connect::unleash::order::Position;
use crate::connect::unleash::progress::{Progress, Seen};

/// How often the commit points are handed to Kafka.
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// Every this many commit ticks, every point is committed again, moved or not (an
/// asynchronous commit that failed is repeated).
const RECOMMIT_EVERY: u64 = 10;
/// Records being delivered at once, per receiver.
pub const MAX_IN_FLIGHT: usize = 64;
/// On a partition the group never committed, records older than the notifier's start by
/// more than this are skipped.
pub const FRESH_SLACK: Duration = Duration::from_secs(60);
/// How long reading a partition's committed offset may take.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the consumer waits at shutdown for its cancelled deliveries to return.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// What one receiver's consumer needs.
pub struct Setup {
    /// The receiver.
    pub receiver: Arc<Receiver>,
    /// The events it wants.
    pub events: Vec<EventKind>,
    /// `notify.view_url`.
    pub view_url: Option<String>,
    /// Records delivered at once: [`MAX_IN_FLIGHT`], or 1 for a Slack-compatible
    /// receiver.
    pub max_in_flight: usize,
}

/// A record's place: topic, partition, offset.
type Place = (String, Position);

/// Consumes both topics for `setup`'s receiver until `shutdown`.
///
/// Errors: the consumer cannot be created or subscribed ([`NotifyError::Kafka`]).
pub async fn run(
    config: &Config,
    setup: Setup,
    shutdown: CancellationToken,
) -> Result<(), NotifyError> {
    let topics = [
        config.kafka.topics.commands.clone(),
        config.kafka.topics.runs.clone(),
    ];
    let group = format!("{}-notify-{}", config.kafka.group_id, setup.receiver.name);
    let consumer: Arc<StreamConsumer> = client_config(&config.kafka)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("max.poll.interval.ms", "86400000")
        // The worker's static membership id is not this group's.
        .remove("group.instance.id")
        .create()
        .map(Arc::new)
        .map_err(|e| NotifyError::Kafka(format!("consumer of group {group}: {e}")))?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&names)
        .map_err(|e| NotifyError::Kafka(format!("subscribe to {names:?}: {e}")))?;
    tracing::info!(receiver = %setup.receiver.name, %group, topics = ?names, events = ?setup.events.iter().map(|e| e.as_str()).collect::<Vec<_>>(), "notifying");
    let started_ms = chrono::Utc::now().timestamp_millis()
        - i64::try_from(FRESH_SLACK.as_millis()).unwrap_or(i64::MAX);
    let mut state = State {
        setup,
        progress: HashMap::new(),
        fresh: HashMap::new(),
        tasks: JoinSet::new(),
        task_of: HashMap::new(),
        shutdown: shutdown.clone(),
    };
    let mut commits = tokio::time::interval(COMMIT_INTERVAL);
    commits.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures: u32 = 0;
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            received = consumer.recv(), if state.tasks.len() < state.setup.max_in_flight => match received {
                Ok(message) => {
                    failures = 0;
                    let topic = message.topic().to_string();
                    let at = Position { partition: message.partition(), offset: message.offset() };
                    let written_ms = message.timestamp().to_millis();
                    let record = from_rdkafka(&message);
                    drop(message);
                    let fresh = match state.fresh.get(&(topic.clone(), at.partition)) {
                        Some(fresh) => *fresh,
                        None => {
                            let fresh = never_committed(&consumer, &topic, at.partition).await;
                            state.fresh.insert((topic.clone(), at.partition), fresh);
                            fresh
                        }
                    };
                    let history = fresh && written_ms.is_some_and(|ms| ms < started_ms);
                    state.read((topic, at), &record, history);
                }
                Err(error) => {
                    let wait = Duration::from_millis(200).saturating_mul(1 << failures.min(5)).min(Duration::from_secs(5));
                    failures += 1;
                    tracing::warn!(%error, receiver = %state.setup.receiver.name, failures, retry_in = ?wait, "consume failed; retrying");
                    tokio::time::sleep(wait).await;
                }
            },
            Some(joined) = state.tasks.join_next_with_id(), if !state.tasks.is_empty() => state.joined(joined),
            _ = commits.tick() => {
                ticks += 1;
                state.commit(&consumer, ticks.is_multiple_of(RECOMMIT_EVERY), CommitMode::Async);
            }
        }
    }
    let drain = async {
        while let Some(joined) = state.tasks.join_next_with_id().await {
            state.joined(joined);
        }
    };
    if tokio::time::timeout(SHUTDOWN_WAIT, drain).await.is_err() {
        tracing::warn!(receiver = %state.setup.receiver.name, "notifications still running at shutdown were left; they are sent again");
    }
    state.commit(&consumer, true, CommitMode::Sync);
    tracing::info!(receiver = %state.setup.receiver.name, "stopped notifying");
    Ok(())
}

/// Whether the group has no committed offset for `topic`/`partition` (a read error
/// counts as committed: then nothing is skipped).
async fn never_committed(consumer: &Arc<StreamConsumer>, topic: &str, partition: i32) -> bool {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    let reader = consumer.clone();
    let read = tokio::task::spawn_blocking(move || {
        reader
            .committed_offsets(list, Timeout::After(COMMITTED_TIMEOUT))
            .map(|list| list.elements().first().map(|e| e.offset()))
    })
    .await;
    match read {
        Ok(Ok(offset)) => matches!(offset, None | Some(Offset::Invalid)),
        Ok(Err(error)) => {
            tracing::warn!(%error, topic, partition, "cannot read the committed offset; not skipping older records");
            false
        }
        Err(error) => {
            tracing::warn!(%error, topic, partition, "cannot read the committed offset; not skipping older records");
            false
        }
    }
}

/// The consumer loop's state.
struct State {
    setup: Setup,
    /// Per topic.
    progress: HashMap<String, Progress>,
    /// Per topic and partition: whether the group had no committed offset.
    fresh: HashMap<(String, i32), bool>,
    tasks: JoinSet<(Place, Delivery)>,
    task_of: HashMap<tokio::task::Id, Place>,
    shutdown: CancellationToken,
}

impl State {
    /// A record was read at `place`; `history`: written before this group's first start,
    /// not told.
    fn read(&mut self, place: Place, record: &crate::contract::KafkaMessage, history: bool) {
        let progress = self.progress.entry(place.0.clone()).or_default();
        if progress.read(place.1) != Seen::New {
            return;
        }
        let wanted: Vec<_> = if history {
            Vec::new()
        } else {
            notifications(record, self.setup.view_url.as_deref())
                .into_iter()
                .filter(|n| self.setup.events.contains(&n.kind))
                .collect()
        };
        if wanted.is_empty() {
            progress.finished(place.1);
            return;
        }
        let receiver = self.setup.receiver.clone();
        let shutdown = self.shutdown.clone();
        let task_place = place.clone();
        let task = self.tasks.spawn(async move {
            let mut outcome = Delivery::Delivered;
            for notification in &wanted {
                match deliver(&receiver, notification, &shutdown).await {
                    Delivery::Cancelled => return (task_place, Delivery::Cancelled),
                    Delivery::GivenUp => outcome = Delivery::GivenUp,
                    Delivery::Delivered => {}
                }
            }
            (task_place, outcome)
        });
        self.task_of.insert(task.id(), place);
    }

    /// A delivery task ended. A cancelled or panicked one leaves its record unfinished:
    /// not committed, delivered again after a restart.
    fn joined(
        &mut self,
        joined: Result<(tokio::task::Id, (Place, Delivery)), tokio::task::JoinError>,
    ) {
        match joined {
            Ok((id, ((topic, at), delivery))) => {
                self.task_of.remove(&id);
                if delivery != Delivery::Cancelled
                    && let Some(progress) = self.progress.get_mut(&topic)
                {
                    progress.finished(at);
                }
            }
            Err(error) => {
                if let Some((topic, at)) = self.task_of.remove(&error.id()) {
                    tracing::error!(%error, %topic, partition = at.partition, offset = at.offset, "a notification failed unexpectedly; it is sent again after a restart");
                }
            }
        }
    }

    /// Hands the commit points of the assigned partitions that moved, or (`all`) every
    /// one, to Kafka.
    fn commit(&mut self, consumer: &StreamConsumer, all: bool, mode: CommitMode) {
        let assigned: Vec<(String, i32)> = match consumer.assignment() {
            Ok(list) => list
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect(),
            Err(error) => {
                tracing::warn!(%error, "cannot read the consumer's assignment; not committing now");
                return;
            }
        };
        let mut list = TopicPartitionList::new();
        let mut points = Vec::new();
        for (topic, progress) in &self.progress {
            for (partition, offset) in progress.to_commit(all) {
                if !assigned.contains(&(topic.clone(), partition)) {
                    continue;
                }
                if let Err(error) =
                    list.add_partition_offset(topic, partition, Offset::Offset(offset))
                {
                    tracing::warn!(%error, %topic, partition, offset, "cannot commit this offset");
                    continue;
                }
                points.push((topic.clone(), partition, offset));
            }
        }
        if points.is_empty() {
            return;
        }
        match consumer.commit(&list, mode) {
            Ok(()) => {
                for (topic, partition, offset) in points {
                    if let Some(progress) = self.progress.get_mut(&topic) {
                        progress.committed(partition, offset);
                    }
                }
            }
            Err(error) => tracing::warn!(%error, ?points, "commit failed; tried again"),
        }
    }
}
