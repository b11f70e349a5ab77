//! The fleet's servers as pingora-load-balancing `Backend`s: one `Backends` view over a shared `HealthRegistry`, and readiness.
//!
//! Selection stays drover's own and asks `Health::ready()`; the crate's `HealthCheckService`
//! runs drover's check (health.rs) over the registry and keeps each server's rise/fall state.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::HealthCheck;
use pingora::lb::{Backend, Backends, HealthCheckService, HealthRegistry};

use crate::protocol::ollama::ServerUrl;

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
    pub(crate) fn backend(url: &ServerUrl) -> Backend {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        url.as_str().hash(&mut h);
        let ip = url.host.parse::<IpAddr>().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let mut backend = Backend { addr: SocketAddr::new(ip, url.port).into(), weight: 1, ext: Default::default() };
        backend.weight = 1 + (h.finish() % (u32::MAX as u64)) as usize;
        backend.ext.insert(url.clone());
        backend
    }

    /// Makes `members` the view's membership: new servers start healthy (as the crate's
    /// backends do), removed ones stop being checked. Runs before the fleet that names
    /// them is published, so no request sees a server the view does not know.
    pub(crate) fn set_members(&self, members: BTreeSet<Backend>) {
        *self.members.lock().unwrap() = members;
        // Discovery is the set just stored and the crate's update does no other await: it
        // completes at its first poll, so the fleet's build (called from async code too) never
        // blocks a thread on it.
        use futures::FutureExt;
        match self.view.update(|_| {}).now_or_never() {
            Some(Ok(_)) => {}
            Some(Err(e)) => log::error!("health view update failed: {e}"),
            None => log::error!("health view update did not complete at once; membership applies at the next change"),
        }
    }

    /// Healthy by the checks and not disabled by hand.
    pub(crate) fn ready(&self, backend: &Backend) -> bool {
        self.view.ready(backend)
    }

    /// Takes a server out of (or back into) selection by hand, whatever its checks say.
    pub(crate) fn set_enabled(&self, backend: &Backend, enabled: bool) {
        self.view.set_enable(backend, enabled)
    }

    /// The crate's health service running `check` over this registry every interval.
    pub(crate) fn service(
        &self,
        check: impl HealthCheck + Send + Sync + 'static,
        interval: Duration,
    ) -> HealthCheckService {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_are_one_per_url_and_stable() {
        let a = Health::backend(&ServerUrl::parse("http://10.0.0.1:8080/a").unwrap());
        let b = Health::backend(&ServerUrl::parse("http://10.0.0.1:8080/b").unwrap());
        assert_eq!(a.addr, b.addr, "one address");
        assert_ne!(a, b, "two backends");
        assert_eq!(a, Health::backend(&ServerUrl::parse("http://10.0.0.1:8080/a/").unwrap()));
        assert_eq!(a.ext.get::<ServerUrl>().unwrap().as_str(), "http://10.0.0.1:8080/a");
    }

    /// A check that fails while `down` is set, with rise 3 and fall 2.
    struct Switch(Arc<std::sync::atomic::AtomicBool>);

    #[async_trait]
    impl HealthCheck for Switch {
        async fn check(&self, _: &Backend) -> pingora::Result<()> {
            match self.0.load(std::sync::atomic::Ordering::Relaxed) {
                true => pingora::Error::e_explain(pingora::ErrorType::ConnectError, "down"),
                false => Ok(()),
            }
        }

        fn health_threshold(&self, success: bool) -> usize {
            if success {
                3
            } else {
                2
            }
        }
    }

    #[test]
    fn the_registry_applies_rise_and_fall() {
        let health = Health::new();
        let backend = Health::backend(&ServerUrl::parse("http://10.0.0.9:11434").unwrap());
        health.set_members([backend.clone()].into());
        let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let _service = health.service(Switch(down.clone()), Duration::from_secs(1));
        let pass = || futures::executor::block_on(health.registry.run_health_check(false));
        let mut seen = Vec::new();
        for _ in 0..2 {
            pass();
            seen.push(health.ready(&backend));
        }
        down.store(false, std::sync::atomic::Ordering::Relaxed);
        for _ in 0..3 {
            pass();
            seen.push(health.ready(&backend));
        }
        assert_eq!(seen, [true, false, false, false, true], "down after 2 failures, up after 3 successes");
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
