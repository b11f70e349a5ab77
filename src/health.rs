//! Active health checks through pingora-load-balancing: drover's `HealthCheck` run by the crate's `HealthCheckService`.
//!
//! Every server of the fleet is a `Backend` of one `Backends` view over a shared
//! `HealthRegistry`; the crate keeps rise/fall state and runs the checks each interval,
//! and selection asks `ready()`. drover's check is per server kind: an Ollama server is
//! asked GET /api/version, an openai-kind one GET /v1/models (neither loads a model), and a
//! healthy answer refreshes the server's /api/tags and /api/ps in the same pass.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::HealthCheck;
use pingora::lb::{Backend, Backends, HealthCheckService, HealthRegistry};
use pingora::{Error, ErrorType};
use serde_json::Value;

use crate::client::Client;
use crate::config::LoadBalancing;
use crate::fleet::{canonical_model, Fleet, Inventory, Kind, Server, ServerUrl};

/// The fleet's servers as pingora-load-balancing backends, and their readiness.
pub struct Health {
    registry: Arc<HealthRegistry>,
    view: Backends,
    /// What `Membership::discover` hands the view: the servers of the fleet being built.
    members: Arc<Mutex<BTreeSet<Backend>>>,
}

impl Health {
    pub fn new() -> Arc<Health> {
        let registry = Arc::new(HealthRegistry::new());
        let members = Arc::new(Mutex::new(BTreeSet::new()));
        let view = Backends::new_with_health_registry(Box::new(Membership(members.clone())), registry.clone());
        Arc::new(Health { registry, view, members })
    }

    /// The backend standing for a server. Its identity (address and weight, which is all
    /// the crate compares) must be unique per server URL and stable across reloads, and
    /// selection never uses the crate's weights: the weight is a key derived from the URL,
    /// so that two servers behind one address (base paths on one gateway) stay two
    /// backends. The URL itself travels in `ext` for the check.
    pub fn backend(url: &ServerUrl) -> Backend {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        url.as_str().hash(&mut h);
        let ip = url.host.parse::<IpAddr>().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let mut backend = Backend { addr: SocketAddr::new(ip, url.port).into(), weight: 1, ext: Default::default() };
        backend.weight = 1 + (h.finish() % (u32::MAX as u64)) as usize;
        backend.ext.insert(url.clone());
        backend
    }

    /// Makes `servers` the view's membership: new servers start healthy (as the crate's
    /// backends do), removed ones stop being checked. Runs before the fleet that names
    /// them is published, so no request sees a server the view does not know.
    pub fn set_members(&self, servers: &[Arc<Server>]) {
        *self.members.lock().unwrap() = servers.iter().map(|s| s.backend.clone()).collect();
        // Discovery is the set just stored: the update completes without waiting on anything.
        if let Err(e) = futures::executor::block_on(self.view.update(|_| {})) {
            log::error!("health view update failed: {e}");
        }
    }

    /// Healthy by the checks and not disabled by hand.
    pub fn ready(&self, backend: &Backend) -> bool {
        self.view.ready(backend)
    }

    /// Takes a server out of (or back into) selection by hand, whatever its checks say.
    pub fn set_enabled(&self, backend: &Backend, enabled: bool) {
        self.view.set_enable(backend, enabled)
    }

    /// The crate's health service running `check` over this registry every interval.
    pub fn service(&self, check: ServerCheck, interval: Duration) -> HealthCheckService {
        self.registry.set_health_check(Box::new(check));
        let mut service = HealthCheckService::new(self.registry.clone());
        service.health_check_frequency = Some(interval);
        service.parallel_health_check = true;
        service
    }
}

/// The view's discovery: whatever `Health::set_members` stored last.
struct Membership(Arc<Mutex<BTreeSet<Backend>>>);

#[async_trait]
impl ServiceDiscovery for Membership {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        Ok((self.0.lock().unwrap().clone(), HashMap::new()))
    }
}

/// drover's check of one server, by kind, with the inventory refresh in the same pass.
pub struct ServerCheck {
    fleet: Arc<ArcSwap<Fleet>>,
    client: Client,
    timeout: Duration,
    rise: usize,
    fall: usize,
}

impl ServerCheck {
    pub fn new(fleet: Arc<ArcSwap<Fleet>>, lb: &LoadBalancing) -> ServerCheck {
        ServerCheck {
            fleet,
            client: Client::default(),
            timeout: lb.health_check_timeout,
            rise: lb.rise as usize,
            fall: lb.fall as usize,
        }
    }

    fn server(&self, target: &Backend) -> Option<Arc<Server>> {
        let url = target.ext.get::<ServerUrl>()?;
        self.fleet.load().by_url.get(url.as_str()).cloned()
    }

    async fn refresh_inventory(&self, server: &Server, check_answer: Value) {
        let inventory = match server.kind {
            Kind::OpenAi => inventory_from_openai(&check_answer),
            Kind::Ollama => {
                let (tags, ps) = futures::join!(
                    self.client.get_json(server, "/api/tags", self.timeout),
                    self.client.get_json(server, "/api/ps", self.timeout),
                );
                let previous = server.inventory();
                let version = check_answer.get("version").and_then(Value::as_str).map(str::to_string);
                // Keep the last good list when one refresh fails: a slow answer is not an empty server.
                let tags = tags.map(|v| models_of(&v)).unwrap_or_else(|_| previous.tags.clone());
                let loaded = ps.map(|v| models_of(&v)).unwrap_or_else(|_| previous.loaded.clone());
                Inventory { names: names_of(&tags), loaded_names: names_of(&loaded), tags, loaded, version }
            }
        };
        server.set_inventory(inventory);
    }
}

#[async_trait]
impl HealthCheck for ServerCheck {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        // A server already gone from the fleet passes: it is about to leave the view.
        let Some(server) = self.server(target) else { return Ok(()) };
        let result = match server.refresh_address().await {
            Err(e) => Err(format!("cannot resolve {}: {e}", server.url.host)),
            Ok(_) => match server.kind {
                Kind::Ollama => self.client.get_json(&server, "/api/version", self.timeout).await,
                Kind::OpenAi => self.client.get_json(&server, "/v1/models", self.timeout).await,
            },
        };
        match result {
            Ok(answer) => {
                self.refresh_inventory(&server, answer).await;
                Ok(())
            }
            Err(why) => {
                server.note_error(&why);
                Error::e_explain(ErrorType::ConnectError, why)
            }
        }
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        if let (true, Some(server)) = (healthy, self.server(target)) {
            // A server the checks saw come back is worth trying again at once.
            server.end_cooldown();
        }
    }

    fn backend_summary(&self, target: &Backend) -> String {
        target.ext.get::<ServerUrl>().map_or_else(|| format!("{target:?}"), |u| format!("server {}", u.as_str()))
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.rise
        } else {
            self.fall
        }
    }
}

/// The `models` array of an /api/tags or /api/ps answer.
pub fn models_of(answer: &Value) -> Vec<Value> {
    answer.get("models").and_then(Value::as_array).cloned().unwrap_or_default()
}

pub fn names_of(models: &[Value]) -> std::collections::HashSet<String> {
    models
        .iter()
        .filter_map(|m| m.get("name").or_else(|| m.get("model")).and_then(Value::as_str))
        .map(canonical_model)
        .collect()
}

/// An openai-kind server's /v1/models, described as Ollama tags so the fleet view is uniform.
fn inventory_from_openai(answer: &Value) -> Inventory {
    let tags: Vec<Value> = answer
        .get("data")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("id").and_then(Value::as_str))
        .map(|id| serde_json::json!({ "name": id, "model": id, "size": 0, "digest": "", "details": {} }))
        .collect();
    Inventory { names: names_of(&tags), tags, ..Inventory::default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn openai_models_become_tags() {
        let inv = inventory_from_openai(&json!({"object": "list", "data": [{"id": "smol"}, {"id": "x:1b"}]}));
        assert!(inv.names.contains("smol:latest"));
        assert!(inv.names.contains("x:1b"));
        assert_eq!(inv.tags[0]["name"], "smol");
    }

    #[test]
    fn tags_names_are_canonical() {
        let tags = models_of(&json!({"models": [{"name": "llama3:latest"}, {"model": "qwen3"}]}));
        let names = names_of(&tags);
        assert!(names.contains("llama3:latest") && names.contains("qwen3:latest"));
    }

    #[test]
    fn backends_are_one_per_url_and_stable() {
        let a = Health::backend(&ServerUrl::parse("http://10.0.0.1:8080/a").unwrap());
        let b = Health::backend(&ServerUrl::parse("http://10.0.0.1:8080/b").unwrap());
        assert_eq!(a.addr, b.addr, "one address");
        assert_ne!(a, b, "two backends");
        assert_eq!(a, Health::backend(&ServerUrl::parse("http://10.0.0.1:8080/a/").unwrap()));
        assert_eq!(a.ext.get::<ServerUrl>().unwrap().as_str(), "http://10.0.0.1:8080/a");
    }

    #[test]
    fn membership_and_manual_disable_decide_readiness() {
        let health = Health::new();
        let url = ServerUrl::parse("http://gpu1:11434").unwrap();
        let backend = Health::backend(&url);
        assert!(!health.ready(&backend), "not a member yet");
        *health.members.lock().unwrap() = [backend.clone()].into();
        futures::executor::block_on(health.view.update(|_| {})).unwrap();
        assert!(health.ready(&backend), "members start healthy");
        health.set_enabled(&backend, false);
        assert!(!health.ready(&backend));
        health.set_enabled(&backend, true);
        assert!(health.ready(&backend));
    }
}
