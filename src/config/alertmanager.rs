//! The `[alertmanager]` section: how Prometheus Alertmanager's webhook reaches
//! `chaosgate connect alertmanager`, and which firing alerts turn which flags off.
//!
//! The rule that keeps it safe: whoever can make Alertmanager send an alert can turn off
//! only flags this file allows. A rule lists its flags (`flags`), and an alert only
//! chooses the rule by its labels; or a rule takes the flag from a label of the alert
//! (`flags_from_label`), and then only a flag one of the rule's `allowed` globs matches.
//!
//! The token is a secret, from a file (`token_file`, a mounted Secret) or the environment
//! (`CHAOSGATE_ALERTMANAGER__TOKEN`), and is required: the receiver does not start
//! without one. It is masked in every log line ([`crate::config::Config::secrets`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::contract::flag_change::{KEY_RULE, is_key_name};

/// The Alertmanager receiver: its address, token and rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerConfig {
    /// Address to listen on (default `0.0.0.0:8017`).
    #[serde(default = "default_listen")]
    #[schemars(with = "String")]
    pub listen: SocketAddr,
    /// The token Alertmanager sends, as `Authorization: Bearer <token>` (its webhook's
    /// `http_config.authorization.credentials_file`) or as the password of Basic auth.
    /// Prefer `token_file`, or `CHAOSGATE_ALERTMANAGER__TOKEN`. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// File holding that token (trimmed); wins over `token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Project of a rule's flag written as `flag` or `environment/flag`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Environment of a rule's flag written as `flag`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// The rules, tried in order: the first whose `match` an alert's labels meet names
    /// the flags that alert turns off. An alert no rule matches does nothing.
    #[serde(default)]
    pub rules: Vec<AlertRule>,
}

/// One rule: which alerts (by label equality) turn which flags off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    /// Labels the alert must carry with exactly these values (all of them); empty
    /// matches every alert.
    #[serde(rename = "match", default)]
    pub labels: BTreeMap<String, String>,
    /// The flags a firing matched alert turns off: `project/environment/flag`, or
    /// `environment/flag` and `flag` completed by the section's `project` and
    /// `environment`. At least one, unless `flags_from_label` is set.
    #[serde(default)]
    pub flags: Vec<String>,
    /// A label of the alert naming one more flag to turn off, written as in `flags`
    /// (e.g. `flag = "checkout-v2"` with the section's `project` and `environment`).
    /// An alert without the label, or naming a flag no `allowed` glob matches, turns off
    /// only `flags`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags_from_label: Option<String>,
    /// With `flags_from_label`, required: globs (`globset` syntax; `*` stops at `/`) the
    /// named flag's `project/environment/flag` must match, e.g. `shop/production/*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<String>,
}

/// A flag a rule names, with each part a key name (the flag-change contract's rule).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FlagRef {
    /// Flag service project.
    pub project: String,
    /// Environment.
    pub environment: String,
    /// Flag key.
    pub flag: String,
}

impl FlagRef {
    /// `project/environment/flag`, the Kafka key of the flag's changes.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.project, self.environment, self.flag)
    }
}

/// A rule with its flags resolved: what the receiver matches alerts against.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The rule's position in `alertmanager.rules` (from 0), for logs.
    pub index: usize,
    /// Labels the alert must carry.
    pub labels: BTreeMap<String, String>,
    /// The flags, without duplicates, in the order written.
    pub flags: Vec<FlagRef>,
    /// `flags_from_label`, when set.
    pub from_label: Option<LabelFlag>,
}

/// A rule's flag named by a label of the alert, within the rule's `allowed` globs.
#[derive(Debug, Clone)]
pub struct LabelFlag {
    /// The label.
    pub label: String,
    /// The section's `project`, completing a short flag name.
    pub project: Option<String>,
    /// The section's `environment`, completing a short flag name.
    pub environment: Option<String>,
    /// The globs, as written (for messages).
    pub allowed: Vec<String>,
    /// The globs, compiled.
    allowed_set: globset::GlobSet,
}

impl LabelFlag {
    /// The flag `labels` name under this rule.
    ///
    /// Errors say why there is none: the label missing, not a flag name, or a flag no
    /// `allowed` glob matches.
    pub fn flag(&self, labels: &BTreeMap<String, String>) -> Result<FlagRef, String> {
        let Some(text) = labels.get(&self.label) else {
            return Err(format!("the alert has no label {:?}", self.label));
        };
        let flag = parse_flag(text, self.project.as_deref(), self.environment.as_deref())
            .map_err(|why| format!("label {}={text:?}: {why}", self.label))?;
        if !self.allowed_set.is_match(flag.key()) {
            return Err(format!(
                "label {}={text:?} names {}, which no allowed glob ({}) matches",
                self.label,
                flag.key(),
                self.allowed.join(", ")
            ));
        }
        Ok(flag)
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8017))
}

impl AlertmanagerConfig {
    /// The token Alertmanager must send: `token_file`'s content (trimmed) or `token`.
    ///
    /// Errors name the key or the file: neither set, the file unreadable, or the value
    /// empty.
    pub fn token(&self) -> Result<String, String> {
        super::unleash::secret(
            "alertmanager",
            self.token_file.as_deref(),
            self.token.as_deref(),
        )
    }

    /// The rules with their flags resolved.
    ///
    /// Errors name the key, e.g. `alertmanager.rules[1].flags[0] = "a/b/c/d"`: no rules,
    /// a rule without flags, a flag that is not 1 to 3 key names, a short flag without
    /// the section's `project`/`environment`, or a label name that is empty.
    pub fn resolved_rules(&self) -> Result<Vec<Rule>, String> {
        if self.rules.is_empty() {
            return Err(
                "alertmanager.rules is empty: add at least one [[alertmanager.rules]] with match and flags, or no alert would turn any flag off"
                    .into(),
            );
        }
        self.rules
            .iter()
            .enumerate()
            .map(|(index, rule)| {
                let at = format!("alertmanager.rules[{index}]");
                if let Some(name) = rule.labels.keys().find(|name| name.is_empty()) {
                    return Err(format!("{at}.match has an empty label name {name:?}"));
                }
                if rule.flags.is_empty() && rule.flags_from_label.is_none() {
                    return Err(format!(
                        "{at}.flags is empty: name at least one flag as \"project/environment/flag\" (or set flags_from_label and allowed)"
                    ));
                }
                let mut flags: Vec<FlagRef> = Vec::new();
                for (n, text) in rule.flags.iter().enumerate() {
                    let flag = parse_flag(text, self.project.as_deref(), self.environment.as_deref())
                        .map_err(|why| format!("{at}.flags[{n}] = {text:?}: {why}"))?;
                    if !flags.contains(&flag) {
                        flags.push(flag);
                    }
                }
                let from_label = match &rule.flags_from_label {
                    None if rule.allowed.is_empty() => None,
                    None => {
                        return Err(format!(
                            "{at}.allowed is set without flags_from_label: it only limits the flags a label names"
                        ));
                    }
                    Some(label) => Some(self.label_flag(&at, label, &rule.allowed)?),
                };
                Ok(Rule {
                    index,
                    labels: rule.labels.clone(),
                    flags,
                    from_label,
                })
            })
            .collect()
    }

    /// A rule's `flags_from_label` with its `allowed` globs compiled; errors name `at`.
    fn label_flag(&self, at: &str, label: &str, allowed: &[String]) -> Result<LabelFlag, String> {
        if label.is_empty() {
            return Err(format!("{at}.flags_from_label is empty"));
        }
        if allowed.is_empty() {
            return Err(format!(
                "{at}.allowed is empty: with flags_from_label, list the flags an alert may name, e.g. allowed = [\"shop/production/*\"]"
            ));
        }
        let mut set = globset::GlobSetBuilder::new();
        for (n, pattern) in allowed.iter().enumerate() {
            let glob = globset::GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("{at}.allowed[{n}] = {pattern:?}: {e}"))?;
            set.add(glob);
        }
        let allowed_set = set.build().map_err(|e| format!("{at}.allowed: {e}"))?;
        Ok(LabelFlag {
            label: label.to_string(),
            project: self.project.clone(),
            environment: self.environment.clone(),
            allowed: allowed.to_vec(),
            allowed_set,
        })
    }
}

/// `text` (`project/environment/flag`, `environment/flag` or `flag`) as a flag, completed
/// by `project` and `environment` (the section's); errors say what is missing or wrong.
fn parse_flag(
    text: &str,
    project: Option<&str>,
    environment: Option<&str>,
) -> Result<FlagRef, String> {
    let parts: Vec<&str> = text.split('/').collect();
    let default = |value: Option<&str>, key: &str| {
        value.map(str::to_string).ok_or_else(|| {
                format!("written without its {key}, and alertmanager.{key} is not set: write \"project/environment/flag\"")
            })
    };
    let (project, environment, flag) = match parts.as_slice() {
        [project, environment, flag] => (
            project.to_string(),
            environment.to_string(),
            flag.to_string(),
        ),
        [environment, flag] => (
            default(project, "project")?,
            environment.to_string(),
            flag.to_string(),
        ),
        [flag] => (
            default(project, "project")?,
            default(environment, "environment")?,
            flag.to_string(),
        ),
        _ => return Err("not \"project/environment/flag\"".into()),
    };
    for (part, value) in [
        ("project", &project),
        ("environment", &environment),
        ("flag", &flag),
    ] {
        if !is_key_name(value) {
            return Err(format!("{part} {value:?} is not a key name: {KEY_RULE}"));
        }
    }
    Ok(FlagRef {
        project,
        environment,
        flag,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> AlertmanagerConfig {
        toml::from_str(toml_text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn defaults_and_resolved_flags() {
        let c = config(
            r#"
token = "t"
project = "shop"
environment = "production"
[[rules]]
match = { alertname = "CheckoutErrors", severity = "page" }
flags = ["checkout-v2", "staging/search-v2", "other/production/cart", "checkout-v2"]
"#,
        );
        assert_eq!(c.listen, "0.0.0.0:8017".parse().unwrap());
        assert_eq!(c.token().unwrap(), "t");
        let rules = c.resolved_rules().unwrap();
        let keys: Vec<String> = rules[0].flags.iter().map(FlagRef::key).collect();
        assert_eq!(
            keys,
            [
                "shop/production/checkout-v2",
                "shop/staging/search-v2",
                "other/production/cart"
            ],
            "completed, in order, once each"
        );
        assert_eq!(rules[0].labels["alertname"], "CheckoutErrors");
    }

    #[test]
    fn errors_name_the_key() {
        let c = config("[[rules]]\nmatch = {}\nflags = [\"checkout-v2\"]");
        let err = c.token().unwrap_err();
        assert!(
            err.contains("alertmanager.token_file")
                && err.contains("CHAOSGATE_ALERTMANAGER__TOKEN"),
            "{err}"
        );
        let err = c.resolved_rules().unwrap_err();
        assert!(
            err.starts_with("alertmanager.rules[0].flags[0] = \"checkout-v2\"")
                && err.contains("alertmanager.project"),
            "{err}"
        );
        let c = config("[[rules]]\nflags = [\"a/b/c/d\"]");
        let err = c.resolved_rules().unwrap_err();
        assert!(err.contains("rules[0].flags[0]"), "{err}");
        let c = config("[[rules]]\nflags = [\"shop/prod/bad flag\"]");
        let err = c.resolved_rules().unwrap_err();
        assert!(err.contains("flag \"bad flag\" is not a key name"), "{err}");
        let c = config("[[rules]]\nflags = []");
        assert!(
            c.resolved_rules()
                .unwrap_err()
                .contains("rules[0].flags is empty")
        );
        let c = config("[[rules]]\nflags_from_label = \"flag\"");
        let err = c.resolved_rules().unwrap_err();
        assert!(
            err.starts_with("alertmanager.rules[0].allowed is empty"),
            "{err}"
        );
        let c = config("[[rules]]\nflags = [\"a/b/c\"]\nallowed = [\"a/*/*\"]");
        let err = c.resolved_rules().unwrap_err();
        assert!(err.contains("without flags_from_label"), "{err}");
        let c = config("[[rules]]\nflags_from_label = \"flag\"\nallowed = [\"a/b/*\", \"a/[b\"]");
        let err = c.resolved_rules().unwrap_err();
        assert!(
            err.starts_with("alertmanager.rules[0].allowed[1] = \"a/[b\""),
            "{err}"
        );
        let c = config("[[rules]]\nflags_from_label = \"flag\"\nallowed = [\"a/b/*\"]");
        assert!(c.resolved_rules().unwrap()[0].flags.is_empty());
        let c = config("");
        assert!(
            c.resolved_rules()
                .unwrap_err()
                .contains("alertmanager.rules is empty")
        );
        assert!(toml::from_str::<AlertmanagerConfig>("tokn = \"x\"").is_err());
    }
}
