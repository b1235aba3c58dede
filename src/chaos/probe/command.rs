//! Command probes: run a local command and judge its exit code and, optionally, its
//! standard output with a typed comparison (numbers ignore surrounding whitespace, text
//! loses only its trailing line ends: see [`super::compare`]).
//!
//! `argv` runs without a shell (`sh -c` only with `shell: true`), in a process group of
//! its own with standard input closed, and waits for its turn with the fault commands
//! (see [`crate::chaos::fault::command::start`]; the wait counts towards the timeout). When an attempt is cut off, the whole group is
//! killed, so a shell's children do not outlive it. The command inherits the worker's
//! environment; failure texts name only the program (never its arguments or
//! environment, which may hold secrets) plus the first line of its standard error.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

use super::compare::{CompareFailure, compare, shorten};
use crate::catalog::experiment::{CommandLine, CommandProbe};

/// At most this much of standard output is kept and judged.
const STDOUT_LIMIT: usize = 1024 * 1024;
/// At most this much of standard error is kept for the failure text.
const STDERR_LIMIT: usize = 16 * 1024;

/// Why a command probe attempt failed, e.g. "command 'check.sh': exited with 1, expected 0".
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("command '{program}': {reason}")]
pub struct CommandFailure {
    /// The program (`sh -c` for shell commands), without its arguments.
    pub program: String,
    /// What went wrong.
    pub reason: CommandReason,
}

/// What went wrong with a command probe attempt.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandReason {
    /// `argv` is empty.
    #[error("argv is empty")]
    Empty,
    /// The program could not be started.
    #[error("could not start: {0}")]
    Spawn(String),
    /// Waiting for the program failed.
    #[error("waiting for it failed: {0}")]
    Wait(String),
    /// The program was killed by a signal it did not expect.
    #[error("killed by signal {0}{1}")]
    Signal(i32, Stderr),
    /// The exit code differs from the expected one.
    #[error("exited with {got}, expected {want}{stderr}")]
    Exit {
        /// The exit code.
        got: i32,
        /// The probe's `exit_code`.
        want: i32,
        /// The first line of standard error, if any.
        stderr: Stderr,
    },
    /// The standard output does not satisfy the comparison.
    #[error("stdout {0}")]
    Stdout(CompareFailure),
    /// The attempt's timeout passed; the command was killed.
    #[error("still running after {0} ms, killed")]
    TimedOut(u128),
}

/// The first line of a command's standard error, shown as "; stderr: ..." when not empty.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stderr(pub String);

impl std::fmt::Display for Stderr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, "; stderr: {}", self.0)
        }
    }
}

/// A started command; dropping it before it finished kills its whole process group.
struct Running {
    child: Child,
    /// The process group (the child's pid), while it may still hold live processes.
    group: Option<i32>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(group) = self.group.take() {
            // SAFETY: kill(2) has no memory-safety preconditions. The group id is the pid
            // of our child, which has not been reaped yet (or has members left), so it
            // cannot name another process group.
            unsafe {
                libc::kill(-group, libc::SIGKILL);
            }
        }
        // `kill_on_drop` then kills (and tokio reaps) the child itself.
    }
}

/// One attempt: run the command, wait for it, judge exit code and output.
pub(super) async fn attempt(probe: &CommandProbe) -> Result<(), CommandFailure> {
    let fail = |reason: CommandReason| CommandFailure {
        program: program(&probe.command),
        reason,
    };
    let command = build(&probe.command).ok_or_else(|| fail(CommandReason::Empty))?;
    let (child, _turn) = crate::chaos::fault::command::start(command)
        .await
        .map_err(|err| fail(CommandReason::Spawn(super::io_reason(&err))))?;
    let group = child.id().and_then(|pid| i32::try_from(pid).ok());
    let mut running = Running { child, group };
    let stdout = running.child.stdout.take();
    let stderr = running.child.stderr.take();
    let (status, out, err) = tokio::join!(
        running.child.wait(),
        read_capped(stdout, STDOUT_LIMIT),
        read_capped(stderr, STDERR_LIMIT)
    );
    // Finished, and every holder of its output is gone: nothing left to kill.
    running.group = None;
    let status = status.map_err(|e| fail(CommandReason::Wait(super::io_reason(&e))))?;
    let stderr = Stderr(first_line(&err));
    match status.code() {
        Some(code) if code == probe.exit_code => {}
        Some(code) => {
            return Err(fail(CommandReason::Exit {
                got: code,
                want: probe.exit_code,
                stderr,
            }));
        }
        None => {
            use std::os::unix::process::ExitStatusExt;
            return Err(fail(CommandReason::Signal(
                status.signal().unwrap_or(0),
                stderr,
            )));
        }
    }
    if let Some(comparison) = &probe.stdout {
        let text = String::from_utf8_lossy(&out);
        compare(&text, comparison).map_err(|e| fail(CommandReason::Stdout(e)))?;
    }
    Ok(())
}

/// The command as tokio runs it; `None` when `argv` is empty.
fn build(line: &CommandLine) -> Option<Command> {
    let mut command = if line.shell {
        let mut sh = Command::new("sh");
        sh.arg("-c").arg(line.argv.join(" "));
        if line.argv.is_empty() {
            return None;
        }
        sh
    } else {
        let (program, args) = line.argv.split_first()?;
        let mut direct = Command::new(program);
        direct.args(args);
        direct
    };
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    Some(command)
}

/// The program as failure texts name it.
fn program(line: &CommandLine) -> String {
    if line.shell {
        "sh -c".to_string()
    } else {
        line.argv.first().cloned().unwrap_or_default()
    }
}

/// Reads a pipe to its end, keeping at most `limit` bytes (the rest is read and dropped,
/// so the command never blocks on a full pipe).
async fn read_capped<R: AsyncRead + Unpin>(pipe: Option<R>, limit: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut pipe) = pipe else {
        return kept;
    };
    let mut buf = vec![0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    kept
}

/// The first non-empty line of `bytes`, shortened.
fn first_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    shorten(line, 200)
}

/// The failure of an attempt cut off after `limit`.
pub(super) fn timed_out(probe: &CommandProbe, limit: Duration) -> CommandFailure {
    CommandFailure {
        program: program(&probe.command),
        reason: CommandReason::TimedOut(limit.as_millis()),
    }
}
