//! Everything Kafka: clients built from the configuration, records in and out, and (with
//! the worker) ordering, offsets, transactions and the dead-letter topic.

pub mod client;
pub mod record;
