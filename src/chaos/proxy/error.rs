//! How the proxies name an active fault ([`FaultId`]) and how their operations fail
//! ([`ProxyError`]).
//!
//! The rule that keeps it right: every proxy module may use these, so this file depends
//! only on `settings` (and external crates).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::settings::ProxyProtocol;

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
        "the fault names no `proxy` URL and no proxy runs in this process (give the worker `[[proxy.targets]]` or `experiment run --proxy-config FILE`, or set `proxy` on the fault)"
    )]
    NoEmbeddedProxy,
    /// Another owner (run) has faults on this target: one owner at a time.
    #[error("proxy target '{target}' is busy: another run ({owner}) has faults on it")]
    TargetBusy {
        /// The target's name.
        target: String,
        /// The owner holding it, as it named itself when it added its faults.
        owner: String,
    },
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
