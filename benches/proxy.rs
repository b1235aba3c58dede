//! Benchmark of chaosgate's TCP fault proxy with no fault: throughput and added latency
//! against a direct connection, and against Toxiproxy on the same traffic in the same
//! run when a `toxiproxy-server` binary is found (`TOXIPROXY_SERVER`, else `PATH`).
//!
//! Run: `cargo bench --bench proxy` (prints figures; not a pass/fail test).
//! Settings (environment): `BENCH_ROUNDS` (default 5), `BENCH_SECONDS` per throughput
//! run (default 2), `BENCH_ROUND_TRIPS` per latency run (default 5000).
//!
//! Both proxies run as separate processes (`chaosgate proxy` built by this bench, and
//! `toxiproxy-server`); the upstream servers and the load generator run in this process.
//! Each round measures every path in turn, so drift on a shared machine spreads over all
//! of them; medians over the rounds are printed.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Request and response size of the latency runs.
const MESSAGE: usize = 64;

/// Pause after a bulk run, so closing its connections does not overlap the next run.
const SETTLE: Duration = Duration::from_millis(300);

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A server that streams bytes to every client until it goes away.
async fn source_server() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let block = vec![0x5au8; 256 * 1024];
        while let Ok((mut socket, _)) = listener.accept().await {
            let block = block.clone();
            tokio::spawn(async move { while socket.write_all(&block).await.is_ok() {} });
        }
    });
    Ok(addr)
}

/// A server that echoes every byte back.
async fn echo_server() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = socket.set_nodelay(true);
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if socket.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// Downstream throughput over `connections` parallel connections for `seconds`, in MB/s.
async fn throughput(addr: SocketAddr, connections: usize, seconds: u64) -> Result<f64> {
    let mut streams = Vec::with_capacity(connections);
    for _ in 0..connections {
        streams.push(TcpStream::connect(addr).await.context("connect")?);
    }
    let total = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::with_capacity(connections);
    for mut stream in streams {
        let total = Arc::clone(&total);
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                if n == 0 {
                    break;
                }
                total.fetch_add(n as u64, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(total.load(Ordering::Relaxed) as f64 / elapsed / 1e6)
}

/// Round-trip times of `count` sequential 64-byte requests on one connection.
async fn round_trips(addr: SocketAddr, count: usize) -> Result<Vec<Duration>> {
    let mut stream = TcpStream::connect(addr).await.context("connect")?;
    stream.set_nodelay(true)?;
    let request = [1u8; MESSAGE];
    let mut response = [0u8; MESSAGE];
    for _ in 0..200 {
        stream.write_all(&request).await?;
        stream.read_exact(&mut response).await?;
    }
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        stream.write_all(&request).await?;
        stream.read_exact(&mut response).await?;
        samples.push(start.elapsed());
    }
    samples.sort();
    Ok(samples)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1e6
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Process {
    /// CPU seconds (user + system) used so far, from /proc.
    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.0.id())).unwrap_or_default();
        // Fields after the command name (which may hold spaces), 1-based: utime 14, stime 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // SAFETY: sysconf has no memory effects.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        (ticks(11) + ticks(12)) / hz
    }

    /// Resident memory in MiB, from /proc.
    fn rss_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

/// One path to the upstreams: its name, its two addresses, and the proxy process.
struct Path {
    name: &'static str,
    source: SocketAddr,
    echo: SocketAddr,
    process: Option<Process>,
}

/// Starts `chaosgate proxy` in front of both upstreams.
fn start_chaosgate(dir: &std::path::Path, source: SocketAddr, echo: SocketAddr) -> Result<Path> {
    let config = dir.join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "control_listen = \"127.0.0.1:0\"\n\
             [[targets]]\nname = \"source\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{source}\"\n\
             [[targets]]\nname = \"echo\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{echo}\"\n"
        ),
    )?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_chaosgate"))
        .arg("proxy")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start chaosgate proxy")?;
    let stdout = child.stdout.take().context("chaosgate stdout")?;
    let process = Process(child);
    let mut addrs = std::collections::HashMap::new();
    for line in BufReader::new(stdout).lines().take(3) {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"target") && words.len() >= 4 {
            addrs.insert(words[1].to_string(), words[3].parse::<SocketAddr>()?);
        }
    }
    Ok(Path {
        name: "chaosgate",
        source: *addrs.get("source").context("source target not printed")?,
        echo: *addrs.get("echo").context("echo target not printed")?,
        process: Some(process),
    })
}

fn find_toxiproxy() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("TOXIPROXY_SERVER") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("toxiproxy-server"))
        .find(|candidate| candidate.is_file())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts Toxiproxy and creates one proxy per upstream through its HTTP API.
async fn start_toxiproxy(
    binary: &std::path::Path,
    source: SocketAddr,
    echo: SocketAddr,
) -> Result<Path> {
    let port = free_port()?;
    let child = Command::new(binary)
        .args(["-host", "127.0.0.1", "-port", &port.to_string()])
        .env("LOG_LEVEL", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", binary.display()))?;
    let process = Process(child);
    let api = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let ready = Instant::now();
    while http.get(format!("{api}/version")).send().await.is_err() {
        if ready.elapsed() > Duration::from_secs(10) {
            bail!("toxiproxy-server did not answer on {api}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let create = |name: &'static str, upstream: SocketAddr| {
        let request = http.post(format!("{api}/proxies")).json(&serde_json::json!({
            "name": name, "listen": "127.0.0.1:0", "upstream": upstream.to_string(), "enabled": true
        }));
        async move {
            let answer: serde_json::Value =
                request.send().await?.error_for_status()?.json().await?;
            let listen = answer["listen"]
                .as_str()
                .context("toxiproxy answer without listen")?;
            anyhow::Ok(listen.parse::<SocketAddr>()?)
        }
    };
    let source = create("source", source).await?;
    let echo = create("echo", echo).await?;
    Ok(Path {
        name: "toxiproxy",
        source,
        echo,
        process: Some(process),
    })
}

/// Medians over the rounds of one path.
#[derive(Default)]
struct Figures {
    mbps_1: Vec<f64>,
    mbps_64: Vec<f64>,
    p50_us: Vec<f64>,
    p99_us: Vec<f64>,
    cpu_per_gb: Vec<f64>,
}

fn main() -> Result<()> {
    // The bench harness passes `--bench`; nothing to parse.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> Result<()> {
    let rounds = env_number("BENCH_ROUNDS", 5) as usize;
    let seconds = env_number("BENCH_SECONDS", 2);
    let trips = env_number("BENCH_ROUND_TRIPS", 5000) as usize;
    let source = source_server().await?;
    let echo = echo_server().await?;
    let dir = tempfile::tempdir()?;
    let mut paths = vec![
        Path {
            name: "direct",
            source,
            echo,
            process: None,
        },
        start_chaosgate(dir.path(), source, echo)?,
    ];
    match find_toxiproxy() {
        Some(binary) => {
            let version = Command::new(&binary)
                .arg("-version")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            println!("toxiproxy: {} ({version})", binary.display());
            paths.push(start_toxiproxy(&binary, source, echo).await?);
        }
        None => println!(
            "toxiproxy: not found (set TOXIPROXY_SERVER or put toxiproxy-server on PATH); skipped"
        ),
    }
    println!(
        "rounds {rounds}, {seconds} s per throughput run, {trips} round trips of {MESSAGE} B per latency run, {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut figures: Vec<Figures> = paths.iter().map(|_| Figures::default()).collect();
    for round in 1..=rounds {
        // Latency first, on quiet paths; then the bulk runs, each followed by a pause so
        // the next measurement does not overlap a proxy closing 64 connections.
        for (path, figures) in paths.iter().zip(figures.iter_mut()) {
            let samples = round_trips(path.echo, trips).await?;
            figures.p50_us.push(percentile(&samples, 0.50));
            figures.p99_us.push(percentile(&samples, 0.99));
        }
        for (path, figures) in paths.iter().zip(figures.iter_mut()) {
            let cpu_before = path.process.as_ref().map(Process::cpu_seconds);
            let one = throughput(path.source, 1, seconds).await?;
            tokio::time::sleep(SETTLE).await;
            let many = throughput(path.source, 64, seconds).await?;
            tokio::time::sleep(SETTLE).await;
            let gigabytes = (one + many) * seconds as f64 / 1000.0;
            if let (Some(before), Some(process)) = (cpu_before, &path.process)
                && gigabytes > 0.0
            {
                figures
                    .cpu_per_gb
                    .push((process.cpu_seconds() - before) / gigabytes);
            }
            figures.mbps_1.push(one);
            figures.mbps_64.push(many);
            println!(
                "round {round} {:<10} 1 conn {one:>8.0} MB/s  64 conns {many:>8.0} MB/s  rtt p50 {:>6.1} us  p99 {:>6.1} us",
                path.name,
                figures.p50_us[round - 1],
                figures.p99_us[round - 1],
            );
        }
    }
    println!();
    println!("medians over {rounds} rounds");
    println!(
        "{:<10} {:>12} {:>12} {:>12} {:>12} {:>14} {:>14} {:>12} {:>9}",
        "path",
        "1 conn MB/s",
        "64 conn MB/s",
        "rtt p50 us",
        "rtt p99 us",
        "added p50 us",
        "added p99 us",
        "CPU s/GB",
        "RSS MiB"
    );
    let direct_p50 = median(&figures[0].p50_us);
    let direct_p99 = median(&figures[0].p99_us);
    for (path, f) in paths.iter().zip(&figures) {
        let cpu = if f.cpu_per_gb.is_empty() {
            "-".to_string()
        } else {
            format!("{:.3}", median(&f.cpu_per_gb))
        };
        let rss = path
            .process
            .as_ref()
            .map_or("-".to_string(), |p| format!("{:.1}", p.rss_mib()));
        println!(
            "{:<10} {:>12.0} {:>12.0} {:>12.1} {:>12.1} {:>14.1} {:>14.1} {:>12} {:>9}",
            path.name,
            median(&f.mbps_1),
            median(&f.mbps_64),
            median(&f.p50_us),
            median(&f.p99_us),
            median(&f.p50_us) - direct_p50,
            median(&f.p99_us) - direct_p99,
            cpu,
            rss
        );
    }
    if figures.len() == 3 {
        let (c, t) = (&figures[1], &figures[2]);
        println!();
        println!("chaosgate vs toxiproxy (medians)");
        println!(
            "  throughput, 1 conn:   {:.2}x",
            median(&c.mbps_1) / median(&t.mbps_1)
        );
        println!(
            "  throughput, 64 conns: {:.2}x",
            median(&c.mbps_64) / median(&t.mbps_64)
        );
        let added =
            |f: &Figures, direct: f64, pick: fn(&Figures) -> &Vec<f64>| median(pick(f)) - direct;
        let c50 = added(c, direct_p50, |f| &f.p50_us);
        let t50 = added(t, direct_p50, |f| &f.p50_us);
        let c99 = added(c, direct_p99, |f| &f.p99_us);
        let t99 = added(t, direct_p99, |f| &f.p99_us);
        println!(
            "  added latency p50: {c50:.1} us vs {t50:.1} us ({:.2}x less)",
            t50 / c50
        );
        println!(
            "  added latency p99: {c99:.1} us vs {t99:.1} us ({:.2}x less)",
            t99 / c99
        );
        if !c.cpu_per_gb.is_empty() && !t.cpu_per_gb.is_empty() {
            println!(
                "  CPU per GB moved:  {:.3} s vs {:.3} s",
                median(&c.cpu_per_gb),
                median(&t.cpu_per_gb)
            );
        }
    }
    Ok(())
}
