//! Flag services in and out: each bridge turns a flag service's changes into flag-change
//! events on `flag-changes`, and applies the worker's flag commands back to the service.
//!
//! One folder per flag service; in each, the mapping between the service's messages and
//! chaosgate's contracts is plain data and functions, apart from the I/O around it. The
//! bridges reuse `bus`'s Kafka client settings, never the worker's internals: they run
//! in their own process (`chaosgate connect ...`), beside the worker.

pub mod flagd;
pub mod unleash;
