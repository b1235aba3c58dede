//! A pipeline's guard: probes the worker keeps checking after the pipeline's `enable`,
//! for a duration; a failure issues the pipeline's failure command.
//!
//! (Skeleton: the probe semantics for guards are being written.)

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::experiment::Probe;
use super::span::Span;

/// `guard:` in a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Guard {
    /// How long after the `enable` the probes are checked.
    pub duration: Span,
    /// The probes, as in experiments.
    pub probes: Vec<Probe>,
}
