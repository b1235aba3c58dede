//! When chaosgate is a container's first process (PID 1), the runner is its child.
//!
//! A PID namespace ends when its first process ends: the kernel then SIGKILLs every
//! other process in it (pid_namespaces(7)), the guards of injected faults included. A
//! worker that is PID 1 and is SIGKILLed or OOM-killed would take its guards with it, and
//! their faults would stay. So when a command that injects faults (`run`, `demo`,
//! `experiment run`) finds itself PID 1, it starts itself again as a child, the runner
//! proper, and stays as a minimal init ([`supervise`]):
//!
//! - SIGTERM, SIGINT, SIGHUP and SIGQUIT are passed on to the runner (after the runner is
//!   gone, to every process left, so guards revert and exit);
//! - every process that ends is reaped: guards are orphaned to PID 1 when the runner dies;
//! - once the runner has exited, the guards still running (reverting what it left) are
//!   waited for, at most [`GUARDS_GRACE`], before the container ends with the runner's
//!   status (128 + the signal when a signal ended it, as a shell reports it).
//!
//! The rule that keeps it right: PID 1 never exits while a guard it could wait for is
//! still reverting, within the grace.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

/// The longest the first process waits for guards once the runner has exited.
pub const GUARDS_GRACE: Duration = Duration::from_secs(60);

/// The signals the first process handles itself (`SIGCHLD`) or passes on.
const PASSED_ON: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];

/// Whether this process is the first of its PID namespace (a container's PID 1).
pub fn is_first_process() -> bool {
    std::process::id() == 1
}

/// Runs this same command line as a child and supervises it as described in the module
/// doc; returns the child's exit status. Errors: the signal mask could not be set or the
/// child could not be started.
pub fn supervise() -> anyhow::Result<ExitCode> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut handled: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut before: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: the sets are valid, owned by this frame; no other thread runs yet (this is
    // called from `main` before any runtime starts).
    unsafe {
        libc::sigemptyset(&mut handled);
        for signal in PASSED_ON.iter().chain(&[libc::SIGCHLD]) {
            libc::sigaddset(&mut handled, *signal);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &handled, &mut before) != 0 {
            return Err(std::io::Error::last_os_error())
                .context("PID 1: cannot block the signals it passes on");
        }
    }
    let exe = std::env::current_exe().context("PID 1: cannot find the chaosgate binary")?;
    let mut command = std::process::Command::new(&exe);
    command.args(std::env::args_os().skip(1));
    // SAFETY: pthread_sigmask is async-signal-safe and touches only the copied set; it
    // runs in the forked child before exec, which gives the runner the usual mask back.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
            if libc::pthread_sigmask(libc::SIG_SETMASK, &before, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let runner = command
        .spawn()
        .with_context(|| format!("PID 1: cannot start {} as the runner", exe.display()))?;
    let runner = i32::try_from(runner.id()).context("PID 1: the runner's pid")?;
    let mut status: Option<ExitCode> = None;
    let mut ended_at: Option<Instant> = None;
    loop {
        if let Some(code) = reap(runner, &mut status, &mut ended_at) {
            return Ok(code);
        }
        if let (Some(code), Some(at)) = (&status, ended_at)
            && at.elapsed() >= GUARDS_GRACE
        {
            eprintln!(
                "chaosgate (PID 1): guards still running {GUARDS_GRACE:?} after the runner exited; exiting"
            );
            return Ok(*code);
        }
        let timeout = libc::timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        // SAFETY: the set and the timeout are valid; no siginfo is asked for.
        let signal = unsafe { libc::sigtimedwait(&handled, std::ptr::null_mut(), &timeout) };
        if PASSED_ON.contains(&signal) {
            // Before the runner ends, to it alone; after, to every process left (-1: all
            // this process may signal but itself, i.e. the guards in this namespace).
            let to = if status.is_none() { runner } else { -1 };
            // SAFETY: kill(2) has no memory effects.
            unsafe { libc::kill(to, signal) };
        }
    }
}

/// Reaps every process that has ended. Records the runner's status when it is among
/// them; returns it once no process is left to wait for.
fn reap(
    runner: i32,
    status: &mut Option<ExitCode>,
    ended_at: &mut Option<Instant>,
) -> Option<ExitCode> {
    loop {
        let mut raw = 0;
        // SAFETY: `raw` is a valid place for the status.
        let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
        if pid == runner {
            *status = Some(exit_code(raw));
            *ended_at = Some(Instant::now());
        } else if pid > 0 {
            continue;
        } else if pid == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD)
        {
            // No child left at all.
            return *status;
        } else {
            // Children left, none ended (0), or an interrupted call: wait for a signal.
            return None;
        }
    }
}

/// A shell's view of a wait status: the exit code, or 128 + the signal.
fn exit_code(raw: libc::c_int) -> ExitCode {
    let code = if libc::WIFEXITED(raw) {
        libc::WEXITSTATUS(raw)
    } else if libc::WIFSIGNALED(raw) {
        128 + libc::WTERMSIG(raw)
    } else {
        1
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
