//! Real servers and processes for the engine tests, all on 127.0.0.1: an HTTP server
//! that counts requests per path, a TCP echo server, a Toxiproxy server, and a child
//! process that is killed when the test ends.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chaosgate::catalog::experiment::Experiment;
use chaosgate::chaos::{RunContext, TargetLocks};
use chrono::{DateTime, Utc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// An experiment from YAML; a test's own YAML that does not parse panics.
pub fn experiment(yaml: &str) -> Experiment {
    serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("bad test experiment: {e}\n{yaml}"))
}

/// A context with its own target locks, so tests running side by side do not wait, and
/// the real chaosgate binary as fault guard, as the CLI sets it.
pub fn context() -> RunContext {
    RunContext {
        targets: TargetLocks::new(),
        guard: Some(env!("CARGO_BIN_EXE_chaosgate").into()),
        ..RunContext::default()
    }
}

/// Requests seen: path and arrival time.
type Hits = Arc<Mutex<Vec<(String, DateTime<Utc>)>>>;

/// An HTTP/1.1 server that records when each path was requested and answers 200 (or the
/// status set for the path), one request per connection.
pub struct CountingServer {
    pub addr: SocketAddr,
    hits: Hits,
    statuses: Arc<Mutex<HashMap<String, u16>>>,
    task: JoinHandle<()>,
}

impl CountingServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits: Hits = Arc::default();
        let statuses: Arc<Mutex<HashMap<String, u16>>> = Arc::default();
        let task = tokio::spawn({
            let hits = hits.clone();
            let statuses = statuses.clone();
            async move {
                loop {
                    let Ok((mut socket, _)) = listener.accept().await else {
                        return;
                    };
                    let hits = hits.clone();
                    let statuses = statuses.clone();
                    tokio::spawn(async move {
                        let mut buf = Vec::new();
                        let mut chunk = [0u8; 1024];
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match socket.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let text = String::from_utf8_lossy(&buf);
                        let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
                        hits.lock().unwrap().push((path.clone(), Utc::now()));
                        let status = statuses.lock().unwrap().get(&path).copied().unwrap_or(200);
                        let reply = format!(
                            "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                        );
                        let _ = socket.write_all(reply.as_bytes()).await;
                        let _ = socket.shutdown().await;
                    });
                }
            }
        });
        CountingServer {
            addr,
            hits,
            statuses,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// When `path` was requested, in order.
    pub fn hits(&self, path: &str) -> Vec<DateTime<Utc>> {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, at)| *at)
            .collect()
    }

    pub fn set_status(&self, path: &str, status: u16) {
        self.statuses
            .lock()
            .unwrap()
            .insert(path.to_string(), status);
    }
}

impl Drop for CountingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP server that echoes what it reads.
pub struct EchoServer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl EchoServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut chunk = [0u8; 4096];
                    loop {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if socket.write_all(&chunk[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        EchoServer { addr, task }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Round trip of a 4-byte message over a new connection to `addr`.
pub async fn echo_round_trip(addr: &str) -> Duration {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let started = std::time::Instant::now();
    stream.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");
    started.elapsed()
}

/// A child process killed (and reaped) when dropped.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn spawn(command: &mut Command) -> Self {
        ChildGuard(command.stdin(Stdio::null()).spawn().expect("spawn child"))
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.0.id()).unwrap()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of our own child; SIGCONT first in case it is paused.
        unsafe {
            libc::kill(self.pid(), libc::SIGCONT);
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The state letter of a process (`S` sleeping, `T` stopped, ...), from /proc.
pub fn process_state(pid: i32) -> char {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("State:"))
        .and_then(|s| s.trim().chars().next())
        .unwrap_or('?')
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The toxiproxy-server binary: `TOXIPROXY_SERVER`, `$(go env GOPATH)/bin`, or PATH.
pub fn toxiproxy_binary() -> PathBuf {
    if let Ok(path) = std::env::var("TOXIPROXY_SERVER") {
        return PathBuf::from(path);
    }
    let gopath = Command::new("go")
        .args(["env", "GOPATH"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty());
    if let Some(gopath) = gopath {
        let candidate = PathBuf::from(gopath).join("bin/toxiproxy-server");
        if candidate.is_file() {
            return candidate;
        }
    }
    let on_path = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| PathBuf::from(d).join("toxiproxy-server"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| {
        panic!(
            "toxiproxy-server not found: install it with \
             `go install github.com/Shopify/toxiproxy/v2/cmd/toxiproxy-server@latest` \
             or set TOXIPROXY_SERVER to its path"
        )
    })
}

/// A Toxiproxy server on a free loopback port, stopped when dropped.
pub struct Toxiproxy {
    pub api: String,
    _child: ChildGuard,
}

impl Toxiproxy {
    pub async fn start() -> Self {
        let port = free_port();
        let child = ChildGuard::spawn(
            Command::new(toxiproxy_binary())
                .args(["-host", "127.0.0.1", "-port", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let api = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        for _ in 0..100 {
            if client.get(format!("{api}/version")).send().await.is_ok() {
                return Toxiproxy { api, _child: child };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("toxiproxy-server did not answer on {api}");
    }

    /// Creates a proxy to `upstream`; returns the address it listens on.
    pub async fn create_proxy(&self, name: &str, upstream: &str) -> String {
        let listen = format!("127.0.0.1:{}", free_port());
        let response = reqwest::Client::new()
            .post(format!("{}/proxies", self.api))
            .json(&serde_json::json!({"name": name, "listen": listen, "upstream": upstream, "enabled": true}))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "create proxy: {}",
            response.status()
        );
        listen
    }

    /// Names of the toxics on proxy `name`.
    pub async fn toxics(&self, name: &str) -> Vec<String> {
        let list: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/proxies/{name}/toxics", self.api))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    }
}
