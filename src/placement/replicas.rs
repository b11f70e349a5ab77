//! Replicas follow demand (`load_balancer.replicas`, off by default): a model whose requests
//! wait gets another copy, and a copy drover placed that nobody uses is let go.
//!
//! Every tick (a quarter of `scale_up_wait`, 100 ms to 1 s) the queue says, per model line,
//! how long its oldest request has waited; and the proxy reports when a streamed answer from
//! a server that had the model loaded sent its first byte (the wait inside the server's own
//! queue, which Ollama does not report). Either past `scale_up_wait` (every first byte that
//! late, none quicker), continuously for `scale_up_for`, drover loads the model on one more server that may serve it (a route of
//! the model, or a server that lists it) where it is not loaded yet: the best priority tier
//! first, then the least busy, and only where the resource check admits it (the memory it
//! needs is reserved while it loads, as a request's cold load is). The load is Ollama's
//! preload (a generate with no prompt, as /admin/models/preload sends); requests keep to the
//! warm copies meanwhile (a preload's reservation is not followed, as a request's cold load
//! is), and once it answers the server counts as warm and selection (warm_first above all)
//! sends the model's requests there. Each further copy needs another `scale_up_for` of waiting (loads of one model may
//! overlap); never more than `max_replicas` copies, loaded or loading. A model in use (a
//! request within `scale_down_idle`) is kept on `min_replicas` servers the same way, without
//! waiting for its requests to wait. A copy drover placed that served nothing for
//! `scale_down_idle` while no request of its model waits is unloaded (`keep_alive: 0`),
//! never below `min_replicas` copies. Copies loaded otherwise
//! (by requests, by hand) are never unloaded here: Ollama's own keep_alive lets them go.
//! Each change is logged, counted (`drover_replica_changes_total`) and listed for the
//! dashboard and /lb-stats.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::{json, Value};
// tokio's clock: the real one, unless a test pauses it to step the timers exactly.
use tokio::time::Instant;

use crate::config::Replicas as Settings;
use crate::fleet::client::Client;
use crate::fleet::{Fleet, Route, Server};
use crate::routing::queue::Queue;
use crate::routing::resources::ResourceCheck;
use crate::routing::select::{ineligible, Request};
use crate::telemetry::metrics;

/// Changes kept for the dashboard.
const KEEP: usize = 30;

/// A slow first byte counts as waiting for this long after it came.
const SLOW_LASTS: Duration = Duration::from_secs(1);

/// A copy drover placed: where, and since when.
struct Placed {
    model: String,
    actual: String,
    server: String,
    at: Instant,
}

#[derive(Default)]
struct State {
    /// Per model: since when its requests have waited past `scale_up_wait`.
    pressed: HashMap<String, Instant>,
    /// Per model: since when every streamed answer from a warm server sent its first byte
    /// `scale_up_wait` or more after the request came (a quicker one clears it), and when
    /// the last such answer came: the wait inside a server's own queue, which Ollama does
    /// not report.
    slow: HashMap<String, (Instant, Instant)>,
    /// Loads under way: (model, server).
    loading: Vec<(String, String)>,
    placed: Vec<Placed>,
    /// The last changes, newest last.
    changes: VecDeque<Value>,
}

/// The replica keeper: reads the queue, places and lets go copies of models.
pub(crate) struct Replicas {
    settings: Settings,
    fleet: Arc<ArcSwap<Fleet>>,
    queue: Arc<Queue>,
    resources: Arc<ResourceCheck>,
    client: Arc<Client>,
    /// How long a load or an unload may take (http_client.read_timeout).
    timeout: Duration,
    state: Mutex<State>,
}

impl Replicas {
    pub(crate) fn new(
        settings: Settings,
        fleet: Arc<ArcSwap<Fleet>>,
        queue: Arc<Queue>,
        resources: Arc<ResourceCheck>,
        client: Arc<Client>,
        timeout: Duration,
    ) -> Arc<Replicas> {
        Arc::new(Replicas { settings, fleet, queue, resources, client, timeout, state: Mutex::default() })
    }

    pub(crate) fn enabled(&self) -> bool {
        self.settings.enabled
    }

    fn tick_every(&self) -> Duration {
        (self.settings.scale_up_wait / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }

    /// One pass: scale up the models whose requests have waited long enough, let go of idle copies.
    pub(crate) async fn tick(self: &Arc<Self>) {
        for model in self.due(Instant::now()) {
            self.scale_up(&model, Why::Waiting).await;
        }
        if self.settings.min_replicas > 1 {
            for model in self.under_min() {
                self.scale_up(&model, Why::Minimum).await;
            }
        }
        self.scale_down().await;
    }

    /// The models whose requests have waited past scale_up_wait (in the queue, or for a
    /// warm server's first byte) continuously for scale_up_for, at `now`.
    fn due(&self, now: Instant) -> Vec<String> {
        let waits = self.queue.waits();
        let mut st = self.state.lock().unwrap();
        // A slow first byte says the model waits only while such answers keep coming.
        st.slow.retain(|_, (_, last)| now.duration_since(*last) < SLOW_LASTS);
        let slow: Vec<(String, Instant)> = st.slow.iter().map(|(m, (since, _))| (m.clone(), *since)).collect();
        let queued = |m: &str| waits.iter().any(|(w, oldest)| w == m && *oldest >= self.settings.scale_up_wait);
        st.pressed.retain(|m, _| queued(m) || slow.iter().any(|(s, _)| s == m));
        for (model, oldest) in &waits {
            if *oldest >= self.settings.scale_up_wait {
                st.pressed.entry(model.clone()).or_insert(now);
            }
        }
        for (model, since) in slow {
            st.pressed.entry(model).or_insert(since);
        }
        st.pressed
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= self.settings.scale_up_for)
            .map(|(m, _)| m.clone())
            .collect()
    }

    /// Models in use (a request through drover within scale_down_idle, or one in flight)
    /// with fewer than min_replicas copies loaded or loading, none of them loading now.
    fn under_min(&self) -> Vec<String> {
        let fleet = self.fleet.load();
        let loading: Vec<String> = self.state.lock().unwrap().loading.iter().map(|(m, _)| m.clone()).collect();
        fleet
            .routes
            .keys()
            .filter(|m| !loading.contains(m))
            .filter(|m| {
                let (routes, copies) = Self::routes_and_copies(&fleet, m);
                let in_use = routes.iter().any(|r| {
                    let (in_flight, last) = r.server.model_activity(&r.actual_model);
                    in_flight > 0 || last.is_some_and(|t| t.elapsed() < self.settings.scale_down_idle)
                });
                in_use && copies > 0 && copies < self.settings.min_replicas
            })
            .cloned()
            .collect()
    }

    /// The model's routes selection could use for Ollama's own API (a preload is an Ollama
    /// call), and how many of their servers have it loaded.
    fn routes_and_copies(fleet: &Fleet, model: &str) -> (Vec<Arc<Route>>, usize) {
        let native = Request::plain(model, true);
        let routes: Vec<Arc<Route>> =
            fleet.serving_routes(model).into_iter().filter(|r| ineligible(r, &native).is_none()).collect();
        let mut warm: Vec<&str> = routes.iter().filter(|r| warm_on(r)).map(|r| r.server.url.as_str()).collect();
        warm.sort_unstable();
        warm.dedup();
        let copies = warm.len();
        (routes, copies)
    }

    /// The first byte of a streamed answer for `model` (the virtual name) from a server that
    /// had it loaded came `waited` after the request (the proxy calls this; only when enabled).
    pub(crate) fn observe_first_byte(&self, model: &str, waited: Duration) {
        let mut st = self.state.lock().unwrap();
        if waited >= self.settings.scale_up_wait {
            let now = Instant::now();
            st.slow.entry(model.to_string()).or_insert((now, now)).1 = now;
        } else if st.slow.contains_key(model) {
            st.slow.remove(model);
        }
    }

    /// Places one more copy of `model`, if a server can take it and max_replicas allows.
    async fn scale_up(self: &Arc<Self>, model: &str, why: Why) {
        let fleet = self.fleet.load_full();
        let (routes, warm) = Self::routes_and_copies(&fleet, model);
        let loading: Vec<String> = {
            let st = self.state.lock().unwrap();
            st.loading.iter().filter(|(m, _)| m == model).map(|(_, s)| s.clone()).collect()
        };
        let copies = warm + loading.len();
        if copies >= self.settings.max_replicas {
            return;
        }
        let mut cold: Vec<Arc<Route>> =
            routes.into_iter().filter(|r| !warm_on(r) && !loading.iter().any(|s| s == r.server.url.as_str())).collect();
        cold.sort_by_key(|r| (r.priority, r.server.load_estimate()));
        self.resources.refresh(&cold).await;
        let mut short = Vec::new();
        let chosen = cold.into_iter().find_map(|r| match self.resources.admit_preload(&r) {
            Ok(reservation) => Some((r, reservation)),
            Err(why) => {
                short.push(format!("{} {why}", r.server.url.as_str()));
                None
            }
        });
        let Some((route, reservation)) = chosen else {
            if !short.is_empty() {
                log::debug!("replicas: no server can take another copy of {model}: {}", short.join("; "));
            }
            return;
        };
        let server = route.server.url.as_str().to_string();
        {
            let mut st = self.state.lock().unwrap();
            st.loading.push((model.to_string(), server.clone()));
            // The next copy waits for another scale_up_for of waiting.
            st.pressed.remove(model);
            if let Some((since, _)) = st.slow.get_mut(model) {
                *since = Instant::now();
            }
        }
        let because = match why {
            Why::Waiting => format!(
                "requests for {model} have waited over {:?} for {:?}",
                self.settings.scale_up_wait, self.settings.scale_up_for
            ),
            Why::Minimum => format!("{model} is in use on fewer than min_replicas servers"),
        };
        log::info!(
            "replicas: {because}; loading {} on {server} (copy {} of at most {})",
            route.actual_model,
            copies + 1,
            self.settings.max_replicas
        );
        let me = self.clone();
        let model = model.to_string();
        tokio::spawn(async move {
            let started = Instant::now();
            // Kept a while past scale_down_idle, so a copy outlives a drover that stopped
            // watching it only by that much.
            let keep_alive = json!((me.settings.scale_down_idle + Duration::from_secs(60)).as_secs());
            let result = me.client.load_model(&route.server, &route.actual_model, keep_alive, me.timeout).await;
            drop(reservation);
            let mut st = me.state.lock().unwrap();
            st.loading.retain(|(m, s)| !(*m == model && *s == server));
            match result {
                Ok(()) => {
                    log::info!("replicas: {model} loaded on {server} in {:.1}s", started.elapsed().as_secs_f64());
                    st.placed.push(Placed {
                        model: model.clone(),
                        actual: route.actual_model.clone(),
                        server: server.clone(),
                        at: Instant::now(),
                    });
                    me.note(&mut st, &model, &server, "up", None);
                }
                Err(e) => {
                    log::warn!("replicas: loading {model} on {server} failed: {e}");
                    me.note(&mut st, &model, &server, "failed", Some(e.to_string()));
                }
            }
        });
    }

    /// Unloads the copies drover placed that served nothing for scale_down_idle while no
    /// request of their model waits, keeping at least min_replicas copies.
    async fn scale_down(self: &Arc<Self>) {
        let idle = self.settings.scale_down_idle;
        for (server, model, actual) in self.let_go(&self.fleet.load_full(), Instant::now()) {
            let url = server.url.as_str().to_string();
            log::info!("replicas: {model} on {url} served nothing for {idle:?}; unloading it");
            let result = self.client.unload_model(&server, &actual, self.timeout).await;
            let mut st = self.state.lock().unwrap();
            match result {
                Ok(()) => self.note(&mut st, &model, &url, "down", None),
                Err(e) => {
                    log::warn!("replicas: unloading {model} on {url} failed: {e}");
                    self.note(&mut st, &model, &url, "failed", Some(e.to_string()));
                }
            }
        }
    }

    /// The copies to unload at `now`: placed by drover, quiet for scale_down_idle while no
    /// request of their model waits, beyond min_replicas copies. They are no longer watched.
    fn let_go(&self, fleet: &Fleet, now: Instant) -> Vec<(Arc<Server>, String, String)> {
        let idle = self.settings.scale_down_idle;
        let mut st = self.state.lock().unwrap();
        // A copy whose server left the fleet, or that is no longer loaded (Ollama's own
        // keep_alive let it go, or someone unloaded it), is no longer drover's to watch.
        st.placed.retain(|p| fleet.by_url.get(&p.server).is_some_and(|s| s.inventory().warm_for(&p.actual, None)));
        let mut copies: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::new();
        for p in &st.placed {
            if st.pressed.contains_key(&p.model) || self.queue.line_len(&p.model) > 0 {
                continue;
            }
            let Some(server) = fleet.by_url.get(&p.server) else { continue };
            let (in_flight, last_used) = server.model_activity(&p.actual);
            let quiet = now.saturating_duration_since(last_used.map_or(p.at, |t| t.max(p.at)));
            if in_flight > 0 || quiet < idle {
                continue;
            }
            let have = *copies.entry(p.model.clone()).or_insert_with(|| Self::routes_and_copies(fleet, &p.model).1);
            if have <= self.settings.min_replicas {
                continue;
            }
            copies.insert(p.model.clone(), have - 1);
            out.push((server.clone(), p.model.clone(), p.actual.clone()));
        }
        let gone: Vec<(String, String)> = out.iter().map(|(s, m, _)| (s.url.as_str().to_string(), m.clone())).collect();
        st.placed.retain(|p| !gone.contains(&(p.server.clone(), p.model.clone())));
        out
    }

    fn note(&self, st: &mut State, model: &str, server: &str, change: &str, error: Option<String>) {
        metrics::REPLICA_CHANGES.with_label_values(&[model, server, change]).inc();
        if st.changes.len() == KEEP {
            st.changes.pop_front();
        }
        let at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        st.changes.push_back(json!({ "at": at, "model": model, "server": server, "change": change, "error": error }));
    }

    /// For /lb-stats and the dashboard: the settings, copies placed, loads under way, the
    /// last changes.
    pub(crate) fn view(&self) -> Value {
        let st = self.state.lock().unwrap();
        let placed: Vec<Value> = st
            .placed
            .iter()
            .map(|p| json!({ "model": p.model, "server": p.server, "seconds": p.at.elapsed().as_secs() }))
            .collect();
        let loading: Vec<Value> = st.loading.iter().map(|(m, s)| json!({ "model": m, "server": s })).collect();
        json!({
            "enabled": self.settings.enabled,
            "min_replicas": self.settings.min_replicas,
            "max_replicas": self.settings.max_replicas,
            "placed": placed,
            "loading": loading,
            "changes": st.changes.iter().cloned().collect::<Vec<_>>(),
        })
    }
}

/// Why a copy is placed.
#[derive(Clone, Copy)]
enum Why {
    /// The model's requests waited past scale_up_wait for scale_up_for.
    Waiting,
    /// The model is in use with fewer than min_replicas copies.
    Minimum,
}

/// Whether the route's model is loaded on its server (warm).
fn warm_on(r: &Route) -> bool {
    r.server.inventory().warm_for(&r.actual_model, None)
}

/// The replica keeper as a Pingora background service (added only when enabled).
pub(crate) struct ReplicasService(pub Arc<Replicas>);

#[async_trait]
impl BackgroundService for ReplicasService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.0.tick_every()) => self.0.tick().await,
                _ = shutdown.changed() => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Env;
    use crate::fleet::backends::Health;
    use crate::routing::queue::Tenant;
    use tokio::sync::Notify;
    use tokio::time::advance;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Model m (m:7b) on servers a and b, loaded on both. A copy is due once requests have
    /// waited past 2 s for 3 s; a placed one is let go after 60 s without a request.
    fn keeper() -> Arc<Replicas> {
        let yaml = "load_balancer:\n  \
                      replicas: { enabled: true, scale_up_wait: 2s, scale_up_for: 3s, scale_down_idle: 60s }\n\
                    routes:\n\
                    - { virtual_model_name: m, server_url: 'http://a:1', actual_model_name: 'm:7b' }\n\
                    - { virtual_model_name: m, server_url: 'http://b:1', actual_model_name: 'm:7b' }\n";
        let settings = crate::config::Settings::parse(yaml, None, &Env::default()).unwrap();
        let fleet = Fleet::build(&settings, &[], &[], &Health::new(), None);
        for s in &fleet.servers {
            s.mark_loaded("m:7b", None);
        }
        let lb = &settings.load_balancer;
        Replicas::new(
            lb.replicas.clone(),
            Arc::new(ArcSwap::from_pointee(fleet)),
            Arc::new(Queue::new(lb.queue_size, lb.queue_timeout)),
            ResourceCheck::new(settings.resources.clone(), Duration::from_secs(1)),
            Arc::new(Client::default()),
            Duration::from_secs(1),
        )
    }

    /// A copy of m that drover placed on `server` now.
    fn place(r: &Replicas, server: &str) {
        let p = Placed { model: "m".into(), actual: "m:7b".into(), server: server.into(), at: Instant::now() };
        r.state.lock().unwrap().placed.push(p);
    }

    fn due(r: &Replicas) -> Vec<String> {
        r.due(Instant::now())
    }

    fn let_go(r: &Replicas) -> Vec<String> {
        let gone = r.let_go(&r.fleet.load(), Instant::now());
        gone.iter().map(|(s, m, actual)| format!("{m} ({actual}) on {}", s.url.as_str())).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_is_due_once_requests_waited_past_scale_up_wait_for_scale_up_for() {
        let r = keeper();
        let waiting = r.queue.enter("m", Tenant::default(), &Arc::new(Notify::new())).unwrap();
        advance(Duration::from_secs(2) - ms(1)).await;
        assert!(due(&r).is_empty(), "waited a millisecond short of scale_up_wait");
        advance(ms(1)).await;
        assert!(due(&r).is_empty(), "waiting past scale_up_wait from now on");
        advance(Duration::from_secs(3) - ms(1)).await;
        assert!(due(&r).is_empty(), "a millisecond short of scale_up_for");
        advance(ms(1)).await;
        assert_eq!(due(&r), ["m"]);
        drop(waiting);
        assert!(due(&r).is_empty(), "nobody waits any more");
    }

    /// A streamed answer from a warm server whose first byte came scale_up_wait or more
    /// after its request presses as a queued request does, while such answers keep coming
    /// (each lasts SLOW_LASTS); a quicker one clears it.
    #[tokio::test(start_paused = true)]
    async fn slow_first_bytes_press_only_while_they_keep_coming() {
        let r = keeper();
        for _ in 0..4 {
            r.observe_first_byte("m", Duration::from_secs(2));
            assert!(due(&r).is_empty());
            advance(ms(750)).await;
        }
        // 3 s after the first slow answer, 750 ms after the last.
        assert_eq!(due(&r), ["m"]);
        advance(SLOW_LASTS - ms(750) - ms(1)).await;
        assert_eq!(due(&r), ["m"], "the last slow answer still counts");
        advance(ms(1)).await;
        assert!(due(&r).is_empty(), "SLOW_LASTS after the last one: no longer waiting");

        r.observe_first_byte("m", Duration::from_secs(2));
        r.observe_first_byte("m", Duration::from_secs(2) - ms(1));
        advance(Duration::from_secs(3)).await;
        assert!(due(&r).is_empty(), "a quick first byte cleared it");
    }

    #[tokio::test(start_paused = true)]
    async fn a_placed_copy_is_let_go_after_scale_down_idle_without_a_request() {
        let r = keeper();
        place(&r, "http://b:1");
        advance(Duration::from_secs(30)).await;
        // A request there ends: quiet from now on.
        drop(r.fleet.load().by_url["http://b:1"].try_acquire("m:7b").unwrap());
        advance(Duration::from_secs(60) - ms(1)).await;
        assert!(let_go(&r).is_empty(), "quiet a millisecond short of scale_down_idle");
        advance(ms(1)).await;
        assert_eq!(let_go(&r), ["m (m:7b) on http://b:1"]);
        assert!(r.state.lock().unwrap().placed.is_empty(), "no longer drover's to watch");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_copy_stays_while_its_model_waits_and_as_the_last_one() {
        let r = keeper();
        place(&r, "http://b:1");
        advance(Duration::from_secs(60)).await;
        let waiting = r.queue.enter("m", Tenant::default(), &Arc::new(Notify::new())).unwrap();
        assert!(let_go(&r).is_empty(), "a request of its model waits");
        drop(waiting);
        r.fleet.load().by_url["http://a:1"].mark_unloaded("m:7b");
        assert!(let_go(&r).is_empty(), "the only copy left: min_replicas is 1");
        assert_eq!(r.state.lock().unwrap().placed.len(), 1, "still watched");
    }
}
