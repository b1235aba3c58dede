//! Notifications end to end: the real `chaosgate run` on the real broker, with a
//! `[notify]` section, POSTing to real HTTP receivers (axum servers in this test) that
//! record every request and answer what the test tells them.

#[path = "support/kafka.rs"]
mod kafka;
#[path = "support/worker.rs"]
mod worker;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use chaosgate::config::EventKind;
use chaosgate::connect::notify::event::key;
use chaosgate::contract::guard_record::{GUARD_RECORD_TYPE, guard_record_example};
use chaosgate::contract::{ChangeKind, CloudEvent, FlagCommand, ids};
use serde_json::Value;

use worker::{Harness, Received, Settings, closed_address, experiment_yaml, pipeline_yaml};

/// Upper bound for anything a test waits for: generous, so only a bug reaches it.
const PATIENCE: Duration = Duration::from_secs(90);

/// A catalog with one failing gate, for flags `risky-*` (environment `test`): other
/// flags are unrouted, answered `enable` (or their `disable`) at once.
fn risky_gate(harness: &Harness) {
    harness.catalog_file(
        "fail.yaml",
        &experiment_yaml("fails", "1s", &harness.marker("f"), &closed_address()),
    );
    harness.catalog_file(
        "risky.yaml",
        &pipeline_yaml("risky-gate", Some("risky-*"), &["fails"]),
    );
}

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Request {
    headers: HeaderMap,
    body: Vec<u8>,
    at: Instant,
}

impl Request {
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

#[derive(Default)]
struct Seen {
    requests: Vec<Request>,
    /// Statuses to answer, in order; 200 once they run out.
    answers: VecDeque<u16>,
}

/// A real HTTP receiver on loopback.
struct Receiver {
    url: String,
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Serves on a free port, answering `answers` then 200.
    async fn start(answers: &[u16]) -> Receiver {
        Receiver::start_on("127.0.0.1:0", answers).await
    }

    async fn start_on(address: &str, answers: &[u16]) -> Receiver {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .expect("bind receiver");
        let url = format!("http://{}/hook", listener.local_addr().expect("address"));
        let seen = Arc::new(Mutex::new(Seen {
            requests: Vec::new(),
            answers: answers.iter().copied().collect(),
        }));
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(record))
            .with_state(seen.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url, seen, task }
    }

    /// From now on, answers 200.
    fn answer_ok(&self) {
        self.seen.lock().expect("lock").answers.clear();
    }

    fn requests(&self) -> Vec<Request> {
        self.seen.lock().expect("lock").requests.clone()
    }

    /// Waits until `done` holds for the requests so far, or fails showing them.
    async fn wait_for(
        &self,
        harness: &Harness,
        what: &str,
        done: impl Fn(&[Request]) -> bool,
    ) -> Vec<Request> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let requests = self.requests();
            if done(&requests) {
                return requests;
            }
            if Instant::now() >= deadline {
                let bodies: Vec<String> = requests
                    .iter()
                    .map(|r| String::from_utf8_lossy(&r.body).into_owned())
                    .collect();
                panic!(
                    "waited {PATIENCE:?} for {what}; the receiver got {bodies:#?}\n{}",
                    harness.log_tails()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    State(seen): State<Arc<Mutex<Seen>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1], &'static str) {
    let mut seen = seen.lock().expect("lock");
    seen.requests.push(Request {
        headers,
        body: body.to_vec(),
        at: Instant::now(),
    });
    let status = seen.answers.pop_front().unwrap_or(200);
    // A 429 asks for 4 s (longer than the notifier's first backoff).
    let retry_after = if status == 429 { "4" } else { "0" };
    (
        StatusCode::from_u16(status).expect("status"),
        [("retry-after", retry_after)],
        "ok",
    )
}

/// `config` with `section` (a `[notify]` TOML section) appended.
fn with_notify(config: &Path, section: &str) -> PathBuf {
    let mut text = std::fs::read_to_string(config).expect("config");
    text.push('\n');
    text.push_str(section);
    std::fs::write(config, text).expect("config");
    config.to_path_buf()
}

/// Starts `chaosgate run` with the harness's config plus `section` (`[notify]` TOML).
fn spawn_notifying(harness: &Harness, section: &str) -> worker::Worker {
    let config = with_notify(&harness.config("worker", &Settings::default()), section);
    harness.spawn("worker", &config)
}

/// The bodies of `requests` whose CloudEvent type is that of `event`.
fn of_event(requests: &[Request], event: EventKind) -> Vec<Request> {
    let wanted = format!("dev.chaosgate.notification.{}.v1", event.as_str());
    requests
        .iter()
        .filter(|r| r.json()["type"] == wanted.as_str())
        .cloned()
        .collect()
}

/// The `ce_id` of a record read back.
fn ce_id<T>(received: &Received<T>) -> String {
    received
        .headers
        .iter()
        .find(|(name, _)| name == "ce_id")
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .expect("ce_id header")
}

/// Checks the headers every notification carries: the quoted `Idempotency-Key` and
/// `webhook-id` are the CloudEvent's id, the timestamp is of the try, and the signature
/// is the Standard Webhooks HMAC of `secret`.
fn check_headers(request: &Request, secret: &[u8]) {
    let id = request.header("webhook-id");
    assert_eq!(request.header("idempotency-key"), format!("\"{id}\""));
    assert_eq!(request.json()["id"], id.as_str());
    assert_eq!(
        request.header("content-type"),
        "application/cloudevents+json"
    );
    let timestamp = request.header("webhook-timestamp");
    let sent: i64 = timestamp.parse().expect("a unix timestamp");
    assert!(
        (chrono::Utc::now().timestamp() - sent).abs() < 120,
        "webhook-timestamp {sent}"
    );
    let signing = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(&request.body);
    let tag = aws_lc_rs::hmac::sign(&signing, &signed);
    assert_eq!(
        request.header("webhook-signature"),
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
        )
    );
}

/// The value of one sample of `metric` with `labels` in a Prometheus text `page`.
fn sample(page: &str, metric: &str, labels: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(&format!("{metric}{{")) && labels.split(',').all(|p| l.contains(p)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn metrics_page(address: &str) -> String {
    reqwest::get(format!("http://{address}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_gate_is_told_to_a_webhook_with_its_facts_and_to_slack_with_a_link() {
    let servers = kafka::require_broker();
    let harness = Harness::new(&servers, "notify-facts", 1).await;
    risky_gate(&harness);
    let hooks = Receiver::start(&[]).await;
    let chat = Receiver::start(&[]).await;
    let secret_file = harness.dir.path().join("hooks.secret");
    std::fs::write(&secret_file, "whsec_c2VjcmV0LWZvci10ZXN0cw==\n").expect("secret");
    let url_file = harness.dir.path().join("chat.url");
    std::fs::write(&url_file, format!("{}\n", chat.url)).expect("url file");
    let _worker = spawn_notifying(
        &harness,
        &format!(
            r#"[notify]
view_url = "http://view.example/chaos/"

[[notify.receivers]]
name = "hooks"
kind = "webhook"
url = "{hooks}"
events = ["command_issued", "step_failed"]
secret_file = "{secret}"

[[notify.receivers]]
name = "chat"
kind = "slack"
url_file = "{url_file}"
events = ["step_failed"]
"#,
            hooks = hooks.url,
            secret = secret_file.display(),
            url_file = url_file.display(),
        ),
    );
    let collector = harness.collect();
    let change = worker::change("risky-one", ChangeKind::Enable, None);
    harness.produce_change(&change).await;
    let outputs = harness
        .wait_for(&collector, "the command", PATIENCE, |o| {
            !o.commands_for(&change.event_id).is_empty()
                && o.final_runs_for(&change.event_id).len() == 1
        })
        .await;
    let received: &Received<FlagCommand> = outputs
        .commands
        .iter()
        .find(|c| c.value.causation_event_id == change.event_id)
        .expect("command");
    let command = &received.value;
    let run = outputs.final_runs_for(&change.event_id)[0].clone();
    let run_ce_id = ce_id(
        outputs
            .runs
            .iter()
            .find(|r| r.value.run_id == run.run_id && r.value.status == run.status)
            .expect("final run record"),
    );
    let execution = command.pipeline_execution_id.clone().expect("an execution");
    let link = format!("http://view.example/chaos/executions/{execution}");

    let requests = hooks
        .wait_for(&harness, "command_issued and step_failed", |r| {
            !of_event(r, EventKind::CommandIssued).is_empty()
                && !of_event(r, EventKind::StepFailed).is_empty()
        })
        .await;
    let secret = b"secret-for-tests";
    let issued = &of_event(&requests, EventKind::CommandIssued)[0];
    check_headers(issued, secret);
    assert_eq!(
        issued.header("webhook-id"),
        key("hooks", EventKind::CommandIssued, &ce_id(received)),
        "the key is derived from the command record's CloudEvent id"
    );
    let body = issued.json();
    assert_eq!(body["specversion"], "1.0");
    assert_eq!(body["subject"], "test/test/risky-one");
    let data = &body["data"];
    assert_eq!(data["event"], "command_issued");
    assert_eq!(data["flag"]["key"], "risky-one");
    assert_eq!(data["pipeline_id"], "risky-gate");
    assert_eq!(data["pipeline_execution_id"], execution.as_str());
    assert_eq!(data["command"], command.command.as_str());
    assert_eq!(data["command_id"], command.command_id.as_str());
    assert_eq!(data["reason"], command.reason.as_str());
    assert_eq!(data["link"], link.as_str());

    let failed = &of_event(&requests, EventKind::StepFailed)[0];
    check_headers(failed, secret);
    assert_eq!(
        failed.header("webhook-id"),
        key("hooks", EventKind::StepFailed, &run_ce_id)
    );
    let data = &failed.json()["data"];
    assert_eq!(data["step"], "fails");
    assert_eq!(data["stage"], "chaos");
    assert_eq!(data["status"], run.status.as_str());
    assert_eq!(data["run_id"], run.run_id.as_str());
    assert_eq!(data["link"], link.as_str());

    let said = chat
        .wait_for(&harness, "the Slack message", |r| !r.is_empty())
        .await;
    let message = said[0].json();
    let text = message["text"].as_str().expect("text");
    assert!(
        text.contains("step `fails`") && text.contains("`test/test/risky-one`"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "<{link}|Open the execution in the chaos experiments view>"
        )),
        "{text}"
    );
    assert_eq!(said[0].header("content-type"), "application/json");
    // Filtered: no command_issued to the chat, and nothing twice to anyone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(chat.requests().len(), 1, "chat wants step_failed only");
    assert_eq!(hooks.requests().len(), 2, "one request per event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_failing_twice_gets_three_tries_with_one_key_and_a_refusal_is_given_up() {
    let servers = kafka::require_broker();
    let harness = Harness::new(&servers, "notify-retry", 1).await;
    risky_gate(&harness);
    let flaky = Receiver::start(&[500, 500]).await;
    let gone = Receiver::start(&[410]).await;
    let worker = spawn_notifying(
        &harness,
        &format!(
            r#"[[notify.receivers]]
name = "flaky"
kind = "webhook"
url = "{flaky}"

[[notify.receivers]]
name = "gone"
kind = "webhook"
url = "{gone}"
events = ["command_issued"]
"#,
            flaky = flaky.url,
            gone = gone.url,
        ),
    );
    // No pipeline routes this flag: the worker answers `enable` at once.
    let change = worker::change("plain-one", ChangeKind::Enable, None);
    harness.produce_change(&change).await;
    let tries = flaky
        .wait_for(&harness, "three tries", |r| r.len() >= 3)
        .await;
    let ids: Vec<String> = tries.iter().map(|r| r.header("webhook-id")).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "one key: {ids:?}");
    assert!(
        tries.iter().all(|r| r.body == tries[0].body),
        "the same body on every try"
    );
    assert!(
        tries[2].at - tries[0].at >= Duration::from_secs(2),
        "backoff between the tries: {:?}",
        tries[2].at - tries[0].at
    );
    gone.wait_for(&harness, "one try", |r| !r.is_empty()).await;
    let address = worker.http_address(PATIENCE).await;
    let deadline = Instant::now() + PATIENCE;
    let page = loop {
        let page = metrics_page(&address).await;
        let given_up = sample(
            &page,
            "chaosgate_notifications_total",
            "receiver=\"gone\",event=\"command_issued\",outcome=\"given_up\"",
        );
        let delivered = sample(
            &page,
            "chaosgate_notifications_total",
            "receiver=\"flaky\",event=\"command_issued\",outcome=\"delivered\"",
        );
        if given_up.is_some() && delivered.is_some() {
            break page;
        }
        assert!(Instant::now() < deadline, "no counts yet:\n{page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let count = |labels: &str| sample(&page, "chaosgate_notifications_total", labels);
    assert_eq!(
        count("receiver=\"flaky\",event=\"command_issued\",outcome=\"delivered\""),
        Some(1.0)
    );
    assert_eq!(
        count("receiver=\"flaky\",event=\"command_issued\",outcome=\"retried\""),
        Some(2.0)
    );
    assert_eq!(
        count("receiver=\"gone\",event=\"command_issued\",outcome=\"given_up\""),
        Some(1.0)
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(flaky.requests().len(), 3, "delivered: not sent again");
    assert_eq!(gone.requests().len(), 1, "410: given up at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_does_not_delay_the_command_and_is_told_once_it_is_up() {
    let servers = kafka::require_broker();
    let harness = Harness::new(&servers, "notify-down", 1).await;
    risky_gate(&harness);
    let up = Receiver::start(&[]).await;
    let down_address = closed_address();
    let _worker = spawn_notifying(
        &harness,
        &format!(
            r#"[[notify.receivers]]
name = "up"
kind = "webhook"
url = "{up}"

[[notify.receivers]]
name = "down"
kind = "slack"
url = "http://{down_address}/hook"
"#,
            up = up.url,
        ),
    );
    let collector = harness.collect();
    let change = worker::change("plain-two", ChangeKind::Disable, None);
    let sent = Instant::now();
    harness.produce_change(&change).await;
    harness
        .wait_for(&collector, "the command", Duration::from_secs(30), |o| {
            !o.commands_for(&change.event_id).is_empty()
        })
        .await;
    let command_after = sent.elapsed();
    up.wait_for(&harness, "the notification", |r| !r.is_empty())
        .await;
    // Let the down receiver fail a few tries before it comes up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let down = Receiver::start_on(&down_address, &[]).await;
    let told = down
        .wait_for(&harness, "the notification after it came up", |r| {
            !r.is_empty()
        })
        .await;
    let text = told[0].json()["text"].as_str().expect("text").to_string();
    assert!(
        text.contains("issued `disable`") && text.contains("`test/test/plain-two`"),
        "{text}"
    );
    assert!(
        harness
            .logs()
            .contains("notification not delivered yet; trying again"),
        "the down receiver was tried and failed first"
    );
    assert!(
        !harness.logs().contains(&down_address),
        "the receiver's URL is a secret, never logged"
    );
    eprintln!("the command came {command_after:?} after the change");
}

#[test]
fn a_bad_notify_section_stops_the_start_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("catalog")).expect("catalog");
    for (name, yaml) in [
        (
            "e.yaml",
            experiment_yaml("e", "1s", &dir.path().join("m"), &closed_address()),
        ),
        ("p.yaml", pipeline_yaml("p", Some("p-*"), &["e"])),
    ] {
        std::fs::write(dir.path().join("catalog").join(name), yaml).expect("catalog file");
    }
    let base = "[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n\n[catalog]\npath = \"catalog\"\n\n";
    let cases = [
        (
            "[[notify.receivers]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"http://h/a\"\n\n\
             [[notify.receivers]]\nname = \"b\"\nkind = \"slack\"\nurl = \"ftp://s3cret-host/x\"\n",
            "notify.receivers[1].url: not an http(s) URL",
        ),
        (
            "[[notify.receivers]]\nname = \"a\"\nkind = \"webhook\"\nurl_file = \"missing-url\"\n",
            "notify.receivers[0].url_file",
        ),
        (
            "[[notify.receivers]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"http://h/a\"\nevents = [\"step_failed\", \"lunch_ready\"]\n",
            "lunch_ready",
        ),
    ];
    for (section, expected) in cases {
        let config = dir.path().join("c.toml");
        std::fs::write(&config, format!("{base}{section}")).expect("config");
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_chaosgate"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .output()
            .expect("run chaosgate");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in:\n{stderr}"
        );
        assert!(!stderr.contains("s3cret"), "the URL is a secret:\n{stderr}");
    }
}

#[test]
fn the_notify_example_is_a_valid_config() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/notify.example.toml");
    let config =
        chaosgate::config::Config::load(&path, Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    let notify = config.notify.expect("a [notify] section");
    let names: Vec<&str> = notify.receivers.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["ops-webhook", "chat"]);
    assert_eq!(notify.receivers[0].events, EventKind::ALL.to_vec());
    assert!(
        notify.receivers[1]
            .url_file
            .as_ref()
            .is_some_and(|p| p.starts_with(path.parent().unwrap())),
        "url_file is relative to the config file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_left_behind_is_told_to_the_receiver_that_wants_only_that() {
    let servers = kafka::require_broker();
    let harness = Harness::new(&servers, "notify-fault", 1).await;
    // The revert fails: the fault stays (its marker file is left).
    let marker = harness.marker("stuck");
    let experiment = experiment_yaml("sticks", "1s", &marker, &closed_address()).replace(
        &format!("argv: [rm, -f, \"{}\"]", marker.display()),
        "argv: [\"false\"]",
    );
    assert!(experiment.contains("[\"false\"]"), "{experiment}");
    harness.catalog_file("stuck.yaml", &experiment);
    harness.catalog_file(
        "sticky.yaml",
        &pipeline_yaml("sticky-gate", Some("sticky-*"), &["sticks"]),
    );
    let faults = Receiver::start(&[]).await;
    let _worker = spawn_notifying(
        &harness,
        &format!(
            r#"[notify]
view_url = "http://view.example"

[[notify.receivers]]
name = "faults"
kind = "webhook"
url = "{url}"
events = ["fault_not_reverted"]
"#,
            url = faults.url,
        ),
    );
    let collector = harness.collect();
    let change = worker::change("sticky-one", ChangeKind::Enable, None);
    harness.produce_change(&change).await;
    harness
        .wait_for(&collector, "the command", PATIENCE, |o| {
            !o.commands_for(&change.event_id).is_empty()
        })
        .await;
    let told = faults
        .wait_for(&harness, "fault_not_reverted", |r| !r.is_empty())
        .await;
    let body = told[0].json();
    assert_eq!(
        body["type"], "dev.chaosgate.notification.fault_not_reverted.v1",
        "{body}"
    );
    assert_eq!(body["data"]["faults"], serde_json::json!(["marker"]));
    assert_eq!(body["data"]["step"], "sticks");
    assert!(marker.exists(), "the fault was indeed left behind");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        faults.requests().len(),
        1,
        "only fault_not_reverted: not the command, not the failed step"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_step_waiting_and_a_guard_that_fired_are_told() {
    let servers = kafka::require_broker();
    let harness = Harness::new(&servers, "notify-holds", 1).await;
    let up = worker::Listener::start().await;
    harness.catalog_file(
        "quick.yaml",
        &experiment_yaml("quick", "300ms", &harness.marker("q"), &up.address),
    );
    harness.catalog_file(
        "approve.yaml",
        "kind: pipeline\nid: approve\nroutes:\n  - environment: test\n    flag: \"appr-*\"\nstages:\n  - id: canary\n    type: feature_flag\n    steps:\n      - id: quick\n        experiment: quick\n        expected_resilience_score: 80\n      - id: oncall-ok\n        approval:\n          message: check the canary dashboards\n          timeout: 5m\n",
    );
    let hooks = Receiver::start(&[]).await;
    let _worker = spawn_notifying(
        &harness,
        &format!(
            r#"[[notify.receivers]]
name = "oncall"
kind = "webhook"
url = "{url}"
events = ["approval_needed", "guard_fired"]
"#,
            url = hooks.url,
        ),
    );
    let change = worker::change("appr-one", ChangeKind::Enable, None);
    harness.produce_change(&change).await;
    let told = hooks
        .wait_for(&harness, "approval_needed", |r| {
            !of_event(r, EventKind::ApprovalNeeded).is_empty()
        })
        .await;
    let data = &of_event(&told, EventKind::ApprovalNeeded)[0].json()["data"];
    assert_eq!(data["step"], "oncall-ok");
    assert_eq!(data["stage"], "canary");
    assert_eq!(data["status"], "waiting");
    assert_eq!(
        data["pipeline_execution_id"],
        ids::pipeline_execution_id(&change.event_id, "approve").as_str()
    );
    assert!(
        data["reason"]
            .as_str()
            .is_some_and(|r| r.contains("check the canary dashboards")),
        "{data}"
    );

    // A guard record as the worker writes it when a guard fires.
    let guard = guard_record_example();
    let record = CloudEvent {
        id: uuid::Uuid::new_v4().to_string(),
        source: "/chaosgate".into(),
        event_type: GUARD_RECORD_TYPE.into(),
        time: Some(chrono::Utc::now()),
        subject: Some(guard.pipeline_execution_id.clone()),
        extensions: Default::default(),
        data: serde_json::to_value(&guard).expect("guard record"),
    }
    .to_binary(Some(&guard.pipeline_execution_id));
    harness.produce(&harness.topics.runs, &record).await;
    let told = hooks
        .wait_for(&harness, "guard_fired", |r| {
            !of_event(r, EventKind::GuardFired).is_empty()
        })
        .await;
    let fired = of_event(&told, EventKind::GuardFired)[0].json();
    assert_eq!(fired["subject"], "shop/production/checkout-v2");
    assert_eq!(fired["data"]["command"], "disable");
    assert_eq!(
        fired["data"]["reason"],
        guard.reason.as_deref().expect("a reason")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        hooks.requests().len(),
        2,
        "no command_issued or step events for this receiver"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_cut_off_by_a_sigkill_is_sent_again_with_the_same_key() {
    let servers = kafka::require_broker();
    let harness = Harness::new(&servers, "notify-kill", 1).await;
    risky_gate(&harness);
    let failing = Receiver::start(&[503; 1000]).await;
    let section = format!(
        r#"[[notify.receivers]]
name = "later"
kind = "webhook"
url = "{url}"
events = ["command_issued"]
"#,
        url = failing.url,
    );
    let mut first = spawn_notifying(&harness, &section);
    let change = worker::change("plain-three", ChangeKind::Enable, None);
    harness.produce_change(&change).await;
    let tried = failing
        .wait_for(&harness, "two failed tries", |r| r.len() >= 2)
        .await;
    let key = tried[0].header("webhook-id");
    first.kill();
    first.wait_exit(PATIENCE).await;
    failing.answer_ok();
    let before = failing.requests().len();
    let _second = harness.spawn("worker", &harness.dir.path().join("worker.toml"));
    let told = failing
        .wait_for(&harness, "the notification after the restart", |r| {
            r.len() > before
        })
        .await;
    assert_eq!(told[before].header("webhook-id"), key, "the same key");
    assert_eq!(told[before].body, tried[0].body, "the same body");
    let ours = told
        .iter()
        .filter(|r| r.header("webhook-id") == key)
        .count();
    assert_eq!(ours, told.len(), "only that one notification: {ours}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_waits_for_its_retry_after_and_one_failing_past_max_elapsed_is_given_up() {
    let servers = kafka::require_broker();
    let harness = Harness::new(&servers, "notify-limits", 1).await;
    risky_gate(&harness);
    let limited = Receiver::start(&[429]).await;
    let tired = Receiver::start(&[503; 1000]).await;
    let worker = spawn_notifying(
        &harness,
        &format!(
            r#"[[notify.receivers]]
name = "limited"
kind = "slack"
url = "{limited}"

[[notify.receivers]]
name = "tired"
kind = "webhook"
url = "{tired}"
max_elapsed = "3s"
"#,
            limited = limited.url,
            tired = tired.url,
        ),
    );
    let first = worker::change("plain-four", ChangeKind::Enable, None);
    harness.produce_change(&first).await;
    let tries = limited
        .wait_for(&harness, "a 429 and a second try", |r| r.len() >= 2)
        .await;
    assert!(
        tries[1].at - tries[0].at >= Duration::from_secs(4),
        "the second try waited for Retry-After: 4 s, not {:?}",
        tries[1].at - tries[0].at
    );
    let address = worker.http_address(PATIENCE).await;
    let given_up = "receiver=\"tired\",event=\"command_issued\",outcome=\"given_up\"";
    let deadline = Instant::now() + PATIENCE;
    while sample(
        &metrics_page(&address).await,
        "chaosgate_notifications_total",
        given_up,
    )
    .is_none()
    {
        assert!(Instant::now() < deadline, "{}", harness.log_tails());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first_key = tired.requests()[0].header("webhook-id");
    assert!(tired.requests().len() >= 2, "tried again before giving up");
    // Given up, the receiver's next notification goes on.
    let second = worker::change("plain-five", ChangeKind::Enable, None);
    harness.produce_change(&second).await;
    tired
        .wait_for(&harness, "the next notification", |r| {
            r.iter().any(|r| r.header("webhook-id") != first_key)
        })
        .await;
}
