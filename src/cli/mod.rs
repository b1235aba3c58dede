//! One module per subcommand; each turns parsed arguments into an exit code.

pub mod demo;
pub mod experiment;
pub mod fault_guard;
pub mod proxy;
pub mod run;
pub mod schema;
pub mod validate;
pub mod view;
