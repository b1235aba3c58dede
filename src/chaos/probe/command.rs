//! Command probes: run a local command and judge its exit code and, optionally, its
//! standard output with a typed comparison (numbers ignore surrounding whitespace, text
//! loses only its trailing line ends: see [`super::compare`]).
//!
//! The command runs through [`crate::chaos::process`]: without a shell (`sh -c` only
//! with `shell: true`), in a process group of its own with standard input closed, after
//! waiting for its turn with the fault commands (the wait counts towards the timeout).
//! Its output is read until every process holding it has closed it
//! ([`AfterExit::UntilClosed`]); when an attempt is cut off, the whole group is killed, so
//! a shell's children do not outlive it. The command inherits the worker's environment;
//! failure texts name only the program (never its arguments or environment, which may
//! hold secrets) plus the first line of its standard error.

use std::time::Duration;

use super::compare::{CompareFailure, compare, shorten};
use crate::catalog::experiment::CommandProbe;
use crate::chaos::process::{self, AfterExit, ProcessError, RunSettings, program_name};

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

/// How a probe's command runs: its output kept up to these limits and read to its end;
/// the caller's attempt timeout bounds it.
const SETTINGS: RunSettings = RunSettings {
    stdout_limit: STDOUT_LIMIT,
    stderr_limit: STDERR_LIMIT,
    timeout: None,
    after_exit: AfterExit::UntilClosed,
};

/// One attempt: run the command, wait for it, judge exit code and output.
pub(super) async fn attempt(probe: &CommandProbe) -> Result<(), CommandFailure> {
    let fail = |reason: CommandReason| CommandFailure {
        program: program_name(&probe.command),
        reason,
    };
    let exited = process::run(&probe.command, &SETTINGS)
        .await
        .map_err(|err| {
            fail(match err {
                ProcessError::Empty => CommandReason::Empty,
                ProcessError::Spawn(err) => CommandReason::Spawn(super::io_reason(&err)),
                ProcessError::Wait(err) => CommandReason::Wait(super::io_reason(&err)),
                ProcessError::TimedOut(limit) => CommandReason::TimedOut(limit.as_millis()),
            })
        })?;
    let stderr = Stderr(first_line(&exited.stderr));
    match exited.code() {
        Some(code) if code == probe.exit_code => {}
        Some(code) => {
            return Err(fail(CommandReason::Exit {
                got: code,
                want: probe.exit_code,
                stderr,
            }));
        }
        None => {
            return Err(fail(CommandReason::Signal(
                exited.signal().unwrap_or(0),
                stderr,
            )));
        }
    }
    if let Some(comparison) = &probe.stdout {
        let text = String::from_utf8_lossy(&exited.stdout);
        compare(&text, comparison).map_err(|e| fail(CommandReason::Stdout(e)))?;
    }
    Ok(())
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
        program: program_name(&probe.command),
        reason: CommandReason::TimedOut(limit.as_millis()),
    }
}
