//! Choosing a server for one attempt: eligibility, priority tiers, and the split inside a tier.
//!
//! The selector proposes; eligibility is policy: a route is a candidate when it is active,
//! its server is healthy, not cooling down, not yet tried for this request and speaks the
//! request's API. The lowest priority with a candidate under its concurrency limit wins;
//! inside it the strategy (weighted by default) picks one and takes a slot atomically.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::config::Strategy;
use crate::fleet::{Fleet, ModelRoutes, Route, Server, Slot};
use crate::protocol::ollama::Kind;

/// Why a route was not used.
#[derive(Debug, Clone, PartialEq)]
pub enum Skip {
    Inactive,
    AlreadyTried,
    Down,
    CoolingDown(std::time::Duration),
    /// An openai-kind server cannot answer Ollama's native /api calls.
    WrongApi,
    Busy,
    /// The resource check failed: the model would not fit (the text says why).
    NoMemory(String),
    /// The server's probe did not answer and resources.fail_open is false.
    ProbeUnreachable,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::Inactive => write!(f, "inactive"),
            Skip::AlreadyTried => write!(f, "already tried for this request"),
            Skip::Down => write!(f, "down"),
            Skip::CoolingDown(d) => write!(f, "cooling down ({}s left)", d.as_secs() + 1),
            Skip::WrongApi => write!(f, "openai-kind server cannot serve the Ollama /api"),
            Skip::Busy => write!(f, "busy (at max_concurrency)"),
            Skip::NoMemory(why) => write!(f, "not enough memory ({why})"),
            Skip::ProbeUnreachable => write!(f, "probe unreachable (resources.fail_open is false)"),
        }
    }
}

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
    /// No route names the model and no server lists it.
    UnknownModel,
}

/// What a request needs from a server.
pub struct Request<'a> {
    pub model: &'a str,
    /// True for Ollama's native /api endpoints, which openai-kind servers lack.
    pub native_api: bool,
    /// Servers already tried for this request.
    pub tried: &'a [Arc<Server>],
    /// Requests queued for this model (warm_first loads it elsewhere when its warm servers
    /// cannot take them all).
    pub waiting: usize,
    /// When every usable route is cooling down, use the one that failed longest ago
    /// rather than refuse (load_balancer.panic_mode).
    pub panic_mode: bool,
    /// `options.num_ctx`: a server with the model loaded at another context size is cold
    /// for this request (Ollama reloads it).
    pub num_ctx: Option<u32>,
    /// The conversation this request continues (affinity.rs), and the load bound
    /// (affinity.load_factor) under which it sticks to its server.
    pub affinity: Option<(u64, f64)>,
}

impl Request<'_> {
    /// A request for `model` with nothing else known: no retry, no context size, no conversation.
    pub fn plain(model: &str, native_api: bool) -> Request<'_> {
        Request { model, native_api, tried: &[], waiting: 0, panic_mode: false, num_ctx: None, affinity: None }
    }
}

/// Why `route` cannot take this request now, ignoring its concurrency limit.
pub fn ineligible(route: &Route, req: &Request) -> Option<Skip> {
    let s = &route.server;
    if !route.is_active {
        Some(Skip::Inactive)
    } else if req.tried.iter().any(|t| Arc::ptr_eq(t, s)) {
        Some(Skip::AlreadyTried)
    } else if req.native_api && s.kind == Kind::OpenAi {
        Some(Skip::WrongApi)
    } else if !s.healthy() {
        Some(Skip::Down)
    } else {
        s.cooling_down().map(Skip::CoolingDown)
    }
}

/// What selection asks of the rest of drover: the resource check, and where a model is warm.
pub trait Policy {
    /// What an admitted route holds until the request ends (the resource check: reserved memory).
    type Hold;
    /// Admits `route` once it has a slot; a cold load gets its memory reserved.
    fn admit(&self, route: &Route) -> Result<Option<Self::Hold>, Skip>;
    /// What `admit` would say now, changing nothing (for explanations).
    fn check(&self, route: &Route) -> Result<(), Skip>;
    /// Whether the route's model is loaded (or loading) on its server, usable at `num_ctx`.
    fn warm(&self, route: &Route, num_ctx: Option<u32>) -> bool;
}

/// No resource check; warm means listed by the server's last /api/ps.
pub struct NoChecks;

impl Policy for NoChecks {
    type Hold = ();

    fn admit(&self, _: &Route) -> Result<Option<()>, Skip> {
        Ok(None)
    }

    fn check(&self, _: &Route) -> Result<(), Skip> {
        Ok(())
    }

    fn warm(&self, route: &Route, num_ctx: Option<u32>) -> bool {
        route.server.inventory().warm_for(&route.actual_model, num_ctx)
    }
}

/// The routes a model has: its active rows, else (discovery) the servers that list it, rotated.
pub fn routes_of(fleet: &Fleet, model: &str) -> Option<ModelRoutesRef> {
    match fleet.named_routes(model) {
        Some(_) => Some(ModelRoutesRef::Named),
        None => {
            let found = fleet.discover(model);
            if found.is_empty() {
                return None;
            }
            // Discovered routes are all equal: rotate a shared counter instead of keeping weights.
            let turn = fleet.discovery_turn.fetch_add(1, Ordering::Relaxed);
            let n = found.len();
            Some(ModelRoutesRef::Discovered(ModelRoutes::new((0..n).map(|i| found[(turn + i) % n].clone()).collect())))
        }
    }
}

/// Where a model's routes come from for one request.
pub enum ModelRoutesRef {
    Named,
    Discovered(ModelRoutes),
}

impl ModelRoutesRef {
    pub fn get<'a>(&'a self, fleet: &'a Fleet, model: &str) -> &'a ModelRoutes {
        match self {
            ModelRoutesRef::Named => &fleet.routes[model],
            ModelRoutesRef::Discovered(mr) => mr,
        }
    }
}

pub fn select<P: Policy>(fleet: &Fleet, strategy: Strategy, req: &Request, policy: &P) -> Selection<P::Hold> {
    match routes_of(fleet, req.model) {
        None => Selection::UnknownModel,
        Some(found) => {
            let strategy = if matches!(found, ModelRoutesRef::Discovered(_)) { Strategy::Weighted } else { strategy };
            select_among(found.get(fleet, req.model), strategy, req, policy)
        }
    }
}

/// Routes sorted out for one request: the eligible ones (indices into `mr.routes`), and
/// why each other one is not (inactive routes included). In panic mode, when nothing is
/// eligible but some routes only cool down, the one that failed longest ago is eligible.
struct Sorted {
    eligible: Vec<usize>,
    skipped: Vec<(usize, Skip)>,
}

fn sort_out(mr: &ModelRoutes, req: &Request) -> Sorted {
    let mut sorted = Sorted { eligible: Vec::new(), skipped: Vec::new() };
    for (i, r) in mr.routes.iter().enumerate() {
        match ineligible(r, req) {
            None => sorted.eligible.push(i),
            Some(why) => sorted.skipped.push((i, why)),
        }
    }
    if sorted.eligible.is_empty() && req.panic_mode {
        // Panic mode: one request's failure must not leave a model with no server at all;
        // the route that failed longest ago is the likeliest to have recovered.
        let oldest = sorted
            .skipped
            .iter()
            .filter(|(_, why)| matches!(why, Skip::CoolingDown(_)))
            .max_by_key(|(i, _)| mr.routes[*i].server.since_last_failure())
            .map(|(i, _)| *i);
        if let Some(i) = oldest {
            sorted.skipped.retain(|(j, _)| *j != i);
            sorted.eligible.push(i);
        }
    }
    sorted
}

/// The priorities of `eligible` routes, best first.
fn tiers_of(mr: &ModelRoutes, eligible: &[usize]) -> Vec<u32> {
    let mut tiers: Vec<u32> = eligible.iter().map(|&i| mr.routes[i].priority).collect();
    tiers.sort_unstable();
    tiers.dedup();
    tiers
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
            let warm: Vec<usize> =
                in_tier.iter().copied().filter(|&i| policy.warm(&mr.routes[i], req.num_ctx)).collect();
            let warm_open: Vec<usize> = open.iter().copied().filter(|i| warm.contains(i)).collect();
            let warm_capacity: usize = warm.iter().map(|&i| mr.routes[i].server.max_concurrency).sum();
            if !warm_open.is_empty() {
                open = warm_open;
            } else if !warm.is_empty() && req.waiting < warm_capacity {
                // Waiting for a warm server beats loading the model again elsewhere.
                return Selection::AllBusy { memory: None };
            } else if req.num_ctx.is_some() {
                // A load where the model is not running at another context size does not
                // take it away from the requests using that size.
                let clash = |i: &usize| policy.warm(&mr.routes[*i], None);
                if open.iter().any(|i| !clash(i)) {
                    open.retain(|i| !clash(i));
                }
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
    Selection::Unavailable(reasons.join("; "))
}

/// How a request for a model would be served now, route by route, as `select` decides it
/// but without taking a slot or reserving memory (the resource check runs as a dry run).
pub struct Explanation {
    /// "routes" (named by routes), "discovery" (servers that list it) or "unknown".
    pub source: &'static str,
    /// The priority that serves now, if any route can.
    pub serving: Option<u32>,
    /// Every route, with `None` when it is among those a request would pick from, or why not.
    pub verdicts: Vec<(Arc<Route>, Option<String>)>,
}

pub fn explain<P: Policy>(fleet: &Fleet, strategy: Strategy, req: &Request, policy: &P) -> Explanation {
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

/// Picks one of `open` (indices into `mr.routes`, non-empty) by the strategy.
fn pick(mr: &ModelRoutes, strategy: Strategy, open: &[usize]) -> usize {
    match strategy {
        // warm_first has already narrowed `open` to warm routes where it could.
        Strategy::Weighted | Strategy::WarmFirst => smooth_weighted(mr, open),
        Strategy::LeastBusy => *open
            .iter()
            .min_by(|&&a, &&b| {
                let load = |i: usize| {
                    let r = &mr.routes[i];
                    (r.server.in_flight() as f64 + 1.0) / r.weight as f64
                };
                load(a).total_cmp(&load(b))
            })
            .expect("open is not empty"),
    }
}

/// nginx's smooth weighted round robin over a subset: deterministic, and weights 30/70
/// give exactly 3 of 10 and 7 of 10 in every run of ten picks, interleaved.
fn smooth_weighted(mr: &ModelRoutes, open: &[usize]) -> usize {
    let mut current = mr.current.lock().unwrap();
    let total: i64 = open.iter().map(|&i| mr.routes[i].weight as i64).sum();
    let mut best = open[0];
    for &i in open {
        current[i] += mr.routes[i].weight as i64;
        if current[i] > current[best] {
            best = i;
        }
    }
    current[best] -= total;
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Env, Settings};
    use crate::fleet::backends::Health;
    use std::time::Duration;

    fn fleet(yaml: impl AsRef<str>) -> Fleet {
        Fleet::build(&Settings::parse(yaml.as_ref(), None, &Env::default()).unwrap(), &[], &Health::new(), None)
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

    #[test]
    fn panic_mode_tries_the_route_that_failed_longest_ago() {
        let f = fleet("load_balancer: { max_fails: 1 }\n".to_string() + TWO_TIERS);
        for i in [2, 0, 1] {
            f.servers[i].record_failure("503");
            std::thread::sleep(Duration::from_millis(5));
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
                assert_eq!(r.actual_model, "llama3");
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
