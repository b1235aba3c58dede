//! The rules a typed experiment must keep for the engine to run it as written: one list,
//! used by `chaosgate validate` (through [`super::Catalog::load`], with file and line) and
//! by the runner before it touches anything (`chaos::run`), so whatever the runner would
//! refuse or reinterpret is a validation error first.
//!
//! Each rule names the field it is about. The JSON-level checks in [`super::validate`]
//! come first and cover what needs no types (exactly one kind block, URLs, regular
//! expressions, argument lists, expected values of comparisons); these need the typed
//! values (durations, timings against fault durations, names across the experiment).
//!
//! # The rules
//!
//! - fault and probe names are unique; a fault's `probes` names probes of the experiment;
//! - an experiment has faults or probes; its `timeout`, when set, is above 0s and above
//!   the time its faults are active (their durations in turn, or the longest in parallel);
//! - a command's `timeout` (fault inject and revert, command probe), when set, is above 0s;
//!   so is a pipeline step's ([`check_pipeline`]);
//! - a fault's `weight` is 1 to 10;
//! - a probe's `timeout` is above 0s and `attempts` at least 1; a polling probe's
//!   (`continuous`, `on_chaos`) `polling_interval` is above 0s;
//! - an `on_chaos` probe's `initial_delay` is below the time every fault it judges is
//!   active (its `duration`; for `parallel` execution, the shortest), so it can check
//!   while they are: a check outside that window never counts as passed;
//! - a `process` fault's `name` can match `/proc/PID/comm`: at most 15 bytes (the
//!   kernel's `TASK_COMM_LEN` of 16, with its NUL), no `/`, not empty;
//! - a command's `env` and `env_from_worker` (fault inject and revert, command probe)
//!   name POSIX variables (`[A-Za-z_][A-Za-z0-9_]*`); `env_from_worker` names each once,
//!   none that `env` sets, and no `CHAOSGATE_*` variable (the worker's configuration);
//! - a `toxiproxy` fault's `proxy` is a name Toxiproxy's API can address (no `/`, not
//!   `.`, `..` or empty).

use std::collections::HashMap;

use super::experiment::{
    CommandLine, Experiment, FaultExecution, FaultKind, Probe, ProbeMode, ProbeType,
};
use super::pipeline::{FailureStrategy, Pipeline, Step};
use super::problem::{FieldPath, Finding};
use super::span::Span;

/// The kernel keeps at most this many bytes of a process name in `/proc/PID/comm`
/// (`TASK_COMM_LEN` is 16, including the terminating NUL; see proc(5)).
pub(crate) const MAX_PROCESS_NAME: usize = 15;

/// Every rule `experiment` breaks, each at its field (empty when it can run as written).
pub(crate) fn check_experiment(experiment: &Experiment) -> Vec<Finding> {
    let mut out = Vec::new();
    let root = FieldPath::root();
    if experiment.faults.is_empty() && experiment.probes.is_empty() {
        out.push(Finding::new(
            root.clone(),
            "the experiment has neither faults nor probes",
        ));
    }
    if let Some(timeout) = experiment.timeout {
        positive(timeout, &root.key("timeout"), "timeout", &mut out);
    }
    unique_names(
        experiment.faults.iter().map(|f| f.name.as_str()),
        &root.key("faults"),
        "fault",
        &mut out,
    );
    unique_names(
        experiment.probes.iter().map(|p| p.name.as_str()),
        &root.key("probes"),
        "probe",
        &mut out,
    );
    check_faults(experiment, &mut out);
    check_probes(experiment, &mut out);
    check_fits_timeout(experiment, &mut out);
    out
}

/// Every rule `pipeline` breaks, each at its field: a step's `timeout`, when set, is above
/// 0s (a step with none to run in would be cut off at once, every time).
pub(crate) fn check_pipeline(pipeline: &Pipeline) -> Vec<Finding> {
    let mut out = Vec::new();
    let stages = FieldPath::root().key("stages");
    for (i, stage) in pipeline.stages.iter().enumerate() {
        for (j, step) in stage.steps.iter().enumerate() {
            let at = stages.index(i).key("steps").index(j);
            match step {
                Step::Chaos(step) => {
                    if let Some(timeout) = step.timeout {
                        positive(timeout, &at.key("timeout"), "a step's timeout", &mut out);
                    }
                }
                Step::Approval(step) => {
                    let timeout = at.key("approval").key("timeout");
                    positive(
                        step.approval.timeout,
                        &timeout,
                        "an approval's timeout",
                        &mut out,
                    );
                    if matches!(step.failure_strategy, FailureStrategy::Retry { .. }) {
                        out.push(Finding::new(
                            at.key("failure_strategy"),
                            "an approval step cannot retry: a reject or timeout is final for \
                             this change (use abort, ignore or mark_as_success)",
                        ));
                    }
                }
                Step::Wait(step) => positive(step.wait, &at.key("wait"), "a wait", &mut out),
            }
        }
    }
    out.extend(super::freeze::check(&pipeline.freeze_windows));
    if let Some(guard) = &pipeline.guard {
        let at = FieldPath::root().key("guard");
        positive(
            guard.duration,
            &at.key("duration"),
            "a guard's duration",
            &mut out,
        );
        if guard.probes.is_empty() {
            out.push(Finding::new(
                at.key("probes"),
                "a guard needs at least one probe to watch",
            ));
        }
        out.extend(super::guard::check(guard));
    }
    out
}

/// The experiment's `timeout` must leave its faults the time they are active: else every
/// run is aborted before its last revert is due.
fn check_fits_timeout(experiment: &Experiment, out: &mut Vec<Finding>) {
    let Some(timeout) = experiment.timeout else {
        return;
    };
    let durations = experiment.faults.iter().map(|f| f.duration.duration());
    let active = match experiment.execution {
        FaultExecution::Serial => durations.sum(),
        FaultExecution::Parallel => durations.max().unwrap_or_default(),
    };
    // A 0s timeout is reported as such.
    if !active.is_zero() && !timeout.duration().is_zero() && timeout.duration() <= active {
        out.push(Finding::new(
            FieldPath::root().key("timeout"),
            format!(
                "timeout {timeout} is not above the {} the faults are active ({}): every run \
                 would be aborted before its last revert",
                Span(active),
                match experiment.execution {
                    FaultExecution::Serial => "their durations, one after another",
                    FaultExecution::Parallel => "the longest duration",
                }
            ),
        ));
    }
}

/// One finding as the runner states it: `path: message` (the message alone at the root).
pub(crate) fn line(finding: &Finding) -> String {
    if finding.path.is_root() {
        finding.message.clone()
    } else {
        format!("{}: {}", finding.path, finding.message)
    }
}

fn positive(span: Span, path: &FieldPath, what: &str, out: &mut Vec<Finding>) {
    if span.duration().is_zero() {
        out.push(Finding::new(
            path.clone(),
            format!("{what} must be above 0s"),
        ));
    }
}

pub(crate) fn unique_names<'a>(
    names: impl Iterator<Item = &'a str>,
    list: &FieldPath,
    what: &str,
    out: &mut Vec<Finding>,
) {
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (index, name) in names.enumerate() {
        if let Some(earlier) = first.get(name) {
            out.push(Finding::new(
                list.index(index).key("name"),
                format!(
                    "duplicate {what} name '{name}' (also {})",
                    list.index(*earlier)
                ),
            ));
        } else {
            first.insert(name, index);
        }
    }
}

fn check_faults(experiment: &Experiment, out: &mut Vec<Finding>) {
    let faults = FieldPath::root().key("faults");
    let probe_names: Vec<&str> = experiment.probes.iter().map(|p| p.name.as_str()).collect();
    for (i, fault) in experiment.faults.iter().enumerate() {
        let path = faults.index(i);
        if !(1..=10).contains(&fault.weight) {
            out.push(Finding::new(
                path.key("weight"),
                format!("weight {} is not 1 to 10", fault.weight),
            ));
        }
        for (k, name) in fault.probes.iter().flatten().enumerate() {
            if !probe_names.contains(&name.as_str()) {
                let known = if probe_names.is_empty() {
                    "none".to_string()
                } else {
                    probe_names.join(", ")
                };
                out.push(Finding::new(
                    path.key("probes").index(k),
                    format!("unknown probe '{name}' (probes of this experiment: {known})"),
                ));
            }
        }
        match &fault.kind {
            FaultKind::Command(command) => {
                for (part, line) in [("inject", &command.inject), ("revert", &command.revert)] {
                    let at = path.key("command").key(part);
                    if let Some(timeout) = line.timeout {
                        positive(timeout, &at.key("timeout"), "a command's timeout", out);
                    }
                    check_environment(line, &at, out);
                }
            }
            FaultKind::Process(process) => {
                if let Some(problem) = process.name.as_deref().and_then(unmatchable_process_name) {
                    out.push(Finding::new(path.key("process").key("name"), problem));
                }
            }
            FaultKind::Toxiproxy(toxiproxy) => {
                if let Err(reason) = check_toxiproxy_proxy_name(&toxiproxy.proxy) {
                    out.push(Finding::new(
                        path.key("toxiproxy").key("proxy"),
                        format!(
                            "Toxiproxy cannot address proxy '{}': {reason}",
                            toxiproxy.proxy
                        ),
                    ));
                }
            }
            FaultKind::Network(_) | FaultKind::Http(_) => {}
        }
    }
}

/// A command's `env` and `env_from_worker` name variables a process can have, each once,
/// and never the worker's own configuration (see `CommandLine`).
fn check_environment(line: &CommandLine, at: &FieldPath, out: &mut Vec<Finding>) {
    for name in line.env.keys() {
        if let Some(problem) = bad_variable_name(name) {
            out.push(Finding::new(at.key("env").key(name), problem));
        }
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (k, name) in line.env_from_worker.iter().enumerate() {
        let here = at.key("env_from_worker").index(k);
        if let Some(problem) = bad_variable_name(name) {
            out.push(Finding::new(here, problem));
        } else if name
            .to_ascii_uppercase()
            .starts_with(CONFIG_VARIABLE_PREFIX)
        {
            out.push(Finding::new(
                here,
                format!(
                    "'{name}' is a worker configuration variable ({CONFIG_VARIABLE_PREFIX}*), \
                     which may hold its Kafka credentials: a command never sees those; \
                     pass what it needs in env"
                ),
            ));
        } else if let Some(first) = seen.insert(name.as_str(), k) {
            out.push(Finding::new(
                here,
                format!("'{name}' is named twice (also env_from_worker[{first}])"),
            ));
        } else if line.env.contains_key(name) {
            out.push(Finding::new(
                here,
                format!("'{name}' is also set in env, whose value would win: name it once"),
            ));
        }
    }
}

/// The prefix of the worker's configuration variables (`crate::config`'s), which no
/// command may be handed.
pub(crate) const CONFIG_VARIABLE_PREFIX: &str = "CHAOSGATE_";

/// Why `name` is not a POSIX environment variable name (`[A-Za-z_][A-Za-z0-9_]*`, the
/// portable names of POSIX.1-2017 Base Definitions 8.1), if it is not.
fn bad_variable_name(name: &str) -> Option<String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    Some(format!(
        "'{}' is not a variable name: letters, digits and '_', not starting with a digit",
        name.escape_debug()
    ))
}

/// Whether Toxiproxy's API can address a proxy named `proxy`: `Err` gives why not.
///
/// Toxiproxy accepts any proxy name on create, but routes requests on the decoded path, so
/// a name holding `/` (even sent as `%2F`) never reaches the proxy, and `.`, `..` and the
/// empty name are removed by path cleaning. Such a proxy has no usable toxics API.
pub(crate) fn check_toxiproxy_proxy_name(proxy: &str) -> Result<(), &'static str> {
    if proxy.is_empty() {
        return Err("the name is empty");
    }
    if proxy == "." || proxy == ".." {
        return Err("'.' and '..' are removed from URL paths");
    }
    if proxy.contains('/') {
        return Err(
            "Toxiproxy matches the decoded path, so a '/' in a proxy name cannot be sent; rename the proxy",
        );
    }
    Ok(())
}

/// Why no process can ever have `name` in `/proc/PID/comm`, if it cannot.
fn unmatchable_process_name(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("an empty name matches no process: write the name in /proc/PID/comm".into());
    }
    if name.contains('/') {
        return Some(format!(
            "'{name}' holds a '/': /proc/PID/comm holds the program's name, not a path"
        ));
    }
    if name.len() > MAX_PROCESS_NAME {
        if !name.is_char_boundary(MAX_PROCESS_NAME) {
            return Some(format!(
                "'{name}' is {} bytes; the kernel keeps {MAX_PROCESS_NAME} in /proc/PID/comm, \
                 which cuts a character in two, so no name written here can match: use pid_file",
                name.len()
            ));
        }
        let cut = MAX_PROCESS_NAME;
        return Some(format!(
            "'{name}' is {} bytes, but the kernel keeps {MAX_PROCESS_NAME} in /proc/PID/comm, \
             so no process matches it: write '{}' or use pid_file",
            name.len(),
            &name[..cut]
        ));
    }
    None
}

fn check_probes(experiment: &Experiment, out: &mut Vec<Finding>) {
    let probes = FieldPath::root().key("probes");
    for (i, probe) in experiment.probes.iter().enumerate() {
        let path = probes.index(i);
        check_probe(probe, &path, out);
        if probe.mode == ProbeMode::OnChaos {
            check_chaos_window(experiment, i, &path, out);
        }
    }
}

/// The rules one probe keeps on its own (at `path`): its run properties and its command;
/// an experiment's probes and a pipeline guard's (`catalog::guard`) alike.
pub(crate) fn check_probe(probe: &Probe, path: &FieldPath, out: &mut Vec<Finding>) {
    let properties = &probe.run_properties;
    let at = path.key("run_properties");
    positive(properties.timeout, &at.key("timeout"), "timeout", out);
    if properties.attempts == 0 {
        out.push(Finding::new(
            at.key("attempts"),
            "attempts must be at least 1",
        ));
    }
    if matches!(probe.mode, ProbeMode::Continuous | ProbeMode::OnChaos) {
        positive(
            properties.polling_interval,
            &at.key("polling_interval"),
            "a polling probe's polling_interval",
            out,
        );
    }
    if let ProbeType::Command(command) = &probe.probe_type {
        let at = path.key("command").key("command");
        if let Some(timeout) = command.command.timeout {
            positive(timeout, &at.key("timeout"), "a command's timeout", out);
        }
        check_environment(&command.command, &at, out);
    }
}

/// An `on_chaos` probe must be able to check while the faults it judges are active.
fn check_chaos_window(experiment: &Experiment, p: usize, path: &FieldPath, out: &mut Vec<Finding>) {
    let probe = &experiment.probes[p];
    let at = path.key("run_properties").key("initial_delay");
    let delay = probe.run_properties.initial_delay;
    let judged = experiment.faults.iter().filter(|f| {
        f.probes
            .as_ref()
            .is_none_or(|names| names.contains(&probe.name))
    });
    // Serial: each judged fault is a window of its own. Parallel: the window is while
    // every fault is active, so the shortest fault of the experiment bounds it.
    let windows: Vec<(&str, Span)> = match experiment.execution {
        FaultExecution::Serial => judged.map(|f| (f.name.as_str(), f.duration)).collect(),
        FaultExecution::Parallel if judged.count() > 0 => experiment
            .faults
            .iter()
            .min_by_key(|f| f.duration.duration())
            .map(|f| (f.name.as_str(), f.duration))
            .into_iter()
            .collect(),
        FaultExecution::Parallel => Vec::new(),
    };
    if experiment.faults.is_empty() {
        out.push(Finding::new(
            path.key("mode"),
            "an on_chaos probe checks while faults are active, but this experiment has no faults",
        ));
        return;
    }
    for (fault, active) in windows {
        if active.duration().is_zero() {
            let f = experiment
                .faults
                .iter()
                .position(|x| x.name == fault)
                .unwrap_or(0);
            let finding = Finding::new(
                FieldPath::root().key("faults").index(f).key("duration"),
                format!(
                    "fault '{fault}' is active for 0s, so on_chaos probe '{}' has no time to \
                     check in: give the fault a duration",
                    probe.name
                ),
            );
            if !out.contains(&finding) {
                out.push(finding);
            }
        } else if delay.duration() >= active.duration() {
            out.push(Finding::new(
                at.clone(),
                format!(
                    "initial_delay {delay} is not below the {active} fault '{fault}' is active: \
                     an on_chaos probe must check while its faults are active (a check after \
                     the revert never counts)"
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn experiment(yaml: &str) -> Experiment {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn messages(experiment: &Experiment) -> Vec<String> {
        check_experiment(experiment)
            .iter()
            .map(|f| format!("{}: {}", f.path, f.message))
            .collect()
    }

    const COMMAND: &str = "command: {inject: {argv: ['true']}, revert: {argv: ['true']}}";

    #[test]
    fn names_are_unique_and_probe_references_known() {
        let e = experiment(&format!(
            "kind: experiment\nid: x\nfaults:\n  - {{name: a, weight: 1, duration: 1s, probes: [nope], {COMMAND}}}\n  - {{name: a, weight: 1, duration: 1s, {COMMAND}}}\nprobes:\n  - {{name: p, mode: eot, tcp: {{address: '127.0.0.1:1'}}}}\n  - {{name: p, mode: sot, tcp: {{address: '127.0.0.1:1'}}}}\n"
        ));
        assert_eq!(
            messages(&e),
            [
                "faults[1].name: duplicate fault name 'a' (also faults[0])",
                "probes[1].name: duplicate probe name 'p' (also probes[0])",
                "faults[0].probes[0]: unknown probe 'nope' (probes of this experiment: p, p)",
            ]
        );
    }

    #[test]
    fn durations_that_only_work_above_zero_must_be() {
        let e = experiment(&format!(
            "kind: experiment\nid: x\ntimeout: 0s\nfaults:\n  - {{name: a, weight: 1, duration: 1s, {COMMAND}}}\nprobes:\n  - name: p\n    mode: continuous\n    run_properties: {{timeout: 0s, attempts: 0, polling_interval: 0s}}\n    tcp: {{address: '127.0.0.1:1'}}\n"
        ));
        assert_eq!(
            messages(&e),
            [
                "timeout: timeout must be above 0s",
                "probes[0].run_properties.timeout: timeout must be above 0s",
                "probes[0].run_properties.attempts: attempts must be at least 1",
                "probes[0].run_properties.polling_interval: a polling probe's polling_interval must be above 0s",
            ]
        );
    }

    #[test]
    fn an_on_chaos_probe_must_be_able_to_check_while_its_faults_are_active() {
        let probe = |delay: &str| {
            format!(
                "probes:\n  - {{name: p, mode: on_chaos, run_properties: {{initial_delay: {delay}}}, tcp: {{address: '127.0.0.1:1'}}}}\n"
            )
        };
        let serial = |delay: &str, duration: &str| {
            experiment(&format!(
                "kind: experiment\nid: x\nfaults:\n  - {{name: a, weight: 1, duration: {duration}, {COMMAND}}}\n{}",
                probe(delay)
            ))
        };
        assert!(messages(&serial("900ms", "1s")).is_empty());
        let late = "probes[0].run_properties.initial_delay: initial_delay 3s is not below the 1s fault 'a' is active: an on_chaos probe must check while its faults are active (a check after the revert never counts)";
        assert_eq!(messages(&serial("3s", "1s")), [late]);
        assert_eq!(messages(&serial("1s", "1s")).len(), 1);
        // A 0s fault leaves no time to check in.
        assert_eq!(messages(&serial("0s", "0s")).len(), 1);
        // Parallel: the window is while every fault is active, so the shortest bounds it.
        let parallel = experiment(&format!(
            "kind: experiment\nid: x\nexecution: parallel\nfaults:\n  - {{name: long, weight: 1, duration: 10s, {COMMAND}}}\n  - {{name: short, weight: 1, duration: 2s, {COMMAND}}}\n{}",
            probe("5s")
        ));
        assert_eq!(
            messages(&parallel),
            [
                "probes[0].run_properties.initial_delay: initial_delay 5s is not below the 2s fault 'short' is active: an on_chaos probe must check while its faults are active (a check after the revert never counts)"
            ]
        );
        // A fault that names other probes is not this probe's window.
        let other = experiment(&format!(
            "kind: experiment\nid: x\nfaults:\n  - {{name: a, weight: 1, duration: 1s, probes: [q], {COMMAND}}}\n  - {{name: b, weight: 1, duration: 9s, {COMMAND}}}\nprobes:\n  - {{name: p, mode: on_chaos, run_properties: {{initial_delay: 3s}}, tcp: {{address: '127.0.0.1:1'}}}}\n  - {{name: q, mode: eot, tcp: {{address: '127.0.0.1:1'}}}}\n"
        ));
        assert!(messages(&other).is_empty(), "{:?}", messages(&other));
    }

    #[test]
    fn a_toxiproxy_proxy_name_must_be_one_its_api_can_address() {
        let named = |proxy: &str| {
            experiment(&format!(
                "kind: experiment\nid: x\nfaults:\n  - {{name: a, weight: 1, duration: 1s, toxiproxy: {{api: 'http://127.0.0.1:8474', proxy: '{proxy}', toxic: {{type: timeout}}}}}}\n"
            ))
        };
        assert!(messages(&named("orders db#1?50%")).is_empty());
        assert_eq!(
            messages(&named("orders/db")),
            [
                "faults[0].toxiproxy.proxy: Toxiproxy cannot address proxy 'orders/db': Toxiproxy matches the decoded path, so a '/' in a proxy name cannot be sent; rename the proxy"
            ]
        );
        assert_eq!(messages(&named("..")).len(), 1);
    }

    #[test]
    fn command_environments_name_variables_a_process_can_have_once() {
        let e = experiment(
            "kind: experiment\nid: x\nfaults:\n  - {name: a, weight: 1, duration: 2s, command: {inject: {argv: ['true'], env: {GOOD_1: v, 1BAD: v, 'A-B': v}}, revert: {argv: ['true'], env: {TOKEN: t}, env_from_worker: [KUBECONFIG, KUBECONFIG, TOKEN, CHAOSGATE_KAFKA__PROPERTIES__SASL_PASSWORD, 'x y']}}}\nprobes:\n  - {name: p, mode: eot, command: {command: {argv: ['env'], env: {_OK: '${HOME}'}, env_from_worker: [HOME, AWS_PROFILE]}}}\n",
        );
        assert_eq!(
            messages(&e),
            [
                "faults[0].command.inject.env.1BAD: '1BAD' is not a variable name: letters, digits and '_', not starting with a digit",
                "faults[0].command.inject.env.A-B: 'A-B' is not a variable name: letters, digits and '_', not starting with a digit",
                "faults[0].command.revert.env_from_worker[1]: 'KUBECONFIG' is named twice (also env_from_worker[0])",
                "faults[0].command.revert.env_from_worker[2]: 'TOKEN' is also set in env, whose value would win: name it once",
                "faults[0].command.revert.env_from_worker[3]: 'CHAOSGATE_KAFKA__PROPERTIES__SASL_PASSWORD' is a worker configuration variable (CHAOSGATE_*), which may hold its Kafka credentials: a command never sees those; pass what it needs in env",
                "faults[0].command.revert.env_from_worker[4]: 'x y' is not a variable name: letters, digits and '_', not starting with a digit",
            ]
        );
    }

    #[test]
    fn command_timeouts_and_the_experiment_timeout_leave_time_to_run() {
        let e = experiment(
            "kind: experiment\nid: x\ntimeout: 3s\nfaults:\n  - {name: a, weight: 1, duration: 2s, command: {inject: {argv: ['true'], timeout: 0s}, revert: {argv: ['true']}}}\n  - {name: b, weight: 1, duration: 2s, command: {inject: {argv: ['true']}, revert: {argv: ['true'], timeout: 0s}}}\nprobes:\n  - {name: p, mode: eot, command: {command: {argv: ['true'], timeout: 0s}}}\n",
        );
        assert_eq!(
            messages(&e),
            [
                "faults[0].command.inject.timeout: a command's timeout must be above 0s",
                "faults[1].command.revert.timeout: a command's timeout must be above 0s",
                "probes[0].command.command.timeout: a command's timeout must be above 0s",
                "timeout: timeout 3s is not above the 4s the faults are active (their durations, one after another): every run would be aborted before its last revert",
            ]
        );
        let parallel = experiment(&format!(
            "kind: experiment\nid: x\nexecution: parallel\ntimeout: 3s\nfaults:\n  - {{name: a, weight: 1, duration: 2s, {COMMAND}}}\n  - {{name: b, weight: 1, duration: 2s, {COMMAND}}}\n"
        ));
        assert!(messages(&parallel).is_empty(), "{:?}", messages(&parallel));
    }

    #[test]
    fn a_zero_second_fault_judged_on_chaos_is_named_at_its_duration() {
        let e = experiment(&format!(
            "kind: experiment\nid: x\nfaults:\n  - {{name: a, weight: 1, duration: 0s, {COMMAND}}}\nprobes:\n  - {{name: p, mode: on_chaos, tcp: {{address: '127.0.0.1:1'}}}}\n"
        ));
        assert_eq!(
            messages(&e),
            [
                "faults[0].duration: fault 'a' is active for 0s, so on_chaos probe 'p' has no time to check in: give the fault a duration"
            ]
        );
    }

    #[test]
    fn a_step_timeout_must_be_above_zero() {
        let pipeline: Pipeline = serde_saphyr::from_str(
            "kind: pipeline\nid: p\nroutes: [{flag: x}]\nstages:\n  - id: s\n    type: feature_flag\n    steps:\n      - {id: a, experiment: e, expected_resilience_score: 80, timeout: 0s}\n",
        )
        .unwrap();
        let found: Vec<String> = check_pipeline(&pipeline)
            .iter()
            .map(|f| format!("{}: {}", f.path, f.message))
            .collect();
        assert_eq!(
            found,
            ["stages[0].steps[0].timeout: a step's timeout must be above 0s"]
        );
    }

    #[test]
    fn a_process_name_must_be_one_proc_comm_can_hold() {
        let named = |name: &str| {
            experiment(&format!(
                "kind: experiment\nid: x\nfaults:\n  - {{name: a, weight: 1, duration: 1s, process: {{action: pause, name: '{name}'}}}}\n"
            ))
        };
        assert!(messages(&named("postgres")).is_empty());
        assert!(messages(&named("exactly15bytes_")).is_empty());
        assert_eq!(
            messages(&named("kube-controller-manager")),
            [
                "faults[0].process.name: 'kube-controller-manager' is 23 bytes, but the kernel keeps 15 in /proc/PID/comm, so no process matches it: write 'kube-controller' or use pid_file"
            ]
        );
        assert_eq!(messages(&named("/usr/bin/redis")).len(), 1);
        // 18 bytes whose 15th cuts an 'é' in two: no name can match.
        assert!(
            messages(&named("ééééééééé"))[0]
                .ends_with("so no name written here can match: use pid_file")
        );
        assert_eq!(messages(&named("")).len(), 1);
    }
}
