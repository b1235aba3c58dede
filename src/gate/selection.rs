//! Selection: which pipeline answers a flag change, or why the change is refused (dead-
//! lettered) before anything runs.
//!
//! The rules: an event may name a pipeline (`pipeline_id`) only when the catalog has it
//! and either that pipeline's routes take the event's flag or the pipeline allows
//! explicit selection (`allow_explicit: true`); otherwise any producer could pick a
//! pipeline that gates nothing and get an immediate `enable`. An event that names none
//! takes the pipeline its flag's route leads to. A change no route takes is refused here
//! only when the operator says so (`worker.unrouted = "dead_letter"`), and never a
//! requested `disable`: turning a flag off is always let through. The other answers to an
//! unrouted change are given by [`super::decision::pass_on`].

use crate::catalog::{Catalog, Pipeline, Unrouted};
use crate::contract::flag_change::BadFlagChange;
use crate::contract::{ChangeKind, ErrorClass, FlagChange};

/// The pipeline that answers `change` (`None`: no route takes it and `unrouted` lets it be
/// passed on), or the reason it is dead-lettered: class `unknown_pipeline`,
/// `pipeline_not_routed` or `unrouted`, with a message naming the pipeline and the flag.
pub(crate) fn select<'c>(
    catalog: &'c Catalog,
    change: &FlagChange,
    unrouted: Unrouted,
) -> Result<Option<&'c Pipeline>, BadFlagChange> {
    let routed = catalog.pipeline_for(&change.project, &change.environment, &change.flag);
    let Some(id) = &change.pipeline_id else {
        if routed.is_none()
            && unrouted == Unrouted::DeadLetter
            && change.change.kind != ChangeKind::Disable
        {
            return Err(BadFlagChange {
                class: ErrorClass::Unrouted,
                message: format!(
                    "no pipeline's routes take flag '{}' and worker.unrouted is 'dead_letter'",
                    change.flag_key()
                ),
            });
        }
        return Ok(routed);
    };
    let Some(named) = catalog.pipeline(id) else {
        return Err(BadFlagChange {
            class: ErrorClass::UnknownPipeline,
            message: format!("data.pipeline_id: no pipeline '{id}' in the catalog"),
        });
    };
    // Routes of two pipelines never overlap (the catalog refuses that when it loads), so
    // the named pipeline's routes take the flag exactly when the flag's route leads to it.
    if named.allow_explicit || routed.is_some_and(|p| p.id == named.id) {
        return Ok(Some(named));
    }
    Err(BadFlagChange {
        class: ErrorClass::PipelineNotRouted,
        message: format!(
            "data.pipeline_id: pipeline '{id}' does not route flag '{}' and does not allow explicit selection (allow_explicit: false)",
            change.flag_key()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::pipeline::pipeline_example;
    use crate::contract::flag_change::flag_change_example;

    /// The example pipeline (routes `shop`/`production`/`checkout-*`), and `other`, which
    /// has no routes (reachable only when it allows explicit selection).
    fn catalog(other_allows_explicit: bool) -> Catalog {
        let routed = pipeline_example();
        let mut other = pipeline_example();
        other.id = "other".into();
        other.routes.clear();
        other.allow_explicit = other_allows_explicit;
        let experiment = crate::catalog::experiment::experiment_example();
        match Catalog::from_parts(vec![routed, other], vec![experiment]) {
            Ok(catalog) => catalog,
            Err(problems) => panic!("{problems:?}"),
        }
    }

    fn change(flag: &str, kind: ChangeKind, pipeline_id: Option<&str>) -> FlagChange {
        let mut change = flag_change_example();
        change.flag = flag.into();
        change.change.kind = kind;
        change.pipeline_id = pipeline_id.map(str::to_string);
        change
    }

    fn selected(
        catalog: &Catalog,
        change: &FlagChange,
        unrouted: Unrouted,
    ) -> Result<Option<String>, BadFlagChange> {
        select(catalog, change, unrouted).map(|p| p.map(|p| p.id.clone()))
    }

    #[test]
    fn a_named_pipeline_must_route_the_flag_or_allow_explicit_selection() {
        let strict = catalog(false);
        let routed = "checkout-release";
        // Naming the pipeline the routes lead to is fine.
        let named = change("checkout-v2", ChangeKind::Enable, Some(routed));
        assert_eq!(
            selected(&strict, &named, Unrouted::Enable),
            Ok(Some(routed.to_string()))
        );
        // Naming a pipeline whose routes do not take the flag is refused, whatever the
        // change kind, naming the pipeline and the flag.
        for kind in [ChangeKind::Enable, ChangeKind::Update, ChangeKind::Disable] {
            let elsewhere = change("search-v2", kind, Some(routed));
            let bad = selected(&strict, &elsewhere, Unrouted::Enable).unwrap_err();
            assert_eq!(bad.class, ErrorClass::PipelineNotRouted);
            assert_eq!(
                bad.message,
                "data.pipeline_id: pipeline 'checkout-release' does not route flag \
                 'shop/production/search-v2' and does not allow explicit selection \
                 (allow_explicit: false)"
            );
        }
        // A routed flag naming another pipeline is refused too.
        let other = change("checkout-v2", ChangeKind::Enable, Some("other"));
        let bad = selected(&strict, &other, Unrouted::Enable).unwrap_err();
        assert_eq!(bad.class, ErrorClass::PipelineNotRouted);
        assert!(bad.message.contains("pipeline 'other'"), "{}", bad.message);

        // A pipeline that allows explicit selection takes any flag that names it.
        let open = catalog(true);
        for flag in ["checkout-v2", "search-v2"] {
            let named = change(flag, ChangeKind::Update, Some("other"));
            assert_eq!(
                selected(&open, &named, Unrouted::DeadLetter),
                Ok(Some("other".to_string()))
            );
        }
        // A pipeline the catalog lacks stays `unknown_pipeline`.
        let unknown = change("checkout-v2", ChangeKind::Enable, Some("nowhere"));
        let bad = selected(&open, &unknown, Unrouted::Enable).unwrap_err();
        assert_eq!(bad.class, ErrorClass::UnknownPipeline);
    }

    #[test]
    fn an_unrouted_change_is_dead_lettered_only_when_the_operator_says_so() {
        let catalog = catalog(false);
        let unrouted = change("search-v2", ChangeKind::Enable, None);
        assert_eq!(selected(&catalog, &unrouted, Unrouted::Enable), Ok(None));
        assert_eq!(selected(&catalog, &unrouted, Unrouted::Disable), Ok(None));
        let bad = selected(&catalog, &unrouted, Unrouted::DeadLetter).unwrap_err();
        assert_eq!(bad.class, ErrorClass::Unrouted);
        assert_eq!(
            bad.message,
            "no pipeline's routes take flag 'shop/production/search-v2' and worker.unrouted is 'dead_letter'"
        );
        // A requested disable always goes through.
        let disable = change("search-v2", ChangeKind::Disable, None);
        assert_eq!(selected(&catalog, &disable, Unrouted::DeadLetter), Ok(None));
        // A routed change is never refused for being unrouted.
        let routed = change("checkout-v2", ChangeKind::Update, None);
        assert_eq!(
            selected(&catalog, &routed, Unrouted::DeadLetter),
            Ok(Some("checkout-release".to_string()))
        );
    }
}
