//! `chaosgate proxy`: a standalone fault proxy with an HTTP control API.
//!
//! Runs the targets of its config file and the control API until SIGINT or SIGTERM,
//! then stops the listeners and drops every fault. Once listening, it prints one line
//! per address on standard output (`control http://ADDR` or `control https://ADDR`, then
//! `target NAME PROTOCOL LISTEN -> UPSTREAM`), so a script or a test can use port 0.
//!
//! The control API's token comes from `[control] token_file` or `CHAOSGATE_PROXY__TOKEN`,
//! never from an argument; without one, it refuses to start on a non-loopback address.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use chaosgate::chaos::proxy::access::TOKEN_ENV;
use chaosgate::chaos::proxy::control::{self, ControlAccess};
use chaosgate::chaos::proxy::{ProxyRegistry, StandaloneConfig};

/// Arguments of `chaosgate proxy`.
#[derive(Debug, Args)]
#[command(
    after_help = "The control API asks for a bearer token when one is set: [control] token_file in the config (a mounted Secret), else the CHAOSGATE_PROXY__TOKEN variable; never on the command line. On a non-loopback control_listen (0.0.0.0 included) the proxy refuses to start without one. [control] tls_cert and tls_key (PEM) serve https. GET /healthz needs no token.\n\nExample: CHAOSGATE_PROXY__TOKEN=$(cat token) chaosgate proxy --config deploy/proxy.example.toml"
)]
pub struct ProxyArgs {
    /// Proxy configuration file (TOML): targets and the control API address.
    #[arg(long, short)]
    pub config: PathBuf,
}

/// Runs the proxy until SIGINT or SIGTERM; exit 0 after a clean stop.
pub fn run(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    let config = StandaloneConfig::load(&args.config)?;
    let token_env = std::env::var(TOKEN_ENV).ok();
    let access = config
        .control_access(token_env.as_deref())
        .map_err(|message| anyhow::anyhow!("proxy config {}: {message}", args.config.display()))?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = crate::cli::runtime()?;
    runtime.block_on(serve(config, access))?;
    Ok(ExitCode::SUCCESS)
}

async fn serve(config: StandaloneConfig, access: ControlAccess) -> anyhow::Result<()> {
    // Watch the signals before announcing readiness, so a stop right after is clean.
    let stop = stop_signal().context("cannot watch SIGINT and SIGTERM")?;
    let registry = ProxyRegistry::start(&config.targets)
        .await
        .context("cannot start the proxy targets")?;
    let listener = tokio::net::TcpListener::bind(config.control_listen)
        .await
        .with_context(|| format!("control_listen: cannot listen on {}", config.control_listen))?;
    let control_addr = listener
        .local_addr()
        .context("cannot read the control API address")?;
    let scheme = if access.tls.is_some() {
        "https"
    } else {
        "http"
    };
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "control {scheme}://{control_addr}")?;
        for target in registry.targets() {
            writeln!(
                out,
                "target {} {} {} -> {}",
                target.name, target.protocol, target.listen, target.upstream
            )?;
        }
        out.flush()?;
    }
    tracing::info!(
        %control_addr,
        tls = access.tls.is_some(),
        token = access.token.is_some(),
        "chaosgate proxy ready"
    );
    let served = control::serve(listener, std::sync::Arc::clone(&registry), access, stop).await;
    tracing::info!("stopping: closing listeners and dropping every fault");
    registry.shutdown().await;
    served.context("the control API failed")
}

/// A future that completes on SIGINT or SIGTERM; the handlers are installed at once.
fn stop_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
        }
    })
}
