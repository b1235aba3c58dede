//! `chaosgate connect alertmanager` and a real Prometheus Alertmanager for the tests: the
//! receiver as a user runs it (this build's binary, its own config), answers read over
//! HTTP, the flag-change topic read back, and Alertmanager (`prometheus-alertmanager`, from
//! `ALERTMANAGER_BIN` or `PATH`; a test needing it FAILS without it) on its own port with
//! no gossip cluster. Every wait has a deadline and fails with the logs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::Value;

use chaosgate::bus::record::from_rdkafka;
use chaosgate::contract::{CloudEvent, FlagChange};

use super::connect;
use super::kafka;
use super::worker::closed_address;

/// Upper bound for anything a test waits for: generous, so only a bug reaches it.
pub const PATIENCE: Duration = Duration::from_secs(90);

/// A running `chaosgate connect alertmanager`, killed when dropped.
pub struct Receiver {
    child: Child,
    token: String,
    log: PathBuf,
    pub url: String,
    http: reqwest::Client,
}

impl Receiver {
    /// Starts the binary on `config` (in `dir`, its log `alertmanager-receiver-N.log`
    /// there) and waits for `GET /healthz` on `listen`.
    pub async fn start(config: &Path, dir: &Path, listen: &str, token: &str) -> Receiver {
        let mut n = 1;
        let log = loop {
            let path = dir.join(format!("alertmanager-receiver-{n}.log"));
            if !path.exists() {
                break path;
            }
            n += 1;
        };
        let child = connect::spawn_connect("alertmanager", config, dir, &log);
        let mut receiver = Receiver {
            child,
            token: token.to_string(),
            log,
            url: format!("http://{listen}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("HTTP client"),
        };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(Some(status)) = receiver.child.try_wait() {
                panic!("the receiver exited ({status}):\n{}", receiver.log_text());
            }
            if let Ok(response) = receiver
                .http
                .get(format!("{}/healthz", receiver.url))
                .send()
                .await
            {
                assert_eq!(response.status(), 200, "{}", receiver.log_text());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the receiver does not answer /healthz:\n{}",
                receiver.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        receiver
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Posts `body` to the webhook with `authorization` (none when `None`): the status
    /// and the JSON answer.
    pub async fn post_raw(&self, authorization: Option<&str>, body: Vec<u8>) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}/alertmanager/webhook", self.url))
            .header("content-type", "application/json")
            .body(body);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.expect("POST /alertmanager/webhook");
        let status = response.status().as_u16();
        let text = response.text().await.expect("answer body");
        let answer = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "the answer {text:?} is not JSON ({e}):\n{}",
                self.log_text()
            )
        });
        (status, answer)
    }

    /// Posts `notification` as Alertmanager does, with the token as a Bearer token.
    pub async fn post(&self, notification: &Value) -> (u16, Value) {
        self.post_raw(
            Some(&format!("Bearer {}", self.token)),
            notification.to_string().into_bytes(),
        )
        .await
    }

    /// The value of `chaosgate_alertmanager_alerts_total{outcome}` (0 when absent).
    pub async fn outcome_count(&self, outcome: &str) -> u64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        let prefix = format!("chaosgate_alertmanager_alerts_total{{outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .map_or(0, |n| n.trim().parse().expect("a count"))
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every flag change on `topic` now (all partitions, `read_committed`, up to the end as
/// it stands), with its Kafka key.
pub fn flag_changes(servers: &str, topic: &str) -> Vec<(String, FlagChange)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", kafka::unique_topic("alertmanager-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut assignment = TopicPartitionList::new();
    let mut left = 0;
    for partition in metadata.topics()[0].partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition.id(), Duration::from_secs(10))
            .expect("watermarks");
        if high > low {
            assignment
                .add_partition_offset(topic, partition.id(), Offset::Beginning)
                .expect("assignment");
            left += high - low;
        }
    }
    let mut changes = Vec::new();
    if left == 0 {
        return changes;
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + PATIENCE;
    while left > 0 {
        assert!(Instant::now() < deadline, "cannot read {topic} to its end");
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message.expect("a record");
        left -= 1;
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        let event = CloudEvent::decode(&from_rdkafka(&message)).expect("a CloudEvent");
        changes.push((
            key,
            serde_json::from_value(event.data).expect("a flag change"),
        ));
    }
    changes
}

/// A real Prometheus Alertmanager of one test: its own config, data folder and port, no
/// gossip cluster; killed when dropped.
pub struct Alertmanager {
    child: Child,
    log: PathBuf,
    pub url: String,
}

/// The Alertmanager binary: `ALERTMANAGER_BIN`, else `prometheus-alertmanager` (the
/// Debian package's name) or `alertmanager` on `PATH`. Panics when there is none.
pub fn alertmanager_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("ALERTMANAGER_BIN").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    for name in ["prometheus-alertmanager", "alertmanager"] {
        if let Some(path) = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file())
        }) {
            return path;
        }
    }
    panic!(
        "no Prometheus Alertmanager: install it (apt-get install prometheus-alertmanager; \
         scripts/test.sh does) or set ALERTMANAGER_BIN"
    );
}

impl Alertmanager {
    /// Starts Alertmanager in `dir` routing every alert, grouped by `alertname`, to a
    /// webhook at `webhook_url` with the token in `token_file`; waits until it is ready.
    pub async fn start(dir: &Path, webhook_url: &str, token_file: &Path) -> Alertmanager {
        let config = dir.join("alertmanager.yml");
        std::fs::write(
            &config,
            format!(
                r#"route:
  receiver: chaosgate
  group_by: ['alertname']
  group_wait: 1s
  group_interval: 2s
  repeat_interval: 1h
receivers:
  - name: chaosgate
    webhook_configs:
      - url: {webhook_url}
        send_resolved: true
        http_config:
          authorization:
            type: Bearer
            credentials_file: {token}
"#,
                token = token_file.display()
            ),
        )
        .expect("alertmanager.yml");
        let listen = closed_address();
        let log = dir.join("alertmanager.log");
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(alertmanager_binary())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.join("am-data").display()))
            .arg(format!("--web.listen-address={listen}"))
            .arg("--cluster.listen-address=")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn Alertmanager");
        let mut alertmanager = Alertmanager {
            child,
            log,
            url: format!("http://{listen}"),
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(Some(status)) = alertmanager.child.try_wait() {
                panic!(
                    "Alertmanager exited ({status}):\n{}",
                    alertmanager.log_text()
                );
            }
            if let Ok(response) = http
                .get(format!("{}/-/ready", alertmanager.url))
                .send()
                .await
                && response.status() == 200
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Alertmanager is not ready:\n{}",
                alertmanager.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        alertmanager
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Pushes `alerts` as Prometheus does (`POST /api/v2/alerts`).
    pub async fn push(&self, alerts: &Value) {
        let response = reqwest::Client::new()
            .post(format!("{}/api/v2/alerts", self.url))
            .json(alerts)
            .send()
            .await
            .expect("POST /api/v2/alerts");
        assert_eq!(
            response.status(),
            200,
            "{}",
            response.text().await.unwrap_or_default()
        );
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
