//! Fault guards with the real binary: a runner (`chaosgate experiment run`, and the
//! `chaosgate run` worker on the real broker, each for every guarded kind) SIGKILLed
//! mid-fault leaves no `toxiproxy` toxic (real Toxiproxy), `command` fault or paused
//! process behind within its lease plus one second, also when it is a container's PID 1;
//! and on a normal run the guard does nothing: the revert runs once and the guard is gone.
//!
//! Each runner gets an environment variable with a value unique to its test; its guards
//! inherit it, so `/proc/PID/environ` tells this test's guards from any other's.

#[path = "support/kafka.rs"]
mod kafka;
#[path = "support/engine.rs"]
mod support;
#[path = "support/worker.rs"]
mod worker;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chaosgate::contract::ChangeKind;
use support::{ChildGuard, EchoServer, Toxiproxy, process_state};
use worker::{Harness, Listener, Settings, change, pipeline_yaml};

/// The lease the runners get: the fault must be gone this long after the SIGKILL, plus
/// one second.
const LEASE: Duration = Duration::from_secs(2);

/// Slack on top of the lease: the issue's bound (one second).
const SLACK: Duration = Duration::from_secs(1);

/// Upper bound for a wait that only a bug reaches.
const PATIENCE: Duration = Duration::from_secs(60);

/// The variable that marks a runner and its guards.
const MARK: &str = "CHAOSGATE_TEST_GUARD_MARK";

/// `chaosgate experiment run FILE --lease 2s`, in a process group of its own, its
/// standard error in `stderr`; the group is SIGKILLed when the test ends.
fn experiment_run(file: &Path, stderr: &Path, mark: &str) -> ChildGuard {
    use std::os::unix::process::CommandExt;
    let err = std::fs::File::create(stderr).expect("stderr file");
    ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_chaosgate"))
            .args(["experiment", "run"])
            .arg(file)
            .args(["--lease", "2s"])
            .env(MARK, mark)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .process_group(0)
            .spawn()
            .expect("spawn chaosgate experiment run"),
    )
}

/// SIGKILLs the runner's whole process group (it and anything it started in it).
fn sigkill_group(runner: &ChildGuard) -> Instant {
    // SAFETY: kill(2) has no memory effects; the group is the runner's own.
    assert_eq!(unsafe { libc::kill(-runner.pid(), libc::SIGKILL) }, 0);
    Instant::now()
}

/// Processes whose environment holds `MARK=mark` (the runner and its guards).
fn marked(mark: &str) -> Vec<i32> {
    worker::pids_with_env(MARK, mark)
}

/// Waits until `done()` holds; returns how long it took, or panics after `limit` with
/// `what` and the runner's log.
async fn wait_until(
    what: &str,
    limit: Duration,
    log: &Path,
    mut done: impl FnMut() -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        if done() {
            return started.elapsed();
        }
        if started.elapsed() > limit {
            panic!(
                "{what}: not within {limit:?}\nrunner log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts the fault was gone within the lease plus one second of the SIGKILL, printing
/// the figure.
fn assert_gone_in_time(kind: &str, gone: Duration, log: &Path) {
    println!("{kind}: fault gone {gone:?} after the runner's signal (lease {LEASE:?})");
    assert!(
        gone <= LEASE + SLACK,
        "{kind}: fault gone only {gone:?} after the signal, lease {LEASE:?}\nrunner log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// After the guard reverted: its log line is in the runner's standard error, and no
/// process of this test is left.
async fn assert_guard_reverted_and_left(mark: &str, log: &Path) {
    wait_until("the guard exits", PATIENCE, log, || marked(mark).is_empty()).await;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        text.contains("chaosgate fault-guard") && text.contains("reverted (attempt 1)"),
        "no guard revert line in the runner's log:\n{text}"
    );
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

/// Experiment `id`: a 60 s latency toxic on both streams of Toxiproxy proxy `echo`.
fn toxiproxy_experiment(id: &str, api: &str) -> String {
    format!(
        r#"kind: experiment
id: {id}
faults:
  - name: slow
    weight: 5
    duration: 60s
    toxiproxy:
      api: "{api}"
      proxy: echo
      toxic: {{ type: latency, latency: 200ms }}
      direction: both
"#
    )
}

/// Experiment `id`: a 60 s `pause` of the process whose pid is in `pid_file`.
fn pause_experiment(id: &str, pid_file: &Path) -> String {
    format!(
        r#"kind: experiment
id: {id}
faults:
  - name: freeze
    weight: 5
    duration: 60s
    process:
      action: pause
      pid_file: "{}"
"#,
        pid_file.display()
    )
}

fn command_experiment(marker: &Path, revert_log: &Path, duration: &str) -> String {
    format!(
        r#"kind: experiment
id: guarded-command
faults:
  - name: marker
    weight: 5
    duration: {duration}
    command:
      inject:
        argv: [touch, "{marker}"]
      revert:
        argv: ["echo reverted >> '{log}' && rm -f '{marker}'"]
        shell: true
"#,
        marker = marker.display(),
        log = revert_log.display(),
    )
}

/// A `command` fault (its inject creates `marker`, its revert appends a line to `reverts`
/// and removes it) run by `chaosgate experiment run` in a temp folder.
struct CommandRun {
    _dir: tempfile::TempDir,
    marker: PathBuf,
    reverts: PathBuf,
    log: PathBuf,
    mark: String,
    runner: ChildGuard,
}

fn command_run(duration: &str) -> CommandRun {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("marker");
    let reverts = dir.path().join("reverts");
    let file = write(
        dir.path(),
        "exp.yaml",
        &command_experiment(&marker, &reverts, duration),
    );
    let log = dir.path().join("runner.log");
    let mark = uuid::Uuid::new_v4().to_string();
    let runner = experiment_run(&file, &log, &mark);
    CommandRun {
        _dir: dir,
        marker,
        reverts,
        log,
        mark,
        runner,
    }
}

/// A 60 s `command` fault run by `chaosgate experiment run`, once it is injected.
async fn command_fault_injected() -> CommandRun {
    let run = command_run("60s");
    wait_until("the inject command ran", PATIENCE, &run.log, || {
        run.marker.exists()
    })
    .await;
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_fault_is_reverted_by_its_guard_after_the_runner_is_sigkilled() {
    let run = command_fault_injected().await;

    let killed = sigkill_group(&run.runner);
    wait_until("the marker is removed", PATIENCE, &run.log, || {
        !run.marker.exists()
    })
    .await;
    assert_gone_in_time("command", killed.elapsed(), &run.log);
    assert_guard_reverted_and_left(&run.mark, &run.log).await;
    assert_eq!(
        std::fs::read_to_string(&run.reverts).unwrap_or_default(),
        "reverted\n",
        "the revert command ran once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_runner_misses_its_renewals_and_the_guard_reverts_within_the_lease() {
    let run = command_fault_injected().await;

    // SIGSTOP: the runner lives but renews nothing (as a hung one would).
    // SAFETY: kill(2) has no memory effects; the group is the runner's own.
    assert_eq!(unsafe { libc::kill(-run.runner.pid(), libc::SIGSTOP) }, 0);
    let stopped = Instant::now();
    let gone = wait_until("the marker is removed", PATIENCE, &run.log, || {
        !run.marker.exists()
    })
    .await;
    assert_gone_in_time("command, runner stopped", stopped.elapsed(), &run.log);
    assert!(
        gone >= LEASE / 2,
        "reverted {gone:?} after the stop: before the lease could have run out"
    );
    let text = std::fs::read_to_string(&run.log).unwrap_or_default();
    assert!(
        text.contains("no renewal from the runner within the lease"),
        "{text}"
    );
    sigkill_group(&run.runner);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_sent_sigterm_reverts_before_it_exits() {
    let run = command_fault_injected().await;
    let guards: Vec<i32> = marked(&run.mark)
        .into_iter()
        .filter(|pid| *pid != run.runner.pid())
        .collect();
    assert_eq!(guards.len(), 1, "one guard for one fault: {guards:?}");

    // As a service manager stopping the runner's whole group would.
    // SAFETY: kill(2) has no memory effects; the pid is this test's runner's guard.
    assert_eq!(unsafe { libc::kill(guards[0], libc::SIGTERM) }, 0);
    wait_until("the marker is removed", PATIENCE, &run.log, || {
        !run.marker.exists()
    })
    .await;
    let text = std::fs::read_to_string(&run.log).unwrap_or_default();
    assert!(text.contains("the guard was sent SIGTERM"), "{text}");
    assert_eq!(
        std::fs::read_to_string(&run.reverts).unwrap_or_default(),
        "reverted\n"
    );
    sigkill_group(&run.runner);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toxiproxy_toxics_are_deleted_by_the_guard_after_the_runner_is_sigkilled() {
    let toxiproxy = Toxiproxy::start().await;
    let echo = EchoServer::start().await;
    toxiproxy.create_proxy("echo", &echo.addr.to_string()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(
        dir.path(),
        "exp.yaml",
        &toxiproxy_experiment("guarded-toxics", &toxiproxy.api),
    );
    let log = dir.path().join("runner.log");
    let mark = uuid::Uuid::new_v4().to_string();
    let runner = experiment_run(&file, &log, &mark);
    let started = Instant::now();
    loop {
        if toxiproxy.toxics("echo").await.len() == 2 {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "toxics never created\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let killed = sigkill_group(&runner);
    loop {
        if toxiproxy.toxics("echo").await.is_empty() {
            break;
        }
        assert!(
            killed.elapsed() < PATIENCE,
            "toxics still listed {:?} after SIGKILL\n{}",
            killed.elapsed(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_gone_in_time("toxiproxy", killed.elapsed(), &log);
    assert_guard_reverted_and_left(&mark, &log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_process_is_resumed_by_the_guard_after_the_runner_is_sigkilled() {
    let target = ChildGuard::spawn(Command::new("sleep").arg("300"));
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = write(dir.path(), "target.pid", &target.pid().to_string());
    let file = write(
        dir.path(),
        "exp.yaml",
        &pause_experiment("guarded-pause", &pid_file),
    );
    let log = dir.path().join("runner.log");
    let mark = uuid::Uuid::new_v4().to_string();
    let runner = experiment_run(&file, &log, &mark);
    wait_until("the target is stopped", PATIENCE, &log, || {
        process_state(target.pid()) == 'T'
    })
    .await;

    let killed = sigkill_group(&runner);
    wait_until("the target runs again", PATIENCE, &log, || {
        process_state(target.pid()) != 'T'
    })
    .await;
    assert_gone_in_time("process pause", killed.elapsed(), &log);
    assert_eq!(process_state(target.pid()), 'S', "the target sleeps again");
    assert_guard_reverted_and_left(&mark, &log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_normal_run_the_runner_reverts_once_and_its_guard_exits_quietly() {
    let CommandRun {
        _dir,
        marker,
        reverts,
        log,
        mark,
        mut runner,
    } = command_run("1s");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = runner.0.try_wait().expect("wait") {
            break status;
        }
        assert!(started.elapsed() < PATIENCE, "the run did not end");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.code().is_some(),
        "runner killed by a signal: {status}\n{text}"
    );
    assert!(
        text.contains("revert marker"),
        "the runner did not revert:\n{text}"
    );
    // Long enough for a guard that missed its 'done' to notice (lease) and revert.
    wait_until("the guard is gone", PATIENCE, &log, || {
        marked(&mark).is_empty()
    })
    .await;
    tokio::time::sleep(LEASE + SLACK).await;
    assert!(!marker.exists(), "the fault is still active");
    assert_eq!(
        std::fs::read_to_string(&reverts).unwrap_or_default(),
        "reverted\n",
        "the revert command ran exactly once\n{text}"
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !text.contains("chaosgate fault-guard"),
        "the guard logged on a normal run:\n{text}"
    );
}

/// What shows a fault in place: a marker file a command fault creates, the toxics of a
/// Toxiproxy proxy, or a process in state `T`.
enum FaultInPlace<'a> {
    Marker(&'a Path),
    Toxics(&'a Toxiproxy, &'a str),
    Paused(i32),
}

impl FaultInPlace<'_> {
    async fn active(&self) -> bool {
        match self {
            FaultInPlace::Marker(path) => path.exists(),
            FaultInPlace::Toxics(toxiproxy, proxy) => !toxiproxy.toxics(proxy).await.is_empty(),
            FaultInPlace::Paused(pid) => process_state(*pid) == 'T',
        }
    }
}

/// A real `chaosgate run` worker (broker from the environment, `fault_lease = "2s"`) runs
/// `experiment` (id `exp`) for a flag change; once `fault` is in place the worker is
/// SIGKILLed, and the fault must be gone within the lease plus one second, reverted by
/// its guard.
async fn the_guard_reverts_after_the_worker_is_sigkilled(
    kind: &str,
    experiment: &str,
    fault: FaultInPlace<'_>,
) {
    let servers = kafka::require_broker();
    let h = Harness::new(&servers, "guard", 1).await;
    h.catalog_file("exp.yaml", experiment);
    h.catalog_file("pipe.yaml", &pipeline_yaml("gate", Some("*"), &["exp"]));
    let config = h.config("w", &Settings::default());
    let text = std::fs::read_to_string(&config).expect("config");
    assert!(text.contains("fault_lease = \"10s\""), "{text}");
    std::fs::write(
        &config,
        text.replace("fault_lease = \"10s\"", "fault_lease = \"2s\""),
    )
    .expect("config");
    let mut worker = h.spawn("w", &config);
    let event = change("checkout", ChangeKind::Enable, None);
    h.produce_change(&event).await;
    let started = Instant::now();
    while !fault.active().await {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{kind}: the fault was not injected\n{}",
            h.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    worker.kill();
    let killed = Instant::now();
    while fault.active().await {
        assert!(
            killed.elapsed() < PATIENCE,
            "{kind}: the fault is still in place {:?} after SIGKILL\n{}",
            killed.elapsed(),
            h.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gone = killed.elapsed();
    println!("worker, {kind}: fault gone {gone:?} after its SIGKILL (lease {LEASE:?})");
    assert!(
        gone <= LEASE + SLACK,
        "{kind}: fault gone only {gone:?} after the worker's SIGKILL, lease {LEASE:?}\n{}",
        h.log_tails()
    );
    let deadline = Instant::now() + PATIENCE;
    while !h.logs().contains("reverted (attempt 1)") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = h.logs();
    assert!(
        logs.contains("chaosgate fault-guard") && logs.contains("reverted (attempt 1)"),
        "{kind}: no guard revert line in the worker's log:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_fault_is_reverted_by_its_guard_after_the_worker_is_sigkilled() {
    let up = Listener::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("marker");
    the_guard_reverts_after_the_worker_is_sigkilled(
        "command",
        &worker::experiment_yaml("exp", "60s", &marker, &up.address),
        FaultInPlace::Marker(&marker),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toxiproxy_toxics_are_deleted_by_the_guard_after_the_worker_is_sigkilled() {
    let toxiproxy = Toxiproxy::start().await;
    let echo = EchoServer::start().await;
    toxiproxy.create_proxy("echo", &echo.addr.to_string()).await;
    let experiment = toxiproxy_experiment("exp", &toxiproxy.api);
    the_guard_reverts_after_the_worker_is_sigkilled(
        "toxiproxy",
        &experiment,
        FaultInPlace::Toxics(&toxiproxy, "echo"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_process_is_resumed_by_the_guard_after_the_worker_is_sigkilled() {
    let target = ChildGuard::spawn(Command::new("sleep").arg("300"));
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = write(dir.path(), "target.pid", &target.pid().to_string());
    let experiment = pause_experiment("exp", &pid_file);
    the_guard_reverts_after_the_worker_is_sigkilled(
        "process pause",
        &experiment,
        FaultInPlace::Paused(target.pid()),
    )
    .await;
    assert_eq!(process_state(target.pid()), 'S', "the target sleeps again");
}

/// The parent pid and command line of `pid`, from `/proc`.
fn parent_and_cmdline(pid: i32) -> Option<(i32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: state, then the parent pid.
    let parent = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some((parent, String::from_utf8_lossy(&cmdline).replace('\0', " ")))
}

/// In a container the runner is often PID 1, and a PID namespace ends, its other
/// processes SIGKILLed by the kernel, when PID 1 ends: the fault's guard would die with a
/// SIGKILLed runner. chaosgate as PID 1 (here in a PID namespace of its own, made by
/// util-linux's `unshare` as a container runtime makes one) runs the runner as its child
/// and waits for the guards, so the fault is still reverted, and the namespace then ends
/// with the runner's status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_sigkilled_under_chaosgate_as_pid_1_of_a_container_still_has_its_guard() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("marker");
    let reverts = dir.path().join("reverts");
    let file = write(
        dir.path(),
        "exp.yaml",
        &command_experiment(&marker, &reverts, "60s"),
    );
    let log = dir.path().join("runner.log");
    let mark = uuid::Uuid::new_v4().to_string();
    let mut namespace = ChildGuard(
        Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc"])
            .arg(env!("CARGO_BIN_EXE_chaosgate"))
            .args(["experiment", "run"])
            .arg(&file)
            .args(["--lease", "2s"])
            .env(MARK, &mark)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .process_group(0)
            .spawn()
            .expect("util-linux's unshare starts a PID namespace (needs root)"),
    );
    wait_until("the inject command ran", PATIENCE, &log, || marker.exists()).await;
    // The runner: a chaosgate `experiment run` whose parent is one too (PID 1).
    let chaosgate = env!("CARGO_BIN_EXE_chaosgate");
    let is_runner_command =
        |cmdline: &str| cmdline.starts_with(chaosgate) && cmdline.contains(" experiment run ");
    let runner = marked(&mark)
        .into_iter()
        .find(|pid| {
            parent_and_cmdline(*pid).is_some_and(|(parent, cmdline)| {
                is_runner_command(&cmdline)
                    && parent_and_cmdline(parent).is_some_and(|(_, c)| is_runner_command(&c))
            })
        })
        .expect("PID 1 runs the runner as its child");

    // SAFETY: kill(2) has no memory effects; the runner is this test's own.
    assert_eq!(unsafe { libc::kill(runner, libc::SIGKILL) }, 0);
    let killed = Instant::now();
    wait_until("the marker is removed", PATIENCE, &log, || !marker.exists()).await;
    assert_gone_in_time("command under PID 1", killed.elapsed(), &log);
    let status = loop {
        if let Some(status) = namespace.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            killed.elapsed() < PATIENCE,
            "the namespace did not end after its guard reverted:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        status.code(),
        Some(128 + libc::SIGKILL),
        "the runner's status"
    );
    assert_guard_reverted_and_left(&mark, &log).await;
    assert_eq!(
        std::fs::read_to_string(&reverts).unwrap_or_default(),
        "reverted\n",
        "the revert command ran once"
    );
}
