//! The whole flagd loop for the tests: boolean flag definitions, flagd-format flag
//! changes, the flag-changes and approved-flags topics read back, `chaosgate connect
//! flagd` beside a worker (on the worker's config, with a proposed folder), and the real
//! provider's boolean evaluations. `support/flagd.rs` holds the bridge on its own.

#![allow(dead_code)]

use std::time::Duration;

use chaosgate::contract::{ApprovedFlag, ChangeKind, CloudEvent, FlagChange, ValueFormat};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// A boolean flagd flag with variants `on` (true) and `off` (false).
pub fn boolean_flag(state: &str, default_variant: &str) -> serde_json::Value {
    serde_json::json!({
        "state": state,
        "variants": { "on": true, "off": false },
        "defaultVariant": default_variant
    })
}

/// A flag change of `flag` in project `test`, environment `test`, whose values are flagd
/// definitions.
pub fn flagd_change(
    flag: &str,
    kind: ChangeKind,
    from: Option<serde_json::Value>,
    to: serde_json::Value,
) -> FlagChange {
    let mut change = super::worker::change(flag, kind, None);
    change.change.from = from;
    change.change.to = Some(to);
    change.value_format = Some(ValueFormat::Flagd);
    change
}

/// Every approved-flag record on `topic`, in offset order per partition.
pub fn approved_records(servers: &str, topic: &str) -> Vec<ApprovedFlag> {
    events(servers, topic)
        .into_iter()
        .map(|event| {
            assert_eq!(
                event.event_type,
                chaosgate::contract::approved_flag::APPROVED_FLAG_TYPE
            );
            serde_json::from_value(event.data).expect("an approved flag")
        })
        .collect()
}

/// Every flag change on `topic`, in offset order per partition.
pub fn flag_changes(servers: &str, topic: &str) -> Vec<FlagChange> {
    events(servers, topic)
        .into_iter()
        .map(|event| serde_json::from_value(event.data).expect("a flag change"))
        .collect()
}

/// Every CloudEvent on `topic` (all partitions), `read_committed`, read up to the end as
/// it stands now.
fn events(servers: &str, topic: &str) -> Vec<CloudEvent> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", super::kafka::unique_topic("flagd-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut assignment = TopicPartitionList::new();
    let mut ends = Vec::new();
    for partition in metadata.topics()[0].partitions() {
        assignment
            .add_partition_offset(topic, partition.id(), Offset::Beginning)
            .expect("assignment");
        let (_, high) = consumer
            .fetch_watermarks(topic, partition.id(), Duration::from_secs(10))
            .expect("watermarks");
        ends.push((partition.id(), high));
    }
    consumer.assign(&assignment).expect("assign");
    let read_to = |partition: i32, high: i64| {
        high == 0
            || consumer
                .position()
                .ok()
                .and_then(|list| {
                    list.find_partition(topic, partition)
                        .and_then(|p| p.offset().to_raw())
                })
                .is_some_and(|position| position >= high)
    };
    let mut events = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !ends
        .iter()
        .all(|(partition, high)| read_to(*partition, *high))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{topic} not read to its end within 60 s"
        );
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.expect("a record");
            let record = chaosgate::bus::record::from_rdkafka(&message);
            events.push(CloudEvent::decode(&record).expect("a CloudEvent"));
        }
    }
    events
}

/// A running `chaosgate connect flagd`, SIGKILLed when dropped.
pub struct FlagdBridge {
    child: std::process::Child,
    config: std::path::PathBuf,
    dir: std::path::PathBuf,
    /// The log of the current process (one file per start).
    pub log: std::path::PathBuf,
    starts: usize,
}

impl FlagdBridge {
    /// Starts `chaosgate connect flagd --config CONFIG` in `dir`, logging to a file there.
    pub fn spawn(config: &std::path::Path, dir: &std::path::Path) -> FlagdBridge {
        let (child, log) = spawn_process(config, dir, 1);
        FlagdBridge {
            child,
            config: config.to_path_buf(),
            dir: dir.to_path_buf(),
            log,
            starts: 1,
        }
    }

    /// SIGKILLs the process and starts another with the same config.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.starts += 1;
        let (child, log) = spawn_process(&self.config, &self.dir, self.starts);
        self.child = child;
        self.log = log;
    }

    /// Every log this bridge wrote, for failure messages.
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                let path = self.dir.join(format!("flagd-bridge-{n}.log"));
                format!(
                    "--- flagd bridge, start {n}\n{}",
                    std::fs::read_to_string(path).unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for FlagdBridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_process(
    config: &std::path::Path,
    dir: &std::path::Path,
    start: usize,
) -> (std::process::Child, std::path::PathBuf) {
    let log = dir.join(format!("flagd-bridge-{start}.log"));
    let child = super::connect::spawn_connect("flagd", config, dir, &log);
    (child, log)
}

/// Appends a `[flagd]` section to the worker config at `config`: project and environment
/// `test`, the proposed folder, a fast scan, and the two addresses.
pub fn append_flagd_section(
    config: &std::path::Path,
    proposed: Option<&std::path::Path>,
    sync: &str,
    http: &str,
) {
    let mut text = std::fs::read_to_string(config).expect("worker config");
    text.push_str(&format!(
        "\n[flagd]\nproject = \"test\"\nenvironment = \"test\"\nscan_interval = \"200ms\"\nsync_listen = \"{sync}\"\nhttp_listen = \"{http}\"\n"
    ));
    if let Some(folder) = proposed {
        text.push_str(&format!("proposed = \"{}\"\n", folder.display()));
    }
    std::fs::write(config, text).expect("config with [flagd]");
}

/// The real OpenFeature flagd provider, in-process mode, reading chaosgate's sync
/// service at `sync` (`host:port` on loopback).
pub async fn provider(sync: &str) -> open_feature_flagd::FlagdProvider {
    let port = sync
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .expect("host:port");
    super::flagd::provider_at(port, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// What the provider evaluates boolean `flag` to for `context`: `Some(value)` when it
/// resolved it, `None` when it did not (not served, or `DISABLED`: the SDK then gives
/// the code's default).
pub async fn evaluate(
    provider: &open_feature_flagd::FlagdProvider,
    flag: &str,
    context: &open_feature::EvaluationContext,
) -> Option<bool> {
    use open_feature::provider::FeatureProvider;
    provider
        .resolve_bool_value(flag, context)
        .await
        .ok()
        .map(|details| details.value)
}

/// `GET http://HTTP/flags.json`: the ETag and the document.
pub async fn served(http: &str) -> (String, serde_json::Value) {
    let response = reqwest::get(format!("http://{http}/flags.json"))
        .await
        .expect("GET /flags.json");
    assert!(response.status().is_success(), "{}", response.status());
    let etag = response
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (etag, response.json().await.expect("JSON"))
}

/// Waits until `GET http://HTTP/healthz` answers 2xx.
pub async fn wait_healthy(http: &str, bridge: &FlagdBridge) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(response) = reqwest::get(format!("http://{http}/healthz")).await
            && response.status().is_success()
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the flagd bridge does not answer /healthz:\n{}",
            bridge.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
