//! The operator's catalog: pipelines and experiments read from YAML files, validated as a
//! whole, and the routing that finds the pipeline for a flag change.
//!
//! [`Catalog::load`] reads a folder and reports every [`Problem`] at once (file, line,
//! field path, message); the gate then looks pipelines and experiments up by id and routes
//! flag changes with [`Catalog::pipeline_for`].

pub(crate) mod assertion;
pub mod credentials;
pub mod document;
pub mod experiment;
pub mod freeze;
pub mod guard;
pub(crate) mod load;
pub(crate) mod number;
pub mod pipeline;
pub(crate) mod problem;
pub(crate) mod route;
pub(crate) mod rules;
pub(crate) mod schema_check;
pub mod span;
pub mod validate;

pub use experiment::Experiment;
pub use load::Catalog;
pub use pipeline::Pipeline;
pub use problem::{FieldPath, Problem};
pub use route::Unrouted;
pub use span::Span;
