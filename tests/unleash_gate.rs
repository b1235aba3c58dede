//! Unleash gated end to end, every part real: an Unleash server (its own database on the
//! test script's PostgreSQL), the Kafka broker, the worker (`chaosgate run`) and the
//! bridges (`chaosgate connect unleash`) as separate processes. A person turns a flag on
//! through Unleash's Admin API; Unleash's webhook integration tells the bridge; the
//! worker gates the change with a pipeline whose experiment passes or fails; the bridge
//! applies the command through the Admin API; the test reads the flag back from Unleash.

#[path = "support/kafka.rs"]
mod kafka;
#[path = "support/unleash.rs"]
mod unleash;
#[path = "support/worker.rs"]
mod worker;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use chaosgate::contract::{CloudEvent, CommandKind, FlagChange, ReasonCode, RunStatus};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use unleash::UnleashServer;
use worker::{Harness, Listener, Settings, closed_address, experiment_yaml};

/// Upper bound for anything a test waits for: generous, so only a bug reaches it.
const PATIENCE: Duration = Duration::from_secs(90);
/// The value Unleash's webhook integration sends in `Authorization`.
const WEBHOOK_SECRET: &str = "webhook-s3cret-for-the-gate-test";
const PROJECT: &str = "default";
const ENVIRONMENT: &str = "production";

/// One test's world: Unleash, the worker's harness, the worker and the bridges.
struct Loop {
    unleash: UnleashServer,
    harness: Harness,
    _worker: worker::Worker,
    bridge: Bridge,
    /// The probe's target when the experiment passes (nothing listens when it fails).
    _target: Option<Listener>,
}

/// A running `chaosgate connect unleash`, SIGKILLed when dropped.
struct Bridge {
    child: Child,
    log: PathBuf,
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Loop {
    /// Everything running, with a pipeline routing `checkout-*` in Unleash's
    /// `default`/`production` to one experiment that passes (`passes`) or fails, lasting
    /// `duration`.
    async fn start(name: &str, passes: bool, duration: &str, hold_while_gating: bool) -> Loop {
        let servers = kafka::require_broker();
        let unleash = UnleashServer::new().await;
        let harness = Harness::new(&servers, name, 1).await;
        let listener = if passes {
            Some(Listener::start().await)
        } else {
            None
        };
        let target = listener
            .as_ref()
            .map_or_else(closed_address, |l| l.address.clone());
        harness.catalog_file(
            "experiment.yaml",
            &experiment_yaml(
                "checkout-experiment",
                duration,
                &harness.marker("m"),
                &target,
            ),
        );
        harness.catalog_file(
            "pipeline.yaml",
            &format!(
                "kind: pipeline\nid: checkout-gate\nroutes:\n  - project: {PROJECT}\n    environment: {ENVIRONMENT}\n    flag: \"checkout-*\"\nstages:\n  - id: chaos\n    type: feature_flag\n    steps:\n      - id: checkout-experiment\n        experiment: checkout-experiment\n        expected_resilience_score: 80\n"
            ),
        );
        let config = harness.config("worker", &Settings::default());
        let webhook = closed_address();
        let token = unleash.chaosgate_token().await;
        append_unleash_section(
            &config,
            &unleash,
            &token,
            &webhook,
            hold_while_gating,
            name,
            unleash::CHAOSGATE,
        );
        let worker = harness.spawn("worker", &config);
        let bridge = spawn_bridge(&config, harness.dir.path());
        wait_healthy(&bridge, &webhook).await;
        unleash
            .add_webhook(&format!("http://{webhook}/unleash/webhook"), WEBHOOK_SECRET)
            .await;
        Loop {
            unleash,
            harness,
            _worker: worker,
            bridge,
            _target: listener,
        }
    }

    /// The worker's and the bridge's logs, and Unleash's last lines, for a failure.
    fn logs(&self) -> String {
        format!(
            "{}\n--- bridge\n{}\n--- unleash\n{}",
            self.harness.log_tails(),
            std::fs::read_to_string(&self.bridge.log).unwrap_or_default(),
            self.unleash.log_tail(30)
        )
    }

    /// A person creates `flag` and turns it on in production through Unleash's API.
    async fn person_turns_on(&self, flag: &str) {
        self.unleash.create_flag(PROJECT, flag).await;
        self.unleash
            .set_enabled(PROJECT, ENVIRONMENT, flag, true)
            .await;
    }

    async fn is_on(&self, flag: &str) -> bool {
        self.unleash.is_enabled(PROJECT, ENVIRONMENT, flag).await
    }

    /// Waits until the flag reads `on` in Unleash.
    async fn wait_flag(&self, flag: &str, on: bool, what: &str) {
        let deadline = Instant::now() + PATIENCE;
        while self.is_on(flag).await != on {
            assert!(
                Instant::now() < deadline,
                "{what}: {flag} is not {} in Unleash after {PATIENCE:?}\n{}",
                if on { "on" } else { "off" },
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn append_unleash_section(
    config: &Path,
    unleash: &UnleashServer,
    token: &str,
    webhook: &str,
    hold: bool,
    name: &str,
    actor: &str,
) {
    let mut text = std::fs::read_to_string(config).expect("worker config");
    text.push_str(&format!(
        r#"
[unleash]
url = "{url}"
token = "{token}"
actor = "{actor}"
hold_while_gating = {hold}
request_timeout = "5s"

[unleash.webhook]
listen = "{webhook}"
token = "{WEBHOOK_SECRET}"

[unleash.commands]
group_id = "{group}"
max_backoff = "2s"
"#,
        url = unleash.url(),
        group = kafka::unique_topic(&format!("{name}-bridge")),
    ));
    std::fs::write(config, text).expect("config with [unleash]");
}

fn spawn_bridge(config: &Path, dir: &Path) -> Bridge {
    let log = dir.join("bridge.log");
    let child = unleash::spawn_bridges(config, dir, &log);
    Bridge { child, log }
}

async fn wait_healthy(bridge: &Bridge, webhook: &str) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(response) = http.get(format!("http://{webhook}/healthz")).send().await
            && response.status().is_success()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the bridge does not answer /healthz:\n{}",
            std::fs::read_to_string(&bridge.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every flag change on `topic` (one partition) for `flag`, read to the end.
async fn flag_changes(servers: &str, topic: &str, flag: &str) -> Vec<FlagChange> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", kafka::unique_topic("unleash-gate-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let (_, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .expect("watermarks");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .expect("assignment");
    consumer.assign(&assignment).expect("assign");
    let mut changes = Vec::new();
    let mut next = 0;
    while next < high {
        let message = tokio::time::timeout(PATIENCE, consumer.recv())
            .await
            .expect("flag-changes within patience")
            .expect("a record");
        next = rdkafka::Message::offset(&message) + 1;
        let record = chaosgate::bus::record::from_rdkafka(&message);
        let event = CloudEvent::decode(&record).expect("a CloudEvent");
        let change: FlagChange = serde_json::from_value(event.data).expect("a flag change");
        if change.flag == flag {
            changes.push(change);
        }
    }
    changes
}

/// Waits for the first command for `flag`, then a while longer, and returns them all.
async fn commands_settled(l: &Loop, flag: &str) -> Vec<chaosgate::contract::FlagCommand> {
    let collector = l.harness.collect();
    l.harness
        .wait_for(&collector, "a command for the flag", PATIENCE, |o| {
            o.commands.iter().any(|c| c.value.flag == flag)
        })
        .await;
    // Long enough for an echo of the bridge's own change to come back through Unleash
    // (events are announced every second), reach the worker and be answered, were it
    // gated again.
    tokio::time::sleep(Duration::from_secs(6)).await;
    collector
        .snapshot()
        .commands
        .iter()
        .filter(|c| c.value.flag == flag)
        .map(|c| c.value.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_gate_turns_the_flag_off_in_unleash_with_one_disable_and_the_echo_not_gated() {
    let l = Loop::start("unleash-fail", false, "1s", false).await;
    let flag = "checkout-v2";
    l.person_turns_on(flag).await;

    let commands = commands_settled(&l, flag).await;
    assert_eq!(commands.len(), 1, "one command: {commands:?}\n{}", l.logs());
    assert_eq!(commands[0].command, CommandKind::Disable, "{}", l.logs());
    assert_eq!(commands[0].reason_code, ReasonCode::Failed);
    l.wait_flag(flag, false, "after the failing gate").await;

    let changes = flag_changes(&l.harness.servers, &l.harness.topics.flag_changes, flag).await;
    assert_eq!(
        changes.len(),
        1,
        "only the person's change is gated, not chaosgate's own disable coming back: {changes:?}"
    );
    assert_eq!(changes[0].actor.as_deref(), Some(unleash::HUMAN));
    assert_eq!(commands[0].causation_event_id, changes[0].event_id);
    // Unleash's own log shows chaosgate's disable, made with chaosgate's token.
    let events = l.unleash.events().await;
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "feature-environment-disabled"
                && e["featureName"] == flag
                && e["createdBy"] == unleash::CHAOSGATE),
        "no disable by chaosgate in Unleash's event log: {events:?}"
    );
    assert!(!l.is_on(flag).await, "the flag is back on\n{}", l.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_gate_leaves_the_flag_on() {
    let l = Loop::start("unleash-pass", true, "1s", false).await;
    let flag = "checkout-v3";
    l.person_turns_on(flag).await;

    let commands = commands_settled(&l, flag).await;
    assert_eq!(commands.len(), 1, "one command: {commands:?}\n{}", l.logs());
    assert_eq!(commands[0].command, CommandKind::Enable, "{}", l.logs());
    assert_eq!(commands[0].reason_code, ReasonCode::Passed);
    assert!(l.is_on(flag).await, "the flag went off\n{}", l.logs());
    let changes = flag_changes(&l.harness.servers, &l.harness.topics.flag_changes, flag).await;
    assert_eq!(changes.len(), 1, "{changes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_hold_while_gating_the_flag_is_off_while_its_gate_runs_and_on_after() {
    // A 4 s experiment: the gate takes at least that long.
    let l = Loop::start("unleash-hold", true, "4s", true).await;
    let flag = "checkout-v4";
    l.unleash.create_flag(PROJECT, flag).await;
    let collector = l.harness.collect();
    l.unleash
        .set_enabled(PROJECT, ENVIRONMENT, flag, true)
        .await;
    let turned_on = Instant::now();

    // Off, seen through Unleash's API, while no command has been issued yet.
    l.wait_flag(flag, false, "held while gating").await;
    let held_after = turned_on.elapsed();
    let snapshot = collector.snapshot();
    assert!(
        !snapshot.commands.iter().any(|c| c.value.flag == flag),
        "the gate had already answered when the hold was seen"
    );
    assert!(
        snapshot
            .runs
            .iter()
            .all(|r| r.value.flag.key != flag || r.value.status == RunStatus::Running),
        "the gate's run had already finished when the hold was seen"
    );
    eprintln!("held off {held_after:?} after the person turned it on");

    let commands = commands_settled(&l, flag).await;
    assert_eq!(commands.len(), 1, "one command: {commands:?}\n{}", l.logs());
    assert_eq!(commands[0].command, CommandKind::Enable, "{}", l.logs());
    l.wait_flag(flag, true, "after the passing gate").await;
    let changes = flag_changes(&l.harness.servers, &l.harness.topics.flag_changes, flag).await;
    assert_eq!(
        changes.len(),
        1,
        "the hold's off and chaosgate's on are not gated: {changes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_strategy_change_is_confirmed_and_does_not_turn_an_off_flag_on() {
    let l = Loop::start("unleash-update", true, "1s", false).await;
    let flag = "checkout-v5";
    l.unleash.create_flag(PROJECT, flag).await;
    // The person adds a strategy in production while the flag is off there.
    let (status, strategy) = l
        .unleash
        .request(
            reqwest::Method::POST,
            &format!("/api/admin/projects/{PROJECT}/features/{flag}/environments/{ENVIRONMENT}/strategies"),
            l.unleash.admin_token(),
            Some(serde_json::json!({"name": "flexibleRollout", "parameters": {"rollout": "50", "stickiness": "default", "groupId": flag}})),
        )
        .await;
    assert!(status.is_success(), "{status}: {strategy}");

    let commands = commands_settled(&l, flag).await;
    assert_eq!(commands.len(), 1, "one command: {commands:?}\n{}", l.logs());
    assert_eq!(commands[0].command, CommandKind::Enable, "{}", l.logs());
    let changes = flag_changes(&l.harness.servers, &l.harness.topics.flag_changes, flag).await;
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(
        changes[0].change.kind,
        chaosgate::contract::ChangeKind::Update
    );
    // Wait for the bridge to have handled the command, then read the flag back: the
    // enable confirmed the strategy change; it did not turn the flag on.
    let deadline = Instant::now() + PATIENCE;
    while !std::fs::read_to_string(&l.bridge.log)
        .unwrap_or_default()
        .contains("confirmed: the gated strategy change is live")
    {
        assert!(Instant::now() < deadline, "no confirmation\n{}", l.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !l.is_on(flag).await,
        "the enable turned the flag on\n{}",
        l.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_actor_stops_the_bridges_at_start_naming_the_right_one() {
    let servers = kafka::require_broker();
    let unleash = UnleashServer::new().await;
    let harness = Harness::new(&servers, "unleash-actor", 1).await;
    let config = harness.config("worker", &Settings::default());
    let token = unleash.chaosgate_token().await;
    let webhook = closed_address();
    append_unleash_section(
        &config,
        &unleash,
        &token,
        &webhook,
        true,
        "unleash-actor",
        "Chaos Gate",
    );
    let mut bridge = spawn_bridge(&config, harness.dir.path());
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = bridge.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the bridges started with a wrong actor"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = std::fs::read_to_string(&bridge.log).unwrap_or_default();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(
        log.contains(&format!(
            "unleash.actor = \"Chaos Gate\", but Unleash records the changes made with unleash.token as \"{}\"",
            unleash::CHAOSGATE
        )) && log.contains(&format!("set unleash.actor = \"{}\"", unleash::CHAOSGATE)),
        "{log}"
    );
}
