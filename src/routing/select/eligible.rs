//! Eligibility: what a request needs from a server (`Request`), why a route cannot take it
//! (`Skip`), what selection asks of the rest of drover (`Policy`: the resource check and
//! warmth), and a model's routes sorted into eligible ones by priority tier.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::fleet::{Fleet, ModelRoutes, Route, Server};
use crate::protocol::ollama::Kind;

/// Why a route was not used.
#[derive(Debug, Clone, PartialEq)]
pub enum Skip {
    Inactive,
    AlreadyTried,
    Down,
    CoolingDown(std::time::Duration),
    /// It answered 429 (or 503) with Retry-After: resting for this long yet.
    Resting(std::time::Duration),
    /// It refused the credentials drover sends it.
    CredentialsRefused,
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
            Skip::Resting(d) => write!(f, "rate-limited, resting as it asked ({}s left)", d.as_secs() + 1),
            Skip::CredentialsRefused => write!(f, "down: upstream credentials refused"),
            Skip::WrongApi => write!(f, "openai-kind server cannot serve the Ollama /api"),
            Skip::Busy => write!(f, "busy (at max_concurrency)"),
            Skip::NoMemory(why) => write!(f, "not enough memory ({why})"),
            Skip::ProbeUnreachable => write!(f, "probe unreachable (resources.fail_open is false)"),
        }
    }
}

/// What a request needs from a server.
pub struct Request<'a> {
    pub(crate) model: &'a str,
    /// True for Ollama's native /api endpoints, which openai-kind servers lack.
    pub(crate) native_api: bool,
    /// Servers already tried for this request.
    pub(crate) tried: &'a [Arc<Server>],
    /// Requests queued for this model (warm_first loads it elsewhere when its warm servers
    /// cannot take them all). Always 0 with load_balancer.replicas on: copies are then
    /// placed by the replica keeper, not by a request that would wait for the load.
    pub(crate) waiting: usize,
    /// When every usable route is cooling down, use the one that failed longest ago
    /// rather than refuse (load_balancer.panic_mode).
    pub(crate) panic_mode: bool,
    /// `options.num_ctx`: a server with the model loaded at another context size is cold
    /// for this request (Ollama reloads it).
    pub(crate) num_ctx: Option<u32>,
    /// The conversation this request continues (affinity.rs), and the load bound
    /// (affinity.load_factor) under which it sticks to its server.
    pub(crate) affinity: Option<(u64, f64)>,
}

impl Request<'_> {
    /// A request for `model` with nothing else known: no retry, no context size, no conversation.
    pub fn plain(model: &str, native_api: bool) -> Request<'_> {
        Request { model, native_api, tried: &[], waiting: 0, panic_mode: false, num_ctx: None, affinity: None }
    }
}

/// Why `route` cannot take this request now, ignoring its concurrency limit.
pub(crate) fn ineligible(route: &Route, req: &Request) -> Option<Skip> {
    let s = &route.server;
    if !route.is_active {
        Some(Skip::Inactive)
    } else if req.tried.iter().any(|t| Arc::ptr_eq(t, s)) {
        Some(Skip::AlreadyTried)
    } else if req.native_api && s.kind == Kind::OpenAi {
        Some(Skip::WrongApi)
    } else if !s.healthy() {
        Some(Skip::Down)
    } else if s.refusing() {
        Some(Skip::CredentialsRefused)
    } else if let Some(d) = s.resting() {
        Some(Skip::Resting(d))
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

/// The routes a model has: its active rows, else (discovery) the servers that list it,
/// rotated. Looked up once per pick: the caller keeps what this found.
pub(crate) fn routes_of<'a>(fleet: &'a Fleet, model: &str) -> Option<ModelRoutesRef<'a>> {
    match fleet.named_routes(model) {
        Some(mr) => Some(ModelRoutesRef::Named(mr)),
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

/// A model's routes for one pick, and where they come from.
pub(crate) enum ModelRoutesRef<'a> {
    /// Its own routes in the fleet snapshot.
    Named(&'a ModelRoutes),
    /// Every server that lists it, for this pick only.
    Discovered(ModelRoutes),
}

impl ModelRoutesRef<'_> {
    pub(crate) fn routes(&self) -> &ModelRoutes {
        match self {
            ModelRoutesRef::Named(mr) => mr,
            ModelRoutesRef::Discovered(mr) => mr,
        }
    }
}

/// Routes sorted out for one request: the eligible ones (indices into `mr.routes`), and
/// why each other one is not (inactive routes included). In panic mode, when nothing is
/// eligible but some routes only cool down, the one that failed longest ago is eligible.
pub(super) struct Sorted {
    pub(super) eligible: Vec<usize>,
    pub(super) skipped: Vec<(usize, Skip)>,
}

pub(super) fn sort_out(mr: &ModelRoutes, req: &Request) -> Sorted {
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
pub(super) fn tiers_of(mr: &ModelRoutes, eligible: &[usize]) -> Vec<u32> {
    let mut tiers: Vec<u32> = eligible.iter().map(|&i| mr.routes[i].priority).collect();
    tiers.sort_unstable();
    tiers.dedup();
    tiers
}
