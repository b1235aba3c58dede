//! One module per subcommand; each turns parsed arguments into an exit code. Besides,
//! `first_process`: how a command that injects faults behaves as a container's PID 1.

pub mod approve;
pub mod connect;
pub mod demo;
pub mod experiment;
pub mod fault_guard;
pub mod first_process;
pub mod proxy;
pub mod run;
pub mod schema;
pub mod validate;
pub mod view;

/// The multi-threaded tokio runtime every long-running subcommand runs on (all drivers
/// enabled); the error says it could not start.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
