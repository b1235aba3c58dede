//! The proposed folder of `chaosgate connect flagd`, as a user runs it: the real binary
//! watching a folder of flagd flag files, the real broker, flag changes read back from
//! the topic as the worker decodes them, problems read from the bridge's log.
//!
//! Served and decided definitions are approved-flag records the tests write on the
//! approved topic themselves, as the worker does in a command's transaction. Every wait has a deadline and fails with the
//! bridge's log.

#[path = "support/connect.rs"]
mod connect;
#[path = "support/kafka.rs"]
mod kafka;
#[path = "support/worker.rs"]
mod worker;

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::{Value, json};

use chaosgate::bus::record::from_rdkafka;
use chaosgate::contract::approved_flag::{APPROVED_FLAG_TYPE, approved_flag_example};
use chaosgate::contract::flag_change::decode_flag_change;
use chaosgate::contract::{ApprovedFlag, ChangeKind, CloudEvent, FlagChange, ValueFormat};

/// Upper bound for anything a test waits for: generous, so only a bug reaches it.
const PATIENCE: Duration = Duration::from_secs(60);
/// How long a test watches for a record that must not come: many scans.
const QUIET: Duration = Duration::from_secs(3);

/// A running `chaosgate connect flagd` with its folder, killed when dropped.
struct Bridge {
    child: Option<Child>,
    dir: tempfile::TempDir,
    config: PathBuf,
    log: PathBuf,
    starts: usize,
    /// `[flagd] http_listen`, where `/metrics` is.
    http: String,
}

impl Bridge {
    /// Writes a config proposing `shop`/`prod` from `dir/proposed` every 100 ms, with
    /// `flag_changes` and unique other topics (created by the bridge), and starts it.
    fn start(servers: &str, flag_changes: &str) -> Bridge {
        let approved = kafka::unique_topic("flagd-proposed-approved");
        Bridge::start_with(servers, flag_changes, &approved)
    }

    /// [`Bridge::start`] reading the approved configuration from `approved` (created by
    /// the bridge unless the test did first).
    fn start_with(servers: &str, flag_changes: &str, approved: &str) -> Bridge {
        let dir = tempfile::Builder::new()
            .prefix("chaosgate-flagd-proposed-")
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir_all(dir.path().join("proposed")).expect("proposed dir");
        std::fs::create_dir_all(dir.path().join("catalog")).expect("catalog dir");
        let topic = |name: &str| kafka::unique_topic(&format!("flagd-proposed-{name}"));
        let http = worker::closed_address();
        let config = format!(
            r#"[kafka]
bootstrap_servers = "{servers}"
create_topics = true

[kafka.topics]
flag_changes = "{flag_changes}"
runs = "{runs}"
commands = "{commands}"
dead_letter = "{dead_letter}"
control = "{control}"
approved_flags = "{approved}"

[catalog]
path = "catalog"

[telemetry]
log_format = "text"
log_filter = "info"

[flagd]
project = "shop"
environment = "prod"
proposed = "proposed"
scan_interval = "100ms"
removal_grace = "1s"
sync_listen = "{sync}"
http_listen = "{http}"
"#,
            runs = topic("runs"),
            commands = topic("commands"),
            dead_letter = topic("dlq"),
            control = topic("control"),
            sync = worker::closed_address(),
        );
        let config_path = dir.path().join("chaosgate.toml");
        std::fs::write(&config_path, config).expect("config file");
        let mut bridge = Bridge {
            http,
            child: None,
            log: dir.path().join("bridge-0.log"),
            config: config_path,
            dir,
            starts: 0,
        };
        bridge.spawn();
        bridge
    }

    fn spawn(&mut self) {
        self.log = self.dir.path().join(format!("bridge-{}.log", self.starts));
        self.starts += 1;
        let child = connect::spawn_connect("flagd", &self.config, self.dir.path(), &self.log);
        self.child = Some(child);
    }

    /// Kills the bridge and starts it again (a new log).
    fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn();
    }

    fn folder(&self) -> PathBuf {
        self.dir.path().join("proposed")
    }

    /// Writes `text` as `name` in the folder, atomically (a rename), as a checkout does.
    fn propose(&self, name: &str, text: &str) {
        let temporary = self.folder().join(format!(".{name}.tmp"));
        std::fs::write(&temporary, text).expect("proposed file");
        std::fs::rename(&temporary, self.folder().join(name)).expect("rename proposed file");
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The value of `chaosgate_flagd_proposals_total{outcome}` (0 when absent).
    async fn outcome_count(&self, outcome: &str) -> u64 {
        let text = reqwest::get(format!("http://{}/metrics", self.http))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        let prefix = format!("chaosgate_flagd_proposals_total{{outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .map_or(0, |n| n.trim().parse().expect("a count"))
    }

    /// The flags `GET /flags.json` serves (the approved configuration), by key.
    async fn served_flags(&self) -> serde_json::Map<String, Value> {
        let document: Value = reqwest::get(format!("http://{}/flags.json", self.http))
            .await
            .expect("GET /flags.json")
            .json()
            .await
            .expect("flags.json is JSON");
        document["flags"]
            .as_object()
            .expect("a flags object")
            .clone()
    }

    /// Fails with the log when the bridge has exited.
    fn assert_running(&mut self) {
        if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
            panic!("the bridge exited ({status}):\n{}", self.log_text());
        }
    }

    /// Waits until the log holds `text`.
    async fn wait_for_log(&mut self, text: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.log_text().contains(text) {
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "no {text:?} in the log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Reads `topic` (one partition) from the start.
struct Changes {
    consumer: BaseConsumer,
    read: Vec<(String, FlagChange)>,
}

impl Changes {
    fn new(servers: &str, topic: &str) -> Changes {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", servers)
            .set("group.id", kafka::unique_topic("flagd-proposed-reader"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .expect("consumer");
        let mut partitions = TopicPartitionList::new();
        partitions
            .add_partition_offset(topic, 0, Offset::Beginning)
            .expect("partition");
        consumer.assign(&partitions).expect("assign");
        Changes {
            consumer,
            read: Vec::new(),
        }
    }

    /// Reads what arrives for `window`.
    fn poll_for(&mut self, window: Duration) {
        let end = Instant::now() + window;
        while Instant::now() < end {
            if let Some(result) = self.consumer.poll(Duration::from_millis(100)) {
                let message = result.expect("read flag-changes");
                let key = message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default();
                let (event, change) = decode_flag_change(&from_rdkafka(&message), 1 << 20)
                    .expect("a flag change the worker reads");
                assert_eq!(event.id, change.event_id);
                self.read.push((key, change));
            }
        }
    }

    /// Reads until `count` changes in all were read (failing with `bridge`'s log after
    /// [`PATIENCE`]), then [`QUIET`] more, and asserts no more came.
    async fn exactly(&mut self, count: usize, bridge: &mut Bridge) -> &[(String, FlagChange)] {
        let deadline = Instant::now() + PATIENCE;
        while self.read.len() < count {
            bridge.assert_running();
            assert!(
                Instant::now() < deadline,
                "{} of {count} flag changes read: {:#?}\n{}",
                self.read.len(),
                self.read,
                bridge.log_text()
            );
            self.poll_for(Duration::from_millis(200));
            tokio::task::yield_now().await;
        }
        self.poll_for(QUIET);
        assert_eq!(
            self.read.len(),
            count,
            "more flag changes than proposed: {:#?}\n{}",
            self.read,
            bridge.log_text()
        );
        &self.read
    }
}

fn flag(state: &str, default: &str) -> Value {
    json!({"state": state, "variants": {"on": true, "off": false}, "defaultVariant": default})
}

fn flag_file(flags: &[(&str, Value)]) -> String {
    let flags: serde_json::Map<String, Value> = flags
        .iter()
        .map(|(key, definition)| (key.to_string(), definition.clone()))
        .collect();
    serde_json::to_string_pretty(&json!({ "flags": flags })).expect("JSON")
}

async fn broker_and_topic() -> (String, String) {
    let servers = kafka::require_broker();
    let topic = kafka::unique_topic("flagd-proposed-changes");
    kafka::create_topics(&servers, &[&topic], 1).await;
    (servers, topic)
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_proposal_becomes_one_change_and_a_rescan_or_restart_adds_none() {
    let (servers, topic) = broker_and_topic().await;
    let mut bridge = Bridge::start(&servers, &topic);
    let mut changes = Changes::new(&servers, &topic);
    let targeting = json!({
        "$evaluators": { "staff": { "ends_with": [ { "var": "email" }, "@example.com" ] } },
        "flags": {
            "new-checkout": {
                "state": "ENABLED",
                "variants": { "on": true, "off": false },
                "defaultVariant": "off",
                "targeting": { "if": [ { "$ref": "staff" }, "on", "off" ] }
            }
        }
    });
    bridge.propose(
        "checkout.json",
        &serde_json::to_string_pretty(&targeting).unwrap(),
    );
    bridge.propose(
        "search.json",
        &flag_file(&[("search-v2", flag("DISABLED", "on"))]),
    );
    let read = changes.exactly(2, &mut bridge).await.to_vec();
    let by_flag = |name: &str| {
        read.iter()
            .find(|(_, c)| c.flag == name)
            .unwrap_or_else(|| panic!("no change of {name}: {read:#?}"))
            .clone()
    };
    let (key, enable) = by_flag("new-checkout");
    assert_eq!(key, "shop/prod/new-checkout");
    assert_eq!(
        (enable.project.as_str(), enable.environment.as_str()),
        ("shop", "prod")
    );
    assert_eq!(enable.change.kind, ChangeKind::Enable);
    assert_eq!(enable.change.from, None, "never approved");
    assert_eq!(enable.value_format, Some(ValueFormat::Flagd));
    assert!(enable.event_id.starts_with("flagd:"), "{}", enable.event_id);
    // The `$ref` is inlined: the definition stands alone.
    assert_eq!(
        enable.change.to.as_ref().unwrap()["targeting"],
        json!({ "if": [ { "ends_with": [ { "var": "email" }, "@example.com" ] }, "on", "off" ] })
    );
    // Proposed is not approved: nothing is served until a command approves it.
    assert_eq!(bridge.served_flags().await, serde_json::Map::new());
    let (_, disable) = by_flag("search-v2");
    assert_eq!(
        disable.change.kind,
        ChangeKind::Disable,
        "a new flag proposed off"
    );
    assert_eq!(disable.change.to, Some(flag("DISABLED", "on")));

    // Rewritten with its keys in another order: the same definition, nothing new.
    let reordered = r#"{"flags": {"search-v2": {"defaultVariant": "on", "variants": {"off": false, "on": true}, "state": "DISABLED"}}}"#;
    bridge.propose("search.json", reordered);
    changes.exactly(2, &mut bridge).await;

    // A restart recalls what is on the topic unanswered: nothing again.
    bridge.restart();
    bridge.wait_for_log("recalled the flagd proposals").await;
    assert!(
        bridge.log_text().contains("unanswered=2"),
        "{}",
        bridge.log_text()
    );
    changes.exactly(2, &mut bridge).await;

    // The restarted bridge still proposes what changes.
    bridge.propose(
        "search.json",
        &flag_file(&[("search-v2", flag("ENABLED", "on"))]),
    );
    let read = changes.exactly(3, &mut bridge).await;
    let (_, third) = &read[2];
    assert_eq!(third.flag, "search-v2");
    assert_eq!(third.change.kind, ChangeKind::Enable);
    assert_ne!(third.event_id, disable.event_id);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_files_are_reported_with_file_and_line_and_produce_nothing() {
    let (servers, topic) = broker_and_topic().await;
    let mut bridge = Bridge::start(&servers, &topic);
    let mut changes = Changes::new(&servers, &topic);
    bridge.propose("broken.json", "{\n  \"flags\": {\n    \"a\": {,\n  }\n}\n");
    let mut state = flag_file(&[("b", flag("ENABLED", "on"))]);
    state = state.replace("\"ENABLED\"", "\"ON\"");
    bridge.propose("schema.json", &state);
    bridge.propose(
        "default.json",
        &flag_file(&[("c", flag("ENABLED", "maybe"))]),
    );
    bridge.propose("good.json", &flag_file(&[("d", flag("ENABLED", "on"))]));
    bridge.wait_for_log("broken.json:3: not JSON").await;
    bridge.wait_for_log("schema.json:4: flags.b.state").await;
    bridge
        .wait_for_log("default.json:9: flags.c.defaultVariant: unknown variant 'maybe'")
        .await;
    let read = changes.exactly(1, &mut bridge).await;
    assert_eq!(read[0].1.flag, "d", "only the good file's flag");
    // Reported once per content, not on every scan.
    let log = bridge.log_text();
    assert_eq!(count(&log, "broken.json:3: not JSON"), 1, "{log}");
    assert_eq!(count(&log, "unknown variant 'maybe'"), 1, "{log}");
    assert_eq!(
        bridge.outcome_count("invalid").await,
        3,
        "one per file refused"
    );
    // A file that reads again proposes its flags.
    bridge.propose("default.json", &flag_file(&[("c", flag("ENABLED", "on"))]));
    let read = changes.exactly(2, &mut bridge).await;
    assert_eq!(read[1].1.flag, "c");
    // Files the folder does not read: hidden ones and subfolders.
    bridge.propose(".draft.json", &flag_file(&[("e", flag("ENABLED", "on"))]));
    std::fs::create_dir(bridge.folder().join("drafts")).unwrap();
    std::fs::write(
        bridge.folder().join("drafts/f.json"),
        flag_file(&[("f", flag("ENABLED", "on"))]),
    )
    .unwrap();
    changes.exactly(2, &mut bridge).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_kafka_refuses_is_tried_again_on_the_next_scan() {
    use rdkafka::admin::{
        AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
    };
    use rdkafka::client::DefaultClientContext;

    let servers = kafka::require_broker();
    let topic = kafka::unique_topic("flagd-proposed-refusing");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .create()
        .expect("admin client");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    // The broker refuses records above 2000 bytes on this topic.
    let small =
        NewTopic::new(&topic, 1, TopicReplication::Fixed(1)).set("max.message.bytes", "2000");
    for result in admin
        .create_topics([&small], &options)
        .await
        .expect("create")
    {
        result.expect("topic created");
    }
    let mut bridge = Bridge::start(&servers, &topic);
    let mut changes = Changes::new(&servers, &topic);
    let mut big = flag("ENABLED", "on");
    big["metadata"] = json!({ "description": "x".repeat(4000) });
    bridge.propose("big.json", &flag_file(&[("big", big)]));
    bridge.propose(
        "small.json",
        &flag_file(&[("small", flag("ENABLED", "on"))]),
    );
    bridge
        .wait_for_log("Kafka did not take the flag change; trying again on the next scan")
        .await;
    let read = changes.exactly(1, &mut bridge).await;
    assert_eq!(
        read[0].1.flag, "small",
        "the refused change holds up no other"
    );

    // The broker takes it once allowed: nothing was lost.
    let allow =
        AlterConfig::new(ResourceSpecifier::Topic(&topic)).set("max.message.bytes", "1048588");
    for result in admin
        .alter_configs([&allow], &options)
        .await
        .expect("alter")
    {
        result.expect("topic config altered");
    }
    let read = changes.exactly(2, &mut bridge).await;
    assert_eq!(read[1].1.flag, "big");
    assert_eq!(read[1].1.change.kind, ChangeKind::Enable);
}

/// Writes `record` on `topic` as the worker does: a binary-mode approved-flag CloudEvent
/// keyed `project/environment/flag`.
async fn approve(servers: &str, topic: &str, record: &ApprovedFlag) {
    let producer: rdkafka::producer::FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .expect("producer");
    let key = record.flag_key();
    let event = CloudEvent {
        id: record.command_id.clone(),
        source: "/test".into(),
        event_type: APPROVED_FLAG_TYPE.into(),
        time: Some(record.approved_at),
        subject: Some(key.clone()),
        extensions: Default::default(),
        data: serde_json::to_value(record).expect("record JSON"),
    };
    let message = event.to_binary(Some(&key));
    producer
        .send(
            chaosgate::bus::record::to_record(topic, &message),
            Duration::from_secs(30),
        )
        .await
        .expect("approved record produced");
}

/// An approved record of `flag` in `shop`/`prod` serving `definition`.
fn served(flag: &str, definition: Value, proposed: Option<Value>) -> ApprovedFlag {
    ApprovedFlag {
        project: "shop".into(),
        environment: "prod".into(),
        flag: flag.into(),
        definition,
        proposed,
        causation_event_id: format!("test:{flag}"),
        ..approved_flag_example()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_against_what_is_served_and_nothing_for_what_was_decided() {
    let (servers, topic) = broker_and_topic().await;
    let approved = kafka::unique_topic("flagd-proposed-approved");
    kafka::create_topics(&servers, &[&approved], 1).await;
    let on = flag("ENABLED", "on");
    let off = flag("DISABLED", "on");
    let retarget = flag("ENABLED", "off");
    for record in [
        served("retarget", on.clone(), None),
        served("switch-off", on.clone(), None),
        served("switch-on", off.clone(), None),
        // A failed gate: served off, the proposal it decided is still in the folder.
        served("decided", off.clone(), Some(on.clone())),
        served("same", on.clone(), None),
        served("gone", on.clone(), None),
        served("kept", on.clone(), None),
    ] {
        approve(&servers, &approved, &record).await;
    }
    let mut bridge = Bridge::start_with(&servers, &topic, &approved);
    let mut changes = Changes::new(&servers, &topic);
    bridge.propose(
        "flags.json",
        &flag_file(&[
            ("retarget", retarget.clone()),
            ("switch-off", off.clone()),
            ("switch-on", on.clone()),
            ("decided", on.clone()),
            ("same", on.clone()),
        ]),
    );
    bridge.propose("kept.json", &flag_file(&[("kept", on.clone())]));
    let read = changes.exactly(4, &mut bridge).await.to_vec();
    let by_flag = |name: &str| {
        read.iter()
            .map(|(_, c)| c)
            .find(|c| c.flag == name)
            .unwrap_or_else(|| panic!("no change of {name}: {read:#?}"))
            .clone()
    };
    let update = by_flag("retarget");
    assert_eq!(update.change.kind, ChangeKind::Update);
    assert_eq!(update.change.from, Some(on.clone()));
    assert_eq!(update.change.to, Some(retarget.clone()));
    let disable = by_flag("switch-off");
    assert_eq!(disable.change.kind, ChangeKind::Disable);
    assert_eq!(disable.change.from, Some(on.clone()));
    let enable = by_flag("switch-on");
    assert_eq!(enable.change.kind, ChangeKind::Enable);
    assert_eq!(enable.change.from, Some(off.clone()));
    // Gone from the folder while served on: disabled, as served.
    let removed = by_flag("gone");
    assert_eq!(removed.change.kind, ChangeKind::Disable);
    assert_eq!(removed.change.from, Some(on.clone()));
    assert_eq!(removed.change.to, Some(off.clone()));

    // Proposed is not approved: what is served is still what the records approved.
    let served_now = bridge.served_flags().await;
    assert_eq!(served_now["retarget"], on, "{served_now:#?}");
    assert_eq!(
        served_now["switch-on"]["state"], "DISABLED",
        "{served_now:#?}"
    );
    assert_eq!(served_now["gone"]["state"], "ENABLED", "{served_now:#?}");

    // A file that breaks: its flag is not treated as removed.
    bridge.propose("kept.json", "{ \"flags\": ");
    bridge.wait_for_log("kept.json:1: not JSON").await;
    changes.exactly(4, &mut bridge).await;

    // The gate of the update fails: served stays off-ish, the proposal is decided and
    // not proposed again.
    approve(
        &servers,
        &approved,
        &ApprovedFlag {
            causation_event_id: update.event_id.clone(),
            ..served("retarget", flag("DISABLED", "on"), Some(retarget.clone()))
        },
    )
    .await;
    changes.exactly(4, &mut bridge).await;
    // The flag proposed anew is a change again, from what is served now.
    bridge.propose(
        "flags.json",
        &flag_file(&[
            ("retarget", flag("ENABLED", "on")),
            ("switch-off", off.clone()),
            ("switch-on", on.clone()),
            ("decided", on.clone()),
            ("same", on.clone()),
        ]),
    );
    let read = changes.exactly(5, &mut bridge).await;
    let again = &read[4].1;
    assert_eq!(again.flag, "retarget");
    assert_eq!(again.change.kind, ChangeKind::Enable);
    assert_eq!(again.change.from, Some(flag("DISABLED", "on")));
}
