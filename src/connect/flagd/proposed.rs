//! The folder of proposed flag definitions: each change of a flag becomes one flag
//! change on `flag-changes`.
//!
//! What a user sees:
//! - the folder (`[flagd] proposed`) holds `*.json` files in flagd's flag-set format
//!   (<https://flagd.dev/reference/flag-definitions/>), read every `[flagd] scan_interval`;
//!   only files at its top level count: subfolders (a `.git`, drafts) and hidden files
//!   (names starting with `.`, such as an editor's swap files) are not read;
//! - each flag whose proposal differs from what is served, and was not already decided
//!   ([`super::change::propose`]), becomes ONE flag-change v1 CloudEvent (binary mode, key
//!   `project/environment/flag`, idempotent producer with `acks=all`, `value_format =
//!   flagd`, `from` the served definition, `to` the proposal with its `$ref`s inlined),
//!   logged `proposed a flag change` with its `event_id`;
//! - a flag that is served `ENABLED` and has been in no file for `[flagd] removal_grace`
//!   (default 30 s, so a checkout rewriting files turns nothing off) is proposed as a
//!   `disable` whose `to` is the served definition with `state` `DISABLED`;
//! - a file that does not read (JSON syntax, flagd's schema, the consumers' checks of
//!   [`crate::flagd::definition`], or a flag key another file defines too: then neither
//!   file counts) is logged at `error`, one line per problem (`file:line: field: problem`),
//!   once per content of the file, and proposes nothing; its flags are not treated as
//!   removed (the last good read of the file stands for them; after a restart with a
//!   broken file, no flag is treated as removed until it reads again);
//! - metric `chaosgate_flagd_proposals_total{outcome}`: `produced`, `invalid` (a file
//!   refused, counted once per content), `failed` (Kafka did not take it: tried again on
//!   the next scan, nothing is lost since the folder still holds it); a proposal already
//!   on the topic unanswered, served or decided is not counted.
//!
//! The rule that keeps it right: an id is remembered as produced only once Kafka has it
//! ([`super::memory`]), and recalled from the topic after a restart, so a change is
//! produced once while its gate runs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use rdkafka::producer::FutureProducer;
use rdkafka::util::Timeout;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::FlagdError;
use super::approved::{Approved, ApprovedWatch, Selection};
use super::change::{Proposal, is_enabled, propose};
use super::memory::{self, Pending};
use crate::catalog::Problem;
use crate::config::{Config, FlagdConfig};
use crate::contract::ValueFormat;
use crate::contract::flag_change::{Change, FlagChange, flag_change_event};
use crate::flagd::approval::disabled;
use crate::flagd::definition::{self, Definitions};
use crate::telemetry::metrics;

/// How long a flag change may wait for Kafka's acknowledgement before the scan counts it
/// `failed` (it is tried again on the next scan).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// What the folder held at one scan.
#[derive(Debug, Default)]
pub struct Scan {
    /// The flags of the files that read, flag key to definition.
    pub flags: Definitions,
    /// Files that did not read: name to content (or the I/O error) and problems.
    pub failed: BTreeMap<String, (String, Vec<Problem>)>,
    /// The flags of each file that read, by file name.
    pub by_file: BTreeMap<String, Definitions>,
}

/// What each file read to last time, by name, with the content it was read from: a file
/// whose content did not change is not checked again.
pub type ReadCache = HashMap<String, (String, Result<Definitions, Vec<Problem>>)>;

/// Reads the top-level `*.json` files of `folder` (not hidden files, not subfolders;
/// symbolic links to files are followed), in name order, checking only the files whose
/// content changed since `cache` saw them. Errors: the folder itself cannot be listed.
pub fn scan(folder: &Path, cache: &mut ReadCache) -> Result<Scan, String> {
    let entries = std::fs::read_dir(folder)
        .map_err(|e| format!("cannot list the proposed folder {}: {e}", folder.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.path().is_file())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| !name.starts_with('.') && name.ends_with(".json"))
        .collect();
    names.sort();
    let mut reads = Vec::new();
    let mut failed = BTreeMap::new();
    for name in names {
        let text = match std::fs::read_to_string(folder.join(&name)) {
            Ok(text) => text,
            Err(e) => {
                let problem = Problem::file(name.clone(), format!("cannot read: {e}"));
                failed.insert(name, (e.to_string(), vec![problem]));
                continue;
            }
        };
        let read = match cache.get(&name) {
            Some((seen, read)) if *seen == text => read.clone(),
            _ => {
                let read = definition::read(&name, &text);
                cache.insert(name.clone(), (text.clone(), read.clone()));
                read
            }
        };
        reads.push((name, text, read));
    }
    // A flag two files define is ambiguous: neither file counts until one drops it.
    let mut owners: HashMap<String, Vec<String>> = HashMap::new();
    for (name, _, read) in &reads {
        for flag in read.iter().flat_map(|flags| flags.keys()) {
            owners.entry(flag.clone()).or_default().push(name.clone());
        }
    }
    let mut scan = Scan {
        failed,
        ..Scan::default()
    };
    for (name, text, read) in reads {
        let read = read.and_then(|flags| {
            let twice: Vec<Problem> = flags
                .keys()
                .filter_map(|flag| {
                    let others: Vec<&str> = owners
                        .get(flag)
                        .into_iter()
                        .flatten()
                        .filter(|other| **other != name)
                        .map(String::as_str)
                        .collect();
                    (!others.is_empty()).then(|| {
                        Problem::file(
                            name.clone(),
                            format!(
                                "flag '{flag}' is also defined in {}: neither file is proposed until one of them drops it",
                                others.join(", ")
                            ),
                        )
                    })
                })
                .collect();
            if twice.is_empty() {
                Ok(flags)
            } else {
                Err(twice)
            }
        });
        match read {
            Ok(flags) => {
                scan.flags
                    .extend(flags.iter().map(|(k, v)| (k.clone(), v.clone())));
                scan.by_file.insert(name, flags);
            }
            Err(problems) => {
                scan.failed.insert(name, (text, problems));
            }
        }
    }
    cache.retain(|name, _| scan.by_file.contains_key(name) || scan.failed.contains_key(name));
    Ok(scan)
}

/// What one scan proposes: each flag's `to` (proposed, or its removal), given the
/// files that read, the last good read of each file (`last_good`), and what is served.
/// A flag of a file that failed is neither proposed nor removed; when a failed file was
/// never read well, no flag is treated as removed.
pub fn targets(
    scan: &Scan,
    last_good: &HashMap<String, Definitions>,
    approved: &Approved,
    set: &Selection,
) -> BTreeMap<String, Value> {
    let mut targets: BTreeMap<String, Value> = scan.flags.clone();
    let mut kept: HashSet<&str> = HashSet::new();
    let mut unknown = false;
    for name in scan.failed.keys() {
        match last_good.get(name) {
            Some(flags) => kept.extend(flags.keys().map(String::as_str)),
            None => unknown = true,
        }
    }
    if unknown {
        return targets;
    }
    if let Some(served) = approved.sets.get(set) {
        for (flag, record) in served {
            if !targets.contains_key(flag)
                && !kept.contains(flag.as_str())
                && is_enabled(&record.definition)
            {
                targets.insert(flag.clone(), disabled(&record.definition));
            }
        }
    }
    targets
}

/// Keeps a removal (a target for a flag no file holds) out of `targets` until the flag
/// has been gone for `grace` (since its entry in `gone_since`, made now if new); forgets
/// flags that came back or are no longer to remove.
pub fn hold_removals(
    gone_since: &mut HashMap<String, std::time::Instant>,
    grace: Duration,
    now: std::time::Instant,
    scan: &Scan,
    targets: &mut BTreeMap<String, Value>,
) {
    gone_since.retain(|flag, _| !scan.flags.contains_key(flag) && targets.contains_key(flag));
    targets.retain(|flag, _| {
        if scan.flags.contains_key(flag) {
            return true;
        }
        let since = *gone_since.entry(flag.clone()).or_insert(now);
        now.duration_since(since) >= grace
    });
}

/// The folder side's state between scans.
struct Proposer {
    set: Selection,
    topic: String,
    source: String,
    producer: FutureProducer,
    pending: Pending,
    last_good: HashMap<String, Definitions>,
    /// Each failed file's content as last reported, so it is logged once per content.
    reported: HashMap<String, String>,
    /// What each file read to, by content.
    reads: ReadCache,
    /// `[flagd] removal_grace`.
    removal_grace: Duration,
    /// Flags served and gone from the folder, since when (their removal waits for
    /// `removal_grace`).
    gone_since: HashMap<String, std::time::Instant>,
}

/// Reads `folder` every `[flagd] scan_interval` and proposes each changed flag, until
/// `shutdown`. Errors: [`FlagdError::Kafka`] when the producer cannot be created.
pub async fn run(
    config: &Config,
    flagd: &FlagdConfig,
    folder: &Path,
    approved: ApprovedWatch,
    shutdown: CancellationToken,
) -> Result<(), FlagdError> {
    let set = Selection::of(flagd);
    let mut proposer = Proposer {
        topic: config.kafka.topics.flag_changes.clone(),
        source: format!(
            "/chaosgate/connect/flagd/{}/{}",
            set.project, set.environment
        ),
        producer: crate::connect::flag_change_producer(&config.kafka, DELIVERY_TIMEOUT).map_err(
            |e| FlagdError::Kafka(format!("cannot create the flag-change producer: {e}")),
        )?,
        pending: Pending::default(),
        last_good: HashMap::new(),
        reported: HashMap::new(),
        reads: ReadCache::new(),
        removal_grace: flagd.removal_grace.duration(),
        gone_since: HashMap::new(),
        set,
    };
    let recall_config = config.clone();
    let recall_set = proposer.set.clone();
    match tokio::task::spawn_blocking(move || memory::recall(&recall_config, &recall_set)).await {
        Ok(Ok(mut pending)) => {
            pending.settle(&approved.borrow(), &proposer.set);
            tracing::info!(
                unanswered = pending.len(),
                topic = %proposer.topic,
                "recalled the flagd proposals produced in the last day"
            );
            proposer.pending = pending;
        }
        Ok(Err(error)) => tracing::warn!(
            %error,
            "cannot recall the proposals already on the topic: a change still gating may be produced once more"
        ),
        Err(error) => tracing::warn!(%error, "the recall of proposals stopped"),
    }
    tracing::info!(folder = %folder.display(), every = ?flagd.scan_interval.duration(), "watching the proposed flag folder");
    let mut ticks = tokio::time::interval(flagd.scan_interval.duration());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = ticks.tick() => {}
        }
        let served = approved.borrow().clone();
        proposer.scan_once(folder, &served).await;
    }
}

impl Proposer {
    async fn scan_once(&mut self, folder: &Path, approved: &Approved) {
        let scan = match scan(folder, &mut self.reads) {
            Ok(scan) => scan,
            Err(error) => {
                tracing::error!(%error, "proposed flags not read");
                return;
            }
        };
        self.report(&scan);
        let mut targets = targets(&scan, &self.last_good, approved, &self.set);
        hold_removals(
            &mut self.gone_since,
            self.removal_grace,
            std::time::Instant::now(),
            &scan,
            &mut targets,
        );
        self.last_good
            .extend(scan.by_file.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.last_good
            .retain(|name, _| scan.by_file.contains_key(name) || scan.failed.contains_key(name));
        self.pending.settle(approved, &self.set);
        for (flag, to) in targets {
            let key = format!("{}/{}/{flag}", self.set.project, self.set.environment);
            // Nothing to propose: served, decided, or already on the topic unanswered.
            let Some(proposal) = propose(&key, &to, approved.flag(&self.set, &flag)) else {
                continue;
            };
            if self.pending.contains(&flag, &proposal.event_id) {
                continue;
            }
            match self.produce(&flag, &proposal).await {
                Ok((partition, offset)) => {
                    self.pending.add(&flag, &proposal.event_id);
                    metrics::flagd_proposal("produced");
                    tracing::info!(
                        flag = %key,
                        kind = proposal.kind.as_str(),
                        event_id = %proposal.event_id,
                        topic = %self.topic,
                        partition,
                        offset,
                        "proposed a flag change"
                    );
                }
                Err(error) => {
                    metrics::flagd_proposal("failed");
                    tracing::warn!(flag = %key, event_id = %proposal.event_id, %error, "Kafka did not take the flag change; trying again on the next scan");
                }
            }
        }
    }

    /// Logs each failed file's problems once per content; forgets files that read again.
    fn report(&mut self, scan: &Scan) {
        self.reported
            .retain(|name, _| scan.failed.contains_key(name));
        for (name, (content, problems)) in &scan.failed {
            if self.reported.get(name) == Some(content) {
                continue;
            }
            self.reported.insert(name.clone(), content.clone());
            metrics::flagd_proposal("invalid");
            for problem in problems {
                tracing::error!(file = %name, "{problem}");
            }
        }
    }

    /// Produces `proposal` of `flag` as a binary-mode CloudEvent keyed by the flag,
    /// waiting for the delivery report.
    async fn produce(&self, flag: &str, proposal: &Proposal) -> Result<(i32, i64), String> {
        let change = FlagChange {
            event_id: proposal.event_id.clone(),
            occurred_at: Utc::now(),
            project: self.set.project.clone(),
            environment: self.set.environment.clone(),
            flag: flag.to_string(),
            change: Change {
                kind: proposal.kind,
                from: proposal.from.clone(),
                to: Some(proposal.to.clone()),
            },
            pipeline_id: None,
            actor: None,
            account: None,
            value_format: Some(ValueFormat::Flagd),
        };
        let event = flag_change_event(&change, &self.source);
        let key = change.flag_key();
        let message = event.to_binary(Some(&key));
        let record = crate::bus::record::to_record(&self.topic, &message);
        self.producer
            .send(record, Timeout::After(DELIVERY_TIMEOUT))
            .await
            .map(|delivery| (delivery.partition, delivery.offset))
            .map_err(|(error, _)| format!("{} ({error})", self.topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::approved_flag::approved_flag_example;

    const FLAG: &str =
        r#"{"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"}"#;

    fn write(dir: &Path, name: &str, flags: &[&str]) {
        let body: Vec<String> = flags.iter().map(|f| format!("\"{f}\": {FLAG}")).collect();
        std::fs::write(
            dir.join(name),
            format!("{{\"flags\": {{{}}}}}", body.join(",")),
        )
        .unwrap();
    }

    fn served(set: &Selection, flags: &[&str]) -> Approved {
        let mut approved = Approved::default();
        for flag in flags {
            let record = crate::contract::ApprovedFlag {
                flag: flag.to_string(),
                definition: serde_json::from_str(FLAG).unwrap(),
                ..approved_flag_example()
            };
            approved
                .sets
                .entry(set.clone())
                .or_default()
                .insert(flag.to_string(), record);
        }
        approved
    }

    #[test]
    fn only_top_level_visible_json_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.json", &["a"]);
        write(dir.path(), ".hidden.json", &["hidden"]);
        write(dir.path(), "notes.txt", &["txt"]);
        std::fs::create_dir(dir.path().join("sub.json")).unwrap();
        write(&dir.path().join("sub.json"), "b.json", &["b"]);
        let scan = scan(dir.path(), &mut ReadCache::new()).unwrap();
        assert_eq!(scan.flags.keys().collect::<Vec<_>>(), ["a"]);
        assert!(scan.failed.is_empty());
    }

    #[test]
    fn a_flag_two_files_define_counts_in_neither() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.json", &["x"]);
        write(dir.path(), "b.json", &["x", "y"]);
        write(dir.path(), "c.json", &["z"]);
        let scan = scan(dir.path(), &mut ReadCache::new()).unwrap();
        assert_eq!(scan.flags.keys().collect::<Vec<_>>(), ["z"]);
        let problem = |file: &str| scan.failed[file].1[0].to_string();
        assert_eq!(
            problem("a.json"),
            "a.json: flag 'x' is also defined in b.json: neither file is proposed until one of them drops it"
        );
        assert_eq!(
            problem("b.json"),
            "b.json: flag 'x' is also defined in a.json: neither file is proposed until one of them drops it"
        );
    }

    #[test]
    fn a_removal_waits_for_the_grace_and_a_flag_back_in_time_is_not_removed() {
        let grace = Duration::from_secs(30);
        let start = std::time::Instant::now();
        let mut gone = HashMap::new();
        let scan = Scan::default();
        let removal =
            || BTreeMap::from([("gone".to_string(), serde_json::json!({"state": "DISABLED"}))]);
        let mut targets = removal();
        hold_removals(&mut gone, grace, start, &scan, &mut targets);
        assert!(targets.is_empty(), "removed at once");
        let mut targets = removal();
        hold_removals(
            &mut gone,
            grace,
            start + Duration::from_secs(29),
            &scan,
            &mut targets,
        );
        assert!(targets.is_empty(), "removed before the grace");
        let mut targets = removal();
        hold_removals(&mut gone, grace, start + grace, &scan, &mut targets);
        assert_eq!(targets, removal(), "held past the grace");

        // Back before the grace: the clock starts again when it goes next time.
        let mut gone = HashMap::new();
        let mut targets = removal();
        hold_removals(&mut gone, grace, start, &scan, &mut targets);
        let mut back = Scan::default();
        back.flags
            .insert("gone".into(), serde_json::json!({"state": "ENABLED"}));
        let mut targets = BTreeMap::new();
        hold_removals(
            &mut gone,
            grace,
            start + Duration::from_secs(10),
            &back,
            &mut targets,
        );
        assert!(gone.is_empty());
        let mut targets = removal();
        hold_removals(
            &mut gone,
            grace,
            start + Duration::from_secs(31),
            &scan,
            &mut targets,
        );
        assert!(targets.is_empty(), "the first absence still counted");
    }

    #[test]
    fn removed_flags_are_disabled_but_never_those_of_a_broken_file() {
        let set = Selection {
            project: "shop".into(),
            environment: "production".into(),
        };
        let approved = served(&set, &["kept", "gone", "broken-one"]);
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.json", &["kept"]);
        std::fs::write(dir.path().join("b.json"), "{ not json").unwrap();
        let first = scan(dir.path(), &mut ReadCache::new()).unwrap();
        // b.json never read well: nothing is treated as removed.
        let none = targets(&first, &HashMap::new(), &approved, &set);
        assert_eq!(none.keys().collect::<Vec<_>>(), ["kept"]);
        // b.json read well before, with broken-one: only gone is removed.
        let mut last_good = HashMap::new();
        let mut b = Definitions::new();
        b.insert(
            "broken-one".to_string(),
            serde_json::from_str(FLAG).unwrap(),
        );
        last_good.insert("b.json".to_string(), b);
        let targets = targets(&first, &last_good, &approved, &set);
        assert_eq!(targets.keys().collect::<Vec<_>>(), ["gone", "kept"]);
        assert_eq!(targets["gone"]["state"], "DISABLED");
    }
}
