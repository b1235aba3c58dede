//! Out: the worker's flag commands applied to Unleash through its Admin API.
//!
//! A `read_committed` consumer of `kafka.topics.commands`, in its own consumer group
//! (`[unleash.commands] group_id`, default `chaosgate-unleash`), reads each flag command
//! (v1 CloudEvent) and:
//!
//! - `enable` turns the flag on in the command's environment, or, when it answers a
//!   strategy change, confirms it (the change is live already: see `apply.rs`);
//!   `disable` turns it off, `revert`
//!   puts back the change's `from` ([`record::wanted`]): an on/off state, or the old
//!   activation strategy of a strategy update or removal ([`super::strategy`]); a
//!   `revert` of an added strategy (no `from`) is reported, not applied;
//! - `dry_run: true`: logged ("not applied: dry run"), not applied;
//! - a command older than one already taken for its flag is skipped as stale
//!   ([`order`] states the rule);
//! - transient failures (no connection, timeouts, 5xx, 408, 429) are tried again with
//!   exponential backoff and full jitter, from 250 ms up to `[unleash.commands]
//!   max_backoff` between tries, or longer when Unleash's `Retry-After` asks for it,
//!   until the command is applied, superseded by a newer one for its flag, or the
//!   bridge stops;
//! - permanent failures (401, 403, 404, other 4xx), a `revert` the bridge cannot apply,
//!   and records that are not flag commands are reported: an error log line, the
//!   `failed` outcome, and the original record on `kafka.topics.dead_letter` with the
//!   project's dead-letter headers ([`record::dead_letter`]; class
//!   `command_not_applied`, or `undecodable`/`unknown_version`/`schema_violation` for
//!   records that are not flag commands). They never hold up other flags.
//!
//! Outcomes count in `chaosgate_unleash_commands_total{outcome}`: `applied`,
//! `confirmed`, `dry_run`, `stale`, `retried` (per failed try), `failed`.
//!
//! Where a new group starts: at the end of each partition (`auto.offset.reset =
//! latest`): the bridge must not replay the topic's history of commands into Unleash.
//! The trade-off: commands written before the group's first start (the bridge never ran,
//! or its group was deleted) are not applied. Once the group has committed offsets, a
//! bridge that was down resumes where it stopped.
//!
//! Each commit also carries the stale rule's memory of its partition ([`memory`]), read
//! back when the partition's first record arrives, so the rule holds across restarts.
//!
//! The rule that keeps commands from being lost: a partition's offset is committed only
//! up to its first command not yet finished ([`super::progress`]); a command cut off by
//! shutdown, a crash or a rebalance is delivered again (applying on/off twice is
//! harmless). Commits are made at most once a second, and once more at shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;
use rdkafka::util::Timeout;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::apply::{Outcome, Shared, apply, report};
use super::memory;
use super::order::{self, Lanes, Position, Ticket};
use super::progress::{Progress, Seen};
use super::record;
use super::{AdminApi, UnleashError};
use crate::bus::client::client_config;
use crate::bus::record::from_rdkafka;
use crate::config::{Config, UnleashConfig};
use crate::contract::KafkaMessage;
use crate::telemetry::metrics;

/// How often the commit points are handed to Kafka.
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// Every this many commit ticks, every assigned partition's point is committed again,
/// moved or not (an asynchronous commit that failed is repeated).
const RECOMMIT_EVERY: u64 = 10;
/// How long reading a partition's committed offset (its memory) may take.
const RECALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the bridge waits at shutdown for its cancelled commands to return.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// A task's end: which record, of which flag (none for a record that is not a command),
/// and how it ended.
struct Done {
    at: Position,
    /// The flag's key and the command's id.
    command: Option<(String, String)>,
    outcome: Outcome,
}

/// Consumes `kafka.topics.commands` and applies each command until `shutdown`.
///
/// Errors: the consumer or producer cannot be created, or the topic not subscribed
/// ([`UnleashError::Kafka`]); `[unleash.commands] max_backoff` is zero
/// ([`UnleashError::Config`]).
pub async fn run(
    config: &Config,
    unleash: &UnleashConfig,
    admin: AdminApi,
    shutdown: CancellationToken,
) -> Result<(), UnleashError> {
    let max_backoff = unleash.commands.max_backoff.duration();
    if max_backoff.is_zero() {
        return Err(UnleashError::Config(
            "unleash.commands.max_backoff must be more than 0".into(),
        ));
    }
    let topics = &config.kafka.topics;
    let group = &unleash.commands.group_id;
    let client = client_config(&config.kafka);
    let consumer: Arc<StreamConsumer> = client
        .clone()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // A new group starts at the end: the topic's history is not replayed (module doc).
        .set("auto.offset.reset", "latest")
        .set("isolation.level", "read_committed")
        .create()
        .map(Arc::new)
        .map_err(|e| UnleashError::Kafka(format!("consumer of {}: {e}", topics.commands)))?;
    consumer
        .subscribe(&[topics.commands.as_str()])
        .map_err(|e| UnleashError::Kafka(format!("subscribe to {}: {e}", topics.commands)))?;
    let producer: FutureProducer = client
        .clone()
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .create()
        .map_err(|e| UnleashError::Kafka(format!("producer of {}: {e}", topics.dead_letter)))?;
    let shared = Arc::new(Shared {
        admin,
        instance: unleash.instance_name(),
        producer,
        commands_topic: topics.commands.clone(),
        dead_letter_topic: topics.dead_letter.clone(),
        max_backoff,
        shutdown: shutdown.clone(),
    });
    tracing::info!(
        topic = %topics.commands,
        %group,
        "applying flag commands to Unleash (a new group starts at the end of the topic)"
    );
    let mut bridge = Bridge {
        shared,
        lanes: Lanes::default(),
        progress: Progress::default(),
        tasks: JoinSet::new(),
        task_of: HashMap::new(),
        supersede: HashMap::new(),
    };
    let mut commits = tokio::time::interval(COMMIT_INTERVAL);
    commits.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    let mut failures: u32 = 0;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            received = consumer.recv() => match received {
                Ok(message) => {
                    failures = 0;
                    let at = Position { partition: message.partition(), offset: message.offset() };
                    let original = from_rdkafka(&message);
                    drop(message);
                    if !bridge.progress.knows(at.partition) {
                        bridge.recall(&consumer, at.partition).await;
                    }
                    bridge.read(at, original);
                }
                Err(error) => {
                    // Doubling from 200 ms to 5 s: a missing topic is not a log flood.
                    let wait = Duration::from_millis(200).saturating_mul(1 << failures.min(5)).min(Duration::from_secs(5));
                    failures += 1;
                    tracing::warn!(%error, topic = %topics.commands, failures, retry_in = ?wait, "consume failed; retrying");
                    tokio::time::sleep(wait).await;
                }
            },
            Some(joined) = bridge.tasks.join_next_with_id(), if !bridge.tasks.is_empty() => {
                bridge.joined(joined);
            }
            _ = commits.tick() => {
                ticks += 1;
                bridge.commit(&consumer, ticks.is_multiple_of(RECOMMIT_EVERY), CommitMode::Async);
            }
        }
    }
    // Every task watches `shutdown`: they return at once, unfinished ones as cancelled
    // (not committed, so delivered again).
    let drain = async {
        while let Some(joined) = bridge.tasks.join_next_with_id().await {
            bridge.joined(joined);
        }
    };
    if tokio::time::timeout(SHUTDOWN_WAIT, drain).await.is_err() {
        tracing::warn!(
            "flag commands still running at shutdown were left; they are delivered again"
        );
    }
    bridge.commit(&consumer, true, CommitMode::Sync);
    tracing::info!(
        pending = bridge.progress.pending(),
        "stopped applying flag commands"
    );
    Ok(())
}

/// The consumer loop's state: per-flag order, per-partition progress, running tasks.
struct Bridge {
    shared: Arc<Shared>,
    lanes: Lanes,
    progress: Progress,
    tasks: JoinSet<Done>,
    /// What each task has: its record and, for a command, its flag.
    task_of: HashMap<tokio::task::Id, (Position, Option<String>)>,
    /// The token that supersedes each running command.
    supersede: HashMap<Position, CancellationToken>,
}

impl Bridge {
    /// Seeds the stale rule's memory from what `partition`'s committed offset remembers
    /// ([`memory`]); a failure to read it is logged and the partition goes on without.
    async fn recall(&mut self, consumer: &Arc<StreamConsumer>, partition: i32) {
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.shared.commands_topic, partition);
        let reader = consumer.clone();
        // rdkafka panics on metadata that is not UTF-8 (another writer's): read inside the
        // blocking task, whose panic is an error here.
        let read = tokio::task::spawn_blocking(move || {
            reader
                .committed_offsets(list, Timeout::After(RECALL_TIMEOUT))
                .map(|list| {
                    list.elements()
                        .first()
                        .map(|e| e.metadata().to_string())
                        .unwrap_or_default()
                })
        })
        .await;
        let text = match read {
            Ok(Ok(text)) => text,
            Ok(Err(error)) => {
                tracing::warn!(%error, partition, "cannot read the committed offset's memory; the stale rule starts without it");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, partition, "cannot read the committed offset's memory; the stale rule starts without it");
                return;
            }
        };
        let remembered = memory::decode(&text);
        for (flag_key, issued_at) in &remembered {
            self.lanes.remember(flag_key, partition, *issued_at);
        }
        tracing::debug!(
            partition,
            flags = remembered.len(),
            "stale rule memory read from the committed offset"
        );
    }

    /// A record was read at `at`.
    fn read(&mut self, at: Position, original: KafkaMessage) {
        match self.progress.read(at) {
            Seen::New => {}
            Seen::Pending | Seen::Finished => {
                tracing::debug!(
                    partition = at.partition,
                    offset = at.offset,
                    "delivered again; already handled"
                );
                return;
            }
        }
        let command = match record::decode_command(&original) {
            Ok(command) => command,
            Err(why) => {
                tracing::error!(
                    topic = %self.shared.commands_topic,
                    partition = at.partition,
                    offset = at.offset,
                    error = %why,
                    "not a flag command; reporting it on the dead-letter topic"
                );
                metrics::unleash_command("failed");
                let shared = self.shared.clone();
                let task = self.tasks.spawn(async move {
                    let outcome = report(&shared, &original, at, &why).await;
                    Done {
                        at,
                        command: None,
                        outcome,
                    }
                });
                self.task_of.insert(task.id(), (at, None));
                return;
            }
        };
        if command.dry_run {
            tracing::info!(
                command_id = %command.command_id,
                flag = %order::flag_key(&command),
                command = command.command.as_str(),
                "not applied: dry run"
            );
            metrics::unleash_command("dry_run");
            self.progress.finished(at);
            return;
        }
        let arrival = self.lanes.arrive(Ticket {
            at,
            command,
            original,
        });
        if let Some(stale) = arrival.stale {
            self.stale(
                &stale.command,
                stale.at,
                "a later command for this flag was taken",
            );
        }
        if let Some(running) = arrival.cancel_running
            && let Some(token) = self.supersede.get(&running)
        {
            token.cancel();
        }
        if let Some(ticket) = arrival.start {
            self.start(ticket);
        }
    }

    /// Logs, counts and finishes a command skipped as stale.
    fn stale(&mut self, command: &crate::contract::FlagCommand, at: Position, why: &str) {
        tracing::info!(
            command_id = %command.command_id,
            flag = %order::flag_key(command),
            command = command.command.as_str(),
            issued_at = %command.issued_at,
            "skipped: stale ({why})"
        );
        metrics::unleash_command("stale");
        self.progress.finished(at);
    }

    /// Starts applying `ticket` in a task of its own.
    fn start(&mut self, ticket: Ticket) {
        let token = self.shared.shutdown.child_token();
        self.supersede.insert(ticket.at, token.clone());
        let shared = self.shared.clone();
        let (at, flag_key) = (ticket.at, ticket.flag_key());
        let task = self.tasks.spawn(async move {
            let outcome = apply(&shared, &ticket, &token).await;
            Done {
                at: ticket.at,
                command: Some((ticket.flag_key(), ticket.command.command_id.clone())),
                outcome,
            }
        });
        self.task_of.insert(task.id(), (at, Some(flag_key)));
    }

    /// A task ended: returned, or (a bug) panicked. A panicked task's record stays
    /// unfinished, so its offset is not committed and it is delivered again after a
    /// restart; its flag's next command goes on.
    fn joined(&mut self, joined: Result<(tokio::task::Id, Done), tokio::task::JoinError>) {
        match joined {
            Ok((id, done)) => {
                self.task_of.remove(&id);
                self.done(done);
            }
            Err(error) => {
                let Some((at, flag_key)) = self.task_of.remove(&error.id()) else {
                    return;
                };
                tracing::error!(%error, partition = at.partition, offset = at.offset, "applying a command failed unexpectedly; it is delivered again after a restart");
                self.supersede.remove(&at);
                if let Some(flag_key) = flag_key
                    && let Some(next) = self.lanes.finished(&flag_key, at).start
                    && !self.shared.shutdown.is_cancelled()
                {
                    self.start(next);
                }
            }
        }
    }

    /// A task returned.
    fn done(&mut self, done: Done) {
        self.supersede.remove(&done.at);
        let stopping = self.shared.shutdown.is_cancelled();
        let Some((flag_key, command_id)) = done.command else {
            if done.outcome != Outcome::Cancelled {
                self.progress.finished(done.at);
            }
            return;
        };
        let finished = self.lanes.finished(&flag_key, done.at);
        match done.outcome {
            Outcome::Applied | Outcome::Reported => self.progress.finished(done.at),
            Outcome::Cancelled if stopping => {}
            Outcome::Cancelled => {
                tracing::info!(
                    %command_id,
                    flag = %flag_key,
                    partition = done.at.partition,
                    offset = done.at.offset,
                    "skipped: stale (superseded by a later command for this flag while it was being applied)"
                );
                metrics::unleash_command("stale");
                self.progress.finished(done.at);
            }
        }
        if let Some(next) = finished.start {
            if stopping {
                // Not started: not committed, delivered again.
                return;
            }
            self.start(next);
        }
    }

    /// Hands the commit points of the assigned partitions to Kafka: those that moved,
    /// or (`all`) every one.
    fn commit(&mut self, consumer: &StreamConsumer, all: bool, mode: CommitMode) {
        let assigned: Vec<i32> = match consumer.assignment() {
            Ok(list) => list
                .elements()
                .iter()
                .filter(|e| e.topic() == self.shared.commands_topic)
                .map(|e| e.partition())
                .collect(),
            Err(error) => {
                tracing::warn!(%error, "cannot read the consumer's assignment; not committing now");
                return;
            }
        };
        let points: Vec<(i32, i64)> = self
            .progress
            .to_commit(all)
            .into_iter()
            .filter(|(partition, _)| assigned.contains(partition))
            .collect();
        if points.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for (partition, offset) in &points {
            let topic = &self.shared.commands_topic;
            if let Err(error) =
                list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
            {
                tracing::warn!(%error, partition, offset, "cannot commit this offset");
            }
            if let Some(mut element) = list.find_partition(topic, *partition) {
                element.set_metadata(memory::encode(&self.lanes.newest_on(*partition)));
            }
        }
        match consumer.commit(&list, mode) {
            Ok(()) => {
                for (partition, offset) in points {
                    self.progress.committed(partition, offset);
                }
            }
            Err(error) => tracing::warn!(%error, ?points, "commit failed; tried again"),
        }
    }
}
