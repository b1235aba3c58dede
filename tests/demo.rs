//! `chaosgate demo` as a user runs it: it exits 0 within a minute and says where its
//! chaos experiments view was; with `--keep` the view stays up, serving the demo's two
//! executions, until Ctrl-C (SIGINT), and the demo still exits 0.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn demo(args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_chaosgate"))
        .arg("demo")
        .args([
            "--catalog",
            concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/examples"),
        ])
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn chaosgate demo")
}

/// Lines of the child's stdout, as they come.
fn lines(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Reads lines until one contains `text` (returned) or `timeout` passes (panics with what
/// was seen).
fn wait_line(
    rx: &mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    text: &str,
    timeout: Duration,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                if line.contains(text) {
                    return line;
                }
            }
            Err(_) => panic!(
                "no line with '{text}' within {timeout:?}; saw:\n{}",
                seen.join("\n")
            ),
        }
    }
}

fn view_address(line: &str) -> String {
    let start = line.find("http://").expect("an address");
    line[start..].trim_end_matches('/').to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_its_view_and_keeps_it_open_until_ctrl_c() {
    // Plain run: exits 0 within a minute, and the view had both executions.
    let started = Instant::now();
    let mut child = demo(&[]);
    let rx = lines(&mut child);
    let mut seen = Vec::new();
    wait_line(
        &rx,
        &mut seen,
        "chaos experiments view (in memory) at http://127.0.0.1:",
        Duration::from_secs(60),
    );
    wait_line(
        &rx,
        &mut seen,
        "the view showed both executions",
        Duration::from_secs(90),
    );
    let status = child.wait().expect("demo exit");
    assert!(
        status.success(),
        "demo exit {status:?}; saw:\n{}",
        seen.join("\n")
    );
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "the demo took {:?}",
        started.elapsed()
    );

    // --keep: the view serves the two executions until SIGINT.
    let mut child = demo(&["--keep"]);
    let rx = lines(&mut child);
    let mut seen = Vec::new();
    let line = wait_line(
        &rx,
        &mut seen,
        "chaos experiments view (in memory) at",
        Duration::from_secs(60),
    );
    let address = view_address(&line);
    wait_line(&rx, &mut seen, "keep running", Duration::from_secs(90));
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let runs: serde_json::Value = http
        .get(format!("{address}/api/runs"))
        .send()
        .await
        .expect("the view answers while the demo keeps running")
        .json()
        .await
        .expect("JSON");
    let statuses: Vec<&str> = runs["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter_map(|r| r["status"].as_str())
        .collect();
    let mut sorted = statuses.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ["failed", "passed"], "{runs}");
    let page = http
        .get(format!("{address}/runs"))
        .send()
        .await
        .expect("runs page");
    assert_eq!(page.status(), reqwest::StatusCode::OK);
    // Ctrl-C.
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the demo did not stop within 30 s of SIGINT"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        status.success(),
        "demo --keep exit after SIGINT {status:?}; saw:\n{}",
        seen.join("\n")
    );
    assert!(
        http.get(format!("{address}/healthz")).send().await.is_err(),
        "the view stopped too"
    );
}
