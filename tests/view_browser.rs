//! The chaos experiments view in a real browser: headless Chromium (Debian's `chromium`
//! and `chromium-driver`) driven over WebDriver. The data comes from the real path: the
//! real worker (`chaosgate run`) gates real flag changes on the real broker, and the real
//! view ingests what it committed. The test opens the runs page, filters by pipeline ID,
//! opens a run and reads its score and probe verdicts, then watches a new run appear
//! without reloading. It saves a screenshot of each page (path printed) to look at.
//! Without chromium or chromedriver it fails; it never skips.

#[path = "support/browser.rs"]
mod browser;
#[path = "support/kafka.rs"]
mod kafka;
#[path = "support/view.rs"]
mod view;
#[path = "support/web.rs"]
mod web;
#[path = "support/worker.rs"]
mod worker;

use std::time::Duration;

use fantoccini::Locator;

use chaosgate::contract::{ChangeKind, RunStatus, Verdict, ids};
use chaosgate::view::model::RunFilter;
use chaosgate::view::web::WebOptions;
use chaosgate::view::{Location, query};

use browser::Browser;
use worker::{Harness, Listener, Settings, change, closed_address, experiment_yaml, pipeline_yaml};

const PATIENCE: Duration = Duration::from_secs(90);

fn verdict(v: Verdict) -> &'static str {
    match v {
        Verdict::Passed => "passed",
        Verdict::Failed => "failed",
        Verdict::Aborted => "aborted",
        Verdict::Error => "error",
        Verdict::Skipped => "skipped",
    }
}

/// The first run `filter` lists in the view's store (the test fails when none).
async fn first_run(
    store: &chaosgate::view::Store,
    filter: RunFilter,
) -> chaosgate::view::model::RunRow {
    let what = format!("{filter:?}");
    store
        .read(move |c| query::runs(c, &filter))
        .await
        .expect("runs")
        .items
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("a run matching {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_filters_runs_opens_one_reads_its_score_and_probes_and_sees_new_runs_live() {
    let servers = kafka::require_broker();
    let browser = Browser::start().await;
    let h = Harness::new(&servers, "view-browser", 2).await;
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
        "pipe-pass.yaml",
        &pipeline_yaml("browse-pass", Some("pass-*"), &["listener-up"]),
    );
    h.catalog_file(
        "pipe-fail.yaml",
        &pipeline_yaml(
            "browse-fail",
            Some("fail-*"),
            &["listener-up", "listener-down"],
        ),
    );
    // Long enough that the page can show it running under a loaded CI (a 6s run was once
    // over before its running record reached the page).
    h.catalog_file(
        "exp-slow.yaml",
        &experiment_yaml("listener-slow", "20s", &h.marker("slow"), &up.address),
    );
    h.catalog_file(
        "pipe-slow.yaml",
        &pipeline_yaml("browse-slow", Some("slow-*"), &["listener-slow"]),
    );
    let config = h.config("w", &Settings::default());
    let _worker = h.spawn("w", &config);
    let passing = change("pass-search", ChangeKind::Enable, None);
    let failing = change("fail-checkout", ChangeKind::Enable, None);
    h.produce_change(&passing).await;
    h.produce_change(&failing).await;

    // The real view: ingest from the topics the worker wrote, the web layer on loopback.
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
    let served = web::Served::start(
        store.clone(),
        ingest.status(),
        WebOptions {
            trace_url: Some("http://127.0.0.1:16686/trace/{trace_id}".into()),
            ..WebOptions::default()
        },
    )
    .await;
    let failing_execution = ids::pipeline_execution_id(&failing.event_id, "browse-fail");
    let passing_execution = ids::pipeline_execution_id(&passing.event_id, "browse-pass");
    for execution in [failing_execution.clone(), passing_execution.clone()] {
        view::wait_for(&store, "both executions decided", PATIENCE, move |c| {
            Ok(query::execution(c, &execution)?.filter(|d| d.command.is_some()))
        })
        .await;
    }
    let failed_run = first_run(
        &store,
        RunFilter {
            statuses: vec![RunStatus::Failed],
            ..RunFilter::default()
        },
    )
    .await;
    let failed_id = failed_run.run_id.clone();
    let truth = store
        .read(move |c| query::run(c, &failed_id))
        .await
        .expect("run")
        .expect("its detail");

    let c = &browser.client;
    // The overview, then the runs page.
    c.goto(&served.at("/")).await.expect("open overview");
    browser
        .wait_html("the overview's pipelines", PATIENCE, |h| {
            h.contains("browse-fail") && h.contains("browse-pass")
        })
        .await;
    browser.screenshot("overview").await;
    c.goto(&served.at("/runs")).await.expect("open runs");
    browser
        .wait_html("three runs in the table", PATIENCE, |h| {
            h.matches("data-row=").count() == 3
        })
        .await;
    browser.screenshot("runs").await;

    // Filter by pipeline ID through the form: the filter goes into the URL.
    let input = c
        .find(Locator::Css("input[name=pipeline_id]"))
        .await
        .expect("pipeline filter");
    input.send_keys("browse-fail").await.expect("type");
    c.find(Locator::Css("#filters button[type=submit]"))
        .await
        .expect("filter button")
        .click()
        .await
        .expect("submit");
    let deadline = std::time::Instant::now() + PATIENCE;
    let url = loop {
        let url = c.current_url().await.expect("url");
        if url.as_str().contains("pipeline_id=") || std::time::Instant::now() >= deadline {
            break url;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        url.as_str().contains("pipeline_id=browse-fail"),
        "the filter is in the URL: {url}"
    );
    let html = browser
        .wait_html("the filtered table", PATIENCE, |h| {
            h.matches("data-row=").count() == 2
        })
        .await;
    assert!(
        !html.contains("browse-pass\">browse-pass</a>"),
        "only browse-fail runs are listed"
    );
    let rows = c
        .find_all(Locator::Css("tr[data-row]"))
        .await
        .expect("rows");
    assert_eq!(rows.len(), 2, "browse-fail ran two steps");
    browser.screenshot("runs-filtered-by-pipeline").await;

    // Open the failed run and read its score and probe verdicts.
    c.find(Locator::Css("tr[data-status=failed] a.run-link"))
        .await
        .expect("the failed run's link")
        .click()
        .await
        .expect("open run");
    let score = browser.text("#score", PATIENCE).await;
    let expected = browser.text("#expected", PATIENCE).await;
    let want = truth
        .record
        .resilience_score
        .expect("a final run has a score");
    assert_eq!(
        score.parse::<f64>().expect("score is a number"),
        (want * 100.0).round() / 100.0,
        "page score {score}"
    );
    assert_eq!(
        expected.parse::<f64>().expect("expected is a number"),
        truth.record.expected_resilience_score
    );
    assert!(
        want < truth.record.expected_resilience_score,
        "the failed run scored below expected"
    );
    let status = browser.text("#run-status", PATIENCE).await;
    assert_eq!(status, "failed");
    let mut verdicts = Vec::new();
    for row in c
        .find_all(Locator::Css("#probes tr[data-probe]"))
        .await
        .expect("probe rows")
    {
        let name = row
            .attr("data-probe")
            .await
            .expect("attr")
            .expect("probe name");
        let text = row
            .find(Locator::Css("td.verdict"))
            .await
            .expect("verdict cell")
            .text()
            .await
            .expect("text");
        verdicts.push((name, text));
    }
    let want: Vec<(String, String)> = truth
        .record
        .probes
        .iter()
        .map(|p| (p.name.clone(), verdict(p.verdict).to_string()))
        .collect();
    assert_eq!(
        verdicts, want,
        "probe verdicts on the page match the record"
    );
    assert!(
        verdicts.iter().any(|(_, v)| v == "failed"),
        "the closed address failed its probe"
    );
    browser.screenshot("run-failed").await;

    // The other pages, for the record.
    for (path, name) in [
        (
            format!(
                "/runs/{}",
                truth
                    .attempts
                    .first()
                    .map_or(truth.run.run_id.clone(), |r| r.run_id.clone())
            ),
            "run-first-attempt",
        ),
        (
            format!("/executions/{failing_execution}"),
            "execution-failed",
        ),
        (
            format!("/executions/{passing_execution}"),
            "execution-passed",
        ),
        ("/pipelines".to_string(), "pipelines"),
        ("/pipelines/browse-fail".to_string(), "pipeline-browse-fail"),
        ("/flags".to_string(), "flags"),
        (
            "/flags/test/test/fail-checkout".to_string(),
            "flag-ledger-fail-checkout",
        ),
        ("/problems".to_string(), "problems"),
    ] {
        c.goto(&served.at(&path)).await.expect("open page");
        browser
            .wait_html(&format!("{path} rendered"), PATIENCE, |h| {
                h.contains("</main>")
            })
            .await;
        browser.screenshot(name).await;
    }
    c.goto(&served.at("/runs/no-such-run"))
        .await
        .expect("open missing run");
    browser.screenshot("not-found").await;

    // Live: on the open runs page a new run appears while it runs (its elapsed time
    // ticking), then turns passed, all without a reload.
    c.goto(&served.at("/runs?pipeline_id=browse-slow"))
        .await
        .expect("open runs");
    browser
        .wait_html("the empty state, live", PATIENCE, |h| {
            h.contains("No runs match this filter") && h.contains("live on")
        })
        .await;
    browser.screenshot("runs-empty-filter").await;
    c.execute("window.__sameDocument = 42; return true;", vec![])
        .await
        .expect("mark the document");
    let slow = change("slow-cart", ChangeKind::Enable, None);
    h.produce_change(&slow).await;
    browser
        .wait_html("the new run, running", PATIENCE, |h| {
            h.contains("data-status=\"running\"")
        })
        .await;
    let ticking = "tr[data-status=running] [data-since]";
    let before = browser.text(ticking, PATIENCE).await;
    // The page ticks once a second; a loaded machine may run its timer late, so poll for
    // up to 2.5 s (the run's fault lasts 6 s) for the text to change.
    let deadline = std::time::Instant::now() + Duration::from_millis(2500);
    let mut after = Some(before.clone());
    while after.as_deref() == Some(before.as_str()) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = c
            .execute(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                vec![serde_json::json!(ticking)],
            )
            .await
            .expect("read the elapsed time")
            .as_str()
            .map(|t| t.trim().to_string());
    }
    assert!(
        after.as_ref().is_some_and(|a| *a != before),
        "a running run's elapsed time ticks: {before:?} then {after:?}"
    );
    browser.screenshot("runs-live-running").await;
    let html = browser
        .wait_html("the run turned passed", PATIENCE, |h| {
            h.contains("data-status=\"passed\"") && !h.contains("data-status=\"running\"")
        })
        .await;
    let same = c
        .execute("return window.__sameDocument === 42;", vec![])
        .await
        .expect("read the mark");
    assert_eq!(
        same,
        serde_json::Value::Bool(true),
        "the page was not reloaded"
    );
    let slow_execution = ids::pipeline_execution_id(&slow.event_id, "browse-slow");
    let new_run = first_run(
        &store,
        RunFilter {
            pipeline_execution_id: Some(slow_execution),
            ..RunFilter::default()
        },
    )
    .await;
    assert!(
        html.contains(&format!("data-row=\"{}\"", new_run.run_id)),
        "the row is the new run"
    );
    browser.screenshot("runs-live-passed").await;
    println!("screenshots in {}", browser.screenshots.display());

    browser.close().await;
    served.stop().await;
    ingest.stop().await.expect("ingest stops");
}
