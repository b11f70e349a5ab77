//! The selection as a dry run, for the admin API: how a request for a model would be served
//! now, route by route, without taking a slot or reserving memory.

use std::sync::Arc;

use super::eligible::{sort_out, tiers_of, Policy, Request, Skip, Sorted};
use crate::config::Strategy;
use crate::fleet::{Fleet, ModelRoutes, Route};

/// How a request for a model would be served now, route by route, as `select` decides it
/// but without taking a slot or reserving memory (the resource check runs as a dry run).
pub(crate) struct Explanation {
    /// "routes" (named by routes), "discovery" (servers that list it) or "unknown".
    pub(crate) source: &'static str,
    /// The priority that serves now, if any route can.
    pub(crate) serving: Option<u32>,
    /// Every route, with `None` when it is among those a request would pick from, or why not.
    pub(crate) verdicts: Vec<(Arc<Route>, Option<String>)>,
}

pub(crate) fn explain<P: Policy>(fleet: &Fleet, strategy: Strategy, req: &Request, policy: &P) -> Explanation {
    let (source, mr) = match fleet.named_routes(req.model) {
        Some(mr) => ("routes", mr),
        None => {
            let found = fleet.discover(req.model);
            let source = if found.is_empty() { "unknown" } else { "discovery" };
            return explain_among(source, &ModelRoutes::new(found), Strategy::Weighted, req, policy);
        }
    };
    explain_among(source, mr, strategy, req, policy)
}

fn explain_among<P: Policy>(
    source: &'static str,
    mr: &ModelRoutes,
    strategy: Strategy,
    req: &Request,
    policy: &P,
) -> Explanation {
    let Sorted { eligible, skipped } = sort_out(mr, req);
    let mut verdicts: Vec<Option<String>> = vec![None; mr.routes.len()];
    for (i, why) in skipped {
        verdicts[i] = Some(why.to_string());
    }
    let mut serving = None;
    for tier in tiers_of(mr, &eligible) {
        let in_tier: Vec<usize> = eligible.iter().copied().filter(|&i| mr.routes[i].priority == tier).collect();
        if let Some(best) = serving {
            for i in in_tier {
                verdicts[i] = Some(format!(
                    "wrong tier: priority {tier} is a fallback while priority {best} has routes available"
                ));
            }
            continue;
        }
        let mut candidates = Vec::new();
        for i in in_tier {
            let route = &mr.routes[i];
            if route.server.at_capacity() {
                verdicts[i] = Some(Skip::Busy.to_string());
            } else if let Err(why) = policy.check(route) {
                verdicts[i] = Some(why.to_string());
            } else {
                candidates.push(i);
            }
        }
        if strategy == Strategy::WarmFirst && candidates.iter().any(|&i| policy.warm(&mr.routes[i], req.num_ctx)) {
            for &i in candidates.iter().filter(|&&i| !policy.warm(&mr.routes[i], req.num_ctx)) {
                verdicts[i] = Some("cold: warm_first uses the servers with the model loaded".into());
            }
        }
        if !candidates.is_empty() {
            serving = Some(tier);
        }
    }
    let verdicts = mr.routes.iter().cloned().zip(verdicts).collect();
    Explanation { source, serving, verdicts }
}
