//! An HTTP target for guards: `GET /health` answers 200 until the test flips it to 503
//! (for good, or for the next few requests), and remembers every status it gave.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;

/// What the HTTP target answers: 503 while `failing`, or for the next `fail_next`
/// requests; 200 otherwise. `answers` holds every status it gave, in order.
#[derive(Default)]
pub struct Health {
    /// Answer 503 from now on.
    pub failing: AtomicBool,
    /// Answer 503 to this many requests, then as before.
    pub fail_next: AtomicU32,
    answers: Mutex<Vec<u16>>,
}

impl Health {
    /// Every status answered, in order.
    pub fn answers(&self) -> Vec<u16> {
        self.answers.lock().unwrap().clone()
    }
}

/// An HTTP target serving `GET /health` as `health` says; it stops with the test.
pub async fn start_health_target() -> (SocketAddr, Arc<Health>) {
    let health = Arc::new(Health::default());
    let app = Router::new()
        .route(
            "/health",
            get(|State(health): State<Arc<Health>>| async move {
                let blip = health
                    .fail_next
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                let status = if blip || health.failing.load(Ordering::SeqCst) {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                };
                health.answers.lock().unwrap().push(status.as_u16());
                (status, "")
            }),
        )
        .with_state(health.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, health)
}
