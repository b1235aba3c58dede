//! The worker: consumes flag changes, runs their pipelines, and commits what they
//! produced together with the consumed offsets.
//!
//! [`run`] wires the parts and drives one loop, on the task that calls it:
//! - the consumer (cooperative-sticky, static membership by default), whose rebalance
//!   callback ([`rebalance`]) pauses new partitions until [`committed`] has read their
//!   offsets metadata;
//! - the [`scheduler::Scheduler`], which holds every piece of bookkeeping, admits records
//!   ([`admission`]) and starts executions as supervised tasks ([`supervisor`]);
//! - the transactional committer ([`crate::bus::transaction`]) on a thread of its own, fed
//!   over a channel: final records, commands, dead letters, start marks and run updates;
//! - the kill switch ([`crate::bus::kill_switch`]).
//!
//! The loop never depends on librdkafka's wake-up alone: a one-second timer arm makes it
//! go round and poll the consumer queue afresh even if a queue-non-empty wake-up was
//! missed (rust-rdkafka's own fallback wakes only every `max.poll.interval.ms / 2`). Each
//! pass ticks the `main loop` heartbeat behind `/healthz` and the
//! `chaosgate_main_loop_last_tick_seconds` gauge.
//!
//! Rebalances: a revoked partition's in-flight runs are interrupted (faults reverted) and
//! nothing of it is committed; its new owner runs those events again as the next attempt
//! and closes the cut-off runs ([`run_records`]). Shutdown runs every step against one deadline
//! ([`crate::bus::shutdown`]): interrupt and drain the runs, let the committer commit what
//! finished, stop the kill switch, leave the group.

mod admission;
mod committed;
mod rebalance;
mod run_records;
mod scheduler;
mod supervisor;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::chaos::run::{RunContext, reverts_in_progress, reverts_settled};
use crate::config::Config;
use crate::telemetry::heartbeat::Heartbeat;
use crate::telemetry::http::Readiness;
use crate::telemetry::metrics;

use super::client::client_config;
use super::flag_state::{self, FlagStates};
use super::kill_switch::{self, CATCH_UP_LIMIT, KillSwitch};
use super::offsets::Ledger;
use super::record::from_rdkafka;
use super::shutdown::Deadline;
use super::startup::{self, StartupError};
use super::transaction::{Assignment, Committer, Completion};

use admission::Wiring;
pub(crate) use rebalance::WorkerContext;
use scheduler::{FlowChange, Scheduler};

/// How often the loop goes round when nothing else happens.
const LOOP_TICK: Duration = Duration::from_secs(1);

/// Why the worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The cluster is not usable (refused us, topics missing, bad client settings).
    #[error(transparent)]
    Startup(#[from] StartupError),
    /// The consumer could not be created from the configuration.
    #[error("invalid Kafka consumer configuration: {0}")]
    Client(KafkaError),
    /// Subscribing failed.
    #[error("cannot subscribe to {topic}: {source}")]
    Subscribe {
        /// `kafka.topics.flag_changes`.
        topic: String,
        /// What the client said.
        source: KafkaError,
    },
    /// The transactional committer failed to start.
    #[error(transparent)]
    Commit(#[from] super::transaction::CommitError),
    /// `worker.max_in_flight` lets more events of one partition be unfinished than its
    /// offsets metadata can record.
    #[error(transparent)]
    Capacity(#[from] super::offsets::CapacityError),
    /// The consumer hit a fatal error (librdkafka's `rd_kafka_fatal_error()`, e.g.
    /// `FENCED_INSTANCE_ID` when another member joined with this worker's
    /// `group.instance.id`): it will never consume again. The worker stopped gracefully
    /// (runs interrupted, faults reverted, nothing of the fenced partitions committed);
    /// the caller starts a fresh worker (`chaosgate run` does, after a short backoff).
    #[error("the Kafka consumer failed fatally ({code:?}): {reason}")]
    ConsumerFatal {
        /// librdkafka's error code.
        code: rdkafka::types::RDKafkaErrorCode,
        /// librdkafka's description.
        reason: String,
    },
    /// The operating system refused a thread.
    #[error("cannot start the {name} thread: {source}")]
    Thread {
        /// The thread's name.
        name: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Runs the worker until `shutdown` fires, then stops within `worker.shutdown_grace`.
pub async fn run(
    config: Config,
    catalog: Arc<Catalog>,
    run: RunContext,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    super::offsets::check_capacity(config.worker.max_in_flight.max(1))?;
    let client = client_config(&config.kafka);
    let topics = config.kafka.topics.clone();
    startup::ensure_topics(&config, &client, &shutdown).await?;
    if shutdown.is_cancelled() {
        tracing::info!("stopped before Kafka could be reached");
        return Ok(());
    }
    let transactional_id = startup::transactional_id(&config);

    let (rebalance_tx, mut rebalance_rx) = mpsc::unbounded_channel();
    let assignment: Assignment = Arc::default();
    let context = WorkerContext::new(
        topics.flag_changes.clone(),
        assignment.clone(),
        rebalance_tx,
        readiness.clone(),
    );
    let consumer: Arc<StreamConsumer<WorkerContext>> = Arc::new(
        consumer_config(&config, &client, &transactional_id)
            .create_with_context(context)
            .map_err(WorkerError::Client)?,
    );
    let kill_switch = KillSwitch::default();
    let stop_control = CancellationToken::new();
    let control_task = tokio::spawn(kill_switch::listen(
        client.clone(),
        topics.control.clone(),
        kill_switch.clone(),
        stop_control.clone(),
    ));
    let states = FlagStates::new(client.clone(), topics.flag_state.clone());
    let states_task = tokio::spawn(flag_state::listen(states.clone(), stop_control.clone()));
    kill_switch.know_waiting(states.clone());
    // Every abort and approval published before this start is known before any event is
    // taken, and so is what every flag is owed.
    tokio::select! {
        result = tokio::time::timeout(CATCH_UP_LIMIT + LOOP_TICK, kill_switch.caught_up()) => {
            if result.is_err() {
                tracing::warn!("the kill switch did not catch up with the control topic; taking events anyway");
            }
        }
        () = shutdown.cancelled() => {}
    }
    tokio::select! {
        result = tokio::time::timeout(flag_state::CATCH_UP_LIMIT + LOOP_TICK, states.caught_up()) => {
            if result.is_err() {
                tracing::warn!("the flag-state reader did not catch up with its topic; taking events anyway");
            }
        }
        () = shutdown.cancelled() => {}
    }

    consumer
        .subscribe(&[&topics.flag_changes])
        .map_err(|source| WorkerError::Subscribe {
            topic: topics.flag_changes.clone(),
            source,
        })?;
    // A worker started after a fatal consumer error replaces that consumer.
    readiness.set_restarted();

    let (completions_tx, completions_rx) = std::sync::mpsc::channel::<Completion>();
    let ledger = Ledger::default();
    let committer_beat = Heartbeat::new("committer");
    let committer = Committer {
        config: producer_config(&config, &client, &transactional_id),
        topic: topics.flag_changes.clone(),
        ledger: ledger.clone(),
        group_metadata: Box::new({
            let consumer = consumer.clone();
            move || consumer.group_metadata()
        }),
        assignment: assignment.clone(),
        heartbeat: committer_beat.clone(),
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
        .map_err(|source| WorkerError::Thread {
            name: "chaosgate-commit",
            source,
        })?;

    let main_loop = Heartbeat::new("main loop");
    readiness.set_liveness_timeout(config.worker.liveness_timeout.duration());
    readiness.watch(main_loop.clone());
    readiness.watch(committer_beat);

    let assignment_view = assignment.clone();
    let (owed_tx, mut owed_rx) = mpsc::unbounded_channel();
    let mut scheduler = Scheduler::new(Wiring {
        topics: Arc::new(topics.clone()),
        group: config.kafka.group_id.clone(),
        max_message_bytes: config.kafka.max_message_bytes,
        max_in_flight: config.worker.max_in_flight.max(1),
        catalog,
        unrouted: config.worker.unrouted,
        run,
        ledger,
        assignment,
        kill_switch,
        states,
        owed_events: owed_tx,
        completions: completions_tx,
    });
    let (loaded_tx, mut loaded_rx) = mpsc::unbounded_channel();
    let mut tick = tokio::time::interval(LOOP_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    tracing::info!(topic = %topics.flag_changes, group = %config.kafka.group_id, %transactional_id, "worker started");
    let mut fatal = None;
    loop {
        main_loop.tick();
        metrics::main_loop_tick(unix_seconds());
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(event) = rebalance_rx.recv() => {
                on_rebalance(&mut scheduler, event, &consumer, &topics.flag_changes, &loaded_tx);
            }
            Some(loaded) = loaded_rx.recv() => scheduler.loaded(loaded),
            ended = scheduler.next_ended() => match ended {
                Ok(finished) => scheduler.finish(finished),
                Err(panicked) => scheduler.panicked(panicked),
            },
            Some(event) = owed_rx.recv() => scheduler.owed_event(event),
            message = consumer.recv() => match message {
                Ok(message) => {
                    // The callback reports a rebalance before the records it lets in.
                    while let Ok(event) = rebalance_rx.try_recv() {
                        on_rebalance(&mut scheduler, event, &consumer, &topics.flag_changes, &loaded_tx);
                    }
                    let partition = message.partition();
                    let offset = message.offset();
                    let record = from_rdkafka(&message);
                    drop(message);
                    scheduler.receive(partition, offset, record);
                }
                Err(error) => {
                    tracing::warn!(%error, "consume failed; retrying");
                    fatal = consumer.client().fatal_error();
                    if fatal.is_none() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            },
            // A fresh `recv` on every pass polls the queue itself: see the module docs.
            _ = tick.tick() => {
                fatal = consumer.client().fatal_error();
                scheduler.adopt_due();
            }
        }
        if let Some((code, reason)) = &fatal {
            // A fatal consumer never consumes again: stop, and let the caller start afresh.
            tracing::error!(?code, %reason, "the consumer failed fatally; stopping this worker so a fresh one can start");
            readiness.set_consumer_fatal(Some(format!("{code:?}: {reason}")));
            // Its partitions are no longer ours: nothing of them may be committed.
            if let Ok(mut owned) = assignment_view.lock() {
                owned.clear();
            }
            readiness.set_assigned(0);
            break;
        }
        apply_flow(&consumer, &topics.flag_changes, &mut scheduler);
        readiness.set_loading(scheduler.loading());
    }

    stop(
        Deadline::after(config.worker.shutdown_grace.duration()),
        scheduler,
        &readiness,
        Stopping {
            consumer,
            topic: topics.flag_changes.clone(),
            committer: committer_thread,
            stop_control,
            control_task,
            states_task,
        },
    )
    .await;
    readiness.unwatch_all();
    metrics::clear_consumer_lag();
    tracing::info!("worker stopped");
    match fatal {
        Some((code, reason)) => Err(WorkerError::ConsumerFatal { code, reason }),
        None => Ok(()),
    }
}

/// The consumer's settings: chaosgate's group defaults over the client settings, and
/// static membership (`group.instance.id` = the transactional id) unless switched off or
/// set in `kafka.properties`.
fn consumer_config(config: &Config, client: &ClientConfig, transactional_id: &str) -> ClientConfig {
    let mut consumer = client.clone();
    consumer
        .set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set(
            "statistics.interval.ms",
            property(config, "statistics.interval.ms", "15000"),
        )
        .set("partition.assignment.strategy", "cooperative-sticky");
    if config.worker.static_membership && !config.kafka.properties.contains_key("group.instance.id")
    {
        consumer.set("group.instance.id", transactional_id);
    }
    consumer
}

/// The transactional producer's settings. Half of `transaction.timeout.ms` bounds one
/// transaction attempt (see `bus::producer`). `retry.backoff.ms` is 5 ms: a transaction
/// begun right after the previous one's commit meets CONCURRENT_TRANSACTIONS until the
/// commit markers are written, and the Java client retries after 20 ms, not librdkafka's
/// 100 ms.
fn producer_config(config: &Config, client: &ClientConfig, transactional_id: &str) -> ClientConfig {
    let mut producer = client.clone();
    producer
        .set("transactional.id", transactional_id)
        .set(
            "transaction.timeout.ms",
            property(config, "transaction.timeout.ms", "60000"),
        )
        .set("linger.ms", "0")
        .set(
            "retry.backoff.ms",
            property(config, "retry.backoff.ms", "5"),
        );
    producer
}

/// `kafka.properties[key]`, else `default`.
fn property<'a>(config: &'a Config, key: &str, default: &'a str) -> &'a str {
    config
        .kafka
        .properties
        .get(key)
        .map_or(default, String::as_str)
}

/// What the stop sequence takes down after the scheduler.
struct Stopping {
    consumer: Arc<StreamConsumer<WorkerContext>>,
    topic: String,
    committer: std::thread::JoinHandle<()>,
    stop_control: CancellationToken,
    control_task: tokio::task::JoinHandle<()>,
    states_task: tokio::task::JoinHandle<()>,
}

/// The graceful stop, every step against `deadline` (see [`crate::bus::shutdown`]):
/// interrupt and drain the runs, let the committer commit what finished, stop the kill
/// switch, leave the group.
async fn stop(
    deadline: Deadline,
    mut scheduler: Scheduler,
    readiness: &Readiness,
    parts: Stopping,
) {
    let Stopping {
        consumer,
        topic,
        committer,
        stop_control,
        control_task,
        states_task,
    } = parts;
    readiness.set_stopping();
    tracing::info!(
        running = scheduler.running(),
        "shutting down: interrupting runs"
    );
    scheduler.drain();
    apply_flow(&consumer, &topic, &mut scheduler);
    while scheduler.running() > 0 {
        match deadline
            .step("drain the runs", scheduler.next_ended())
            .await
        {
            Some(Ok(finished)) => scheduler.finish(finished),
            Some(Err(panicked)) => scheduler.panicked(panicked),
            None => {
                scheduler.abandon();
                break;
            }
        }
    }
    // Reverts still in progress (a revert retried until its lease, one spawned when a run
    // was torn down) are awaited too, within the same grace: the runtime ending must not
    // be what cuts them off. Those the grace cuts off are named; their faults go to their
    // guards and leases, and to the event's next attempt.
    finish_reverts(&deadline).await;
    // The last sender of completions goes with the scheduler (and with the runs' update
    // sinks): the committer commits what it holds and ends.
    drop(scheduler);
    let committed = deadline
        .blocking("join the committer", move || committer.join())
        .await;
    if !matches!(committed, Some(Ok(()))) {
        tracing::warn!("the committer did not finish within the grace period");
    }
    stop_control.cancel();
    deadline.step("stop the kill switch", control_task).await;
    deadline
        .step("stop the flag-state reader", states_task)
        .await;
    deadline
        .blocking("leave the group", move || {
            consumer.unsubscribe();
            drop(consumer);
        })
        .await;
}

/// Waits, within `deadline`, for the reverts in progress in this process to end; names
/// those still going when it passes.
async fn finish_reverts(deadline: &Deadline) {
    let reverting = reverts_in_progress();
    if reverting.is_empty() {
        return;
    }
    tracing::info!(faults = ?reverting, "shutting down: waiting for reverts in progress");
    if deadline
        .step("finish the reverts in progress", reverts_settled())
        .await
        .is_none()
    {
        tracing::error!(
            faults = ?reverts_in_progress(),
            "worker.shutdown_grace ended with these reverts in progress; their faults may still be active (a guarded fault is reverted by its guard, a proxy fault ends with its lease, and the event's next attempt reverts what is left)"
        );
    }
}

/// Applies a rebalance; new partitions get their committed offsets read.
fn on_rebalance(
    scheduler: &mut Scheduler,
    event: rebalance::RebalanceEvent,
    consumer: &Arc<StreamConsumer<WorkerContext>>,
    topic: &str,
    loaded: &mpsc::UnboundedSender<committed::Loaded>,
) {
    scheduler.rebalance(&event);
    if let rebalance::RebalanceEvent::Assigned(new) = event
        && !new.is_empty()
    {
        let states = scheduler.flag_states();
        committed::spawn_read(
            consumer.clone(),
            topic.to_string(),
            new,
            loaded.clone(),
            states,
        );
    }
}

/// Tells librdkafka what the scheduler wants paused and resumed.
fn apply_flow(consumer: &StreamConsumer<WorkerContext>, topic: &str, scheduler: &mut Scheduler) {
    let change = scheduler.flow();
    if change == FlowChange::default() {
        return;
    }
    let list = |partitions: &[i32]| {
        let mut list = TopicPartitionList::new();
        for partition in partitions {
            list.add_partition(topic, *partition);
        }
        list
    };
    let mut failed = false;
    if !change.pause.is_empty()
        && let Err(error) = consumer.pause(&list(&change.pause))
    {
        tracing::warn!(%error, partitions = ?change.pause, "cannot pause partitions");
        failed = true;
    }
    if !change.resume.is_empty()
        && let Err(error) = consumer.resume(&list(&change.resume))
    {
        tracing::warn!(%error, partitions = ?change.resume, "cannot resume partitions");
        failed = true;
    }
    if failed {
        scheduler.flow_failed(&change);
    }
}

fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}
