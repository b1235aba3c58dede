//! A revert is confirmed, not assumed: against a real Toxiproxy server and real
//! processes, a fault whose revert cannot show it gone leaves the run `error` with a record
//! that names what may still be active, and names with URL-unsafe characters are injected
//! and reverted like any other.

#[path = "support/engine.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

use chaosgate::chaos::proxy::{ProxyProtocol, ProxyRegistry, ProxyTarget};
use chaosgate::chaos::{ExperimentResult, ProgressEvent, RunContext, run_experiment};
use chaosgate::contract::run_record::{FaultResult, RunStatus};
use tokio::sync::mpsc;

use support::{ChildGuard, EchoServer, Toxiproxy, context, experiment, free_port, process_state};

/// A context whose fault lease, which bounds a failed revert's retries, is short: the
/// reverts these tests break never succeed.
fn short_lease() -> RunContext {
    RunContext {
        lease: Duration::from_secs(1),
        ..context()
    }
}

fn only_fault(result: &ExperimentResult) -> &FaultResult {
    assert_eq!(result.faults.len(), 1, "{:?}", result.faults);
    &result.faults[0]
}

/// Names of the toxics on Toxiproxy proxy `proxy`, its name sent as one encoded segment.
async fn toxics(api: &str, proxy: &str) -> Vec<String> {
    let mut url = reqwest::Url::parse(api).unwrap();
    url.path_segments_mut()
        .unwrap()
        .pop_if_empty()
        .extend(["proxies", proxy, "toxics"]);
    let response = reqwest::get(url.clone()).await.unwrap();
    assert_eq!(response.status(), 200, "GET {url}");
    let list: serde_json::Value = response.json().await.unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

/// Runs `yaml` in the background; returns its handle once its first fault is injected.
async fn run_until_injected(
    yaml: &str,
    ctx: RunContext,
) -> tokio::task::JoinHandle<ExperimentResult> {
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let ctx = RunContext {
        progress: Some(sender),
        ..ctx
    };
    let exp = experiment(yaml);
    let run = tokio::spawn(async move { run_experiment(&exp, &ctx).await });
    let injected = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(p) = receiver.recv().await {
            if matches!(p.event, ProgressEvent::FaultInjected { .. }) {
                return true;
            }
        }
        false
    });
    assert!(
        injected.await.unwrap_or(false),
        "no fault was injected within 10 s"
    );
    run
}

fn toxiproxy_experiment(api: &str, proxy: &str, fault: &str, duration: &str) -> String {
    format!(
        r#"
kind: experiment
id: toxiproxy-revert
faults:
  - name: {fault:?}
    weight: 5
    duration: {duration}
    toxiproxy:
      api: "{api}"
      proxy: {proxy:?}
      toxic: {{ type: latency, latency: 50ms }}
      direction: both
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_url_unsafe_characters_are_injected_and_reverted() {
    let toxiproxy = Toxiproxy::start().await;
    let echo = EchoServer::start().await;
    // Every character that changes a URL path when pasted raw, in both names ('/' only in
    // the fault name: Toxiproxy cannot address a proxy whose name holds one).
    let proxy = "orders db#1?50%";
    let fault = "db/primary #2?x%41 y";
    toxiproxy.create_proxy(proxy, &echo.addr.to_string()).await;

    let yaml = toxiproxy_experiment(&toxiproxy.api, proxy, fault, "1s");
    let run = run_until_injected(&yaml, context()).await;
    let mut active = toxics(&toxiproxy.api, proxy).await;
    active.sort();
    assert_eq!(
        active,
        [
            "chaosgate-db%2Fprimary #2?x%2541 y-downstream",
            "chaosgate-db%2Fprimary #2?x%2541 y-upstream",
        ],
        "the fault name's '/' and '%' are escaped in the toxic name, the rest kept"
    );
    let result = run.await.unwrap();
    assert_eq!(result.verdict, RunStatus::Passed, "{}", result.summary);
    assert!(only_fault(&result).reverted);
    assert_eq!(toxics(&toxiproxy.api, proxy).await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_toxiproxy_revert_that_cannot_reach_the_api_is_not_reverted() {
    let toxiproxy = Toxiproxy::start().await;
    let echo = EchoServer::start().await;
    toxiproxy.create_proxy("echo", &echo.addr.to_string()).await;
    let yaml = toxiproxy_experiment(&toxiproxy.api, "echo", "slow-echo", "500ms");
    // No guard: the API is gone for good, and a guard would retry its revert for 10 min.
    let no_guard = RunContext {
        guard: None,
        ..short_lease()
    };
    let run = run_until_injected(&yaml, no_guard).await;
    // The server goes away with the toxics on it: nothing can show them gone.
    drop(toxiproxy);
    let result = run.await.unwrap();
    assert_eq!(result.verdict, RunStatus::Error, "{}", result.summary);
    let fault = only_fault(&result);
    assert!(!fault.reverted);
    let error = fault.error.as_deref().unwrap();
    assert!(
        error.contains(
            "toxic(s) 'chaosgate-slow-echo-upstream', 'chaosgate-slow-echo-downstream' \
             on Toxiproxy proxy 'echo'"
        ) && error.contains("may still be active: cannot read the proxy's toxics"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_toxic_still_listed_after_a_delete_answered_404_is_not_reverted() {
    let toxiproxy = Toxiproxy::start().await;
    let echo = EchoServer::start().await;
    toxiproxy.create_proxy("echo", &echo.addr.to_string()).await;
    // chaosgate's own HTTP fault proxy sits in front of Toxiproxy's API and answers every
    // DELETE with 404 without passing it on, as a DELETE to a path that misses the toxic
    // would be answered: the toxic stays, and only the listing after it can tell.
    let api_target = ProxyTarget {
        name: "toxiproxy-api".into(),
        listen: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        upstream: toxiproxy.api.trim_start_matches("http://").to_string(),
        protocol: ProxyProtocol::Http,
    };
    let fronted_api = format!("http://{}", api_target.listen);
    let registry = ProxyRegistry::start(&[api_target]).await.unwrap();
    let yaml = format!(
        r#"
kind: experiment
id: delete-misses
execution: parallel
faults:
  - name: deletes-miss
    weight: 1
    duration: 20s
    http: {{ target: toxiproxy-api, action: {{ type: abort, status: 404 }}, match: {{ method: DELETE }} }}
  - name: slow-echo
    weight: 5
    duration: 300ms
    toxiproxy:
      api: "{fronted_api}"
      proxy: echo
      toxic: {{ type: latency, latency: 50ms }}
      direction: downstream
"#
    );
    let ctx = RunContext {
        proxy: Some(registry.clone()),
        ..short_lease()
    };
    let result = tokio::time::timeout(
        Duration::from_secs(15),
        run_experiment(&experiment(&yaml), &ctx),
    )
    .await
    .expect("the failed revert stops the run before the 20 s fault is due");
    assert_eq!(result.verdict, RunStatus::Error, "{}", result.summary);
    let slow = result
        .faults
        .iter()
        .find(|f| f.name == "slow-echo")
        .unwrap();
    assert!(!slow.reverted);
    let error = slow.error.as_deref().unwrap();
    assert!(
        error.contains(&format!(
            "toxic(s) 'chaosgate-slow-echo-downstream' on Toxiproxy proxy 'echo' ({fronted_api}) \
             may still be active: still listed by the proxy after the DELETE"
        )),
        "{error}"
    );
    // The runner gave the revert up; the fault's guard took it over and, once DELETEs
    // pass again (the http fault ended with the run), removes the toxic.
    assert_eq!(registry.active_fault_count(), 0);
    let gave_up = std::time::Instant::now();
    while !toxics(&toxiproxy.api, "echo").await.is_empty() {
        assert!(
            gave_up.elapsed() < Duration::from_secs(30),
            "the guard did not delete the toxic"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The guard confirms its DELETE by listing the toxics through the same front: keep
    // the front up a moment, or the guard finds it gone and retries for its 10 minutes
    // (writing into the test run's output all the while).
    tokio::time::sleep(Duration::from_secs(2)).await;
    registry.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_deleted_before_the_revert_took_its_toxics_with_it() {
    let toxiproxy = Toxiproxy::start().await;
    let echo = EchoServer::start().await;
    toxiproxy.create_proxy("echo", &echo.addr.to_string()).await;
    let yaml = toxiproxy_experiment(&toxiproxy.api, "echo", "slow-echo", "500ms");
    let run = run_until_injected(&yaml, context()).await;
    let deleted = reqwest::Client::new()
        .delete(format!("{}/proxies/echo", toxiproxy.api))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let result = run.await.unwrap();
    // Every DELETE is 404 and so is the toxic list, but GET /proxies shows the proxy gone.
    assert_eq!(result.verdict, RunStatus::Passed, "{}", result.summary);
    assert!(only_fault(&result).reverted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_toxiproxy_cannot_address_is_refused_before_any_call() {
    let toxiproxy = Toxiproxy::start().await;
    let echo = EchoServer::start().await;
    // Toxiproxy creates it, but routes on the decoded path: no toxics API reaches it.
    toxiproxy
        .create_proxy("orders/db", &echo.addr.to_string())
        .await;
    let yaml = toxiproxy_experiment(&toxiproxy.api, "orders/db", "slow", "200ms");
    let result = run_experiment(&experiment(&yaml), &context()).await;
    // The experiment rules (those `chaosgate validate` applies) refuse it before any call.
    assert_eq!(result.verdict, RunStatus::Error, "{}", result.summary);
    assert!(
        result.summary.contains(
            "invalid experiment: faults[0].toxiproxy.proxy: Toxiproxy cannot address proxy 'orders/db'"
        ),
        "{}",
        result.summary
    );
    assert!(only_fault(&result).started_at.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_process_that_stays_stopped_is_not_reverted() {
    let dir = tempfile::tempdir().unwrap();
    let sleeper = ChildGuard::spawn(Command::new("sleep").arg("30"));
    let pid = sleeper.pid();
    let pid_file = dir.path().join("sleeper.pid");
    std::fs::write(&pid_file, pid.to_string()).unwrap();
    // A tracer thread holds the process in a tracing stop, where SIGCONT does not resume
    // it, until told to let go.
    let (attached_tx, attached_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let tracer = std::thread::spawn(move || {
        // SAFETY: ptrace(2) and waitpid(2) on this test's own child, all from this thread.
        let rc = unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, 0usize, 0usize) };
        let error = std::io::Error::last_os_error();
        if rc == 0 {
            let mut status = 0;
            // SAFETY: as above.
            unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        }
        attached_tx.send((rc, error)).unwrap();
        let _ = release_rx.recv();
        // SAFETY: as above.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0usize, 0usize) };
    });
    let (rc, error) = attached_rx.recv().unwrap();
    assert_eq!(rc, 0, "ptrace attach to {pid}: {error}");

    let yaml = format!(
        r#"
kind: experiment
id: pause-held
faults:
  - name: pause-sleeper
    weight: 5
    duration: 200ms
    process: {{ action: pause, pid_file: "{}" }}
"#,
        pid_file.display()
    );
    let result = run_experiment(&experiment(&yaml), &short_lease()).await;
    let state_during = process_state(pid);
    release_tx.send(()).unwrap();
    tracer.join().unwrap();

    assert_eq!(state_during, 't', "held in a tracing stop");
    assert_eq!(result.verdict, RunStatus::Error, "{}", result.summary);
    let fault = only_fault(&result);
    assert!(!fault.reverted);
    let error = fault.error.as_deref().unwrap();
    assert!(
        error.contains(&format!("process {pid} may still be stopped: state 't'")),
        "{error}"
    );
}
