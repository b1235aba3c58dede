//! The HTTP control API of a standalone proxy, and its configuration file.
//!
//! | method and path | body | answer |
//! | --- | --- | --- |
//! | `GET /healthz` | | `{"status": "ok"}` |
//! | `GET /targets` | | `[TargetStatus]`, with active faults |
//! | `POST /targets/{name}/faults` | `{"network": NetworkFault, "lease_ms": N, "owner": OWNER}` or `{"http": HttpFault, ...}` | `201 {"id": ID, "lease_ms": N}` |
//! | `PUT /faults/{id}/lease` | `{"lease_ms": N}` | `{"id": ID, "lease_ms": N}` |
//! | `DELETE /faults/{id}` | | `204` |
//!
//! The fault's `target` may be left out of the body (the path names it); when given it
//! must agree. Errors are JSON, `{"error": CODE, "message": TEXT, "field": PATH}`: 404
//! `unknown_target` / `unknown_fault` / `not_found`, 400 `invalid_body` /
//! `invalid_fault` / `wrong_protocol` (naming the field when there is one), 409
//! `target_busy` (with `target` and `owner`), 401 `unauthorized` (see `access`), 413
//! `body_too_large` (bodies are bounded to [`MAX_BODY_BYTES`]).
//!
//! One owner at a time per target: `owner` names the run adding the fault (absent, it is
//! [`ANONYMOUS_OWNER`]); while that owner has an unexpired fault on a target, another
//! owner's `POST` gets 409 and adds nothing.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::access::{self, BearerToken, TlsListener};
use super::error::{FaultId, ProxyError};
use super::registry::ProxyRegistry;
use super::settings::ProxyTarget;
use crate::catalog::experiment::{HttpFault, NetworkFault};

/// The configuration file of `chaosgate proxy` (TOML); `deploy/proxy.example.toml`
/// documents every setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StandaloneConfig {
    /// Address of the control API (default `127.0.0.1:8475`).
    #[serde(default = "default_control_listen")]
    #[schemars(with = "String")]
    pub control_listen: SocketAddr,
    /// Who may call the control API: token and TLS.
    #[serde(default)]
    pub control: ControlSettings,
    /// One listener per target.
    #[serde(default)]
    pub targets: Vec<ProxyTarget>,
}

/// The `[control]` table: the control API's bearer token and TLS.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlSettings {
    /// File holding the bearer token every call but `GET /healthz` must present (e.g. a
    /// mounted Secret). Without it, the token is read from `CHAOSGATE_PROXY__TOKEN`.
    /// Required (one or the other) when `control_listen` is not a loopback address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<std::path::PathBuf>,
    /// PEM certificate chain: the control API then speaks https (give `tls_key` too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<std::path::PathBuf>,
}

/// The control API's resolved access rules: its token (if any) and its TLS (if any).
#[derive(Clone, Default)]
pub struct ControlAccess {
    /// Required of every call but `GET /healthz` when set.
    pub token: Option<BearerToken>,
    /// https when set.
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
}

impl std::fmt::Debug for ControlAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlAccess")
            .field("token", &self.token)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// The largest request body the control API reads; beyond, 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub use super::lease::ANONYMOUS_OWNER;

/// The longest `owner` a fault may name, in bytes.
const MAX_OWNER_BYTES: usize = 256;

fn default_control_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8475))
}

impl StandaloneConfig {
    /// Reads and checks a configuration file; errors name the file and the key.
    pub fn load(path: &Path) -> Result<StandaloneConfig, ProxyError> {
        let config_error = |message: String| ProxyError::Config {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| config_error(format!("cannot read the file: {e}")))?;
        StandaloneConfig::parse(&text).map_err(config_error)
    }

    /// The control API's token and TLS: the token from `[control] token_file`, else
    /// from `token_env` (the value of `CHAOSGATE_PROXY__TOKEN`); TLS from `tls_cert` and
    /// `tls_key`. Refused when `control_listen` is not a loopback address and there is
    /// no token, or when only one of `tls_cert`/`tls_key` is given.
    pub fn control_access(&self, token_env: Option<&str>) -> Result<ControlAccess, String> {
        let token = match (&self.control.token_file, token_env) {
            (Some(path), _) => {
                Some(BearerToken::read_file(path).map_err(|e| format!("control.token_file: {e}"))?)
            }
            (None, Some(text)) => {
                Some(BearerToken::new(text).map_err(|e| format!("{}: {e}", access::TOKEN_ENV))?)
            }
            (None, None) => None,
        };
        if token.is_none() && access::needs_token(self.control_listen) {
            return Err(format!(
                "control_listen {} is not a loopback address, so the control API needs a bearer token: set control.token_file or {}",
                self.control_listen,
                access::TOKEN_ENV
            ));
        }
        let tls = match (&self.control.tls_cert, &self.control.tls_key) {
            (Some(cert), Some(key)) => Some(access::server_tls(cert, key)?),
            (None, None) => None,
            (Some(_), None) => return Err("control.tls_cert is set without control.tls_key".into()),
            (None, Some(_)) => return Err("control.tls_key is set without control.tls_cert".into()),
        };
        Ok(ControlAccess { token, tls })
    }

    /// Parses TOML text; the error names the key, line and column.
    pub fn parse(text: &str) -> Result<StandaloneConfig, String> {
        let config: StandaloneConfig =
            toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        let mut names = std::collections::HashSet::new();
        for target in &config.targets {
            if target.name.is_empty() {
                return Err("targets: a target has an empty `name`".into());
            }
            if !names.insert(target.name.as_str()) {
                return Err(format!("targets: the name '{}' is used twice", target.name));
            }
        }
        Ok(config)
    }
}

/// The body of `POST /targets/{name}/faults`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddFaultRequest {
    /// A network toxic (give this or `http`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) network: Option<NetworkFault>,
    /// An HTTP fault (give this or `network`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) http: Option<HttpFault>,
    /// The lease, in milliseconds.
    pub(crate) lease_ms: u64,
    /// Who adds it (a run): one owner at a time per target. Absent: [`ANONYMOUS_OWNER`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) owner: Option<String>,
}

/// The body of `PUT /faults/{id}/lease`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LeaseRequest {
    /// The new lease from now, in milliseconds.
    pub(crate) lease_ms: u64,
}

/// The answer to adding a fault or renewing its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeaseAnswer {
    /// The fault.
    pub(crate) id: FaultId,
    /// Its lease from now, in milliseconds.
    pub(crate) lease_ms: u64,
}

/// The JSON error every failed call answers with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ApiError {
    /// A stable code: `unknown_target`, `unknown_fault`, `invalid_body`, ...
    pub(crate) error: String,
    /// What went wrong, for people.
    pub(crate) message: String,
    /// The offending field of the body, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) field: Option<String>,
    /// With `target_busy`: the target and who holds it.
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub(crate) held: Option<Box<HeldTarget>>,
    #[serde(skip)]
    status: u16,
}

/// A target another owner holds, as a 409 `target_busy` names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HeldTarget {
    /// The target asked for.
    pub(crate) target: String,
    /// The owner holding it.
    pub(crate) owner: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            error: code.to_string(),
            message: message.into(),
            field: None,
            held: None,
            status: status.as_u16(),
        }
    }

    fn with_field(mut self, field: Option<String>) -> ApiError {
        self.field = field;
        self
    }

    fn bad_body(field: Option<String>, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", message).with_field(field)
    }
}

impl From<ProxyError> for ApiError {
    fn from(err: ProxyError) -> ApiError {
        let message = err.to_string();
        match err {
            ProxyError::UnknownTarget(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_target", message)
            }
            ProxyError::UnknownFault(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_fault", message)
            }
            ProxyError::InvalidFault { field, .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_fault", message)
                    .with_field(Some(field))
            }
            ProxyError::WrongProtocol { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "wrong_protocol", message)
            }
            ProxyError::TargetBusy { target, owner } => ApiError {
                held: Some(Box::new(HeldTarget { target, owner })),
                ..ApiError::new(StatusCode::CONFLICT, "target_busy", message)
            },
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self)).into_response()
    }
}

/// The control API over `registry`; with `token`, every call but `GET /healthz` needs it.
pub(crate) fn router(registry: Arc<ProxyRegistry>, token: Option<BearerToken>) -> Router {
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/targets", get(list_targets))
        .route("/targets/{name}/faults", post(add_fault))
        .route("/faults/{id}/lease", put(renew_lease))
        .route("/faults/{id}", delete(remove_fault))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(registry);
    match token {
        Some(token) => router.layer(axum::middleware::from_fn_with_state(
            Arc::new(token),
            access::require_token,
        )),
        None => router,
    }
}

/// Serves the control API on `listener` (https when `access.tls` is set) until
/// `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<ProxyRegistry>,
    access: ControlAccess,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(registry, access.token);
    match access.tls {
        Some(tls) => {
            axum::serve(TlsListener::new(listener, tls)?, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

async fn healthz() -> axum::Json<Value> {
    axum::Json(json!({"status": "ok"}))
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint (GET /healthz, GET /targets, POST /targets/{name}/faults, PUT /faults/{id}/lease, DELETE /faults/{id})",
    )
}

async fn list_targets(State(registry): State<Arc<ProxyRegistry>>) -> impl IntoResponse {
    axum::Json(registry.targets())
}

/// Reads a JSON body into `T`, naming the offending field on error.
fn parse_body<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let field = (path != ".").then_some(path);
        let message = match &field {
            Some(field) => format!("{field}: {}", err.inner()),
            None => err.inner().to_string(),
        };
        ApiError::bad_body(field, message)
    })
}

/// The body, or why it could not be read: 413 beyond [`MAX_BODY_BYTES`].
fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                "body_too_large",
                format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            )
        } else {
            ApiError::new(status, "invalid_body", rejection.body_text())
        }
    })
}

/// Checks the `owner` a fault names: printable, at most [`MAX_OWNER_BYTES`].
fn owner(owner: Option<String>) -> Result<String, ApiError> {
    let Some(owner) = owner else {
        return Ok(ANONYMOUS_OWNER.to_string());
    };
    if owner.is_empty() || owner.len() > MAX_OWNER_BYTES || owner.chars().any(char::is_control) {
        return Err(ApiError::bad_body(
            Some("owner".into()),
            format!("owner: must be 1 to {MAX_OWNER_BYTES} bytes without control characters"),
        ));
    }
    Ok(owner)
}

fn json_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_body(None, format!("the body is not JSON: {e}")))
}

fn lease(lease_ms: u64) -> Result<Duration, ApiError> {
    if lease_ms == 0 {
        return Err(ApiError::bad_body(
            Some("lease_ms".into()),
            "lease_ms: must be at least 1",
        ));
    }
    Ok(Duration::from_millis(lease_ms))
}

async fn add_fault(
    State(registry): State<Arc<ProxyRegistry>>,
    UrlPath(name): UrlPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, axum::Json<LeaseAnswer>), ApiError> {
    let mut value = json_body(&read_body(body)?)?;
    // The path names the target; the fault body may leave it out.
    if let Some(object) = value.as_object_mut() {
        for kind in ["network", "http"] {
            if let Some(Value::Object(fault)) = object.get_mut(kind) {
                fault
                    .entry("target")
                    .or_insert_with(|| Value::String(name.clone()));
            }
        }
    }
    let request: AddFaultRequest = parse_body(value)?;
    let lease_for = lease(request.lease_ms)?;
    let owner = owner(request.owner.clone())?;
    let mismatch = |kind: &str, target: &str| {
        ApiError::bad_body(
            Some(format!("{kind}.target")),
            format!("{kind}.target: '{target}' differs from the target in the path, '{name}'"),
        )
    };
    let id = match (&request.network, &request.http) {
        (Some(fault), None) => {
            if fault.target != name {
                return Err(mismatch("network", &fault.target));
            }
            registry.add_network_fault_as(&name, &owner, fault, lease_for)?
        }
        (None, Some(fault)) => {
            if fault.target != name {
                return Err(mismatch("http", &fault.target));
            }
            registry.add_http_fault_as(&name, &owner, fault, lease_for)?
        }
        _ => {
            return Err(ApiError::bad_body(
                None,
                "give exactly one of `network` or `http`",
            ));
        }
    };
    Ok((
        StatusCode::CREATED,
        axum::Json(LeaseAnswer {
            id,
            lease_ms: request.lease_ms,
        }),
    ))
}

fn fault_id(text: &str) -> Result<FaultId, ApiError> {
    text.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_fault_id",
            format!("'{text}' is not a fault id (a number)"),
        )
        .with_field(Some("id".into()))
    })
}

async fn renew_lease(
    State(registry): State<Arc<ProxyRegistry>>,
    UrlPath(id): UrlPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<LeaseAnswer>, ApiError> {
    let id = fault_id(&id)?;
    let request: LeaseRequest = parse_body(json_body(&read_body(body)?)?)?;
    registry.renew(id, lease(request.lease_ms)?)?;
    Ok(axum::Json(LeaseAnswer {
        id,
        lease_ms: request.lease_ms,
    }))
}

async fn remove_fault(
    State(registry): State<Arc<ProxyRegistry>>,
    UrlPath(id): UrlPath<String>,
) -> Result<StatusCode, ApiError> {
    let id = fault_id(&id)?;
    if registry.remove(id) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ProxyError::UnknownFault(id).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_rejects_unknown_keys_naming_them() {
        let err = StandaloneConfig::parse(
            "control_listen = \"127.0.0.1:9000\"\n[[targets]]\nname = \"db\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:5432\"\nlatency = 3\n",
        )
        .expect_err("unknown key");
        assert!(err.contains("latency"), "{err}");
        let ok = StandaloneConfig::parse(
            "[[targets]]\nname = \"db\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:5432\"\n",
        )
        .expect("valid");
        assert_eq!(ok.control_listen.to_string(), "127.0.0.1:8475");
    }

    #[test]
    fn body_errors_name_the_field() {
        let value = json!({"network": {"target": "db", "toxic": {"type": "latency", "latency": "fast"}}, "lease_ms": 1000});
        let err = parse_body::<AddFaultRequest>(value).expect_err("bad latency");
        // Tagged enums are read as a whole: the path stops at the toxic, the message
        // names the bad value.
        assert_eq!(err.field.as_deref(), Some("network.toxic"));
        assert!(
            err.message.contains("'fast' is not a duration"),
            "{}",
            err.message
        );
        let value = json!({"network": {"target": "db", "toxic": {"type": "refuse"}}});
        let err = parse_body::<AddFaultRequest>(value).expect_err("no lease");
        assert!(err.message.contains("lease_ms"), "{}", err.message);
    }
}
