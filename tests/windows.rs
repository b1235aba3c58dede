//! A check counts only for its window: `sot` before any inject, `on_chaos` while every
//! fault is active, `eot` after every revert. Real command faults (a marker file that
//! exists exactly while the fault is active) and real command probes that look at it.

#[path = "support/engine.rs"]
mod support;

use std::path::Path;
use std::process::Command;

use chaosgate::chaos::run_experiment;
use chaosgate::contract::run_record::{RunStatus, Verdict};

use support::{context, experiment};

/// A command fault that creates `file` on inject and removes it on revert.
fn marker_fault(name: &str, duration: &str, file: &Path) -> String {
    let f = file.display();
    format!(
        "  - {{ name: {name}, weight: 5, duration: {duration}, command: {{ inject: {{ argv: [touch, '{f}'] }}, revert: {{ argv: [rm, -f, '{f}'] }} }} }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mode_checks_inside_its_own_window() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("active");
    let m = marker.display();
    let yaml = format!(
        "kind: experiment\nid: windows\nfaults:\n{}probes:\n  - {{ name: before, mode: sot, command: {{ command: {{ argv: [test, '!', -e, '{m}'] }} }} }}\n  - {{ name: during, mode: on_chaos, run_properties: {{ polling_interval: 200ms }}, command: {{ command: {{ argv: [test, -e, '{m}'] }} }} }}\n  - {{ name: after, mode: eot, command: {{ command: {{ argv: [test, '!', -e, '{m}'] }} }} }}\n",
        marker_fault("file", "1s", &marker)
    );
    let result = run_experiment(&experiment(&yaml), &context()).await;
    assert_eq!(result.verdict, RunStatus::Passed, "{:#?}", result.log);
    assert_eq!(result.resilience_score, Some(100.0));
    for probe in &result.probes {
        assert_eq!(probe.verdict, Verdict::Passed, "{probe:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_chaos_probe_that_passes_only_without_chaos_fails() {
    // Case 03's probe with timings validation accepts: every check falls while the fault
    // is active, so every check fails.
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("active");
    let yaml = format!(
        "kind: experiment\nid: healthy-only\nfaults:\n{}probes:\n  - {{ name: healthy, mode: on_chaos, run_properties: {{ initial_delay: 300ms, polling_interval: 200ms }}, command: {{ command: {{ argv: [test, '!', -e, '{}'] }} }} }}\n",
        marker_fault("file", "1s", &marker),
        marker.display()
    );
    let result = run_experiment(&experiment(&yaml), &context()).await;
    assert_eq!(result.verdict, RunStatus::Failed, "{:#?}", result.log);
    assert_eq!(result.probes[0].verdict, Verdict::Failed);
    assert_eq!(result.resilience_score, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_check_that_ends_after_the_revert_does_not_count() {
    // The only check starts while the fault is active and ends after its revert: it did
    // not observe the chaos alone, so the probe has no check inside its window.
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("active");
    let yaml = format!(
        "kind: experiment\nid: slow-check\nfaults:\n{}probes:\n  - {{ name: slow, mode: on_chaos, run_properties: {{ polling_interval: 5s }}, command: {{ command: {{ argv: [sleep, '1.5'] }} }} }}\n",
        marker_fault("file", "500ms", &marker)
    );
    let result = run_experiment(&experiment(&yaml), &context()).await;
    assert_eq!(result.verdict, RunStatus::Error, "{:#?}", result.log);
    let probe = &result.probes[0];
    assert_eq!(probe.verdict, Verdict::Error);
    let error = probe.last_error.as_deref().unwrap_or_default();
    assert!(
        error.starts_with("no check inside its window (while its faults were active; initial_delay 0s); a check ended after the window closed and does not count"),
        "{error}"
    );
    assert!(
        result
            .summary
            .starts_with("error: probe 'slow' (on_chaos): no check inside its window"),
        "{}",
        result.summary
    );
    assert!(
        result.log.iter().any(|l| l.contains(
            "probe slow (on_chaos) check ended after its window closed, not counted (passed)"
        )),
        "{:#?}",
        result.log
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_check_that_ends_after_the_revert_does_not_count_either() {
    // It may have looked at the target while the fault was being reverted.
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("active");
    let yaml = format!(
        "kind: experiment\nid: slow-failure\nfaults:\n{}probes:\n  - {{ name: slow, mode: on_chaos, run_properties: {{ polling_interval: 5s }}, command: {{ command: {{ argv: [sh, -c, 'sleep 1.5; exit 1'] }} }} }}\n",
        marker_fault("file", "500ms", &marker)
    );
    let result = run_experiment(&experiment(&yaml), &context()).await;
    assert_eq!(result.verdict, RunStatus::Error, "{:#?}", result.log);
    assert_eq!(result.probes[0].verdict, Verdict::Error);
    assert!(
        result.log.iter().any(|l| l.contains(
            "probe slow (on_chaos) check ended after its window closed, not counted (failed: command 'sh': exited with 1, expected 0)"
        )),
        "{:#?}",
        result.log
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_faults_are_judged_while_every_one_is_active() {
    // The probe passes only while both markers exist: the window closes before the
    // shorter fault is reverted, so no check sees one fault alone.
    let dir = tempfile::tempdir().unwrap();
    let (long, short) = (dir.path().join("long"), dir.path().join("short"));
    let yaml = format!(
        "kind: experiment\nid: parallel\nexecution: parallel\nfaults:\n{}{}probes:\n  - {{ name: both, mode: on_chaos, run_properties: {{ polling_interval: 100ms }}, command: {{ command: {{ argv: [sh, -c, 'test -e \"$0\" && test -e \"$1\"', '{}', '{}'] }} }} }}\n",
        marker_fault("long", "2s", &long),
        marker_fault("short", "700ms", &short),
        long.display(),
        short.display()
    );
    let result = run_experiment(&experiment(&yaml), &context()).await;
    assert_eq!(result.verdict, RunStatus::Passed, "{:#?}", result.log);
    assert_eq!(result.probes[0].verdict, Verdict::Passed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_refuses_what_validation_refuses_with_the_same_words() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("active");
    let yaml = format!(
        "kind: experiment\nid: late\nfaults:\n{}probes:\n  - {{ name: late, mode: on_chaos, run_properties: {{ initial_delay: 3s }}, command: {{ command: {{ argv: ['true'] }} }} }}\n",
        marker_fault("file", "1s", &marker)
    );
    let result = run_experiment(&experiment(&yaml), &context()).await;
    assert_eq!(result.verdict, RunStatus::Error);
    assert_eq!(
        result.summary,
        "error: invalid experiment: probes[0].run_properties.initial_delay: initial_delay 3s is not below the 1s fault 'file' is active: an on_chaos probe must check while its faults are active (a check after the revert never counts)"
    );
    assert_eq!(
        result.problems,
        [
            "probes[0].run_properties.initial_delay: initial_delay 3s is not below the 1s fault 'file' is active: an on_chaos probe must check while its faults are active (a check after the revert never counts)"
        ]
    );
    assert!(!marker.exists(), "nothing may be injected");
    assert!(result.faults.iter().all(|f| f.started_at.is_none()));
}

#[test]
fn experiment_run_json_answers_with_a_result_for_a_file_that_does_not_validate() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("zero.yaml");
    std::fs::write(
        &file,
        "kind: experiment\nid: zero-interval\nprobes:\n  - name: poll\n    mode: continuous\n    run_properties:\n      polling_interval: 0s\n    command:\n      command: {argv: ['true']}\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_chaosgate"))
        .args(["experiment", "run", "--json"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["experiment_id"], "zero-interval");
    assert_eq!(result["verdict"], "error");
    assert_eq!(result["resilience_score"], serde_json::Value::Null);
    let summary = result["summary"].as_str().unwrap();
    assert!(
        summary.ends_with(":7: probes[0].run_properties.polling_interval: a polling probe's polling_interval must be above 0s"),
        "{summary}"
    );
    let problems = result["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0]
            .as_str()
            .unwrap()
            .ends_with("zero.yaml:7: probes[0].run_properties.polling_interval: a polling probe's polling_interval must be above 0s"),
        "{problems:?}"
    );
}
