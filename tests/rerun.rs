//! Nothing is left behind when a revert fails or a worker dies: a failed revert is retried
//! with backoff until it succeeds or the fault's lease ends it (log, metric and record
//! name the fault), a worker stopped mid-revert finishes the revert before it exits, and
//! the next attempt of an event cut off hard first reverts what the earlier attempt left,
//! and says so in its record. Runs use real commands, processes and a real Toxiproxy
//! server; worker tests the real `chaosgate run` on the shared broker.

#[path = "support/engine.rs"]
mod engine;
#[path = "support/kafka.rs"]
mod kafka;
#[path = "support/worker.rs"]
mod worker;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chaosgate::chaos::{RunContext, run_experiment};
use chaosgate::contract::{ChangeKind, CommandKind, RunStatus};

use engine::{ChildGuard, Toxiproxy, context, experiment, process_state};
use worker::{Harness, Listener, Settings, change, pipeline_yaml};

/// Upper bound for anything a test waits for: generous, so only a bug reaches it.
const PATIENCE: Duration = Duration::from_secs(90);

/// A `command` fault experiment: `inject` and `revert` run with `sh -c`, a `tcp` probe
/// on `probe_address` checked at the start and the end.
fn command_experiment(id: &str, duration: &str, inject: &str, revert: &str, probe: &str) -> String {
    format!(
        r#"kind: experiment
id: {id}
timeout: 5m
faults:
  - name: marker
    weight: 5
    duration: {duration}
    command:
      inject:
        argv: [sh, -c, {inject:?}]
      revert:
        argv: [sh, -c, {revert:?}]
probes:
  - name: listener-answers
    mode: edge
    run_properties:
      timeout: 2s
    tcp:
      address: "{probe}"
"#
    )
}

fn wait_until(what: &str, timeout: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "waited {timeout:?} for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Lines of a file (0 when it does not exist).
fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

// ---- point 3: a failed revert is retried until its lease ------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revert_that_never_succeeds_is_retried_until_the_lease_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let tries = dir.path().join("tries");
    let yaml = format!(
        r#"
kind: experiment
id: stuck
faults:
  - name: stuck-fault
    weight: 5
    duration: 200ms
    command:
      inject: {{ argv: ["true"] }}
      revert: {{ argv: [sh, -c, "echo try >> '{}'; echo still here >&2; exit 3"] }}
"#,
        tries.display()
    );
    // No guard: this revert never succeeds, and a guard would take it over and retry it
    // for 10 minutes after the test.
    let ctx = RunContext {
        lease: Duration::from_secs(2),
        guard: None,
        ..context()
    };
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        run_experiment(&experiment(&yaml), &ctx),
    )
    .await
    .expect("the retries end at the lease");
    let took = started.elapsed();
    assert_eq!(result.verdict, RunStatus::Error, "{}", result.summary);
    let fault = &result.faults[0];
    assert_eq!(fault.name, "stuck-fault");
    assert!(!fault.reverted);
    let error = fault.error.as_deref().unwrap();
    assert!(
        error.contains("revert failed") && error.contains("still here"),
        "{error}"
    );
    assert!(
        result
            .summary
            .contains("fault 'stuck-fault' may still be active"),
        "{}",
        result.summary
    );
    // 250 ms, 500 ms, 1 s, then the rest of the 2 s lease: five tries (four on a slow
    // machine, where the fourth fails after the lease ended).
    let tries_made = lines(&tries);
    assert!(
        (4..=5).contains(&tries_made),
        "{tries_made} tries; log:\n{:#?}",
        result.log
    );
    assert!(took >= Duration::from_secs(2), "gave up after {took:?}");
    assert!(took < Duration::from_secs(10), "gave up after {took:?}");
    let failures: Vec<&String> = result
        .log
        .iter()
        .filter(|l| l.contains("revert stuck-fault failed (try "))
        .collect();
    assert_eq!(failures.len(), tries_made - 1, "{:#?}", result.log);
    assert!(
        result.log.iter().any(|l| l.contains(&format!(
            "revert stuck-fault FAILED: revert failed {tries_made} times"
        ))),
        "{:#?}",
        result.log
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revert_that_fails_a_while_is_retried_and_the_worker_reports_it() {
    let servers = kafka::require_broker();
    let h = Harness::new(&servers, "revert-retry", 1).await;
    let up = Listener::start().await;
    let marker = h.marker("flaky");
    let ready = h.dir.path().join("ready");
    let tries = h.dir.path().join("tries");
    let revert = format!(
        "echo try >> '{}'; [ -e '{}' ] || {{ echo not yet >&2; exit 1; }}; rm -f '{}'",
        tries.display(),
        ready.display(),
        marker.display()
    );
    h.catalog_file(
        "exp.yaml",
        &command_experiment(
            "flaky",
            "300ms",
            &format!("touch '{}'", marker.display()),
            &revert,
            &up.address,
        ),
    );
    h.catalog_file("pipe.yaml", &pipeline_yaml("gate", Some("*"), &["flaky"]));
    let collector = h.collect();
    let config = h.config("w", &Settings::default());
    let worker = h.spawn("w", &config);
    let event = change("checkout", ChangeKind::Enable, None);
    h.produce_change(&event).await;
    // The revert fails until `ready` exists, made about 2 s after its first try.
    let tries_seen = tries.clone();
    tokio::task::spawn_blocking(move || {
        wait_until("the first revert try", PATIENCE, || lines(&tries_seen) > 0);
        std::thread::sleep(Duration::from_secs(2));
        std::fs::write(&ready, "").unwrap();
    })
    .await
    .unwrap();
    let out = h
        .wait_for(&collector, "the command", PATIENCE, |o| {
            !o.commands_for(&event.event_id).is_empty()
        })
        .await;
    assert_eq!(
        out.commands_for(&event.event_id)[0].command,
        CommandKind::Enable,
        "{}",
        out.describe()
    );
    let runs = out.final_runs_for(&event.event_id);
    assert_eq!(runs.len(), 1, "{}", out.describe());
    let run = runs[0];
    assert_eq!(run.status, RunStatus::Passed, "{:?}", run.summary);
    assert!(run.faults[0].reverted);
    assert!(!marker.exists(), "the fault is gone");
    let tries_made = lines(&tries);
    assert!(tries_made >= 3, "{tries_made} tries");
    let record = serde_json::to_value(run).unwrap();
    let log: Vec<String> = serde_json::from_value(record["log"].clone()).unwrap();
    assert!(
        log.iter()
            .any(|l| l.contains("revert marker failed (try 1)")
                && l.contains("not yet")
                && l.contains("next try in 250 ms")),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.ends_with(&format!("revert marker (after {tries_made} tries)"))),
        "{log:#?}"
    );
    // The worker's own log and its metric name the failures too.
    assert!(
        worker.log_text().contains("revert failed; trying again"),
        "{}",
        h.log_tails()
    );
    let address = worker.http_address(PATIENCE).await;
    let metrics = reqwest::get(format!("http://{address}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let failures = metrics
        .lines()
        .find(|l| l.starts_with("chaosgate_fault_revert_failures_total{kind=\"command\"}"))
        .unwrap_or_else(|| panic!("no revert failure metric:\n{metrics}"));
    let counted: f64 = failures.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(counted, (tries_made - 1) as f64, "{failures}");
}

// ---- point 3: a shutdown awaits reverts in progress -----------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_mid_revert_finishes_the_revert_before_it_exits() {
    let servers = kafka::require_broker();
    let h = Harness::new(&servers, "revert-term", 1).await;
    let up = Listener::start().await;
    let marker = h.marker("slow-revert");
    let begun = h.dir.path().join("revert-begun");
    let done = h.dir.path().join("revert-done");
    let revert = format!(
        "touch '{}'; sleep 2; rm -f '{}'; touch '{}'",
        begun.display(),
        marker.display(),
        done.display()
    );
    h.catalog_file(
        "exp.yaml",
        &command_experiment(
            "slow-revert",
            "500ms",
            &format!("touch '{}'", marker.display()),
            &revert,
            &up.address,
        ),
    );
    h.catalog_file(
        "pipe.yaml",
        &pipeline_yaml("gate", Some("*"), &["slow-revert"]),
    );
    let settings = Settings {
        shutdown_grace: "15s",
        ..Settings::default()
    };
    let config = h.config("w", &settings);
    let mut worker = h.spawn("w", &config);
    let event = change("checkout", ChangeKind::Enable, None);
    h.produce_change(&event).await;
    let begun_seen = begun.clone();
    tokio::task::spawn_blocking(move || {
        wait_until("the revert to begin", PATIENCE, || begun_seen.exists())
    })
    .await
    .unwrap();
    assert!(!done.exists(), "the revert takes 2 s");
    worker.signal(libc::SIGTERM);
    let status = worker
        .wait_exit(Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("still running 30 s after SIGTERM\n{}", h.log_tails()));
    assert!(status.success(), "exit status {status}\n{}", h.log_tails());
    assert!(
        done.exists(),
        "the revert in progress was cut off by the shutdown\n{}",
        h.log_tails()
    );
    assert!(!marker.exists(), "the fault is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_while_a_revert_is_retried_retries_on_within_the_grace() {
    let servers = kafka::require_broker();
    let h = Harness::new(&servers, "revert-term-retry", 1).await;
    let up = Listener::start().await;
    let marker = h.marker("retried");
    let ready = h.dir.path().join("ready");
    let tries = h.dir.path().join("tries");
    let revert = format!(
        "echo try >> '{}'; [ -e '{}' ] || exit 1; rm -f '{}'",
        tries.display(),
        ready.display(),
        marker.display()
    );
    h.catalog_file(
        "exp.yaml",
        &command_experiment(
            "retried",
            "300ms",
            &format!("touch '{}'", marker.display()),
            &revert,
            &up.address,
        ),
    );
    h.catalog_file("pipe.yaml", &pipeline_yaml("gate", Some("*"), &["retried"]));
    let settings = Settings {
        shutdown_grace: "20s",
        ..Settings::default()
    };
    let config = h.config("w", &settings);
    let mut worker = h.spawn("w", &config);
    let event = change("checkout", ChangeKind::Enable, None);
    h.produce_change(&event).await;
    let tries_seen = tries.clone();
    tokio::task::spawn_blocking(move || {
        wait_until("the first revert try", PATIENCE, || lines(&tries_seen) > 0)
    })
    .await
    .unwrap();
    // Stopped while the revert fails; it starts to succeed 2 s later.
    worker.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_secs(2)).await;
    std::fs::write(&ready, "").unwrap();
    let status = worker
        .wait_exit(Duration::from_secs(40))
        .await
        .unwrap_or_else(|| panic!("still running 40 s after SIGTERM\n{}", h.log_tails()));
    assert!(status.success(), "exit status {status}\n{}", h.log_tails());
    assert!(
        !marker.exists(),
        "the revert being retried was given up at shutdown ({} tries)\n{}",
        lines(&tries),
        h.log_tails()
    );
    assert!(lines(&tries) >= 3, "{} tries", lines(&tries));
}

// ---- point 2: the next attempt reverts what the earlier one left ------------------------

/// Every descendant of `pid` (children, their children, ...), from /proc.
fn descendants(pid: i32) -> Vec<i32> {
    let mut parents = vec![pid];
    let mut found = Vec::new();
    while let Some(parent) = parents.pop() {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if ppid == Some(parent) && !found.contains(&child) {
                found.push(child);
                parents.push(child);
            }
        }
    }
    found
}

/// SIGKILLs the worker and every process it started (a fault's guard among them), so
/// nothing reverts anything: the whole machine lost, as far as the fault can tell.
fn kill_everything(worker: &mut worker::Worker) {
    let pid = i32::try_from(worker.id()).unwrap();
    // Stop the family first, so none of it starts anything (or reverts) meanwhile.
    let family = descendants(pid);
    for member in std::iter::once(pid).chain(family.iter().copied()) {
        // SAFETY: kill(2) on processes this test started (the worker and its children).
        unsafe { libc::kill(member, libc::SIGSTOP) };
    }
    let family: Vec<i32> = descendants(pid);
    for member in &family {
        // SAFETY: as above.
        unsafe { libc::kill(*member, libc::SIGKILL) };
    }
    worker.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_attempt_after_a_hard_kill_reverts_the_leftover_first_and_says_so() {
    let servers = kafka::require_broker();
    let h = Harness::new(&servers, "rerun", 1).await;
    let up = Listener::start().await;
    let marker = h.marker("left");
    let reverts = h.dir.path().join("reverts");
    h.catalog_file(
        "exp.yaml",
        &command_experiment(
            "left",
            "3s",
            &format!("touch '{}'", marker.display()),
            &format!(
                "rm -f '{}'; echo reverted >> '{}'",
                marker.display(),
                reverts.display()
            ),
            &up.address,
        ),
    );
    h.catalog_file("pipe.yaml", &pipeline_yaml("gate", Some("*"), &["left"]));
    let collector = h.collect();
    let config = h.config("w", &Settings::default());
    let mut worker = h.spawn("w", &config);
    let event = change("checkout", ChangeKind::Enable, None);
    h.produce_change(&event).await;
    let marker_seen = marker.clone();
    tokio::task::spawn_blocking(move || {
        wait_until("the fault to be injected", PATIENCE, || {
            marker_seen.exists()
        })
    })
    .await
    .unwrap();
    kill_everything(&mut worker);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        marker.exists(),
        "nothing reverted the fault after the kill (its duration is over)"
    );
    assert_eq!(lines(&reverts), 0);

    let _worker = h.spawn("w", &config);
    let out = h
        .wait_for(&collector, "the command after the restart", PATIENCE, |o| {
            !o.commands_for(&event.event_id).is_empty()
        })
        .await;
    assert!(!marker.exists(), "the leftover is gone");
    // One revert of what attempt 1 left, one of attempt 2's own fault.
    assert_eq!(lines(&reverts), 2, "{}\n{}", out.describe(), h.log_tails());
    let finals = out.final_runs_for(&event.event_id);
    let statuses: Vec<(u32, RunStatus)> = finals.iter().map(|r| (r.attempt, r.status)).collect();
    assert_eq!(
        statuses,
        [(1, RunStatus::Aborted), (2, RunStatus::Passed)],
        "{}",
        out.describe()
    );
    let second = finals[1];
    assert_eq!(second.previous_attempt_reverts.len(), 1, "{second:#?}");
    let cleanup = &second.previous_attempt_reverts[0];
    assert_eq!(
        (
            cleanup.fault.as_str(),
            cleanup.kind.as_str(),
            cleanup.attempt,
            cleanup.reverted,
            cleanup.outcome.as_str()
        ),
        ("marker", "command", 1, true, "revert command exit 0")
    );
    let record = serde_json::to_value(second).unwrap();
    let log: Vec<String> = serde_json::from_value(record["log"].clone()).unwrap();
    let cleaned = log
        .iter()
        .position(|l| {
            l.ends_with(
                "attempt 2: reverted what attempt 1 may have left: fault marker (revert command exit 0)",
            )
        })
        .unwrap_or_else(|| panic!("{log:#?}"));
    let injected = log
        .iter()
        .position(|l| l.contains("inject marker"))
        .unwrap_or_else(|| panic!("{log:#?}"));
    assert!(cleaned < injected, "cleanup before the inject: {log:#?}");
    assert!(
        finals[0].previous_attempt_reverts.is_empty(),
        "a first attempt has nothing to clean"
    );
}

// ---- point 2: leftovers of each kind, at the engine -----------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_each_kind_are_reverted_before_the_run_injects() {
    let toxiproxy = Toxiproxy::start().await;
    let echo = engine::EchoServer::start().await;
    toxiproxy.create_proxy("db", &echo.addr.to_string()).await;
    // What attempt 1 left: a toxic under the fault's known name, ...
    let created = reqwest::Client::new()
        .post(format!("{}/proxies/db/toxics", toxiproxy.api))
        .json(&serde_json::json!({
            "name": "chaosgate-slow-db-downstream", "type": "latency",
            "stream": "downstream", "attributes": {"latency": 100}
        }))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success(), "{}", created.status());
    // ... a process still paused, ...
    let dir = tempfile::tempdir().unwrap();
    let sleeper = ChildGuard::spawn(Command::new("sleep").arg("60"));
    let pid = sleeper.pid();
    let pid_file = dir.path().join("sleeper.pid");
    std::fs::write(&pid_file, pid.to_string()).unwrap();
    // SAFETY: kill(2) on this test's own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    wait_until("the sleeper to stop", Duration::from_secs(10), || {
        process_state(pid) == 'T'
    });
    // ... and a command fault's marker.
    let marker = dir.path().join("marker");
    std::fs::write(&marker, "").unwrap();
    let states = dir.path().join("states");
    // The command fault's inject records the state of the others when it runs: by then
    // the leftovers must be gone.
    let yaml = format!(
        r#"
kind: experiment
id: rerun
execution: serial
faults:
  - name: marker
    weight: 1
    duration: 100ms
    command:
      inject: {{ argv: [sh, -c, "[ -e '{marker}' ] && echo marker-left >> '{states}'; grep State /proc/{pid}/status >> '{states}'; touch '{marker}'"] }}
      revert: {{ argv: [rm, -f, "{marker}"] }}
  - name: slow-db
    weight: 1
    duration: 100ms
    toxiproxy:
      api: "{api}"
      proxy: db
      toxic: {{ type: latency, latency: 50ms }}
      direction: downstream
  - name: pause-sleeper
    weight: 1
    duration: 100ms
    process: {{ action: pause, pid_file: "{pid_file}" }}
  - name: kill-nothing
    weight: 1
    duration: 100ms
    process: {{ action: kill, name: nochaosgate9z }}
"#,
        marker = marker.display(),
        states = states.display(),
        api = toxiproxy.api,
        pid_file = pid_file.display(),
    );
    let ctx = RunContext {
        previous_attempt: Some(1),
        ..context()
    };
    let exp = experiment(&yaml);
    // The run's first fault checks what is left; the kill fault finds nothing to kill:
    // the run ends `error` there, after the leftovers were handled.
    let result = run_experiment(&exp, &ctx).await;
    let cleanup: Vec<(&str, bool, &str)> = result
        .previous_attempt_reverts
        .iter()
        .map(|r| (r.fault.as_str(), r.reverted, r.outcome.as_str()))
        .collect();
    assert_eq!(
        cleanup,
        [
            ("marker", true, "revert command exit 0"),
            (
                "slow-db",
                true,
                "toxics chaosgate-slow-db-downstream on db deleted or absent"
            ),
            (
                "pause-sleeper",
                true,
                format!("resumed stopped pid {pid}").as_str()
            ),
            (
                "kill-nothing",
                true,
                "nothing to revert: a kill cannot be taken back"
            ),
        ],
        "{:#?}",
        result.log
    );
    let states = std::fs::read_to_string(&states).unwrap();
    assert!(!states.contains("marker-left"), "{states}");
    assert!(!states.contains("stopped"), "{states}");
    assert_ne!(process_state(pid), 'T');
    assert_eq!(toxiproxy.toxics("db").await, Vec::<String>::new());
    for fault in ["marker", "slow-db", "pause-sleeper"] {
        assert!(
            result.log.iter().any(|l| l.contains(&format!(
                "attempt 2: reverted what attempt 1 may have left: fault {fault} ("
            ))),
            "{:#?}",
            result.log
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leftover_that_cannot_be_reverted_stops_the_run_before_any_inject() {
    let dir = tempfile::tempdir().unwrap();
    let injected = dir.path().join("injected");
    let yaml = format!(
        r#"
kind: experiment
id: stuck-leftover
faults:
  - name: stuck
    weight: 5
    duration: 100ms
    command:
      inject: {{ argv: [touch, "{}"] }}
      revert: {{ argv: [sh, -c, "echo cannot >&2; exit 1"] }}
"#,
        injected.display()
    );
    let ctx = RunContext {
        previous_attempt: Some(3),
        lease: Duration::from_secs(1),
        ..context()
    };
    let result = run_experiment(&experiment(&yaml), &ctx).await;
    assert_eq!(result.verdict, RunStatus::Error, "{}", result.summary);
    assert!(
        result.summary.contains(
            "fault 'stuck' may still be active from attempt 3: 'sh' exited with status 1: cannot"
        ) && result.summary.contains("nothing was injected"),
        "{}",
        result.summary
    );
    assert!(
        !injected.exists(),
        "nothing injected on top of an unknown state"
    );
    let cleanup = &result.previous_attempt_reverts[0];
    assert!(!cleanup.reverted);
    assert!(
        cleanup.error.as_deref().unwrap().contains("cannot"),
        "{cleanup:?}"
    );
    assert!(result.faults[0].started_at.is_none());
}
