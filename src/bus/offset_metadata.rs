//! The text a partition's committed offset carries in its metadata: which offsets above
//! the committed offset (the watermark) are done, how often an unfinished one was started,
//! and which runs of its last attempt are still open (see [`super::offsets`]).
//!
//! Version 3 (written): `cg3;r=<runs>;s=<starts>;o=<open>`, every offset relative to the
//! watermark. `r=` is the span from the watermark to one past the highest done offset as
//! alternating run lengths, done first: `done, not done, done, …, done`. Offsets inside a
//! done run are done or never delivered (transaction markers, aborted records), so only
//! the unfinished offsets break a run and the text grows with them, not with the span.
//! `s=` holds pairs `(distance from the previous started offset, count)`. Numbers in `r=`
//! and `s=` are little-endian base-32 varints, one character per five bits
//! ([`DIGITS`]: the first 32 end a number, the last 32 go on). `o=` is
//! `offset:stage.step.retry+…,…` in decimal.
//!
//! Versions 2 (`cg2;done=2-4,7;started=5:2;open=5:0.0.0`, relative decimal ranges) and 1
//! (`cg1`, the same with absolute offsets) are still read, so a worker upgraded mid-stream
//! goes on from what the previous version committed. Version 2 cannot read version 3: it
//! ignores the text as foreign (see `docs/operations.md` on rolling back).
//!
//! The rule that keeps the text under the broker's `offset.metadata.max.bytes` (4096
//! bytes by default): with at most [`MAX_PENDING`] unfinished offsets and a span of at
//! most [`MAX_SPAN`], the runs alone never exceed [`MAX_METADATA`] ([`worst_case_runs`]
//! is that bound, computed for the encoding itself); start counts and open runs are dropped
//! (open runs first) when they would not fit.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::gate::executor::RunPosition;

/// The prefix of the version written.
const PREFIX_V3: &str = "cg3";
/// Version 2: decimal ranges relative to the watermark.
const PREFIX_V2: &str = "cg2";
/// Version 1: decimal ranges of absolute offsets.
const PREFIX_V1: &str = "cg1";
/// Metadata longer than this drops open runs, then start counts (under the broker's 4096
/// default, with room to spare).
pub const MAX_METADATA: usize = 3800;
/// The most offsets a partition's done offsets may run ahead of its watermark (the
/// worker holds a partition's records past it until the watermark moves).
pub const MAX_SPAN: u64 = 1 << 25;
/// The varint digits: index `d < 32` is a last digit `d`, `32 + d` a digit `d` with more
/// to follow.
const DIGITS: &[u8; 64] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_";
/// Everything around the runs when start counts and open runs are dropped: `cg3;r=`.
const RUNS_PREFIX_LEN: usize = PREFIX_V3.len() + ";r=".len();
/// The most unfinished offsets one partition may hold so that its runs always fit in
/// [`MAX_METADATA`] (the worker holds its further records until one finishes).
pub const MAX_PENDING: usize = max_pending();

/// The longest `r=` text of `values` run lengths that add up to at most `span`: each
/// value at least one character; the characters beyond the first cost the most offsets
/// the higher they go, so the longest text raises as many values as the span pays for,
/// one digit at a time.
pub(crate) const fn worst_case_runs(values: u64, span: u64) -> u64 {
    let mut length = values;
    let mut budget = span.saturating_sub(values);
    let mut digits = 1;
    while digits < 13 {
        // Raising a value from `digits` to `digits + 1` characters takes it from
        // 32^(digits-1) to 32^digits.
        let step = (1u64 << (5 * digits)) - (1u64 << (5 * (digits - 1)));
        let raised = if budget / step < values {
            budget / step
        } else {
            values
        };
        length += raised;
        budget -= raised * step;
        if raised < values {
            break;
        }
        digits += 1;
    }
    length
}

/// The largest unfinished count whose worst-case runs fit: `n` unfinished offsets make at
/// most `n` not-done runs (one also for the watermark's own), so `2n + 1` run lengths.
const fn max_pending() -> usize {
    let mut n: u64 = 1;
    while RUNS_PREFIX_LEN as u64 + worst_case_runs(2 * (n + 1) + 1, MAX_SPAN) <= MAX_METADATA as u64
    {
        n += 1;
    }
    n as usize
}

/// What a partition's metadata says, in absolute offsets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Decoded {
    /// Done ranges `[start, end)`, ascending.
    pub(crate) done: Vec<(i64, i64)>,
    /// Start counts of unfinished offsets.
    pub(crate) started: BTreeMap<i64, u32>,
    /// Runs of an offset's last attempt left open.
    pub(crate) open: BTreeMap<i64, Vec<RunPosition>>,
}

/// Reads metadata committed with offset `watermark`; text of no known version, or broken
/// parts of it, read as nothing.
pub(crate) fn decode(watermark: i64, text: &str) -> Decoded {
    let mut parts = text.split(';');
    match parts.next() {
        Some(PREFIX_V3) => decode_v3(watermark, parts),
        Some(PREFIX_V2) => decode_decimal(watermark, parts),
        Some(PREFIX_V1) => decode_decimal(0, parts),
        _ => Decoded::default(),
    }
}

fn decode_v3<'a>(base: i64, parts: impl Iterator<Item = &'a str>) -> Decoded {
    let mut decoded = Decoded::default();
    for part in parts {
        if let Some(runs) = part.strip_prefix("r=") {
            let Some(values) = varints(runs) else {
                continue;
            };
            let mut position = base;
            for (i, length) in values.into_iter().enumerate() {
                let end = position.saturating_add(i64::try_from(length).unwrap_or(i64::MAX));
                if i % 2 == 0 && end > position {
                    decoded.done.push((position, end));
                }
                position = end;
            }
        } else if let Some(starts) = part.strip_prefix("s=") {
            let Some(values) = varints(starts) else {
                continue;
            };
            let mut offset = base;
            for pair in values.chunks_exact(2) {
                offset = offset.saturating_add(i64::try_from(pair[0]).unwrap_or(i64::MAX));
                if let Ok(count) = u32::try_from(pair[1]) {
                    decoded.started.insert(offset, count);
                }
            }
        } else if let Some(list) = part.strip_prefix("o=") {
            decode_open(base, list, &mut decoded.open);
        }
    }
    decoded
}

/// Versions 1 and 2: `done=2-4,7;started=5:2;open=5:0.0.0`, offsets plus `base`.
fn decode_decimal<'a>(base: i64, parts: impl Iterator<Item = &'a str>) -> Decoded {
    let mut decoded = Decoded::default();
    let absolute = |text: &str| text.parse::<i64>().ok().map(|o| o.saturating_add(base));
    for part in parts {
        if let Some(list) = part.strip_prefix("done=") {
            for range in list.split(',').filter(|r| !r.is_empty()) {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                if let (Some(lo), Some(hi)) = (absolute(lo), absolute(hi))
                    && lo <= hi
                {
                    decoded.done.push((lo, hi.saturating_add(1)));
                }
            }
        } else if let Some(list) = part.strip_prefix("started=") {
            for entry in list.split(',').filter(|e| !e.is_empty()) {
                if let Some((offset, count)) = entry.split_once(':')
                    && let (Some(offset), Ok(count)) = (absolute(offset), count.parse::<u32>())
                {
                    decoded.started.insert(offset, count);
                }
            }
        } else if let Some(list) = part.strip_prefix("open=") {
            decode_open(base, list, &mut decoded.open);
        }
    }
    decoded
}

/// `offset:stage.step.retry+…,…` with offsets plus `base`.
fn decode_open(base: i64, list: &str, open: &mut BTreeMap<i64, Vec<RunPosition>>) {
    for entry in list.split(',').filter(|e| !e.is_empty()) {
        if let Some((offset, runs)) = entry.split_once(':')
            && let Ok(offset) = offset.parse::<i64>()
        {
            let runs: Vec<RunPosition> = runs
                .split('+')
                .filter_map(parse_position)
                .take(64)
                .collect();
            open.insert(offset.saturating_add(base), runs);
        }
    }
}

/// A run position as the metadata writes it: `stage.step.retry`.
fn parse_position(text: &str) -> Option<RunPosition> {
    let mut parts = text.split('.');
    let position = RunPosition {
        stage: parts.next()?.parse().ok()?,
        step: parts.next()?.parse().ok()?,
        retry: parts.next()?.parse().ok()?,
    };
    parts.next().is_none().then_some(position)
}

/// Writes version 3 for a partition whose watermark is `base`: `not_done` are the
/// ascending, disjoint ranges `[start, end)` of offsets in `[base, end)` that are not done
/// (`end` one past the highest done offset, or `base` when none is), then `started` and
/// `open` (offsets at or above `base`), dropped as the module doc says when too long.
pub(crate) fn encode(
    base: i64,
    end: i64,
    not_done: impl Iterator<Item = (i64, i64)>,
    started: &BTreeMap<i64, u32>,
    open: &BTreeMap<i64, Vec<RunPosition>>,
) -> String {
    let mut text = String::with_capacity(64);
    text.push_str(PREFIX_V3);
    text.push_str(";r=");
    if end > base {
        let mut position = base;
        for (start, stop) in not_done {
            varint(&mut text, distance(position, start));
            varint(&mut text, distance(start, stop));
            position = stop;
        }
        varint(&mut text, distance(position, end));
    }
    let without_starts = text.len();
    text.push_str(";s=");
    let mut previous = base;
    for (offset, count) in started {
        varint(&mut text, distance(previous, *offset));
        varint(&mut text, u64::from(*count));
        previous = *offset;
    }
    let without_open = text.len();
    if !open.is_empty() {
        text.push_str(";o=");
        for (i, (offset, runs)) in open.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            let _ = write!(text, "{}:", offset - base);
            for (j, run) in runs.iter().enumerate() {
                let separator = if j > 0 { "+" } else { "" };
                let _ = write!(text, "{separator}{}.{}.{}", run.stage, run.step, run.retry);
            }
        }
    }
    // Open runs go first (they would stay `running`), then start counts (an attempt
    // would repeat); done offsets never (they would run again).
    if text.len() > MAX_METADATA {
        text.truncate(without_open);
    }
    if text.len() > MAX_METADATA {
        text.truncate(without_starts);
    }
    text
}

fn distance(from: i64, to: i64) -> u64 {
    u64::try_from(to.saturating_sub(from)).unwrap_or(0)
}

fn varint(text: &mut String, mut value: u64) {
    loop {
        let digit = (value & 31) as usize;
        value >>= 5;
        if value == 0 {
            text.push(char::from(DIGITS[digit]));
            return;
        }
        text.push(char::from(DIGITS[digit + 32]));
    }
}

/// The varints of `text`; `None` when it holds anything else or ends mid-number.
fn varints(text: &str) -> Option<Vec<u64>> {
    let mut values = Vec::new();
    let mut value: u64 = 0;
    let mut shift = 0;
    for byte in text.bytes() {
        let index = DIGITS.iter().position(|d| *d == byte)? as u64;
        if shift > 60 {
            return None;
        }
        value |= (index & 31) << shift;
        if index < 32 {
            values.push(value);
            value = 0;
            shift = 0;
        } else {
            shift += 5;
        }
    }
    (shift == 0).then_some(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        let mut text = String::new();
        let values = [0, 1, 31, 32, 1023, 1024, 1 << 25, u64::from(u32::MAX)];
        for value in values {
            varint(&mut text, value);
        }
        assert_eq!(varints(&text), Some(values.to_vec()));
        assert_eq!(&text[..4], "01vw");
        assert_eq!(varints("w"), None, "ends mid-number");
        assert_eq!(varints("1,2"), None);
    }

    #[test]
    fn runs_round_trip_with_long_done_runs() {
        let base = 1_000_000_000;
        let not_done = [(base, base + 1), (base + 40, base + 42)];
        let started = BTreeMap::from([(base, 2), (base + 41, 1)]);
        let text = encode(
            base,
            base + 5_000_000,
            not_done.into_iter(),
            &started,
            &BTreeMap::new(),
        );
        let decoded = decode(base, &text);
        assert_eq!(
            decoded.done,
            [(base + 1, base + 40), (base + 42, base + 5_000_000)]
        );
        assert_eq!(decoded.started, started);
        assert!(text.len() < 32, "{text}");
    }

    #[test]
    fn the_worst_case_bound_is_the_encodings() {
        // As many run lengths as the bound allows, each as long as the span pays for.
        let values = 2 * MAX_PENDING as u64 + 1;
        let bound = worst_case_runs(values, MAX_SPAN);
        assert!(RUNS_PREFIX_LEN as u64 + bound <= MAX_METADATA as u64);
        let mut text = String::new();
        let mut left = MAX_SPAN - values;
        let mut lengths = vec![1u64; values as usize];
        // Raise the values digit by digit, as worst_case_runs assumes.
        for digits in 1..13u32 {
            let step = (1u64 << (5 * digits)) - (1u64 << (5 * (digits - 1)));
            for length in lengths.iter_mut() {
                if left >= step {
                    *length = 1u64 << (5 * digits);
                    left -= step;
                }
            }
        }
        for length in &lengths {
            varint(&mut text, *length);
        }
        assert!(lengths.iter().sum::<u64>() <= MAX_SPAN);
        assert_eq!(text.len() as u64, bound);
        const { assert!(MAX_PENDING >= 256) };
    }

    #[test]
    fn earlier_versions_are_read() {
        let v2 = decode(10, "cg2;done=2-3,5;started=0:1,4:2;open=0:0.1.2");
        assert_eq!(v2.done, [(12, 14), (15, 16)]);
        assert_eq!(v2.started, BTreeMap::from([(10, 1), (14, 2)]));
        assert_eq!(v2.open.len(), 1);
        let v1 = decode(10, "cg1;done=12-13;started=11:2");
        assert_eq!(v1.done, [(12, 14)]);
        assert_eq!(v1.started, BTreeMap::from([(11, 2)]));
        assert_eq!(decode(10, "foreign"), Decoded::default());
    }
}
