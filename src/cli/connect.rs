//! `chaosgate connect unleash`, `chaosgate connect flagd` and `chaosgate connect
//! alertmanager`: the bridges between a flag
//! service and chaosgate's topics, in their own process beside the worker.
//!
//! Rule: the process holds no state of its own; what it has not acknowledged (a webhook
//! answered 2xx, a command's offset committed) is delivered again after a restart.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use chaosgate::config::Config;

/// Subcommands of `chaosgate connect`.
#[derive(Debug, Subcommand)]
pub enum ConnectCommand {
    /// Unleash both ways: its webhook integration in (flag changes to `flag-changes`),
    /// its Admin API out (flag commands applied). Configured by the [unleash] section.
    #[command(after_help = UNLEASH_HELP)]
    Unleash(UnleashArgs),
    /// OpenFeature flagd: a folder of proposed flag definitions in (each change gated),
    /// the approved configuration out to flagd and the OpenFeature SDKs. Configured by
    /// the [flagd] section.
    #[command(after_help = FLAGD_HELP)]
    Flagd(FlagdArgs),
    /// Prometheus Alertmanager in: its webhook's firing alerts, matched by the rules of
    /// the [alertmanager] section, turn the rules' flags off at once (a requested
    /// disable on the flag-changes topic). Configured by the [alertmanager] section.
    #[command(after_help = ALERTMANAGER_HELP)]
    Alertmanager(AlertmanagerArgs),
}

const ALERTMANAGER_HELP: &str = "In Alertmanager, route the alerts to a receiver with a webhook: url http://HOST:8017/alertmanager/webhook and http_config.authorization.credentials_file holding the token of [alertmanager] token_file (or CHAOSGATE_ALERTMANAGER__TOKEN). Each firing alert the first matching [[alertmanager.rules]] match (label equality) turns that rule's flags off; resolved and unmatched alerts do nothing. GET /healthz and GET /metrics are served on the same address. See docs/alertmanager.md.\n\n\
Example: chaosgate connect alertmanager --config deploy/alertmanager.example.toml";

/// Arguments of `chaosgate connect alertmanager`.
#[derive(Debug, Args)]
pub struct AlertmanagerArgs {
    /// Configuration file (TOML), the worker's: its [kafka] and [alertmanager] sections
    /// count.
    #[arg(long, short, env = "CHAOSGATE_CONFIG", default_value_os_t = crate::default_config())]
    pub config: PathBuf,
}

const FLAGD_HELP: &str = "Proposed flags: *.json files in flagd's format under [flagd] proposed (each change of a \
flag becomes one flag change on the flag-changes topic, gated by the worker). Served, only once a command \
approved it: the gRPC sync service flagd.sync.v1.FlagSyncService on [flagd] sync_listen (default 0.0.0.0:8015; \
flagd: --uri grpc://HOST:8015; an SDK's flagd provider in in-process mode: host HOST, port 8015), \
GET /flags.json on [flagd] http_listen (default 0.0.0.0:8016; with ETag and If-None-Match; also /healthz and \
/metrics), and [flagd] file when set. A selector \"PROJECT/ENVIRONMENT\" picks another set than [flagd] \
project and environment.\n\n\
Example: chaosgate connect flagd --config deploy/flagd.example.toml";

/// Arguments of `chaosgate connect flagd`.
#[derive(Debug, Args)]
pub struct FlagdArgs {
    /// Configuration file (TOML), the worker's: its [kafka] and [flagd] sections count.
    #[arg(long, short, env = "CHAOSGATE_CONFIG", default_value_os_t = crate::default_config())]
    pub config: PathBuf,
}

const UNLEASH_HELP: &str = "In Unleash, create a Webhook integration: URL http://HOST:9466/unleash/webhook, \
Authorization the value of [unleash.webhook] token_file (or CHAOSGATE_UNLEASH__WEBHOOK__TOKEN), events \
feature-environment-enabled, feature-environment-disabled, feature-strategy-add, feature-strategy-update and \
feature-strategy-remove. The Admin API token ([unleash] token_file or CHAOSGATE_UNLEASH__TOKEN): a personal \
access token of a user of chaosgate's own (root role Editor), not an INIT_ADMIN_API_TOKENS admin token, whose \
changes Unleash records as \"admin\" like the UI's default user. [unleash] actor (default \"chaosgate\") must be \
the createdBy Unleash records for that user (its email, else its username): the loop guard. It is checked at start.\n\n\
GET /healthz (200 while the bridges run) and GET /metrics are served on the webhook address. \
With [unleash] hold_while_gating = true, a gated enable is turned off at once and on again only when its gate passes.\n\n\
Example: chaosgate connect unleash --config deploy/unleash.example.toml";

/// Arguments of `chaosgate connect unleash`.
#[derive(Debug, Args)]
pub struct UnleashArgs {
    /// Configuration file (TOML), the worker's: its [kafka] and [unleash] sections count.
    #[arg(long, short, env = "CHAOSGATE_CONFIG", default_value_os_t = crate::default_config())]
    pub config: PathBuf,
}

/// Runs a `chaosgate connect` subcommand.
pub fn run(command: ConnectCommand) -> anyhow::Result<ExitCode> {
    match command {
        ConnectCommand::Unleash(args) => unleash(args),
        ConnectCommand::Flagd(args) => flagd(args),
        ConnectCommand::Alertmanager(args) => alertmanager(args),
    }
}

fn alertmanager(args: AlertmanagerArgs) -> anyhow::Result<ExitCode> {
    let config = load(&args.config, |config| {
        chaosgate::connect::alertmanager::section(config).map(|_| ())
    })?;
    serve(
        &config,
        "the Alertmanager receiver",
        |config, shutdown| async move { chaosgate::connect::alertmanager::run(&config, shutdown).await },
    )
}

fn unleash(args: UnleashArgs) -> anyhow::Result<ExitCode> {
    let config = load(&args.config, |config| {
        chaosgate::connect::unleash::section(config).map(|_| ())
    })?;
    serve(
        &config,
        "the Unleash bridges",
        |config, shutdown| async move { chaosgate::connect::unleash::run(&config, shutdown).await },
    )
}

fn flagd(args: FlagdArgs) -> anyhow::Result<ExitCode> {
    let config = load(&args.config, |config| {
        chaosgate::connect::flagd::section(config).map(|_| ())
    })?;
    serve(&config, "the flagd bridge", |config, shutdown| async move {
        chaosgate::connect::flagd::run(&config, shutdown).await
    })
}

/// The configuration at `path`, with its bridge's section checked by `section` (errors
/// name the file).
fn load<E>(path: &Path, section: impl FnOnce(&Config) -> Result<(), E>) -> anyhow::Result<Config>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let config =
        Config::load(path, std::env::vars()).with_context(|| "the configuration is not usable")?;
    section(&config).with_context(|| format!("{}", path.display()))?;
    Ok(config)
}

/// Runs a bridge (`run`) with telemetry and secret masking set up, until SIGTERM/SIGINT.
fn serve<F, Fut, E>(config: &Config, what: &'static str, run: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(Config, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let runtime = crate::cli::runtime()?;
    let telemetry = {
        let _inside = runtime.enter();
        chaosgate::telemetry::redact::install(&config.secrets());
        chaosgate::telemetry::init(&config.telemetry).context("cannot set up telemetry")?
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(crate::cli::run::stop_on_signal(shutdown.clone()));
        run(config.clone(), shutdown).await
    });
    drop(telemetry);
    runtime.shutdown_timeout(Duration::from_millis(500));
    result.with_context(|| format!("{what} stopped"))?;
    Ok(ExitCode::SUCCESS)
}
