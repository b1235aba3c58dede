//! Pipelines as the operator writes them: which flag changes they gate, and the stages of
//! chaos steps that decide whether a change goes out.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::span::Span;

/// A pipeline: routing, ordered stages of chaos steps, and the outcome policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "Pipeline",
    description = "A chaosgate pipeline catalog file.",
    example = pipeline_example()
)]
pub struct Pipeline {
    /// Must be `pipeline`.
    pub(crate) kind: PipelineKindTag,
    /// Unique id; a flag-change event may name it in `pipeline_id` when the pipeline's
    /// routes take the event's flag, or when `allow_explicit` is true.
    pub id: String,
    /// Human-readable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
    /// What this pipeline protects, in one sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) description: Option<String>,
    /// Which flag changes trigger this pipeline when the event names none.
    #[serde(default)]
    pub(crate) routes: Vec<Route>,
    /// Which change kinds are gated (default `enable` and `update`); `disable` is never
    /// delayed, whatever this says.
    #[serde(default = "default_gated_changes")]
    pub(crate) gated_changes: Vec<GatedChange>,
    /// What the flag command is when the pipeline fails.
    #[serde(default)]
    pub(crate) on_failure: FailureOutcome,
    /// Run everything but mark the flag command `dry_run: true`.
    #[serde(default)]
    pub dry_run: bool,
    /// Any flag-change event may select this pipeline by naming it in `pipeline_id`, even
    /// for a flag its routes do not take (default false: such an event is dead-lettered
    /// as `pipeline_not_routed`, so a producer cannot pick a pipeline that gates nothing
    /// and get an immediate `enable`).
    #[serde(default)]
    pub allow_explicit: bool,
    /// Stages, run in order.
    pub stages: Vec<Stage>,
}

/// The literal `pipeline`, so a file says what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PipelineKindTag {
    /// A pipeline file.
    Pipeline,
}

/// Change kinds a pipeline can gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum GatedChange {
    /// A flag turned on.
    Enable,
    /// A flag's variation or rules changed.
    Update,
}

fn default_gated_changes() -> Vec<GatedChange> {
    vec![GatedChange::Enable, GatedChange::Update]
}

/// The flag command emitted when a pipeline fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FailureOutcome {
    /// `disable` the flag.
    #[default]
    Disable,
    /// Put the flag back to the change's `from` value.
    Revert,
}

/// Which flag changes a pipeline takes: all present fields must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Route {
    /// Project, exactly (any when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) project: Option<String>,
    /// Environment, exactly (any when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) environment: Option<String>,
    /// Flag key glob, e.g. `checkout-*` (any when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) flag: Option<String>,
}

/// The stage types the seed allows chaos steps in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StageType {
    /// A Feature Flag stage.
    FeatureFlag,
    /// A Deploy stage.
    Deploy,
    /// A Custom stage.
    Custom,
}

impl StageType {
    /// The type's name as written in files and records.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            StageType::FeatureFlag => "feature_flag",
            StageType::Deploy => "deploy",
            StageType::Custom => "custom",
        }
    }
}

/// A stage: ordered chaos steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// Id, unique within the pipeline.
    pub(crate) id: String,
    /// Human-readable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
    /// Stage type.
    #[serde(rename = "type")]
    pub stage_type: StageType,
    /// Chaos steps, run in order.
    pub steps: Vec<ChaosStep>,
}

/// A chaos step: one experiment and the bar it must clear.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChaosStep {
    /// Id, unique within the stage.
    pub(crate) id: String,
    /// Human-readable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
    /// Id of the experiment to run.
    pub experiment: String,
    /// The step passes when the resilience score is at least this (0-100).
    #[schemars(range(min = 0, max = 100))]
    pub(crate) expected_resilience_score: f64,
    /// Optional CEL expression that must also be true, e.g. `probes_failed == 0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) assertion: Option<String>,
    /// What a failure of this step does to the pipeline (default `abort`).
    #[serde(default)]
    pub(crate) failure_strategy: FailureStrategy,
    /// Bound on the step's experiment, counted from when it holds its targets (a wait
    /// behind another experiment on the same target is bounded by the worker's
    /// `target_wait` instead); exceeded means the run is aborted and the step failed (its
    /// `failure_strategy` then applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) timeout: Option<Span>,
}

/// What a failed step does, as in Harness's step failure strategies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum FailureStrategy {
    /// Stop the pipeline; its outcome is failed.
    #[default]
    Abort,
    /// Record the failure and carry on; the outcome is unaffected.
    Ignore,
    /// Treat the failure as a pass.
    MarkAsSuccess,
    /// Run the step again up to `count` times, waiting `backoff` (doubling), then apply
    /// `fallback`.
    Retry {
        /// Further attempts after the first (at least 1).
        #[schemars(range(min = 1))]
        count: u32,
        /// Wait before the first retry; doubles each time (default 1s).
        #[serde(default = "default_backoff")]
        backoff: Span,
        /// Strategy when every retry failed (default `abort`).
        #[serde(default)]
        fallback: FallbackStrategy,
    },
}

/// The example carried by the schema: a release gate for the checkout flags.
pub(crate) fn pipeline_example() -> Pipeline {
    Pipeline {
        kind: PipelineKindTag::Pipeline,
        id: "checkout-release".into(),
        name: Some("Checkout release gate".into()),
        description: Some(
            "Checkout flags go out only if checkout survives a slow payments dependency.".into(),
        ),
        routes: vec![Route {
            project: Some("shop".into()),
            environment: Some("production".into()),
            flag: Some("checkout-*".into()),
        }],
        gated_changes: default_gated_changes(),
        on_failure: FailureOutcome::Disable,
        dry_run: false,
        allow_explicit: false,
        stages: vec![Stage {
            id: "resilience".into(),
            name: Some("Resilience checks".into()),
            stage_type: StageType::FeatureFlag,
            steps: vec![ChaosStep {
                id: "payments-latency".into(),
                name: Some("Payments 200 ms slower".into()),
                experiment: "payments-latency".into(),
                expected_resilience_score: 80.0,
                assertion: Some("probes_failed == 0".into()),
                failure_strategy: FailureStrategy::Retry {
                    count: 1,
                    backoff: Span::from_millis(5_000),
                    fallback: FallbackStrategy::Abort,
                },
                timeout: Some(Span::from_millis(120_000)),
            }],
        }],
    }
}

fn default_backoff() -> Span {
    Span::from_millis(1_000)
}

/// What a step does once its retries are used up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FallbackStrategy {
    /// Stop the pipeline; its outcome is failed.
    #[default]
    Abort,
    /// Record the failure and carry on.
    Ignore,
    /// Treat the failure as a pass.
    MarkAsSuccess,
}
