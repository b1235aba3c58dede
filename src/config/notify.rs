//! The `[notify]` section: which events of the gate are told to whom (webhooks and
//! Slack-compatible incoming webhooks), sent by `chaosgate run` outside its transactions.
//!
//! A receiver's URL is a secret (a Slack incoming webhook's URL *is* its credential):
//! from `url_file` (a mounted Secret) or `url`, masked in every log line
//! ([`crate::config::Config::secrets`]), never written in an error. The rule that keeps
//! this section right: [`NotifyConfig::check`] refuses, at load, anything the notifier
//! could not use, naming the key (`notify.receivers[1].url`).

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::catalog::Span;

/// Where notifications go.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Base URL of the chaos experiments view (`chaosgate view`), e.g.
    /// `https://chaosgate.example.com`: notifications link to
    /// `<view_url>/executions/<pipeline_execution_id>`. No links when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view_url: Option<String>,
    /// The receivers; none: no notifier runs.
    #[serde(default)]
    pub receivers: Vec<ReceiverConfig>,
}

/// One receiver: a URL, the message format it takes and the events it wants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    /// Unique name (letters, digits, `-`, `_`, `.`): part of the receiver's consumer
    /// group (`<kafka.group_id>-notify-<name>`), of the idempotency key, and the
    /// `receiver` label of `chaosgate_notifications_total`.
    pub name: String,
    /// The message format.
    pub kind: ReceiverKind,
    /// The URL notifications are POSTed to. A secret: prefer `url_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// File holding the URL (trimmed); wins over `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_file: Option<PathBuf>,
    /// The events this receiver gets; default: all of them.
    #[serde(default = "all_events")]
    pub events: Vec<EventKind>,
    /// File holding a Standard Webhooks secret (`whsec_<base64>`, or any other text,
    /// used as bytes): requests then carry `webhook-signature`. Only for `webhook`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// Timeout of one request (connect included).
    #[serde(default = "default_timeout")]
    pub timeout: Span,
    /// How long one notification is tried before it is given up (logged and counted
    /// `given_up`).
    #[serde(default = "default_max_elapsed")]
    pub max_elapsed: Span,
}

/// The message format of a receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReceiverKind {
    /// A structured-mode CloudEvent (`application/cloudevents+json`) with Standard
    /// Webhooks headers (docs/notifications.md).
    Webhook,
    /// `{"text": ...}` for Slack incoming webhooks and the receivers that take their
    /// format (Mattermost, Discord's `/slack` endpoint, Rocket.Chat).
    Slack,
}

/// An event a receiver can be told of.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The worker issued a flag command (`enable`, `disable`, `revert`).
    CommandIssued,
    /// A chaos step ended `failed` or `error`.
    StepFailed,
    /// A guard after an `enable` fired.
    GuardFired,
    /// A pipeline execution waits for an approval.
    ApprovalNeeded,
    /// A fault of a step was not reverted.
    FaultNotReverted,
}

impl EventKind {
    /// Every event, in the order above.
    pub const ALL: [EventKind; 5] = [
        EventKind::CommandIssued,
        EventKind::StepFailed,
        EventKind::GuardFired,
        EventKind::ApprovalNeeded,
        EventKind::FaultNotReverted,
    ];

    /// The name as written in the configuration, the metrics and the CloudEvent type.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::CommandIssued => "command_issued",
            EventKind::StepFailed => "step_failed",
            EventKind::GuardFired => "guard_fired",
            EventKind::ApprovalNeeded => "approval_needed",
            EventKind::FaultNotReverted => "fault_not_reverted",
        }
    }
}

fn all_events() -> Vec<EventKind> {
    EventKind::ALL.to_vec()
}
fn default_timeout() -> Span {
    Span::from_millis(10_000)
}
fn default_max_elapsed() -> Span {
    Span::from_millis(24 * 3_600_000)
}

impl NotifyConfig {
    /// Checks what the notifier needs, naming the key of the first problem: each
    /// receiver has a valid unique name, exactly one of `url`/`url_file` (an inline `url`
    /// is http(s)), at least one event, a `timeout` and `max_elapsed` above zero, and a
    /// `secret_file` only for `webhook`; `view_url` is an http(s) URL. Files are read
    /// when the notifier starts ([`ReceiverConfig::url`]).
    pub fn check(&self) -> Result<(), String> {
        if let Some(view_url) = &self.view_url {
            http_url(view_url).map_err(|why| format!("notify.view_url {view_url:?}: {why}"))?;
        }
        for (index, receiver) in self.receivers.iter().enumerate() {
            let key = |field: &str| format!("notify.receivers[{index}].{field}");
            let name = &receiver.name;
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(format!(
                    "{} {name:?}: use letters, digits, '-', '_' and '.' only",
                    key("name")
                ));
            }
            if let Some(first) = self.receivers[..index].iter().position(|r| r.name == *name) {
                return Err(format!(
                    "{} {name:?}: notify.receivers[{first}] has this name already",
                    key("name")
                ));
            }
            match (&receiver.url, &receiver.url_file) {
                (None, None) => {
                    return Err(format!(
                        "{} is not set: set {} (or url)",
                        key("url"),
                        key("url_file")
                    ));
                }
                // The URL is a secret: the reason, never the value.
                (Some(url), None) => {
                    http_url(url).map_err(|why| format!("{}: {why}", key("url")))?;
                }
                _ => {}
            }
            if receiver.events.is_empty() {
                return Err(format!(
                    "{} is empty: name at least one of {}",
                    key("events"),
                    EventKind::ALL.map(EventKind::as_str).join(", ")
                ));
            }
            for (field, span) in [
                ("timeout", receiver.timeout),
                ("max_elapsed", receiver.max_elapsed),
            ] {
                if span.duration().is_zero() {
                    return Err(format!("{} must be more than 0", key(field)));
                }
            }
            if receiver.secret_file.is_some() && receiver.kind != ReceiverKind::Webhook {
                return Err(format!(
                    "{}: only a kind = \"webhook\" receiver signs its requests",
                    key("secret_file")
                ));
            }
        }
        Ok(())
    }
}

impl ReceiverConfig {
    /// The receiver's URL: `url_file`'s content (trimmed) or `url`, checked as an http(s)
    /// URL. `index` is the receiver's place in `notify.receivers`, for the key in errors,
    /// which never hold the URL itself.
    pub fn url(&self, index: usize) -> Result<reqwest::Url, String> {
        let key = format!("notify.receivers[{index}]");
        let text = match (&self.url_file, &self.url) {
            (Some(path), _) => std::fs::read_to_string(path)
                .map_err(|e| format!("{key}.url_file {}: {e}", path.display()))?,
            (None, Some(url)) => url.clone(),
            (None, None) => return Err(format!("{key}.url is not set")),
        };
        let text = text.trim();
        let from = if self.url_file.is_some() {
            "url_file"
        } else {
            "url"
        };
        http_url(text).map_err(|why| format!("{key}.{from}: {why}"))
    }

    /// The signing secret's bytes from `secret_file`: after a `whsec_` prefix, the base64
    /// it holds (Standard Webhooks); otherwise the trimmed text itself. `None` without a
    /// `secret_file`. Errors name the key and the file, never the secret.
    pub fn secret(&self, index: usize) -> Result<Option<Vec<u8>>, String> {
        use base64::Engine as _;
        let Some(path) = &self.secret_file else {
            return Ok(None);
        };
        let key = format!("notify.receivers[{index}].secret_file");
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("{key} {}: {e}", path.display()))?;
        let text = text.trim();
        if text.is_empty() {
            return Err(format!("{key} {}: the file is empty", path.display()));
        }
        match text.strip_prefix("whsec_") {
            Some(encoded) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map(Some)
                .map_err(|e| format!("{key} {}: not base64 after whsec_: {e}", path.display())),
            None => Ok(Some(text.as_bytes().to_vec())),
        }
    }

    /// Whether this receiver wants `event`.
    pub fn wants(&self, event: EventKind) -> bool {
        self.events.contains(&event)
    }
}

/// `text` as an absolute http(s) URL, or why not (without the text).
fn http_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err("not an http(s) URL".into());
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notify(text: &str) -> NotifyConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_all_events_ten_seconds_and_a_day() {
        let n = notify("[[receivers]]\nname = \"ops\"\nkind = \"webhook\"\nurl = \"http://h/x\"\n");
        assert_eq!(n.receivers[0].events, EventKind::ALL.to_vec());
        assert_eq!(n.receivers[0].timeout.duration().as_secs(), 10);
        assert_eq!(n.receivers[0].max_elapsed.duration().as_secs(), 86_400);
        assert!(n.check().is_ok());
        assert_eq!(n.receivers[0].url(0).unwrap().as_str(), "http://h/x");
    }

    #[test]
    fn problems_name_the_key_and_never_the_url() {
        let base = "[[receivers]]\nname = \"a\"\nkind = \"slack\"\nurl = \"http://h/a\"\n";
        let cases = [
            (
                "[[receivers]]\nname = \"b\"\nkind = \"webhook\"\nurl = \"ftp://s3cret/x\"\n",
                "notify.receivers[1].url: not an http(s) URL",
            ),
            (
                "[[receivers]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"http://h/b\"\n",
                "notify.receivers[1].name \"a\": notify.receivers[0] has this name already",
            ),
            (
                "[[receivers]]\nname = \"b c\"\nkind = \"webhook\"\nurl = \"http://h/b\"\n",
                "notify.receivers[1].name",
            ),
            (
                "[[receivers]]\nname = \"b\"\nkind = \"webhook\"\n",
                "notify.receivers[1].url is not set",
            ),
            (
                "[[receivers]]\nname = \"b\"\nkind = \"webhook\"\nurl = \"http://h\"\nevents = []\n",
                "notify.receivers[1].events is empty",
            ),
            (
                "[[receivers]]\nname = \"b\"\nkind = \"webhook\"\nurl = \"http://h\"\ntimeout = \"0s\"\n",
                "notify.receivers[1].timeout must be more than 0",
            ),
            (
                "[[receivers]]\nname = \"b\"\nkind = \"slack\"\nurl = \"http://h\"\nsecret_file = \"/s\"\n",
                "notify.receivers[1].secret_file",
            ),
        ];
        for (second, expected) in cases {
            let err = notify(&format!("{base}{second}")).check().unwrap_err();
            assert!(err.starts_with(expected), "{err} / {expected}");
            assert!(!err.contains("s3cret"), "{err}");
        }
        let err = notify("view_url = \"nope\"\n").check().unwrap_err();
        assert!(err.starts_with("notify.view_url"), "{err}");
    }

    #[test]
    fn a_url_file_wins_and_a_whsec_secret_is_base64() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("url"), "https://hooks.example/T/B/x\n").unwrap();
        std::fs::write(dir.path().join("secret"), "whsec_c2VjcmV0\n").unwrap();
        let mut n =
            notify("[[receivers]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"http://inline\"\n");
        let r = &mut n.receivers[0];
        r.url_file = Some(dir.path().join("url"));
        r.secret_file = Some(dir.path().join("secret"));
        assert_eq!(r.url(0).unwrap().as_str(), "https://hooks.example/T/B/x");
        assert_eq!(r.secret(0).unwrap(), Some(b"secret".to_vec()));
        r.url_file = Some(dir.path().join("missing"));
        assert!(
            r.url(2)
                .unwrap_err()
                .starts_with("notify.receivers[2].url_file")
        );
    }
}
