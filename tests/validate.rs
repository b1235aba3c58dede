//! `chaosgate validate` as an operator uses it: the example catalog passes, and broken
//! catalogs get every problem reported with its file, line and field path.

use std::path::Path;
use std::process::Command;

use chaosgate::catalog::Catalog;
use tempfile::TempDir;

/// A valid pipeline; line numbers matter to the tests below.
const PIPELINE: &str = "\
kind: pipeline
id: checkout
routes:
  - project: shop
    environment: production
    flag: checkout-*
stages:
  - id: smoke
    type: feature_flag
    steps:
      - id: latency
        experiment: payments-latency
        expected_resilience_score: 80
  - id: deploy
    type: deploy
    steps:
      - id: latency-again
        experiment: payments-latency
        expected_resilience_score: 90
        assertion: probes_failed == 0
        failure_strategy:
          action: retry
          count: 2
";

/// A valid experiment; line numbers matter to the tests below.
const EXPERIMENT: &str = "\
kind: experiment
id: payments-latency
description: Checkout answers within 300 ms while payments is 200 ms slower.
faults:
  - name: payments-slow
    weight: 5
    duration: 30s
    network:
      target: payments
      toxic:
        type: latency
        latency: 200ms
      toxicity: 1.0
probes:
  - name: checkout-fast
    mode: on_chaos
    http:
      url: http://127.0.0.1:8080/health
      criteria:
        max_response_ms: 300
        body_regex: \"ok\"
";

const PIPELINE_FILE: &str = "pipelines/checkout.yaml";
const EXPERIMENT_FILE: &str = "experiments/payments-latency.yaml";

/// `text` with `old` replaced by `new`; `old` must be there.
fn edit(text: &str, old: &str, new: &str) -> String {
    assert!(text.contains(old), "{old:?} is not in the base file");
    text.replacen(old, new, 1)
}

/// A catalog folder holding these files.
fn catalog(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

/// Runs `chaosgate validate` on `paths` (from `cwd`); returns the exit code and stdout lines.
fn validate_in(cwd: &Path, paths: &[&str]) -> (i32, Vec<String>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_chaosgate"))
        .arg("validate")
        .args(paths)
        .current_dir(cwd)
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    let lines = stdout.lines().map(str::to_string).collect();
    (output.status.code().unwrap_or(-1), lines, stderr)
}

/// Validates a catalog folder holding the base files with `pipeline` and `experiment` as
/// the two files' texts, plus `extra` files; returns the problem lines (summary removed).
fn problems(pipeline: &str, experiment: &str, extra: &[(&str, &str)]) -> Vec<String> {
    let mut files = vec![(PIPELINE_FILE, pipeline), (EXPERIMENT_FILE, experiment)];
    files.extend_from_slice(extra);
    let dir = catalog(&files);
    let (code, mut lines, stderr) = validate_in(dir.path(), &["."]);
    assert_eq!(code, 1, "expected problems, got {lines:#?} {stderr}");
    let summary = lines.pop().unwrap();
    assert!(
        summary.ends_with(&format!(
            "{} in {} file{}",
            if lines.len() == 1 {
                "1 problem".to_string()
            } else {
                format!("{} problems", lines.len())
            },
            count_files(&lines),
            if count_files(&lines) == 1 { "" } else { "s" }
        )),
        "summary {summary:?} does not count {lines:#?}"
    );
    lines
}

/// Asserts the catalog with these two files reports exactly `expected`, in this order.
fn expect_problems(pipeline: &str, experiment: &str, expected: &[&str]) {
    assert_eq!(problems(pipeline, experiment, &[]), expected);
}

fn count_files(lines: &[String]) -> usize {
    let mut files: Vec<&str> = lines.iter().map(|l| l.split(':').next().unwrap()).collect();
    files.sort_unstable();
    files.dedup();
    files.len()
}

#[test]
fn the_example_catalog_is_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (code, lines, stderr) = validate_in(root, &["deploy/examples"]);
    assert_eq!(code, 0, "{lines:#?} {stderr}");
    assert_eq!(lines, ["ok: 6 pipelines, 10 experiments in 16 files"]);
}

#[test]
fn the_example_catalog_routes_the_demo_flags() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples");
    let catalog = Catalog::load(&[root]).unwrap();
    let id = |project, environment, flag| {
        catalog
            .pipeline_for(project, environment, flag)
            .map(|p| p.id.as_str())
    };
    assert_eq!(id("demo", "staging", "checkout-v2"), Some("demo-checkout"));
    assert_eq!(id("demo", "staging", "search-ranking"), Some("demo-search"));
    assert_eq!(id("demo", "production", "checkout-v2"), None);
    assert_eq!(
        id("shop", "production", "checkout-new-flow"),
        Some("checkout-release")
    );
    assert_eq!(
        id("shop", "production", "cache-migration"),
        Some("platform-deploy")
    );
    assert_eq!(id("shop", "staging", "anything"), Some("staging-dry-run"));
    assert_eq!(id("shop", "production", "banner-color"), None);
    let demo = catalog.experiment("demo-payments-latency").unwrap();
    assert_eq!(demo.faults[0].duration.duration().as_secs(), 3);
    assert!(
        catalog.pipeline("demo-search").unwrap().stages[0].steps[0]
            .chaos()
            .unwrap()
            .experiment
            == "demo-search-blip"
    );
}

#[test]
fn the_base_catalog_of_these_tests_is_valid() {
    let dir = catalog(&[(PIPELINE_FILE, PIPELINE), (EXPERIMENT_FILE, EXPERIMENT)]);
    let (code, lines, _) = validate_in(dir.path(), &["."]);
    assert_eq!(
        (code, lines),
        (
            0,
            vec!["ok: 1 pipeline, 1 experiment in 2 files".to_string()]
        )
    );
}

#[test]
fn yaml_11_boolean_words_are_text_as_yaml_12_says() {
    let pipeline = edit(
        PIPELINE,
        "  - project: shop\n    environment: production\n    flag: checkout-*",
        "  - project: on\n    environment: yes\n    flag: no",
    );
    let dir = catalog(&[(PIPELINE_FILE, &pipeline), (EXPERIMENT_FILE, EXPERIMENT)]);
    let (code, lines, stderr) = validate_in(dir.path(), &["."]);
    assert_eq!(code, 0, "{lines:#?} {stderr}");
    let catalog = Catalog::load(&[dir.path().to_path_buf()]).unwrap();
    let routed = catalog
        .pipeline_for("on", "yes", "no")
        .map(|p| p.id.as_str());
    assert_eq!(routed, Some("checkout"));
}

#[test]
fn a_yaml_11_boolean_word_in_a_boolean_field_is_named_with_what_to_write() {
    let pipeline = edit(PIPELINE, "id: checkout\n", "id: checkout\ndry_run: yes\n");
    expect_problems(
        &pipeline,
        EXPERIMENT,
        &[
            "pipelines/checkout.yaml:3: dry_run: expected true or false, found text 'yes' \
             (catalog files are YAML 1.2, where 'yes' is text, not a boolean: write true; \
             quote it, \"yes\", where you mean the text)",
        ],
    );
}

#[test]
fn expected_score_above_100() {
    let pipeline = edit(
        PIPELINE,
        "expected_resilience_score: 90",
        "expected_resilience_score: 140",
    );
    expect_problems(
        &pipeline,
        EXPERIMENT,
        &[
            "pipelines/checkout.yaml:19: stages[1].steps[0].expected_resilience_score: 140 is above 100",
        ],
    );
}

#[test]
fn misspelled_field() {
    let experiment = edit(EXPERIMENT, "    weight: 5", "    weight: 5\n    wieght: 3");
    expect_problems(
        PIPELINE,
        &experiment,
        &[
            "experiments/payments-latency.yaml:7: faults[0]: unknown field 'wieght' (did you mean 'weight'?)",
        ],
    );
}

#[test]
fn missing_experiment_in_a_step() {
    let pipeline = edit(
        PIPELINE,
        "        experiment: payments-latency\n        expected_resilience_score: 80\n",
        "        expected_resilience_score: 80\n",
    );
    expect_problems(
        &pipeline,
        EXPERIMENT,
        &["pipelines/checkout.yaml:11: stages[0].steps[0]: missing field 'experiment'"],
    );
}

#[test]
fn unknown_experiment_ref() {
    let pipeline = edit(
        PIPELINE,
        "experiment: payments-latency\n        expected_resilience_score: 90",
        "experiment: payment-latency\n        expected_resilience_score: 90",
    );
    expect_problems(
        &pipeline,
        EXPERIMENT,
        &[
            "pipelines/checkout.yaml:18: stages[1].steps[0].experiment: unknown experiment 'payment-latency'",
        ],
    );
}

#[test]
fn duplicate_pipeline_ids_name_both_files() {
    let other = edit(PIPELINE, "flag: checkout-*", "flag: cart-*");
    let lines = problems(
        PIPELINE,
        EXPERIMENT,
        &[("pipelines/checkout-copy.yaml", &other)],
    );
    assert_eq!(
        lines,
        [
            "pipelines/checkout-copy.yaml:2: id: duplicate pipeline id 'checkout' (also in pipelines/checkout.yaml)",
            "pipelines/checkout.yaml:2: id: duplicate pipeline id 'checkout' (also in pipelines/checkout-copy.yaml)",
        ]
    );
}

#[test]
fn duplicate_stage_and_step_ids() {
    let pipeline = edit(PIPELINE, "  - id: deploy", "  - id: smoke");
    let pipeline = edit(
        &pipeline,
        "      - id: latency-again",
        "      - id: latency-again\n        name: first\n        experiment: payments-latency\n        expected_resilience_score: 10\n      - id: latency-again",
    );
    expect_problems(
        &pipeline,
        EXPERIMENT,
        &[
            "pipelines/checkout.yaml:14: stages[1].id: duplicate stage id 'smoke' (also stages[0])",
            "pipelines/checkout.yaml:21: stages[1].steps[1].id: duplicate step id 'latency-again' (also stages[1].steps[0])",
        ],
    );
}

#[test]
fn weight_outside_1_to_10() {
    let experiment = edit(EXPERIMENT, "weight: 5", "weight: 11");
    expect_problems(
        PIPELINE,
        &experiment,
        &["experiments/payments-latency.yaml:6: faults[0].weight: 11 is above 10"],
    );
    let experiment = edit(EXPERIMENT, "weight: 5", "weight: 0");
    expect_problems(
        PIPELINE,
        &experiment,
        &["experiments/payments-latency.yaml:6: faults[0].weight: 0 is below 1"],
    );
}

#[test]
fn durations_that_do_not_parse() {
    let experiment = edit(EXPERIMENT, "duration: 30s", "duration: 30 seconds");
    let experiment = edit(&experiment, "latency: 200ms", "latency: 1.5s");
    expect_problems(
        PIPELINE,
        &experiment,
        &[
            "experiments/payments-latency.yaml:7: faults[0].duration: '30 seconds' is not a duration (write e.g. 200ms, 30s, 5m, 1h or 1m30s)",
            "experiments/payments-latency.yaml:12: faults[0].network.toxic.latency: '1.5s' is not a duration (write e.g. 200ms, 30s, 5m, 1h or 1m30s)",
        ],
    );
}

#[test]
fn faults_with_no_kind_or_several() {
    let none = edit(
        EXPERIMENT,
        "    network:\n      target: payments\n      toxic:\n        type: latency\n        latency: 200ms\n      toxicity: 1.0\n",
        "",
    );
    expect_problems(
        PIPELINE,
        &none,
        &[
            "experiments/payments-latency.yaml:5: faults[0]: fault 'payments-slow' has no kind: set one of network, http, toxiproxy, process, command",
        ],
    );
    let several = edit(
        EXPERIMENT,
        "    network:",
        "    process:\n      action: pause\n      name: payments\n    network:",
    );
    expect_problems(
        PIPELINE,
        &several,
        &[
            "experiments/payments-latency.yaml:5: faults[0]: fault 'payments-slow' sets several kinds (network, process): set exactly one",
        ],
    );
}

#[test]
fn probes_with_an_unknown_type_or_several() {
    let unknown = edit(EXPERIMENT, "    http:\n      url", "    grpc:\n      url");
    expect_problems(
        PIPELINE,
        &unknown,
        &[
            "experiments/payments-latency.yaml:17: probes[0]: unknown probe type 'grpc' (allowed: http, tcp, command, prometheus)",
        ],
    );
    let several = edit(
        EXPERIMENT,
        "    http:\n      url",
        "    tcp:\n      address: 127.0.0.1:8080\n    http:\n      url",
    );
    expect_problems(
        PIPELINE,
        &several,
        &[
            "experiments/payments-latency.yaml:15: probes[0]: probe 'checkout-fast' sets several types (http, tcp): set exactly one",
        ],
    );
}

#[test]
fn unknown_probe_mode() {
    let experiment = edit(EXPERIMENT, "mode: on_chaos", "mode: during_chaos");
    expect_problems(
        PIPELINE,
        &experiment,
        &[
            "experiments/payments-latency.yaml:16: probes[0].mode: unknown mode 'during_chaos' (allowed: sot, eot, edge, continuous, on_chaos)",
        ],
    );
}

#[test]
fn fault_naming_a_probe_that_does_not_exist() {
    let experiment = edit(
        EXPERIMENT,
        "    duration: 30s",
        "    duration: 30s\n    probes: [checkout-fast, checkout-slow]",
    );
    expect_problems(
        PIPELINE,
        &experiment,
        &[
            "experiments/payments-latency.yaml:8: faults[0].probes[1]: unknown probe 'checkout-slow' (probes of this experiment: checkout-fast)",
        ],
    );
}

#[test]
fn assertions_that_do_not_compile() {
    let pipeline = edit(
        PIPELINE,
        "assertion: probes_failed == 0",
        "assertion: probes_failed == 0 && latency_ms < 300",
    );
    expect_problems(
        &pipeline,
        EXPERIMENT,
        &[
            "pipelines/checkout.yaml:20: stages[1].steps[0].assertion: unknown variable 'latency_ms' (variables: resilience_score, expected_resilience_score, faults_passed, faults_failed, probes_passed, probes_failed, duration_seconds)",
        ],
    );
    let pipeline = edit(
        PIPELINE,
        "assertion: probes_failed == 0",
        "assertion: probes_failed = 0",
    );
    let lines = problems(&pipeline, EXPERIMENT, &[]);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].starts_with(
            "pipelines/checkout.yaml:20: stages[1].steps[0].assertion: does not compile: "
        ),
        "{lines:#?}"
    );
}

#[test]
fn edge_probe_without_faults() {
    let experiment = edit(
        EXPERIMENT,
        "faults:\n  - name: payments-slow\n    weight: 5\n    duration: 30s\n    network:\n      target: payments\n      toxic:\n        type: latency\n        latency: 200ms\n      toxicity: 1.0\n",
        "faults: []\n",
    );
    let experiment = edit(&experiment, "mode: on_chaos", "mode: edge");
    expect_problems(
        PIPELINE,
        &experiment,
        &[
            "experiments/payments-latency.yaml:7: probes[0].mode: an edge probe compares before and after the faults, but this experiment has no faults",
        ],
    );
}

#[test]
fn toxicity_and_percentage_outside_0_to_1() {
    let experiment = edit(EXPERIMENT, "toxicity: 1.0", "toxicity: 1.5");
    let experiment = edit(
        &experiment,
        "probes:\n",
        "  - name: inventory-errors\n    weight: 2\n    duration: 10s\n    http:\n      target: inventory\n      action: {type: abort, status: 503}\n      percentage: -0.2\nprobes:\n",
    );
    expect_problems(
        PIPELINE,
        &experiment,
        &[
            "experiments/payments-latency.yaml:13: faults[0].network.toxicity: 1.5 is above 1",
            "experiments/payments-latency.yaml:20: faults[1].http.percentage: -0.2 is below 0",
        ],
    );
}

#[test]
fn refuse_toxic_on_toxiproxy() {
    let experiment = edit(
        EXPERIMENT,
        "    network:\n      target: payments\n      toxic:\n        type: latency\n        latency: 200ms\n",
        "    toxiproxy:\n      api: http://127.0.0.1:8474\n      proxy: payments\n      toxic:\n        type: refuse\n",
    );
    expect_problems(
        PIPELINE,
        &experiment,
        &[
            "experiments/payments-latency.yaml:12: faults[0].toxiproxy.toxic.type: the 'refuse' toxic is not available on Toxiproxy (use reset_peer or timeout, or a network fault)",
        ],
    );
}

#[test]
fn unknown_toxic_type() {
    let experiment = edit(EXPERIMENT, "type: latency", "type: packet_loss");
    expect_problems(
        PIPELINE,
        &experiment,
        &[
            "experiments/payments-latency.yaml:11: faults[0].network.toxic.type: unknown type 'packet_loss' (allowed: latency, bandwidth, timeout, reset_peer, slow_close, limit_data, refuse)",
        ],
    );
}

#[test]
fn invalid_regexes_in_probe_criteria() {
    let experiment = edit(EXPERIMENT, "body_regex: \"ok\"", "body_regex: \"(ok\"");
    let experiment = format!(
        "{experiment}  - name: version\n    mode: eot\n    command:\n      command:\n        argv: [cat, /etc/version]\n      stdout:\n        type: string\n        criteria: matches\n        value: \"v[0-9\"\n"
    );
    let lines = problems(PIPELINE, &experiment, &[]);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[0].starts_with("experiments/payments-latency.yaml:21: probes[0].http.criteria.body_regex: '(ok' is not a valid regular expression: "), "{lines:#?}");
    assert!(lines[1].starts_with("experiments/payments-latency.yaml:30: probes[1].command.stdout.value: 'v[0-9' is not a valid regular expression: "), "{lines:#?}");
}

#[test]
fn retry_with_count_zero() {
    let pipeline = edit(PIPELINE, "count: 2", "count: 0");
    expect_problems(
        &pipeline,
        EXPERIMENT,
        &["pipelines/checkout.yaml:23: stages[1].steps[0].failure_strategy.count: 0 is below 1"],
    );
}

#[test]
fn overlapping_routes() {
    let cases = [
        // identical globs
        ("flag: checkout-*", "flag: checkout-*", "checkout-"),
        // the other pipeline takes every flag of the project
        ("flag: checkout-*", "project: shop", ""),
        // a literal flag the glob matches
        ("flag: checkout-*", "flag: checkout-v2", "checkout-v2"),
        // two globs that share flags
        ("flag: checkout-*", "flag: \"*-v2\"", "checkout-v2"),
    ];
    for (_, route, flag) in cases {
        let other_route = if route.starts_with("project") {
            "routes:\n  - project: shop\n".to_string()
        } else {
            format!("routes:\n  - project: shop\n    environment: production\n    {route}\n")
        };
        let other = edit(
            PIPELINE,
            "id: checkout\nroutes:\n  - project: shop\n    environment: production\n    flag: checkout-*\n",
            &format!("id: checkout-two\n{other_route}"),
        );
        let lines = problems(PIPELINE, EXPERIMENT, &[("pipelines/z-other.yaml", &other)]);
        assert_eq!(lines.len(), 1, "{route}: {lines:#?}");
        let expected = "pipelines/z-other.yaml:4: routes[0]: overlaps route 0 of pipeline 'checkout' (pipelines/checkout.yaml): a change to flag '";
        assert!(lines[0].starts_with(expected), "{route}: {lines:#?}");
        assert!(
            lines[0].contains(&format!("flag '{flag}")),
            "{route}: {lines:#?}"
        );
        assert!(
            lines[0].ends_with("would match both, so the pipeline for it is ambiguous"),
            "{lines:#?}"
        );
    }
    // Different environments or disjoint globs do not overlap.
    for route in [
        "environment: staging\n    flag: checkout-*",
        "environment: production\n    flag: cart-*",
    ] {
        let other = edit(
            PIPELINE,
            "id: checkout\nroutes:\n  - project: shop\n    environment: production\n    flag: checkout-*\n",
            &format!("id: checkout-two\nroutes:\n  - project: shop\n    {route}\n"),
        );
        let dir = catalog(&[
            (PIPELINE_FILE, PIPELINE),
            (EXPERIMENT_FILE, EXPERIMENT),
            ("pipelines/z-other.yaml", &other),
        ]);
        let (code, lines, _) = validate_in(dir.path(), &["."]);
        assert_eq!(code, 0, "{route}: {lines:#?}");
    }
}

#[test]
fn yaml_syntax_error_has_its_line() {
    let experiment = edit(EXPERIMENT, "    weight: 5", "    weight: [5");
    let lines = problems(PIPELINE, &experiment, &[]);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    // The pipeline's steps still find the experiment: only the syntax error is reported.
    assert!(
        lines[0].starts_with("experiments/payments-latency.yaml:7: not valid YAML: "),
        "{lines:#?}"
    );
}

#[test]
fn missing_or_unknown_kind() {
    let lines = problems(
        PIPELINE,
        EXPERIMENT,
        &[
            ("experiments/x.yaml", "id: x\nfaults: []\n"),
            ("experiments/y.yaml", "kind: experimant\nid: y\n"),
        ],
    );
    assert_eq!(
        lines,
        [
            "experiments/x.yaml:1: missing field 'kind' (pipeline or experiment)",
            "experiments/y.yaml:1: kind: unknown kind 'experimant' (allowed: pipeline, experiment)",
        ]
    );
}

#[test]
fn every_problem_of_a_file_is_reported() {
    let experiment = edit(EXPERIMENT, "weight: 5", "weight: 12");
    let experiment = edit(&experiment, "duration: 30s", "duration: soon");
    let experiment = edit(&experiment, "toxicity: 1.0", "toxicity: 2");
    let experiment = edit(&experiment, "mode: on_chaos", "mode: always");
    let experiment = edit(&experiment, "body_regex: \"ok\"", "body_regex: \"[\"");
    let pipeline = edit(
        PIPELINE,
        "expected_resilience_score: 80",
        "expected_resilience_score: 101",
    );
    let pipeline = edit(
        &pipeline,
        "assertion: probes_failed == 0",
        "assertion: probes_failed ==",
    );
    let pipeline = edit(
        &pipeline,
        "experiment: payments-latency\n        expected_resilience_score: 101",
        "experiment: nope\n        expected_resilience_score: 101",
    );
    let lines = problems(&pipeline, &experiment, &[]);
    let fields: Vec<&str> = lines
        .iter()
        .map(|l| l.split(": ").nth(1).unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "faults[0].weight",
            "faults[0].duration",
            "faults[0].network.toxicity",
            "probes[0].mode",
            "probes[0].http.criteria.body_regex",
            "stages[0].steps[0].experiment",
            "stages[0].steps[0].expected_resilience_score",
            "stages[1].steps[0].assertion",
        ],
        "{lines:#?}"
    );
}

#[test]
fn files_named_directly_keep_their_names() {
    let pipeline = edit(
        PIPELINE,
        "expected_resilience_score: 90",
        "expected_resilience_score: 140",
    );
    let dir = catalog(&[(PIPELINE_FILE, &pipeline), (EXPERIMENT_FILE, EXPERIMENT)]);
    let (code, lines, _) = validate_in(dir.path(), &[PIPELINE_FILE, EXPERIMENT_FILE]);
    assert_eq!(code, 1);
    assert_eq!(
        lines,
        [
            "pipelines/checkout.yaml:19: stages[1].steps[0].expected_resilience_score: 140 is above 100",
            "1 problem in 1 file",
        ]
    );
}

#[test]
fn a_path_that_does_not_exist_is_an_error() {
    let dir = catalog(&[(PIPELINE_FILE, PIPELINE)]);
    let (code, lines, stderr) = validate_in(dir.path(), &["pipelines", "no-such-folder"]);
    assert_eq!(code, 2, "{lines:#?}");
    assert!(lines.is_empty());
    assert!(
        stderr.contains("no-such-folder: no such file or folder"),
        "{stderr}"
    );
}

#[test]
fn an_on_chaos_probe_that_cannot_check_while_its_fault_is_active() {
    let late = edit(
        EXPERIMENT,
        "    mode: on_chaos\n",
        "    mode: on_chaos\n    run_properties:\n      initial_delay: 30s\n",
    );
    expect_problems(
        PIPELINE,
        &late,
        &[
            "experiments/payments-latency.yaml:18: probes[0].run_properties.initial_delay: initial_delay 30s is not below the 30s fault 'payments-slow' is active: an on_chaos probe must check while its faults are active (a check after the revert never counts)",
        ],
    );
    let zero = edit(EXPERIMENT, "    duration: 30s\n", "    duration: 0s\n");
    assert_eq!(problems(PIPELINE, &zero, &[]).len(), 1);
}

#[test]
fn durations_the_runner_needs_above_zero() {
    let zero = edit(
        EXPERIMENT,
        "    mode: on_chaos\n",
        "    mode: on_chaos\n    run_properties: {timeout: 0s, attempts: 0, polling_interval: 0s}\n",
    );
    expect_problems(
        PIPELINE,
        &zero,
        &[
            "experiments/payments-latency.yaml:17: probes[0].run_properties.timeout: timeout must be above 0s",
            "experiments/payments-latency.yaml:17: probes[0].run_properties.attempts: attempts must be at least 1",
            "experiments/payments-latency.yaml:17: probes[0].run_properties.polling_interval: a polling probe's polling_interval must be above 0s",
        ],
    );
}

#[test]
fn a_process_name_no_process_can_have() {
    let named = edit(
        EXPERIMENT,
        "    network:\n      target: payments\n      toxic:\n        type: latency\n        latency: 200ms\n      toxicity: 1.0\n",
        "    process:\n      action: pause\n      name: kube-controller-manager\n",
    );
    expect_problems(
        PIPELINE,
        &named,
        &[
            "experiments/payments-latency.yaml:10: faults[0].process.name: 'kube-controller-manager' is 23 bytes, but the kernel keeps 15 in /proc/PID/comm, so no process matches it: write 'kube-controller' or use pid_file",
        ],
    );
}

#[test]
fn an_expected_value_that_is_not_a_finite_number() {
    let nan = edit(
        EXPERIMENT,
        "    http:\n      url: http://127.0.0.1:8080/health\n      criteria:\n        max_response_ms: 300\n        body_regex: \"ok\"\n",
        "    command:\n      command: {argv: [echo, '1']}\n      stdout: {type: float, criteria: ge, value: NaN}\n",
    );
    expect_problems(
        PIPELINE,
        &nan,
        &[
            "experiments/payments-latency.yaml:19: probes[0].command.stdout.value: 'NaN' is not a finite number: nothing equals or orders against it",
        ],
    );
}

#[test]
fn a_plain_number_where_text_is_wanted_says_what_to_write() {
    let bare = edit(EXPERIMENT, "    duration: 30s\n", "    duration: 30\n");
    expect_problems(
        PIPELINE,
        &bare,
        &[
            "experiments/payments-latency.yaml:7: faults[0].duration: expected text, found 30 (a duration needs its unit: write e.g. 30s or 30ms)",
        ],
    );
    let unquoted = edit(
        EXPERIMENT,
        "    http:\n      url: http://127.0.0.1:8080/health\n      criteria:\n        max_response_ms: 300\n        body_regex: \"ok\"\n",
        "    command:\n      command: {argv: [echo, '1']}\n      stdout: {type: float, criteria: ge, value: 7.5}\n",
    );
    expect_problems(
        PIPELINE,
        &unquoted,
        &[
            "experiments/payments-latency.yaml:19: probes[0].command.stdout.value: expected text, found 7.5 (quote it to give it as text: \"7.5\")",
        ],
    );
}
