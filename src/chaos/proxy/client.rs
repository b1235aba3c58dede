//! The client of a standalone proxy's control API, and [`FaultBackend`], which sends a
//! fault to the embedded registry or to a standalone proxy with the same operations.
//!
//! A catalog fault names a standalone proxy with its `proxy` base URL; without one it
//! goes to the proxy embedded in the worker.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use serde::Serialize;

use super::control::{AddFaultRequest, ApiError, LeaseAnswer, LeaseRequest};
use super::error::{FaultId, ProxyError};
use super::registry::ProxyRegistry;
use super::settings::ProxyProtocol;
use super::state::TargetStatus;
use crate::catalog::experiment::{HttpFault, NetworkFault};

/// Time allowed for one control API call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A client of one standalone proxy's control API.
#[derive(Debug, Clone)]
pub struct ProxyClient {
    base: Url,
    http: reqwest::Client,
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
    /// 5 s timeout per call.
    pub fn new(base_url: &str) -> Result<ProxyClient, ProxyError> {
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .build()
            .map_err(|e| ProxyError::Remote {
                url: base_url.to_string(),
                status: None,
                message: format!("cannot build an HTTP client: {}", chain(&e)),
            })?;
        ProxyClient::with_http(base_url, http)
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
        Ok(ProxyClient { base, http })
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
    /// The proxy running inside this process.
    Embedded(Arc<ProxyRegistry>),
    /// A standalone `chaosgate proxy`, through its control API.
    Remote(ProxyClient),
}

impl FaultBackend {
    /// The backend for a fault whose `proxy` URL is `proxy`: that standalone proxy when
    /// set, else `embedded`.
    pub fn select(
        proxy: Option<&str>,
        embedded: Option<&Arc<ProxyRegistry>>,
    ) -> Result<FaultBackend, ProxyError> {
        match (proxy, embedded) {
            (Some(url), _) => ProxyClient::new(url).map(FaultBackend::Remote),
            (None, Some(registry)) => Ok(FaultBackend::Embedded(Arc::clone(registry))),
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
            FaultBackend::Embedded(registry) => {
                registry.add_network_fault(&fault.target, fault, lease)
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
            FaultBackend::Embedded(registry) => {
                registry.add_http_fault(&fault.target, fault, lease)
            }
            FaultBackend::Remote(client) => {
                client.add_http_fault(&fault.target, fault, lease).await
            }
        }
    }

    /// Extends a fault's lease.
    pub async fn renew(&self, id: FaultId, lease: Duration) -> Result<(), ProxyError> {
        match self {
            FaultBackend::Embedded(registry) => registry.renew(id, lease),
            FaultBackend::Remote(client) => client.renew(id, lease).await,
        }
    }

    /// Removes a fault; false when it was not active.
    pub async fn remove(&self, id: FaultId) -> Result<bool, ProxyError> {
        match self {
            FaultBackend::Embedded(registry) => Ok(registry.remove(id)),
            FaultBackend::Remote(client) => client.remove(id).await,
        }
    }
}
