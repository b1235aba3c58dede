//! The view on the real broker, for tests and benches: crafted records published with a
//! plain producer, ingest into a store, and waits with deadlines that fail with what was
//! seen.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rusqlite::Connection;

use chaosgate::config::KafkaConfig;
use chaosgate::contract::flag_change::{FLAG_CHANGE_TYPE, flag_change_example};
use chaosgate::contract::flag_command::{FLAG_COMMAND_TYPE, flag_command_example};
use chaosgate::contract::run_record::{RUN_RECORD_TYPE, run_record_example};
use chaosgate::contract::{
    CloudEvent, FlagChange, FlagCommand, KafkaMessage, RunRecord, RunStatus, StepSummary, ids,
};
use chaosgate::view::store::ViewError;
use chaosgate::view::{Ingest, Location, Store, ingest};

/// Kafka settings naming `topics` (runs, commands, changes, dead letters, control).
pub fn kafka_config(servers: &str, topics: [&str; 5]) -> KafkaConfig {
    let mut config: KafkaConfig = toml::from_str(&format!(
        "bootstrap_servers = \"{servers}\"\n[topics]\nruns = \"{}\"\ncommands = \"{}\"\n\
         flag_changes = \"{}\"\ndead_letter = \"{}\"\ncontrol = \"{}\"\n",
        topics[0], topics[1], topics[2], topics[3], topics[4]
    ))
    .expect("kafka config");
    config
        .properties
        .insert("client.id".into(), "chaosgate-view-test".into());
    config
}

/// Five fresh topics (runs, commands, changes, dead letters, control) on the broker,
/// named after `name`, with 2 partitions each.
pub async fn topics(servers: &str, name: &str) -> [String; 5] {
    let names = ["runs", "commands", "changes", "dlq", "control"]
        .map(|t| crate::kafka::unique_topic(&format!("{name}-{t}")));
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    crate::kafka::create_topics(servers, &refs, 2).await;
    names
}

/// `topics` as the `&str`s [`kafka_config`] takes.
pub fn refs(topics: &[String; 5]) -> [&str; 5] {
    [&topics[0], &topics[1], &topics[2], &topics[3], &topics[4]]
}

/// A store at `location` and ingest into it from `kafka`.
pub fn start(kafka: &KafkaConfig, location: &Location) -> (Store, Ingest) {
    let store = Store::open(location).expect("open store");
    let ingest = ingest::start(kafka, store.clone()).expect("start ingest");
    (store, ingest)
}

/// Polls `probe` on `store` until it returns `Some`, or fails after `timeout` with the
/// last answer described by `what`.
pub async fn wait_for<T: Send + 'static>(
    store: &Store,
    what: &str,
    timeout: Duration,
    probe: impl Fn(&Connection) -> Result<Option<T>, ViewError> + Send + Sync + Clone + 'static,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let probe = probe.clone();
        match store.read(move |c| probe(c)).await {
            Ok(Some(value)) => return value,
            Ok(None) => {}
            Err(err) => panic!("waiting for {what}: {err}"),
        }
        assert!(Instant::now() < deadline, "waited {timeout:?} for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A producer that batches (for many crafted records).
pub fn producer(servers: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .create()
        .expect("producer")
}

/// Sends `message` to `topic` (waiting while the producer's queue is full).
pub fn send(producer: &BaseProducer, topic: &str, message: &KafkaMessage) {
    let headers = message.headers.iter().fold(
        rdkafka::message::OwnedHeaders::new_with_capacity(message.headers.len()),
        |acc, (key, value)| {
            acc.insert(rdkafka::message::Header {
                key,
                value: Some(value.as_slice()),
            })
        },
    );
    let mut record: BaseRecord<'_, Vec<u8>, Vec<u8>> = BaseRecord::to(topic).headers(headers);
    if let Some(key) = &message.key {
        record = record.key(key);
    }
    if let Some(value) = &message.value {
        record = record.payload(value);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                back,
            )) => {
                record = back;
                producer.poll(Duration::from_millis(10));
            }
            Err((err, _)) => panic!("produce to {topic}: {err}"),
        }
    }
}

/// Flushes `producer`.
pub fn flush(producer: &BaseProducer) {
    producer.flush(Duration::from_secs(60)).expect("flush");
}

fn event(event_type: &str, id: String, data: serde_json::Value) -> CloudEvent {
    CloudEvent {
        id,
        source: "/chaosgate/test".into(),
        event_type: event_type.into(),
        time: Some(Utc::now()),
        subject: None,
        extensions: Default::default(),
        data,
    }
}

/// A run record of `pipeline`'s step `step` for the flag-change `event_id`.
pub fn run_record(
    event_id: &str,
    pipeline: &str,
    step: &str,
    attempt: u32,
    status: RunStatus,
    started_at: DateTime<Utc>,
) -> RunRecord {
    let mut record = run_record_example();
    record.run_id = ids::run_id(event_id, pipeline, "canary", step, attempt, 0);
    record.attempt = attempt;
    record.status = status;
    record.pipeline_id = pipeline.into();
    record.pipeline_execution_id = ids::pipeline_execution_id(event_id, pipeline);
    record.step.id = step.into();
    record.step.name = step.into();
    record.trigger_event_id = event_id.into();
    record.started_at = started_at;
    if status == RunStatus::Running {
        record.resilience_score = None;
        record.ended_at = None;
        record.duration_seconds = None;
        record.faults.clear();
        record.probes.clear();
        record.summary = None;
    } else {
        record.ended_at = Some(started_at + chrono::Duration::seconds(30));
        record.resilience_score = Some(if status == RunStatus::Passed {
            90.0
        } else {
            40.0
        });
        record.summary = Some(format!("{} by test", status.as_str()));
    }
    record
}

/// A run record as the worker publishes it (binary mode, keyed by run id).
pub fn run_message(record: &RunRecord) -> KafkaMessage {
    event(
        RUN_RECORD_TYPE,
        format!("{}-{}", record.run_id, record.status.as_str()),
        serde_json::to_value(record).expect("record json"),
    )
    .to_binary(Some(&record.run_id))
}

/// The flag command answering `event_id` with `runs` as its steps.
pub fn command(
    event_id: &str,
    pipeline: &str,
    runs: &[&RunRecord],
    at: DateTime<Utc>,
) -> FlagCommand {
    let mut command = flag_command_example();
    command.command_id = ids::command_id(event_id);
    command.causation_event_id = event_id.into();
    command.pipeline_id = Some(pipeline.into());
    command.pipeline_execution_id = Some(ids::pipeline_execution_id(event_id, pipeline));
    command.issued_at = at;
    command.steps = runs
        .iter()
        .map(|r| StepSummary {
            stage_id: r.stage.id.clone(),
            step_id: r.step.id.clone(),
            run_id: r.run_id.clone(),
            status: r.status,
            resilience_score: r.resilience_score,
            expected_resilience_score: r.expected_resilience_score,
            summary: r.summary.clone().unwrap_or_default(),
        })
        .collect();
    let passed = runs.iter().all(|r| r.status == RunStatus::Passed);
    command.command = if passed {
        chaosgate::contract::CommandKind::Enable
    } else {
        chaosgate::contract::CommandKind::Disable
    };
    command.reason_code = if passed {
        chaosgate::contract::ReasonCode::Passed
    } else {
        chaosgate::contract::ReasonCode::Failed
    };
    command
}

/// A flag command as the worker publishes it.
pub fn command_message(command: &FlagCommand) -> KafkaMessage {
    event(
        FLAG_COMMAND_TYPE,
        command.command_id.clone(),
        serde_json::to_value(command).expect("command json"),
    )
    .to_binary(Some(&format!(
        "{}/{}/{}",
        command.project, command.environment, command.flag
    )))
}

/// A flag-change of the example flag with `event_id`, at `at`.
pub fn change(event_id: &str, at: DateTime<Utc>) -> FlagChange {
    let mut change = flag_change_example();
    change.event_id = event_id.into();
    change.occurred_at = at;
    change
}

/// A flag-change as a flag service publishes it.
pub fn change_message(change: &FlagChange) -> KafkaMessage {
    event(
        FLAG_CHANGE_TYPE,
        change.event_id.clone(),
        serde_json::to_value(change).expect("change json"),
    )
    .to_binary(Some(&change.flag_key()))
}

/// The sum of the next offsets stored in the view database `db` (records applied when
/// every partition started at offset 0 and holds no transaction markers); 0 while the
/// file cannot be read.
pub fn applied_offsets(db: &std::path::Path) -> i64 {
    rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| {
            c.query_row("SELECT IFNULL(SUM(next_offset), 0) FROM offsets", [], |r| {
                r.get(0)
            })
        })
        .unwrap_or(0)
}

/// Starts the real `chaosgate view --config CONFIG --db DB` (plus `extra` arguments), its
/// output appended to `log`, without the caller's `RUST_LOG`.
pub fn spawn_view(
    config: &std::path::Path,
    db: &std::path::Path,
    log: &std::path::Path,
    extra: &[&str],
) -> std::process::Child {
    spawn_view_of(
        std::path::Path::new(env!("CARGO_BIN_EXE_chaosgate")),
        config,
        db,
        log,
        extra,
    )
}

/// As [`spawn_view`], with the `chaosgate` binary at `binary`.
pub fn spawn_view_of(
    binary: &std::path::Path,
    config: &std::path::Path,
    db: &std::path::Path,
    log: &std::path::Path,
    extra: &[&str],
) -> std::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("view log");
    chaosgate_command_of(binary)
        .arg("view")
        .args(extra)
        .arg("--config")
        .arg(config)
        .arg("--db")
        .arg(db)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("view log"))
        .stderr(log)
        .spawn()
        .expect("spawn chaosgate view")
}

/// The `chaosgate` binary as a command whose configuration is the config file alone: no
/// `CHAOSGATE_*` override from the caller's shell (`scripts/test.sh` exports
/// `CHAOSGATE_CACHE`, which the config would reject as an unknown key) and no `RUST_LOG`.
pub fn chaosgate_command() -> std::process::Command {
    chaosgate_command_of(std::path::Path::new(env!("CARGO_BIN_EXE_chaosgate")))
}

/// As [`chaosgate_command`], with the `chaosgate` binary at `binary` (a bench's baseline
/// build).
pub fn chaosgate_command_of(binary: &std::path::Path) -> std::process::Command {
    let mut command = std::process::Command::new(binary);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CHAOSGATE_") {
            command.env_remove(name);
        }
    }
    command.env_remove("RUST_LOG");
    command
}

/// Times `n` GET requests of `url(i)` with `http`, each whole (status checked as a
/// success, body read and not empty), for the view's benches.
pub async fn time_gets(
    http: &reqwest::Client,
    n: usize,
    url: impl Fn(usize) -> String,
) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let url = url(i);
        let started = Instant::now();
        let response = http.get(&url).send().await.expect("request");
        assert!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        let body = response.bytes().await.expect("body");
        samples.push(started.elapsed());
        assert!(!body.is_empty(), "{url}: empty body");
    }
    samples
}
