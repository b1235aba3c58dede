//! `command` faults: operator-supplied inject and revert commands, and what counts as
//! their success (exit code 0).
//!
//! They run through [`crate::chaos::process`] (their turn, a process group of their own,
//! capped output, the timeout): a timeout or an abort kills the command and everything it
//! started in the foreground. A command that leaves a background child holding its
//! output pipes does not hold the runner: output is read only until shortly after the
//! command itself exits ([`AfterExit::Grace`]), and the child is left running (an inject
//! may start a process its revert stops).

use std::time::Duration;

use crate::catalog::experiment::CommandLine;
use crate::chaos::process::{self, AfterExit, ProcessError, RunSettings};

pub(crate) use crate::chaos::process::program_name;

/// Time a command may run when its file sets no `timeout`.
pub(crate) const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Most bytes of standard output or error kept from one command.
const OUTPUT_LIMIT: usize = 64 * 1024;

/// Why a command could not run or did not succeed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CommandError {
    /// The argument list is empty.
    #[error("the command is empty")]
    Empty,
    /// The program could not be started.
    #[error("cannot start '{program}': {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Waiting for the command failed.
    #[error("cannot wait for '{program}': {source}")]
    Wait {
        /// The program.
        program: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The command ran longer than its timeout and was killed.
    #[error("'{program}' did not finish within {timeout:?} and was killed")]
    TimedOut {
        /// The program.
        program: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The command exited with a non-zero status (or was killed by a signal).
    #[error("'{program}' exited with {status}{}", stderr_suffix(.stderr))]
    Failed {
        /// The program.
        program: String,
        /// `status 3` or `signal 9`.
        status: String,
        /// The end of its standard error.
        stderr: String,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

/// What a finished command printed and how it exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommandOutput {
    /// Exit code; `None` when a signal ended it.
    pub(crate) code: Option<i32>,
    /// Signal that ended it, if any.
    pub(crate) signal: Option<i32>,
    /// Standard output (lossy UTF-8, at most 64 KiB).
    pub(crate) stdout: String,
    /// Standard error (lossy UTF-8, at most 64 KiB).
    pub(crate) stderr: String,
}

/// Runs `line` to completion (or its timeout) and returns what it printed.
pub(crate) async fn run(line: &CommandLine) -> Result<CommandOutput, CommandError> {
    let settings = RunSettings {
        stdout_limit: OUTPUT_LIMIT,
        stderr_limit: OUTPUT_LIMIT,
        timeout: Some(
            line.timeout
                .map(|t| t.duration())
                .unwrap_or(DEFAULT_COMMAND_TIMEOUT),
        ),
        after_exit: AfterExit::Grace,
    };
    let program = program_name(line);
    let exited = process::run(line, &settings)
        .await
        .map_err(|err| match err {
            ProcessError::Empty => CommandError::Empty,
            ProcessError::Spawn(source) => CommandError::Spawn { program, source },
            ProcessError::Wait(source) => CommandError::Wait { program, source },
            ProcessError::TimedOut(timeout) => CommandError::TimedOut { program, timeout },
        })?;
    Ok(CommandOutput {
        code: exited.code(),
        signal: exited.signal(),
        stdout: String::from_utf8_lossy(&exited.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&exited.stderr).into_owned(),
    })
}

/// Runs `line` and treats anything but exit code 0 as an error.
pub(crate) async fn run_checked(line: &CommandLine) -> Result<CommandOutput, CommandError> {
    let output = run(line).await?;
    if output.code == Some(0) {
        return Ok(output);
    }
    let status = match (output.code, output.signal) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => "an unknown status".to_string(),
    };
    let tail: String = {
        let trimmed = output.stderr.trim();
        let start = trimmed.char_indices().rev().nth(199).map_or(0, |(i, _)| i);
        trimmed[start..].to_string()
    };
    Err(CommandError::Failed {
        program: program_name(line),
        status,
        stderr: tail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Span;

    fn line(argv: &[&str], shell: bool, timeout_ms: Option<u64>) -> CommandLine {
        CommandLine {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            shell,
            timeout: timeout_ms.map(Span::from_millis),
            ..CommandLine::default()
        }
    }

    #[tokio::test]
    async fn runs_without_a_shell_by_default() {
        let out = run(&line(&["echo", "a b", "$HOME"], false, None))
            .await
            .unwrap();
        assert_eq!(out.stdout, "a b $HOME\n");
        assert_eq!(out.code, Some(0));
    }

    #[tokio::test]
    async fn shell_true_runs_through_sh() {
        let out = run(&line(&["echo $((1 + 2));", "exit 3"], true, None))
            .await
            .unwrap();
        assert_eq!(out.stdout, "3\n");
        assert_eq!(out.code, Some(3));
        let err = run_checked(&line(&["echo boom >&2; exit 3"], true, None))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "'sh -c' exited with status 3: boom");
    }

    #[tokio::test]
    async fn a_timeout_kills_the_command() {
        let started = std::time::Instant::now();
        let err = run(&line(&["sleep 5"], true, Some(200))).await.unwrap_err();
        assert!(matches!(err, CommandError::TimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_background_child_does_not_hold_the_command() {
        let started = std::time::Instant::now();
        let out = run(&line(&["sleep 2 & echo started"], true, Some(5_000)))
            .await
            .unwrap();
        assert_eq!(out.stdout, "started\n");
        assert!(started.elapsed() < Duration::from_millis(1_500));
    }

    #[tokio::test]
    async fn a_missing_program_is_an_error() {
        let err = run(&line(&["/nonexistent/chaosgate-x"], false, None))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot start '/nonexistent/chaosgate-x'"),
            "{err}"
        );
    }
}
