//! Control requests (v1), read from `chaosgate-control`: the abort request (the kill
//! switch) and the approval request (an answer to a pipeline's `approval` step).
//!
//! A control message is bounded before it is parsed: key, value and headers together at
//! most [`MAX_CONTROL_MESSAGE_BYTES`]; a larger one is refused unread
//! ([`BadControlRequest::Oversized`]), as is anything that is not a control request.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// CloudEvents `type` of an abort request.
pub const ABORT_REQUEST_TYPE: &str = "dev.chaosgate.control.abort.v1";

/// Asks every worker to abort matching runs: faults reverted, records `aborted`, and the
/// pipeline's failure outcome applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "AbortRequest",
    description = "An abort request (v1), the data of a CloudEvent on the chaosgate-control topic.",
    example = abort_request_example()
)]
pub struct AbortRequest {
    /// What to abort.
    pub(crate) scope: AbortScope,
    /// The run id or pipeline execution id (absent for `all`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<String>,
    /// Why, for the records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
    /// Who asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) requested_by: Option<String>,
}

/// The largest control message read, in bytes: key, value and headers together. An
/// abort request is a few hundred bytes; 64 KiB leaves room for long reasons and
/// tracing headers while a flood of large messages cannot make every worker parse them.
pub const MAX_CONTROL_MESSAGE_BYTES: usize = 64 * 1024;

/// CloudEvents `type` of an approval request.
pub const APPROVAL_REQUEST_TYPE: &str = "dev.chaosgate.control.approval.v1";

/// Approves or rejects a pipeline execution waiting at an `approval` step.
///
/// Acted on only by the execution it names, and only while that execution waits at an
/// approval step (at the named `step`, when given) that began at or before the request
/// was sent (its Kafka timestamp); the first such request decides. Any other request is
/// logged and ignored. `requested_by` is what the sender says: who may approve is who may
/// write the control topic (Kafka ACLs), as for abort requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "ApprovalRequest",
    description = "An approval request (v1), the data of a CloudEvent on the chaosgate-control topic.",
    example = approval_request_example()
)]
pub struct ApprovalRequest {
    /// `approve` (the pipeline goes on) or `reject` (the step fails).
    pub decision: ApprovalDecision,
    /// The execution waiting (`pipeline_execution_id` of its records).
    pub pipeline_execution_id: String,
    /// `stage-id/step-id` of the approval step; when given it must be the step the
    /// execution waits at, so a late answer to one approval cannot open the next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Who decided (recorded as `decided_by`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// Why, for the records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// The answer an approval request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalDecision {
    /// Go on with the pipeline.
    Approve,
    /// Fail the approval step.
    Reject,
}

/// The example carried by the schema and used in tests and docs.
pub fn approval_request_example() -> ApprovalRequest {
    ApprovalRequest {
        decision: ApprovalDecision::Approve,
        pipeline_execution_id: "3f0c1a4e-8b7d-5e2f-a1c3-5d9e7f6b4a20".into(),
        step: Some("canary/oncall-ok".into()),
        requested_by: Some("oncall@example.com".into()),
        comment: Some("dashboards look fine after the canary".into()),
    }
}

/// One request read from the control topic.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlRequest {
    /// The kill switch.
    Abort(AbortRequest),
    /// An answer to an approval step.
    Approval(ApprovalRequest),
}

/// Why a message on the control topic is not acted on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadControlRequest {
    /// Larger than [`MAX_CONTROL_MESSAGE_BYTES`]; not parsed.
    #[error(
        "the message is {size} bytes, over the {limit}-byte limit of a control message: not parsed"
    )]
    Oversized {
        /// Key, value and headers together.
        size: usize,
        /// [`MAX_CONTROL_MESSAGE_BYTES`].
        limit: usize,
    },
    /// Not a CloudEvent.
    #[error("{0}")]
    Undecodable(String),
    /// A CloudEvent of another type.
    #[error("type '{0}' is neither {ABORT_REQUEST_TYPE} nor {APPROVAL_REQUEST_TYPE}")]
    OtherType(String),
    /// Its data is not a request of its type.
    #[error("data: {0}")]
    Data(String),
}

/// Decodes one message of the control topic, refusing it unread when it is over
/// [`MAX_CONTROL_MESSAGE_BYTES`].
pub fn decode_control_request(
    message: &super::KafkaMessage,
) -> Result<ControlRequest, BadControlRequest> {
    let size = message.size();
    if size > MAX_CONTROL_MESSAGE_BYTES {
        return Err(BadControlRequest::Oversized {
            size,
            limit: MAX_CONTROL_MESSAGE_BYTES,
        });
    }
    let event = super::CloudEvent::decode(message)
        .map_err(|e| BadControlRequest::Undecodable(e.to_string()))?;
    let data = |e: serde_json::Error| BadControlRequest::Data(e.to_string());
    match event.event_type.as_str() {
        ABORT_REQUEST_TYPE => serde_json::from_value(event.data)
            .map(ControlRequest::Abort)
            .map_err(data),
        APPROVAL_REQUEST_TYPE => serde_json::from_value(event.data)
            .map(ControlRequest::Approval)
            .map_err(data),
        _ => Err(BadControlRequest::OtherType(event.event_type)),
    }
}

/// Which runs an abort request matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AbortScope {
    /// The pipeline execution of the run whose `run_id` is `id`, on whichever worker runs
    /// that run, also if it starts only after the request was sent (the same attempt run
    /// again after a worker restart). A later attempt has a new run id: use
    /// `pipeline_execution` to reach it.
    Run,
    /// Every run of the pipeline execution `id`, on whichever worker runs it, also if it
    /// starts only after the request was sent (a worker restart, a partition moving).
    PipelineExecution,
    /// Every execution of a flag change that occurred (its `occurred_at`) at or before the
    /// request was sent (its Kafka timestamp), running now or started later; changes that
    /// occur after it are not affected.
    All,
}

/// The example carried by the schema and used in tests and docs.
pub(crate) fn abort_request_example() -> AbortRequest {
    AbortRequest {
        scope: AbortScope::PipelineExecution,
        id: Some("3f0c1a4e-8b7d-5e2f-a1c3-5d9e7f6b4a20".into()),
        reason: Some("payments incident in progress".into()),
        requested_by: Some("oncall@example.com".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::CloudEvent;

    fn event(data: serde_json::Value) -> CloudEvent {
        CloudEvent {
            id: "abort-1".into(),
            source: "/oncall".into(),
            event_type: ABORT_REQUEST_TYPE.into(),
            time: None,
            subject: None,
            extensions: Default::default(),
            data,
        }
    }

    #[test]
    fn an_abort_request_decodes_and_an_oversized_one_is_refused_unread() {
        let request = abort_request_example();
        let good = event(serde_json::to_value(&request).unwrap());
        assert_eq!(
            decode_control_request(&good.to_binary(None)),
            Ok(ControlRequest::Abort(request))
        );

        let mut huge = abort_request_example();
        huge.reason = Some("x".repeat(MAX_CONTROL_MESSAGE_BYTES));
        let message = event(serde_json::to_value(&huge).unwrap()).to_binary(None);
        let err = decode_control_request(&message).unwrap_err();
        assert!(
            matches!(err, BadControlRequest::Oversized { size, limit } if size > limit && limit == MAX_CONTROL_MESSAGE_BYTES),
            "{err}"
        );
        assert!(
            err.to_string().contains("over the 65536-byte limit"),
            "{err}"
        );

        let mut other = good.clone();
        other.event_type = "dev.chaosgate.flag.change.v1".into();
        assert!(matches!(
            decode_control_request(&other.to_binary(None)),
            Err(BadControlRequest::OtherType(_))
        ));
    }

    #[test]
    fn an_approval_request_decodes_and_unknown_fields_are_refused() {
        let request = approval_request_example();
        let mut good = event(serde_json::to_value(&request).unwrap());
        good.event_type = APPROVAL_REQUEST_TYPE.into();
        assert_eq!(
            decode_control_request(&good.to_binary(None)),
            Ok(ControlRequest::Approval(request))
        );
        let mut bad = good.clone();
        bad.data["approved"] = true.into();
        let err = decode_control_request(&bad.to_binary(None)).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `approved`"),
            "{err}"
        );
    }
}
