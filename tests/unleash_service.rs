//! The real Unleash server the Unleash bridge tests run against (`tests/support/unleash.rs`)
//! behaves as those tests assume: flags turned on by the human read back on, each actor's
//! `createdBy`, a webhook integration that delivers at once with its secret header, an
//! outage that keeps the flag's state; and `deploy/unleash.example.toml` is a valid config.

#[path = "support/unleash.rs"]
mod unleash;

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
