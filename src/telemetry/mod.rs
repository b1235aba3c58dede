//! Telemetry beside the pipeline: logs now; traces and metrics join them here.

pub mod logs;
