//! The fleet: the servers drover can send to, what they have, and the routing table that
//! maps virtual models to them, as one immutable snapshot (`Fleet`) behind an `ArcSwap`.
//!
//! Owns: the snapshot and its build from settings and stored routes (this file), each
//! server and its live state (server.rs), health as pingora-load-balancing backends
//! (backends.rs) and drover's check (health.rs), the JSON client servers are asked with
//! (client.rs) and the fleet's gauges (gauges.rs).
//! May import: config, protocol, storage, telemetry.
//!
//! Per-server live state (health, cooldown, in-flight count, what models it has) sits in
//! `ServerState` behind atomics, shared by every snapshot that names the server, so a
//! reload of the routes never loses health or counters.

pub mod backends;
pub mod client;
pub mod gauges;
pub mod health;
pub mod server;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

pub(crate) use server::{FailPolicy, Server, Slot};

use crate::config::{RouteInput, RouteSpec, ServerSpec, Settings};
use crate::protocol::ollama::{canonical, canonical_model, Device, Kind, ServerUrl};
use crate::storage::store::StoredRoute;
use backends::Health;
use pingora::lb::Backend;

/// Where a route came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// `routes:` in the config file: read-only for the admin API.
    Config,
    /// A row of the `ollama_servers` table.
    Store,
    /// A server that lists the model in /api/tags, with no route naming it.
    Discovered,
}

/// One way to serve a virtual model: a server and the name it knows the model by.
pub struct Route {
    /// Row id for stored routes; position in `routes:` for config routes.
    pub(crate) id: Option<i64>,
    pub(crate) virtual_model: String,
    pub(crate) actual_model: String,
    pub(crate) server: Arc<Server>,
    pub(crate) weight: u32,
    pub(crate) priority: u32,
    pub(crate) device: Device,
    pub(crate) performance: f64,
    pub(crate) is_active: bool,
    pub(crate) skip_resource_check: bool,
    pub(crate) origin: Origin,
}

/// The routes of one virtual model, with the smooth weighted round-robin state over them.
pub(crate) struct ModelRoutes {
    pub(crate) routes: Vec<Arc<Route>>,
    /// nginx's smooth weighted round robin: one running weight per route, same order.
    pub(crate) current: Mutex<Vec<i64>>,
}

impl ModelRoutes {
    pub(crate) fn new(routes: Vec<Arc<Route>>) -> Self {
        let n = routes.len();
        ModelRoutes { routes, current: Mutex::new(vec![0; n]) }
    }
}

/// One immutable view of the fleet: servers by URL and routes by virtual model.
pub struct Fleet {
    pub servers: Vec<Arc<Server>>,
    pub(crate) by_url: HashMap<String, Arc<Server>>,
    /// By virtual model name as Ollama resolves it (`canonical`: "m" is "m:latest").
    pub(crate) routes: BTreeMap<String, ModelRoutes>,
    /// Round-robin counter for discovered models (equal weights).
    pub(crate) discovery_turn: AtomicUsize,
    /// Notified when a slot on any server is released: queued requests wait on it.
    pub(crate) released: Arc<Notify>,
    /// Health of every server (pingora-load-balancing), shared by successive snapshots.
    pub(crate) health: Arc<Health>,
}

impl Fleet {
    /// Builds the fleet from settings and stored routes, reusing live state of servers in
    /// `previous`, and makes its servers the membership of `health`.
    ///
    /// A server's probe_url and max_concurrency come from `servers:` or, failing that, from
    /// the first route naming it that sets them.
    /// The fleet from the settings' servers and routes, the `stored` routes, and the servers
    /// `discovered` by DNS (state/dns.rs); `previous` lends its servers' state to those kept.
    pub fn build(
        settings: &Settings,
        stored: &[StoredRoute],
        discovered: &[ServerSpec],
        health: &Arc<Health>,
        previous: Option<&Fleet>,
    ) -> Fleet {
        let mut specs: Vec<ServerSpec> = Vec::new();
        let mut merge = |spec: ServerSpec| -> String {
            let key = spec.url.as_str().to_string();
            match specs.iter_mut().find(|s| s.url == spec.url) {
                Some(known) => {
                    known.probe_url = known.probe_url.take().or(spec.probe_url);
                    known.max_concurrency = known.max_concurrency.or(spec.max_concurrency);
                    known.max_fails = known.max_fails.or(spec.max_fails);
                    known.fail_timeout = known.fail_timeout.or(spec.fail_timeout);
                    if known.credentials == Default::default() {
                        known.credentials = spec.credentials;
                    }
                }
                None => specs.push(spec),
            }
            key
        };
        for spec in settings.servers.iter().chain(discovered) {
            merge(spec.clone());
        }
        // Every route, whatever its source, as one validated spec with where it came from.
        let mut drafts: Vec<(String, RouteSpec, Origin, i64)> = Vec::new();
        for (i, r) in settings.routes.iter().enumerate() {
            drafts.push((merge(server_spec_of_route(r)), r.clone(), Origin::Config, i as i64));
        }
        for row in stored {
            // Rows were validated when written through the admin API; one edited by hand in
            // SQL may not be: skip it with a warning rather than refuse the whole table.
            match RouteInput::from(row).validate() {
                Ok(spec) => drafts.push((merge(server_spec_of_route(&spec)), spec, Origin::Store, row.id)),
                Err(bad) => {
                    let why: Vec<String> = bad.iter().map(|(field, e)| format!("{field} {e}")).collect();
                    log::warn!("ollama_servers row {} ignored: {}", row.id, why.join("; "));
                }
            }
        }
        if settings.servers.is_empty() && settings.dns_servers.is_empty() && drafts.is_empty() {
            // Nothing names a fleet: front the local Ollama, serving what it lists.
            merge(ServerSpec {
                url: ServerUrl::parse(crate::config::DEFAULT_SERVER).expect("default server URL is valid"),
                kind: Kind::Ollama,
                probe_url: None,
                max_concurrency: None,
                max_fails: None,
                fail_timeout: None,
                credentials: Default::default(),
                required_models: Vec::new(),
            });
        }

        let default_limit = settings.load_balancer.max_concurrency;
        let released = previous.map_or_else(|| Arc::new(Notify::new()), |p| p.released.clone());
        let health = health.clone();
        let mut servers: Vec<Arc<Server>> = Vec::new();
        let mut by_url: HashMap<String, Arc<Server>> = HashMap::new();
        for spec in specs {
            let key = spec.url.as_str().to_string();
            let max_concurrency = spec.max_concurrency.unwrap_or(default_limit);
            let lb = &settings.load_balancer;
            let fail_policy = FailPolicy {
                max_fails: spec.max_fails.unwrap_or(lb.max_fails),
                fail_timeout: spec.fail_timeout.unwrap_or(lb.fail_timeout),
                cooldown: lb.cooldown,
            };
            let old = previous.and_then(|p| p.by_url.get(&key));
            let server = match old {
                Some(o)
                    if o.kind == spec.kind
                        && o.probe_url == spec.probe_url
                        && o.max_concurrency == max_concurrency
                        && o.fail_policy == fail_policy
                        && o.credentials == spec.credentials =>
                {
                    o.clone()
                }
                // Settings changed: a new server, carrying on the old one's live state.
                _ => Arc::new(Server {
                    kind: spec.kind,
                    probe_url: spec.probe_url,
                    max_concurrency,
                    fail_policy,
                    credentials: spec.credentials,
                    backend: Health::backend(&spec.url),
                    health: health.clone(),
                    url: spec.url,
                    state: old.map_or_else(Arc::default, |o| o.state.clone()),
                    released: released.clone(),
                }),
            };
            servers.push(server.clone());
            by_url.insert(key, server);
        }
        let mut grouped: BTreeMap<String, Vec<Arc<Route>>> = BTreeMap::new();
        for (key, spec, origin, id) in drafts {
            let route = route_of(spec, origin, id, by_url[&key].clone());
            grouped.entry(canonical_model(&route.virtual_model)).or_default().push(Arc::new(route));
        }
        let routes = grouped.into_iter().map(|(m, rs)| (m, ModelRoutes::new(rs))).collect();
        // A server this build drops stays a member of the health view until the fleet that
        // still names it is replaced (`retire_departed`): a request reading that fleet in the
        // meantime would otherwise find its server unknown to the view, which reads as down.
        let mut members: BTreeSet<Backend> = servers.iter().map(|s| s.backend.clone()).collect();
        if let Some(p) = previous {
            members.extend(p.servers.iter().map(|s| s.backend.clone()));
        }
        health.set_members(members);
        Fleet { servers, by_url, routes, discovery_turn: AtomicUsize::new(0), released, health }
    }

    /// Once this fleet is published: the servers it no longer names leave the health view.
    pub(crate) fn retire_departed(&self) {
        self.health.set_members(self.servers.iter().map(|s| s.backend.clone()).collect());
    }

    /// The model's own routes (by its name as Ollama resolves it: "m" is "m:latest"), when at
    /// least one of them is active; otherwise it is served by discovery.
    pub(crate) fn named_routes(&self, model: &str) -> Option<&ModelRoutes> {
        self.routes.get(canonical(model).as_ref()).filter(|mr| mr.routes.iter().any(|r| r.is_active))
    }

    /// Every route that serves a model now: its active routes, else (discovery) every server
    /// that lists it. Empty when nothing serves it.
    pub(crate) fn serving_routes(&self, model: &str) -> Vec<Arc<Route>> {
        match self.named_routes(model) {
            Some(mr) => mr.routes.iter().filter(|r| r.is_active).cloned().collect(),
            None => self.discover(model),
        }
    }

    /// The names the servers know a model by (distinct, in route order).
    pub(crate) fn actual_models(&self, model: &str) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for r in self.serving_routes(model) {
            if !names.contains(&r.actual_model) {
                names.push(r.actual_model.clone());
            }
        }
        names
    }

    /// Routes a model has when no route names it: every server that lists it.
    pub(crate) fn discover(&self, model: &str) -> Vec<Arc<Route>> {
        let wanted = canonical_model(model);
        self.servers
            .iter()
            .filter_map(|s| {
                let inventory = s.inventory();
                if !inventory.names.contains(&wanted) {
                    return None;
                }
                let own = inventory.own_name(&wanted).unwrap_or(&wanted).to_string();
                Some(Arc::new(Route {
                    id: None,
                    virtual_model: wanted.clone(),
                    // The name the server lists it by (an openai-kind server checks it).
                    actual_model: own,
                    server: s.clone(),
                    weight: 100,
                    priority: 1,
                    device: Device::Gpu,
                    performance: 0.0,
                    is_active: true,
                    skip_resource_check: true,
                    origin: Origin::Discovered,
                }))
            })
            .collect()
    }

    /// Every model name a client can ask for: virtual names and what servers list.
    pub(crate) fn model_names(&self) -> Vec<String> {
        let mut names: HashSet<String> = self
            .routes
            .iter()
            .filter(|(_, mr)| mr.routes.iter().any(|r| r.is_active))
            .map(|(m, _)| m.clone())
            .collect();
        for s in &self.servers {
            names.extend(s.inventory().names.iter().cloned());
        }
        let mut names: Vec<String> = names.into_iter().collect();
        names.sort();
        names
    }
}

fn route_of(spec: RouteSpec, origin: Origin, id: i64, server: Arc<Server>) -> Route {
    Route {
        id: Some(id),
        virtual_model: spec.virtual_model_name,
        actual_model: spec.actual_model_name,
        server,
        weight: spec.weight,
        priority: spec.priority,
        device: spec.device,
        performance: spec.performance,
        is_active: spec.is_active,
        skip_resource_check: spec.skip_resource_check,
        origin,
    }
}

fn server_spec_of_route(r: &RouteSpec) -> ServerSpec {
    ServerSpec {
        url: r.server_url.clone(),
        kind: Kind::Ollama,
        probe_url: r.probe_url.clone(),
        max_concurrency: r.max_concurrency,
        max_fails: None,
        fail_timeout: None,
        credentials: Default::default(),
        required_models: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ollama::Inventory;
    use std::time::Duration;

    fn server(limit: usize) -> Arc<Server> {
        let url = ServerUrl::parse("http://a:1").unwrap();
        Arc::new(Server {
            backend: Health::backend(&url),
            health: Health::new(),
            url,
            kind: Kind::Ollama,
            probe_url: None,
            max_concurrency: limit,
            fail_policy: FailPolicy { cooldown: Duration::from_millis(30), ..FailPolicy::default() },
            credentials: Default::default(),
            state: Arc::default(),
            released: Arc::new(Notify::new()),
        })
    }

    #[test]
    fn reported_load_counts_others_and_a_full_reading_lasts_until_a_request_ends() {
        use crate::protocol::load::Reported;
        let s = server(8);
        let held: Vec<Slot> = (0..2).map(|_| s.try_acquire("m").unwrap()).collect();
        // Four slots: drover's two and one of another client's busy.
        s.set_reported(Reported { running: 3, slots: Some(4), ..Reported::default() }, "/slots", 0);
        assert_eq!(s.load_estimate(), 3, "two of drover's, one beyond them");
        assert!(!s.at_capacity());
        let third = s.try_acquire("m").unwrap();
        assert!(s.at_capacity(), "drover's three and the other's one fill the four slots");
        drop(third);
        // A waiting queue: full, until one of drover's requests there ends.
        s.set_reported(Reported { running: 2, waiting: 1, ..Reported::default() }, "/metrics", 0);
        assert!(s.reported_full() && s.at_capacity());
        let quick = s.try_acquire("m").unwrap();
        quick.give_back_quietly();
        assert!(s.reported_full(), "a slot held for an instant by a selection frees nothing");
        drop(held);
        assert!(!s.reported_full() && !s.at_capacity());
        s.clear_reported();
        assert_eq!((s.load_estimate(), s.reported().is_none()), (0, true));
    }

    /// A reload that drops a server: requests still reading the published fleet find the
    /// server ready until the new fleet is out and retires it.
    #[test]
    fn a_dropped_server_stays_in_the_view_until_its_fleet_is_replaced() {
        let settings = |yaml: &str| Settings::parse(yaml, None, &crate::config::Env::default()).unwrap();
        let health = Health::new();
        let both = Fleet::build(&settings("servers: [ 'http://a:1', 'http://b:1' ]\n"), &[], &[], &health, None);
        let b = both.by_url["http://b:1"].clone();
        assert!(b.healthy());
        let only_a = Fleet::build(&settings("servers: [ 'http://a:1' ]\n"), &[], &[], &health, Some(&both));
        assert!(b.healthy(), "the published fleet still names b");
        only_a.retire_departed();
        assert!(!b.healthy(), "the new fleet is out: b has left the view");
        assert!(only_a.by_url["http://a:1"].healthy());
    }

    #[test]
    fn slots_respect_the_limit_and_release_on_drop() {
        let s = server(2);
        let a = s.try_acquire("m").unwrap();
        let _b = s.try_acquire("m").unwrap();
        assert!(s.try_acquire("m").is_none());
        drop(a);
        assert!(s.try_acquire("m").is_some());
        assert_eq!(s.request_count(), 3);
    }

    #[test]
    fn idle_loaded_models_are_reclaimable() {
        let s = server(4);
        s.set_inventory(Inventory {
            loaded: vec![
                serde_json::json!({"name": "a:1b", "size": 100, "size_vram": 60}),
                serde_json::json!({"name": "b:1b", "size": 200, "size_vram": 150}),
            ],
            ..Inventory::default()
        });
        assert_eq!(s.idle_loaded_bytes(true), 210);
        let busy = s.try_acquire("b:1b").unwrap();
        assert_eq!((s.idle_loaded_bytes(true), s.idle_loaded_bytes(false)), (60, 100));
        drop(busy);
        assert_eq!(s.idle_loaded_bytes(true), 210);
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn with_policy(max_fails: u32, fail_timeout: Duration, cooldown: Duration) -> Arc<Server> {
        let policy = FailPolicy { max_fails, fail_timeout, cooldown };
        Arc::new(Server { fail_policy: policy, ..Arc::try_unwrap(server(1)).ok().unwrap() })
    }

    #[tokio::test(start_paused = true)]
    async fn max_fails_within_fail_timeout_start_a_cooldown() {
        let s = with_policy(3, ms(200), Duration::from_secs(60));
        assert!(!s.record_failure("a") && !s.record_failure("b"));
        assert!(s.cooling_down().is_none(), "two failures of three do not take it out");
        s.record_success();
        assert!(!s.record_failure("a") && !s.record_failure("b"), "a success started the count again");
        tokio::time::advance(ms(250)).await;
        assert!(!s.record_failure("c"), "the window expired: counting starts again");
        assert!(!s.record_failure("d"));
        assert!(s.record_failure("e"), "the third within the window does");
        assert_eq!(s.cooling_down(), Some(Duration::from_secs(60)));
        assert!(!s.record_failure("f"), "already cooling down: no new transition");
        assert_eq!(s.error_count(), 8);
        tokio::time::advance(ms(70)).await;
        assert_eq!(s.since_last_failure(), ms(70), "what panic mode compares");
    }

    /// The window is `fail_timeout` long, its end included: a failure exactly then still
    /// counts with the first, one a millisecond later starts a new count.
    #[tokio::test(start_paused = true)]
    async fn the_fail_timeout_window_ends_exactly_at_fail_timeout() {
        let at_the_end = with_policy(2, Duration::from_secs(10), Duration::from_secs(60));
        assert!(!at_the_end.record_failure("a"));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(at_the_end.record_failure("b"), "10 s after the first: the second of two in the window");

        let just_after = with_policy(2, Duration::from_secs(10), Duration::from_secs(60));
        assert!(!just_after.record_failure("a"));
        tokio::time::advance(Duration::from_secs(10) + ms(1)).await;
        assert!(!just_after.record_failure("b"), "a millisecond later: the first of a new window");
        assert!(just_after.record_failure("c"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cooldown_ends_exactly_when_it_is_over() {
        let s = server(1);
        assert!(s.record_failure("boom"));
        assert_eq!(s.cooling_down(), Some(ms(30)));
        tokio::time::advance(ms(29)).await;
        assert_eq!(s.cooling_down(), Some(ms(1)), "a millisecond left");
        tokio::time::advance(ms(1)).await;
        assert_eq!(s.cooling_down(), None, "over at 30 ms");
        assert_eq!(s.error_count(), 1);
        assert_eq!(s.last_error().as_deref(), Some("boom"));
        assert!(s.record_failure("again"), "a failure after the cooldown starts another");
    }

    /// Another drover's cooldown (shared state) only ever lengthens this one's; a passed
    /// health check ends it.
    #[tokio::test(start_paused = true)]
    async fn a_shared_cooldown_only_lengthens_and_a_passed_check_ends_it() {
        let s = server(1);
        assert!(s.record_failure("boom"));
        s.cool_down_for(ms(10));
        assert_eq!(s.cooling_down(), Some(ms(30)), "a shorter one does not cut it short");
        tokio::time::advance(ms(5)).await;
        s.cool_down_for(Duration::from_secs(2));
        assert_eq!(s.cooling_down(), Some(Duration::from_secs(2)));
        tokio::time::advance(Duration::from_secs(2) - ms(1)).await;
        assert_eq!(s.cooling_down(), Some(ms(1)));
        s.end_cooldown();
        assert_eq!(s.cooling_down(), None);
    }

    /// Retry-After: the server rests exactly that long, and a shorter one asked meanwhile
    /// does not cut the rest short. A rest is no failure.
    #[tokio::test(start_paused = true)]
    async fn a_rest_lasts_exactly_its_retry_after() {
        let s = server(1);
        assert_eq!(s.resting(), None);
        s.rest_for(Duration::from_secs(5));
        assert_eq!(s.resting(), Some(Duration::from_secs(5)));
        tokio::time::advance(Duration::from_secs(2)).await;
        s.rest_for(Duration::from_secs(1));
        assert_eq!(s.resting(), Some(Duration::from_secs(3)), "the longer rest holds");
        tokio::time::advance(Duration::from_secs(3) - ms(1)).await;
        assert_eq!(s.resting(), Some(ms(1)));
        tokio::time::advance(ms(1)).await;
        assert_eq!(s.resting(), None, "over 5 s after the first Retry-After");
        assert_eq!((s.rest_count(), s.error_count()), (2, 0));
        assert!(s.cooling_down().is_none());
    }
}
