//! The operator's catalog: pipelines and experiments read from YAML files, validated as a
//! whole, and the routing that finds the pipeline for a flag change.

pub mod assertion;
pub mod experiment;
pub mod pipeline;
pub mod span;

pub use experiment::Experiment;
pub use pipeline::Pipeline;
pub use span::Span;
