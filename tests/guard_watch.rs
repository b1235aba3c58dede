//! The guard watch (`gate::guard::watch`) in-process against real targets on 127.0.0.1:
//! an HTTP server the test flips from healthy to failing, a TCP listener, real commands
//! and a real Prometheus scraping a metric the test sets; and guard validation through
//! the real `chaosgate validate` binary.
//!
//! Guards are read from YAML as an operator writes them (no `mode`: guard probes are
//! always `continuous`).

#[path = "support/health.rs"]
mod health;
#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/validate.rs"]
mod validate;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use chaosgate::catalog::experiment::ProbeMode;
use chaosgate::catalog::guard::Guard;
use chaosgate::chaos::RunContext;
use chaosgate::contract::run_record::Verdict;
use chaosgate::gate::guard::{GuardWatch, watch};
use chrono::{DateTime, Utc};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use health::start_health_target;

/// Upper bound for anything a test waits for: generous, so only a hang reaches it.
const PATIENCE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Targets

/// A metrics endpoint exposing `checkout_error_rate` with the value in `rate` (text).
async fn start_error_rate_target(rate: Arc<Mutex<String>>) -> SocketAddr {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(rate): State<Arc<Mutex<String>>>| async move {
                let value = rate.lock().unwrap().clone();
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    format!("# TYPE checkout_error_rate gauge\ncheckout_error_rate {value}\n"),
                )
            }),
        )
        .with_state(rate);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

// ---------------------------------------------------------------------------------------
// Watching

/// A guard from YAML, as a pipeline's `guard:` block.
fn guard(yaml: &str) -> Guard {
    serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("bad test guard: {e}\n{yaml}"))
}

/// A watch running in a task of its own, as the worker runs one.
struct Running {
    task: JoinHandle<GuardWatch>,
    stop: CancellationToken,
    deadline: DateTime<Utc>,
}

/// Starts watching `guard`, which began at `started_at` and ends at `deadline`.
fn start(guard: Guard, started_at: DateTime<Utc>, deadline: DateTime<Utc>) -> Running {
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { watch(&guard, started_at, deadline, &RunContext::default(), &stop).await }
    });
    Running {
        task,
        stop,
        deadline,
    }
}

impl Running {
    /// The watch's end (a hang fails the test).
    async fn end(self) -> GuardWatch {
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the watch did not end")
            .expect("the watch task failed")
    }
}

/// Waits until `condition` holds (a hang fails the test, saying `what`).
async fn until(what: &str, condition: impl Fn() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < PATIENCE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn minutes(m: i64) -> chrono::Duration {
    chrono::Duration::minutes(m)
}

// ---------------------------------------------------------------------------------------
// Firing

#[tokio::test]
async fn a_guard_fires_when_its_target_fails_attempts_times_in_a_row_not_before() {
    let (addr, health) = start_health_target().await;
    let guard = guard(&format!(
        "duration: 10m\nprobes:\n  - name: checkout-errors\n    run_properties: \
         {{polling_interval: 200ms, attempts: 3, interval: 200ms, timeout: 2s}}\n    \
         http: {{url: 'http://{addr}/health'}}\n"
    ));
    assert_eq!(guard.probes[0].mode, ProbeMode::Continuous);
    // A guard resumed by a new owner 4 min 10 s after its enable.
    let started_at = Utc::now() - chrono::Duration::seconds(4 * 60 + 10);
    let running = start(guard, started_at, started_at + minutes(10));

    // Two failed attempts, then a passing one: the check passes, the guard holds.
    until("a first check", || !health.answers().is_empty()).await;
    health.fail_next.store(2, Ordering::SeqCst);
    until("two failed attempts and a retry that passes", || {
        health.answers().windows(3).any(|w| w == [503, 503, 200])
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !running.task.is_finished(),
        "two failed attempts of three fired the guard: {:?}",
        health.answers()
    );

    health.failing.store(true, Ordering::SeqCst);
    let ended = running.end().await;
    let error = format!("GET http://{addr}/health: status 503 not in [200-299]");
    assert_eq!(
        ended.fired.as_deref(),
        Some(format!("guard checkout-errors failed 4 min after enable: {error}").as_str())
    );
    assert!(!ended.stopped);
    let answers = health.answers();
    assert!(
        answers.ends_with(&[200, 503, 503, 503]),
        "the guard fired without three failed attempts in a row: {answers:?}"
    );
    let probe = &ended.probes[0];
    assert_eq!(
        (
            probe.name.as_str(),
            probe.probe_type.as_str(),
            probe.mode.as_str()
        ),
        ("checkout-errors", "http", "continuous")
    );
    assert_eq!(probe.verdict, Verdict::Failed);
    assert_eq!(probe.last_error.as_deref(), Some(error.as_str()));
    // Each attempt is one request: every one the target answered was counted.
    assert_eq!(probe.attempts as usize, answers.len());
    let (first, last) = (probe.first_check_at.unwrap(), probe.last_check_at.unwrap());
    assert!(started_at < first && first < last && last <= ended.ended_at);
}

#[tokio::test]
async fn a_guard_fired_within_a_minute_gives_seconds_and_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("broken");
    // The command fails once the marker exists, telling the token on stderr.
    let guard = guard(&format!(
        "duration: 10m\nprobes:\n  - name: payments\n    run_properties: {{polling_interval: 200ms}}\n    \
         command:\n      command:\n        argv: [\"test ! -e '{}' || {{ echo \\\"token $API_TOKEN refused\\\" >&2; exit 3; }}\"]\n        \
         shell: true\n        env: {{API_TOKEN: tok-guard-5ecret}}\n",
        marker.display()
    ));
    let started_at = Utc::now();
    let running = start(guard, started_at, started_at + minutes(10));
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert!(
        !running.task.is_finished(),
        "a passing command fired the guard"
    );
    std::fs::write(&marker, "").unwrap();
    let ended = running.end().await;

    let reason = ended.fired.expect("the guard did not fire");
    let seconds: u64 = reason
        .strip_prefix("guard payments failed ")
        .and_then(|rest| rest.split_once(" s after enable: "))
        .map(|(seconds, _)| seconds.parse().unwrap())
        .unwrap_or_else(|| panic!("unexpected reason: {reason}"));
    assert!((1..60).contains(&seconds), "{reason}");
    assert!(
        reason.ends_with(": command 'sh -c': exited with 3, expected 0; stderr: token *** refused"),
        "{reason}"
    );
    let last_error = ended.probes[0].last_error.as_deref().unwrap();
    assert!(!last_error.contains("tok-guard-5ecret"), "{last_error}");
    assert!(!reason.contains("tok-guard-5ecret"), "{reason}");
}

#[tokio::test]
async fn a_guard_fires_on_a_prometheus_threshold() {
    let rate = Arc::new(Mutex::new("0.01".to_string()));
    let target = start_error_rate_target(rate.clone()).await;
    let prometheus = prometheus::start_prometheus(target).await;
    let endpoint = &prometheus.url;
    let guard = guard(&format!(
        "duration: 30m\nprobes:\n  - name: checkout-errors\n    run_properties: \
         {{polling_interval: 500ms, attempts: 2, interval: 500ms}}\n    prometheus:\n      \
         endpoint: {endpoint}\n      query: checkout_error_rate\n      \
         comparison: {{type: float, criteria: le, value: '0.02'}}\n"
    ));
    // Wait for the first scrape, with the guard's own probe made patient.
    let mut first = guard.probes[0].clone();
    first.run_properties.attempts = 120;
    let check = chaosgate::chaos::probe::check(&first).await;
    assert!(
        check.passed,
        "checkout_error_rate never came through: {check:?}\nPrometheus log:\n{}",
        prometheus.log_tail()
    );

    let started_at = Utc::now() - chrono::Duration::seconds(4 * 60 + 30);
    let running = start(guard, started_at, started_at + minutes(30));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !running.task.is_finished(),
        "a rate of 0.01 fired the guard"
    );
    *rate.lock().unwrap() = "0.07".to_string();
    let ended = running.end().await;
    assert_eq!(
        ended.fired.as_deref(),
        Some(
            format!(
                "guard checkout-errors failed 4 min after enable: query 'checkout_error_rate' \
                 at {endpoint}: value 0.07 is not <= 0.02"
            )
            .as_str()
        ),
        "Prometheus log:\n{}",
        prometheus.log_tail()
    );
    assert_eq!(ended.probes[0].verdict, Verdict::Failed);
}

// ---------------------------------------------------------------------------------------
// Expiring and stopping

#[tokio::test]
async fn a_guard_whose_target_holds_expires_quietly_at_its_deadline() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connects = Arc::new(AtomicU32::new(0));
    tokio::spawn({
        let connects = connects.clone();
        async move {
            while listener.accept().await.is_ok() {
                connects.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let (http_addr, health) = start_health_target().await;
    let guard = guard(&format!(
        "duration: 2s\nprobes:\n  - name: port\n    run_properties: {{polling_interval: 300ms}}\n    \
         tcp: {{address: '{addr}'}}\n  - name: health\n    \
         run_properties: {{polling_interval: 400ms, initial_delay: 500ms}}\n    \
         http: {{url: 'http://{http_addr}/health'}}\n"
    ));
    let started_at = Utc::now();
    let running = start(guard, started_at, started_at + chrono::Duration::seconds(2));
    let deadline = running.deadline;
    let ended = running.end().await;

    assert_eq!(ended.fired, None);
    assert!(!ended.stopped);
    assert!(
        ended.ended_at >= deadline,
        "ended {} before its deadline {deadline}",
        ended.ended_at
    );
    let late = (ended.ended_at - deadline).to_std().unwrap();
    assert!(
        late < Duration::from_secs(3),
        "ended {late:?} after its deadline"
    );
    for probe in &ended.probes {
        assert_eq!(probe.verdict, Verdict::Passed, "{probe:?}");
        assert!(probe.attempts >= 3, "{probe:?}");
        assert_eq!(probe.last_error, None);
        assert!(probe.last_check_at.unwrap() < deadline, "{probe:?}");
    }
    // The HTTP probe waited its initial delay: its first check came 500 ms after the start.
    let first = ended.probes[1].first_check_at.unwrap();
    assert!(
        first - started_at >= chrono::Duration::milliseconds(490),
        "{first}"
    );
    assert_eq!(ended.probes[0].attempts, connects.load(Ordering::SeqCst));
    assert_eq!(ended.probes[1].attempts as usize, health.answers().len());
}

#[tokio::test]
async fn a_guard_past_its_deadline_ends_at_once_without_checking() {
    let guard =
        guard("duration: 1m\nprobes:\n  - name: never\n    tcp: {address: '127.0.0.1:9'}\n");
    let started_at = Utc::now() - minutes(2);
    let started = Instant::now();
    let ended = start(guard, started_at, started_at + minutes(1))
        .end()
        .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!((ended.fired, ended.stopped), (None, false));
    assert_eq!(ended.probes[0].verdict, Verdict::Skipped);
    assert_eq!(ended.probes[0].attempts, 0);
}

/// Whether a process runs with exactly this command line (arguments joined by spaces).
fn process_running(cmdline: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline")).is_ok_and(|raw| {
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.join(" ") == cmdline
        })
    })
}

#[tokio::test]
async fn a_stopped_guard_returns_promptly_mid_check_and_leaves_no_command_behind() {
    // A duration no other test uses, so the process is this test's.
    let seconds = format!(
        "{}.{}",
        3000 + std::process::id() % 1000,
        Utc::now().timestamp_subsec_millis()
    );
    let guard = guard(&format!(
        "duration: 10m\nprobes:\n  - name: slow\n    run_properties: {{timeout: 10m}}\n    \
         command: {{command: {{argv: [sleep, '{seconds}']}}}}\n  - name: quick\n    \
         run_properties: {{polling_interval: 100ms}}\n    command: {{command: {{argv: ['true']}}}}\n"
    ));
    let started_at = Utc::now();
    let running = start(guard, started_at, started_at + minutes(10));
    let sleeping = format!("sleep {seconds}");
    until("the slow check to start", || process_running(&sleeping)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let stop = running.stop.clone();
    let stopped_at = Instant::now();
    stop.cancel();
    let ended = running.end().await;
    let took = stopped_at.elapsed();
    assert!(took < Duration::from_secs(2), "stop took {took:?}");
    assert!(ended.stopped);
    assert_eq!(ended.fired, None);
    // The check in progress is dropped, not counted; the quick probe held.
    assert_eq!(ended.probes[0].verdict, Verdict::Skipped);
    assert_eq!(ended.probes[1].verdict, Verdict::Passed);
    assert!(ended.probes[1].attempts >= 2, "{:?}", ended.probes[1]);
    until("the dropped check's command to be killed", || {
        !process_running(&sleeping)
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Validation with the real binary

const EXPERIMENT: &str = "\
kind: experiment
id: payments-latency
probes:
  - name: p
    mode: sot
    tcp: {address: '127.0.0.1:1'}
";

/// A pipeline with `guard` (YAML lines indented by two) before its stages.
fn pipeline(guard: &str) -> String {
    format!(
        "kind: pipeline\nid: checkout\nroutes:\n  - project: shop\n    environment: production\n    \
         flag: checkout-*\n{guard}stages:\n  - id: smoke\n    type: feature_flag\n    steps:\n      \
         - id: latency\n        experiment: payments-latency\n        expected_resilience_score: 80\n"
    )
}

/// `chaosgate validate .` on a catalog of `pipeline` and [`EXPERIMENT`].
fn validate(pipeline: &str) -> (i32, Vec<String>) {
    validate::validate_files(&[
        ("pipelines/checkout.yaml", pipeline),
        ("experiments/payments-latency.yaml", EXPERIMENT),
    ])
}

#[test]
fn a_guard_as_an_operator_writes_it_validates() {
    let (code, lines) = validate(&pipeline(
        "guard:\n  duration: 30m\n  probes:\n    - name: checkout-errors\n      \
         prometheus:\n        endpoint: http://prometheus:9090\n        query: up\n        \
         comparison: {type: int, criteria: eq, value: '1'}\n    - name: health\n      \
         mode: continuous\n      run_properties: {polling_interval: 10s, attempts: 3}\n      \
         http: {url: 'http://checkout/health'}\n",
    ));
    assert_eq!(code, 0, "{lines:#?}");
}

#[test]
fn guard_probe_problems_are_named_at_their_fields() {
    let (code, lines) = validate(&pipeline(
        "guard:\n  duration: 10m\n  probes:\n    - name: errors\n      mode: sot\n      \
         http: {url: 'http://127.0.0.1:1/'}\n    - name: none\n    - name: two\n      \
         tcp: {address: '127.0.0.1:1'}\n      http: {url: nope}\n",
    ));
    assert_eq!(code, 1);
    assert_eq!(
        lines,
        [
            "pipelines/checkout.yaml:11: guard.probes[0].mode: unknown mode 'sot' (allowed: continuous)",
            "pipelines/checkout.yaml:13: guard.probes[1]: probe 'none' has no type: set one of http, tcp, command, prometheus",
            "pipelines/checkout.yaml:14: guard.probes[2]: probe 'two' sets several types (http, tcp): set exactly one",
            "pipelines/checkout.yaml:16: guard.probes[2].http.url: 'nope' is not an http:// or https:// URL",
            "4 problems in 1 file",
        ]
    );

    let (code, lines) = validate(&pipeline(
        "guard:\n  duration: 10m\n  probes:\n    - name: errors\n      http: {url: 'http://127.0.0.1:1/'}\n    \
         - name: errors\n      run_properties: {attempts: 0, initial_delay: 11m, polling_interval: 0s}\n      \
         command: {command: {argv: ['true'], timeout: 0s, env: {1BAD: x}}}\n",
    ));
    assert_eq!(code, 1);
    assert_eq!(
        lines,
        [
            "pipelines/checkout.yaml:12: guard.probes[1].name: duplicate guard probe name 'errors' (also guard.probes[0])",
            "pipelines/checkout.yaml:13: guard.probes[1].run_properties.attempts: attempts must be at least 1",
            "pipelines/checkout.yaml:13: guard.probes[1].run_properties.polling_interval: a polling probe's polling_interval must be above 0s",
            "pipelines/checkout.yaml:13: guard.probes[1].run_properties.initial_delay: guard probe 'errors' waits 11m before its first check, but the guard lasts 10m: it would never check; shorten initial_delay or lengthen guard.duration",
            "pipelines/checkout.yaml:14: guard.probes[1].command.command.timeout: a command's timeout must be above 0s",
            "pipelines/checkout.yaml:14: guard.probes[1].command.command.env.1BAD: '1BAD' is not a variable name: letters, digits and '_', not starting with a digit",
            "6 problems in 1 file",
        ]
    );

    let (code, lines) = validate(&pipeline("guard:\n  duration: 0s\n  probes: []\n"));
    assert_eq!(code, 1);
    assert_eq!(
        lines,
        [
            "pipelines/checkout.yaml:8: guard.duration: a guard's duration must be above 0s",
            "pipelines/checkout.yaml:9: guard.probes: a guard needs at least one probe to watch",
            "2 problems in 1 file",
        ]
    );
}
