//! The chaos engine against real components on loopback: probes checking a real HTTP
//! server, command and process faults acting on real files and processes, a real
//! Toxiproxy server, and the `chaosgate experiment run` binary under signals.

#[path = "support/engine.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chaosgate::catalog::pipeline::Pipeline;
use chaosgate::chaos::proxy::{ProxyProtocol, ProxyRegistry, ProxyTarget};
use chaosgate::chaos::{ExperimentResult, ProgressEvent, RunContext, TargetLocks, run_experiment};
use chaosgate::contract::FlagChange;
use chaosgate::contract::flag_change::flag_change_example;
use chaosgate::contract::run_record::RunRecord;
use chaosgate::contract::run_record::{RunStatus, Verdict};
use chaosgate::gate::executor::{ExecutionContext, execute};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use support::{
    ChildGuard, CountingServer, EchoServer, Toxiproxy, context, echo_round_trip, experiment,
    free_port, process_state,
};

/// A command fault whose inject creates `file` and whose revert removes it.
fn file_fault(name: &str, weight: u8, duration: &str, file: &Path) -> String {
    let f = file.display();
    format!(
        r#"
  - name: {name}
    weight: {weight}
    duration: {duration}
    command:
      inject: {{ argv: ["touch", "{f}"] }}
      revert: {{ argv: ["rm", "-f", "{f}"] }}"#
    )
}

fn probe<'a>(
    result: &'a ExperimentResult,
    name: &str,
) -> &'a chaosgate::contract::run_record::ProbeResult {
    result
        .probes
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no probe {name}"))
}

fn fault<'a>(
    result: &'a ExperimentResult,
    name: &str,
) -> &'a chaosgate::contract::run_record::FaultResult {
    result
        .faults
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no fault {name}"))
}

/// Waits for the first progress event that `want` accepts.
async fn wait_for(
    receiver: &mut mpsc::UnboundedReceiver<chaosgate::chaos::Progress>,
    want: impl Fn(&ProgressEvent) -> bool,
) {
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(p) = receiver.recv().await {
            if want(&p.event) {
                return;
            }
        }
        panic!("progress ended before the awaited event");
    });
    found.await.expect("awaited progress event did not come");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worked_example_scores_71_43() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
kind: experiment
id: worked-example
faults:{}
    probes: [fails]{}
    probes: [ok-1]{}
    probes: [ok-1, ok-2, ok-3, fails]
probes:
  - {{ name: fails, mode: sot, command: {{ command: {{ argv: ["false"] }} }} }}
  - {{ name: ok-1, mode: sot, command: {{ command: {{ argv: ["true"] }} }} }}
  - {{ name: ok-2, mode: eot, command: {{ command: {{ argv: ["true"] }} }} }}
  - {{ name: ok-3, mode: edge, command: {{ command: {{ argv: ["true"] }} }} }}
"#,
        file_fault("a", 2, "100ms", &dir.path().join("a")),
        file_fault("b", 4, "100ms", &dir.path().join("b")),
        file_fault("c", 8, "100ms", &dir.path().join("c")),
    );
    let result = run_experiment(&experiment(&yaml), &context()).await;
    let pct: Vec<f64> = result
        .faults
        .iter()
        .map(|f| f.probe_success_percentage)
        .collect();
    assert_eq!(pct, [0.0, 100.0, 75.0]);
    assert_eq!(result.resilience_score, Some(71.43));
    assert_eq!(result.verdict, RunStatus::Failed);
    assert_eq!((result.probes_passed, result.probes_failed), (3, 1));
    let verdicts: Vec<Verdict> = result.faults.iter().map(|f| f.verdict).collect();
    assert_eq!(
        verdicts,
        [Verdict::Failed, Verdict::Passed, Verdict::Failed]
    );
    assert!(result.faults.iter().all(|f| f.reverted));
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "every fault reverted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_modes_run_when_their_mode_says() {
    let server = CountingServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let http = |name: &str, mode: &str, props: &str| {
        format!(
            "  - {{ name: {name}, mode: {mode}, run_properties: {{ {props} }}, http: {{ url: \"{}\" }} }}\n",
            server.url(&format!("/{name}"))
        )
    };
    let yaml = format!(
        "kind: experiment\nid: modes\nfaults:{}\nprobes:\n{}{}{}{}{}",
        file_fault("marker", 5, "1s", &dir.path().join("m")),
        http("sot", "sot", "initial_delay: 400ms"),
        http("eot", "eot", "initial_delay: 400ms"),
        http("edge", "edge", ""),
        http("continuous", "continuous", "polling_interval: 300ms"),
        http("on-chaos", "on_chaos", "polling_interval: 300ms"),
    );
    let result = run_experiment(&experiment(&yaml), &context()).await;
    assert_eq!(result.verdict, RunStatus::Passed, "{}", result.summary);
    assert_eq!(result.resilience_score, Some(100.0));
    let f = fault(&result, "marker");
    let (start, end) = (f.started_at.unwrap(), f.ended_at.unwrap());

    let sot = server.hits("/sot");
    assert_eq!(sot.len(), 1);
    assert!(sot[0] < start);
    let eot = server.hits("/eot");
    assert_eq!(eot.len(), 1);
    assert!(eot[0] > end);
    let edge = server.hits("/edge");
    assert_eq!(edge.len(), 2);
    assert!(edge[0] < start && edge[1] > end);

    let on_chaos = server.hits("/on-chaos");
    assert!(
        (3..=5).contains(&on_chaos.len()),
        "on_chaos checked {} times",
        on_chaos.len()
    );
    assert!(
        on_chaos.iter().all(|t| *t >= start && *t <= end),
        "on_chaos only while active"
    );

    let continuous = server.hits("/continuous");
    assert!(
        continuous.len() >= 5,
        "continuous checked {} times",
        continuous.len()
    );
    assert!(
        continuous.iter().any(|t| *t < start),
        "continuous before the fault"
    );
    assert!(
        continuous.iter().any(|t| *t > start && *t < end),
        "continuous during it"
    );
    assert!(continuous.iter().any(|t| *t > end), "continuous after it");
    assert_eq!(
        probe(&result, "continuous").attempts as usize,
        continuous.len()
    );
    assert_eq!(probe(&result, "edge").attempts, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_probe_counts_only_when_it_passes_before_and_after() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("left-behind");
    // The revert leaves the file, so the edge probe passes before and fails after.
    let yaml = format!(
        r#"
kind: experiment
id: edge
faults:
  - name: sticky
    weight: 3
    duration: 100ms
    command:
      inject: {{ argv: ["touch", "{f}"] }}
      revert: {{ argv: ["true"] }}
probes:
  - {{ name: absent, mode: edge, command: {{ command: {{ argv: ["test", "!", "-e", "{f}"] }} }} }}
"#,
        f = file.display()
    );
    let result = run_experiment(&experiment(&yaml), &context()).await;
    assert_eq!(probe(&result, "absent").verdict, Verdict::Failed);
    assert_eq!(probe(&result, "absent").attempts, 2);
    assert_eq!(fault(&result, "sticky").probe_success_percentage, 0.0);
    assert_eq!(result.resilience_score, Some(0.0));
    assert_eq!(result.verdict, RunStatus::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_only_experiment_scores_its_probes() {
    let server = CountingServer::start().await;
    server.set_status("/down", 503);
    let yaml = format!(
        r#"
kind: experiment
id: probes-only
probes:
  - {{ name: up, mode: sot, http: {{ url: "{}" }} }}
  - {{ name: down, mode: continuous, http: {{ url: "{}" }} }}
  - {{ name: after, mode: eot, tcp: {{ address: "{}" }} }}
"#,
        server.url("/up"),
        server.url("/down"),
        server.addr
    );
    let result = run_experiment(&experiment(&yaml), &context()).await;
    assert_eq!(result.resilience_score, Some(66.67));
    assert_eq!(result.verdict, RunStatus::Failed);
    assert_eq!(
        server.hits("/down").len(),
        1,
        "without faults, a continuous probe checks once"
    );
    assert!(
        probe(&result, "down")
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("503")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_after_a_pass_and_a_process_pause_is_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let sleeper = ChildGuard::spawn(Command::new("sleep").arg("30"));
    let pid_file = dir.path().join("sleeper.pid");
    std::fs::write(&pid_file, sleeper.pid().to_string()).unwrap();
    let marker = dir.path().join("marker");
    let yaml = format!(
        r#"
kind: experiment
id: pass
execution: parallel
faults:{}
  - name: pause-sleeper
    weight: 5
    duration: 1s
    process: {{ action: pause, pid_file: "{pid_file}" }}
probes:
  - name: sleeper-stopped
    mode: on_chaos
    run_properties: {{ polling_interval: 300ms }}
    command:
      command: {{ argv: ["grep -q '^State:[[:space:]]*T' /proc/{pid}/status"], shell: true }}
  - name: marker-present
    mode: on_chaos
    command: {{ command: {{ argv: ["test", "-e", "{m}"] }} }}
"#,
        file_fault("marker", 5, "1s", &marker),
        pid_file = pid_file.display(),
        pid = sleeper.pid(),
        m = marker.display(),
    );
    let result = run_experiment(&experiment(&yaml), &context()).await;
    assert_eq!(result.verdict, RunStatus::Passed, "{}", result.summary);
    assert!(
        result
            .faults
            .iter()
            .all(|f| f.reverted && f.verdict == Verdict::Passed)
    );
    assert!(!marker.exists(), "command fault reverted");
    let state = process_state(sleeper.pid());
    assert!(
        matches!(state, 'S' | 'R'),
        "paused process resumed, state {state}"
    );
    let line = format!(
        "inject pause-sleeper (process pause pid from {})",
        pid_file.display()
    );
    assert!(
        result.log.iter().any(|l| l.ends_with(&line)),
        "{:?}",
        result.log
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_after_a_failed_probe() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let yaml = format!(
        r#"
kind: experiment
id: fail
faults:{}
probes:
  - {{ name: never, mode: on_chaos, run_properties: {{ polling_interval: 200ms }}, command: {{ command: {{ argv: ["false"] }} }} }}
"#,
        file_fault("marker", 5, "500ms", &marker)
    );
    let result = run_experiment(&experiment(&yaml), &context()).await;
    assert_eq!(result.verdict, RunStatus::Failed);
    assert_eq!(result.resilience_score, Some(0.0));
    assert!(probe(&result, "never").attempts >= 2);
    assert!(fault(&result, "marker").reverted);
    assert!(!marker.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_on_failure_ends_the_run_at_once_and_reverts() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let yaml = format!(
        r#"
kind: experiment
id: stop
faults:{}{}
probes:
  - name: gate
    mode: on_chaos
    run_properties: {{ polling_interval: 200ms, initial_delay: 300ms, stop_on_failure: true }}
    command: {{ command: {{ argv: ["false"] }} }}
"#,
        file_fault("marker", 5, "30s", &marker),
        file_fault("never-reached", 5, "30s", &dir.path().join("other")),
    );
    let started = Instant::now();
    let result = run_experiment(&experiment(&yaml), &context()).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(result.verdict, RunStatus::Failed);
    assert!(
        result.summary.contains("stop_on_failure"),
        "{}",
        result.summary
    );
    assert!(fault(&result, "marker").reverted);
    assert_eq!(fault(&result, "never-reached").verdict, Verdict::Skipped);
    assert_eq!(result.resilience_score, Some(0.0));
    assert!(!marker.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_inject_is_an_error_and_everything_is_reverted() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let revert_ran = dir.path().join("revert-ran");
    let yaml = format!(
        r#"
kind: experiment
id: error
execution: parallel
faults:{}
  - name: broken
    weight: 5
    duration: 30s
    command:
      inject: {{ argv: ["sh", "-c", "echo no permission >&2; exit 4"] }}
      revert: {{ argv: ["touch", "{r}"] }}
probes:
  - {{ name: ok, mode: continuous, command: {{ command: {{ argv: ["true"] }} }} }}
"#,
        file_fault("marker", 5, "30s", &marker),
        r = revert_ran.display(),
    );
    let started = Instant::now();
    let result = run_experiment(&experiment(&yaml), &context()).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(result.verdict, RunStatus::Error);
    assert_eq!(result.resilience_score, None);
    let broken = fault(&result, "broken");
    assert_eq!(broken.verdict, Verdict::Error);
    assert!(
        broken
            .error
            .as_deref()
            .unwrap()
            .contains("exited with status 4: no permission")
    );
    assert!(
        result.summary.starts_with("error: fault 'broken'"),
        "{}",
        result.summary
    );
    assert!(fault(&result, "marker").reverted);
    assert!(!marker.exists(), "the fault that was injected is reverted");
    assert!(revert_ran.exists(), "the failed fault's revert still ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_experiment_timeout_aborts_and_reverts() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    // The fault fits the timeout (validation refuses one that does not); a continuous
    // probe whose check hangs keeps the phase from ending until the timeout fires.
    let yaml = format!(
        "kind: experiment\nid: timeout\ntimeout: 1s\nfaults:{}\nprobes:\n  - {{ name: hangs, mode: continuous, run_properties: {{ timeout: 60s }}, command: {{ command: {{ argv: [sleep, \"30\"] }} }} }}\n",
        file_fault("marker", 5, "500ms", &marker)
    );
    let started = Instant::now();
    let result = run_experiment(&experiment(&yaml), &context()).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(2500),
        "took {took:?}"
    );
    assert_eq!(result.verdict, RunStatus::Aborted);
    assert_eq!(result.summary, "aborted: timed out after 1s");
    assert_eq!(fault(&result, "marker").verdict, Verdict::Aborted);
    assert!(fault(&result, "marker").reverted);
    assert!(!marker.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_aborts_within_a_second_and_reverts() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let sleeper = ChildGuard::spawn(Command::new("sleep").arg("30"));
    let pid_file = dir.path().join("sleeper.pid");
    std::fs::write(&pid_file, sleeper.pid().to_string()).unwrap();
    // A probe check that hangs for 20 s must not hold the cancellation up.
    let yaml = format!(
        r#"
kind: experiment
id: cancel
execution: parallel
faults:{}
  - name: pause
    weight: 1
    duration: 30s
    process: {{ action: pause, pid_file: "{p}" }}
probes:
  - name: slow
    mode: on_chaos
    run_properties: {{ timeout: 20s }}
    command: {{ command: {{ argv: ["sleep", "20"] }} }}
"#,
        file_fault("marker", 5, "30s", &marker),
        p = pid_file.display()
    );
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let ctx = RunContext {
        progress: Some(sender),
        ..context()
    };
    let cancel = ctx.cancel.clone();
    let exp = experiment(&yaml);
    let run = tokio::spawn(async move { run_experiment(&exp, &ctx).await });
    wait_for(&mut receiver, |e| {
        matches!(e, ProgressEvent::ProbeChecked { .. })
            || matches!(e, ProgressEvent::FaultInjected { fault, .. } if fault == "pause")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(process_state(sleeper.pid()), 'T');
    let cancelled_at = Instant::now();
    cancel.cancel();
    let result = run.await.unwrap();
    let took = cancelled_at.elapsed();
    assert!(took < Duration::from_secs(1), "cancel took {took:?}");
    assert_eq!(result.verdict, RunStatus::Aborted);
    assert_eq!(result.summary, "aborted: cancelled");
    assert!(result.faults.iter().all(|f| f.reverted));
    assert!(!marker.exists());
    let state = process_state(sleeper.pid());
    assert!(
        matches!(state, 'S' | 'R'),
        "paused process resumed, state {state}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_during_a_slow_inject_still_reverts() {
    let dir = tempfile::tempdir().unwrap();
    let reverted = dir.path().join("reverted");
    let yaml = format!(
        r#"
kind: experiment
id: cancel-inject
faults:
  - name: slow
    weight: 1
    duration: 10s
    command:
      inject: {{ argv: ["sleep", "10"] }}
      revert: {{ argv: ["touch", "{r}"] }}
"#,
        r = reverted.display()
    );
    let ctx = context();
    let cancel = ctx.cancel.clone();
    let exp = experiment(&yaml);
    let run = tokio::spawn(async move { run_experiment(&exp, &ctx).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancelled_at = Instant::now();
    cancel.cancel();
    let result = run.await.unwrap();
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(1),
        "took {:?}",
        cancelled_at.elapsed()
    );
    assert_eq!(result.verdict, RunStatus::Aborted);
    assert!(
        reverted.exists(),
        "the revert command ran for the cut-off inject"
    );
    assert!(fault(&result, "slow").reverted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_probe_fails_its_check_and_faults_are_still_reverted() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let yaml = format!(
        r#"
kind: experiment
id: panic
faults:{}
probes:
  - {{ name: explodes, mode: on_chaos, run_properties: {{ polling_interval: 200ms }}, command: {{ command: {{ argv: ["true"] }} }} }}
  - {{ name: fine, mode: eot, command: {{ command: {{ argv: ["true"] }} }} }}
"#,
        file_fault("marker", 5, "600ms", &marker)
    );
    let ctx = RunContext {
        panic_probe: Some("explodes".into()),
        ..context()
    };
    let result = run_experiment(&experiment(&yaml), &ctx).await;
    let explodes = probe(&result, "explodes");
    assert_eq!(explodes.verdict, Verdict::Failed);
    assert!(
        explodes.last_error.as_deref().unwrap().contains("panicked"),
        "{explodes:?}"
    );
    assert_eq!(probe(&result, "fine").verdict, Verdict::Passed);
    assert_eq!(result.verdict, RunStatus::Failed);
    assert_eq!(result.resilience_score, Some(50.0));
    assert!(fault(&result, "marker").reverted);
    assert!(!marker.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_runner_reverts_its_faults_from_drop() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let yaml = format!(
        "kind: experiment\nid: dropped\nfaults:{}\n",
        file_fault("marker", 5, "30s", &marker)
    );
    let exp = experiment(&yaml);
    let ctx = context();
    let cut = tokio::time::timeout(Duration::from_millis(500), run_experiment(&exp, &ctx)).await;
    assert!(cut.is_err(), "the run was cut off");
    for _ in 0..50 {
        if !marker.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the marker file is still there 1 s after the runner was dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiments_on_one_target_never_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let shared = |id: &str| {
        experiment(&format!(
            r#"
kind: experiment
id: {id}
faults:
  - name: {id}-fault
    weight: 1
    duration: 800ms
    command:
      target: payments
      inject: {{ argv: ["touch", "{d}/{id}"] }}
      revert: {{ argv: ["rm", "{d}/{id}"] }}
"#,
            d = dir.path().display()
        ))
    };
    let locks = TargetLocks::new();
    let ctx = RunContext {
        targets: locks.clone(),
        ..context()
    };
    let (first, second) = (shared("first"), shared("second"));
    let (a, b) = tokio::join!(run_experiment(&first, &ctx), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        run_experiment(&second, &ctx).await
    });
    assert_eq!(
        (a.verdict, b.verdict),
        (RunStatus::Passed, RunStatus::Passed)
    );
    assert!(a.waited_for_target_seconds < 0.1);
    assert!(
        b.waited_for_target_seconds >= 0.5,
        "second waited {}",
        b.waited_for_target_seconds
    );
    let a_end = a.faults[0].ended_at.unwrap();
    let b_start = b.faults[0].started_at.unwrap();
    assert!(
        b_start >= a_end,
        "the second fault started before the first was reverted"
    );
    assert!(
        b.log
            .iter()
            .any(|l| l.contains("waiting for target command:payments")),
        "{:?}",
        b.log
    );

    // A different target does not wait.
    let other = experiment(&format!(
        "kind: experiment\nid: other\nfaults:{}\n",
        file_fault("x", 1, "100ms", &dir.path().join("x"))
    ));
    let third = shared("third");
    let (c, d) = tokio::join!(run_experiment(&third, &ctx), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        run_experiment(&other, &ctx).await
    });
    assert_eq!(
        (c.verdict, d.verdict),
        (RunStatus::Passed, RunStatus::Passed)
    );
    assert!(d.waited_for_target_seconds < 0.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_kill_by_exact_name() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("cgsleep{}", std::process::id() % 100_000);
    let program = dir.path().join(&name);
    std::fs::copy("/bin/sleep", &program).unwrap();
    let mut victim = ChildGuard::spawn(Command::new(&program).arg("30"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let yaml = format!(
        "kind: experiment\nid: kill\nfaults:\n  - {{ name: kill, weight: 1, duration: 100ms, process: {{ action: kill, name: {name}, signal: SIGKILL }} }}\n"
    );
    let result = run_experiment(&experiment(&yaml), &context()).await;
    assert_eq!(result.verdict, RunStatus::Passed, "{}", result.summary);
    use std::os::unix::process::ExitStatusExt;
    let status = victim.0.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));

    let missing = run_experiment(&experiment(&yaml), &context()).await;
    assert_eq!(missing.verdict, RunStatus::Error);
    assert!(
        missing.faults[0]
            .error
            .as_deref()
            .unwrap()
            .contains("no running process named")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toxiproxy_latency_is_added_and_removed() {
    let toxiproxy = Toxiproxy::start().await;
    let echo = EchoServer::start().await;
    let listen = toxiproxy.create_proxy("echo", &echo.addr.to_string()).await;
    let before = echo_round_trip(&listen).await;
    assert!(
        before < Duration::from_millis(100),
        "{before:?} before the fault"
    );

    let yaml = format!(
        r#"
kind: experiment
id: toxiproxy
faults:
  - name: slow-echo
    weight: 5
    duration: 1500ms
    toxiproxy:
      api: "{api}"
      proxy: echo
      toxic: {{ type: latency, latency: 300ms }}
      direction: both
"#,
        api = toxiproxy.api
    );
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let ctx = RunContext {
        progress: Some(sender),
        ..context()
    };
    let exp = experiment(&yaml);
    let run = tokio::spawn(async move { run_experiment(&exp, &ctx).await });
    wait_for(&mut receiver, |e| {
        matches!(e, ProgressEvent::FaultInjected { .. })
    })
    .await;
    assert_eq!(toxiproxy.toxics("echo").await.len(), 2);
    let during = echo_round_trip(&listen).await;
    // 300 ms each way.
    assert!(
        during >= Duration::from_millis(580),
        "{during:?} while the toxic is active"
    );
    let result = run.await.unwrap();
    assert_eq!(result.verdict, RunStatus::Passed, "{}", result.summary);
    assert!(fault(&result, "slow-echo").reverted);
    assert!(
        toxiproxy.toxics("echo").await.is_empty(),
        "toxics deleted on revert"
    );
    let after = echo_round_trip(&listen).await;
    assert!(
        after < Duration::from_millis(100),
        "{after:?} after the revert"
    );

    // Refuse has no Toxiproxy counterpart: a fault error, nothing left behind.
    let refuse = experiment(&yaml.replace("{ type: latency, latency: 300ms }", "{ type: refuse }"));
    let result = run_experiment(&refuse, &context()).await;
    assert_eq!(result.verdict, RunStatus::Error);
    assert!(
        result.faults[0]
            .error
            .as_deref()
            .unwrap()
            .contains("'refuse' is not available")
    );
    assert!(toxiproxy.toxics("echo").await.is_empty());
}

fn chaosgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_chaosgate"))
}

#[test]
fn cli_exit_codes_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, probe: &str| {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "kind: experiment\nid: {name}\nfaults:{}\nprobes:\n  - {{ name: p, mode: eot, command: {{ command: {{ argv: [\"{probe}\"] }} }} }}\n",
                file_fault("marker", 3, "200ms", &dir.path().join(format!("{name}.marker")))
            ),
        )
        .unwrap();
        path
    };
    let passing = write("passing", "true");
    write("failing", "false");

    let out = chaosgate()
        .args(["experiment", "run", "--json"])
        .arg(&passing)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: ExperimentResult = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result.resilience_score, Some(100.0));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains(" inject marker (command touch)"), "{log}");

    // The folder form, with a readable report.
    let out = chaosgate()
        .args(["experiment", "run", "--experiment", "failing"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("verdict  FAILED   resilience score 0"),
        "{report}"
    );
    assert!(report.contains("revert marker"), "{report}");

    let out = chaosgate()
        .args(["experiment", "run"])
        .arg(dir.path().join("nope.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn sigint_to_the_cli_mid_fault_reverts_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("marker");
    let file = dir.path().join("exp.yaml");
    std::fs::write(
        &file,
        format!(
            "kind: experiment\nid: sigint\nfaults:{}\n",
            file_fault("marker", 3, "30s", &marker)
        ),
    )
    .unwrap();
    let mut child = ChildGuard::spawn(
        chaosgate()
            .args(["experiment", "run", "--json"])
            .arg(&file)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the fault was never injected");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) of our own child.
    unsafe {
        libc::kill(child.pid(), libc::SIGINT);
    }
    let sent = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "no exit after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(2));
    assert!(!marker.exists(), "the fault was reverted");
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.0.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    let result: ExperimentResult = serde_json::from_str(&stdout).unwrap();
    assert_eq!(result.verdict, RunStatus::Aborted);
    assert!(result.faults[0].reverted);
}

fn proxy_target(name: &str, upstream: &str, protocol: ProxyProtocol) -> ProxyTarget {
    ProxyTarget {
        name: name.to_string(),
        listen: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        upstream: upstream.to_string(),
        protocol,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_fault_in_the_embedded_proxy_outlives_its_lease_while_renewed() {
    let echo = EchoServer::start().await;
    let target = proxy_target("echo", &echo.addr.to_string(), ProxyProtocol::Tcp);
    let listen = target.listen.to_string();
    let registry = ProxyRegistry::start(&[target]).await.unwrap();
    assert!(echo_round_trip(&listen).await < Duration::from_millis(100));
    let yaml = r#"
kind: experiment
id: embedded-latency
faults:
  - name: slow-echo
    weight: 5
    duration: 2s
    network: { target: echo, toxic: { type: latency, latency: 300ms } }
"#;
    let (sender, mut receiver) = mpsc::unbounded_channel();
    // A 600 ms lease: the fault lasts 2 s only because the runner renews it.
    let ctx = RunContext {
        proxy: Some(registry.clone()),
        lease: Duration::from_millis(600),
        progress: Some(sender),
        ..context()
    };
    let exp = experiment(yaml);
    let run = tokio::spawn(async move { run_experiment(&exp, &ctx).await });
    wait_for(&mut receiver, |e| {
        matches!(e, ProgressEvent::FaultInjected { .. })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let late = echo_round_trip(&listen).await;
    assert!(
        late >= Duration::from_millis(280),
        "{late:?} two leases after inject"
    );
    let result = run.await.unwrap();
    assert_eq!(result.verdict, RunStatus::Passed, "{}", result.summary);
    assert!(fault(&result, "slow-echo").reverted);
    assert_eq!(fault(&result, "slow-echo").kind, "network");
    assert_eq!(registry.active_fault_count(), 0);
    assert!(echo_round_trip(&listen).await < Duration::from_millis(100));
    registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_fault_in_the_embedded_proxy_is_seen_by_http_probes() {
    let server = CountingServer::start().await;
    let target = proxy_target("api", &server.addr.to_string(), ProxyProtocol::Http);
    let base = format!("http://{}", target.listen);
    let registry = ProxyRegistry::start(&[target]).await.unwrap();
    let yaml = format!(
        r#"
kind: experiment
id: http-abort
faults:
  - name: api-503
    weight: 5
    duration: 1s
    http: {{ target: api, action: {{ type: abort, status: 503 }}, match: {{ path_prefix: /pay }} }}
probes:
  - name: sees-503
    mode: on_chaos
    run_properties: {{ polling_interval: 300ms }}
    http: {{ url: "{base}/pay", criteria: {{ status: [503] }} }}
  - name: healthy-around
    mode: edge
    http: {{ url: "{base}/pay" }}
  - name: other-path-untouched
    mode: on_chaos
    http: {{ url: "{base}/other" }}
"#
    );
    let ctx = RunContext {
        proxy: Some(registry.clone()),
        ..context()
    };
    let result = run_experiment(&experiment(&yaml), &ctx).await;
    assert_eq!(
        result.verdict,
        RunStatus::Passed,
        "{}\n{:?}",
        result.summary,
        result.probes
    );
    assert_eq!(result.resilience_score, Some(100.0));
    assert_eq!(
        server.hits("/pay").len(),
        2,
        "aborted requests never reach upstream"
    );
    assert!(!server.hits("/other").is_empty());
    assert_eq!(registry.active_fault_count(), 0);
    registry.shutdown().await;

    // Without a proxy in the process and no `proxy` URL: a fault error, not a panic.
    let result = run_experiment(&experiment(&yaml), &context()).await;
    assert_eq!(result.verdict, RunStatus::Error);
    assert!(
        result.summary.contains("no proxy runs in this process"),
        "{}",
        result.summary
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_runner_leaves_traffic_clean_within_lease_plus_1s() {
    let echo = EchoServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "control_listen = \"127.0.0.1:0\"\n[[targets]]\nname = \"echo\"\nlisten = \"{listen}\"\nupstream = \"{}\"\n",
            echo.addr
        ),
    )
    .unwrap();
    let mut proxy = ChildGuard::spawn(
        chaosgate()
            .args(["proxy", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(proxy.0.stdout.as_mut().unwrap()),
        &mut first,
    )
    .unwrap();
    let control = first
        .trim()
        .strip_prefix("control ")
        .expect("control address line")
        .to_string();

    let exp = dir.path().join("exp.yaml");
    std::fs::write(
        &exp,
        format!(
            "kind: experiment\nid: killed\nfaults:\n  - name: slow\n    weight: 1\n    duration: 60s\n    network: {{ target: echo, proxy: \"{control}\", toxic: {{ type: latency, latency: 500ms }} }}\n"
        ),
    )
    .unwrap();
    let mut runner = ChildGuard::spawn(
        chaosgate()
            .args(["experiment", "run", "--lease", "2s"])
            .arg(&exp)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while echo_round_trip(&listen).await < Duration::from_millis(450) {
        assert!(Instant::now() < deadline, "the fault never became active");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let a few renewals happen, so the fault is clearly older than one lease.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        echo_round_trip(&listen).await >= Duration::from_millis(450),
        "renewed while alive"
    );
    runner.0.kill().unwrap();
    let killed = Instant::now();
    runner.0.wait().unwrap();
    loop {
        let rtt = echo_round_trip(&listen).await;
        if rtt < Duration::from_millis(100) {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "still slow 5 s after the kill"
        );
    }
    let clean = killed.elapsed();
    assert!(
        clean <= Duration::from_secs(3),
        "traffic clean after {clean:?}, lease 2 s + 1 s allowed"
    );
    eprintln!("traffic clean {clean:?} after SIGKILL (lease 2s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_runs_proxy_faults_in_targets_from_proxy_config() {
    let server = CountingServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[[targets]]\nname = \"api\"\nlisten = \"{listen}\"\nupstream = \"{}\"\nprotocol = \"http\"\n",
            server.addr
        ),
    )
    .unwrap();
    let exp = dir.path().join("exp.yaml");
    std::fs::write(
        &exp,
        format!(
            r#"kind: experiment
id: teapot
faults:
  - name: teapot
    weight: 1
    duration: 1s
    http: {{ target: api, action: {{ type: abort, status: 418 }} }}
probes:
  - {{ name: teapot-while-active, mode: on_chaos, http: {{ url: "http://{listen}/", criteria: {{ status: [418] }} }} }}
  - {{ name: fine-around, mode: edge, http: {{ url: "http://{listen}/" }} }}
"#
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        chaosgate()
            .args(["experiment", "run", "--json", "--proxy-config"])
            .arg(&config)
            .arg(&exp)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let result: ExperimentResult = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(result.verdict, RunStatus::Passed, "{:?}", result.probes);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        server.hits("/").len(),
        2,
        "only the edge checks reach upstream"
    );
}

/// Two flags' pipelines whose steps run experiments on one target (`command:payments`):
/// flag `a` holds it for 2.5 s, flag `b` for 1 s, each step with a 3 s `timeout`; the
/// catalog and each flag's change.
fn two_flags_on_one_target(dir: &Path) -> (chaosgate::catalog::Catalog, [FlagChange; 2]) {
    let mut pipelines = Vec::new();
    let mut experiments = Vec::new();
    for (flag, hold) in [("a", "2500ms"), ("b", "1s")] {
        experiments.push(experiment(&format!(
            r#"
kind: experiment
id: exp-{flag}
faults:
  - name: hold-{flag}
    weight: 1
    duration: {hold}
    command:
      target: payments
      inject: {{ argv: ["touch", "{d}/{flag}"] }}
      revert: {{ argv: ["rm", "{d}/{flag}"] }}
"#,
            d = dir.display()
        )));
        let pipeline: Pipeline = serde_saphyr::from_str(&format!(
            r#"
kind: pipeline
id: gate-{flag}
routes: [{{ project: p, environment: e, flag: {flag} }}]
stages:
  - id: chaos
    type: feature_flag
    steps:
      - id: hold
        experiment: exp-{flag}
        expected_resilience_score: 0
        timeout: 3s
"#
        ))
        .unwrap();
        pipelines.push(pipeline);
    }
    let change = |flag: &str| FlagChange {
        event_id: format!("event-{flag}"),
        project: "p".into(),
        environment: "e".into(),
        flag: flag.into(),
        ..flag_change_example()
    };
    let catalog = chaosgate::catalog::Catalog::from_parts(pipelines, experiments).unwrap();
    (catalog, [change("a"), change("b")])
}

/// Runs both flags' executions, the second 100 ms after the first, with `target_wait`.
async fn gate_both(dir: &Path, target_wait: Option<Duration>) -> [RunRecord; 2] {
    let (catalog, [a, b]) = two_flags_on_one_target(dir);
    let context = ExecutionContext {
        run: RunContext {
            target_wait,
            ..context()
        },
        attempt: 1,
        kill: CancellationToken::new(),
        interrupt: CancellationToken::new(),
        unrouted: chaosgate::catalog::Unrouted::Enable,
        updates: None,
        start_committed: None,
        resume: None,
    };
    let run = |change: FlagChange| {
        let (catalog, context) = (&catalog, &context);
        async move {
            let pipeline = catalog.pipeline_for("p", "e", &change.flag);
            let mut execution = execute(&change, pipeline, catalog, context).await;
            execution.records.remove(0)
        }
    };
    let (first, second) = tokio::join!(run(a), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        run(b).await
    });
    [first, second]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_timeout_counts_from_when_its_targets_are_held() {
    let dir = tempfile::tempdir().unwrap();
    let [first, second] = gate_both(dir.path(), None).await;
    assert_eq!(first.status, RunStatus::Passed, "{:?}", first.summary);
    // Queued ~2.4 s behind the first flag's experiment, then 1 s of its own: 3.4 s in
    // all, over the 3 s step timeout, which counts only from the targets' grant.
    assert_eq!(second.status, RunStatus::Passed, "{:?}", second.summary);
    assert!(
        second.waited_for_target_seconds >= 2.0,
        "waited {}",
        second.waited_for_target_seconds
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_for_a_busy_target_has_its_own_bound_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let [first, second] = gate_both(dir.path(), Some(Duration::from_millis(300))).await;
    assert_eq!(first.status, RunStatus::Passed, "{:?}", first.summary);
    assert_eq!(second.status, RunStatus::Aborted);
    let summary = second.summary.clone().unwrap_or_default();
    assert!(
        summary.contains("waited 300ms for target command:payments, held by another experiment")
            && summary.contains("nothing was injected"),
        "{summary}"
    );
    assert!(
        second.faults.iter().all(|f| f.started_at.is_none()),
        "{:?}",
        second.faults
    );
}
