//! Holds and guards in the chaos experiments view: hold records
//! (`dev.chaosgate.pipeline.hold.v1`), guard records (`dev.chaosgate.guard.run.v1`) and
//! approval requests (`dev.chaosgate.control.approval.v1`), built with the real contract
//! types, published on the real broker, read by the real ingest into SQLite, and seen
//! through the JSON API, the server-rendered pages and (second test) headless Chromium.
//!
//! The scenario: an execution waiting for an approval (with a request naming it), one
//! held by a freeze window (no run yet), one approved (whose stale `waiting` copy,
//! published after its final record, must not bring it back), and one whose guard fired
//! a `disable` after its `enable`.

#[path = "support/browser.rs"]
mod browser;
#[path = "support/kafka.rs"]
mod kafka;
#[path = "support/view.rs"]
mod view;
#[path = "support/web.rs"]
mod web;

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::Value;

use chaosgate::contract::control::{APPROVAL_REQUEST_TYPE, approval_request_example};
use chaosgate::contract::guard_record::{GUARD_RECORD_TYPE, guard_record_example};
use chaosgate::contract::hold_record::{HOLD_RECORD_TYPE, hold_record_example};
use chaosgate::contract::run_record::{FlagRef, StepRef};
use chaosgate::contract::{
    ApprovalDecision, ChangeKind, CloudEvent, CommandKind, GuardRecord, GuardStatus, HoldKind,
    HoldRecord, HoldStatus, KafkaMessage, ProbeResult, ReasonCode, RunStatus, Verdict, ids,
};
use chaosgate::view::web::WebOptions;
use chaosgate::view::{Location, query};

use web::{Served, client};

const PATIENCE: Duration = Duration::from_secs(90);
const PIPELINE: &str = "holds-checkout";

fn event(event_type: &str, id: String, data: &impl serde::Serialize) -> CloudEvent {
    CloudEvent {
        id,
        source: "/chaosgate/test".into(),
        event_type: event_type.into(),
        time: Some(Utc::now()),
        subject: None,
        extensions: Default::default(),
        data: serde_json::to_value(data).expect("json"),
    }
}

/// A hold record as the worker publishes it: binary mode, keyed by execution id.
fn hold_message(hold: &HoldRecord) -> KafkaMessage {
    event(
        HOLD_RECORD_TYPE,
        format!("{}-{}", hold.hold_id, hold.status.as_str()),
        hold,
    )
    .to_binary(Some(&hold.pipeline_execution_id))
}

/// A guard record as the worker publishes it: binary mode, keyed by execution id.
fn guard_message(guard: &GuardRecord) -> KafkaMessage {
    event(
        GUARD_RECORD_TYPE,
        format!("{}-{}", guard.guard_id, guard.status.as_str()),
        guard,
    )
    .to_binary(Some(&guard.pipeline_execution_id))
}

/// A `waiting` hold of `kind` for the change `event_id` of `flag`, at `stage/step` (none
/// for a freeze).
fn hold(
    event_id: &str,
    flag: &str,
    kind: HoldKind,
    place: Option<(&str, &str)>,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    reason: &str,
) -> HoldRecord {
    let execution = ids::pipeline_execution_id(event_id, PIPELINE);
    let mut hold = hold_record_example();
    hold.hold_id = ids::hold_id(
        &execution,
        &place.map_or_else(|| "freeze".to_string(), |(a, b)| format!("{a}/{b}")),
    );
    hold.kind = kind;
    hold.status = HoldStatus::Waiting;
    hold.pipeline_id = PIPELINE.into();
    hold.pipeline_execution_id = execution;
    let example_stage = hold.stage.clone().expect("the example has a stage");
    hold.stage = place.map(|(stage, _)| {
        let mut at = example_stage.clone();
        at.id = stage.into();
        at
    });
    hold.step = place.map(|(_, step)| StepRef {
        id: step.into(),
        name: format!("Step {step}"),
    });
    hold.flag = FlagRef {
        project: "shop".into(),
        environment: "production".into(),
        key: flag.into(),
    };
    hold.trigger_event_id = event_id.into();
    hold.trigger_change_kind = ChangeKind::Enable;
    hold.since = since;
    hold.until = Some(until);
    hold.ended_at = None;
    hold.reason = reason.into();
    hold.window = None;
    hold.decided_by = None;
    hold.decided_at = None;
    hold.comment = None;
    hold
}

/// What the scenario published.
struct Scenario {
    /// Waiting for an approval at `canary/oncall-ok`.
    approval: HoldRecord,
    /// Held by the freeze window `weekend`.
    freeze: HoldRecord,
    /// Approved (final), after a chaos run.
    approved: HoldRecord,
    /// The guard of the fourth execution, fired.
    guard: GuardRecord,
    /// The `disable` the guard issued.
    guard_command_id: String,
}

/// Publishes the four executions (see the module doc).
fn publish(producer: &rdkafka::producer::BaseProducer, topics: &[String; 5]) -> Scenario {
    let now = Utc::now();
    let ago = |minutes: i64| now - chrono::Duration::minutes(minutes);
    let ahead = |minutes: i64| now + chrono::Duration::minutes(minutes);
    let flag_change = |event_id: &str, flag: &str, at: DateTime<Utc>| {
        let mut change = view::change(event_id, at);
        change.flag = flag.into();
        change.project = "shop".into();
        change.environment = "production".into();
        view::send(producer, &topics[2], &view::change_message(&change));
    };
    let run = |event_id: &str, flag: &str, at: DateTime<Utc>| {
        let mut run = view::run_record(event_id, PIPELINE, "latency", 1, RunStatus::Passed, at);
        run.flag.key = flag.into();
        run.flag.project = "shop".into();
        run.flag.environment = "production".into();
        view::send(producer, &topics[0], &view::run_message(&run));
        run
    };

    // 1. Waiting for an approval after a passed chaos step; a request names it.
    let e1 = uuid::Uuid::new_v4().to_string();
    flag_change(&e1, "checkout-v2", ago(20));
    run(&e1, "checkout-v2", ago(19));
    let approval = hold(
        &e1,
        "checkout-v2",
        HoldKind::Approval,
        Some(("canary", "oncall-ok")),
        ago(18),
        ahead(222),
        "waiting for an approve or reject request naming this execution: dashboards green?",
    );
    view::send(producer, &topics[0], &hold_message(&approval));
    let mut request = approval_request_example();
    request.decision = ApprovalDecision::Reject;
    request.pipeline_execution_id = approval.pipeline_execution_id.clone();
    request.step = Some("canary/other-step".into());
    request.requested_by = Some("night-shift@example.com".into());
    request.comment = Some("wrong step, ignored by the worker".into());
    view::send(
        producer,
        &topics[4],
        &event(
            APPROVAL_REQUEST_TYPE,
            uuid::Uuid::new_v4().to_string(),
            &request,
        )
        .to_binary(Some(&approval.pipeline_execution_id)),
    );

    // 2. Held by a freeze window before any stage: no run at all.
    let e2 = uuid::Uuid::new_v4().to_string();
    flag_change(&e2, "search-ranking", ago(30));
    let mut freeze = hold(
        &e2,
        "search-ranking",
        HoldKind::Freeze,
        None,
        ago(30),
        ahead(600),
        "",
    );
    freeze.reason = format!(
        "held by freeze window \"weekend\" (every Friday at 18:00 Europe/Berlin, for 63h: no \
         flag changes over the weekend) until {}",
        ahead(600).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    freeze.window = Some("weekend".into());
    view::send(producer, &topics[0], &hold_message(&freeze));

    // 3. Approved, then a stale copy of its waiting record at a higher offset.
    let e3 = uuid::Uuid::new_v4().to_string();
    flag_change(&e3, "banner-color", ago(50));
    let waiting = hold(
        &e3,
        "banner-color",
        HoldKind::Approval,
        Some(("canary", "oncall-ok")),
        ago(49),
        ahead(191),
        "waiting for an approve or reject request naming this execution",
    );
    view::send(producer, &topics[0], &hold_message(&waiting));
    let mut approved = waiting.clone();
    approved.status = HoldStatus::Approved;
    approved.ended_at = Some(ago(45));
    approved.decided_by = Some("oncall@example.com".into());
    approved.decided_at = Some(ago(45));
    approved.comment = Some("dashboards look fine after the canary".into());
    approved.reason =
        "approved by oncall@example.com: dashboards look fine after the canary".into();
    view::send(producer, &topics[0], &hold_message(&approved));
    view::send(producer, &topics[0], &hold_message(&waiting));

    // 4. Enabled, then its guard fired a disable.
    let e4 = uuid::Uuid::new_v4().to_string();
    flag_change(&e4, "payments-v3", ago(40));
    let run4 = run(&e4, "payments-v3", ago(39));
    let mut enable = view::command(&e4, PIPELINE, &[&run4], ago(38));
    enable.flag = "payments-v3".into();
    enable.project = "shop".into();
    enable.environment = "production".into();
    view::send(producer, &topics[1], &view::command_message(&enable));
    let mut guard = guard_record_example();
    guard.guard_id = ids::guard_id(&enable.command_id);
    guard.status = GuardStatus::Watching;
    guard.pipeline_id = PIPELINE.into();
    guard.pipeline_execution_id = ids::pipeline_execution_id(&e4, PIPELINE);
    guard.flag = FlagRef {
        project: "shop".into(),
        environment: "production".into(),
        key: "payments-v3".into(),
    };
    guard.trigger_event_id = e4.clone();
    guard.enable_command_id = enable.command_id.clone();
    guard.on_failure = CommandKind::Disable;
    guard.started_at = ago(38);
    guard.deadline = ago(8);
    guard.ended_at = None;
    guard.probes = Vec::new();
    guard.reason = None;
    guard.command_id = None;
    view::send(producer, &topics[0], &guard_message(&guard));
    let guard_command_id = uuid::Uuid::new_v4().to_string();
    let mut fired = guard.clone();
    fired.status = GuardStatus::Fired;
    fired.ended_at = Some(ago(34));
    fired.probes = vec![ProbeResult {
        name: "checkout-errors".into(),
        probe_type: "prometheus".into(),
        mode: "continuous".into(),
        verdict: Verdict::Failed,
        attempts: 3,
        last_error: Some("error rate 0.07 > 0.02".into()),
        first_check_at: Some(ago(38)),
        last_check_at: Some(ago(34)),
    }];
    fired.reason =
        Some("guard checkout-errors failed 4 min after enable: error rate 0.07 > 0.02".into());
    fired.command_id = Some(guard_command_id.clone());
    view::send(producer, &topics[0], &guard_message(&fired));
    let mut disable = enable.clone();
    disable.command_id = guard_command_id.clone();
    disable.command = CommandKind::Disable;
    // As the worker writes it: the same execution and change as the enable.
    disable.reason_code = ReasonCode::GuardFired;
    disable.reason = fired.reason.clone().unwrap_or_default();
    disable.issued_at = ago(34);
    disable.steps = Vec::new();
    view::send(producer, &topics[1], &view::command_message(&disable));

    view::flush(producer);
    Scenario {
        approval,
        freeze,
        approved,
        guard: fired,
        guard_command_id,
    }
}

/// The scenario published on fresh topics `name`, ingested into a store, served.
struct Setup {
    s: Scenario,
    store: chaosgate::view::Store,
    ingest: chaosgate::view::Ingest,
    served: Served,
}

async fn setup(name: &str) -> Setup {
    let servers = kafka::require_broker();
    let topics = view::topics(&servers, name).await;
    let producer = view::producer(&servers);
    let s = publish(&producer, &topics);
    let kafka = view::kafka_config(&servers, view::refs(&topics));
    let (store, ingest) = view::start(&kafka, &Location::Memory);
    assert!(
        ingest.status().wait_caught_up(PATIENCE).await,
        "ingest caught up: {:?}",
        ingest.status().failed()
    );
    let served = Served::start(store.clone(), ingest.status(), WebOptions::default()).await;
    Setup {
        s,
        store,
        ingest,
        served,
    }
}

/// `GET url` as JSON, with its status.
async fn json(http: &reqwest::Client, url: String) -> (StatusCode, Value) {
    let response = http.get(&url).send().await.expect("get");
    let status = response.status();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, value)
}

async fn html(http: &reqwest::Client, url: String) -> String {
    let response = http.get(&url).send().await.expect("get");
    assert_eq!(response.status(), StatusCode::OK, "{url}");
    response.text().await.expect("body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_and_guards_appear_in_the_api_and_pages_and_a_final_status_stays_final() {
    let Setup {
        s,
        store,
        ingest,
        served,
    } = setup("view-holds").await;
    // Nothing was refused: the new types are read, not listed as problems.
    let problems = store
        .read(|c| query::problems(c, None))
        .await
        .expect("problems");
    assert!(problems.items.is_empty(), "{problems:?}");

    let http = client();

    // The approval that waits: its execution says so, with the hold and the request.
    let e1 = &s.approval.pipeline_execution_id;
    let (status, detail) = json(&http, served.at(&format!("/api/executions/{e1}"))).await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    assert_eq!(detail["execution"]["waiting"], "approval", "{detail}");
    assert_eq!(detail["execution"]["status"], "running", "{detail}");
    let holds = detail["holds"].as_array().expect("holds");
    assert_eq!(holds.len(), 1, "{detail}");
    assert_eq!(holds[0]["kind"], "approval");
    assert_eq!(holds[0]["status"], "waiting");
    assert_eq!(holds[0]["step_id"], "oncall-ok");
    assert_eq!(holds[0]["hold_id"], s.approval.hold_id.as_str());
    assert_eq!(detail["stages"][0]["steps"][0]["step_id"], "latency");
    let approvals = detail["approvals"].as_array().expect("approvals");
    assert_eq!(approvals.len(), 1, "{detail}");
    assert_eq!(approvals[0]["decision"], "reject");
    assert_eq!(approvals[0]["requested_by"], "night-shift@example.com");
    let page = html(&http, served.at(&format!("/executions/{e1}"))).await;
    for expected in [
        "id=\"waiting-badge\"",
        "waiting: approval",
        "id=\"hold-table\"",
        "Step oncall-ok",
        "dashboards green?",
        "id=\"approve-hint\"",
        APPROVAL_REQUEST_TYPE,
        &format!("&quot;pipeline_execution_id&quot;: &quot;{e1}&quot;"),
        "&quot;step&quot;: &quot;canary/oncall-ok&quot;",
        "night-shift@example.com",
    ] {
        assert!(
            page.contains(expected),
            "{expected:?} not on the execution page"
        );
    }

    // The overview and the pipeline's page list what waits, oldest first, with the ids.
    let (_, overview) = json(&http, served.at("/api/overview")).await;
    let waiting: Vec<(&str, &str)> = overview["waiting"]
        .as_array()
        .expect("waiting")
        .iter()
        .map(|h| {
            (
                h["pipeline_execution_id"].as_str().unwrap_or_default(),
                h["kind"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        waiting,
        [
            (s.freeze.pipeline_execution_id.as_str(), "freeze"),
            (e1.as_str(), "approval")
        ],
        "{overview}"
    );
    let front = html(&http, served.at("/")).await;
    assert!(
        front.contains("id=\"waiting\""),
        "the overview lists what waits"
    );
    assert!(
        front.contains(&format!(">{e1}</a>")),
        "with the full execution id"
    );
    assert!(front.contains("freeze window weekend"));
    let (_, pipeline) = json(&http, served.at(&format!("/api/pipelines/{PIPELINE}"))).await;
    assert_eq!(
        pipeline["waiting"].as_array().map(Vec::len),
        Some(2),
        "{pipeline}"
    );
    let strip_waiting = pipeline["executions"]
        .as_array()
        .expect("executions")
        .iter()
        .filter(|e| !e["waiting"].is_null())
        .count();
    assert_eq!(strip_waiting, 2, "{pipeline}");
    let pipeline_page = html(&http, served.at(&format!("/pipelines/{PIPELINE}"))).await;
    assert!(
        pipeline_page.contains("class=\"waiting\""),
        "the strip marks waiting executions"
    );
    assert!(pipeline_page.contains("id=\"waiting\""));

    // The freeze: an execution without runs, known by its hold.
    let e2 = &s.freeze.pipeline_execution_id;
    let (_, frozen) = json(&http, served.at(&format!("/api/executions/{e2}"))).await;
    assert_eq!(frozen["execution"]["waiting"], "freeze", "{frozen}");
    assert_eq!(frozen["holds"][0]["window"], "weekend", "{frozen}");
    assert_eq!(frozen["stages"].as_array().map(Vec::len), Some(0));
    let frozen_page = html(&http, served.at(&format!("/executions/{e2}"))).await;
    assert!(frozen_page.contains("id=\"freeze-note\""));
    assert!(frozen_page.contains("every Friday at 18:00 Europe/Berlin"));

    // The approved hold stays approved although a stale waiting copy came after it.
    let e3 = &s.approved.pipeline_execution_id;
    let (_, done) = json(&http, served.at(&format!("/api/executions/{e3}"))).await;
    assert_eq!(done["holds"].as_array().map(Vec::len), Some(1), "{done}");
    assert_eq!(done["holds"][0]["status"], "approved", "{done}");
    assert_eq!(done["holds"][0]["decided_by"], "oncall@example.com");
    assert_eq!(
        done["holds"][0]["comment"],
        "dashboards look fine after the canary"
    );
    assert_eq!(done["execution"]["waiting"], Value::Null, "{done}");
    let done_page = html(&http, served.at(&format!("/executions/{e3}"))).await;
    assert!(done_page.contains("oncall@example.com"));
    assert!(
        !done_page.contains("id=\"approve-hint\""),
        "nothing to approve any more"
    );

    // The guard: fired, its probes, its reason and the command it issued.
    let e4 = &s.guard.pipeline_execution_id;
    let (_, guarded) = json(&http, served.at(&format!("/api/executions/{e4}"))).await;
    let guards = guarded["guards"].as_array().expect("guards");
    assert_eq!(guards.len(), 1, "{guarded}");
    assert_eq!(guards[0]["status"], "fired");
    assert_eq!(guards[0]["command_id"], s.guard_command_id.as_str());
    assert_eq!(
        guards[0]["probes"][0]["last_error"],
        "error rate 0.07 > 0.02"
    );
    assert_eq!(
        guarded["execution"]["status"], "passed",
        "the enable stays its command"
    );
    assert_eq!(guarded["command"]["command"], "enable", "{guarded}");
    assert_eq!(guards[0]["command"]["command"], "disable", "{guarded}");
    assert_eq!(
        guards[0]["command"]["reason_code"], "guard_fired",
        "{guarded}"
    );
    // The flag's ledger: the enable answered the change, then the guard's disable.
    let (_, ledger) = json(&http, served.at("/api/flags/shop/production/payments-v3")).await;
    assert_eq!(
        ledger["entries"][0]["command"]["command"], "enable",
        "{ledger}"
    );
    assert_eq!(
        ledger["entries"][0]["guard_command"]["command"], "disable",
        "{ledger}"
    );
    let guard_page = html(&http, served.at(&format!("/executions/{e4}"))).await;
    for expected in [
        "id=\"guard\"",
        "guard checkout-errors failed 4 min after enable",
        &s.guard_command_id,
        "error rate 0.07 &gt; 0.02",
    ] {
        assert!(
            guard_page.contains(expected),
            "{expected:?} not on the guard's page"
        );
    }
    assert_eq!(
        overview["watching"].as_array().map(Vec::len),
        Some(0),
        "a fired guard no longer watches: {overview}"
    );

    // The audit does not count a held change as unanswered.
    let (_, audit) = json(&http, served.at("/api/audit")).await;
    let text = audit.to_string();
    assert!(!text.contains(&s.approval.trigger_event_id), "{audit}");
    assert!(!text.contains(&s.freeze.trigger_event_id), "{audit}");

    served.stop().await;
    ingest.stop().await.expect("ingest stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_sees_what_waits_and_the_fired_guard_in_chromium() {
    let Setup {
        s,
        store: _store,
        ingest,
        served,
    } = setup("view-holds-browser").await;
    let browser = browser::Browser::start().await;

    browser.client.goto(&served.at("/")).await.expect("open /");
    let waiting = browser.text("#waiting", PATIENCE).await;
    assert!(
        waiting.contains(&s.approval.pipeline_execution_id),
        "{waiting}"
    );
    assert!(waiting.contains("freeze"), "{waiting}");
    browser.screenshot("holds-overview").await;

    browser
        .client
        .goto(&served.at(&format!("/executions/{}", s.approval.pipeline_execution_id)))
        .await
        .expect("open the waiting execution");
    let hint = browser.text("#approve-hint", PATIENCE).await;
    assert!(hint.contains(APPROVAL_REQUEST_TYPE), "{hint}");
    assert!(hint.contains(&s.approval.pipeline_execution_id), "{hint}");
    let badge = browser.text("#waiting-badge", PATIENCE).await;
    assert_eq!(badge, "waiting: approval");
    browser.screenshot("holds-execution-approval").await;

    browser
        .client
        .goto(&served.at(&format!("/executions/{}", s.guard.pipeline_execution_id)))
        .await
        .expect("open the guarded execution");
    let command = browser.text("#guard-command", PATIENCE).await;
    assert_eq!(command, s.guard_command_id);
    browser.screenshot("holds-execution-guard").await;

    browser
        .client
        .goto(&served.at(&format!("/executions/{}", s.freeze.pipeline_execution_id)))
        .await
        .expect("open the frozen execution");
    let note = browser.text("#freeze-note", PATIENCE).await;
    assert!(note.contains("weekend"), "{note}");
    browser.screenshot("holds-execution-freeze").await;

    browser
        .client
        .goto(&served.at(&format!("/pipelines/{PIPELINE}")))
        .await
        .expect("open the pipeline");
    browser.text("#waiting", PATIENCE).await;
    browser.screenshot("holds-pipeline").await;

    browser.close().await;
    served.stop().await;
    ingest.stop().await.expect("ingest stops");
}
