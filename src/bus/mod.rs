//! Everything Kafka: clients built from the configuration, records in and out, and (with
//! the worker) ordering, offsets, transactions and the dead-letter topic.

pub mod client;
pub mod flag_queue;
pub mod kill_switch;
pub mod offset_metadata;
pub mod offsets;
pub mod outputs;
pub mod producer;
pub mod record;
pub mod shutdown;
pub mod startup;
pub mod transaction;
pub mod worker;
