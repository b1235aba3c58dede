//! chaosgate's fault proxies: a TCP proxy that applies network toxics and an HTTP proxy
//! that applies HTTP faults, one listener per configured target.
//!
//! The same proxies run inside the worker ([`ProxyRegistry`]) and standalone beside a
//! target (`chaosgate proxy --config FILE`, driven through [`control`] by a
//! [`ProxyClient`]). Every fault carries a lease: a fault whose runner stops renewing it
//! is removed by the registry's reaper, so a crashed runner never leaves a fault behind.
//!
//! - [`registry`]: the running targets and the faults on them.
//! - `lease`: the lease table and its reaper.
//! - `toxic`: what the network toxics do to one connection.
//! - `tcp`: the listeners and the byte pump (fast pass-through, toxic path).
//! - `http`: the HTTP/1.1 proxy and its request faults.
//! - [`control`]: the HTTP control API of a standalone proxy, and its config file.
//! - [`client`]: the control API client, and [`FaultBackend`] (embedded or remote).

pub mod client;
pub mod control;
mod http;
mod lease;
pub mod registry;
mod tcp;
mod toxic;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use client::{FaultBackend, ProxyClient};
pub use control::StandaloneConfig;
pub use registry::{ActiveFault, FaultSpec, ProxyRegistry, TargetStatus};

/// What a proxy listener speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProxyProtocol {
    /// Raw TCP: network toxics.
    #[default]
    Tcp,
    /// HTTP/1.1: HTTP faults (and network toxics).
    Http,
}

impl fmt::Display for ProxyProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProxyProtocol::Tcp => "tcp",
            ProxyProtocol::Http => "http",
        })
    }
}

/// One proxied target: clients connect to `listen`, traffic goes on to `upstream`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxyTarget {
    /// Name that faults refer to in `target`.
    pub name: String,
    /// Address to listen on.
    #[schemars(with = "String")]
    pub listen: SocketAddr,
    /// Address (`host:port`) to forward to.
    pub upstream: String,
    /// `tcp` (default) or `http`.
    #[serde(default)]
    pub protocol: ProxyProtocol,
}

/// The id of one active fault in a proxy (embedded or standalone).
///
/// Ids start at a random point below 2^52, so an id from before a standalone proxy's
/// restart is very unlikely to name another runner's fault, and JSON readers that use
/// doubles read it exactly.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct FaultId(pub u64);

impl fmt::Display for FaultId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for FaultId {
    type Err = std::num::ParseIntError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.parse().map(FaultId)
    }
}

/// Why a proxy operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A target's listener could not be opened.
    #[error("proxy target '{target}': cannot listen on {listen}: {source}")]
    Bind {
        /// The target's name.
        target: String,
        /// The address it asked for.
        listen: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Two targets share a name.
    #[error("proxy target '{0}' is configured more than once")]
    DuplicateTarget(String),
    /// No target has this name.
    #[error("no proxy target named '{0}'")]
    UnknownTarget(String),
    /// The fault is not active: never added, removed, or its lease expired.
    #[error("no active fault {0} (unknown, removed, or its lease expired)")]
    UnknownFault(FaultId),
    /// A fault (or its lease) has a value the proxy cannot apply.
    #[error("invalid fault: {field}: {message}")]
    InvalidFault {
        /// The offending field, e.g. `toxicity` or `action.status`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// An HTTP fault names a target that is not an HTTP proxy.
    #[error(
        "proxy target '{target}' speaks {protocol}; HTTP faults need a target with protocol = \"http\""
    )]
    WrongProtocol {
        /// The target's name.
        target: String,
        /// What it speaks.
        protocol: ProxyProtocol,
    },
    /// A fault names no standalone proxy and no proxy is embedded in this process.
    #[error(
        "the fault names no `proxy` URL and no proxy runs in this process (configure proxy targets, or set `proxy` on the fault)"
    )]
    NoEmbeddedProxy,
    /// A standalone proxy's configuration file cannot be used.
    #[error("proxy config {path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the key named.
        message: String,
    },
    /// A standalone proxy's control API could not be reached or refused the request.
    #[error("proxy control API {url}: {message}")]
    Remote {
        /// The URL called.
        url: String,
        /// The HTTP status, when there was an answer.
        status: Option<u16>,
        /// What went wrong.
        message: String,
    },
}
