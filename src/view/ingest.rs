//! Ingest: an exact projection of the committed topics into the store.
//!
//! The view reads `chaos-experiment-runs`, `flag-commands`, `flag-changes`,
//! `flag-changes-dlq` and `chaosgate-control` with `isolation.level=read_committed`, on
//! partitions it assigns itself (no consumer group: every replica reads everything), with
//! the worker's client settings ([`crate::bus::client::client_config`]).
//!
//! Rules that keep it exact:
//! - A batch of rows and the partitions' next offsets are written in ONE SQLite
//!   transaction, and a restart resumes from the stored offsets: a record is applied
//!   once, never twice, never skipped.
//! - Per `run_id` the record with the highest `(attempt, final over running, offset)`
//!   wins: a late `running` never overwrites a final record.
//! - A record that does not decode is counted, stored as an ingest problem (topic,
//!   partition, offset, reason) and skipped; it never stops ingest.
//! - Every applied row gets the next live-update sequence number (`seq`), stored with
//!   the row and published through [`IngestStatus::subscribe`] once committed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use rusqlite::{Connection, Transaction, params};
use serde::Serialize;
use tokio::sync::watch;

use crate::config::KafkaConfig;
use crate::contract::{CommandKind, KafkaMessage, ReasonCode};
use crate::view::decode::{self, Decoded, TopicRole};
use crate::view::store::{SqliteContext, Store, ViewError, to_millis};

/// Records applied per SQLite transaction, at most.
const MAX_BATCH: usize = 10_000;
/// How long a batch waits for more records once it has one.
const BATCH_WINDOW: Duration = Duration::from_millis(100);
/// How often partitions are looked for again (new topics, added partitions).
const METADATA_EVERY: Duration = Duration::from_secs(10);
/// How often lag is measured against the brokers' high watermarks.
const LAG_EVERY: Duration = Duration::from_secs(5);
/// Time allowed for a metadata or watermark request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One partition's lag behind its high watermark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionLag {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The next offset the view will read.
    pub next_offset: i64,
    /// The broker's high watermark when last asked.
    pub high_watermark: i64,
    /// `high_watermark - next_offset` (at least 0; transaction markers count).
    pub lag: i64,
}

struct StatusInner {
    seq: watch::Sender<u64>,
    caught_up: AtomicBool,
    records: AtomicU64,
    rows: AtomicU64,
    problems: AtomicU64,
    batches: AtomicU64,
    lag: Mutex<Vec<PartitionLag>>,
    failed: Mutex<Option<String>>,
}

/// What ingest has done so far; cheap to clone, read by `/readyz`, `/metrics` and SSE.
#[derive(Clone)]
pub struct IngestStatus {
    inner: Arc<StatusInner>,
}

impl std::fmt::Debug for IngestStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestStatus")
            .field("seq", &*self.inner.seq.borrow())
            .field("caught_up", &self.caught_up())
            .finish()
    }
}

impl Default for IngestStatus {
    fn default() -> Self {
        IngestStatus::new(0)
    }
}

impl IngestStatus {
    /// A status whose last committed sequence number is `seq`.
    pub fn new(seq: u64) -> IngestStatus {
        IngestStatus {
            inner: Arc::new(StatusInner {
                seq: watch::Sender::new(seq),
                caught_up: AtomicBool::new(false),
                records: AtomicU64::new(0),
                rows: AtomicU64::new(0),
                problems: AtomicU64::new(0),
                batches: AtomicU64::new(0),
                lag: Mutex::new(Vec::new()),
                failed: Mutex::new(None),
            }),
        }
    }

    /// The last committed sequence number, updated after each batch commits.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.seq.subscribe()
    }

    /// The last committed sequence number now.
    pub fn seq(&self) -> u64 {
        *self.inner.seq.borrow()
    }

    /// Whether ingest has reached, on every partition, the high watermark it saw when
    /// it started (for `/readyz`). Stays true once reached.
    pub fn caught_up(&self) -> bool {
        self.inner.caught_up.load(Ordering::Acquire)
    }

    /// Records read from Kafka (rows and problems alike) since start.
    pub fn records(&self) -> u64 {
        self.inner.records.load(Ordering::Relaxed)
    }

    /// Rows inserted or replaced since start.
    pub fn rows(&self) -> u64 {
        self.inner.rows.load(Ordering::Relaxed)
    }

    /// Records that could not be read since start.
    pub fn problems(&self) -> u64 {
        self.inner.problems.load(Ordering::Relaxed)
    }

    /// Transactions committed since start.
    pub fn batches(&self) -> u64 {
        self.inner.batches.load(Ordering::Relaxed)
    }

    /// Lag per partition, as last measured (every few seconds).
    pub fn lag(&self) -> Vec<PartitionLag> {
        self.inner.lag.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Why ingest stopped, if it stopped on an error (the store refused a write).
    pub fn failed(&self) -> Option<String> {
        self.inner.failed.lock().ok().and_then(|f| f.clone())
    }

    /// Waits until caught up (`true`), ingest failed or `timeout` passed (`false`).
    pub async fn wait_caught_up(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.caught_up() {
            if self.failed().is_some() || Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

/// A running ingest: stop it with [`Ingest::stop`].
pub struct Ingest {
    status: IngestStatus,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), ViewError>>>,
}

impl Ingest {
    /// Its status.
    pub fn status(&self) -> IngestStatus {
        self.status.clone()
    }

    /// Stops after the batch in hand commits, and waits for it.
    pub async fn stop(mut self) -> Result<(), ViewError> {
        self.stop.store(true, Ordering::Release);
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(|e| ViewError::Task(e.to_string()))?
            .map_err(|_| ViewError::Task("the ingest thread panicked".into()))?
    }

    /// Whether the ingest thread has ended (on an error: see [`IngestStatus::failed`]).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// The topics the view reads, from the worker's `[kafka.topics]`.
pub fn topics_of(kafka: &KafkaConfig) -> Vec<(String, TopicRole)> {
    let t = &kafka.topics;
    let mut topics = vec![
        (t.runs.clone(), TopicRole::Runs),
        (t.commands.clone(), TopicRole::Commands),
        (t.flag_changes.clone(), TopicRole::Changes),
        (t.dead_letter.clone(), TopicRole::DeadLetters),
        (t.control.clone(), TopicRole::Control),
    ];
    let mut seen = std::collections::HashSet::new();
    topics.retain(|(name, _)| seen.insert(name.clone()));
    topics
}

/// The consumer settings: the worker's client settings, `read_committed`, no group, no
/// commits (offsets live in the store), a bounded prefetch (view RSS).
fn consumer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = crate::bus::client::client_config(kafka);
    if !kafka.properties.contains_key("queued.max.messages.kbytes") {
        config.set("queued.max.messages.kbytes", "4096");
    }
    config
        .set("group.id", format!("{}-view", kafka.group_id))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false");
    config
}

/// Starts ingest on its own thread: assigns every partition of the view's topics, from
/// the offsets stored in `store` (the earliest where none is stored).
///
/// Errors: the consumer cannot be created (bad client settings) or the store cannot be
/// read.
pub fn start(kafka: &KafkaConfig, store: Store) -> Result<Ingest, ViewError> {
    let consumer: BaseConsumer = consumer_config(kafka).create().map_err(|e| {
        ViewError::BadRequest(format!("cannot create the view's Kafka consumer: {e}"))
    })?;
    let (offsets, seq) = store.read_blocking(|c| {
        let mut statement = c
            .prepare("SELECT topic, partition, next_offset FROM offsets")
            .what("read stored offsets")?;
        let offsets = statement
            .query_map([], |row| Ok(((row.get(0)?, row.get(1)?), row.get(2)?)))
            .what("read stored offsets")?
            .collect::<Result<HashMap<(String, i32), i64>, _>>()
            .what("read stored offsets")?;
        let seq: i64 = c
            .query_row(
                "SELECT IFNULL((SELECT value FROM meta WHERE key = 'seq'), 0)",
                [],
                |row| row.get(0),
            )
            .what("read the sequence number")?;
        Ok((offsets, seq))
    })?;
    let status = IngestStatus::new(u64::try_from(seq).unwrap_or(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut projection = Projection {
        consumer,
        store,
        status: status.clone(),
        roles: topics_of(kafka).into_iter().collect(),
        next: offsets,
        seq,
        assigned: BTreeMap::new(),
        targets: None,
    };
    let thread = {
        let stop = stop.clone();
        let status = status.clone();
        std::thread::Builder::new()
            .name("view-ingest".into())
            .spawn(move || {
                let result = projection.run(&stop);
                if let Err(err) = &result {
                    tracing::error!(error = %err, "view ingest stopped");
                    if let Ok(mut failed) = status.inner.failed.lock() {
                        *failed = Some(err.to_string());
                    }
                }
                result
            })
            .map_err(|e| ViewError::Task(format!("cannot start the ingest thread: {e}")))?
    };
    Ok(Ingest {
        status,
        stop,
        thread: Some(thread),
    })
}

/// A record read, waiting for its batch to commit.
struct Pending {
    role: TopicRole,
    topic: String,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    message: KafkaMessage,
}

/// The ingest loop's state.
struct Projection {
    consumer: BaseConsumer,
    store: Store,
    status: IngestStatus,
    roles: HashMap<String, TopicRole>,
    /// Next offset per partition, as committed in the store.
    next: HashMap<(String, i32), i64>,
    /// Last sequence number used.
    seq: i64,
    /// Partitions assigned, with the high watermark each had when first assigned.
    assigned: BTreeMap<(String, i32), i64>,
    /// Partitions still to reach their start high watermark (`None` before the first
    /// metadata answer).
    targets: Option<BTreeMap<(String, i32), i64>>,
}

impl Projection {
    fn run(&mut self, stop: &AtomicBool) -> Result<(), ViewError> {
        let mut last_metadata: Option<Instant> = None;
        let mut last_lag = Instant::now();
        let mut errors = 0u64;
        while !stop.load(Ordering::Acquire) {
            if last_metadata.is_none_or(|t| t.elapsed() >= METADATA_EVERY) {
                last_metadata = Some(Instant::now());
                if let Err(err) = self.assign_new_partitions() {
                    tracing::warn!(error = %err, "view ingest: cannot read topic metadata yet");
                }
            }
            let mut batch: Vec<Pending> = Vec::new();
            let mut window_end: Option<Instant> = None;
            while batch.len() < MAX_BATCH {
                let timeout = match window_end {
                    None => Duration::from_millis(100),
                    Some(end) => end.saturating_duration_since(Instant::now()),
                };
                match self.consumer.poll(timeout) {
                    None => break,
                    Some(Err(err)) => {
                        errors += 1;
                        if errors == 1 || errors.is_multiple_of(50) {
                            tracing::warn!(error = %err, errors, "view ingest: Kafka error");
                        }
                        break;
                    }
                    Some(Ok(message)) => {
                        let topic = message.topic().to_string();
                        let Some(role) = self.roles.get(&topic).copied() else {
                            continue;
                        };
                        batch.push(Pending {
                            role,
                            partition: message.partition(),
                            offset: message.offset(),
                            timestamp: message.timestamp().to_millis(),
                            message: crate::bus::record::from_rdkafka(&message),
                            topic,
                        });
                        window_end.get_or_insert_with(|| Instant::now() + BATCH_WINDOW);
                    }
                }
                if window_end.is_some_and(|end| Instant::now() >= end) {
                    break;
                }
            }
            if !batch.is_empty() {
                self.apply(batch)?;
            }
            self.check_caught_up();
            if last_lag.elapsed() >= LAG_EVERY {
                last_lag = Instant::now();
                self.measure_lag();
            }
        }
        Ok(())
    }

    /// Assigns partitions of the view's topics not assigned yet, from their stored
    /// offsets, and notes their high watermarks (the first time: the catch-up target).
    fn assign_new_partitions(&mut self) -> Result<(), ViewError> {
        let mut found: Vec<(String, i32)> = Vec::new();
        let topics: Vec<String> = self.roles.keys().cloned().collect();
        for topic in &topics {
            let metadata = self
                .consumer
                .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
                .map_err(|e| ViewError::Task(format!("metadata of topic {topic}: {e}")))?;
            for t in metadata.topics() {
                if t.error().is_some() {
                    continue;
                }
                for p in t.partitions() {
                    let key = (t.name().to_string(), p.id());
                    if !self.assigned.contains_key(&key) {
                        found.push(key);
                    }
                }
            }
        }
        let first = self.targets.is_none();
        let targets = self.targets.get_or_insert_with(BTreeMap::new);
        if found.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for (topic, partition) in &found {
            let offset = match self.next.get(&(topic.clone(), *partition)) {
                Some(next) => Offset::Offset(*next),
                None => Offset::Beginning,
            };
            list.add_partition_offset(topic, *partition, offset)
                .map_err(|e| ViewError::Task(format!("assign {topic}/{partition}: {e}")))?;
        }
        self.consumer
            .incremental_assign(&list)
            .map_err(|e| ViewError::Task(format!("assign partitions: {e}")))?;
        for (topic, partition) in found {
            let high = self
                .consumer
                .fetch_watermarks(&topic, partition, REQUEST_TIMEOUT)
                .map(|(_, high)| high)
                .unwrap_or(0);
            tracing::debug!(topic, partition, high, "view ingest: partition assigned");
            if first {
                targets.insert((topic.clone(), partition), high);
            }
            self.assigned.insert((topic, partition), high);
        }
        Ok(())
    }

    /// Marks the status caught up once every partition reached its target.
    fn check_caught_up(&mut self) {
        if self.status.caught_up() {
            return;
        }
        let Some(targets) = &mut self.targets else {
            return;
        };
        if !targets.is_empty() {
            let positions = self.consumer.position().ok();
            let position = |topic: &str, partition: i32| {
                positions
                    .as_ref()
                    .and_then(|p| p.find_partition(topic, partition))
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    })
                    .unwrap_or(-1)
            };
            let next = &self.next;
            targets.retain(|(topic, partition), high| {
                let at = next
                    .get(&(topic.clone(), *partition))
                    .copied()
                    .unwrap_or(0)
                    .max(position(topic, *partition));
                at < *high
            });
        }
        if targets.is_empty() {
            tracing::info!(seq = self.seq, "view ingest caught up");
            self.status.inner.caught_up.store(true, Ordering::Release);
        }
    }

    fn measure_lag(&mut self) {
        let mut lags = Vec::new();
        for (topic, partition) in self.assigned.keys() {
            let Ok((_, high)) = self
                .consumer
                .fetch_watermarks(topic, *partition, REQUEST_TIMEOUT)
            else {
                continue;
            };
            let next = self
                .next
                .get(&(topic.clone(), *partition))
                .copied()
                .unwrap_or(0);
            lags.push(PartitionLag {
                topic: topic.clone(),
                partition: *partition,
                next_offset: next,
                high_watermark: high,
                lag: (high - next).max(0),
            });
        }
        if let Ok(mut lag) = self.status.inner.lag.lock() {
            *lag = lags;
        }
    }

    /// Applies a batch and its offsets in one transaction, then publishes its counts
    /// and last sequence number.
    fn apply(&mut self, batch: Vec<Pending>) -> Result<(), ViewError> {
        let mut seq = self.seq;
        let records = batch.len() as u64;
        let (rows, problems, offsets) = self
            .store
            .write_blocking(|c| apply_batch(c, &batch, &mut seq))?;
        self.seq = seq;
        for (key, next) in offsets {
            self.next.insert(key, next);
        }
        let inner = &self.status.inner;
        inner.records.fetch_add(records, Ordering::Relaxed);
        inner.rows.fetch_add(rows, Ordering::Relaxed);
        inner.problems.fetch_add(problems, Ordering::Relaxed);
        inner.batches.fetch_add(1, Ordering::Relaxed);
        inner.seq.send_replace(u64::try_from(seq).unwrap_or(0));
        Ok(())
    }
}

/// Writes `batch` in one transaction: rows, problems, next offsets and the last
/// sequence number. Returns (rows applied, problems, next offsets).
#[allow(clippy::type_complexity)]
fn apply_batch(
    c: &mut Connection,
    batch: &[Pending],
    seq: &mut i64,
) -> Result<(u64, u64, HashMap<(String, i32), i64>), ViewError> {
    let tx = c.transaction().what("begin an ingest transaction")?;
    let mut rows = 0;
    let mut problems = 0;
    let mut offsets: HashMap<(String, i32), i64> = HashMap::new();
    let now = to_millis(Utc::now());
    for pending in batch {
        let position = (&pending.topic, pending.partition, pending.offset);
        match decode::decode(pending.role, &pending.message) {
            Ok(decoded) => {
                *seq += 1;
                if write_row(&tx, decoded, pending, *seq, now)? {
                    rows += 1;
                } else {
                    *seq -= 1;
                }
            }
            Err(reason) => {
                *seq += 1;
                problems += 1;
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO problems (topic, partition, \"offset\", seq, reason, at) \
                     VALUES (?, ?, ?, ?, ?, ?)",
                )
                .and_then(|mut s| {
                    s.execute(params![position.0, position.1, position.2, *seq, reason, now])
                })
                .what("store an ingest problem")?;
            }
        }
        offsets.insert(
            (pending.topic.clone(), pending.partition),
            pending.offset + 1,
        );
    }
    {
        let mut statement = tx
            .prepare_cached(
                "INSERT INTO offsets (topic, partition, next_offset) VALUES (?, ?, ?) \
                 ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
            )
            .what("prepare offsets")?;
        for ((topic, partition), next) in &offsets {
            statement
                .execute(params![topic, partition, next])
                .what("store an offset")?;
        }
    }
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('seq', ?) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [*seq],
    )
    .what("store the sequence number")?;
    tx.commit().what("commit an ingest transaction")?;
    Ok((rows, problems, offsets))
}

fn headers_json(message: &KafkaMessage) -> String {
    let headers: Vec<(String, String)> = message
        .headers
        .iter()
        .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    serde_json::to_string(&headers).unwrap_or_else(|_| "[]".into())
}

fn execution_status(reason: ReasonCode, command: CommandKind) -> &'static str {
    match reason {
        ReasonCode::Passed => "passed",
        ReasonCode::Failed => "failed",
        ReasonCode::Aborted => "aborted",
        _ if command == CommandKind::Enable => "passed",
        _ => "failed",
    }
}

/// Writes one decoded record; returns whether a row was inserted or replaced (a late
/// `running` record after a final one is not).
fn write_row(
    tx: &Transaction<'_>,
    decoded: Decoded,
    pending: &Pending,
    seq: i64,
    now: i64,
) -> Result<bool, ViewError> {
    let (topic, partition, offset) = (&pending.topic, pending.partition, pending.offset);
    match decoded {
        Decoded::Run(run) => {
            let r = &run.record;
            let value = String::from_utf8_lossy(pending.message.value.as_deref().unwrap_or(&[]))
                .into_owned();
            let not_reverted = r
                .faults
                .iter()
                .filter(|f| !f.reverted && f.started_at.is_some())
                .count() as i64;
            let changed = tx
                .prepare_cached(
                    "INSERT INTO runs (run_id, seq, attempt, is_final, status, pipeline_id, \
                     pipeline_execution_id, stage_id, stage_name, stage_type, step_id, step_name, \
                     experiment_id, experiment_name, flag_project, flag_environment, flag_key, \
                     trigger_event_id, score, expected, margin, started_at, ended_at, \
                     duration_seconds, probes_passed, probes_failed, summary, faults_not_reverted, \
                     trace_id, topic, partition, \"offset\", headers, value) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, \
                     ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, \
                     ?33, ?34) \
                     ON CONFLICT (run_id) DO UPDATE SET seq = excluded.seq, \
                     attempt = excluded.attempt, is_final = excluded.is_final, \
                     status = excluded.status, pipeline_id = excluded.pipeline_id, \
                     pipeline_execution_id = excluded.pipeline_execution_id, \
                     stage_id = excluded.stage_id, stage_name = excluded.stage_name, \
                     stage_type = excluded.stage_type, step_id = excluded.step_id, \
                     step_name = excluded.step_name, experiment_id = excluded.experiment_id, \
                     experiment_name = excluded.experiment_name, \
                     flag_project = excluded.flag_project, \
                     flag_environment = excluded.flag_environment, flag_key = excluded.flag_key, \
                     trigger_event_id = excluded.trigger_event_id, score = excluded.score, \
                     expected = excluded.expected, margin = excluded.margin, \
                     started_at = excluded.started_at, ended_at = excluded.ended_at, \
                     duration_seconds = excluded.duration_seconds, \
                     probes_passed = excluded.probes_passed, probes_failed = excluded.probes_failed, \
                     summary = excluded.summary, faults_not_reverted = excluded.faults_not_reverted, \
                     trace_id = excluded.trace_id, topic = excluded.topic, \
                     partition = excluded.partition, \"offset\" = excluded.\"offset\", \
                     headers = excluded.headers, value = excluded.value \
                     WHERE (excluded.attempt, excluded.is_final, excluded.\"offset\") > \
                     (runs.attempt, runs.is_final, runs.\"offset\")",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        r.run_id,
                        seq,
                        r.attempt,
                        decode::is_final(r.status),
                        r.status.as_str(),
                        r.pipeline_id,
                        r.pipeline_execution_id,
                        r.stage.id,
                        r.stage.name,
                        r.stage.stage_type,
                        r.step.id,
                        r.step.name,
                        r.experiment.id,
                        r.experiment.name,
                        r.flag.project,
                        r.flag.environment,
                        r.flag.key,
                        r.trigger_event_id,
                        r.resilience_score,
                        r.expected_resilience_score,
                        r.resilience_score.map(|s| s - r.expected_resilience_score),
                        to_millis(r.started_at),
                        r.ended_at.map(to_millis),
                        r.duration_seconds,
                        r.probes_passed,
                        r.probes_failed,
                        r.summary,
                        not_reverted,
                        run.trace_id,
                        topic,
                        partition,
                        offset,
                        headers_json(&pending.message),
                        value,
                    ])
                })
                .what("upsert a run")?;
            if changed > 0 {
                tx.prepare_cached(
                    "UPDATE command_steps SET found = 1 WHERE run_id = ? AND found = 0",
                )
                .and_then(|mut s| s.execute([&r.run_id]))
                .what("mark a command step found")?;
            }
            tx.prepare_cached(
                "INSERT INTO executions (pipeline_execution_id, pipeline_id, trigger_event_id, \
                 project, environment, flag, status, started_at) \
                 VALUES (?, ?, ?, ?, ?, ?, 'running', ?) \
                 ON CONFLICT (pipeline_execution_id) DO UPDATE \
                 SET started_at = min(started_at, excluded.started_at)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    r.pipeline_execution_id,
                    r.pipeline_id,
                    r.trigger_event_id,
                    r.flag.project,
                    r.flag.environment,
                    r.flag.key,
                    to_millis(r.started_at),
                ])
            })
            .what("upsert an execution")?;
            Ok(changed > 0)
        }
        Decoded::Command(command) => {
            let steps = serde_json::to_string(&command.steps).unwrap_or_else(|_| "[]".into());
            let issued = to_millis(command.issued_at);
            tx.prepare_cached(
                "INSERT OR REPLACE INTO commands (command_id, seq, command, reason, reason_code, \
                 dry_run, issued_at, pipeline_id, pipeline_execution_id, causation_event_id, \
                 project, environment, flag, steps, topic, partition, \"offset\") \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    command.command_id,
                    seq,
                    command.command.as_str(),
                    command.reason,
                    serde_json::to_value(command.reason_code)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    command.dry_run,
                    issued,
                    command.pipeline_id,
                    command.pipeline_execution_id,
                    command.causation_event_id,
                    command.project,
                    command.environment,
                    command.flag,
                    steps,
                    topic,
                    partition,
                    offset,
                ])
            })
            .what("store a command")?;
            {
                let mut statement = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO command_steps (command_id, run_id, issued_at, found) \
                         VALUES (?1, ?2, ?3, EXISTS (SELECT 1 FROM runs WHERE run_id = ?2))",
                    )
                    .what("prepare command steps")?;
                for step in &command.steps {
                    statement
                        .execute(params![command.command_id, step.run_id, issued])
                        .what("store a command step")?;
                }
            }
            if let (Some(execution), Some(pipeline)) =
                (&command.pipeline_execution_id, &command.pipeline_id)
            {
                tx.prepare_cached(
                    "INSERT INTO executions (pipeline_execution_id, pipeline_id, trigger_event_id, \
                     project, environment, flag, status, started_at, ended_at, command_id) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9) \
                     ON CONFLICT (pipeline_execution_id) DO UPDATE SET status = excluded.status, \
                     ended_at = excluded.ended_at, command_id = excluded.command_id",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        execution,
                        pipeline,
                        command.causation_event_id,
                        command.project,
                        command.environment,
                        command.flag,
                        execution_status(command.reason_code, command.command),
                        issued,
                        command.command_id,
                    ])
                })
                .what("finish an execution")?;
            }
            tx.prepare_cached("UPDATE changes SET answered = 1 WHERE event_id = ?")
                .and_then(|mut s| s.execute([&command.causation_event_id]))
                .what("mark a change answered")?;
            Ok(true)
        }
        Decoded::Change(change) => {
            let json = |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string());
            tx.prepare_cached(
                "INSERT OR REPLACE INTO changes (event_id, seq, project, environment, flag, kind, \
                 from_value, to_value, actor, pipeline_id, occurred_at, answered, topic, \
                 partition, \"offset\") \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, \
                 EXISTS (SELECT 1 FROM commands WHERE causation_event_id = ?1) \
                 OR EXISTS (SELECT 1 FROM dead_letters WHERE event_id = ?1), ?12, ?13, ?14)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    change.event_id,
                    seq,
                    change.project,
                    change.environment,
                    change.flag,
                    change.change.kind.as_str(),
                    json(&change.change.from),
                    json(&change.change.to),
                    change.actor,
                    change.pipeline_id,
                    to_millis(change.occurred_at),
                    topic,
                    partition,
                    offset,
                ])
            })
            .what("store a flag-change")?;
            Ok(true)
        }
        Decoded::DeadLetter(letter) => {
            let (source_topic, source_partition, source_offset) = match &letter.source {
                Some((t, p, o)) => (Some(t.clone()), Some(*p), Some(*o)),
                None => (None, None, None),
            };
            tx.prepare_cached(
                "INSERT OR REPLACE INTO dead_letters (topic, partition, \"offset\", seq, event_id, \
                 error_class, error_message, source_topic, source_partition, source_offset, key, \
                 at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    topic,
                    partition,
                    offset,
                    seq,
                    letter.event_id,
                    letter.error_class,
                    letter.error_message,
                    source_topic,
                    source_partition,
                    source_offset,
                    letter.key,
                    pending.timestamp.unwrap_or(now),
                ])
            })
            .what("store a dead letter")?;
            if let Some(event_id) = &letter.event_id {
                tx.prepare_cached("UPDATE changes SET answered = 1 WHERE event_id = ?")
                    .and_then(|mut s| s.execute([event_id]))
                    .what("mark a change answered")?;
            }
            Ok(true)
        }
        Decoded::Abort(abort, time) => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO aborts (topic, partition, \"offset\", seq, scope, id, \
                 reason, requested_by, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    topic,
                    partition,
                    offset,
                    seq,
                    decode::scope_name(abort.scope),
                    abort.id,
                    abort.reason,
                    abort.requested_by,
                    time.map(to_millis).or(pending.timestamp).unwrap_or(now),
                ])
            })
            .what("store an abort request")?;
            Ok(true)
        }
    }
}
