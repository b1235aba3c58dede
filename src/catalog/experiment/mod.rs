//! Experiments as the operator writes them: faults injected into a target and probes
//! that watch it while they are active.
//!
//! Faults and probes follow the Kubernetes probe style: the kind is given by which one
//! block (`network`, `http`, ...) is present, read into an enum with one variant per kind
//! ([`FaultKind`], [`ProbeType`]). Commands, URLs and targets come only from these files,
//! never from an event.

mod fault;
pub(crate) mod file_shape;
mod probe;

pub use fault::*;
pub use probe::*;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::span::Span;

/// One chaos experiment: what to break, for how long, and how to tell it held up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "Experiment",
    description = "A chaosgate experiment catalog file.",
    example = experiment_example()
)]
pub struct Experiment {
    /// Must be `experiment`.
    pub(crate) kind: ExperimentKindTag,
    /// Unique id, referenced by pipeline steps.
    pub id: String,
    /// Human-readable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
    /// What this experiment protects against, in one sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) description: Option<String>,
    /// Whether faults run one after another (default) or all at once.
    #[serde(default)]
    pub(crate) execution: FaultExecution,
    /// Upper bound for the whole experiment, probes and reverts included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) timeout: Option<Span>,
    /// Faults to inject. May be empty for a probe-only experiment.
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// Probes that watch the target.
    #[serde(default)]
    pub probes: Vec<Probe>,
}

/// The literal `experiment`, so a file says what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ExperimentKindTag {
    /// An experiment file.
    Experiment,
}

/// How an experiment's faults are scheduled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FaultExecution {
    /// One fault after another; each fault's probes judge that fault alone.
    #[default]
    Serial,
    /// All faults at once; every probe judges every fault.
    Parallel,
}

/// The example carried by the schema: checkout under a slow payments dependency.
pub(crate) fn experiment_example() -> Experiment {
    Experiment {
        kind: ExperimentKindTag::Experiment,
        id: "payments-latency".into(),
        name: Some("Payments 200 ms slower".into()),
        description: Some(
            "Checkout must keep answering within 300 ms while the payments dependency is 200 ms slower."
                .into(),
        ),
        execution: FaultExecution::Serial,
        timeout: Some(Span::from_millis(120_000)),
        faults: vec![Fault {
            name: "payments-latency".into(),
            weight: 5,
            duration: Span::from_millis(30_000),
            probes: None,
            kind: FaultKind::Network(NetworkFault {
                target: "payments".into(),
                proxy: None,
                toxic: Toxic::Latency {
                    latency: Span::from_millis(200),
                    jitter: Span::from_millis(20),
                },
                direction: Direction::Downstream,
                toxicity: 1.0,
            }),
        }],
        probes: vec![Probe {
            name: "checkout-fast".into(),
            mode: ProbeMode::OnChaos,
            run_properties: RunProperties {
                polling_interval: Span::from_millis(1_000),
                ..RunProperties::default()
            },
            probe_type: ProbeType::Http(HttpProbe {
                url: "http://127.0.0.1:8080/health".into(),
                method: "GET".into(),
                headers: BTreeMap::new(),
                body: None,
                follow_redirects: false,
                redirect_any_host: false,
                criteria: HttpCriteria {
                    max_response_ms: Some(300),
                    ..HttpCriteria::default()
                },
            }),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges_accept_what_they_cover() {
        let range = StatusMatch::Range("200-299".into());
        assert!(range.accepts(204));
        assert!(!range.accepts(500));
        assert!(StatusMatch::Code(503).accepts(503));
        assert!(!StatusMatch::Range("2xx".into()).accepts(200));
    }
}
