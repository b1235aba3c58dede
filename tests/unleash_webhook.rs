//! The Unleash webhook endpoint of `chaosgate connect unleash`, as Unleash's webhook
//! integration uses it: the real binary, the real broker, bodies shaped as Unleash 7.5
//! posts them (the real one seen on this machine, varied field by field), answers read
//! over HTTP and flag changes read back from the topic.
//!
//! Every wait has a deadline and fails with the bridge's log, so a bug fails a test
//! instead of hanging it.

#[path = "support/kafka.rs"]
mod kafka;
#[path = "support/unleash.rs"]
mod unleash;
#[path = "support/worker.rs"]
mod worker;

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message};
use serde_json::{Value, json};

use chaosgate::bus::record::from_rdkafka;
use chaosgate::contract::flag_change::{FLAG_CHANGE_TYPE, decode_flag_change};
use chaosgate::contract::{ChangeKind, CloudEvent, FlagChange};

use unleash::{CHAOSGATE, HUMAN, UnleashServer};
use worker::{closed_address, experiment_yaml};

/// Upper bound for anything a test waits for: generous, so only a bug reaches it.
const PATIENCE: Duration = Duration::from_secs(60);

/// The webhook secret every bridge here is configured with.
const SECRET: &str = "hook-s3cret";

/// What a test varies in the bridge's configuration.
struct Setup<'a> {
    servers: &'a str,
    flag_changes: &'a str,
    /// `[unleash] url` (the Admin API; a closed port when nothing should reach it).
    unleash_url: String,
    /// `[unleash] token`.
    unleash_token: String,
    hold_while_gating: bool,
    /// Catalog files (name, YAML).
    catalog: Vec<(String, String)>,
}

impl<'a> Setup<'a> {
    /// A bridge producing to `flag_changes` whose Admin API is not there (a closed port),
    /// without `hold_while_gating` and with an empty catalog.
    fn without_admin_api(servers: &'a str, flag_changes: &'a str) -> Setup<'a> {
        Setup {
            servers,
            flag_changes,
            unleash_url: format!("http://{}", closed_address()),
            unleash_token: "admin-api-token".into(),
            hold_while_gating: false,
            catalog: Vec::new(),
        }
    }
}

/// The broker and a new flag-change topic of one partition (so records read back are in
/// the order they were acknowledged).
async fn broker_and_topic(name: &str) -> (String, String) {
    let servers = kafka::require_broker();
    let topic = kafka::unique_topic(name);
    kafka::create_topics(&servers, &[&topic], 1).await;
    (servers, topic)
}

/// A running `chaosgate connect unleash`, killed when dropped.
struct Bridge {
    child: Child,
    log: PathBuf,
    url: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Bridge {
    /// Writes the config and catalog into a temp folder, starts the binary and waits for
    /// `GET /healthz`.
    async fn start(setup: &Setup<'_>) -> Bridge {
        let dir = tempfile::Builder::new()
            .prefix("chaosgate-unleash-webhook-")
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir_all(dir.path().join("catalog")).expect("catalog dir");
        for (name, yaml) in &setup.catalog {
            std::fs::write(dir.path().join("catalog").join(name), yaml).expect("catalog file");
        }
        let listen = closed_address();
        let commands = kafka::unique_topic("unleash-webhook-commands");
        let config = format!(
            r#"[kafka]
bootstrap_servers = "{servers}"
group_id = "{group}"

[kafka.topics]
flag_changes = "{changes}"
commands = "{commands}"

[catalog]
path = "catalog"

[telemetry]
log_format = "text"
log_filter = "info,chaosgate=debug"

[unleash]
url = "{unleash_url}"
token = "{unleash_token}"
actor = "chaosgate"
instance = "test-unleash"
hold_while_gating = {hold}
request_timeout = "3s"

[unleash.webhook]
listen = "{listen}"
token = "{SECRET}"

[unleash.commands]
group_id = "{group}-commands"
"#,
            servers = setup.servers,
            group = kafka::unique_topic("unleash-webhook"),
            changes = setup.flag_changes,
            unleash_url = setup.unleash_url,
            unleash_token = setup.unleash_token,
            hold = setup.hold_while_gating,
        );
        let config_path = dir.path().join("chaosgate.toml");
        std::fs::write(&config_path, config).expect("config file");
        let log = dir.path().join("bridge.log");
        let child = unleash::spawn_bridges(&config_path, dir.path(), &log);
        let mut bridge = Bridge {
            child,
            log,
            url: format!("http://{listen}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("HTTP client"),
            _dir: dir,
        };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(Some(status)) = bridge.child.try_wait() {
                panic!("the bridge exited ({status}):\n{}", bridge.log_text());
            }
            if let Ok(response) = bridge
                .http
                .get(format!("{}/healthz", bridge.url))
                .send()
                .await
            {
                assert_eq!(response.status(), 200, "{}", bridge.log_text());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the bridge does not answer /healthz:\n{}",
                bridge.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bridge
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Posts `body` to the webhook with `authorization` (none when `None`): the status and
    /// the JSON answer.
    async fn post_raw(&self, authorization: Option<&str>, body: Vec<u8>) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}/unleash/webhook", self.url))
            .header("content-type", "application/json")
            .body(body);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.expect("POST /unleash/webhook");
        let status = response.status().as_u16();
        let text = response.text().await.expect("answer body");
        let answer = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("the answer {text:?} is not JSON ({e})"));
        (status, answer)
    }

    /// Posts `event` as Unleash does, with the secret.
    async fn post(&self, event: &Value) -> (u16, Value) {
        self.post_raw(Some(SECRET), event.to_string().into_bytes())
            .await
    }

    /// The value of `chaosgate_unleash_webhooks_total{outcome}` (0 when absent).
    async fn outcome_count(&self, outcome: &str) -> u64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        let prefix = format!("chaosgate_unleash_webhooks_total{{outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .map_or(0, |n| n.trim().parse().expect("a count"))
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An Unleash event as Unleash 7.5.1 posted it here (`feature-environment-enabled` of
/// `checkout-v2` by `admin`), with `type`, `id`, `featureName` and `environment` set.
fn unleash_event(event_type: &str, id: u64, flag: &str, environment: &str) -> Value {
    json!({
        "id": id,
        "type": event_type,
        "createdBy": "admin",
        "createdAt": "2026-11-30T08:23:32.086Z",
        "createdByUserId": -42,
        "data": null,
        "preData": null,
        "tags": [],
        "featureName": flag,
        "project": "default",
        "environment": environment,
        "groupType": "transaction",
        "groupId": "01M8NRTMZQGSGK45ADEB6169F3"
    })
}

/// The flag-change event id the bridge derives for Unleash event `id`.
fn event_id(id: u64) -> String {
    format!("unleash:test-unleash:{id}")
}

/// One record read back from the flag-change topic.
struct Read {
    key: String,
    event: CloudEvent,
    change: FlagChange,
}

/// Reads `topic` from the start until a flag change with `last_event_id` arrives; every
/// record before it, decoded as the worker decodes them.
async fn read_until(servers: &str, topic: &str, last_event_id: &str) -> Vec<Read> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", kafka::unique_topic("unleash-webhook-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + PATIENCE;
    let mut read = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(message)) => message,
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Err(_) => panic!(
                "no flag change {last_event_id} on {topic} within {PATIENCE:?}; read: {:?}",
                read.iter()
                    .map(|r: &Read| r.change.event_id.clone())
                    .collect::<Vec<_>>()
            ),
        };
        let key = String::from_utf8(message.key().expect("a key").to_vec()).expect("UTF-8 key");
        let (event, change) = decode_flag_change(&from_rdkafka(&message), 1 << 20)
            .unwrap_or_else(|e| panic!("record at offset {}: {e}", message.offset()));
        let last = change.event_id == last_event_id;
        read.push(Read { key, event, change });
        if last {
            return read;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unleash_events_become_one_flag_change_each_and_bad_ones_get_a_reason() {
    let (servers, topic) = broker_and_topic("unleash-webhook-changes").await;
    let bridge = Bridge::start(&Setup::without_admin_api(&servers, &topic)).await;
    let log = || bridge.log_text();

    // Turned on, turned off, a strategy changed.
    let enabled = unleash_event(
        "feature-environment-enabled",
        101,
        "checkout-v2",
        "production",
    );
    let (status, answer) = bridge.post(&enabled).await;
    assert_eq!(status, 200, "{answer}\n{}", log());
    assert_eq!(answer["outcome"], "produced", "{answer}");
    assert_eq!(answer["event_id"], event_id(101), "{answer}");
    assert_eq!(answer["topic"], topic.as_str(), "{answer}");
    let disabled = unleash_event(
        "feature-environment-disabled",
        102,
        "checkout-v2",
        "production",
    );
    assert_eq!(bridge.post(&disabled).await.0, 200, "{}", log());
    let old = json!({"id": "6b2c", "name": "flexibleRollout", "parameters": {"rollout": "10", "stickiness": "default", "groupId": "checkout-v2"}, "constraints": [], "segments": []});
    let new = json!({"id": "6b2c", "name": "flexibleRollout", "parameters": {"rollout": "50", "stickiness": "default", "groupId": "checkout-v2"}, "constraints": [{"contextName": "userId", "operator": "IN", "values": ["7"]}], "segments": []});
    let mut update = unleash_event("feature-strategy-update", 103, "checkout-v2", "development");
    update["preData"] = old.clone();
    update["data"] = new.clone();
    assert_eq!(bridge.post(&update).await.0, 200, "{}", log());

    // The same event again: answered 200, nothing new.
    let (status, answer) = bridge.post(&enabled).await;
    assert_eq!(
        (status, &answer["outcome"]),
        (200, &json!("duplicate")),
        "{answer}"
    );
    // Two deliveries of one new event at once: one flag change.
    let twice = unleash_event(
        "feature-environment-enabled",
        104,
        "search-v2",
        "production",
    );
    let (a, b) = tokio::join!(bridge.post(&twice), bridge.post(&twice));
    let mut outcomes = [a.1["outcome"].clone(), b.1["outcome"].clone()];
    outcomes.sort_by_key(|o| o.to_string());
    assert_eq!((a.0, b.0), (200, 200), "{a:?} {b:?}");
    assert_eq!(outcomes, [json!("duplicate"), json!("produced")]);

    // chaosgate's own change coming back: 200, no flag change.
    let mut own = unleash_event(
        "feature-environment-disabled",
        105,
        "checkout-v2",
        "production",
    );
    own["createdBy"] = "chaosgate".into();
    let (status, answer) = bridge.post(&own).await;
    assert_eq!(
        (status, &answer["outcome"]),
        (200, &json!("own_change")),
        "{answer}"
    );
    assert!(
        log().contains("chaosgate's own change came back from Unleash"),
        "{}",
        log()
    );

    // No secret, a wrong one: 401 with the reason, nothing produced.
    let body = unleash_event(
        "feature-environment-enabled",
        106,
        "checkout-v2",
        "production",
    );
    for authorization in [None, Some("wrong"), Some("Bearer wrong")] {
        let (status, answer) = bridge
            .post_raw(authorization, body.to_string().into_bytes())
            .await;
        assert_eq!(status, 401, "{authorization:?}: {answer}");
        assert_eq!(answer["outcome"], "unauthorized");
        assert!(answer["error"].as_str().is_some(), "{answer}");
    }

    // Malformed or unknown: 4xx with the reason naming the field.
    let (status, answer) = bridge
        .post_raw(Some(SECRET), b"<xml>not json</xml>".to_vec())
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("the body is not JSON")),
        "{answer}"
    );
    let mut no_flag = body.clone();
    no_flag.as_object_mut().map(|o| o.remove("featureName"));
    let (status, answer) = bridge.post(&no_flag).await;
    assert_eq!(
        (status, &answer["error"]),
        (422, &json!("featureName: missing"))
    );
    let mut wrong_type = body.clone();
    wrong_type["id"] = "106".into();
    let (status, answer) = bridge.post(&wrong_type).await;
    assert_eq!(
        (status, &answer["error"]),
        (422, &json!("id: text, expected a whole number, 0 or more"))
    );
    let bad_name = unleash_event("feature-environment-enabled", 107, "new~flag", "production");
    let (status, answer) = bridge.post(&bad_name).await;
    assert_eq!(status, 422, "{answer}");
    let error = answer["error"].as_str().expect("error");
    assert!(
        error.starts_with("featureName: \"new~flag\" (8 characters) is not a key name")
            && error.contains("Unleash also allows ~ ! * ' ( )"),
        "{error}"
    );
    let unknown = unleash_event("feature-created", 108, "checkout-v2", "production");
    let (status, answer) = bridge.post(&unknown).await;
    assert_eq!((status, &answer["outcome"]), (422, &json!("ignored")));
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("type: \"feature-created\" is not an event type")),
        "{answer}"
    );
    let (status, answer) = bridge.post_raw(Some(SECRET), vec![b' '; 300 * 1024]).await;
    assert_eq!(status, 413, "{answer}");
    for reason in [
        "featureName: missing",
        "is not an event type chaosgate maps",
    ] {
        assert!(
            log().contains(reason),
            "no log line with {reason:?}:\n{}",
            log()
        );
    }

    // The last one, with `Bearer <secret>` (also accepted), marks the end of the topic.
    let mut add = unleash_event("feature-strategy-add", 109, "checkout-v2", "development");
    add.as_object_mut().map(|o| o.remove("preData"));
    add["data"] = new.clone();
    let (status, answer) = bridge
        .post_raw(
            Some(&format!("Bearer {SECRET}")),
            add.to_string().into_bytes(),
        )
        .await;
    assert_eq!(status, 200, "{answer}\n{}", log());

    let read = read_until(&servers, &topic, &event_id(109)).await;
    let ids: Vec<&str> = read.iter().map(|r| r.change.event_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            event_id(101),
            event_id(102),
            event_id(103),
            event_id(104),
            event_id(109)
        ],
        "one flag change per Unleash event, none for duplicates, own changes or refusals"
    );
    let expected = [
        (
            "default/production/checkout-v2",
            ChangeKind::Enable,
            Some(json!(false)),
            Some(json!(true)),
        ),
        (
            "default/production/checkout-v2",
            ChangeKind::Disable,
            Some(json!(true)),
            Some(json!(false)),
        ),
        (
            "default/development/checkout-v2",
            ChangeKind::Update,
            Some(old),
            Some(new.clone()),
        ),
        (
            "default/production/search-v2",
            ChangeKind::Enable,
            Some(json!(false)),
            Some(json!(true)),
        ),
        (
            "default/development/checkout-v2",
            ChangeKind::Update,
            None,
            Some(new),
        ),
    ];
    for (record, (key, kind, from, to)) in read.iter().zip(expected) {
        assert_eq!(record.key, key);
        assert_eq!(record.change.flag_key(), key);
        assert_eq!(record.change.change.kind, kind, "{key}");
        assert_eq!(record.change.change.from, from, "{key}");
        assert_eq!(record.change.change.to, to, "{key}");
        assert_eq!(record.change.actor.as_deref(), Some("admin"));
        assert_eq!(
            record.change.occurred_at.to_rfc3339(),
            "2026-11-30T08:23:32.086+00:00"
        );
        assert_eq!(record.change.pipeline_id, None);
        assert_eq!(record.event.event_type, FLAG_CHANGE_TYPE);
        assert_eq!(record.event.id, record.change.event_id);
        assert_eq!(
            record.event.source,
            "/chaosgate/connect/unleash/test-unleash"
        );
        assert_eq!(record.event.subject.as_deref(), Some(key));
    }

    for (outcome, count) in [
        ("produced", 5),
        ("duplicate", 2),
        ("own_change", 1),
        ("unauthorized", 3),
        ("rejected", 5),
        ("ignored", 1),
        ("failed", 0),
    ] {
        assert_eq!(
            bridge.outcome_count(outcome).await,
            count,
            "outcome {outcome}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_kafka_the_webhook_answers_503_and_not_2xx() {
    kafka::require_broker();
    let servers = closed_address();
    let bridge = Bridge::start(&Setup::without_admin_api(&servers, "flag-changes")).await;
    let started = Instant::now();
    let event = unleash_event(
        "feature-environment-enabled",
        201,
        "checkout-v2",
        "production",
    );
    let (status, answer) = bridge.post(&event).await;
    assert_eq!(status, 503, "{answer}\n{}", bridge.log_text());
    assert_eq!(answer["outcome"], "failed");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("Kafka did not take the flag change")),
        "{answer}"
    );
    // Within the 10 s Unleash waits for an answer (the delivery timeout is 8 s).
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(bridge.outcome_count("failed").await, 1);
    assert!(
        bridge
            .log_text()
            .contains("the flag change did not reach Kafka"),
        "{}",
        bridge.log_text()
    );
}

/// A catalog whose pipeline `gate` routes flags `checkout-*` of `environment` and gates
/// `enable` (the default `gated_changes`); its experiment never runs here.
fn gating_catalog(environment: &str) -> Vec<(String, String)> {
    let marker = std::env::temp_dir().join("chaosgate-unleash-webhook-unused-marker");
    vec![
        (
            "experiment.yaml".into(),
            experiment_yaml("blip", "1s", &marker, &closed_address()),
        ),
        (
            "pipeline.yaml".into(),
            format!(
                "kind: pipeline\nid: gate\nroutes:\n  - environment: {environment}\n    flag: \"checkout-*\"\n\
                 stages:\n  - id: chaos\n    type: feature_flag\n    steps:\n      - id: blip\n\
                 \x20       experiment: blip\n        expected_resilience_score: 80\n"
            ),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_that_cannot_be_set_answers_503_and_produces_nothing() {
    let (servers, topic) = broker_and_topic("unleash-webhook-hold").await;
    // The Admin API is not there: the hold cannot be set.
    let bridge = Bridge::start(&Setup {
        hold_while_gating: true,
        catalog: gating_catalog("test"),
        ..Setup::without_admin_api(&servers, &topic)
    })
    .await;
    let gated = unleash_event("feature-environment-enabled", 301, "checkout-v2", "test");
    let (status, answer) = bridge.post(&gated).await;
    assert_eq!(status, 503, "{answer}\n{}", bridge.log_text());
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("cannot hold the flag off while it is gated")),
        "{answer}"
    );
    // Not held (so produced at once): an enable no pipeline routes, and a disable.
    let unrouted = unleash_event("feature-environment-enabled", 302, "search-v2", "test");
    assert_eq!(bridge.post(&unrouted).await.0, 200, "{}", bridge.log_text());
    let disable = unleash_event("feature-environment-disabled", 303, "checkout-v2", "test");
    assert_eq!(bridge.post(&disable).await.0, 200, "{}", bridge.log_text());
    let read = read_until(&servers, &topic, &event_id(303)).await;
    let ids: Vec<&str> = read.iter().map(|r| r.change.event_id.as_str()).collect();
    assert_eq!(
        ids,
        [event_id(302), event_id(303)],
        "no flag change for 301"
    );
}

/// Turns flag `checkout-v2` of project `default` on or off in `environment` as `actor`
/// ([`HUMAN`]: the admin token; [`CHAOSGATE`]: its personal access token), and returns
/// the id of the event Unleash recorded for it.
async fn switch(server: &UnleashServer, environment: &str, on: bool, actor: &str) -> u64 {
    if actor == HUMAN {
        server
            .set_enabled("default", environment, "checkout-v2", on)
            .await;
    } else {
        let path = format!(
            "/api/admin/projects/default/features/checkout-v2/environments/{environment}/{}",
            if on { "on" } else { "off" }
        );
        let token = server.chaosgate_token().await;
        let (status, body) = server
            .request(reqwest::Method::POST, &path, &token, None)
            .await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    event_by(server, on, environment, actor).await
}

/// The id of Unleash's newest event turning `checkout-v2` on (`on`) or off in
/// `environment` by `actor`, polled (chaosgate's own changes follow a webhook).
async fn event_by(server: &UnleashServer, on: bool, environment: &str, actor: &str) -> u64 {
    let event_type = if on {
        "feature-environment-enabled"
    } else {
        "feature-environment-disabled"
    };
    let deadline = Instant::now() + PATIENCE;
    loop {
        let events = server.events().await;
        let found = events.iter().find(|e| {
            e["type"] == event_type
                && e["featureName"] == "checkout-v2"
                && e["environment"] == environment
                && e["createdBy"] == actor
        });
        if let Some(event) = found {
            return event["id"].as_u64().expect("a numeric event id");
        }
        assert!(
            Instant::now() < deadline,
            "no {event_type} of checkout-v2 in {environment} by {actor} in Unleash's events: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until Unleash has recorded its webhook delivery of event `id` to integration
/// `addon`; the delivery's `state` (`success`, `failed`) and details.
async fn delivery_of(server: &UnleashServer, addon: i64, id: u64) -> (String, String) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let deliveries = server.webhook_deliveries(addon).await;
        if let Some(delivery) = deliveries.iter().find(|d| d["event"]["id"] == id) {
            return (
                delivery["state"].as_str().unwrap_or_default().to_string(),
                delivery["stateDetails"].to_string(),
            );
        }
        assert!(
            Instant::now() < deadline,
            "Unleash did not deliver event {id}: {deliveries:?}\n{}",
            server.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A bridge for `server` with its chaosgate token, and Unleash's webhook integration
/// pointing at it (Unleash restarted so it takes effect): the bridge and the integration.
async fn bridge_for(
    server: &UnleashServer,
    servers: &str,
    topic: &str,
    hold_while_gating: bool,
    catalog: Vec<(String, String)>,
) -> (Bridge, i64) {
    let bridge = Bridge::start(&Setup {
        servers,
        flag_changes: topic,
        unleash_url: server.url().to_string(),
        unleash_token: server.chaosgate_token().await,
        hold_while_gating,
        catalog,
    })
    .await;
    let addon = server
        .add_webhook(&format!("{}/unleash/webhook", bridge.url), SECRET)
        .await;
    (bridge, addon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_turned_on_in_unleash_reaches_flag_changes_once_and_chaosgates_own_change_not() {
    let (servers, topic) = broker_and_topic("unleash-webhook-real").await;
    let server = UnleashServer::new().await;
    server.create_flag("default", "checkout-v2").await;
    let (bridge, addon) = bridge_for(&server, &servers, &topic, false, Vec::new()).await;

    // The human turns it on; chaosgate (its token) turns it off.
    let on = switch(&server, "production", true, HUMAN).await;
    let own = switch(&server, "production", false, CHAOSGATE).await;
    for id in [on, own] {
        let (state, details) = delivery_of(&server, addon, id).await;
        let log = bridge.log_text();
        assert_eq!(state, "success", "event {id}: {details}\n{log}");
    }
    // Then the human turns it on in development: the last record to read.
    let last = switch(&server, "development", true, HUMAN).await;

    let read = read_until(&servers, &topic, &event_id(last)).await;
    let switches: Vec<(&str, ChangeKind, &str)> = read
        .iter()
        .filter(|r| r.change.change.kind != ChangeKind::Update)
        .map(|r| {
            (
                r.change.event_id.as_str(),
                r.change.change.kind,
                r.change.actor.as_deref().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        switches,
        [
            (event_id(on).as_str(), ChangeKind::Enable, HUMAN),
            (event_id(last).as_str(), ChangeKind::Enable, HUMAN),
        ],
        "the human's enables once each, chaosgate's own disable ({}) not at all",
        event_id(own)
    );
    let first = read
        .iter()
        .find(|r| r.change.event_id == event_id(on))
        .expect("the enable");
    assert_eq!(first.key, "default/production/checkout-v2");
    // Turning on a flag with no strategy adds Unleash's default one in the same
    // transaction: one click, one gated change. The strategy event is recognised as part
    // of the toggle (its transaction group holds the enable) and not produced.
    assert!(
        read.iter()
            .all(|r| r.change.change.kind != ChangeKind::Update),
        "the default strategy added with the enable was produced as a change of its own: {:?}",
        read.iter()
            .map(|r| (&r.key, r.change.change.kind))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        bridge.outcome_count("part_of_toggle").await,
        2,
        "the default strategies of production and development\n{}",
        bridge.log_text()
    );
    assert_eq!(bridge.outcome_count("own_change").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_while_gating_turns_a_gated_enable_off_in_unleash_before_it_is_produced() {
    let (servers, topic) = broker_and_topic("unleash-webhook-held").await;
    let server = UnleashServer::new().await;
    server.create_flag("default", "checkout-v2").await;
    let catalog = gating_catalog("production");
    let (bridge, addon) = bridge_for(&server, &servers, &topic, true, catalog).await;

    let on = switch(&server, "production", true, HUMAN).await;
    let read = read_until(&servers, &topic, &event_id(on)).await;
    assert_eq!(
        read.last().map(|r| r.change.change.kind),
        Some(ChangeKind::Enable)
    );
    // Held off before it was produced: off in Unleash now, by chaosgate.
    assert!(
        !server
            .is_enabled("default", "production", "checkout-v2")
            .await,
        "the flag is on while its gate runs:\n{}",
        bridge.log_text()
    );
    let off = event_by(&server, false, "production", CHAOSGATE).await;
    assert!(
        off > on,
        "the hold ({off}) comes after the human's enable ({on})"
    );
    assert_eq!(delivery_of(&server, addon, on).await.0, "success");
    // The hold's own echo is dropped by the loop guard.
    let (state, details) = delivery_of(&server, addon, off).await;
    assert_eq!(state, "success", "{details}");
    // An enable no pipeline routes (development) is not held: the last record to read.
    let last = switch(&server, "development", true, HUMAN).await;
    let read = read_until(&servers, &topic, &event_id(last)).await;
    assert!(
        !read.iter().any(|r| r.change.event_id == event_id(off)),
        "the hold's echo became a flag change"
    );
    assert!(
        server
            .is_enabled("default", "development", "checkout-v2")
            .await
    );
    assert!(
        !server
            .is_enabled("default", "production", "checkout-v2")
            .await
    );
    assert_eq!(bridge.outcome_count("own_change").await, 1);
    assert!(
        bridge
            .log_text()
            .contains("flag held off in Unleash while its gate runs"),
        "{}",
        bridge.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_flag_whose_change_kafka_does_not_take_stays_off_and_unleash_sees_a_failure() {
    kafka::require_broker();
    let server = UnleashServer::new().await;
    server.create_flag("default", "checkout-v2").await;
    // No broker at all: the hold is set, the produce then fails.
    let (bridge, addon) = bridge_for(
        &server,
        &closed_address(),
        "flag-changes",
        true,
        gating_catalog("production"),
    )
    .await;
    let on = switch(&server, "production", true, HUMAN).await;
    let (state, details) = delivery_of(&server, addon, on).await;
    assert_eq!(state, "failed", "{details}\n{}", bridge.log_text());
    // Unleash 7.5.1 records any non-2xx answer as "failed with status code: undefined"
    // (ky throws an HTTPError, whose status `addons/addon.js` reads from `e.code`).
    assert!(details.contains("Webhook request failed"), "{details}");
    assert!(
        !server
            .is_enabled("default", "production", "checkout-v2")
            .await,
        "held off"
    );
    let log = bridge.log_text();
    assert!(
        log.contains("the flag is held OFF in Unleash but its flag change did not reach Kafka"),
        "{log}"
    );
    // The enable only: the default strategy Unleash added with it is part of it.
    assert_eq!(bridge.outcome_count("failed").await, 1);
    assert_eq!(bridge.outcome_count("part_of_toggle").await, 1);
}
