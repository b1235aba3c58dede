//! The plan of a run: its phases, and which faults and probes each runs (see the module
//! doc of [`super`] for the schedule inside a phase).

use crate::catalog::experiment::{Experiment, Fault, FaultExecution};

/// Which faults and probes one phase runs.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PhasePlan {
    pub(super) faults: Vec<usize>,
    pub(super) probes: Vec<usize>,
}

/// The probes (by index) that judge `fault`: its `probes` list, or all of them.
pub(super) fn judges(experiment: &Experiment, fault: &Fault) -> Vec<usize> {
    match &fault.probes {
        None => (0..experiment.probes.len()).collect(),
        Some(names) => experiment
            .probes
            .iter()
            .enumerate()
            .filter(|(_, p)| names.contains(&p.name))
            .map(|(i, _)| i)
            .collect(),
    }
}

pub(super) fn plan(experiment: &Experiment) -> Vec<PhasePlan> {
    if experiment.faults.is_empty() {
        return vec![PhasePlan {
            faults: Vec::new(),
            probes: (0..experiment.probes.len()).collect(),
        }];
    }
    match experiment.execution {
        FaultExecution::Serial => experiment
            .faults
            .iter()
            .enumerate()
            .map(|(i, f)| PhasePlan {
                faults: vec![i],
                probes: judges(experiment, f),
            })
            .collect(),
        FaultExecution::Parallel => {
            let mut probes: Vec<usize> = experiment
                .faults
                .iter()
                .flat_map(|f| judges(experiment, f))
                .collect();
            probes.sort_unstable();
            probes.dedup();
            vec![PhasePlan {
                faults: (0..experiment.faults.len()).collect(),
                probes,
            }]
        }
    }
}
