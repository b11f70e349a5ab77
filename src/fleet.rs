//! The fleet snapshot: servers with their live state, and the routing table that maps virtual models to them.
//!
//! A `Fleet` is immutable once built and is read by the request path through an `ArcSwap`.
//! Per-server live state (health, cooldown, in-flight count, what models it has) sits in
//! `ServerState` behind atomics, shared by every snapshot that names the server, so a
//! reload of the routes never loses health or counters.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use pingora::upstreams::peer::HttpPeer;
use serde_json::Value;
use tokio::sync::Notify;

use crate::backends::Health;
use crate::config::{RouteInput, RouteSpec, ServerSpec, Settings};
use crate::ollama::{canonical_model, names_of, Device, Inventory, Kind, ServerUrl};
use crate::store::StoredRoute;
use pingora::lb::Backend;

#[derive(Default, Clone, Copy)]
struct ModelUse {
    in_flight: usize,
    last_used: Option<Instant>,
}

/// A loaded model no request through drover is using.
pub struct IdleModel {
    pub name: String,
    pub bytes: u64,
    pub last_used: Option<Instant>,
}

/// Live state of one server, shared across snapshots.
pub struct ServerState {
    /// Milliseconds since `epoch` until which the server is skipped after failed requests.
    cooldown_until_ms: AtomicU64,
    /// Failed requests counted in the current `fail_timeout` window (nginx's max_fails).
    fails: Mutex<FailWindow>,
    /// Whether `fails` counts any: a success then resets it (read without the lock).
    failing: AtomicBool,
    /// Taken out of selection by hand (the health view's enablement, shown in /lb-stats).
    drained: AtomicBool,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    errors: AtomicU64,
    inventory: ArcSwap<Inventory>,
    last_error: Mutex<Option<String>>,
    resolved: Mutex<Option<SocketAddr>>,
    /// Per model (canonical name): requests in flight and when the last one ended. A
    /// loaded model with none in flight is idle; the longest idle is unloaded first.
    active_models: Mutex<HashMap<String, ModelUse>>,
    epoch: Instant,
}

impl Default for ServerState {
    fn default() -> Self {
        ServerState {
            cooldown_until_ms: AtomicU64::new(0),
            fails: Mutex::new(FailWindow::default()),
            failing: AtomicBool::new(false),
            drained: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            inventory: ArcSwap::from_pointee(Inventory::default()),
            last_error: Mutex::new(None),
            resolved: Mutex::new(None),
            active_models: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
        }
    }
}

/// Failed requests since `started_ms` (milliseconds since the state's epoch), and when the
/// last one was: an `Instant`, as panic mode compares it between servers that may have failed
/// within the same millisecond (one request's attempts, one after the other).
#[derive(Default, Clone, Copy)]
struct FailWindow {
    started_ms: u64,
    count: u32,
    last: Option<Instant>,
}

/// When failed requests take a server out: `max_fails` within `fail_timeout` cool it down for `cooldown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailPolicy {
    pub max_fails: u32,
    pub fail_timeout: Duration,
    pub cooldown: Duration,
}

impl Default for FailPolicy {
    fn default() -> Self {
        FailPolicy { max_fails: 1, fail_timeout: Duration::from_secs(10), cooldown: Duration::from_secs(10) }
    }
}

/// One upstream server: identity, kind and limits, plus its live state.
pub struct Server {
    pub url: ServerUrl,
    pub kind: Kind,
    pub probe_url: Option<ServerUrl>,
    pub max_concurrency: usize,
    pub fail_policy: FailPolicy,
    /// Its API key or headers (servers: api_key, headers, forward_client_auth).
    pub credentials: crate::config::Credentials,
    /// This server in the health view (pingora-load-balancing), which decides `healthy()`.
    pub backend: Backend,
    health: Arc<Health>,
    pub state: Arc<ServerState>,
    /// Shared by the whole fleet: notified whenever any slot is released.
    released: Arc<Notify>,
}

impl Server {
    /// Up by the health checks (rise/fall), and not taken out by hand. A server starts up,
    /// as Pingora's backends do: a dead one is found by the first check or the first
    /// request, whose retry goes elsewhere.
    pub fn healthy(&self) -> bool {
        self.health.ready(&self.backend)
    }

    /// Takes the server out of selection by hand (drain), or puts it back.
    pub fn set_enabled(&self, enabled: bool) {
        self.state.drained.store(!enabled, Ordering::Relaxed);
        self.health.set_enabled(&self.backend, enabled)
    }

    /// Taken out by hand (admin API: POST /admin/drain).
    pub fn drained(&self) -> bool {
        self.state.drained.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::Relaxed)
    }

    pub fn request_count(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    pub fn error_count(&self) -> u64 {
        self.state.errors.load(Ordering::Relaxed)
    }

    pub fn inventory(&self) -> Arc<Inventory> {
        self.state.inventory.load_full()
    }

    /// Replaces what is loaded here with a fresh /api/ps list, keeping the rest of the inventory.
    pub fn set_loaded(&self, loaded: Vec<Value>) {
        let mut updated = (*self.inventory()).clone();
        updated.loaded_names = names_of(&loaded);
        updated.loaded_ctx = crate::ollama::contexts_of(&loaded);
        updated.loaded = loaded;
        self.set_inventory(updated);
    }

    /// Records that `model` is loaded here (it just answered), with the context size it was
    /// asked for when known, until the next /api/ps says otherwise.
    pub fn mark_loaded(&self, model: &str, num_ctx: Option<u32>) {
        let name = canonical_model(model);
        let current = self.inventory();
        let ctx_known = num_ctx.is_none_or(|n| current.loaded_ctx.get(&name) == Some(&n));
        if !current.loaded_names.contains(&name) || !ctx_known {
            let mut updated = (*current).clone();
            if let Some(n) = num_ctx {
                updated.loaded_ctx.insert(name.clone(), n);
            }
            updated.loaded_names.insert(name);
            self.set_inventory(updated);
        }
    }

    pub fn set_inventory(&self, inv: Inventory) {
        self.state.inventory.store(Arc::new(inv));
    }

    pub fn last_error(&self) -> Option<String> {
        self.state.last_error.lock().unwrap().clone()
    }

    fn now_ms(&self) -> u64 {
        self.state.epoch.elapsed().as_millis() as u64
    }

    /// Remaining cooldown, if the server is cooling down.
    pub fn cooling_down(&self) -> Option<Duration> {
        let until = self.state.cooldown_until_ms.load(Ordering::Relaxed);
        let now = self.now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }

    /// A request failed on this server: count it; the `max_fails`-th failure within
    /// `fail_timeout` skips the server for `cooldown`. Returns true when it starts cooling down.
    pub fn record_failure(&self, reason: &str) -> bool {
        let p = self.fail_policy;
        self.state.errors.fetch_add(1, Ordering::Relaxed);
        *self.state.last_error.lock().unwrap() = Some(reason.to_string());
        let now = self.now_ms();
        let mut w = self.state.fails.lock().unwrap();
        if w.count == 0 || now.saturating_sub(w.started_ms) > p.fail_timeout.as_millis() as u64 {
            *w = FailWindow { started_ms: now, count: 0, last: None };
        }
        w.count += 1;
        w.last = Some(Instant::now());
        self.state.failing.store(true, Ordering::Relaxed);
        if w.count < p.max_fails {
            return false;
        }
        w.count = 0;
        let until = now + p.cooldown.as_millis() as u64;
        self.state.cooldown_until_ms.fetch_max(until, Ordering::Relaxed) <= now
    }

    /// A request succeeded here: failures counted so far are forgotten (as nginx does).
    pub fn record_success(&self) {
        if self.state.failing.swap(false, Ordering::Relaxed) {
            self.state.fails.lock().unwrap().count = 0;
        }
    }

    /// How long ago the last failed request was (panic mode tries the oldest failure first).
    pub fn since_last_failure(&self) -> Duration {
        let w = *self.state.fails.lock().unwrap();
        w.last.map_or_else(|| self.state.epoch.elapsed(), |t| t.elapsed())
    }

    /// Records why the last check or request failed.
    pub fn note_error(&self, why: &str) {
        *self.state.last_error.lock().unwrap() = Some(why.to_string());
    }

    /// Cools the server down for `d` from now (another drover saw it fail), unless it
    /// already cools down for longer.
    pub fn cool_down_for(&self, d: Duration) {
        let until = self.now_ms() + d.as_millis() as u64;
        self.state.cooldown_until_ms.fetch_max(until, Ordering::Relaxed);
    }

    /// Ends a cooldown early: the health checks saw the server come back.
    pub fn end_cooldown(&self) {
        self.state.cooldown_until_ms.store(0, Ordering::Relaxed);
    }

    /// Takes one concurrency slot for `model` if the server is under its limit.
    pub fn try_acquire(self: &Arc<Self>, model: &str) -> Option<Slot> {
        let limit = self.max_concurrency;
        self.state
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (n < limit).then_some(n + 1))
            .ok()?;
        self.state.requests.fetch_add(1, Ordering::Relaxed);
        let model = canonical_model(model);
        self.state.active_models.lock().unwrap().entry(model.clone()).or_default().in_flight += 1;
        Some(Slot { server: self.clone(), model })
    }

    /// Models loaded here that no request through drover is using, least recently used
    /// first: Ollama unloads such models to make room. `gpu` picks VRAM (size_vram) or RAM (size).
    pub fn idle_models(&self, gpu: bool) -> Vec<IdleModel> {
        let active = self.state.active_models.lock().unwrap();
        let mut idle: Vec<IdleModel> = self
            .inventory()
            .loaded
            .iter()
            .filter_map(|m| {
                let name = canonical_model(m.get("name").or_else(|| m.get("model")).and_then(Value::as_str)?);
                let used = active.get(&name).copied().unwrap_or_default();
                let bytes = m.get(if gpu { "size_vram" } else { "size" }).and_then(Value::as_u64)?;
                (used.in_flight == 0).then_some(IdleModel { name, bytes, last_used: used.last_used })
            })
            .collect();
        idle.sort_by_key(|m| m.last_used);
        idle
    }

    /// Bytes held by idle models (see `idle_models`).
    pub fn idle_loaded_bytes(&self, gpu: bool) -> u64 {
        self.idle_models(gpu).iter().map(|m| m.bytes).sum()
    }

    /// Drops models from what drover believes is loaded here: the server is about to unload
    /// them to fit a load drover just admitted, so they are no longer warm.
    pub fn forget_loaded(&self, models: &[String]) {
        let mut updated = (*self.inventory()).clone();
        updated.loaded.retain(|m| {
            let name = m.get("name").or_else(|| m.get("model")).and_then(Value::as_str).map(canonical_model);
            !name.is_some_and(|n| models.contains(&n))
        });
        for m in models {
            updated.loaded_names.remove(m);
        }
        self.set_inventory(updated);
    }

    pub fn at_capacity(&self) -> bool {
        self.in_flight() >= self.max_concurrency
    }

    /// The address to connect to, resolving the host name when it is not cached.
    pub async fn resolve(&self) -> std::io::Result<SocketAddr> {
        if let Some(addr) = *self.state.resolved.lock().unwrap() {
            return Ok(addr);
        }
        self.refresh_address().await
    }

    /// Resolves the host name again (called by the health loop, so DNS changes are followed).
    pub async fn refresh_address(&self) -> std::io::Result<SocketAddr> {
        let addr = tokio::net::lookup_host((self.url.host.as_str(), self.url.port))
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("{} resolves to no address", self.url.host)))?;
        *self.state.resolved.lock().unwrap() = Some(addr);
        Ok(addr)
    }

    /// A Pingora peer for this server with the given timeouts.
    pub fn peer(&self, addr: SocketAddr, connect: Duration, read: Duration) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, self.url.tls, self.url.host.clone());
        peer.options.connection_timeout = Some(connect);
        peer.options.total_connection_timeout = Some(connect * 2);
        peer.options.read_timeout = Some(read);
        peer.options.write_timeout = Some(read);
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        peer
    }
}

/// A concurrency slot on a server for one model, released when dropped.
pub struct Slot {
    server: Arc<Server>,
    model: String,
}

impl Slot {
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// Gives the slot back without waking queued requests: for a slot held only for an
    /// instant during selection, whose release frees nothing a waiter could use. (Waking
    /// them would also wake the selecting request itself, which would spin.)
    pub fn give_back_quietly(mut self) {
        self.release();
        std::mem::forget(self);
    }

    fn release(&mut self) {
        self.server.state.in_flight.fetch_sub(1, Ordering::AcqRel);
        if let Some(u) = self.server.state.active_models.lock().unwrap().get_mut(&self.model) {
            u.in_flight -= 1;
            u.last_used = Some(Instant::now());
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release();
        self.server.released.notify_waiters();
    }
}

/// Where a route came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
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
    pub id: Option<i64>,
    pub virtual_model: String,
    pub actual_model: String,
    pub server: Arc<Server>,
    pub weight: u32,
    pub priority: u32,
    pub device: Device,
    pub performance: f64,
    pub description: String,
    pub is_active: bool,
    pub skip_resource_check: bool,
    pub origin: Origin,
}

/// The routes of one virtual model, with the smooth weighted round-robin state over them.
pub struct ModelRoutes {
    pub routes: Vec<Arc<Route>>,
    /// nginx's smooth weighted round robin: one running weight per route, same order.
    pub current: Mutex<Vec<i64>>,
}

impl ModelRoutes {
    pub fn new(routes: Vec<Arc<Route>>) -> Self {
        let n = routes.len();
        ModelRoutes { routes, current: Mutex::new(vec![0; n]) }
    }
}

/// One immutable view of the fleet: servers by URL and routes by virtual model.
pub struct Fleet {
    pub servers: Vec<Arc<Server>>,
    pub by_url: HashMap<String, Arc<Server>>,
    pub routes: BTreeMap<String, ModelRoutes>,
    /// Round-robin counter for discovered models (equal weights).
    pub discovery_turn: AtomicUsize,
    /// Notified when a slot on any server is released: queued requests wait on it.
    pub released: Arc<Notify>,
    /// Health of every server (pingora-load-balancing), shared by successive snapshots.
    pub health: Arc<Health>,
}

impl Fleet {
    /// Builds the fleet from settings and stored routes, reusing live state of servers in
    /// `previous`, and makes its servers the membership of `health`.
    ///
    /// A server's probe_url and max_concurrency come from `servers:` or, failing that, from
    /// the first route naming it that sets them.
    pub fn build(settings: &Settings, stored: &[StoredRoute], health: &Arc<Health>, previous: Option<&Fleet>) -> Fleet {
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
        for spec in &settings.servers {
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
        if settings.servers.is_empty() && drafts.is_empty() {
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
            grouped.entry(route.virtual_model.clone()).or_default().push(Arc::new(route));
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
    pub fn retire_departed(&self) {
        self.health.set_members(self.servers.iter().map(|s| s.backend.clone()).collect());
    }

    /// The model's own routes, when at least one of them is active; otherwise it is served
    /// by discovery.
    pub fn named_routes(&self, model: &str) -> Option<&ModelRoutes> {
        self.routes.get(model).filter(|mr| mr.routes.iter().any(|r| r.is_active))
    }

    /// Routes a model has when no route names it: every server that lists it.
    pub fn discover(&self, model: &str) -> Vec<Arc<Route>> {
        let wanted = canonical_model(model);
        self.servers
            .iter()
            .filter(|s| s.inventory().names.contains(&wanted))
            .map(|s| {
                Arc::new(Route {
                    id: None,
                    virtual_model: model.to_string(),
                    actual_model: model.to_string(),
                    server: s.clone(),
                    weight: 100,
                    priority: 1,
                    device: Device::Gpu,
                    performance: 0.0,
                    description: String::new(),
                    is_active: true,
                    skip_resource_check: true,
                    origin: Origin::Discovered,
                })
            })
            .collect()
    }

    /// Every model name a client can ask for: virtual names and what servers list.
    pub fn model_names(&self) -> Vec<String> {
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
        description: spec.description,
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

    /// A reload that drops a server: requests still reading the published fleet find the
    /// server ready until the new fleet is out and retires it.
    #[test]
    fn a_dropped_server_stays_in_the_view_until_its_fleet_is_replaced() {
        let settings = |yaml: &str| Settings::parse(yaml, None, &crate::config::Env::default()).unwrap();
        let health = Health::new();
        let both = Fleet::build(&settings("servers: [ 'http://a:1', 'http://b:1' ]\n"), &[], &health, None);
        let b = both.by_url["http://b:1"].clone();
        assert!(b.healthy());
        let only_a = Fleet::build(&settings("servers: [ 'http://a:1' ]\n"), &[], &health, Some(&both));
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

    #[test]
    fn max_fails_within_fail_timeout_start_a_cooldown() {
        let s = Arc::new(Server {
            fail_policy: FailPolicy {
                max_fails: 3,
                fail_timeout: Duration::from_millis(200),
                cooldown: Duration::from_secs(60),
            },
            ..Arc::try_unwrap(server(1)).ok().unwrap()
        });
        assert!(!s.record_failure("a") && !s.record_failure("b"));
        assert!(s.cooling_down().is_none(), "two failures of three do not take it out");
        s.record_success();
        assert!(!s.record_failure("a") && !s.record_failure("b"), "a success started the count again");
        std::thread::sleep(Duration::from_millis(250));
        assert!(!s.record_failure("c"), "the window expired: counting starts again");
        assert!(!s.record_failure("d"));
        assert!(s.record_failure("e"), "the third within the window does");
        assert!(s.cooling_down().is_some());
        assert!(!s.record_failure("f"), "already cooling down: no new transition");
        assert_eq!(s.error_count(), 8);
        assert!(s.since_last_failure() < Duration::from_millis(100));
    }

    #[test]
    fn cooldown_expires() {
        let s = server(1);
        assert!(s.record_failure("boom"));
        assert!(s.cooling_down().is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(s.cooling_down().is_none());
        assert_eq!(s.error_count(), 1);
        assert_eq!(s.last_error().as_deref(), Some("boom"));
    }
}
