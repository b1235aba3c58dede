//! Where an experiment may carry credentials: the probe fields sent to a server that can
//! hold a password or a token.
//!
//! The catalog says *where* a credential may sit (each HTTP probe header, each URL a
//! probe calls); `telemetry::redact::Secrets::add_credentials` decides *which* of those
//! values are secret (a credential header's value, a URL's password) and masks them in
//! logs and run records. The rule that keeps it right: every probe field that is sent to
//! a server is listed here, so redaction never needs to know the catalog's types.

use super::Experiment;
use super::experiment::ProbeType;

/// The fields of an experiment's probes that may hold a credential, in catalog order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CredentialFields<'a> {
    /// HTTP probe headers: name, value.
    pub headers: Vec<(&'a str, &'a str)>,
    /// URLs the probes call (HTTP probe URLs, Prometheus endpoints); a password may sit in
    /// their user info (`https://user:password@host/`).
    pub urls: Vec<&'a str>,
}

/// The fields of `experiment`'s probes that may hold a credential.
pub fn credential_fields(experiment: &Experiment) -> CredentialFields<'_> {
    let mut fields = CredentialFields::default();
    for probe in &experiment.probes {
        match &probe.probe_type {
            ProbeType::Http(http) => {
                for (name, value) in &http.headers {
                    fields.headers.push((name, value));
                }
                fields.urls.push(&http.url);
            }
            ProbeType::Prometheus(prometheus) => fields.urls.push(&prometheus.endpoint),
            ProbeType::Tcp(_) | ProbeType::Command(_) => {}
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_headers_and_urls_are_listed() {
        let experiment: Experiment = serde_saphyr::from_str(
            r#"
kind: experiment
id: payments
probes:
  - name: api
    mode: continuous
    http:
      url: https://probe:probe-pa55@payments.internal/health
      headers:
        Authorization: Bearer tok-0123456789
        X-Request-Id: visible-id
  - name: port
    mode: sot
    tcp:
      address: payments.internal:443
  - name: errors
    mode: eot
    prometheus:
      endpoint: http://prom:prom-pa55@prometheus:9090
      query: up
      comparison: {type: int, criteria: ge, value: "1"}
"#,
        )
        .unwrap();
        assert_eq!(
            credential_fields(&experiment),
            CredentialFields {
                headers: vec![
                    ("Authorization", "Bearer tok-0123456789"),
                    ("X-Request-Id", "visible-id"),
                ],
                urls: vec![
                    "https://probe:probe-pa55@payments.internal/health",
                    "http://prom:prom-pa55@prometheus:9090",
                ],
            }
        );
    }
}
