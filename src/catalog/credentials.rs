//! Where an experiment may carry credentials: the fields sent to a server or handed to a
//! command that can hold a password or a token.
//!
//! The catalog says *where* a credential may sit (each HTTP probe header; each URL a
//! probe calls, a fault's Toxiproxy API or standalone proxy, or a command's argument
//! names; each variable a command is given); `telemetry::redact::Secrets` decides
//! *which* of those values are secret (a credential header's value, a URL's password, a
//! credential variable's value) and masks them in logs and run records. The rule that
//! keeps it right: every field that is sent to a server or a command is listed here, so
//! redaction never needs to know the catalog's types.

use super::Experiment;
use super::experiment::{CommandLine, FaultKind, Probe, ProbeType};

/// The fields of an experiment that may hold a credential, in catalog order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CredentialFields<'a> {
    /// HTTP probe headers: name, value.
    pub headers: Vec<(&'a str, &'a str)>,
    /// URLs the experiment calls or hands to a command (HTTP probe URLs, Prometheus
    /// endpoints, Toxiproxy APIs, standalone proxies, command arguments that are URLs); a
    /// password may sit in their user info (`https://user:password@host/`).
    pub urls: Vec<&'a str>,
    /// Variables commands are given: name, value (`env`, and the worker's values of the
    /// names in `env_from_worker`).
    pub variables: Vec<(&'a str, String)>,
}

/// The fields of `experiment` that may hold a credential.
pub fn credential_fields(experiment: &Experiment) -> CredentialFields<'_> {
    let mut fields = CredentialFields::default();
    for fault in &experiment.faults {
        match &fault.kind {
            FaultKind::Network(network) => fields.urls.extend(network.proxy.as_deref()),
            FaultKind::Http(http) => fields.urls.extend(http.proxy.as_deref()),
            FaultKind::Toxiproxy(toxiproxy) => fields.urls.push(&toxiproxy.api),
            FaultKind::Command(command) => {
                command_fields(&command.inject, &mut fields);
                command_fields(&command.revert, &mut fields);
            }
            FaultKind::Process(_) => {}
        }
    }
    for probe in &experiment.probes {
        probe_fields(probe, &mut fields);
    }
    fields
}

/// Adds the fields of `probe` that may hold a credential (an experiment's probe or a
/// pipeline guard's).
pub fn probe_fields<'a>(probe: &'a Probe, fields: &mut CredentialFields<'a>) {
    match &probe.probe_type {
        ProbeType::Http(http) => {
            for (name, value) in &http.headers {
                fields.headers.push((name, value));
            }
            fields.urls.push(&http.url);
        }
        ProbeType::Prometheus(prometheus) => fields.urls.push(&prometheus.endpoint),
        ProbeType::Command(command) => command_fields(&command.command, fields),
        ProbeType::Tcp(_) => {}
    }
}

/// A command's URL-like words (in any argument, a `sh -c` script included) and its
/// variables.
fn command_fields<'a>(line: &'a CommandLine, fields: &mut CredentialFields<'a>) {
    for argument in &line.argv {
        fields.urls.extend(
            argument
                .split(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '='))
                .filter(|word| word.contains("://")),
        );
    }
    for (name, value) in &line.env {
        fields.variables.push((name.as_str(), value.clone()));
    }
    for name in &line.env_from_worker {
        if let Ok(value) = std::env::var(name) {
            fields.variables.push((name.as_str(), value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_urls_and_command_variables_are_listed() {
        let experiment: Experiment = serde_saphyr::from_str(
            r#"
kind: experiment
id: payments
faults:
  - name: slow-db
    weight: 1
    duration: 1s
    toxiproxy:
      api: http://chaos:toxi%40pa55@toxiproxy:8474
      proxy: db
      toxic: {type: latency, latency: 100ms}
  - name: hook
    weight: 1
    duration: 1s
    command:
      inject: {argv: ["curl -fsS -X POST 'https://ops:hook-pa55@hooks.internal/x'"], shell: true, env: {API_TOKEN: tok-inject, MODE: slow}}
      revert: {argv: [curl, --version]}
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
                    "http://chaos:toxi%40pa55@toxiproxy:8474",
                    "https://ops:hook-pa55@hooks.internal/x",
                    "https://probe:probe-pa55@payments.internal/health",
                    "http://prom:prom-pa55@prometheus:9090",
                ],
                variables: vec![
                    ("API_TOKEN", "tok-inject".to_string()),
                    ("MODE", "slow".to_string()),
                ],
            }
        );
    }
}
