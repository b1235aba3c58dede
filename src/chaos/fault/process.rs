//! `process` faults: a signal to a local process found by pid file or exact name.
//!
//! `kill` sends one signal (default SIGTERM) and has nothing to revert: a signal cannot be
//! taken back, and what the process does with it (exit, reload, restart by its
//! supervisor) is the fault itself. `pause` sends SIGSTOP on inject and SIGCONT on revert.
//! A name matches `/proc/PID/comm` exactly and every matching process is hit, as
//! `pkill -x` would; chaosgate itself and pid 1 never are.
//!
//! The rule that keeps a revert honest: **a pause's revert is confirmed, not assumed.**
//! Inject records each process's start time (`/proc/PID/stat` field 22, in clock ticks
//! since boot); revert sends SIGCONT only to a pid that still has that start time (a
//! different one means the paused process is gone and the pid recycled: nothing of ours is
//! left stopped, and a stranger is not signalled), then reads the state again until the
//! process is no longer stopped (`T`, or `t` when a tracer holds it). A process still
//! stopped, or whose state cannot be read, is [`ProcessError::NotResumed`] naming the pid.

use std::path::Path;

use crate::catalog::experiment::{ProcessAction, ProcessFault};

/// Why a process fault could not be applied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProcessError {
    /// Neither `pid_file` nor `name` is set.
    #[error("a process fault needs a pid_file or a name")]
    NoSelector,
    /// The pid file could not be read.
    #[error("cannot read pid file {path}: {source}")]
    PidFile {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The pid file does not hold a usable pid.
    #[error("pid file {path} holds '{text}', not a process id")]
    BadPid {
        /// The file.
        path: String,
        /// What it holds.
        text: String,
    },
    /// No running process matched.
    #[error("no running process {0}")]
    NotFound(String),
    /// The signal name is unknown.
    #[error(
        "unknown signal '{0}' (use e.g. SIGTERM, SIGKILL, SIGINT, SIGHUP, SIGUSR1 or a number)"
    )]
    UnknownSignal(String),
    /// A paused process could not be shown running again after SIGCONT.
    #[error("process {pid} may still be stopped: {reason}")]
    NotResumed {
        /// The process.
        pid: i32,
        /// What was seen instead.
        reason: String,
    },
    /// `/proc/PID/stat` could not be read or parsed.
    #[error("cannot read the state of process {pid}: {reason}")]
    Stat {
        /// The process.
        pid: i32,
        /// Why.
        reason: String,
    },
    /// kill(2) failed.
    #[error("cannot send signal {signal} to pid {pid}: {source}")]
    Signal {
        /// The process.
        pid: i32,
        /// The signal number.
        signal: i32,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Processes a fault acted on, kept so that revert can undo a pause.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Signalled {
    /// What was done.
    pub(crate) action: ProcessAction,
    /// The processes hit.
    pub(crate) pids: Vec<i32>,
    /// Their start times, in the order of `pids` (`/proc/PID/stat` field 22, clock ticks
    /// since boot), which tell a paused process from a later one given the same pid.
    pub(crate) start_times: Vec<u64>,
}

/// A process's state letter and start time, read from `/proc/PID/stat`.
///
/// `Ok(None)` when there is no such process. The state is field 3 (`R`, `S`, `D`, `T`
/// stopped, `t` tracing stop, `Z`, ...) and the start time field 22, per proc(5); the
/// command name (field 2) is in parentheses and may hold spaces or `)`, so fields are
/// counted after its last `)`.
pub(crate) fn stat(pid: i32) -> Result<Option<(char, u64)>, ProcessError> {
    let path = format!("/proc/{pid}/stat");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ProcessError::Stat {
                pid,
                reason: format!("{path}: {e}"),
            });
        }
    };
    let bad = || ProcessError::Stat {
        pid,
        reason: format!("{path} does not parse: '{}'", text.trim()),
    };
    let after_comm = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(bad)?;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // fields[0] is field 3 (state), so field 22 (starttime) is fields[19].
    let state = fields
        .first()
        .and_then(|f| f.chars().next())
        .ok_or_else(bad)?;
    let start = fields
        .get(19)
        .and_then(|f| f.parse().ok())
        .ok_or_else(bad)?;
    Ok(Some((state, start)))
}

/// The signal number for a name such as `SIGTERM`, `TERM` or `9`.
pub(crate) fn signal_number(name: &str) -> Result<i32, ProcessError> {
    let upper = name.trim().to_ascii_uppercase();
    if let Ok(n) = upper.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        return Err(ProcessError::UnknownSignal(name.to_string()));
    }
    let short = upper.strip_prefix("SIG").unwrap_or(&upper);
    let number = match short {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ABRT" => libc::SIGABRT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        _ => return Err(ProcessError::UnknownSignal(name.to_string())),
    };
    Ok(number)
}

/// The processes `fault` selects: the pid in its pid file, or every process named `name`.
pub(crate) fn find(fault: &ProcessFault) -> Result<Vec<i32>, ProcessError> {
    let own = std::process::id();
    let allowed = |pid: i32| pid > 1 && u32::try_from(pid).ok() != Some(own);
    if let Some(path) = &fault.pid_file {
        let text = std::fs::read_to_string(path).map_err(|source| ProcessError::PidFile {
            path: path.clone(),
            source,
        })?;
        let bad = || ProcessError::BadPid {
            path: path.clone(),
            text: text.trim().to_string(),
        };
        let pid: i32 = text.trim().parse().map_err(|_| bad())?;
        if !allowed(pid) {
            return Err(bad());
        }
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return Err(ProcessError::NotFound(format!(
                "with pid {pid} (from {path})"
            )));
        }
        return Ok(vec![pid]);
    }
    let Some(name) = &fault.name else {
        return Err(ProcessError::NoSelector);
    };
    let mut pids = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            if comm.trim_end_matches('\n') == name && allowed(pid) {
                pids.push(pid);
            }
        }
    }
    pids.sort_unstable();
    if pids.is_empty() {
        return Err(ProcessError::NotFound(format!("named '{name}'")));
    }
    Ok(pids)
}

/// Sends `signal` to `pid`; a process that is already gone is not an error when
/// `gone_ok` is set.
fn send(pid: i32, signal: i32, gone_ok: bool) -> Result<(), ProcessError> {
    // SAFETY: kill(2) takes plain integers; `pid` is a single positive process id
    // (find() never returns 0, 1, negatives or our own pid).
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        return Ok(());
    }
    let source = std::io::Error::last_os_error();
    if gone_ok && source.raw_os_error() == Some(libc::ESRCH) {
        return Ok(());
    }
    Err(ProcessError::Signal {
        pid,
        signal,
        source,
    })
}

/// The processes `fault` would hit, with their start times, before any signal: what a
/// pause's guard holds (see [`crate::chaos::fault::guard`]) and what [`signal`] then hits.
pub(crate) fn resolve(fault: &ProcessFault) -> Result<Signalled, ProcessError> {
    let pids = find(fault)?;
    let mut start_times = Vec::with_capacity(pids.len());
    for pid in &pids {
        match stat(*pid)? {
            Some((_, start)) => start_times.push(start),
            None => return Err(ProcessError::NotFound(format!("with pid {pid}"))),
        }
    }
    Ok(Signalled {
        action: fault.action,
        pids,
        start_times,
    })
}

/// Applies the fault to the processes [`resolve`] found: one signal for `kill`, SIGSTOP
/// for `pause`.
///
/// Each process must still have the start time it was resolved with (else it is gone, or
/// its pid was recycled: [`ProcessError::NotFound`], nothing signalled). When a signal
/// fails part-way, the processes already paused are resumed before the error is returned,
/// so a failed inject leaves nothing behind.
pub(crate) fn signal(
    fault: &ProcessFault,
    resolved: &Signalled,
) -> Result<Signalled, ProcessError> {
    let signal = match fault.action {
        ProcessAction::Kill => signal_number(fault.signal.as_deref().unwrap_or("SIGTERM"))?,
        ProcessAction::Pause => libc::SIGSTOP,
    };
    for (pid, start) in resolved.pids.iter().zip(&resolved.start_times) {
        if !matches!(stat(*pid)?, Some((_, now)) if now == *start) {
            return Err(ProcessError::NotFound(format!(
                "with pid {pid} (it exited after it was selected)"
            )));
        }
    }
    let pids = &resolved.pids;
    for (i, pid) in pids.iter().enumerate() {
        if let Err(err) = send(*pid, signal, false) {
            if fault.action == ProcessAction::Pause {
                for done in &pids[..i] {
                    let _ = send(*done, libc::SIGCONT, true);
                }
            }
            return Err(err);
        }
    }
    Ok(Signalled {
        action: fault.action,
        pids: pids.clone(),
        start_times: resolved.start_times.clone(),
    })
}

/// How long revert reads a resumed process's state before calling it still stopped.
const RESUME_CHECKS: u32 = 20;
const RESUME_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

/// Resumes one paused process and confirms it is no longer stopped.
///
/// `Ok` when it runs again, or when it is gone or `pid` now belongs to a process started
/// at another time than `start` (nothing of ours is left stopped; the stranger is not
/// signalled). Without a known `start`, any process with that pid is taken as ours.
fn resume(pid: i32, start: Option<u64>) -> Result<(), ProcessError> {
    let not_resumed = |err: ProcessError| ProcessError::NotResumed {
        pid,
        reason: err.to_string(),
    };
    let ours = || -> Result<Option<char>, ProcessError> {
        Ok(stat(pid)
            .map_err(not_resumed)?
            .filter(|(_, s)| start.is_none_or(|start| *s == start))
            .map(|(state, _)| state))
    };
    if ours()?.is_none() {
        return Ok(());
    }
    send(pid, libc::SIGCONT, true)?;
    let mut state = '?';
    for check in 0..RESUME_CHECKS {
        match ours()? {
            None => return Ok(()),
            Some(seen) if seen != 'T' && seen != 't' => return Ok(()),
            Some(seen) => state = seen,
        }
        if check + 1 < RESUME_CHECKS {
            std::thread::sleep(RESUME_CHECK_EVERY);
        }
    }
    let elapsed = RESUME_CHECK_EVERY * (RESUME_CHECKS - 1);
    Err(ProcessError::NotResumed {
        pid,
        reason: format!(
            "state '{state}' in /proc/{pid}/stat {} ms after SIGCONT{}",
            elapsed.as_millis(),
            if state == 't' {
                " (a tracer holds it)"
            } else {
                ""
            }
        ),
    })
}

/// Undoes the fault and proves it: each paused process is resumed and seen running
/// (see [`resume`]); nothing for `kill`, whose signal cannot be taken back.
///
/// Every process is tried; the first failure is returned, naming its pid.
pub(crate) fn revert(signalled: &Signalled) -> Result<(), ProcessError> {
    if signalled.action != ProcessAction::Pause {
        return Ok(());
    }
    let mut first_error = None;
    for (i, pid) in signalled.pids.iter().enumerate() {
        if let Err(err) = resume(*pid, signalled.start_times.get(i).copied()) {
            first_error.get_or_insert(err);
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inject(fault: &ProcessFault) -> Result<Signalled, ProcessError> {
        signal(fault, &resolve(fault)?)
    }

    #[test]
    fn signal_names_and_numbers() {
        assert_eq!(signal_number("SIGKILL").unwrap(), libc::SIGKILL);
        assert_eq!(signal_number("term").unwrap(), libc::SIGTERM);
        assert_eq!(signal_number("9").unwrap(), 9);
        assert!(signal_number("SIGNOPE").is_err());
        assert!(signal_number("0").is_err());
    }

    #[test]
    fn never_selects_pid_1_or_itself() {
        let dir = tempfile::tempdir().unwrap();
        for pid in ["1", &std::process::id().to_string(), "nope"] {
            let path = dir.path().join("pid");
            std::fs::write(&path, pid).unwrap();
            let fault = ProcessFault {
                action: ProcessAction::Kill,
                pid_file: Some(path.display().to_string()),
                name: None,
                signal: None,
            };
            assert!(
                matches!(find(&fault), Err(ProcessError::BadPid { .. })),
                "{pid}"
            );
        }
    }

    /// A `sleep 30` child, killed and reaped when dropped.
    struct Sleeper(std::process::Child);

    impl Sleeper {
        fn start() -> Sleeper {
            Sleeper(
                std::process::Command::new("sleep")
                    .arg("30")
                    .spawn()
                    .unwrap(),
            )
        }
        fn pid(&self) -> i32 {
            i32::try_from(self.0.id()).unwrap()
        }
        fn state(&self) -> char {
            stat(self.pid()).unwrap().unwrap().0
        }
        /// Waits (up to 10 s) for the process to be in `state`: a SIGSTOP takes effect
        /// when the process is next scheduled, not when kill(2) returns.
        fn wait_for(&self, state: char) {
            for _ in 0..1000 {
                if self.state() == state {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            panic!(
                "process {} not in state {state}: {}",
                self.pid(),
                self.state()
            );
        }
        fn pause_fault(&self, dir: &tempfile::TempDir) -> ProcessFault {
            let path = dir.path().join("pid");
            std::fs::write(&path, self.pid().to_string()).unwrap();
            ProcessFault {
                action: ProcessAction::Pause,
                pid_file: Some(path.display().to_string()),
                name: None,
                signal: None,
            }
        }
    }

    impl Drop for Sleeper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn stat_reads_state_and_start_time() {
        let (state, start) = stat(i32::try_from(std::process::id()).unwrap())
            .unwrap()
            .unwrap();
        assert!(state.is_ascii_alphabetic(), "{state}");
        assert!(start > 0);
        assert_eq!(stat(i32::MAX).unwrap(), None, "no such process");
    }

    #[test]
    fn pause_is_resumed_and_seen_running() {
        let dir = tempfile::tempdir().unwrap();
        let sleeper = Sleeper::start();
        let paused = inject(&sleeper.pause_fault(&dir)).unwrap();
        sleeper.wait_for('T');
        assert_eq!(paused.start_times.len(), 1);
        revert(&paused).unwrap();
        let state = sleeper.state();
        assert!(!matches!(state, 'T' | 't'), "resumed, yet in state {state}");
    }

    #[test]
    fn a_recycled_pid_is_not_signalled_and_counts_as_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let sleeper = Sleeper::start();
        let mut paused = inject(&sleeper.pause_fault(&dir)).unwrap();
        sleeper.wait_for('T');
        // The same pid with another start time: another process, as after pid reuse.
        paused.start_times[0] += 1;
        revert(&paused).unwrap();
        assert_eq!(sleeper.state(), 'T', "the stranger got no SIGCONT");
        // A process that is gone has nothing left stopped either.
        paused.start_times[0] -= 1;
        drop(sleeper);
        revert(&paused).unwrap();
    }

    #[test]
    fn a_process_still_stopped_after_sigcont_is_not_reverted() {
        let dir = tempfile::tempdir().unwrap();
        let sleeper = Sleeper::start();
        let pid = sleeper.pid();
        // A tracer (this thread) holds the process in a tracing stop, where SIGCONT does
        // not resume it: the revert cannot be confirmed.
        // SAFETY: ptrace(2) and waitpid(2) on our own child, from this thread only.
        let attached = unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, 0usize, 0usize) };
        assert_eq!(
            attached,
            0,
            "ptrace attach: {}",
            std::io::Error::last_os_error()
        );
        let mut status = 0;
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::waitpid(pid, &mut status, libc::__WALL) },
            pid
        );
        let paused = inject(&sleeper.pause_fault(&dir)).unwrap();
        let err = revert(&paused).unwrap_err();
        let shown = err.to_string();
        // SAFETY: as above; detaching lets the process go before it is killed.
        unsafe {
            libc::ptrace(libc::PTRACE_DETACH, pid, 0usize, 0usize);
        }
        assert!(
            matches!(err, ProcessError::NotResumed { pid: p, .. } if p == pid),
            "{err:?}"
        );
        assert!(
            shown.contains(&format!("process {pid} may still be stopped: state 't'")),
            "{shown}"
        );
    }
}
