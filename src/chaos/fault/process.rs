//! `process` faults: a signal to a local process found by pid file or exact name.
//!
//! `kill` sends one signal (default SIGTERM) and has nothing to revert. `pause` sends
//! SIGSTOP on inject and SIGCONT on revert. A name matches `/proc/PID/comm` exactly and
//! every matching process is hit, as `pkill -x` would; chaosgate itself and pid 1 never are.

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Signalled {
    /// What was done.
    pub(crate) action: ProcessAction,
    /// The processes hit.
    pub(crate) pids: Vec<i32>,
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

/// Applies the fault: one signal for `kill`, SIGSTOP for `pause`.
///
/// When a signal fails part-way, the processes already paused are resumed before the
/// error is returned, so a failed inject leaves nothing behind.
pub(crate) fn inject(fault: &ProcessFault) -> Result<Signalled, ProcessError> {
    let signal = match fault.action {
        ProcessAction::Kill => signal_number(fault.signal.as_deref().unwrap_or("SIGTERM"))?,
        ProcessAction::Pause => libc::SIGSTOP,
    };
    let pids = find(fault)?;
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
        pids,
    })
}

/// Undoes the fault: SIGCONT to every paused process still running; nothing for `kill`.
pub(crate) fn revert(signalled: &Signalled) -> Result<(), ProcessError> {
    if signalled.action != ProcessAction::Pause {
        return Ok(());
    }
    let mut first_error = None;
    for pid in &signalled.pids {
        if let Err(err) = send(*pid, libc::SIGCONT, true) {
            first_error.get_or_insert(err);
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
