//! The resource check: admit a cold model load only where the memory is free, using `drover probe` readings.
//!
//! Readings are cached per probe with a TTL that adapts between cache_ttl_min and
//! cache_ttl_max (doubling while a server's readings stay the same, back to the minimum on
//! a change or failure); concurrent requests needing the same reading share one probe.
//! Admission and reservation happen under one lock, so two cold loads that do not both
//! fit are never sent to one server at once: the first reserves its memory until the
//! request ends (and, once the model shows as loaded, until a newer reading includes it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::config::Resources as Settings;
use crate::fleet::client::Client;
use crate::fleet::{Route, Server};
use crate::probe::Resources;
use crate::protocol::ollama::{canonical_model, Device, ServerUrl};
use crate::routing::select::Skip;
use crate::telemetry::metrics::{self, CheckResult};

/// The resource check as selection's policy.
impl crate::routing::select::Policy for Arc<ResourceCheck> {
    type Hold = Reservation;

    fn admit(&self, route: &Route) -> Result<Option<Reservation>, Skip> {
        ResourceCheck::admit(self, route)
    }

    fn check(&self, route: &Route) -> Result<(), Skip> {
        self.judge(route, Purpose::DryRun).map(drop)
    }

    fn warm(&self, route: &Route, num_ctx: Option<u32>) -> bool {
        self.is_warm(route, num_ctx)
    }
}

/// `performance` is in GB.
const GB: f64 = 1e9;

/// Readings that differ by less than this are "the same" for the adaptive TTL.
const STABLE_FRACTION: f64 = 0.02;

#[derive(Default)]
struct Cached {
    reading: Option<Resources>,
    fetched: Option<Instant>,
    ttl: Duration,
    hits: u64,
    misses: u64,
    error: Option<String>,
    /// Forces the next check to probe again (a load just ended here).
    stale: bool,
}

struct Probe {
    url: ServerUrl,
    cached: Mutex<Cached>,
    /// Held while one request probes; the others wait on it and share its reading.
    fetching: tokio::sync::Mutex<()>,
}

/// Memory promised to a cold load in flight.
struct Held {
    id: u64,
    server: String,
    model: String,
    bytes: u64,
    /// When /api/ps first showed the model loaded.
    loaded_seen: Option<Instant>,
    /// A request's load: others for the model follow it there (it counts as warm). A
    /// preload of the replica keeper's does not: requests keep to the warm copies until
    /// it is done, rather than wait out the load.
    follow: bool,
}

pub(crate) struct ResourceCheck {
    settings: Settings,
    probe_timeout: Duration,
    client: Client,
    probes: Mutex<HashMap<String, Arc<Probe>>>,
    held: Mutex<Vec<Held>>,
    next_id: AtomicU64,
}

/// What a resource check is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// An explanation: changes nothing.
    DryRun,
    /// A request's cold load: the model's next requests follow it there.
    Request,
    /// The replica keeper's preload: requests keep to the warm copies meanwhile.
    Preload,
}

/// A cold load's memory, held until dropped (when the request ends).
pub(crate) struct Reservation {
    check: Arc<ResourceCheck>,
    id: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut held = self.check.held.lock().unwrap();
        if let Some(pos) = held.iter().position(|h| h.id == self.id) {
            let h = held.swap_remove(pos);
            // The load changed this server's memory: the next check must see it.
            if let Some(p) = self.check.probe_of_server(&h.server) {
                p.cached.lock().unwrap().stale = true;
            }
        }
    }
}

impl ResourceCheck {
    pub(crate) fn new(settings: Settings, probe_timeout: Duration) -> Arc<ResourceCheck> {
        Arc::new(ResourceCheck {
            settings,
            probe_timeout,
            client: Client::default(),
            probes: Mutex::new(HashMap::new()),
            held: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
        })
    }

    fn probe_of_server(&self, server_url: &str) -> Option<Arc<Probe>> {
        self.probes.lock().unwrap().get(server_url).cloned()
    }

    fn probe(&self, route: &Route) -> Option<Arc<Probe>> {
        let url = route.server.probe_url.as_ref()?;
        let mut probes = self.probes.lock().unwrap();
        let fresh = || {
            Arc::new(Probe {
                url: url.clone(),
                cached: Mutex::new(Cached { ttl: self.settings.cache_ttl_min, ..Cached::default() }),
                fetching: tokio::sync::Mutex::new(()),
            })
        };
        let p = probes.entry(route.server.url.as_str().to_string()).or_insert_with(fresh);
        if p.url != *url {
            // The server's probe_url changed in a reload: start over.
            *p = fresh();
        }
        Some(p.clone())
    }

    /// Whether admitting `route` needs a reading: a probe is set, the check is not skipped,
    /// the model is not loaded there and no load of it is under way.
    fn needs_reading(&self, route: &Route) -> bool {
        if route.skip_resource_check || route.server.probe_url.is_none() {
            return false;
        }
        let model = canonical_model(&route.actual_model);
        if route.server.inventory().loaded_names.contains(&model) {
            return false;
        }
        let server = route.server.url.as_str();
        !self.held.lock().unwrap().iter().any(|h| h.server == server && h.model == model)
    }

    /// Brings the readings the routes need up to date, all probes at once, one probe per server.
    pub(crate) async fn refresh(&self, routes: &[Arc<Route>]) {
        let mut wanted: Vec<(Arc<Probe>, Arc<Server>)> = Vec::new();
        for r in routes.iter().filter(|r| r.is_active && self.needs_reading(r)) {
            if let Some(p) = self.probe(r) {
                if !wanted.iter().any(|(w, _)| Arc::ptr_eq(w, &p)) {
                    wanted.push((p, r.server.clone()));
                }
            }
        }
        futures::future::join_all(wanted.iter().map(|(p, server)| self.reading(p, server))).await;
    }

    /// A fresh enough reading of `probe`, probing at most once for all concurrent callers.
    ///
    /// The server's loaded models (/api/ps) are read again at the same moment: idle models
    /// count as reclaimable, and a list older than the reading could count a model the
    /// server has since unloaded twice (once in free memory, once as idle).
    async fn reading(&self, probe: &Probe, server: &Server) -> Option<Resources> {
        if let Some(r) = self.fresh(probe) {
            return r;
        }
        let _one_probe = probe.fetching.lock().await;
        if let Some(r) = self.fresh(probe) {
            return r;
        }
        let (result, ps) = futures::join!(
            self.client.get_json_at(&probe.url, "/resources", self.probe_timeout),
            self.client.get_json(server, "/api/ps", self.probe_timeout)
        );
        if let Ok(ps) = ps {
            server.set_loaded(crate::protocol::ollama::models_of(&ps));
        }
        let result = result
            .map_err(|e| e.to_string())
            .and_then(|v| serde_json::from_value::<Resources>(v).map_err(|e| e.to_string()));
        let mut c = probe.cached.lock().unwrap();
        c.misses += 1;
        c.fetched = Some(Instant::now());
        c.stale = false;
        match result {
            Ok(new) => {
                let stable = c.reading.as_ref().is_some_and(|old| similar(old, &new));
                c.ttl = if stable { (c.ttl * 2).min(self.settings.cache_ttl_max) } else { self.settings.cache_ttl_min };
                c.reading = Some(new);
                if c.error.take().is_some() {
                    log::info!("probe {} answers again", probe.url.as_str());
                }
            }
            Err(e) => {
                // Logged when the probe stops answering, not on every request that finds it silent.
                if c.error.is_none() {
                    log::warn!("probe {} unreachable: {e}", probe.url.as_str());
                }
                c.ttl = self.settings.cache_ttl_min;
                c.reading = None;
                c.error = Some(e);
            }
        }
        c.reading.clone()
    }

    /// The cached result when it is within its TTL (counted as a hit): a reading, or `None`
    /// for a probe that did not answer (asked again after resources.cache_ttl_min, so a
    /// silent probe does not cost every request its timeout).
    fn fresh(&self, probe: &Probe) -> Option<Option<Resources>> {
        let mut c = probe.cached.lock().unwrap();
        let fresh = !c.stale && c.fetched.is_some_and(|t| t.elapsed() < c.ttl);
        if fresh {
            c.hits += 1;
            Some(c.reading.clone())
        } else {
            None
        }
    }

    /// Checks `route` against its server's latest reading and, for a cold load, reserves the memory.
    pub(crate) fn admit(self: &Arc<Self>, route: &Route) -> Result<Option<Reservation>, Skip> {
        self.judge(route, Purpose::Request)
    }

    /// As `admit`, for a preload (placement/replicas.rs): requests do not follow it (`Held::follow`).
    pub(crate) fn admit_preload(self: &Arc<Self>, route: &Route) -> Result<Option<Reservation>, Skip> {
        self.judge(route, Purpose::Preload)
    }

    /// The resource check; `Purpose::DryRun`: no reservation, no metric, no change to what
    /// the server is believed to hold.
    fn judge(self: &Arc<Self>, route: &Route, purpose: Purpose) -> Result<Option<Reservation>, Skip> {
        let commit = purpose != Purpose::DryRun;
        let count = |result| {
            if commit {
                metrics::resource_check(result)
            }
        };
        if route.skip_resource_check || route.server.probe_url.is_none() {
            return Ok(None);
        }
        let model = canonical_model(&route.actual_model);
        let inventory = route.server.inventory();
        if inventory.loaded_names.contains(&model) {
            return Ok(None);
        }
        let server = route.server.url.as_str();
        let mut held = self.held.lock().unwrap();
        if held.iter().any(|h| h.server == server && h.model == model) {
            // Being loaded there already: follow it, no new check.
            return Ok(None);
        }
        let Some(probe) = self.probe(route) else { return Ok(None) };
        let (reading, fetched) = {
            let c = probe.cached.lock().unwrap();
            (c.reading.clone(), c.fetched)
        };
        let Some(reading) = reading else {
            return if self.settings.fail_open {
                count(CheckResult::FailOpen);
                Ok(None)
            } else {
                count(CheckResult::ProbeUnreachable);
                Err(Skip::ProbeUnreachable)
            };
        };
        // Memory promised to loads in flight here, until a reading taken after they loaded covers them.
        let mut reserved = 0u64;
        for h in held.iter_mut().filter(|h| h.server == server) {
            if inventory.loaded_names.contains(&h.model) {
                let seen = *h.loaded_seen.get_or_insert_with(Instant::now);
                if fetched.is_some_and(|f| f > seen) {
                    continue;
                }
            }
            reserved += h.bytes;
        }
        let gpu = route.device == Device::Gpu;
        let (probed_free, total) = reading.free_and_total(gpu);
        // Ollama unloads idle models to fit a new one: their memory counts as free.
        let idle_models = route.server.idle_models(gpu && !reading.gpus.is_empty());
        let idle: u64 = idle_models.iter().map(|m| m.bytes).sum();
        let free = (probed_free + idle).min(total);
        let need = (route.performance * GB) as u64;
        let which = if route.device == Device::Gpu && !reading.gpus.is_empty() { "VRAM" } else { "RAM" };
        if free < reserved + need {
            count(CheckResult::NoMemory);
            return Err(Skip::NoMemory(format!(
                "needs {:.1} GB {which}, {:.1} GB free or held by idle models, {:.1} GB promised to loads in flight",
                route.performance,
                free as f64 / GB,
                reserved as f64 / GB
            )));
        }
        let used_after = total.saturating_sub(free) + reserved + need;
        if total == 0 || used_after as f64 * 100.0 > self.settings.memory_threshold * total as f64 {
            count(CheckResult::NoMemory);
            return Err(Skip::NoMemory(format!(
                "loading would fill {:.0}% of {which}, over memory_threshold {}%",
                used_after as f64 * 100.0 / total.max(1) as f64,
                self.settings.memory_threshold
            )));
        }
        // Memory beyond what is free comes from idle models, which the server unloads
        // least recently used first: they stop being warm now, not at the next /api/ps.
        let mut shortfall = (reserved + need).saturating_sub(probed_free);
        let mut evicted = Vec::new();
        for m in &idle_models {
            if shortfall == 0 {
                break;
            }
            shortfall = shortfall.saturating_sub(m.bytes);
            evicted.push(m.name.clone());
        }
        if !commit {
            return Ok(None);
        }
        if !evicted.is_empty() {
            log::debug!("{server}: loading {model} should unload idle {evicted:?}");
            route.server.forget_loaded(&evicted);
        }
        count(CheckResult::Pass);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let follow = purpose == Purpose::Request;
        held.push(Held { id, server: server.to_string(), model, bytes: need, loaded_seen: None, follow });
        Ok(Some(Reservation { check: self.clone(), id }))
    }

    /// Whether `route`'s model is loaded on its server (at `num_ctx`, where that is known),
    /// or being loaded there by a request in flight.
    fn is_warm(&self, route: &Route, num_ctx: Option<u32>) -> bool {
        let model = canonical_model(&route.actual_model);
        route.server.inventory().warm_for(&model, num_ctx) || {
            let server = route.server.url.as_str();
            self.held.lock().unwrap().iter().any(|h| h.follow && h.server == server && h.model == model)
        }
    }

    /// Per server with a reading: free RAM, and free VRAM when it has GPUs.
    pub(crate) fn free_memory(&self) -> Vec<(String, u64, Option<u64>)> {
        let probes = self.probes.lock().unwrap();
        probes
            .iter()
            .filter_map(|(server, p)| {
                let c = p.cached.lock().unwrap();
                let r = c.reading.as_ref()?;
                let vram = (!r.gpus.is_empty()).then(|| r.free_and_total(true).0);
                Some((server.clone(), r.memory.available_bytes, vram))
            })
            .collect()
    }

    /// GET /admin/resource-cache/stats.
    pub(crate) fn stats(&self) -> Value {
        let probes = self.probes.lock().unwrap();
        let mut out: Vec<Value> = probes
            .iter()
            .map(|(server, p)| {
                let c = p.cached.lock().unwrap();
                json!({
                    "server": server, "probe_url": p.url.as_str(), "reading": c.reading,
                    "age_seconds": c.fetched.map(|t| t.elapsed().as_secs_f64()),
                    "ttl_seconds": c.ttl.as_secs_f64(), "hits": c.hits, "misses": c.misses, "error": c.error,
                })
            })
            .collect();
        out.sort_by(|a, b| a["server"].as_str().cmp(&b["server"].as_str()));
        let held: Vec<Value> = self
            .held
            .lock()
            .unwrap()
            .iter()
            .map(|h| json!({ "server": h.server, "model": h.model, "bytes": h.bytes }))
            .collect();
        json!({ "probes": out, "reservations": held })
    }

    /// POST /admin/resource-cache/clear: forget every reading; returns how many.
    pub(crate) fn clear(&self) -> usize {
        let mut probes = self.probes.lock().unwrap();
        let n = probes.len();
        probes.clear();
        n
    }
}

fn similar(a: &Resources, b: &Resources) -> bool {
    let close = |x: u64, y: u64, total: u64| (x as f64 - y as f64).abs() <= STABLE_FRACTION * total.max(1) as f64;
    close(a.memory.available_bytes, b.memory.available_bytes, b.memory.total_bytes)
        && a.gpus.len() == b.gpus.len()
        && a.gpus.iter().zip(&b.gpus).all(|(x, y)| close(x.free_bytes, y.free_bytes, y.total_bytes))
}
