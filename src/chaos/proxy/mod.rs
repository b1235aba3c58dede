//! chaosgate's fault proxies: a TCP proxy that applies network toxics and an HTTP proxy
//! that applies HTTP faults, one listener per configured target.

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
