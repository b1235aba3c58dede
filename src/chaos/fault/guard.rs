//! Fault guards: one process per injected `toxiproxy`, `command` or `process` pause fault
//! that reverts it when the runner that injected it is gone.
//!
//! The guard is the chaosgate binary itself, run as the hidden `fault-guard` subcommand
//! in a session of its own (so a signal to the runner's process group, or a Ctrl-C in its
//! terminal, does not reach it), with standard input a pipe from the runner and standard
//! error the runner's own. The protocol, one line each:
//!
//! 1. runner -> guard: the [`Plan`] as JSON (the fault's name, the lease in ms, and the
//!    [`Injected`] value that reverts it);
//! 2. guard -> runner, on standard output: `armed` once the plan is parsed. Only then is
//!    the fault injected;
//! 3. runner -> guard: `renew` every third of the lease while the runner lives, and
//!    `done` once the runner's own revert succeeded.
//!
//! The rule that keeps it right: **a guard holds the revert before the fault exists, and
//! reverts unless told `done`.** On `done` it exits quietly. When its standard input
//! closes without `done` (the runner exited, was killed, or gave up its own revert), or no
//! line arrives within the lease (the runner hangs or is stopped), or it is sent SIGTERM,
//! SIGINT or SIGHUP (a service manager stopping the runner's group), it runs the same
//! [`revert`](super::revert) as the runner would, retried with backoff for up to
//! [`GIVE_UP_AFTER`], logging each failure on standard error, then exits. A guard lives
//! on the runner's host or pod: if that dies, the guard dies with it (a runner that is a
//! container's PID 1 keeps its guards alive: `cli::first_process` in the binary).

use std::io::{BufRead, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use super::Injected;
use crate::telemetry::redact::{self, Secrets};

/// The hidden subcommand that runs a guard (`chaosgate fault-guard`).
pub const SUBCOMMAND: &str = "fault-guard";

/// How long the runner waits for a new guard to answer `armed`.
const ARM_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a guard keeps retrying a failed revert before it gives up.
pub(crate) const GIVE_UP_AFTER: Duration = Duration::from_secs(600);

/// First and longest pause between a guard's revert attempts (doubling in between).
const FIRST_RETRY: Duration = Duration::from_millis(250);
const LONGEST_RETRY: Duration = Duration::from_secs(10);

/// What a guard holds: the first line the runner writes, as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Plan {
    /// The fault's name, for the guard's log lines.
    pub(crate) fault: String,
    /// How long the guard waits for a line from the runner before it reverts, in ms.
    pub(crate) lease_ms: u64,
    /// What reverts the fault.
    pub(crate) revert: Injected,
    /// The secrets the runner scrubs from its output (its configuration's, the
    /// experiment's credentials): the guard scrubs its own log lines of them.
    #[serde(default)]
    pub(crate) secrets: Secrets,
}

/// Why a guard could not be armed (and so the fault is not injected).
#[derive(Debug, thiserror::Error)]
pub(crate) enum GuardError {
    /// The plan could not be written as JSON.
    #[error("cannot write the revert plan as JSON: {0}")]
    Plan(#[from] serde_json::Error),
    /// The guard process could not be started.
    #[error("cannot start its guard '{program} {SUBCOMMAND}': {source}")]
    Spawn {
        /// The program run as guard.
        program: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The guard started but did not confirm it holds the plan.
    #[error("its guard '{program} {SUBCOMMAND}' did not confirm the revert plan: {reason}")]
    NotArmed {
        /// The program run as guard.
        program: PathBuf,
        /// What happened instead.
        reason: String,
    },
}

/// The runner's end of an armed guard. Dropping it without [`Guard::done`] closes the
/// pipe: the guard then reverts the fault at once.
#[derive(Debug)]
pub(crate) struct Guard {
    /// The write end of the guard's standard input, non-blocking: a guard that stopped
    /// reading never blocks the runner.
    stdin: std::fs::File,
    /// Kept so that Tokio reaps the guard once it exits (it is not killed on drop).
    _child: tokio::process::Child,
}

impl Guard {
    /// Tells the guard the runner still lives; an error means the guard is gone (it may
    /// have reverted the fault already) or not reading.
    pub(crate) fn renew(&self) -> std::io::Result<()> {
        (&self.stdin).write_all(b"renew\n")
    }

    /// Tells the guard the runner reverted the fault itself: it exits without reverting.
    pub(crate) fn done(self) -> std::io::Result<()> {
        (&self.stdin).write_all(b"done\n")
    }
}

/// Starts a guard for fault `fault` holding `revert`, and waits until it confirms the
/// plan (at most 10 s). `program` is the chaosgate binary.
///
/// Errors name the program and what failed; the guard is killed on any error, so a guard
/// that was not confirmed never reverts anything.
pub(crate) async fn arm(
    program: &Path,
    fault: &str,
    revert: &Injected,
    lease: Duration,
) -> Result<Guard, GuardError> {
    let plan = Plan {
        fault: fault.to_string(),
        lease_ms: u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
        revert: revert.clone(),
        secrets: redact::installed()
            .map(|installed| (*installed).clone())
            .unwrap_or_default(),
    };
    let mut line = serde_json::to_string(&plan)?;
    line.push('\n');
    let mut command = tokio::process::Command::new(program);
    command
        .arg(SUBCOMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: setsid(2) is async-signal-safe and touches no memory of this process; it
    // runs in the forked child before exec.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|source| GuardError::Spawn {
        program: program.to_path_buf(),
        source,
    })?;
    let not_armed = |reason: String| GuardError::NotArmed {
        program: program.to_path_buf(),
        reason,
    };
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        let _ = child.start_kill();
        return Err(not_armed("its pipes were not opened".to_string()));
    };
    let handshake = async {
        stdin.write_all(line.as_bytes()).await?;
        stdin.flush().await?;
        let mut answer = String::new();
        tokio::io::BufReader::new(stdout)
            .read_line(&mut answer)
            .await?;
        Ok::<_, std::io::Error>(answer)
    };
    let reason = match tokio::time::timeout(ARM_TIMEOUT, handshake).await {
        Ok(Ok(answer)) if answer.trim_end() == "armed" => None,
        Ok(Ok(answer)) if answer.is_empty() => Some("it exited without answering".to_string()),
        Ok(Ok(answer)) => Some(format!("it answered '{}'", answer.trim_end())),
        Ok(Err(err)) => Some(format!("talking to it failed: {err}")),
        Err(_) => Some(format!("no answer within {ARM_TIMEOUT:?}")),
    };
    let stdin = match reason {
        None => stdin
            .into_owned_fd()
            .map(std::fs::File::from)
            .and_then(|file| set_nonblocking(&file).map(|()| file))
            .map_err(|err| format!("cannot keep its pipe: {err}")),
        Some(reason) => Err(reason),
    };
    match stdin {
        Ok(stdin) => Ok(Guard {
            stdin,
            _child: child,
        }),
        Err(reason) => {
            let _ = child.start_kill();
            Err(not_armed(reason))
        }
    }
}

fn set_nonblocking(file: &std::fs::File) -> std::io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl(2) on a descriptor this function's caller owns; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags == -1 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The guard process: reads its [`Plan`] from standard input, answers `armed`, then waits
/// for `renew`/`done` lines and reverts when the runner is gone (see the module doc).
///
/// Exit code 0 after `done` or a successful revert; 1 when the revert still failed after
/// [`GIVE_UP_AFTER`]; 2 when the plan could not be read (nothing was armed then).
pub fn run_guard() -> ExitCode {
    let (heard, received) = mpsc::channel();
    // Reads standard input on its own thread, so the wait for a line can time out; the
    // thread is left blocked in read(2) when the process exits.
    let lines = heard.clone();
    let reader = std::thread::Builder::new()
        .name("guard-stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                if lines.send(Heard::Line(line)).is_err() {
                    return;
                }
            }
            let _ = lines.send(Heard::Closed);
        });
    if let Err(err) = reader {
        log(&format!(
            "cannot start the thread that reads the runner: {err}"
        ));
        return ExitCode::from(2);
    }
    if let Err(err) = watch_signals(heard) {
        log(&format!("cannot watch SIGTERM, SIGINT and SIGHUP: {err}"));
        return ExitCode::from(2);
    }
    let plan: Plan = match received.recv() {
        Ok(Heard::Line(Ok(line))) => match serde_json::from_str(&line) {
            Ok(plan) => plan,
            Err(err) => {
                log(&format!("the revert plan does not parse: {err}"));
                return ExitCode::from(2);
            }
        },
        Ok(Heard::Line(Err(err))) => {
            log(&format!("cannot read the revert plan: {err}"));
            return ExitCode::from(2);
        }
        Ok(Heard::Signal(signal)) => {
            log(&format!("{signal} before a revert plan arrived"));
            return ExitCode::from(2);
        }
        Ok(Heard::Closed) | Err(_) => {
            log("standard input closed before a revert plan arrived");
            return ExitCode::from(2);
        }
    };
    redact::install(&plan.secrets);
    {
        let mut out = std::io::stdout().lock();
        if writeln!(out, "armed").and_then(|()| out.flush()).is_err() {
            // The runner is gone before it could inject: nothing to revert.
            return ExitCode::from(2);
        }
    }
    let lease = Duration::from_millis(plan.lease_ms);
    let why = loop {
        match received.recv_timeout(lease) {
            Ok(Heard::Line(Ok(line))) if line == "done" => return ExitCode::SUCCESS,
            Ok(Heard::Line(Ok(line))) if line == "renew" => continue,
            Ok(Heard::Line(Ok(line))) => log(&format!(
                "fault '{}': unknown line '{line}' from the runner (ignored)",
                plan.fault
            )),
            Ok(Heard::Line(Err(err))) => break format!("reading from the runner failed: {err}"),
            Ok(Heard::Signal(signal)) => {
                break format!("the guard was sent {signal} (its host or service is stopping)");
            }
            Ok(Heard::Closed) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                break "the runner closed the pipe without 'done' (it exited, was killed, or gave up its own revert)".to_string();
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                break format!(
                    "no renewal from the runner within the lease of {} ms (it hangs or is stopped)",
                    plan.lease_ms
                );
            }
        }
    };
    if revert_until_done(&plan, &why) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// What the guard's main loop hears: a line from the runner, the end of its input, or a
/// stop signal.
enum Heard {
    Line(std::io::Result<String>),
    Closed,
    Signal(&'static str),
}

/// Turns SIGTERM, SIGINT and SIGHUP into [`Heard::Signal`] (on a thread of its own), so a
/// guard asked to stop (a service manager stopping the runner's whole group) reverts
/// first; returns once the handlers are in place. Later signals are ignored: the revert
/// then under way goes on.
fn watch_signals(heard: mpsc::Sender<Heard>) -> std::io::Result<()> {
    let (ready, installed) = mpsc::channel();
    std::thread::Builder::new()
        .name("guard-signals".into())
        .spawn(move || {
            use tokio::signal::unix::{SignalKind, signal};
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    let _ = ready.send(Err(err));
                    return;
                }
            };
            runtime.block_on(async move {
                let streams = (|| {
                    Ok::<_, std::io::Error>((
                        signal(SignalKind::terminate())?,
                        signal(SignalKind::interrupt())?,
                        signal(SignalKind::hangup())?,
                    ))
                })();
                let (mut term, mut int, mut hup) = match streams {
                    Ok(streams) => streams,
                    Err(err) => {
                        let _ = ready.send(Err(err));
                        return;
                    }
                };
                let _ = ready.send(Ok(()));
                loop {
                    let name = tokio::select! {
                        _ = term.recv() => "SIGTERM",
                        _ = int.recv() => "SIGINT",
                        _ = hup.recv() => "SIGHUP",
                    };
                    if heard.send(Heard::Signal(name)).is_err() {
                        return;
                    }
                }
            });
        })?;
    installed
        .recv()
        .map_err(|_| std::io::Error::other("the signal thread ended"))?
}

/// Reverts `plan` with backoff until it succeeds or [`GIVE_UP_AFTER`] has passed.
fn revert_until_done(plan: &Plan, why: &str) -> bool {
    let name = &plan.fault;
    log(&format!("fault '{name}': {why}; reverting it"));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            log(&format!(
                "fault '{name}': cannot start a runtime to revert it: {err}; it may still be active"
            ));
            return false;
        }
    };
    let started = Instant::now();
    let mut pause = FIRST_RETRY;
    for attempt in 1u32.. {
        match runtime.block_on(super::revert(&plan.revert)) {
            Ok(()) => {
                log(&format!("fault '{name}': reverted (attempt {attempt})"));
                return true;
            }
            Err(err) if started.elapsed() + pause > GIVE_UP_AFTER => {
                log(&format!(
                    "fault '{name}': revert failed (attempt {attempt}): {err}; giving up after {:?}, the fault may still be active",
                    started.elapsed()
                ));
                return false;
            }
            Err(err) => {
                log(&format!(
                    "fault '{name}': revert failed (attempt {attempt}, next in {pause:?}): {err}"
                ));
                std::thread::sleep(pause);
                pause = (pause * 2).min(LONGEST_RETRY);
            }
        }
    }
    false
}

/// One line on standard error (the runner's, inherited), marked as the guard's and
/// scrubbed of the runner's secrets.
fn log(line: &str) {
    let line = match redact::installed() {
        Some(secrets) => secrets.scrub(line).into_owned(),
        None => line.to_string(),
    };
    eprintln!(
        "{} chaosgate fault-guard[{}]: {}",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        std::process::id(),
        crate::telemetry::logs::one_line(&line)
    );
}
