//! One module per subcommand; each turns parsed arguments into an exit code. Besides,
//! `first_process`: how a command that injects faults behaves as a container's PID 1.

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
