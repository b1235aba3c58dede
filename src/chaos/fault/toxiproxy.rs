//! `toxiproxy` faults: toxics on an external Toxiproxy server, through its HTTP API.
//!
//! Inject creates one toxic per stream (`POST /proxies/{proxy}/toxics`; `direction: both`
//! makes two), revert deletes them (`DELETE /proxies/{proxy}/toxics/{name}`). Toxic names
//! are derived from the fault name (`chaosgate-{fault}-{stream}`), so a toxic left by a
//! crashed run is found and replaced by the next one instead of blocking it. Toxiproxy has
//! no leases: a toxic outlives a runner killed with SIGKILL until the next run or a manual
//! delete.

use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};

use crate::catalog::experiment::{Direction, Toxic, ToxiproxyFault};

/// Time allowed for one call to the Toxiproxy API.
const API_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a Toxiproxy toxic could not be created or deleted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ToxiproxyError {
    /// The toxic has no Toxiproxy counterpart.
    #[error("toxic '{0}' is not available on Toxiproxy")]
    Unsupported(&'static str),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// The API could not be reached.
    #[error("{method} {url}: {source}")]
    Request {
        /// HTTP method.
        method: &'static str,
        /// The URL.
        url: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// The API answered with an error status.
    #[error("{method} {url}: Toxiproxy answered {status}: {body}")]
    Status {
        /// HTTP method.
        method: &'static str,
        /// The URL.
        url: String,
        /// The status.
        status: u16,
        /// Its body.
        body: String,
    },
}

/// Toxics created on one Toxiproxy proxy, kept so that revert can delete them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Toxics {
    /// API base URL.
    pub(crate) api: String,
    /// Proxy name.
    pub(crate) proxy: String,
    /// Names of the toxics.
    pub(crate) names: Vec<String>,
}

fn client() -> Result<&'static reqwest::Client, ToxiproxyError> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(client) = CLIENT.get() {
        return Ok(client);
    }
    let built = reqwest::Client::builder()
        .timeout(API_TIMEOUT)
        .build()
        .map_err(|e| ToxiproxyError::Client(e.to_string()))?;
    Ok(CLIENT.get_or_init(|| built))
}

fn millis(span: crate::catalog::Span) -> u64 {
    u64::try_from(span.duration().as_millis()).unwrap_or(u64::MAX)
}

/// Toxiproxy's type name and attributes for `toxic`.
pub(crate) fn toxic_type(toxic: &Toxic) -> Result<(&'static str, Value), ToxiproxyError> {
    Ok(match toxic {
        Toxic::Latency { latency, jitter } => (
            "latency",
            json!({"latency": millis(*latency), "jitter": millis(*jitter)}),
        ),
        // Toxiproxy's rate is in KB/s (1000 bytes); keep at least 1 so it never means "off".
        Toxic::Bandwidth { rate } => ("bandwidth", json!({"rate": (rate / 1000).max(1)})),
        Toxic::Timeout { after } => ("timeout", json!({"timeout": millis(*after)})),
        Toxic::ResetPeer { after } => ("reset_peer", json!({"timeout": millis(*after)})),
        Toxic::SlowClose { delay } => ("slow_close", json!({"delay": millis(*delay)})),
        Toxic::LimitData { bytes } => ("limit_data", json!({"bytes": bytes})),
        Toxic::Refuse => return Err(ToxiproxyError::Unsupported("refuse")),
    })
}

/// The streams a direction covers, as Toxiproxy names them.
fn streams(direction: Direction) -> &'static [&'static str] {
    match direction {
        Direction::Upstream => &["upstream"],
        Direction::Downstream => &["downstream"],
        Direction::Both => &["upstream", "downstream"],
    }
}

/// The toxics `fault_name` creates, by name, with their request bodies.
pub(crate) fn toxic_bodies(
    fault_name: &str,
    fault: &ToxiproxyFault,
) -> Result<Vec<(String, Value)>, ToxiproxyError> {
    let (kind, attributes) = toxic_type(&fault.toxic)?;
    Ok(streams(fault.direction)
        .iter()
        .map(|stream| {
            let name = format!("chaosgate-{fault_name}-{stream}");
            let body = json!({
                "name": name,
                "type": kind,
                "stream": stream,
                "toxicity": fault.toxicity,
                "attributes": attributes,
            });
            (name, body)
        })
        .collect())
}

/// What revert must delete for `fault_name`, known before inject runs.
pub(crate) fn planned(fault_name: &str, fault: &ToxiproxyFault) -> Toxics {
    Toxics {
        api: fault.api.trim_end_matches('/').to_string(),
        proxy: fault.proxy.clone(),
        names: toxic_bodies(fault_name, fault)
            .map(|bodies| bodies.into_iter().map(|(name, _)| name).collect())
            .unwrap_or_default(),
    }
}

fn toxics_url(toxics: &Toxics) -> String {
    format!("{}/proxies/{}/toxics", toxics.api, toxics.proxy)
}

async fn status_error(
    method: &'static str,
    url: String,
    response: reqwest::Response,
) -> ToxiproxyError {
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    ToxiproxyError::Status {
        method,
        url,
        status,
        body: body.trim().chars().take(300).collect(),
    }
}

async fn create(url: &str, body: &Value) -> Result<Option<u16>, ToxiproxyError> {
    let response = client()?
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|source| ToxiproxyError::Request {
            method: "POST",
            url: url.to_string(),
            source,
        })?;
    if response.status().is_success() {
        return Ok(None);
    }
    if response.status().as_u16() == 409 {
        return Ok(Some(409));
    }
    Err(status_error("POST", url.to_string(), response).await)
}

async fn delete(url: &str) -> Result<(), ToxiproxyError> {
    let response =
        client()?
            .delete(url)
            .send()
            .await
            .map_err(|source| ToxiproxyError::Request {
                method: "DELETE",
                url: url.to_string(),
                source,
            })?;
    // 404: already gone, which is what revert wants.
    if response.status().is_success() || response.status().as_u16() == 404 {
        return Ok(());
    }
    Err(status_error("DELETE", url.to_string(), response).await)
}

/// Creates the fault's toxics; a toxic of the same name left by an earlier run is replaced.
///
/// On error, toxics already created are deleted again before the error is returned.
pub(crate) async fn inject(fault_name: &str, fault: &ToxiproxyFault) -> Result<Toxics, ToxiproxyError> {
    let mut created = planned(fault_name, fault);
    created.names.clear();
    let url = toxics_url(&created);
    for (name, body) in toxic_bodies(fault_name, fault)? {
        let mut outcome = create(&url, &body).await;
        if let Ok(Some(409)) = outcome {
            outcome = match delete(&format!("{url}/{name}")).await {
                Ok(()) => create(&url, &body).await,
                Err(err) => Err(err),
            };
        }
        match outcome {
            Ok(None) => created.names.push(name),
            Ok(Some(status)) => {
                let _ = revert(&created).await;
                return Err(ToxiproxyError::Status {
                    method: "POST",
                    url,
                    status,
                    body: format!("toxic '{name}' already exists"),
                });
            }
            Err(err) => {
                let _ = revert(&created).await;
                return Err(err);
            }
        }
    }
    Ok(created)
}

/// Deletes the toxics; one that is already gone counts as deleted.
pub(crate) async fn revert(toxics: &Toxics) -> Result<(), ToxiproxyError> {
    let url = toxics_url(toxics);
    let mut first_error = None;
    for name in &toxics.names {
        if let Err(err) = delete(&format!("{url}/{name}")).await {
            first_error.get_or_insert(err);
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Span;

    #[test]
    fn maps_toxics_to_toxiproxy_types() {
        let fault = ToxiproxyFault {
            api: "http://127.0.0.1:8474/".into(),
            proxy: "db".into(),
            toxic: Toxic::Latency {
                latency: Span::from_millis(200),
                jitter: Span::from_millis(10),
            },
            direction: Direction::Both,
            toxicity: 0.5,
        };
        let bodies = toxic_bodies("slow-db", &fault).unwrap();
        assert_eq!(bodies.len(), 2);
        assert_eq!(
            bodies[1].1,
            json!({"name": "chaosgate-slow-db-downstream", "type": "latency", "stream": "downstream",
                   "toxicity": 0.5, "attributes": {"latency": 200, "jitter": 10}})
        );
        assert_eq!(planned("slow-db", &fault).api, "http://127.0.0.1:8474");
        assert_eq!(
            toxic_type(&Toxic::Bandwidth { rate: 250_000 }).unwrap().1,
            json!({"rate": 250})
        );
        assert_eq!(
            toxic_type(&Toxic::Bandwidth { rate: 10 }).unwrap().1,
            json!({"rate": 1})
        );
        assert_eq!(
            toxic_type(&Toxic::ResetPeer {
                after: Span::from_millis(50)
            })
            .unwrap(),
            ("reset_peer", json!({"timeout": 50}))
        );
        assert!(matches!(
            toxic_type(&Toxic::Refuse),
            Err(ToxiproxyError::Unsupported("refuse"))
        ));
    }
}
