//! Freeze windows as `chaosgate validate` reports them: a pipeline whose `freeze_windows`
//! have a bad cron start, an unknown time zone, a zero duration, a window that is always
//! active or a duplicate name gets one line per problem naming the file, the line and the
//! field; good windows pass.

#[path = "support/validate.rs"]
mod validate;

const EXPERIMENT: &str = "\
kind: experiment
id: payments-latency
faults:
  - name: payments-slow
    weight: 5
    duration: 30s
    network:
      target: payments
      toxic:
        type: latency
        latency: 200ms
";

/// A pipeline with `windows` (YAML list items, indented two spaces) as its
/// `freeze_windows`; they start on line 5.
fn pipeline(windows: &str) -> String {
    format!(
        "\
kind: pipeline
id: checkout
routes: [{{project: shop, environment: production, flag: checkout-*}}]
freeze_windows:
{windows}stages:
  - id: smoke
    type: feature_flag
    steps:
      - id: latency
        experiment: payments-latency
        expected_resilience_score: 80
"
    )
}

/// Runs `chaosgate validate .` on a catalog of the pipeline and the experiment; returns
/// the exit code and the output lines.
fn validate(pipeline: &str) -> (i32, Vec<String>) {
    validate::validate_files(&[
        ("pipelines/checkout.yaml", pipeline),
        ("experiments/payments-latency.yaml", EXPERIMENT),
    ])
}

#[test]
fn good_windows_pass() {
    let (code, lines) = validate(&pipeline(
        "  - name: weekend
    start: '0 18 * * FRI'
    duration: 63h
    time_zone: Europe/Berlin
    reason: no flag changes over the weekend
  - name: nightly
    start: '0 23 * * *'
    duration: 1h
",
    ));
    assert_eq!(
        (code, lines),
        (
            0,
            vec!["ok: 1 pipeline, 1 experiment in 2 files".to_string()]
        )
    );
}

#[test]
fn bad_windows_are_named_by_file_line_and_field() {
    let (code, lines) = validate(&pipeline(
        "  - name: weekend
    start: '0 18 * * FRY'
    duration: 63h
    time_zone: Europe/Berlin
  - name: weekend
    start: '0 18 * * FRI'
    duration: 1h
    time_zone: Europe/Berln
  - name: never-over
    start: '*/5 * * * *'
    duration: 5m
  - name: instant
    start: '0 12 * * *'
    duration: 0s
  - name: seconds
    start: '0 0 18 * * FRI'
    duration: 1h
",
    ));
    assert_eq!(code, 1, "{lines:#?}");
    let file = "pipelines/checkout.yaml";
    let expected = [
        format!("{file}:6: freeze_windows[0].start: '0 18 * * FRY' is not a cron expression: "),
        format!(
            "{file}:9: freeze_windows[1].name: duplicate freeze window name 'weekend' (also freeze_windows[0])"
        ),
        format!(
            "{file}:12: freeze_windows[1].time_zone: unknown time zone 'Europe/Berln' (write an IANA name such as Europe/Berlin or UTC)"
        ),
        format!(
            "{file}:14: freeze_windows[2].start: '*/5 * * * *' with duration 5m is always active (each start comes before the last one's window ends, for over 366 days or 10000 starts): it would hold every gated change forever"
        ),
        format!(
            "{file}:18: freeze_windows[3].duration: a freeze window's duration must be above 0s"
        ),
        format!(
            "{file}:20: freeze_windows[4].start: '0 0 18 * * FRI' has 6 fields, a freeze window's start has 5 (minute hour day-of-month month day-of-week, e.g. '0 18 * * FRI')"
        ),
    ];
    let problems = &lines[..lines.len() - 1];
    assert_eq!(problems.len(), expected.len(), "{lines:#?}");
    for (line, want) in problems.iter().zip(&expected) {
        assert!(
            line.starts_with(want.as_str()),
            "{line:?}\ndoes not start with\n{want:?}"
        );
    }
    assert_eq!(lines.last().unwrap(), "6 problems in 1 file");
}
