//! View benchmarks against the real broker (`KAFKA_BOOTSTRAP_SERVERS`, default
//! 127.0.0.1:19092). Prints figures; it is not a pass/fail test.
//!
//! 1. Catch-up and ingest rate: `BENCH_VIEW_RUNS` run records (default 1,000,000; final
//!    records, four steps per execution) plus one flag-change and one command per
//!    execution are published, then the real `chaosgate view` process reads them into a
//!    fresh SQLite file; the time until every offset is stored, the records per second,
//!    and the process's peak RSS (VmHWM) and sampled RSS are reported.
//! 2. HTTP: the same running view process is asked, over loopback, for `/api/runs` and
//!    the runs page filtered by pipeline and by flag, an execution's page, a flag's
//!    ledger page and API: median, p95 and max of `BENCH_VIEW_QUERIES` (default 200)
//!    requests each, with varied ids (the whole request: query, HTML or JSON, transfer).
//! 3. Queries on that file, at the query layer (`chaosgate::view::query`), with the runs
//!    stored: run list filtered by pipeline and by flag (first page and deep pages),
//!    counts by status, an execution, a flag ledger, the overview and the audit; median,
//!    p95 and max of `BENCH_VIEW_QUERIES` calls each, with varied ids.
//!
//! For A/B runs: `BENCH_VIEW_TOPICS=NAME` names the topics `NAME-runs`, `NAME-commands`,
//! ... and publishes only when they hold fewer records than the bench needs (and keeps
//! them at the end), so runs after the first read the same records;
//! `BENCH_VIEW_BIN=PATH` runs that `chaosgate` binary as the view (a baseline build);
//! `BENCH_VIEW_INGEST_ONLY=1` stops after the catch-up.

#[path = "../tests/support/kafka.rs"]
mod kafka;
#[path = "../tests/support/view.rs"]
mod view;

use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;

use chaosgate::contract::RunStatus;
use chaosgate::view::audit::{self, AuditSettings};
use chaosgate::view::model::RunFilter;
use chaosgate::view::{Location, Store, query};

const PIPELINES: usize = 20;
const PROJECTS: usize = 10;
const FLAGS_PER_PROJECT: usize = 100;
const STEPS: usize = 4;

fn count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn flag_of(execution: usize) -> (String, String, String) {
    let flag = execution % (PROJECTS * FLAGS_PER_PROJECT);
    (
        format!("p{}", flag / FLAGS_PER_PROJECT),
        "prod".to_string(),
        format!("f{}", flag % FLAGS_PER_PROJECT),
    )
}

fn percentiles(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    format!(
        "median {:>7.2} ms  p95 {:>7.2} ms  max {:>7.2} ms",
        at(0.5).as_secs_f64() * 1e3,
        at(0.95).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3
    )
}

fn time<T>(
    store: &Store,
    name: &str,
    n: usize,
    mut f: impl FnMut(&rusqlite::Connection, usize) -> Result<T, chaosgate::view::ViewError>,
) {
    let mut samples = Vec::with_capacity(n);
    store
        .read_blocking(|c| {
            for i in 0..n {
                let started = Instant::now();
                f(c, i)?;
                samples.push(started.elapsed());
            }
            Ok(())
        })
        .expect(name);
    println!("  {name:<44} {}", percentiles(samples));
}

/// Records already in `topics` (the sum of their partitions' high watermarks).
fn stored_records(servers: &str, topics: &[&str]) -> usize {
    use rdkafka::consumer::Consumer;
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .expect("consumer");
    let mut held = 0;
    for topic in topics {
        for partition in 0..3 {
            if let Ok((_, high)) =
                consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))
            {
                held += usize::try_from(high).unwrap_or(0);
            }
        }
    }
    held
}

/// Publishes `executions` executions to `names` (runs, commands, changes, ...): per
/// execution a flag-change, `STEPS` final runs and a command.
fn publish(servers: &str, names: &[String], executions: usize) {
    let produced = Instant::now();
    let producer = view::producer(servers);
    let now = Utc::now();
    // 29 days: inside the view's default 30-day retention for the whole bench.
    let span_ms = 29 * 24 * 3600 * 1000_i64;
    let mut records = 0usize;
    for e in 0..executions {
        let event_id = format!("bench-{e}");
        let pipeline = format!("pipe-{}", e % PIPELINES);
        let (project, environment, flag) = flag_of(e);
        let at =
            now - chrono::Duration::milliseconds(span_ms - span_ms / executions as i64 * e as i64);
        let mut change = view::change(&event_id, at);
        change.project = project.clone();
        change.environment = environment.clone();
        change.flag = flag.clone();
        view::send(&producer, &names[2], &view::change_message(&change));
        let mut steps = Vec::with_capacity(STEPS);
        for s in 0..STEPS {
            let status = if (e + s) % 17 == 0 {
                RunStatus::Failed
            } else {
                RunStatus::Passed
            };
            let mut record = view::run_record(
                &event_id,
                &pipeline,
                &format!("step-{s}"),
                1,
                status,
                at + chrono::Duration::seconds(40 * s as i64),
            );
            record.flag.project = project.clone();
            record.flag.environment = environment.clone();
            record.flag.key = flag.clone();
            record.resilience_score = Some(60.0 + ((e * 7 + s * 13) % 40) as f64);
            view::send(&producer, &names[0], &view::run_message(&record));
            steps.push(record);
        }
        let step_refs: Vec<&_> = steps.iter().collect();
        let mut command = view::command(
            &event_id,
            &pipeline,
            &step_refs,
            at + chrono::Duration::minutes(3),
        );
        command.project = project;
        command.environment = environment;
        command.flag = flag;
        view::send(&producer, &names[1], &view::command_message(&command));
        records += STEPS + 2;
    }
    view::flush(&producer);
    let produce_s = produced.elapsed().as_secs_f64();
    println!(
        "published {records} records in {produce_s:.1} s ({:.0}/s), load {}",
        records as f64 / produce_s,
        loadavg()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let servers = kafka::require_broker();
    let runs = count("BENCH_VIEW_RUNS", 1_000_000);
    let queries = count("BENCH_VIEW_QUERIES", 200);
    let executions = runs / STEPS;
    let kept_topics = std::env::var("BENCH_VIEW_TOPICS").ok();
    let names: Vec<String> = ["runs", "commands", "changes", "dlq", "control"]
        .iter()
        .map(|t| match &kept_topics {
            Some(name) => format!("{name}-{t}"),
            None => kafka::unique_topic(&format!("bench-view-{t}")),
        })
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    kafka::create_topics(&servers, &refs, 3).await;
    let binary = std::env::var("BENCH_VIEW_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_chaosgate").into());
    let ingest_only = std::env::var("BENCH_VIEW_INGEST_ONLY").is_ok_and(|v| v == "1");
    println!(
        "view bench: {runs} runs in {executions} executions, view binary {}, load {}",
        binary.display(),
        loadavg()
    );

    let records = executions * (STEPS + 2);
    let held = stored_records(&servers, &refs);
    if held >= records {
        println!(
            "topics {} hold {held} records: not published again",
            names[0]
        );
    } else {
        publish(&servers, &names, executions);
    }

    // Catch-up by the real `chaosgate view` process into a fresh file.
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("view.db");
    let config = dir.path().join("view.toml");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbootstrap_servers = \"{servers}\"\n[kafka.topics]\nruns = \"{}\"\n\
             commands = \"{}\"\nflag_changes = \"{}\"\ndead_letter = \"{}\"\ncontrol = \"{}\"\n\
             [catalog]\npath = \"catalog\"\n[telemetry]\nlog_format = \"text\"\n\
             [view]\nlisten = \"127.0.0.1:{port}\"\n",
            names[0], names[1], names[2], names[3], names[4]
        ),
    )
    .expect("config");
    let started = Instant::now();
    let mut child = view::spawn_view_of(&binary, &config, &db, &dir.path().join("view.log"), &[]);

    let pid = child.id();
    let mut rss_samples = Vec::new();
    let applied = || view::applied_offsets(&db);
    let mut halfway: Option<(f64, i64)> = None;
    loop {
        let n = applied();
        if let Some(kb) = status_kb(pid, "VmRSS:") {
            rss_samples.push(kb);
        }
        if halfway.is_none() && n as usize >= records / 2 {
            halfway = Some((started.elapsed().as_secs_f64(), n));
        }
        if n as usize >= records {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "catch-up did not finish: {n} of {records}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let catch_up = started.elapsed().as_secs_f64();
    let peak = status_kb(pid, "VmHWM:").unwrap_or(0);
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(") ")?.1.to_string();
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks: f64 =
                fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(0.0);
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let io_mib = |field: &str| {
        io.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1048576.0
    };
    let (written, read) = (io_mib("write_bytes:"), io_mib("read_bytes:"));
    rss_samples.sort_unstable();
    let median_rss = rss_samples.get(rss_samples.len() / 2).copied().unwrap_or(0);
    println!(
        "catch-up of {records} records ({runs} runs): {catch_up:.1} s, {:.0} records/s \
         ({:.0} runs/s); second half alone {:.0} records/s; CPU {cpu:.1} s; \
         RSS median {:.0} MiB, peak {:.0} MiB; db {:.0} MiB; written to disk {written:.0} MiB, \
         read {read:.0} MiB; load {}",
        records as f64 / catch_up,
        runs as f64 / catch_up,
        halfway
            .map(|(t, n)| (records as f64 - n as f64) / (catch_up - t))
            .unwrap_or(0.0),
        median_rss as f64 / 1024.0,
        peak as f64 / 1024.0,
        std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0,
        loadavg()
    );

    let pick = |i: usize| (i * 7919) % executions;
    if !ingest_only {
        http_timings(port, queries, executions).await;
        println!(
            "view RSS after the HTTP requests: {:.0} MiB, peak {:.0} MiB",
            status_kb(pid, "VmRSS:").unwrap_or(0) as f64 / 1024.0,
            status_kb(pid, "VmHWM:").unwrap_or(0) as f64 / 1024.0
        );
    }
    // SAFETY: SIGTERM to the child we spawned and have not reaped.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = child.wait();
    if ingest_only {
        delete_topics(&servers, &refs, kept_topics.is_some()).await;
        return;
    }

    // Queries on the stored runs.
    let store = Store::open(&Location::File(db.clone())).expect("open");
    let stored: i64 = store
        .read_blocking(|c| {
            c.query_row("SELECT count(*) FROM runs", [], |r| r.get(0))
                .map_err(|source| chaosgate::view::ViewError::Sqlite {
                    what: "count".into(),
                    source,
                })
        })
        .expect("count");
    println!(
        "queries with {stored} runs stored ({queries} calls each), load {}",
        loadavg()
    );
    time(
        &store,
        "runs ?pipeline_id (first page of 50)",
        queries,
        |c, i| {
            query::runs(
                c,
                &RunFilter {
                    pipeline_id: Some(format!("pipe-{}", i % PIPELINES)),
                    ..Default::default()
                },
            )
        },
    );
    time(
        &store,
        "runs ?pipeline_id, page 20 (cursor)",
        queries / 10,
        |c, i| {
            let mut filter = RunFilter {
                pipeline_id: Some(format!("pipe-{}", i % PIPELINES)),
                ..Default::default()
            };
            for _ in 0..20 {
                filter.cursor = query::runs(c, &filter)?.next;
            }
            Ok(())
        },
    );
    time(
        &store,
        "runs ?flag=p/prod/f (exact, first page)",
        queries,
        |c, i| {
            let (p, e, f) = flag_of(pick(i));
            query::runs(
                c,
                &RunFilter {
                    flag: Some(format!("{p}/{e}/{f}")),
                    ..Default::default()
                },
            )
        },
    );
    time(
        &store,
        "runs ?flag=p/prod/* (glob, first page)",
        queries,
        |c, i| {
            let (p, _, _) = flag_of(pick(i));
            query::runs(
                c,
                &RunFilter {
                    flag: Some(format!("{p}/prod/*")),
                    ..Default::default()
                },
            )
        },
    );
    time(
        &store,
        "runs ?pipeline_id&status=failed",
        queries,
        |c, i| {
            query::runs(
                c,
                &RunFilter {
                    pipeline_id: Some(format!("pipe-{}", i % PIPELINES)),
                    statuses: vec![RunStatus::Failed],
                    ..Default::default()
                },
            )
        },
    );
    time(
        &store,
        "runs ?pipeline_id sorted by margin",
        queries,
        |c, i| {
            query::runs(
                c,
                &RunFilter {
                    pipeline_id: Some(format!("pipe-{}", i % PIPELINES)),
                    sort: chaosgate::view::model::RunSort::Margin,
                    ..Default::default()
                },
            )
        },
    );
    time(&store, "status counts ?pipeline_id", queries, |c, i| {
        query::status_counts(
            c,
            &RunFilter {
                pipeline_id: Some(format!("pipe-{}", i % PIPELINES)),
                ..Default::default()
            },
        )
    });
    time(&store, "status counts ?flag=p/prod/f", queries, |c, i| {
        let (p, e, f) = flag_of(pick(i));
        query::status_counts(
            c,
            &RunFilter {
                flag: Some(format!("{p}/{e}/{f}")),
                ..Default::default()
            },
        )
    });
    time(&store, "execution", queries, |c, i| {
        let e = pick(i);
        let id = chaosgate::contract::ids::pipeline_execution_id(
            &format!("bench-{e}"),
            &format!("pipe-{}", e % PIPELINES),
        );
        query::execution(c, &id)?
            .ok_or_else(|| chaosgate::view::ViewError::BadRequest("missing".into()))
    });
    time(&store, "run detail", queries, |c, i| {
        let e = pick(i);
        let id = chaosgate::contract::ids::run_id(
            &format!("bench-{e}"),
            &format!("pipe-{}", e % PIPELINES),
            "canary",
            "step-1",
            1,
            0,
        );
        query::run(c, &id)?.ok_or_else(|| chaosgate::view::ViewError::BadRequest("missing".into()))
    });
    time(
        &store,
        "flag ledger (100 newest changes)",
        queries,
        |c, i| {
            let (p, e, f) = flag_of(pick(i));
            query::flag_ledger(c, &p, &e, &f)
        },
    );
    time(
        &store,
        "pipeline trends (2,000 newest runs)",
        queries / 4,
        |c, i| query::pipeline(c, &format!("pipe-{}", i % PIPELINES)),
    );
    let settings = AuditSettings::default();
    time(&store, "overview (last 24 h)", queries / 4, |c, _| {
        let now = Utc::now();
        query::overview(c, now - chrono::Duration::hours(24), now, &settings)
    });
    time(&store, "audit findings", 5, |c, _| {
        audit::findings(c, Utc::now(), &settings)
    });
    time(
        &store,
        "changes_since (live, 100 after a seq)",
        queries,
        |c, i| query::changes_since(c, (pick(i) * STEPS) as i64, 100),
    );
    println!("done, load {}", loadavg());
    delete_topics(&servers, &refs, kept_topics.is_some()).await;
}

/// Deletes the bench's topics, unless `kept` (named by `BENCH_VIEW_TOPICS`).
async fn delete_topics(servers: &str, topics: &[&str], kept: bool) {
    if kept {
        return;
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .expect("admin");
    let _ = admin.delete_topics(topics, &AdminOptions::new()).await;
}

/// Times `n` requests of `path(i)` to the view on `port`, whole (status, body read).
async fn time_http(
    http: &reqwest::Client,
    port: u16,
    name: &str,
    n: usize,
    path: impl Fn(usize) -> String,
) {
    let samples = view::time_gets(http, n, |i| format!("http://127.0.0.1:{port}{}", path(i))).await;
    println!("  {name:<44} {}", percentiles(samples));
}

/// The HTTP endpoints the goals name, on the running view process.
async fn http_timings(port: u16, n: usize, executions: usize) {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    let pick = |i: usize| (i * 7919) % executions;
    let flag = |i: usize| {
        let (p, e, f) = flag_of(pick(i));
        format!("{p}/{e}/{f}")
    };
    let execution = |i: usize| {
        let e = pick(i);
        chaosgate::contract::ids::pipeline_execution_id(
            &format!("bench-{e}"),
            &format!("pipe-{}", e % PIPELINES),
        )
    };
    println!(
        "HTTP on the view process ({n} requests each), load {}",
        loadavg()
    );
    let by_pipeline = |i: usize| format!("pipeline_id=pipe-{}", i % PIPELINES);
    time_http(&http, port, "GET /api/runs?pipeline_id=", n, |i| {
        format!("/api/runs?{}", by_pipeline(i))
    })
    .await;
    time_http(&http, port, "GET /api/runs?flag=", n, |i| {
        format!("/api/runs?flag={}", flag(i))
    })
    .await;
    time_http(&http, port, "GET /runs?pipeline_id= (page)", n, |i| {
        format!("/runs?{}", by_pipeline(i))
    })
    .await;
    time_http(&http, port, "GET /runs?flag= (page)", n, |i| {
        format!("/runs?flag={}", flag(i))
    })
    .await;
    time_http(&http, port, "GET /runs (page, no filter)", n / 10, |_| {
        "/runs".to_string()
    })
    .await;
    time_http(&http, port, "GET /executions/{id} (page)", n, |i| {
        format!("/executions/{}", execution(i))
    })
    .await;
    time_http(&http, port, "GET /api/executions/{id}", n, |i| {
        format!("/api/executions/{}", execution(i))
    })
    .await;
    time_http(&http, port, "GET /flags/{p}/{e}/{f} (page)", n, |i| {
        format!("/flags/{}", flag(i))
    })
    .await;
    time_http(&http, port, "GET /api/flags/{p}/{e}/{f}", n, |i| {
        format!("/api/flags/{}", flag(i))
    })
    .await;
}
