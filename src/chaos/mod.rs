//! The chaos engine: runs one experiment (faults injected, probes watching, revert always)
//! and returns its result. It knows nothing of Kafka or pipelines.

pub(crate) mod fault;
pub mod probe;
pub mod process;
pub mod proxy;
pub mod run;
pub(crate) mod score;
pub mod target_lock;

pub use fault::guard::{SUBCOMMAND as FAULT_GUARD_SUBCOMMAND, run_guard as run_fault_guard};
pub use run::{ExperimentResult, Progress, ProgressEvent, RunContext, run_experiment};
pub use target_lock::TargetLocks;
