//! The `[flagd]` section: chaosgate as a gated OpenFeature flag source
//! (`chaosgate connect flagd`).
//!
//! People propose flagd flag definitions in a folder; each change is gated; flagd and the
//! OpenFeature SDKs read only what a command approved, over flagd's gRPC sync protocol
//! (`flagd.sync.v1.FlagSyncService`), over HTTP, or from a file. One section serves one
//! `project`/`environment`, the pair its proposals are published under.

use std::net::SocketAddr;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::catalog::Span;

/// The flagd bridge: a folder of proposed flags in, the approved configuration out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlagdConfig {
    /// The project the proposals are published under (a key name, as in flag changes).
    pub project: String,
    /// The environment the proposals are published under (a key name).
    pub environment: String,
    /// Folder of proposed flag definitions: `*.json` files in flagd's format
    /// (<https://flagd.dev/schema/v0/flags.json>), e.g. a git checkout people change
    /// through pull requests. Relative to the configuration file. Absent: this replica
    /// only serves the approved configuration (run one proposing replica per folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposed: Option<PathBuf>,
    /// How often the folder is read again.
    #[serde(default = "default_scan_interval")]
    pub scan_interval: Span,
    /// How long a flag served `ENABLED` must be gone from the folder before its removal
    /// is proposed (as a `disable`, which is never gated): a checkout or a sync that
    /// rewrites files, or a file moved away for a moment, does not turn flags off.
    #[serde(default = "default_removal_grace")]
    pub removal_grace: Span,
    /// Address of the gRPC sync service (`flagd.sync.v1.FlagSyncService`), the source
    /// flagd (`--uri grpc://HOST:PORT`) and in-process providers read. Default port 8015,
    /// the one flagd's in-process providers use.
    #[serde(default = "default_sync_listen")]
    #[schemars(with = "String")]
    pub sync_listen: SocketAddr,
    /// Address of the HTTP endpoints: `GET /flags.json` (the approved configuration, with
    /// `ETag` and `If-None-Match`), `/healthz` and `/metrics`.
    #[serde(default = "default_http_listen")]
    #[schemars(with = "String")]
    pub http_listen: SocketAddr,
    /// A file the approved configuration of `project`/`environment` is written to,
    /// atomically (a temporary file renamed over it), on every change: for flagd's file
    /// source (`--uri file:...`). Relative to the configuration file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

fn default_scan_interval() -> Span {
    Span::from_millis(1_000)
}
fn default_removal_grace() -> Span {
    Span::from_millis(30_000)
}
fn default_sync_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8015))
}
fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8016))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c: FlagdConfig = toml::from_str("project = \"shop\"\nenvironment = \"prod\"").unwrap();
        assert_eq!(c.sync_listen.port(), 8015);
        assert_eq!(c.http_listen.port(), 8016);
        assert_eq!(c.scan_interval, Span::from_millis(1_000));
        assert_eq!(c.removal_grace, Span::from_millis(30_000));
        assert!(c.proposed.is_none() && c.file.is_none());
    }
}
