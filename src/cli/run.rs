//! `chaosgate run`: the worker.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use chaosgate::bus::worker::WorkerError;
use chaosgate::catalog::Catalog;
use chaosgate::catalog::credentials::credential_fields;
use chaosgate::chaos::proxy::ProxyRegistry;
use chaosgate::chaos::run::RunContext;
use chaosgate::config::Config;
use chaosgate::telemetry::http::Readiness;

/// How long `chaosgate run` waits before it starts a fresh worker after the consumer
/// failed fatally (fenced by another member with the same `group.instance.id`): 500 ms
/// after a worker that ran for [`FATAL_CALM`] or more, doubled after each worker that
/// failed sooner (two replicas sharing an instance id fence each other in turn), up to
/// 8 s.
fn fatal_backoff(failed_in_a_row: u32) -> Duration {
    let doublings = failed_in_a_row.saturating_sub(1).min(4);
    Duration::from_millis(500) * (1 << doublings)
}

/// A worker that ran this long before its consumer failed fatally starts the backoff of
/// [`fatal_backoff`] from its first step again.
const FATAL_CALM: Duration = Duration::from_secs(60);

/// Arguments of `chaosgate run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file (TOML); `CHAOSGATE_...` variables override its keys.
    #[arg(long, short, env = "CHAOSGATE_CONFIG", default_value_os_t = crate::default_config())]
    pub config: PathBuf,
}

/// Runs the worker until SIGTERM or SIGINT, then stops within the grace period.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config, std::env::vars())
        .with_context(|| "the configuration is not usable")?;
    let runtime = crate::cli::runtime()?;
    let telemetry = {
        let _inside = runtime.enter();
        chaosgate::telemetry::init(&config.telemetry).context("cannot set up telemetry")?
    };
    tracing::info!(config = %args.config.display(), "configuration loaded");
    match chaosgate::os::raise_open_files_limit() {
        Ok(limit) => tracing::info!(limit, "open files limit"),
        Err(err) => tracing::warn!(error = %err, "cannot raise the open files limit"),
    }
    // The receivers' URL and secret files are read now: a missing one stops the start,
    // naming its key.
    let notify = chaosgate::connect::notify::setups(&config)
        .context("the notifications ([notify]) cannot start")?;
    let catalog = match Catalog::load(&[&config.catalog.path]) {
        Ok(catalog) => Arc::new(catalog),
        Err(problems) => {
            for problem in &problems {
                eprintln!("{problem}");
            }
            anyhow::bail!(
                "the catalog at {} has {} problems",
                config.catalog.path.display(),
                problems.len()
            );
        }
    };
    // Secrets of the configuration (Kafka properties, URL passwords, values set from
    // `CHAOSGATE_*` variables included) and of the catalog (experiment and guard probe
    // credentials).
    let mut secrets = config.secrets();
    for experiment in catalog.experiments() {
        let fields = credential_fields(experiment);
        secrets.add_credentials(fields.headers, fields.urls);
        secrets.add_variables(fields.variables);
    }
    for guard in catalog.pipelines().filter_map(|p| p.guard.as_ref()) {
        let fields = chaosgate::catalog::guard::credential_fields(guard);
        secrets.add_credentials(fields.headers, fields.urls);
        secrets.add_variables(fields.variables);
    }
    chaosgate::telemetry::redact::install(&secrets);
    let guard = super::fault_guard::program()?;
    let stopped = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        // The endpoints come up first: the worker may wait for Kafka at start, and the
        // liveness probe must answer meanwhile.
        let readiness = Readiness::default();
        let endpoints_stop = CancellationToken::new();
        let endpoints = chaosgate::telemetry::http::serve(
            config.http.listen,
            readiness.clone(),
            endpoints_stop.clone(),
        )
        .await
        .context("cannot serve the health and metrics endpoints")?;
        let proxy = if config.proxy.targets.is_empty() {
            None
        } else {
            Some(
                ProxyRegistry::start(&config.proxy.targets)
                    .await
                    .context("cannot start the fault proxy targets")?,
            )
        };
        let proxy_access = config
            .proxy
            .access()
            .map_err(|message| anyhow::anyhow!("{message}"))?;
        // A token read from `[proxy] token_file` is masked too (the configuration's own
        // secrets only know an inline `[proxy] token`).
        if let Some(token) = &proxy_access.token {
            let mut secrets = chaosgate::telemetry::redact::Secrets::default();
            token.mask_in(&mut secrets);
            chaosgate::telemetry::redact::install(&secrets);
        }
        let run = RunContext {
            proxy_access,
            lease: config.worker.fault_lease.duration(),
            target_wait: Some(config.worker.target_wait.duration()),
            proxy: proxy.clone(),
            guard: Some(guard.clone()),
            ..RunContext::default()
        };
        // Notifications run beside the worker, apart from its transactions, in consumer
        // groups of their own: a receiver that fails never slows the gate.
        let notifier = (!notify.is_empty()).then(|| {
            tokio::spawn(chaosgate::connect::notify::run(
                Arc::new(config.clone()),
                notify,
                shutdown.clone(),
            ))
        });
        let mut failed_in_a_row = 0;
        let result = loop {
            let started = std::time::Instant::now();
            match chaosgate::bus::worker::run(
                config.clone(),
                catalog.clone(),
                run.clone(),
                readiness.clone(),
                shutdown.clone(),
            )
            .await
            {
                Err(error @ WorkerError::ConsumerFatal { .. }) if !shutdown.is_cancelled() => {
                    // A fatal consumer never consumes again; a fresh worker (new consumer,
                    // new committer) takes its place. See docs/operations.md.
                    failed_in_a_row = if started.elapsed() >= FATAL_CALM { 1 } else { failed_in_a_row + 1 };
                    let backoff = fatal_backoff(failed_in_a_row);
                    tracing::error!(%error, backoff_ms = backoff.as_millis() as u64, "starting a fresh worker");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => break Ok(()),
                    }
                }
                other => break other.context("the worker stopped"),
            }
        };
        if let Some(proxy) = proxy {
            proxy.shutdown().await;
        }
        if let Some(notifier) = notifier {
            // Stopped by `shutdown` too (or the worker failed: stop it now); what it did
            // not deliver is not committed and is sent again after a restart.
            shutdown.cancel();
            if let Ok(Ok(Err(error))) = tokio::time::timeout(Duration::from_secs(10), notifier).await {
                tracing::error!(%error, "notifications stopped");
            }
        }
        endpoints_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoints.task).await;
        result
    });
    // Flushes the spans still buffered, while the runtime still runs.
    drop(telemetry);
    // The worker keeps to its grace period; work still going after it (a commit retrying
    // against an absent broker) must not hold the exit, as dropping the runtime would:
    // what was not committed runs again after a restart.
    runtime.shutdown_timeout(Duration::from_millis(500));
    stopped?;
    Ok(ExitCode::SUCCESS)
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
pub(crate) async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the worker with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fatal_backoff_doubles_from_half_a_second_to_eight() {
        let waits: Vec<u128> = (1..=7).map(|n| fatal_backoff(n).as_millis()).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(fatal_backoff(0).as_millis(), 500);
    }
}
