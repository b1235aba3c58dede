//! OpenFeature flagd gated end to end: the worker writes the definition a command
//! approves in the command's own transaction, and `chaosgate connect flagd` serves only
//! approved definitions to the real OpenFeature flagd provider.

#[path = "support/flagd.rs"]
mod flagd;
#[path = "support/kafka.rs"]
mod kafka;
#[path = "support/worker.rs"]
mod worker;

use std::time::Duration;

use chaosgate::contract::{ChangeKind, CommandKind, ReasonCode};

use flagd::{approved_records, boolean_flag, flagd_change};
use worker::{Harness, Listener, Settings, closed_address, experiment_yaml, pipeline_yaml};

/// Upper bound for anything a test waits for: generous, so only a bug reaches it.
const PATIENCE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_writes_what_each_command_approves_in_the_commands_transaction() {
    let servers = kafka::require_broker();
    let harness = Harness::new(&servers, "flagd-worker", 1).await;
    let listener = Listener::start().await;
    harness.catalog_file(
        "pass.yaml",
        &experiment_yaml("passes", "1s", &harness.marker("p"), &listener.address),
    );
    harness.catalog_file(
        "fail.yaml",
        &experiment_yaml("fails", "1s", &harness.marker("f"), &closed_address()),
    );
    harness.catalog_file(
        "safe.yaml",
        &pipeline_yaml("safe-gate", Some("safe-*"), &["passes"]),
    );
    harness.catalog_file(
        "risky.yaml",
        &pipeline_yaml("risky-gate", Some("risky-*"), &["fails"]),
    );
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

fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
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
    use chaosgate::config::Config;

    let compose: serde_json::Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo("docker-compose.yml")).expect("read docker-compose.yml"),
    )
    .expect("docker-compose.yml");
    let service = &compose["services"]["chaosgate-flagd"];
    assert_eq!(service["command"][0], "connect");
    assert_eq!(service["command"][1], "flagd");
    let overrides: Vec<(String, String)> = service["environment"]
        .as_object()
        .expect("chaosgate-flagd's environment")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("a string").to_string()))
        .collect();
    let config = Config::parse(
        &std::fs::read_to_string(repo("deploy/container/chaosgate.toml")).expect("read"),
        "image config",
        overrides,
    )
    .unwrap_or_else(|e| panic!("{e}"));
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
