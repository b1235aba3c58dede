//! chaosgate: gates feature-flag changes on chaos experiments.
//!
//! Modules depend one way (`docs/architecture.md` is the map):
//! `contract` <- `catalog` <- `chaos` <- `gate` <- `bus` <- {`view`, the CLI}.
//! `config` and `schema` sit on top and may use any of them.

pub mod bus;
pub mod catalog;
pub mod chaos;
pub mod config;
pub mod contract;
pub mod gate;
pub mod os;
pub mod schema;
pub mod telemetry;
pub mod view;
