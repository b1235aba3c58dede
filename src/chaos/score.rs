//! The resilience score, as the Harness and LitmusChaos documents define it.
//!
//! Each probe counts 0 or 100 for a fault (an edge probe counts 100 only when it passed
//! both before and after the chaos; the runner decides that). A fault's probe success
//! percentage is the share of its probes that passed; the experiment's score is the
//! weighted mean of those percentages, rounded to two decimals. An experiment without
//! faults scores the plain share of probes that passed.

/// Rounds to two decimals, as scores are reported.
pub(crate) fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// Share of `passed` among `total` probes, in percent; 100 when there are no probes
/// (nothing watched the fault, so nothing failed).
pub(crate) fn probe_success_percentage(passed: usize, total: usize) -> f64 {
    if total == 0 {
        return 100.0;
    }
    round2(passed as f64 * 100.0 / total as f64)
}

/// sum(weight x probe success %) / sum(weights), rounded to two decimals.
///
/// Takes `(weight, probe success %)` per fault; `None` when there is no weight at all.
pub(crate) fn resilience_score(faults: &[(u8, f64)]) -> Option<f64> {
    let weights: u32 = faults.iter().map(|(w, _)| u32::from(*w)).sum();
    if weights == 0 {
        return None;
    }
    let weighted: f64 = faults.iter().map(|(w, pct)| f64::from(*w) * pct).sum();
    Some(round2(weighted / f64::from(weights)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_example_scores_71_43() {
        let score = resilience_score(&[(2, 0.0), (4, 100.0), (8, 75.0)]);
        assert_eq!(score, Some(71.43));
    }

    #[test]
    fn percentages_count_probes_that_passed() {
        assert_eq!(probe_success_percentage(3, 4), 75.0);
        assert_eq!(probe_success_percentage(1, 3), 33.33);
        assert_eq!(probe_success_percentage(0, 0), 100.0);
        assert_eq!(resilience_score(&[]), None);
        assert_eq!(resilience_score(&[(5, 100.0)]), Some(100.0));
    }
}
