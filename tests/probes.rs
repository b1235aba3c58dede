//! Probe checks against real targets on 127.0.0.1: an HTTP server the test starts (200,
//! 503, slow, JSON, flaky routes), TCP listeners, real commands, and a real Prometheus
//! (Debian package `prometheus`) scraping a metrics endpoint the test starts.

#[path = "support/prometheus.rs"]
mod prometheus;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::{any, get};
use chaosgate::catalog::Span;
use chaosgate::catalog::experiment::{
    CommandLine, CommandProbe, Comparator, Comparison, HttpCriteria, HttpProbe, JsonPointerMatch,
    Probe, ProbeMode, ProbeType, PrometheusProbe, RunProperties, StatusMatch, TcpProbe, ValueType,
};
use chaosgate::chaos::probe::{Check, check};
use prometheus::start_prometheus;
use tokio::net::TcpListener;

// ---------------------------------------------------------------------------------------
// The HTTP target

/// A running HTTP target; `flaky_hits` records when `/flaky` was called.
struct Target {
    addr: SocketAddr,
    flaky_hits: Arc<Mutex<Vec<Instant>>>,
}

impl Target {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Starts the target on a free loopback port; it stops with the test's runtime.
async fn start_target() -> Target {
    let flaky_hits = Arc::new(Mutex::new(Vec::new()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let redirect = |status: StatusCode, location: String| {
        move || async move { (status, [(axum::http::header::LOCATION, location)], "") }
    };
    let app = Router::new()
        .route("/ok", get(|| async { "all good" }))
        .route(
            "/moved",
            get(redirect(StatusCode::MOVED_PERMANENTLY, "/ok".into())),
        )
        .route("/to-login", get(redirect(StatusCode::FOUND, "/ok".into())))
        // The same port under another host name: another host to a redirect policy.
        .route(
            "/elsewhere",
            get(redirect(
                StatusCode::FOUND,
                format!("http://localhost:{}/ok", addr.port()),
            )),
        )
        .route("/loop", get(redirect(StatusCode::FOUND, "/loop".into())))
        .route(
            "/down",
            get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "down") }),
        )
        .route(
            "/slow/{ms}",
            get(|Path(ms): Path<u64>| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                "slow but fine"
            }),
        )
        .route(
            "/json",
            get(|| async {
                axum::Json(serde_json::json!({
                    "status": "up", "count": 3, "nested": {"ok": true}
                }))
            }),
        )
        // Written as text: serde_json's Value would round the numbers beyond u64.
        .route(
            "/exact",
            get(|| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    r#"{"big": 9007199254740993, "max": 9223372036854775807,
                        "beyond": 18446744073709551616, "half": 12345678901234567.5,
                        "three": 3, "text": "ok ", "nested": {"items": [3.0, "x", null]}}"#,
                )
            }),
        )
        .route(
            "/echo",
            any(
                |method: Method, headers: HeaderMap, body: String| async move {
                    let header = headers
                        .get("x-probe")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    format!("method={method} x-probe={header} body={body}")
                },
            ),
        )
        .route(
            "/flaky",
            get(|State(hits): State<Arc<Mutex<Vec<Instant>>>>| async move {
                let mut hits = hits.lock().unwrap();
                hits.push(Instant::now());
                if hits.len() <= 2 {
                    (StatusCode::SERVICE_UNAVAILABLE, "not yet")
                } else {
                    (StatusCode::OK, "recovered")
                }
            }),
        )
        .with_state(flaky_hits.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Target { addr, flaky_hits }
}

/// A loopback port with nothing listening on it.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------------------
// Probe builders

fn props(timeout_ms: u64, interval_ms: u64, attempts: u32) -> RunProperties {
    RunProperties {
        timeout: Span::from_millis(timeout_ms),
        interval: Span::from_millis(interval_ms),
        attempts,
        ..RunProperties::default()
    }
}

fn bare_probe(run_properties: RunProperties, probe_type: ProbeType) -> Probe {
    Probe {
        name: "watch".to_string(),
        mode: ProbeMode::Continuous,
        run_properties,
        probe_type,
    }
}

fn http_probe(url: String, criteria: HttpCriteria) -> Probe {
    bare_probe(
        props(3_000, 100, 1),
        ProbeType::Http(HttpProbe {
            url,
            method: "GET".to_string(),
            headers: BTreeMap::new(),
            body: None,
            follow_redirects: false,
            redirect_any_host: false,
            criteria,
        }),
    )
}

/// An HTTP probe of `url` judging, besides the default statuses, the JSON at `pointer`.
fn json_probe(url: &str, pointer: &str, equals: serde_json::Value) -> Probe {
    let json = JsonPointerMatch {
        pointer: pointer.to_string(),
        equals,
    };
    let criteria = HttpCriteria {
        json: Some(json),
        ..HttpCriteria::default()
    };
    http_probe(url.to_string(), criteria)
}

fn tcp_probe(address: String) -> Probe {
    bare_probe(props(2_000, 100, 1), ProbeType::Tcp(TcpProbe { address }))
}

fn command_probe(argv: &[&str], shell: bool, exit_code: i32, stdout: Option<Comparison>) -> Probe {
    bare_probe(
        props(5_000, 100, 1),
        ProbeType::Command(CommandProbe {
            command: CommandLine {
                argv: argv.iter().map(|a| a.to_string()).collect(),
                shell,
                ..CommandLine::default()
            },
            exit_code,
            stdout,
        }),
    )
}

fn comparison(value_type: ValueType, criteria: Comparator, value: &str) -> Comparison {
    Comparison {
        value_type,
        criteria,
        value: value.to_string(),
    }
}

fn passed(check: &Check) -> bool {
    check.passed && check.error.is_none()
}

fn error_of(check: &Check) -> &str {
    assert!(!check.passed, "expected a failed check, got {check:?}");
    check.error.as_deref().unwrap_or("<no error text>")
}

// ---------------------------------------------------------------------------------------
// HTTP: status, response time, body criteria, request shape

#[tokio::test]
async fn http_status_in_the_default_range_passes_and_outside_fails_with_the_ranges() {
    let target = start_target().await;
    let ok = check(&http_probe(target.url("/ok"), HttpCriteria::default())).await;
    assert!(passed(&ok), "{ok:?}");
    assert_eq!(ok.attempts, 1);

    let down_url = target.url("/down");
    let down = check(&http_probe(down_url.clone(), HttpCriteria::default())).await;
    assert_eq!(
        error_of(&down),
        format!("GET {down_url}: status 503 not in [200-299]")
    );
    assert_eq!(down.attempts, 1);
}

fn following(mut probe: Probe, any_host: bool) -> Probe {
    if let ProbeType::Http(http) = &mut probe.probe_type {
        http.follow_redirects = true;
        http.redirect_any_host = any_host;
    }
    probe
}

#[tokio::test]
async fn http_probes_judge_a_redirect_itself_unless_told_to_follow() {
    let target = start_target().await;
    let status_301 = HttpCriteria {
        status: vec![StatusMatch::Code(301)],
        ..HttpCriteria::default()
    };
    let moved = check(&http_probe(target.url("/moved"), status_301)).await;
    assert!(passed(&moved), "a probe for 301 sees the 301: {moved:?}");

    let login_url = target.url("/to-login");
    let lost = check(&http_probe(login_url.clone(), HttpCriteria::default())).await;
    assert_eq!(
        error_of(&lost),
        format!(
            "GET {login_url}: status 302 not in [200-299] \
             (a redirect to /ok, not followed: see follow_redirects)"
        )
    );

    let followed = check(&following(
        http_probe(login_url, HttpCriteria::default()),
        false,
    ))
    .await;
    assert!(
        passed(&followed),
        "same-host redirect followed: {followed:?}"
    );
}

#[tokio::test]
async fn followed_redirects_stay_on_the_host_unless_any_host_is_allowed() {
    let target = start_target().await;
    let elsewhere = target.url("/elsewhere");
    let refused = check(&following(
        http_probe(elsewhere.clone(), HttpCriteria::default()),
        false,
    ))
    .await;
    let error = error_of(&refused);
    assert!(
        error.contains("redirected to another host (http://localhost:")
            && error.contains("set redirect_any_host"),
        "{error}"
    );

    let any = check(&following(
        http_probe(elsewhere, HttpCriteria::default()),
        true,
    ))
    .await;
    assert!(passed(&any), "{any:?}");

    let looping = check(&following(
        http_probe(target.url("/loop"), HttpCriteria::default()),
        false,
    ))
    .await;
    assert!(
        error_of(&looping).contains("more than 10 redirects"),
        "{looping:?}"
    );
}

#[tokio::test]
async fn http_status_codes_and_ranges_are_all_accepted() {
    let target = start_target().await;
    let down_url = target.url("/down");
    let expect_503 = HttpCriteria {
        status: vec![StatusMatch::Code(503)],
        ..HttpCriteria::default()
    };
    assert!(passed(
        &check(&http_probe(down_url.clone(), expect_503)).await
    ));

    let code_or_4xx = HttpCriteria {
        status: vec![
            StatusMatch::Code(200),
            StatusMatch::Range("400-499".to_string()),
        ],
        ..HttpCriteria::default()
    };
    let failed = check(&http_probe(down_url.clone(), code_or_4xx)).await;
    assert_eq!(
        error_of(&failed),
        format!("GET {down_url}: status 503 not in [200, 400-499]")
    );
}

#[tokio::test]
async fn http_max_response_time_passes_fast_answers_and_fails_slow_ones() {
    let target = start_target().await;
    let fast = HttpCriteria {
        max_response_ms: Some(2_000),
        ..HttpCriteria::default()
    };
    assert!(passed(&check(&http_probe(target.url("/ok"), fast)).await));

    let strict = HttpCriteria {
        max_response_ms: Some(150),
        ..HttpCriteria::default()
    };
    let slow = check(&http_probe(target.url("/slow/400"), strict)).await;
    let error = error_of(&slow);
    let prefix = format!("GET {}: response took ", target.url("/slow/400"));
    let took_ms: u64 = error
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix(" ms, more than 150 ms"))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("unexpected error text: {error}"));
    assert!((400..2_000).contains(&took_ms), "took {took_ms} ms");
}

#[tokio::test]
async fn http_body_contains_passes_and_fails() {
    let target = start_target().await;
    let url = target.url("/ok");
    let has = HttpCriteria {
        body_contains: Some("good".to_string()),
        ..HttpCriteria::default()
    };
    assert!(passed(&check(&http_probe(url.clone(), has)).await));

    let lacks = HttpCriteria {
        body_contains: Some("healthy".to_string()),
        ..HttpCriteria::default()
    };
    let failed = check(&http_probe(url.clone(), lacks)).await;
    assert_eq!(
        error_of(&failed),
        format!("GET {url}: body does not contain \"healthy\"")
    );
}

#[tokio::test]
async fn http_body_regex_passes_fails_and_reports_a_bad_pattern() {
    let target = start_target().await;
    let url = target.url("/json");
    let matching = HttpCriteria {
        body_regex: Some(r#""count":\s*[0-9]+"#.to_string()),
        ..HttpCriteria::default()
    };
    assert!(passed(&check(&http_probe(url.clone(), matching)).await));

    let not_matching = HttpCriteria {
        body_regex: Some("^down".to_string()),
        ..HttpCriteria::default()
    };
    let failed = check(&http_probe(url.clone(), not_matching)).await;
    assert_eq!(
        error_of(&failed),
        format!("GET {url}: body does not match /^down/")
    );

    let bad = HttpCriteria {
        body_regex: Some("(unclosed".to_string()),
        ..HttpCriteria::default()
    };
    let failed = check(&http_probe(url.clone(), bad)).await;
    let error = error_of(&failed);
    assert!(
        error.starts_with(&format!(
            "GET {url}: \"(unclosed\" is not a valid regular expression"
        )),
        "{error}"
    );
}

#[tokio::test]
async fn http_json_pointer_equals_passes_and_fails_with_what_was_found() {
    let target = start_target().await;
    let url = target.url("/json");
    for (ptr, value) in [
        ("/status", serde_json::json!("up")),
        ("/count", serde_json::json!(3.0)),
        ("/nested", serde_json::json!({"ok": true})),
    ] {
        let result = check(&json_probe(&url, ptr, value)).await;
        assert!(passed(&result), "{ptr}: {result:?}");
    }

    let unequal = check(&json_probe(&url, "/status", "down".into())).await;
    assert_eq!(
        error_of(&unequal),
        format!("GET {url}: JSON at \"/status\" is \"up\", expected \"down\"")
    );
    let missing = check(&json_probe(&url, "/version", 1.into())).await;
    assert_eq!(
        error_of(&missing),
        format!("GET {url}: JSON body has nothing at \"/version\"")
    );

    let text_url = target.url("/ok");
    let not_json = check(&json_probe(&text_url, "/status", "up".into())).await;
    assert!(
        error_of(&not_json).starts_with(&format!("GET {text_url}: body is not JSON")),
        "{not_json:?}"
    );
}

#[tokio::test]
async fn http_json_numbers_compare_by_their_exact_value() {
    let target = start_target().await;
    let url = target.url("/exact");
    for (ptr, value) in [
        ("/big", serde_json::json!(9007199254740993u64)),
        ("/max", serde_json::json!(i64::MAX)),
        ("/three", serde_json::json!(3.0)),
        ("/nested", serde_json::json!({"items": [3, "x", null]})),
    ] {
        let result = check(&json_probe(&url, ptr, value.clone())).await;
        assert!(passed(&result), "{ptr} == {value}: {result:?}");
    }
    // Each of these is the same f64 as the body's number, and not the same number.
    for (ptr, value, found) in [
        (
            "/big",
            serde_json::json!(9007199254740992u64),
            "9007199254740993",
        ),
        (
            "/beyond",
            serde_json::json!(18446744073709551615u64),
            "18446744073709551616",
        ),
        (
            "/half",
            serde_json::json!(12345678901234568u64),
            "12345678901234567.5",
        ),
    ] {
        let result = check(&json_probe(&url, ptr, value.clone())).await;
        assert_eq!(
            error_of(&result),
            format!("GET {url}: JSON at \"{ptr}\" is {found}, expected {value}")
        );
    }
    let result = check(&json_probe(&url, "/text", "ok".into())).await;
    assert_eq!(
        error_of(&result),
        format!("GET {url}: JSON at \"/text\" is \"ok \", expected \"ok\"")
    );
    let result = check(&json_probe(&url, "/three", "3".into())).await;
    assert_eq!(
        error_of(&result),
        format!("GET {url}: JSON at \"/three\" is 3, expected \"3\"")
    );
    let reordered = serde_json::json!({"items": ["x", 3, null]});
    let result = check(&json_probe(&url, "/nested", reordered)).await;
    assert_eq!(
        error_of(&result),
        format!(
            "GET {url}: JSON at \"/nested\" is {{\"items\":[3.0,\"x\",null]}}, \
             expected {{\"items\":[\"x\",3,null]}}"
        )
    );
}

#[tokio::test]
async fn http_method_headers_and_body_are_sent() {
    let target = start_target().await;
    let mut probe = http_probe(
        target.url("/echo"),
        HttpCriteria {
            body_contains: Some("method=POST x-probe=chaos body={\"ping\":1}".to_string()),
            ..HttpCriteria::default()
        },
    );
    if let ProbeType::Http(http) = &mut probe.probe_type {
        http.method = "post".to_string();
        http.headers
            .insert("X-Probe".to_string(), "chaos".to_string());
        http.body = Some("{\"ping\":1}".to_string());
    }
    let result = check(&probe).await;
    assert!(passed(&result), "{result:?}");
}

// ---------------------------------------------------------------------------------------
// Attempts, interval, timeout, connection errors

#[tokio::test]
async fn a_target_that_fails_twice_passes_on_the_third_attempt_after_two_intervals() {
    let target = start_target().await;
    let mut probe = http_probe(target.url("/flaky"), HttpCriteria::default());
    probe.run_properties = props(2_000, 200, 3);
    let result = check(&probe).await;
    assert!(passed(&result), "{result:?}");
    assert_eq!(result.attempts, 3);
    assert!(
        result.took >= Duration::from_millis(400),
        "took {:?}",
        result.took
    );
    assert!(
        result.took < Duration::from_secs(3),
        "took {:?}",
        result.took
    );

    let hits = target.flaky_hits.lock().unwrap().clone();
    assert_eq!(hits.len(), 3, "the server saw {} requests", hits.len());
    for pair in hits.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(195),
            "attempts only {gap:?} apart"
        );
    }
}

#[tokio::test]
async fn attempts_run_out_and_the_last_failure_is_reported() {
    let target = start_target().await;
    let url = target.url("/flaky");
    let mut probe = http_probe(url.clone(), HttpCriteria::default());
    probe.run_properties = props(2_000, 50, 2);
    let result = check(&probe).await;
    assert_eq!(result.attempts, 2);
    assert_eq!(
        error_of(&result),
        format!("GET {url}: status 503 not in [200-299]")
    );
    assert_eq!(target.flaky_hits.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn an_attempt_is_cut_off_at_the_timeout() {
    let target = start_target().await;
    let url = target.url("/slow/5000");
    let mut probe = http_probe(url.clone(), HttpCriteria::default());
    probe.run_properties = props(300, 50, 2);
    let result = check(&probe).await;
    assert_eq!(result.attempts, 2);
    assert_eq!(
        error_of(&result),
        format!("GET {url}: no response within 300 ms")
    );
    // Two attempts of 300 ms and one interval of 50 ms; generous upper bound.
    assert!(
        result.took >= Duration::from_millis(600),
        "took {:?}",
        result.took
    );
    assert!(
        result.took < Duration::from_secs(2),
        "took {:?}",
        result.took
    );
}

#[tokio::test]
async fn a_refused_connection_is_a_failure_not_an_error() {
    let port = closed_port();
    let url = format!("http://127.0.0.1:{port}/health");
    let mut probe = http_probe(url.clone(), HttpCriteria::default());
    probe.run_properties = props(2_000, 50, 3);
    let result = check(&probe).await;
    assert_eq!(result.attempts, 3);
    assert_eq!(error_of(&result), format!("GET {url}: connection refused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_concurrent_checks_share_the_client_and_all_pass() {
    // More checks than the in-flight limit: the rest wait their turn and still pass.
    let target = start_target().await;
    let probe = std::sync::Arc::new(http_probe(target.url("/ok"), HttpCriteria::default()));
    let checks: Vec<_> = (0..2_000)
        .map(|_| {
            let probe = probe.clone();
            tokio::spawn(async move { check(&probe).await })
        })
        .collect();
    let mut failures = Vec::new();
    for handle in checks {
        let result = handle.await.unwrap();
        if !result.passed {
            failures.push(result.error);
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed, e.g. {:?}",
        failures.len(),
        failures.first()
    );
}

// ---------------------------------------------------------------------------------------
// TCP

#[tokio::test]
async fn tcp_passes_when_a_listener_accepts_and_fails_when_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let open = check(&tcp_probe(address)).await;
    assert!(passed(&open), "{open:?}");

    let closed = format!("127.0.0.1:{}", closed_port());
    let refused = check(&tcp_probe(closed.clone())).await;
    assert_eq!(
        error_of(&refused),
        format!("connect {closed}: connection refused")
    );
}

// ---------------------------------------------------------------------------------------
// Commands

#[tokio::test]
async fn command_exit_codes_are_judged_and_stderr_shown() {
    assert!(passed(
        &check(&command_probe(&["true"], false, 0, None)).await
    ));
    assert!(passed(
        &check(&command_probe(&["exit 3"], true, 3, None)).await
    ));

    let failed = check(&command_probe(&["echo boom >&2; exit 3"], true, 0, None)).await;
    assert_eq!(
        error_of(&failed),
        "command 'sh -c': exited with 3, expected 0; stderr: boom"
    );

    let missing = check(&command_probe(
        &["/nonexistent/chaosgate-check"],
        false,
        0,
        None,
    ))
    .await;
    let error = error_of(&missing);
    assert!(
        error.starts_with("command '/nonexistent/chaosgate-check': could not start: "),
        "{error}"
    );
}

#[tokio::test]
async fn command_argv_runs_without_a_shell() {
    // Without a shell, `$HOME` and `;` are plain text handed to echo.
    let literal = comparison(ValueType::String, Comparator::Eq, "$HOME; exit 1");
    let result = check(&command_probe(
        &["echo", "$HOME; exit 1"],
        false,
        0,
        Some(literal),
    ))
    .await;
    assert!(passed(&result), "{result:?}");
}

#[tokio::test]
async fn command_stdout_int_comparisons() {
    let cases = [
        (Comparator::Eq, "42", true),
        (Comparator::Ne, "41", true),
        (Comparator::Lt, "100", true),
        (Comparator::Le, "42", true),
        (Comparator::Gt, "41", true),
        (Comparator::Ge, "42", true),
        (Comparator::Eq, "41", false),
        (Comparator::Gt, "42", false),
    ];
    for (criteria, value, should_pass) in cases {
        let cmp = comparison(ValueType::Int, criteria, value);
        let result = check(&command_probe(&["echo", "42"], false, 0, Some(cmp))).await;
        assert_eq!(
            result.passed, should_pass,
            "42 {criteria:?} {value}: {result:?}"
        );
    }
    let cmp = comparison(ValueType::Int, Comparator::Lt, "40");
    let failed = check(&command_probe(&["echo", "42"], false, 0, Some(cmp))).await;
    assert_eq!(error_of(&failed), "command 'echo': stdout 42 is not < 40");

    let cmp = comparison(ValueType::Int, Comparator::Eq, "1");
    let failed = check(&command_probe(&["echo", "one"], false, 0, Some(cmp))).await;
    assert_eq!(
        error_of(&failed),
        "command 'echo': stdout \"one\" is not an integer"
    );
}

#[tokio::test]
async fn command_stdout_numbers_keep_every_digit() {
    let echo =
        |text: &'static str, cmp: Comparison| command_probe(&["echo", text], false, 0, Some(cmp));
    let cmp = comparison(ValueType::Int, Comparator::Eq, "9007199254740992");
    let failed = check(&echo("9007199254740993", cmp)).await;
    assert_eq!(
        error_of(&failed),
        "command 'echo': stdout 9007199254740993 is not == 9007199254740992"
    );
    for (printed, value_type, criteria, value) in [
        (
            "9223372036854775807",
            ValueType::Int,
            Comparator::Eq,
            "9223372036854775807",
        ),
        (
            "18446744073709551616",
            ValueType::Int,
            Comparator::Gt,
            "18446744073709551615",
        ),
        ("017", ValueType::Int, Comparator::Eq, "17"),
        ("5.0", ValueType::Int, Comparator::Eq, "5"),
        (
            "0.10000000000000001",
            ValueType::Float,
            Comparator::Gt,
            "0.1",
        ),
    ] {
        let result = check(&echo(printed, comparison(value_type, criteria, value))).await;
        assert!(
            passed(&result),
            "{printed} {criteria:?} {value}: {result:?}"
        );
    }
    let cmp = comparison(ValueType::Float, Comparator::Lt, "NaN");
    let refused = check(&echo("1", cmp)).await;
    assert_eq!(
        error_of(&refused),
        "command 'echo': stdout cannot be compared: the expected value \"NaN\" is not a finite number \
         (NaN and infinities cannot be thresholds)"
    );
}

#[tokio::test]
async fn command_stdout_float_comparisons() {
    let cmp = comparison(ValueType::Float, Comparator::Le, "0.8");
    assert!(passed(
        &check(&command_probe(&["echo", "0.75"], false, 0, Some(cmp))).await
    ));
    let cmp = comparison(ValueType::Float, Comparator::Gt, "0.8");
    let failed = check(&command_probe(&["echo", "0.75"], false, 0, Some(cmp))).await;
    assert_eq!(
        error_of(&failed),
        "command 'echo': stdout 0.75 is not > 0.8"
    );
}

#[tokio::test]
async fn command_stdout_string_comparisons() {
    let out = ["printf", "status: ready\\n"];
    let cases = [
        (Comparator::Eq, "status: ready", true),
        (Comparator::Ne, "status: down", true),
        (Comparator::Contains, "ready", true),
        (Comparator::Matches, r"^status: (ready|ok)$", true),
        (Comparator::Contains, "down", false),
        (Comparator::Matches, r"^ok", false),
    ];
    for (criteria, value, should_pass) in cases {
        let cmp = comparison(ValueType::String, criteria, value);
        let result = check(&command_probe(&out, false, 0, Some(cmp))).await;
        assert_eq!(
            result.passed, should_pass,
            "{criteria:?} {value}: {result:?}"
        );
    }
    // Only the trailing line ends are dropped: other whitespace is part of the text.
    let indented = ["printf", "  ready \\r\\n\\n"];
    let cmp = comparison(ValueType::String, Comparator::Eq, "  ready ");
    assert!(passed(
        &check(&command_probe(&indented, false, 0, Some(cmp))).await
    ));
    let cmp = comparison(ValueType::String, Comparator::Eq, "ready");
    let failed = check(&command_probe(&indented, false, 0, Some(cmp))).await;
    assert_eq!(
        error_of(&failed),
        "command 'printf': stdout \"  ready \" is not == \"ready\""
    );
    let cmp = comparison(ValueType::String, Comparator::Contains, "down");
    let failed = check(&command_probe(&out, false, 0, Some(cmp))).await;
    assert_eq!(
        error_of(&failed),
        "command 'printf': stdout \"status: ready\" does not contain \"down\""
    );
}

/// Whether process `pid` is gone (or only a zombie waiting to be reaped).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn a_command_over_its_timeout_is_killed_with_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("sleep.pid");
    let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
    let mut probe = command_probe(&[script.as_str()], true, 0, None);
    probe.run_properties = props(400, 50, 1);
    let result = check(&probe).await;
    assert_eq!(
        error_of(&result),
        "command 'sh -c': still running after 400 ms, killed"
    );
    assert!(
        result.took < Duration::from_secs(2),
        "took {:?}",
        result.took
    );

    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !process_gone(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        process_gone(pid),
        "the command's child {pid} outlived the timeout"
    );
}

#[tokio::test]
async fn a_command_own_timeout_applies_when_shorter() {
    let mut probe = command_probe(&["sleep", "10"], false, 0, None);
    if let ProbeType::Command(command) = &mut probe.probe_type {
        command.command.timeout = Some(Span::from_millis(200));
    }
    let result = check(&probe).await;
    assert_eq!(
        error_of(&result),
        "command 'sleep': still running after 200 ms, killed"
    );
}

// ---------------------------------------------------------------------------------------
// Prometheus: a real server scraping a target this test starts

/// Starts the scraped target: `demo_up 1` and `demo_latency_ms 42`.
async fn start_metrics_target() -> SocketAddr {
    let app = Router::new().route(
        "/metrics",
        get(|| async {
            (
                [("content-type", "text/plain; version=0.0.4")],
                "# TYPE demo_up gauge\ndemo_up 1\n# TYPE demo_latency_ms gauge\ndemo_latency_ms 42\n",
            )
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn prometheus_probe(endpoint: &str, query: &str, cmp: Comparison) -> Probe {
    bare_probe(
        props(5_000, 500, 1),
        ProbeType::Prometheus(PrometheusProbe {
            endpoint: endpoint.to_string(),
            query: query.to_string(),
            comparison: cmp,
        }),
    )
}

#[tokio::test]
async fn prometheus_queries_against_a_real_prometheus() {
    let target = start_metrics_target().await;
    let prometheus = start_prometheus(target).await;
    let endpoint = prometheus.url.as_str();

    // Wait for the first scrape with the probe itself: up to 120 attempts, 500 ms apart.
    let mut first = prometheus_probe(
        endpoint,
        "demo_up",
        comparison(ValueType::Int, Comparator::Eq, "1"),
    );
    first.run_properties = props(5_000, 500, 120);
    let result = check(&first).await;
    assert!(
        passed(&result),
        "demo_up never came through: {result:?}\nPrometheus log:\n{}",
        prometheus.log_tail()
    );

    // Samples are f64 that Prometheus writes in full; they compare as exact decimals.
    for (query, value_type, criteria, value) in [
        ("demo_latency_ms", ValueType::Float, Comparator::Lt, "100"),
        ("scalar(demo_up) + 1", ValueType::Int, Comparator::Eq, "2"),
        (
            "1e20",
            ValueType::Int,
            Comparator::Eq,
            "100000000000000000000",
        ),
    ] {
        let cmp = comparison(value_type, criteria, value);
        let result = check(&prometheus_probe(endpoint, query, cmp)).await;
        assert!(passed(&result), "{query} {criteria:?} {value}: {result:?}");
    }
    for (query, value_type, criteria, value, says) in [
        (
            "demo_latency_ms",
            ValueType::Float,
            Comparator::Gt,
            "100",
            "42 is not > 100",
        ),
        (
            "demo_up",
            ValueType::Int,
            Comparator::Eq,
            "0",
            "1 is not == 0",
        ),
        (
            "0.1 + 0.2",
            ValueType::Float,
            Comparator::Eq,
            "0.3",
            "0.30000000000000004 is not == 0.3",
        ),
        (
            "NaN",
            ValueType::Float,
            Comparator::Ge,
            "0",
            "NaN is not >= 0",
        ),
    ] {
        let cmp = comparison(value_type, criteria, value);
        let failed = check(&prometheus_probe(endpoint, query, cmp)).await;
        assert_eq!(
            error_of(&failed),
            format!("query '{query}' at {endpoint}: value {says}")
        );
    }

    let any = comparison(ValueType::Float, Comparator::Ge, "0");
    let none = check(&prometheus_probe(
        endpoint,
        "demo_up{job=\"nope\"}",
        any.clone(),
    ))
    .await;
    assert_eq!(
        error_of(&none),
        format!(
            "query 'demo_up{{job=\"nope\"}}' at {endpoint}: returned 0 samples, expected exactly 1"
        )
    );

    let two = check(&prometheus_probe(
        endpoint,
        "{__name__=~\"demo_.*\"}",
        any.clone(),
    ))
    .await;
    let error = error_of(&two);
    assert!(error.contains(": returned 2 samples (demo_"), "{error}");
    assert!(error.ends_with("), expected exactly 1"), "{error}");

    let matrix = check(&prometheus_probe(endpoint, "demo_up[1m]", any.clone())).await;
    assert_eq!(
        error_of(&matrix),
        format!(
            "query 'demo_up[1m]' at {endpoint}: returned a matrix, expected a vector of one sample or a scalar"
        )
    );

    let bad = check(&prometheus_probe(endpoint, "demo_up{", any.clone())).await;
    let error = error_of(&bad);
    assert!(
        error.starts_with(&format!(
            "query 'demo_up{{' at {endpoint}: Prometheus answered bad_data: "
        )),
        "{error}"
    );

    let down = format!("http://127.0.0.1:{}", closed_port());
    let refused = check(&prometheus_probe(&down, "demo_up", any)).await;
    assert_eq!(
        error_of(&refused),
        format!("query 'demo_up' at {down}: connection refused")
    );
}
