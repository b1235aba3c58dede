//! OpenFeature flagd flag definitions: what a proposed flag file holds, and which
//! definition a flag command approves.
//!
//! chaosgate can be the flag source flagd and the OpenFeature SDKs read
//! (`chaosgate connect flagd`): people propose definitions in a folder, each change is
//! gated like any flag change, and only what a command approved is served. This module
//! is plain data and functions on flagd's JSON (<https://flagd.dev/reference/flag-definitions/>);
//! it uses only `contract`, so the worker (which writes approved definitions in its
//! transaction) and the flagd bridge (which proposes and serves them) share it.

pub mod approval;
pub mod definition;
