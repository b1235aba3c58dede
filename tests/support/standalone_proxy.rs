//! A real `chaosgate proxy` child process for tests: started from a config text with
//! extra environment variables, its printed addresses read, killed (SIGKILL, whole
//! process group) when dropped.

#![allow(dead_code)] // each test file uses its own part

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

/// Outer bound on the proxy's start: a bug fails the test instead of hanging it.
const START: Duration = Duration::from_secs(20);

/// A child process killed (SIGKILL, whole process group) when dropped.
pub struct KillOnDrop(pub tokio::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0.id() {
            // SAFETY: kill(2) has no memory effects; the group is the child's own.
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
            }
        }
    }
}

/// A running standalone proxy.
pub struct Standalone {
    /// The process.
    pub child: KillOnDrop,
    /// The control API's base URL as printed (`http://...` or `https://...`).
    pub control: String,
    /// Each target's name and bound listen address.
    pub targets: Vec<(String, SocketAddr)>,
    /// The folder holding the config file (and whatever the test put there).
    pub dir: PathBuf,
    /// That folder, when the proxy owns it (removed when dropped).
    temp: Option<tempfile::TempDir>,
}

impl Standalone {
    /// The bound address of target `name`.
    pub fn listen(&self, name: &str) -> SocketAddr {
        self.targets
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("target {name} not listed"))
    }
}

/// The command that runs `chaosgate proxy --config CONFIG` with `env` added.
pub fn command(config: &Path, env: &[(&str, &str)]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_chaosgate"));
    command
        .arg("proxy")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .env_remove("CHAOSGATE_PROXY__TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    command
}

/// Starts `chaosgate proxy` with the config `text` (written to `dir/proxy.toml`) and
/// `env`, and reads the addresses it prints.
pub async fn start(dir: &Path, text: &str, env: &[(&str, &str)]) -> Standalone {
    let config = dir.join("proxy.toml");
    std::fs::write(&config, text).expect("write proxy config");
    let mut child = command(&config, env)
        .spawn()
        .expect("spawn chaosgate proxy");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let child = KillOnDrop(child);
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(START, lines.next_line())
        .await
        .expect("the proxy prints its control line in time")
        .expect("read stdout");
    let Some(first) = first else {
        let mut text = String::new();
        let _ =
            tokio::io::AsyncReadExt::read_to_string(&mut BufReader::new(stderr), &mut text).await;
        panic!("chaosgate proxy exited before listening: {text}");
    };
    let control = first
        .strip_prefix("control ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_string();
    let mut targets = Vec::new();
    for _ in 0..text.matches("[[targets]]").count() {
        let line = tokio::time::timeout(START, lines.next_line())
            .await
            .expect("target line in time")
            .expect("read stdout")
            .expect("a target line");
        // target NAME PROTOCOL LISTEN -> UPSTREAM
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.first(), Some(&"target"), "{line}");
        targets.push((
            words[1].to_string(),
            words[3].parse().expect("listen address"),
        ));
    }
    // Keep draining stderr so the child never blocks on a full pipe.
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[proxy] {line}");
        }
    });
    Standalone {
        child,
        control,
        targets,
        dir: dir.to_path_buf(),
        temp: None,
    }
}

/// [`start`] in a new temporary folder that lives as long as the proxy.
pub async fn start_in_temp(text: &str, env: &[(&str, &str)]) -> Standalone {
    let temp = tempfile::tempdir().expect("tempdir");
    let mut proxy = start(temp.path(), text, env).await;
    proxy.temp = Some(temp);
    proxy
}

/// Runs `chaosgate proxy` with a config that must be refused: its exit status and
/// standard error.
pub async fn refused(dir: &Path, text: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let config = dir.join("proxy.toml");
    std::fs::write(&config, text).expect("write proxy config");
    let output = tokio::time::timeout(START, command(&config, env).output())
        .await
        .expect("the proxy exits in time")
        .expect("run chaosgate proxy");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A TCP server that echoes what it reads, on a free loopback port.
pub async fn echo_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    addr
}

/// A proxy config: the control API on `listen`, `extra` TOML (e.g. a `[control]`
/// table), and one TCP target `echo` forwarding to `upstream`.
pub fn config(listen: &str, extra: &str, upstream: SocketAddr) -> String {
    format!(
        "control_listen = \"{listen}\"\n{extra}\n[[targets]]\nname = \"echo\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n"
    )
}

/// Writes an experiment `id` with one 100 ms latency fault `slow`, lasting `duration`, on
/// target `echo` of the standalone proxy at `control`, and an end-of-test probe `true`.
pub fn experiment_file(dir: &Path, id: &str, control: &str, duration: &str) -> PathBuf {
    let path = dir.join(format!("{id}.yaml"));
    std::fs::write(
        &path,
        format!(
            "kind: experiment\nid: {id}\nfaults:\n  - name: slow\n    weight: 5\n    duration: {duration}\n    network:\n      target: echo\n      proxy: {control}\n      toxic: {{ type: latency, latency: 100ms }}\nprobes:\n  - {{ name: p, mode: eot, command: {{ command: {{ argv: [\"true\"] }} }} }}\n"
        ),
    )
    .expect("write experiment");
    path
}

/// `chaosgate experiment run --json --lease 2s FILE ARGS` with `env` added (and no
/// inherited proxy token).
pub fn experiment_run(file: &Path, args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_chaosgate"));
    command
        .args(["experiment", "run", "--json", "--lease", "2s"])
        .args(args)
        .arg(file)
        .env_remove("CHAOSGATE_PROXY__TOKEN")
        .env_remove("CHAOSGATE_PROXY__TOKEN_FILE")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}
