//! The kill switch: abort requests read from `chaosgate-control` cancel matching runs.
//!
//! Every worker reads the whole control topic (its own consumer group, from the end), so a
//! request reaches whichever worker runs the experiment. Runs are found by run id or
//! pipeline execution id; `all` cancels everything in flight on this worker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio_util::sync::CancellationToken;

use crate::contract::control::ABORT_REQUEST_TYPE;
use crate::contract::{AbortRequest, AbortScope, CloudEvent};

use super::record::from_rdkafka;

/// Executions in flight on this worker, by pipeline execution id and by run id.
#[derive(Debug, Clone, Default)]
pub struct KillSwitch {
    inner: Arc<Mutex<Registry>>,
}

#[derive(Debug, Default)]
struct Registry {
    executions: HashMap<String, CancellationToken>,
    runs: HashMap<String, String>,
}

impl KillSwitch {
    /// Registers an execution's kill token.
    pub fn register(&self, execution_id: &str, kill: CancellationToken) {
        if let Ok(mut registry) = self.inner.lock() {
            registry.executions.insert(execution_id.to_string(), kill);
        }
    }

    /// Records that `run_id` belongs to `execution_id`.
    pub fn register_run(&self, run_id: &str, execution_id: &str) {
        if let Ok(mut registry) = self.inner.lock() {
            registry
                .runs
                .insert(run_id.to_string(), execution_id.to_string());
        }
    }

    /// Forgets a finished execution and its runs.
    pub fn unregister(&self, execution_id: &str) {
        if let Ok(mut registry) = self.inner.lock() {
            registry.executions.remove(execution_id);
            registry
                .runs
                .retain(|_, execution| execution != execution_id);
        }
    }

    /// Cancels what `request` matches; returns how many executions it stopped.
    pub fn apply(&self, request: &AbortRequest) -> usize {
        let Ok(registry) = self.inner.lock() else {
            return 0;
        };
        let id = request.id.as_deref().unwrap_or_default();
        let matched: Vec<&CancellationToken> = match request.scope {
            AbortScope::All => registry.executions.values().collect(),
            AbortScope::PipelineExecution => registry.executions.get(id).into_iter().collect(),
            AbortScope::Run => registry
                .runs
                .get(id)
                .and_then(|execution| registry.executions.get(execution))
                .into_iter()
                .collect(),
        };
        for token in &matched {
            token.cancel();
        }
        matched.len()
    }
}

/// Reads abort requests until `stop` fires and applies them.
pub async fn listen(
    client: ClientConfig,
    topic: String,
    group_id: String,
    kill_switch: KillSwitch,
    stop: CancellationToken,
) {
    let consumer: StreamConsumer = match client
        .clone()
        .set("group.id", &group_id)
        .set("auto.offset.reset", "latest")
        // A group of its own per process, reading from the end: committing its offsets
        // would only leave one stale group per worker start on the cluster.
        .set("enable.auto.commit", "false")
        .create()
    {
        Ok(consumer) => consumer,
        Err(error) => {
            tracing::error!(%error, "cannot create the control consumer; the kill switch is off");
            return;
        }
    };
    if let Err(error) = consumer.subscribe(&[&topic]) {
        tracing::error!(%error, %topic, "cannot subscribe to the control topic; the kill switch is off");
        return;
    }
    // Read failures in a row: while the cluster is away, each poll fails at once; the
    // first is logged, then one in fifty, and polls slow down to one a second.
    let mut failures: u32 = 0;
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return,
            message = consumer.recv() => message,
        };
        let message = match message {
            Ok(message) => {
                if failures > 0 {
                    tracing::info!(failures, "control topic readable again");
                    failures = 0;
                }
                from_rdkafka(&message)
            }
            Err(error) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(50) {
                    tracing::warn!(%error, failures, "control topic read failed");
                }
                let wait = Duration::from_millis(200) * failures.min(5);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                continue;
            }
        };
        let request = CloudEvent::decode(&message)
            .map_err(|e| e.to_string())
            .and_then(|event| {
                if event.event_type != ABORT_REQUEST_TYPE {
                    return Err(format!(
                        "type '{}' is not {ABORT_REQUEST_TYPE}",
                        event.event_type
                    ));
                }
                serde_json::from_value::<AbortRequest>(event.data).map_err(|e| format!("data: {e}"))
            });
        match request {
            Ok(request) => {
                let stopped = kill_switch.apply(&request);
                tracing::info!(scope = ?request.scope, id = ?request.id, reason = ?request.reason, stopped, "abort request");
            }
            Err(error) => {
                tracing::warn!(%error, "ignored a control message that is not an abort request")
            }
        }
    }
}
