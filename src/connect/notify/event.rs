//! What the notifier tells, derived from one committed record of `flag-commands` or
//! `chaos-experiment-runs`: zero, one or more [`Notification`]s, each with the facts a
//! person needs and the idempotency key that names it.
//!
//! The rules:
//! - `command_issued`: every flag command (dry runs included: they say so);
//! - `step_failed`: a final run record (not `running`) with status `failed` or `error`;
//! - `fault_not_reverted`: a final run record with a fault injected and not reverted, or a
//!   `previous_attempt_reverts` entry not reverted;
//! - `guard_fired`: a guard record with status `fired`;
//! - `approval_needed`: a hold record of kind `approval`, status `waiting`.
//!
//! Any other record (another `type`, a running run record, a record that is not a
//! CloudEvent) yields nothing: the topics carry more than the notifier reads, and that
//! is not an error here (the worker and the view report malformed records).
//!
//! The key is a UUIDv5 of (receiver, event, the source record's CloudEvent `id`): a record
//! delivered again (after a crash, a rebalance) gives the same key, so a receiver can drop
//! what it has seen.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::config::EventKind;
use crate::contract::flag_command::FLAG_COMMAND_TYPE;
use crate::contract::guard_record::GUARD_RECORD_TYPE;
use crate::contract::hold_record::HOLD_RECORD_TYPE;
use crate::contract::run_record::{FlagRef, RUN_RECORD_TYPE};
use crate::contract::{
    CloudEvent, FlagCommand, GuardRecord, GuardStatus, HoldKind, HoldRecord, HoldStatus,
    KafkaMessage, RunRecord, RunStatus,
};

/// The namespace of notification keys: UUIDv5 of the URL namespace and
/// `https://chaosgate.dev/notifications`.
fn namespace() -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_URL, b"https://chaosgate.dev/notifications")
}

/// The idempotency key of `event` about the record whose CloudEvent id is `source_id`,
/// for `receiver`: `Idempotency-Key`, `webhook-id` and the notification's CloudEvent id.
pub fn key(receiver: &str, event: EventKind, source_id: &str) -> String {
    let name = [receiver, event.as_str(), source_id].join("\u{1f}");
    Uuid::new_v5(&namespace(), name.as_bytes()).to_string()
}

/// The flag a notification is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlagFacts {
    /// Project.
    pub project: String,
    /// Environment.
    pub environment: String,
    /// Flag key.
    pub key: String,
}

impl FlagFacts {
    /// `project/environment/key`.
    pub fn path(&self) -> String {
        format!("{}/{}/{}", self.project, self.environment, self.key)
    }
}

/// The facts of one notification: the `data` of the webhook's CloudEvent, and what the
/// Slack text is written from. Absent facts are left out of the JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Facts {
    /// The event.
    pub event: EventKind,
    /// The flag.
    pub flag: FlagFacts,
    /// The pipeline that gated the change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline_id: Option<String>,
    /// Its execution (the view's page of it is `link`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline_execution_id: Option<String>,
    /// The command issued (`enable`, `disable`, `revert`): for `command_issued`, and for
    /// `guard_fired` when the record says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The command's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// `command_issued`: whether the command is a dry run (not applied to the flag
    /// service).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// Why, in one readable sentence.
    pub reason: String,
    /// The stage and step, for step events and approvals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// The step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The run record's id, for run events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// The status of the record (run, guard or hold) the event comes from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// `fault_not_reverted`: the faults left active (names).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<String>,
    /// The chaos experiments view's page of the execution, when `notify.view_url` is set
    /// and the execution is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// One thing to tell: its kind, the source record's CloudEvent id and time, and facts.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The event.
    pub kind: EventKind,
    /// The source record's CloudEvent `id`.
    pub source_id: String,
    /// The source record's CloudEvent `time`, when it has one.
    pub time: Option<DateTime<Utc>>,
    /// The facts.
    pub facts: Facts,
}

/// The notifications `message` gives (see the module doc), with links under `view_url`.
pub fn notifications(message: &KafkaMessage, view_url: Option<&str>) -> Vec<Notification> {
    let Ok(event) = CloudEvent::decode(message) else {
        return Vec::new();
    };
    let facts = match event.event_type.as_str() {
        FLAG_COMMAND_TYPE => serde_json::from_value::<FlagCommand>(event.data.clone())
            .map(|c| vec![command_issued(&c)])
            .unwrap_or_default(),
        RUN_RECORD_TYPE => serde_json::from_value::<RunRecord>(event.data.clone())
            .map(|r| run_ended(&r))
            .unwrap_or_default(),
        GUARD_RECORD_TYPE => serde_json::from_value::<GuardRecord>(event.data.clone())
            .ok()
            .and_then(|g| guard_fired(&g))
            .into_iter()
            .collect(),
        HOLD_RECORD_TYPE => serde_json::from_value::<HoldRecord>(event.data.clone())
            .ok()
            .and_then(|h| approval_needed(&h))
            .into_iter()
            .collect(),
        _ => Vec::new(),
    };
    facts
        .into_iter()
        .map(|mut facts| {
            facts.link = link(view_url, facts.pipeline_execution_id.as_deref());
            Notification {
                kind: facts.event,
                source_id: event.id.clone(),
                time: event.time,
                facts,
            }
        })
        .collect()
}

/// `<view_url>/executions/<id>` (the view's page of an execution).
fn link(view_url: Option<&str>, execution: Option<&str>) -> Option<String> {
    let base = view_url?.trim_end_matches('/');
    let mut url = reqwest::Url::parse(&format!("{base}/")).ok()?;
    url.path_segments_mut()
        .ok()?
        .pop_if_empty()
        .extend(["executions", execution?]);
    Some(url.to_string())
}

fn facts(event: EventKind, flag: FlagFacts, reason: String) -> Facts {
    Facts {
        event,
        flag,
        pipeline_id: None,
        pipeline_execution_id: None,
        command: None,
        command_id: None,
        dry_run: false,
        reason,
        stage: None,
        step: None,
        run_id: None,
        status: None,
        faults: Vec::new(),
        link: None,
    }
}

fn command_issued(command: &FlagCommand) -> Facts {
    let flag = FlagFacts {
        project: command.project.clone(),
        environment: command.environment.clone(),
        key: command.flag.clone(),
    };
    Facts {
        pipeline_id: command.pipeline_id.clone(),
        pipeline_execution_id: command.pipeline_execution_id.clone(),
        command: Some(command.command.as_str().into()),
        command_id: Some(command.command_id.clone()),
        dry_run: command.dry_run,
        ..facts(EventKind::CommandIssued, flag, command.reason.clone())
    }
}

fn run_ended(run: &RunRecord) -> Vec<Facts> {
    if run.status == RunStatus::Running {
        return Vec::new();
    }
    let flag = FlagFacts {
        project: run.flag.project.clone(),
        environment: run.flag.environment.clone(),
        key: run.flag.key.clone(),
    };
    let about = |event, reason: String| Facts {
        pipeline_id: Some(run.pipeline_id.clone()),
        pipeline_execution_id: Some(run.pipeline_execution_id.clone()),
        stage: Some(run.stage.id.clone()),
        step: Some(run.step.id.clone()),
        run_id: Some(run.run_id.clone()),
        status: Some(run.status.as_str().into()),
        ..facts(event, flag.clone(), reason)
    };
    let mut told = Vec::new();
    if matches!(run.status, RunStatus::Failed | RunStatus::Error) {
        // The run's own one-line summary ("score 0 < expected 80"), else what failed.
        let reason = run
            .summary
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| {
                format!(
                    "step {} of stage {} {}",
                    run.step.id,
                    run.stage.id,
                    run.status.as_str()
                )
            });
        told.push(about(EventKind::StepFailed, reason));
    }
    let mut left: Vec<String> = run
        .faults
        .iter()
        .filter(|f| f.started_at.is_some() && !f.reverted)
        .map(|f| f.name.clone())
        .collect();
    for earlier in &run.previous_attempt_reverts {
        if !earlier.reverted && !left.contains(&earlier.fault) {
            left.push(earlier.fault.clone());
        }
    }
    if !left.is_empty() {
        let reason = format!(
            "fault{} {} of step {} not reverted: check the target and revert by hand",
            if left.len() == 1 { "" } else { "s" },
            left.join(", "),
            run.step.id
        );
        told.push(Facts {
            faults: left,
            ..about(EventKind::FaultNotReverted, reason)
        });
    }
    told
}

fn flag_facts(flag: &FlagRef) -> FlagFacts {
    FlagFacts {
        project: flag.project.clone(),
        environment: flag.environment.clone(),
        key: flag.key.clone(),
    }
}

fn guard_fired(guard: &GuardRecord) -> Option<Facts> {
    if guard.status != GuardStatus::Fired {
        return None;
    }
    let reason = guard
        .reason
        .clone()
        .unwrap_or_else(|| format!("guard {} fired", guard.guard_id));
    Some(Facts {
        pipeline_id: Some(guard.pipeline_id.clone()),
        pipeline_execution_id: Some(guard.pipeline_execution_id.clone()),
        command: Some(guard.on_failure.as_str().into()),
        command_id: guard.command_id.clone(),
        status: Some(guard.status.as_str().into()),
        ..facts(EventKind::GuardFired, flag_facts(&guard.flag), reason)
    })
}

fn approval_needed(hold: &HoldRecord) -> Option<Facts> {
    if hold.kind != HoldKind::Approval || hold.status != HoldStatus::Waiting {
        return None;
    }
    let step = hold.step.as_ref().map(|s| s.id.clone());
    let mut reason = match &step {
        Some(step) => format!("approval needed at step {step}"),
        None => "approval needed".to_string(),
    };
    if !hold.reason.is_empty() {
        reason = format!("{reason}: {}", hold.reason);
    }
    if let Some(until) = hold.until {
        reason = format!(
            "{reason} (until {})",
            until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    Some(Facts {
        pipeline_id: Some(hold.pipeline_id.clone()),
        pipeline_execution_id: Some(hold.pipeline_execution_id.clone()),
        stage: hold.stage.as_ref().map(|s| s.id.clone()),
        step,
        status: Some(hold.status.as_str().into()),
        ..facts(EventKind::ApprovalNeeded, flag_facts(&hold.flag), reason)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::flag_command::flag_command_example;
    use crate::contract::guard_record::guard_record_example;
    use crate::contract::hold_record::hold_record_example;
    use crate::contract::run_record::run_record_example;

    fn record(event_type: &str, id: &str, data: serde_json::Value) -> KafkaMessage {
        CloudEvent {
            id: id.into(),
            source: "/chaosgate".into(),
            event_type: event_type.into(),
            time: None,
            subject: None,
            extensions: Default::default(),
            data,
        }
        .to_binary(None)
    }

    #[test]
    fn a_command_is_told_with_a_link_and_a_stable_key() {
        let command = flag_command_example();
        let message = record(
            FLAG_COMMAND_TYPE,
            "c-1",
            serde_json::to_value(&command).unwrap(),
        );
        let told = notifications(&message, Some("http://view.example/base/"));
        assert_eq!(told.len(), 1);
        let n = &told[0];
        assert_eq!(n.kind, EventKind::CommandIssued);
        assert_eq!(n.facts.command.as_deref(), Some(command.command.as_str()));
        assert_eq!(
            n.facts.link.as_deref(),
            Some(
                format!(
                    "http://view.example/base/executions/{}",
                    command.pipeline_execution_id.unwrap()
                )
                .as_str()
            )
        );
        assert_eq!(key("ops", n.kind, "c-1"), key("ops", n.kind, "c-1"));
        assert_ne!(key("ops", n.kind, "c-1"), key("chat", n.kind, "c-1"));
        assert_ne!(
            key("ops", EventKind::StepFailed, "c-1"),
            key("ops", EventKind::FaultNotReverted, "c-1")
        );
    }

    #[test]
    fn a_failed_run_with_a_fault_left_gives_two_and_running_ones_none() {
        let mut run = run_record_example();
        run.status = RunStatus::Failed;
        run.faults[0].reverted = false;
        run.faults[0].started_at = Some(Utc::now());
        let message = record(RUN_RECORD_TYPE, "r-1", serde_json::to_value(&run).unwrap());
        let kinds: Vec<EventKind> = notifications(&message, None)
            .iter()
            .map(|n| n.kind)
            .collect();
        assert_eq!(kinds, [EventKind::StepFailed, EventKind::FaultNotReverted]);
        run.status = RunStatus::Running;
        let message = record(RUN_RECORD_TYPE, "r-2", serde_json::to_value(&run).unwrap());
        assert!(notifications(&message, None).is_empty());
        run.status = RunStatus::Passed;
        run.faults[0].reverted = true;
        let message = record(RUN_RECORD_TYPE, "r-3", serde_json::to_value(&run).unwrap());
        assert!(notifications(&message, None).is_empty());
    }

    #[test]
    fn guards_fired_and_approvals_waiting_are_told_other_types_are_not() {
        let mut guard = guard_record_example();
        guard.status = GuardStatus::Fired;
        guard.reason = Some("guard checkout-errors failed".into());
        let data = serde_json::to_value(&guard).unwrap();
        let told = notifications(&record(GUARD_RECORD_TYPE, "g-1", data), None);
        assert_eq!(told[0].kind, EventKind::GuardFired);
        assert_eq!(told[0].facts.reason, "guard checkout-errors failed");
        assert_eq!(
            told[0].facts.command.as_deref(),
            Some(guard.on_failure.as_str())
        );
        guard.status = GuardStatus::Expired;
        let data = serde_json::to_value(&guard).unwrap();
        assert!(notifications(&record(GUARD_RECORD_TYPE, "g-2", data), None).is_empty());

        let mut hold = hold_record_example();
        hold.kind = HoldKind::Approval;
        hold.status = HoldStatus::Waiting;
        let data = serde_json::to_value(&hold).unwrap();
        let told = notifications(&record(HOLD_RECORD_TYPE, "h-1", data), None);
        assert_eq!(told[0].kind, EventKind::ApprovalNeeded);
        assert_eq!(told[0].facts.flag.key, hold.flag.key);
        hold.status = HoldStatus::Approved;
        let data = serde_json::to_value(&hold).unwrap();
        assert!(notifications(&record(HOLD_RECORD_TYPE, "h-2", data), None).is_empty());
        hold.status = HoldStatus::Waiting;
        hold.kind = HoldKind::Wait;
        let data = serde_json::to_value(&hold).unwrap();
        assert!(notifications(&record(HOLD_RECORD_TYPE, "h-3", data), None).is_empty());

        let other = serde_json::Value::Null;
        assert!(notifications(&record("dev.example.other.v1", "x", other), None).is_empty());
        assert!(notifications(&KafkaMessage::default(), None).is_empty());
    }
}
