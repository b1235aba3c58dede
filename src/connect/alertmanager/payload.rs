//! The body Prometheus Alertmanager's webhook receiver posts (`version` "4"), read as
//! plain data.
//!
//! Source: `webhook.Message` and `template.Data`/`template.Alert` in
//! github.com/prometheus/alertmanager (`notify/webhook/webhook.go`,
//! `template/template.go`), and a body captured from Alertmanager 0.25.0. The rule that
//! keeps it readable across versions: unknown fields are ignored (0.32 added
//! `notification_reason`, 0.34 `routeLabels`; Grafana's Alertmanager-like webhook sends
//! `orgId`, `silenceURL`, `values` and more), and only the fields chaosgate uses are
//! required: `alerts`, and per alert `status`, `labels`, `startsAt` and `fingerprint`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;

/// One notification: an alert group, as one POST carries it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// The payload version; Alertmanager sends `"4"`. Any is taken (logged when not 4).
    #[serde(default)]
    pub version: Option<String>,
    /// The receiver's name in Alertmanager's configuration.
    #[serde(default)]
    pub receiver: String,
    /// The group's key (route and group labels).
    #[serde(default)]
    pub group_key: Option<String>,
    /// How many alerts Alertmanager left out (the webhook's `max_alerts`; 0: none).
    #[serde(default)]
    pub truncated_alerts: u64,
    /// The alerts of the group, firing and resolved mixed.
    pub alerts: Vec<Alert>,
}

/// One alert of a notification.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// `firing` or `resolved`: this alert's own state (the notification's `status` is
    /// `firing` when any of its alerts fires).
    pub status: AlertStatus,
    /// The alert's labels (`alertname` among them).
    pub labels: BTreeMap<String, String>,
    /// The alert's annotations (`summary`, `description`, ...).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// When the alert started firing (RFC 3339, nanoseconds).
    pub starts_at: DateTime<Utc>,
    /// Alertmanager's hash of the label set: 16 hex digits, stable per label set.
    pub fingerprint: String,
}

/// An alert's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    /// The alert fires.
    Firing,
    /// The alert no longer fires.
    Resolved,
}

impl Alert {
    /// The `alertname` label, or `""`.
    pub fn name(&self) -> &str {
        self.labels.get("alertname").map_or("", String::as_str)
    }
}

/// Reads a notification from a JSON body.
///
/// Errors name the field and what is wrong, e.g. `alerts[0].startsAt: premature end of
/// input` or `alerts[1]: missing field `fingerprint``.
pub fn parse(body: &[u8]) -> Result<Notification, String> {
    // serde reads a struct from an array too (field by position), which would report a
    // JSON array, e.g. Prometheus's own alert list posted here, as a wrong `[0]`.
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        Some(b'[') => {
            return Err(
                "the body is a JSON array, not an Alertmanager webhook notification (an object with \"alerts\"): is something other than Alertmanager's webhook posting here?"
                    .into(),
            );
        }
        _ => {
            return Err(
                "the body is not a JSON object (an Alertmanager webhook notification)".into(),
            );
        }
    }
    let deserializer = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if path.is_empty() || path == "." {
            format!("the body is not an Alertmanager webhook notification: {inner}")
        } else {
            format!("{path}: {inner}")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A notification captured from Alertmanager 0.25.0, plus the fields later versions
    /// and Grafana add.
    const CAPTURED: &str = r#"{"receiver":"chaosgate","status":"firing",
 "alerts":[{"status":"firing",
   "labels":{"alertname":"CheckoutErrors","environment":"production","flag":"checkout-v2","project":"shop","severity":"page"},
   "annotations":{"summary":"checkout error rate 7%"},
   "startsAt":"2026-11-30T12:35:19.107181749Z","endsAt":"0001-01-01T00:00:00Z",
   "generatorURL":"http://prometheus:9090/graph?g0.expr=x","fingerprint":"e89145d969cdbe93",
   "silenceURL":"http://grafana/silence","values":{"A":7}}],
 "groupLabels":{"alertname":"CheckoutErrors"},"commonLabels":{},"commonAnnotations":{},
 "externalURL":"http://vm:19093","version":"4","groupKey":"{}:{alertname=\"CheckoutErrors\"}",
 "truncatedAlerts":0,"notification_reason":"first notification","routeLabels":{},"orgId":1}"#;

    #[test]
    fn reads_the_captured_payload_and_ignores_what_it_does_not_use() {
        let n = parse(CAPTURED.as_bytes()).unwrap();
        assert_eq!(n.receiver, "chaosgate");
        assert_eq!(n.version.as_deref(), Some("4"));
        let alert = &n.alerts[0];
        assert_eq!(alert.status, AlertStatus::Firing);
        assert_eq!(alert.name(), "CheckoutErrors");
        assert_eq!(alert.fingerprint, "e89145d969cdbe93");
        assert_eq!(
            alert
                .starts_at
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            "2026-11-30T12:35:19.107181749Z"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let err = parse(
            br#"{"alerts":[{"status":"firing","labels":{},"startsAt":"2026-11-30T12:00:00Z"}]}"#,
        )
        .unwrap_err();
        assert!(
            err.starts_with("alerts[0]") && err.contains("fingerprint"),
            "{err}"
        );
        let err = parse(br#"{"alerts":[{"status":"burning","labels":{},"startsAt":"2026-11-30T12:00:00Z","fingerprint":"x"}]}"#)
            .unwrap_err();
        assert!(
            err.starts_with("alerts[0].status:") && err.contains("burning"),
            "{err}"
        );
        let err = parse(br#"{"alerts":[{"status":"firing","labels":{},"startsAt":"yesterday","fingerprint":"x"}]}"#)
            .unwrap_err();
        assert!(err.starts_with("alerts[0].startsAt:"), "{err}");
        let err = parse(br#"{"receiver":"x"}"#).unwrap_err();
        assert!(err.contains("alerts"), "{err}");
        let err = parse(b"not json").unwrap_err();
        assert!(err.contains("not a JSON object"), "{err}");
        let err = parse(b" [1, 2").unwrap_err();
        assert!(err.contains("a JSON array"), "{err}");
        let err = parse(b"{\"alerts\": [").unwrap_err();
        assert!(err.starts_with("alerts: EOF"), "{err}");
    }
}
