//! The view's web layer over HTTP: the JSON API and its errors, the exports, the pages,
//! the bearer token, `/readyz` before and after catch-up, `/metrics`, the live stream's
//! resume, and the OpenAPI document against the router. Records are crafted, published
//! on the real broker with a plain producer, and read by the real ingest into SQLite.

#[path = "support/kafka.rs"]
mod kafka;
#[path = "support/view.rs"]
mod view;
#[path = "support/web.rs"]
mod web;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use reqwest::StatusCode;
use serde_json::Value;

use chaosgate::contract::{KafkaMessage, RunRecord, RunStatus};
use chaosgate::view::web::{WebOptions, routes};
use chaosgate::view::{IngestStatus, Location, Store};

use web::{Served, client};

const PATIENCE: Duration = Duration::from_secs(90);

/// Publishes one gated execution: the change, a final run per `(pipeline, status)`
/// and the command. Returns the run records.
fn publish_execution(
    producer: &rdkafka::producer::BaseProducer,
    topics: &[String; 5],
    pipeline: &str,
    status: RunStatus,
) -> RunRecord {
    let event_id = uuid::Uuid::new_v4().to_string();
    let at = Utc::now() - chrono::Duration::seconds(60);
    let change = view::change(&event_id, at);
    view::send(producer, &topics[2], &view::change_message(&change));
    let run = view::run_record(&event_id, pipeline, "latency", 1, status, at);
    view::send(producer, &topics[0], &view::run_message(&run));
    let command = view::command(
        &event_id,
        pipeline,
        &[&run],
        at + chrono::Duration::seconds(31),
    );
    view::send(producer, &topics[1], &view::command_message(&command));
    run
}

async fn json(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_pages_exports_metrics_and_errors_show_what_was_ingested() {
    let servers = kafka::require_broker();
    let topics = view::topics(&servers, "web-api").await;
    let producer = view::producer(&servers);
    let passed = publish_execution(&producer, &topics, "web-pay", RunStatus::Passed);
    let failed = publish_execution(&producer, &topics, "web-pay", RunStatus::Failed);
    let other = publish_execution(&producer, &topics, "web-search", RunStatus::Passed);
    // A record ingest cannot read: listed as a problem, skipped.
    let garbage = KafkaMessage {
        key: Some(b"garbage".to_vec()),
        value: Some(b"\xff not a cloud event".to_vec()),
        headers: Vec::new(),
    };
    view::send(&producer, &topics[0], &garbage);
    view::flush(&producer);

    let kafka = view::kafka_config(&servers, view::refs(&topics));
    let (store, ingest) = view::start(&kafka, &Location::Memory);
    assert!(
        ingest.status().wait_caught_up(PATIENCE).await,
        "ingest caught up: {:?}",
        ingest.status().failed()
    );
    let served = Served::start(
        store.clone(),
        ingest.status(),
        WebOptions {
            trace_url: Some("http://jaeger.test/trace/{trace_id}".into()),
            ..WebOptions::default()
        },
    )
    .await;
    let http = client();

    // The list, filtered by pipeline, newest first, with a cursor when limited.
    let (status, all) = json(http.get(served.at("/api/runs")).send().await.expect("get")).await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(all["runs"].as_array().map(Vec::len), Some(3), "{all}");
    assert_eq!(all["next"], Value::Null);
    let (_, pay) = json(
        http.get(served.at("/api/runs?pipeline_id=web-pay"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    let ids: BTreeSet<&str> = pay["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter_map(|r| r["run_id"].as_str())
        .collect();
    assert_eq!(
        ids,
        BTreeSet::from([passed.run_id.as_str(), failed.run_id.as_str()]),
        "{pay}"
    );
    let (_, failing) = json(
        http.get(served.at("/api/runs?status=failed,error"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(
        failing["runs"][0]["run_id"],
        failed.run_id.as_str(),
        "{failing}"
    );
    assert_eq!(failing["runs"].as_array().map(Vec::len), Some(1));
    let (_, first) = json(
        http.get(served.at("/api/runs?limit=2"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    let cursor = first["next"]
        .as_str()
        .unwrap_or_else(|| {
            panic!("/api/runs?limit=2 over 3 runs must give a next cursor (keyset pagination of query::runs): {first}")
        })
        .to_string();
    let (_, second) = json(
        http.get(served.at(&format!(
            "/api/runs?limit=2&cursor={}",
            form_urlencoded::byte_serialize(cursor.as_bytes()).collect::<String>()
        )))
        .send()
        .await
        .expect("get"),
    )
    .await;
    let mut paged: Vec<&str> = first["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .chain(second["runs"].as_array().expect("runs"))
        .filter_map(|r| r["run_id"].as_str())
        .collect();
    paged.sort_unstable();
    paged.dedup();
    assert_eq!(
        paged.len(),
        3,
        "two pages hold all three runs once: {first} {second}"
    );

    // Bad parameters: 400, JSON, naming the parameter.
    for (query, parameter) in [
        ("status=done", "status"),
        ("since=yesterday", "since"),
        ("sort=name", "sort"),
        ("limit=0", "limit"),
        ("cursor=not-a-cursor", "cursor"),
        ("format=xml", "format"),
        ("pipeline=x", "query"),
    ] {
        let (status, body) = json(
            http.get(served.at(&format!("/api/runs?{query}")))
                .send()
                .await
                .expect("get"),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["parameter"], parameter, "{query}: {body}");
        assert_eq!(body["status"], 400);
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains(parameter) || parameter == "query"),
            "{body}"
        );
    }
    let (status, body) = json(
        http.get(served.at("/api/runs/no-such-run"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("no-such-run")),
        "{body}"
    );

    // One run in full, with its trace link.
    let (status, run) = json(
        http.get(served.at(&format!("/api/runs/{}", failed.run_id)))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["run"]["status"], "failed");
    assert_eq!(run["run"]["score"], 40.0);
    assert_eq!(
        run["record"]["faults"].as_array().map(Vec::len),
        Some(failed.faults.len())
    );
    assert_eq!(
        run["record"]["probes"].as_array().map(Vec::len),
        Some(failed.probes.len())
    );
    assert_eq!(run["run"]["position"]["topic"], topics[0].as_str());
    if let Some(trace) = run["run"]["trace_id"].as_str() {
        assert_eq!(
            run["trace_url"],
            format!("http://jaeger.test/trace/{trace}")
        );
    }

    // Execution, flag ledger, pipeline, overview, audit, problems.
    let (status, execution) = json(
        http.get(served.at(&format!("/api/executions/{}", failed.pipeline_execution_id)))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{execution}");
    assert_eq!(execution["execution"]["status"], "failed", "{execution}");
    assert_eq!(execution["command"]["command"], "disable", "{execution}");
    let flag = &failed.flag;
    let (status, ledger) = json(
        http.get(served.at(&format!(
            "/api/flags/{}/{}/{}",
            flag.project, flag.environment, flag.key
        )))
        .send()
        .await
        .expect("get"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{ledger}");
    assert!(
        ledger["entries"].as_array().is_some_and(|e| e.len() >= 3),
        "{ledger}"
    );
    let (status, pipeline) = json(
        http.get(served.at("/api/pipelines/web-pay"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{pipeline}");
    assert_eq!(
        pipeline["executions"].as_array().map(Vec::len),
        Some(2),
        "{pipeline}"
    );
    let (status, _) = json(
        http.get(served.at("/api/pipelines/no-such-pipeline"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, overview) = json(
        http.get(served.at("/api/overview?since=1h"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{overview}");
    assert_eq!(overview["counts"]["passed"], 2, "{overview}");
    assert_eq!(overview["counts"]["failed"], 1, "{overview}");
    let (status, audit) = json(http.get(served.at("/api/audit")).send().await.expect("get")).await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    assert!(
        audit["counts"].get("fault_not_reverted").is_some(),
        "{audit}"
    );
    let (status, problems) = json(
        http.get(served.at("/api/problems"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{problems}");
    assert_eq!(
        problems["problems"].as_array().map(Vec::len),
        Some(1),
        "{problems}"
    );
    assert_eq!(
        problems["problems"][0]["position"]["topic"],
        topics[0].as_str()
    );

    // Exports: every matching run, the same ones the JSON lists.
    let csv = http
        .get(served.at("/api/runs.csv?pipeline_id=web-pay"))
        .send()
        .await
        .expect("get");
    assert_eq!(csv.status(), StatusCode::OK);
    assert!(
        csv.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap_or_default()
            .starts_with("text/csv")
    );
    let csv = csv.text().await.expect("csv");
    let lines: Vec<&str> = csv.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 3, "header and two runs:\n{csv}");
    assert!(
        lines[0].starts_with("run_id,status,attempt,score,expected,margin,pipeline_id"),
        "{}",
        lines[0]
    );
    assert!(lines[1..].iter().all(|l| l.contains(",web-pay,")), "{csv}");
    let ndjson = http
        .get(served.at("/api/runs?format=ndjson"))
        .send()
        .await
        .expect("get");
    assert_eq!(
        ndjson.headers()[reqwest::header::CONTENT_TYPE],
        "application/x-ndjson"
    );
    let ndjson = ndjson.text().await.expect("ndjson");
    let mut exported: Vec<String> = ndjson
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("a JSON line")["run_id"]
                .as_str()
                .expect("run_id")
                .to_string()
        })
        .collect();
    exported.sort();
    let mut expected = vec![
        passed.run_id.clone(),
        failed.run_id.clone(),
        other.run_id.clone(),
    ];
    expected.sort();
    assert_eq!(exported, expected);

    // Pages render what the API returns.
    for (path, must) in [
        (
            "/".to_string(),
            vec!["Overview", "web-pay", "Needs attention"],
        ),
        ("/runs".to_string(), vec![&failed.run_id[..8], "web-search"]),
        (
            "/runs?pipeline_id=web-search".to_string(),
            vec![&other.run_id[..8]],
        ),
        (
            format!("/runs/{}", failed.run_id),
            vec![
                "resilience score",
                "Probes",
                "Raw CloudEvent",
                "http://jaeger.test/trace/",
            ],
        ),
        (
            format!("/executions/{}", failed.pipeline_execution_id),
            vec!["Flag command", "disable"],
        ),
        ("/pipelines".to_string(), vec!["web-pay", "web-search"]),
        (
            "/pipelines/web-pay".to_string(),
            vec!["score − expected", "<svg"],
        ),
        ("/flags".to_string(), vec![flag.key.as_str()]),
        (
            format!("/flags/{}/{}/{}", flag.project, flag.environment, flag.key),
            vec!["Change", "Command"],
        ),
        ("/problems".to_string(), vec![topics[0].as_str()]),
    ] {
        let response = http.get(served.at(&path)).send().await.expect("get");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let html = response.text().await.expect("html");
        for text in must {
            assert!(
                html.contains(text),
                "{path} shows '{text}':\n{}",
                &html[..html.len().min(3000)]
            );
        }
    }
    let page = http
        .get(served.at("/runs?status=done"))
        .send()
        .await
        .expect("get");
    assert_eq!(page.status(), StatusCode::BAD_REQUEST);
    assert!(page.text().await.expect("html").contains("status"));

    // Metrics: lag, rows, query time, audit findings.
    let metrics = http
        .get(served.at("/metrics"))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("metrics");
    for name in [
        "chaosgate_view_ingest_lag_records 0",
        "chaosgate_view_ingest_caught_up 1",
        "chaosgate_view_rows{table=\"runs\"} 3",
        "chaosgate_view_rows{table=\"problems\"} 1",
        "chaosgate_view_query_seconds_count{query=\"runs\"}",
        "chaosgate_view_audit_findings{kind=\"fault_not_reverted\"}",
        "chaosgate_view_ingest_problems_total 1",
    ] {
        assert!(metrics.contains(name), "/metrics has {name}:\n{metrics}");
    }
    served.stop().await;
    ingest.stop().await.expect("ingest stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_every_route_but_health_and_a_browser_gets_a_cookie() {
    let store = Store::open(&Location::Memory).expect("store");
    let served = Served::start(
        store,
        IngestStatus::default(),
        WebOptions {
            token: Some("s3cret".into()),
            ..WebOptions::default()
        },
    )
    .await;
    let http = client();
    let open = ["/healthz", "/readyz", "/static/view.css", "/static/view.js"];
    for (route, _) in routes() {
        let path = route
            .replace("{run_id}", "r1")
            .replace("{pipeline_execution_id}", "e1")
            .replace("{pipeline_id}", "p1")
            .replace("{project}", "shop")
            .replace("{environment}", "prod")
            .replace("{flag}", "f");
        let without = http.get(served.at(&path)).send().await.expect("get");
        if open.contains(&route) {
            assert_ne!(
                without.status(),
                StatusCode::UNAUTHORIZED,
                "{route} is open"
            );
            continue;
        }
        assert_eq!(
            without.status(),
            StatusCode::UNAUTHORIZED,
            "{route} without a token"
        );
        assert_eq!(
            without.headers()[reqwest::header::WWW_AUTHENTICATE],
            "Bearer realm=\"chaosgate view\""
        );
        let wrong = http
            .get(served.at(&path))
            .bearer_auth("guess")
            .send()
            .await
            .expect("get");
        assert_eq!(
            wrong.status(),
            StatusCode::UNAUTHORIZED,
            "{route} with a wrong token"
        );
        let right = http
            .get(served.at(&path))
            .bearer_auth("s3cret")
            .send()
            .await
            .expect("get");
        assert_ne!(
            right.status(),
            StatusCode::UNAUTHORIZED,
            "{route} with the token"
        );
        assert!(
            right.status().is_success() || right.status() == StatusCode::NOT_FOUND,
            "{route}: {}",
            right.status()
        );
    }
    // JSON for API clients, a page with a form for browsers.
    let (status, body) = json(http.get(served.at("/api/runs")).send().await.expect("get")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("Bearer")),
        "{body}"
    );
    let page = http
        .get(served.at("/runs"))
        .header("accept", "text/html")
        .send()
        .await
        .expect("get");
    assert_eq!(page.status(), StatusCode::UNAUTHORIZED);
    assert!(page.text().await.expect("html").contains("name=\"token\""));
    // ?token= sets the cookie and redirects to the same address without the token.
    let login = http
        .get(served.at("/runs?status=failed&token=s3cret"))
        .send()
        .await
        .expect("get");
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        login.headers()[reqwest::header::LOCATION],
        "/runs?status=failed"
    );
    let cookie = login.headers()[reqwest::header::SET_COOKIE]
        .to_str()
        .expect("cookie")
        .to_string();
    assert!(
        cookie.starts_with("chaosgate_view_token=s3cret;") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let with_cookie = http
        .get(served.at("/runs?status=failed"))
        .header("cookie", "chaosgate_view_token=s3cret")
        .send()
        .await
        .expect("get");
    assert_eq!(with_cookie.status(), StatusCode::OK);
    let bad = http
        .get(served.at("/runs?token=guess"))
        .send()
        .await
        .expect("get");
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_503_until_ingest_caught_up_then_200() {
    let servers = kafka::require_broker();
    let topics = view::topics(&servers, "web-ready").await;
    let store = Store::open(&Location::Memory).expect("store");
    // Before ingest has reached the high watermarks: not ready, and why.
    let before = Served::start(
        store.clone(),
        IngestStatus::default(),
        WebOptions::default(),
    )
    .await;
    let (status, body) = json(
        client()
            .get(before.at("/readyz"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["ready"], false);
    assert!(
        body["reasons"][0]
            .as_str()
            .is_some_and(|r| r.contains("caught up")),
        "{body}"
    );
    let health = client()
        .get(before.at("/healthz"))
        .send()
        .await
        .expect("get");
    assert_eq!(health.status(), StatusCode::OK);
    before.stop().await;

    // With records to read: 200 only once ingest reached them.
    let producer = view::producer(&servers);
    for _ in 0..50 {
        publish_execution(&producer, &topics, "web-ready", RunStatus::Passed);
    }
    view::flush(&producer);
    let kafka = view::kafka_config(&servers, view::refs(&topics));
    let ingest = chaosgate::view::ingest::start(&kafka, store.clone()).expect("ingest");
    let served = Served::start(store.clone(), ingest.status(), WebOptions::default()).await;
    let http = client();
    let mut saw_not_ready = false;
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let (status, body) = json(http.get(served.at("/readyz")).send().await.expect("get")).await;
        if status == StatusCode::OK {
            assert_eq!(body["ready"], true, "{body}");
            assert_eq!(body["lag_records"], 0, "{body}");
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        saw_not_ready = true;
        assert!(std::time::Instant::now() < deadline, "never ready: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Ready means complete: every run published is there.
    let runs = store
        .read(|c| {
            chaosgate::view::query::runs(
                c,
                &chaosgate::view::model::RunFilter {
                    limit: 500,
                    ..Default::default()
                },
            )
        })
        .await
        .expect("runs");
    assert_eq!(
        runs.items.len(),
        50,
        "ready only once all 50 runs were ingested (saw 503 first: {saw_not_ready})"
    );
    served.stop().await;
    ingest.stop().await.expect("ingest stops");
}

/// Reads server-sent events from `response` until `n` `change` events came; returns
/// their (id, data).
async fn changes(response: &mut reqwest::Response, n: usize) -> Vec<(i64, Value)> {
    let mut buffer = String::new();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + PATIENCE;
    while out.len() < n {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let chunk = tokio::time::timeout(left, response.chunk())
            .await
            .unwrap_or_else(|_| panic!("waited {PATIENCE:?} for {n} change events; got {out:?}"))
            .expect("stream chunk")
            .expect("the stream stays open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let mut name = "";
            let mut id = None;
            let mut data = String::new();
            for line in event.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = if v.trim() == "change" {
                        "change"
                    } else {
                        "other"
                    };
                }
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse::<i64>().ok();
                }
                if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if name == "change" {
                out.push((
                    id.expect("a change event has an id"),
                    serde_json::from_str(&data).expect("change data is JSON"),
                ));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_stream_sends_each_change_and_resumes_after_last_event_id() {
    let servers = kafka::require_broker();
    let topics = view::topics(&servers, "web-live").await;
    let kafka = view::kafka_config(&servers, view::refs(&topics));
    let (store, ingest) = view::start(&kafka, &Location::Memory);
    assert!(ingest.status().wait_caught_up(PATIENCE).await);
    let served = Served::start(store, ingest.status(), WebOptions::default()).await;
    let http = client();
    let mut stream = http
        .get(served.at("/api/stream"))
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), StatusCode::OK);
    assert_eq!(
        stream.headers()[reqwest::header::CONTENT_TYPE],
        "text/event-stream"
    );

    let producer = view::producer(&servers);
    let first = view::run_record(
        &uuid::Uuid::new_v4().to_string(),
        "web-live",
        "latency",
        1,
        RunStatus::Running,
        Utc::now(),
    );
    view::send(&producer, &topics[0], &view::run_message(&first));
    view::flush(&producer);
    let got = changes(&mut stream, 1).await;
    assert_eq!(got[0].1["kind"], "run", "{got:?}");
    assert_eq!(got[0].1["id"], first.run_id.as_str(), "{got:?}");
    let first_seq = got[0].0;
    drop(stream);

    // While disconnected: two more changes.
    let second = view::run_record(
        &uuid::Uuid::new_v4().to_string(),
        "web-live",
        "latency",
        1,
        RunStatus::Passed,
        Utc::now(),
    );
    let third = view::run_record(
        &uuid::Uuid::new_v4().to_string(),
        "web-live",
        "latency",
        1,
        RunStatus::Failed,
        Utc::now(),
    );
    view::send(&producer, &topics[0], &view::run_message(&second));
    view::flush(&producer);
    view::send(&producer, &topics[0], &view::run_message(&third));
    view::flush(&producer);
    // Reconnecting with Last-Event-ID resumes right after it: nothing missed, nothing twice.
    let mut resumed = http
        .get(served.at("/api/stream"))
        .header("last-event-id", first_seq.to_string())
        .send()
        .await
        .expect("stream");
    let got = changes(&mut resumed, 2).await;
    let ids: Vec<&str> = got.iter().filter_map(|(_, d)| d["id"].as_str()).collect();
    assert_eq!(
        ids,
        [second.run_id.as_str(), third.run_id.as_str()],
        "{got:?}"
    );
    assert!(got.iter().all(|(seq, _)| *seq > first_seq));
    assert!(got[0].0 < got[1].0);
    let (status, body) = json(
        http.get(served.at("/api/stream?after=-1"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["parameter"], "after");
    drop(resumed);
    // Narrowed to one execution: only its changes.
    let mut narrowed = http
        .get(served.at(&format!(
            "/api/stream?after={first_seq}&pipeline_execution_id={}",
            third.pipeline_execution_id
        )))
        .send()
        .await
        .expect("stream");
    let got = changes(&mut narrowed, 1).await;
    assert_eq!(got[0].1["id"], third.run_id.as_str(), "{got:?}");
    drop(narrowed);
    served.stop().await;
    ingest.stop().await.expect("ingest stops");
}

#[test]
fn the_openapi_document_parses_and_describes_every_route() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schemas/view-openapi.yaml"
    ))
    .expect("schemas/view-openapi.yaml");
    let document: Value = serde_saphyr::from_str(&text).expect("the OpenAPI document is YAML");
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "OpenAPI 3.1"
    );
    let described: BTreeSet<String> = document["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .cloned()
        .collect();
    let routed: BTreeSet<String> = routes()
        .into_iter()
        .map(|(path, _)| path.to_string())
        .collect();
    assert_eq!(
        described, routed,
        "paths in schemas/view-openapi.yaml (left) and routes in src/view/web/mod.rs (right) differ"
    );
    for (path, item) in document["paths"].as_object().expect("paths") {
        assert!(
            item.get("get").is_some_and(|g| g["responses"].is_object()),
            "{path} has a GET with responses"
        );
    }
}
