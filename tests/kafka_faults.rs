//! The worker under Kafka's own faults, injected deterministically with librdkafka's mock
//! cluster: coordinator errors and slow answers on `EndTxn`, the broker down and up
//! mid-batch, a flag change of about 1 MB to dead-letter. The real `chaosgate run`
//! process runs against the mock; a `read_committed` reader checks that every event got
//! exactly one command and every gated step exactly one final record.
//!
//! The mock keeps records of aborted transactions visible (see `support/mock_cluster.rs`),
//! so a batch published twice shows here even when the first copy was aborted: these
//! checks are stricter than on a real broker.

#[path = "support/kafka.rs"]
mod kafka;
#[path = "support/mock_cluster.rs"]
mod mock_cluster;
#[path = "support/worker.rs"]
mod worker;

use std::time::Duration;

use chaosgate::contract::dead_letter::{HEADER_ERROR_CLASS, HEADER_VALUE_TRUNCATED};
use chaosgate::contract::{ChangeKind, CommandKind, KafkaMessage, ReasonCode};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::types::RDKafkaApiKey;
use rdkafka::types::RDKafkaRespErr;

use mock_cluster::Mock;
use worker::{
    Harness, Listener, Outputs, Settings, Topics, change, experiment_yaml, pipeline_yaml,
};

/// Upper bound for anything a test waits for: generous, so only a bug reaches it.
const PATIENCE: Duration = Duration::from_secs(90);
/// The worker's `transaction.timeout.ms` in these tests: one transaction attempt may
/// take half of it (3 s).
const TRANSACTION_TIMEOUT_MS: &str = "6000";

/// A mock cluster with the test's topics, a catalog gating flags `gated-*` with a 1 s
/// experiment, and settings with a short transaction timeout.
async fn world(name: &str, partitions: i32) -> (Mock, Harness, Listener, Settings) {
    let mock = Mock::start(1);
    let topics = Topics::unique(name);
    mock.create_topics(&topics, partitions);
    let h = Harness::for_topics(&mock.servers(), name, partitions, topics);
    let up = gated_catalog(&h).await;
    let settings = Settings {
        shutdown_grace: "10s",
        properties: vec![("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS.to_string())],
        ..Settings::default()
    };
    (mock, h, up, settings)
}

/// A catalog gating flags `gated-*` with a 1 s experiment whose probe watches the
/// returned listener.
async fn gated_catalog(h: &Harness) -> Listener {
    let up = Listener::start().await;
    h.catalog_file(
        "exp-up.yaml",
        &experiment_yaml("exp-up", "1s", &h.marker("up"), &up.address),
    );
    h.catalog_file(
        "pipe-up.yaml",
        &pipeline_yaml("gate-up", Some("gated-*"), &["exp-up"]),
    );
    up
}

/// Produces `gated` flag changes of gated flags and `free` of flags with no pipeline, each
/// of its own flag; returns (all event ids, gated event ids).
async fn produce(h: &Harness, gated: usize, free: usize) -> (Vec<String>, Vec<String>) {
    let mut all = Vec::new();
    let mut gated_ids = Vec::new();
    for i in 0..gated {
        let event = change(&format!("gated-{i}"), ChangeKind::Enable, None);
        h.produce_change(&event).await;
        gated_ids.push(event.event_id.clone());
        all.push(event.event_id);
    }
    for i in 0..free {
        let event = change(&format!("free-{i}"), ChangeKind::Enable, None);
        h.produce_change(&event).await;
        all.push(event.event_id);
    }
    (all, gated_ids)
}

/// Every event exactly one command; every gated event (one step) exactly one final record.
fn assert_exactly_once(h: &Harness, out: &Outputs, events: &[String], gated: &[String]) {
    for event in events {
        assert_eq!(
            out.commands_for(event).len(),
            1,
            "commands for {event}\n{}\n{}",
            out.describe(),
            h.log_tails()
        );
    }
    for event in gated {
        assert_eq!(
            out.final_runs_for(event).len(),
            1,
            "final records for {event}\n{}\n{}",
            out.describe(),
            h.log_tails()
        );
    }
    assert!(out.garbage.is_empty(), "{:?}", out.garbage);
}

/// [`settle`], then [`assert_exactly_once`], and no fault left active.
async fn settle_exactly_once(
    h: &Harness,
    collector: &worker::Collector,
    events: &[String],
    gated: &[String],
) {
    let out = settle(h, collector, events, PATIENCE).await;
    assert_exactly_once(h, &out, events, gated);
    assert_eq!(h.active_markers(), Vec::<String>::new());
}

/// Waits for a command for each event, then a little longer for any duplicate.
async fn settle(
    h: &Harness,
    collector: &worker::Collector,
    events: &[String],
    patience: Duration,
) -> Outputs {
    h.wait_for(collector, "a command for each event", patience, |o| {
        o.all_commanded(events)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    collector.snapshot()
}

/// Starts collecting outputs, then the worker.
fn start(h: &Harness, settings: &Settings) -> (worker::Collector, worker::Worker) {
    let collector = h.collect();
    let worker = h.spawn("w", &h.config("w", settings));
    (collector, worker)
}

/// A header of a dead letter, as text.
fn header(dead: &worker::Received<KafkaMessage>, name: &str) -> Option<String> {
    dead.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

/// One dead letter, its value cut under `max_bytes` from `original_len` bytes, with the
/// header saying so, its error class and the original's own header kept.
fn assert_cut_dead_letter(out: &Outputs, original_len: usize, max_bytes: usize) {
    assert_eq!(out.dead_letters.len(), 1, "{}", out.describe());
    let dead = &out.dead_letters[0];
    assert_eq!(
        header(dead, HEADER_VALUE_TRUNCATED),
        Some(original_len.to_string())
    );
    assert_eq!(header(dead, "origin").as_deref(), Some("load-test"));
    assert!(header(dead, HEADER_ERROR_CLASS).is_some());
    let value = dead.value.value.as_ref().map_or(0, Vec::len);
    assert!(value < max_bytes, "value of {value} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transactions_and_not_coordinator_on_end_txn_publish_each_output_once() {
    let (mock, h, _up, settings) = world("endtxn-errors", 2).await;
    mock.cluster().request_errors(
        RDKafkaApiKey::EndTxn,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_CONCURRENT_TRANSACTIONS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_CONCURRENT_TRANSACTIONS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_CONCURRENT_TRANSACTIONS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
        ],
    );
    let (collector, _worker) = start(&h, &settings);
    let (events, gated) = produce(&h, 3, 4).await;
    settle_exactly_once(&h, &collector, &events, &gated).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_slower_than_the_transaction_timeout_is_resumed_not_published_twice() {
    let (mock, h, _up, settings) = world("endtxn-slow", 2).await;
    let (collector, _worker) = start(&h, &settings);
    // One event first, so the slow answer meets a commit of real records.
    let (first, _) = produce(&h, 0, 1).await;
    settle(&h, &collector, &first, PATIENCE).await;
    // The coordinator answers the next commits only after 35 s: longer than the
    // transaction timeout (6 s), and than the 30 s any single call used to wait.
    mock.slow_requests(1, RDKafkaApiKey::EndTxn as i16, 2, Duration::from_secs(35));
    let (mut events, gated) = produce(&h, 1, 3).await;
    events.extend(first);
    let out = settle(&h, &collector, &events, PATIENCE).await;
    assert_exactly_once(&h, &out, &events, &gated);
    let logs = h.logs();
    assert!(
        logs.contains("commit outcome unknown; resuming the commit"),
        "the slow commit was not met as an unknown outcome\n{}",
        h.log_tails()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_down_and_up_mid_batch_loses_and_doubles_nothing() {
    let (mock, h, _up, mut settings) = world("broker-down", 2).await;
    // One attempt may outlast the outage (10 s against 4 s): its calls are retried until
    // the broker is back, and it commits. An attempt whose deadline passes during an
    // outage is aborted and runs again, which a real broker hides from read_committed
    // readers but the mock does not (its aborted records stay visible): that case is
    // for the real broker's outage test.
    // The group session outlasts the outage too: the mock does not store offsets
    // committed in transactions, so partitions assigned again would start from offset 0
    // and run everything again (a mock artefact; bus-loop's tests cover the rebalance).
    settings.properties = vec![
        ("transaction.timeout.ms", "20000".to_string()),
        ("session.timeout.ms", "30000".to_string()),
        ("heartbeat.interval.ms", "3000".to_string()),
    ];
    let (collector, _worker) = start(&h, &settings);
    let (events, gated) = produce(&h, 3, 3).await;
    h.wait_for(&collector, "runs to start", PATIENCE, |o| {
        gated.iter().any(|e| !o.runs_for(e).is_empty())
    })
    .await;
    // The runs (1 s) finish while the broker is away: their commits must wait for it.
    mock.cluster().broker_down(1).expect("broker down");
    tokio::time::sleep(Duration::from_secs(4)).await;
    mock.cluster().broker_up(1).expect("broker up");
    settle_exactly_once(&h, &collector, &events, &gated).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_with_the_broker_away_ends_within_the_grace_period() {
    let (mock, h, _up, mut settings) = world("shutdown-broker-away", 2).await;
    settings.shutdown_grace = "1s";
    let (collector, mut worker) = start(&h, &settings);
    let (events, gated) = produce(&h, 2, 2).await;
    settle_exactly_once(&h, &collector, &events, &gated).await;
    // The broker stops answering (every request takes a minute), then the worker is
    // told to stop: leaving the group, the kill switch's consumer closing, the last
    // commit all wait on answers that do not come.
    mock.cluster()
        .broker_round_trip_time(1, Duration::from_secs(60))
        .expect("slow broker");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let told = std::time::Instant::now();
    worker.signal(libc::SIGTERM);
    // The grace period bounds every step; the process adds its runtime's own 0.5 s, and
    // the bound leaves 2 s for a loaded machine. (Before the steps were bounded, closing
    // the kill switch's consumer and leaving the group took 5 s here.)
    let status = worker.wait_exit(Duration::from_secs(30)).await;
    let took = told.elapsed();
    eprintln!("stopped {took:?} after SIGTERM, {status:?}");
    assert!(
        status.is_some() && took <= Duration::from_millis(3500),
        "the worker took {took:?} to stop after SIGTERM with the broker not answering \
         (grace 1 s, exit {status:?})\n{}",
        h.log_tails()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_megabyte_flag_change_is_dead_lettered_cut_to_fit_and_commits_go_on() {
    let (_mock, h, _up, settings) = world("big-dead-letter", 1).await;
    let (collector, _worker) = start(&h, &settings);
    // Under the worker's max_message_bytes (1 MiB), so not "oversized"; not JSON, so
    // dead-lettered; its dead letter (the original plus headers) is over the producer's
    // 1,000,000-byte message.max.bytes.
    let original_len = 1_000_500;
    let big: FutureProducer = mock_producer(&h.servers);
    let message = KafkaMessage {
        key: Some(b"test/test/big".to_vec()),
        value: Some(vec![b'x'; original_len]),
        headers: vec![("origin".into(), b"load-test".to_vec())],
    };
    big.send(
        chaosgate::bus::record::to_record(&h.topics.flag_changes, &message),
        Duration::from_secs(30),
    )
    .await
    .map_err(|(e, _)| e)
    .expect("produce the big flag change");
    big.flush(Duration::from_secs(10)).expect("flush");
    let (events, _) = produce(&h, 0, 2).await;
    let out = settle(&h, &collector, &events, PATIENCE).await;
    assert_exactly_once(&h, &out, &events, &[]);
    assert_cut_dead_letter(&out, original_len, 1_000_000);
    let dead = &out.dead_letters[0];
    assert_eq!(
        header(dead, HEADER_ERROR_CLASS).as_deref(),
        Some("undecodable")
    );
    assert!(
        dead.value.value.as_ref().map_or(0, Vec::len) > 990_000,
        "cut to no more than needed"
    );
    assert_eq!(dead.value.key.as_deref(), Some(&b"test/test/big"[..]));
}

/// A producer that may send records up to 2 MB (the mock broker has no size limit).
fn mock_producer(servers: &str) -> FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("message.max.bytes", "2000000")
        .create()
        .expect("producer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_the_broker_refuses_is_cut_until_it_fits_and_commits_go_on() {
    // The real broker: the mock has no per-topic size limit.
    let servers = kafka::require_broker();
    let topics = Topics::unique("dlq-limit");
    // The dead-letter topic takes records up to 16 KiB: a 60 KB bad flag change passes
    // the producer's own limit (1 MB) and is refused by the broker on delivery.
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &servers)
            .create()
            .expect("admin");
    let dlq = rdkafka::admin::NewTopic::new(
        &topics.dead_letter,
        1,
        rdkafka::admin::TopicReplication::Fixed(1),
    )
    .set("max.message.bytes", "16384");
    for result in admin
        .create_topics(&[dlq], &rdkafka::admin::AdminOptions::new())
        .await
        .expect("create the dead-letter topic")
    {
        result.expect("dead-letter topic created");
    }
    kafka::create_topics(
        &servers,
        &[
            &topics.flag_changes,
            &topics.runs,
            &topics.commands,
            &topics.control,
        ],
        1,
    )
    .await;
    let h = Harness::for_topics(&servers, "dlq-limit", 1, topics);
    let _up = gated_catalog(&h).await;
    let (collector, _worker) = start(&h, &Settings::default());
    let original_len = 60_000;
    h.produce(
        &h.topics.flag_changes,
        &KafkaMessage {
            key: Some(b"test/test/bad".to_vec()),
            value: Some(vec![b'{'; original_len]),
            headers: vec![("origin".into(), b"load-test".to_vec())],
        },
    )
    .await;
    let (events, _) = produce(&h, 0, 2).await;
    let out = settle(&h, &collector, &events, PATIENCE).await;
    assert_exactly_once(&h, &out, &events, &[]);
    assert_cut_dead_letter(&out, original_len, 16_384);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborts_sent_while_no_worker_ran_are_honoured_by_the_worker_that_takes_the_event() {
    let (_mock, h, _up, settings) = world("abort-before", 1).await;
    let collector = h.collect();
    // Sent while no worker runs (a restart, a partition moving): an abort of one
    // execution, and an `all` that reaches only changes that occurred before it.
    let aborted = change("gated-aborted", ChangeKind::Enable, None);
    let before_all = change("gated-before-all", ChangeKind::Enable, None);
    h.produce_abort(serde_json::json!({
        "scope": "pipeline_execution",
        "id": chaosgate::contract::ids::pipeline_execution_id(&aborted.event_id, "gate-up"),
    }))
    .await;
    h.produce_abort(serde_json::json!({"scope": "all"})).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after_all = change("gated-after-all", ChangeKind::Enable, None);
    for event in [&aborted, &before_all, &after_all] {
        h.produce_change(event).await;
    }
    let _worker = h.spawn("w", &h.config("w", &settings));
    let events: Vec<String> = [&aborted, &before_all, &after_all]
        .iter()
        .map(|e| e.event_id.clone())
        .collect();
    let out = settle(&h, &collector, &events, PATIENCE).await;
    for event in [&aborted, &before_all] {
        let command = out.commands_for(&event.event_id)[0];
        assert_eq!(
            (command.command, command.reason_code),
            (CommandKind::Disable, ReasonCode::Aborted),
            "{}: {}\n{}",
            event.flag,
            command.reason,
            out.describe()
        );
    }
    let command = out.commands_for(&after_all.event_id)[0];
    assert_eq!(
        (command.command, command.reason_code),
        (CommandKind::Enable, ReasonCode::Passed),
        "{}\n{}",
        command.reason,
        out.describe()
    );
    assert_exactly_once(&h, &out, &events, std::slice::from_ref(&after_all.event_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unstable_offset_commit_on_offset_fetch_neither_restarts_from_zero_nor_forgets_metadata() {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    let (mock, h, _up, settings) = world("unstable-offsets", 1).await;
    let collector = h.collect();
    let mut events = Vec::new();
    for i in 0..6 {
        let event = change(&format!("free-{i}"), ChangeKind::Enable, None);
        let (partition, offset) = h.produce_change(&event).await;
        assert_eq!((partition, offset), (0, i), "one partition, offsets from 0");
        events.push(event.event_id);
    }
    // An earlier owner committed: offsets 0-2 done (watermark 3), and 4 done above it.
    let committer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &h.servers)
        .set("group.id", &h.group)
        .create()
        .expect("committer");
    let mut offsets = rdkafka::TopicPartitionList::new();
    offsets
        .add_partition_offset(&h.topics.flag_changes, 0, rdkafka::Offset::Offset(3))
        .expect("offset");
    offsets
        .find_partition(&h.topics.flag_changes, 0)
        .expect("partition")
        .set_metadata("cg2;done=1;started=");
    committer
        .commit(&offsets, CommitMode::Sync)
        .expect("commit the earlier owner's offsets");
    drop(committer);
    // The offset read meets UNSTABLE_OFFSET_COMMIT (an earlier transaction still open)
    // for a while.
    mock.cluster().request_errors(
        RDKafkaApiKey::OffsetFetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNSTABLE_OFFSET_COMMIT; 20],
    );
    let _worker = h.spawn("w", &h.config("w", &settings));
    let left = vec![events[3].clone(), events[5].clone()];
    let out = settle(&h, &collector, &left, PATIENCE).await;
    assert_exactly_once(&h, &out, &left, &[]);
    for done in [0, 1, 2, 4] {
        assert!(
            out.commands_for(&events[done]).is_empty(),
            "event at offset {done}, done by the earlier owner, ran again\n{}\n{}",
            out.describe(),
            h.log_tails()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_max_in_flight_whose_offsets_metadata_cannot_fit_stops_the_worker_with_a_clear_error() {
    let (_mock, h, _up, mut settings) = world("metadata-bound", 1).await;
    // One more than the offsets metadata can record (472, `bus::offsets::MAX_PENDING`).
    settings.max_in_flight = chaosgate::bus::offsets::MAX_PENDING + 1;
    let mut worker = h.spawn("w", &h.config("w", &settings));
    let status = worker.wait_exit(Duration::from_secs(30)).await;
    let log = worker.log_text();
    assert!(
        status.is_some_and(|s| !s.success()),
        "the worker ran with a max_in_flight its offsets metadata cannot record ({status:?})\n{log}"
    );
    assert!(
        log.contains(&format!(
            "worker.max_in_flight = {}",
            settings.max_in_flight
        )) && log.contains("offset.metadata.max.bytes")
            && log.contains("set worker.max_in_flight to at most"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_producer_is_rebuilt_and_publishes_each_output_once() {
    // The real broker: fencing needs a coordinator that keeps producer epochs.
    let servers = kafka::require_broker();
    let h = Harness::new(&servers, "fenced", 1).await;
    let _up = gated_catalog(&h).await;
    let (collector, _worker) = start(&h, &Settings::default());
    let (mut events, mut gated) = produce(&h, 1, 2).await;
    settle(&h, &collector, &events, PATIENCE).await;
    // Another producer with the worker's transactional id (a zombie's successor, say)
    // bumps the epoch: the worker's next transaction call fails as fenced (fatal).
    let fencer: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .set("transactional.id", format!("{}-w", h.group))
        .create()
        .expect("fencing producer");
    fencer
        .init_transactions(Duration::from_secs(30))
        .expect("fence the worker's producer");
    drop(fencer);
    let (more, more_gated) = produce(&h, 1, 3).await;
    events.extend(more);
    gated.extend(more_gated);
    settle_exactly_once(&h, &collector, &events, &gated).await;
    assert!(
        h.logs()
            .contains("transactional producer unusable; rebuilding it"),
        "the fenced producer was not rebuilt\n{}",
        h.log_tails()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kill_switch_is_caught_up_only_once_it_knows_every_earlier_abort() {
    use chaosgate::bus::kill_switch::{self, KillSwitch};
    use tokio_util::sync::CancellationToken;
    let (_mock, h, _up, _settings) = world("kill-switch-backlog", 3).await;
    let executions: Vec<String> = (0..30).map(|i| format!("execution-{i}")).collect();
    for id in &executions {
        h.produce_abort(serde_json::json!({"scope": "pipeline_execution", "id": id}))
            .await;
    }
    let kill_switch = KillSwitch::default();
    let stop = CancellationToken::new();
    let mut client = rdkafka::ClientConfig::new();
    client.set("bootstrap.servers", &h.servers);
    let listener = tokio::spawn(kill_switch::listen(
        client,
        h.topics.control.clone(),
        kill_switch.clone(),
        stop.clone(),
    ));
    tokio::time::timeout(Duration::from_secs(30), kill_switch.caught_up())
        .await
        .expect("caught up within 30 s");
    for id in &executions {
        let kill = CancellationToken::new();
        kill_switch.register(id, kill.clone(), chrono::Utc::now());
        assert!(kill.is_cancelled(), "{id}: its abort was not known yet");
    }
    stop.cancel();
    listener.await.expect("listener");
}
