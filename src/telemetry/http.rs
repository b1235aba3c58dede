//! The worker's HTTP endpoints on `[http] listen`: `/healthz`, `/readyz`, `/metrics`.
//!
//! - `/healthz`: liveness. 200 while every watched loop (the consumer loop, the committer:
//!   see [`super::heartbeat`]) has ticked within `worker.liveness_timeout`; else 503 with
//!   the loops that stalled, so Kubernetes restarts a wedged worker; also 503 while the
//!   consumer has failed fatally (fenced) and a fresh worker has not replaced it. Before the worker
//!   watches any loop (while it waits for Kafka at start) it answers 200.
//! - `/readyz`: 200 when the consumer has partitions assigned, reaches a broker, and the
//!   producer works (its last transaction did not fail; before the first one it is
//!   taken to work, so an idle worker is ready), else 503 with the reasons as JSON. The worker keeps a
//!   [`Readiness`] handle up to date; whether a broker is reachable comes from the
//!   consumer's librdkafka statistics ([`metrics::kafka_brokers_up`], every
//!   `statistics.interval.ms`). Nothing here talks to Kafka.
//! - `/metrics`: every `chaosgate_*` metric in the Prometheus text exposition.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::heartbeat::Heartbeat;
use super::metrics;

/// What the worker tells `/readyz`. Cheap to clone; all clones share one state.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    state: Arc<ReadinessState>,
}

#[derive(Debug, Default)]
struct ReadinessState {
    assigned: AtomicUsize,
    /// Assigned partitions whose committed offsets are not read yet.
    loading: AtomicUsize,
    /// The last transaction failed (false before the first one).
    producer_failed: AtomicBool,
    stopping: AtomicBool,
    /// Why the consumer failed fatally, until a fresh worker replaces it.
    consumer_fatal: Mutex<Option<String>>,
    liveness: Mutex<Liveness>,
}

/// The loops `/healthz` watches, and how long each may go without a tick.
#[derive(Debug)]
struct Liveness {
    timeout: Duration,
    beats: Vec<Heartbeat>,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            timeout: Duration::from_secs(120),
            beats: Vec::new(),
        }
    }
}

/// A watched loop that has not ticked within the liveness timeout.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Stalled {
    /// The loop (`main loop`, `committer`).
    pub(crate) name: &'static str,
    /// Seconds since its last tick.
    pub(crate) seconds_since_tick: f64,
}

/// The answer of `/readyz`, as JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ReadinessReport {
    /// Whether the worker is ready.
    pub(crate) ready: bool,
    /// Partitions of the flag-changes topic assigned to this worker.
    pub(crate) assigned_partitions: usize,
    /// Assigned partitions still paused because their committed offsets could not be read
    /// yet (the read is retried).
    pub(crate) partitions_loading: usize,
    /// Whether the producer works: false after a failed transaction, until one commits.
    pub(crate) producer_ok: bool,
    /// Whether the worker is shutting down.
    pub(crate) stopping: bool,
    /// Kafka brokers the consumer is connected to (librdkafka statistics); `null`
    /// before the first statistics.
    pub(crate) kafka_brokers_up: Option<u64>,
    /// Watched loops that have not ticked within the liveness timeout.
    pub(crate) stalled: Vec<Stalled>,
    /// Why it is not ready, one sentence each; empty when ready.
    pub(crate) reasons: Vec<String>,
}

impl Readiness {
    /// Sets how many flag-changes partitions are assigned now (after each rebalance).
    pub fn set_assigned(&self, partitions: usize) {
        self.state.assigned.store(partitions, Ordering::Relaxed);
    }

    /// Sets how many assigned partitions wait for their committed offsets.
    pub(crate) fn set_loading(&self, partitions: usize) {
        self.state.loading.store(partitions, Ordering::Relaxed);
    }

    /// Sets whether the producer works: true after a successful transaction commit or
    /// delivery, false after a fatal producer error or a failed commit.
    pub fn set_producer_ok(&self, ok: bool) {
        self.state.producer_failed.store(!ok, Ordering::Relaxed);
    }

    /// Records that the consumer failed fatally (`Some(why)`: librdkafka's
    /// `rd_kafka_fatal_error()`), or that a fresh one replaced it (`None`). While set,
    /// `/healthz` answers 503 (the loop still goes round, but consumes nothing) and
    /// `/readyz` gives the reason.
    pub(crate) fn set_consumer_fatal(&self, why: Option<String>) {
        *self
            .state
            .consumer_fatal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = why;
    }

    /// Why the consumer failed fatally, if it did and was not replaced yet.
    pub(crate) fn consumer_fatal(&self) -> Option<String> {
        self.state
            .consumer_fatal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// A fresh worker took over after a fatal consumer error: clears that error and the
    /// stopping mark of the worker it replaces.
    pub(crate) fn set_restarted(&self) {
        self.set_consumer_fatal(None);
        self.state.stopping.store(false, Ordering::Relaxed);
    }

    /// Marks the worker as shutting down: `/readyz` answers 503 from now on.
    pub(crate) fn set_stopping(&self) {
        self.state.stopping.store(true, Ordering::Relaxed);
    }

    /// Sets how long a watched loop may go without a tick before `/healthz` fails
    /// (`worker.liveness_timeout`).
    pub(crate) fn set_liveness_timeout(&self, timeout: Duration) {
        self.liveness().timeout = timeout;
    }

    /// Watches `beat` from now on (a loop that must keep ticking).
    pub(crate) fn watch(&self, beat: Heartbeat) {
        self.liveness().beats.push(beat);
    }

    /// Stops watching every loop (the worker has stopped them).
    pub(crate) fn unwatch_all(&self) {
        self.liveness().beats.clear();
    }

    /// Watched loops that have not ticked within the liveness timeout.
    pub(crate) fn stalled(&self) -> Vec<Stalled> {
        let liveness = self.liveness();
        liveness
            .beats
            .iter()
            .filter(|beat| beat.age() > liveness.timeout)
            .map(|beat| Stalled {
                name: beat.name(),
                seconds_since_tick: beat.age().as_secs_f64(),
            })
            .collect()
    }

    fn liveness(&self) -> std::sync::MutexGuard<'_, Liveness> {
        // Every change is one assignment or push: a poisoned lock still holds a whole state.
        self.state
            .liveness
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current state and, when not ready, why.
    pub(crate) fn report(&self) -> ReadinessReport {
        let assigned_partitions = self.state.assigned.load(Ordering::Relaxed);
        let partitions_loading = self.state.loading.load(Ordering::Relaxed);
        let producer_ok = !self.state.producer_failed.load(Ordering::Relaxed);
        let stopping = self.state.stopping.load(Ordering::Relaxed);
        let mut reasons = Vec::new();
        if stopping {
            reasons.push("shutting down".to_string());
        }
        if assigned_partitions == 0 {
            reasons.push("no flag-changes partition assigned".to_string());
        }
        if partitions_loading > 0 {
            reasons.push(format!(
                "{partitions_loading} partitions wait for their committed offsets (the read is retried)"
            ));
        }
        if !producer_ok {
            reasons.push("the Kafka producer is not working".to_string());
        }
        if let Some(why) = self.consumer_fatal() {
            reasons.push(format!(
                "the Kafka consumer failed fatally ({why}); a fresh worker is starting"
            ));
        }
        let kafka_brokers_up = metrics::kafka_brokers_up();
        if kafka_brokers_up == Some(0) {
            reasons.push("no Kafka broker reachable".to_string());
        }
        let stalled = self.stalled();
        for loop_ in &stalled {
            reasons.push(format!(
                "the {} has not ticked for {:.1} s",
                loop_.name, loop_.seconds_since_tick
            ));
        }
        ReadinessReport {
            ready: reasons.is_empty(),
            assigned_partitions,
            partitions_loading,
            producer_ok,
            stopping,
            kafka_brokers_up,
            stalled,
            reasons,
        }
    }
}

/// Why the HTTP endpoints could not start.
#[derive(Debug, thiserror::Error)]
#[error("http.listen: cannot listen on {addr}: {source}")]
pub struct HttpError {
    /// The configured address.
    pub(crate) addr: SocketAddr,
    /// The socket error.
    pub(crate) source: std::io::Error,
}

/// The running endpoints.
#[derive(Debug)]
pub struct HttpServer {
    /// The address bound (the real port when the configuration said 0).
    pub addr: SocketAddr,
    /// The server task; it ends after `shutdown` fires and open requests finish.
    pub task: JoinHandle<std::io::Result<()>>,
}

/// The endpoints as a router, for serving or for embedding in another server.
pub(crate) fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(readiness)
}

/// Binds `addr` and serves the endpoints until `shutdown` fires.
pub async fn serve(
    addr: SocketAddr,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<HttpServer, HttpError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| HttpError { addr, source })?;
    let app = router(readiness);
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    });
    tracing::info!(addr = %bound, "serving /healthz, /readyz and /metrics");
    Ok(HttpServer { addr: bound, task })
}

async fn healthz(State(readiness): State<Readiness>) -> Response {
    if let Some(why) = readiness.consumer_fatal() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "status": "consumer failed", "consumer_fatal": why })),
        )
            .into_response();
    }
    let stalled = readiness.stalled();
    if stalled.is_empty() {
        return axum::Json(serde_json::json!({ "status": "ok" })).into_response();
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({ "status": "stalled", "stalled": stalled })),
    )
        .into_response()
}

async fn readyz(State(readiness): State<Readiness>) -> Response {
    let report = readiness.report();
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(report)).into_response()
}

/// `GET /metrics`: every `chaosgate_*` metric in the Prometheus text exposition; also
/// served by the Unleash bridges.
pub(crate) async fn metrics_text() -> Response {
    match metrics::render() {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_partitions_and_a_producer() {
        let readiness = Readiness::default();
        let report = readiness.report();
        assert!(!report.ready);
        assert_eq!(report.reasons, vec!["no flag-changes partition assigned"]);
        readiness.set_assigned(3);
        assert!(
            readiness.report().ready,
            "the producer is taken to work at first"
        );
        readiness.clone().set_producer_ok(false);
        assert_eq!(
            readiness.report().reasons,
            vec!["the Kafka producer is not working"]
        );
        readiness.set_producer_ok(true);
        assert!(readiness.report().ready);
        readiness.set_loading(2);
        assert_eq!(
            readiness.report().reasons,
            vec!["2 partitions wait for their committed offsets (the read is retried)"]
        );
        readiness.set_loading(0);
        readiness.set_stopping();
        assert_eq!(readiness.report().reasons, vec!["shutting down"]);
        readiness.set_consumer_fatal(Some("FencedInstanceId: fenced".into()));
        assert_eq!(
            readiness.report().reasons,
            vec![
                "shutting down",
                "the Kafka consumer failed fatally (FencedInstanceId: fenced); a fresh worker is starting"
            ]
        );
        readiness.set_restarted();
        assert!(readiness.report().ready, "a fresh worker replaced it");
    }

    #[test]
    fn a_loop_that_stops_ticking_fails_liveness_and_says_which() {
        let readiness = Readiness::default();
        readiness.set_assigned(1);
        readiness.set_liveness_timeout(Duration::from_millis(50));
        let main_loop = Heartbeat::new("main loop");
        let committer = Heartbeat::new("committer");
        readiness.watch(main_loop.clone());
        readiness.watch(committer.clone());
        assert!(readiness.stalled().is_empty());
        std::thread::sleep(Duration::from_millis(80));
        main_loop.tick();
        let stalled = readiness.stalled();
        assert_eq!(stalled.len(), 1, "{stalled:?}");
        assert_eq!(stalled[0].name, "committer");
        let report = readiness.report();
        assert!(!report.ready);
        assert!(
            report.reasons[0].starts_with("the committer has not ticked for"),
            "{:?}",
            report.reasons
        );
        committer.tick();
        assert!(readiness.report().ready);
    }

    #[tokio::test]
    async fn healthz_answers_503_naming_the_stalled_loop() {
        let readiness = Readiness::default();
        readiness.set_liveness_timeout(Duration::from_millis(50));
        let main_loop = Heartbeat::new("main loop");
        readiness.watch(main_loop.clone());
        let stop = CancellationToken::new();
        let server = serve(([127, 0, 0, 1], 0).into(), readiness.clone(), stop.clone())
            .await
            .expect("serve");
        let url = format!("http://{}/healthz", server.addr);
        let answer = reqwest::get(&url).await.expect("healthz");
        assert_eq!(answer.status().as_u16(), 200);
        tokio::time::sleep(Duration::from_millis(80)).await;
        let answer = reqwest::get(&url).await.expect("healthz");
        assert_eq!(answer.status().as_u16(), 503);
        let body: serde_json::Value = answer.json().await.expect("json");
        assert_eq!(body["status"], "stalled");
        assert_eq!(body["stalled"][0]["name"], "main loop");
        main_loop.tick();
        assert_eq!(
            reqwest::get(&url).await.expect("healthz").status().as_u16(),
            200
        );
        stop.cancel();
    }
}
