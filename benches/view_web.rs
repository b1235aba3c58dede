//! The view's web layer under a loaded store, against the real broker
//! (`KAFKA_BOOTSTRAP_SERVERS`, default 127.0.0.1:19092). Prints figures; not pass/fail.
//!
//! `BENCH_VIEW_WEB_RUNS` final run records (default 100,000; 20 pipelines, 1,000 flags,
//! one step per execution) are published, read by the real ingest into a fresh SQLite
//! file, and served by the real router on loopback. Then each of these is requested
//! `BENCH_VIEW_WEB_REQUESTS` times (default 200) with varied ids over HTTP, and the
//! median, p95 and max of the whole request (query, HTML or JSON, transfer) reported:
//! the runs page and `/api/runs` filtered by pipeline and by flag, a run's page, an
//! execution's page and a flag's ledger page. The figures include the query time
//! (`crate::view::query`, measured on its own by `cargo bench --bench view`).

#[path = "../tests/support/kafka.rs"]
mod kafka;
#[path = "../tests/support/view.rs"]
mod view;
#[path = "../tests/support/web.rs"]
mod web;

use std::time::{Duration, Instant};

use chrono::Utc;

use chaosgate::contract::RunStatus;
use chaosgate::view::Location;
use chaosgate::view::web::WebOptions;

/// A page's name and the path of its `i`th request.
type PageCase<'a> = (&'static str, Box<dyn Fn(usize) -> String + 'a>);

const PIPELINES: usize = 20;
const FLAGS: usize = 1000;

fn count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentiles(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    format!(
        "median {:>7.2} ms  p95 {:>7.2} ms  max {:>7.2} ms",
        at(0.5).as_secs_f64() * 1000.0,
        at(0.95).as_secs_f64() * 1000.0,
        at(1.0).as_secs_f64() * 1000.0
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs = count("BENCH_VIEW_WEB_RUNS", 100_000);
    let requests = count("BENCH_VIEW_WEB_REQUESTS", 200);
    let servers = kafka::bootstrap();
    let topics = ["runs", "commands", "changes", "dlq", "control"]
        .map(|t| kafka::unique_topic(&format!("bench-web-{t}")));
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    kafka::create_topics(&servers, &refs, 3).await;

    println!("view web bench: {runs} runs, {requests} requests per page");
    let producer = view::producer(&servers);
    let start = Utc::now() - chrono::Duration::days(7);
    let mut samples = Vec::new();
    for e in 0..runs {
        let event_id = format!("bench-web-{e}");
        let pipeline = format!("pipe-{}", e % PIPELINES);
        let status = if e % 7 == 0 {
            RunStatus::Failed
        } else {
            RunStatus::Passed
        };
        let at = start + chrono::Duration::seconds(e as i64 * 5);
        let mut record = view::run_record(&event_id, &pipeline, "step-1", 1, status, at);
        record.flag.key = format!("flag-{}", e % FLAGS);
        view::send(&producer, &topics[0], &view::run_message(&record));
        if e % (runs / 50).max(1) == 0 {
            samples.push(record);
        }
    }
    view::flush(&producer);

    let dir = tempfile::tempdir().expect("temp dir");
    let kafka = view::kafka_config(
        &servers,
        [&topics[0], &topics[1], &topics[2], &topics[3], &topics[4]],
    );
    let ingest_started = Instant::now();
    let (store, ingest) = view::start(&kafka, &Location::File(dir.path().join("view.db")));
    assert!(
        ingest
            .status()
            .wait_caught_up(Duration::from_secs(600))
            .await,
        "ingest caught up"
    );
    println!(
        "ingest caught up in {:.1} s",
        ingest_started.elapsed().as_secs_f64()
    );
    let served = web::Served::start(store, ingest.status(), WebOptions::default()).await;
    let http = web::client();

    let flag = |i: usize| {
        format!(
            "{}/{}/flag-{}",
            samples[0].flag.project,
            samples[0].flag.environment,
            i % FLAGS
        )
    };
    let pages: Vec<PageCase<'_>> = vec![
        (
            "runs page by pipeline",
            Box::new(|i| format!("/runs?pipeline_id=pipe-{}", i % PIPELINES)),
        ),
        (
            "runs page by flag",
            Box::new(move |i| format!("/runs?flag={}", flag(i * 37))),
        ),
        (
            "/api/runs by pipeline",
            Box::new(|i| format!("/api/runs?pipeline_id=pipe-{}", i % PIPELINES)),
        ),
        (
            "/api/runs by flag",
            Box::new(move |i| format!("/api/runs?flag={}", flag(i * 37))),
        ),
        (
            "run page",
            Box::new(|i| format!("/runs/{}", samples[i % samples.len()].run_id)),
        ),
        (
            "execution page",
            Box::new(|i| {
                format!(
                    "/executions/{}",
                    samples[i % samples.len()].pipeline_execution_id
                )
            }),
        ),
        (
            "flag ledger page",
            Box::new(|i| {
                let r = &samples[i % samples.len()];
                format!(
                    "/flags/{}/{}/{}",
                    r.flag.project, r.flag.environment, r.flag.key
                )
            }),
        ),
    ];
    for (name, path) in &pages {
        let times = view::time_gets(&http, requests, |i| served.at(&path(i))).await;
        println!("{name:<24} {}", percentiles(times));
    }
    served.stop().await;
    ingest.stop().await.expect("ingest stops");
}
