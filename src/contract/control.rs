//! The abort request (v1): the kill switch, read from `chaosgate-control`.

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
