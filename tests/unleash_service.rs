//! The real Unleash server the Unleash bridge tests run against (`tests/support/unleash.rs`)
//! behaves as those tests assume: flags turned on by the human read back on, each actor's
//! `createdBy`, a webhook integration that delivers at once with its secret header, an
//! outage that keeps the flag's state; and `deploy/unleash.example.toml` is a valid config.

#[path = "support/compose.rs"]
mod compose;
#[path = "support/unleash.rs"]
mod unleash;

use compose::repo;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::Value;
use tokio::sync::mpsc;

use unleash::UnleashServer;

/// Outer bound on waiting for a webhook delivery (Unleash announces events every 1 s).
const DELIVERY: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_flag_turned_on_by_the_human_reads_back_on_and_each_actor_is_recorded() {
    let server = UnleashServer::new().await;
    server.create_flag("default", "checkout-v2").await;
    assert!(
        !server
            .is_enabled("default", "production", "checkout-v2")
            .await,
        "a new flag is off"
    );

    server
        .set_enabled("default", "production", "checkout-v2", true)
        .await;
    assert!(
        server
            .is_enabled("default", "production", "checkout-v2")
            .await
    );
    assert!(
        !server
            .is_enabled("default", "development", "checkout-v2")
            .await,
        "only production was turned on"
    );

    // chaosgate's own change, with its personal access token.
    let token = server.chaosgate_token().await;
    assert!(token.starts_with("user:"), "a PAT: {token}");
    assert_eq!(server.chaosgate_token().await, token, "created once");
    let (status, _) = server
        .request(
            reqwest::Method::POST,
            "/api/admin/projects/default/features/checkout-v2/environments/production/off",
            &token,
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert!(
        !server
            .is_enabled("default", "production", "checkout-v2")
            .await
    );

    let events = server.events().await;
    let actors = |kind: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["type"] == kind && e["featureName"] == "checkout-v2")
            .map(|e| e["createdBy"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(actors("feature-environment-enabled"), [unleash::HUMAN]);
    assert_eq!(actors("feature-environment-disabled"), [unleash::CHAOSGATE]);
}

/// What the test's listener received: the `authorization` header and the body.
type Delivery = (Option<String>, Value);

async fn receive(
    State(sender): State<mpsc::UnboundedSender<Delivery>>,
    headers: HeaderMap,
    body: String,
) {
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    let _ = sender.send((authorization, value));
}

#[tokio::test]
async fn the_webhook_integration_delivers_each_flag_change_with_its_secret_at_once() {
    let (sender, mut deliveries) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the webhook listener");
    let address = listener.local_addr().expect("listener address");
    let app = axum::Router::new()
        .route("/unleash/webhook", axum::routing::post(receive))
        .with_state(sender);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let server = UnleashServer::new().await;
    server.create_flag("default", "checkout-v2").await;
    let id = server
        .add_webhook(
            &format!("http://{address}/unleash/webhook"),
            "webhook-secret-1",
        )
        .await;
    server
        .set_enabled("default", "production", "checkout-v2", true)
        .await;

    let enabled = tokio::time::timeout(DELIVERY, async {
        loop {
            let (authorization, body) = deliveries.recv().await.expect("listener alive");
            assert_eq!(authorization.as_deref(), Some("webhook-secret-1"));
            if body["type"] == "feature-environment-enabled" {
                return body;
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no feature-environment-enabled delivery within {DELIVERY:?}; Unleash's log:\n{}",
            server.log_tail(40)
        )
    });
    assert_eq!(enabled["featureName"], "checkout-v2");
    assert_eq!(enabled["project"], "default");
    assert_eq!(enabled["environment"], "production");
    assert_eq!(enabled["createdBy"], unleash::HUMAN);
    assert!(enabled["id"].as_i64().is_some(), "an event id: {enabled}");

    // Unleash records the delivery once it has our answer.
    let deadline = tokio::time::Instant::now() + DELIVERY;
    loop {
        let log = server.webhook_deliveries(id).await;
        if log
            .iter()
            .any(|d| d["state"] == "success" && d["event"]["type"] == "feature-environment-enabled")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Unleash records no successful delivery within {DELIVERY:?}: {log:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn a_stopped_server_is_unreachable_and_keeps_the_flag_state_when_started_again() {
    let server = UnleashServer::new().await;
    server.create_flag("default", "checkout-v2").await;
    server
        .set_enabled("default", "production", "checkout-v2", true)
        .await;

    server.stop().await;
    let refused = reqwest::Client::new()
        .get(format!("{}/health", server.url()))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    let error = refused.expect_err("the API answers while stopped");
    assert!(error.is_connect(), "a refused connection: {error}");

    server.start().await;
    assert!(
        server
            .is_enabled("default", "production", "checkout-v2")
            .await,
        "the flag's state survives the outage"
    );
}

// --- The files a user starts from: the example config and docker-compose.yml ----------

#[test]
fn the_unleash_example_config_is_a_valid_worker_and_bridge_config() {
    use chaosgate::config::Config;

    let path = repo("deploy/unleash.example.toml");
    let secrets = vec![
        (
            "CHAOSGATE_UNLEASH__TOKEN".to_string(),
            "user:pat".to_string(),
        ),
        (
            "CHAOSGATE_UNLEASH__WEBHOOK__TOKEN".to_string(),
            "webhook-secret".to_string(),
        ),
    ];
    let config = Config::load(&path, secrets).unwrap_or_else(|e| panic!("{e}"));
    let unleash = chaosgate::connect::unleash::section(&config).expect("an [unleash] section");
    assert_eq!(
        unleash.url, "http://127.0.0.1:14242",
        "deploy/local/unleash.sh's"
    );
    assert_eq!(unleash.actor, "chaosgate");
    assert!(!unleash.hold_while_gating);
    assert_eq!(unleash.api_token().unwrap(), "user:pat");
    assert_eq!(unleash.webhook_token().unwrap(), "webhook-secret");
    assert_eq!(unleash.webhook.listen.port(), 9466);
    assert_eq!(unleash.commands.group_id, "chaosgate-unleash");
    chaosgate::catalog::Catalog::load(std::slice::from_ref(&config.catalog.path))
        .unwrap_or_else(|problems| panic!("{problems:#?}"));

    // No secret in the file: starting without one names the variable to set.
    let bare = Config::load(&path, Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    let unleash = chaosgate::connect::unleash::section(&bare).expect("an [unleash] section");
    let missing = unleash.api_token().expect_err("no token in the example");
    assert!(missing.contains("CHAOSGATE_UNLEASH__TOKEN"), "{missing}");
}

#[test]
fn compose_wires_unleash_its_setup_and_the_bridges_together() {
    let compose = compose::compose();
    let services = &compose["services"];
    let env = |service: &str, key: &str| -> String {
        services[service]["environment"][key]
            .as_str()
            .unwrap_or_else(|| panic!("{service} has no {key}"))
            .to_string()
    };

    // The bridges: the image config plus the service's overrides.
    let connect = &services["chaosgate-connect"];
    assert_eq!(connect["command"][0], "connect");
    assert_eq!(connect["command"][1], "unleash");
    let config = compose::service_config(&compose, "chaosgate-connect");
    let unleash = chaosgate::connect::unleash::section(&config).expect("an [unleash] section");
    assert_eq!(
        config.kafka.bootstrap_servers,
        env("chaosgate", "CHAOSGATE_KAFKA__BOOTSTRAP_SERVERS")
    );
    assert_eq!(unleash.url, env("unleash-setup", "UNLEASH"));
    assert_eq!(unleash.actor, "chaosgate", "the user unleash-setup creates");
    assert_eq!(
        unleash.token_file.as_deref(),
        Some(std::path::Path::new(&env("unleash-setup", "TOKEN_FILE")))
    );
    assert_eq!(
        unleash.webhook.token_file.as_deref(),
        Some(std::path::Path::new(&env(
            "unleash-setup",
            "WEBHOOK_TOKEN_FILE"
        )))
    );
    assert_eq!(
        env("unleash-setup", "WEBHOOK_URL"),
        format!(
            "http://chaosgate-connect:{}/unleash/webhook",
            unleash.webhook.listen.port()
        )
    );
    for service in ["chaosgate-connect", "unleash-setup"] {
        assert_eq!(
            services[service]["secrets"][0], "unleash-webhook-token",
            "{service}"
        );
    }
    let secret_file = compose["secrets"]["unleash-webhook-token"]["file"]
        .as_str()
        .expect("the unleash-webhook-token secret");
    let secret = std::fs::read_to_string(repo(secret_file)).expect("read the webhook secret");
    assert!(!secret.trim().is_empty());

    // Unleash: the token setup uses is the seeded one, on the compose PostgreSQL.
    assert_eq!(
        env("unleash", "INIT_ADMIN_API_TOKENS"),
        env("unleash-setup", "UNLEASH_ADMIN_TOKEN")
    );
    assert!(env("unleash", "DATABASE_URL").contains(&format!(
        "{}:{}@postgres:5432/{}",
        env("postgres", "POSTGRES_USER"),
        env("postgres", "POSTGRES_PASSWORD"),
        env("postgres", "POSTGRES_DB")
    )));
    assert!(
        std::path::Path::new(
            services["unleash-setup"]["volumes"][0]
                .as_str()
                .and_then(|v| v.split(':').next())
                .map(repo)
                .expect("the setup script mount")
                .as_path()
        )
        .is_file()
    );

    // The worker gates the flag setup creates, as chaosgate-connect keys it.
    let catalog = chaosgate::catalog::Catalog::load(&[repo("deploy/compose/catalog")])
        .unwrap_or_else(|problems| panic!("{problems:#?}"));
    assert!(
        catalog
            .pipeline_for("default", "production", &env("unleash-setup", "FLAG"))
            .is_some()
    );
}

#[test]
fn the_local_try_it_catalog_gates_safe_and_risky_flags_of_unleash_s_default_project() {
    // README, "Connect Unleash", "Try it": safe-* pass, risky-* fail.
    let catalog = chaosgate::catalog::Catalog::load(&[repo("deploy/local/unleash-catalog")])
        .unwrap_or_else(|problems| panic!("{problems:#?}"));
    let pipeline = |flag: &str| {
        catalog
            .pipeline_for("default", "production", flag)
            .map(|p| p.id.clone())
    };
    assert_eq!(
        pipeline("safe-checkout").as_deref(),
        Some("unleash-try-safe")
    );
    assert_eq!(
        pipeline("risky-checkout").as_deref(),
        Some("unleash-try-risky")
    );
    assert_eq!(pipeline("other"), None);
}
