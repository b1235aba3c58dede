//! The chaos engine: runs one experiment (faults injected, probes watching, revert always)
//! and returns its result. It knows nothing of Kafka or pipelines.

pub mod probe;
pub mod proxy;
