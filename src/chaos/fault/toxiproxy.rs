//! `toxiproxy` faults: toxics on an external Toxiproxy server, through its HTTP API.
//!
//! Inject creates one toxic per stream (`POST /proxies/{proxy}/toxics`; `direction: both`
//! makes two), revert deletes them (`DELETE /proxies/{proxy}/toxics/{toxic}`) and then
//! proves they are gone (`GET /proxies/{proxy}/toxics` no longer lists them). Toxic names
//! are derived from the fault name (`chaosgate-{fault}-{stream}`), so a toxic left by a
//! crashed run is found and replaced by the next one instead of blocking it. Toxiproxy has
//! no leases: a toxic would outlive a runner killed with SIGKILL, so the runner arms a
//! [guard](super::guard) with the planned names ([`planned`]) before it creates them.
//!
//! The rule that keeps a revert honest: **a revert is confirmed, not assumed.**
//!
//! - Every name in a URL path is one percent-encoded path segment (RFC 3986 section 3.3,
//!   via [`reqwest::Url::path_segments_mut`]), so `#`, `?`, `%` and spaces in a name
//!   reach Toxiproxy intact.
//! - Toxiproxy's router matches the *decoded* path (gorilla/mux without
//!   `UseEncodedPath`), so a `/` in a name can never be addressed, even as `%2F`: the
//!   toxic name writes the fault name's `%` and `/` as `%25` and `%2F` (names without them
//!   are unchanged), and a proxy whose name holds `/` or is `.`/`..`/empty is refused
//!   before any call ([`check_proxy_name`](crate::catalog::rules::check_toxiproxy_proxy_name)).
//! - A DELETE answered 404 proves nothing by itself (a path that does not reach the toxic
//!   is 404 too). After the DELETEs revert lists the proxy's toxics: none of the fault's
//!   names may remain. When that list is 404, `GET /proxies` decides: a proxy that is no
//!   longer there took its toxics with it (reverted); one that is still there is not
//!   proof. Anything else (an error, a toxic still listed) is
//!   [`ToxiproxyError::NotReverted`], naming the toxics and the proxy that may still be
//!   active.

use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};

use crate::catalog::experiment::{Direction, Toxic, ToxiproxyFault};
use crate::catalog::rules::check_toxiproxy_proxy_name;

/// Time allowed for one call to the Toxiproxy API.
const API_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a Toxiproxy toxic could not be created, deleted or shown gone.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ToxiproxyError {
    /// The toxic has no Toxiproxy counterpart.
    #[error("toxic '{0}' is not available on Toxiproxy")]
    Unsupported(&'static str),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// The `api` URL cannot take path segments (not an absolute `http(s)://` URL).
    #[error("Toxiproxy API URL '{api}': {reason}")]
    BadApi {
        /// The URL as written in the fault.
        api: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The proxy's name cannot be addressed in Toxiproxy's API (see [`check_proxy_name`](crate::catalog::rules::check_toxiproxy_proxy_name)).
    #[error("Toxiproxy proxy '{proxy}' cannot be addressed through its API: {reason}")]
    Unaddressable {
        /// The proxy name.
        proxy: String,
        /// Why.
        reason: &'static str,
    },
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
    /// The API answered something that is not what its documentation gives.
    #[error("{method} {url}: unexpected answer: {reason}")]
    Answer {
        /// HTTP method.
        method: &'static str,
        /// The URL.
        url: String,
        /// What was wrong with it.
        reason: String,
    },
    /// Revert could not show that the toxics are gone: they may still be active.
    #[error(
        "toxic(s) {} on Toxiproxy proxy '{proxy}' ({api}) may still be active: {reason}",
        quoted(toxics)
    )]
    NotReverted {
        /// API base URL.
        api: String,
        /// Proxy name.
        proxy: String,
        /// The toxics that may still be active.
        toxics: Vec<String>,
        /// Why they could not be shown gone.
        reason: String,
    },
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Toxics created on one Toxiproxy proxy, kept so that revert can delete them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Toxics {
    /// API base URL, without a trailing `/`.
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

/// The name of the toxic fault `fault_name` creates on `stream`:
/// `chaosgate-{fault_name}-{stream}` with the fault name's `%` written `%25` and `/`
/// written `%2F` (one to one, so two faults never share a toxic), because Toxiproxy
/// cannot address a toxic whose name holds `/`.
pub(crate) fn toxic_name(fault_name: &str, stream: &str) -> String {
    let escaped = fault_name.replace('%', "%25").replace('/', "%2F");
    format!("chaosgate-{escaped}-{stream}")
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
            let name = toxic_name(fault_name, stream);
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
///
/// Empty when inject would create nothing: the toxic has no Toxiproxy counterpart, or the
/// proxy cannot be addressed (inject refuses both before any call).
pub(crate) fn planned(fault_name: &str, fault: &ToxiproxyFault) -> Toxics {
    let names = match check_toxiproxy_proxy_name(&fault.proxy) {
        Ok(()) => toxic_bodies(fault_name, fault)
            .map(|bodies| bodies.into_iter().map(|(name, _)| name).collect())
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    Toxics {
        api: fault.api.trim_end_matches('/').to_string(),
        proxy: fault.proxy.clone(),
        names,
    }
}

/// `api` with `segments` appended, each percent-encoded as one RFC 3986 path segment.
///
/// Errors when `api` is not an absolute URL that takes a path, or when a segment would not
/// survive the trip (the `url` crate drops `.` and `..` segments; every other character,
/// `/` and `%` included, is percent-encoded): the segments are counted back, so a request
/// never goes to a path other than the one meant.
fn endpoint(api: &str, segments: &[&str]) -> Result<reqwest::Url, ToxiproxyError> {
    let bad = |reason: String| ToxiproxyError::BadApi {
        api: api.to_string(),
        reason,
    };
    let mut url = reqwest::Url::parse(api).map_err(|e| bad(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!(
            "scheme '{}' is not http or https",
            url.scheme()
        )));
    }
    let base_len = url
        .path_segments()
        .map_or(0, |s| s.filter(|p| !p.is_empty()).count());
    url.path_segments_mut()
        .map_err(|()| bad("cannot take a path".into()))?
        .pop_if_empty()
        .extend(segments);
    let sent = url.path_segments().map_or(0, Iterator::count);
    if sent != base_len + segments.len() {
        return Err(bad(format!(
            "the path segments {segments:?} cannot be sent as they are"
        )));
    }
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

fn toxics_url(toxics: &Toxics) -> Result<reqwest::Url, ToxiproxyError> {
    endpoint(&toxics.api, &["proxies", &toxics.proxy, "toxics"])
}

fn toxic_url(toxics: &Toxics, name: &str) -> Result<reqwest::Url, ToxiproxyError> {
    endpoint(&toxics.api, &["proxies", &toxics.proxy, "toxics", name])
}

async fn status_error(
    method: &'static str,
    url: &reqwest::Url,
    response: reqwest::Response,
) -> ToxiproxyError {
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    ToxiproxyError::Status {
        method,
        url: url.to_string(),
        status,
        body: body.trim().chars().take(300).collect(),
    }
}

async fn send(
    method: &'static str,
    url: &reqwest::Url,
    request: reqwest::RequestBuilder,
) -> Result<reqwest::Response, ToxiproxyError> {
    request
        .send()
        .await
        .map_err(|source| ToxiproxyError::Request {
            method,
            url: url.to_string(),
            source,
        })
}

/// Creates a toxic; `Ok(false)` when one of that name exists already (409).
async fn create(url: &reqwest::Url, body: &Value) -> Result<bool, ToxiproxyError> {
    let response = send("POST", url, client()?.post(url.clone()).json(body)).await?;
    if response.status().is_success() {
        return Ok(true);
    }
    if response.status().as_u16() == 409 {
        return Ok(false);
    }
    Err(status_error("POST", url, response).await)
}

/// Deletes a toxic. A 404 is not an error here, nor proof: [`remaining`] decides.
async fn delete(url: &reqwest::Url) -> Result<(), ToxiproxyError> {
    let response = send("DELETE", url, client()?.delete(url.clone())).await?;
    if response.status().is_success() || response.status().as_u16() == 404 {
        return Ok(());
    }
    Err(status_error("DELETE", url, response).await)
}

/// GETs `url` and parses its JSON body; `Ok(None)` on 404.
async fn get_json(url: &reqwest::Url) -> Result<Option<Value>, ToxiproxyError> {
    let response = send("GET", url, client()?.get(url.clone())).await?;
    if response.status().as_u16() == 404 {
        return Ok(None);
    }
    if !response.status().is_success() {
        return Err(status_error("GET", url, response).await);
    }
    let answer = |reason: String| ToxiproxyError::Answer {
        method: "GET",
        url: url.to_string(),
        reason,
    };
    let text = response.text().await.map_err(|e| answer(e.to_string()))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| answer(format!("not JSON ({e})")))
}

/// Which of `toxics.names` the proxy still lists, read from Toxiproxy.
///
/// Empty when the proxy itself is gone: `GET /proxies/{proxy}/toxics` is 404 and
/// `GET /proxies` no longer lists the proxy (a 404 alone can also mean a path that never
/// reached it).
async fn remaining(toxics: &Toxics) -> Result<Vec<String>, ToxiproxyError> {
    let url = toxics_url(toxics)?;
    let Some(listed) = get_json(&url).await? else {
        let index_url = endpoint(&toxics.api, &["proxies"])?;
        let index = get_json(&index_url).await?;
        let Some(Value::Object(proxies)) = index else {
            return Err(ToxiproxyError::Answer {
                method: "GET",
                url: index_url.to_string(),
                reason: "not an object of proxies by name".into(),
            });
        };
        if proxies.contains_key(&toxics.proxy) {
            return Err(ToxiproxyError::Answer {
                method: "GET",
                url: url.to_string(),
                reason: format!(
                    "404, yet GET {index_url} still lists proxy '{}'",
                    toxics.proxy
                ),
            });
        }
        return Ok(Vec::new());
    };
    let Value::Array(listed) = listed else {
        return Err(ToxiproxyError::Answer {
            method: "GET",
            url: url.to_string(),
            reason: "not a JSON array of toxics".into(),
        });
    };
    let listed: Vec<&str> = listed
        .iter()
        .filter_map(|t| t.get("name").and_then(Value::as_str))
        .collect();
    Ok(toxics
        .names
        .iter()
        .filter(|n| listed.contains(&n.as_str()))
        .cloned()
        .collect())
}

/// Creates the fault's toxics; a toxic of the same name left by an earlier run is replaced.
///
/// Refuses a proxy name Toxiproxy cannot address ([`check_proxy_name`](crate::catalog::rules::check_toxiproxy_proxy_name)) before any call.
/// On error, toxics already created are deleted again before the error is returned.
pub(crate) async fn inject(
    fault_name: &str,
    fault: &ToxiproxyFault,
) -> Result<Toxics, ToxiproxyError> {
    check_toxiproxy_proxy_name(&fault.proxy).map_err(|reason| ToxiproxyError::Unaddressable {
        proxy: fault.proxy.clone(),
        reason,
    })?;
    let mut created = planned(fault_name, fault);
    created.names.clear();
    let url = toxics_url(&created)?;
    for (name, body) in toxic_bodies(fault_name, fault)? {
        let outcome = match create(&url, &body).await {
            Ok(false) => match toxic_url(&created, &name) {
                Ok(old) => match delete(&old).await {
                    Ok(()) => create(&url, &body).await,
                    Err(err) => Err(err),
                },
                Err(err) => Err(err),
            },
            other => other,
        };
        match outcome {
            Ok(true) => created.names.push(name),
            Ok(false) => {
                let _ = revert(&created).await;
                return Err(ToxiproxyError::Status {
                    method: "POST",
                    url: url.to_string(),
                    status: 409,
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

/// Deletes the toxics, then proves they are gone.
///
/// Succeeds only when, after the DELETEs, the proxy's toxic list holds none of
/// `toxics.names` (or the proxy itself is gone, see [`remaining`]); a DELETE that failed
/// but whose toxic is gone anyway is fine. Otherwise [`ToxiproxyError::NotReverted`] names
/// the toxics that are still listed, or all of them when the list could not be read.
pub(crate) async fn revert(toxics: &Toxics) -> Result<(), ToxiproxyError> {
    if toxics.names.is_empty() {
        return Ok(());
    }
    let not_reverted = |names: Vec<String>, reason: String| ToxiproxyError::NotReverted {
        api: toxics.api.clone(),
        proxy: toxics.proxy.clone(),
        toxics: names,
        reason,
    };
    let mut delete_error = None;
    for name in &toxics.names {
        let deleted = match toxic_url(toxics, name) {
            Ok(url) => delete(&url).await,
            Err(err) => Err(err),
        };
        if let Err(err) = deleted {
            delete_error.get_or_insert(err);
        }
    }
    let after = match &delete_error {
        Some(err) => format!(" (the DELETE failed: {err})"),
        None => String::new(),
    };
    match remaining(toxics).await {
        Ok(left) if left.is_empty() => {
            if let Some(err) = delete_error {
                tracing::warn!(error = %err, proxy = %toxics.proxy,
                    "a toxic DELETE failed, yet the toxics are gone");
            }
            Ok(())
        }
        Ok(left) => Err(not_reverted(
            left,
            format!("still listed by the proxy after the DELETE{after}"),
        )),
        Err(err) => Err(not_reverted(
            toxics.names.clone(),
            format!("cannot read the proxy's toxics to confirm the DELETE: {err}{after}"),
        )),
    }
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

    #[test]
    fn toxic_names_keep_fault_names_apart_and_never_hold_a_slash() {
        assert_eq!(
            toxic_name("slow-db", "upstream"),
            "chaosgate-slow-db-upstream"
        );
        assert_eq!(
            toxic_name("db/primary", "downstream"),
            "chaosgate-db%2Fprimary-downstream"
        );
        // `%` is escaped too, so `a%2Fb` and `a/b` get different toxics.
        assert_eq!(toxic_name("a%2Fb", "up"), "chaosgate-a%252Fb-up");
        assert_eq!(toxic_name("canary#2 ?x", "up"), "chaosgate-canary#2 ?x-up");
    }

    #[test]
    fn every_name_is_one_percent_encoded_path_segment() {
        let url = endpoint(
            "http://127.0.0.1:8474/",
            &["proxies", "db", "toxics", "chaosgate-a%2Fb #?x-up"],
        )
        .unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8474/proxies/db/toxics/chaosgate-a%252Fb%20%23%3Fx-up"
        );
        // A base path is kept; a `/` in a segment stays inside it.
        let url = endpoint("http://h:1/toxiproxy", &["proxies", "a/b"]).unwrap();
        assert_eq!(url.as_str(), "http://h:1/toxiproxy/proxies/a%2Fb");
        // Segments that a URL cannot carry as they are never go to another path.
        for odd in ["..", "."] {
            assert!(
                matches!(
                    endpoint("http://h:1", &["proxies", odd, "toxics"]),
                    Err(ToxiproxyError::BadApi { .. })
                ),
                "{odd}"
            );
        }
        // An escape-like name is sent as itself.
        let url = endpoint("http://h:1", &["proxies", "%2e", "toxics"]).unwrap();
        assert_eq!(url.as_str(), "http://h:1/proxies/%252e/toxics");
        assert!(matches!(
            endpoint("127.0.0.1:8474", &["proxies"]),
            Err(ToxiproxyError::BadApi { .. })
        ));
    }

    #[test]
    fn proxies_toxiproxy_cannot_address_are_refused() {
        assert!(check_toxiproxy_proxy_name("orders-db").is_ok());
        assert!(check_toxiproxy_proxy_name("with space#and?%").is_ok());
        for bad in ["", ".", "..", "db/primary"] {
            assert!(check_toxiproxy_proxy_name(bad).is_err(), "{bad}");
        }
        let fault = ToxiproxyFault {
            api: "http://127.0.0.1:8474".into(),
            proxy: "db/primary".into(),
            toxic: Toxic::Timeout {
                after: Span::from_millis(1),
            },
            direction: Direction::Downstream,
            toxicity: 1.0,
        };
        assert!(
            planned("f", &fault).names.is_empty(),
            "inject refuses it first"
        );
    }
}
