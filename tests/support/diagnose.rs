//! Why a worker process did not do what a test waited for, told from outside: its log
//! sorted by tracing target (chaosgate's own lines in full, librdkafka's repeated lines
//! folded), the state of each of its threads from `/proc`, a `gdb` backtrace of every
//! thread where gdb is installed, and the exit status (signal or code) of a worker that
//! died.
//!
//! The rule that keeps it right: lines are sorted by the target the worker's text log
//! names (`chaosgate::…`, `librdkafka`, `rdkafka::client`), never by words in the
//! message, so a chaosgate line that quotes a librdkafka error (`consume failed;
//! retrying error=… BrokerTransportFailure`) is always shown.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How many entries of each log the tail shows (a folded run of librdkafka lines is
/// one entry).
pub const TAIL_ENTRIES: usize = 60;

/// How long a `gdb` backtrace may take before it is given up.
const GDB_TIMEOUT: Duration = Duration::from_secs(60);

/// Lines of `gdb` output kept (about 20 frames for each of ~25 threads).
const GDB_LINES: usize = 600;

/// The tracing target of one line of the worker's text log
/// (`TIME LEVEL [span{..}:...:] target: message`), or `None` when the line is not one
/// (a panic message, a continuation line).
pub fn target_of(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    let _time = words.next()?;
    let level = words.next()?;
    if !matches!(level, "TRACE" | "DEBUG" | "INFO" | "WARN" | "ERROR") {
        return None;
    }
    let at = line.find(level)? + level.len();
    let rest = line[at..].trim_start();
    // Segments separated by ": " outside span fields (`{..}`); the spans come first and
    // carry fields, the target is the first segment without braces or spaces.
    let mut depth = 0usize;
    let mut start = 0usize;
    let bytes = rest.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'{' => depth += 1,
            b'}' => depth = depth.saturating_sub(1),
            b':' if depth == 0 && bytes.get(i + 1) == Some(&b' ') => {
                let segment = &rest[start..i];
                if !segment.is_empty() && !segment.contains(['{', ' ']) {
                    return Some(segment);
                }
                start = i + 2;
            }
            _ => {}
        }
    }
    None
}

/// What folds a librdkafka line with its neighbours: the target and, for librdkafka's
/// own log lines, the facility (`librdkafka: FAIL [thrd:…]: …` gives `FAIL`); for
/// `rdkafka::client` error callbacks, the error name.
fn fold_key<'a>(target: &'a str, line: &'a str) -> Option<(&'a str, &'a str)> {
    if target != "librdkafka" && !target.starts_with("rdkafka") {
        return None;
    }
    let after = line
        .find("librdkafka: ")
        .map(|at| &line[at + "librdkafka: ".len()..])
        .unwrap_or("");
    let word = after
        .split([' ', ':', '('])
        .find(|w| !w.is_empty())
        .unwrap_or("");
    Some((target, word))
}

/// The last `entries` entries of a worker log: chaosgate's lines (and anything not
/// from librdkafka) one per entry, runs of librdkafka lines with the same target and
/// facility folded into their last line with a count and the time of the first.
pub fn folded_tail(content: &str, entries: usize) -> (String, usize) {
    struct Entry<'a> {
        key: Option<(&'a str, &'a str)>,
        first_time: &'a str,
        count: usize,
        last: &'a str,
    }
    let mut folded: Vec<Entry<'_>> = Vec::new();
    let mut librdkafka_lines = 0;
    for line in content.lines() {
        let key = target_of(line).and_then(|t| fold_key(t, line));
        if key.is_some() {
            librdkafka_lines += 1;
        }
        if let (Some(key), Some(last)) = (key, folded.last_mut())
            && last.key == Some(key)
        {
            last.count += 1;
            last.last = line;
            continue;
        }
        folded.push(Entry {
            key,
            first_time: line.split_whitespace().next().unwrap_or(""),
            count: 1,
            last: line,
        });
    }
    let start = folded.len().saturating_sub(entries);
    let mut text = String::new();
    for entry in &folded[start..] {
        if entry.count > 1 {
            let _ = writeln!(
                text,
                "  [{} lines of {} {} since {}; the last:]",
                entry.count,
                entry.key.map_or("", |k| k.0),
                entry.key.map_or("", |k| k.1),
                entry.first_time
            );
        }
        let _ = writeln!(text, "{}", entry.last);
    }
    (text, librdkafka_lines)
}

/// The process's state, its exit status when it has exited, and for a live one each
/// thread's state and a backtrace of every thread.
pub fn describe_process(pid: u32, child: Option<&mut Child>) -> String {
    if let Some(child) = child {
        match child.try_wait() {
            Ok(Some(status)) => return format!("pid {pid} exited: {}", exit_text(status)),
            Ok(None) => {}
            Err(e) => return format!("pid {pid}: cannot wait for it: {e}"),
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    match state {
        None => format!("pid {pid} gone"),
        Some('Z') => format!("pid {pid} exited, not yet reaped"),
        Some(state) => {
            let mut text = format!("pid {pid} alive, state {state}\n");
            text.push_str(&thread_states(pid));
            if matches!(state, 'T' | 't') {
                // gdb's attach waits for a stopped process to run, which it never does.
                text.push_str(
                    "  (stopped by a signal such as SIGSTOP, or traced: no gdb backtrace)\n",
                );
            } else {
                text.push_str(&backtraces(pid));
            }
            text
        }
    }
}

/// An exit status as a person reads it: the signal that ended the process (and whether
/// it dumped core), or its exit code.
pub fn exit_text(status: ExitStatus) -> String {
    match (status.signal(), status.code()) {
        (Some(signal), _) => format!(
            "killed by signal {signal} ({}){}",
            signal_name(signal),
            if status.core_dumped() {
                ", core dumped"
            } else {
                ""
            }
        ),
        (None, Some(code)) => format!("exit code {code}"),
        (None, None) => format!("{status}"),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGKILL => "SIGKILL: killed from outside, or by the kernel's OOM killer",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGABRT => "SIGABRT: an abort, e.g. a panic while panicking",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        _ => "other",
    }
}

/// One line per thread of `pid`, from `/proc/PID/task/*`: id, name, state (R running,
/// S sleeping, D disk wait, T stopped, Z zombie), the kernel function it waits in
/// (`wchan`), the system call it is in (first field of `syscall`: 202 is futex, 7 poll,
/// 232 epoll_wait, 35 nanosleep on x86-64) and its CPU time in clock ticks.
pub fn thread_states(pid: u32) -> String {
    let mut text = String::from("  threads (tid name state wchan syscall utime+stime ticks):\n");
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        text.push_str("  (no /proc entry)\n");
        return text;
    };
    let mut rows: Vec<(u32, String)> = Vec::new();
    for task in tasks.flatten() {
        let path = task.path();
        let tid: u32 = task.file_name().to_string_lossy().parse().unwrap_or(0);
        let read = |name: &str| {
            std::fs::read_to_string(path.join(name))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        let stat = read("stat");
        let (state, ticks) = stat
            .rsplit_once(") ")
            .map(|(_, rest)| {
                let fields: Vec<&str> = rest.split_whitespace().collect();
                let ticks = fields
                    .get(11)
                    .and_then(|u| u.parse::<u64>().ok())
                    .unwrap_or(0)
                    + fields
                        .get(12)
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(0);
                (fields.first().copied().unwrap_or("?").to_string(), ticks)
            })
            .unwrap_or_else(|| ("?".into(), 0));
        let syscall = read("syscall");
        let syscall = syscall.split_whitespace().next().unwrap_or("?").to_string();
        rows.push((
            tid,
            format!(
                "  {tid} {} {state} {} {syscall} {ticks}",
                read("comm"),
                read("wchan")
            ),
        ));
    }
    rows.sort();
    for (_, row) in rows {
        let _ = writeln!(text, "{row}");
    }
    text
}

/// `gdb -batch -p PID -ex 'thread apply all bt'`, when gdb is on PATH (bounded in time
/// and length); otherwise a line saying it is not installed.
pub fn backtraces(pid: u32) -> String {
    let spawned = Command::new("gdb")
        .args([
            "-nx",
            "-batch",
            "-p",
            &pid.to_string(),
            "-ex",
            "thread apply all bt",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut gdb = match spawned {
        Ok(gdb) => gdb,
        Err(e) => return format!("  (no gdb backtrace: cannot run gdb: {e})\n"),
    };
    let deadline = Instant::now() + GDB_TIMEOUT;
    loop {
        match gdb.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            _ => {
                let _ = gdb.kill();
                let _ = gdb.wait();
                return format!("  (gdb did not finish within {GDB_TIMEOUT:?})\n");
            }
        }
    }
    let output = match gdb.wait_with_output() {
        Ok(output) => output,
        Err(e) => return format!("  (gdb output unreadable: {e})\n"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    // Only the backtraces: gdb's "[New LWP …]" and symbol-loading chatter is left out.
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("Thread ") || l.starts_with('#'))
        .collect();
    let mut text = format!(
        "  gdb backtrace of every thread ({} lines{}):\n",
        lines.len(),
        if lines.len() > GDB_LINES {
            format!(", the first {GDB_LINES}")
        } else {
            String::new()
        }
    );
    for line in lines.iter().take(GDB_LINES) {
        let _ = writeln!(text, "  {line}");
    }
    if lines.is_empty() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let _ = writeln!(text, "  gdb said: {}", stderr.trim());
    }
    text
}
