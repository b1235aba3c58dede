//! Running one local command, for fault and probe commands alike: its turn, its process
//! group, its output, its timeout.
//!
//! A command runs without a shell unless its file says `shell: true` (then `sh -c` with
//! the argv entries joined by spaces), with standard input closed, in a process group of
//! its own: a timeout, or a caller that drops [`run`]'s future, kills the whole group, so
//! a shell's children do not outlive it. Its standard output and error are kept up to a
//! limit each and the rest is read and dropped, so the command never blocks on a full
//! pipe. Failure texts name only the program ([`program_name`]), never its arguments,
//! which may hold secrets.
//!
//! A command's environment is clean: `PATH`, `HOME` and `LANG` from the worker, the
//! worker variables its file names in `env_from_worker`, and its own `env`; nothing else
//! of the worker's environment, where the worker's credentials travel
//! (`CHAOSGATE_KAFKA__PROPERTIES__SASL_PASSWORD`), reaches it.
//!
//! Every command chaosgate runs starts through `start`: at most [`MAX_RUNNING`] run at
//! once, and each is spawned on a blocking thread, two at a time. Ten thousand
//! experiments injecting at the same moment then neither run out of file descriptors
//! (each running command holds its pipes and a pidfd, and every spawn copies the whole
//! descriptor table) nor stall the runtime workers that drive the probes' timers and
//! sockets while the kernel forks and execs.
//!
//! This module runs and reports; what counts as success is the caller's judgement
//! (`fault::command` wants exit code 0, a command probe its `exit_code` and output).

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::task::JoinHandle;

use crate::catalog::experiment::CommandLine;

/// At most this many commands (fault and probe commands together) run at once; more
/// wait for their turn.
pub(crate) const MAX_RUNNING: usize = 128;

static RUNNING: Semaphore = Semaphore::const_new(MAX_RUNNING);

/// At most this many commands are being started (forked and exec'd) at once: each start
/// occupies a thread until the program has been exec'd, and a burst of them would take
/// the CPU from the runtime's workers.
const MAX_STARTING: usize = 2;

static STARTING: Semaphore = Semaphore::const_new(MAX_STARTING);

/// How long output is still read after the command exits, under [`AfterExit::Grace`].
const OUTPUT_GRACE: Duration = Duration::from_millis(200);

/// A turn to run one command; hold it until the command has finished.
type CommandTurn = Option<SemaphorePermit<'static>>;

/// Starts `command` once its turn comes (see the module doc), on a blocking thread.
///
/// The returned turn must be held until the command has finished and its output is read.
async fn start(mut command: Command) -> io::Result<(Child, CommandTurn)> {
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

/// The program name used in failure texts: `sh -c` for `shell: true`, else `argv[0]`
/// (never the arguments or a script, which may hold secrets).
pub(crate) fn program_name(line: &CommandLine) -> String {
    if line.shell {
        return "sh -c".to_string();
    }
    line.argv.first().cloned().unwrap_or_default()
}

/// What [`run`] does once the command itself has exited while something it started
/// still holds its output open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterExit {
    /// Read output for 200 ms more, then stop reading and leave whatever still holds it
    /// running: a fault's inject may start a background process its revert stops.
    Grace,
    /// Read output until every process holding it has closed it, the group still killed
    /// if the caller drops the future meanwhile: a probe judges the whole output, and
    /// its attempt's timeout bounds the wait.
    UntilClosed,
}

/// How [`run`] runs one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSettings {
    /// Most bytes of standard output kept.
    pub(crate) stdout_limit: usize,
    /// Most bytes of standard error kept.
    pub(crate) stderr_limit: usize,
    /// Time the command may run before its group is killed ([`ProcessError::TimedOut`]);
    /// `None` when the caller bounds it by dropping the future.
    pub(crate) timeout: Option<Duration>,
    /// What happens after the command exits.
    pub(crate) after_exit: AfterExit,
}

/// A command that ran to its exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exited {
    /// How it exited.
    pub(crate) status: ExitStatus,
    /// Standard output, at most [`RunSettings::stdout_limit`] bytes.
    pub(crate) stdout: Vec<u8>,
    /// Standard error, at most [`RunSettings::stderr_limit`] bytes.
    pub(crate) stderr: Vec<u8>,
}

impl Exited {
    /// The exit code; `None` when a signal ended it.
    pub(crate) fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// The signal that ended it, if any.
    pub(crate) fn signal(&self) -> Option<i32> {
        self.status.signal()
    }
}

/// Why a command did not run to its exit.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The argument list is empty.
    #[error("the command is empty")]
    Empty,
    /// The program could not be started.
    #[error("cannot start it: {0}")]
    Spawn(io::Error),
    /// Waiting for it failed.
    #[error("cannot wait for it: {0}")]
    Wait(io::Error),
    /// It ran longer than [`RunSettings::timeout`] (given here) and its group was killed.
    #[error("it did not finish within {0:?} and was killed")]
    TimedOut(Duration),
}

/// Runs `line` under `settings` (see the module doc) once its turn comes, and returns
/// how it exited and what it printed.
pub async fn run(line: &CommandLine, settings: &RunSettings) -> Result<Exited, ProcessError> {
    let command = build(line).ok_or(ProcessError::Empty)?;
    let (mut child, _turn) = start(command).await.map_err(ProcessError::Spawn)?;
    let mut group = GroupKill {
        pgid: child.id().and_then(|id| i32::try_from(id).ok()),
    };
    let stdout = CappedReader::spawn(child.stdout.take(), settings.stdout_limit);
    let stderr = CappedReader::spawn(child.stderr.take(), settings.stderr_limit);
    let status = match settings.timeout {
        Some(timeout) => match tokio::time::timeout(timeout, child.wait()).await {
            Ok(waited) => waited,
            Err(_) => return Err(ProcessError::TimedOut(timeout)),
        },
        None => child.wait().await,
    }
    .map_err(ProcessError::Wait)?;
    let (stdout, stderr) = match settings.after_exit {
        AfterExit::Grace => {
            group.pgid = None;
            // Output still open after the command exited belongs to a background child.
            (
                stdout.finish(Some(OUTPUT_GRACE)).await,
                stderr.finish(Some(OUTPUT_GRACE)).await,
            )
        }
        AfterExit::UntilClosed => {
            let output = tokio::join!(stdout.finish(None), stderr.finish(None));
            // Finished, and every holder of its output is gone: nothing left to kill.
            group.pgid = None;
            output
        }
    };
    Ok(Exited {
        status,
        stdout,
        stderr,
    })
}

/// The command as tokio runs it; `None` when `argv` is empty.
fn build(line: &CommandLine) -> Option<Command> {
    let (program, args) = line.argv.split_first()?;
    let mut command = if line.shell {
        let mut sh = Command::new("sh");
        sh.arg("-c").arg(line.argv.join(" "));
        sh
    } else {
        let mut direct = Command::new(program);
        direct.args(args);
        direct
    };
    clean_environment(&mut command, line, |name| std::env::var_os(name));
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    Some(command)
}

/// The worker's variables every command sees (when the worker has them): what a program
/// needs to be found, to find its files and to speak the operator's language.
const BASE_VARIABLES: [&str; 3] = ["PATH", "HOME", "LANG"];

/// `PATH` when the worker has none, so `sh` and plain program names are still found.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Gives `command` the environment `line` declares and nothing of the worker's beyond
/// [`BASE_VARIABLES`] and `line.env_from_worker` (read through `worker`); `line.env`
/// wins over both (see `CommandLine`).
fn clean_environment(
    command: &mut Command,
    line: &CommandLine,
    worker: impl Fn(&str) -> Option<std::ffi::OsString>,
) {
    command.env_clear();
    for name in BASE_VARIABLES
        .iter()
        .copied()
        .chain(line.env_from_worker.iter().map(String::as_str))
    {
        if let Some(value) = worker(name) {
            command.env(name, value);
        }
    }
    if worker("PATH").is_none() {
        command.env("PATH", DEFAULT_PATH);
    }
    command.envs(&line.env);
}

/// Kills a command's process group when dropped before the command finished.
struct GroupKill {
    pgid: Option<i32>,
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid.filter(|p| *p > 1) {
            // SAFETY: kill(2) has no memory-safety preconditions. With a negative pid it
            // signals the process group we created for this command (process_group(0)
            // makes its pgid equal to its pid), and the child has not been reaped yet
            // (or its group has members left), so the id cannot name another group.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        // `kill_on_drop` then kills (and tokio reaps) the child itself.
    }
}

/// One output pipe, read to its end on a task of its own, keeping at most `limit` bytes
/// (the rest is read and dropped). Dropping it stops the reading.
struct CappedReader {
    kept: Arc<Mutex<Vec<u8>>>,
    task: Option<JoinHandle<()>>,
}

impl CappedReader {
    fn spawn<R>(pipe: Option<R>, limit: usize) -> CappedReader
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let kept = Arc::new(Mutex::new(Vec::new()));
        let task = pipe.map(|mut pipe| {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut chunk = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut kept) = kept.lock() {
                        let room = limit.saturating_sub(kept.len());
                        kept.extend_from_slice(&chunk[..n.min(room)]);
                    }
                }
            })
        });
        CappedReader { kept, task }
    }

    /// What was read once the pipe is closed, or once `wait` has passed.
    async fn finish(mut self, wait: Option<Duration>) -> Vec<u8> {
        if let Some(task) = self.task.as_mut() {
            match wait {
                Some(wait) => {
                    let _ = tokio::time::timeout(wait, task).await;
                }
                None => {
                    let _ = task.await;
                }
            }
        }
        self.kept
            .lock()
            .map(|kept| kept.clone())
            .unwrap_or_default()
    }
}

impl Drop for CappedReader {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(argv: &[&str], shell: bool) -> CommandLine {
        CommandLine {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            shell,
            ..CommandLine::default()
        }
    }

    fn settings(limit: usize, after_exit: AfterExit) -> RunSettings {
        RunSettings {
            stdout_limit: limit,
            stderr_limit: limit,
            timeout: Some(Duration::from_secs(30)),
            after_exit,
        }
    }

    #[test]
    fn program_names_hide_arguments() {
        assert_eq!(
            program_name(&line(&["check.sh", "--token", "t"], false)),
            "check.sh"
        );
        assert_eq!(program_name(&line(&["echo secret"], true)), "sh -c");
        assert_eq!(program_name(&line(&[], false)), "");
    }

    #[tokio::test]
    async fn output_is_capped_and_the_rest_drained() {
        // 1 MiB on each pipe: a command blocked on a full pipe would never exit.
        let exited = run(
            &line(
                &["head -c 1048576 /dev/zero; head -c 1048576 /dev/zero >&2"],
                true,
            ),
            &settings(100, AfterExit::UntilClosed),
        )
        .await
        .unwrap();
        assert_eq!(exited.code(), Some(0));
        assert_eq!((exited.stdout.len(), exited.stderr.len()), (100, 100));
    }

    #[tokio::test]
    async fn an_empty_command_is_refused() {
        let err = run(&line(&[], true), &settings(10, AfterExit::Grace))
            .await
            .unwrap_err();
        assert!(matches!(err, ProcessError::Empty), "{err}");
    }

    #[test]
    fn a_command_gets_only_what_its_file_declares() {
        let worker: std::collections::HashMap<&str, &str> = [
            ("PATH", "/opt/bin:/usr/bin"),
            ("HOME", "/home/worker"),
            ("KUBECONFIG", "/etc/kube"),
            ("CHAOSGATE_KAFKA__PROPERTIES__SASL_PASSWORD", "s3cret"),
            ("AWS_PROFILE", "ops"),
        ]
        .into();
        let mut declared = line(&["env"], false);
        declared.env.insert("MODE".into(), "${HOME}".into());
        declared.env.insert("HOME".into(), "/tmp/probe".into());
        declared.env_from_worker = vec!["KUBECONFIG".into(), "MISSING".into()];
        let mut command = Command::new("env");
        clean_environment(&mut command, &declared, |name| {
            worker.get(name).map(std::ffi::OsString::from)
        });
        let mut got: Vec<(String, String)> = command
            .as_std()
            .get_envs()
            .filter_map(|(n, v)| Some((n.to_str()?.to_owned(), v?.to_str()?.to_owned())))
            .collect();
        got.sort();
        let want: Vec<(String, String)> = [
            ("HOME", "/tmp/probe"),
            ("KUBECONFIG", "/etc/kube"),
            ("MODE", "${HOME}"),
            ("PATH", "/opt/bin:/usr/bin"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        assert_eq!(got, want);

        let mut bare = Command::new("env");
        clean_environment(&mut bare, &line(&["env"], false), |_| None);
        let path: Vec<_> = bare.as_std().get_envs().collect();
        assert_eq!(
            path,
            [(
                std::ffi::OsStr::new("PATH"),
                Some(std::ffi::OsStr::new(DEFAULT_PATH))
            )]
        );
    }

    #[tokio::test]
    async fn until_closed_reads_what_a_background_child_prints() {
        let exited = run(
            &line(&["(sleep 0.5; echo late) & echo early"], true),
            &settings(1024, AfterExit::UntilClosed),
        )
        .await
        .unwrap();
        assert_eq!(String::from_utf8_lossy(&exited.stdout), "early\nlate\n");
    }
}
