//! The worker's configuration: one TOML file plus `CHAOSGATE_...` environment overrides.
//!
//! Every setting is documented in `deploy/chaosgate.example.toml`. An override names its
//! key path with `__` between levels, e.g. `CHAOSGATE_KAFKA__BOOTSTRAP_SERVERS` or
//! `CHAOSGATE_KAFKA__PROPERTIES__SASL_PASSWORD` (inside `kafka.properties`, `_` stands for
//! `.`). Its value is read as a TOML value (`16`, `true`, `["a"]`) when it parses as one,
//! else as a string; values inside `kafka.properties` and of any `token` key are always
//! strings. Unknown keys, wrong types and missing required values fail at start
//! with the key and the file (or variable) named.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::catalog::{Span, Unrouted};
use crate::chaos::proxy::ProxyTarget;
use crate::telemetry::redact::{self, Secrets};
pub use crate::telemetry::{LogFormat, TelemetryConfig};

mod alertmanager;
mod flagd;
mod notify;
mod unleash;
pub use alertmanager::{
    AlertRule, AlertmanagerConfig, FlagRef, LabelFlag, Rule as AlertmanagerRule,
};
pub use flagd::FlagdConfig;
pub use notify::{EventKind, NotifyConfig, ReceiverConfig, ReceiverKind};
pub use unleash::{UnleashCommandsConfig, UnleashConfig, UnleashWebhookConfig};

/// Prefix of the environment overrides.
pub(crate) const ENV_PREFIX: &str = "CHAOSGATE_";

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "Config",
    description = "The chaosgate worker configuration (TOML).",
    example = config_example()
)]
pub struct Config {
    /// Kafka connection and topics.
    pub kafka: KafkaConfig,
    /// Where the pipelines and experiments are.
    pub catalog: CatalogConfig,
    /// Worker behaviour.
    #[serde(default)]
    pub worker: WorkerConfig,
    /// HTTP endpoints (health, metrics).
    #[serde(default)]
    pub http: HttpConfig,
    /// Logs and traces.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Fault proxy targets run inside the worker.
    #[serde(default)]
    pub proxy: ProxyConfig,
    /// The chaos experiments view (`chaosgate view`).
    #[serde(default)]
    pub view: ViewConfig,
    /// The Unleash bridges (`chaosgate connect unleash`); absent when Unleash is not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unleash: Option<UnleashConfig>,
    /// The flagd bridge (`chaosgate connect flagd`): chaosgate as a gated OpenFeature
    /// flag source; absent when not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flagd: Option<FlagdConfig>,
    /// Notifications of the gate's events to webhooks and Slack-compatible receivers,
    /// sent by `chaosgate run`; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<NotifyConfig>,
    /// The Alertmanager receiver (`chaosgate connect alertmanager`): firing alerts turn
    /// configured flags off; absent when not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alertmanager: Option<AlertmanagerConfig>,
}

/// The documented example, `deploy/chaosgate.example.toml`, as the schema's example.
pub(crate) fn config_example() -> Config {
    Config {
        kafka: KafkaConfig {
            bootstrap_servers: "127.0.0.1:19092".into(),
            group_id: default_group_id(),
            transactional_id_prefix: default_group_id(),
            transactional_id: None,
            topics: Topics::default(),
            create_topics: false,
            topic_partitions: default_topic_partitions(),
            max_message_bytes: default_max_message_bytes(),
            properties: BTreeMap::from([("client.id".to_string(), "chaosgate".to_string())]),
        },
        catalog: CatalogConfig {
            path: PathBuf::from("examples"),
        },
        worker: WorkerConfig::default(),
        http: HttpConfig::default(),
        telemetry: TelemetryConfig {
            otlp_endpoint: None,
            log_format: LogFormat::Auto,
            log_filter: Some("info".into()),
        },
        proxy: ProxyConfig {
            targets: vec![ProxyTarget {
                name: "payments".into(),
                listen: SocketAddr::from(([127, 0, 0, 1], 18081)),
                upstream: "127.0.0.1:8081".into(),
                protocol: crate::chaos::proxy::ProxyProtocol::Tcp,
            }],
            ..ProxyConfig::default()
        },
        view: ViewConfig::default(),
        unleash: None,
        flagd: None,
        notify: None,
        alertmanager: None,
    }
}

/// Kafka connection, consumer group and topics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]` (required).
    pub bootstrap_servers: String,
    /// Consumer group id.
    #[serde(default = "default_group_id")]
    pub(crate) group_id: String,
    /// Prefix of the transactional ids (one per worker instance and partition set).
    #[serde(default = "default_group_id")]
    pub(crate) transactional_id_prefix: String,
    /// Transactional id of this worker instance (default: the prefix and
    /// `worker.instance_id`). Keep it stable across restarts of one instance and distinct
    /// between instances; it is the consumer's `group.instance.id` too (static
    /// membership).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) transactional_id: Option<String>,
    /// Topic names.
    #[serde(default)]
    pub topics: Topics,
    /// Create missing topics at start (with `topic_partitions` partitions); when false a
    /// missing topic stops the worker with a clear error.
    #[serde(default)]
    pub(crate) create_topics: bool,
    /// Partitions of topics the worker creates.
    #[serde(default = "default_topic_partitions")]
    pub(crate) topic_partitions: i32,
    /// Flag-changes bigger than this go to the dead-letter topic.
    #[serde(default = "default_max_message_bytes")]
    pub(crate) max_message_bytes: usize,
    /// Extra librdkafka properties for every client, e.g. `security.protocol`,
    /// `sasl.mechanism`, `sasl.username`, `sasl.password`, `ssl.ca.location`.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_group_id() -> String {
    "chaosgate".to_string()
}

fn default_topic_partitions() -> i32 {
    3
}

fn default_max_message_bytes() -> usize {
    1 << 20
}

/// Topic names (README "Contracts").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Topics {
    /// Flag-change events, consumed.
    #[serde(default = "topic_flag_changes")]
    pub flag_changes: String,
    /// Experiment-run records, produced.
    #[serde(default = "topic_runs")]
    pub runs: String,
    /// Flag commands, produced.
    #[serde(default = "topic_commands")]
    pub commands: String,
    /// Dead letters, produced.
    #[serde(default = "topic_dead_letter")]
    pub dead_letter: String,
    /// Abort requests (kill switch), consumed.
    #[serde(default = "topic_control")]
    pub control: String,
    /// Approved flagd definitions, produced (for changes whose values are flagd
    /// definitions, in the command's transaction) and read by `chaosgate connect flagd`.
    /// Create it compacted (`cleanup.policy=compact`): the newest record of each flag is
    /// the approved configuration.
    #[serde(default = "topic_approved_flags")]
    pub approved_flags: String,
    /// What the worker owes each flag (a parked pipeline execution, a guard), produced in
    /// the transactions that change it and read whole by every worker. Create it
    /// compacted (`cleanup.policy=compact`): the newest record of each flag is its state.
    #[serde(default = "topic_flag_state")]
    pub flag_state: String,
}

fn topic_flag_changes() -> String {
    "flag-changes".into()
}
fn topic_runs() -> String {
    "chaos-experiment-runs".into()
}
fn topic_commands() -> String {
    "flag-commands".into()
}
fn topic_dead_letter() -> String {
    "flag-changes-dlq".into()
}
fn topic_control() -> String {
    "chaosgate-control".into()
}
fn topic_approved_flags() -> String {
    "approved-flags".into()
}
fn topic_flag_state() -> String {
    "chaosgate-flag-state".into()
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            flag_changes: topic_flag_changes(),
            runs: topic_runs(),
            commands: topic_commands(),
            dead_letter: topic_dead_letter(),
            control: topic_control(),
            approved_flags: topic_approved_flags(),
            flag_state: topic_flag_state(),
        }
    }
}

/// Where the catalog is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// Folder of pipeline and experiment YAML files (required). Relative paths are read
    /// from the config file's folder.
    pub path: PathBuf,
}

/// Worker behaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Flags gated at the same time, at most. At most 472: the committed offsets metadata
    /// must name every unfinished event within Kafka's `offset.metadata.max.bytes` (4 KiB
    /// by default); a larger value is refused at start.
    #[serde(default = "default_max_in_flight")]
    pub(crate) max_in_flight: usize,
    /// Time allowed for a graceful shutdown, all steps together (interrupt runs, publish
    /// their records, commit, stop the kill switch, leave the group), broker away included.
    #[serde(default = "default_grace")]
    pub shutdown_grace: Span,
    /// Lease of every injected fault; a fault not renewed in time reverts itself.
    #[serde(default = "default_lease")]
    pub fault_lease: Span,
    /// The longest a step's run waits for a target held by another flag's experiment
    /// (granted first come, first served; `0s`: never wait) before it is `aborted` with
    /// that reason and nothing injected (the step's `failure_strategy` then applies). A
    /// step's `timeout` counts only from when its targets are held.
    #[serde(default = "default_target_wait")]
    pub target_wait: Span,
    /// How long the consumer loop or the committer may go without a sign of life before
    /// `/healthz` answers 503 (the loop goes round at least once a second; one commit
    /// attempt against an absent broker can take about a minute).
    #[serde(default = "default_liveness_timeout")]
    pub(crate) liveness_timeout: Span,
    /// This instance's stable id (default: the host name, i.e. the pod name on
    /// Kubernetes). It names the default `kafka.transactional_id`
    /// (`<transactional_id_prefix>-<instance_id>`). Keep it stable across restarts of one
    /// instance and distinct between instances (two replicas on one host need their own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) instance_id: Option<String>,
    /// Static group membership (KIP-345): the consumer joins with `group.instance.id` =
    /// the transactional id, so a restarted instance takes its partitions back at once
    /// instead of after the group's session timeout. A stopped instance's partitions
    /// then wait `session.timeout.ms` before they move to the others.
    #[serde(default = "default_static_membership")]
    pub(crate) static_membership: bool,
    /// What a flag change no pipeline's routes take gets: `enable` (the default: chaosgate
    /// gates only the flags its routes name and stays out of the way of the rest, as
    /// before this setting existed), `disable` (fail closed: a flag goes on only through a
    /// pipeline), or `dead_letter` (no command at all; the event goes to the dead-letter
    /// topic with class `unrouted`). A requested `disable` is always passed on.
    #[serde(default)]
    pub(crate) unrouted: Unrouted,
}

fn default_max_in_flight() -> usize {
    16
}
fn default_grace() -> Span {
    Span::from_millis(30_000)
}
fn default_lease() -> Span {
    Span::from_millis(10_000)
}
fn default_target_wait() -> Span {
    Span::from_millis(600_000)
}
fn default_liveness_timeout() -> Span {
    Span::from_millis(120_000)
}
fn default_static_membership() -> bool {
    true
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            max_in_flight: default_max_in_flight(),
            shutdown_grace: default_grace(),
            fault_lease: default_lease(),
            target_wait: default_target_wait(),
            liveness_timeout: default_liveness_timeout(),
            instance_id: None,
            static_membership: default_static_membership(),
            unrouted: Unrouted::default(),
        }
    }
}

/// HTTP endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[serde(default = "default_listen")]
    #[schemars(with = "String")]
    pub listen: SocketAddr,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9464))
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
        }
    }
}

/// Fault proxy targets run inside the worker, and how the worker reaches standalone
/// proxies (the `proxy:` URL of a fault).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// One listener per target.
    #[serde(default)]
    pub targets: Vec<ProxyTarget>,
    /// Bearer token for standalone proxies' control APIs. Prefer `token_file`, or set
    /// it with `CHAOSGATE_PROXY__TOKEN`; never on a command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// File holding that token (e.g. a mounted Secret); wins over `token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// PEM CA file trusted (alone) for `https://` proxy URLs; absent: the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl ProxyConfig {
    /// The token and CA for standalone proxies; errors name the file or the key.
    pub fn access(&self) -> Result<crate::chaos::proxy::ProxyAccess, String> {
        crate::chaos::proxy::ProxyAccess::load(
            self.token_file.as_deref(),
            self.token.as_deref(),
            self.ca_file.as_deref(),
        )
        .map_err(|e| format!("proxy: {e}"))
    }
}

/// The chaos experiments view (`chaosgate view`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ViewConfig {
    /// Address of the pages and the API.
    #[serde(default = "default_view_listen")]
    #[schemars(with = "String")]
    pub listen: SocketAddr,
    /// SQLite database file (WAL mode), or `:memory:`. Relative paths are read from the
    /// working directory.
    #[serde(default = "default_view_database")]
    pub database: String,
    /// Executions older than this are removed from the database (the topics keep what
    /// their own retention keeps). humantime syntax: `30d`, `12h`, `90m`.
    #[serde(default = "default_view_retention", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub retention: std::time::Duration,
    /// Bearer token every page and endpoint asks for; none when absent. Prefer
    /// `CHAOSGATE_VIEW__TOKEN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Link from a run to its trace: `{trace_id}` is replaced by the run's trace id, e.g.
    /// `http://127.0.0.1:16686/trace/{trace_id}` (Jaeger). No link when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_url: Option<String>,
    /// The integrity audit reports a flag-change with no command after this long.
    #[serde(default = "default_audit_command_delay")]
    pub(crate) audit_command_delay: Span,
    /// The integrity audit's timeout for a `running` run of a step the catalog does not
    /// name (otherwise the step's `timeout`, else its experiment's).
    #[serde(default = "default_audit_running_timeout")]
    pub(crate) audit_running_timeout: Span,
}

fn default_view_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9465))
}
fn default_view_database() -> String {
    "chaosgate-view.db".into()
}
fn default_view_retention() -> std::time::Duration {
    std::time::Duration::from_secs(30 * 24 * 3_600)
}
fn default_audit_command_delay() -> Span {
    Span::from_millis(300_000)
}
fn default_audit_running_timeout() -> Span {
    Span::from_millis(3_600_000)
}

impl Default for ViewConfig {
    fn default() -> Self {
        ViewConfig {
            listen: default_view_listen(),
            database: default_view_database(),
            retention: default_view_retention(),
            token: None,
            trace_url: None,
            audit_command_delay: default_audit_command_delay(),
            audit_running_timeout: default_audit_running_timeout(),
        }
    }
}

/// A configuration that cannot be used, naming the key and where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error (in the message, not a separate source: said once).
        error: std::io::Error,
    },
    /// The file (with its overrides) is not a valid configuration.
    #[error("{origin}: {message}")]
    Invalid {
        /// The file, plus the overriding variables when there were any.
        origin: String,
        /// The parser's message: key, line and column.
        message: String,
    },
}

impl Config {
    /// Reads `path`, applies the `CHAOSGATE_...` variables from `env`, and checks the lot.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let mut config = Config::parse(&text, &path.display().to_string(), env)?;
        if config.catalog.path.is_relative()
            && let Some(dir) = path.parent()
        {
            config.catalog.path = dir.join(&config.catalog.path);
        }
        if let (Some(flagd), Some(dir)) = (config.flagd.as_mut(), path.parent()) {
            for path in [flagd.proposed.as_mut(), flagd.file.as_mut()]
                .into_iter()
                .flatten()
            {
                if path.is_relative() {
                    *path = dir.join(&*path);
                }
            }
        }
        if let (Some(notify), Some(dir)) = (config.notify.as_mut(), path.parent()) {
            for receiver in &mut notify.receivers {
                for path in [receiver.url_file.as_mut(), receiver.secret_file.as_mut()]
                    .into_iter()
                    .flatten()
                {
                    if path.is_relative() {
                        *path = dir.join(&*path);
                    }
                }
            }
        }
        Ok(config)
    }

    /// Parses TOML text (named `origin` in errors) with the overrides from `env`.
    pub fn parse(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let invalid = |origin: String, message: String| ConfigError::Invalid { origin, message };
        let mut table: toml::Table = toml::from_str(text)
            .map_err(|e| invalid(origin.to_string(), e.to_string().trim_end().to_string()))?;
        let mut applied = Vec::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            // Not settings: the config file's path (`--config`), and the cache folder of
            // chaosgate's own scripts (`scripts/test.sh`, `deploy/local/*.sh` export it).
            if rest == "CONFIG" || rest == "CACHE" {
                continue;
            }
            let path = override_path(rest);
            // librdkafka properties and tokens are strings, whatever they look like (a
            // token of digits only is still a token, not a number).
            let value = if path.first().is_some_and(|p| p == "kafka")
                && path.get(1).is_some_and(|p| p == "properties")
                || path.last().is_some_and(|p| p == "token")
            {
                toml::Value::String(value)
            } else {
                override_value(&value)
            };
            set_path(&mut table, &path, value)
                .map_err(|message| invalid(format!("{origin} (variable {name})"), message))?;
            applied.push(name);
        }
        let origin = if applied.is_empty() {
            origin.to_string()
        } else {
            format!("{origin} (with overrides {})", applied.join(", "))
        };
        let config = Config::deserialize(toml::Value::Table(table))
            .map_err(|e| invalid(origin.clone(), e.to_string().trim_end().to_string()))?;
        let lease = config.worker.fault_lease;
        if lease.duration() < crate::chaos::run::MIN_LEASE {
            return Err(invalid(
                origin,
                format!(
                    "worker.fault_lease = \"{lease}\" is shorter than the least lease, {}: faults would revert themselves before their first renewal",
                    Span(crate::chaos::run::MIN_LEASE)
                ),
            ));
        }
        if let Some(notify) = &config.notify {
            notify.check().map_err(|message| invalid(origin, message))?;
        }
        Ok(config)
    }

    /// The secrets of this configuration, for [`redact::install`]: the values of secret
    /// Kafka properties (see [`redact::is_secret_property`]; set in the file or from a
    /// `CHAOSGATE_*` variable) and the OTLP endpoint's password.
    pub fn secrets(&self) -> Secrets {
        let mut secrets = Secrets::default();
        for (key, value) in &self.kafka.properties {
            if redact::is_secret_property(key) {
                secrets.add(value);
            }
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint {
            secrets.add_url(endpoint);
        }
        if let Some(token) = &self.proxy.token {
            secrets.add(token);
        }
        if let Some(unleash) = &self.unleash {
            for token in [unleash.api_token(), unleash.webhook_token()]
                .into_iter()
                .flatten()
            {
                secrets.add(&token);
            }
            secrets.add_url(&unleash.url);
        }
        if let Some(notify) = &self.notify {
            for (index, receiver) in notify.receivers.iter().enumerate() {
                if let Ok(url) = receiver.url(index) {
                    // The whole URL is the credential (a Slack incoming webhook's is).
                    secrets.add(url.as_str());
                }
            }
        }
        if let Some(Ok(token)) = self.alertmanager.as_ref().map(AlertmanagerConfig::token) {
            secrets.add(&token);
        }
        secrets
    }
}

fn override_path(rest: &str) -> Vec<String> {
    let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
    // Inside `kafka.properties`, keys are librdkafka names with dots.
    if parts.len() >= 3 && parts[0] == "kafka" && parts[1] == "properties" {
        let key = parts[2..].join("_").replace('_', ".");
        return vec!["kafka".into(), "properties".into(), key];
    }
    parts
}

fn override_value(text: &str) -> toml::Value {
    let wrapped = format!("v = {text}");
    match toml::from_str::<toml::Table>(&wrapped) {
        Ok(mut table) => table
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(text.to_string())),
        Err(_) => toml::Value::String(text.to_string()),
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("empty key".into());
    };
    let mut current = table;
    for (depth, key) in parents.iter().enumerate() {
        let entry = current
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("key '{}' is not a table", parents[..=depth].join(".")))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str =
        "[kafka]\nbootstrap_servers = \"127.0.0.1:19092\"\n[catalog]\npath = \"deploy/examples\"\n";

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const WITH_SECRETS: &str = r#"
[kafka]
bootstrap_servers = "broker:9093"
[kafka.properties]
"sasl.username" = "chaosgate"
"sasl.password" = "sasl-pa55word"
"ssl.key.password" = "key-pa55word"
"sasl.oauthbearer.client.secret" = "oauth-s3cret"
"sasl.oauthbearer.config" = "principal=chaosgate extension_token=xyz-token"
[catalog]
path = "catalog"
[telemetry]
otlp_endpoint = "http://otel:collector-pa55@collector:4317"
"#;

    #[test]
    fn the_secrets_are_those_of_the_file_and_the_variables() {
        let config = Config::parse(
            WITH_SECRETS,
            "c.toml",
            env(&[("CHAOSGATE_KAFKA__PROPERTIES__SASL_PASSWORD", "env-pa55word")]),
        )
        .unwrap();
        let scrubbed = config
            .secrets()
            .scrub(
                "refused: env-pa55word key-pa55word oauth-s3cret collector-pa55 \
                 [principal=chaosgate extension_token=xyz-token] for chaosgate",
            )
            .into_owned();
        assert_eq!(scrubbed, "refused: *** *** *** *** [***] for chaosgate");
    }

    #[test]
    fn the_documented_example_is_the_schema_example() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/chaosgate.example.toml");
        let mut config = Config::load(&path, env(&[])).unwrap();
        config.catalog.path = PathBuf::from("examples");
        assert_eq!(config, config_example());
    }

    #[test]
    fn defaults_fill_what_is_not_said() {
        let config = Config::parse(MINIMAL, "c.toml", env(&[])).unwrap();
        assert_eq!(config.kafka.topics.flag_changes, "flag-changes");
        assert_eq!(config.kafka.group_id, "chaosgate");
        assert_eq!(config.worker.max_in_flight, 16);
        assert_eq!(config.worker.liveness_timeout.duration().as_secs(), 120);
        assert!(config.worker.static_membership);
        assert_eq!(config.worker.instance_id, None);
        assert_eq!(config.view, ViewConfig::default());
        assert_eq!(config.view.listen.to_string(), "127.0.0.1:9465");
    }

    #[test]
    fn the_scripts_cache_folder_and_the_config_path_are_not_overrides() {
        let config = Config::parse(
            MINIMAL,
            "c.toml",
            env(&[
                ("CHAOSGATE_CACHE", "/root/.cache/chaosgate"),
                ("CHAOSGATE_CONFIG", "c.toml"),
            ]),
        )
        .unwrap();
        assert_eq!(config.kafka.group_id, "chaosgate");
        let error = Config::parse(MINIMAL, "c.toml", env(&[("CHAOSGATE_CACHES", "x")]))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("CHAOSGATE_CACHES") || error.contains("caches"),
            "{error}"
        );
    }

    #[test]
    fn unrouted_is_enable_unless_the_operator_chooses_otherwise() {
        let config = Config::parse(MINIMAL, "c.toml", env(&[])).unwrap();
        assert_eq!(config.worker.unrouted, Unrouted::Enable);
        for (text, unrouted) in [
            ("disable", Unrouted::Disable),
            ("dead_letter", Unrouted::DeadLetter),
        ] {
            let file = format!("{MINIMAL}[worker]\nunrouted = \"{text}\"\n");
            let config = Config::parse(&file, "c.toml", env(&[])).unwrap();
            assert_eq!(config.worker.unrouted, unrouted);
            assert_eq!(unrouted.as_str(), text);
            let config = Config::parse(
                MINIMAL,
                "c.toml",
                env(&[("CHAOSGATE_WORKER__UNROUTED", text)]),
            )
            .unwrap();
            assert_eq!(config.worker.unrouted, unrouted);
        }
        let file = format!("{MINIMAL}[worker]\nunrouted = \"open\"\n");
        let error = Config::parse(&file, "c.toml", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("c.toml") && error.contains("unrouted") && error.contains("open"),
            "{error}"
        );
    }

    #[test]
    fn a_fault_lease_shorter_than_the_least_is_refused_naming_the_key() {
        let file = format!("{MINIMAL}[worker]\nfault_lease = \"100ms\"\n");
        let error = Config::parse(&file, "c.toml", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("c.toml") && error.contains("worker.fault_lease = \"100ms\""),
            "{error}"
        );
        let file = format!("{MINIMAL}[worker]\nfault_lease = \"500ms\"\n");
        assert!(Config::parse(&file, "c.toml", env(&[])).is_ok());
    }

    #[test]
    fn the_proxy_token_comes_from_the_environment_or_a_file_and_is_masked() {
        let config = Config::parse(
            MINIMAL,
            "c.toml",
            env(&[("CHAOSGATE_PROXY__TOKEN", "pr0xy-t0ken")]),
        )
        .unwrap();
        let access = config.proxy.access().unwrap();
        let token = access.token.expect("token from CHAOSGATE_PROXY__TOKEN");
        assert!(token.matches(b"pr0xy-t0ken"));
        // A token of digits only stays a token (not read as a TOML number).
        let numeric = Config::parse(
            MINIMAL,
            "c.toml",
            env(&[("CHAOSGATE_PROXY__TOKEN", "0123456789")]),
        )
        .unwrap();
        let token = numeric
            .proxy
            .access()
            .unwrap()
            .token
            .expect("numeric token");
        assert!(token.matches(b"0123456789"));
        let view =
            Config::parse(MINIMAL, "c.toml", env(&[("CHAOSGATE_VIEW__TOKEN", "4711")])).unwrap();
        assert_eq!(view.view.token.as_deref(), Some("4711"));
        assert_eq!(
            config.secrets().scrub("sent pr0xy-t0ken"),
            format!("sent {}", redact::MASK)
        );
        // A file wins over the value; a missing file is named.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "fr0m-file\n").unwrap();
        let file_var = file.display().to_string();
        let config = Config::parse(
            MINIMAL,
            "c.toml",
            env(&[
                ("CHAOSGATE_PROXY__TOKEN", "pr0xy-t0ken"),
                ("CHAOSGATE_PROXY__TOKEN_FILE", &file_var),
            ]),
        )
        .unwrap();
        let token = config.proxy.access().unwrap().token.expect("token");
        assert!(token.matches(b"fr0m-file"));
        let config = Config::parse(
            MINIMAL,
            "c.toml",
            env(&[("CHAOSGATE_PROXY__TOKEN_FILE", "/nonexistent/token")]),
        )
        .unwrap();
        let err = config.proxy.access().unwrap_err();
        assert!(err.contains("/nonexistent/token"), "{err}");
    }

    #[test]
    fn the_view_token_comes_from_the_environment() {
        let config = Config::parse(
            MINIMAL,
            "c.toml",
            env(&[
                ("CHAOSGATE_VIEW__TOKEN", "s3cret"),
                ("CHAOSGATE_VIEW__DATABASE", ":memory:"),
            ]),
        )
        .unwrap();
        assert_eq!(config.view.token.as_deref(), Some("s3cret"));
        assert_eq!(config.view.database, ":memory:");
    }

    #[test]
    fn environment_overrides_win() {
        let config = Config::parse(
            MINIMAL,
            "c.toml",
            env(&[
                ("CHAOSGATE_KAFKA__BOOTSTRAP_SERVERS", "broker:9092"),
                ("CHAOSGATE_WORKER__MAX_IN_FLIGHT", "4"),
                ("CHAOSGATE_KAFKA__PROPERTIES__SASL_PASSWORD", "s3cret"),
                ("CHAOSGATE_KAFKA__PROPERTIES__SESSION_TIMEOUT_MS", "6000"),
                ("CHAOSGATE_KAFKA__TOPICS__RUNS", "runs"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(config.kafka.bootstrap_servers, "broker:9092");
        assert_eq!(config.worker.max_in_flight, 4);
        assert_eq!(config.kafka.properties["sasl.password"], "s3cret");
        assert_eq!(config.kafka.properties["session.timeout.ms"], "6000");
        assert_eq!(config.kafka.topics.runs, "runs");
    }

    #[test]
    fn unknown_keys_wrong_types_and_missing_values_are_named() {
        let err = Config::parse(
            &format!("{MINIMAL}[worker]\nmax_inflight = 3\n"),
            "c.toml",
            env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("c.toml:"), "{err}");
        assert!(err.contains("unknown field `max_inflight`"), "{err}");

        let err = Config::parse(
            &format!("{MINIMAL}[worker]\nmax_in_flight = \"many\"\n"),
            "c.toml",
            env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("max_in_flight"), "{err}");

        let err = Config::parse("[kafka]\n[catalog]\npath = \"x\"\n", "c.toml", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `bootstrap_servers`"), "{err}");

        let err = Config::parse(MINIMAL, "c.toml", env(&[("CHAOSGATE_KAFKA__BOGUS", "1")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CHAOSGATE_KAFKA__BOGUS") && err.contains("bogus"),
            "{err}"
        );
    }
}
