//! `chaosgate view`: the chaos experiments view (ingest + web), and `chaosgate view
//! check`, a CI gate on a pipeline's latest execution.
//!
//! Rule: the view only reads Kafka; what it stores can always be rebuilt from the topics
//! (`--rebuild`), so its database is a cache, never a source of truth.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use chaosgate::config::Config;
use chaosgate::view::model::ExecutionStatus;
use chaosgate::view::web::WebOptions;
use chaosgate::view::{IngestStatus, Location, Store, ingest, query, retention};

/// Arguments of `chaosgate view`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ViewArgs {
    /// `check`; without one, the view itself.
    #[command(subcommand)]
    pub command: Option<ViewCommand>,
    /// The view's own options.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands of `chaosgate view`.
#[derive(Debug, Subcommand)]
pub enum ViewCommand {
    /// Exit 0 when the pipeline's latest finished execution passed, 1 when it failed or
    /// was aborted, 2 when there is none, 3 when the answer cannot be had (config,
    /// Kafka, database). Without --db it reads the topics into memory until caught up
    /// with the high watermarks seen at start (at most --timeout), then answers; with
    /// --db it answers from that view database as it is.
    Check(CheckArgs),
}

/// Options of the view itself.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (TOML), the worker's: its [kafka] and [view] sections count.
    #[arg(long, short, env = "CHAOSGATE_CONFIG", default_value_os_t = crate::default_config())]
    pub config: PathBuf,
    /// Address of the pages and API (default: [view] listen, 127.0.0.1:9465).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// SQLite database file, or `:memory:` (default: [view] database).
    #[arg(long)]
    pub db: Option<String>,
    /// Remove the database first and read every topic again from its earliest offset.
    #[arg(long)]
    pub rebuild: bool,
}

/// Arguments of `chaosgate view check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Configuration file (TOML), the worker's.
    #[arg(long, short, env = "CHAOSGATE_CONFIG", default_value_os_t = crate::default_config())]
    pub config: PathBuf,
    /// Pipeline id.
    #[arg(long)]
    pub pipeline: String,
    /// Only executions started this long ago or later (e.g. 1h, 2days).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
    /// Answer from this view database instead of reading the topics.
    #[arg(long)]
    pub db: Option<String>,
    /// Longest wait for reading the topics up to their high watermarks.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub timeout: Duration,
}

/// Runs `chaosgate view` or `chaosgate view check`.
pub fn run(args: ViewArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(ViewCommand::Check(check)) => Ok(run_check(check)),
        None => serve(args.serve),
    }
}

/// Bounds glibc's malloc to two arenas (its default is eight per core): the view's
/// threads (ingest, runtime workers, blocking query threads, librdkafka's) otherwise
/// each grow an arena of their own, and the view's RSS goal is 200 MB. Must run before
/// those threads start; elsewhere than glibc it does nothing.
fn bound_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before other threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    bound_malloc_arenas();
    let config = Config::load(&args.config, std::env::vars())
        .with_context(|| "the configuration is not usable")?;
    let runtime = crate::cli::runtime()?;
    let telemetry = {
        let _inside = runtime.enter();
        chaosgate::telemetry::init(&config.telemetry).context("cannot set up telemetry")?
    };
    let location = Location::parse(args.db.as_deref().unwrap_or(&config.view.database));
    if args.rebuild {
        Store::remove(&location).context("cannot remove the view database for --rebuild")?;
    }
    let store = Store::open(&location).context("cannot open the view database")?;
    let listen = args.listen.unwrap_or(config.view.listen);
    let options = WebOptions {
        token: config.view.token.clone(),
        trace_url: config.view.trace_url.clone(),
        audit: chaosgate::view::audit::AuditSettings::from_config(&config),
    };
    let result = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(crate::cli::run::stop_on_signal(shutdown.clone()));
        let ingest = ingest::start(&config.kafka, store.clone()).context("cannot start ingest")?;
        tokio::spawn(retention::run(
            store.clone(),
            config.view.retention,
            Duration::from_secs(60),
            shutdown.clone(),
        ));
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr().context("listener address")?;
        tracing::info!(addr = %addr, database = ?location, "view serving");
        let web = tokio::spawn(web(
            listener,
            store,
            ingest.status(),
            options,
            shutdown.clone(),
        ));
        // Ends on a signal, or when ingest stops on an error.
        let failed = loop {
            tokio::select! {
                () = shutdown.cancelled() => break None,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            if ingest.is_finished() {
                break ingest.status().failed();
            }
        };
        shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), web).await;
        ingest.stop().await.context("view ingest")?;
        match failed {
            Some(reason) => anyhow::bail!("view ingest stopped: {reason}"),
            None => Ok(()),
        }
    });
    drop(telemetry);
    runtime.shutdown_timeout(Duration::from_millis(500));
    result?;
    Ok(ExitCode::SUCCESS)
}

/// The web side on `listener` until `shutdown`: the pages, the API, live updates and
/// the health endpoints of [`chaosgate::view::web`].
async fn web(
    listener: tokio::net::TcpListener,
    store: Store,
    ingest: IngestStatus,
    options: WebOptions,
    shutdown: CancellationToken,
) {
    if let Err(err) = chaosgate::view::web::serve(listener, store, ingest, options, shutdown).await
    {
        tracing::error!(error = %err, "the view's listener failed");
    }
}

fn run_check(args: CheckArgs) -> ExitCode {
    match check(&args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("chaosgate view check: error: {err:#}");
            ExitCode::from(3)
        }
    }
}

fn check(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config, std::env::vars())
        .with_context(|| "the configuration is not usable")?;
    let since = args.since.map(|d| {
        chrono::Utc::now() - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
    });
    let runtime = crate::cli::runtime()?;
    let pipeline = args.pipeline.clone();
    let latest = runtime.block_on(async {
        let store = match &args.db {
            Some(db) => {
                Store::open(&Location::parse(db)).context("cannot open the view database")?
            }
            None => {
                let store = Store::open(&Location::Memory).context("cannot open memory")?;
                let ingest = ingest::start(&config.kafka, store.clone())
                    .context("cannot start reading the topics")?;
                let caught_up = ingest.status().wait_caught_up(args.timeout).await;
                let failed = ingest.status().failed();
                ingest.stop().await.context("reading the topics")?;
                if let Some(reason) = failed {
                    anyhow::bail!("reading the topics failed: {reason}");
                }
                if !caught_up {
                    anyhow::bail!(
                        "the topics were not read up to their high watermarks within {}",
                        humantime::format_duration(args.timeout)
                    );
                }
                store
            }
        };
        store
            .read(move |c| query::latest_execution(c, &pipeline, since))
            .await
            .context("cannot query the view")
    })?;
    runtime.shutdown_timeout(Duration::from_millis(500));
    Ok(match latest {
        None => {
            println!("pipeline {}: no finished execution", args.pipeline);
            ExitCode::from(2)
        }
        Some(execution) => {
            println!(
                "pipeline {}: execution {} of {}/{}/{} {} at {}",
                args.pipeline,
                execution.pipeline_execution_id,
                execution.project,
                execution.environment,
                execution.flag,
                execution.status.as_str(),
                execution
                    .ended_at
                    .unwrap_or(execution.started_at)
                    .to_rfc3339()
            );
            if execution.status == ExecutionStatus::Passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    })
}
