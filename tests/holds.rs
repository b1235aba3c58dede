//! Waiting where a pipeline asks (issue 16, points 3-6), with the real worker on the real
//! broker: an `approval` step answered by an approve or reject request on the control
//! topic, or timing out; a `wait` step (bake time); a request for an execution that is
//! not waiting, ignored; a parked execution that survives a worker SIGKILL without
//! running its earlier steps again; a newer change superseding a waiting one; a freeze
//! window holding an `enable` but not a `disable`.

#[path = "support/kafka.rs"]
mod kafka;
#[path = "support/worker.rs"]
mod worker;

use std::time::Duration;

use chaosgate::contract::{ChangeKind, CommandKind, HoldKind, HoldStatus, ReasonCode, ids};
use serde_json::json;

use worker::{Harness, Listener, Outputs, Settings, change, experiment_yaml};

/// Upper bound for anything a test waits for: generous, so only a bug reaches it.
const PATIENCE: Duration = Duration::from_secs(90);

/// A pipeline for flags `glob`: a chaos step `quick` (experiment `quick`), then `extra`
/// (a YAML list of further steps), in one stage `canary`; `top` goes before `stages`.
fn pipeline(id: &str, glob: &str, top: &str, extra: &str) -> String {
    format!(
        "kind: pipeline\nid: {id}\nroutes:\n  - environment: test\n    flag: \"{glob}\"\n{top}stages:\n  - id: canary\n    type: feature_flag\n    steps:\n      - id: quick\n        experiment: quick\n        expected_resilience_score: 80\n{extra}"
    )
}

/// A harness with the `quick` experiment (a 300 ms marker fault, a tcp probe that holds)
/// and `pipeline_file`.
async fn harness(name: &str, pipeline_file: String) -> (Harness, Listener) {
    let servers = kafka::require_broker();
    let h = Harness::new(&servers, name, 1).await;
    let up = Listener::start().await;
    h.catalog_file(
        "exp.yaml",
        &experiment_yaml("quick", "300ms", &h.marker("quick"), &up.address),
    );
    h.catalog_file("pipeline.yaml", &pipeline_file);
    (h, up)
}

fn holds_of<'a>(outputs: &'a Outputs, event_id: &str) -> Vec<&'a chaosgate::contract::HoldRecord> {
    outputs
        .holds
        .iter()
        .map(|h| &h.value)
        .filter(|h| h.trigger_event_id == event_id)
        .collect()
}

/// Whether `event_id` has a hold record with `status`.
fn ended(outputs: &Outputs, event_id: &str, status: HoldStatus) -> bool {
    holds_of(outputs, event_id)
        .iter()
        .any(|h| h.status == status)
}

fn approval_step(timeout: &str, strategy: &str) -> String {
    format!(
        "      - id: oncall-ok\n        approval:\n          message: check the canary dashboards\n          timeout: {timeout}\n{strategy}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_execution_goes_on_and_its_records_say_who_approved() {
    let (h, _up) = harness(
        "hold-approve",
        pipeline("approve", "appr-*", "", &approval_step("5m", "")),
    )
    .await;
    let collector = h.collect();
    let _worker = h.spawn("w1", &h.config("w1", &Settings::default()));
    let event = change("appr-1", ChangeKind::Enable, None);
    h.produce_change(&event).await;
    let execution = ids::pipeline_execution_id(&event.event_id, "approve");

    let seen = h
        .wait_for(&collector, "the approval hold", PATIENCE, |o| {
            holds_of(o, &event.event_id)
                .iter()
                .any(|h| h.status == HoldStatus::Waiting)
        })
        .await;
    let waiting = holds_of(&seen, &event.event_id)[0].clone();
    assert_eq!(waiting.kind, HoldKind::Approval);
    assert_eq!(waiting.pipeline_execution_id, execution);
    assert!(
        waiting.reason.contains("check the canary dashboards"),
        "{}",
        waiting.reason
    );
    assert_eq!(
        waiting.step.as_ref().map(|s| s.id.as_str()),
        Some("oncall-ok")
    );
    assert!(
        seen.commands_for(&event.event_id).is_empty(),
        "no command while waiting"
    );
    // The chaos step before the approval ran once.
    assert_eq!(seen.final_runs_for(&event.event_id).len(), 1);

    // As an operator would: `chaosgate approve`. A wrong id or step sends nothing.
    let cli_config = h.config("cli", &Settings::default());
    let refused = |id: &str, step: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_chaosgate"))
            .args(["approve", id, "--step", step, "--config"])
            .arg(&cli_config)
            .output()
            .expect("chaosgate approve");
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stray = uuid::Uuid::new_v4().to_string();
    let said = refused(&stray, "canary/oncall-ok");
    assert!(
        said.contains("is not waiting at an approval step") && said.contains("nothing sent"),
        "{said}"
    );
    let said = refused(&execution, "canary/other");
    assert!(said.contains("waits at step canary/oncall-ok"), "{said}");
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_chaosgate"))
        .args([
            "approve",
            &execution,
            "--step",
            "canary/oncall-ok",
            "--by",
            "oncall@example.com",
        ])
        .args(["--comment", "dashboards look fine", "--config"])
        .arg(h.config("cli", &Settings::default()))
        .output()
        .expect("chaosgate approve");
    let said = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert!(
        said.contains(&format!("approve request for execution {execution} sent")),
        "{said}"
    );
    let done = h
        .wait_for(
            &collector,
            "the enable and the approved hold",
            PATIENCE,
            |o| {
                // Two topics, read by one consumer in no set order: wait for both records.
                !o.commands_for(&event.event_id).is_empty()
                    && ended(o, &event.event_id, HoldStatus::Approved)
            },
        )
        .await;
    let commands = done.commands_for(&event.event_id);
    assert_eq!(commands.len(), 1, "{}", done.describe());
    assert_eq!(commands[0].command, CommandKind::Enable);
    assert!(
        commands[0]
            .steps
            .iter()
            .any(|s| s.step_id == "oncall-ok" && s.summary.contains("oncall@example.com")),
        "{:?}",
        commands[0].steps
    );
    let approved = holds_of(&done, &event.event_id)
        .into_iter()
        .find(|h| h.status == HoldStatus::Approved)
        .expect("an approved hold record")
        .clone();
    assert_eq!(approved.decided_by.as_deref(), Some("oncall@example.com"));
    assert_eq!(approved.comment.as_deref(), Some("dashboards look fine"));
    assert!(approved.decided_at.is_some() && approved.ended_at.is_some());
    // The chaos step did not run again after the approval.
    assert_eq!(done.final_runs_for(&event.event_id).len(), 1);
    assert!(done.garbage.is_empty(), "{:?}", done.garbage);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_or_timed_out_approval_fails_the_pipeline_and_a_stray_request_is_ignored() {
    let (h, _up) = harness(
        "hold-reject",
        pipeline("reject", "rej-*", "", &approval_step("4s", "")),
    )
    .await;
    let collector = h.collect();
    let worker = h.spawn("w1", &h.config("w1", &Settings::default()));
    let rejected = change("rej-1", ChangeKind::Enable, None);
    let timed_out = change("rej-2", ChangeKind::Enable, None);
    h.produce_change(&rejected).await;
    h.produce_change(&timed_out).await;
    let execution = ids::pipeline_execution_id(&rejected.event_id, "reject");
    h.wait_for(&collector, "both approval holds", PATIENCE, |o| {
        holds_of(o, &rejected.event_id)
            .iter()
            .any(|h| h.status == HoldStatus::Waiting)
            && holds_of(o, &timed_out.event_id)
                .iter()
                .any(|h| h.status == HoldStatus::Waiting)
    })
    .await;
    // A request for an execution that is not waiting: logged and ignored.
    let stray = uuid::Uuid::new_v4().to_string();
    h.produce_approval(json!({"decision": "approve", "pipeline_execution_id": stray}))
        .await;
    h.produce_approval(json!({
        "decision": "reject",
        "pipeline_execution_id": execution,
        "requested_by": "sre@example.com",
        "comment": "error budget spent"
    }))
    .await;
    let done = h
        .wait_for(
            &collector,
            "both commands and both ended holds",
            PATIENCE,
            |o| {
                !o.commands_for(&rejected.event_id).is_empty()
                    && !o.commands_for(&timed_out.event_id).is_empty()
                    && ended(o, &rejected.event_id, HoldStatus::Rejected)
                    && ended(o, &timed_out.event_id, HoldStatus::TimedOut)
            },
        )
        .await;
    let reject = done.commands_for(&rejected.event_id);
    assert_eq!(reject.len(), 1);
    assert_eq!(reject[0].command, CommandKind::Disable);
    assert_eq!(reject[0].reason_code, ReasonCode::Failed);
    assert!(
        reject[0].reason.contains("rejected by sre@example.com"),
        "{}",
        reject[0].reason
    );
    let timeout = done.commands_for(&timed_out.event_id);
    assert_eq!(timeout.len(), 1);
    assert_eq!(timeout[0].command, CommandKind::Disable);
    assert!(
        timeout[0].reason.contains("timeout"),
        "{}",
        timeout[0].reason
    );
    assert!(
        holds_of(&done, &rejected.event_id)
            .iter()
            .any(|h| h.status == HoldStatus::Rejected)
    );
    assert!(
        holds_of(&done, &timed_out.event_id)
            .iter()
            .any(|h| h.status == HoldStatus::TimedOut)
    );
    let log = std::fs::read_to_string(&worker.log).unwrap_or_default();
    assert!(
        log.contains("approval request ignored") && log.contains(&stray),
        "the stray request is logged as ignored:\n{}",
        h.log_tails()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_step_holds_the_pipeline_for_its_bake_time() {
    let bake = "      - id: bake\n        wait: 3s\n";
    let (h, _up) = harness("hold-wait", pipeline("bake", "bake-*", "", bake)).await;
    let collector = h.collect();
    let _worker = h.spawn("w1", &h.config("w1", &Settings::default()));
    let event = change("bake-1", ChangeKind::Enable, None);
    h.produce_change(&event).await;
    let done = h
        .wait_for(
            &collector,
            "the enable after the bake time",
            PATIENCE,
            |o| {
                !o.commands_for(&event.event_id).is_empty()
                    && ended(o, &event.event_id, HoldStatus::Done)
            },
        )
        .await;
    let holds = holds_of(&done, &event.event_id);
    let waiting = holds
        .iter()
        .find(|h| h.status == HoldStatus::Waiting)
        .expect("waiting");
    let ended = holds
        .iter()
        .find(|h| h.status == HoldStatus::Done)
        .expect("done");
    assert_eq!(waiting.kind, HoldKind::Wait);
    let held = ended.ended_at.expect("ended_at") - waiting.since;
    assert!(held >= chrono::Duration::milliseconds(2900), "held {held}");
    let command = done.commands_for(&event.event_id)[0];
    assert_eq!(command.command, CommandKind::Enable);
    assert!(command.issued_at >= waiting.since + chrono::Duration::milliseconds(2900));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_execution_survives_a_worker_kill_and_never_runs_its_earlier_steps_again() {
    let (h, _up) = harness(
        "hold-kill",
        pipeline("survive", "surv-*", "", &approval_step("5m", "")),
    )
    .await;
    let collector = h.collect();
    let config = h.config("w1", &Settings::default());
    let mut first = h.spawn("w1", &config);
    let event = change("surv-1", ChangeKind::Enable, None);
    h.produce_change(&event).await;
    let execution = ids::pipeline_execution_id(&event.event_id, "survive");
    h.wait_for(&collector, "the approval hold", PATIENCE, |o| {
        holds_of(o, &event.event_id)
            .iter()
            .any(|h| h.status == HoldStatus::Waiting)
    })
    .await;
    first.kill();
    // Approved while no worker runs: the next one finds the request and goes on.
    h.produce_approval(json!({"decision": "approve", "pipeline_execution_id": execution}))
        .await;
    let _second = h.spawn("w2", &h.config("w2", &Settings::default()));
    let done = h
        .wait_for(&collector, "the enable after the restart", PATIENCE, |o| {
            !o.commands_for(&event.event_id).is_empty()
        })
        .await;
    let commands = done.commands_for(&event.event_id);
    assert_eq!(commands.len(), 1, "{}", done.describe());
    assert_eq!(commands[0].command, CommandKind::Enable);
    assert_eq!(
        done.final_runs_for(&event.event_id).len(),
        1,
        "the chaos step before the approval ran once: {}",
        done.describe()
    );
    // Nothing more comes (a second command would be a duplicate).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(collector.snapshot().commands_for(&event.event_id).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_change_supersedes_a_waiting_execution_with_its_failure_outcome() {
    let (h, _up) = harness(
        "hold-supersede",
        pipeline("supersede", "sup-*", "", &approval_step("5m", "")),
    )
    .await;
    let collector = h.collect();
    let _worker = h.spawn("w1", &h.config("w1", &Settings::default()));
    let waiting = change("sup-1", ChangeKind::Enable, None);
    h.produce_change(&waiting).await;
    h.wait_for(&collector, "the approval hold", PATIENCE, |o| {
        holds_of(o, &waiting.event_id)
            .iter()
            .any(|h| h.status == HoldStatus::Waiting)
    })
    .await;
    let newer = change("sup-1", ChangeKind::Disable, None);
    h.produce_change(&newer).await;
    let done = h
        .wait_for(
            &collector,
            "both commands and the superseded hold",
            PATIENCE,
            |o| {
                !o.commands_for(&waiting.event_id).is_empty()
                    && !o.commands_for(&newer.event_id).is_empty()
                    && ended(o, &waiting.event_id, HoldStatus::Superseded)
            },
        )
        .await;
    let first = done
        .commands
        .iter()
        .position(|c| c.value.causation_event_id == waiting.event_id);
    let second = done
        .commands
        .iter()
        .position(|c| c.value.causation_event_id == newer.event_id);
    assert!(
        first < second,
        "the superseded execution is answered first: {}",
        done.describe()
    );
    let superseded = done.commands_for(&waiting.event_id)[0];
    assert_eq!(superseded.command, CommandKind::Disable);
    assert_eq!(superseded.reason_code, ReasonCode::Aborted);
    assert!(
        superseded.reason.contains(&newer.event_id),
        "{}",
        superseded.reason
    );
    assert!(
        holds_of(&done, &waiting.event_id)
            .iter()
            .any(|h| h.status == HoldStatus::Superseded)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freeze_window_holds_an_enable_but_not_a_disable() {
    // A window that began at the start of this minute (UTC) and lasts until 20 s after
    // now: the hold waits for its end.
    let now = chrono::Utc::now();
    let minute_start = now.timestamp() - now.timestamp() % 60;
    let start = chrono::DateTime::from_timestamp(minute_start, 0).expect("minute");
    let freeze = format!(
        "freeze_windows:\n  - name: release-freeze\n    start: \"{}\"\n    duration: {}s\n    reason: test freeze\n",
        start.format("%M %H %d %m *"),
        now.timestamp() - minute_start + 20
    );
    let (h, _up) = harness("hold-freeze", pipeline("frozen", "frz-*", &freeze, "")).await;
    let collector = h.collect();
    let _worker = h.spawn("w1", &h.config("w1", &Settings::default()));
    let enable = change("frz-1", ChangeKind::Enable, None);
    let disable = change("frz-2", ChangeKind::Disable, None);
    h.produce_change(&enable).await;
    h.produce_change(&disable).await;
    let seen = h
        .wait_for(
            &collector,
            "the disable, and the enable held",
            PATIENCE,
            |o| {
                !o.commands_for(&disable.event_id).is_empty()
                    && holds_of(o, &enable.event_id)
                        .iter()
                        .any(|h| h.status == HoldStatus::Waiting)
            },
        )
        .await;
    assert_eq!(
        seen.commands_for(&disable.event_id)[0].reason_code,
        ReasonCode::Requested
    );
    let held = holds_of(&seen, &enable.event_id)[0].clone();
    assert_eq!(held.kind, HoldKind::Freeze);
    assert_eq!(held.window.as_deref(), Some("release-freeze"));
    assert!(held.reason.contains("release-freeze"), "{}", held.reason);
    assert!(
        seen.commands_for(&enable.event_id).is_empty(),
        "held during the window"
    );
    let done = h
        .wait_for(&collector, "the enable after the window", PATIENCE, |o| {
            !o.commands_for(&enable.event_id).is_empty()
        })
        .await;
    let command = done.commands_for(&enable.event_id)[0];
    assert_eq!(command.command, CommandKind::Enable);
    assert!(
        command.issued_at >= held.until.expect("until"),
        "issued after the window"
    );
}
