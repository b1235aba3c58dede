//! The client of a standalone proxy's control API, and [`FaultBackend`], which sends a
//! fault to the embedded registry or to a standalone proxy with the same operations.
//!
//! A catalog fault names a standalone proxy with its `proxy` base URL; without one it
//! goes to the proxy embedded in the worker. Calls to a standalone proxy carry the
//! bearer token of [`ProxyAccess`] and, for `https` URLs, trust its CA file (else the
//! system's roots). Every fault is added in the name of an owner (the run): a target
//! held by another owner answers [`ProxyError::TargetBusy`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use serde::Serialize;

use super::access::{self, BearerToken};
use super::control::{ANONYMOUS_OWNER, AddFaultRequest, ApiError, LeaseAnswer, LeaseRequest};
use super::error::{FaultId, ProxyError};
use super::registry::ProxyRegistry;
use super::settings::ProxyProtocol;
use super::state::TargetStatus;
use crate::catalog::experiment::{HttpFault, NetworkFault};

/// Time allowed for one control API call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How this process reaches standalone proxies: the bearer token it presents and the CA
/// it trusts for `https` proxy URLs. The default: no token, the system's roots.
#[derive(Debug, Clone, Default)]
pub struct ProxyAccess {
    /// Sent as `Authorization: Bearer TOKEN` with every call.
    pub token: Option<BearerToken>,
    /// PEM file of the CA (or self-signed certificate) that signs the proxies'
    /// certificates; only it is trusted then. `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
}

impl ProxyAccess {
    /// The token from `token_file` when given, else from the environment variable
    /// `CHAOSGATE_PROXY__TOKEN` (its value in `token_env`); errors name the file or the
    /// variable.
    pub fn load(
        token_file: Option<&Path>,
        token_env: Option<&str>,
        ca_file: Option<&Path>,
    ) -> Result<ProxyAccess, String> {
        let token = match (token_file, token_env) {
            (Some(path), _) => Some(BearerToken::read_file(path)?),
            (None, Some(text)) => {
                Some(BearerToken::new(text).map_err(|e| format!("{}: {e}", access::TOKEN_ENV))?)
            }
            (None, None) => None,
        };
        Ok(ProxyAccess {
            token,
            ca_file: ca_file.map(Path::to_path_buf),
        })
    }
}

/// A client of one standalone proxy's control API.
#[derive(Debug, Clone)]
pub struct ProxyClient {
    base: Url,
    http: reqwest::Client,
    owner: String,
}

/// What a call is about, to turn a 404 into the right error.
#[derive(Clone, Copy)]
enum Subject<'a> {
    Target(&'a str),
    Fault(FaultId),
    None,
}

impl ProxyClient {
    /// A client of the control API at `base_url` (e.g. `http://10.0.0.5:8475`), with a
    /// 5 s timeout per call, no token, and the system's roots for https.
    pub fn new(base_url: &str) -> Result<ProxyClient, ProxyError> {
        ProxyClient::with_access(base_url, &ProxyAccess::default())
    }

    /// A client of the control API at `base_url` that presents `access`'s token and
    /// trusts its CA file; errors name the URL (and the CA file when it is unreadable).
    pub fn with_access(base_url: &str, access: &ProxyAccess) -> Result<ProxyClient, ProxyError> {
        let failed = |message: String| ProxyError::Remote {
            url: base_url.to_string(),
            status: None,
            message,
        };
        let mut builder = reqwest::Client::builder().timeout(CALL_TIMEOUT);
        if let Some(token) = &access.token {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(
                reqwest::header::AUTHORIZATION,
                token.header_value().map_err(failed)?,
            );
            builder = builder.default_headers(headers);
        }
        if let Some(path) = &access.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| failed(format!("cannot read the CA file {}: {e}", path.display())))?;
            let roots = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| failed(format!("CA file {}: {}", path.display(), chain(&e))))?;
            builder = builder.tls_certs_only(roots);
        }
        let http = builder
            .build()
            .map_err(|e| failed(format!("cannot build an HTTP client: {}", chain(&e))))?;
        ProxyClient::with_http(base_url, http)
    }

    /// This client, adding faults in the name of `owner` (a run) from now on.
    pub fn owned_by(mut self, owner: &str) -> ProxyClient {
        self.owner = owner.to_string();
        self
    }

    /// A client that shares an existing `reqwest` client (its pool and timeouts).
    pub(crate) fn with_http(
        base_url: &str,
        http: reqwest::Client,
    ) -> Result<ProxyClient, ProxyError> {
        let bad = |message: &str| ProxyError::Remote {
            url: base_url.to_string(),
            status: None,
            message: message.to_string(),
        };
        let base = Url::parse(base_url).map_err(|e| bad(&format!("not a URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(bad("not an http:// or https:// base URL"));
        }
        Ok(ProxyClient {
            base,
            http,
            owner: ANONYMOUS_OWNER.to_string(),
        })
    }

    /// Checks the proxy answers `GET /healthz`.
    pub async fn health(&self) -> Result<(), ProxyError> {
        let url = self.url(&["healthz"]);
        self.send(self.http.get(url.clone()), &url, Subject::None)
            .await
            .map(drop)
    }

    /// The proxy's targets with their active faults.
    pub async fn targets(&self) -> Result<Vec<TargetStatus>, ProxyError> {
        let url = self.url(&["targets"]);
        let response = self
            .send(self.http.get(url.clone()), &url, Subject::None)
            .await?;
        read_json(response, &url).await
    }

    /// Adds a network toxic to `target` for `lease`.
    pub async fn add_network_fault(
        &self,
        target: &str,
        fault: &NetworkFault,
        lease: Duration,
    ) -> Result<FaultId, ProxyError> {
        let body = AddFaultRequest {
            network: Some(fault.clone()),
            http: None,
            lease_ms: lease_ms(lease),
            owner: Some(self.owner.clone()),
        };
        self.add(target, &body).await
    }

    /// Adds an HTTP fault to the HTTP target `target` for `lease`.
    pub(crate) async fn add_http_fault(
        &self,
        target: &str,
        fault: &HttpFault,
        lease: Duration,
    ) -> Result<FaultId, ProxyError> {
        let body = AddFaultRequest {
            network: None,
            http: Some(fault.clone()),
            lease_ms: lease_ms(lease),
            owner: Some(self.owner.clone()),
        };
        self.add(target, &body).await
    }

    /// Extends the lease of an active fault; an unknown or expired fault is
    /// [`ProxyError::UnknownFault`].
    pub async fn renew(&self, id: FaultId, lease: Duration) -> Result<(), ProxyError> {
        let url = self.url(&["faults", &id.to_string(), "lease"]);
        let body = LeaseRequest {
            lease_ms: lease_ms(lease),
        };
        self.send(
            self.http.put(url.clone()).json(&body),
            &url,
            Subject::Fault(id),
        )
        .await
        .map(drop)
    }

    /// Removes a fault; false when it was not active.
    pub async fn remove(&self, id: FaultId) -> Result<bool, ProxyError> {
        let url = self.url(&["faults", &id.to_string()]);
        match self
            .send(self.http.delete(url.clone()), &url, Subject::Fault(id))
            .await
        {
            Ok(_) => Ok(true),
            Err(ProxyError::UnknownFault(_)) => Ok(false),
            Err(err) => Err(err),
        }
    }

    async fn add(&self, target: &str, body: &impl Serialize) -> Result<FaultId, ProxyError> {
        let url = self.url(&["targets", target, "faults"]);
        let response = self
            .send(
                self.http.post(url.clone()).json(body),
                &url,
                Subject::Target(target),
            )
            .await?;
        read_json::<LeaseAnswer>(response, &url).await.map(|a| a.id)
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        url: &Url,
        subject: Subject<'_>,
    ) -> Result<reqwest::Response, ProxyError> {
        let response = request.send().await.map_err(|e| ProxyError::Remote {
            url: url.to_string(),
            status: None,
            message: chain(&e),
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        Err(answer_error(url, status.as_u16(), &text, subject))
    }
}

fn lease_ms(lease: Duration) -> u64 {
    u64::try_from(lease.as_millis()).unwrap_or(u64::MAX)
}

async fn read_json<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
    url: &Url,
) -> Result<T, ProxyError> {
    response.json().await.map_err(|e| ProxyError::Remote {
        url: url.to_string(),
        status: None,
        message: format!("unexpected answer: {}", chain(&e)),
    })
}

/// Turns an error answer of the control API back into the registry's error.
fn answer_error(url: &Url, status: u16, text: &str, subject: Subject<'_>) -> ProxyError {
    let remote = |message: String| ProxyError::Remote {
        url: url.to_string(),
        status: Some(status),
        message,
    };
    let Ok(api) = serde_json::from_str::<ApiError>(text) else {
        return remote(format!("HTTP {status}: {}", text.trim()));
    };
    if let ("target_busy", Some(held)) = (api.error.as_str(), &api.held) {
        return ProxyError::TargetBusy {
            target: held.target.clone(),
            owner: held.owner.clone(),
        };
    }
    match (api.error.as_str(), subject, api.field) {
        ("unknown_target", Subject::Target(target), _) => ProxyError::UnknownTarget(target.into()),
        ("unknown_fault", Subject::Fault(id), _) => ProxyError::UnknownFault(id),
        ("wrong_protocol", Subject::Target(target), _) => ProxyError::WrongProtocol {
            target: target.into(),
            protocol: ProxyProtocol::Tcp,
        },
        ("invalid_fault" | "invalid_body", _, Some(field)) => ProxyError::InvalidFault {
            field,
            message: api.message,
        },
        _ => remote(format!("HTTP {status}: {}", api.message)),
    }
}

/// An error and its sources, on one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Where a fault goes: the registry embedded in this process, or a standalone proxy.
#[derive(Debug, Clone)]
pub enum FaultBackend {
    /// The proxy running inside this process, and the owner faults are added for.
    Embedded(Arc<ProxyRegistry>, String),
    /// A standalone `chaosgate proxy`, through its control API (the client names the
    /// owner).
    Remote(ProxyClient),
}

impl FaultBackend {
    /// The backend for a fault whose `proxy` URL is `proxy`: that standalone proxy when
    /// set (reached with `access`), else `embedded`; faults are added for `owner`.
    pub fn select(
        proxy: Option<&str>,
        embedded: Option<&Arc<ProxyRegistry>>,
        access: &ProxyAccess,
        owner: &str,
    ) -> Result<FaultBackend, ProxyError> {
        match (proxy, embedded) {
            (Some(url), _) => ProxyClient::with_access(url, access)
                .map(|client| FaultBackend::Remote(client.owned_by(owner))),
            (None, Some(registry)) => Ok(FaultBackend::Embedded(
                Arc::clone(registry),
                owner.to_string(),
            )),
            (None, None) => Err(ProxyError::NoEmbeddedProxy),
        }
    }

    /// Adds a network toxic to the target the fault names.
    pub async fn add_network_fault(
        &self,
        fault: &NetworkFault,
        lease: Duration,
    ) -> Result<FaultId, ProxyError> {
        match self {
            FaultBackend::Embedded(registry, owner) => {
                registry.add_network_fault_as(&fault.target, owner, fault, lease)
            }
            FaultBackend::Remote(client) => {
                client.add_network_fault(&fault.target, fault, lease).await
            }
        }
    }

    /// Adds an HTTP fault to the target the fault names.
    pub async fn add_http_fault(
        &self,
        fault: &HttpFault,
        lease: Duration,
    ) -> Result<FaultId, ProxyError> {
        match self {
            FaultBackend::Embedded(registry, owner) => {
                registry.add_http_fault_as(&fault.target, owner, fault, lease)
            }
            FaultBackend::Remote(client) => {
                client.add_http_fault(&fault.target, fault, lease).await
            }
        }
    }

    /// Extends a fault's lease.
    pub async fn renew(&self, id: FaultId, lease: Duration) -> Result<(), ProxyError> {
        match self {
            FaultBackend::Embedded(registry, _) => registry.renew(id, lease),
            FaultBackend::Remote(client) => client.renew(id, lease).await,
        }
    }

    /// Removes a fault; false when it was not active.
    pub async fn remove(&self, id: FaultId) -> Result<bool, ProxyError> {
        match self {
            FaultBackend::Embedded(registry, _) => Ok(registry.remove(id)),
            FaultBackend::Remote(client) => client.remove(id).await,
        }
    }
}
