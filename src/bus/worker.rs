//! The worker: consumes flag changes, runs their pipelines, and commits what they
//! produced together with the consumed offsets.
//!
//! One task owns the consumer loop and all bookkeeping; it never waits on an experiment,
//! so a ten-minute experiment cannot exceed `max.poll.interval.ms`. Executions run as
//! their own tasks, at most `max_in_flight` at once; events of one flag wait for the
//! earlier ones (see [`super::flag_queue`]). When too many events wait, the assigned
//! partitions are paused until the backlog halves. Finished events go to the
//! transactional committer ([`super::transaction`]), and so do `running` records, in the
//! transaction that commits their run's start or a later one.
//!
//! Rebalances use the cooperative-sticky protocol. When a partition is revoked its
//! in-flight runs are interrupted (faults reverted, `aborted` records published) and
//! nothing of it is committed; its new owner runs those events again as the next attempt.
//! On shutdown every run is interrupted the same way, what finished is committed, and the
//! consumer leaves the group.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::chaos::runner::RunContext;
use crate::config::Config;
use crate::contract::flag_change::decode_flag_change;
use crate::contract::{ErrorClass, FlagChange, KafkaMessage, ids};
use crate::gate::decision;
use crate::gate::executor::{Execution, ExecutionContext, RunUpdate, UpdateSink, execute};
use crate::telemetry::http::Readiness;
use crate::telemetry::{metrics, traces};
use tracing::Instrument;

use super::client::client_config;
use super::flag_queue::FlagQueues;
use super::kill_switch::{self, KillSwitch};
use super::offsets::{Book, Ledger, PartitionOffsets, Receipt};
use super::outputs::{self, Output, Source};
use super::record::from_rdkafka;
use super::transaction::{Assignment, Committer, Completion};

/// Why the worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A Kafka client could not be created from the configuration.
    #[error("invalid Kafka client configuration: {0}")]
    Client(KafkaError),
    /// Topics the worker needs do not exist.
    #[error(
        "topics missing on the cluster at {servers}: {topics} (create them, or set kafka.create_topics = true)"
    )]
    MissingTopics {
        /// Bootstrap servers.
        servers: String,
        /// The missing topics.
        topics: String,
    },
    /// The cluster refused us (authentication, authorization).
    #[error("Kafka refused the connection at {servers}: {message}")]
    Refused {
        /// Bootstrap servers.
        servers: String,
        /// What the client said.
        message: String,
    },
    /// Subscribing failed.
    #[error("cannot subscribe to {topic}: {source}")]
    Subscribe {
        /// The topic.
        topic: String,
        /// The client error.
        source: KafkaError,
    },
    /// The transactional committer failed to start.
    #[error(transparent)]
    Commit(#[from] super::transaction::CommitError),
    /// `worker.max_in_flight` lets more events of one partition be unfinished than its
    /// offsets metadata can record.
    #[error(transparent)]
    Capacity(#[from] super::offsets::CapacityError),
}

/// A rebalance as the consumer loop learns of it.
#[derive(Debug)]
enum RebalanceEvent {
    Assigned {
        partition: i32,
        epoch: u64,
        offsets: PartitionOffsets,
        interrupt: CancellationToken,
    },
    Revoked {
        partition: i32,
    },
}

/// The consumer's context: keeps the shared assignment in step with librdkafka's, reads
/// committed offsets and metadata of new partitions, and interrupts runs of revoked ones
/// before librdkafka lets them go.
pub struct WorkerContext {
    topic: String,
    assignment: Assignment,
    epochs: AtomicU64,
    interrupts: Mutex<HashMap<i32, CancellationToken>>,
    events: mpsc::UnboundedSender<RebalanceEvent>,
    readiness: Readiness,
}

impl WorkerContext {
    fn report_assigned(&self) {
        let owned = self.assignment.lock().map(|a| a.len()).unwrap_or_default();
        self.readiness.set_assigned(owned);
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
                    if let Ok(mut interrupts) = self.interrupts.lock()
                        && let Some(token) = interrupts.remove(&partition)
                    {
                        token.cancel();
                    }
                    let _ = self.events.send(RebalanceEvent::Revoked { partition });
                }
                self.report_assigned();
                tracing::info!(partitions = ?partitions_of(list), lost = consumer.assignment_lost(), "partitions revoked");
            }
            Rebalance::Assign(list) => {
                let committed = consumer
                    .committed_offsets((*list).clone(), Duration::from_secs(30))
                    .unwrap_or_else(|error| {
                        tracing::warn!(%error, "cannot read committed offsets; starting from the stored position");
                        (*list).clone()
                    });
                for element in committed.elements_for_topic(&self.topic) {
                    let partition = element.partition();
                    let offset = match element.offset() {
                        Offset::Offset(offset) => offset,
                        _ => 0,
                    };
                    let offsets = PartitionOffsets::resume(offset, element.metadata());
                    let epoch = self.epochs.fetch_add(1, Ordering::Relaxed) + 1;
                    let interrupt = CancellationToken::new();
                    if let Ok(mut assignment) = self.assignment.lock() {
                        assignment.insert(partition, epoch);
                    }
                    if let Ok(mut interrupts) = self.interrupts.lock() {
                        interrupts.insert(partition, interrupt.clone());
                    }
                    let _ = self.events.send(RebalanceEvent::Assigned {
                        partition,
                        epoch,
                        offsets,
                        interrupt,
                    });
                }
                self.report_assigned();
                tracing::info!(partitions = ?partitions_of(list), "partitions assigned");
            }
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance error"),
        }
    }
}

fn partitions_of(list: &TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|e| e.partition()).collect()
}

/// An event read and decoded, waiting for its flag or for a slot.
#[derive(Debug)]
struct Pending {
    partition: i32,
    epoch: u64,
    offset: i64,
    flag: String,
    change: FlagChange,
    pipeline: Option<String>,
    /// The event's `process` span: its trace, and the fields of its log lines.
    span: tracing::Span,
    /// The pipeline execution's id, registered with the kill switch from the moment
    /// the event is read, so an abort also reaches an execution still waiting for its
    /// flag or for a slot.
    execution_id: Option<String>,
    /// Cancelled by an abort request (a child of the partition's interrupt).
    kill: CancellationToken,
}

/// An execution that ended, with its records and command encoded (in its own task,
/// not in the consumer loop).
struct Finished {
    pending: Pending,
    execution: Execution,
    outputs: Vec<Output>,
}

/// An owned partition as the loop sees it (its offsets are in the [`Ledger`]).
struct Partition {
    epoch: u64,
    interrupt: CancellationToken,
}

/// Runs the worker until `shutdown` fires, then stops gracefully within the grace period.
pub async fn run(
    config: Config,
    catalog: Arc<Catalog>,
    run: RunContext,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    // Eight waiting events per slot: the backlog allowed before partitions pause.
    super::offsets::check_capacity(config.worker.max_in_flight.max(1), 8)?;
    let client = client_config(&config.kafka);
    let topics = config.kafka.topics.clone();
    ensure_topics(&config, &client, &shutdown).await?;
    if shutdown.is_cancelled() {
        tracing::info!("stopped before Kafka could be reached");
        return Ok(());
    }

    let (rebalance_tx, mut rebalance_rx) = mpsc::unbounded_channel();
    let assignment: Assignment = Arc::default();
    let context = WorkerContext {
        topic: topics.flag_changes.clone(),
        assignment: assignment.clone(),
        epochs: AtomicU64::new(0),
        interrupts: Mutex::default(),
        events: rebalance_tx,
        readiness: readiness.clone(),
    };
    let consumer: Arc<StreamConsumer<WorkerContext>> = Arc::new(
        client
            .clone()
            .set("group.id", &config.kafka.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set(
                "statistics.interval.ms",
                config
                    .kafka
                    .properties
                    .get("statistics.interval.ms")
                    .map_or("15000", String::as_str),
            )
            .set("partition.assignment.strategy", "cooperative-sticky")
            .create_with_context(context)
            .map_err(WorkerError::Client)?,
    );
    consumer
        .subscribe(&[&topics.flag_changes])
        .map_err(|source| WorkerError::Subscribe {
            topic: topics.flag_changes.clone(),
            source,
        })?;

    let kill_switch = KillSwitch::default();
    let stop_control = CancellationToken::new();
    let control_task = tokio::spawn(kill_switch::listen(
        client.clone(),
        topics.control.clone(),
        kill_switch.clone(),
        stop_control.clone(),
    ));

    let transactional_id = config
        .kafka
        .transactional_id
        .clone()
        .unwrap_or_else(|| format!("{}-{}", config.kafka.transactional_id_prefix, host_name()));
    let (completions_tx, completions_rx) = std::sync::mpsc::channel::<Completion>();
    let ledger = Ledger::default();
    let committer = Committer {
        config: client
            .clone()
            .set("transactional.id", &transactional_id)
            // Half of it bounds one transaction attempt (see `bus::producer`).
            .set(
                "transaction.timeout.ms",
                config
                    .kafka
                    .properties
                    .get("transaction.timeout.ms")
                    .map_or("60000", String::as_str),
            )
            .set("linger.ms", "0")
            // A transaction begun right after the previous one's commit meets
            // CONCURRENT_TRANSACTIONS until the commit markers are written; retry soon
            // (the Java client waits 20 ms) rather than after librdkafka's 100 ms.
            .set(
                "retry.backoff.ms",
                config
                    .kafka
                    .properties
                    .get("retry.backoff.ms")
                    .map_or("5", String::as_str),
            )
            .clone(),
        topic: topics.flag_changes.clone(),
        ledger: ledger.clone(),
        group_metadata: Box::new({
            let consumer = consumer.clone();
            move || consumer.group_metadata()
        }),
        assignment: assignment.clone(),
        on_commit: Some(Box::new({
            let readiness = readiness.clone();
            move |latency, _| {
                metrics::commit(latency);
                readiness.set_producer_ok(true);
            }
        })),
        on_failure: Some(Box::new({
            let readiness = readiness.clone();
            move || {
                metrics::commit_failed();
                readiness.set_producer_ok(false);
            }
        })),
    };
    // Started here, so a producer the cluster refuses (a transactional id it does not
    // authorise, say) stops the worker before it consumes anything.
    let producer = tokio::task::block_in_place(|| super::transaction::start(&committer.config))?;
    let committer_thread = std::thread::Builder::new()
        .name("chaosgate-commit".into())
        .spawn(move || committer.run(producer, completions_rx))
        .map_err(|e| WorkerError::Refused {
            servers: config.kafka.bootstrap_servers.clone(),
            message: format!("cannot start the commit thread: {e}"),
        })?;

    let (finished_tx, mut finished_rx) = mpsc::unbounded_channel::<Finished>();
    let mut partitions: HashMap<i32, Partition> = HashMap::new();
    let mut queues: FlagQueues<Pending> = FlagQueues::default();
    let mut ready: VecDeque<Pending> = VecDeque::new();
    let mut running = 0usize;
    let mut paused = false;
    let max_in_flight = config.worker.max_in_flight.max(1);
    let backlog_limit = max_in_flight * 8;
    let state = Shared {
        topics: Arc::new(topics.clone()),
        ledger: ledger.clone(),
        catalog,
        run,
        kill_switch: kill_switch.clone(),
        finished: finished_tx,
        completions: completions_tx,
        max_message_bytes: config.kafka.max_message_bytes,
        group: config.kafka.group_id.clone(),
    };

    tracing::info!(topic = %topics.flag_changes, group = %config.kafka.group_id, %transactional_id, "worker started");
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(event) = rebalance_rx.recv() => {
                apply_rebalance(event, &ledger, &mut partitions, &mut queues, &mut ready, &kill_switch);
            }
            Some(finished) = finished_rx.recv() => {
                running -= 1;
                state.finish(finished, &mut partitions, &mut queues, &mut ready, &mut running, max_in_flight);
            }
            message = consumer.recv() => {
                match message {
                    Ok(message) => {
                        while let Ok(event) = rebalance_rx.try_recv() {
                            apply_rebalance(event, &ledger, &mut partitions, &mut queues, &mut ready, &kill_switch);
                        }
                        let partition = message.partition();
                        let offset = message.offset();
                        let record = from_rdkafka(&message);
                        drop(message);
                        state.receive(partition, offset, record, &mut partitions, &mut queues, &mut ready, &mut running, max_in_flight);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "consume failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        let backlog = queues.waiting() + ready.len();
        if !paused && backlog > backlog_limit {
            paused = set_paused(&consumer, true);
        } else if paused && backlog <= backlog_limit / 2 {
            paused = !set_paused(&consumer, false);
        }
    }

    // Graceful shutdown: stop taking events, interrupt runs, commit what finished.
    let deadline = Instant::now() + config.worker.shutdown_grace.duration();
    readiness.set_stopping();
    tracing::info!(running, "shutting down: interrupting runs");
    // Nothing more is fetched while runs are interrupted.
    if !paused {
        set_paused(&consumer, true);
    }
    for partition in partitions.values() {
        partition.interrupt.cancel();
    }
    while running > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, finished_rx.recv()).await {
            Ok(Some(finished)) => {
                running -= 1;
                state.finish(
                    finished,
                    &mut partitions,
                    &mut queues,
                    &mut ready,
                    &mut running,
                    0,
                );
            }
            _ => break,
        }
    }
    drop(state);
    let join = tokio::task::spawn_blocking(move || committer_thread.join());
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, join).await {
        Ok(Ok(Ok(()))) => {}
        _ => tracing::warn!("the committer did not finish within the grace period"),
    }
    stop_control.cancel();
    let _ = control_task.await;
    consumer.unsubscribe();
    metrics::clear_consumer_lag();
    tracing::info!("worker stopped");
    Ok(())
}

/// Pauses or resumes every assigned partition; returns whether it worked.
fn set_paused(consumer: &StreamConsumer<WorkerContext>, pause: bool) -> bool {
    let Ok(assignment) = consumer.assignment() else {
        return false;
    };
    let result = if pause {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    match result {
        Ok(()) => {
            tracing::info!(
                pause,
                "backpressure: partitions {}",
                if pause { "paused" } else { "resumed" }
            );
            true
        }
        Err(error) => {
            tracing::warn!(%error, "cannot pause or resume partitions");
            false
        }
    }
}

fn apply_rebalance(
    event: RebalanceEvent,
    ledger: &Ledger,
    partitions: &mut HashMap<i32, Partition>,
    queues: &mut FlagQueues<Pending>,
    ready: &mut VecDeque<Pending>,
    kill_switch: &KillSwitch,
) {
    match event {
        RebalanceEvent::Assigned {
            partition,
            epoch,
            offsets,
            interrupt,
        } => {
            ledger.lock().insert(partition, Book { epoch, offsets });
            partitions.insert(partition, Partition { epoch, interrupt });
        }
        RebalanceEvent::Revoked { partition } => {
            ledger.lock().remove(&partition);
            partitions.remove(&partition);
            let forget = |pending: &Pending| {
                if let Some(id) = &pending.execution_id {
                    kill_switch.unregister(id);
                }
            };
            queues.discard(|p| {
                let revoked = p.partition == partition;
                if revoked {
                    forget(p);
                }
                revoked
            });
            let (revoked, kept): (Vec<Pending>, Vec<Pending>) =
                ready.drain(..).partition(|p| p.partition == partition);
            ready.extend(kept);
            for pending in revoked {
                forget(&pending);
                // Its flag was busy waiting for a slot; nothing of the partition waits behind it.
                let _ = queues.release(&pending.flag);
            }
        }
    }
}

/// What the loop shares with the tasks it starts.
struct Shared {
    topics: Arc<crate::config::Topics>,
    ledger: Ledger,
    catalog: Arc<Catalog>,
    run: RunContext,
    kill_switch: KillSwitch,
    finished: mpsc::UnboundedSender<Finished>,
    completions: std::sync::mpsc::Sender<Completion>,
    max_message_bytes: usize,
    group: String,
}

impl Shared {
    /// Handles one consumed record: skip, dead-letter, or queue for its flag.
    #[allow(clippy::too_many_arguments)]
    fn receive(
        &self,
        partition: i32,
        offset: i64,
        message: KafkaMessage,
        partitions: &mut HashMap<i32, Partition>,
        queues: &mut FlagQueues<Pending>,
        ready: &mut VecDeque<Pending>,
        running: &mut usize,
        max_in_flight: usize,
    ) {
        let Some(state) = partitions.get_mut(&partition) else {
            tracing::debug!(
                partition,
                offset,
                "record of a partition not (or no longer) assigned"
            );
            return;
        };
        let receipt = self
            .ledger
            .lock()
            .get_mut(&partition)
            .map(|book| book.offsets.receive(offset));
        if receipt != Some(Receipt::Process) {
            tracing::debug!(
                partition,
                offset,
                "already done by an earlier owner; skipped"
            );
            return;
        }
        metrics::event_consumed();
        let span = traces::process_span(
            &self.topics.flag_changes,
            partition,
            offset,
            &self.group,
            &message.headers,
        );
        let entered = span.enter();
        let epoch = state.epoch;
        let source = Source {
            topic: self.topics.flag_changes.clone(),
            partition,
            offset,
        };
        let change =
            decode_flag_change(&message, self.max_message_bytes).and_then(|(_, change)| {
                match &change.pipeline_id {
                    Some(id) if self.catalog.pipeline(id).is_none() => {
                        Err(crate::contract::flag_change::BadFlagChange {
                            class: ErrorClass::UnknownPipeline,
                            message: format!("data.pipeline_id: no pipeline '{id}' in the catalog"),
                        })
                    }
                    _ => Ok(change),
                }
            });
        let change = match change {
            Ok(change) => change,
            Err(bad) => {
                tracing::warn!(partition, offset, class = bad.class.as_str(), error = %bad.message, "dead-lettered");
                metrics::dead_lettered(bad.class);
                let output = outputs::dead_letter(&self.topics, &message, &bad, &source);
                self.complete(partition, epoch, offset, vec![output]);
                return;
            }
        };
        let pipeline = match &change.pipeline_id {
            Some(id) => Some(id.clone()),
            None => self
                .catalog
                .pipeline_for(&change.project, &change.environment, &change.flag)
                .map(|p| p.id.clone()),
        };
        traces::record_change(&span, &change, pipeline.as_deref());
        drop(entered);
        let execution_id = pipeline
            .as_ref()
            .map(|id| ids::pipeline_execution_id(&change.event_id, id));
        let kill = state.interrupt.child_token();
        if let Some(id) = &execution_id {
            self.kill_switch
                .register(id, kill.clone(), change.occurred_at);
        }
        let pending = Pending {
            partition,
            epoch,
            offset,
            flag: change.flag_key(),
            change,
            pipeline,
            span,
            execution_id,
            kill,
        };
        if let Some(pending) = queues.admit(&pending.flag.clone(), pending) {
            self.start(pending, partitions, queues, ready, running, max_in_flight);
        }
    }

    /// Starts an event whose flag is free: answers at once, or runs its pipeline when a
    /// slot is free (else it waits in `ready`, its flag held).
    fn start(
        &self,
        pending: Pending,
        partitions: &mut HashMap<i32, Partition>,
        queues: &mut FlagQueues<Pending>,
        ready: &mut VecDeque<Pending>,
        running: &mut usize,
        max_in_flight: usize,
    ) {
        let mut next = Some(pending);
        while let Some(pending) = next.take() {
            let span = pending.span.clone();
            let _entered = span.enter();
            let pipeline = pending
                .pipeline
                .as_deref()
                .and_then(|id| self.catalog.pipeline(id));
            let gating = decision::gating(&pending.change, pipeline);
            if gating == decision::Gating::Gate {
                if *running >= max_in_flight {
                    ready.push_back(pending);
                    return;
                }
                self.spawn(pending, partitions, running);
                return;
            }
            let command = decision::flag_command(
                &pending.change,
                pipeline,
                gating,
                &decision::Outcome::Passed,
                Vec::new(),
                chrono::Utc::now(),
            );
            tracing::info!(flag = %pending.flag, command = command.command.as_str(), reason = %command.reason, "passed on");
            if let Some(id) = &pending.execution_id {
                self.kill_switch.unregister(id);
            }
            metrics::event_gated(command.command, command.reason_code);
            let output = outputs::flag_command(&self.topics, &command);
            self.complete(
                pending.partition,
                pending.epoch,
                pending.offset,
                vec![output],
            );
            next = queues.release(&pending.flag);
        }
    }

    fn spawn(
        &self,
        pending: Pending,
        partitions: &mut HashMap<i32, Partition>,
        running: &mut usize,
    ) {
        let Some(partition) = partitions.get_mut(&pending.partition) else {
            if let Some(id) = &pending.execution_id {
                self.kill_switch.unregister(id);
            }
            return;
        };
        let span = pending.span.clone();
        let _entered = span.enter();
        // The start count goes to the committer as a start mark (offsets only, the
        // watermark unchanged), so a run cut off by a crash, a shutdown or a rebalance
        // runs again as the next attempt with its own run id. The run does not wait for
        // it: one that ends within the committer's START_MARK_LINGER (20 ms) shares its
        // start's transaction, and a crash before the mark is committed (that linger
        // plus one transaction, about 30 ms) repeats this attempt and its run id; its
        // `running` record, in the same transaction or a later one, is then not visible
        // either. The same holds while the broker is away and no mark can commit: a run
        // interrupted before its mark committed publishes no `aborted` record, since its
        // id will run again.
        let start_committed = Arc::new(AtomicBool::new(false));
        let attempt = {
            let mut ledger = self.ledger.lock();
            let Some(book) = ledger.get_mut(&pending.partition) else {
                // Not reached: the ledger and `partitions` change together.
                if let Some(id) = &pending.execution_id {
                    self.kill_switch.unregister(id);
                }
                return;
            };
            let attempt = book.offsets.start(pending.offset);
            let _ = self.completions.send(Completion {
                partition: pending.partition,
                epoch: partition.epoch,
                committed: Some(start_committed.clone()),
                outputs: Vec::new(),
                moves_offsets: true,
                kept_once_started: None,
            });
            attempt
        };
        let context = ExecutionContext {
            run: self.run.clone(),
            attempt,
            kill: pending.kill.clone(),
            interrupt: partition.interrupt.clone(),
            updates: Some(self.update_sink(pending.partition, partition.epoch, &start_committed)),
            start_committed: Some(start_committed),
        };
        let catalog = self.catalog.clone();
        let finished = self.finished.clone();
        let topics = self.topics.clone();
        *running += 1;
        tracing::info!(flag = %pending.flag, pipeline = ?pending.pipeline, attempt, offset = pending.offset, "gating");
        tokio::spawn(async move {
            let _in_flight = metrics::run_started();
            let pipeline = pending
                .pipeline
                .as_deref()
                .and_then(|id| catalog.pipeline(id));
            let execution = if !context.interrupt.is_cancelled() {
                execute(&pending.change, pipeline, &catalog, &context).await
            } else {
                tracing::info!(flag = %pending.flag, offset = pending.offset, "not started: the partition was revoked or the worker is stopping");
                Execution {
                    records: Vec::new(),
                    command: None,
                }
            };
            let mut encoded: Vec<Output> = Vec::new();
            if let Some(command) = &execution.command {
                encoded.extend(execution.records.iter().map(|record| outputs::run_record(&topics, record)));
                encoded.push(outputs::flag_command(&topics, command));
            }
            let _ = finished.send(Finished { pending, execution, outputs: encoded });
        }.instrument(span.clone()));
    }

    /// An execution ended: commit it when final, then let its flag and a slot go.
    fn finish(
        &self,
        finished: Finished,
        partitions: &mut HashMap<i32, Partition>,
        queues: &mut FlagQueues<Pending>,
        ready: &mut VecDeque<Pending>,
        running: &mut usize,
        max_in_flight: usize,
    ) {
        let Finished {
            pending,
            execution,
            outputs,
        } = finished;
        if let Some(id) = &pending.execution_id {
            self.kill_switch.unregister(id);
        }
        let entered = pending.span.enter();
        if let Some(command) = &execution.command {
            tracing::info!(flag = %pending.flag, command = command.command.as_str(), reason = %command.reason, "gated");
            metrics::event_gated(command.command, command.reason_code);
            for record in &execution.records {
                let duration =
                    Duration::from_secs_f64(record.duration_seconds.unwrap_or(0.0).max(0.0));
                metrics::run_finished(record.status, record.resilience_score, duration);
                metrics::step_finished(record.status, duration);
            }
            self.complete(pending.partition, pending.epoch, pending.offset, outputs);
        } else {
            tracing::info!(flag = %pending.flag, offset = pending.offset, "interrupted; left for the next owner");
        }
        drop(entered);
        if max_in_flight == 0 {
            return;
        }
        if let Some(next) = queues.release(&pending.flag) {
            self.start(next, partitions, queues, ready, running, max_in_flight);
        }
        while *running < max_in_flight {
            let Some(next) = ready.pop_front() else { break };
            self.spawn(next, partitions, running);
        }
    }

    /// Marks an offset done and hands its outputs and the partition's offsets to the
    /// committer.
    fn complete(&self, partition: i32, epoch: u64, offset: i64, outputs: Vec<Output>) {
        let mut ledger = self.ledger.lock();
        let Some(book) = ledger.get_mut(&partition).filter(|b| b.epoch == epoch) else {
            return;
        };
        book.offsets.complete(offset);
        let _ = self.completions.send(Completion {
            partition,
            epoch,
            outputs,
            moves_offsets: true,
            committed: None,
            kept_once_started: None,
        });
    }

    /// Where an execution's run updates go: to the committer, as records of the
    /// execution's partition (a `running` record also registers its run with the kill
    /// switch).
    fn update_sink(&self, partition: i32, epoch: u64, started: &Arc<AtomicBool>) -> UpdateSink {
        let topics = self.topics.clone();
        let completions = self.completions.clone();
        let kill_switch = self.kill_switch.clone();
        let started = started.clone();
        UpdateSink::new(move |update: RunUpdate| {
            let record = &update.record;
            if record.status == crate::contract::RunStatus::Running {
                kill_switch.register_run(&record.run_id, &record.pipeline_execution_id);
            }
            let _ = completions.send(Completion {
                partition,
                epoch,
                outputs: vec![outputs::run_update(&topics, &update)],
                moves_offsets: false,
                committed: None,
                kept_once_started: Some(started.clone()),
            });
        })
    }
}

/// Checks the topics exist, creating them when `kafka.create_topics` is set. Waits for an
/// unreachable cluster (with backoff) until `shutdown` fires, which ends the wait early.
async fn ensure_topics(
    config: &Config,
    client: &ClientConfig,
    shutdown: &CancellationToken,
) -> Result<(), WorkerError> {
    let topics = &config.kafka.topics;
    let wanted = [
        topics.flag_changes.as_str(),
        topics.runs.as_str(),
        topics.commands.as_str(),
        topics.dead_letter.as_str(),
        topics.control.as_str(),
    ];
    let servers = config.kafka.bootstrap_servers.clone();
    let probe: BaseConsumer<RefusalWatch> = client
        .create_with_context(RefusalWatch::default())
        .map_err(WorkerError::Client)?;
    let metadata = {
        let mut delays = backon::BackoffBuilder::build(
            backon::ExponentialBuilder::default()
                .with_jitter()
                .with_max_delay(Duration::from_secs(10))
                .without_max_times(),
        );
        loop {
            match tokio::task::block_in_place(|| probe.fetch_metadata(None, Duration::from_secs(5)))
            {
                Ok(metadata) => break metadata,
                Err(error) if is_refusal(&error) => {
                    return Err(WorkerError::Refused {
                        servers,
                        message: error.to_string(),
                    });
                }
                // A refused login fails the fetch as a transport failure; the reason
                // comes as an error event.
                Err(_)
                    if let Some(message) = {
                        let _ = probe.poll(Duration::from_millis(50));
                        probe.context().refusal()
                    } =>
                {
                    return Err(WorkerError::Refused { servers, message });
                }
                Err(error) => {
                    let wait = delays.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(%error, %servers, ?wait, "Kafka not reachable yet; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = shutdown.cancelled() => return Ok(()),
                    }
                }
            }
        }
    };
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|t| {
            !metadata
                .topics()
                .iter()
                .any(|m| m.name() == *t && m.error().is_none())
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !config.kafka.create_topics {
        return Err(WorkerError::MissingTopics {
            servers,
            topics: missing.join(", "),
        });
    }
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        client.create().map_err(WorkerError::Client)?;
    let new: Vec<rdkafka::admin::NewTopic> = missing
        .iter()
        .map(|t| {
            rdkafka::admin::NewTopic::new(
                t,
                config.kafka.topic_partitions,
                rdkafka::admin::TopicReplication::Fixed(-1),
            )
        })
        .collect();
    let results = admin
        .create_topics(&new, &rdkafka::admin::AdminOptions::new())
        .await
        .map_err(WorkerError::Client)?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(%topic, "topic created"),
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(WorkerError::MissingTopics {
                    servers,
                    topics: format!("{topic} (cannot create: {code})"),
                });
            }
        }
    }
    Ok(())
}

/// A client context that remembers the cluster refusing us (a failed SASL login, say):
/// librdkafka reports it as an error event, served by polling, while the call that
/// met it fails as a mere transport failure.
#[derive(Default)]
struct RefusalWatch {
    refusal: Mutex<Option<String>>,
}

impl RefusalWatch {
    fn refusal(&self) -> Option<String> {
        self.refusal.lock().ok().and_then(|r| r.clone())
    }
}

impl ClientContext for RefusalWatch {
    fn error(&self, error: KafkaError, reason: &str) {
        if is_refusal(&error) {
            if let Ok(mut refusal) = self.refusal.lock() {
                *refusal = Some(reason.to_string());
            }
        } else {
            tracing::warn!(%error, reason, "Kafka client error");
        }
    }
}

impl ConsumerContext for RefusalWatch {}

fn is_refusal(error: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        error.rdkafka_error_code(),
        Some(
            Code::Authentication
                | Code::SaslAuthenticationFailed
                | Code::TopicAuthorizationFailed
                | Code::GroupAuthorizationFailed
                | Code::ClusterAuthorizationFailed
                | Code::InvalidArgument
        )
    )
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_string())
}
