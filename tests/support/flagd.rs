//! `chaosgate connect flagd` for tests: approved-flag records produced as the worker
//! writes them (binary-mode CloudEvents keyed `project/environment/flag`, transactionally
//! or not), the real binary started on free ports with a config of the test's own
//! ([`Bridge`]), and the real OpenFeature consumer of its sync service: flagd's Rust
//! provider in in-process mode, without a cache ([`Bridge::provider`]).

#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use chaosgate::contract::approved_flag::{APPROVED_FLAG_TYPE, approved_flag_example};
use chaosgate::contract::{CloudEvent, KafkaMessage};
use open_feature::EvaluationContext;
use open_feature::provider::FeatureProvider;
use open_feature_flagd::flagd::sync::v1::flag_sync_service_client::FlagSyncServiceClient;
use open_feature_flagd::{FlagdOptions, FlagdProvider, ResolverType};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, Producer};
use serde_json::{Value, json};

use super::connect::spawn_connect;
use super::kafka;

pub const PROJECT: &str = "shop";
pub const ENVIRONMENT: &str = "prod";
/// Outer bound on a bridge's start (reading the topic to its end included).
pub const START: Duration = Duration::from_secs(60);
/// Outer bound on anything else awaited.
pub const WAIT: Duration = Duration::from_secs(30);

/// A flag definition with string variants `one`, `two`, `three`, serving `default`.
pub fn definition(state: &str, default: &str) -> Value {
    json!({
        "state": state,
        "variants": { "one": "one", "two": "two", "three": "three" },
        "defaultVariant": default
    })
}

/// [`definition`] `ENABLED`.
pub fn enabled(default: &str) -> Value {
    definition("ENABLED", default)
}

/// An approved-flag record of `flag` in `PROJECT/ENVIRONMENT`, as the worker writes it
/// (binary-mode CloudEvent, keyed `project/environment/flag`).
pub fn approved_record(flag: &str, definition: Value) -> KafkaMessage {
    approved_record_in(PROJECT, ENVIRONMENT, flag, definition)
}

pub fn approved_record_in(
    project: &str,
    environment: &str,
    flag: &str,
    definition: Value,
) -> KafkaMessage {
    let mut approved = approved_flag_example();
    approved.project = project.into();
    approved.environment = environment.into();
    approved.flag = flag.into();
    approved.definition = definition.clone();
    approved.proposed = Some(definition);
    approved.command_id = uuid::Uuid::new_v4().to_string();
    approved.approved_at = chrono::Utc::now();
    let key = approved.flag_key();
    CloudEvent {
        id: approved.command_id.clone(),
        source: "/chaosgate/test".into(),
        event_type: APPROVED_FLAG_TYPE.into(),
        time: Some(approved.approved_at),
        subject: Some(key.clone()),
        extensions: Default::default(),
        data: serde_json::to_value(&approved).expect("approved flag as JSON"),
    }
    .to_binary(Some(&key))
}

/// How records are produced.
#[derive(Clone, Copy)]
pub enum Produce {
    /// Idempotent producer, no transaction.
    Plain,
    /// In a transaction that commits.
    Committed,
    /// In a transaction that aborts.
    Aborted,
}

/// Produces `records` on `topic`; returns when the last one was acknowledged (`Plain`)
/// or the transaction's commit or abort returned.
pub async fn produce(
    servers: &str,
    topic: &str,
    how: Produce,
    records: &[KafkaMessage],
) -> Instant {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", servers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "0");
    let transactional = !matches!(how, Produce::Plain);
    if transactional {
        config.set("transactional.id", uuid::Uuid::new_v4().to_string());
    }
    let producer: FutureProducer = config.create().expect("producer");
    if transactional {
        producer.init_transactions(WAIT).expect("init transactions");
        producer.begin_transaction().expect("begin");
    }
    for record in records {
        producer
            .send(chaosgate::bus::record::to_record(topic, record), WAIT)
            .await
            .map_err(|(e, _)| e)
            .expect("produce an approved-flag record");
    }
    match how {
        Produce::Plain => {}
        Produce::Committed => producer.commit_transaction(WAIT).expect("commit"),
        Produce::Aborted => producer.abort_transaction(WAIT).expect("abort"),
    }
    Instant::now()
}

/// Produces one approved definition of `flag` (see [`produce`]).
pub async fn put(
    servers: &str,
    topic: &str,
    how: Produce,
    flag: &str,
    definition: Value,
) -> Instant {
    produce(servers, topic, how, &[approved_record(flag, definition)]).await
}

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// One `chaosgate connect flagd` process, killed when dropped.
pub struct Bridge {
    pub child: Option<Child>,
    pub servers: String,
    pub topic: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub sync_port: u16,
    pub http: String,
    pub file: PathBuf,
}

impl Bridge {
    /// A bridge reading `topic` with its own ports, in `dir`, started and healthy.
    pub async fn start(servers: &str, topic: &str, dir: &Path) -> Bridge {
        let mut bridge = Bridge::configure(servers, topic, dir);
        bridge.spawn().await;
        bridge
    }

    /// A bridge reading `topic` with its own ports and config file in `dir`, not started.
    pub fn configure(servers: &str, topic: &str, dir: &Path) -> Bridge {
        let sync_port = free_port();
        let http_port = free_port();
        let file = dir.join("served/flags.json");
        std::fs::create_dir_all(dir.join("served")).expect("served dir");
        std::fs::create_dir_all(dir.join("catalog")).expect("catalog dir");
        let config = dir.join("chaosgate.toml");
        std::fs::write(
            &config,
            format!(
                r#"[kafka]
bootstrap_servers = "{servers}"
group_id = "{group}"

[kafka.topics]
approved_flags = "{topic}"

[catalog]
path = "catalog"

[telemetry]
log_format = "text"
log_filter = "info,chaosgate=debug"

[flagd]
project = "{PROJECT}"
environment = "{ENVIRONMENT}"
sync_listen = "127.0.0.1:{sync_port}"
http_listen = "127.0.0.1:{http_port}"
file = "served/flags.json"
"#,
                group = kafka::unique_topic("flagd-serve"),
            ),
        )
        .expect("config file");
        Bridge {
            child: None,
            servers: servers.to_string(),
            topic: topic.to_string(),
            dir: dir.to_path_buf(),
            log: dir.join(format!("bridge-{sync_port}.log")),
            config,
            sync_port,
            http: format!("http://127.0.0.1:{http_port}"),
            file,
        }
    }

    /// Starts the process (again, same ports) and waits for `/healthz`.
    pub async fn spawn(&mut self) {
        self.launch();
        self.wait_healthy().await;
    }

    /// Starts the process (again, same ports) without waiting for it.
    pub fn launch(&mut self) {
        let child = spawn_connect("flagd", &self.config, &self.dir, &self.log);
        self.child = Some(child);
    }

    /// Waits for `/healthz` (the bridge serves once it read its topic to the end).
    pub async fn wait_healthy(&mut self) {
        let started = Instant::now();
        let client = reqwest::Client::new();
        loop {
            if let Ok(r) = client.get(format!("{}/healthz", self.http)).send().await
                && r.status() == 200
            {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("the bridge exited at start ({status}):\n{}", self.log());
            }
            assert!(
                started.elapsed() < START,
                "the bridge was not healthy within {START:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status and how long it took (killed after `WAIT`).
    pub async fn stop(&mut self) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("a running bridge");
        let pid = i32::try_from(child.id()).expect("pid");
        let asked = Instant::now();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        loop {
            if let Some(status) = child.try_wait().expect("wait for the bridge") {
                return (status, asked.elapsed());
            }
            if asked.elapsed() > WAIT {
                let _ = child.kill();
                let status = child.wait().expect("wait for the bridge");
                return (status, asked.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET /flags.json` (with `query`, and `If-None-Match` when given): status, ETag,
    /// content type, body.
    pub async fn get(
        &self,
        query: &str,
        if_none_match: Option<&str>,
    ) -> (u16, String, String, String) {
        let mut request = reqwest::Client::new().get(format!("{}/flags.json{query}", self.http));
        if let Some(tag) = if_none_match {
            request = request.header("If-None-Match", tag);
        }
        let response = request.send().await.expect("GET /flags.json");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let (status, etag, content_type) = (
            response.status().as_u16(),
            header("etag"),
            header("content-type"),
        );
        (
            status,
            etag,
            content_type,
            response.text().await.expect("body"),
        )
    }

    /// The default set's served definition of `flag` (`None`: not served).
    pub async fn served(&self, flag: &str) -> Option<Value> {
        let (status, _, _, body) = self.get("", None).await;
        assert_eq!(status, 200, "{body}");
        let document: Value = serde_json::from_str(&body).expect("a JSON document");
        document["flags"].get(flag).cloned()
    }

    /// Produces `definition` of `flag` on the bridge's topic and waits until it is served.
    pub async fn approve(&self, how: Produce, flag: &str, definition: Value) {
        put(&self.servers, &self.topic, how, flag, definition.clone()).await;
        self.wait_served(flag, &definition).await;
    }

    /// Waits until `GET /flags.json` serves `definition` for `flag`.
    pub async fn wait_served(&self, flag: &str, definition: &Value) {
        let started = Instant::now();
        while self.served(flag).await.as_ref() != Some(definition) {
            assert!(
                started.elapsed() < WAIT,
                "{flag} not served as {definition} within {WAIT:?}; served {:?}\n{}",
                self.served(flag).await,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// flagd's provider, in-process, reading this bridge's sync service.
    pub async fn provider(&self, selector: Option<&str>) -> FlagdProvider {
        provider_at(self.sync_port, selector)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log()))
    }

    pub async fn sync_client(&self) -> FlagSyncServiceClient<tonic::transport::Channel> {
        FlagSyncServiceClient::connect(format!("http://127.0.0.1:{}", self.sync_port))
            .await
            .expect("connect to the sync service")
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

/// flagd's Rust provider, in-process, reading the sync service on loopback `port`
/// (`selector` sent as given), without a cache and with a short reconnect backoff; or why
/// it could not start.
pub async fn provider_at(port: u16, selector: Option<&str>) -> Result<FlagdProvider, String> {
    FlagdProvider::new(FlagdOptions {
        host: "127.0.0.1".into(),
        port,
        target_uri: None,
        socket_path: None,
        resolver_type: ResolverType::InProcess,
        selector: selector.map(str::to_string),
        cache_settings: None,
        retry_backoff_ms: 100,
        retry_backoff_max_ms: 500,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("the flagd provider could not start: {e:?}"))
}

/// The provider's value of string flag `flag` (`None`: not found, disabled or an error).
pub async fn evaluate(provider: &FlagdProvider, flag: &str) -> Option<String> {
    provider
        .resolve_string_value(flag, &EvaluationContext::default())
        .await
        .ok()
        .map(|d| d.value)
}

/// Waits until the provider evaluates `flag` to `value`; returns how long it took.
pub async fn wait_evaluates(provider: &FlagdProvider, flag: &str, value: Option<&str>) -> Duration {
    let started = Instant::now();
    loop {
        let got = evaluate(provider, flag).await;
        if got.as_deref() == value {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < WAIT,
            "the provider evaluates {flag} to {got:?}, not {value:?}, after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The broker (required), a new topic of `partitions` named after `prefix`, and a
/// folder for one test's bridges.
pub async fn setup(prefix: &str, partitions: i32) -> (String, String, tempfile::TempDir) {
    let servers = kafka::require_broker();
    let topic = kafka::unique_topic(prefix);
    kafka::create_topics(&servers, &[&topic], partitions).await;
    let dir = tempfile::Builder::new()
        .prefix("chaosgate-flagd-serve-")
        .tempdir()
        .expect("temp dir");
    (servers, topic, dir)
}
