//! One upstream server: identity, kind, limits and credentials, and its live state (failure
//! window, cooldown, in-flight count, inventory) shared by every snapshot that names it;
//! `Slot`, a concurrency slot on it, released when dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora::lb::Backend;
use pingora::upstreams::peer::HttpPeer;
use serde_json::Value;
use tokio::sync::Notify;
// tokio's clock: the real one, unless a test pauses it to step cooldowns and rests exactly.
use tokio::time::Instant;

use super::backends::Health;
use crate::protocol::load::Reported;
use crate::protocol::ollama::{canonical, canonical_model, names_of, Inventory, Kind, ServerUrl};

#[derive(Default, Clone, Copy)]
struct ModelUse {
    in_flight: usize,
    last_used: Option<Instant>,
}

/// A loaded model no request through drover is using.
pub(crate) struct IdleModel {
    pub(crate) name: String,
    pub(crate) bytes: u64,
    pub(crate) last_used: Option<Instant>,
}

/// Live state of one server, shared across snapshots.
pub(crate) struct ServerState {
    /// Milliseconds since `epoch` until which the server is skipped after failed requests.
    cooldown_until_ms: AtomicU64,
    /// Milliseconds since `epoch` until which the server rests: it answered 429 (or 503)
    /// with Retry-After. Not a failure: it said when to come back.
    resting_until_ms: AtomicU64,
    /// Times it asked to rest.
    rests: AtomicU64,
    /// It refused the credentials drover sends it (401/403): out until a health check passes.
    refused: Mutex<Option<String>>,
    /// Whether `refused` holds a reason (read on every selection, without the lock).
    refusing: AtomicBool,
    /// Failed requests counted in the current `fail_timeout` window (nginx's max_fails).
    fails: Mutex<FailWindow>,
    /// Whether `fails` counts any: a success then resets it (read without the lock).
    failing: AtomicBool,
    /// Taken out of selection by hand (the health view's enablement, shown in /lb-stats).
    drained: AtomicBool,
    /// The endpoints an openai-kind server answered 404 for (`Endpoint` bits): Anthropic's and
    /// the Responses API go to it translated to chat completions from then on.
    lacks: std::sync::atomic::AtomicU8,
    in_flight: AtomicUsize,
    /// Slots given back after a request (not the instant holds of a selection).
    released: AtomicU64,
    /// The load the server last reported about itself (protocol/load.rs), for the views.
    reading: Mutex<Option<Reading>>,
    /// What selection reads of it without the lock: the requests it reported beyond
    /// drover's own in flight then (load this drover did not send)...
    others: AtomicUsize,
    /// ...its parallel slots (0: not reported)...
    slots: AtomicUsize,
    /// ...and, when it said it was full, `released` at that moment (u64::MAX otherwise): it
    /// counts as full until a request of drover's there ends or the next reading.
    full_mark: AtomicU64,
    /// Where its load is read from (`LoadSource` as u8) and readings missed since it last answered.
    load_source: std::sync::atomic::AtomicU8,
    load_misses: std::sync::atomic::AtomicU32,
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
            resting_until_ms: AtomicU64::new(0),
            rests: AtomicU64::new(0),
            refused: Mutex::new(None),
            refusing: AtomicBool::new(false),
            fails: Mutex::new(FailWindow::default()),
            failing: AtomicBool::new(false),
            drained: AtomicBool::new(false),
            lacks: std::sync::atomic::AtomicU8::new(0),
            in_flight: AtomicUsize::new(0),
            released: AtomicU64::new(0),
            reading: Mutex::new(None),
            others: AtomicUsize::new(0),
            slots: AtomicUsize::new(0),
            full_mark: AtomicU64::new(u64::MAX),
            load_source: std::sync::atomic::AtomicU8::new(LoadSource::Unknown as u8),
            load_misses: std::sync::atomic::AtomicU32::new(0),
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

/// One reading of the load a server reported, as the views show it.
#[derive(Debug, Clone)]
pub(crate) struct Reading {
    pub(crate) reported: Reported,
    /// The endpoint it came from (`/slots`, `/metrics`).
    pub(crate) source: &'static str,
    pub(crate) at: Instant,
    /// drover's own requests in flight there at that moment.
    pub(crate) own: usize,
}

/// Where a server's load is read from, found by asking: llama.cpp's /slots, else /metrics
/// (vLLM, llama.cpp with --metrics); `None` when neither answered (asked again now and then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum LoadSource {
    Unknown = 0,
    Slots = 1,
    Metrics = 2,
    None = 3,
}

impl LoadSource {
    pub(crate) fn path(self) -> &'static str {
        match self {
            LoadSource::Slots => "/slots",
            LoadSource::Metrics => "/metrics",
            LoadSource::Unknown | LoadSource::None => "",
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
pub(crate) struct FailPolicy {
    pub(crate) max_fails: u32,
    pub(crate) fail_timeout: Duration,
    pub(crate) cooldown: Duration,
}

impl Default for FailPolicy {
    fn default() -> Self {
        FailPolicy { max_fails: 1, fail_timeout: Duration::from_secs(10), cooldown: Duration::from_secs(10) }
    }
}

/// One upstream server: identity, kind and limits, plus its live state.
pub struct Server {
    pub(crate) url: ServerUrl,
    pub(crate) kind: Kind,
    pub(crate) probe_url: Option<ServerUrl>,
    pub(crate) max_concurrency: usize,
    pub(crate) fail_policy: FailPolicy,
    /// Its API key or headers (servers: api_key, headers, forward_client_auth).
    pub(crate) credentials: crate::config::Credentials,
    /// This server in the health view (pingora-load-balancing), which decides `healthy()`.
    pub(crate) backend: Backend,
    pub(super) health: Arc<Health>,
    pub(crate) state: Arc<ServerState>,
    /// Shared by the whole fleet: notified whenever any slot is released.
    pub(super) released: Arc<Notify>,
}

impl Server {
    /// Up by the health checks (rise/fall), and not taken out by hand. A server starts up,
    /// as Pingora's backends do: a dead one is found by the first check or the first
    /// request, whose retry goes elsewhere.
    pub(crate) fn healthy(&self) -> bool {
        self.health.ready(&self.backend)
    }

    /// Whether `path` (/v1/messages, /v1/responses) must be translated for this server: it
    /// answered 404 for it.
    pub(crate) fn lacks(&self, path: &str) -> bool {
        self.state.lacks.load(Ordering::Relaxed) & lack_bit(path) != 0
    }

    pub(crate) fn set_lacks(&self, path: &str) {
        if self.state.lacks.fetch_or(lack_bit(path), Ordering::Relaxed) & lack_bit(path) == 0 {
            log::info!("{} has no {path}: requests to it go as chat completions", self.url.as_str());
        }
    }

    /// Takes the server out of selection by hand (drain), or puts it back.
    pub(crate) fn set_enabled(&self, enabled: bool) {
        self.state.drained.store(!enabled, Ordering::Relaxed);
        self.health.set_enabled(&self.backend, enabled)
    }

    /// Taken out by hand (admin API: POST /admin/drain).
    pub(crate) fn drained(&self) -> bool {
        self.state.drained.load(Ordering::Relaxed)
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn request_count(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    pub(crate) fn error_count(&self) -> u64 {
        self.state.errors.load(Ordering::Relaxed)
    }

    pub(crate) fn inventory(&self) -> Arc<Inventory> {
        self.state.inventory.load_full()
    }

    /// Replaces what is loaded here with a fresh /api/ps list, keeping the rest of the inventory.
    pub(crate) fn set_loaded(&self, loaded: Vec<Value>) {
        let mut updated = (*self.inventory()).clone();
        updated.loaded_names = names_of(&loaded);
        updated.loaded_ctx = crate::protocol::ollama::contexts_of(&loaded);
        updated.loaded = loaded;
        self.set_inventory(updated);
    }

    /// Records that `model` is loaded here (it just answered), with the context size it was
    /// asked for when known, until the next /api/ps says otherwise.
    pub(crate) fn mark_loaded(&self, model: &str, num_ctx: Option<u32>) {
        // Called on every answer: nothing is allocated unless something changes.
        let name = canonical(model);
        let current = self.inventory();
        let ctx_known = num_ctx.is_none_or(|n| current.loaded_ctx.get(name.as_ref()) == Some(&n));
        if !current.loaded_names.contains(name.as_ref()) || !ctx_known {
            let name = name.into_owned();
            let mut updated = (*current).clone();
            if let Some(n) = num_ctx {
                updated.loaded_ctx.insert(name.clone(), n);
            }
            // Listed by the merged /api/ps at once, in /api/ps's shape (the tags entry, with
            // what Ollama adds for a loaded model), until the next health pass reads the real one.
            let listed = updated.loaded.iter().any(|m| {
                m.get("name").or_else(|| m.get("model")).and_then(Value::as_str).is_some_and(|n| canonical(n) == name)
            });
            if !listed {
                let mut entry = updated
                    .tags
                    .iter()
                    .find(|m| m.get("name").and_then(Value::as_str).is_some_and(|n| canonical(n) == name))
                    .cloned()
                    .unwrap_or_else(|| serde_json::json!({ "name": name, "model": name }));
                if let Some(o) = entry.as_object_mut() {
                    o.remove("own");
                    o.remove("modified_at");
                    let expires = std::time::SystemTime::now() + Duration::from_secs(300);
                    o.insert("expires_at".into(), humantime::format_rfc3339_seconds(expires).to_string().into());
                    let size = o.get("size").cloned().unwrap_or(Value::from(0));
                    o.insert("size_vram".into(), size);
                    if let Some(n) = num_ctx {
                        o.insert("context_length".into(), n.into());
                    }
                }
                updated.loaded.push(entry);
            }
            updated.loaded_names.insert(name);
            self.set_inventory(updated);
        }
    }

    /// The model was unloaded through drover: out of the merged /api/ps at once.
    pub(crate) fn mark_unloaded(&self, model: &str) {
        let name = canonical_model(model);
        let mut updated = (*self.inventory()).clone();
        updated.loaded_names.remove(&name);
        updated.loaded_ctx.remove(&name);
        updated.loaded.retain(|m| {
            m.get("name").or_else(|| m.get("model")).and_then(Value::as_str).is_none_or(|n| canonical(n) != name)
        });
        self.set_inventory(updated);
    }

    pub fn set_inventory(&self, inv: Inventory) {
        self.state.inventory.store(Arc::new(inv));
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        self.state.last_error.lock().unwrap().clone()
    }

    fn now_ms(&self) -> u64 {
        self.state.epoch.elapsed().as_millis() as u64
    }

    /// Remaining cooldown, if the server is cooling down.
    pub(crate) fn cooling_down(&self) -> Option<Duration> {
        let until = self.state.cooldown_until_ms.load(Ordering::Relaxed);
        let now = self.now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }

    /// A request failed on this server: count it; the `max_fails`-th failure within
    /// `fail_timeout` skips the server for `cooldown`. Returns true when it starts cooling down.
    pub(crate) fn record_failure(&self, reason: &str) -> bool {
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
    pub(crate) fn record_success(&self) {
        if self.state.failing.swap(false, Ordering::Relaxed) {
            self.state.fails.lock().unwrap().count = 0;
        }
    }

    /// How long ago the last failed request was (panic mode tries the oldest failure first).
    pub(crate) fn since_last_failure(&self) -> Duration {
        let w = *self.state.fails.lock().unwrap();
        w.last.map_or_else(|| self.state.epoch.elapsed(), |t| t.elapsed())
    }

    /// Records why the last check or request failed.
    pub(crate) fn note_error(&self, why: &str) {
        *self.state.last_error.lock().unwrap() = Some(why.to_string());
    }

    /// Cools the server down for `d` from now (another drover saw it fail), unless it
    /// already cools down for longer.
    pub(crate) fn cool_down_for(&self, d: Duration) {
        let until = self.now_ms() + d.as_millis() as u64;
        self.state.cooldown_until_ms.fetch_max(until, Ordering::Relaxed);
    }

    /// Ends a cooldown early: the health checks saw the server come back.
    pub(crate) fn end_cooldown(&self) {
        self.state.cooldown_until_ms.store(0, Ordering::Relaxed);
    }

    /// The server asked to be left alone for `d` (Retry-After): skipped until then.
    pub(crate) fn rest_for(&self, d: Duration) {
        self.state.rests.fetch_add(1, Ordering::Relaxed);
        let until = self.now_ms() + d.as_millis() as u64;
        self.state.resting_until_ms.fetch_max(until, Ordering::Relaxed);
    }

    /// Remaining rest, if the server asked for one.
    pub(crate) fn resting(&self) -> Option<Duration> {
        let until = self.state.resting_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return None;
        }
        let now = self.now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }

    /// Times the server asked to rest (429 or 503 with Retry-After).
    pub(crate) fn rest_count(&self) -> u64 {
        self.state.rests.load(Ordering::Relaxed)
    }

    /// The server refused drover's credentials for it: down until a health check passes.
    /// Returns true the first time (so it is logged once).
    pub(crate) fn refuse_credentials(&self, why: &str) -> bool {
        let mut refused = self.state.refused.lock().unwrap();
        let first = refused.is_none();
        *refused = Some(why.to_string());
        self.state.refusing.store(true, Ordering::Relaxed);
        first
    }

    /// Why the server is down although its health checks pass, if it is.
    pub(crate) fn refused(&self) -> Option<String> {
        if !self.refusing() {
            return None;
        }
        self.state.refused.lock().unwrap().clone()
    }

    /// Whether the server refused drover's credentials (see `refused`).
    pub(crate) fn refusing(&self) -> bool {
        self.state.refusing.load(Ordering::Relaxed)
    }

    /// A health check passed: refused credentials are tried again.
    pub(crate) fn check_passed(&self) {
        if !self.refusing() {
            return;
        }
        // Cleared under the lock `refuse_credentials` sets both under, so the two agree.
        let mut refused = self.state.refused.lock().unwrap();
        self.state.refusing.store(false, Ordering::Relaxed);
        if refused.take().is_some() {
            log::info!("server {}: a health check passed; its credentials are tried again", self.url.as_str());
        }
    }

    /// The server's state as the views show it.
    pub(crate) fn condition(&self) -> &'static str {
        if self.drained() {
            "drained"
        } else if !self.healthy() || self.refusing() {
            "down"
        } else if self.cooling_down().is_some() {
            "cooling_down"
        } else if self.resting().is_some() {
            "resting"
        } else if self.at_capacity() {
            "busy"
        } else {
            "up"
        }
    }

    /// Takes one concurrency slot for `model` if the server is under its limit.
    pub(crate) fn try_acquire(self: &Arc<Self>, model: &str) -> Option<Slot> {
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
    pub(crate) fn idle_models(&self, gpu: bool) -> Vec<IdleModel> {
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

    /// Requests through drover on `model` here now, and when the last one ended.
    pub(crate) fn model_activity(&self, model: &str) -> (usize, Option<Instant>) {
        let used = self.state.active_models.lock().unwrap().get(&canonical_model(model)).copied().unwrap_or_default();
        (used.in_flight, used.last_used)
    }

    /// Bytes held by idle models (see `idle_models`).
    #[cfg(test)]
    pub(crate) fn idle_loaded_bytes(&self, gpu: bool) -> u64 {
        self.idle_models(gpu).iter().map(|m| m.bytes).sum()
    }

    /// Drops models from what drover believes is loaded here: the server is about to unload
    /// them to fit a load drover just admitted, so they are no longer warm.
    pub(crate) fn forget_loaded(&self, models: &[String]) {
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

    /// At its concurrency limit, or full by what it reported: a waiting queue or a full KV
    /// cache at the last reading (until a request of drover's there ends), or its slots
    /// taken by drover's requests and those it reported beyond them.
    pub(crate) fn at_capacity(&self) -> bool {
        let in_flight = self.in_flight();
        if in_flight >= self.max_concurrency {
            return true;
        }
        let slots = self.state.slots.load(Ordering::Relaxed);
        self.reported_full() || (slots > 0 && in_flight + self.state.others.load(Ordering::Relaxed) >= slots)
    }

    /// The server said at its last reading that it takes no more now (see `at_capacity`).
    pub(crate) fn reported_full(&self) -> bool {
        self.state.full_mark.load(Ordering::Relaxed) == self.state.released.load(Ordering::Relaxed)
    }

    /// Requests on the server as drover reckons them: its own in flight, plus those the
    /// server reported beyond drover's at its last reading (other drovers', other clients',
    /// its own queue).
    pub(crate) fn load_estimate(&self) -> usize {
        self.in_flight() + self.state.others.load(Ordering::Relaxed)
    }

    /// A reading of the load the server reports (the health pass, every interval).
    /// `asked_with`: drover's own in flight when the reading was asked for. drover's share of
    /// it is the larger of that and its in flight now, so a request of drover's that ended
    /// while the answer was on its way is not taken for someone else's.
    pub(crate) fn set_reported(&self, reported: Reported, source: &'static str, asked_with: usize) {
        let own = self.in_flight().max(asked_with);
        let reported_total = (reported.running + reported.waiting) as usize;
        self.state.others.store(reported_total.saturating_sub(own), Ordering::Relaxed);
        self.state.slots.store(reported.slots.unwrap_or(0) as usize, Ordering::Relaxed);
        let mark = if reported.full() { self.state.released.load(Ordering::Relaxed) } else { u64::MAX };
        let was_full = self.state.full_mark.swap(mark, Ordering::Relaxed) != u64::MAX;
        *self.state.reading.lock().unwrap() = Some(Reading { reported, source, at: Instant::now(), own });
        if was_full && mark == u64::MAX {
            // Requests queued for it may go now.
            self.released.notify_waiters();
        }
    }

    /// The server no longer reports its load (its check failed, or the endpoint went away).
    pub(crate) fn clear_reported(&self) {
        self.state.others.store(0, Ordering::Relaxed);
        self.state.slots.store(0, Ordering::Relaxed);
        self.state.full_mark.store(u64::MAX, Ordering::Relaxed);
        *self.state.reading.lock().unwrap() = None;
    }

    /// The last reading of its reported load, if it reports one.
    pub(crate) fn reported(&self) -> Option<Reading> {
        self.state.reading.lock().unwrap().clone()
    }

    /// Where its load is read from (the health pass finds it, then keeps to it).
    pub(crate) fn load_source(&self) -> LoadSource {
        match self.state.load_source.load(Ordering::Relaxed) {
            1 => LoadSource::Slots,
            2 => LoadSource::Metrics,
            3 => LoadSource::None,
            _ => LoadSource::Unknown,
        }
    }

    pub(crate) fn set_load_source(&self, source: LoadSource) {
        self.state.load_source.store(source as u8, Ordering::Relaxed);
        self.state.load_misses.store(0, Ordering::Relaxed);
    }

    /// Counts a health pass that did not read the load; returns the count so far.
    pub(crate) fn missed_load(&self) -> u32 {
        self.state.load_misses.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The address to connect to, resolving the host name when it is not cached.
    pub(crate) async fn resolve(&self) -> std::io::Result<SocketAddr> {
        if let Some(addr) = *self.state.resolved.lock().unwrap() {
            return Ok(addr);
        }
        self.refresh_address().await
    }

    /// Resolves the host name again (called by the health loop, so DNS changes are followed).
    pub(crate) async fn refresh_address(&self) -> std::io::Result<SocketAddr> {
        let addr = tokio::net::lookup_host((self.url.host.as_str(), self.url.port))
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("{} resolves to no address", self.url.host)))?;
        *self.state.resolved.lock().unwrap() = Some(addr);
        Ok(addr)
    }

    /// A Pingora peer for this server with the given timeouts.
    pub(crate) fn peer(&self, addr: SocketAddr, connect: Duration, read: Duration) -> HttpPeer {
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
    /// Gives the slot back without waking queued requests: for a slot held only for an
    /// instant during selection, whose release frees nothing a waiter could use. (Waking
    /// them would also wake the selecting request itself, which would spin.)
    pub(crate) fn give_back_quietly(mut self) {
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
        self.server.state.released.fetch_add(1, Ordering::Relaxed);
        self.server.released.notify_waiters();
    }
}

/// The bit of `lacks` for a path drover can translate to chat completions.
fn lack_bit(path: &str) -> u8 {
    match path {
        "/v1/messages" => 1,
        "/v1/responses" => 2,
        _ => 0,
    }
}
