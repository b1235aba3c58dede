//! Experiment load figures: many concurrent experiments, each with one `continuous` HTTP
//! probe checked every second, all against one local target, run through the real runner
//! (`chaos::run::run_experiment`). Prints peak RSS, CPU, checks and failures, and the
//! probe schedule drift taken from the runner's `ProbeChecked` progress events.
//!
//! Each experiment holds one `command` fault (`true` to inject and revert) for the
//! window, since the continuous probe is checked from the phase start to its end. The
//! experiments start spread evenly over the first second (`CHAOSGATE_BENCH_SPREAD_SECS`),
//! as independent runs would. The target is this same binary re-run with
//! `CHAOSGATE_BENCH_SERVE` set, so the RSS and CPU printed are the runner's alone.
//!
//! Schedule drift of a check is how late it STARTED against its tick on the ideal
//! start-to-start schedule (`Started` event + n polling intervals); its start is the
//! `ProbeChecked` event's time minus the check's `took_ms`. Each check is matched with the
//! latest unused tick at or before its start; ticks left without a check are counted as
//! dropped. Result lateness (when the result arrived against the same tick, so including
//! the check's own latency) and the gap between consecutive check starts compared with
//! the interval are printed as well.
//!
//! `cargo bench --bench experiments` (defaults: 10,000 experiments for 60 s); set
//! `CHAOSGATE_BENCH_EXPERIMENTS` and `CHAOSGATE_BENCH_SECS` to change them
//! (`CHAOSGATE_BENCH_SECS=0`: probe-only experiments, one check each and no fault).

#[path = "support/cpu.rs"]
mod cpu;
use cpu::cpu_seconds;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chaosgate::catalog::experiment::Experiment;
use chaosgate::chaos::{Progress, ProgressEvent, RunContext, TargetLocks, run_experiment};
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

const SERVE: &str = "CHAOSGATE_BENCH_SERVE";
const INTERVAL: Duration = Duration::from_secs(1);
/// Drift histogram resolution and range (100 µs buckets up to 10 s).
const BUCKET_MICROS: i64 = 100;
const BUCKETS: usize = 100_000;

fn main() -> anyhow::Result<()> {
    if std::env::var_os(SERVE).is_some() {
        return serve();
    }
    let experiments: usize = env_number("CHAOSGATE_BENCH_EXPERIMENTS", 10_000);
    let secs: u64 = env_number("CHAOSGATE_BENCH_SECS", 60);
    let spread: f64 = env_number("CHAOSGATE_BENCH_SPREAD_SECS", 1.0);
    let open_files = chaosgate::os::raise_open_files_limit()?;
    println!(
        "load average at start: {}; open files limit {open_files}",
        load_average()
    );

    let (mut child, port) = start_target()?;
    let url = format!("http://127.0.0.1:{port}/health");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let cpu_before = cpu_seconds();
    let wall = Instant::now();
    let outcome = runtime.block_on(run(experiments, secs, spread, &url));
    let wall = wall.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    drop(runtime);
    let _ = child.kill();
    let _ = child.wait();
    let (verdicts, schedule) = outcome?;

    println!(
        "experiments: {experiments} concurrent, one continuous HTTP probe each, \
         polling_interval 1s, fault window {secs} s, starts spread over {spread} s"
    );
    for (verdict, (count, summary)) in &verdicts {
        println!("verdict {verdict}: {count} (first: {summary})");
    }
    println!(
        "checks: {} ({} failed{}); per experiment {}-{}; ticks dropped: {}",
        schedule.checks,
        schedule.failures,
        schedule
            .first_error
            .as_ref()
            .map(|e| format!("; first failure: {e}"))
            .unwrap_or_default(),
        schedule.per_experiment.iter().min().unwrap_or(&0),
        schedule.per_experiment.iter().max().unwrap_or(&0),
        schedule.skipped_ticks,
    );
    for (what, histogram) in [
        (
            "schedule drift (check start vs its tick, Started + n s)",
            &schedule.lateness,
        ),
        ("  of first checks only", &schedule.first_lateness),
        ("  of the checks after the first", &schedule.steady),
        (
            "result lateness (result vs its tick)",
            &schedule.result_lateness,
        ),
        ("gap drift (|start gap - 1 s|)", &schedule.gap),
        ("drift of ticks 0-4 (inject burst)", &schedule.by_phase[0]),
        ("drift of ticks 5 to the window end", &schedule.by_phase[1]),
        ("drift of ticks after (revert burst)", &schedule.by_phase[2]),
    ] {
        println!(
            "{what}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            histogram.quantile(0.50),
            histogram.quantile(0.99),
            histogram.max_micros as f64 / 1_000.0
        );
    }
    println!(
        "ticks dropped by part: {:?} (inject burst, steady, revert burst)",
        schedule.dropped_by_phase
    );
    println!("peak RSS: {:.1} MiB", status_kib("VmHWM:") as f64 / 1024.0);
    println!(
        "CPU: {cpu:.1} s over {wall:.1} s wall ({:.0} % of one core)",
        cpu * 100.0 / wall
    );
    println!("load average at end: {}", load_average());
    Ok(())
}

/// Runs `count` experiments at once and gathers their verdicts and check schedule.
async fn run(
    count: usize,
    secs: u64,
    spread: f64,
    url: &str,
) -> anyhow::Result<(BTreeMap<String, (usize, String)>, Schedule)> {
    let mut template: Experiment = serde_saphyr::from_str(&format!(
        r#"
kind: experiment
id: bench
faults:
  - name: hold
    weight: 1
    duration: {secs}s
    command:
      inject: {{ argv: ["true"] }}
      revert: {{ argv: ["true"] }}
probes:
  - name: health
    mode: continuous
    http: {{ url: "{url}" }}
    run_properties: {{ timeout: 5s, polling_interval: 1s }}
"#
    ))?;
    if secs == 0 {
        // Probe-only: the continuous probe is checked once, with no fault command spawned.
        template.faults.clear();
    }
    println!(
        "one run's future: {} bytes before it starts",
        std::mem::size_of_val(&run_experiment(&template, &RunContext::default()))
    );
    let (sender, mut receiver) = mpsc::unbounded_channel::<Progress>();
    let context = RunContext {
        targets: TargetLocks::new(),
        progress: Some(sender),
        ..RunContext::default()
    };
    let collector = tokio::spawn(async move {
        let mut schedule = Schedule::new(count, secs);
        while let Some(progress) = receiver.recv().await {
            schedule.record(progress);
        }
        schedule
    });
    let start = tokio::time::Instant::now();
    let mut runs = JoinSet::new();
    for i in 0..count {
        let mut experiment = template.clone();
        experiment.id = format!("bench-{i}");
        experiment.probes[0].name = format!("health-{i}");
        let context = context.clone();
        let at = start + Duration::from_secs_f64(spread * i as f64 / count as f64);
        runs.spawn(async move {
            tokio::time::sleep_until(at).await;
            let result = run_experiment(&experiment, &context).await;
            (result.verdict, result.summary)
        });
    }
    drop(context);
    let mut verdicts = BTreeMap::new();
    while let Some(run) = runs.join_next().await {
        let (verdict, summary) = run?;
        let entry = verdicts
            .entry(format!("{verdict:?}"))
            .or_insert((0, summary));
        entry.0 += 1;
    }
    Ok((verdicts, collector.await?))
}

/// Check timing per experiment, folded into histograms as the events come.
///
/// Each check is matched with the tick of its schedule (`Started` + n s) it ran for: the
/// latest tick at or before its start, never a tick already used. Ticks that got no
/// check (dropped because the check before ran a whole interval late) are counted.
struct Schedule {
    /// When each experiment started, the last tick used and the last check start.
    started: Vec<Option<DateTime<Utc>>>,
    tick: Vec<Option<i64>>,
    last: Vec<Option<DateTime<Utc>>>,
    per_experiment: Vec<u32>,
    checks: u64,
    failures: u64,
    skipped_ticks: u64,
    first_error: Option<String>,
    /// Ticks at or after this one fall in the revert burst (the fault window's end).
    end_tick: i64,
    lateness: Histogram,
    first_lateness: Histogram,
    steady: Histogram,
    /// Checks for ticks 1-4 (the inject burst), 5 until the window ends, and after.
    by_phase: [Histogram; 3],
    dropped_by_phase: [u64; 3],
    result_lateness: Histogram,
    gap: Histogram,
}

impl Schedule {
    fn new(count: usize, secs: u64) -> Schedule {
        Schedule {
            started: vec![None; count],
            tick: vec![None; count],
            last: vec![None; count],
            per_experiment: vec![0; count],
            checks: 0,
            failures: 0,
            skipped_ticks: 0,
            first_error: None,
            end_tick: secs as i64,
            by_phase: [Histogram::new(), Histogram::new(), Histogram::new()],
            dropped_by_phase: [0; 3],
            lateness: Histogram::new(),
            first_lateness: Histogram::new(),
            steady: Histogram::new(),
            result_lateness: Histogram::new(),
            gap: Histogram::new(),
        }
    }

    fn record(&mut self, progress: Progress) {
        let index = |name: &str| {
            name.rsplit('-')
                .next()
                .and_then(|n| n.parse::<usize>().ok())
        };
        match progress.event {
            ProgressEvent::Started { experiment } => {
                if let Some(i) = index(&experiment) {
                    self.started[i] = Some(progress.at);
                }
            }
            ProgressEvent::ProbeChecked {
                probe,
                passed,
                error,
                took_ms,
                ..
            } => {
                let Some(i) = index(&probe) else { return };
                self.checks += 1;
                if !passed {
                    self.failures += 1;
                    self.first_error = self.first_error.take().or(error);
                }
                let start = progress.at - chrono::Duration::microseconds((took_ms * 1e3) as i64);
                let first = self.per_experiment[i] == 0;
                self.per_experiment[i] += 1;
                if let Some(started) = self.started[i] {
                    let interval = INTERVAL.as_micros() as i64;
                    let since = (start - started).num_microseconds().unwrap_or(0).max(0);
                    let after = self.tick[i].map_or(0, |t| t + 1);
                    let tick = (since / interval).max(after);
                    self.skipped_ticks += (tick - after) as u64;
                    let phase = if tick < 5 {
                        0
                    } else if tick < self.end_tick {
                        1
                    } else {
                        2
                    };
                    self.dropped_by_phase[phase] += (tick - after) as u64;
                    self.tick[i] = Some(tick);
                    let due = started + chrono::Duration::microseconds(tick * interval);
                    let late = (start - due).num_microseconds();
                    self.lateness.add(late);
                    if first {
                        self.first_lateness.add(late);
                    } else {
                        self.steady.add(late);
                    }
                    self.by_phase[phase].add(late);
                    self.result_lateness
                        .add((progress.at - due).num_microseconds());
                }
                if let Some(last) = self.last[i] {
                    let gap = (start - last).num_microseconds();
                    self.gap
                        .add(gap.map(|g| (g - INTERVAL.as_micros() as i64).abs()));
                }
                self.last[i] = Some(start);
            }
            _ => {}
        }
    }
}

/// Counts of durations in 100 µs buckets (negative values count as 0).
struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max_micros: i64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS + 1],
            total: 0,
            max_micros: 0,
        }
    }

    fn add(&mut self, micros: Option<i64>) {
        let micros = micros.unwrap_or(i64::MAX).max(0);
        let bucket = ((micros / BUCKET_MICROS) as usize).min(BUCKETS);
        self.counts[bucket] += 1;
        self.total += 1;
        self.max_micros = self.max_micros.max(micros);
    }

    /// The upper edge of the bucket holding quantile `q`, in milliseconds.
    fn quantile(&self, q: f64) -> f64 {
        let wanted = ((self.total as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= wanted {
                return ((bucket as i64 + 1) * BUCKET_MICROS) as f64 / 1_000.0;
            }
        }
        0.0
    }
}

/// The target process: answers `GET /health` with 200; prints its port first and stops
/// when its standard input closes. One thread: it shares the 2 cores with the runner.
fn serve() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            println!("{}", listener.local_addr()?.port());
            let app = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
            let stdin_closed = tokio::task::spawn_blocking(|| {
                std::io::copy(&mut std::io::stdin(), &mut std::io::sink())
            });
            tokio::select! {
                served = axum::serve(listener, app) => served?,
                _ = stdin_closed => {}
            }
            anyhow::Ok(())
        })
}

/// Starts the target process and reads its port.
fn start_target() -> anyhow::Result<(Child, u16)> {
    let mut child = Command::new(std::env::current_exe()?)
        .env(SERVE, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        BufReader::new(out).read_line(&mut line)?;
    }
    match line.trim().parse() {
        Ok(port) => Ok((child, port)),
        Err(err) => {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("the target printed no port ({line:?}): {err}")
        }
    }
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A `kB` field of /proc/self/status.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
