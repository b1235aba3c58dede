//! The worker as a user runs it, for tests on the real broker: a temp folder with a
//! config and a catalog, the real `chaosgate run` process, a plain producer for flag
//! changes, and a `read_committed` consumer that collects what the worker wrote.
//!
//! Every wait has a deadline and fails with what was seen so far and the end of each
//! worker's log, so a bug fails a test instead of hanging it.

#![allow(dead_code)]

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::task::JoinHandle;

use chaosgate::bus::record::{from_rdkafka, to_record};
use chaosgate::contract::flag_change::flag_change_event;
use chaosgate::contract::guard_record::GUARD_RECORD_TYPE;
use chaosgate::contract::hold_record::HOLD_RECORD_TYPE;
use chaosgate::contract::{
    Change, ChangeKind, CloudEvent, FlagChange, FlagCommand, GuardRecord, HoldRecord, KafkaMessage,
    RunRecord, RunStatus,
};

use super::kafka;

/// Process and log diagnostics for failure messages.
#[path = "diagnose.rs"]
pub mod diagnose;

/// The seven topics of one test.
#[derive(Debug, Clone)]
pub struct Topics {
    pub flag_changes: String,
    pub runs: String,
    pub commands: String,
    pub dead_letter: String,
    pub control: String,
    pub approved_flags: String,
    pub flag_state: String,
}

impl Topics {
    /// Unique names for test `name`.
    pub fn unique(name: &str) -> Topics {
        Topics {
            flag_changes: kafka::unique_topic(&format!("{name}-changes")),
            runs: kafka::unique_topic(&format!("{name}-runs")),
            commands: kafka::unique_topic(&format!("{name}-commands")),
            dead_letter: kafka::unique_topic(&format!("{name}-dlq")),
            control: kafka::unique_topic(&format!("{name}-control")),
            approved_flags: kafka::unique_topic(&format!("{name}-approved")),
            flag_state: kafka::unique_topic(&format!("{name}-state")),
        }
    }

    /// The seven names.
    pub fn all(&self) -> [&str; 7] {
        [
            &self.flag_changes,
            &self.runs,
            &self.commands,
            &self.dead_letter,
            &self.control,
            &self.approved_flags,
            &self.flag_state,
        ]
    }
}

/// Worker settings a test varies; the rest is fixed.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_in_flight: usize,
    pub max_message_bytes: usize,
    pub shutdown_grace: &'static str,
    /// librdkafka properties, on top of a short session timeout (so a killed worker's
    /// partitions move on within seconds).
    pub properties: Vec<(&'static str, String)>,
    /// `worker.unrouted`: `enable` (the default), `disable` or `dead_letter`.
    pub unrouted: &'static str,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_in_flight: 4,
            max_message_bytes: 1 << 20,
            shutdown_grace: "15s",
            properties: Vec::new(),
            unrouted: "enable",
        }
    }
}

/// One test's world: topics, group, a temp folder with the catalog and configs.
pub struct Harness {
    pub servers: String,
    pub topics: Topics,
    pub group: String,
    pub dir: tempfile::TempDir,
    pub partitions: i32,
    producer: FutureProducer,
    /// Each spawned worker's log, process id and process (shared with its [`Worker`]),
    /// for the state and exit status shown with log tails.
    spawned: std::sync::Mutex<Vec<(PathBuf, u32, SharedChild)>>,
}

impl Harness {
    /// Unique topics (created with `partitions` partitions) and group for test `name`.
    pub async fn new(servers: &str, name: &str, partitions: i32) -> Harness {
        let topics = Topics::unique(name);
        kafka::create_topics(servers, &topics.all(), partitions).await;
        Harness::for_topics(servers, name, partitions, topics)
    }

    /// A harness for `topics`, which the caller has created (on a mock cluster, say,
    /// which has no admin API).
    pub fn for_topics(servers: &str, name: &str, partitions: i32, topics: Topics) -> Harness {
        // WORKER_TEST_KEEP=1 keeps the folder (configs, catalog, worker logs).
        let dir = tempfile::Builder::new()
            .prefix(&format!("chaosgate-{name}-"))
            .disable_cleanup(std::env::var_os("WORKER_TEST_KEEP").is_some())
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir_all(dir.path().join("catalog")).expect("catalog dir");
        std::fs::create_dir_all(dir.path().join("markers")).expect("markers dir");
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", servers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "0")
            .create()
            .expect("producer");
        Harness {
            servers: servers.to_string(),
            topics,
            group: kafka::unique_topic(&format!("{name}-group")),
            dir,
            partitions,
            producer,
            spawned: Default::default(),
        }
    }

    /// Writes a catalog file.
    pub fn catalog_file(&self, name: &str, yaml: &str) {
        std::fs::write(self.dir.path().join("catalog").join(name), yaml).expect("catalog file");
    }

    /// A marker file path a `command` fault creates on inject and removes on revert.
    pub fn marker(&self, name: &str) -> PathBuf {
        self.dir.path().join("markers").join(name)
    }

    /// Marker files present now: faults still active (or never reverted).
    pub fn active_markers(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path().join("markers"))
            .expect("markers dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Writes a config file for one worker instance and returns its path.
    pub fn config(&self, instance: &str, settings: &Settings) -> PathBuf {
        let mut properties = vec![
            ("session.timeout.ms", "6000".to_string()),
            ("heartbeat.interval.ms", "1000".to_string()),
        ];
        for (key, value) in &settings.properties {
            properties.retain(|(k, _)| k != key);
            properties.push((key, value.clone()));
        }
        let mut text = format!(
            r#"[kafka]
bootstrap_servers = "{servers}"
group_id = "{group}"
transactional_id = "{group}-{instance}"
create_topics = true
topic_partitions = {partitions}
max_message_bytes = {max_bytes}

[kafka.topics]
flag_changes = "{changes}"
runs = "{runs}"
commands = "{commands}"
dead_letter = "{dlq}"
control = "{control}"
approved_flags = "{approved}"
flag_state = "{flag_state}"

[kafka.properties]
"client.id" = "chaosgate-test-{instance}"
"#,
            servers = self.servers,
            group = self.group,
            partitions = self.partitions,
            max_bytes = settings.max_message_bytes,
            changes = self.topics.flag_changes,
            runs = self.topics.runs,
            commands = self.topics.commands,
            dlq = self.topics.dead_letter,
            control = self.topics.control,
            approved = self.topics.approved_flags,
            flag_state = self.topics.flag_state,
        );
        for (key, value) in properties {
            let _ = writeln!(text, "\"{key}\" = \"{value}\"");
        }
        let _ = write!(
            text,
            r#"
[catalog]
path = "catalog"

[worker]
max_in_flight = {max_in_flight}
shutdown_grace = "{grace}"
fault_lease = "10s"
unrouted = "{unrouted}"

[http]
listen = "127.0.0.1:0"

[telemetry]
log_format = "text"
log_filter = "info,chaosgate=debug"
"#,
            max_in_flight = settings.max_in_flight,
            grace = settings.shutdown_grace,
            unrouted = settings.unrouted,
        );
        let path = self.dir.path().join(format!("{instance}.toml"));
        std::fs::write(&path, text).expect("config file");
        path
    }

    /// Starts `chaosgate run --config CONFIG`; its output goes to `INSTANCE-N.log`. The
    /// binary is this build's, or the one `TEST_CHAOSGATE_BIN` names (to show that a test
    /// fails on an older build).
    pub fn spawn(&self, instance: &str, config: &Path) -> Worker {
        let mut n = 1;
        let log = loop {
            let path = self.dir.path().join(format!("{instance}-{n}.log"));
            if !path.exists() {
                break path;
            }
            n += 1;
        };
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let binary = std::env::var_os("TEST_CHAOSGATE_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_chaosgate").into());
        let mut command = Command::new(binary);
        // Only the config file counts: no CHAOSGATE_* overrides from the caller's shell.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("CHAOSGATE_") {
                command.env_remove(name);
            }
        }
        let child = command
            .arg("run")
            .arg("--config")
            .arg(config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn chaosgate run");
        let pid = child.id();
        let child = Arc::new(Mutex::new(child));
        if let Ok(mut spawned) = self.spawned.lock() {
            spawned.push((log.clone(), pid, child.clone()));
        }
        Worker {
            child: Some(child),
            pid,
            log,
        }
    }

    /// The worker log files of this test, sorted.
    fn log_files(&self) -> Vec<PathBuf> {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "log"))
                    .collect()
            })
            .unwrap_or_default();
        logs.sort();
        logs
    }

    /// Every worker log of this test, one after another.
    pub fn logs(&self) -> String {
        let logs = self.log_files();
        logs.iter()
            .map(|log| std::fs::read_to_string(log).unwrap_or_default())
            .collect()
    }

    /// Why each worker of this test is where it is, for failure messages: for each worker
    /// log, the process's state (alive with each thread's state and a backtrace, exited
    /// with its signal or exit code, or gone) and the last
    /// [`diagnose::TAIL_ENTRIES`] entries of the log, sorted by tracing target:
    /// chaosgate's lines all shown, runs of librdkafka lines of one facility folded.
    pub fn log_tails(&self) -> String {
        let logs = self.log_files();
        let mut text = String::new();
        for log in logs {
            let content = std::fs::read_to_string(&log).unwrap_or_default();
            let (tail, librdkafka) = diagnose::folded_tail(&content, diagnose::TAIL_ENTRIES);
            let _ = writeln!(
                text,
                "--- {} ({} lines, {librdkafka} from librdkafka; last {} entries, runs of librdkafka lines folded)\n{}",
                log.display(),
                content.lines().count(),
                diagnose::TAIL_ENTRIES,
                self.process_state(&log),
            );
            text.push_str(&tail);
        }
        text
    }

    /// The worker process that writes `log`: alive (each thread's state from /proc and a
    /// gdb backtrace), exited (the signal or exit code), or gone.
    fn process_state(&self, log: &Path) -> String {
        let spawned = self.spawned.lock().ok().and_then(|s| {
            s.iter()
                .find(|(l, _, _)| l == log)
                .map(|(_, pid, child)| (*pid, child.clone()))
        });
        let Some((pid, child)) = spawned else {
            return "process unknown".into();
        };
        let mut child = child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        diagnose::describe_process(pid, Some(&mut child))
    }

    /// Produces a flag change in binary mode, keyed by its flag; returns (partition, offset).
    pub async fn produce_change(&self, change: &FlagChange) -> (i32, i64) {
        let message =
            flag_change_event(change, "/flag-service/test").to_binary(Some(&change.flag_key()));
        self.produce(&self.topics.flag_changes, &message).await
    }

    /// Produces `rounds` changes of each flag, round by round (the second round
    /// `update`s, the others `enable`s); returns their event ids in order.
    pub async fn produce_rounds(&self, flags: &[&str], rounds: usize) -> Vec<String> {
        let mut events = Vec::new();
        for round in 0..rounds {
            for flag in flags {
                let kind = if round == 1 {
                    ChangeKind::Update
                } else {
                    ChangeKind::Enable
                };
                let event = change(flag, kind, None);
                self.produce_change(&event).await;
                events.push(event.event_id);
            }
        }
        events
    }

    /// Produces raw bytes; returns (partition, offset).
    pub async fn produce(&self, topic: &str, message: &KafkaMessage) -> (i32, i64) {
        let delivered = self
            .producer
            .send(to_record(topic, message), Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
        (delivered.partition, delivered.offset)
    }

    /// Produces an approval request on the control topic.
    pub async fn produce_approval(&self, data: serde_json::Value) {
        self.produce_control(chaosgate::contract::control::APPROVAL_REQUEST_TYPE, data)
            .await;
    }

    /// Produces an abort request on the control topic.
    pub async fn produce_abort(&self, data: serde_json::Value) {
        self.produce_control(chaosgate::contract::control::ABORT_REQUEST_TYPE, data)
            .await;
    }

    /// Produces a control request of `event_type` on the control topic, flushed.
    async fn produce_control(&self, event_type: &str, data: serde_json::Value) {
        let event = CloudEvent {
            id: uuid::Uuid::new_v4().to_string(),
            source: "/test/oncall".to_string(),
            event_type: event_type.to_string(),
            time: Some(chrono::Utc::now()),
            subject: None,
            extensions: Default::default(),
            data,
        };
        self.produce(&self.topics.control, &event.to_binary(None))
            .await;
        self.producer
            .flush(Duration::from_secs(10))
            .expect("flush control request");
    }

    /// Starts collecting runs, commands and dead letters with a `read_committed` consumer.
    pub fn collect(&self) -> Collector {
        Collector::start(&self.servers, &self.topics, self.partitions)
    }

    /// Waits until `done` holds for what `collector` saw, or fails with a snapshot.
    pub async fn wait_for(
        &self,
        collector: &Collector,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Outputs) -> bool,
    ) -> Outputs {
        let deadline = Instant::now() + timeout;
        loop {
            let outputs = collector.snapshot();
            if done(&outputs) {
                return outputs;
            }
            if Instant::now() >= deadline {
                panic!(
                    "waited {timeout:?} for {what}; saw {}\n{}",
                    outputs.describe(),
                    self.log_tails()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A spawned worker process, shared by its [`Worker`] and the harness (which reads its
/// exit status for failure messages; `Child` keeps the status once reaped).
type SharedChild = Arc<Mutex<Child>>;

/// A running `chaosgate run`; SIGKILLed when dropped.
pub struct Worker {
    child: Option<SharedChild>,
    pid: u32,
    pub log: PathBuf,
}

impl Worker {
    fn pid(&self) -> i32 {
        assert!(self.child.is_some(), "worker already reaped");
        i32::try_from(self.pid).expect("pid")
    }

    /// The worker's process id.
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid());
    }

    /// SIGKILLs the worker and reaps it.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.take() {
            let mut child = child
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits up to `timeout` for the worker to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self
                .child
                .as_ref()?
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .try_wait();
            if let Ok(Some(status)) = status {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The worker's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The address of the worker's HTTP endpoints, from its "serving /healthz" log line
    /// (text or JSON); the configs ask for port 0.
    pub async fn http_address(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log_text();
            if let Some(line) = log.lines().find(|l| l.contains("serving /healthz")) {
                if let Ok(json) = serde_json::from_str::<serde_json::Value>(line) {
                    return json["addr"].as_str().expect("addr field").to_string();
                }
                let at = line.find("addr=").expect("addr field") + 5;
                return line[at..]
                    .split_whitespace()
                    .next()
                    .expect("addr")
                    .to_string();
            }
            assert!(Instant::now() < deadline, "no endpoints in the log:\n{log}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One record read back, with where it was and when the test saw it.
#[derive(Debug, Clone)]
pub struct Received<T> {
    pub partition: i32,
    pub offset: i64,
    pub seen: Instant,
    /// The record's Kafka headers (CloudEvents attributes, `traceparent`).
    pub headers: Vec<(String, Vec<u8>)>,
    pub value: T,
}

/// Everything read back so far.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    pub runs: Vec<Received<RunRecord>>,
    pub holds: Vec<Received<HoldRecord>>,
    pub guards: Vec<Received<GuardRecord>>,
    pub commands: Vec<Received<FlagCommand>>,
    pub dead_letters: Vec<Received<KafkaMessage>>,
    /// Records on the run or command topics that did not decode (always a bug).
    pub garbage: Vec<String>,
}

impl Outputs {
    /// Commands answering `event_id`.
    pub fn commands_for(&self, event_id: &str) -> Vec<&FlagCommand> {
        self.commands
            .iter()
            .map(|c| &c.value)
            .filter(|c| c.causation_event_id == event_id)
            .collect()
    }

    /// Run records of `event_id` (every status).
    pub fn runs_for(&self, event_id: &str) -> Vec<&RunRecord> {
        self.runs
            .iter()
            .map(|r| &r.value)
            .filter(|r| r.trigger_event_id == event_id)
            .collect()
    }

    /// Final (not `running`) run records of `event_id`.
    pub fn final_runs_for(&self, event_id: &str) -> Vec<&RunRecord> {
        self.runs_for(event_id)
            .into_iter()
            .filter(|r| r.status != RunStatus::Running)
            .collect()
    }

    /// Whether every event in `event_ids` has a command.
    pub fn all_commanded(&self, event_ids: &[String]) -> bool {
        let answered: HashSet<&str> = self
            .commands
            .iter()
            .map(|c| c.value.causation_event_id.as_str())
            .collect();
        event_ids.iter().all(|e| answered.contains(e.as_str()))
    }

    /// A short account for failure messages.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "{} run records, {} commands, {} dead letters, {} undecodable\n",
            self.runs.len(),
            self.commands.len(),
            self.dead_letters.len(),
            self.garbage.len()
        );
        for run in &self.runs {
            let r = &run.value;
            let _ = writeln!(
                text,
                "  run {} event {} step {} attempt {} {} {}",
                &r.run_id[..8],
                r.trigger_event_id,
                r.step.id,
                r.attempt,
                r.status.as_str(),
                r.summary.as_deref().unwrap_or("")
            );
        }
        for command in &self.commands {
            let c = &command.value;
            let _ = writeln!(
                text,
                "  command {} event {} {} ({})",
                c.command.as_str(),
                c.causation_event_id,
                c.flag,
                c.reason
            );
        }
        text
    }
}

/// A background `read_committed` consumer of the run, command and dead-letter topics.
pub struct Collector {
    outputs: Arc<Mutex<Outputs>>,
    task: JoinHandle<()>,
}

impl Collector {
    fn start(servers: &str, topics: &Topics, partitions: i32) -> Collector {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", servers)
            .set("group.id", kafka::unique_topic("collector"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .expect("collector consumer");
        let mut assignment = TopicPartitionList::new();
        for topic in [&topics.runs, &topics.commands, &topics.dead_letter] {
            for partition in 0..partitions {
                assignment
                    .add_partition_offset(topic, partition, Offset::Beginning)
                    .expect("assignment");
            }
        }
        consumer.assign(&assignment).expect("assign");
        let outputs = Arc::new(Mutex::new(Outputs::default()));
        let sink = outputs.clone();
        let topics = topics.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok(message) = consumer.recv().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let topic = message.topic().to_string();
                let partition = message.partition();
                let offset = message.offset();
                let record = from_rdkafka(&message);
                let seen = Instant::now();
                let mut outputs = sink.lock().expect("outputs");
                if topic == topics.dead_letter {
                    outputs.dead_letters.push(Received {
                        partition,
                        offset,
                        seen,
                        headers: record.headers.clone(),
                        value: record,
                    });
                    continue;
                }
                let event = CloudEvent::decode(&record);
                let event_type = event
                    .as_ref()
                    .map(|e| e.event_type.clone())
                    .unwrap_or_default();
                let data = event.map(|event| event.data).map_err(|e| e.to_string());
                let headers = record.headers.clone();
                let outputs = &mut *outputs;
                let garbage = &mut outputs.garbage;
                // Decodes the data as `T` into `into`, or says why into `garbage`.
                fn keep<T: serde::de::DeserializeOwned>(
                    data: Result<serde_json::Value, String>,
                    into: &mut Vec<Received<T>>,
                    garbage: &mut Vec<String>,
                    (partition, offset, seen, headers): (i32, i64, Instant, Vec<(String, Vec<u8>)>),
                    topic: &str,
                ) {
                    match data
                        .and_then(|d| serde_json::from_value::<T>(d).map_err(|e| e.to_string()))
                    {
                        Ok(value) => into.push(Received {
                            partition,
                            offset,
                            seen,
                            headers,
                            value,
                        }),
                        Err(e) => garbage.push(format!("{topic}@{offset}: {e}")),
                    }
                }
                let at = (partition, offset, seen, headers);
                if topic == topics.runs && event_type == HOLD_RECORD_TYPE {
                    keep(data, &mut outputs.holds, garbage, at, &topic);
                } else if topic == topics.runs && event_type == GUARD_RECORD_TYPE {
                    keep(data, &mut outputs.guards, garbage, at, &topic);
                } else if topic == topics.runs {
                    keep(data, &mut outputs.runs, garbage, at, &topic);
                } else {
                    keep(data, &mut outputs.commands, garbage, at, &topic);
                }
            }
        });
        Collector { outputs, task }
    }

    /// What was read so far.
    pub fn snapshot(&self) -> Outputs {
        self.outputs.lock().expect("outputs").clone()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP listener on loopback that accepts and drops connections, for `tcp` probes.
pub struct Listener {
    pub address: String,
    task: JoinHandle<()>,
}

impl Listener {
    pub async fn start() -> Listener {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind listener");
        let address = listener.local_addr().expect("address").to_string();
        let task = tokio::spawn(async move {
            loop {
                if let Ok((stream, _)) = listener.accept().await {
                    drop(stream);
                }
            }
        });
        Listener { address, task }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback address nothing listens on (a probe against it fails at once).
pub fn closed_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    drop(listener);
    address
}

/// An experiment: one `command` fault that creates `marker` for `duration`, judged by a
/// `tcp` probe against `probe_address` polled while the fault is active.
pub fn experiment_yaml(id: &str, duration: &str, marker: &Path, probe_address: &str) -> String {
    let marker = marker.display();
    format!(
        r#"kind: experiment
id: {id}
timeout: 5m
faults:
  - name: marker
    weight: 5
    duration: {duration}
    command:
      inject:
        argv: [touch, "{marker}"]
      revert:
        argv: [rm, -f, "{marker}"]
probes:
  - name: listener-answers
    mode: on_chaos
    run_properties:
      timeout: 2s
      polling_interval: 250ms
    tcp:
      address: "{probe_address}"
"#
    )
}

/// A pipeline with one `feature_flag` stage `chaos` whose steps run `experiments` (step id
/// = experiment id), routed by `flag_glob` (or explicit-only when `None`: no routes and
/// `allow_explicit: true`).
pub fn pipeline_yaml(id: &str, flag_glob: Option<&str>, experiments: &[&str]) -> String {
    let routes = match flag_glob {
        Some(glob) => format!("routes:\n  - environment: test\n    flag: \"{glob}\"\n"),
        None => "allow_explicit: true\n".to_string(),
    };
    let mut steps = String::new();
    for experiment in experiments {
        let _ = write!(
            steps,
            "      - id: {experiment}\n        experiment: {experiment}\n        expected_resilience_score: 80\n"
        );
    }
    format!(
        "kind: pipeline\nid: {id}\n{routes}stages:\n  - id: chaos\n    type: feature_flag\n    steps:\n{steps}"
    )
}

/// A flag change of `flag` in project `test`, environment `test`, with a fresh event id.
pub fn change(flag: &str, kind: ChangeKind, pipeline_id: Option<&str>) -> FlagChange {
    FlagChange {
        event_id: uuid::Uuid::new_v4().to_string(),
        occurred_at: chrono::Utc::now(),
        project: "test".into(),
        environment: "test".into(),
        flag: flag.into(),
        change: Change {
            kind,
            from: Some(serde_json::Value::Bool(kind != ChangeKind::Enable)),
            to: Some(serde_json::Value::Bool(kind == ChangeKind::Enable)),
        },
        pipeline_id: pipeline_id.map(str::to_string),
        actor: Some("tester@example.com".into()),
        account: None,
        value_format: None,
    }
}

/// The processes whose environment holds `name=value` (a mark a test sets on the
/// processes it starts, inherited by their children). A zombie's environ reads empty, so
/// only running processes are listed.
pub fn pids_with_env(name: &str, value: &str) -> Vec<i32> {
    let needle = format!("{name}={value}");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        if environ
            .split(|b| *b == 0)
            .any(|var| var == needle.as_bytes())
        {
            pids.push(pid);
        }
    }
    pids
}
