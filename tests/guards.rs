//! Guards after an `enable` (issue 16, points 1-2), with the real worker on the real
//! broker and a real HTTP target the test flips from healthy to failing: a guard that
//! fires (exactly one `disable` after the `enable`, with its reason, and a `fired` guard
//! record naming it), one that expires quietly, one ended by a newer change of the flag,
//! and one resumed by a new worker after a SIGKILL (exactly one guard command).

#[path = "support/health.rs"]
mod health;
#[path = "support/kafka.rs"]
mod kafka;
#[path = "support/worker.rs"]
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chaosgate::contract::run_record::Verdict;
use chaosgate::contract::{
    ChangeKind, CommandKind, FlagChange, FlagCommand, GuardRecord, GuardStatus, ReasonCode,
};

use health::{Health, start_health_target};
use worker::{Collector, Harness, Listener, Outputs, Settings, change, experiment_yaml};

/// Upper bound for anything a test waits for: generous, so only a bug reaches it.
const PATIENCE: Duration = Duration::from_secs(90);

/// A pipeline for flags `glob` with one chaos step (experiment `quick`) and a guard of
/// `duration` watching `GET http://target/health` every 300 ms (two failed attempts in a
/// row fire it).
fn pipeline(id: &str, glob: &str, duration: &str, target: SocketAddr) -> String {
    format!(
        "kind: pipeline\nid: {id}\nroutes:\n  - environment: test\n    flag: \"{glob}\"\n\
         guard:\n  duration: {duration}\n  probes:\n    - name: checkout-health\n      \
         run_properties: {{polling_interval: 300ms, attempts: 2, interval: 200ms, timeout: 2s}}\n      \
         http: {{url: 'http://{target}/health'}}\n\
         stages:\n  - id: canary\n    type: feature_flag\n    steps:\n      - id: quick\n        \
         experiment: quick\n        expected_resilience_score: 80\n"
    )
}

/// A harness with the `quick` experiment (a 300 ms marker fault, a tcp probe that holds),
/// a guarded pipeline, and the guard's HTTP target.
/// Also returns the guard probe's failure on the target once it answers 503.
async fn harness(
    name: &str,
    glob: &str,
    duration: &str,
) -> (Harness, Listener, Arc<Health>, String) {
    let servers = kafka::require_broker();
    let h = Harness::new(&servers, name, 1).await;
    let up = Listener::start().await;
    let (target, health) = start_health_target().await;
    h.catalog_file(
        "exp.yaml",
        &experiment_yaml("quick", "300ms", &h.marker("quick"), &up.address),
    );
    h.catalog_file("pipeline.yaml", &pipeline(name, glob, duration, target));
    let error = format!("GET http://{target}/health: status 503 not in [200-299]");
    (h, up, health, error)
}

/// The guard records of the `enable` answering `event`, in the order read.
fn guards_of<'a>(outputs: &'a Outputs, event: &FlagChange) -> Vec<&'a GuardRecord> {
    outputs
        .guards
        .iter()
        .map(|g| &g.value)
        .filter(|g| g.trigger_event_id == event.event_id)
        .collect()
}

/// Waits for the `enable` answering `event` and its guard's `watching` record.
async fn enabled_and_watching(h: &Harness, collector: &Collector, event: &FlagChange) -> Outputs {
    h.wait_for(
        collector,
        "the enable and a watching guard",
        PATIENCE,
        |o| {
            !o.commands_for(&event.event_id).is_empty()
                && guards_of(o, event)
                    .iter()
                    .any(|g| g.status == GuardStatus::Watching)
        },
    )
    .await
}

/// The guard's end record (any status but `watching`), if any.
fn ended<'a>(outputs: &'a Outputs, event: &FlagChange) -> Option<&'a GuardRecord> {
    guards_of(outputs, event)
        .into_iter()
        .find(|g| g.status != GuardStatus::Watching)
}

/// Commands of `flag`, in the order read.
fn commands_of<'a>(outputs: &'a Outputs, flag: &str) -> Vec<&'a FlagCommand> {
    outputs
        .commands
        .iter()
        .map(|c| &c.value)
        .filter(|c| c.flag == flag)
        .collect()
}

/// Asserts the guard fired on the failing target: one `disable` after the `enable`, both
/// answering `event`, the reason as the guard record has it, the record naming the command.
fn assert_fired_once(outputs: &Outputs, event: &FlagChange, target_error: &str) {
    let commands = outputs.commands_for(&event.event_id);
    let kinds: Vec<CommandKind> = commands.iter().map(|c| c.command).collect();
    assert_eq!(
        kinds,
        [CommandKind::Enable, CommandKind::Disable],
        "{}",
        outputs.describe()
    );
    let disable = commands[1];
    assert_eq!(disable.reason_code, ReasonCode::GuardFired);
    let seconds = disable
        .reason
        .strip_prefix("guard checkout-health failed ")
        .and_then(|rest| rest.strip_suffix(&format!(" s after enable: {target_error}")))
        .unwrap_or_else(|| panic!("unexpected reason: {}", disable.reason));
    assert!(seconds.parse::<u32>().is_ok(), "{}", disable.reason);

    let record = ended(outputs, event).expect("a guard end record");
    assert_eq!(record.status, GuardStatus::Fired);
    assert_eq!(record.reason.as_deref(), Some(disable.reason.as_str()));
    assert_eq!(
        record.command_id.as_deref(),
        Some(disable.command_id.as_str())
    );
    assert_eq!(record.enable_command_id, commands[0].command_id);
    assert_eq!(record.on_failure, CommandKind::Disable);
    assert_eq!(record.probes.len(), 1);
    assert_eq!(record.probes[0].verdict, Verdict::Failed);
    assert_eq!(record.probes[0].last_error.as_deref(), Some(target_error));
    let ended_at = record.ended_at.expect("ended_at");
    assert!(record.started_at < ended_at && ended_at < record.deadline);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_fires_once_when_its_target_starts_failing_after_the_enable() {
    let (h, _up, health, error) = harness("guard-fire", "gfire-*", "5m").await;
    let collector = h.collect();
    let _worker = h.spawn("w1", &h.config("w1", &Settings::default()));
    let event = change("gfire-1", ChangeKind::Enable, None);
    h.produce_change(&event).await;

    let watching = enabled_and_watching(&h, &collector, &event).await;
    assert_eq!(
        watching.commands_for(&event.event_id)[0].command,
        CommandKind::Enable
    );
    // Checks that pass fire nothing.
    h.wait_for(&collector, "a few passing guard checks", PATIENCE, |_| {
        health.answers().len() >= 3
    })
    .await;
    assert!(ended(&collector.snapshot(), &event).is_none());

    health.failing.store(true, Ordering::SeqCst);
    h.wait_for(&collector, "the guard's command", PATIENCE, |o| {
        o.commands_for(&event.event_id).len() >= 2 && ended(o, &event).is_some()
    })
    .await;
    // Nothing more comes: a second guard command would be a duplicate.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let done = collector.snapshot();
    assert_fired_once(&done, &event, &error);
    let answers = health.answers();
    assert!(
        answers.ends_with(&[503, 503]) && answers[..answers.len() - 2].iter().all(|s| *s == 200),
        "fired after two failed attempts in a row, on the first failing check: {answers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_whose_target_holds_expires_quietly() {
    let (h, _up, health, _) = harness("guard-expire", "gexp-*", "3s").await;
    let collector = h.collect();
    let _worker = h.spawn("w1", &h.config("w1", &Settings::default()));
    let event = change("gexp-1", ChangeKind::Enable, None);
    h.produce_change(&event).await;
    let seen = h
        .wait_for(&collector, "the guard's end", PATIENCE, |o| {
            ended(o, &event).is_some()
        })
        .await;
    let record = ended(&seen, &event).unwrap().clone();
    assert_eq!(record.status, GuardStatus::Expired, "{record:?}");
    assert_eq!(record.command_id, None);
    assert_eq!(record.probes[0].verdict, Verdict::Passed);
    assert!(record.probes[0].attempts >= 3, "{record:?}");
    assert!(record.ended_at.expect("ended_at") >= record.deadline);
    assert_eq!(
        record.deadline - record.started_at,
        chrono::Duration::seconds(3)
    );

    // A target failing after the guard expired fires nothing.
    health.failing.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let done = collector.snapshot();
    let commands = done.commands_for(&event.event_id);
    assert_eq!(commands.len(), 1, "{}", done.describe());
    assert_eq!(commands[0].command, CommandKind::Enable);
    assert_eq!(health.answers().iter().filter(|s| **s == 503).count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_change_of_the_flag_ends_the_guard_without_a_command() {
    let (h, _up, health, _) = harness("guard-supersede", "gsup-*", "5m").await;
    let collector = h.collect();
    let _worker = h.spawn("w1", &h.config("w1", &Settings::default()));
    let event = change("gsup-1", ChangeKind::Enable, None);
    h.produce_change(&event).await;
    enabled_and_watching(&h, &collector, &event).await;

    let newer = change("gsup-1", ChangeKind::Disable, None);
    h.produce_change(&newer).await;
    let seen = h
        .wait_for(&collector, "the newer change's command", PATIENCE, |o| {
            !o.commands_for(&newer.event_id).is_empty() && ended(o, &event).is_some()
        })
        .await;
    let record = ended(&seen, &event).unwrap().clone();
    assert_eq!(record.status, GuardStatus::Superseded, "{record:?}");
    assert_eq!(record.command_id, None);

    // The target fails after the newer change: the ended guard issues nothing.
    health.failing.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let done = collector.snapshot();
    let kinds: Vec<(CommandKind, ReasonCode)> = commands_of(&done, "gsup-1")
        .iter()
        .map(|c| (c.command, c.reason_code))
        .collect();
    assert_eq!(
        kinds,
        [
            (CommandKind::Enable, ReasonCode::Passed),
            (CommandKind::Disable, ReasonCode::Requested)
        ],
        "{}",
        done.describe()
    );
    assert_eq!(health.answers().iter().filter(|s| **s == 503).count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_resumed_after_a_worker_sigkill_issues_exactly_one_command() {
    let (h, _up, health, error) = harness("guard-kill", "gkill-*", "5m").await;
    let collector = h.collect();
    let mut first = h.spawn("w1", &h.config("w1", &Settings::default()));
    let event = change("gkill-1", ChangeKind::Enable, None);
    h.produce_change(&event).await;
    enabled_and_watching(&h, &collector, &event).await;
    first.kill();
    // The target fails while no worker runs: the next owner resumes the guard and fires.
    health.failing.store(true, Ordering::SeqCst);
    let _second = h.spawn("w2", &h.config("w2", &Settings::default()));
    h.wait_for(&collector, "the resumed guard's command", PATIENCE, |o| {
        o.commands_for(&event.event_id).len() >= 2 && ended(o, &event).is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let done = collector.snapshot();
    assert_fired_once(&done, &event, &error);
    let ends: Vec<GuardStatus> = guards_of(&done, &event)
        .iter()
        .map(|g| g.status)
        .filter(|s| *s != GuardStatus::Watching)
        .collect();
    assert_eq!(ends, [GuardStatus::Fired], "{}", done.describe());
}
