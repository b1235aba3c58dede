//! The chaos experiments view: a read model of what the worker committed on Kafka,
//! stored in SQLite and served as pages and a JSON API.
//!
//! - [`ingest`] reads the topics (`read_committed`, every partition) into the [`store`];
//!   [`decode`] turns one record into a row.
//! - [`query`] answers each page; [`audit`] finds what does not add up; [`retention`]
//!   removes old executions.
//! - [`model`] holds the rows they return.
//!
//! Rule: the view never writes to Kafka and knows nothing of the gate's internals: it
//! reads the contracts ([`crate::contract`]) with the worker's client settings
//! ([`crate::bus::client`]) and the worker's record conversion
//! ([`crate::bus::record::from_rdkafka`]).

pub mod audit;
pub mod decode;
pub mod ingest;
pub mod model;
pub mod query;
pub mod retention;
pub mod store;
pub mod web;

pub use ingest::{Ingest, IngestStatus};
pub use store::{Location, Store, ViewError};
