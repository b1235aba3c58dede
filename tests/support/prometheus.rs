//! A real Prometheus (Debian package `prometheus`; `PROMETHEUS_BIN` overrides) on a free
//! loopback port, scraping one target the test starts every second; killed with its
//! handle. A test that needs it fails, naming how to install it, when it is missing.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A Prometheus process; killed and reaped on drop.
pub struct PrometheusServer {
    child: Child,
    /// Its base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PrometheusServer {
    /// The last 20 lines of its log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

const PROMETHEUS_INSTALL: &str = "Prometheus is needed for this test and was not found: \
    install it with `apt-get update && apt-get install -y --no-install-recommends prometheus` \
    (Debian package), or set PROMETHEUS_BIN to a prometheus binary";

/// The prometheus binary: `PROMETHEUS_BIN`, else the first `prometheus` on PATH.
pub fn prometheus_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("PROMETHEUS_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "PROMETHEUS_BIN={} is not a file. {PROMETHEUS_INSTALL}",
            bin.display()
        );
        return bin;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("prometheus"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{PROMETHEUS_INSTALL}"))
}

/// Starts Prometheus on a free loopback port, scraping `target` every second, and waits
/// until it is ready.
pub async fn start_prometheus(target: SocketAddr) -> PrometheusServer {
    let binary = prometheus_binary();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: demo\n    static_configs:\n      \
             - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = dir.path().join("prometheus.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let child = std::process::Command::new(&binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|err| panic!("starting {}: {err}. {PROMETHEUS_INSTALL}", binary.display()));
    let server = PrometheusServer {
        child,
        url: format!("http://127.0.0.1:{port}"),
        log,
        _dir: dir,
    };
    let ready = format!("{}/-/ready", server.url);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = client.get(&ready).send().await
            && response.status().is_success()
        {
            return server;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus ({}) not ready within 60 s; its log:\n{}",
            binary.display(),
            server.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
