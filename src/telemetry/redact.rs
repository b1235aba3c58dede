//! Redaction: secrets (SASL and SSL passwords, OAuth client secrets, probe credentials,
//! passwords in Toxiproxy, proxy and probe URLs, credential variables of commands) never
//! reach logs or records.
//!
//! Two tools. By name: [`is_secret_property`] and [`is_secret_header`] know which
//! librdkafka properties and HTTP headers hold secrets, and [`url`] renders a URL with its
//! password replaced by [`MASK`]. By value: [`Secrets`] collects secret values once (those of
//! the configuration, `crate::config::Config::secrets`, and the probe credentials the
//! catalog lists, `crate::catalog::credentials`), then [`Secrets::scrub`] masks them
//! wherever they turn up in free text (an error message, a probe's last error, a run
//! record's log), since a library error may quote a value it was given. A URL library
//! quotes a password percent-encoded (`p@ss` as `p%40ss`) and a client may decode one
//! written encoded, so every secret is known in both forms; a command's arguments,
//! wherever they are quoted, are scrubbed the same way.
//!
//! The worker [`install`]s the secrets of its configuration and catalog once at start;
//! from then on every log line is scrubbed on its way to stderr (see [`super::logs`]),
//! every span on its way to the trace exporter (see [`super::traces`]),
//! and every run record is scrubbed before it is published ([`Secrets::scrub_run_record`],
//! called by the pipeline executor).
//!
//! Like all of telemetry, this module knows no configuration or catalog type: callers
//! hand it names and values.

use std::borrow::Cow;
use std::sync::{Arc, RwLock};

use crate::contract::RunRecord;

/// What a secret value is replaced with.
pub(crate) const MASK: &str = "***";

/// Parts of librdkafka property names that mark a secret value, e.g. `sasl.password`,
/// `ssl.key.password`, `ssl.key.pem`, `sasl.oauthbearer.client.secret`.
const SECRET_PROPERTY_PARTS: [&str; 4] = ["password", "secret", "token", "key"];

/// librdkafka properties that hold secrets without saying so in their name.
const SECRET_PROPERTIES: [&str; 2] = ["sasl.oauthbearer.config", "sasl.jaas.config"];

/// HTTP headers whose value is a credential.
const SECRET_HEADERS: [&str; 7] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    "apikey",
];

/// Parts of HTTP header names that mark a credential, e.g. `x-auth-token`.
const SECRET_HEADER_PARTS: [&str; 3] = ["token", "secret", "password"];

/// Whether the librdkafka property `key` holds a secret.
pub(crate) fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_PROPERTIES.contains(&key.as_str())
        || SECRET_PROPERTY_PARTS.iter().any(|part| key.contains(part))
}

/// Whether the HTTP header `name` carries a credential.
pub(crate) fn is_secret_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_HEADERS.contains(&name.as_str())
        || SECRET_HEADER_PARTS.iter().any(|part| name.contains(part))
}

/// A URL with the password of its user info masked: `http://u:***@host/`.
pub(crate) fn url(url: &str) -> Cow<'_, str> {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return Cow::Borrowed(url);
    };
    let authority_end = url[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| scheme_end + i);
    let authority = &url[scheme_end..authority_end];
    let Some(at) = authority.rfind('@') else {
        return Cow::Borrowed(url);
    };
    let user_info = &authority[..at];
    let user = user_info.split(':').next().unwrap_or_default();
    Cow::Owned(format!(
        "{}{user}:{MASK}{}",
        &url[..scheme_end],
        &url[scheme_end + at..]
    ))
}

/// Characters a URL library leaves alone in user info: RFC 3986's unreserved ones
/// (section 2.3). Everything else in a secret may reach a URL percent-encoded.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// `value` percent-encoded (every byte but the unreserved ones), with upper-case hex
/// (RFC 3986 section 2.1's advice) and lower-case hex; empty when nothing needs encoding.
fn percent_encoded_forms(value: &str) -> Vec<String> {
    if value.bytes().all(is_unreserved) {
        return Vec::new();
    }
    let encode = |upper: bool| {
        let mut out = String::with_capacity(value.len() * 3);
        for byte in value.bytes() {
            if is_unreserved(byte) {
                out.push(char::from(byte));
            } else if upper {
                out.push_str(&format!("%{byte:02X}"));
            } else {
                out.push_str(&format!("%{byte:02x}"));
            }
        }
        out
    };
    let upper = encode(true);
    let lower = encode(false);
    if upper == lower {
        vec![upper]
    } else {
        vec![upper, lower]
    }
}

/// `text` with its `%XX` escapes decoded, when it has any and the result is UTF-8.
fn percent_decoded(text: &str) -> Option<String> {
    if !text.contains('%') {
        return None;
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(u8::try_from(hi * 16 + lo).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .ok()
        .filter(|decoded| decoded != text)
}

/// Secret values known to this process, masked wherever they appear in free text. It
/// serializes (a JSON object holding the values) only to hand them to a fault's guard
/// process over its private pipe, so the guard's log lines are scrubbed as the runner's.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Secrets {
    /// Longest first, so a secret containing another is masked whole.
    values: Vec<String>,
}

/// Values shorter than this are not scrubbed from text: masking every `1` or `ab` would
/// garble messages and protect nothing.
const MIN_SECRET_LEN: usize = 4;

impl Secrets {
    /// Adds the credentials among HTTP headers (name, value) and URLs: the value of each
    /// credential header (see [`is_secret_header`]; of `Bearer abc`, the token alone
    /// too) and the password of each URL's user info.
    pub fn add_credentials<'a>(
        &mut self,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
        urls: impl IntoIterator<Item = &'a str>,
    ) {
        for (name, value) in headers {
            if is_secret_header(name) {
                self.add(value);
                // `Bearer abc`: the token alone may be quoted too.
                if let Some((_, token)) = value.split_once(' ') {
                    self.add(token.trim());
                }
            }
        }
        for url in urls {
            self.add_url(url);
        }
    }

    /// Adds one secret value, and the forms a URL gives it: percent-encoded as a URL
    /// library writes it into user info (`p@ss` is quoted as `p%40ss`), with upper- and
    /// lower-case hex digits.
    pub(crate) fn add(&mut self, value: &str) {
        self.add_exact(value);
        for encoded in percent_encoded_forms(value) {
            self.add_exact(&encoded);
        }
    }

    fn add_exact(&mut self, value: &str) {
        if value.len() < MIN_SECRET_LEN || self.values.iter().any(|v| v == value) {
            return;
        }
        self.values.push(value.to_string());
        self.values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    }

    /// Adds the password of `url`'s user info (`scheme://user:password@host/...`), if any,
    /// as written and percent-decoded (`p%40ss` is also `p@ss` once a library decoded it),
    /// each in its percent-encoded forms too (see [`Secrets::add`]).
    pub(crate) fn add_url(&mut self, url: &str) {
        let Some(rest) = url.split_once("://").map(|(_, rest)| rest) else {
            return;
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if let Some((user_info, _)) = authority.rsplit_once('@')
            && let Some((_, password)) = user_info.split_once(':')
        {
            self.add(password);
            if let Some(decoded) = percent_decoded(password) {
                self.add(&decoded);
            }
        }
    }

    /// Adds the value of each variable (name, value) whose name marks a credential, as a
    /// librdkafka property's does ([`is_secret_property`]: `..._PASSWORD`, `..._TOKEN`,
    /// `..._SECRET`, `..._KEY`): a command's `env`, say.
    pub fn add_variables<N: AsRef<str>, V: AsRef<str>>(
        &mut self,
        variables: impl IntoIterator<Item = (N, V)>,
    ) {
        for (name, value) in variables {
            if is_secret_property(name.as_ref()) {
                self.add(value.as_ref());
            }
        }
    }

    /// Whether no secret is known.
    pub(crate) fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Adds every secret of `other`.
    pub(crate) fn extend(&mut self, other: &Secrets) {
        for value in &other.values {
            self.add(value);
        }
    }

    /// Masks every known secret in the free-text fields of a run record: its summary,
    /// log, fault and probe errors, and assertion error.
    pub(crate) fn scrub_run_record(&self, record: &mut RunRecord) {
        if self.is_empty() {
            return;
        }
        let scrub = |text: &mut String| {
            if let Cow::Owned(clean) = self.scrub(text) {
                *text = clean;
            }
        };
        record.summary.iter_mut().for_each(scrub);
        record.log.iter_mut().for_each(scrub);
        for fault in &mut record.faults {
            fault.error.iter_mut().for_each(scrub);
        }
        for probe in &mut record.probes {
            probe.last_error.iter_mut().for_each(scrub);
        }
        for revert in &mut record.previous_attempt_reverts {
            scrub(&mut revert.outcome);
            revert.error.iter_mut().for_each(scrub);
        }
        if let Some(assertion) = &mut record.assertion {
            assertion.error.iter_mut().for_each(scrub);
        }
    }

    /// `text` with every known secret value replaced by [`MASK`].
    pub fn scrub<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut out = Cow::Borrowed(text);
        for value in &self.values {
            if out.contains(value.as_str()) {
                out = Cow::Owned(out.replace(value.as_str(), MASK));
            }
        }
        out
    }
}

/// The secrets of this process (see [`install`]).
static INSTALLED: RwLock<Option<Arc<Secrets>>> = RwLock::new(None);

/// Makes `secrets` known process-wide (added to any installed before): log lines and run
/// records are scrubbed of them from now on.
pub fn install(secrets: &Secrets) {
    if secrets.is_empty() {
        return;
    }
    let Ok(mut installed) = INSTALLED.write() else {
        return;
    };
    let mut all = installed.as_deref().cloned().unwrap_or_default();
    all.extend(secrets);
    *installed = Some(Arc::new(all));
}

/// The secrets installed in this process, if any.
pub fn installed() -> Option<Arc<Secrets>> {
    INSTALLED
        .read()
        .ok()
        .and_then(|installed| installed.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_properties_are_known_by_name() {
        let keys = [
            "security.protocol",
            "sasl.username",
            "sasl.password",
            "ssl.key.password",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
            "ssl.ca.location",
            "client.id",
        ];
        let secret: Vec<&str> = keys.into_iter().filter(|k| is_secret_property(k)).collect();
        assert_eq!(
            secret,
            [
                "sasl.password",
                "ssl.key.password",
                "sasl.oauthbearer.client.secret",
                "sasl.oauthbearer.config"
            ]
        );
    }

    #[test]
    fn credential_headers_are_known_by_name() {
        let names = [
            "Authorization",
            "Proxy-Authorization",
            "Cookie",
            "X-API-Key",
            "X-Auth-Token",
            "X-Client-Secret",
            "Accept",
            "X-Request-Id",
        ];
        let secret: Vec<&str> = names.into_iter().filter(|n| is_secret_header(n)).collect();
        assert_eq!(
            secret,
            [
                "Authorization",
                "Proxy-Authorization",
                "Cookie",
                "X-API-Key",
                "X-Auth-Token",
                "X-Client-Secret"
            ]
        );
    }

    #[test]
    fn urls_lose_their_password_only() {
        assert_eq!(
            url("https://user:pw1234@prom:9090/api?q=1"),
            "https://user:***@prom:9090/api?q=1"
        );
        assert_eq!(url("http://prom:9090/a@b"), "http://prom:9090/a@b");
        assert_eq!(url("not a url"), "not a url");
    }

    #[test]
    fn url_passwords_are_scrubbed_raw_and_percent_encoded() {
        let mut secrets = Secrets::default();
        secrets.add_url("http://chaos:p%40ss-w0rd@toxiproxy:8474");
        secrets.add_url("http://ops:plain-pa55@proxy:9000/");
        secrets.add("sasl/p@ss word");
        let text = "POST http://chaos:p%40ss-w0rd@toxiproxy:8474/proxies failed; \
                    decoded p@ss-w0rd; lower p%40ss-w0rd; proxy http://ops:plain-pa55@proxy:9000; \
                    kafka http://u:sasl%2Fp%40ss%20word@h and sasl%2fp%40ss%20word and sasl/p@ss word";
        let scrubbed = secrets.scrub(text);
        for secret in ["p%40ss", "p@ss", "plain-pa55", "sasl"] {
            assert!(!scrubbed.contains(secret), "{secret} in {scrubbed}");
        }
        assert!(
            scrubbed.contains("http://chaos:***@toxiproxy:8474/proxies"),
            "{scrubbed}"
        );
        assert_eq!(
            url("http://user:p%40ss@host:1/x"),
            "http://user:***@host:1/x"
        );
        assert_eq!(url("http://user:p@ss@host/x"), "http://user:***@host/x");
    }

    #[test]
    fn variables_named_like_credentials_are_secret() {
        let mut secrets = Secrets::default();
        secrets.add_variables([
            ("API_TOKEN", "tok-123456"),
            ("DB_PASSWORD", "db-pa55"),
            ("AWS_SECRET_ACCESS_KEY", "aws-s3cret"),
            ("MODE", "visible-mode"),
        ]);
        let scrubbed = secrets.scrub("tok-123456 db-pa55 aws-s3cret visible-mode");
        assert_eq!(scrubbed, "*** *** *** visible-mode");
    }

    #[test]
    fn known_secret_values_are_scrubbed_from_text() {
        let mut secrets = Secrets::default();
        secrets.add("sasl-pa55word");
        secrets.add_credentials(
            [
                ("Authorization", "Bearer tok-0123456789"),
                ("X-Request-Id", "visible-id"),
            ],
            [
                "https://probe:probe-pa55@payments.internal/health",
                "http://prom:prom-pa55@prometheus:9090",
            ],
        );
        let line = "SASL authentication failed with sasl-pa55word; probe sent \
                    'Bearer tok-0123456789' to https://probe:probe-pa55@payments.internal, \
                    token tok-0123456789, prometheus prom-pa55, id visible-id";
        let scrubbed = secrets.scrub(line);
        for secret in ["sasl-pa55word", "tok-0123456789", "probe-pa55", "prom-pa55"] {
            assert!(!scrubbed.contains(secret), "{secret} in {scrubbed}");
        }
        assert!(scrubbed.contains("visible-id"), "{scrubbed}");
        assert!(matches!(secrets.scrub("nothing here"), Cow::Borrowed(_)));

        let mut record = crate::contract::run_record::run_record_example();
        record.summary = Some("probe api: 401 for Bearer tok-0123456789".into());
        record.log.push("sasl-pa55word was refused".into());
        record.probes[0].last_error = Some("JSON at \"/detail\" is \"tok-0123456789\"".into());
        secrets.scrub_run_record(&mut record);
        let text = serde_json::to_string(&record).unwrap();
        for secret in ["sasl-pa55word", "tok-0123456789"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(
            text.contains("\"summary\":\"probe api: 401 for ***\""),
            "{text}"
        );
    }
}
