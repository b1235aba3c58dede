//! What a user configures for one proxied target: its name, listen address, upstream
//! and protocol.
//!
//! The rule that keeps it right: this file depends on nothing else in the crate, so the
//! worker's configuration (`config`) can read proxy targets without reaching into the
//! proxies themselves.

use std::fmt;
use std::net::SocketAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
