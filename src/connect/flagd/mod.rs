//! The flagd bridge, run by `chaosgate connect flagd`: chaosgate as a gated OpenFeature
//! flag source, so a flag change takes effect only after its gate passes.
//!
//! - in ([`proposed`]): a folder of proposed flag definitions in flagd's format; each
//!   change of a flag's definition becomes one flag-change CloudEvent on `flag-changes`
//!   (values of [`crate::contract::ValueFormat::Flagd`]), whose `from` is the definition
//!   served now and whose `to` is the proposal;
//! - the worker gates it and, in the command's transaction, writes the definition the
//!   command approves on the approved-flags topic ([`crate::flagd::approval`]);
//! - out ([`approved`]): every replica reads that compacted topic to its end and follows
//!   it, and serves the newest approved definition of each flag: flagd's gRPC sync
//!   service ([`sync`]), `GET /flags.json` with `ETag`s ([`http`]), and an optional file
//!   written atomically ([`mod@file`]).
//!
//! Rule: a definition is served only once a command approved it; a flag proposed and
//! never approved is not served at all.

pub mod approved;
pub mod change;
pub mod file;
pub mod http;
pub mod memory;
pub mod proposed;
pub mod sync;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, FlagdConfig};
use crate::contract::flag_change::{KEY_RULE, is_key_name};

/// Why the flagd bridge could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum FlagdError {
    /// The configuration has no `[flagd]` section, or a value in it is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// A Kafka client could not be created or failed for good.
    #[error("Kafka: {0}")]
    Kafka(String),
    /// An endpoint could not listen.
    #[error("cannot listen on {addr} ({key}): {error}")]
    Listen {
        /// The configuration key of the address, e.g. `flagd.sync_listen`.
        key: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// The I/O error (in the message, not a separate source: said once).
        error: std::io::Error,
    },
    /// A served endpoint failed while running.
    #[error("{0}")]
    Serve(String),
}

/// Binds `listen` (the value of configuration key `key`) for one of the endpoints: the
/// listener and the address it got (the port chosen when `listen`'s is 0), or
/// [`FlagdError::Listen`].
async fn bind(
    key: &'static str,
    listen: std::net::SocketAddr,
) -> Result<(tokio::net::TcpListener, std::net::SocketAddr), FlagdError> {
    crate::connect::bind(listen)
        .await
        .map_err(|error| FlagdError::Listen {
            key,
            addr: listen,
            error,
        })
}

/// The `[flagd]` section of `config`, checked, or [`FlagdError::Config`] naming the key.
pub fn section(config: &Config) -> Result<&FlagdConfig, FlagdError> {
    let flagd = config.flagd.as_ref().ok_or_else(|| {
        FlagdError::Config(
            "no [flagd] section: set at least flagd.project and flagd.environment (README, \"Gate OpenFeature flags\")"
                .into(),
        )
    })?;
    for (key, value) in [
        ("project", &flagd.project),
        ("environment", &flagd.environment),
    ] {
        if !is_key_name(value) {
            return Err(FlagdError::Config(format!(
                "flagd.{key} = {value:?} is not a key name: {KEY_RULE}"
            )));
        }
    }
    if flagd.scan_interval.duration().is_zero() {
        return Err(FlagdError::Config(
            "flagd.scan_interval must be above 0s".into(),
        ));
    }
    Ok(flagd)
}

/// Runs the bridge until `shutdown`: reads the approved configuration to the end of the
/// topic first, then serves it and, when `[flagd] proposed` is set, watches the folder.
/// Each part ends the others when it stops for good.
///
/// Errors: [`FlagdError::Config`] (the section, or a proposed folder that is not there
/// at start), [`FlagdError::Kafka`],
/// [`FlagdError::Listen`] (an address in use), [`FlagdError::Serve`].
pub async fn run(config: &Config, shutdown: CancellationToken) -> Result<(), FlagdError> {
    let flagd = section(config)?;
    if let Some(folder) = &flagd.proposed {
        // Later, a folder gone for a moment (a checkout) is logged and waited for.
        match std::fs::metadata(folder) {
            Ok(found) if found.is_dir() => {}
            Ok(_) => {
                return Err(FlagdError::Config(format!(
                    "flagd.proposed = {}: not a folder",
                    folder.display()
                )));
            }
            Err(error) => {
                return Err(FlagdError::Config(format!(
                    "flagd.proposed = {}: {error}",
                    folder.display()
                )));
            }
        }
    }
    let stop_all = shutdown.child_token();
    // A proposing replica needs the topics (the recall reads flag-changes); with
    // `kafka.create_topics` any replica creates them (approved-flags compacted). A
    // serving-only replica otherwise waits for approved-flags to exist.
    if flagd.proposed.is_some() || config.kafka.create_topics {
        let client = crate::bus::client::client_config(&config.kafka);
        crate::bus::startup::ensure_topics(config, &client, &shutdown)
            .await
            .map_err(|e| FlagdError::Kafka(e.to_string()))?;
    }
    let approved = approved::follow(config, stop_all.clone()).await?;
    let served = approved::Selection::of(flagd);
    let guarded = |result: Result<(), FlagdError>| {
        stop_all.cancel();
        result
    };
    let sync = async {
        guarded(
            sync::serve(
                flagd.sync_listen,
                approved.clone(),
                served.clone(),
                stop_all.clone(),
            )
            .await,
        )
    };
    let http = async {
        guarded(
            http::serve(
                flagd.http_listen,
                approved.clone(),
                served.clone(),
                stop_all.clone(),
            )
            .await,
        )
    };
    let file = async {
        match &flagd.file {
            Some(path) => guarded(
                file::follow(path, approved.clone(), served.clone(), stop_all.clone()).await,
            ),
            None => Ok(()),
        }
    };
    let proposed = async {
        match &flagd.proposed {
            Some(folder) => guarded(
                proposed::run(config, flagd, folder, approved.clone(), stop_all.clone()).await,
            ),
            None => Ok(()),
        }
    };
    let (sync, http, file, proposed) = tokio::join!(sync, http, file, proposed);
    sync.and(http).and(file).and(proposed)
}
