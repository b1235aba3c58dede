//! Worker benchmarks against the real broker (`KAFKA_BOOTSTRAP_SERVERS`, default
//! 127.0.0.1:19092). Prints figures and their goals; it is not a pass/fail test.
//!
//! 1. The worker's pure Kafka path against a pass-through baseline in the same run:
//!    flag changes with no pipeline (`enable`, reason `no_pipeline`) and `disable`
//!    requests (reason `requested`), which run no experiment and write one command
//!    each. The baseline is a plain rdkafka consume -> transactional produce writing
//!    one message per event with the offsets in the transaction, with the same producer
//!    settings and commit path as the worker's committer. Goal: ratio >= 0.8.
//! 2. CPU per minimal gated event: one zero-duration `network` fault on the embedded
//!    fault proxy and one `tcp` probe against a local listener, a backlog consumed at
//!    full speed. Goal: < 150 us per event (CPU of the whole bench process, whose own
//!    reader is printed by thread).
//! 3. Gate overhead: time from a flag change produced to its command consumed, minus the
//!    experiment's own duration, one event at a time; p50, p90, p99. Goal: p99 < 10 ms
//!    on loopback.
//!
//! `BENCH_PURE_EVENTS` (default 50000, phase 1: long enough that the first transaction,
//! which the clocks treat differently, does not count), `BENCH_EVENTS` (default 5000,
//! phase 2), `BENCH_LATENCY_EVENTS` (default 200) and `BENCH_MAX_IN_FLIGHT` (default 256; the
//! worker refuses at start a width whose offsets metadata could not record it) set the
//! sizes; `BENCH_PHASES` (`pure,gated,latency`, all by default) picks the phases.

#[path = "support/cpu.rs"]
mod cpu;
use cpu::{cpu_seconds, cpu_seconds_by_thread};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{BaseRecord, FutureProducer, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use chaosgate::bus::record::{from_rdkafka, to_record};
use chaosgate::catalog::Catalog;
use chaosgate::chaos::proxy::{ProxyProtocol, ProxyRegistry, ProxyTarget};
use chaosgate::chaos::run::RunContext;
use chaosgate::config::Config;
use chaosgate::contract::flag_change::flag_change_event;
use chaosgate::contract::{Change, ChangeKind, CloudEvent, FlagChange, KafkaMessage, RunRecord};

fn servers() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

fn count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whether `BENCH_PHASES` (comma-separated: `pure`, `gated`, `latency`; all when unset)
/// names the phase.
fn phase_on(name: &str) -> bool {
    std::env::var("BENCH_PHASES").map_or(true, |phases| phases.split(',').any(|p| p.trim() == name))
}

fn unique(prefix: &str) -> String {
    format!("bench-{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// The bench's own clients (the baseline, the event producer and the readers), with
/// Nagle's algorithm off as the worker has it.
fn client() -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", servers())
        .set("socket.nagle.disable", "true");
    config
}

/// What a phase sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    /// No experiment: even events change a flag no pipeline routes, odd ones are
    /// `disable` requests of routed flags.
    Pure,
    /// A minimal experiment per event.
    Gated,
}

fn event(i: usize, load: Load) -> KafkaMessage {
    let (flag, kind) = match load {
        Load::Pure if i.is_multiple_of(2) => (format!("free-flag-{i}"), ChangeKind::Enable),
        Load::Pure => (format!("t{}-flag-{i}", i % TARGETS), ChangeKind::Disable),
        Load::Gated => (format!("t{}-flag-{i}", i % TARGETS), ChangeKind::Enable),
    };
    let change = FlagChange {
        event_id: uuid::Uuid::new_v4().to_string(),
        occurred_at: Utc::now(),
        project: "bench".into(),
        environment: "perf".into(),
        flag,
        change: Change {
            kind,
            from: None,
            to: None,
        },
        pipeline_id: None,
        actor: None,
        account: None,
        value_format: None,
    };
    flag_change_event(&change, "/bench").to_binary(Some(&change.flag_key()))
}

async fn create(topics: &[&str]) {
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        client().create().expect("admin client");
    let new: Vec<_> = topics
        .iter()
        .map(|t| rdkafka::admin::NewTopic::new(t, 3, rdkafka::admin::TopicReplication::Fixed(1)))
        .collect();
    admin
        .create_topics(&new, &rdkafka::admin::AdminOptions::new())
        .await
        .expect("create topics");
}

async fn produce(topic: &str, events: &[KafkaMessage]) {
    let producer: FutureProducer = client().set("linger.ms", "5").create().expect("producer");
    // Queued at once (a `send` future would queue only when awaited, one at a time).
    let mut deliveries = Vec::with_capacity(events.len());
    for message in events {
        let mut record = to_record(topic, message);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => break deliveries.push(delivery),
                Err((e, back)) => {
                    assert!(
                        matches!(
                            e,
                            rdkafka::error::KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull
                            )
                        ),
                        "produce: {e}"
                    );
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }
    for delivery in deliveries {
        delivery.await.expect("delivery").expect("produce");
    }
}

/// The baseline: consume, produce `outputs` messages per event in a transaction with the
/// offsets, in batches as the worker's committer does. Returns the time from the first
/// record and the CPU seconds used meanwhile.
async fn baseline(events: &[KafkaMessage], outputs: usize) -> (Duration, f64) {
    let input = unique("base-in");
    let output = unique("base-out");
    create(&[&input, &output]).await;
    produce(&input, events).await;
    let consumer: StreamConsumer = client()
        .set("group.id", unique("base-group"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&input]).expect("subscribe");
    let producer: ThreadedProducer<_> = client()
        .set("transactional.id", unique("base-txn"))
        .set("linger.ms", "0")
        .set("retry.backoff.ms", "5")
        .create()
        .expect("producer");
    producer
        .init_transactions(Duration::from_secs(30))
        .expect("init transactions");
    let mut start = None;
    let mut cpu_start = 0.0;
    let mut done = 0;
    while done < events.len() {
        let mut batch = Vec::new();
        let first = consumer.recv().await.expect("consume");
        // Timed from the first record, as the worker is: group joins are not compared.
        if start.is_none() {
            start = Some(Instant::now());
            cpu_start = cpu_seconds();
        }
        batch.push(from_rdkafka(&first));
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(
                &input,
                first.partition(),
                Offset::Offset(first.offset() + 1),
            )
            .expect("offset");
        drop(first);
        while batch.len() < 500 {
            match tokio::time::timeout(Duration::from_millis(1), consumer.recv()).await {
                Ok(Ok(m)) => {
                    batch.push(from_rdkafka(&m));
                    let _ = offsets.add_partition_offset(
                        &input,
                        m.partition(),
                        Offset::Offset(m.offset() + 1),
                    );
                }
                _ => break,
            }
        }
        producer.begin_transaction().expect("begin");
        for message in &batch {
            for _ in 0..outputs {
                let value = message.value.clone().unwrap_or_default();
                let key = message.key.clone().unwrap_or_default();
                let record: BaseRecord<'_, Vec<u8>, Vec<u8>> =
                    BaseRecord::to(&output).key(&key).payload(&value);
                producer.send(record).map_err(|(e, _)| e).expect("send");
            }
        }
        let metadata = consumer.group_metadata().expect("group metadata");
        producer
            .send_offsets_to_transaction(&offsets, &metadata, Duration::from_secs(30))
            .expect("send offsets");
        await_delivery(&producer);
        producer
            .commit_transaction(Duration::from_secs(30))
            .expect("commit");
        done += batch.len();
    }
    (
        start.map(|s| s.elapsed()).unwrap_or_default(),
        cpu_seconds() - cpu_start,
    )
}

/// Waits for every record's acknowledgement before the commit, as the worker's
/// committer does (its polling thread serves the reports; `commit_transaction`'s own
/// flush would poll for a full 100 ms). Written out here so the baseline does not
/// depend on where the worker keeps its version.
fn await_delivery<C: rdkafka::producer::ProducerContext>(producer: &ThreadedProducer<C>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while producer.in_flight_count() > 0 {
        assert!(
            Instant::now() < deadline,
            "deliveries not acknowledged in 30 s"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Fault targets, so experiments of different flags run side by side (two experiments on
/// one target never overlap); flag `t{k}-flag-{i}` goes to pipeline `bench-{k}`, whose
/// experiment's fault is on target `bench-{k}`.
const TARGETS: usize = 64;
/// Events sent before the gate overhead is measured.
const WARM_UP: usize = 5;

fn catalog(dir: &std::path::Path, probe_port: u16) -> Catalog {
    for k in 0..TARGETS {
        std::fs::write(
            dir.join(format!("pipeline-{k}.yaml")),
            format!(
                "kind: pipeline\nid: bench-{k}\nroutes:\n  - project: bench\n    flag: \"t{k}-*\"\nstages:\n  - id: s\n    type: feature_flag\n    steps:\n      - id: t\n        experiment: minimal-{k}\n        expected_resilience_score: 50\n"
            ),
        )
        .expect("write pipeline");
        std::fs::write(
            dir.join(format!("experiment-{k}.yaml")),
            format!(
                "kind: experiment\nid: minimal-{k}\nfaults:\n  - name: blip\n    weight: 1\n    duration: 0s\n    network:\n      target: bench-{k}\n      toxic: {{ type: latency, latency: 1ms }}\nprobes:\n  - name: port\n    mode: sot\n    tcp: {{ address: \"127.0.0.1:{probe_port}\" }}\n"
            ),
        )
        .expect("write experiment");
    }
    Catalog::load(&[dir]).unwrap_or_else(|p| panic!("bench catalog: {p:?}"))
}

struct Worker {
    config: Config,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start_worker(
    catalog: Arc<Catalog>,
    run: RunContext,
    max_in_flight: usize,
    backlog: &[KafkaMessage],
) -> Worker {
    let tag = unique("w");
    let config = Config::parse(
        &format!(
            "[kafka]\nbootstrap_servers = \"{}\"\ngroup_id = \"{tag}\"\ntransactional_id = \"{tag}\"\ncreate_topics = true\n\
             [kafka.topics]\nflag_changes = \"{tag}-in\"\nruns = \"{tag}-runs\"\ncommands = \"{tag}-commands\"\ndead_letter = \"{tag}-dlq\"\ncontrol = \"{tag}-control\"\n\
             [catalog]\npath = \".\"\n[worker]\nmax_in_flight = {max_in_flight}\n",
            servers()
        ),
        "bench",
        Vec::new(),
    )
    .expect("bench config");
    let topics = &config.kafka.topics;
    create(&[
        &topics.flag_changes,
        &topics.runs,
        &topics.commands,
        &topics.dead_letter,
        &topics.control,
    ])
    .await;
    produce(&topics.flag_changes, backlog).await;
    let shutdown = CancellationToken::new();
    let worker_config = config.clone();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        let ran = chaosgate::bus::worker::run(
            worker_config,
            catalog,
            run,
            chaosgate::telemetry::http::Readiness::default(),
            stop,
        )
        .await;
        // A worker that cannot run ends the bench at once (a panic in this task would
        // leave the readers waiting and print figures of nothing).
        if let Err(error) = ran {
            eprintln!("the worker stopped: {error} ({error:?})");
            std::process::exit(1);
        }
    });
    Worker {
        config,
        shutdown,
        task,
    }
}

fn reader(topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = client()
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .expect("reader");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// What the worker did with a backlog: commands read, the time from the first command
/// to the last, and the bench process's CPU meanwhile, in total and by thread.
struct Phase {
    commands: usize,
    took: Duration,
    cpu: f64,
    by_thread: String,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.commands as f64 / self.took.as_secs_f64()
    }

    fn cpu_per_event_us(&self) -> f64 {
        self.cpu * 1e6 / self.commands.max(1) as f64
    }

    /// Two lines: the figures, after `what`, with `goal` after the CPU; CPU by thread.
    fn print(&self, what: &str, goal: &str) {
        println!(
            "{what}: {} commands in {:.2} s, {:.0} events/s, CPU {:.0} us/event{goal}",
            self.commands,
            self.took.as_secs_f64(),
            self.rate(),
            self.cpu_per_event_us()
        );
        println!("  CPU us/event by thread: {}", self.by_thread);
    }
}

/// Starts a worker on `backlog` (already in its topic, as the baseline's is) and reads
/// its commands; the clock starts at the first command (the worker's first output), so
/// group joins are not compared.
async fn backlog_phase(
    catalog: Arc<Catalog>,
    run: RunContext,
    max_in_flight: usize,
    backlog: &[KafkaMessage],
) -> Phase {
    let worker = start_worker(catalog, run, max_in_flight, backlog).await;
    let topics = worker.config.kafka.topics.clone();
    let commands = reader(&topics.commands);
    let mut seen = 0;
    let mut first_at = None;
    let cpu_start = cpu_seconds();
    let threads_start = cpu_seconds_by_thread();
    while seen < backlog.len() {
        match tokio::time::timeout(Duration::from_secs(60), commands.recv()).await {
            Ok(Ok(_)) => {
                seen += 1;
                first_at.get_or_insert_with(Instant::now);
            }
            _ => break,
        }
    }
    let took = first_at.map(|f: Instant| f.elapsed()).unwrap_or_default();
    let cpu = cpu_seconds() - cpu_start;
    let threads = cpu_seconds_by_thread();
    // Threads of one name summed; those that ended meanwhile are not counted.
    let mut by_thread: Vec<(String, f64)> = threads
        .into_iter()
        .map(|(name, seconds)| {
            let before = threads_start.get(&name).copied().unwrap_or(0.0);
            (name, seconds - before)
        })
        .filter(|(_, seconds)| *seconds > 0.0)
        .collect();
    by_thread.sort_by(|a, b| b.1.total_cmp(&a.1));
    let by_thread: Vec<String> = by_thread
        .iter()
        .map(|(name, seconds)| format!("{name} {:.0}", seconds * 1e6 / seen.max(1) as f64))
        .collect();
    worker.shutdown.cancel();
    let _ = worker.task.await;
    Phase {
        commands: seen,
        took,
        cpu,
        by_thread: by_thread.join(", "),
    }
}

#[tokio::main]
async fn main() {
    let events_n = count("BENCH_EVENTS", 5000);
    let latency_n = count("BENCH_LATENCY_EVENTS", 200);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("probe listener");
    let probe_port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream)
        }
    });
    // The faults' targets: the embedded fault proxy in front of the probed listener.
    let targets: Vec<ProxyTarget> = (0..TARGETS)
        .map(|k| ProxyTarget {
            name: format!("bench-{k}"),
            listen: "127.0.0.1:0".parse().expect("proxy address"),
            upstream: format!("127.0.0.1:{probe_port}"),
            protocol: ProxyProtocol::Tcp,
        })
        .collect();
    let proxies = ProxyRegistry::start(&targets).await.expect("fault proxy");
    let run = RunContext {
        proxy: Some(proxies),
        ..RunContext::default()
    };
    let max_in_flight = count("BENCH_MAX_IN_FLIGHT", 256);
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = Arc::new(catalog(dir.path(), probe_port));
    println!(
        "worker benchmark: {} pure-path and {events_n} gated events, max_in_flight {max_in_flight}, broker {}",
        count("BENCH_PURE_EVENTS", 50_000),
        servers()
    );

    // 1. The pure Kafka path against the pass-through, same events, same run.
    let pure_n = count("BENCH_PURE_EVENTS", 50_000);
    if phase_on("pure") {
        let pure: Vec<KafkaMessage> = (0..pure_n).map(|i| event(i, Load::Pure)).collect();
        let (base, base_cpu) = baseline(&pure, 1).await;
        let base_rate = pure_n as f64 / base.as_secs_f64();
        println!(
            "baseline pass-through (consume -> transactional produce x1): {:.2} s, {base_rate:.0} events/s, CPU {:.0} us/event",
            base.as_secs_f64(),
            base_cpu * 1e6 / pure_n as f64
        );
        let phase = backlog_phase(catalog.clone(), run.clone(), max_in_flight, &pure).await;
        phase.print(
            "chaosgate pure Kafka path (no-pipeline enables and disable requests)",
            "",
        );
        println!(
            "pure-path ratio chaosgate / baseline: {:.2} (goal >= 0.8)",
            phase.rate() / base_rate
        );
    }

    // 2. CPU per minimal gated event.
    if phase_on("gated") {
        let gated: Vec<KafkaMessage> = (0..events_n).map(|i| event(i, Load::Gated)).collect();
        let phase = backlog_phase(catalog.clone(), run.clone(), max_in_flight, &gated).await;
        phase.print(
            "chaosgate minimal gated events (one 0 s fault, one tcp probe)",
            " (goal < 150)",
        );
    }

    // 3. Gate overhead, one event at a time.
    if !phase_on("latency") {
        return;
    }
    let worker = start_worker(catalog, run, max_in_flight, &[]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let topics = worker.config.kafka.topics.clone();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let commands = reader(&topics.commands);
    let runs = reader(&topics.runs);
    let producer: FutureProducer = client().set("linger.ms", "0").create().expect("producer");
    let mut overheads = Vec::new();
    let mut experiments = Vec::new();
    // The first events warm up the readers (their group joins) and the worker's
    // connections; they are not counted.
    // Where the overhead goes, from the run's own timestamps (same machine, same clock):
    // intake = produce -> run started (the broker, the worker's consume, decoding,
    // routing, scheduling); output = run ended -> command consumed (encoding, the
    // committer's batch and transaction, the reader's fetch).
    let mut intakes = Vec::new();
    let mut outputs = Vec::new();
    for i in 0..WARM_UP + latency_n {
        let message = event(i, Load::Gated);
        let sent = Instant::now();
        let sent_at = Utc::now();
        producer
            .send(
                to_record(&topics.flag_changes, &message),
                Duration::from_secs(10),
            )
            .await
            .expect("produce");
        let Ok(Ok(_command)) = tokio::time::timeout(Duration::from_secs(30), commands.recv()).await
        else {
            println!("no command for event {i}");
            break;
        };
        let elapsed = sent.elapsed().as_secs_f64() * 1000.0;
        let seen_at = Utc::now();
        // The final record of this run says how long the experiment itself took.
        let mut experiment_ms = 0.0;
        let mut split = None;
        while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(10), runs.recv()).await {
            let record = CloudEvent::decode(&from_rdkafka(&m))
                .ok()
                .and_then(|e| serde_json::from_value::<RunRecord>(e.data).ok());
            if let Some(record) = record
                && record.status != chaosgate::contract::RunStatus::Running
            {
                experiment_ms = record.duration_seconds.unwrap_or(0.0) * 1000.0;
                let ms = |d: chrono::TimeDelta| d.num_microseconds().unwrap_or(0) as f64 / 1000.0;
                split = record
                    .ended_at
                    .map(|ended| (ms(record.started_at - sent_at), ms(seen_at - ended)));
                break;
            }
        }
        if i >= WARM_UP {
            overheads.push(elapsed - experiment_ms);
            experiments.push(experiment_ms);
            if let Some((intake, output)) = split {
                intakes.push(intake);
                outputs.push(output);
            }
        }
    }
    worker.shutdown.cancel();
    let _ = worker.task.await;
    for values in [&mut overheads, &mut experiments, &mut intakes, &mut outputs] {
        values.sort_by(f64::total_cmp);
    }
    if !overheads.is_empty() {
        println!(
            "gate overhead (produce -> command consumed, minus experiment time), {} events: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms (goal p99 < 10 ms)",
            overheads.len(),
            percentile(&overheads, 0.5),
            percentile(&overheads, 0.9),
            percentile(&overheads, 0.99)
        );
        println!(
            "  the experiments themselves (their records' duration): p50 {:.1} ms, p99 {:.1} ms",
            percentile(&experiments, 0.5),
            percentile(&experiments, 0.99)
        );
    }
    if !intakes.is_empty() {
        println!(
            "  intake (produce -> run started): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms; output (run ended -> command consumed): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms",
            percentile(&intakes, 0.5),
            percentile(&intakes, 0.9),
            percentile(&intakes, 0.99),
            percentile(&outputs, 0.5),
            percentile(&outputs, 0.9),
            percentile(&outputs, 0.99)
        );
    }
    let _ = Producer::flush(&producer, Duration::from_secs(5));
}
