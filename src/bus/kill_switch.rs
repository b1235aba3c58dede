//! The kill switch: abort requests read from `chaosgate-control` cancel matching runs.
//!
//! Every worker reads the whole control topic, every partition from the beginning (no
//! consumer group: nothing is committed, and the topic's retention bounds what is read),
//! so a request reaches whichever worker runs the experiment, including one that takes
//! an event over after a restart or a rebalance. Runs are found by run id or pipeline
//! execution id.
//!
//! The rule that keeps an abort from being lost: every request read is remembered with
//! the time it was sent (its Kafka timestamp), and an execution registered later is
//! checked against them, so an abort published while nobody owned the event (a worker
//! restarting, a partition moving) stops the execution its new owner starts. What a
//! remembered request matches:
//! - `pipeline_execution` `id`: that execution, whenever it registers (ids are derived
//!   from the event, so every attempt of it has the same one);
//! - `run` `id`: the execution the run belongs to, when a run with that id registers (a
//!   run cut off by a takeover runs again as the next attempt under a new run id: abort
//!   its `pipeline_execution_id`, which every record carries, to reach that one);
//! - `all`: every execution whose flag change occurred (`occurred_at`) at or before the
//!   request was sent; changes that occur later are not affected.
//!
//! At most [`REMEMBERED`] requests of each kind are kept (the oldest go first).
//!
//! [`KillSwitch::caught_up`] resolves once the topic has been read up to where it ended
//! when the kill switch started (or after [`CATCH_UP_LIMIT`], or when the topic cannot be
//! read): a worker that waits for it before it takes events knows every abort published
//! before it started, even for an execution that would finish before the backlog is read.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

use crate::contract::control::{ControlRequest, decode_control_request};
use crate::contract::{AbortRequest, AbortScope, ApprovalRequest};

use super::follow::Follower;

/// How many remembered requests of each scope are kept.
pub(crate) const REMEMBERED: usize = 100_000;
/// The longest [`KillSwitch::caught_up`] waits for the backlog to be read (a topic whose
/// last offsets are transaction markers never shows a record at its end).
pub(crate) const CATCH_UP_LIMIT: Duration = Duration::from_secs(10);

/// Executions in flight on this worker, by pipeline execution id and by run id, and the
/// abort requests read so far.
#[derive(Debug, Clone)]
pub struct KillSwitch {
    inner: Arc<Mutex<Registry>>,
    caught_up: Arc<tokio::sync::watch::Sender<bool>>,
    /// Counts approval requests read, so parked executions wake to look for theirs.
    answered: Arc<tokio::sync::watch::Sender<u64>>,
    /// Where the executions waiting for approval are known, to say why a request is
    /// ignored.
    waiting: Arc<Mutex<Option<super::flag_state::FlagStates>>>,
}

impl Default for KillSwitch {
    fn default() -> Self {
        KillSwitch {
            inner: Arc::default(),
            caught_up: Arc::new(tokio::sync::watch::Sender::new(false)),
            answered: Arc::new(tokio::sync::watch::Sender::new(0)),
            waiting: Arc::default(),
        }
    }
}

#[derive(Debug, Default)]
struct Registry {
    /// Kill token and the time its flag change occurred, by pipeline execution id.
    executions: HashMap<String, (CancellationToken, DateTime<Utc>)>,
    runs: HashMap<String, String>,
    aborted: Aborted,
    answers: Answers,
}

/// Approval requests read so far, by pipeline execution id, in the order read; bounded
/// by [`REMEMBERED`] executions.
#[derive(Debug, Default)]
struct Answers {
    by_execution: HashMap<String, Vec<(ApprovalRequest, DateTime<Utc>)>>,
    order: VecDeque<String>,
}

/// Abort requests read so far.
#[derive(Debug, Default)]
struct Aborted {
    executions: Remembered,
    runs: Remembered,
    /// Send times of `all` requests; only the latest matters.
    all: Option<DateTime<Utc>>,
}

/// Ids in the order they were first read, bounded by [`REMEMBERED`].
#[derive(Debug, Default)]
struct Remembered {
    ids: HashMap<String, DateTime<Utc>>,
    order: VecDeque<String>,
}

impl Remembered {
    fn insert(&mut self, id: &str, sent_at: DateTime<Utc>) {
        if self.ids.insert(id.to_string(), sent_at).is_none() {
            self.order.push_back(id.to_string());
            if self.order.len() > REMEMBERED
                && let Some(oldest) = self.order.pop_front()
            {
                self.ids.remove(&oldest);
            }
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.ids.contains_key(id)
    }
}

impl KillSwitch {
    /// Resolves once the control topic's backlog (what it held when [`listen`] started)
    /// has been read, or [`listen`] gave up or stopped; see the module doc.
    pub async fn caught_up(&self) {
        let mut ready = self.caught_up.subscribe();
        let _ = ready.wait_for(|caught_up| *caught_up).await;
    }

    fn mark_caught_up(&self) {
        self.caught_up.send_replace(true);
    }

    /// Registers an execution's kill token, with the time its flag change occurred.
    /// Cancels it at once when an abort read earlier matches it (see the module doc).
    pub fn register(
        &self,
        execution_id: &str,
        kill: CancellationToken,
        occurred_at: DateTime<Utc>,
    ) {
        if let Ok(mut registry) = self.inner.lock() {
            let aborted = &registry.aborted;
            if aborted.executions.contains(execution_id)
                || aborted.all.is_some_and(|sent| occurred_at <= sent)
            {
                tracing::info!(execution_id, "aborted by an earlier abort request");
                kill.cancel();
            }
            registry
                .executions
                .insert(execution_id.to_string(), (kill, occurred_at));
        }
    }

    /// Records that `run_id` belongs to `execution_id`; cancels the execution when an
    /// abort read earlier names the run.
    pub(crate) fn register_run(&self, run_id: &str, execution_id: &str) {
        if let Ok(mut registry) = self.inner.lock() {
            if registry.aborted.runs.contains(run_id)
                && let Some((kill, _)) = registry.executions.get(execution_id)
            {
                tracing::info!(run_id, execution_id, "aborted by an earlier abort request");
                kill.cancel();
            }
            registry
                .runs
                .insert(run_id.to_string(), execution_id.to_string());
        }
    }

    /// Forgets a finished execution and its runs.
    pub(crate) fn unregister(&self, execution_id: &str) {
        if let Ok(mut registry) = self.inner.lock() {
            registry.executions.remove(execution_id);
            registry
                .runs
                .retain(|_, execution| execution != execution_id);
        }
    }

    /// Lets [`KillSwitch::answer`] tell, from the flag-state topic, whether a request's
    /// execution waits for it.
    pub(crate) fn know_waiting(&self, states: super::flag_state::FlagStates) {
        if let Ok(mut waiting) = self.waiting.lock() {
            *waiting = Some(states);
        }
    }

    /// Remembers an approval request sent at `sent_at`, for the execution it names to
    /// find with [`KillSwitch::answer_for`] (now, or after a restart or rebalance). A
    /// request for an execution the flag-state topic does not show waiting at an approval
    /// step (or at the step it names) is logged as ignored; it is still remembered, but
    /// never answers a hold that begins after it was sent.
    pub(crate) fn answer(&self, request: ApprovalRequest, sent_at: DateTime<Utc>) {
        // Judged only once both topics' backlogs are read: a request read before (one sent
        // while no worker ran, or long ago) is remembered, and counts or not when its
        // execution's hold is taken over.
        let states = self
            .waiting
            .lock()
            .ok()
            .and_then(|w| w.clone())
            .filter(|s| s.is_caught_up() && *self.caught_up.borrow());
        let waits_at = states
            .as_ref()
            .map(|s| s.waiting_for_approval(&request.pipeline_execution_id));
        let execution_id = &request.pipeline_execution_id;
        let decision = request.decision;
        let step = request.step.as_deref().unwrap_or("any");
        let requested_by = request.requested_by.as_deref().unwrap_or("(unset)");
        match waits_at {
            Some(None) => {
                tracing::info!(%execution_id, ?decision, step, requested_by, "approval request ignored: the execution is not waiting at an approval step")
            }
            Some(Some(place)) if request.step.as_deref().is_some_and(|s| s != place) => {
                tracing::info!(%execution_id, ?decision, step, waits_at = %place, requested_by, "approval request ignored: the execution waits at another step")
            }
            Some(Some(_)) => {
                tracing::info!(%execution_id, ?decision, step, requested_by, "approval request read")
            }
            None => tracing::debug!(
                %execution_id,
                ?decision,
                step,
                requested_by,
                "approval request read (remembered; judged when its execution's hold is taken over)"
            ),
        }
        if let Ok(mut registry) = self.inner.lock() {
            let answers = &mut registry.answers;
            let id = request.pipeline_execution_id.clone();
            let known = answers.by_execution.contains_key(&id);
            answers
                .by_execution
                .entry(id.clone())
                .or_default()
                .push((request, sent_at));
            if !known {
                answers.order.push_back(id);
                if answers.order.len() > REMEMBERED
                    && let Some(oldest) = answers.order.pop_front()
                {
                    answers.by_execution.remove(&oldest);
                }
            }
        }
        self.answered.send_modify(|count| *count += 1);
    }

    /// The first approval request for `execution_id` that answers a hold at `place`
    /// (`stage-id/step-id`) begun at `since`: sent at or after `since`, naming that step
    /// or none. Later requests, and requests sent before the hold began, never count.
    pub(crate) fn answer_for(
        &self,
        execution_id: &str,
        place: &str,
        since: DateTime<Utc>,
    ) -> Option<(ApprovalRequest, DateTime<Utc>)> {
        let registry = self.inner.lock().ok()?;
        registry
            .answers
            .by_execution
            .get(execution_id)?
            .iter()
            .find(|(request, sent_at)| {
                *sent_at >= since && request.step.as_deref().is_none_or(|step| step == place)
            })
            .cloned()
    }

    /// Changes each time an approval request is read.
    pub(crate) fn answers(&self) -> tokio::sync::watch::Receiver<u64> {
        self.answered.subscribe()
    }

    /// Remembers `request`, sent at `sent_at`, and cancels what it matches now; returns
    /// how many executions it stopped.
    pub(crate) fn apply(&self, request: &AbortRequest, sent_at: DateTime<Utc>) -> usize {
        let Ok(mut registry) = self.inner.lock() else {
            return 0;
        };
        let id = request.id.as_deref().unwrap_or_default();
        match request.scope {
            AbortScope::All => {
                registry.aborted.all = registry.aborted.all.max(Some(sent_at));
            }
            AbortScope::PipelineExecution => registry.aborted.executions.insert(id, sent_at),
            AbortScope::Run => registry.aborted.runs.insert(id, sent_at),
        }
        let matched: Vec<&CancellationToken> = match request.scope {
            AbortScope::All => registry
                .executions
                .values()
                .filter(|(_, occurred_at)| *occurred_at <= sent_at)
                .map(|(kill, _)| kill)
                .collect(),
            AbortScope::PipelineExecution => registry
                .executions
                .get(id)
                .map(|(kill, _)| kill)
                .into_iter()
                .collect(),
            AbortScope::Run => registry
                .runs
                .get(id)
                .and_then(|execution| registry.executions.get(execution))
                .map(|(kill, _)| kill)
                .into_iter()
                .collect(),
        };
        for token in &matched {
            token.cancel();
        }
        matched.len()
    }
}

/// Reads control requests (the whole topic, then each new one) until `stop` fires and
/// applies them; marks the kill switch caught up (see [`KillSwitch::caught_up`]).
pub async fn listen(
    client: ClientConfig,
    topic: String,
    kill_switch: KillSwitch,
    stop: CancellationToken,
) {
    let reader = Follower {
        client,
        topic: topic.clone(),
        label: "chaosgate-control-reader",
        catch_up_limit: CATCH_UP_LIMIT,
        transactional: false,
    };
    let caught_up = |_| kill_switch.mark_caught_up();
    reader
        .follow(&stop, caught_up, |read| {
            match decode_control_request(&read.message) {
                Ok(ControlRequest::Abort(request)) => {
                    let stopped = kill_switch.apply(&request, read.sent_at);
                    tracing::info!(scope = ?request.scope, id = ?request.id, reason = ?request.reason, stopped, "abort request");
                }
                Ok(ControlRequest::Approval(request)) => {
                    kill_switch.answer(request, read.sent_at)
                }
                Err(error) => {
                    tracing::warn!(%error, %topic, partition = read.partition, offset = read.offset, "ignored a control message: not a control request chaosgate reads")
                }
            }
        })
        .await;
    // Never holds a worker back: a kill switch that cannot read has nothing to wait for.
    kill_switch.mark_caught_up();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(scope: AbortScope, id: Option<&str>) -> AbortRequest {
        AbortRequest {
            scope,
            id: id.map(String::from),
            reason: None,
            requested_by: None,
        }
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000 + seconds, 0).expect("time")
    }

    #[test]
    fn an_abort_read_before_its_execution_registers_stops_it() {
        let kill_switch = KillSwitch::default();
        assert_eq!(
            kill_switch.apply(
                &request(AbortScope::PipelineExecution, Some("exec-1")),
                at(10)
            ),
            0
        );
        let kill = CancellationToken::new();
        kill_switch.register("exec-1", kill.clone(), at(0));
        assert!(
            kill.is_cancelled(),
            "the new owner ran an aborted execution"
        );
        let other = CancellationToken::new();
        kill_switch.register("exec-2", other.clone(), at(0));
        assert!(!other.is_cancelled());
    }

    #[test]
    fn a_run_abort_read_before_the_run_registers_stops_its_execution() {
        let kill_switch = KillSwitch::default();
        kill_switch.apply(&request(AbortScope::Run, Some("run-1")), at(10));
        let kill = CancellationToken::new();
        kill_switch.register("exec-1", kill.clone(), at(20));
        assert!(!kill.is_cancelled());
        kill_switch.register_run("run-1", "exec-1");
        assert!(kill.is_cancelled());
    }

    #[test]
    fn all_applies_only_to_changes_that_occurred_before_it_was_sent() {
        let kill_switch = KillSwitch::default();
        let running = CancellationToken::new();
        let later = CancellationToken::new();
        kill_switch.register("running", running.clone(), at(5));
        kill_switch.register("later", later.clone(), at(15));
        assert_eq!(
            kill_switch.apply(&request(AbortScope::All, None), at(10)),
            1
        );
        assert!(running.is_cancelled());
        assert!(!later.is_cancelled());
        // Taken over after the request: older changes stop, newer ones run.
        let old = CancellationToken::new();
        kill_switch.register("old", old.clone(), at(9));
        assert!(old.is_cancelled());
        let new = CancellationToken::new();
        kill_switch.register("new", new.clone(), at(11));
        assert!(!new.is_cancelled());
    }
}
