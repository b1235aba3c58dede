//! A Kafka broker of the test's own that the worker can reach only through chaosgate's
//! fault proxy (`chaosgate proxy`, driven over its control API), while the test's own
//! clients reach it directly.
//!
//! The rule that keeps it right: Kafka clients connect to the address a broker
//! *advertises*, not to the one they bootstrapped from, so the broker has two listeners.
//! `PROXIED` listens on a private port and advertises the proxy's address: a client that
//! bootstraps through the proxy is told to come back through the proxy, for every
//! connection (group coordinator, transaction coordinator, partition leader). `DIRECT`
//! advertises itself, for the test's producer and `read_committed` reader, so faults hit
//! the worker alone.
//!
//! The broker runs from the jars `deploy/local/kafka.sh` fetched (its `run-class`
//! fetches them the first time and formats the storage), as a child process of the test,
//! so the test can SIGKILL and restart it; the proxy is the real `chaosgate proxy`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use chaosgate::chaos::proxy::ProxyClient;

/// How long a broker start may take before the test fails (a cold JVM on two busy
/// cores takes 15-40 s).
const BROKER_START: Duration = Duration::from_secs(180);

/// The proxy target the broker sits behind.
pub const TARGET: &str = "kafka";

/// The broker, the proxy in front of it, and the proxy's control API.
pub struct ProxiedKafka {
    dir: tempfile::TempDir,
    /// Where the worker connects: the proxy's listener (advertised by the broker).
    pub proxied: String,
    /// Where the test's clients connect: the broker's `DIRECT` listener.
    pub direct: String,
    /// The proxy's control API.
    pub control: ProxyClient,
    broker: Option<Child>,
    proxy: KilledOnDrop,
}

/// A child process killed and reaped when dropped, so a `start` that panics half-way
/// (a broker that cannot be formatted) does not leave the proxy running.
struct KilledOnDrop(Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// `$CHAOSGATE_CACHE/kafka/$KAFKA_VERSION/libs`, where `deploy/local/kafka.sh` keeps
/// the jars.
fn libs_dir() -> PathBuf {
    let cache = std::env::var_os("CHAOSGATE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
                .join(".cache/chaosgate")
        });
    let version = std::env::var("KAFKA_VERSION").unwrap_or_else(|_| "4.4.0".into());
    cache.join("kafka").join(version).join("libs")
}

fn java() -> PathBuf {
    std::env::var_os("JAVA_HOME")
        .map(|home| PathBuf::from(home).join("bin/java"))
        .filter(|java| java.exists())
        .unwrap_or_else(|| PathBuf::from("java"))
}

fn kafka_sh() -> Command {
    Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/local/kafka.sh"
    ))
}

/// A KRaft cluster id: 16 random bytes in URL-safe base64 without padding (22
/// characters), as `kafka-storage.sh random-uuid` prints. Like Kafka's own
/// `Uuid.randomUuid`, it never starts with `-`: `kafka-storage format --cluster-id -x...`
/// would read the id as an option (about one run in 32 failed that way).
fn cluster_id() -> String {
    loop {
        let id = random_cluster_id();
        if !id.starts_with('-') {
            return id;
        }
    }
}

fn random_cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let mut bits: u32 = 0;
    let mut count = 0;
    let mut text = String::new();
    for byte in bytes {
        bits = (bits << 8) | u32::from(byte);
        count += 8;
        while count >= 6 {
            count -= 6;
            text.push(ALPHABET[((bits >> count) & 63) as usize] as char);
        }
    }
    if count > 0 {
        text.push(ALPHABET[((bits << (6 - count)) & 63) as usize] as char);
    }
    text
}

impl ProxiedKafka {
    /// Starts the proxy, then formats and starts the broker behind it; fails the test
    /// when either cannot start.
    pub async fn start() -> ProxiedKafka {
        let dir = tempfile::Builder::new()
            .prefix("chaosgate-soak-broker-")
            .tempdir()
            .expect("temp dir");
        let internal = free_port();
        let direct = free_port();
        let controller = free_port();
        let (proxy, control_url, proxied) = start_proxy(dir.path(), internal);
        let control = ProxyClient::new(&control_url).expect("proxy client");
        let props = dir.path().join("server.properties");
        let data = dir.path().join("data");
        std::fs::create_dir_all(dir.path().join("logs")).expect("logs dir");
        std::fs::write(
            &props,
            format!(
                "node.id=1
process.roles=broker,controller
controller.quorum.voters=1@127.0.0.1:{controller}
controller.listener.names=CONTROLLER
listeners=PROXIED://127.0.0.1:{internal},DIRECT://127.0.0.1:{direct},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PROXIED://{proxied},DIRECT://127.0.0.1:{direct}
inter.broker.listener.name=DIRECT
listener.security.protocol.map=PROXIED:PLAINTEXT,DIRECT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
",
                data = data.display()
            ),
        )
        .expect("server.properties");
        let format = kafka_sh()
            .args(["run-class", "kafka.tools.StorageTool", "format"])
            .arg("--cluster-id")
            .arg(cluster_id())
            .arg("--config")
            .arg(&props)
            .env("KAFKA_RUN_DIR", dir.path())
            .output()
            .expect("run kafka.sh run-class");
        assert!(
            format.status.success(),
            "formatting the soak broker's storage failed: {}{}",
            String::from_utf8_lossy(&format.stdout),
            String::from_utf8_lossy(&format.stderr)
        );
        let mut kafka = ProxiedKafka {
            dir,
            proxied,
            direct: format!("127.0.0.1:{direct}"),
            control,
            broker: None,
            proxy,
        };
        kafka.start_broker().await;
        kafka
    }

    /// The broker's log file (appended to across restarts).
    pub fn broker_log(&self) -> PathBuf {
        self.dir.path().join("logs/kafka.log")
    }

    /// Starts the broker process and waits until it takes a record on its direct
    /// listener; returns how long that took.
    pub async fn start_broker(&mut self) -> Duration {
        assert!(self.broker.is_none(), "the soak broker already runs");
        let started = Instant::now();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.broker_log())
            .expect("broker log");
        let err = log.try_clone().expect("broker log");
        let log4j = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/local/log4j2.yaml");
        let child = Command::new(java())
            .args([
                "-Xms256m",
                "-Xmx512m",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-Djava.awt.headless=true",
            ])
            .arg(format!("-Dlog4j2.configurationFile={log4j}"))
            .arg(format!(
                "-Dkafka.logs.dir={}",
                self.dir.path().join("logs").display()
            ))
            .arg("-cp")
            .arg(format!("{}/*", libs_dir().display()))
            .arg("kafka.Kafka")
            .arg(self.dir.path().join("server.properties"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("start the soak broker (java)");
        self.broker = Some(child);
        self.wait_ready(started).await;
        started.elapsed()
    }

    async fn wait_ready(&mut self, started: Instant) {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.direct)
            .set("message.timeout.ms", "10000")
            .create()
            .expect("health producer");
        loop {
            if let Some(broker) = self.broker.as_mut()
                && let Ok(Some(status)) = broker.try_wait()
            {
                panic!(
                    "the soak broker exited during start-up ({status}); its log: {}",
                    tail(&self.broker_log(), 40)
                );
            }
            let sent = producer
                .send(
                    FutureRecord::<(), _>::to("soak-health").payload("ok"),
                    Duration::from_secs(10),
                )
                .await;
            if sent.is_ok() {
                return;
            }
            assert!(
                started.elapsed() < BROKER_START,
                "the soak broker took no record within {BROKER_START:?}; its log: {}",
                tail(&self.broker_log(), 40)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// SIGKILLs the broker and reaps it.
    pub fn kill_broker(&mut self) {
        if let Some(mut broker) = self.broker.take() {
            let _ = broker.kill();
            let _ = broker.wait();
        }
    }

    /// The proxy's log (its stderr).
    pub fn proxy_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }

    /// The end of the broker's log, for failure messages.
    pub fn broker_tail(&self, lines: usize) -> String {
        tail(&self.broker_log(), lines)
    }
}

impl Drop for ProxiedKafka {
    fn drop(&mut self) {
        self.kill_broker();
    }
}

/// Starts `chaosgate proxy` with one TCP target in front of `127.0.0.1:upstream` and
/// reads the control URL and the listener's address from its first lines.
fn start_proxy(dir: &Path, upstream: u16) -> (KilledOnDrop, String, String) {
    let config = dir.join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "control_listen = \"127.0.0.1:0\"\n\n[[targets]]\nname = \"{TARGET}\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:{upstream}\"\n"
        ),
    )
    .expect("proxy config");
    let log = std::fs::File::create(dir.join("proxy.log")).expect("proxy log");
    let mut proxy = Command::new(env!("CARGO_BIN_EXE_chaosgate"))
        .arg("proxy")
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map(KilledOnDrop)
        .expect("spawn chaosgate proxy");
    let stdout = proxy.0.stdout.take().expect("proxy stdout");
    let mut control = None;
    let mut listen = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("proxy stdout");
        if let Some(url) = line.strip_prefix("control ") {
            control = Some(url.trim().to_string());
        } else if let Some(rest) = line.strip_prefix(&format!("target {TARGET} tcp ")) {
            listen = rest.split_whitespace().next().map(str::to_string);
        }
        if control.is_some() && listen.is_some() {
            break;
        }
    }
    match (control, listen) {
        (Some(control), Some(listen)) => (proxy, control, listen),
        _ => panic!(
            "chaosgate proxy did not announce its addresses: {}",
            std::fs::read_to_string(dir.join("proxy.log")).unwrap_or_default()
        ),
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
