//! `chaosgate connect alertmanager` as Prometheus Alertmanager uses it: the real binary,
//! the real broker, the real worker, over real HTTP; bodies as Alertmanager 0.25 posts
//! them (`tests/fixtures/alertmanager-v4.json`, captured from it) and, in one test, the
//! real Alertmanager (`prometheus-alertmanager`, which `scripts/test.sh` installs; that
//! test FAILS without it).
//!
//! Every wait has a deadline and fails with the logs, so a bug fails a test instead of
//! hanging it.

#[path = "support/alertmanager.rs"]
mod alertmanager;
#[path = "support/connect.rs"]
mod connect;
#[path = "support/kafka.rs"]
mod kafka;
#[path = "support/worker.rs"]
mod worker;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use chaosgate::contract::{ChangeKind, CommandKind, ReasonCode};

use alertmanager::{Alertmanager, PATIENCE, Receiver, alertmanager_binary, flag_changes};
use worker::{Harness, Settings, closed_address, experiment_yaml, pipeline_yaml};

/// The token every receiver here is configured with.
const TOKEN: &str = "am-s3cr3t-token";

/// The flag the rule of every test turns off. The captured alert's labels and its
/// `chaosgate_flags` annotation name `shop/production/checkout-v2`: flags come from the
/// configuration, never from the alert.
const FLAG: &str = "test/test/checkout-v2";

/// The captured notification (Alertmanager 0.25.0, one firing `CheckoutErrors` alert).
fn captured() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/alertmanager-v4.json");
    let text = std::fs::read_to_string(&path).expect("the captured notification");
    serde_json::from_str(&text).expect("JSON")
}

/// The `[alertmanager]` section of every test: listen on `listen`, the token from
/// `token_file` (when given), one rule for page-severity `CheckoutErrors` turning
/// [`FLAG`] off, one for any warning turning off the `search-*` flag its `flag` label
/// names.
fn alertmanager_section(listen: &str, token_file: Option<&Path>) -> String {
    let token = token_file.map_or(String::new(), |file| {
        format!("token_file = \"{}\"\n", file.display())
    });
    format!(
        r#"
[alertmanager]
listen = "{listen}"
{token}project = "test"
environment = "test"

[[alertmanager.rules]]
match = {{ alertname = "CheckoutErrors", severity = "page" }}
flags = ["test/checkout-v2"]

[[alertmanager.rules]]
match = {{ severity = "warning" }}
flags_from_label = "flag"
allowed = ["test/test/search-*"]
"#
    )
}

/// The worker with a pipeline that gates `checkout-*` in environment `test` (with an
/// experiment that would fail), so a `disable` that were gated would show a run.
async fn worker_world(name: &str) -> (Harness, worker::Worker, worker::Collector) {
    let servers = kafka::require_broker();
    let harness = Harness::new(&servers, name, 1).await;
    harness.catalog_file(
        "fails.yaml",
        &experiment_yaml("fails", "1s", &harness.marker("f"), &closed_address()),
    );
    harness.catalog_file(
        "gate.yaml",
        &pipeline_yaml("checkout-gate", Some("checkout-*"), &["fails"]),
    );
    let config = harness.config("worker", &Settings::default());
    let worker = harness.spawn("worker", &config);
    let collector = harness.collect();
    (harness, worker, collector)
}

/// The worker's config with an `[alertmanager]` section on `listen` and the token in a
/// file: the receiver's config.
fn receiver_config(harness: &Harness, listen: &str) -> (PathBuf, PathBuf) {
    let token_file = harness.dir.path().join("alertmanager-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
    let worker_config = harness.config("receiver", &Settings::default());
    let mut text = std::fs::read_to_string(&worker_config).expect("config");
    text.push_str(&alertmanager_section(listen, Some(&token_file)));
    let config = harness.dir.path().join("alertmanager.toml");
    std::fs::write(&config, text).expect("receiver config");
    (config, token_file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_alertmanager_alert_turns_the_flag_off_once() {
    let (harness, _worker, collector) = worker_world("am-captured").await;
    let listen = closed_address();
    let (config, _) = receiver_config(&harness, &listen);
    let receiver = Receiver::start(&config, harness.dir.path(), &listen, TOKEN).await;

    let (status, answer) = receiver.post(&captured()).await;
    assert_eq!(status, 200, "{answer}\n{}", receiver.log_text());
    assert_eq!(answer["outcome"], "produced", "{answer}");
    let change = &answer["alerts"][0]["changes"][0];
    assert_eq!(change["flag"], FLAG, "{answer}");
    let event_id = change["event_id"].as_str().expect("event_id").to_string();

    let outputs = harness
        .wait_for(&collector, "the disable command", PATIENCE, |o| {
            !o.commands_for(&event_id).is_empty()
        })
        .await;
    let command = outputs.commands_for(&event_id)[0].clone();
    assert_eq!(command.command, CommandKind::Disable);
    assert_eq!(
        (
            command.project.as_str(),
            command.environment.as_str(),
            command.flag.as_str()
        ),
        ("test", "test", "checkout-v2")
    );
    assert_eq!(
        command.reason_code,
        ReasonCode::Requested,
        "passed on at once"
    );
    assert_eq!(command.pipeline_id, None, "no pipeline decided it");
    assert!(
        outputs.runs_for(&event_id).is_empty(),
        "a requested disable runs no experiment: {}",
        outputs.describe()
    );
    let on_topic = flag_changes(&harness.servers, &harness.topics.flag_changes);
    assert_eq!(on_topic.len(), 1, "{on_topic:#?}");
    let (key, produced) = &on_topic[0];
    assert_eq!(key, FLAG);
    assert_eq!(produced.event_id, event_id);
    assert_eq!(produced.change.kind, ChangeKind::Disable);
    assert_eq!(
        produced.actor.as_deref(),
        Some("alertmanager:chaosgate/CheckoutErrors")
    );

    // The same notification again (Alertmanager's retry or repeat): nothing new.
    let (status, answer) = receiver.post(&captured()).await;
    assert_eq!(
        (status, &answer["outcome"]),
        (200, &json!("duplicate")),
        "{answer}"
    );
    assert_eq!(receiver.outcome_count("produced").await, 1);
    assert_eq!(receiver.outcome_count("duplicate").await, 1);

    // After a restart the receiver has forgotten it: produced again, with the same event
    // id, which the worker answers with the same command id.
    drop(receiver);
    let receiver = Receiver::start(&config, harness.dir.path(), &listen, TOKEN).await;
    let (status, answer) = receiver.post(&captured()).await;
    assert_eq!(
        (status, &answer["outcome"]),
        (200, &json!("produced")),
        "{answer}"
    );
    assert_eq!(
        answer["alerts"][0]["changes"][0]["event_id"],
        event_id.as_str()
    );
    let outputs = harness
        .wait_for(&collector, "the second answer", PATIENCE, |o| {
            o.commands_for(&event_id).len() >= 2
        })
        .await;
    let on_topic = flag_changes(&harness.servers, &harness.topics.flag_changes);
    assert_eq!(on_topic.len(), 2, "{on_topic:#?}");
    assert!(
        on_topic.iter().all(|(_, c)| c.event_id == event_id),
        "one distinct event id: {on_topic:#?}"
    );
    let commands = outputs.commands_for(&event_id);
    assert!(
        commands.iter().all(|c| c.command_id == command.command_id),
        "one distinct command id: {}",
        outputs.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_resolved_and_unmatched_alerts_produce_nothing() {
    let servers = kafka::require_broker();
    let harness = Harness::new(&servers, "am-refusals", 1).await;
    let listen = closed_address();
    let (config, _) = receiver_config(&harness, &listen);
    let receiver = Receiver::start(&config, harness.dir.path(), &listen, TOKEN).await;
    let body = captured().to_string().into_bytes();

    for (authorization, what) in [
        (None, "no Authorization"),
        (Some("Bearer wrong-token".to_string()), "a wrong token"),
        (Some(TOKEN.to_string()), "the token without a scheme"),
        (
            Some(basic("alertmanager", "wrong-token")),
            "a wrong password",
        ),
    ] {
        let (status, answer) = receiver
            .post_raw(authorization.as_deref(), body.clone())
            .await;
        assert_eq!(status, 401, "{what}: {answer}");
        assert_eq!(answer["outcome"], "unauthorized", "{what}: {answer}");
    }

    let mut resolved = captured();
    resolved["status"] = json!("resolved");
    resolved["alerts"][0]["status"] = json!("resolved");
    resolved["alerts"][0]["endsAt"] = json!("2026-11-30T12:40:19.107181749Z");
    let (status, answer) = receiver.post(&resolved).await;
    assert_eq!(
        (status, &answer["outcome"]),
        (200, &json!("ignored")),
        "{answer}"
    );
    assert_eq!(answer["alerts"][0]["outcome"], "resolved", "{answer}");

    let mut unmatched = captured();
    unmatched["alerts"][0]["labels"]["severity"] = json!("info");
    let (status, answer) = receiver.post(&unmatched).await;
    assert_eq!(
        (status, &answer["outcome"]),
        (200, &json!("ignored")),
        "{answer}"
    );
    assert_eq!(answer["alerts"][0]["outcome"], "unmatched", "{answer}");

    // A warning's `flag` label names checkout-v2, which its rule does not allow.
    let (status, answer) = receiver.post(&warning("checkout-v2")).await;
    assert_eq!(
        (status, &answer["outcome"]),
        (200, &json!("ignored")),
        "{answer}"
    );
    assert_eq!(answer["alerts"][0]["outcome"], "not_allowed", "{answer}");

    let mut malformed = captured();
    malformed["alerts"][0]
        .as_object_mut()
        .expect("an alert")
        .remove("fingerprint");
    let (status, answer) = receiver.post(&malformed).await;
    assert_eq!(status, 400, "{answer}");
    let error = answer["error"].as_str().expect("error");
    assert!(
        error.starts_with("alerts[0]") && error.contains("fingerprint"),
        "{error}"
    );
    let mut bad_time = captured();
    bad_time["alerts"][0]["startsAt"] = json!("half past twelve");
    let (status, answer) = receiver.post(&bad_time).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("alerts[0].startsAt:")),
        "{answer}"
    );
    let (status, answer) = receiver
        .post_raw(Some(&format!("Bearer {TOKEN}")), b"[1, 2".to_vec())
        .await;
    assert_eq!(
        (status, &answer["outcome"]),
        (400, &json!("rejected")),
        "{answer}"
    );
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("a JSON array")),
        "{answer}"
    );
    let mut huge = captured();
    huge["alerts"][0]["annotations"]["description"] = json!("x".repeat(1100 * 1024));
    let (status, answer) = receiver.post(&huge).await;
    assert_eq!(
        (status, &answer["outcome"]),
        (413, &json!("rejected")),
        "{answer}"
    );

    assert!(
        flag_changes(&harness.servers, &harness.topics.flag_changes).is_empty(),
        "nothing produced:\n{}",
        receiver.log_text()
    );
    // Basic auth with the token as password works. A notification of the captured alert
    // and of a warning naming an allowed flag: their two changes are the only ones.
    let mut both = captured();
    let search = warning("search-v2")["alerts"][0].clone();
    both["alerts"].as_array_mut().expect("alerts").push(search);
    let (status, answer) = receiver
        .post_raw(
            Some(&basic("alertmanager", TOKEN)),
            both.to_string().into_bytes(),
        )
        .await;
    assert_eq!(
        (status, &answer["outcome"]),
        (200, &json!("produced")),
        "{answer}"
    );
    let mut keys: Vec<String> = flag_changes(&harness.servers, &harness.topics.flag_changes)
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    keys.sort();
    assert_eq!(keys, [FLAG, "test/test/search-v2"]);
    for (outcome, count) in [
        ("unauthorized", 4),
        ("resolved", 1),
        ("unmatched", 1),
        ("not_allowed", 1),
        ("rejected", 4),
        ("produced", 2),
    ] {
        assert_eq!(receiver.outcome_count(outcome).await, count, "{outcome}");
    }
}

/// A notification of one firing `SlowSearch` warning whose `flag` label is `flag`.
fn warning(flag: &str) -> Value {
    let mut notification = captured();
    let alert = &mut notification["alerts"][0];
    alert["labels"] = json!({"alertname": "SlowSearch", "severity": "warning", "flag": flag});
    alert["fingerprint"] = json!("5e4c9d0b7a6f1e23");
    notification
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {credentials}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_unavailable_is_a_503_so_alertmanager_retries() {
    let dir = tempfile::tempdir().expect("temp dir");
    let listen = closed_address();
    let config = dir.path().join("alertmanager.toml");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("token file");
    std::fs::write(
        &config,
        format!(
            r#"[kafka]
bootstrap_servers = "{closed}"

[kafka.properties]
"message.timeout.ms" = "1500"

[catalog]
path = "catalog"

[telemetry]
log_format = "text"
{section}"#,
            closed = closed_address(),
            section = alertmanager_section(&listen, Some(&token_file)),
        ),
    )
    .expect("config");
    let receiver = Receiver::start(&config, dir.path(), &listen, TOKEN).await;
    let (status, answer) = receiver.post(&captured()).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["outcome"], "failed", "{answer}");
    assert_eq!(answer["alerts"][0]["changes"][0]["outcome"], "failed");
    // Not remembered as produced: the retry tries again (and fails again here).
    let (status, answer) = receiver.post(&captured()).await;
    assert_eq!(
        (status, &answer["outcome"]),
        (503, &json!("failed")),
        "{answer}"
    );
}

#[test]
fn the_receiver_refuses_to_start_without_a_token_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("alertmanager.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbootstrap_servers = \"{}\"\n\n[catalog]\npath = \"catalog\"\n{}",
            kafka::bootstrap(),
            alertmanager_section(&closed_address(), None)
        ),
    )
    .expect("config");
    let log = dir.path().join("receiver.log");
    let mut child = connect::spawn_connect("alertmanager", &config, dir.path(), &log);
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the receiver started without a token");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("alertmanager.token_file") && text.contains("CHAOSGATE_ALERTMANAGER__TOKEN"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_alertmanager_alert_turns_the_flag_off() {
    let (harness, _worker, collector) = worker_world("am-real").await;
    let listen = closed_address();
    let (config, token_file) = receiver_config(&harness, &listen);
    let receiver = Receiver::start(&config, harness.dir.path(), &listen, TOKEN).await;
    let alertmanager = Alertmanager::start(
        harness.dir.path(),
        &format!("{}/alertmanager/webhook", receiver.url),
        &token_file,
    )
    .await;
    let started = chrono::Utc::now();
    let alert = |ends_at: Option<chrono::DateTime<chrono::Utc>>| {
        let mut alert = json!({
            "labels": {"alertname": "CheckoutErrors", "severity": "page", "service": "checkout"},
            "annotations": {"summary": "checkout error rate 7%"},
            "startsAt": started.to_rfc3339(),
            "generatorURL": "http://prometheus.test/graph",
        });
        if let Some(at) = ends_at {
            alert["endsAt"] = json!(at.to_rfc3339());
        }
        json!([alert])
    };
    alertmanager.push(&alert(None)).await;

    let outputs = harness
        .wait_for(&collector, "a disable command", PATIENCE, |o| {
            !o.commands.is_empty()
        })
        .await;
    let command = &outputs.commands[0].value;
    assert_eq!(
        command.command,
        CommandKind::Disable,
        "{}",
        outputs.describe()
    );
    assert_eq!(
        format!(
            "{}/{}/{}",
            command.project, command.environment, command.flag
        ),
        FLAG
    );
    assert_eq!(command.reason_code, ReasonCode::Requested);
    let on_topic = flag_changes(&harness.servers, &harness.topics.flag_changes);
    assert_eq!(on_topic.len(), 1, "{on_topic:#?}");
    assert_eq!(on_topic[0].1.event_id, command.causation_event_id);
    assert_eq!(
        on_topic[0].1.actor.as_deref(),
        Some("alertmanager:chaosgate/CheckoutErrors")
    );

    // Resolved: Alertmanager tells the receiver, which turns nothing back on.
    alertmanager.push(&alert(Some(chrono::Utc::now()))).await;
    let deadline = Instant::now() + PATIENCE;
    while receiver.outcome_count("resolved").await == 0 {
        assert!(
            Instant::now() < deadline,
            "Alertmanager did not send the resolved alert:\n{}\n{}",
            alertmanager.log_text(),
            receiver.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        flag_changes(&harness.servers, &harness.topics.flag_changes).len(),
        1,
        "a resolved alert produces nothing"
    );
    assert!(
        !alertmanager.log_text().contains("Notify for alerts failed"),
        "{}",
        alertmanager.log_text()
    );
}

/// A file of the repository.
fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn the_example_config_is_a_valid_receiver_config() {
    use chaosgate::config::Config;

    let path = repo("deploy/alertmanager.example.toml");
    let env = [(
        "CHAOSGATE_ALERTMANAGER__TOKEN".to_string(),
        "from-the-environment".to_string(),
    )];
    let config = Config::load(&path, env).unwrap_or_else(|e| panic!("{e}"));
    let section =
        chaosgate::connect::alertmanager::section(&config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(section.listen.port(), 8017);
    assert_eq!(
        section.token().as_deref(),
        Ok("from-the-environment"),
        "the token from CHAOSGATE_ALERTMANAGER__TOKEN"
    );
    let rules = section.resolved_rules().expect("rules");
    let keys: Vec<String> = rules[0].flags.iter().map(|f| f.key()).collect();
    assert_eq!(
        keys,
        [
            "shop/production/checkout-v2",
            "shop/production/one-click-buy"
        ]
    );
    assert!(rules[2].from_label.is_some());
    assert!(
        config
            .secrets()
            .scrub("token from-the-environment")
            .contains("token ***"),
        "the token is masked in logs"
    );
    // Without a token the receiver refuses the section, naming the key.
    let config = Config::load(&path, Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    let error = chaosgate::connect::alertmanager::section(&config)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(error.contains("alertmanager.token_file"), "{error}");
}

#[test]
fn the_example_alertmanager_config_passes_amtool_and_posts_to_the_receiver() {
    let path = repo("deploy/alertmanager/alertmanager.yml");
    let amtool = std::env::var_os("AMTOOL_BIN")
        .filter(|b| !b.is_empty())
        .map(PathBuf::from)
        .or_else(|| alertmanager_binary().parent().map(|dir| dir.join("amtool")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no amtool beside Alertmanager: install prometheus-alertmanager or set AMTOOL_BIN"
            )
        });
    let output = Command::new(&amtool)
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("run amtool");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&path).expect("alertmanager.yml");
    let url = format!(":8017{}", chaosgate::connect::alertmanager::endpoint::PATH);
    assert!(text.contains(&url), "the webhook posts to {url}");
}
