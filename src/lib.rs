//! chaosgate: gates feature-flag changes on chaos experiments.
//!
//! Modules depend one way (`docs/architecture.md` is the map):
//! `contract` <- `catalog` <- `chaos` <- `gate` <- `bus` <- {`view`, the CLI}.
//! `telemetry` is a leaf beside `catalog` (it uses `contract` only), so every module may
//! report through it. `config` uses `catalog`, `chaos` and `telemetry` (whose settings it
//! re-exports) and is used by `bus` and `view`; `schema` uses `catalog` and `config` and
//! only the CLI uses it. `view` uses `bus`'s client settings and record conversion, never
//! the worker. `tests/layering.rs` checks every `crate::` path against this.

#![warn(unreachable_pub)]

pub mod bus;
pub mod catalog;
pub mod chaos;
pub mod config;
pub mod connect;
pub mod contract;
pub mod flagd;
pub mod gate;
pub mod os;
pub mod schema;
pub mod telemetry;
pub mod view;
