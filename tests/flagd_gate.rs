//! OpenFeature flagd gated end to end: the worker writes the definition a command
//! approves in the command's own transaction, and `chaosgate connect flagd` serves only
//! approved definitions to the real OpenFeature flagd provider.

#[path = "support/compose.rs"]
mod compose;
#[path = "support/connect.rs"]
mod connect;
#[path = "support/flagd.rs"]
mod flagd;
#[path = "support/flagd_loop.rs"]
mod flagd_loop;
#[path = "support/kafka.rs"]
mod kafka;
#[path = "support/worker.rs"]
mod worker;

use compose::repo;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chaosgate::contract::{ChangeKind, CommandKind, FlagCommand, ReasonCode};
use open_feature::EvaluationContext;
use serde_json::json;

use flagd_loop::{
    FlagdBridge, append_flagd_section, approved_records, boolean_flag, evaluate, flag_changes,
    flagd_change, provider, served, wait_healthy,
};
use worker::{Harness, Listener, Settings, closed_address, experiment_yaml, pipeline_yaml};

/// Upper bound for anything a test waits for: generous, so only a bug reaches it.
const PATIENCE: Duration = Duration::from_secs(90);

/// The catalog of every test here: flags `safe-*` (environment `test`) pass their gate,
/// `risky-*` fail theirs, each gate a `gate`-long experiment probing the returned
/// listener (or a closed port).
async fn safe_and_risky_gates(harness: &Harness, gate: &str) -> Listener {
    let target = Listener::start().await;
    harness.catalog_file(
        "pass.yaml",
        &experiment_yaml("passes", gate, &harness.marker("p"), &target.address),
    );
    harness.catalog_file(
        "fail.yaml",
        &experiment_yaml("fails", gate, &harness.marker("f"), &closed_address()),
    );
    harness.catalog_file(
        "safe.yaml",
        &pipeline_yaml("safe-gate", Some("safe-*"), &["passes"]),
    );
    harness.catalog_file(
        "risky.yaml",
        &pipeline_yaml("risky-gate", Some("risky-*"), &["fails"]),
    );
    target
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_writes_what_each_command_approves_in_the_commands_transaction() {
    let servers = kafka::require_broker();
    let harness = Harness::new(&servers, "flagd-worker", 1).await;
    let _target = safe_and_risky_gates(&harness, "1s").await;
    let config = harness.config("worker", &Settings::default());
    let _worker = harness.spawn("worker", &config);
    let collector = harness.collect();

    let on = boolean_flag("ENABLED", "on");
    let safe = flagd_change("safe-one", ChangeKind::Enable, None, on.clone());
    let risky = flagd_change("risky-one", ChangeKind::Enable, None, on.clone());
    let updated = boolean_flag("ENABLED", "off");
    let risky_update = flagd_change("risky-two", ChangeKind::Update, Some(on.clone()), updated);
    // A change whose values are not flagd definitions: a command, nothing approved.
    let plain = worker::change("safe-plain", ChangeKind::Enable, None);
    for change in [&safe, &risky, &risky_update, &plain] {
        harness.produce_change(change).await;
    }
    let outputs = harness
        .wait_for(&collector, "four commands", PATIENCE, |o| {
            o.commands.len() >= 4
        })
        .await;

    let approved = approved_records(&servers, &harness.topics.approved_flags);
    assert_eq!(
        approved.len(),
        3,
        "one approved record per flagd change, none for the plain one: {approved:#?}"
    );
    for record in &approved {
        let commands = outputs.commands_for(&record.causation_event_id);
        assert_eq!(commands.len(), 1, "{record:?}");
        assert_eq!(record.command_id, commands[0].command_id);
        assert_eq!(record.command, commands[0].command);
    }
    let of = |flag: &str| approved.iter().find(|a| a.flag == flag).expect(flag);

    let safe_record = of("safe-one");
    assert_eq!(safe_record.command, CommandKind::Enable);
    assert_eq!(safe_record.reason_code, ReasonCode::Passed);
    assert_eq!(
        safe_record.definition, on,
        "a passed enable serves the proposal"
    );

    let risky_record = of("risky-one");
    assert_eq!(risky_record.command, CommandKind::Disable);
    assert_eq!(risky_record.reason_code, ReasonCode::Failed);
    assert_eq!(
        risky_record.definition,
        boolean_flag("DISABLED", "on"),
        "a failed enable of a new flag serves it DISABLED"
    );
    assert_eq!(risky_record.proposed.as_ref(), Some(&on));

    let update_record = of("risky-two");
    assert_eq!(update_record.command, CommandKind::Disable);
    assert_eq!(
        update_record.definition,
        boolean_flag("DISABLED", "on"),
        "a failed update turns the flag served before off, not the proposal on"
    );
}

#[test]
fn the_flagd_example_config_is_a_valid_worker_and_bridge_config() {
    use chaosgate::config::Config;

    let path = repo("deploy/flagd.example.toml");
    let config = Config::load(&path, Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    let section = chaosgate::connect::flagd::section(&config).expect("a [flagd] section");
    assert_eq!(
        (section.project.as_str(), section.environment.as_str()),
        ("shop", "production")
    );
    assert_eq!(
        section.proposed.as_deref(),
        Some(repo("deploy/examples/flags").as_path())
    );
    assert_eq!(section.sync_listen.port(), 8015);
    assert_eq!(config.kafka.topics.approved_flags, "approved-flags");
    let catalog = chaosgate::catalog::Catalog::load(std::slice::from_ref(&config.catalog.path))
        .unwrap_or_else(|problems| panic!("{problems:#?}"));
    // The example flags the catalog gates are in the example folder.
    let flags = std::fs::read_to_string(repo("deploy/examples/flags/shop.json")).expect("flags");
    for (flag, pipeline) in [
        ("search-v2", "flagd-try-search"),
        ("checkout-v2", "flagd-try-checkout"),
    ] {
        assert!(flags.contains(&format!("\"{flag}\"")), "{flag}");
        let routed = catalog
            .pipeline_for("shop", "production", flag)
            .map(|p| p.id.as_str());
        assert_eq!(routed, Some(pipeline), "the example catalog routes {flag}");
    }
}

#[test]
fn compose_serves_the_example_flags_gated_by_the_compose_pipeline() {
    let compose = compose::compose();
    let service = &compose["services"]["chaosgate-flagd"];
    assert_eq!(service["command"][0], "connect");
    assert_eq!(service["command"][1], "flagd");
    let config = compose::service_config(&compose, "chaosgate-flagd");
    let section = chaosgate::connect::flagd::section(&config).expect("a [flagd] section");
    // The proposed folder is the example folder, mounted.
    let mount = format!(
        "./deploy/examples/flags:{}:ro",
        section.proposed.as_deref().expect("proposed").display()
    );
    assert!(
        service["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .any(|v| v.as_str() == Some(mount.as_str())),
        "{mount} is not mounted: {:?}",
        service["volumes"]
    );
    // The compose worker's catalog gates every flag of that project and environment.
    let catalog = chaosgate::catalog::Catalog::load(&[repo("deploy/compose/catalog")])
        .unwrap_or_else(|problems| panic!("{problems:#?}"));
    let routed = catalog
        .pipeline_for(&section.project, &section.environment, "checkout-v2")
        .map(|p| p.id.as_str());
    assert_eq!(routed, Some("compose-demo"));
    for port in [section.sync_listen.port(), section.http_listen.port()] {
        let published = format!("127.0.0.1:{port}:{port}");
        assert!(
            service["ports"]
                .as_array()
                .expect("ports")
                .iter()
                .any(|p| p.as_str() == Some(published.as_str())),
            "port {port} is not published"
        );
    }
}

/// One test's world: the broker, the worker with `safe-*` flags passing their gate and
/// `risky-*` failing theirs (each gate a `gate`-long experiment), and
/// `chaosgate connect flagd` proposing from a folder and serving what is approved.
struct Loop {
    harness: Harness,
    _worker: worker::Worker,
    bridge: FlagdBridge,
    proposed: PathBuf,
    sync: String,
    http: String,
    _target: Listener,
}

impl Loop {
    async fn start(name: &str, gate: &str) -> Loop {
        let servers = kafka::require_broker();
        let harness = Harness::new(&servers, name, 1).await;
        let target = safe_and_risky_gates(&harness, gate).await;
        let config = harness.config("worker", &Settings::default());
        let proposed = harness.dir.path().join("proposed");
        std::fs::create_dir_all(&proposed).expect("proposed folder");
        let (sync, http) = (closed_address(), closed_address());
        append_flagd_section(&config, Some(&proposed), &sync, &http);
        let worker = harness.spawn("worker", &config);
        let bridge = FlagdBridge::spawn(&config, harness.dir.path());
        wait_healthy(&http, &bridge).await;
        Loop {
            harness,
            _worker: worker,
            bridge,
            proposed,
            sync,
            http,
            _target: target,
        }
    }

    /// Writes `file` in the proposed folder with these flags, whole (renamed into place,
    /// as a git checkout does).
    fn propose(&self, file: &str, flags: serde_json::Value) {
        self.write(file, &json!({ "flags": flags }).to_string());
    }

    fn write(&self, file: &str, text: &str) {
        let temporary = self.harness.dir.path().join(format!(".{file}.new"));
        std::fs::write(&temporary, text).expect("write proposal");
        std::fs::rename(&temporary, self.proposed.join(file)).expect("rename proposal");
    }

    fn logs(&self) -> String {
        format!("{}\n{}", self.harness.log_tails(), self.bridge.logs())
    }

    /// The commands for `flag` the collector saw so far, oldest first.
    fn commands(collector: &worker::Collector, flag: &str) -> Vec<FlagCommand> {
        let mut commands: Vec<FlagCommand> = collector
            .snapshot()
            .commands
            .iter()
            .filter(|c| c.value.flag == flag)
            .map(|c| c.value.clone())
            .collect();
        commands.sort_by_key(|c| c.issued_at);
        commands
    }

    /// Waits until `flag` has `count` commands.
    async fn wait_commands(
        &self,
        collector: &worker::Collector,
        flag: &str,
        count: usize,
    ) -> Vec<FlagCommand> {
        self.harness
            .wait_for(
                collector,
                &format!("{count} command(s) for {flag}"),
                PATIENCE,
                |o| o.commands.iter().filter(|c| c.value.flag == flag).count() >= count,
            )
            .await;
        Loop::commands(collector, flag)
    }

    /// Waits until `GET /flags.json` serves `flag` with `state` (`None`: not at all).
    async fn wait_served(&self, flag: &str, state: Option<&str>) -> (String, serde_json::Value) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (etag, document) = served(&self.http).await;
            if document["flags"][flag]["state"].as_str() == state {
                return (etag, document);
            }
            assert!(
                Instant::now() < deadline,
                "{flag} is not served {state:?}: {document}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One evaluation of a flag by the provider, and when it was made.
struct Sample {
    at: chrono::DateTime<chrono::Utc>,
    value: Option<bool>,
}

/// Evaluates `flag` every 10 ms until `done` holds for the samples so far (or the
/// patience runs out).
async fn sample_until(
    provider: &open_feature_flagd::FlagdProvider,
    flag: &str,
    context: &EvaluationContext,
    done: impl Fn(&[Sample]) -> bool,
) -> Vec<Sample> {
    let deadline = Instant::now() + PATIENCE;
    let mut samples = Vec::new();
    while !done(&samples) && Instant::now() < deadline {
        let value = evaluate(provider, flag, context).await;
        samples.push(Sample {
            at: chrono::Utc::now(),
            value,
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    samples
}

fn staff() -> EvaluationContext {
    EvaluationContext::default().with_custom_field("email", "ada@example.com")
}

fn customer() -> EvaluationContext {
    EvaluationContext::default().with_custom_field("email", "bob@customer.test")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_whose_gate_fails_never_evaluates_on_and_is_served_disabled() {
    let l = Loop::start("flagd-fail", "2s").await;
    let provider = provider(&l.sync).await;
    let collector = l.harness.collect();
    let flag = "risky-checkout";
    let before = evaluate(&provider, flag, &customer()).await;
    assert_eq!(before, None, "not served before it is proposed");

    l.propose("shop.json", json!({ flag: boolean_flag("ENABLED", "on") }));
    // Before the gate, while it runs (2 s) and for 3 s after its command.
    let samples = sample_until(&provider, flag, &customer(), |samples| {
        Loop::commands(&collector, flag).first().is_some_and(|c| {
            samples
                .last()
                .is_some_and(|s| s.at > c.issued_at + chrono::Duration::seconds(3))
        })
    })
    .await;
    let on: Vec<_> = samples
        .iter()
        .filter(|s| s.value == Some(true))
        .map(|s| s.at)
        .collect();
    assert!(on.is_empty(), "evaluated on at {on:?}\n{}", l.logs());

    let commands = Loop::commands(&collector, flag);
    assert_eq!(commands.len(), 1, "{commands:?}\n{}", l.logs());
    assert_eq!(
        (commands[0].command, commands[0].reason_code),
        (CommandKind::Disable, ReasonCode::Failed)
    );
    let (_, document) = l.wait_served(flag, Some("DISABLED")).await;
    assert_eq!(
        document["flags"][flag]["defaultVariant"], "on",
        "{document}"
    );
    assert_eq!(
        evaluate(&provider, flag, &customer()).await,
        None,
        "a DISABLED flag resolves to the code's default"
    );
    // One proposal, one change: the refused proposal is not proposed again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let changes = flag_changes(&l.harness.servers, &l.harness.topics.flag_changes);
    assert_eq!(changes.len(), 1, "{changes:#?}");
    assert_eq!(changes[0].change.kind, ChangeKind::Enable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_whose_gate_passes_evaluates_on_only_after_its_enable_within_a_second() {
    let l = Loop::start("flagd-pass", "2s").await;
    let provider = provider(&l.sync).await;
    let collector = l.harness.collect();
    let flag = "safe-search";

    l.propose("shop.json", json!({ flag: boolean_flag("ENABLED", "on") }));
    let samples = sample_until(&provider, flag, &customer(), |samples| {
        samples.last().is_some_and(|s| s.value == Some(true))
    })
    .await;
    let commands = l.wait_commands(&collector, flag, 1).await;
    assert_eq!(
        (commands[0].command, commands[0].reason_code),
        (CommandKind::Enable, ReasonCode::Passed)
    );
    let enable = commands[0].issued_at;
    let first_on = samples
        .iter()
        .find(|s| s.value == Some(true))
        .map(|s| s.at)
        .unwrap_or_else(|| panic!("never evaluated on\n{}", l.logs()));
    assert!(
        first_on > enable,
        "on at {first_on}, before the enable at {enable}"
    );
    let delay = (first_on - enable).to_std().expect("positive");
    println!("first evaluated on {delay:?} after the enable was issued");
    assert!(
        delay <= Duration::from_secs(1),
        "on {delay:?} after the enable\n{}",
        l.logs()
    );
    let (_, document) = l.wait_served(flag, Some("ENABLED")).await;
    assert_eq!(document["flags"][flag], boolean_flag("ENABLED", "on"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_targeting_update_takes_effect_only_after_its_gate() {
    let l = Loop::start("flagd-update", "2s").await;
    let provider = provider(&l.sync).await;
    let collector = l.harness.collect();
    let flag = "safe-banner";
    l.propose("shop.json", json!({ flag: boolean_flag("ENABLED", "on") }));
    l.wait_commands(&collector, flag, 1).await;
    l.wait_served(flag, Some("ENABLED")).await;
    sample_until(&provider, flag, &customer(), |s| {
        s.last().is_some_and(|s| s.value == Some(true))
    })
    .await;

    // Only staff keep it: off by default, on for @example.com, through a shared evaluator.
    let mut narrowed = boolean_flag("ENABLED", "off");
    narrowed["targeting"] = json!({ "if": [{ "$ref": "staff" }, "on", null] });
    l.write(
        "shop.json",
        &json!({
            "flags": { flag: narrowed },
            "$evaluators": { "staff": { "ends_with": [{ "var": "email" }, "@example.com"] } }
        })
        .to_string(),
    );
    let samples = sample_until(&provider, flag, &customer(), |s| {
        s.last().is_some_and(|s| s.value == Some(false))
    })
    .await;
    let commands = l.wait_commands(&collector, flag, 2).await;
    assert_eq!(commands[1].command, CommandKind::Enable, "{commands:?}");
    let applied = commands[1].issued_at;
    let first_off = samples
        .iter()
        .find(|s| s.value == Some(false))
        .map(|s| s.at)
        .unwrap_or_else(|| panic!("the update never took effect\n{}", l.logs()));
    assert!(
        first_off > applied,
        "the update took effect at {first_off}, before its enable at {applied}"
    );
    assert!(
        samples
            .iter()
            .filter(|s| s.at < applied)
            .all(|s| s.value == Some(true)),
        "the old definition was not served until the enable"
    );
    assert_eq!(
        evaluate(&provider, flag, &staff()).await,
        Some(true),
        "staff keep it"
    );

    let changes = flag_changes(&l.harness.servers, &l.harness.topics.flag_changes);
    assert_eq!(changes.len(), 2, "{changes:#?}");
    let update = &changes[1];
    assert_eq!(update.change.kind, ChangeKind::Update);
    assert_eq!(
        update.change.from.as_ref(),
        Some(&boolean_flag("ENABLED", "on"))
    );
    assert_eq!(
        update
            .change
            .to
            .as_ref()
            .and_then(|to| to["targeting"]["if"][0].get("ends_with")),
        Some(&json!([{ "var": "email" }, "@example.com"])),
        "the shared evaluator is inlined in the proposal: {update:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_bridge_serves_the_same_configuration_and_the_provider_reconnects() {
    let mut l = Loop::start("flagd-restart", "1s").await;
    let provider = provider(&l.sync).await;
    let collector = l.harness.collect();
    l.propose(
        "shop.json",
        json!({ "safe-one": boolean_flag("ENABLED", "on"), "risky-one": boolean_flag("ENABLED", "on") }),
    );
    l.wait_commands(&collector, "safe-one", 1).await;
    l.wait_commands(&collector, "risky-one", 1).await;
    l.wait_served("risky-one", Some("DISABLED")).await;
    let (etag, document) = l.wait_served("safe-one", Some("ENABLED")).await;
    sample_until(&provider, "safe-one", &customer(), |s| {
        s.last().is_some_and(|s| s.value == Some(true))
    })
    .await;

    l.bridge.restart();
    // The provider keeps what it had while chaosgate is away.
    assert_eq!(
        evaluate(&provider, "safe-one", &customer()).await,
        Some(true)
    );
    wait_healthy(&l.http, &l.bridge).await;
    let (etag_after, document_after) = served(&l.http).await;
    assert_eq!(
        document_after, document,
        "the restarted bridge serves the same configuration"
    );
    assert_eq!(etag_after, etag);

    // The provider reads the new process: a change approved after the restart reaches it.
    l.propose(
        "shop.json",
        json!({
            "safe-one": boolean_flag("ENABLED", "on"),
            "risky-one": boolean_flag("ENABLED", "on"),
            "safe-two": boolean_flag("ENABLED", "on")
        }),
    );
    let samples = sample_until(&provider, "safe-two", &customer(), |s| {
        s.last().is_some_and(|s| s.value == Some(true))
    })
    .await;
    assert_eq!(
        samples.last().and_then(|s| s.value),
        Some(true),
        "the provider did not reconnect\n{}",
        l.logs()
    );
    assert_eq!(evaluate(&provider, "risky-one", &customer()).await, None);
    // Nothing was proposed twice across the restart.
    let changes = flag_changes(&l.harness.servers, &l.harness.topics.flag_changes);
    assert_eq!(changes.len(), 3, "{changes:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_proposed_file_is_reported_and_nothing_served_changes() {
    let l = Loop::start("flagd-malformed", "1s").await;
    let provider = provider(&l.sync).await;
    let collector = l.harness.collect();
    let flag = "safe-five";
    l.propose("shop.json", json!({ flag: boolean_flag("ENABLED", "on") }));
    l.wait_commands(&collector, flag, 1).await;
    let (etag, document) = l.wait_served(flag, Some("ENABLED")).await;

    let broken = [
        (
            "not JSON",
            "{\n  \"flags\": {\n    \"safe-five\": {\"state\": \"DISABLED\",\n",
        ),
        (
            "a state flagd does not know",
            "{\n  \"flags\": {\n    \"safe-five\": {\n      \"state\": \"MAYBE\",\n      \"variants\": {\"on\": true, \"off\": false},\n      \"defaultVariant\": \"on\"\n    }\n  }\n}\n",
        ),
        (
            "a defaultVariant naming no variant",
            "{\n  \"flags\": {\n    \"safe-five\": {\n      \"state\": \"DISABLED\",\n      \"variants\": {\"on\": true, \"off\": false},\n      \"defaultVariant\": \"maybe\"\n    }\n  }\n}\n",
        ),
    ];
    for (what, text) in broken {
        let lines_before = std::fs::read_to_string(&l.bridge.log)
            .unwrap_or_default()
            .lines()
            .count();
        l.write("shop.json", text);
        // Ten scans.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let log = std::fs::read_to_string(&l.bridge.log).unwrap_or_default();
        let reported: Vec<&str> = log
            .lines()
            .skip(lines_before)
            .filter(|line| {
                // `shop.json:LINE: problem`
                line.split("shop.json:")
                    .nth(1)
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            })
            .collect();
        assert!(
            !reported.is_empty(),
            "{what}: not reported with its file and line\n{}",
            l.logs()
        );
        let (etag_now, document_now) = served(&l.http).await;
        assert_eq!(document_now, document, "{what}: what is served changed");
        assert_eq!(etag_now, etag);
        assert_eq!(
            evaluate(&provider, flag, &customer()).await,
            Some(true),
            "{what}"
        );
    }
    let changes = flag_changes(&l.harness.servers, &l.harness.topics.flag_changes);
    assert_eq!(
        changes.len(),
        1,
        "a broken file proposes nothing: {changes:#?}"
    );
}
