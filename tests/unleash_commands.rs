//! The command side of `chaosgate connect unleash` against a real Unleash server and the
//! real broker: flag commands produced as the worker writes them (binary CloudEvents
//! keyed `project/environment/flag`) are applied through Unleash's Admin API and read
//! back through it; a dry run is not applied, nor a command of an aborted transaction
//! (`read_committed`); a late, older `enable` does not undo a newer `disable`; a command
//! due while Unleash is down is applied once it is back, and one cut off by shutdown is
//! delivered again; a 429 waits for its `Retry-After`; a revert puts an updated or
//! removed strategy back; a flag Unleash does not have (404) and a bad token (401) end
//! as dead letters of class `command_not_applied` without holding up other flags.
//!
//! Each test runs the real binary (`chaosgate connect unleash --config FILE`) with its
//! own topics, consumer group and Unleash server (`tests/support/unleash.rs`).

#[path = "support/kafka.rs"]
mod kafka;
#[path = "support/unleash.rs"]
mod unleash;
#[path = "support/worker.rs"]
mod worker;

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use chaosgate::contract::flag_command::{FLAG_COMMAND_TYPE, flag_command_example};
use chaosgate::contract::{CloudEvent, CommandKind, FlagCommand, KafkaMessage, ReasonCode};
use unleash::UnleashServer;
use worker::{Harness, Settings};

/// The bridge's log line of an applied command (its message, after the target), apart
/// from "not applied ..." lines.
const APPLIED: &str = ": applied ";
/// Outer bound on any wait (only catches hangs; the machine is shared).
const WAIT: Duration = Duration::from_secs(90);
const PROJECT: &str = "default";
const ENV: &str = "production";

/// One test's bridge: topics, Unleash, the running `chaosgate connect unleash`.
struct Bridge {
    harness: Harness,
    unleash: UnleashServer,
    process: Option<Child>,
    config: PathBuf,
    /// The running process's log.
    log: PathBuf,
}

impl Bridge {
    /// Topics (1 partition), a fresh Unleash with `flags` created (off), and the bridge
    /// started with chaosgate's personal access token, or `token` when given; returns
    /// once the bridge reads the commands topic.
    async fn start(name: &str, flags: &[&str], token: Option<&str>) -> Bridge {
        Bridge::start_via(name, UnleashServer::new().await, flags, token, None).await
    }

    /// As [`Bridge::start`] with `unleash`, and the bridge sent to `url` in place of
    /// Unleash's own (a front that answers some requests itself).
    async fn start_via(
        name: &str,
        unleash: UnleashServer,
        flags: &[&str],
        token: Option<&str>,
        url: Option<String>,
    ) -> Bridge {
        let servers = kafka::require_broker();
        let harness = Harness::new(&servers, name, 1).await;
        for flag in flags {
            unleash.create_flag(PROJECT, flag).await;
        }
        let token = match token {
            Some(token) => token.to_string(),
            None => unleash.chaosgate_token().await,
        };
        let config = harness.config("bridge", &Settings::default());
        let mut text = std::fs::read_to_string(&config).expect("config");
        text.push_str(&format!(
            r#"
[unleash]
url = "{url}"
token = "{token}"
request_timeout = "3s"

[unleash.webhook]
listen = "127.0.0.1:0"
token = "webhook-secret"

[unleash.commands]
group_id = "{group}-unleash"
max_backoff = "1s"
"#,
            url = url.as_deref().unwrap_or(unleash.url()),
            group = harness.group,
        ));
        std::fs::write(&config, text).expect("config");
        let log = harness.dir.path().join("bridge.log");
        let process = unleash::spawn_bridges(&config, harness.dir.path(), &log);
        let mut bridge = Bridge {
            harness,
            unleash,
            process: Some(process),
            config,
            log,
        };
        bridge.wait_until_reading().await;
        bridge
    }

    /// SIGTERMs the bridge and waits for it to exit; returns its status.
    async fn terminate(&mut self) -> std::process::ExitStatus {
        let mut process = self.process.take().expect("a running bridge");
        let pid = i32::try_from(process.id()).expect("pid");
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = process.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = process.kill();
                self.fail("the bridge did not stop on SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts the bridge again with the same config (same group), logging to a new file.
    fn respawn(&mut self) {
        assert!(self.process.is_none(), "terminate first");
        let n = std::fs::read_dir(self.harness.dir.path())
            .map(|d| d.count())
            .unwrap_or(0);
        self.log = self.harness.dir.path().join(format!("bridge-{n}.log"));
        self.process = Some(unleash::spawn_bridges(
            &self.config,
            self.harness.dir.path(),
            &self.log,
        ));
    }

    /// The running bridge's log so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails with the bridge's and Unleash's logs.
    fn fail(&self, what: &str) -> ! {
        panic!(
            "{what}\n--- bridge log ---\n{}\n--- unleash log ---\n{}",
            self.log(),
            self.unleash.log_tail(40)
        )
    }

    /// A new group starts at the end of the topic, so commands count only once the
    /// bridge has its position: a dry-run probe is produced until the bridge logs it.
    async fn wait_until_reading(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(process) = &mut self.process
                && let Ok(Some(status)) = process.try_wait()
            {
                self.fail(&format!("the bridge exited: {status}"));
            }
            let mut probe = command("probe", CommandKind::Enable, Utc::now());
            probe.dry_run = true;
            self.produce(&probe).await;
            let seen = Instant::now() + Duration::from_secs(2);
            while Instant::now() < seen {
                if self.logged(&probe.command_id, "not applied: dry run") {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if Instant::now() > deadline {
                self.fail("the bridge never read a command");
            }
        }
    }

    /// Produces `command` as the worker writes it; returns (partition, offset) and the
    /// record.
    async fn produce(&self, command: &FlagCommand) -> ((i32, i64), KafkaMessage) {
        let message = encode(command);
        let at = self
            .harness
            .produce(&self.harness.topics.commands, &message)
            .await;
        (at, message)
    }

    /// Whether a log line names `command_id` and says `what`.
    fn logged(&self, command_id: &str, what: &str) -> bool {
        self.log()
            .lines()
            .any(|line| line.contains(command_id) && line.contains(what))
    }

    /// Waits until a log line names `command_id` and says `what`.
    async fn wait_logged(&self, command_id: &str, what: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.logged(command_id, what) {
            if Instant::now() > deadline {
                self.fail(&format!("no log line '{what}' for command {command_id}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the dead letter of `command` (the one whose `ce_id` is its id), checks
    /// it is of class `command_not_applied` and keeps the original record, and returns it.
    async fn dead_letter_of(
        &self,
        collector: &worker::Collector,
        command: &FlagCommand,
    ) -> KafkaMessage {
        let id = &command.command_id;
        let is_it = |l: &worker::Received<KafkaMessage>| header(&l.value, "ce_id") == *id;
        let outputs = self
            .harness
            .wait_for(collector, &format!("the dead letter of {id}"), WAIT, |o| {
                o.dead_letters.iter().any(is_it)
            })
            .await;
        let letter = outputs
            .dead_letters
            .into_iter()
            .find(is_it)
            .expect("seen")
            .value;
        assert_eq!(
            header(&letter, "chaosgate_error_class"),
            "command_not_applied"
        );
        assert_eq!(letter.value, encode(command).value, "the original bytes");
        assert_eq!(
            header(&letter, "chaosgate_source_topic"),
            self.harness.topics.commands
        );
        letter
    }

    /// Applies an `enable` of flag `marker` (which the test created), so every command
    /// read before it on the partition has been handled, then checks `flag` is off.
    async fn assert_off_after_a_marker(&self, flag: &str, otherwise: &str) {
        let marker = command("marker", CommandKind::Enable, Utc::now());
        self.produce(&marker).await;
        self.wait_state("marker", true).await;
        if self.unleash.is_enabled(PROJECT, ENV, flag).await {
            self.fail(otherwise);
        }
    }

    /// Waits until Unleash says `flag` is `on` in production.
    async fn wait_state(&self, flag: &str, on: bool) {
        let deadline = Instant::now() + WAIT;
        while self.unleash.is_enabled(PROJECT, ENV, flag).await != on {
            if Instant::now() > deadline {
                self.fail(&format!(
                    "{flag} never became {}",
                    if on { "on" } else { "off" }
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

/// A flag command for `flag` in production of the default project, as the worker issues
/// one, with a fresh id.
fn command(flag: &str, kind: CommandKind, issued_at: DateTime<Utc>) -> FlagCommand {
    FlagCommand {
        command_id: uuid::Uuid::new_v4().to_string(),
        command: kind,
        project: PROJECT.into(),
        environment: ENV.into(),
        flag: flag.into(),
        reason_code: ReasonCode::Failed,
        issued_at,
        ..flag_command_example()
    }
}

/// The record the worker writes for `command` (binary CloudEvent, keyed by the flag).
fn encode(command: &FlagCommand) -> KafkaMessage {
    let key = format!(
        "{}/{}/{}",
        command.project, command.environment, command.flag
    );
    CloudEvent {
        id: command.command_id.clone(),
        source: "/chaosgate".into(),
        event_type: FLAG_COMMAND_TYPE.into(),
        time: Some(command.issued_at),
        subject: Some(key.clone()),
        extensions: Default::default(),
        data: serde_json::to_value(command).expect("command as JSON"),
    }
    .to_binary(Some(&key))
}

/// The first header `name` of `message`, as text.
fn header(message: &KafkaMessage, name: &str) -> String {
    message
        .header(name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn enable_and_disable_are_applied_and_a_dry_run_is_not() {
    let bridge = Bridge::start(
        "unleash-apply",
        &["checkout-v2", "search-v3", "banner"],
        None,
    )
    .await;
    bridge
        .unleash
        .set_enabled(PROJECT, ENV, "search-v3", true)
        .await;

    let mut dry = command("banner", CommandKind::Enable, Utc::now());
    dry.dry_run = true;
    bridge.produce(&dry).await;
    let enable = command("checkout-v2", CommandKind::Enable, Utc::now());
    bridge.produce(&enable).await;
    let disable = command("search-v3", CommandKind::Disable, Utc::now());
    bridge.produce(&disable).await;

    bridge.wait_state("checkout-v2", true).await;
    bridge.wait_state("search-v3", false).await;
    bridge.wait_logged(&enable.command_id, APPLIED).await;
    bridge.wait_logged(&disable.command_id, APPLIED).await;
    // Read before the two applied ones on the same partition: handled already.
    assert!(
        bridge.logged(&dry.command_id, "not applied: dry run"),
        "{}",
        bridge.log()
    );
    assert!(
        !bridge.unleash.is_enabled(PROJECT, ENV, "banner").await,
        "a dry run is not applied"
    );
    assert!(
        !bridge
            .unleash
            .is_enabled(PROJECT, "development", "checkout-v2")
            .await,
        "only the command's environment"
    );
}

#[tokio::test]
async fn an_older_enable_after_a_newer_disable_is_skipped_and_the_flag_stays_off() {
    let bridge = Bridge::start("unleash-stale", &["checkout-v2", "marker"], None).await;
    bridge
        .unleash
        .set_enabled(PROJECT, ENV, "checkout-v2", true)
        .await;
    let now = Utc::now();
    let disable = command("checkout-v2", CommandKind::Disable, now);
    let late_enable = command(
        "checkout-v2",
        CommandKind::Enable,
        now - chrono::Duration::seconds(30),
    );
    bridge.produce(&disable).await;
    bridge.produce(&late_enable).await;
    bridge.wait_state("checkout-v2", false).await;
    bridge
        .wait_logged(&late_enable.command_id, "skipped: stale")
        .await;
    bridge
        .assert_off_after_a_marker("checkout-v2", "the late enable undid the newer disable")
        .await;
    assert!(
        !bridge.logged(&late_enable.command_id, APPLIED),
        "{}",
        bridge.log()
    );
}

#[tokio::test]
async fn a_command_due_while_unleash_is_down_is_applied_once_it_is_back() {
    let bridge = Bridge::start("unleash-outage", &["checkout-v2", "search-v3"], None).await;
    bridge
        .unleash
        .set_enabled(PROJECT, ENV, "search-v3", true)
        .await;
    bridge.unleash.stop().await;

    let enable = command("checkout-v2", CommandKind::Enable, Utc::now());
    bridge.produce(&enable).await;
    // While it retries, a newer command for the same flag supersedes it.
    let first = command("search-v3", CommandKind::Enable, Utc::now());
    bridge.produce(&first).await;
    bridge
        .wait_logged(&first.command_id, "not applied yet; trying again")
        .await;
    let newer = command("search-v3", CommandKind::Disable, Utc::now());
    bridge.produce(&newer).await;
    bridge
        .wait_logged(&first.command_id, "skipped: stale (superseded")
        .await;
    // A few tries while Unleash is down.
    let deadline = Instant::now() + WAIT;
    while bridge
        .log()
        .lines()
        .filter(|l| l.contains(&enable.command_id) && l.contains("trying again"))
        .count()
        < 3
    {
        if Instant::now() > deadline {
            bridge.fail("fewer than 3 tries while Unleash was down");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    bridge.unleash.start().await;
    bridge.wait_state("checkout-v2", true).await;
    bridge.wait_state("search-v3", false).await;
    bridge.wait_logged(&enable.command_id, APPLIED).await;
    bridge.wait_logged(&newer.command_id, APPLIED).await;
}

#[tokio::test]
async fn a_flag_unleash_does_not_have_is_dead_lettered_and_other_flags_still_apply() {
    let bridge = Bridge::start("unleash-404", &["checkout-v2"], None).await;
    let collector = bridge.harness.collect();
    let missing = command("no-such-flag", CommandKind::Disable, Utc::now());
    let ((partition, offset), original) = bridge.produce(&missing).await;
    let garbage = KafkaMessage {
        key: Some(b"default/production/checkout-v2".to_vec()),
        value: Some(b"not a command".to_vec()),
        headers: Vec::new(),
    };
    let (_, garbage_offset) = bridge
        .harness
        .produce(&bridge.harness.topics.commands, &garbage)
        .await;
    let enable = command("checkout-v2", CommandKind::Enable, Utc::now());
    bridge.produce(&enable).await;
    bridge.wait_state("checkout-v2", true).await;

    let letter = bridge.dead_letter_of(&collector, &missing).await;
    assert!(
        header(&letter, "chaosgate_error_message").contains("404"),
        "{}",
        header(&letter, "chaosgate_error_message")
    );
    assert_eq!(
        header(&letter, "chaosgate_source_partition"),
        partition.to_string()
    );
    assert_eq!(
        header(&letter, "chaosgate_source_offset"),
        offset.to_string()
    );
    assert_eq!(letter.key, original.key);

    let outputs = bridge
        .harness
        .wait_for(
            &collector,
            "the dead letter of the record that is not a command",
            WAIT,
            |o| o.dead_letters.len() >= 2,
        )
        .await;
    let bad = outputs
        .dead_letters
        .iter()
        .find(|l| header(&l.value, "chaosgate_source_offset") == garbage_offset.to_string())
        .unwrap_or_else(|| bridge.fail("no dead letter of the record that is not a command"));
    assert_eq!(header(&bad.value, "chaosgate_error_class"), "undecodable");
    assert_eq!(bad.value.value, garbage.value);
    assert!(
        bridge.logged(&missing.command_id, "not applied; reporting it"),
        "an error line: {}",
        bridge.log()
    );
}

#[tokio::test]
async fn a_bad_token_is_dead_lettered() {
    let bridge = Bridge::start(
        "unleash-401",
        &["checkout-v2"],
        Some("user:not-a-real-token"),
    )
    .await;
    let collector = bridge.harness.collect();
    let enable = command("checkout-v2", CommandKind::Enable, Utc::now());
    bridge.produce(&enable).await;
    let letter = bridge.dead_letter_of(&collector, &enable).await;
    assert!(
        header(&letter, "chaosgate_error_message").contains("401"),
        "{}",
        header(&letter, "chaosgate_error_message")
    );
    assert!(!bridge.unleash.is_enabled(PROJECT, ENV, "checkout-v2").await);
    assert!(
        !bridge.logged(&enable.command_id, "trying again"),
        "a 401 is not tried again: {}",
        bridge.log()
    );
}

/// The strategies of `flag` in production: (id, rollout parameter).
async fn strategies(unleash: &UnleashServer, flag: &str) -> Vec<(String, String)> {
    let (status, body) = unleash
        .request(
            reqwest::Method::GET,
            &format!("/api/admin/projects/{PROJECT}/features/{flag}/environments/{ENV}/strategies"),
            unleash.admin_token(),
            None,
        )
        .await;
    assert!(status.is_success(), "{status}: {body}");
    body.as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["id"].as_str().unwrap_or_default().to_string(),
                s["parameters"]["rollout"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_revert_puts_an_updated_or_removed_strategy_back() {
    let bridge = Bridge::start("unleash-strategy", &["checkout-v2"], None).await;
    let strategies_path =
        format!("/api/admin/projects/{PROJECT}/features/checkout-v2/environments/{ENV}/strategies");
    let token = bridge.unleash.admin_token().to_string();
    let rollout = |percent: &str| {
        serde_json::json!({
            "name": "flexibleRollout",
            "parameters": {"rollout": percent, "stickiness": "default", "groupId": "checkout-v2"},
            "constraints": []
        })
    };
    // The human adds a 25 % rollout, then turns it up to 75 %.
    let (status, old) = bridge
        .unleash
        .request(
            reqwest::Method::POST,
            &strategies_path,
            &token,
            Some(rollout("25")),
        )
        .await;
    assert!(status.is_success(), "{status}: {old}");
    let id = old["id"].as_str().expect("strategy id").to_string();
    let (status, body) = bridge
        .unleash
        .request(
            reqwest::Method::PUT,
            &format!("{strategies_path}/{id}"),
            &token,
            Some(rollout("75")),
        )
        .await;
    assert!(status.is_success(), "{status}: {body}");

    // The gate fails: revert to the change's `from` (Unleash's preData, the old strategy).
    let mut revert = command("checkout-v2", CommandKind::Revert, Utc::now());
    revert.value = Some(old.clone());
    bridge.produce(&revert).await;
    bridge.wait_logged(&revert.command_id, APPLIED).await;
    assert_eq!(
        strategies(&bridge.unleash, "checkout-v2").await,
        vec![(id.clone(), "25".to_string())],
        "the same strategy, back at 25 %"
    );

    // The human removes it; the revert adds it again, once even if delivered twice.
    let (status, body) = bridge
        .unleash
        .request(
            reqwest::Method::DELETE,
            &format!("{strategies_path}/{id}"),
            &token,
            None,
        )
        .await;
    assert!(status.is_success(), "{status}: {body}");
    assert!(strategies(&bridge.unleash, "checkout-v2").await.is_empty());
    let mut revert = command("checkout-v2", CommandKind::Revert, Utc::now());
    revert.value = Some(old.clone());
    bridge.produce(&revert).await;
    bridge.wait_logged(&revert.command_id, APPLIED).await;
    // The same revert again (as when delivered again after a restart), with a new
    // command id so the log tells the two apart.
    let mut again = revert.clone();
    again.command_id = uuid::Uuid::new_v4().to_string();
    again.issued_at = Utc::now();
    bridge.produce(&again).await;
    bridge.wait_logged(&again.command_id, APPLIED).await;
    let back = strategies(&bridge.unleash, "checkout-v2").await;
    assert_eq!(back.len(), 1, "added once: {back:?}");
    assert_eq!(back[0].1, "25");

    // A revert of an added strategy has no `from`: reported, not applied.
    let collector = bridge.harness.collect();
    let revert_add = command("checkout-v2", CommandKind::Revert, Utc::now());
    bridge.produce(&revert_add).await;
    bridge.dead_letter_of(&collector, &revert_add).await;
    assert_eq!(strategies(&bridge.unleash, "checkout-v2").await.len(), 1);
}

#[tokio::test]
async fn a_command_cut_off_by_shutdown_is_delivered_again() {
    let mut bridge = Bridge::start("unleash-shutdown", &["checkout-v2"], None).await;
    bridge.unleash.stop().await;
    let enable = command("checkout-v2", CommandKind::Enable, Utc::now());
    bridge.produce(&enable).await;
    bridge.wait_logged(&enable.command_id, "trying again").await;

    let status = bridge.terminate().await;
    assert!(status.success(), "{status}\n{}", bridge.log());
    assert!(
        bridge.log().contains("stopped applying flag commands"),
        "{}",
        bridge.log()
    );
    assert!(!bridge.logged(&enable.command_id, APPLIED));

    // Its offset was not committed past it: the next bridge of the group gets it again.
    bridge.unleash.start().await;
    bridge.respawn();
    bridge.wait_state("checkout-v2", true).await;
    bridge.wait_logged(&enable.command_id, APPLIED).await;
}

#[tokio::test]
async fn a_command_in_an_aborted_transaction_is_not_applied() {
    use rdkafka::producer::{FutureProducer, Producer};
    let bridge = Bridge::start("unleash-aborted", &["checkout-v2", "marker"], None).await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bridge.harness.servers)
        .set("transactional.id", uuid::Uuid::new_v4().to_string())
        .create()
        .expect("transactional producer");
    producer
        .init_transactions(Duration::from_secs(30))
        .expect("init transactions");
    producer.begin_transaction().expect("begin");
    let aborted = command("checkout-v2", CommandKind::Enable, Utc::now());
    let message = encode(&aborted);
    producer
        .send(
            chaosgate::bus::record::to_record(&bridge.harness.topics.commands, &message),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce in the transaction");
    producer
        .abort_transaction(Duration::from_secs(30))
        .expect("abort");

    bridge
        .assert_off_after_a_marker("checkout-v2", "an aborted command was applied")
        .await;
    assert!(
        !bridge.log().contains(&aborted.command_id),
        "{}",
        bridge.log()
    );
}

/// A front of Unleash that answers the first `POST` (a command being applied) 429 with
/// `Retry-After: 3`, the second 503, and passes every other request on to Unleash (the
/// bridges' check of the token's actor at start included).
async fn flaky_front(upstream: String) -> String {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use axum::response::IntoResponse;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let seen = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::new();
    let handler = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        let (seen, client, upstream) = (seen.clone(), client.clone(), upstream.clone());
        async move {
            let posts = if method == Method::POST {
                seen.fetch_add(1, Ordering::SeqCst)
            } else {
                usize::MAX
            };
            match posts {
                0 => {
                    return (
                        StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "3")],
                        "slow down",
                    )
                        .into_response();
                }
                1 => return (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response(),
                _ => {}
            }
            let mut request = client.request(method, format!("{upstream}{uri}"));
            for name in ["authorization", "content-type"] {
                if let Some(value) = headers.get(name) {
                    request = request.header(name, value.as_bytes());
                }
            }
            let answer = request.body(body).send().await.expect("Unleash answers");
            let status = StatusCode::from_u16(answer.status().as_u16()).expect("status");
            (status, answer.bytes().await.unwrap_or_default()).into_response()
        }
    };
    let app = axum::Router::new().fallback(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the front");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{address}")
}

/// The time at the start of a log line (`2026-11-30T08:44:01.094043Z ...`).
fn logged_at(line: &str) -> DateTime<Utc> {
    let stamp = line.split_whitespace().next().unwrap_or_default();
    DateTime::parse_from_rfc3339(stamp)
        .unwrap_or_else(|e| panic!("no time at the start of {line:?}: {e}"))
        .with_timezone(&Utc)
}

#[tokio::test]
async fn a_429_is_tried_again_after_its_retry_after_and_a_503_after_a_backoff() {
    let unleash = UnleashServer::new().await;
    let front = flaky_front(unleash.url().to_string()).await;
    let bridge =
        Bridge::start_via("unleash-429", unleash, &["checkout-v2"], None, Some(front)).await;
    let enable = command("checkout-v2", CommandKind::Enable, Utc::now());
    bridge.produce(&enable).await;
    bridge.wait_state("checkout-v2", true).await;
    bridge.wait_logged(&enable.command_id, APPLIED).await;

    let log = bridge.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&enable.command_id))
        .collect();
    let tries: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("trying again"))
        .collect();
    assert_eq!(tries.len(), 2, "a 429 and a 503:\n{log}");
    assert!(
        tries[0].contains("429") && tries[0].contains("retry_in=3s"),
        "{}",
        tries[0]
    );
    assert!(tries[1].contains("503"), "{}", tries[1]);
    let applied = lines
        .iter()
        .find(|l| l.contains(APPLIED))
        .expect("applied line");
    assert!(applied.contains("tries=3"), "{applied}");
    let waited = logged_at(tries[1]) - logged_at(tries[0]);
    assert!(
        waited >= chrono::Duration::milliseconds(2900),
        "the 429's Retry-After (3 s, over max_backoff 1 s) was not honoured: {waited}"
    );
    let backoff = logged_at(applied) - logged_at(tries[1]);
    assert!(
        backoff <= chrono::Duration::seconds(10),
        "after the 503: at most max_backoff (1 s) plus the request: {backoff}"
    );
}

#[tokio::test]
async fn a_late_enable_after_a_restart_is_still_skipped() {
    let mut bridge = Bridge::start("unleash-restart-stale", &["checkout-v2"], None).await;
    bridge
        .unleash
        .set_enabled(PROJECT, ENV, "checkout-v2", true)
        .await;
    let now = Utc::now();
    let disable = command("checkout-v2", CommandKind::Disable, now);
    bridge.produce(&disable).await;
    bridge.wait_logged(&disable.command_id, APPLIED).await;
    bridge.wait_state("checkout-v2", false).await;
    let status = bridge.terminate().await;
    assert!(status.success(), "{status}\n{}", bridge.log());

    // A new process of the group: the disable is behind the committed offset, not
    // delivered again; the commit's memory still knows its issued_at.
    bridge.respawn();
    let late_enable = command(
        "checkout-v2",
        CommandKind::Enable,
        now - chrono::Duration::seconds(30),
    );
    bridge.produce(&late_enable).await;
    bridge
        .wait_logged(&late_enable.command_id, "skipped: stale")
        .await;
    assert!(
        !bridge.logged(&disable.command_id, APPLIED),
        "the disable was delivered again: {}",
        bridge.log()
    );
    assert!(!bridge.unleash.is_enabled(PROJECT, ENV, "checkout-v2").await);
}
