//! Holds in the view from the real path: the real worker (`chaosgate run`) parks a change
//! at an `approval` step on the real broker, the real view ingest shows it waiting (on
//! the overview's list, with the execution id), an operator answers with the real
//! `chaosgate approve`, and the view then shows the hold approved (who, comment) and the
//! `enable` the worker issued.

#[path = "support/kafka.rs"]
mod kafka;
#[path = "support/view.rs"]
mod view;
#[path = "support/web.rs"]
mod web;
#[path = "support/worker.rs"]
mod worker;

use std::time::Duration;

use chaosgate::contract::{ChangeKind, ids};
use chaosgate::view::web::WebOptions;
use chaosgate::view::{Ingest, Location, Store, query};

use worker::{Harness, Listener, Settings, change, experiment_yaml};

const PATIENCE: Duration = Duration::from_secs(90);

/// `GET url` as JSON.
async fn get_json(http: &reqwest::Client, url: String) -> serde_json::Value {
    http.get(&url)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .unwrap_or_else(|e| panic!("{url}: not JSON ({e})"))
}

/// A worker (`chaosgate run`) on fresh topics `name` with the `quick` experiment and
/// `pipeline` (pipeline `id`), one change of `flag` produced, and the view ingesting the
/// worker's topics. Returns the harness (the worker lives as long as it), the
/// execution id, the store and ingest, and the probe listener to keep.
async fn worker_and_view(
    name: &str,
    id: &str,
    flag: &str,
    pipeline: &str,
) -> (Harness, String, Store, Ingest, Listener, worker::Worker) {
    let servers = kafka::require_broker();
    let h = Harness::new(&servers, name, 1).await;
    let up = Listener::start().await;
    h.catalog_file(
        "exp.yaml",
        &experiment_yaml("quick", "300ms", &h.marker("quick"), &up.address),
    );
    h.catalog_file("pipeline.yaml", pipeline);
    let running = h.spawn("w1", &h.config("w1", &Settings::default()));
    let event = change(flag, ChangeKind::Enable, None);
    h.produce_change(&event).await;
    let execution = ids::pipeline_execution_id(&event.event_id, id);
    let t = &h.topics;
    let kafka = view::kafka_config(
        &servers,
        [
            &t.runs,
            &t.commands,
            &t.flag_changes,
            &t.dead_letter,
            &t.control,
        ],
    );
    let (store, ingest) = view::start(&kafka, &Location::Memory);
    (h, execution, store, ingest, up, running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_shows_a_worker_waiting_for_approval_then_the_approval_and_the_enable() {
    let (h, execution, store, ingest, _up, _worker) = worker_and_view(
        "view-hold-worker",
        "view-approve",
        "vappr-1",
        "kind: pipeline\nid: view-approve\nroutes:\n  - environment: test\n    flag: \"vappr-*\"\nstages:\n  - id: canary\n    type: feature_flag\n    steps:\n      - id: quick\n        experiment: quick\n        expected_resilience_score: 80\n      - id: oncall-ok\n        approval:\n          message: check the canary dashboards\n          timeout: 10m\n",
    )
    .await;
    let served = web::Served::start(store.clone(), ingest.status(), WebOptions::default()).await;
    let http = web::client();

    // Waiting: the execution says so, and the overview lists it with its id.
    let id = execution.clone();
    let waiting = view::wait_for(
        &store,
        "the execution waiting for approval",
        PATIENCE,
        move |c| {
            Ok(query::execution(c, &id)?
                .filter(|d| d.execution.waiting.as_deref() == Some("approval")))
        },
    )
    .await;
    assert!(waiting.command.is_none());
    assert_eq!(waiting.holds.len(), 1);
    assert_eq!(waiting.holds[0].status, "waiting");
    assert!(
        waiting.holds[0]
            .reason
            .contains("check the canary dashboards")
    );
    assert_eq!(waiting.stages.len(), 1, "the chaos step before it ran");
    let overview = get_json(&http, served.at("/api/overview")).await;
    assert_eq!(
        overview["waiting"][0]["pipeline_execution_id"],
        execution.as_str(),
        "{overview}"
    );
    let page = http
        .get(served.at(&format!("/executions/{execution}")))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("body");
    let command_line = format!("chaosgate approve {execution} --step canary/oncall-ok");
    assert!(page.contains(&command_line), "the page says how to approve");

    // The operator approves with the command line the page gives.
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_chaosgate"))
        .args(["approve", &execution, "--step", "canary/oncall-ok"])
        .args([
            "--by",
            "oncall@example.com",
            "--comment",
            "dashboards look fine",
        ])
        .arg("--config")
        .arg(h.config("cli", &Settings::default()))
        .output()
        .expect("chaosgate approve");
    assert!(
        cli.status.success(),
        "{}{}",
        String::from_utf8_lossy(&cli.stdout),
        String::from_utf8_lossy(&cli.stderr)
    );

    let id = execution.clone();
    let done = view::wait_for(&store, "the approval and the enable", PATIENCE, move |c| {
        Ok(query::execution(c, &id)?.filter(|d| d.command.is_some()))
    })
    .await;
    assert_eq!(done.execution.waiting, None);
    assert_eq!(done.holds.len(), 1, "{:?}", done.holds);
    assert_eq!(done.holds[0].status, "approved");
    assert_eq!(
        done.holds[0].decided_by.as_deref(),
        Some("oncall@example.com")
    );
    assert_eq!(
        done.holds[0].comment.as_deref(),
        Some("dashboards look fine")
    );
    assert_eq!(done.approvals.len(), 1, "the request, as sent");
    assert_eq!(done.approvals[0].decision, "approve");
    assert_eq!(
        done.command.as_ref().map(|c| c.command.as_str()),
        Some("enable")
    );
    let overview = get_json(&http, served.at("/api/overview")).await;
    assert_eq!(overview["waiting"], serde_json::json!([]), "{overview}");

    served.stop().await;
    ingest.stop().await.expect("ingest stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_shows_a_worker_guard_watching_then_fired_with_its_disable() {
    let backend = Listener::start().await;
    let pipeline = format!(
        "kind: pipeline\nid: view-guard\nroutes:\n  - environment: test\n    flag: \"vguard-*\"\n\
         guard:\n  duration: 10m\n  probes:\n    - name: backend-up\n      \
         run_properties: {{polling_interval: 300ms, attempts: 2, interval: 200ms, timeout: 2s}}\n      \
         tcp: {{address: '{}'}}\n\
         stages:\n  - id: canary\n    type: feature_flag\n    steps:\n      - id: quick\n        \
         experiment: quick\n        expected_resilience_score: 80\n",
        backend.address
    );
    let (_h, execution, store, ingest, _up, _worker) =
        worker_and_view("view-guard-worker", "view-guard", "vguard-1", &pipeline).await;

    // The enable, and its guard watching: on the overview's list too.
    let id = execution.clone();
    let watching = view::wait_for(
        &store,
        "the enable and its guard watching",
        PATIENCE,
        move |c| {
            Ok(query::execution(c, &id)?
                .filter(|d| d.command.is_some() && d.guards.iter().any(|g| g.status == "watching")))
        },
    )
    .await;
    assert_eq!(
        watching.command.as_ref().map(|c| c.command.as_str()),
        Some("enable")
    );
    let overview = store
        .read(|c| {
            query::overview(
                c,
                chrono::Utc::now() - chrono::Duration::hours(1),
                chrono::Utc::now() + chrono::Duration::minutes(1),
                &Default::default(),
            )
        })
        .await
        .expect("overview");
    assert_eq!(overview.watching.len(), 1, "{:?}", overview.watching);
    assert_eq!(overview.watching[0].pipeline_execution_id, execution);

    // The backend goes away: the guard fires a disable, and the view shows it.
    drop(backend);
    let id = execution.clone();
    let fired = view::wait_for(
        &store,
        "the guard fired and its disable",
        PATIENCE,
        move |c| {
            Ok(query::execution(c, &id)?.filter(|d| {
                d.guards
                    .iter()
                    .any(|g| g.status == "fired" && g.command.is_some())
            }))
        },
    )
    .await;
    assert_eq!(fired.guards.len(), 1, "{:?}", fired.guards);
    let guard = &fired.guards[0];
    let disable = guard.command.as_ref().expect("the guard's command");
    assert_eq!(disable.command, "disable");
    assert_eq!(disable.reason_code, "guard_fired");
    assert_eq!(
        guard.command_id.as_deref(),
        Some(disable.command_id.as_str())
    );
    assert!(
        guard
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("backend-up")),
        "{:?}",
        guard.reason
    );
    assert!(
        guard.probes.iter().any(|p| p.name == "backend-up"),
        "{:?}",
        guard.probes
    );
    assert_eq!(
        fired.command.as_ref().map(|c| c.command.as_str()),
        Some("enable"),
        "the execution's own command is still its enable"
    );

    let served = web::Served::start(store.clone(), ingest.status(), WebOptions::default()).await;
    let page = web::client()
        .get(served.at(&format!("/executions/{execution}")))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("body");
    assert!(page.contains("id=\"guard\""));
    assert!(page.contains(&disable.command_id));
    served.stop().await;
    ingest.stop().await.expect("ingest stops");
}
