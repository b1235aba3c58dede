//! Everything Kafka: clients built from the configuration, records in and out, and (with
//! the worker) ordering, offsets, transactions and the dead-letter topic.

pub(crate) mod client;
pub mod control_request;
pub(crate) mod flag_queue;
pub(crate) mod flag_state;
pub(crate) mod follow;
pub mod kill_switch;
pub(crate) mod offset_metadata;
pub mod offsets;
pub(crate) mod outputs;
pub(crate) mod producer;
pub mod record;
pub(crate) mod shutdown;
pub mod startup;
pub mod transaction;
pub mod worker;
