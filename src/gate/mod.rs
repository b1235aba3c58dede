//! The gate: given one flag change and the catalog, run its pipeline's stages and chaos
//! steps and decide the flag command. It knows nothing of Kafka: records go out through a
//! small sink, and the same gate runs in the worker, the demo and the tests.

pub(crate) mod decision;
pub mod executor;
pub mod guard;
pub mod hold;
pub(crate) mod selection;
