//! `chaosgate demo`: the whole product on one machine with nothing installed.
//!
//! It starts an embedded Kafka (librdkafka's mock cluster), a small demo service reached
//! through chaosgate's fault proxy, and the real worker with the example catalog; then it
//! publishes two flag changes, one whose pipeline passes and one whose pipeline fails
//! because injected latency breaks an HTTP probe, and prints the run records and flag
//! commands as they arrive. The chaos experiments view runs beside them (in memory, on
//! 127.0.0.1:9465 or a free port) and its address is printed; `--keep` leaves the worker
//! and the view running until Ctrl-C so a person can open the pages.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::Utc;
use clap::Args;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::FutureProducer;
use tokio_util::sync::CancellationToken;

use chaosgate::bus::record::{from_rdkafka, to_record};
use chaosgate::catalog::Catalog;
use chaosgate::chaos::proxy::{ProxyProtocol, ProxyRegistry, ProxyTarget};
use chaosgate::chaos::run::RunContext;
use chaosgate::config::Config;
use chaosgate::contract::flag_change::flag_change_event;
use chaosgate::contract::guard_record::GUARD_RECORD_TYPE;
use chaosgate::contract::{
    Change, ChangeKind, CloudEvent, FlagChange, FlagCommand, GuardRecord, GuardStatus, RunRecord,
    RunStatus,
};
use chaosgate::view::audit::AuditSettings;
use chaosgate::view::model::RunFilter;
use chaosgate::view::web::{self, WebOptions};
use chaosgate::view::{Ingest, Location, Store, ViewError, ingest, query};

/// Arguments of `chaosgate demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Catalog folder with the demo pipelines (`demo-checkout`, `demo-search`).
    #[arg(long, default_value = "deploy/examples")]
    pub catalog: PathBuf,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// After the two flag changes, keep the worker and the view running until Ctrl-C.
    #[arg(long)]
    pub keep: bool,
}

/// Where the demo's view listens first (the view's default); a free port if taken.
const VIEW: &str = "127.0.0.1:9465";

/// Where the demo service listens, and where the fault proxy in front of it listens
/// (the demo experiments' probes call the proxy).
const SERVICE: &str = "127.0.0.1:18081";
const PROXY: &str = "127.0.0.1:18080";

/// Runs the demo; exit 0 when both flag changes got their expected command.
pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let runtime = crate::cli::runtime()?;
    runtime.block_on(demo(args))
}

async fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    chaosgate::telemetry::logs::init(&chaosgate::config::TelemetryConfig {
        log_filter: Some("warn,librdkafka=error,rdkafka=error".into()),
        log_format: chaosgate::config::LogFormat::Text,
        otlp_endpoint: None,
    });
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let catalog = match Catalog::load(&[&args.catalog]) {
        Ok(catalog) => Arc::new(catalog),
        Err(problems) => {
            for problem in &problems {
                eprintln!("{problem}");
            }
            bail!("the catalog at {} has problems", args.catalog.display());
        }
    };
    for id in ["demo-checkout", "demo-search"] {
        if catalog.pipeline(id).is_none() {
            bail!(
                "the catalog at {} has no pipeline '{id}'",
                args.catalog.display()
            );
        }
    }

    println!("chaosgate demo");
    let cluster = MockCluster::new(1).context("cannot start the embedded Kafka")?;
    let servers = cluster.bootstrap_servers();
    println!("  embedded Kafka (librdkafka mock cluster) at {servers}");
    let service = tokio::net::TcpListener::bind(SERVICE)
        .await
        .with_context(|| format!("cannot listen on {SERVICE} for the demo service"))?;
    tokio::spawn(serve_demo_service(service));
    println!("  demo service at http://{SERVICE}/health");
    let proxies = ProxyRegistry::start(&[ProxyTarget {
        name: "demo-payments".into(),
        listen: PROXY.parse().context("proxy address")?,
        upstream: SERVICE.into(),
        protocol: ProxyProtocol::Tcp,
    }])
    .await
    .with_context(|| format!("cannot start the fault proxy on {PROXY}"))?;
    println!("  fault proxy target 'demo-payments' at {PROXY} -> {SERVICE}");

    let config = Config::parse(
        &format!(
            "[kafka]\nbootstrap_servers = \"{servers}\"\ngroup_id = \"chaosgate-demo\"\n\
             transactional_id = \"chaosgate-demo\"\ncreate_topics = true\ntopic_partitions = 3\n\
             [catalog]\npath = \"{}\"\n[worker]\nshutdown_grace = \"5s\"\n",
            args.catalog.display()
        ),
        "the demo's configuration",
        Vec::new(),
    )?;
    let topics = config.kafka.topics.clone();
    for topic in [
        &topics.flag_changes,
        &topics.runs,
        &topics.commands,
        &topics.dead_letter,
        &topics.control,
        &topics.approved_flags,
        &topics.flag_state,
    ] {
        cluster
            .create_topic(topic, 3, 1)
            .with_context(|| format!("cannot create topic {topic} in the embedded Kafka"))?;
    }
    let shutdown = CancellationToken::new();
    let (view_address, view_ingest, view_store) = start_view(&config, shutdown.clone()).await?;
    println!("  chaos experiments view (in memory) at http://{view_address}/");
    let run = RunContext {
        lease: config.worker.fault_lease.duration(),
        target_wait: Some(config.worker.target_wait.duration()),
        proxy: Some(proxies.clone()),
        guard: Some(super::fault_guard::program()?),
        ..RunContext::default()
    };
    let worker = tokio::spawn(chaosgate::bus::worker::run(
        config,
        catalog,
        run,
        chaosgate::telemetry::http::Readiness::default(),
        shutdown.clone(),
    ));

    let client = {
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &servers);
        client
    };
    let consumer: StreamConsumer = client
        .clone()
        .set("group.id", "chaosgate-demo-reader")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .context("cannot create the demo's reader")?;
    let producer: FutureProducer = client
        .create()
        .context("cannot create the demo's flag service")?;

    consumer
        .subscribe(&[&topics.runs, &topics.commands])
        .context("cannot subscribe to the output topics")?;
    let changes = [
        change(
            "search-v2",
            "the search flag, gated by demo-search (a 20 ms blip)",
        ),
        change(
            "checkout-v2",
            "the checkout flag, gated by demo-checkout (payments 500 ms slower)",
        ),
    ];
    for (change, what) in &changes {
        let event = flag_change_event(change, "/demo/flag-service");
        let message = event.to_binary(Some(&change.flag_key()));
        producer
            .send(
                to_record(&topics.flag_changes, &message),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .context("cannot publish a flag change")?;
        println!("\n> flag service: enable {} ({what})", change.flag_key());
    }
    println!();

    let mut commands: Vec<FlagCommand> = Vec::new();
    // The passing pipeline has a guard: the demo also waits for it to end.
    let mut guard_ended = false;
    while commands.len() < changes.len() || !guard_ended {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(message)) => from_rdkafka(&message),
            Ok(Err(error)) => {
                eprintln!("  (read error: {error}; retrying)");
                continue;
            }
            Err(_) => break,
        };
        let Ok(event) = CloudEvent::decode(&message) else {
            continue;
        };
        if let Ok(record) = serde_json::from_value::<RunRecord>(event.data.clone()) {
            print_record(&record);
        } else if event.event_type == GUARD_RECORD_TYPE
            && let Ok(guard) = serde_json::from_value::<GuardRecord>(event.data.clone())
        {
            print_guard(&guard);
            guard_ended |= guard.status != GuardStatus::Watching;
        } else if let Ok(command) = serde_json::from_value::<FlagCommand>(event.data) {
            print_command(&command);
            commands.push(command);
        }
    }
    // The view reads the same committed records; wait (briefly) until it shows them all.
    let shown = view_caught_up(
        &view_store,
        deadline.min(Instant::now() + Duration::from_secs(20)),
    )
    .await;
    if args.keep {
        println!(
            "\nthe worker and the view keep running: open http://{view_address}/ (runs: http://{view_address}/runs). Ctrl-C stops them."
        );
        if let Err(error) = tokio::signal::ctrl_c().await {
            eprintln!("  (cannot wait for Ctrl-C: {error}; stopping)");
        }
    } else if shown {
        println!(
            "\nthe view showed both executions at http://{view_address}/ (run with --keep to leave it open)."
        );
    } else {
        println!("\n(the view at http://{view_address}/ had not read every record yet)");
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), worker).await;
    if let Err(error) = view_ingest.stop().await {
        eprintln!("  (the view's ingest stopped with an error: {error})");
    }
    proxies.shutdown().await;

    let expected = [("search-v2", "enable"), ("checkout-v2", "disable")];
    let ok = expected.iter().all(|(flag, command)| {
        commands
            .iter()
            .any(|c| c.flag == *flag && c.command.as_str() == *command)
    });
    if ok {
        println!(
            "\ndemo complete: search-v2 enabled (its pipeline passed, and its guard held), checkout-v2 disabled (its pipeline failed)."
        );
        Ok(ExitCode::SUCCESS)
    } else {
        bail!(
            "the demo did not get the expected commands within {} s (got {})",
            args.timeout,
            commands
                .iter()
                .map(|c| format!("{} {}", c.command.as_str(), c.flag))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// Waits until the view holds the demo's final runs (none `running`, at least two) and
/// both commands, or `until`; whether it got there.
async fn view_caught_up(store: &Store, until: Instant) -> bool {
    loop {
        let done = store
            .read(|c| {
                let counts = query::status_counts(c, &RunFilter::default())?;
                let commands: i64 = c
                    .query_row("SELECT COUNT(*) FROM commands", [], |r| r.get(0))
                    .map_err(|source| ViewError::Sqlite {
                        what: "count commands".into(),
                        source,
                    })?;
                Ok(counts.running == 0 && counts.total >= 2 && commands >= 2)
            })
            .await
            .unwrap_or(false);
        if done || Instant::now() >= until {
            return done;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts the view in memory beside the demo's worker: ingest from the embedded Kafka and
/// the web layer on [`VIEW`] (or a free port when that is taken). Returns its address.
async fn start_view(
    config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<(std::net::SocketAddr, Ingest, Store)> {
    let store = Store::open(&Location::Memory).context("cannot open the view's in-memory store")?;
    let ingest =
        ingest::start(&config.kafka, store.clone()).context("cannot start the view's ingest")?;
    let listener = match tokio::net::TcpListener::bind(VIEW).await {
        Ok(listener) => listener,
        Err(_) => tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot listen on loopback for the view")?,
    };
    let address = listener.local_addr().context("the view's address")?;
    let options = WebOptions {
        audit: AuditSettings::from_config(config),
        ..WebOptions::default()
    };
    let status = ingest.status();
    let served = store.clone();
    tokio::spawn(async move {
        if let Err(error) = web::serve(listener, served, status, options, shutdown).await {
            eprintln!("  (the view stopped: {error})");
        }
    });
    Ok((address, ingest, store))
}

fn change(flag: &str, what: &str) -> (FlagChange, String) {
    (
        FlagChange {
            event_id: uuid::Uuid::new_v4().to_string(),
            occurred_at: Utc::now(),
            project: "demo".into(),
            environment: "staging".into(),
            flag: flag.into(),
            change: Change {
                kind: ChangeKind::Enable,
                from: Some(false.into()),
                to: Some(true.into()),
            },
            pipeline_id: None,
            actor: Some("demo@chaosgate".into()),
            account: None,
            value_format: None,
        },
        what.to_string(),
    )
}

fn print_record(record: &RunRecord) {
    let flag = format!(
        "{}/{}/{}",
        record.flag.project, record.flag.environment, record.flag.key
    );
    if record.status == RunStatus::Running {
        println!(
            "  run {} started: pipeline {} / stage {} / step {} (experiment {}) for {flag}",
            short(&record.run_id),
            record.pipeline_id,
            record.stage.id,
            record.step.id,
            record.experiment.id
        );
        return;
    }
    println!(
        "  run {} {}: {} (score {}, expected {})",
        short(&record.run_id),
        record.status.as_str().to_uppercase(),
        record.summary.as_deref().unwrap_or_default(),
        record
            .resilience_score
            .map_or_else(|| "-".to_string(), |s| format!("{s:.2}")),
        record.expected_resilience_score
    );
    for fault in &record.faults {
        println!(
            "      fault {} ({}, weight {}): {:?}, probes {:.0}% passed, reverted: {}",
            fault.name,
            fault.kind,
            fault.weight,
            fault.verdict,
            fault.probe_success_percentage,
            fault.reverted
        );
    }
    for probe in &record.probes {
        println!(
            "      probe {} ({} {}): {:?} after {} attempts{}",
            probe.name,
            probe.probe_type,
            probe.mode,
            probe.verdict,
            probe.attempts,
            probe
                .last_error
                .as_deref()
                .map(|e| format!(" - {e}"))
                .unwrap_or_default()
        );
    }
}

fn print_guard(guard: &GuardRecord) {
    let flag = format!(
        "{}/{}/{}",
        guard.flag.project, guard.flag.environment, guard.flag.key
    );
    if guard.status == GuardStatus::Watching {
        let seconds = (guard.deadline - guard.started_at).num_seconds();
        println!(
            "  guard of pipeline {} watching {flag} for {seconds} s after its enable",
            guard.pipeline_id
        );
        return;
    }
    println!(
        "  guard {}: {}",
        guard.status.as_str().to_uppercase(),
        guard.reason.as_deref().unwrap_or_default()
    );
}

fn print_command(command: &FlagCommand) {
    println!(
        "\n< flag command: {} {}/{}/{} - {}\n",
        command.command.as_str().to_uppercase(),
        command.project,
        command.environment,
        command.flag,
        command.reason
    );
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// The demo service: `GET /health` answers `ok` at once.
async fn serve_demo_service(listener: tokio::net::TcpListener) {
    let app = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
    if let Err(error) = axum::serve(listener, app).await {
        eprintln!("  (the demo service stopped: {error})");
    }
}
