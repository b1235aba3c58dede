//! Who may call a standalone proxy's control API: the bearer token it requires, and the
//! TLS (rustls) it may serve with.
//!
//! | where the control API listens | token set | token not set |
//! | --- | --- | --- |
//! | a loopback address (`127.0.0.1`, `::1`) | every call but `GET /healthz` needs it | open (only local processes reach it) |
//! | any other address (`0.0.0.0`, a pod IP) | every call but `GET /healthz` needs it | refused at start |
//!
//! The token comes from a file (`[control] token_file`) or the environment
//! ([`TOKEN_ENV`]), never from the command line (where `ps` shows it). Calls present it as
//! `Authorization: Bearer TOKEN` (RFC 6750 section 2.1); a missing or wrong one gets 401
//! with `WWW-Authenticate: Bearer` (RFC 6750 section 3) and a JSON error.
//!
//! The rule that keeps it right: the token is compared in constant time and never
//! printed ([`BearerToken`]'s `Debug` hides it); this file depends on no other proxy
//! module.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;

/// The environment variable that holds the control API's bearer token, read by
/// `chaosgate proxy` (when its config names no `token_file`) and by the proxy clients of
/// the worker (`[proxy] token`) and of `chaosgate experiment run`.
pub const TOKEN_ENV: &str = "CHAOSGATE_PROXY__TOKEN";

/// The control API's bearer token. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl BearerToken {
    /// A token from `text`, surrounding whitespace (a file's last newline) removed.
    ///
    /// Refused when empty or when it holds a space or a control character (it must fit
    /// an `Authorization` header as one `b64token`, RFC 6750 section 2.1).
    pub fn new(text: &str) -> Result<BearerToken, String> {
        let token = text.trim();
        if token.is_empty() {
            return Err("the token is empty".into());
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "the token holds a space, a control or a non-ASCII character (use printable ASCII)"
                    .into(),
            );
        }
        Ok(BearerToken(token.to_string()))
    }

    /// Reads a token file (e.g. a mounted Kubernetes Secret); errors name the file.
    pub fn read_file(path: &Path) -> Result<BearerToken, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
        BearerToken::new(&text).map_err(|e| format!("token file {}: {e}", path.display()))
    }

    /// Whether `presented` is this token, compared in constant time (for equal lengths).
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }

    /// Adds this token to `secrets`, so it is masked wherever it would be logged or
    /// recorded (it may come from a file, which the configuration's secrets do not see).
    pub fn mask_in(&self, secrets: &mut crate::telemetry::redact::Secrets) {
        secrets.add(&self.0);
    }

    /// The `Authorization` header value a client sends.
    pub(crate) fn header_value(&self) -> Result<HeaderValue, String> {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", self.0))
            .map_err(|_| "the token cannot be sent in a header".to_string())?;
        value.set_sensitive(true);
        Ok(value)
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<hidden>)")
    }
}

/// Whether a control API on `listen` must have a token: any address but a loopback one
/// (`0.0.0.0` and `::` listen on every interface, so they need one too).
pub fn needs_token(listen: SocketAddr) -> bool {
    !listen.ip().is_loopback()
}

/// Middleware: lets a call through when it carries `Authorization: Bearer <token>`, else
/// answers 401 with `WWW-Authenticate` and a JSON error. `GET /healthz` is always open
/// (liveness probes carry no token; it tells nothing about faults).
pub(crate) async fn require_token(
    State(token): State<Arc<BearerToken>>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .and_then(|v| {
            // The scheme is case-insensitive (RFC 9110 section 11.1).
            let (scheme, rest) = v.split_at_checked(7)?;
            scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
        });
    match presented {
        Some(presented) if token.matches(presented) => next.run(request).await,
        Some(_) => unauthorized(
            "Bearer realm=\"chaosgate-proxy\", error=\"invalid_token\"",
            "the bearer token is not the one this proxy was given (workers: [proxy] token_file; experiment run: CHAOSGATE_PROXY__TOKEN_FILE or CHAOSGATE_PROXY__TOKEN)",
        ),
        None => unauthorized(
            "Bearer realm=\"chaosgate-proxy\"",
            "this proxy's control API needs `Authorization: Bearer TOKEN` (workers: [proxy] token_file; experiment run: CHAOSGATE_PROXY__TOKEN_FILE or CHAOSGATE_PROXY__TOKEN)",
        ),
    }
}

fn unauthorized(challenge: &'static str, message: &str) -> Response {
    let body = json!({"error": "unauthorized", "message": message});
    let mut response = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

/// The TLS settings of a server with the PEM certificate chain `cert` and private key
/// `key` (PKCS#8, PKCS#1 or SEC1), on rustls with the aws-lc-rs provider (the one
/// reqwest already brings). Errors name the file.
pub fn server_tls(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("tls_cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls_cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "tls_cert {}: no PEM certificate in it",
            cert.display()
        ));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("tls_key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            format!(
                "tls_cert {} and tls_key {}: {e}",
                cert.display(),
                key.display()
            )
        })?;
    Ok(Arc::new(config))
}

/// Time a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener that hands over TLS connections once their handshake is done; handshakes
/// run in their own tasks, so a slow client holds up no one else.
pub(crate) struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<tokio::net::TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Serves TLS with `config` on `listener`.
    pub(crate) fn new(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
    ) -> io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (sender, ready) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        let accepting = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::debug!(error = %err, "control API accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, sender) = (acceptor.clone(), sender.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = sender.send((stream, peer)).await;
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(%peer, error = %err, "TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            ready,
            local,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The accepting task only ends when dropped with this listener.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_trimmed_checked_and_hidden() {
        let token = BearerToken::new("s3cret-token\n").expect("valid");
        assert!(token.matches(b"s3cret-token"));
        assert!(!token.matches(b"s3cret-tokem"));
        assert!(!token.matches(b"s3cret"));
        assert_eq!(format!("{token:?}"), "BearerToken(<hidden>)");
        assert!(BearerToken::new(" \n").is_err());
        assert!(BearerToken::new("two words").is_err());
    }

    #[test]
    fn only_loopback_listeners_may_go_without_a_token() {
        assert!(!needs_token("127.0.0.1:8475".parse().unwrap()));
        assert!(!needs_token("[::1]:8475".parse().unwrap()));
        assert!(needs_token("0.0.0.0:8475".parse().unwrap()));
        assert!(needs_token("[::]:8475".parse().unwrap()));
        assert!(needs_token("10.1.2.3:8475".parse().unwrap()));
    }
}
