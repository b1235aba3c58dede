//! Pipelines as the operator writes them: which flag changes they gate, the stages of
//! steps that decide whether a change goes out (chaos steps, approvals, waits), the freeze
//! windows that hold changes, and the guard that keeps watching after an `enable`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::freeze::FreezeWindow;
use super::guard::Guard;
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
    /// Times when gated changes are held until the window ends (a `disable` never is).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freeze_windows: Vec<FreezeWindow>,
    /// Probes kept watching the flag for a while after the pipeline's `enable`; a failure
    /// issues the `on_failure` command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<Guard>,
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
pub enum FailureOutcome {
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

/// A stage: ordered steps.
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
    /// Steps, run in order.
    pub steps: Vec<Step>,
}

/// One step of a stage; which one is told by its block: `experiment` (a chaos step),
/// `approval` or `wait`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Step {
    /// Runs an experiment and judges it.
    Chaos(ChaosStep),
    /// Waits for a person's approve or reject request.
    Approval(ApprovalStep),
    /// Holds the pipeline for a time (a bake time).
    Wait(WaitStep),
}

impl Step {
    /// The step's id, unique within its stage.
    pub fn id(&self) -> &str {
        match self {
            Step::Chaos(step) => &step.id,
            Step::Approval(step) => &step.id,
            Step::Wait(step) => &step.id,
        }
    }

    /// The step's name, its id when it has none.
    pub fn name(&self) -> &str {
        let name = match self {
            Step::Chaos(step) => &step.name,
            Step::Approval(step) => &step.name,
            Step::Wait(step) => &step.name,
        };
        name.as_deref().unwrap_or(self.id())
    }

    /// The chaos step, when this is one.
    pub fn chaos(&self) -> Option<&ChaosStep> {
        match self {
            Step::Chaos(step) => Some(step),
            _ => None,
        }
    }
}

/// A step waiting for a person: an approve or reject request on `chaosgate-control`
/// naming the execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalStep {
    /// Id, unique within the stage.
    pub(crate) id: String,
    /// Human-readable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
    /// What is asked, and of whom.
    pub approval: Approval,
    /// What a reject or a timeout does to the pipeline (default `abort`; `retry` is
    /// refused: ask again with a new change).
    #[serde(default)]
    pub(crate) failure_strategy: FailureStrategy,
}

/// The `approval` block of an approval step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// What the approver is asked, shown in the hold record and notifications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// How long to wait for an answer (default 24h); then the step fails.
    #[serde(default = "default_approval_timeout")]
    pub timeout: Span,
}

fn default_approval_timeout() -> Span {
    Span::from_millis(24 * 3600 * 1000)
}

/// A step that holds the pipeline for a time, e.g. a bake time between stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitStep {
    /// Id, unique within the stage.
    pub(crate) id: String,
    /// Human-readable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
    /// How long to wait.
    pub wait: Span,
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
        freeze_windows: Vec::new(),
        guard: None,
        stages: vec![Stage {
            id: "resilience".into(),
            name: Some("Resilience checks".into()),
            stage_type: StageType::FeatureFlag,
            steps: vec![Step::Chaos(ChaosStep {
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
            })],
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
