//! The `[unleash]` section: how `chaosgate connect unleash` reaches an Unleash server and
//! how Unleash reaches it.
//!
//! Two secrets live here, each from a file (`token_file`, a mounted Secret) or the
//! environment (`CHAOSGATE_UNLEASH__TOKEN`, `CHAOSGATE_UNLEASH__WEBHOOK__TOKEN`), never
//! from a command line: the Admin API token chaosgate applies commands with, and the
//! value Unleash's webhook integration sends in its `Authorization` header. Both are
//! masked in every log line ([`crate::config::Config::secrets`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::catalog::Span;

/// One Unleash server, both ways: its webhook in, its Admin API out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnleashConfig {
    /// Base URL of the Unleash server, e.g. `http://unleash:4242` (the Admin API is
    /// under `/api/admin`).
    pub url: String,
    /// Admin API token: an admin token or a personal access token of a user with the
    /// rights to turn the gated flags on and off. Prefer `token_file`, or
    /// `CHAOSGATE_UNLEASH__TOKEN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// File holding that token; wins over `token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The `createdBy` Unleash writes on changes made with `token`: the user's email, or
    /// its username when it has none, for a personal access token; the token's name for an
    /// admin token. Webhook events with this actor are chaosgate's own `enable` and
    /// `disable` coming back, and are not gated again (the loop guard).
    #[serde(default = "default_actor")]
    pub actor: String,
    /// Names this Unleash server in event ids (`unleash:<instance>:<event id>`) and in the
    /// CloudEvent `source`, so two servers' event ids never meet. Default: `url`'s host
    /// and port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Turn a gated `enable` off at once and on again only on chaosgate's `enable`, so
    /// the change takes effect only after its gate passes. Off by default: the change is
    /// live when Unleash reports it, and the gate confirms it or rolls it back.
    #[serde(default)]
    pub hold_while_gating: bool,
    /// Timeout of one Admin API request.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Span,
    /// The webhook endpoint Unleash's webhook integration posts to.
    #[serde(default)]
    pub webhook: UnleashWebhookConfig,
    /// How flag commands are applied.
    #[serde(default)]
    pub commands: UnleashCommandsConfig,
}

/// The webhook endpoint (`POST /unleash/webhook`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnleashWebhookConfig {
    /// Address to listen on.
    #[serde(default = "default_webhook_listen")]
    #[schemars(with = "String")]
    pub listen: SocketAddr,
    /// The value Unleash sends in the `Authorization` header (the integration's
    /// "Authorization" parameter); every other request gets 401. Prefer `token_file`, or
    /// `CHAOSGATE_UNLEASH__WEBHOOK__TOKEN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// File holding that value; wins over `token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// The `flag-commands` consumer that applies commands through the Admin API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnleashCommandsConfig {
    /// Consumer group (its own, apart from the worker's). A new group starts at the end
    /// of the commands topic (commands written before its first start are not applied);
    /// afterwards it resumes from its committed offsets.
    #[serde(default = "default_commands_group")]
    pub group_id: String,
    /// Longest wait between two tries of a command that failed transiently (waits grow
    /// exponentially from 250 ms, with jitter), unless Unleash's `Retry-After` asks for
    /// longer.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Span,
}

fn default_actor() -> String {
    "chaosgate".into()
}
fn default_request_timeout() -> Span {
    Span::from_millis(10_000)
}
fn default_webhook_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9466))
}
fn default_commands_group() -> String {
    "chaosgate-unleash".into()
}
fn default_max_backoff() -> Span {
    Span::from_millis(30_000)
}

impl Default for UnleashWebhookConfig {
    fn default() -> Self {
        UnleashWebhookConfig {
            listen: default_webhook_listen(),
            token: None,
            token_file: None,
        }
    }
}

impl Default for UnleashCommandsConfig {
    fn default() -> Self {
        UnleashCommandsConfig {
            group_id: default_commands_group(),
            max_backoff: default_max_backoff(),
        }
    }
}

impl UnleashConfig {
    /// The Admin API token: `token_file`'s content (trimmed) or `token`.
    ///
    /// Errors name the key or the file: neither set, the file unreadable, or the value
    /// empty.
    pub fn api_token(&self) -> Result<String, String> {
        secret("unleash", self.token_file.as_deref(), self.token.as_deref())
    }

    /// The webhook's expected `Authorization` value, as [`UnleashConfig::api_token`].
    pub fn webhook_token(&self) -> Result<String, String> {
        secret(
            "unleash.webhook",
            self.webhook.token_file.as_deref(),
            self.webhook.token.as_deref(),
        )
    }

    /// [`UnleashConfig::instance`], or `url`'s `host:port` when it is not set.
    pub fn instance_name(&self) -> String {
        if let Some(name) = &self.instance {
            return name.clone();
        }
        match reqwest::Url::parse(&self.url) {
            Ok(url) => match (url.host_str(), url.port_or_known_default()) {
                (Some(host), Some(port)) => format!("{host}:{port}"),
                (Some(host), None) => host.to_string(),
                _ => self.url.clone(),
            },
            Err(_) => self.url.clone(),
        }
    }
}

/// A secret of `section`: `file`'s content (trimmed) or `value`; errors name the key,
/// the file, or the `CHAOSGATE_...__TOKEN` variable to set.
pub(super) fn secret(
    section: &str,
    file: Option<&Path>,
    value: Option<&str>,
) -> Result<String, String> {
    let text = match (file, value) {
        (Some(path), _) => std::fs::read_to_string(path)
            .map_err(|e| format!("{section}.token_file {}: {e}", path.display()))?,
        (None, Some(value)) => value.to_string(),
        (None, None) => {
            let variable = format!(
                "{}{}__TOKEN",
                super::ENV_PREFIX,
                section.to_ascii_uppercase().replace('.', "__")
            );
            return Err(format!(
                "{section}.token is not set: set {section}.token_file or {variable}"
            ));
        }
    };
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{section}.token is empty"));
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> UnleashConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn defaults_and_the_instance_name_from_the_url() {
        let c = config("url = \"http://unleash:4242\"\ntoken = \"t\"");
        assert_eq!(c.actor, "chaosgate");
        assert!(!c.hold_while_gating);
        assert_eq!(c.instance_name(), "unleash:4242");
        assert_eq!(c.webhook.listen.port(), 9466);
        assert_eq!(c.commands.group_id, "chaosgate-unleash");
        assert_eq!(c.api_token().unwrap(), "t");
    }

    #[test]
    fn a_missing_token_names_the_key_and_the_variable() {
        let c = config("url = \"https://flags.example.com\"");
        assert_eq!(c.instance_name(), "flags.example.com:443");
        let err = c.webhook_token().unwrap_err();
        assert!(
            err.contains("unleash.webhook.token_file")
                && err.contains("CHAOSGATE_UNLEASH__WEBHOOK__TOKEN"),
            "{err}"
        );
        let err = c.api_token().unwrap_err();
        assert!(err.contains("CHAOSGATE_UNLEASH__TOKEN"), "{err}");
    }

    #[test]
    fn a_token_file_wins_and_is_trimmed() {
        let dir = std::env::temp_dir().join(format!("cg-unleash-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        let mut c = config("url = \"http://u:4242\"\ntoken = \"inline\"");
        c.token_file = Some(file.clone());
        assert_eq!(c.api_token().unwrap(), "from-file");
        c.token_file = Some(dir.join("missing"));
        assert!(c.api_token().unwrap_err().contains("missing"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
