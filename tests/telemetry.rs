//! Telemetry against real components: the worker's HTTP endpoints on loopback, a real
//! Prometheus scraping `/metrics`, a real OpenTelemetry Collector receiving the spans
//! over OTLP/gRPC and writing them to a file, and the real `chaosgate run` on the real
//! broker (traces, redaction, readiness while a broker of its own goes away).
//!
//! Tools: `prometheus` (Debian package; `PROMETHEUS_BIN` overrides), the collector
//! built by `tests/otelcol/build.sh` (`OTELCOL_BIN` overrides), and the Kafka broker of
//! `deploy/local/kafka.sh` (`KAFKA_BOOTSTRAP_SERVERS`).

#[path = "support/kafka.rs"]
mod kafka;
#[path = "support/engine.rs"]
mod support;
#[path = "support/worker.rs"]
mod worker;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chaosgate::config::{LogFormat, TelemetryConfig};
use chaosgate::contract::{CommandKind, ErrorClass, ReasonCode, RunStatus};
use chaosgate::telemetry::http::{self, Readiness};
use chaosgate::telemetry::{metrics, traces};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use support::{ChildGuard, free_port};

/// Upper bound for anything a worker test waits for: generous, so only a bug reaches it.
const PATIENCE: Duration = Duration::from_secs(90);

/// The value of one series in a Prometheus text exposition (0 when absent).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn get(url: &str) -> (u16, String, String) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}

#[tokio::test]
async fn health_readiness_and_metrics_over_http() {
    let readiness = Readiness::default();
    let shutdown = CancellationToken::new();
    let server = http::serve(
        "127.0.0.1:0".parse().unwrap(),
        readiness.clone(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    assert_ne!(server.addr.port(), 0, "the bound port is reported");
    let base = format!("http://{}", server.addr);

    let (status, _, body) = get(&format!("{base}/healthz")).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));

    // Not ready until partitions are assigned, and why.
    let (status, content_type, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 503);
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["ready"], false);
    assert_eq!(
        report["reasons"],
        serde_json::json!(["no flag-changes partition assigned"])
    );
    readiness.set_assigned(3);
    let (status, _, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 200, "{body}");
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["assigned_partitions"], 3);
    // The broker goes away: the producer fails, then partitions are lost.
    readiness.set_producer_ok(false);
    assert_eq!(get(&format!("{base}/readyz")).await.0, 503);
    readiness.set_producer_ok(true);
    readiness.set_assigned(0);
    assert_eq!(get(&format!("{base}/readyz")).await.0, 503);
    // And comes back.
    readiness.set_assigned(1);
    assert_eq!(get(&format!("{base}/readyz")).await.0, 200);

    // Metrics move when the worker's calls happen.
    let (status, content_type, before) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    assert!(content_type.contains("openmetrics-text"), "{content_type}");
    assert!(before.trim_end().ends_with("# EOF"), "{before}");
    metrics::event_consumed();
    metrics::event_consumed();
    metrics::dead_lettered(ErrorClass::SchemaViolation);
    metrics::event_gated(CommandKind::Enable, ReasonCode::Passed);
    metrics::run_finished(RunStatus::Passed, Some(95.0), Duration::from_secs(40));
    metrics::step_finished(RunStatus::Passed, Duration::from_secs(41));
    metrics::commit(Duration::from_millis(12));
    let in_flight = metrics::run_started();
    metrics::fault_injected();
    let (_, _, during) = get(&format!("{base}/metrics")).await;
    drop(in_flight);
    metrics::fault_reverted();
    let (_, _, after) = get(&format!("{base}/metrics")).await;

    let moved = |series: &str| sample(&after, series) - sample(&before, series);
    assert!(moved("chaosgate_events_consumed_total") >= 2.0, "{after}");
    assert!(moved("chaosgate_events_dead_lettered_total{class=\"schema_violation\"}") >= 1.0);
    assert!(moved("chaosgate_events_gated_total{command=\"enable\",reason=\"passed\"}") >= 1.0);
    assert!(moved("chaosgate_runs_total{status=\"passed\"}") >= 1.0);
    assert!(moved("chaosgate_resilience_score_bucket{le=\"100.0\"}") >= 1.0);
    assert!(moved("chaosgate_resilience_score_bucket{le=\"90.0\"}") >= 0.0);
    assert!(moved("chaosgate_experiment_duration_seconds_count{status=\"passed\"}") >= 1.0);
    assert!(moved("chaosgate_step_duration_seconds_count{status=\"passed\"}") >= 1.0);
    assert!(moved("chaosgate_transaction_commit_seconds_count") >= 1.0);
    assert!(
        sample(&during, "chaosgate_runs_in_flight") >= 1.0,
        "{during}"
    );
    assert!(
        sample(&during, "chaosgate_faults_active") >= 1.0,
        "{during}"
    );

    // Stopping: the listener goes away.
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), server.task)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
}

#[tokio::test]
async fn a_port_in_use_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let error = http::serve(addr, Readiness::default(), CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("http.listen") && error.contains(&addr.to_string()),
        "{error}"
    );
}

fn prometheus_binary() -> PathBuf {
    std::env::var_os("PROMETHEUS_BIN")
        .map(PathBuf::from)
        .or_else(|| on_path("prometheus"))
        .unwrap_or_else(|| {
            panic!("prometheus not found: apt-get install prometheus, or set PROMETHEUS_BIN")
        })
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

async fn wait_for_port(port: u16, child: &mut ChildGuard, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("{what} exited early: {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A real Prometheus scrapes `/metrics`: the exposition parses, and the values arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_metrics_endpoint() {
    let shutdown = CancellationToken::new();
    let server = http::serve(
        "127.0.0.1:0".parse().unwrap(),
        Readiness::default(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    metrics::dead_lettered(ErrorClass::Oversized);
    metrics::dead_lettered(ErrorClass::Oversized);
    metrics::event_gated(CommandKind::Disable, ReasonCode::Failed);
    metrics::consumer_statistics(
        br#"{"type": "consumer", "topics": {"scrape-test": {"partitions": {
            "0": {"partition": 0, "consumer_lag": 17},
            "-1": {"partition": -1, "consumer_lag": -1}}}}}"#,
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: chaosgate\n    static_configs:\n      - targets: ['{}']\n",
            server.addr
        ),
    )
    .unwrap();
    let port = free_port();
    let mut prometheus = ChildGuard::spawn(
        Command::new(prometheus_binary())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_for_port(port, &mut prometheus, "prometheus").await;

    let query = |q: &str| {
        let url = format!(
            "http://127.0.0.1:{port}/api/v1/query?query={}",
            url_encode(q)
        );
        async move {
            let body: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
            body["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let dead_lettered = loop {
        if let Some(value) =
            query("chaosgate_events_dead_lettered_total{class=\"oversized\"}").await
        {
            break value;
        }
        assert!(Instant::now() < deadline, "Prometheus never got the metric");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(dead_lettered >= 2.0, "{dead_lettered}");
    assert_eq!(query("up{job=\"chaosgate\"}").await, Some(1.0));
    assert_eq!(
        query("chaosgate_consumer_lag{topic=\"scrape-test\",partition=\"0\"}").await,
        Some(17.0)
    );
    assert!(
        query("chaosgate_events_gated_total{command=\"disable\",reason=\"failed\"}")
            .await
            .is_some_and(|v| v >= 1.0)
    );
    // Histograms arrive as buckets Prometheus can compute quantiles from.
    assert!(
        query("count(chaosgate_resilience_score_bucket)")
            .await
            .is_some_and(|v| v >= 12.0)
    );

    drop(prometheus);
    shutdown.cancel();
    let _ = server.task.await;
}

/// The collector: `OTELCOL_BIN`, else the build of `tests/otelcol/build.sh` in the cache.
fn otelcol_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("OTELCOL_BIN") {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("CHAOSGATE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/chaosgate")));
    cache
        .map(|c| c.join("otelcol-chaosgate/otelcol-chaosgate"))
        .filter(|p| p.is_file())
        .or_else(|| on_path("otelcol-chaosgate"))
        .unwrap_or_else(|| {
            panic!(
                "the OpenTelemetry Collector for the trace test is not built: run \
                 tests/otelcol/build.sh (Go module proxy), or set OTELCOL_BIN"
            )
        })
}

/// Spans exported for one trace id, from the collector's file exporter (OTLP JSON).
fn spans_of(file: &Path, trace_id: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut spans = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(request) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        for resource in request["resourceSpans"].as_array().into_iter().flatten() {
            for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                for span in scope["spans"].as_array().into_iter().flatten() {
                    if span["traceId"] == trace_id {
                        let mut span = span.clone();
                        span["resource"] = resource["resource"].clone();
                        spans.push(span);
                    }
                }
            }
        }
    }
    spans
}

/// A span attribute's value as text (OTLP JSON carries ints as strings or numbers).
fn attribute(span: &Value, key: &str) -> Option<String> {
    let value = span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)?
        .get("value")?
        .clone();
    let (_, inner) = value.as_object()?.iter().next()?;
    Some(match inner {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

fn kind_is(span: &Value, number: u64, name: &str) -> bool {
    span["kind"] == number || span["kind"] == name
}

/// A real OpenTelemetry Collector: OTLP/gRPC in on a loopback port, spans out to a file
/// (OTLP JSON lines). Stopped when dropped.
struct OtelCollector {
    port: u16,
    output: PathBuf,
    _process: ChildGuard,
    _dir: tempfile::TempDir,
}

impl OtelCollector {
    async fn start() -> OtelCollector {
        let binary = otelcol_binary();
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("spans.json");
        let port = free_port();
        let config = dir.path().join("otelcol.yaml");
        std::fs::write(
            &config,
            format!(
                r#"receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{port}
exporters:
  file:
    path: {}
    flush_interval: 100ms
service:
  telemetry:
    metrics:
      level: none
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [file]
"#,
                output.display()
            ),
        )
        .unwrap();
        let mut process = ChildGuard::spawn(
            Command::new(&binary)
                .arg(format!("--config={}", config.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        wait_for_port(port, &mut process, "otelcol").await;
        OtelCollector {
            port,
            output,
            _process: process,
            _dir: dir,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The spans of `trace_id` once `done` holds for them (30 s at most).
    async fn spans(&self, trace_id: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans = spans_of(&self.output, trace_id);
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "the collector wrote {} spans of trace {trace_id}: {spans:#?}",
                spans.len(),
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The span named `name` (the first, when several).
fn named<'s>(spans: &'s [Value], name: &str) -> &'s Value {
    spans
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no span {name} in {:#?}", span_names(spans)))
}

fn span_names(spans: &[Value]) -> Vec<&str> {
    spans.iter().filter_map(|s| s["name"].as_str()).collect()
}

fn has_names(spans: &[Value], names: &[&str]) -> bool {
    names.iter().all(|n| spans.iter().any(|s| s["name"] == *n))
}

/// Checks span attributes, `(key, value as text)`.
fn assert_attributes(span: &Value, expected: &[(&str, &str)]) {
    for (key, value) in expected {
        assert_eq!(
            attribute(span, key).as_deref(),
            Some(*value),
            "{key} of {span:#}"
        );
    }
}

/// A flag-change whose headers carry a `traceparent`: its spans reach a real collector
/// in the incoming trace, with the Kafka messaging attributes, and the outgoing record
/// carries the trace on.
#[test]
fn spans_reach_a_real_collector_in_the_incoming_trace() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let collector = runtime.block_on(OtelCollector::start());

    // The flag service's trace, as it arrives in the flag-change's headers.
    let trace_id = format!("{:032x}", rand::random::<u128>() | 1);
    let parent_id = "b7ad6b7169203331";
    let incoming = vec![
        ("ce_id".to_string(), b"evt-1".to_vec()),
        (
            "traceparent".to_string(),
            format!("00-{trace_id}-{parent_id}-01").into_bytes(),
        ),
        ("tracestate".to_string(), b"flagsvc=1".to_vec()),
    ];

    let telemetry = TelemetryConfig {
        otlp_endpoint: Some(collector.endpoint()),
        log_format: LogFormat::Text,
        log_filter: Some("warn".into()),
    };
    let guard = {
        let _entered = runtime.enter();
        chaosgate::telemetry::init(&telemetry).unwrap()
    };
    assert!(guard.traces_enabled());

    let outgoing = runtime.block_on(async {
        let process = traces::process_span("flag-changes", 1, 7, "chaosgate-test", &incoming);
        process.record("flag", "shop/production/checkout-v2");
        async {
            let stage = traces::stage_span("canary", "feature_flag");
            async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let send = traces::send_span("flag-commands");
                let mut headers = vec![("ce_type".to_string(), b"command".to_vec())];
                traces::inject(&send, &mut headers);
                traces::record_delivery(&send, 0, 12);
                headers
            }
            .instrument(stage)
            .await
        }
        .instrument(process)
        .await
    });
    drop(guard); // flushes: shutdown waits for the export to finish

    // The outgoing record continues the same trace.
    let sent = traces::extract(&outgoing);
    use opentelemetry::trace::TraceContextExt;
    let sent = sent.span().span_context().clone();
    assert_eq!(sent.trace_id().to_string(), trace_id);

    let spans = runtime.block_on(collector.spans(&trace_id, |spans| spans.len() >= 3));
    let named = |name: &str| named(&spans, name);

    let process = named("process flag-changes");
    assert_eq!(process["parentSpanId"], parent_id, "{process:#}");
    assert!(kind_is(process, 5, "SPAN_KIND_CONSUMER"), "{process:#}");
    assert_attributes(
        process,
        &[
            ("messaging.system", "kafka"),
            ("messaging.operation.name", "process"),
            ("messaging.destination.name", "flag-changes"),
            ("messaging.kafka.destination.partition", "1"),
            ("messaging.kafka.message.offset", "7"),
            ("messaging.consumer.group.name", "chaosgate-test"),
            ("flag", "shop/production/checkout-v2"),
        ],
    );
    let service = process["resource"]["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == "service.name")
        .unwrap();
    assert_eq!(service["value"]["stringValue"], "chaosgate");

    let stage = named("stage canary");
    assert_eq!(stage["parentSpanId"], process["spanId"]);
    assert_attributes(stage, &[("stage_id", "canary")]);

    let send = named("send flag-commands");
    assert_eq!(send["parentSpanId"], stage["spanId"]);
    assert!(kind_is(send, 4, "SPAN_KIND_PRODUCER"), "{send:#}");
    assert_eq!(send["spanId"], sent.span_id().to_string());
    assert_attributes(
        send,
        &[
            ("messaging.system", "kafka"),
            ("messaging.operation.name", "send"),
            ("messaging.destination.name", "flag-commands"),
            ("messaging.kafka.destination.partition", "0"),
            ("messaging.kafka.message.offset", "12"),
        ],
    );

    drop(collector);
    drop(runtime);
}

// --- The worker binary on the real broker ----------------------------------------------

/// Sets `key = value` (TOML) in a worker config's `[telemetry]` section, the harness's
/// last section.
fn set_telemetry(config: &Path, key: &str, value: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    let (head, section) = text.split_once("[telemetry]\n").unwrap();
    let mut lines: Vec<String> = section
        .lines()
        .filter(|l| !l.starts_with(&format!("{key} = ")))
        .map(str::to_string)
        .collect();
    lines.push(format!("{key} = {value}"));
    std::fs::write(config, format!("{head}[telemetry]\n{}\n", lines.join("\n"))).unwrap();
}

/// A W3C `traceparent` of a fresh trace: (header value, trace id, parent span id).
fn fresh_traceparent() -> (String, String, String) {
    let trace_id = format!("{:032x}", rand::random::<u128>() | 1);
    let span_id = format!("{:016x}", rand::random::<u64>() | 1);
    (format!("00-{trace_id}-{span_id}-01"), trace_id, span_id)
}

fn header<'h>(headers: &'h [(String, Vec<u8>)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

/// `traceparent` header of an output: (trace id, span id).
fn traceparent_of(headers: &[(String, Vec<u8>)]) -> (String, String) {
    let value = header(headers, "traceparent").expect("a traceparent header");
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    (parts[1].to_string(), parts[2].to_string())
}

/// The real worker, exporting to a real collector: a flag-change carrying the flag
/// service's `traceparent` gives one trace, `process` -> `stage` -> `step` -> fault
/// inject/revert and probe checks, with `send` spans for every output; every output
/// carries that trace on. A bad event's dead letter is traced too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_continues_the_incoming_trace_through_every_output() {
    use chaosgate::contract::flag_change::flag_change_event;
    use chaosgate::contract::{ChangeKind, KafkaMessage, RunStatus};
    use worker::{Harness, Listener, Settings, change, experiment_yaml, pipeline_yaml};

    let servers = kafka::require_broker();
    let collector = OtelCollector::start().await;
    let h = Harness::new(&servers, "traces", 1).await;
    let up = Listener::start().await;
    h.catalog_file(
        "exp.yaml",
        &experiment_yaml("listener-up", "1500ms", &h.marker("up"), &up.address),
    );
    h.catalog_file(
        "pipe.yaml",
        &pipeline_yaml("gate", Some("traced-*"), &["listener-up"]),
    );
    let outputs = h.collect();
    let config = h.config("w", &Settings::default());
    set_telemetry(
        &config,
        "otlp_endpoint",
        &format!("\"{}\"", collector.endpoint()),
    );
    let mut worker = h.spawn("w", &config);
    let address = worker.http_address(PATIENCE).await;
    let faults_active = || {
        let url = format!("http://{address}/metrics");
        async move {
            let text = reqwest::get(url).await.unwrap().text().await.unwrap();
            sample(&text, "chaosgate_faults_active")
        }
    };

    let (traceparent, trace_id, parent_id) = fresh_traceparent();
    let event = change("traced-flag", ChangeKind::Enable, None);
    let mut message =
        flag_change_event(&event, "/flag-service/test").to_binary(Some(&event.flag_key()));
    message.headers.extend([
        ("traceparent".to_string(), traceparent.into_bytes()),
        ("tracestate".to_string(), b"flagsvc=1".to_vec()),
    ]);
    let (partition, offset) = h.produce(&h.topics.flag_changes, &message).await;
    let (bad_traceparent, bad_trace_id, _) = fresh_traceparent();
    let bad = KafkaMessage {
        key: Some(b"test/test/traced-bad".to_vec()),
        value: Some(b"{not json".to_vec()),
        headers: vec![("traceparent".to_string(), bad_traceparent.into_bytes())],
    };
    h.produce(&h.topics.flag_changes, &bad).await;
    // The fault shows in /metrics while it is injected.
    let deadline = Instant::now() + PATIENCE;
    while faults_active().await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "chaosgate_faults_active never rose"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = event.event_id.clone();
    let out = h
        .wait_for(&outputs, "the command and the dead letter", PATIENCE, |o| {
            o.all_commanded(std::slice::from_ref(&id))
                && o.runs_for(&id).len() >= 2
                && !o.dead_letters.is_empty()
        })
        .await;
    assert_eq!(faults_active().await, 0.0, "the fault was reverted");
    // Stopping flushes the spans still buffered.
    worker.signal(libc::SIGTERM);
    let status = worker.wait_exit(PATIENCE).await.expect("the worker exits");
    assert!(status.success(), "{status}\n{}", h.log_tails());

    let runs_topic = h.topics.runs.clone();
    let commands_topic = h.topics.commands.clone();
    let send_runs = format!("send {runs_topic}");
    let send_commands = format!("send {commands_topic}");
    let process_name = format!("process {}", h.topics.flag_changes);
    let expected = [
        process_name.as_str(),
        "stage chaos",
        "step listener-up",
        "fault inject marker",
        "fault revert marker",
        "probe listener-answers",
        send_runs.as_str(),
        send_commands.as_str(),
    ];
    let spans = collector
        .spans(&trace_id, |spans| {
            has_names(spans, &expected)
                && spans
                    .iter()
                    .filter(|s| s["name"] == send_runs.as_str())
                    .count()
                    >= 2
        })
        .await;

    // The tree.
    let process = named(&spans, &process_name);
    assert_eq!(
        process["parentSpanId"],
        parent_id.as_str(),
        "continues the flag service's span"
    );
    assert!(kind_is(process, 5, "SPAN_KIND_CONSUMER"), "{process:#}");
    let final_record = out
        .final_runs_for(&id)
        .into_iter()
        .next()
        .expect("a final record")
        .clone();
    assert_eq!(final_record.status, RunStatus::Passed);
    assert_attributes(
        process,
        &[
            ("messaging.system", "kafka"),
            ("messaging.operation.name", "process"),
            ("messaging.destination.name", h.topics.flag_changes.as_str()),
            (
                "messaging.kafka.destination.partition",
                &partition.to_string(),
            ),
            ("messaging.kafka.message.offset", &offset.to_string()),
            ("messaging.consumer.group.name", h.group.as_str()),
            ("flag", "test/test/traced-flag"),
            ("pipeline_id", "gate"),
            (
                "pipeline_execution_id",
                final_record.pipeline_execution_id.as_str(),
            ),
            ("event_id", id.as_str()),
        ],
    );
    let stage = named(&spans, "stage chaos");
    assert_eq!(stage["parentSpanId"], process["spanId"]);
    let step = named(&spans, "step listener-up");
    assert_eq!(step["parentSpanId"], stage["spanId"]);
    assert_attributes(step, &[("run_id", final_record.run_id.as_str())]);
    for name in [
        "fault inject marker",
        "fault revert marker",
        "probe listener-answers",
    ] {
        let span = named(&spans, name);
        assert_eq!(span["parentSpanId"], step["spanId"], "{name}");
    }
    assert_attributes(
        named(&spans, "fault inject marker"),
        &[("chaosgate.fault.kind", "command")],
    );
    assert_attributes(
        named(&spans, "probe listener-answers"),
        &[("chaosgate.probe.type", "tcp")],
    );
    let attempt = named(&spans, "probe attempt");
    assert_eq!(
        attempt["parentSpanId"],
        named(&spans, "probe listener-answers")["spanId"]
    );
    assert_attributes(attempt, &[("chaosgate.probe.attempt", "1")]);
    let sends: Vec<&Value> = spans
        .iter()
        .filter(|s| s["name"].as_str().is_some_and(|n| n.starts_with("send ")))
        .collect();
    for send in &sends {
        assert!(kind_is(send, 4, "SPAN_KIND_PRODUCER"), "{send:#}");
        assert_eq!(
            attribute(send, "messaging.system").as_deref(),
            Some("kafka")
        );
    }
    // The `running` record goes out from its step, the final outputs from the process.
    let parents_of = |name: &str| -> Vec<Value> {
        sends
            .iter()
            .filter(|s| s["name"] == name)
            .map(|s| s["parentSpanId"].clone())
            .collect()
    };
    assert!(parents_of(&send_runs).contains(&step["spanId"]));
    assert!(parents_of(&send_runs).contains(&process["spanId"]));
    assert_eq!(parents_of(&send_commands), vec![process["spanId"].clone()]);

    // Every output carries the trace on, naming its send span.
    let send_ids: Vec<&str> = sends.iter().filter_map(|s| s["spanId"].as_str()).collect();
    let mut traced = 0;
    for headers in out
        .runs
        .iter()
        .filter(|r| r.value.trigger_event_id == id)
        .map(|r| &r.headers)
        .chain(out.commands.iter().map(|c| &c.headers))
    {
        let (trace, span) = traceparent_of(headers);
        assert_eq!(trace, trace_id);
        assert!(send_ids.contains(&span.as_str()), "{span} is no send span");
        assert_eq!(header(headers, "tracestate"), Some("flagsvc=1"));
        traced += 1;
    }
    assert_eq!(traced, 3, "running record, final record, command");

    // The dead letter continues its own event's trace.
    let (trace, span) = traceparent_of(&out.dead_letters[0].headers);
    assert_eq!(trace, bad_trace_id);
    let dead_letter_spans = collector
        .spans(&bad_trace_id, |spans| {
            has_names(
                spans,
                &[&process_name, &format!("send {}", h.topics.dead_letter)],
            )
        })
        .await;
    let send = named(
        &dead_letter_spans,
        &format!("send {}", h.topics.dead_letter),
    );
    assert_eq!(send["spanId"], span.as_str());
    assert_eq!(
        send["parentSpanId"],
        named(&dead_letter_spans, &process_name)["spanId"]
    );
}

/// Secrets in the configuration (a SASL password) and the catalog (a probe's bearer
/// token, which the probed server quotes back in its error) appear neither in the
/// worker's log nor in anything it writes to Kafka; the JSON log lines of a run carry
/// its flag, pipeline, execution and run ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_stay_out_of_logs_and_records() {
    use chaosgate::contract::{ChangeKind, CommandKind, ids};
    use worker::{Harness, Settings, change, pipeline_yaml};

    let servers = kafka::require_broker();
    let token = format!("tok-{}", uuid::Uuid::new_v4().simple());
    let password = format!("sasl-{}", uuid::Uuid::new_v4().simple());

    // A service that refuses the token and quotes it back, as real ones sometimes do.
    let service = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service_address = service.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/orders",
        axum::routing::get(|headers: axum::http::HeaderMap| async move {
            let presented = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            (
                axum::http::StatusCode::UNAUTHORIZED,
                axum::Json(serde_json::json!({ "detail": format!("{presented} is not valid") })),
            )
        }),
    );
    let service_task = tokio::spawn(async move { axum::serve(service, app).await });

    let h = Harness::new(&servers, "secrets", 1).await;
    h.catalog_file(
        "exp.yaml",
        &format!(
            r#"kind: experiment
id: orders-authorized
faults:
  - name: marker
    weight: 5
    duration: 200ms
    command:
      inject:
        argv: [touch, "{marker}"]
      revert:
        argv: [rm, -f, "{marker}"]
probes:
  - name: orders-answer
    mode: eot
    http:
      url: "http://{service_address}/orders"
      headers:
        Authorization: "Bearer {token}"
      criteria:
        status: ["200-499"]
        json:
          pointer: /detail
          equals: ok
"#,
            marker = h.marker("m").display(),
        ),
    );
    h.catalog_file(
        "pipe.yaml",
        &pipeline_yaml("gate", Some("secret-*"), &["orders-authorized"]),
    );
    let outputs = h.collect();
    let settings = Settings {
        properties: vec![
            ("sasl.username", "chaosgate".to_string()),
            ("sasl.password", password.clone()),
        ],
        ..Settings::default()
    };
    let config = h.config("w", &settings);
    set_telemetry(&config, "log_format", "\"json\"");
    let mut worker = h.spawn("w", &config);

    let event = change("secret-flag", ChangeKind::Enable, None);
    h.produce_change(&event).await;
    let id = event.event_id.clone();
    let out = h
        .wait_for(&outputs, "the command", PATIENCE, |o| {
            o.all_commanded(std::slice::from_ref(&id))
        })
        .await;
    worker.signal(libc::SIGTERM);
    worker.wait_exit(PATIENCE).await.expect("the worker exits");
    service_task.abort();

    // The probe failed on the quoted token, and the record says so, masked.
    assert_eq!(out.commands_for(&id)[0].command, CommandKind::Disable);
    let record = out.final_runs_for(&id)[0].clone();
    let last_error = record.probes[0].last_error.clone().unwrap_or_default();
    assert!(
        last_error.contains("Bearer ***") || last_error.contains("***"),
        "the probe's error should quote the masked token: {last_error}"
    );

    let mut written = String::new();
    for run in &out.runs {
        written.push_str(&serde_json::to_string(&run.value).unwrap());
        for (name, value) in &run.headers {
            written.push_str(&format!("{name}={}\n", String::from_utf8_lossy(value)));
        }
    }
    for command in &out.commands {
        written.push_str(&serde_json::to_string(&command.value).unwrap());
    }
    let log = h.logs();
    for secret in [&token, &password] {
        assert!(
            !written.contains(secret.as_str()),
            "{secret} written to Kafka:\n{written}"
        );
        assert!(
            !log.contains(secret.as_str()),
            "{secret} in the log:\n{log}"
        );
    }

    // JSON lines, each line of the run naming its flag, pipeline, execution and run.
    let execution_id = ids::pipeline_execution_id(&id, "gate");
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let of_the_run: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(|s| s["name"] == "step"))
        })
        .collect();
    assert!(
        of_the_run.iter().any(|l| l["message"] == "run finished")
            && of_the_run.iter().any(|l| l["target"] == "chaosgate::run"),
        "the run's own lines and the runner's are inside the step span:\n{log}"
    );
    for line in of_the_run {
        let spans = line["spans"].as_array().unwrap();
        let field = |name: &str| spans.iter().find_map(|s| s[name].as_str());
        assert_eq!(field("flag"), Some("test/test/secret-flag"), "{line}");
        assert_eq!(field("pipeline_id"), Some("gate"), "{line}");
        assert_eq!(
            field("pipeline_execution_id"),
            Some(execution_id.as_str()),
            "{line}"
        );
        assert_eq!(field("run_id"), Some(record.run_id.as_str()), "{line}");
    }
}

/// `/readyz` answers 503 while the worker's broker is stopped and 200 once it is back
/// (readiness from librdkafka's broker states, every `statistics.interval.ms`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_broker_away_and_back() {
    use worker::{Harness, Settings, closed_address, experiment_yaml};

    let broker = kafka::OwnBroker::start().await;
    let h = Harness::new(&broker.servers(), "readiness", 1).await;
    h.catalog_file(
        "exp.yaml",
        &experiment_yaml("unused", "1s", &h.marker("unused"), &closed_address()),
    );
    let settings = Settings {
        properties: vec![("statistics.interval.ms", "500".to_string())],
        ..Settings::default()
    };
    let config = h.config("w", &settings);
    let mut worker = h.spawn("w", &config);
    let address = worker.http_address(PATIENCE).await;
    let readyz = |address: String| async move {
        match reqwest::get(format!("http://{address}/readyz")).await {
            Ok(response) => (
                response.status().as_u16(),
                response.text().await.unwrap_or_default(),
            ),
            Err(error) => (0, error.to_string()),
        }
    };
    let wait_for = |status: u16, what: &'static str| {
        let address = address.clone();
        let h = &h;
        async move {
            let started = Instant::now();
            loop {
                let (now, body) = readyz(address.clone()).await;
                if now == status {
                    return (started.elapsed(), body);
                }
                assert!(
                    started.elapsed() < PATIENCE,
                    "/readyz never answered {status} {what}; last {now} {body}\n{}",
                    h.log_tails()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let (took, _) = wait_for(200, "at start").await;
    println!("ready after {took:?}");

    broker.script("stop").await;
    let (took, body) = wait_for(503, "with the broker stopped").await;
    println!("not ready {took:?} after the broker stopped: {body}");
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["ready"], false);
    assert!(
        report["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "no Kafka broker reachable" || r == "no flag-changes partition assigned"),
        "{body}"
    );
    // The liveness probe keeps answering: the process is fine, Kafka is not.
    let healthz = reqwest::get(format!("http://{address}/healthz"))
        .await
        .unwrap();
    assert_eq!(healthz.status().as_u16(), 200);

    broker.script("start").await;
    let (took, body) = wait_for(200, "once the broker is back").await;
    println!("ready again {took:?} after the broker restarted: {body}");
    worker.signal(libc::SIGTERM);
    worker.wait_exit(PATIENCE).await;
}

// --- Deployment files: the manifests and compose files agree with the code -------------

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn yaml_documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo(path)).unwrap();
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn document<'d>(documents: &'d [Value], kind: &str, name: &str) -> &'d Value {
    documents
        .iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// Writes a ConfigMap's YAML keys into a folder and loads it as a catalog.
fn catalog_of(config_map: &Value) -> (tempfile::TempDir, chaosgate::catalog::Catalog) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in config_map["data"].as_object().unwrap() {
        std::fs::write(dir.path().join(name), text.as_str().unwrap()).unwrap();
    }
    let catalog = chaosgate::catalog::Catalog::load(&[dir.path()])
        .unwrap_or_else(|problems| panic!("{problems:#?}"));
    (dir, catalog)
}

/// Every network fault's standalone proxy URL in a catalog.
fn fault_proxies(catalog: &chaosgate::catalog::Catalog) -> Vec<(String, String)> {
    catalog
        .experiments()
        .flat_map(|e| &e.faults)
        .filter_map(|f| match &f.kind {
            chaosgate::catalog::experiment::FaultKind::Network(n) => Some(n),
            _ => None,
        })
        .filter_map(|n| Some((n.target.clone(), n.proxy.clone()?)))
        .collect()
}

#[test]
fn the_kubernetes_manifests_fit_the_worker() {
    use chaosgate::chaos::proxy::StandaloneConfig;
    use chaosgate::config::Config;

    let config_maps = yaml_documents("deploy/kubernetes/configmap.yaml");
    let config_text =
        document(&config_maps, "ConfigMap", "chaosgate-config")["data"]["chaosgate.toml"]
            .as_str()
            .unwrap();
    let secret_variable = "CHAOSGATE_KAFKA__PROPERTIES__SASL_PASSWORD";
    let config = Config::parse(
        config_text,
        "configmap chaosgate.toml",
        [(secret_variable.to_string(), "from-the-secret".to_string())],
    )
    .unwrap();
    assert_eq!(config.kafka.properties["sasl.password"], "from-the-secret");
    let (_dir, catalog) = catalog_of(document(&config_maps, "ConfigMap", "chaosgate-catalog"));
    assert!(
        catalog
            .pipeline_for("shop", "production", "checkout-v2")
            .is_some()
    );

    let deployment = &yaml_documents("deploy/kubernetes/deployment.yaml")[0];
    let pod = &deployment["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let shutdown = config.worker.shutdown_grace.duration().as_secs();
    assert!(
        grace >= shutdown + 10,
        "terminationGracePeriodSeconds {grace} leaves no margin over shutdown_grace {shutdown}s"
    );
    let container = &pod["containers"][0];
    assert_eq!(
        container["ports"][0]["containerPort"],
        u64::from(config.http.listen.port())
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(container["resources"]["limits"]["memory"].is_string());
    let env = container["env"].as_array().unwrap();
    let secret = env.iter().find(|e| e["name"] == secret_variable).unwrap();
    assert_eq!(
        secret["valueFrom"]["secretKeyRef"]["name"],
        yaml_documents("deploy/kubernetes/secret.example.yaml")[0]["metadata"]["name"]
    );
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert!(mounts.contains(&"/etc/chaosgate/chaosgate.toml"));
    assert!(mounts.contains(&config.catalog.path.to_str().unwrap()));

    let service = &yaml_documents("deploy/kubernetes/service.yaml")[0];
    assert_eq!(
        service["metadata"]["annotations"]["prometheus.io/port"],
        config.http.listen.port().to_string()
    );
    let pdb = &yaml_documents("deploy/kubernetes/pdb.yaml")[0];
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );

    // The standalone proxy: its config parses, and the catalog's faults reach its
    // control API through its Service.
    let proxy = yaml_documents("deploy/kubernetes/proxy.yaml");
    let proxy_config = StandaloneConfig::parse(
        document(&proxy, "ConfigMap", "payments-proxy")["data"]["proxy.toml"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let control_port = u64::from(proxy_config.control_listen.port());
    let proxy_service = document(&proxy, "Service", "payments-proxy");
    let ports = proxy_service["spec"]["ports"].as_array().unwrap();
    assert!(ports.iter().any(|p| p["port"] == control_port));
    for (target, url) in fault_proxies(&catalog) {
        assert_eq!(url, format!("http://payments-proxy:{control_port}"));
        assert!(
            proxy_config.targets.iter().any(|t| t.name == target),
            "{target}"
        );
    }
    let proxy_pod = &document(&proxy, "Deployment", "payments-proxy")["spec"]["template"]["spec"];
    assert_eq!(proxy_pod["containers"][0]["args"][0], "proxy");
}

#[test]
fn the_image_and_compose_files_fit_the_worker() {
    use chaosgate::chaos::proxy::StandaloneConfig;
    use chaosgate::config::Config;

    // The image: its config and the example catalog it ships.
    let image = Config::load(&repo("deploy/container/chaosgate.toml"), Vec::new()).unwrap();
    assert_eq!(image.catalog.path, Path::new("/etc/chaosgate/catalog"));
    assert_eq!(image.http.listen.port(), 9464);
    chaosgate::catalog::Catalog::load(&[repo("deploy/examples")])
        .unwrap_or_else(|problems| panic!("{problems:#?}"));
    let dockerfile = std::fs::read_to_string(repo("deploy/Dockerfile")).unwrap();
    for line in [
        "COPY deploy/container/chaosgate.toml /etc/chaosgate/chaosgate.toml",
        "COPY deploy/examples/ /etc/chaosgate/catalog/",
        "ENTRYPOINT [\"chaosgate\"]",
        "CMD [\"run\", \"--config\", \"/etc/chaosgate/chaosgate.toml\"]",
        "EXPOSE 9464",
        "USER 10001:10001",
    ] {
        assert!(dockerfile.contains(line), "deploy/Dockerfile lacks {line}");
    }

    // Compose: the worker's overrides apply to the image config, and the demo catalog's
    // faults name the compose proxy's targets.
    let compose = &yaml_documents("docker-compose.yml")[0];
    let worker = &compose["services"]["chaosgate"];
    let overrides: Vec<(String, String)> = worker["environment"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let composed = Config::parse(
        &std::fs::read_to_string(repo("deploy/container/chaosgate.toml")).unwrap(),
        "image config",
        overrides,
    )
    .unwrap();
    assert_eq!(composed.kafka.bootstrap_servers, "kafka:29092");
    assert_eq!(composed.kafka.properties["statistics.interval.ms"], "5000");
    let catalog = chaosgate::catalog::Catalog::load(&[repo("deploy/compose/catalog")])
        .unwrap_or_else(|problems| panic!("{problems:#?}"));
    assert!(
        catalog
            .pipeline_for("demo", "compose", "any-flag")
            .is_some()
    );
    let proxy = StandaloneConfig::parse(
        &std::fs::read_to_string(repo("deploy/compose/proxy.toml")).unwrap(),
    )
    .unwrap();
    for (target, url) in fault_proxies(&catalog) {
        assert_eq!(
            url,
            format!("http://demo-proxy:{}", proxy.control_listen.port())
        );
        assert!(proxy.targets.iter().any(|t| t.name == target), "{target}");
    }
    let mounted: Vec<&str> = worker["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        mounted.contains(
            &format!(
                "./deploy/compose/catalog:{}:ro",
                composed.catalog.path.display()
            )
            .as_str()
        ),
        "{mounted:?}"
    );
    let prometheus = std::fs::read_to_string(repo("deploy/prometheus.yml")).unwrap();
    assert!(prometheus.contains(&format!("chaosgate:{}", composed.http.listen.port())));
}
