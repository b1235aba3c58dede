//! `command` faults: operator-supplied inject and revert commands.
//!
//! Commands run without a shell unless the file says `shell: true` (then `sh -c` with the
//! argv entries joined by spaces, as command probes do). Each runs in its own
//! process group, so a timeout or an abort kills the command and everything it started in
//! the foreground. A command that leaves a background child holding its output pipes does
//! not hold the runner: output is read only until shortly after the command itself exits.
//!
//! Every command chaosgate runs (fault and probe commands alike) starts through
//! [`start`]: at most [`MAX_RUNNING`] run at once, and each is spawned on a blocking
//! thread, two at a time. Ten thousand experiments injecting at the same moment then neither run out of
//! file descriptors (each running command holds its pipes and a pidfd, and every spawn
//! copies the whole descriptor table) nor stall the runtime workers that drive the
//! probes' timers and sockets while the kernel forks and execs.

use std::io;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::catalog::experiment::CommandLine;

/// Time a command may run when its file sets no `timeout`.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Most bytes of standard output or error kept from one command.
const OUTPUT_LIMIT: usize = 64 * 1024;

/// How long output is still read after the command exits.
const OUTPUT_GRACE: Duration = Duration::from_millis(200);

/// At most this many commands (fault and probe commands together) run at once; more
/// wait for their turn.
pub const MAX_RUNNING: usize = 128;

static RUNNING: Semaphore = Semaphore::const_new(MAX_RUNNING);

/// At most this many commands are being started (forked and exec'd) at once: each start
/// occupies a thread until the program has been exec'd, and a burst of them would take
/// the CPU from the runtime's workers.
const MAX_STARTING: usize = 2;

static STARTING: Semaphore = Semaphore::const_new(MAX_STARTING);

/// A turn to run one command; hold it until the command has finished.
pub(crate) type CommandTurn = Option<SemaphorePermit<'static>>;

/// Starts `command` once its turn comes (see the module doc), on a blocking thread.
///
/// The returned turn must be held until the command has finished and its output is read.
pub(crate) async fn start(mut command: Command) -> io::Result<(Child, CommandTurn)> {
    // The semaphore is never closed, so this only fails in theory; go ahead then.
    let turn = RUNNING.acquire().await.ok();
    let starting = STARTING.acquire().await.ok();
    let child = tokio::task::spawn_blocking(move || {
        let child = command.spawn();
        drop(starting);
        child
    })
    .await
    .map_err(|join| io::Error::other(format!("the thread starting it failed: {join}")))??;
    Ok((child, turn))
}

/// Why a command could not run or did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
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
pub struct CommandOutput {
    /// Exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    /// Signal that ended it, if any.
    pub signal: Option<i32>,
    /// Standard output (lossy UTF-8, at most 64 KiB).
    pub stdout: String,
    /// Standard error (lossy UTF-8, at most 64 KiB).
    pub stderr: String,
}

/// Kills a command's process group when dropped before the command finished.
struct GroupKill {
    pgid: Option<i32>,
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid.filter(|p| *p > 1) {
            // SAFETY: kill(2) with a negative pid signals the process group we created for
            // this command (process_group(0) makes its pgid equal to its pid).
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

/// The program name used in messages: `sh -c` for `shell: true`, else argv[0] (never the
/// arguments or a script, which may hold secrets).
pub fn program_name(line: &CommandLine) -> String {
    if line.shell {
        return "sh -c".to_string();
    }
    line.argv.first().cloned().unwrap_or_default()
}

/// Runs `line` to completion (or its timeout) and returns what it printed.
pub async fn run(line: &CommandLine) -> Result<CommandOutput, CommandError> {
    let program = program_name(line);
    let Some(first) = line.argv.first() else {
        return Err(CommandError::Empty);
    };
    let mut command = if line.shell {
        let mut c = Command::new("sh");
        c.arg("-c").arg(line.argv.join(" "));
        c
    } else {
        let mut c = Command::new(first);
        c.args(&line.argv[1..]);
        c
    };
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let (mut child, _turn) = start(command).await.map_err(|source| CommandError::Spawn {
        program: program.clone(),
        source,
    })?;
    let mut group = GroupKill {
        pgid: child.id().and_then(|id| i32::try_from(id).ok()),
    };
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        child
            .stdout
            .take()
            .map(|pipe| read_into(pipe, stdout.clone())),
        child
            .stderr
            .take()
            .map(|pipe| read_into(pipe, stderr.clone())),
    ];
    let timeout = line
        .timeout
        .map(|t| t.duration())
        .unwrap_or(DEFAULT_COMMAND_TIMEOUT);
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(source)) => return Err(CommandError::Wait { program, source }),
        Err(_) => return Err(CommandError::TimedOut { program, timeout }),
    };
    group.pgid = None;
    for reader in readers.into_iter().flatten() {
        // Output still open after the command exited belongs to a background child.
        let abort = reader.abort_handle();
        if tokio::time::timeout(OUTPUT_GRACE, reader).await.is_err() {
            abort.abort();
        }
    }
    let text = |buf: &Arc<Mutex<Vec<u8>>>| {
        let bytes = buf.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    use std::os::unix::process::ExitStatusExt;
    Ok(CommandOutput {
        code: status.code(),
        signal: status.signal(),
        stdout: text(&stdout),
        stderr: text(&stderr),
    })
}

fn read_into<R>(mut pipe: R, buf: Arc<Mutex<Vec<u8>>>) -> tokio::task::JoinHandle<()>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            if let Ok(mut b) = buf.lock() {
                let room = OUTPUT_LIMIT.saturating_sub(b.len());
                b.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
    })
}

/// Runs `line` and treats anything but exit code 0 as an error.
pub async fn run_checked(line: &CommandLine) -> Result<CommandOutput, CommandError> {
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
