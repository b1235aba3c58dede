//! Probe load figures: many concurrent HTTP probes, each checked every second, against
//! one local target. Prints check latency p50/p99/max, failures, peak RSS and CPU time.
//!
//! The target runs in a child process (this same binary, re-run with `--serve`), so the
//! RSS and CPU printed are the probes' alone.
//!
//! `cargo bench --bench probes` (defaults: 10,000 probes for 10 s); set
//! `CHAOSGATE_BENCH_PROBES` and `CHAOSGATE_BENCH_SECS` to change them.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chaosgate::catalog::Span;
use chaosgate::catalog::experiment::{
    HttpCriteria, HttpProbe, Probe, ProbeMode, ProbeType, RunProperties,
};
use chaosgate::chaos::probe::check;

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--serve") {
        return serve();
    }
    let probes: usize = env_number("CHAOSGATE_BENCH_PROBES", 10_000);
    let secs: u64 = env_number("CHAOSGATE_BENCH_SECS", 10);
    raise_fd_limit(probes as u64 * 2 + 1_024);

    let mut target = Target::start()?;
    let url = format!("http://127.0.0.1:{}/health", target.port);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(run(probes, secs, url));
    drop(runtime);
    target.stop();

    let mut sorted = outcome.latencies;
    sorted.sort_unstable();
    let pick = |q: f64| {
        let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len().max(1));
        sorted.get(index - 1).copied().unwrap_or_default()
    };
    let (user, system) = cpu_seconds();
    println!("probes: {probes} concurrent HTTP probes, one check per second each, for {secs} s");
    println!(
        "checks: {} ({} failed{})",
        sorted.len(),
        outcome.failures,
        outcome
            .first_error
            .map(|e| format!("; first failure: {e}"))
            .unwrap_or_default()
    );
    println!(
        "check latency: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(pick(0.50)),
        ms(pick(0.99)),
        ms(pick(1.0))
    );
    println!("peak open sockets: {}", outcome.peak_sockets);
    println!("peak RSS: {:.1} MiB", peak_rss_kib() as f64 / 1024.0);
    println!(
        "CPU: {user:.2} s user, {system:.2} s system ({:.0} % of one core)",
        (user + system) * 100.0 / secs as f64
    );
    Ok(())
}

/// Runs `probes` tasks, each checking once a second for `secs` seconds.
async fn run(probes: usize, secs: u64, url: String) -> Outcome {
    let probe = Arc::new(Probe {
        name: "health".to_string(),
        mode: ProbeMode::Continuous,
        run_properties: RunProperties {
            timeout: Span::from_millis(5_000),
            attempts: 1,
            ..RunProperties::default()
        },
        probe_type: ProbeType::Http(HttpProbe {
            url,
            method: "GET".to_string(),
            headers: Default::default(),
            body: None,
            follow_redirects: false,
            redirect_any_host: false,
            criteria: HttpCriteria::default(),
        }),
    });
    let end = Instant::now() + Duration::from_secs(secs);
    let sampler = tokio::spawn(async move {
        let mut peak = 0;
        while Instant::now() < end {
            peak = peak.max(open_sockets());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        peak
    });
    let mut tasks = Vec::with_capacity(probes);
    for i in 0..probes {
        let probe = probe.clone();
        tasks.push(tokio::spawn(async move {
            // Spread the start over the first second, as experiments would be.
            let offset = Duration::from_micros((i as u64 * 1_000_000) / probes as u64);
            let mut ticks = tokio::time::interval_at(
                tokio::time::Instant::now() + offset,
                Duration::from_secs(1),
            );
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seen = Vec::new();
            let mut failed = 0;
            let mut first_error = None;
            loop {
                ticks.tick().await;
                if Instant::now() >= end {
                    break;
                }
                let result = check(&probe).await;
                seen.push(result.took);
                if !result.passed {
                    failed += 1;
                    first_error = first_error.or(result.error);
                }
            }
            (seen, failed, first_error)
        }));
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    let mut first_error = None;
    for task in tasks {
        if let Ok((seen, failed, error)) = task.await {
            latencies.extend(seen);
            failures += failed;
            first_error = first_error.or(error);
        }
    }
    let peak_sockets = sampler.await.unwrap_or(0);
    Outcome {
        latencies,
        failures,
        first_error,
        peak_sockets,
    }
}

/// What the probes saw.
struct Outcome {
    /// The time of every check.
    latencies: Vec<Duration>,
    /// Checks that failed.
    failures: usize,
    /// The first failure's text.
    first_error: Option<String>,
    /// Most sockets open at once (sampled every 50 ms).
    peak_sockets: usize,
}

/// Sockets this process has open now.
fn open_sockets() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// The target process: an HTTP server answering `/health`; prints its port, then serves
/// until its standard input closes.
fn serve() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let app = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
        // A deep accept backlog (the kernel caps it at somaxconn), so a burst of new
        // connections is not met with dropped SYNs and one-second retransmits.
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind("127.0.0.1:0".parse()?)?;
        let listener = socket.listen(16_384)?;
        println!("{}", listener.local_addr()?.port());
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
        });
        tokio::select! {
            served = axum::serve(listener, app) => served?,
            _ = stdin_closed => {}
        }
        anyhow::Ok(())
    })
}

/// The target child process; stopped (killed and reaped) on drop.
struct Target {
    child: Child,
    port: u16,
}

impl Target {
    fn start() -> anyhow::Result<Target> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            BufReader::new(out).read_line(&mut line)?;
        }
        let port = match line.trim().parse() {
            Ok(port) => port,
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("the target did not print its port ({line:?}): {err}");
            }
        };
        Ok(Target { child, port })
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop();
    }
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

/// Raises the soft open-files limit towards `wanted` (the hard limit caps it).
fn raise_fd_limit(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < wanted {
            limit.rlim_cur = wanted.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Peak resident set size of this process, from /proc/self/status (VmHWM).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// User and system CPU seconds used by this process so far.
fn cpu_seconds() -> (f64, f64) {
    // SAFETY: rusage is plain integers, for which all-zero bytes are a valid value, and
    // getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe {
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(usage.ru_utime), secs(usage.ru_stime))
}
