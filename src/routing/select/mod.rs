//! Choosing a server for one attempt: eligibility, priority tiers, and the split inside a tier.
//!
//! The selector proposes; eligibility is policy (eligible.rs): a route is a candidate when it
//! is active, its server is healthy, not cooling down, not yet tried for this request and
//! speaks the request's API. The lowest priority with a candidate under its concurrency
//! limit wins; inside it the strategy picks one and takes a slot atomically. One file per
//! strategy, as pingora-load-balancing's `selection/` has: weighted.rs (nginx's smooth
//! weighted round robin, the default), least_busy.rs, warm_first.rs (narrows the tier to
//! where the model is loaded, then weighted). explain.rs is the same decision as a dry run.

mod eligible;
mod explain;
mod least_busy;
mod warm_first;
mod weighted;

use std::sync::Arc;

pub(crate) use eligible::{ineligible, routes_of, ModelRoutesRef};
pub use eligible::{NoChecks, Policy, Request, Skip};
pub(crate) use explain::{explain, Explanation};

use crate::config::Strategy;
use crate::fleet::{Fleet, ModelRoutes, Route, Slot};
use eligible::{sort_out, tiers_of, Sorted};

/// The result of one selection.
pub enum Selection<H> {
    /// A route with a slot taken on its server, and what the policy holds for it (the
    /// memory reserved for a cold load).
    Chosen(Arc<Route>, Slot, Option<H>),
    /// Routes are eligible but each is at its concurrency limit or lacks the memory now:
    /// wait and retry. `memory` says why, when memory is what stands in the way.
    AllBusy { memory: Option<String> },
    /// Routes exist but none can be used; the text says why, server by server.
    Unavailable(String),
    /// Every route not yet tried rests, as its server asked (429 with Retry-After), the
    /// first for this long yet.
    Resting(std::time::Duration),
    /// No route names the model and no server lists it.
    UnknownModel,
}

pub fn select<P: Policy>(fleet: &Fleet, strategy: Strategy, req: &Request, policy: &P) -> Selection<P::Hold> {
    select_from(routes_of(fleet, req.model).as_ref(), strategy, req, policy)
}

/// `select` over the routes `routes_of` found for this pick (`None`: the model is unknown).
pub(crate) fn select_from<P: Policy>(
    found: Option<&ModelRoutesRef>,
    strategy: Strategy,
    req: &Request,
    policy: &P,
) -> Selection<P::Hold> {
    match found {
        None => Selection::UnknownModel,
        Some(found) => {
            let strategy = if matches!(found, ModelRoutesRef::Discovered(_)) { Strategy::Weighted } else { strategy };
            select_among(found.routes(), strategy, req, policy)
        }
    }
}

fn select_among<P: Policy>(mr: &ModelRoutes, strategy: Strategy, req: &Request, policy: &P) -> Selection<P::Hold> {
    let Sorted { eligible, skipped } = sort_out(mr, req);
    let mut reasons: Vec<String> = skipped
        .iter()
        .filter(|(_, why)| *why != Skip::Inactive)
        .map(|(i, why)| format!("{} {why}", mr.routes[*i].server.url.as_str()))
        .collect();
    let tiers = tiers_of(mr, &eligible);
    let mut busy = false;
    let mut short_of_memory: Vec<String> = Vec::new();
    for tier in tiers {
        let in_tier: Vec<usize> = eligible.iter().copied().filter(|&i| mr.routes[i].priority == tier).collect();
        let mut open: Vec<usize> = in_tier.iter().copied().filter(|&i| !mr.routes[i].server.at_capacity()).collect();
        busy |= open.len() < in_tier.len();
        if strategy == Strategy::WarmFirst {
            match warm_first::narrow(mr, &in_tier, open, req, policy) {
                Some(narrowed) => open = narrowed,
                // Waiting for a warm server beats loading the model again elsewhere.
                None => return Selection::AllBusy { memory: None },
            }
        }
        // A slot can be taken by another request between the check and the pick, and the
        // resource check can refuse the pick: drop that route and pick again.
        let by_affinity = req.affinity.map(|(key, factor)| crate::routing::affinity::order(mr, &in_tier, key, factor));
        while !open.is_empty() {
            let i = match &by_affinity {
                // The conversation's server first, then the next on its ring, among those still open.
                Some(order) => {
                    order.iter().copied().find(|i| open.contains(i)).unwrap_or_else(|| pick(mr, strategy, &open))
                }
                None => pick(mr, strategy, &open),
            };
            open.retain(|&j| j != i);
            let route = &mr.routes[i];
            let Some(slot) = route.server.try_acquire(&route.actual_model) else {
                busy = true;
                continue;
            };
            match policy.admit(route) {
                Ok(reservation) => return Selection::Chosen(route.clone(), slot, reservation),
                Err(why @ Skip::NoMemory(_)) => short_of_memory.push(format!("{} {why}", route.server.url.as_str())),
                Err(why) => reasons.push(format!("{} {why}", route.server.url.as_str())),
            }
            slot.give_back_quietly();
        }
    }
    if busy || !short_of_memory.is_empty() {
        let memory = (!short_of_memory.is_empty()).then(|| short_of_memory.join("; "));
        return Selection::AllBusy { memory };
    }
    // Every route not tried yet rests, as its server asked: the soonest any takes requests again.
    let rests: Option<Vec<std::time::Duration>> = skipped
        .iter()
        .filter(|(_, why)| !matches!(why, Skip::Inactive | Skip::AlreadyTried))
        .map(|(_, why)| match why {
            Skip::Resting(d) => Some(*d),
            _ => None,
        })
        .collect();
    if let Some(soonest) = rests.and_then(|r| r.into_iter().min()) {
        return Selection::Resting(soonest);
    }
    Selection::Unavailable(reasons.join("; "))
}

/// Picks one of `open` (indices into `mr.routes`, non-empty) by the strategy.
fn pick(mr: &ModelRoutes, strategy: Strategy, open: &[usize]) -> usize {
    match strategy {
        // warm_first has already narrowed `open` to warm routes where it could.
        Strategy::Weighted | Strategy::WarmFirst => weighted::pick(mr, open),
        Strategy::LeastBusy => least_busy::pick(mr, open),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Env, Settings};
    use crate::fleet::backends::Health;
    use crate::fleet::Server;
    use std::time::Duration;

    fn fleet(yaml: impl AsRef<str>) -> Fleet {
        Fleet::build(&Settings::parse(yaml.as_ref(), None, &Env::default()).unwrap(), &[], &[], &Health::new(), None)
    }

    const TWO_TIERS: &str = "routes:\n\
      - { virtual_model_name: m, server_url: 'http://a:1', actual_model_name: 'm:7b', weight: 30, priority: 1 }\n\
      - { virtual_model_name: m, server_url: 'http://b:1', actual_model_name: 'm:7b', weight: 70, priority: 1 }\n\
      - { virtual_model_name: m, server_url: 'http://c:1', actual_model_name: 'm:3b', weight: 1, priority: 2 }\n";

    fn pick_server(f: &Fleet, tried: &[Arc<Server>]) -> Option<String> {
        let req = Request { tried, ..Request::plain("m", true) };
        match select(f, Strategy::Weighted, &req, &NoChecks) {
            Selection::Chosen(r, _slot, _) => Some(r.server.url.as_str().to_string()),
            _ => None,
        }
    }

    #[test]
    fn weights_split_exactly_and_interleave() {
        let f = fleet(TWO_TIERS);
        let picks: Vec<String> = (0..1000).map(|_| pick_server(&f, &[]).unwrap()).collect();
        let a = picks.iter().filter(|p| p.as_str() == "http://a:1").count();
        assert_eq!(a, 300);
        assert!(picks.iter().all(|p| p != "http://c:1"), "backup tier unused while primary is up");
        // Smooth: never more than three b's in a row with 30/70.
        let longest_b = picks.split(|p| p.as_str() == "http://a:1").map(|run| run.len()).max().unwrap();
        assert!(longest_b <= 3, "runs of b up to {longest_b}");
    }

    #[test]
    fn backup_tier_takes_over_and_hands_back() {
        let f = fleet(TWO_TIERS);
        for s in &f.servers[..2] {
            s.set_enabled(false);
        }
        assert_eq!(pick_server(&f, &[]).as_deref(), Some("http://c:1"));
        f.servers[0].set_enabled(true);
        assert_eq!(pick_server(&f, &[]).as_deref(), Some("http://a:1"));
    }

    #[test]
    fn tried_and_cooling_servers_are_skipped() {
        let f = fleet(TWO_TIERS);
        for _ in 0..3 {
            f.servers[1].record_failure("503"); // load_balancer.max_fails defaults to 3
        }
        let tried = vec![f.servers[0].clone()];
        assert_eq!(pick_server(&f, &tried).as_deref(), Some("http://c:1"));
        let tried = vec![f.servers[0].clone(), f.servers[2].clone()];
        let req = Request { tried: &tried, ..Request::plain("m", true) };
        match select(&f, Strategy::Weighted, &req, &NoChecks) {
            Selection::Unavailable(why) => {
                assert!(why.contains("http://a:1 already tried"), "{why}");
                assert!(why.contains("cooling down"), "{why}");
            }
            _ => panic!("expected unavailable"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_when_every_untried_route_rests_is_the_model_resting() {
        let f = fleet(TWO_TIERS);
        f.servers[0].rest_for(Duration::from_secs(30));
        f.servers[1].rest_for(Duration::from_secs(5));
        assert_eq!(pick_server(&f, &[]).as_deref(), Some("http://c:1"), "the third does not rest");
        let tried = vec![f.servers[2].clone()];
        let req = Request { tried: &tried, ..Request::plain("m", true) };
        match select(&f, Strategy::Weighted, &req, &NoChecks) {
            Selection::Resting(left) => assert_eq!(left, Duration::from_secs(5), "the soonest back"),
            _ => panic!("expected resting"),
        }
        // One that cools down after failures instead: not a rate limit, the model is unavailable.
        let f = fleet(TWO_TIERS);
        f.servers[0].rest_for(Duration::from_secs(30));
        for _ in 0..3 {
            f.servers[1].record_failure("503");
        }
        let tried = vec![f.servers[2].clone()];
        let req = Request { tried: &tried, ..Request::plain("m", true) };
        assert!(matches!(select(&f, Strategy::Weighted, &req, &NoChecks), Selection::Unavailable(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn panic_mode_tries_the_route_that_failed_longest_ago() {
        let f = fleet("load_balancer: { max_fails: 1 }\n".to_string() + TWO_TIERS);
        for i in [2, 0, 1] {
            f.servers[i].record_failure("503");
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        let req = Request::plain("m", true);
        assert!(matches!(select(&f, Strategy::Weighted, &req, &NoChecks), Selection::Unavailable(_)));
        let panic = Request { panic_mode: true, ..req };
        for _ in 0..3 {
            let Selection::Chosen(r, _, _) = select(&f, Strategy::Weighted, &panic, &NoChecks) else { panic!() };
            assert_eq!(r.server.url.as_str(), "http://c:1", "c failed first");
        }
        // A server that is down (here: taken out by hand) is never used, panic or not.
        f.servers[2].set_enabled(false);
        let Selection::Chosen(r, _, _) = select(&f, Strategy::Weighted, &panic, &NoChecks) else { panic!() };
        assert_eq!(r.server.url.as_str(), "http://a:1");
    }

    /// Refuses one server for memory, as the resource check would.
    struct ShortOn(&'static str);

    impl Policy for ShortOn {
        type Hold = ();

        fn admit(&self, route: &Route) -> Result<Option<()>, Skip> {
            self.check(route).map(|_| None)
        }

        fn check(&self, route: &Route) -> Result<(), Skip> {
            match route.server.url.as_str() == self.0 {
                true => Err(Skip::NoMemory("needs 9 GB".into())),
                false => Ok(()),
            }
        }

        fn warm(&self, _: &Route, _: Option<u32>) -> bool {
            false
        }
    }

    #[test]
    fn explain_is_the_selection_without_taking_anything() {
        let f = fleet(TWO_TIERS);
        let req = Request { panic_mode: true, ..Request::plain("m", true) };
        let verdict = |e: &Explanation, url: &str| {
            e.verdicts.iter().find(|(r, _)| r.server.url.as_str() == url).unwrap().1.clone()
        };
        let e = explain(&f, Strategy::Weighted, &req, &NoChecks);
        assert_eq!((e.source, e.serving), ("routes", Some(1)));
        assert_eq!(verdict(&e, "http://a:1"), None);
        assert!(verdict(&e, "http://c:1").unwrap().starts_with("wrong tier"));
        assert_eq!(f.servers.iter().map(|s| s.in_flight()).sum::<usize>(), 0, "no slot taken");

        // Memory short on a: explain says so, and selection never picks it.
        let policy = ShortOn("http://a:1");
        let e = explain(&f, Strategy::Weighted, &req, &policy);
        assert!(verdict(&e, "http://a:1").unwrap().contains("not enough memory (needs 9 GB)"));
        for _ in 0..20 {
            let Selection::Chosen(r, _, _) = select(&f, Strategy::Weighted, &req, &policy) else { panic!() };
            assert_eq!(r.server.url.as_str(), "http://b:1");
        }
        // The primary tier down: the backup serves, in both.
        f.servers[0].set_enabled(false);
        f.servers[1].set_enabled(false);
        let e = explain(&f, Strategy::Weighted, &req, &NoChecks);
        assert_eq!(e.serving, Some(2));
        assert_eq!(verdict(&e, "http://a:1").as_deref(), Some("down"));
        let Selection::Chosen(r, _, _) = select(&f, Strategy::Weighted, &req, &NoChecks) else { panic!() };
        assert_eq!(r.server.url.as_str(), "http://c:1");
        assert_eq!(explain(&f, Strategy::Weighted, &Request { model: "zzz", ..req }, &NoChecks).source, "unknown");
    }

    #[test]
    fn full_tier_overflows_then_reports_busy() {
        let f = fleet(
            "load_balancer: { max_concurrency: 1 }\nroutes:\n\
             - { virtual_model_name: m, server_url: 'http://a:1', priority: 1 }\n\
             - { virtual_model_name: m, server_url: 'http://b:1', priority: 2 }\n",
        );
        let req = Request::plain("m", true);
        let Selection::Chosen(first, _s1, _) = select(&f, Strategy::Weighted, &req, &NoChecks) else { panic!() };
        let Selection::Chosen(second, _s2, _) = select(&f, Strategy::Weighted, &req, &NoChecks) else { panic!() };
        assert_eq!(first.server.url.as_str(), "http://a:1");
        assert_eq!(second.server.url.as_str(), "http://b:1");
        assert!(matches!(select(&f, Strategy::Weighted, &req, &NoChecks), Selection::AllBusy { memory: None }));
    }

    #[test]
    fn unknown_and_discovered_models() {
        let f = fleet("servers: [ 'http://a:1', 'http://b:1' ]\n");
        let req = Request::plain("llama3", true);
        assert!(matches!(select(&f, Strategy::Weighted, &req, &NoChecks), Selection::UnknownModel));
        for s in &f.servers {
            let mut inv = crate::protocol::ollama::Inventory::default();
            inv.names.insert("llama3:latest".into());
            s.set_inventory(inv);
        }
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4 {
            if let Selection::Chosen(r, _, _) = select(&f, Strategy::Weighted, &req, &NoChecks) {
                assert_eq!(r.actual_model, "llama3:latest", "as Ollama resolves it (no tags listed)");
                seen.insert(r.server.url.as_str().to_string());
            }
        }
        assert_eq!(seen.len(), 2, "discovery rotates over servers that list the model");
    }

    #[test]
    fn openai_servers_only_serve_v1() {
        let f = fleet(
            "servers: [ { url: 'http://o:1', kind: openai } ]\nroutes:\n\
             - { virtual_model_name: m, server_url: 'http://o:1' }\n",
        );
        let native = Request::plain("m", true);
        assert!(matches!(select(&f, Strategy::Weighted, &native, &NoChecks), Selection::Unavailable(_)));
        let v1 = Request::plain("m", false);
        assert!(matches!(select(&f, Strategy::Weighted, &v1, &NoChecks), Selection::Chosen(..)));
    }

    #[test]
    fn warm_first_prefers_loaded_model() {
        let f = fleet(
            "routes:\n\
             - { virtual_model_name: m, server_url: 'http://a:1', actual_model_name: 'm:7b', weight: 90 }\n\
             - { virtual_model_name: m, server_url: 'http://b:1', actual_model_name: 'm:7b', weight: 10 }\n",
        );
        let mut inv = crate::protocol::ollama::Inventory::default();
        inv.loaded_names.insert("m:7b".into());
        f.servers[1].set_inventory(inv);
        let req = Request::plain("m", true);
        for _ in 0..10 {
            let Selection::Chosen(r, _, _) = select(&f, Strategy::WarmFirst, &req, &NoChecks) else { panic!() };
            assert_eq!(r.server.url.as_str(), "http://b:1");
        }
    }
}
