//! The gate worker end to end on the real Kafka broker: the real `chaosgate run` process,
//! flag changes produced with a plain Kafka client, outputs read with a `read_committed`
//! consumer. Experiments use `command` faults that create a marker file while active, and
//! `tcp` probes against listeners the tests start.

#[path = "support/kafka.rs"]
mod kafka;
#[path = "support/worker.rs"]
mod worker;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chaosgate::contract::{ChangeKind, CommandKind, ReasonCode, RunStatus, ids};

use kafka::OwnBroker;
use worker::{Harness, Listener, Settings, change, closed_address, experiment_yaml, pipeline_yaml};

/// Upper bound for anything a test waits for: generous, so only a bug reaches it.
const PATIENCE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gated_passing_failing_requested_and_unrouted_changes_get_one_command_each() {
    let servers = kafka::require_broker();
    let h = Harness::new(&servers, "e2e", 3).await;
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
        &pipeline_yaml("gate-up", Some("up-*"), &["listener-up"]),
    );
    // `gate-down` may also be named by events its routes do not take.
    h.catalog_file(
        "pipe-down.yaml",
        &format!(
            "{}allow_explicit: true\n",
            pipeline_yaml("gate-down", Some("down-*"), &["listener-down"])
        ),
    );
    let collector = h.collect();
    let config = h.config("w", &Settings::default());
    let _worker = h.spawn("w", &config);

    let passing = change("up-search", ChangeKind::Enable, None);
    let failing = change("down-checkout", ChangeKind::Enable, None);
    let explicit = change("up-explicit", ChangeKind::Update, Some("gate-down"));
    let requested = change("up-cart", ChangeKind::Disable, None);
    let unrouted = change("elsewhere", ChangeKind::Enable, None);
    let events = [&passing, &failing, &explicit, &requested, &unrouted];
    for event in events {
        h.produce_change(event).await;
    }
    let ids: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
    h.wait_for(&collector, "a command for each event", PATIENCE, |o| {
        o.all_commanded(&ids)
    })
    .await;
    // Anything doubled would show up shortly after.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = collector.snapshot();
    assert!(out.garbage.is_empty(), "{:?}", out.garbage);
    for event in events {
        assert_eq!(
            out.commands_for(&event.event_id).len(),
            1,
            "one command for {}: {}",
            event.flag,
            out.describe()
        );
    }

    // Passing: a running record, then a passed one, and `enable`.
    let execution = ids::pipeline_execution_id(&passing.event_id, "gate-up");
    let runs = out.runs_for(&passing.event_id);
    let statuses: Vec<RunStatus> = runs.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [RunStatus::Running, RunStatus::Passed],
        "{}",
        out.describe()
    );
    for run in &runs {
        assert_eq!(run.pipeline_id, "gate-up");
        assert_eq!(run.pipeline_execution_id, execution);
        assert_eq!(run.trigger_event_id, passing.event_id);
        assert_eq!(run.attempt, 1);
        assert_eq!(
            run.run_id, runs[0].run_id,
            "running and final share the run id"
        );
        assert_eq!(run.step.id, "listener-up");
        assert_eq!(run.stage.id, "chaos");
        assert_eq!(run.flag.key, "up-search");
    }
    assert_eq!(runs[1].resilience_score, Some(100.0));
    assert!(
        runs[1].faults.iter().all(|f| f.reverted),
        "{:?}",
        runs[1].faults
    );
    let command = out.commands_for(&passing.event_id)[0];
    assert_eq!(command.command, CommandKind::Enable);
    assert_eq!(command.reason_code, ReasonCode::Passed);
    assert_eq!(command.pipeline_id.as_deref(), Some("gate-up"));
    assert_eq!(
        command.pipeline_execution_id.as_deref(),
        Some(execution.as_str())
    );
    assert_eq!(command.command_id, ids::command_id(&passing.event_id));
    assert_eq!(command.steps.len(), 1);
    assert!(!command.dry_run);

    // Failing, routed and explicit: `failed` records and `disable` with a readable reason.
    for (event, pipeline) in [(&failing, "gate-down"), (&explicit, "gate-down")] {
        let runs = out.final_runs_for(&event.event_id);
        assert_eq!(runs.len(), 1, "{}", out.describe());
        assert_eq!(runs[0].status, RunStatus::Failed);
        assert_eq!(runs[0].pipeline_id, pipeline);
        assert_eq!(
            runs[0].pipeline_execution_id,
            ids::pipeline_execution_id(&event.event_id, pipeline)
        );
        assert_eq!(runs[0].resilience_score, Some(0.0));
        assert_eq!(runs[0].summary.as_deref(), Some("score 0 < expected 80"));
        let command = out.commands_for(&event.event_id)[0];
        assert_eq!(command.command, CommandKind::Disable);
        assert_eq!(command.reason_code, ReasonCode::Failed);
        assert_eq!(
            command.reason,
            "stage chaos / step listener-down: score 0 < expected 80"
        );
        assert_eq!(command.pipeline_id.as_deref(), Some(pipeline));
    }

    // A disable request and an unrouted flag are answered at once, without runs.
    let command = out.commands_for(&requested.event_id)[0];
    assert_eq!(command.command, CommandKind::Disable);
    assert_eq!(command.reason_code, ReasonCode::Requested);
    assert!(out.runs_for(&requested.event_id).is_empty());
    let command = out.commands_for(&unrouted.event_id)[0];
    assert_eq!(command.command, CommandKind::Enable);
    assert_eq!(command.reason_code, ReasonCode::NoPipeline);
    assert_eq!(command.pipeline_id, None);
    assert!(out.runs_for(&unrouted.event_id).is_empty());

    // Commands are keyed by flag, run records by run id.
    assert!(out.dead_letters.is_empty());
    assert_eq!(
        h.active_markers(),
        Vec::<String>::new(),
        "faults left active"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_strategies_step_timeout_revert_and_dry_run_decide_the_command() {
    let servers = kafka::require_broker();
    let h = Harness::new(&servers, "strategies", 1).await;
    let up = Listener::start().await;
    let down = closed_address();
    h.catalog_file(
        "exp-up.yaml",
        &experiment_yaml("up", "300ms", &h.marker("up"), &up.address),
    );
    h.catalog_file(
        "exp-down.yaml",
        &experiment_yaml("down", "300ms", &h.marker("down"), &down),
    );
    h.catalog_file(
        "exp-slow.yaml",
        &experiment_yaml("slow", "30s", &h.marker("slow"), &up.address),
    );
    h.catalog_file(
        "pipe-strategies.yaml",
        r#"kind: pipeline
id: strategies
routes:
  - environment: test
    flag: "strat-*"
on_failure: revert
stages:
  - id: advisory
    type: custom
    steps:
      - id: ignored
        experiment: down
        expected_resilience_score: 80
        failure_strategy:
          action: ignore
      - id: too-slow
        experiment: slow
        expected_resilience_score: 80
        timeout: 1s
        failure_strategy:
          action: mark_as_success
  - id: canary
    type: feature_flag
    steps:
      - id: flaky
        experiment: down
        expected_resilience_score: 80
        failure_strategy:
          action: retry
          count: 1
          backoff: 200ms
          fallback: abort
      - id: never
        experiment: up
        expected_resilience_score: 80
"#,
    );
    h.catalog_file(
        "pipe-dry.yaml",
        r#"kind: pipeline
id: rehearsal
dry_run: true
routes:
  - environment: test
    flag: "dry-*"
stages:
  - id: chaos
    type: feature_flag
    steps:
      - id: down
        experiment: down
        expected_resilience_score: 80
"#,
    );
    let collector = h.collect();
    let _worker = h.spawn("w", &h.config("w", &Settings::default()));
    let gated = change("strat-checkout", ChangeKind::Enable, None);
    let rehearsal = change("dry-search", ChangeKind::Enable, None);
    h.produce_change(&gated).await;
    h.produce_change(&rehearsal).await;
    let ids = [gated.event_id.clone(), rehearsal.event_id.clone()];
    let out = h
        .wait_for(&collector, "both commands", PATIENCE, |o| {
            o.all_commanded(&ids)
        })
        .await;

    let finals: Vec<(&str, u32, RunStatus)> = out
        .final_runs_for(&gated.event_id)
        .iter()
        .map(|r| (r.step.id.as_str(), r.attempt, r.status))
        .collect();
    assert_eq!(
        finals,
        [
            ("ignored", 1, RunStatus::Failed),
            ("too-slow", 1, RunStatus::Aborted),
            ("flaky", 1, RunStatus::Failed),
            ("flaky", 1, RunStatus::Failed),
        ],
        "{}",
        out.describe()
    );
    let runs = out.final_runs_for(&gated.event_id);
    assert_ne!(
        runs[2].run_id, runs[3].run_id,
        "a retry is a run of its own"
    );
    let timed_out = runs[1];
    assert!(
        timed_out
            .summary
            .as_deref()
            .unwrap_or_default()
            .contains("timeout"),
        "{:?}",
        timed_out.summary
    );
    assert!(timed_out.duration_seconds.unwrap_or(99.0) < 10.0);
    assert!(timed_out.faults.iter().all(|f| f.reverted));

    let command = out.commands_for(&gated.event_id)[0];
    assert_eq!(command.command, CommandKind::Revert);
    assert_eq!(command.value, Some(serde_json::Value::Bool(false)));
    assert_eq!(command.reason_code, ReasonCode::Failed);
    assert_eq!(
        command.reason,
        "stage canary / step flaky: score 0 < expected 80"
    );
    let steps: Vec<(&str, &str)> = command
        .steps
        .iter()
        .map(|s| (s.step_id.as_str(), s.summary.as_str()))
        .collect();
    assert_eq!(steps.len(), 3, "{steps:?}");
    assert!(steps[0].1.ends_with("(failure ignored)"), "{steps:?}");
    assert!(steps[1].1.ends_with("(marked as success)"), "{steps:?}");
    assert_eq!(steps[2].0, "flaky");

    let command = out.commands_for(&rehearsal.event_id)[0];
    assert_eq!(command.command, CommandKind::Disable);
    assert!(command.dry_run, "a dry-run pipeline marks its command");
    assert_eq!(h.active_markers(), Vec::<String>::new());
}

/// A named pipeline must route the event's flag (or allow explicit selection), and an
/// unrouted flag gets what `worker.unrouted` says: here `dead_letter`, then `disable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_named_off_its_routes_and_unrouted_flags_fail_closed_as_configured() {
    use chaosgate::contract::dead_letter::{HEADER_ERROR_CLASS, HEADER_ERROR_MESSAGE};

    let servers = kafka::require_broker();
    for unrouted in ["dead_letter", "disable"] {
        let h = Harness::new(&servers, &format!("closed-{unrouted}"), 1).await;
        let up = Listener::start().await;
        h.catalog_file(
            "exp-up.yaml",
            &experiment_yaml("listener-up", "400ms", &h.marker("up"), &up.address),
        );
        h.catalog_file(
            "pipe-up.yaml",
            &pipeline_yaml("gate-up", Some("up-*"), &["listener-up"]),
        );
        let collector = h.collect();
        let settings = Settings {
            unrouted,
            ..Settings::default()
        };
        let _worker = h.spawn("w", &h.config("w", &settings));

        // In order on one partition: a pipeline named off its routes, an unrouted flag, a
        // requested disable of an unrouted flag, and the routed pipeline named.
        let off_route = change("elsewhere-a", ChangeKind::Enable, Some("gate-up"));
        let stray = change("elsewhere-b", ChangeKind::Enable, None);
        let requested = change("elsewhere-c", ChangeKind::Disable, None);
        let named = change("up-named", ChangeKind::Enable, Some("gate-up"));
        for event in [&off_route, &stray, &requested, &named] {
            h.produce_change(event).await;
        }
        let dead_letters = if unrouted == "dead_letter" { 2 } else { 1 };
        let mut commanded = vec![requested.event_id.clone(), named.event_id.clone()];
        if unrouted == "disable" {
            commanded.push(stray.event_id.clone());
        }
        let out = h
            .wait_for(&collector, "dead letters and commands", PATIENCE, |o| {
                o.dead_letters.len() >= dead_letters && o.all_commanded(&commanded)
            })
            .await;
        assert_eq!(out.dead_letters.len(), dead_letters, "{}", out.describe());
        let header = |n: usize, name: &str| {
            String::from_utf8_lossy(out.dead_letters[n].value.header(name).unwrap_or_default())
                .into_owned()
        };
        assert_eq!(header(0, HEADER_ERROR_CLASS), "pipeline_not_routed");
        assert_eq!(
            header(0, HEADER_ERROR_MESSAGE),
            "data.pipeline_id: pipeline 'gate-up' does not route flag 'test/test/elsewhere-a' \
             and does not allow explicit selection (allow_explicit: false)"
        );
        assert!(out.commands_for(&off_route.event_id).is_empty());
        if unrouted == "dead_letter" {
            assert_eq!(header(1, HEADER_ERROR_CLASS), "unrouted");
            assert!(out.commands_for(&stray.event_id).is_empty());
        } else {
            let command = out.commands_for(&stray.event_id)[0];
            assert_eq!(command.command, CommandKind::Disable);
            assert_eq!(command.reason_code, ReasonCode::NoPipeline);
        }
        let command = out.commands_for(&requested.event_id)[0];
        assert_eq!(command.command, CommandKind::Disable);
        assert_eq!(command.reason_code, ReasonCode::Requested);
        let command = out.commands_for(&named.event_id)[0];
        assert_eq!(command.command, CommandKind::Enable);
        assert_eq!(command.reason_code, ReasonCode::Passed);
        assert_eq!(command.pipeline_id.as_deref(), Some("gate-up"));
        assert_eq!(h.active_markers(), Vec::<String>::new());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_event_is_dead_lettered_with_its_reason_and_the_next_one_is_processed() {
    use chaosgate::contract::KafkaMessage;
    use chaosgate::contract::dead_letter::{
        HEADER_ERROR_CLASS, HEADER_ERROR_MESSAGE, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION,
        HEADER_SOURCE_TOPIC,
    };
    use chaosgate::contract::flag_change::flag_change_event;

    let servers = kafka::require_broker();
    let h = Harness::new(&servers, "dlq", 1).await;
    h.catalog_file(
        "pipe.yaml",
        &pipeline_yaml("gate", Some("gated-*"), &["listener"]),
    );
    h.catalog_file(
        "exp.yaml",
        &experiment_yaml("listener", "400ms", &h.marker("m"), &closed_address()),
    );
    let collector = h.collect();
    let settings = Settings {
        max_message_bytes: 1500,
        ..Settings::default()
    };
    let config = h.config("w", &settings);
    let _worker = h.spawn("w", &config);

    let binary = |c: &chaosgate::contract::FlagChange| {
        flag_change_event(c, "/flag-service/test").to_binary(Some(&c.flag_key()))
    };
    let undecodable = KafkaMessage {
        key: Some(b"test/test/raw".to_vec()),
        value: Some(b"\xff\x00 not a cloud event".to_vec()),
        headers: vec![("origin".into(), b"legacy-service".to_vec())],
    };
    let mut schema = flag_change_event(&change("toggled", ChangeKind::Enable, None), "/flags");
    schema.data["change"]["kind"] = "toggle".into();
    let schema = schema.to_binary(Some("test/test/toggled"));
    let mut version = binary(&change("old", ChangeKind::Enable, None));
    for (name, value) in &mut version.headers {
        if name == "ce_specversion" {
            *value = b"0.3".to_vec();
        }
    }
    let mut future_type = flag_change_event(&change("future", ChangeKind::Enable, None), "/f");
    future_type.event_type = "dev.chaosgate.flag.change.v9".into();
    let future_type = future_type.to_binary(Some("test/test/future"));
    let mut big = change("big", ChangeKind::Enable, None);
    big.actor = Some("x".repeat(3000));
    let oversized = binary(&big);
    let unknown_pipeline = binary(&change(
        "lost",
        ChangeKind::Enable,
        Some("no-such-pipeline"),
    ));

    let bad = [
        ("undecodable", undecodable, "ce_specversion"),
        ("schema_violation", schema, "data.change.kind"),
        ("unknown_version", version, "0.3"),
        (
            "unknown_version",
            future_type,
            "dev.chaosgate.flag.change.v9",
        ),
        ("oversized", oversized, "1500"),
        ("unknown_pipeline", unknown_pipeline, "no-such-pipeline"),
    ];
    let mut produced = Vec::new();
    let mut good = Vec::new();
    for (i, (class, message, mentions)) in bad.iter().enumerate() {
        let (partition, offset) = h.produce(&h.topics.flag_changes, message).await;
        produced.push((*class, message.clone(), *mentions, partition, offset));
        // The next good event on the same partition: one unrouted, one gated.
        let next = if i % 2 == 0 {
            change(&format!("after-{i}"), ChangeKind::Enable, None)
        } else {
            change(&format!("gated-{i}"), ChangeKind::Enable, None)
        };
        h.produce_change(&next).await;
        good.push(next.event_id.clone());
    }
    let out = h
        .wait_for(&collector, "every dead letter and command", PATIENCE, |o| {
            o.dead_letters.len() >= bad.len() && o.all_commanded(&good)
        })
        .await;
    assert_eq!(out.dead_letters.len(), bad.len(), "{}", out.describe());
    for ((class, original, mentions, partition, offset), dead) in
        produced.iter().zip(&out.dead_letters)
    {
        let dead = &dead.value;
        let header = |name: &str| {
            String::from_utf8_lossy(dead.header(name).unwrap_or_default()).into_owned()
        };
        assert_eq!(header(HEADER_ERROR_CLASS), *class);
        let message = header(HEADER_ERROR_MESSAGE);
        assert!(
            message.contains(mentions),
            "{class}: '{message}' should mention {mentions}"
        );
        assert_eq!(header(HEADER_SOURCE_TOPIC), h.topics.flag_changes);
        assert_eq!(header(HEADER_SOURCE_PARTITION), partition.to_string());
        assert_eq!(header(HEADER_SOURCE_OFFSET), offset.to_string());
        assert_eq!(dead.key, original.key, "{class}: key kept");
        assert_eq!(
            dead.value, original.value,
            "{class}: value kept byte for byte"
        );
        assert_eq!(
            dead.headers[..original.headers.len()],
            original.headers[..],
            "{class}: original headers kept first"
        );
    }
    for event in &good {
        assert_eq!(out.commands_for(event).len(), 1, "{}", out.describe());
    }

    // The offset moved on past all of it, in the same transactions.
    let (_, last) = produced.last().map(|p| (p.3, p.4)).unwrap_or_default();
    let committed = committed_offset(&servers, &h.group, &h.topics.flag_changes, 0).await;
    assert_eq!(committed, last + 2, "the group's committed offset");
}

/// The group's committed offset of one partition, read without joining the group.
async fn committed_offset(servers: &str, group: &str, topic: &str, partition: i32) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let committed = tokio::task::block_in_place(|| {
            consumer.committed_offsets(list.clone(), Duration::from_secs(10))
        })
        .expect("committed offsets");
        let offset = committed
            .find_partition(topic, partition)
            .map(|e| e.offset());
        match offset {
            Some(Offset::Offset(offset)) => return offset,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            other => panic!("no committed offset for {topic}/{partition}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_flag_keeps_its_order_while_flags_run_side_by_side_up_to_the_limit() {
    let servers = kafka::require_broker();
    let h = Harness::new(&servers, "order", 3).await;
    let up = Listener::start().await;
    let flags = ["alpha", "bravo", "charlie", "delta", "echo"];
    for flag in flags {
        for (length, duration) in [("long", "1200ms"), ("short", "100ms")] {
            let experiment = format!("{flag}-{length}");
            h.catalog_file(
                &format!("exp-{experiment}.yaml"),
                &experiment_yaml(&experiment, duration, &h.marker(&experiment), &up.address),
            );
            h.catalog_file(
                &format!("pipe-{experiment}.yaml"),
                &pipeline_yaml(&format!("gate-{experiment}"), None, &[&experiment]),
            );
        }
    }
    let collector = h.collect();
    let config = h.config("w", &Settings::default());
    let _worker = h.spawn("w", &config);

    // Per flag: long, short, long, disable, short, long. Produced round-robin.
    let mut sequences: HashMap<&str, Vec<String>> = HashMap::new();
    let mut all = Vec::new();
    for round in 0..6 {
        for flag in flags {
            let event = match round {
                3 => change(flag, ChangeKind::Disable, None),
                0 | 2 | 5 => change(flag, ChangeKind::Enable, Some(&format!("gate-{flag}-long"))),
                _ => change(
                    flag,
                    ChangeKind::Update,
                    Some(&format!("gate-{flag}-short")),
                ),
            };
            h.produce_change(&event).await;
            sequences
                .entry(flag)
                .or_default()
                .push(event.event_id.clone());
            all.push(event.event_id);
        }
    }
    h.wait_for(&collector, "a command for each event", PATIENCE, |o| {
        o.all_commanded(&all)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = collector.snapshot();
    assert_eq!(out.commands.len(), all.len(), "{}", out.describe());

    let mut busy: Vec<(
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
        &str,
    )> = Vec::new();
    for flag in flags {
        // Commands of one flag share a key, hence a partition: their offsets give the
        // order they were committed in.
        assert_eq!(
            commands_in_order(&out, flag),
            sequences[flag].iter().collect::<Vec<_>>(),
            "commands of {flag} out of order"
        );
        // Runs of one flag never overlap, and follow the produced order.
        let mut last_end = None;
        for event in &sequences[flag] {
            for run in out.final_runs_for(event) {
                assert_eq!(run.status, RunStatus::Passed, "{}", out.describe());
                let ended = run.ended_at.expect("ended_at");
                if let Some(previous) = last_end {
                    assert!(
                        run.started_at >= previous,
                        "a run of {flag} started before the previous one ended"
                    );
                }
                last_end = Some(ended);
                busy.push((run.started_at, ended, flag));
            }
        }
    }
    // Concurrency across flags, from the records' timestamps: at most max_in_flight (4)
    // flags at once, and clearly more than one.
    let mut edges: Vec<(chrono::DateTime<chrono::Utc>, i32)> = Vec::new();
    for (start, end, _) in &busy {
        edges.push((*start, 1));
        edges.push((*end, -1));
    }
    edges.sort();
    let (mut now, mut peak) = (0, 0);
    for (_, delta) in edges {
        now += delta;
        peak = peak.max(now);
    }
    println!("peak concurrent runs: {peak}");
    assert!(
        peak >= 3,
        "runs of different flags should overlap (peak {peak})"
    );
    assert!(peak <= 4, "more runs at once ({peak}) than max_in_flight 4");
    assert_eq!(h.active_markers(), Vec::<String>::new());
}

/// A catalog gating every flag (pipeline `gate`) with experiment `id` lasting
/// `duration`, whose probe watches the returned listener (keep it alive).
async fn gate_every_flag(h: &Harness, id: &str, duration: &str) -> Listener {
    let up = Listener::start().await;
    h.catalog_file(
        &format!("{id}.yaml"),
        &experiment_yaml(id, duration, &h.marker(id), &up.address),
    );
    h.catalog_file("pipe.yaml", &pipeline_yaml("gate", Some("*"), &[id]));
    up
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_pauses_consumption_and_resumes_without_losing_order() {
    let servers = kafka::require_broker();
    let h = Harness::new(&servers, "backlog", 1).await;
    let _up = gate_every_flag(&h, "quick", "50ms").await;
    let collector = h.collect();
    // One run at a time: more than 8 waiting events pause the partition.
    let settings = Settings {
        max_in_flight: 1,
        ..Settings::default()
    };
    let worker = h.spawn("w", &h.config("w", &settings));
    let mut sequences: HashMap<String, Vec<String>> = HashMap::new();
    let mut all = Vec::new();
    for i in 0..36 {
        let flag = format!("flag-{}", i % 3);
        let event = change(&flag, ChangeKind::Enable, None);
        h.produce_change(&event).await;
        sequences
            .entry(flag)
            .or_default()
            .push(event.event_id.clone());
        all.push(event.event_id);
    }
    h.wait_for(&collector, "a command for each event", PATIENCE, |o| {
        o.all_commanded(&all)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = collector.snapshot();
    assert_each_event_counted_once(&out, &all);
    for (flag, sequence) in &sequences {
        assert_eq!(
            commands_in_order(&out, flag),
            sequence.iter().collect::<Vec<_>>(),
            "{flag}"
        );
    }
    let log = worker.log_text();
    assert!(
        log.contains("partitions paused"),
        "backpressure never paused:\n{log}"
    );
    assert!(log.contains("partitions resumed"), "never resumed:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_whose_offsets_book_is_full_waits_and_loses_and_doubles_nothing() {
    let servers = kafka::require_broker();
    let h = Harness::new(&servers, "book-full", 1).await;
    let _up = gate_every_flag(&h, "slow", "6s").await;
    // The backlog limit (8 x 64 waiting events) is above what one partition's offsets
    // metadata can record unfinished (472): the book fills first.
    let wide = Settings {
        max_in_flight: 64,
        ..Settings::default()
    };
    let (collector, worker) = (h.collect(), h.spawn("w", &h.config("w", &wide)));
    // One gated change runs for 6 s; behind it, on the same flag, disable requests (no
    // experiment each) wait for the flag, unfinished, past the book's bound.
    let first = change("busy", ChangeKind::Enable, None);
    h.produce_change(&first).await;
    let mut sequence = vec![first.event_id.clone()];
    for _ in 0..chaosgate::bus::offsets::MAX_PENDING + 40 {
        let event = change("busy", ChangeKind::Disable, None);
        h.produce_change(&event).await;
        sequence.push(event.event_id);
    }
    let out = commanded_once(&h, &collector, &sequence).await;
    assert_eq!(out.commands.len(), sequence.len(), "{}", out.describe());
    assert_eq!(
        commands_in_order(&out, "busy"),
        sequence.iter().collect::<Vec<_>>(),
        "out of order"
    );
    let log = worker.log_text();
    assert!(
        log.contains("offsets book full"),
        "the book never filled (the test did not test the bound):\n{}",
        h.log_tails()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_request_stops_the_run_within_a_second_and_disables_the_flag() {
    let servers = kafka::require_broker();
    let h = Harness::new(&servers, "kill", 1).await;
    let up = Listener::start().await;
    h.catalog_file(
        "exp.yaml",
        &experiment_yaml("long", "60s", &h.marker("long"), &up.address),
    );
    h.catalog_file("pipe.yaml", &pipeline_yaml("gate", Some("*"), &["long"]));
    let collector = h.collect();
    let config = h.config("w", &Settings::default());
    let _worker = h.spawn("w", &config);

    let scopes = ["pipeline_execution", "run", "all"];
    for (i, scope) in scopes.iter().enumerate() {
        let event = change(&format!("flag-{i}"), ChangeKind::Enable, None);
        h.produce_change(&event).await;
        let out = h
            .wait_for(&collector, "the running record", PATIENCE, |o| {
                !o.runs_for(&event.event_id).is_empty()
            })
            .await;
        // Let the fault become active.
        let deadline = Instant::now() + Duration::from_secs(20);
        while h.active_markers().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            h.active_markers(),
            ["long"],
            "fault active before the abort"
        );
        let running = out.runs_for(&event.event_id)[0].clone();
        let data = match *scope {
            "pipeline_execution" => serde_json::json!({
                "scope": "pipeline_execution",
                "id": running.pipeline_execution_id,
                "reason": "incident",
            }),
            "run" => serde_json::json!({"scope": "run", "id": running.run_id}),
            _ => serde_json::json!({"scope": "all"}),
        };
        let asked = Instant::now();
        let asked_at = chrono::Utc::now();
        h.produce_abort(data).await;
        let out = h
            .wait_for(
                &collector,
                "the aborted record and command",
                PATIENCE,
                |o| !o.commands_for(&event.event_id).is_empty(),
            )
            .await;
        let took = asked.elapsed();
        let runs = out.final_runs_for(&event.event_id);
        assert_eq!(runs.len(), 1, "{}", out.describe());
        assert_eq!(runs[0].status, RunStatus::Aborted, "{}", out.describe());
        let stopped = runs[0].ended_at.expect("ended_at") - asked_at;
        println!("{scope}: run stopped {stopped} after the request, outputs seen after {took:?}");
        assert!(
            stopped < chrono::Duration::milliseconds(1500),
            "{scope}: the run ended {stopped} after the abort request"
        );
        assert!(
            took < Duration::from_secs(5),
            "{scope}: outputs after {took:?}"
        );
        assert!(runs[0].faults.iter().all(|f| f.reverted));
        let command = out.commands_for(&event.event_id)[0];
        assert_eq!(command.command, CommandKind::Disable);
        assert_eq!(command.reason_code, ReasonCode::Aborted);
        assert!(command.reason.contains("aborted"), "{}", command.reason);
        assert_eq!(h.active_markers(), Vec::<String>::new(), "fault reverted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_request_for_an_execution_waiting_behind_its_flag_disables_it_without_a_run() {
    let servers = kafka::require_broker();
    let h = Harness::new(&servers, "killqueued", 1).await;
    let up = Listener::start().await;
    h.catalog_file(
        "exp.yaml",
        &experiment_yaml("steady", "3s", &h.marker("steady"), &up.address),
    );
    h.catalog_file("pipe.yaml", &pipeline_yaml("gate", Some("*"), &["steady"]));
    let collector = h.collect();
    let _worker = h.spawn("w", &h.config("w", &Settings::default()));

    // Two changes of one flag: the second waits for the first (strict per-flag order).
    let first = change("checkout", ChangeKind::Enable, None);
    let second = change("checkout", ChangeKind::Update, None);
    h.produce_change(&first).await;
    h.produce_change(&second).await;
    h.wait_for(&collector, "the first run", PATIENCE, |o| {
        !o.runs_for(&first.event_id).is_empty()
    })
    .await;
    let waiting = chaosgate::contract::ids::pipeline_execution_id(&second.event_id, "gate");
    h.produce_abort(serde_json::json!({"scope": "pipeline_execution", "id": waiting}))
        .await;
    let out = h
        .wait_for(&collector, "both commands", PATIENCE, |o| {
            o.all_commanded(&[first.event_id.clone(), second.event_id.clone()])
        })
        .await;
    // The running one is untouched; the waiting one never runs and is disabled.
    let first_command = out.commands_for(&first.event_id)[0];
    assert_eq!(
        first_command.command,
        CommandKind::Enable,
        "{}",
        out.describe()
    );
    let second_command = out.commands_for(&second.event_id)[0];
    assert_eq!(
        second_command.command,
        CommandKind::Disable,
        "{}",
        out.describe()
    );
    assert_eq!(second_command.reason_code, ReasonCode::Aborted);
    assert!(
        second_command.reason.contains("before it started"),
        "{}",
        second_command.reason
    );
    assert!(
        out.runs_for(&second.event_id).is_empty(),
        "the aborted execution ran: {}",
        out.describe()
    );
    assert!(
        second_command.issued_at >= first_command.issued_at,
        "the flag's order was not kept: {}",
        out.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_aborts_the_run_exits_zero_and_the_event_runs_again_as_attempt_two() {
    let servers = kafka::require_broker();
    let h = Harness::new(&servers, "term", 1).await;
    let up = Listener::start().await;
    h.catalog_file(
        "exp.yaml",
        &experiment_yaml("slow", "4s", &h.marker("slow"), &up.address),
    );
    h.catalog_file("pipe.yaml", &pipeline_yaml("gate", Some("*"), &["slow"]));
    let collector = h.collect();
    let settings = Settings {
        shutdown_grace: "10s",
        ..Settings::default()
    };
    let config = h.config("w", &settings);
    let mut worker = h.spawn("w", &config);
    let event = change("checkout", ChangeKind::Enable, None);
    h.produce_change(&event).await;
    h.wait_for(&collector, "the running record", PATIENCE, |o| {
        !o.runs_for(&event.event_id).is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let asked = Instant::now();
    worker.signal(libc::SIGTERM);
    let status = worker
        .wait_exit(Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("still running 20 s after SIGTERM\n{}", h.log_tails()));
    let took = asked.elapsed();
    println!("exited {status} {took:?} after SIGTERM");
    assert!(status.success(), "exit status {status}\n{}", h.log_tails());
    assert!(
        took < Duration::from_secs(10),
        "exit took {took:?}, grace is 10 s"
    );
    assert_eq!(
        h.active_markers(),
        Vec::<String>::new(),
        "fault reverted on shutdown"
    );
    let out = h
        .wait_for(&collector, "the aborted record", PATIENCE, |o| {
            !o.final_runs_for(&event.event_id).is_empty()
        })
        .await;
    let aborted = out.final_runs_for(&event.event_id);
    assert_eq!(aborted.len(), 1, "{}", out.describe());
    assert_eq!(aborted[0].status, RunStatus::Aborted);
    assert_eq!(aborted[0].attempt, 1);
    assert!(
        out.commands_for(&event.event_id).is_empty(),
        "no command for an interrupted run"
    );

    let _worker = h.spawn("w", &config);
    h.wait_for(&collector, "the command after restart", PATIENCE, |o| {
        !o.commands_for(&event.event_id).is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = collector.snapshot();
    let finals = out.final_runs_for(&event.event_id);
    let statuses: Vec<(u32, RunStatus)> = finals.iter().map(|r| (r.attempt, r.status)).collect();
    assert_eq!(
        statuses,
        [(1, RunStatus::Aborted), (2, RunStatus::Passed)],
        "{}",
        out.describe()
    );
    assert_ne!(finals[0].run_id, finals[1].run_id);
    let commands = out.commands_for(&event.event_id);
    assert_eq!(commands.len(), 1);
    assert_eq!(commands[0].command, CommandKind::Enable);
    assert_eq!(h.active_markers(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiments_longer_than_max_poll_interval_cause_no_rebalance() {
    let servers = kafka::require_broker();
    let h = Harness::new(&servers, "poll", 3).await;
    let up = Listener::start().await;
    for flag in ["a", "b", "c"] {
        h.catalog_file(
            &format!("exp-{flag}.yaml"),
            &experiment_yaml(&format!("exp-{flag}"), "8s", &h.marker(flag), &up.address),
        );
        h.catalog_file(
            &format!("pipe-{flag}.yaml"),
            &pipeline_yaml(
                &format!("gate-{flag}"),
                Some(&format!("{flag}-*")),
                &[&format!("exp-{flag}")],
            ),
        );
    }
    let collector = h.collect();
    // librdkafka wants max.poll.interval.ms >= session.timeout.ms, and the broker's
    // smallest session timeout is 6 s (group.min.session.timeout.ms).
    let settings = Settings {
        properties: vec![
            ("max.poll.interval.ms", "6000".into()),
            ("session.timeout.ms", "6000".into()),
        ],
        ..Settings::default()
    };
    let config = h.config("w", &settings);
    let worker = h.spawn("w", &config);
    let mut events = Vec::new();
    for round in 0..2 {
        for flag in ["a", "b", "c"] {
            let event = change(&format!("{flag}-{round}"), ChangeKind::Enable, None);
            // Same flag twice: the second waits 8 s behind the first.
            let event = if round == 1 {
                change(&format!("{flag}-0"), ChangeKind::Update, None)
            } else {
                event
            };
            h.produce_change(&event).await;
            events.push(event.event_id);
        }
    }
    let out = commanded_once(&h, &collector, &events).await;
    for event in &events {
        let runs = out.runs_for(event);
        let statuses: Vec<(u32, RunStatus)> = runs.iter().map(|r| (r.attempt, r.status)).collect();
        assert_eq!(
            statuses,
            [(1, RunStatus::Running), (1, RunStatus::Passed)],
            "each event runs once, uninterrupted: {}",
            out.describe()
        );
        assert!(runs[1].duration_seconds.unwrap_or_default() >= 8.0);
    }
    let log = worker.log_text();
    assert_eq!(
        log.matches("partitions assigned").count(),
        1,
        "one assignment, no rebalance:\n{log}"
    );
    assert_eq!(log.matches("partitions revoked").count(), 0, "{log}");
    // librdkafka's words when the application does not poll in time.
    assert!(!log.contains("maximum poll interval"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_mid_experiment_again_and_again_each_event_still_counts_once() {
    let servers = kafka::require_broker();
    // One partition, experiments of different lengths: events finish out of offset
    // order, so commits carry done offsets above the watermark that a restart must skip.
    let h = Harness::new(&servers, "crash", 1).await;
    let up = Listener::start().await;
    let flags = ["one", "two", "three"];
    for (flag, duration) in flags.iter().zip(["3s", "1s", "400ms"]) {
        h.catalog_file(
            &format!("exp-{flag}.yaml"),
            &experiment_yaml(
                &format!("exp-{flag}"),
                duration,
                &h.marker(flag),
                &up.address,
            ),
        );
        h.catalog_file(
            &format!("pipe-{flag}.yaml"),
            &pipeline_yaml(
                &format!("gate-{flag}"),
                Some(flag),
                &[&format!("exp-{flag}")],
            ),
        );
    }
    let collector = h.collect();
    let config = h.config("w", &Settings::default());
    let events = h.produce_rounds(&flags, 3).await;
    let mut kills = 0;
    let mut seen_running = 0;
    while kills < 3 {
        let mut worker = h.spawn("w", &config);
        h.wait_for(&collector, "a new run to start", PATIENCE, |o| {
            o.runs
                .iter()
                .filter(|r| r.value.status == RunStatus::Running)
                .count()
                > seen_running
        })
        .await;
        // Mid-experiment: the faults last 0.4 to 3 s.
        tokio::time::sleep(Duration::from_millis(700)).await;
        worker.kill();
        kills += 1;
        // Records the killed worker sent just before may still be on their way.
        tokio::time::sleep(Duration::from_millis(500)).await;
        seen_running = collector
            .snapshot()
            .runs
            .iter()
            .filter(|r| r.value.status == RunStatus::Running)
            .count();
        println!("SIGKILL {kills}: markers left {:?}", h.active_markers());
    }
    let _worker = h.spawn("w", &config);
    h.wait_for(&collector, "a command for each event", PATIENCE * 2, |o| {
        o.all_commanded(&events)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = collector.snapshot();
    // One command and one `passed` run per event; every earlier attempt ends `aborted`.
    assert_each_event_counted_once(&out, &events);
    assert_every_run_ends(&out);
    let mut rerun = 0;
    let mut superseded = 0;
    for event in &events {
        let finals = out.final_runs_for(event);
        superseded += finals
            .iter()
            .filter(|r| {
                r.summary
                    .as_deref()
                    .is_some_and(|s| s.starts_with("superseded by attempt"))
            })
            .count();
        let passed = finals
            .iter()
            .find(|r| r.status == RunStatus::Passed)
            .expect("a passed run");
        // Every start of the event whose start mark was committed before the kill is its
        // own attempt, with its own run id; a kill within the mark's linger and transaction
        // (about 30 ms) repeats the attempt, and then its `running` record, committed with
        // or after the mark, was not committed either. So each attempt shows at most one
        // `running` record, in order. (An attempt may leave none when the kill came right
        // after its start mark was committed.)
        let running: Vec<u32> = out
            .runs_for(event)
            .iter()
            .filter(|r| r.status == RunStatus::Running)
            .map(|r| r.attempt)
            .collect();
        assert!(
            running.windows(2).all(|w| w[0] < w[1]),
            "attempts of {event} repeat or go backwards: {}",
            out.describe()
        );
        assert_eq!(Some(&passed.attempt), running.last());
        if passed.attempt > 1 {
            rerun += 1;
        }
    }
    assert!(
        rerun >= 1,
        "some event was cut off and run again: {}",
        out.describe()
    );
    println!("{superseded} runs cut off by a SIGKILL were closed as superseded");
    assert!(
        superseded >= 1,
        "no cut-off run was superseded: {}",
        out.describe()
    );
    let skipped = h.logs().matches("already done by an earlier owner").count();
    println!("{skipped} events done above the watermark were skipped after a restart");
    assert!(
        skipped >= 1,
        "no restart skipped an event done out of order"
    );
    // A SIGKILLed worker cannot revert a command fault; the next attempt's revert does.
    assert_eq!(
        h.active_markers(),
        Vec::<String>::new(),
        "faults left active"
    );
}

/// The causing event of each command for `flag`, in the order they were written.
fn commands_in_order<'a>(out: &'a worker::Outputs, flag: &str) -> Vec<&'a String> {
    let mut commands: Vec<_> = out
        .commands
        .iter()
        .filter(|c| c.value.flag == flag)
        .collect();
    commands.sort_by_key(|c| (c.partition, c.offset));
    commands
        .iter()
        .map(|c| &c.value.causation_event_id)
        .collect()
}

/// Waits for a command for each of `events`, lets a second pass for duplicates, and
/// checks each has exactly one.
async fn commanded_once(
    h: &Harness,
    collector: &worker::Collector,
    events: &[String],
) -> worker::Outputs {
    h.wait_for(collector, "a command for each event", PATIENCE, |o| {
        o.all_commanded(events)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = collector.snapshot();
    for event in events {
        assert_eq!(
            out.commands_for(event).len(),
            1,
            "{event}: {}",
            out.describe()
        );
    }
    out
}

/// Checks that no run stays `running`: every run id with a `running` record has exactly
/// one final record.
fn assert_every_run_ends(out: &worker::Outputs) {
    for run in out
        .runs
        .iter()
        .filter(|r| r.value.status == RunStatus::Running)
    {
        let finals = out
            .runs
            .iter()
            .filter(|r| r.value.run_id == run.value.run_id && r.value.status != RunStatus::Running)
            .count();
        assert_eq!(
            finals,
            1,
            "run {} (attempt {}) has {finals} final records: {}",
            run.value.run_id,
            run.value.attempt,
            out.describe()
        );
    }
}

/// Checks the exactly-once promise over `events`: one command each, and per event and
/// step exactly one `passed` record, any earlier attempts ending `aborted`, and no run id
/// with two final records.
fn assert_each_event_counted_once(out: &worker::Outputs, events: &[String]) {
    assert!(out.garbage.is_empty(), "{:?}", out.garbage);
    let mut finals_by_run: HashMap<&str, usize> = HashMap::new();
    for run in &out.runs {
        if run.value.status != RunStatus::Running {
            *finals_by_run.entry(run.value.run_id.as_str()).or_default() += 1;
        }
    }
    for (run_id, count) in &finals_by_run {
        assert_eq!(
            *count,
            1,
            "run {run_id} has {count} final records: {}",
            out.describe()
        );
    }
    for event in events {
        assert_eq!(
            out.commands_for(event).len(),
            1,
            "{event}: {}",
            out.describe()
        );
        let finals = out.final_runs_for(event);
        let passed: Vec<_> = finals
            .iter()
            .filter(|r| r.status == RunStatus::Passed)
            .collect();
        assert_eq!(passed.len(), 1, "{event}: {}", out.describe());
        for run in &finals {
            if run.status != RunStatus::Passed {
                assert_eq!(run.status, RunStatus::Aborted, "{}", out.describe());
                assert!(run.attempt < passed[0].attempt, "{}", out.describe());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_batch_and_one_stopping_loses_and_doubles_nothing() {
    let servers = kafka::require_broker();
    let h = Harness::new(&servers, "pair", 4).await;
    let up = Listener::start().await;
    let flags = ["f0", "f1", "f2", "f3", "f4", "f5"];
    for flag in flags {
        h.catalog_file(
            &format!("exp-{flag}.yaml"),
            &experiment_yaml(
                &format!("exp-{flag}"),
                "1500ms",
                &h.marker(flag),
                &up.address,
            ),
        );
        h.catalog_file(
            &format!("pipe-{flag}.yaml"),
            &pipeline_yaml(
                &format!("gate-{flag}"),
                Some(flag),
                &[&format!("exp-{flag}")],
            ),
        );
    }
    let collector = h.collect();
    let settings = Settings {
        max_in_flight: 3,
        ..Settings::default()
    };
    let mut a = h.spawn("a", &h.config("a", &settings));
    let mut b = h.spawn("b", &h.config("b", &settings));
    let events = h.produce_rounds(&flags, 3).await;
    // Both at work, then one stops mid-batch.
    h.wait_for(&collector, "the first commands", PATIENCE, |o| {
        o.commands.len() >= 4
    })
    .await;
    let both_assigned = a.log_text().contains("partitions assigned")
        && b.log_text().contains("partitions assigned");
    b.signal(libc::SIGTERM);
    let status = b
        .wait_exit(Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("b still running after SIGTERM\n{}", h.log_tails()));
    assert!(
        status.success(),
        "b exited with {status}\n{}",
        h.log_tails()
    );

    h.wait_for(&collector, "a command for each event", PATIENCE, |o| {
        o.all_commanded(&events)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = collector.snapshot();
    assert!(
        both_assigned,
        "both workers had partitions\n{}",
        h.log_tails()
    );
    assert_each_event_counted_once(&out, &events);
    assert_eq!(out.commands.len(), events.len());
    assert_eq!(h.active_markers(), Vec::<String>::new());
    a.signal(libc::SIGTERM);
    assert!(
        a.wait_exit(Duration::from_secs(30))
            .await
            .is_some_and(|s| s.success())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_whose_partition_moved_on_cannot_commit_when_it_wakes() {
    let servers = kafka::require_broker();
    let h = Harness::new(&servers, "zombie", 1).await;
    let up = Listener::start().await;
    h.catalog_file(
        "exp.yaml",
        &experiment_yaml("steady", "3s", &h.marker("steady"), &up.address),
    );
    h.catalog_file("pipe.yaml", &pipeline_yaml("gate", Some("*"), &["steady"]));
    let collector = h.collect();
    let settings = Settings::default();
    let a = h.spawn("a", &h.config("a", &settings));
    let deadline = Instant::now() + PATIENCE;
    while !a.log_text().contains("partitions assigned") {
        assert!(
            Instant::now() < deadline,
            "a got no partition\n{}",
            h.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // b stands by: the one partition stays with a.
    let _b = h.spawn("b", &h.config("b", &settings));
    tokio::time::sleep(Duration::from_secs(3)).await;

    let event = change("payments", ChangeKind::Enable, None);
    h.produce_change(&event).await;
    h.wait_for(&collector, "a's run to start", PATIENCE, |o| {
        !o.runs_for(&event.event_id).is_empty()
    })
    .await;
    // a freezes mid-experiment (a long GC pause, a stopped VM) past its session timeout;
    // b takes the partition over and runs the event again.
    a.signal(libc::SIGSTOP);
    h.wait_for(&collector, "b's command", PATIENCE, |o| {
        !o.commands_for(&event.event_id).is_empty()
    })
    .await;
    a.signal(libc::SIGCONT);
    // a wakes up, its experiment finishes, and its commit must be fenced.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let out = collector.snapshot();
    assert_each_event_counted_once(&out, std::slice::from_ref(&event.event_id));
    // a's cut-off run ends once: b supersedes it, a publishes nothing for it.
    assert_every_run_ends(&out);
    let passed: Vec<u32> = out
        .final_runs_for(&event.event_id)
        .iter()
        .filter(|r| r.status == RunStatus::Passed)
        .map(|r| r.attempt)
        .collect();
    assert_eq!(passed, [2], "b's attempt counts: {}", out.describe());
    // Which way a lost it depends on timing after SIGCONT: the lost-partition callback
    // first (run interrupted), or its run first (commit refused by the broker).
    let log = a.log_text();
    println!(
        "a after waking: interrupted {}, failed transactions {}",
        log.contains("interrupted; left for the next owner"),
        log.matches("transaction failed").count()
    );
    assert_eq!(h.active_markers(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_stopped_and_started_mid_batch_the_worker_recovers_and_finishes() {
    let broker = OwnBroker::start().await;
    let servers = broker.servers();
    let h = Harness::new(&servers, "outage", 3).await;
    let up = Listener::start().await;
    let flags = ["x", "y", "z"];
    for flag in flags {
        h.catalog_file(
            &format!("exp-{flag}.yaml"),
            &experiment_yaml(&format!("exp-{flag}"), "3s", &h.marker(flag), &up.address),
        );
        h.catalog_file(
            &format!("pipe-{flag}.yaml"),
            &pipeline_yaml(
                &format!("gate-{flag}"),
                Some(flag),
                &[&format!("exp-{flag}")],
            ),
        );
    }
    h.catalog_file(
        "exp-late.yaml",
        &experiment_yaml("exp-late", "30s", &h.marker("late"), &up.address),
    );
    h.catalog_file(
        "pipe-late.yaml",
        &pipeline_yaml("gate-late", Some("late-*"), &["exp-late"]),
    );
    let collector = h.collect();
    let settings = Settings {
        shutdown_grace: "10s",
        ..Settings::default()
    };
    let config = h.config("w", &settings);
    let mut worker = h.spawn("w", &config);
    let events = h.produce_rounds(&flags, 3).await;
    h.wait_for(&collector, "the first commands", PATIENCE, |o| {
        o.commands.len() >= 2
    })
    .await;
    let stopped = Instant::now();
    broker.script("stop").await;
    // Runs in flight finish while the broker is away; their commits must wait.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = collector.snapshot().commands.len();
    broker.script("start").await;
    let restarted = Instant::now();
    println!("broker away for {:?}", stopped.elapsed());
    // Progress first (the first command after the restart), so a stall fails with the
    // worker's state while it is stalled, not after every bounded wait has run out.
    h.wait_for(
        &collector,
        "the first command after the restart",
        PATIENCE,
        |o| o.commands.len() > before || o.all_commanded(&events),
    )
    .await;
    println!("first command {:?} after the restart", restarted.elapsed());
    h.wait_for(&collector, "a command for each event", PATIENCE * 2, |o| {
        o.all_commanded(&events)
    })
    .await;
    println!(
        "every event commanded {:?} after the restart",
        restarted.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = collector.snapshot();
    assert_each_event_counted_once(&out, &events);
    assert_eq!(h.active_markers(), Vec::<String>::new());

    // SIGTERM while the broker is away, with runs in flight: the worker still exits
    // within its grace period (what it could not commit runs again after a restart).
    let mut late = Vec::new();
    for flag in flags {
        let event = change(&format!("late-{flag}"), ChangeKind::Enable, None);
        h.produce_change(&event).await;
        late.push(event.event_id);
    }
    h.wait_for(&collector, "the late runs to start", PATIENCE, |o| {
        late.iter().all(|e| !o.runs_for(e).is_empty())
    })
    .await;
    broker.script("stop").await;
    let asked = Instant::now();
    worker.signal(libc::SIGTERM);
    let status = worker.wait_exit(Duration::from_secs(40)).await;
    let took = asked.elapsed();
    let exit = status.map_or("still running".to_string(), worker::diagnose::exit_text);
    println!("{exit} {took:?} after SIGTERM with the broker away");
    assert!(
        status.is_some() && took < Duration::from_secs(15),
        "no exit within the 10 s grace period with the broker away ({took:?}, {exit})\n{}",
        h.log_tails()
    );
    assert_eq!(
        h.active_markers(),
        Vec::<String>::new(),
        "faults reverted on shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_with_creation_off_stops_the_worker_with_a_clear_error() {
    let servers = kafka::require_broker();
    let h = Harness::new(&servers, "missing", 1).await;
    h.catalog_file(
        "exp.yaml",
        &experiment_yaml("unused", "1s", &h.marker("unused"), &closed_address()),
    );
    let config = h.config("w", &Settings::default());
    let absent = kafka::unique_topic("never-created");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("create_topics = true", "create_topics = false")
        .replace(
            &format!("flag_changes = \"{}\"", h.topics.flag_changes),
            &format!("flag_changes = \"{absent}\""),
        );
    std::fs::write(&config, text).unwrap();
    let mut worker = h.spawn("w", &config);
    let status = worker
        .wait_exit(PATIENCE)
        .await
        .expect("the worker kept running without its input topic");
    assert!(!status.success(), "exit status {status}");
    let log = worker.log_text();
    assert!(
        log.contains("topics missing") && log.contains(&absent) && log.contains("create_topics"),
        "the error does not name the topic and the setting:\n{log}"
    );
}

/// The broker's SASL/PLAIN listener (`KAFKA_SASL_PORT` of `deploy/local/kafka.sh`, user
/// `chaosgate`, password `chaosgate-secret`); the test fails without it.
fn require_sasl_broker() -> String {
    std::env::var("KAFKA_SASL_BOOTSTRAP_SERVERS").unwrap_or_else(|_| {
        panic!(
            "KAFKA_SASL_BOOTSTRAP_SERVERS is not set: start the broker with a SASL listener \
             (`KAFKA_SASL_PORT=19094 deploy/local/kafka.sh start`, then \
             `eval \"$(KAFKA_SASL_PORT=19094 deploy/local/kafka.sh env)\"`), as scripts/test.sh does"
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_stop_the_worker_with_a_clear_error_and_good_ones_work() {
    let servers = kafka::require_broker();
    let sasl_servers = require_sasl_broker();
    let h = Harness::new(&servers, "sasl", 1).await;
    let up = Listener::start().await;
    h.catalog_file(
        "exp.yaml",
        &experiment_yaml("steady", "200ms", &h.marker("steady"), &up.address),
    );
    h.catalog_file("pipe.yaml", &pipeline_yaml("gate", Some("*"), &["steady"]));
    let with_password = |instance: &str, password: &str| {
        let settings = Settings {
            properties: vec![
                ("security.protocol", "SASL_PLAINTEXT".to_string()),
                ("sasl.mechanism", "PLAIN".to_string()),
                ("sasl.username", "chaosgate".to_string()),
                ("sasl.password", password.to_string()),
            ],
            ..Settings::default()
        };
        let config = h.config(instance, &settings);
        let text = std::fs::read_to_string(&config).unwrap().replace(
            &format!("bootstrap_servers = \"{servers}\""),
            &format!("bootstrap_servers = \"{sasl_servers}\""),
        );
        std::fs::write(&config, text).unwrap();
        config
    };

    let wrong = "not-the-password-7f3a";
    let mut worker = h.spawn("bad", &with_password("bad", wrong));
    let status = worker
        .wait_exit(PATIENCE)
        .await
        .expect("the worker kept running with a wrong password");
    assert!(!status.success(), "exit status {status}");
    let log = worker.log_text();
    assert!(
        log.contains("Kafka refused the connection") && log.contains(&sasl_servers),
        "the error does not say the cluster refused us:\n{log}"
    );
    assert!(
        log.to_lowercase().contains("authentication"),
        "the error does not say authentication failed:\n{log}"
    );
    assert!(!log.contains(wrong), "the password is in the log:\n{log}");

    // The same settings with the right password: the worker joins and gates an event.
    let collector = h.collect();
    let _worker = h.spawn("good", &with_password("good", "chaosgate-secret"));
    let event = change("payments", ChangeKind::Enable, None);
    h.produce_change(&event).await;
    h.wait_for(&collector, "a command over SASL", PATIENCE, |o| {
        !o.commands_for(&event.event_id).is_empty()
    })
    .await;
    assert!(
        !h.logs().contains("chaosgate-secret"),
        "the password is in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_readiness_reflect_a_gated_event() {
    let servers = kafka::require_broker();
    let h = Harness::new(&servers, "metrics", 1).await;
    let up = Listener::start().await;
    h.catalog_file(
        "exp.yaml",
        &experiment_yaml("listener-up", "200ms", &h.marker("up"), &up.address),
    );
    h.catalog_file(
        "pipe.yaml",
        &pipeline_yaml("gate", Some("any-*"), &["listener-up"]),
    );
    let collector = h.collect();
    let config = h.config("w", &Settings::default());
    let worker = h.spawn("w", &config);

    // The endpoints' address is in the log (the config asks for port 0).
    let started = Instant::now();
    let address = loop {
        let log = worker.log_text();
        if let Some(line) = log.lines().find(|l| l.contains("serving /healthz")) {
            let at = line.find("addr=").expect("addr field") + 5;
            break line[at..].split_whitespace().next().unwrap().to_string();
        }
        assert!(
            started.elapsed() < PATIENCE,
            "no endpoints in the log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let http = reqwest::Client::new();
    let get = |path: &'static str| http_get(&http, &address, path);
    assert_eq!(get("/healthz").await.0, 200);

    let event = change("any-flag", ChangeKind::Enable, None);
    h.produce_change(&event).await;
    let id = event.event_id.clone();
    h.wait_for(&collector, "the command", PATIENCE, |o| {
        o.all_commanded(std::slice::from_ref(&id))
    })
    .await;

    let (status, ready) = get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert!(ready.contains("\"assigned_partitions\":1"), "{ready}");
    // The commit that carried the command is counted right after it; allow a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = get("/metrics").await;
        let moved = [
            "chaosgate_events_consumed_total 1",
            "chaosgate_events_gated_total{command=\"enable\",reason=\"passed\"} 1",
            "chaosgate_runs_total{status=\"passed\"} 1",
        ]
        .iter()
        .all(|line| text.lines().any(|l| l == *line))
            && text.contains("chaosgate_transaction_commit_seconds_count");
        if moved {
            break;
        }
        assert!(Instant::now() < deadline, "metrics did not move:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Opens a transaction that commits an offset of partition 0 of `topic` for `group`, and
/// leaves it open: until it ends, the broker answers a `read_committed` offset fetch of
/// that partition with UNSTABLE_OFFSET_COMMIT. The broker takes such a commit (generation
/// -1) only while the group is empty, so this retries until it is.
fn open_offsets_transaction(
    servers: &str,
    group: &str,
    topic: &str,
) -> rdkafka::producer::BaseProducer {
    use rdkafka::consumer::Consumer;
    use rdkafka::producer::Producer;
    let producer: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("transactional.id", kafka::unique_topic("blocker"))
        .set("transaction.timeout.ms", "120000")
        .create()
        .expect("transactional producer");
    producer
        .init_transactions(Duration::from_secs(30))
        .expect("init transactions");
    let member: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set("group.id", group)
        .create()
        .expect("group member");
    let metadata = member.group_metadata().expect("group metadata");
    let mut offsets = rdkafka::TopicPartitionList::new();
    offsets
        .add_partition_offset(topic, 0, rdkafka::Offset::Offset(0))
        .expect("offset");
    let deadline = Instant::now() + PATIENCE;
    loop {
        producer.begin_transaction().expect("begin transaction");
        match producer.send_offsets_to_transaction(&offsets, &metadata, Duration::from_secs(10)) {
            Ok(()) => return producer,
            Err(error) => {
                assert!(
                    Instant::now() < deadline,
                    "cannot put offsets in a transaction: {error}"
                );
                let _ = producer.abort_transaction(Duration::from_secs(10));
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_unreadable_at_assignment_are_retried_and_nothing_runs_twice() {
    use rdkafka::producer::Producer;
    let servers = kafka::require_broker();
    let h = Harness::new(&servers, "unstable", 1).await;
    let up = Listener::start().await;
    h.catalog_file(
        "exp.yaml",
        &experiment_yaml("quick", "400ms", &h.marker("quick"), &up.address),
    );
    h.catalog_file(
        "exp-slow.yaml",
        &experiment_yaml("slow", "6s", &h.marker("slow"), &up.address),
    );
    h.catalog_file(
        "pipe.yaml",
        &pipeline_yaml("gate", Some("gated-*"), &["quick"]),
    );
    h.catalog_file(
        "pipe-slow.yaml",
        &pipeline_yaml("gate-slow", Some("slow-*"), &["slow"]),
    );
    let collector = h.collect();
    // The offset fetch gives up after 10 s (librdkafka retries UNSTABLE_OFFSET_COMMIT
    // until its request times out).
    let settings = Settings {
        properties: vec![("socket.timeout.ms", "10000".into())],
        ..Settings::default()
    };
    let config = h.config("w", &settings);
    let mut first = h.spawn("w", &config);
    // The slow event holds the watermark: the other two are done above it, which only
    // the offsets metadata remembers.
    let mut done = Vec::new();
    for flag in ["slow-a", "plain-b", "gated-c"] {
        let event = change(flag, ChangeKind::Enable, None);
        h.produce_change(&event).await;
        done.push(event.event_id);
    }
    h.wait_for(
        &collector,
        "the quick commands and the slow run",
        PATIENCE,
        |o| o.all_commanded(&done[1..]) && !o.runs_for(&done[0]).is_empty(),
    )
    .await;
    first.signal(libc::SIGTERM);
    assert!(first.wait_exit(PATIENCE).await.is_some_and(|s| s.success()));

    // A transaction holding offsets of the group's partition stays open while the next
    // worker takes the partition: its offset fetch meets UNSTABLE_OFFSET_COMMIT.
    let (servers_, group, topic) = (
        servers.clone(),
        h.group.clone(),
        h.topics.flag_changes.clone(),
    );
    let blocker =
        tokio::task::spawn_blocking(move || open_offsets_transaction(&servers_, &group, &topic))
            .await
            .expect("blocker");
    let second = h.spawn("w", &config);
    let deadline = Instant::now() + PATIENCE;
    while !second.log_text().contains("cannot read committed offsets") {
        assert!(
            Instant::now() < deadline,
            "the offset fetch never failed\n{}",
            h.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Meanwhile the worker says why it is not ready.
    let address = second.http_address(PATIENCE).await;
    let (status, ready) = http_get(&reqwest::Client::new(), &address, "/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert!(
        ready.contains("wait for their committed offsets"),
        "{ready}"
    );
    tokio::task::spawn_blocking(move || blocker.abort_transaction(Duration::from_secs(30)))
        .await
        .expect("abort")
        .expect("abort the blocking transaction");
    let late = change("gated-late", ChangeKind::Enable, None);
    h.produce_change(&late).await;
    let all: Vec<String> = done.iter().chain([&late.event_id]).cloned().collect();
    h.wait_for(&collector, "every command", PATIENCE, |o| {
        o.all_commanded(&all)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = collector.snapshot();
    for event in done.iter().chain([&late.event_id]) {
        assert_eq!(
            out.commands_for(event).len(),
            1,
            "{event} answered more than once (run again from offset 0?): {}\n{}",
            out.describe(),
            h.log_tails()
        );
    }
    assert_each_event_counted_once(
        &out,
        &[done[0].clone(), done[2].clone(), late.event_id.clone()],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_worker_restarted_takes_its_partitions_back_within_seconds() {
    let servers = kafka::require_broker();
    let h = Harness::new(&servers, "static", 2).await;
    let up = Listener::start().await;
    h.catalog_file(
        "exp.yaml",
        &experiment_yaml("quick", "400ms", &h.marker("quick"), &up.address),
    );
    h.catalog_file(
        "pipe.yaml",
        &pipeline_yaml("gate", Some("never-*"), &["quick"]),
    );
    let collector = h.collect();
    // Kafka's default session timeout: without static membership the restarted worker
    // waits for the killed member's session to expire (about 45 s).
    let settings = Settings {
        properties: vec![
            ("session.timeout.ms", "45000".into()),
            ("heartbeat.interval.ms", "3000".into()),
        ],
        ..Settings::default()
    };
    let config = h.config("w", &settings);
    let mut worker = h.spawn("w", &config);
    let before: Vec<String> = h.produce_rounds(&["p", "q", "r", "s"], 1).await;
    h.wait_for(&collector, "the first commands", PATIENCE, |o| {
        o.all_commanded(&before)
    })
    .await;
    worker.kill();

    let restarted = Instant::now();
    let _worker = h.spawn("w", &config);
    let after: Vec<String> = h.produce_rounds(&["p", "q", "r", "s"], 1).await;
    h.wait_for(&collector, "commands after the restart", PATIENCE, |o| {
        o.all_commanded(&after)
    })
    .await;
    let took = restarted.elapsed();
    println!("a restarted worker answered on every partition {took:?} after it started");
    assert!(
        took < Duration::from_secs(15),
        "the restarted worker waited {took:?} for its partitions\n{}",
        h.log_tails()
    );
    let out = collector.snapshot();
    for event in before.iter().chain(&after) {
        assert_eq!(out.commands_for(event).len(), 1, "{}", out.describe());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_ticks_while_idle_and_liveness_reports_it() {
    let servers = kafka::require_broker();
    let h = Harness::new(&servers, "liveness", 1).await;
    let up = Listener::start().await;
    h.catalog_file(
        "exp.yaml",
        &experiment_yaml("quick", "400ms", &h.marker("quick"), &up.address),
    );
    h.catalog_file("pipe.yaml", &pipeline_yaml("gate", Some("*"), &["quick"]));
    let config = h.config("w", &Settings::default());
    let worker = h.spawn("w", &config);
    let address = worker.http_address(PATIENCE).await;
    let http = reqwest::Client::new();
    let get = |path: &'static str| http_get(&http, &address, path);
    let last_tick = |text: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix("chaosgate_main_loop_last_tick_seconds "))
            .and_then(|v| v.trim().parse().ok())
    };
    // Ready: partitions assigned and their offsets read.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, body) = get("/readyz").await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never ready: {body}\n{}",
            h.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Idle: no record arrives, yet the loop goes round (and re-polls its consumer).
    let (_, metrics) = get("/metrics").await;
    let first = last_tick(&metrics).unwrap_or_else(|| panic!("no loop gauge:\n{metrics}"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, metrics) = get("/metrics").await;
    let second = last_tick(&metrics).expect("loop gauge");
    println!(
        "the idle loop's last tick moved {:.1} s in 3 s",
        second - first
    );
    assert!(
        second - first >= 1.5,
        "the idle loop did not go round: {first} -> {second}"
    );
    let (status, body) = get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, "{\"status\":\"ok\"}"));
    let (_, body) = get("/readyz").await;
    assert!(body.contains("\"stalled\":[]"), "{body}");
}

/// GETs `path` from the worker endpoints at `address`: (status, body).
async fn http_get(http: &reqwest::Client, address: &str, path: &str) -> (u16, String) {
    let response = http
        .get(format!("http://{address}{path}"))
        .send()
        .await
        .expect("endpoint answers");
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

/// Events a worker has read and not yet answered, from its `/metrics`.
async fn unanswered(http: &reqwest::Client, address: &str) -> Option<f64> {
    let (_, text) = http_get(http, address, "/metrics").await;
    let value = |line: &str| line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
    let consumed = text
        .lines()
        .find(|l| l.starts_with("chaosgate_events_consumed_total "))
        .and_then(value)?;
    let answered: f64 = text
        .lines()
        .filter(|l| l.starts_with("chaosgate_events_gated_total{"))
        .filter_map(value)
        .sum();
    Some(consumed - answered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_assigned_during_backpressure_is_paused_too() {
    let servers = kafka::require_broker();
    let h = Harness::new(&servers, "pausemove", 2).await;
    let _up = gate_every_flag(&h, "short", "200ms").await;
    let collector = h.collect();
    // One run at a time: more than 8 events waiting pause the partitions.
    let settings = Settings {
        max_in_flight: 1,
        ..Settings::default()
    };
    let a = h.spawn("a", &h.config("a", &settings));
    let mut b = h.spawn("b", &h.config("b", &settings));
    let deadline = Instant::now() + PATIENCE;
    while !(a.log_text().contains("partitions assigned")
        && b.log_text().contains("partitions assigned"))
    {
        assert!(
            Instant::now() < deadline,
            "not both assigned\n{}",
            h.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // b stops; its partition moves to a once b's session times out (static membership),
    // while a is paused by its own backlog.
    b.signal(libc::SIGTERM);
    assert!(b.wait_exit(PATIENCE).await.is_some_and(|s| s.success()));
    let flags: Vec<String> = (0..25).map(|i| format!("flag-{i}")).collect();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let events = h.produce_rounds(&flags, 4).await;
    let address = a.http_address(PATIENCE).await;
    let http = reqwest::Client::new();
    let mut most = 0.0_f64;
    let deadline = Instant::now() + PATIENCE * 2;
    loop {
        if let Some(n) = unanswered(&http, &address).await {
            most = most.max(n);
        }
        if collector.snapshot().all_commanded(&events) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all answered\n{}",
            h.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = a.log_text();
    let moved = log.matches("partitions assigned").count();
    println!(
        "a read at most {most} events ahead of its answers (backlog limit 8, one running); assignments {moved}"
    );
    assert!(moved >= 2, "b's partition never moved to a\n{log}");
    assert!(log.contains("backpressure: partitions paused"), "{log}");
    assert!(
        most <= 20.0,
        "a read {most} events ahead of its answers: the partition it took over was not paused\n{}",
        h.log_tails()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_each_event_counted_once(&collector.snapshot(), &events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_fenced_by_its_own_static_id_is_replaced_and_the_worker_answers_again() {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let servers = kafka::require_broker();
    let h = Harness::new(&servers, "fenced", 2).await;
    let up = Listener::start().await;
    h.catalog_file(
        "exp.yaml",
        &experiment_yaml("quick", "400ms", &h.marker("quick"), &up.address),
    );
    h.catalog_file(
        "pipe.yaml",
        &pipeline_yaml("gate", Some("never-*"), &["quick"]),
    );
    let collector = h.collect();
    let config = h.config("w", &Settings::default());
    let worker = h.spawn("w", &config);
    let address = worker.http_address(PATIENCE).await;
    let before: Vec<String> = h.produce_rounds(&["p", "q", "r", "s"], 1).await;
    h.wait_for(&collector, "the first commands", PATIENCE, |o| {
        o.all_commanded(&before)
    })
    .await;

    // Another member joins with the worker's `group.instance.id`: the broker hands it the
    // static member and fences the worker's consumer (FENCED_INSTANCE_ID, fatal).
    let (servers_, group, instance) = (servers.clone(), h.group.clone(), format!("{}-w", h.group));
    let intruder: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &servers_)
        .set("group.id", &group)
        .set("group.instance.id", &instance)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "false")
        .create()
        .expect("intruder consumer");
    let topic = h.topics.flag_changes.clone();
    intruder.subscribe(&[&topic]).expect("intruder subscribes");
    let intruder = std::sync::Arc::new(intruder);
    let polling = intruder.clone();
    let stop_polling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = stop_polling.clone();
    let poller = std::thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = polling.poll(Duration::from_millis(100));
        }
    });

    // The worker notices, goes unhealthy, and a fresh worker replaces its consumer.
    let http = reqwest::Client::new();
    let deadline = Instant::now() + PATIENCE;
    let unhealthy = loop {
        let (status, body) = http_get(&http, &address, "/healthz").await;
        if status == 503 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz never reported the fenced consumer\n{}",
            h.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("/healthz while fenced: {unhealthy}");
    assert!(unhealthy.contains("consumer failed"), "{unhealthy}");
    let (_, ready) = http_get(&http, &address, "/readyz").await;
    println!("/readyz while fenced: {ready}");
    stop_polling.store(true, std::sync::atomic::Ordering::Relaxed);
    poller.join().expect("poller");
    drop(intruder);

    let fenced_at = Instant::now();
    let after: Vec<String> = h.produce_rounds(&["p", "q", "r", "s"], 1).await;
    h.wait_for(&collector, "commands after the fence", PATIENCE, |o| {
        o.all_commanded(&after)
    })
    .await;
    println!(
        "the worker answered again {:?} after /healthz reported the fence",
        fenced_at.elapsed()
    );
    assert!(
        worker.log_text().contains("starting a fresh worker"),
        "{}",
        h.log_tails()
    );
    let (status, body) = http_get(&http, &address, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "{\"status\":\"ok\"}"));
    let out = collector.snapshot();
    for event in before.iter().chain(&after) {
        assert_eq!(out.commands_for(event).len(), 1, "{}", out.describe());
    }
}
