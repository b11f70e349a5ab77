//! `Drover`, the balancer every request shares: the parts serve.rs built (handed in, never
//! reached through another type), and the settings the hooks read on every request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use crate::admin::required::Keeper;
use crate::admin::Admin;
use crate::config::Settings;
use crate::edge::keys::Keyring;
use crate::fleet::client::Client;
use crate::fleet::Fleet;
use crate::routing::resources::ResourceCheck;
use crate::routing::scheduler::Scheduler;
use crate::state::cache::ResponseCache;
use crate::state::memory::Memory;
use crate::state::reload::{Reloader, Tally};
use crate::state::shared::Shared;
use crate::telemetry::accesslog::AccessLog;

/// The shared parts the balancer works with, each built once by serve.rs (the composition
/// root) and shared with the background services and the admin API.
pub struct Parts {
    pub settings: Arc<Settings>,
    pub fleet: Arc<ArcSwap<Fleet>>,
    /// The store follower: its state for /health.
    pub reloader: Arc<Reloader>,
    /// Requests served per stored route, written back by the reloader.
    pub tally: Arc<Tally>,
    pub keys: Arc<Keyring>,
    pub resources: Arc<ResourceCheck>,
    pub shared: Arc<Shared>,
    pub admin: Arc<Admin>,
    pub keeper: Arc<Keeper>,
    pub client: Arc<Client>,
    /// Requests waiting for a busy model, in fair order (shared with `replicas`).
    pub queue: Arc<crate::routing::queue::Queue>,
    /// Copies of models that follow demand (load_balancer.replicas).
    pub replicas: Arc<crate::routing::replicas::Replicas>,
    pub cache: ResponseCache,
    pub memory: Arc<Memory>,
    /// Also flushed by the stopper before the process exits.
    pub access_log: Arc<AccessLog>,
}

/// The balancer: one per process, shared by every request.
pub struct Drover {
    pub(super) fleet: Arc<ArcSwap<Fleet>>,
    pub(super) scheduler: Scheduler,
    pub(super) replicas: Arc<crate::routing::replicas::Replicas>,
    pub(super) resources: Arc<ResourceCheck>,
    pub(super) tally: Arc<Tally>,
    pub(super) reloader: Arc<Reloader>,
    pub(super) admin: Arc<Admin>,
    pub(super) keeper: Arc<Keeper>,
    pub(super) client: Arc<Client>,
    pub(super) access_log: Arc<AccessLog>,
    pub(super) cors: crate::edge::cors::Cors,
    pub(super) keys: Arc<Keyring>,
    pub(super) require_keys: bool,
    /// Listening on loopback only, without keys: every API request's Host must be one a web
    /// page cannot rebind (as Ollama checks when bound to loopback; admin.rs host_allowed).
    pub(super) host_guard: bool,
    pub(super) client_limit: Option<crate::edge::limits::ClientLimiter>,
    pub(super) compression_level: u32,
    pub(super) compression_min_bytes: usize,
    pub(super) max_body_bytes: usize,
    pub(super) max_header_bytes: usize,
    pub(super) max_retry_count: u32,
    /// load_balancer.resume, and its per-model exceptions.
    resume: bool,
    model_resume: std::collections::HashMap<String, bool>,
    pub(super) max_rest: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) read_timeout: Duration,
    pub(super) config_source: Option<String>,
    pub(super) database: String,
    pub(super) started: Instant,
    next_id: AtomicU64,
    id_prefix: String,
    /// The last errors clients got, for the dashboard.
    pub(super) recent_errors: crate::admin::dashboard::RecentErrors,
    /// Limits and cooldowns shared with other drovers through Redis (state/shared.rs).
    pub(super) shared: Arc<Shared>,
    /// Answers to deterministic requests (state/cache.rs).
    pub(super) cache: ResponseCache,
    /// Conversation memory (state/memory.rs).
    pub(super) memory: Arc<Memory>,
}

impl Drover {
    /// The balancer over the parts serve.rs built.
    pub fn new(parts: Parts) -> Drover {
        let Parts {
            settings,
            fleet,
            reloader,
            tally,
            keys,
            resources,
            shared,
            admin,
            keeper,
            client,
            queue,
            replicas,
            cache,
            memory,
            access_log,
        } = parts;
        let boot = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Drover {
            access_log,
            cors: crate::edge::cors::Cors::new(&settings.cors_origins),
            keys,
            require_keys: settings.require_keys,
            host_guard: settings.listen.ip().is_loopback() && settings.tls.is_none() && !settings.require_keys,
            client_limit: settings
                .client_requests_per_minute
                .map(|n| crate::edge::limits::ClientLimiter::new(n, settings.max_tracked_clients)),
            compression_level: settings.compression_level,
            compression_min_bytes: settings.compression_min_bytes,
            tally,
            reloader,
            admin,
            keeper,
            client,
            scheduler: Scheduler::new(&settings, resources.clone(), queue),
            replicas,
            resources,
            fleet,
            max_body_bytes: settings.load_balancer.max_body_bytes,
            max_header_bytes: settings.load_balancer.max_header_bytes,
            max_retry_count: settings.load_balancer.max_retry_count,
            resume: settings.load_balancer.resume,
            model_resume: settings.load_balancer.model_resume.clone(),
            max_rest: settings.load_balancer.max_rest,
            connect_timeout: settings.http_client.connect_timeout,
            read_timeout: settings.http_client.read_timeout,
            config_source: settings.source.as_ref().map(|p| p.display().to_string()),
            database: crate::storage::store::redact_url(&settings.database_url),
            started: Instant::now(),
            next_id: AtomicU64::new(0),
            id_prefix: format!("{:x}{:x}", boot.as_secs(), std::process::id()),
            recent_errors: Default::default(),
            cache,
            memory,
            shared,
        }
    }

    /// The client's X-Request-Id when it sent a usable one, else a new one.
    pub(super) fn request_id(&self, session: &Session) -> String {
        session
            .req_header()
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .map(str::to_string)
            .unwrap_or_else(|| {
                let n = self.next_id.fetch_add(1, Ordering::Relaxed);
                format!("{}-{n:x}", self.id_prefix)
            })
    }

    /// The format in which a stream of `model` on `path` is continued elsewhere when its
    /// server breaks off; `None` where resumption is off or the endpoint cannot be continued.
    pub(super) fn resumable(&self, model: &str, path: &str) -> Option<crate::protocol::resume::Format> {
        let on = self.model_resume.get(model).copied().unwrap_or(self.resume);
        crate::protocol::resume::Format::of_path(path).filter(|_| on)
    }

    /// Whether an answer may be compressed: a whole one (never a stream, whose lines would
    /// wait in the encoder) of at least compression.min_bytes. Whether the client accepts
    /// an encoding, and whether the answer is encoded already, Pingora's module decides.
    pub(super) fn worth_compressing(&self, resp: &ResponseHeader) -> bool {
        let text = |name| resp.headers.get(name).and_then(|v: &http::HeaderValue| v.to_str().ok());
        let length = text(http::header::CONTENT_LENGTH).and_then(|l| l.parse::<usize>().ok());
        if self.compression_level == 0 || length.is_none_or(|n| n < self.compression_min_bytes) {
            return false;
        }
        !crate::protocol::api::is_stream(text(http::header::CONTENT_TYPE).unwrap_or(""))
    }
}
