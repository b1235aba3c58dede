//! One owner at a time per target of a standalone `chaosgate proxy`: a second owner's
//! fault is refused with 409 naming the holder, the runner waits and injects once the
//! first one reverted (two `chaosgate experiment run` processes never overlap), and a
//! wait longer than `target_wait` ends `aborted` with nothing injected. All against the
//! real binaries over real TCP and HTTP.

#[path = "support/standalone_proxy.rs"]
mod standalone_proxy;

use std::time::Duration;

use chaosgate::chaos::ExperimentResult;
use chaosgate::contract::run_record::RunStatus;
use serde_json::{Value, json};
use standalone_proxy::{config, echo_server, experiment_file, experiment_run};

/// Outer bound on every wait: a bug fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(60);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Adds a 100 ms latency fault on `echo` for `owner` (none: the field left out) with
/// `lease_ms`: status and JSON body.
async fn add(control: &str, owner: Option<&str>, lease_ms: u64) -> (u16, Value) {
    let mut body = json!({"network": {"toxic": {"type": "latency", "latency": "100ms"}}, "lease_ms": lease_ms});
    if let Some(owner) = owner {
        body["owner"] = json!(owner);
    }
    within("add", async {
        let response = reqwest::Client::new()
            .post(format!("{control}/targets/echo/faults"))
            .json(&body)
            .send()
            .await
            .expect("control API reachable");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    })
    .await
}

async fn remove(control: &str, id: &Value) -> u16 {
    within("remove", async {
        reqwest::Client::new()
            .delete(format!("{control}/faults/{id}"))
            .send()
            .await
            .expect("control API reachable")
            .status()
            .as_u16()
    })
    .await
}

async fn echo_target(control: &str) -> Value {
    within("targets", async {
        let targets: Value = reqwest::get(format!("{control}/targets"))
            .await
            .expect("control API reachable")
            .json()
            .await
            .expect("JSON");
        targets[0].clone()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_belongs_to_one_owner_until_its_last_fault_goes() {
    let echo = echo_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = standalone_proxy::start(dir.path(), &config("127.0.0.1:0", "", echo), &[]).await;
    let control = &proxy.control;

    let (status, first) = add(control, Some("run-a"), 30_000).await;
    assert_eq!(status, 201, "{first}");
    // The same owner may add more.
    let (status, second) = add(control, Some("run-a"), 30_000).await;
    assert_eq!(status, 201, "{second}");
    assert_eq!(echo_target(control).await["owner"], "run-a");

    // Another owner is refused, told which target and who holds it, and adds nothing.
    let (status, body) = add(control, Some("run-b"), 30_000).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "target_busy", "{body}");
    assert_eq!(body["target"], "echo", "{body}");
    assert_eq!(body["owner"], "run-a", "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("run-a")),
        "{body}"
    );
    let (status, body) = add(control, None, 30_000).await;
    assert_eq!(status, 409, "an owner-less fault is refused too: {body}");
    assert_eq!(
        echo_target(control).await["faults"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    // One fault reverted: still held. The last one: free.
    assert_eq!(remove(control, &first["id"]).await, 204);
    let (status, _) = add(control, Some("run-b"), 30_000).await;
    assert_eq!(status, 409);
    assert_eq!(remove(control, &second["id"]).await, 204);
    assert_eq!(echo_target(control).await.get("owner"), None);
    let (status, b) = add(control, Some("run-b"), 300).await;
    assert_eq!(status, 201, "{b}");

    // A lease that lapses releases the target as well.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, c) = add(control, Some("run-c"), 30_000).await;
    assert_eq!(
        status, 201,
        "run-b's lapsed lease no longer holds the target: {c}"
    );

    // An owner that is not one line is refused.
    let (status, body) = add(control, Some("evil\nowner"), 1000).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "owner", "{body}");
}

async fn run_result(command: &mut tokio::process::Command) -> (ExperimentResult, String) {
    let out = within("experiment run", command.output())
        .await
        .expect("run chaosgate experiment run");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let result =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("no result ({e}): {stderr}"));
    (result, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_experiment_runs_on_one_proxied_target_never_overlap() {
    let echo = echo_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = standalone_proxy::start(dir.path(), &config("127.0.0.1:0", "", echo), &[]).await;
    let first = experiment_file(dir.path(), "first", &proxy.control, "2s");
    let second = experiment_file(dir.path(), "second", &proxy.control, "2s");
    // Two processes: the in-process target lock cannot keep them apart, only the proxy.
    let mut a = experiment_run(&first, &[], &[]);
    let mut b = experiment_run(&second, &[], &[]);
    let (a, b) = tokio::join!(run_result(&mut a), run_result(&mut b));
    let ((a, a_log), (b, b_log)) = (a, b);
    for result in [&a, &b] {
        assert_eq!(result.verdict, RunStatus::Passed, "{:?}", result.log);
        assert!(result.faults[0].reverted, "{:?}", result.faults[0]);
    }
    let span = |r: &ExperimentResult| {
        let f = &r.faults[0];
        (
            f.started_at.expect("injected"),
            f.ended_at.expect("reverted"),
        )
    };
    let (a_start, a_end) = span(&a);
    let (b_start, b_end) = span(&b);
    eprintln!("first {a_start} .. {a_end}\nsecond {b_start} .. {b_end}");
    let (earlier, later, later_result) = if a_start <= b_start {
        ((a_start, a_end), (b_start, b_end), &b)
    } else {
        ((b_start, b_end), (a_start, a_end), &a)
    };
    assert!(
        later.0 >= earlier.1,
        "faults overlap: {earlier:?} and {later:?}"
    );
    // The later one waited, and said so as it does for the in-process target lock.
    assert!(
        later_result
            .log
            .iter()
            .any(|l| l.contains("waiting for target proxy:echo, held by")),
        "{:?}\n{a_log}\n{b_log}",
        later_result.log
    );
    assert!(
        echo_target(&proxy.control).await["faults"]
            .as_array()
            .is_some_and(Vec::is_empty)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_held_longer_than_target_wait_ends_the_run_aborted() {
    let echo = echo_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = standalone_proxy::start(dir.path(), &config("127.0.0.1:0", "", echo), &[]).await;
    let (status, held) = add(&proxy.control, Some("holder-run"), 60_000).await;
    assert_eq!(status, 201, "{held}");
    let file = experiment_file(dir.path(), "patient", &proxy.control, "1s");
    let started = std::time::Instant::now();
    let (result, stderr) = run_result(&mut experiment_run(
        &file,
        &["--target-wait", "1500ms"],
        &[],
    ))
    .await;
    let took = started.elapsed();
    assert_eq!(
        result.verdict,
        RunStatus::Aborted,
        "{:?}\n{stderr}",
        result.log
    );
    assert!(
        result
            .summary
            .contains("waited 1s 500ms for target proxy:echo (held by holder-run")
            || result
                .summary
                .contains("for target proxy:echo (held by holder-run"),
        "{}",
        result.summary
    );
    assert!(
        result.faults[0].started_at.is_none(),
        "{:?}",
        result.faults[0]
    );
    assert!(
        took >= Duration::from_millis(1500),
        "gave up after {took:?}"
    );
    // Only the holder's fault is there.
    let target = echo_target(&proxy.control).await;
    assert_eq!(target["owner"], "holder-run");
    assert_eq!(target["faults"].as_array().map(Vec::len), Some(1));
}
