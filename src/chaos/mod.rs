//! The chaos engine: runs one experiment (faults injected, probes watching, revert always)
//! and returns its result. It knows nothing of Kafka or pipelines.

pub mod fault;
pub mod probe;
pub mod process;
pub mod proxy;
pub mod run;
pub mod score;
pub mod target_lock;

pub use run::{ExperimentResult, Progress, ProgressEvent, RunContext, run_experiment};
pub use target_lock::TargetLocks;
