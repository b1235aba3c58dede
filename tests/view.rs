//! The chaos experiments view's data side on the real Kafka broker: records written by the
//! real worker (and crafted ones, published with a plain producer) read into SQLite, joined,
//! audited and kept exact across a killed `chaosgate view`.

#[path = "support/kafka.rs"]
mod kafka;
#[path = "support/view.rs"]
mod view;
#[path = "support/worker.rs"]
mod worker;

use std::process::Stdio;
use std::time::Duration;

use chrono::Utc;

use chaosgate::contract::{ChangeKind, KafkaMessage, RunStatus, ids};
use chaosgate::view::audit::{self, AuditSettings};
use chaosgate::view::model::{ExecutionStatus, FindingKind, RunFilter};
use chaosgate::view::store::ViewError;
use chaosgate::view::{Location, query, retention};

use worker::{Harness, Listener, Settings, change, closed_address, experiment_yaml, pipeline_yaml};

/// Upper bound for anything a test waits for: generous, so only a bug reaches it.
const PATIENCE: Duration = Duration::from_secs(90);

fn topics(h: &Harness) -> [&str; 5] {
    [
        &h.topics.runs,
        &h.topics.commands,
        &h.topics.flag_changes,
        &h.topics.dead_letter,
        &h.topics.control,
    ]
}

fn check(config: &std::path::Path, pipeline: &str) -> (i32, String) {
    let out = view::chaosgate_command()
        .args([
            "view",
            "check",
            "--pipeline",
            pipeline,
            "--since",
            "1h",
            "--config",
        ])
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .expect("run chaosgate view check");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_records_appear_joined_and_view_check_answers() {
    let servers = kafka::require_broker();
    let h = Harness::new(&servers, "view-e2e", 2).await;
    let up = Listener::start().await;
    let down = closed_address();
    h.catalog_file(
        "exp-up.yaml",
        &experiment_yaml("listener-up", "1s", &h.marker("up"), &up.address),
    );
    h.catalog_file(
        "exp-down.yaml",
        &experiment_yaml("listener-down", "1s", &h.marker("down"), &down),
    );
    h.catalog_file(
        "pipe-up.yaml",
        &pipeline_yaml("view-up", Some("up-*"), &["listener-up"]),
    );
    h.catalog_file(
        "pipe-down.yaml",
        &pipeline_yaml(
            "view-down",
            Some("down-*"),
            &["listener-up", "listener-down"],
        ),
    );
    let config = h.config("w", &Settings::default());
    let _worker = h.spawn("w", &config);
    let passing = change("up-search", ChangeKind::Enable, None);
    let failing = change("down-checkout", ChangeKind::Enable, None);
    h.produce_change(&passing).await;
    h.produce_change(&failing).await;

    let kafka = view::kafka_config(&servers, topics(&h));
    let (store, ingest) = view::start(&kafka, &Location::Memory);
    let failing_execution = ids::pipeline_execution_id(&failing.event_id, "view-down");
    let passing_execution = ids::pipeline_execution_id(&passing.event_id, "view-up");
    let detail = {
        let execution = failing_execution.clone();
        view::wait_for(
            &store,
            "the failing execution with its command",
            PATIENCE,
            move |c| Ok(query::execution(c, &execution)?.filter(|d| d.command.is_some())),
        )
        .await
    };
    // Trigger: the flag-change, with actor and from -> to.
    let trigger = detail.trigger.as_ref().expect("trigger change");
    assert_eq!(trigger.event_id, failing.event_id);
    assert_eq!(trigger.actor.as_deref(), Some("tester@example.com"));
    assert_eq!(trigger.kind, "enable");
    assert_eq!(trigger.from, Some(serde_json::Value::Bool(false)));
    assert_eq!(trigger.to, Some(serde_json::Value::Bool(true)));
    // Stages -> steps in order -> runs, each final.
    assert_eq!(detail.execution.status, ExecutionStatus::Failed);
    assert_eq!(detail.stages.len(), 1, "{:#?}", detail.stages);
    let steps: Vec<&str> = detail.stages[0]
        .steps
        .iter()
        .map(|s| s.step_id.as_str())
        .collect();
    assert_eq!(steps, ["listener-up", "listener-down"]);
    let statuses: Vec<RunStatus> = detail.stages[0]
        .steps
        .iter()
        .map(|s| s.runs.last().expect("a run").status)
        .collect();
    assert_eq!(statuses, [RunStatus::Passed, RunStatus::Failed]);
    // The command names exactly those runs.
    let command = detail.command.as_ref().expect("command");
    assert_eq!(command.command, "disable");
    assert_eq!(command.reason_code, "failed");
    assert!(
        command.reason.contains("listener-down"),
        "{}",
        command.reason
    );
    let run_ids: Vec<&str> = detail.stages[0]
        .steps
        .iter()
        .map(|s| s.runs.last().expect("run").run_id.as_str())
        .collect();
    let command_runs: Vec<&str> = command.steps.iter().map(|s| s.run_id.as_str()).collect();
    assert_eq!(run_ids, command_runs);

    // The run in full: the record's new v1 fields are written by the worker.
    let failed_run = run_ids[1].to_string();
    let run = store
        .read(move |c| query::run(c, &failed_run))
        .await
        .expect("run")
        .expect("run detail");
    assert_eq!(
        run.record.trigger_actor.as_deref(),
        Some("tester@example.com")
    );
    assert_eq!(run.record.trigger_change_kind, Some(ChangeKind::Enable));
    let probe = &run.record.probes[0];
    let (first, last) = (
        probe.first_check_at.expect("first check time"),
        probe.last_check_at.expect("last check time"),
    );
    assert!(first <= last, "{first} <= {last}");
    assert!(
        run.headers.iter().any(|(n, _)| n == "ce_type"),
        "{:?}",
        run.headers
    );
    assert_eq!(run.run.position.topic, h.topics.runs);
    assert!(run.run.score.is_some() && run.run.margin.is_some());

    // The passing execution too, and the flag ledger of each flag.
    let passing_detail = {
        let execution = passing_execution.clone();
        view::wait_for(&store, "the passing execution", PATIENCE, move |c| {
            Ok(query::execution(c, &execution)?.filter(|d| d.command.is_some()))
        })
        .await
    };
    assert_eq!(passing_detail.execution.status, ExecutionStatus::Passed);
    let ledger = store
        .read(|c| query::flag_ledger(c, "test", "test", "down-checkout"))
        .await
        .expect("ledger");
    assert_eq!(ledger.entries.len(), 1, "{ledger:#?}");
    let entry = &ledger.entries[0];
    assert_eq!(entry.event_id, failing.event_id);
    assert!(entry.change.is_some());
    assert_eq!(entry.runs.len(), 2);
    assert_eq!(
        entry.command.as_ref().map(|c| c.command.as_str()),
        Some("disable")
    );

    // The run list, filtered by pipeline and by flag glob, with counts.
    let filter = RunFilter {
        flag: Some("test/test/down-*".into()),
        ..Default::default()
    };
    let (page, counts) = store
        .read(move |c| Ok((query::runs(c, &filter)?, query::status_counts(c, &filter)?)))
        .await
        .expect("runs");
    assert_eq!(page.items.len(), 2);
    assert!(page.items.iter().all(|r| r.pipeline_id == "view-down"));
    assert_eq!((counts.passed, counts.failed, counts.total), (1, 1, 2));
    let filter = RunFilter {
        pipeline_id: Some("view-up".into()),
        ..Default::default()
    };
    let page = store
        .read(move |c| query::runs(c, &filter))
        .await
        .expect("runs");
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].pipeline_execution_id, passing_execution);
    // Caught up is set right after the transaction that reaches the start watermarks
    // commits, so a reader may see its rows a moment before: wait for it (bound: hangs).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !ingest.status().caught_up() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ingest.status().caught_up());
    assert_eq!(ingest.status().problems(), 0);
    ingest.stop().await.expect("stop ingest");

    // `view check`: 0 passed, 1 failed, 2 none.
    let (code, out) = check(&config, "view-up");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&passing_execution), "{out}");
    let (code, out) = check(&config, "view-down");
    assert_eq!(code, 1, "{out}");
    let (code, out) = check(&config, "no-such-pipeline");
    assert_eq!(code, 2, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_running_record_is_ignored_and_bad_records_are_listed_and_skipped() {
    let servers = kafka::require_broker();
    let h = Harness::new(&servers, "view-late", 1).await;
    let producer = view::producer(&servers);
    let event_id = uuid::Uuid::new_v4().to_string();
    let now = Utc::now();
    let running = view::run_record(&event_id, "late", "s1", 1, RunStatus::Running, now);
    let passed = view::run_record(&event_id, "late", "s1", 1, RunStatus::Passed, now);
    view::send(&producer, &h.topics.runs, &view::run_message(&passed));
    view::send(&producer, &h.topics.runs, &view::run_message(&running));
    // Bad bytes, an unknown specversion, an unknown schema version.
    let garbage = KafkaMessage {
        value: Some(vec![0xde, 0xad, 0xbe, 0xef]),
        ..view::run_message(&passed)
    };
    view::send(&producer, &h.topics.runs, &garbage);
    let mut old_spec = view::run_message(&passed);
    for (name, value) in &mut old_spec.headers {
        if name == "ce_specversion" {
            *value = b"0.3".to_vec();
        }
    }
    view::send(&producer, &h.topics.runs, &old_spec);
    let mut v2 = view::run_message(&passed);
    for (name, value) in &mut v2.headers {
        if name == "ce_type" {
            *value = b"dev.chaosgate.experiment.run.v2".to_vec();
        }
    }
    view::send(&producer, &h.topics.runs, &v2);
    let after = view::run_record(&event_id, "late", "s2", 1, RunStatus::Failed, now);
    view::send(&producer, &h.topics.runs, &view::run_message(&after));
    view::flush(&producer);

    let kafka = view::kafka_config(&servers, topics(&h));
    let (store, ingest) = view::start(&kafka, &Location::Memory);
    let after_id = after.run_id.clone();
    view::wait_for(
        &store,
        "the record after the bad ones",
        PATIENCE,
        move |c| query::run(c, &after_id),
    )
    .await;
    let run_id = passed.run_id.clone();
    let row = store
        .read(move |c| query::run(c, &run_id))
        .await
        .expect("run")
        .expect("the run");
    assert_eq!(
        row.run.status,
        RunStatus::Passed,
        "a late running overwrote the final"
    );
    assert_eq!(row.run.position.offset, 0);
    let problems = store
        .read(|c| query::problems(c, None))
        .await
        .expect("problems");
    let mut listed: Vec<(i64, String)> = problems
        .items
        .iter()
        .map(|p| (p.position.offset, p.reason.clone()))
        .collect();
    listed.sort();
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert_eq!(
        listed.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        [2, 3, 4]
    );
    assert!(listed[0].1.contains("not valid JSON"), "{listed:?}");
    assert!(listed[1].1.contains("specversion '0.3'"), "{listed:?}");
    assert!(listed[2].1.contains("run.v2"), "{listed:?}");
    assert!(
        problems
            .items
            .iter()
            .all(|p| p.position.topic == h.topics.runs)
    );
    assert_eq!(ingest.status().problems(), 3);
    assert_eq!(ingest.status().records(), 6);
    ingest.stop().await.expect("stop");
}

/// Publishes an execution that adds up: the flag-change at `at`, one passed run with its
/// faults reverted, and the command naming it a minute later.
fn publish_clean_execution(
    producer: &rdkafka::producer::BaseProducer,
    h: &Harness,
    event: &str,
    pipeline: &str,
    at: chrono::DateTime<Utc>,
) {
    let run = view::run_record(event, pipeline, "s", 1, RunStatus::Passed, at);
    let change = view::change_message(&view::change(event, at));
    view::send(producer, &h.topics.flag_changes, &change);
    view::send(producer, &h.topics.runs, &view::run_message(&run));
    let command = view::command(event, pipeline, &[&run], at + chrono::Duration::minutes(1));
    view::send(
        producer,
        &h.topics.commands,
        &view::command_message(&command),
    );
}

fn count(c: &rusqlite::Connection, sql: &str) -> Result<i64, ViewError> {
    c.query_row(sql, [], |r| r.get(0))
        .map_err(|source| ViewError::Sqlite {
            what: sql.into(),
            source,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_view_resumes_with_no_record_applied_twice_and_none_missed() {
    let servers = kafka::require_broker();
    let h = Harness::new(&servers, "view-kill", 3).await;
    const RECORDS: usize = 60_000;
    let producer = view::producer(&servers);
    let started = Utc::now();
    let event = uuid::Uuid::new_v4().to_string();
    for i in 0..RECORDS {
        let record = view::run_record(
            &format!("{event}-{i}"),
            "kill",
            "s",
            1,
            RunStatus::Passed,
            started,
        );
        view::send(&producer, &h.topics.runs, &view::run_message(&record));
    }
    view::flush(&producer);
    let mut config =
        std::fs::read_to_string(h.config("view", &Settings::default())).expect("config");
    config.push_str("\n[view]\nlisten = \"127.0.0.1:0\"\n");
    let config_path = h.dir.path().join("view.toml");
    std::fs::write(&config_path, config).expect("write config");
    let db = h.dir.path().join("view.db");
    let log = h.dir.path().join("view.log");
    let spawn = || view::spawn_view(&config_path, &db, &log, &[]);
    let applied = || view::applied_offsets(&db);
    let mut first = spawn();
    let deadline = std::time::Instant::now() + PATIENCE;
    // Kill it mid-ingest: some batches committed, not all.
    loop {
        let n = applied();
        if n > 0 {
            assert!(
                (n as usize) < RECORDS,
                "ingest finished before it could be killed; {n} applied"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no batch committed");
        std::thread::sleep(Duration::from_millis(5));
    }
    first.kill().expect("SIGKILL the view");
    first.wait().expect("reap");
    let at_kill = applied();
    assert!((at_kill as usize) < RECORDS, "{at_kill}");
    let mut second = spawn();
    let deadline = std::time::Instant::now() + PATIENCE;
    while (applied() as usize) < RECORDS {
        assert!(
            std::time::Instant::now() < deadline,
            "restart did not finish: {} of {RECORDS}; log:\n{}",
            applied(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    second.kill().expect("stop");
    second.wait().expect("reap");
    let store = chaosgate::view::Store::open(&Location::File(db.clone())).expect("open");
    let (rows, seq, executions) = store
        .read(|c| {
            Ok((
                count(c, "SELECT count(*) FROM runs")?,
                count(c, "SELECT value FROM meta WHERE key = 'seq'")?,
                count(c, "SELECT count(*) FROM executions")?,
            ))
        })
        .await
        .expect("counts");
    // Every record applied exactly once: one row each, and one sequence number each
    // (a record applied twice would have taken a second number).
    assert_eq!(rows as usize, RECORDS);
    assert_eq!(seq as usize, RECORDS, "records applied more than once");
    assert_eq!(executions as usize, RECORDS);
    eprintln!("killed at {at_kill} of {RECORDS} applied");
    drop(store);

    // `--rebuild` drops the file and reads everything again from the earliest offsets:
    // a marker written into the old file is gone, and every record is applied once.
    rusqlite::Connection::open(&db)
        .and_then(|c| c.execute("INSERT INTO meta (key, value) VALUES ('marker', 1)", []))
        .expect("mark the old file");
    let mut rebuilt = view::spawn_view(&config_path, &db, &log, &["--rebuild"]);
    let marked = || -> Option<i64> {
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| {
                c.query_row("SELECT count(*) FROM meta WHERE key = 'marker'", [], |r| {
                    r.get(0)
                })
            })
            .ok()
    };
    let deadline = std::time::Instant::now() + PATIENCE;
    while marked() != Some(0) || (applied() as usize) < RECORDS {
        assert!(
            std::time::Instant::now() < deadline,
            "the rebuild did not finish"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    rebuilt.kill().expect("stop");
    rebuilt.wait().expect("reap");
    let store = chaosgate::view::Store::open(&Location::File(db.clone())).expect("open");
    let (rows, seq) = store
        .read(|c| {
            Ok((
                count(c, "SELECT count(*) FROM runs")?,
                count(c, "SELECT value FROM meta WHERE key = 'seq'")?,
            ))
        })
        .await
        .expect("counts");
    assert_eq!((rows as usize, seq as usize), (RECORDS, RECORDS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_old_executions_and_keeps_recent_ones() {
    let servers = kafka::require_broker();
    let h = Harness::new(&servers, "view-retention", 1).await;
    let producer = view::producer(&servers);
    let now = Utc::now();
    let old_at = now - chrono::Duration::days(40);
    let (old_event, new_event) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    for (event, at) in [(&old_event, old_at), (&new_event, now)] {
        publish_clean_execution(&producer, &h, event, "keep", at);
    }
    view::flush(&producer);
    let kafka = view::kafka_config(&servers, topics(&h));
    let (store, ingest) = view::start(&kafka, &Location::Memory);
    assert!(ingest.status().wait_caught_up(PATIENCE).await, "caught up");
    let (old_execution, new_execution) = (
        ids::pipeline_execution_id(&old_event, "keep"),
        ids::pipeline_execution_id(&new_event, "keep"),
    );
    let before = {
        let old = old_execution.clone();
        store
            .read(move |c| query::execution(c, &old))
            .await
            .expect("read")
    };
    assert!(before.is_some_and(|d| d.command.is_some() && d.trigger.is_some()));
    // The background task, with the configured 30 days.
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(retention::run(
        store.clone(),
        Duration::from_secs(30 * 24 * 3600),
        Duration::from_secs(3600),
        stop.clone(),
    ));
    let old = old_execution.clone();
    view::wait_for(&store, "the old execution removed", PATIENCE, move |c| {
        Ok(query::execution(c, &old)?.is_none().then_some(()))
    })
    .await;
    stop.cancel();
    task.await.expect("retention task");
    let (kept, runs, commands, changes) = store
        .read(move |c| {
            Ok((
                query::execution(c, &new_execution)?,
                count(c, "SELECT count(*) FROM runs")?,
                count(c, "SELECT count(*) FROM commands")?,
                count(c, "SELECT count(*) FROM changes")?,
            ))
        })
        .await
        .expect("read");
    let kept = kept.expect("the recent execution stays");
    assert!(kept.command.is_some() && kept.trigger.is_some());
    assert_eq!((runs, commands, changes), (1, 1, 1));
    ingest.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_finds_each_problem_and_nothing_on_a_clean_batch() {
    let servers = kafka::require_broker();
    let h = Harness::new(&servers, "view-audit", 2).await;
    let producer = view::producer(&servers);
    let now = Utc::now();
    let an_hour_ago = now - chrono::Duration::minutes(61);
    // A clean execution: change, final run with faults reverted, command naming it.
    let clean = uuid::Uuid::new_v4().to_string();
    publish_clean_execution(&producer, &h, &clean, "audit", an_hour_ago);
    view::flush(&producer);
    let kafka = view::kafka_config(&servers, topics(&h));
    let (store, ingest) = view::start(&kafka, &Location::Memory);
    assert!(ingest.status().wait_caught_up(PATIENCE).await);
    let settings = AuditSettings {
        command_delay: Duration::from_secs(300),
        default_running_timeout: Duration::from_secs(3600),
        ..Default::default()
    };
    let s = settings.clone();
    let clean_findings = store
        .read(move |c| audit::findings(c, Utc::now(), &s))
        .await
        .expect("audit");
    assert!(clean_findings.is_empty(), "{clean_findings:#?}");

    // 1. Running past its step's timeout (1 h), no final record.
    let stuck_event = uuid::Uuid::new_v4().to_string();
    let stuck = view::run_record(
        &stuck_event,
        "audit",
        "s",
        1,
        RunStatus::Running,
        an_hour_ago,
    );
    view::send(&producer, &h.topics.runs, &view::run_message(&stuck));
    // 2. A command naming a run with no record.
    let missing_event = uuid::Uuid::new_v4().to_string();
    let ghost = view::run_record(
        &missing_event,
        "audit",
        "s",
        1,
        RunStatus::Passed,
        an_hour_ago,
    );
    let ghost_command = view::command(&missing_event, "audit", &[&ghost], an_hour_ago);
    view::send(
        &producer,
        &h.topics.commands,
        &view::command_message(&ghost_command),
    );
    // 3. A final record with a fault injected and not reverted.
    let leak_event = uuid::Uuid::new_v4().to_string();
    let mut leak = view::run_record(&leak_event, "audit", "s", 1, RunStatus::Failed, an_hour_ago);
    leak.faults[0].reverted = false;
    view::send(&producer, &h.topics.runs, &view::run_message(&leak));
    // 4. A flag-change with no command after the delay.
    let silent_event = uuid::Uuid::new_v4().to_string();
    view::send(
        &producer,
        &h.topics.flag_changes,
        &view::change_message(&view::change(
            &silent_event,
            now - chrono::Duration::minutes(10),
        )),
    );
    view::flush(&producer);
    let (leak_id, silent) = (leak.run_id.clone(), silent_event.clone());
    view::wait_for(&store, "the crafted records", PATIENCE, move |c| {
        let leak = query::run(c, &leak_id)?.is_some();
        let silent = count(
            c,
            &format!("SELECT count(*) FROM changes WHERE event_id = '{silent}'"),
        )? == 1;
        let command = count(c, "SELECT count(*) FROM commands")? == 2;
        Ok((leak && silent && command).then_some(()))
    })
    .await;
    let s = settings.clone();
    let findings = store
        .read(move |c| audit::findings(c, Utc::now(), &s))
        .await
        .expect("audit");
    let kinds: Vec<FindingKind> = findings.iter().map(|f| f.kind).collect();
    assert_eq!(kinds, FindingKind::ALL, "{findings:#?}");
    assert_eq!(findings[0].run_id.as_deref(), Some(stuck.run_id.as_str()));
    assert_eq!(findings[1].run_id.as_deref(), Some(ghost.run_id.as_str()));
    assert_eq!(
        findings[1].command_id.as_deref(),
        Some(ghost_command.command_id.as_str())
    );
    assert_eq!(findings[2].run_id.as_deref(), Some(leak.run_id.as_str()));
    assert_eq!(findings[3].event_id.as_deref(), Some(silent_event.as_str()));
    assert!(findings.iter().all(|f| !f.message.is_empty()));
    // The catalog's own timeout counts: with a 2 h timeout for the step, the stuck run
    // is not yet a finding.
    let mut longer = settings.clone();
    longer.step_timeouts.insert(
        ("audit".into(), "canary".into(), "s".into()),
        Duration::from_secs(7200),
    );
    let findings = store
        .read(move |c| audit::findings(c, Utc::now(), &longer))
        .await
        .expect("audit");
    assert!(
        !findings
            .iter()
            .any(|f| f.kind == FindingKind::RunningPastTimeout)
    );
    ingest.stop().await.expect("stop");
}
