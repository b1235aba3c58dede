//! `chaosgate experiment run`: runs one experiment on this machine.
//!
//! Progress goes to standard error: on a terminal, colored lines as faults are injected
//! and reverted and probes are checked, under a status line redrawn in place; otherwise a
//! plain timestamped line log. The final report (or, with `--json`, the result as JSON)
//! goes to standard output. Exit status: 0 passed, 1 failed, 2 error, aborted or a file
//! that does not validate (with `--json`, a result saying so is printed then too). Ctrl-C
//! (SIGINT) or SIGTERM aborts the run; its faults are reverted before the process exits.
//! A second signal exits at once, leaving proxy faults to their lease.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use tokio::sync::mpsc;

use chaosgate::catalog::credentials::credential_fields;
use chaosgate::catalog::experiment::Experiment;
use chaosgate::catalog::{Catalog, Problem, Span};
use chaosgate::chaos::proxy::access::TOKEN_ENV;
use chaosgate::chaos::proxy::{ProxyAccess, ProxyRegistry, StandaloneConfig};
use chaosgate::chaos::{ExperimentResult, Progress, ProgressEvent, RunContext, run_experiment};
use chaosgate::contract::run_record::{RunStatus, Verdict};
use chaosgate::telemetry::redact::{self, Secrets};

/// Arguments of `chaosgate experiment run`.
#[derive(Debug, Args)]
#[command(
    after_help = "Progress goes to standard error; the report (or with --json, the result) to standard output.\n\nExit status: 0 passed, 1 failed, 2 error, aborted or a file that does not validate (with --json, a result with verdict error and the problems is printed then too).\n\nStandalone proxies whose control API asks for a token: CHAOSGATE_PROXY__TOKEN_FILE=FILE (or CHAOSGATE_PROXY__TOKEN), and CHAOSGATE_PROXY__CA_FILE=PEM for an https proxy with a private CA; never on the command line.\n\nCommands (command faults and probes) see only PATH, HOME, LANG, the experiment's `env` and the variables it names in `env_from_worker`. A runner killed mid-fault leaves its toxiproxy, command and process pause faults to their guard processes, which revert them at once.\n\nExample: chaosgate experiment run deploy/examples --experiment disk-pressure --json"
)]
pub struct ExperimentRunArgs {
    /// An experiment file, or a catalog folder with `--experiment`.
    pub path: PathBuf,
    /// Id of the experiment to run when PATH is a folder.
    #[arg(long)]
    pub experiment: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Lease of faults in chaosgate's proxies, and how long a fault's guard waits for a
    /// renewal before it reverts the fault (renewed while the run goes on).
    #[arg(long, default_value = "10s")]
    pub lease: Span,
    /// Run these proxy targets in this process, for network and HTTP faults that name
    /// no `proxy` URL (a `chaosgate proxy` config file; its control_listen is not used).
    #[arg(long, value_name = "FILE")]
    pub proxy_config: Option<PathBuf>,
    /// The longest the run waits for targets other runs hold (in this process, or in a
    /// standalone proxy) before it gives up, aborted, with nothing injected.
    #[arg(long, default_value = "10m")]
    pub target_wait: Span,
}

/// The token and CA for standalone proxies, from `CHAOSGATE_PROXY__TOKEN_FILE` or
/// `CHAOSGATE_PROXY__TOKEN`, and `CHAOSGATE_PROXY__CA_FILE` (the worker's `[proxy]` keys
/// by their variable names); never from an argument.
fn proxy_access() -> anyhow::Result<ProxyAccess> {
    let var = |name: &str| std::env::var_os(name).map(PathBuf::from);
    let token = std::env::var(TOKEN_ENV).ok();
    ProxyAccess::load(
        var("CHAOSGATE_PROXY__TOKEN_FILE").as_deref(),
        token.as_deref(),
        var("CHAOSGATE_PROXY__CA_FILE").as_deref(),
    )
    .map_err(|message| anyhow::anyhow!("{message}"))
}

/// Loads the experiment, runs it, prints the report, and maps the verdict to the exit code.
pub fn run(args: ExperimentRunArgs) -> anyhow::Result<ExitCode> {
    if args.lease.duration() < chaosgate::chaos::run::MIN_LEASE {
        anyhow::bail!(
            "--lease {} is shorter than the least lease, {}: faults would revert themselves before their first renewal",
            args.lease,
            Span(chaosgate::chaos::run::MIN_LEASE)
        );
    }
    let experiment = match load(&args.path, args.experiment.as_deref()) {
        Ok(experiment) => experiment,
        Err(Refusal::Problems(_, problems)) if args.json => {
            // `--json` always answers with a result, even for an experiment that cannot
            // run: a script reads why from it rather than from standard error.
            let id = args
                .experiment
                .clone()
                .or_else(|| experiment_id_in(&args.path))
                .unwrap_or_default();
            let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
            let result = ExperimentResult::refused(&id, &lines);
            let text = serde_json::to_string_pretty(&result).context("cannot encode the result")?;
            println!("{text}");
            return Ok(ExitCode::from(2));
        }
        Err(refusal) => return Err(refusal.into()),
    };
    // Probe credentials (an Authorization header, a URL password) never reach the screen.
    let mut secrets = Secrets::default();
    let fields = credential_fields(&experiment);
    secrets.add_credentials(fields.headers, fields.urls);
    secrets.add_variables(fields.variables);
    let access = proxy_access()?;
    if let Some(token) = &access.token {
        token.mask_in(&mut secrets);
    }
    redact::install(&secrets);
    let runtime = crate::cli::runtime()?;
    let result = runtime.block_on(async {
        let proxy = match &args.proxy_config {
            None => None,
            Some(path) => {
                let config = StandaloneConfig::load(path)?;
                let registry = ProxyRegistry::start(&config.targets)
                    .await
                    .with_context(|| {
                        format!("cannot start the proxy targets of {}", path.display())
                    })?;
                Some(registry)
            }
        };
        let guard = super::fault_guard::program()?;
        let result = run_with_display(&experiment, &args, proxy.clone(), access, Some(guard)).await;
        if let Some(registry) = proxy {
            registry.shutdown().await;
        }
        anyhow::Ok(result)
    })?;
    if args.json {
        let text = serde_json::to_string_pretty(&result).context("cannot encode the result")?;
        println!("{}", secrets.scrub(&text));
    } else {
        let text = report(&result, std::io::stdout().is_terminal());
        print!("{}", secrets.scrub(&text));
    }
    Ok(ExitCode::from(match result.verdict {
        RunStatus::Passed => 0,
        RunStatus::Failed => 1,
        _ => 2,
    }))
}

/// Why `experiment run` did not run anything.
enum Refusal {
    /// The catalog at this path has problems (as `chaosgate validate` reports them).
    Problems(PathBuf, Vec<Problem>),
    /// Anything else (no such file, no such experiment).
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Refusal {
    fn from(err: anyhow::Error) -> Self {
        Refusal::Other(err)
    }
}

impl From<Refusal> for anyhow::Error {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Other(err) => err,
            Refusal::Problems(path, problems) => {
                let lines: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
                anyhow::anyhow!(
                    "{} has {} problem(s) (see `chaosgate validate`):\n{}",
                    path.display(),
                    problems.len(),
                    lines.join("\n")
                )
            }
        }
    }
}

/// The `id` of the experiment file at `path`, read as plainly as possible (for the
/// result of a file that does not validate).
fn experiment_id_in(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let document = chaosgate::catalog::document::Document::parse(&text).ok()?;
    document.value.get("id")?.as_str().map(str::to_string)
}

/// Loads the catalog at `path` (a file or a folder, fully validated) and picks the
/// experiment: `id`, or the only one there is.
fn load(path: &Path, id: Option<&str>) -> Result<Experiment, Refusal> {
    if !path.exists() {
        return Err(anyhow::anyhow!("{}: no such file or folder", path.display()).into());
    }
    let catalog =
        Catalog::load(&[path]).map_err(|problems| Refusal::Problems(path.to_owned(), problems))?;
    let ids: Vec<&str> = catalog.experiments().map(|e| e.id.as_str()).collect();
    let experiment = match id {
        Some(id) => catalog.experiment(id).with_context(|| {
            format!(
                "no experiment '{id}' in {} (there: {})",
                path.display(),
                ids.join(", ")
            )
        })?,
        None => match catalog.experiments().collect::<Vec<_>>().as_slice() {
            [only] => *only,
            [] => return Err(anyhow::anyhow!("{} holds no experiment", path.display()).into()),
            _ => {
                return Err(anyhow::anyhow!(
                    "{} holds several experiments: pick one with --experiment ({})",
                    path.display(),
                    ids.join(", ")
                )
                .into());
            }
        },
    };
    Ok(experiment.clone())
}

/// Runs the experiment while showing its progress on standard error.
async fn run_with_display(
    experiment: &Experiment,
    args: &ExperimentRunArgs,
    proxy: Option<Arc<ProxyRegistry>>,
    proxy_access: ProxyAccess,
    guard: Option<std::path::PathBuf>,
) -> ExperimentResult {
    let (sender, receiver) = mpsc::unbounded_channel();
    let context = RunContext {
        proxy,
        proxy_access,
        target_wait: Some(args.target_wait.duration()),
        lease: args.lease.duration(),
        progress: Some(sender),
        guard,
        ..RunContext::default()
    };
    let cancel = context.cancel.clone();
    let signals = tokio::spawn(async move {
        let reason = wait_for_signal().await;
        eprintln!("\n{reason}: aborting, reverting faults (a second signal exits at once)...");
        cancel.cancel();
        let reason = wait_for_signal().await;
        eprintln!(
            "\n{reason} again: exiting before the reverts finished; proxy faults expire with their lease, check other faults by hand"
        );
        std::process::exit(2);
    });
    let terminal = std::io::stderr().is_terminal();
    let display = tokio::spawn(show_progress(receiver, terminal, experiment.clone()));
    let result = run_experiment(experiment, &context).await;
    drop(context);
    let _ = display.await;
    signals.abort();
    result
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => "interrupted",
            _ = term.recv() => "terminated",
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            "interrupted"
        }
    }
}

const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const DIM: &str = "\x1b[2m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

/// What the status line shows.
#[derive(Default)]
struct Status {
    active: Vec<(String, DateTime<Utc>)>,
    passed: u32,
    failed: u32,
}

impl Status {
    fn line(&self, started: DateTime<Utc>) -> String {
        let now = Utc::now();
        let elapsed = (now - started).num_seconds().max(0);
        let active = if self.active.is_empty() {
            "no fault active".to_string()
        } else {
            self.active
                .iter()
                .map(|(name, until)| {
                    format!("{name} ({}s left)", (*until - now).num_seconds().max(0))
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "{DIM}[{:02}:{:02}]{RESET} {active} | checks {GREEN}{} passed{RESET}, {RED}{} failed{RESET}",
            elapsed / 60,
            elapsed % 60,
            self.passed,
            self.failed
        )
    }
}

/// One progress event as a line; `color` adds ANSI colors.
fn progress_line(progress: &Progress, color: bool) -> String {
    let paint = |code: &str, text: String| {
        if color {
            format!("{code}{text}{RESET}")
        } else {
            text
        }
    };
    let at = progress.at.format("%H:%M:%S");
    let text = match &progress.event {
        ProgressEvent::WaitingForTargets { targets } => {
            format!("waiting for target {}", targets.join(", "))
        }
        ProgressEvent::Started { experiment } => format!("start {experiment}"),
        ProgressEvent::FaultInjected {
            fault, description, ..
        } => paint(YELLOW, format!("inject {fault} ({description})")),
        ProgressEvent::FaultFailed { fault, error } => {
            paint(RED, format!("inject {fault} failed: {error}"))
        }
        ProgressEvent::FaultReverted { fault, error: None } => {
            paint(GREEN, format!("revert {fault}"))
        }
        ProgressEvent::FaultReverted {
            fault,
            error: Some(error),
        } => paint(RED, format!("revert {fault} FAILED: {error}")),
        ProgressEvent::ProbeChecked {
            probe,
            mode,
            passed: true,
            attempts,
            ..
        } => paint(
            GREEN,
            format!(
                "probe {probe} ({}) passed, {attempts} attempt(s)",
                mode_text(*mode)
            ),
        ),
        ProgressEvent::ProbeChecked {
            probe, mode, error, ..
        } => paint(
            RED,
            format!(
                "probe {probe} ({}) failed: {}",
                mode_text(*mode),
                error.as_deref().unwrap_or("the check failed")
            ),
        ),
        ProgressEvent::Stopping { reason } => paint(BOLD, format!("stopping: {reason}")),
    };
    format!("{at} {text}")
}

fn mode_text(mode: chaosgate::catalog::experiment::ProbeMode) -> String {
    serde_json::to_value(mode)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Prints progress events until the run drops its sender.
async fn show_progress(
    mut receiver: mpsc::UnboundedReceiver<Progress>,
    terminal: bool,
    experiment: Experiment,
) {
    let started = Utc::now();
    let mut status = Status::default();
    let mut redraw = tokio::time::interval(Duration::from_millis(250));
    let header = format!(
        "experiment {}: {} fault(s), {} probe(s)",
        experiment.id,
        experiment.faults.len(),
        experiment.probes.len()
    );
    let mut err = std::io::stderr();
    let _ = writeln!(
        err,
        "{}",
        if terminal {
            format!("{BOLD}{header}{RESET}")
        } else {
            header
        }
    );
    loop {
        tokio::select! {
            event = receiver.recv() => {
                let Some(event) = event else { break };
                match &event.event {
                    ProgressEvent::FaultInjected { fault, until, .. } => status.active.push((fault.clone(), *until)),
                    ProgressEvent::FaultReverted { fault, .. } => status.active.retain(|(name, _)| name != fault),
                    ProgressEvent::ProbeChecked { passed: true, .. } => status.passed += 1,
                    ProgressEvent::ProbeChecked { passed: false, .. } => status.failed += 1,
                    _ => {}
                }
                let line = masked(progress_line(&event, terminal));
                if terminal {
                    let _ = write!(err, "\r\x1b[2K{line}\n{}", status.line(started));
                } else {
                    let _ = writeln!(err, "{line}");
                }
                let _ = err.flush();
            }
            _ = redraw.tick(), if terminal => {
                let _ = write!(err, "\r\x1b[2K{}", status.line(started));
                let _ = err.flush();
            }
        }
    }
    if terminal {
        let _ = writeln!(err, "\r\x1b[2K");
    }
}

/// `text` with the installed secrets masked.
fn masked(text: String) -> String {
    match redact::installed() {
        Some(secrets) => secrets.scrub(&text).into_owned(),
        None => text,
    }
}

fn verdict_text(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Passed => "passed",
        Verdict::Failed => "failed",
        Verdict::Aborted => "aborted",
        Verdict::Error => "error",
        Verdict::Skipped => "skipped",
    }
}

/// Pads `text` to `width` columns.
fn cell(text: &str, width: usize) -> String {
    format!("{text:<width$}")
}

/// The final, human-readable report.
pub fn report(result: &ExperimentResult, color: bool) -> String {
    let paint = |verdict: &str, text: String| {
        if !color {
            return text;
        }
        let code = match verdict {
            "passed" => GREEN,
            "failed" | "error" => RED,
            _ => YELLOW,
        };
        format!("{code}{text}{RESET}")
    };
    let mut out = String::new();
    let verdict = result.verdict.as_str();
    out.push_str(&format!(
        "\nExperiment {} ({})\n",
        result.experiment_id, result.experiment_name
    ));
    let score = result
        .resilience_score
        .map_or_else(|| "-".to_string(), |s| format!("{s}"));
    out.push_str(&format!(
        "  verdict  {}   resilience score {score}\n",
        paint(verdict, verdict.to_uppercase())
    ));
    out.push_str(&format!(
        "  took     {:.1}s (waited {:.1}s for targets)\n",
        result.duration_seconds, result.waited_for_target_seconds
    ));
    out.push_str(&format!("  summary  {}\n", result.summary));
    if !result.faults.is_empty() {
        let width = result
            .faults
            .iter()
            .map(|f| f.name.len())
            .max()
            .unwrap_or(4)
            .max(5);
        out.push_str(&format!(
            "\nFaults\n  {} kind       weight  verdict   probes   reverted  error\n",
            cell("name", width)
        ));
        for f in &result.faults {
            let v = verdict_text(f.verdict);
            out.push_str(&format!(
                "  {} {} {} {} {} {}  {}\n",
                cell(&f.name, width),
                cell(&f.kind, 10),
                cell(&f.weight.to_string(), 7),
                paint(v, cell(v, 9)),
                cell(&format!("{}%", f.probe_success_percentage), 8),
                cell(
                    match (f.started_at, f.reverted) {
                        (None, _) => "-",
                        (Some(_), true) => "yes",
                        (Some(_), false) => "NO",
                    },
                    8
                ),
                f.error.as_deref().unwrap_or("")
            ));
        }
    }
    if !result.probes.is_empty() {
        let width = result
            .probes
            .iter()
            .map(|p| p.name.len())
            .max()
            .unwrap_or(4)
            .max(5);
        let errors = result
            .probes
            .iter()
            .filter(|p| p.verdict == Verdict::Error)
            .count();
        let errors = match errors {
            0 => String::new(),
            n => format!(", {n} error"),
        };
        out.push_str(&format!(
            "\nProbes ({} passed, {} failed{errors})\n  {} type        mode        verdict   attempts  last error\n",
            result.probes_passed,
            result.probes_failed,
            cell("name", width)
        ));
        for p in &result.probes {
            let v = verdict_text(p.verdict);
            out.push_str(&format!(
                "  {} {} {} {} {} {}\n",
                cell(&p.name, width),
                cell(&p.probe_type, 11),
                cell(&p.mode, 11),
                paint(v, cell(v, 9)),
                cell(&p.attempts.to_string(), 9),
                p.last_error.as_deref().unwrap_or("")
            ));
        }
    }
    out.push_str("\nLog\n");
    for line in &result.log {
        out.push_str(&format!("  {line}\n"));
    }
    out
}
