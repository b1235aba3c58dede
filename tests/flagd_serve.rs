//! `chaosgate connect flagd`, the "approved out" side, on the real broker: approved-flag
//! records produced on a topic of the test's own (transactionally and not, as the worker
//! writes them), the real binary serving them (no proposed folder), and the real
//! OpenFeature consumer reading its sync service: flagd's Rust provider
//! (`open-feature-flagd`, in-process resolver, no cache), besides `GET /flags.json` and
//! the file.
//!
//! Bounds are generous (they catch hangs), except the issue's "within a second" for a
//! new approved record to reach the provider.

#[path = "support/kafka.rs"]
mod kafka;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use chaosgate::contract::approved_flag::{APPROVED_FLAG_TYPE, approved_flag_example};
use chaosgate::contract::{CloudEvent, KafkaMessage};
use open_feature::EvaluationContext;
use open_feature::provider::FeatureProvider;
use open_feature_flagd::flagd::sync::v1::flag_sync_service_client::FlagSyncServiceClient;
use open_feature_flagd::flagd::sync::v1::{
    FetchAllFlagsRequest, GetMetadataRequest, SyncFlagsRequest,
};
use open_feature_flagd::{FlagdOptions, FlagdProvider, ResolverType};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, Producer};
use serde_json::{Value, json};

const PROJECT: &str = "shop";
const ENVIRONMENT: &str = "prod";
/// Outer bound on a bridge's start (reading the topic to its end included).
const START: Duration = Duration::from_secs(60);
/// Outer bound on anything else awaited.
const WAIT: Duration = Duration::from_secs(30);

/// A flag definition with string variants `one`, `two`, `three`, serving `default`.
fn definition(state: &str, default: &str) -> Value {
    json!({
        "state": state,
        "variants": { "one": "one", "two": "two", "three": "three" },
        "defaultVariant": default
    })
}

/// An approved-flag record of `flag` in `PROJECT/ENVIRONMENT`, as the worker writes it
/// (binary-mode CloudEvent, keyed `project/environment/flag`).
fn approved_record(flag: &str, definition: Value) -> KafkaMessage {
    approved_record_in(PROJECT, ENVIRONMENT, flag, definition)
}

fn approved_record_in(
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
enum Produce {
    /// Idempotent producer, no transaction.
    Plain,
    /// In a transaction that commits.
    Committed,
    /// In a transaction that aborts.
    Aborted,
}

/// Produces `records` on `topic`; returns when the last one was acknowledged (`Plain`)
/// or the transaction's commit or abort returned.
async fn produce(servers: &str, topic: &str, how: Produce, records: &[KafkaMessage]) -> Instant {
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

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// One `chaosgate connect flagd` process, killed when dropped.
struct Bridge {
    child: Option<Child>,
    dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    sync_port: u16,
    http: String,
    file: PathBuf,
}

impl Bridge {
    /// A bridge reading `topic` with its own ports, in `dir`, started and healthy.
    async fn start(servers: &str, topic: &str, dir: &Path) -> Bridge {
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
        let mut bridge = Bridge {
            child: None,
            dir: dir.to_path_buf(),
            log: dir.join(format!("bridge-{sync_port}.log")),
            config,
            sync_port,
            http: format!("http://127.0.0.1:{http_port}"),
            file,
        };
        bridge.spawn().await;
        bridge
    }

    /// Starts the process (again, same ports) and waits for `/healthz`.
    async fn spawn(&mut self) {
        let out = std::fs::File::create(&self.log).expect("bridge log");
        let err = out.try_clone().expect("bridge log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_chaosgate"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("CHAOSGATE_") {
                command.env_remove(name);
            }
        }
        let child = command
            .args(["connect", "flagd", "--config"])
            .arg(&self.config)
            .current_dir(&self.dir)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn chaosgate connect flagd");
        self.child = Some(child);
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

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status and how long it took (killed after `WAIT`).
    async fn stop(&mut self) -> (ExitStatus, Duration) {
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
    async fn get(&self, query: &str, if_none_match: Option<&str>) -> (u16, String, String, String) {
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
    async fn served(&self, flag: &str) -> Option<Value> {
        let (status, _, _, body) = self.get("", None).await;
        assert_eq!(status, 200, "{body}");
        let document: Value = serde_json::from_str(&body).expect("a JSON document");
        document["flags"].get(flag).cloned()
    }

    /// Waits until `GET /flags.json` serves `definition` for `flag`.
    async fn wait_served(&self, flag: &str, definition: &Value) {
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
    async fn provider(&self, selector: Option<&str>) -> FlagdProvider {
        FlagdProvider::new(FlagdOptions {
            host: "127.0.0.1".into(),
            port: self.sync_port,
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
        .unwrap_or_else(|e| panic!("the flagd provider could not start: {e:?}\n{}", self.log()))
    }

    async fn sync_client(&self) -> FlagSyncServiceClient<tonic::transport::Channel> {
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

/// The provider's value of string flag `flag` (`None`: not found, disabled or an error).
async fn evaluate(provider: &FlagdProvider, flag: &str) -> Option<String> {
    provider
        .resolve_string_value(flag, &EvaluationContext::default())
        .await
        .ok()
        .map(|d| d.value)
}

/// Waits until the provider evaluates `flag` to `value`; returns how long it took.
async fn wait_evaluates(provider: &FlagdProvider, flag: &str, value: Option<&str>) -> Duration {
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

async fn setup(prefix: &str, partitions: i32) -> (String, String, tempfile::TempDir) {
    let servers = kafka::require_broker();
    let topic = kafka::unique_topic(prefix);
    kafka::create_topics(&servers, &[&topic], partitions).await;
    let dir = tempfile::Builder::new()
        .prefix("chaosgate-flagd-serve-")
        .tempdir()
        .expect("temp dir");
    (servers, topic, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_approved_record_reaches_the_provider_within_a_second() {
    let (servers, topic, dir) = setup("flagd-serve-latency", 2).await;
    produce(
        &servers,
        &topic,
        Produce::Committed,
        &[approved_record("checkout", definition("ENABLED", "one"))],
    )
    .await;
    let bridge = Bridge::start(&servers, &topic, dir.path()).await;
    // Read to the end at start: served before the first request.
    assert_eq!(
        bridge.served("checkout").await,
        Some(definition("ENABLED", "one"))
    );
    let provider = bridge.provider(None).await;
    assert_eq!(
        evaluate(&provider, "checkout").await.as_deref(),
        Some("one")
    );
    assert_eq!(
        evaluate(&provider, "new-banner").await,
        None,
        "never approved: not served"
    );

    // A new flag (plain producer) and a change (transaction): each within a second of
    // its acknowledgment or commit.
    let acked = produce(
        &servers,
        &topic,
        Produce::Plain,
        &[approved_record("new-banner", definition("ENABLED", "two"))],
    )
    .await;
    wait_evaluates(&provider, "new-banner", Some("two")).await;
    let took = acked.elapsed();
    println!("new flag reached the provider in {took:?}");
    assert!(took < Duration::from_secs(1), "new flag took {took:?}");
    let committed = produce(
        &servers,
        &topic,
        Produce::Committed,
        &[approved_record("checkout", definition("ENABLED", "three"))],
    )
    .await;
    wait_evaluates(&provider, "checkout", Some("three")).await;
    let took = committed.elapsed();
    println!("changed flag reached the provider in {took:?}");
    assert!(took < Duration::from_secs(1), "change took {took:?}");
    // Disabled: the provider treats it as absent, and the document shows it DISABLED.
    let acked = produce(
        &servers,
        &topic,
        Produce::Plain,
        &[approved_record("checkout", definition("DISABLED", "three"))],
    )
    .await;
    wait_evaluates(&provider, "checkout", None).await;
    let took = acked.elapsed();
    assert!(took < Duration::from_secs(1), "disable took {took:?}");
    assert_eq!(
        bridge.served("checkout").await,
        Some(definition("DISABLED", "three"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_undecodable_and_unservable_records_are_never_served() {
    let (servers, topic, dir) = setup("flagd-serve-refused", 1).await;
    let good = definition("ENABLED", "one");
    produce(
        &servers,
        &topic,
        Produce::Committed,
        &[approved_record("checkout", good.clone())],
    )
    .await;
    // An aborted transaction last on the topic: the bridge still reads to the end.
    produce(
        &servers,
        &topic,
        Produce::Aborted,
        &[approved_record("checkout", definition("ENABLED", "two"))],
    )
    .await;
    let bridge = Bridge::start(&servers, &topic, dir.path()).await;
    assert_eq!(bridge.served("checkout").await, Some(good.clone()));
    let provider = bridge.provider(None).await;
    assert_eq!(
        evaluate(&provider, "checkout").await.as_deref(),
        Some("one")
    );

    // Watch the provider the whole time: it never sees anything but "one".
    let watching = tokio::spawn({
        let provider = bridge.provider(None).await;
        async move {
            let mut seen = std::collections::BTreeSet::new();
            let started = Instant::now();
            loop {
                let got = evaluate(&provider, "checkout").await;
                seen.insert(got.clone());
                if evaluate(&provider, "marker").await.is_some() || started.elapsed() > WAIT {
                    return seen;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    produce(
        &servers,
        &topic,
        Produce::Aborted,
        &[approved_record("checkout", definition("ENABLED", "two"))],
    )
    .await;
    let mut undecodable = approved_record("checkout", definition("ENABLED", "three"));
    undecodable.value = Some(b"{\"project\": not json".to_vec());
    let mut null_default = definition("ENABLED", "three");
    null_default["defaultVariant"] = Value::Null;
    let mut dangling_ref = definition("ENABLED", "three");
    dangling_ref["targeting"] = json!({"if": [{"$ref": "is-staff"}, "three", "one"]});
    produce(
        &servers,
        &topic,
        Produce::Plain,
        &[
            undecodable,
            approved_record("checkout", null_default),
            approved_record("checkout", dangling_ref),
            approved_record("checkout", definition("ENABLED", "four")),
            approved_record("marker", definition("ENABLED", "one")),
        ],
    )
    .await;
    bridge
        .wait_served("marker", &definition("ENABLED", "one"))
        .await;
    let seen = watching.await.expect("watcher");
    assert_eq!(
        seen,
        [Some("one".to_string())].into(),
        "the provider saw {seen:?}"
    );
    assert_eq!(bridge.served("checkout").await, Some(good));
    assert_eq!(evaluate(&provider, "marker").await.as_deref(), Some("one"));
    // Each refused record is logged with where it is and why.
    let log = bridge.log();
    for (offset, why) in [
        ("offset=6", "not a CloudEvent"),
        ("offset=7", "defaultVariant is missing or not a string"),
        ("offset=8", "$ref"),
        ("offset=9", "names no variant"),
    ] {
        assert!(
            log.lines().any(|l| l.contains("record skipped")
                && l.contains(&topic)
                && l.contains("partition=0")
                && l.contains(offset)
                && l.contains(why)),
            "no skip logged at {offset} ({why}):\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_serves_etags_and_the_file_and_the_sync_service_its_selectors() {
    let (servers, topic, dir) = setup("flagd-serve-http", 1).await;
    produce(
        &servers,
        &topic,
        Produce::Committed,
        &[
            approved_record("checkout", definition("ENABLED", "one")),
            approved_record_in("web", "staging", "search", definition("ENABLED", "two")),
        ],
    )
    .await;
    let bridge = Bridge::start(&servers, &topic, dir.path()).await;
    let (status, etag, content_type, body) = bridge.get("", None).await;
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2,
        "strong ETag: {etag}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("JSON"),
        json!({"flags": {"checkout": definition("ENABLED", "one")}})
    );
    // The file holds the same bytes.
    assert_eq!(
        std::fs::read_to_string(&bridge.file).expect("the file"),
        body
    );
    // If-None-Match: 304 with no body, in every form; another tag: 200.
    for tag in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"x\", {etag}"),
        "*".into(),
    ] {
        let (status, again, _, body) = bridge.get("", Some(&tag)).await;
        assert_eq!(
            (status, again.as_str(), body.as_str()),
            (304, etag.as_str(), ""),
            "{tag}"
        );
    }
    assert_eq!(bridge.get("", Some("\"other\"")).await.0, 200);
    // Another set by selector; a bad selector is refused naming the forms.
    let (status, _, _, other) = bridge.get("?selector=web/staging", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&other).expect("JSON"),
        json!({"flags": {"search": definition("ENABLED", "two")}})
    );
    assert_eq!(
        bridge.get("?selector=nobody/here", None).await.3,
        r#"{"flags":{}}"#
    );
    let (status, _, _, refused) = bridge.get("?selector=flagSetId%3Dx", None).await;
    assert_eq!(status, 400);
    assert!(refused.contains("PROJECT/ENVIRONMENT"), "{refused}");

    // The sync service: FetchAllFlags = the same document; GetMetadata answers; a bad
    // selector is INVALID_ARGUMENT.
    let mut client = bridge.sync_client().await;
    let fetched = client
        .fetch_all_flags(FetchAllFlagsRequest {
            provider_id: "test".into(),
            selector: String::new(),
        })
        .await
        .expect("FetchAllFlags")
        .into_inner();
    assert_eq!(fetched.flag_configuration, body);
    let fetched = client
        .fetch_all_flags(FetchAllFlagsRequest {
            provider_id: "test".into(),
            selector: "web/staging".into(),
        })
        .await
        .expect("FetchAllFlags web/staging")
        .into_inner();
    assert_eq!(fetched.flag_configuration, other);
    // Deprecated in the proto, still in the service: an empty Struct.
    #[allow(deprecated)]
    let metadata = client.get_metadata(GetMetadataRequest {}).await;
    assert_eq!(
        metadata.expect("GetMetadata").into_inner().metadata,
        Some(Default::default())
    );
    let refused = client
        .sync_flags(SyncFlagsRequest {
            provider_id: "test".into(),
            selector: "a=b".into(),
        })
        .await
        .expect_err("a bad selector is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("PROJECT/ENVIRONMENT"),
        "{}",
        refused.message()
    );
    // A provider on another set sees that set only.
    let staging = bridge.provider(Some("web/staging")).await;
    assert_eq!(evaluate(&staging, "search").await.as_deref(), Some("two"));
    assert_eq!(evaluate(&staging, "checkout").await, None);

    // A change: a new tag, the old one no longer matches, the file follows.
    produce(
        &servers,
        &topic,
        Produce::Plain,
        &[approved_record("checkout", definition("ENABLED", "two"))],
    )
    .await;
    bridge
        .wait_served("checkout", &definition("ENABLED", "two"))
        .await;
    let (status, new_etag, _, new_body) = bridge.get("", Some(&etag)).await;
    assert_eq!(status, 200);
    assert_ne!(new_etag, etag);
    let started = Instant::now();
    while std::fs::read_to_string(&bridge.file).unwrap_or_default() != new_body {
        assert!(
            started.elapsed() < WAIT,
            "the file did not follow the change"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leftovers: Vec<_> = std::fs::read_dir(bridge.file.parent().expect("folder"))
        .expect("served folder")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("flags.json")]);

    // Health and metrics.
    let http = reqwest::Client::new();
    let health = http
        .get(format!("{}/healthz", bridge.http))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    let metrics = http
        .get(format!("{}/metrics", bridge.http))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains("chaosgate_flagd_approved_records_total 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("chaosgate_flagd_sync_streams 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serve_identical_documents_and_a_restarted_bridge_the_same_configuration() {
    let (servers, topic, dir) = setup("flagd-serve-replicas", 3).await;
    let flags = ["a", "b", "c", "d", "e", "f"];
    let records: Vec<KafkaMessage> = flags
        .iter()
        .map(|f| approved_record(f, definition("ENABLED", "one")))
        .collect();
    produce(&servers, &topic, Produce::Committed, &records).await;
    let later: Vec<KafkaMessage> = flags
        .iter()
        .step_by(2)
        .map(|f| approved_record(f, definition("ENABLED", "two")))
        .collect();
    produce(&servers, &topic, Produce::Plain, &later).await;
    let dir_b = tempfile::tempdir().expect("temp dir");
    let mut a = Bridge::start(&servers, &topic, dir.path()).await;
    let b = Bridge::start(&servers, &topic, dir_b.path()).await;
    let (_, tag_a, _, body_a) = a.get("", None).await;
    let (_, tag_b, _, body_b) = b.get("", None).await;
    assert_eq!((&tag_a, &body_a), (&tag_b, &body_b), "replicas differ");
    let served: Value = serde_json::from_str(&body_a).expect("JSON");
    assert_eq!(served["flags"]["a"], definition("ENABLED", "two"));
    assert_eq!(served["flags"]["b"], definition("ENABLED", "one"));

    let provider = a.provider(None).await;
    assert_eq!(evaluate(&provider, "a").await.as_deref(), Some("two"));
    let (status, took) = a.stop().await;
    assert!(
        status.success(),
        "the bridge exited with {status}:\n{}",
        a.log()
    );
    println!("bridge stopped in {took:?} with a provider connected");
    // While it is down: a change, which the restarted bridge must read.
    produce(
        &servers,
        &topic,
        Produce::Committed,
        &[approved_record("b", definition("ENABLED", "three"))],
    )
    .await;
    b.wait_served("b", &definition("ENABLED", "three")).await;
    a.spawn().await;
    let took = wait_evaluates(&provider, "b", Some("three")).await;
    println!("provider reconnected and saw the change in {took:?}");
    assert_eq!(evaluate(&provider, "a").await.as_deref(), Some("two"));
    let (_, tag_a, _, body_a) = a.get("", None).await;
    let (_, tag_b, _, body_b) = b.get("", None).await;
    assert_eq!(
        (&tag_a, &body_a),
        (&tag_b, &body_b),
        "the restarted replica differs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_open_sync_streams_exits_promptly() {
    let (servers, topic, dir) = setup("flagd-serve-shutdown", 1).await;
    produce(
        &servers,
        &topic,
        Produce::Plain,
        &[approved_record("checkout", definition("ENABLED", "one"))],
    )
    .await;
    let mut bridge = Bridge::start(&servers, &topic, dir.path()).await;
    let provider = bridge.provider(None).await;
    assert_eq!(
        evaluate(&provider, "checkout").await.as_deref(),
        Some("one")
    );
    // A second, raw stream that nobody reads from after its first message.
    let mut client = bridge.sync_client().await;
    let mut stream = client
        .sync_flags(SyncFlagsRequest {
            provider_id: "test".into(),
            selector: String::new(),
        })
        .await
        .expect("SyncFlags")
        .into_inner();
    let first = stream
        .message()
        .await
        .expect("first message")
        .expect("a message");
    assert_eq!(
        serde_json::from_str::<Value>(&first.flag_configuration).expect("JSON"),
        json!({"flags": {"checkout": definition("ENABLED", "one")}})
    );
    let (status, took) = bridge.stop().await;
    assert!(
        status.success(),
        "the bridge exited with {status}:\n{}",
        bridge.log()
    );
    assert!(
        took < Duration::from_secs(10),
        "shutdown took {took:?}:\n{}",
        bridge.log()
    );
    println!("shutdown with two open streams took {took:?}");
    // The stream ended (cleanly or with an error), it did not hang.
    let ended = tokio::time::timeout(WAIT, stream.message()).await;
    assert!(
        matches!(ended, Ok(Ok(None)) | Ok(Err(_))),
        "stream after shutdown: {ended:?}"
    );
    // The provider keeps the last configuration while the source is down.
    assert_eq!(
        evaluate(&provider, "checkout").await.as_deref(),
        Some("one")
    );
}
