//! A pipeline's guard as the operator writes it: probes the worker keeps checking after
//! the pipeline's `enable`, for a duration; a probe that fails issues the pipeline's
//! `on_failure` command (`disable` or `revert`).
//!
//! ```yaml
//! guard:
//!   duration: 30m
//!   probes:
//!     - name: checkout-errors
//!       run_properties: {polling_interval: 30s, attempts: 3, interval: 10s}
//!       prometheus:
//!         endpoint: http://prometheus:9090
//!         query: sum(rate(http_requests_total{code=~"5.."}[1m])) / sum(rate(http_requests_total[1m]))
//!         comparison: {type: float, criteria: le, value: "0.02"}
//! ```
//!
//! Guard probes are the experiment probes (`http`, `tcp`, `command`, `prometheus`, with
//! the same criteria, judged by the same code). What differs is when they run, and the
//! rule that keeps it right is that a guard has one schedule only:
//!
//! - every guard probe is `continuous`: checked from the `enable` (plus its
//!   `initial_delay`) to the guard's deadline, every `polling_interval`, start to start on
//!   a fixed grid as in experiments. `mode` may be left out; the only value accepted is
//!   `continuous` (a guard has no faults, so `sot`, `eot`, `edge` and `on_chaos` have no
//!   window to run in; the schema and the reader refuse them at `guard.probes[N].mode`);
//! - one check makes up to `attempts` attempts, `interval` apart, each cut off after
//!   `timeout`, and passes as soon as one attempt passes: the guard fires when a check
//!   fails, i.e. when the probe failed `attempts` times in a row;
//! - `stop_on_failure` changes nothing: every failed check of a guard probe ends the
//!   guard;
//! - credentials in probe headers, URLs and command variables are masked in guard records
//!   as in run records ([`credential_fields`]).
//!
//! The rules checked by `chaosgate validate` besides the pipeline's own
//! (`catalog::rules::check_pipeline`: a `duration` above 0s, at least one probe) are in
//! [`check`]: each probe keeps the experiment probe rules (`timeout` above 0s, `attempts`
//! at least 1, `polling_interval` above 0s, command timeouts and variables), names are
//! unique, and `initial_delay` is below `duration` (else the probe never checks).

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use super::credentials::{CredentialFields, probe_fields};
use super::experiment::file_shape::ProbeTypeBlocks;
use super::experiment::{Probe, ProbeMode, ProbeType, RunProperties};
use super::problem::{FieldPath, Finding};
use super::rules;
use super::span::Span;

/// `guard:` in a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Guard {
    /// How long after the `enable` the probes are checked (above 0s), e.g. `30m`.
    pub duration: Span,
    /// The probes, as in experiments but always `continuous` (`mode` may be left out):
    /// each is checked every `run_properties.polling_interval` from the `enable` (plus its
    /// `initial_delay`) until the deadline, and fails the guard when a check fails, i.e.
    /// after `run_properties.attempts` failed attempts in a row. Read with `mode`
    /// `continuous`.
    #[serde(deserialize_with = "guard_probes")]
    #[schemars(with = "Vec<GuardProbe>")]
    pub probes: Vec<Probe>,
}

/// The only mode a guard probe has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "GuardProbeMode")]
enum GuardProbeMode {
    /// From the `enable` to the guard's deadline, every `polling_interval`.
    #[default]
    Continuous,
}

/// One guard probe as written: a probe whose `mode` may be left out and is `continuous`;
/// read into [`Probe`]. Its schema shows each type block as an optional field, as
/// `experiment::file_shape` does for experiment probes (`chaosgate validate` reports none
/// or several).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    rename = "GuardProbe",
    description = "One guard probe: exactly one of the type blocks must be set."
)]
struct GuardProbe {
    /// Name, unique within the guard; guard records and the reason name it.
    name: String,
    /// When the probe runs: `continuous` (the default and only value), from the `enable`
    /// to the guard's deadline.
    #[serde(default)]
    mode: GuardProbeMode,
    /// Timing and retry settings: `polling_interval` between checks, `attempts` failed
    /// attempts (`interval` apart) in a row fail the guard, `initial_delay` before the
    /// first check; `stop_on_failure` changes nothing (every failure ends a guard).
    #[serde(default)]
    run_properties: RunProperties,
    #[serde(flatten)]
    #[schemars(with = "ProbeTypeBlocks")]
    probe_type: ProbeType,
}

/// Reads guard probes, `mode` defaulting to (and only ever) `continuous`.
fn guard_probes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Probe>, D::Error> {
    let written = Vec::<GuardProbe>::deserialize(deserializer)?;
    Ok(written
        .into_iter()
        .map(|probe| {
            let GuardProbeMode::Continuous = probe.mode;
            Probe {
                name: probe.name,
                mode: ProbeMode::Continuous,
                run_properties: probe.run_properties,
                probe_type: probe.probe_type,
            }
        })
        .collect())
}

/// Every rule `guard` breaks beyond the pipeline's own checks, each at its field under
/// `guard` (`guard.probes[N]...`).
pub(crate) fn check(guard: &Guard) -> Vec<Finding> {
    let mut out = Vec::new();
    let probes = FieldPath::root().key("guard").key("probes");
    rules::unique_names(
        guard.probes.iter().map(|p| p.name.as_str()),
        &probes,
        "guard probe",
        &mut out,
    );
    for (i, probe) in guard.probes.iter().enumerate() {
        let path = probes.index(i);
        rules::check_probe(probe, &path, &mut out);
        let delay = probe.run_properties.initial_delay;
        if !guard.duration.duration().is_zero() && delay.duration() >= guard.duration.duration() {
            out.push(Finding::new(
                path.key("run_properties").key("initial_delay"),
                format!(
                    "guard probe '{}' waits {delay} before its first check, but the guard \
                     lasts {}: it would never check; shorten initial_delay or lengthen \
                     guard.duration",
                    probe.name, guard.duration
                ),
            ));
        }
    }
    out
}

/// The fields of `guard`'s probes that may hold a credential (see
/// [`super::credentials`]), masked in guard records.
pub fn credential_fields(guard: &Guard) -> CredentialFields<'_> {
    let mut fields = CredentialFields::default();
    for probe in &guard.probes {
        probe_fields(probe, &mut fields);
    }
    fields
}
