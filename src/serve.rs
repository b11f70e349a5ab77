//! `drover serve`: load the settings, build the fleet, and run the Pingora server.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::accept::FirstRequest;
use crate::admin::guard::AdminGuard;
use crate::admin::{Admin, AdminParts};
use crate::config::{Env, Settings};
use crate::edge::keys::Keyring;
use crate::fleet::backends::Health;
use crate::fleet::client::Client;
use crate::fleet::gauges::FleetCollector;
use crate::fleet::health::ServerCheck;
use crate::fleet::Fleet;
use crate::ops::errors::RecentErrors;
use crate::placement::replicas::{Replicas, ReplicasService};
use crate::placement::required::{Keeper, KeeperService};
use crate::proxy::{Accounting, Admission, Drover, OwnAnswers, OwnParts, Relay, Responder, Routing, Upstream};
use crate::routing::queue::Queue;
use crate::routing::resources::ResourceCheck;
use crate::routing::scheduler::Scheduler;
use crate::state::cache::ResponseCache;
use crate::state::dns::{Discovery, DnsService};
use crate::state::memory::Memory;
use crate::state::reload::{Reloader, Tally};
use crate::state::shared::{Shared, SharedService};
use crate::stop::Stopper;
use crate::storage::store::{Backend, Store, StoreError, StoreHandle, StoreState, StoredKey, StoredRoute};
use crate::telemetry::accesslog::AccessLog;

/// Command-line switches of `drover serve`.
pub struct ServeArgs {
    pub config: Option<PathBuf>,
    pub upgrade: bool,
    pub daemon: bool,
    pub test: bool,
}

/// The config file to read: the one named, else conf/drover.yaml when present, else none (defaults).
fn config_path(named: Option<PathBuf>) -> Option<PathBuf> {
    named.or_else(|| {
        let default = PathBuf::from("conf/drover.yaml");
        default.exists().then_some(default)
    })
}

/// Runs the balancer; returns the process exit code.
///
/// The composition root, one seam after another: the settings, Pingora's server, the
/// store's first read, the fleet, the shared parts, the balancer, its listeners, the
/// background services. Every shared part is built once here and handed to those that use it.
pub fn run(args: ServeArgs) -> i32 {
    let Some(settings) = load_settings(args.config) else { return 1 };
    if args.test {
        println!(
            "drover: configuration OK ({}): {} servers, {} routes, listening on {}",
            settings.source.as_ref().map_or("defaults".into(), |p| p.display().to_string()),
            settings.servers.len(),
            settings.routes.len(),
            settings.listen
        );
        return 0;
    }
    let mut server = pingora_server(&settings, args.upgrade, args.daemon);
    let Some(stored) = first_read(&settings) else { return 1 };
    let settings = Arc::new(settings);
    let fleet = FleetStart::build(&settings, &stored.rows);
    let shared = match Shared::new(settings.redis_url.as_deref(), settings.redis_timeout) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("drover: state.redis_url: {e}");
            return 1;
        }
    };
    if let Some(u) = &settings.redis_url {
        log::info!("shared state in Redis at {}", crate::storage::store::redact_url(u));
    }
    let parts = Parts::build(&settings, stored, &fleet, shared);
    crate::telemetry::metrics::init();
    let readings = parts.resources.clone();
    FleetCollector::register(fleet.fleet.clone(), Box::new(move || readings.free_memory()));
    let mut prometheus = pingora_prometheus::prometheus_http_service();
    prometheus.add_tcp(&settings.metrics_listen.to_string());
    server.add_service(prometheus);
    let drover = balancer(&parts);
    match proxy_service(&server, &settings, drover) {
        Ok(proxy) => {
            server.add_service(proxy);
        }
        Err(e) => {
            eprintln!("drover: server.tls: {e}");
            return 1;
        }
    }
    background_services(&mut server, parts, fleet);
    server.run_forever()
}

/// The settings from the config file (or the defaults) and the environment; every error
/// printed, with its key, when there are any.
fn load_settings(named: Option<PathBuf>) -> Option<Settings> {
    let path = config_path(named);
    match Settings::load(path.as_deref(), &Env::from_process()) {
        Ok(s) => Some(s),
        Err(errors) => {
            let source = path.as_ref().map_or("defaults".into(), |p| p.display().to_string());
            eprintln!("drover: configuration errors in {source}:");
            for e in &errors.0 {
                eprintln!("  {e}");
            }
            None
        }
    }
}

/// Pingora's server, bootstrapped (daemonised, or given the listening sockets of the
/// process it upgrades).
fn pingora_server(settings: &Settings, upgrade: bool, daemon: bool) -> Server {
    let conf = ServerConf {
        threads: settings.threads,
        grace_period_seconds: Some(settings.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(5),
        upgrade_sock: settings.upgrade_sock.clone(),
        pid_file: settings.pid_file.clone(),
        daemon,
        // The proxy's pool of idle upstream connections.
        upstream_keepalive_pool_size: settings.http_client.keepalive_pool,
        // Pingora's own cap on attempts per request: drover's retries (load_balancer.max_retry_count)
        // plus the first attempt and the stale pooled connections replaced without counting.
        max_retries: settings.load_balancer.max_retry_count as usize + 1 + crate::proxy::STALE_RETRIES as usize,
        ..ServerConf::default()
    };
    let opt = Opt { upgrade, daemon, nocapture: false, test: false, conf: None };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    server
}

/// What the store held at start.
struct Stored {
    rows: Vec<StoredRoute>,
    keys: Vec<StoredKey>,
    marker: i64,
    state: StoreState,
}

/// The store's first read. A database that is not there yet does not stop the start
/// (compose and Kubernetes start things in any order): drover serves its config's routes
/// and discovery, /health says degraded, and the reloader loads the stored routes and keys
/// when the database answers. `None` only for a URL no backend takes.
fn first_read(settings: &Settings) -> Option<Stored> {
    if Backend::of(&settings.database_url).is_none() {
        eprintln!("drover: database.url: unsupported scheme (sqlite:, postgres:, mysql: or mariadb:)");
        return None;
    }
    Some(match load_store(settings) {
        Ok((rows, keys, marker)) => Stored { rows, keys, marker, state: StoreState::Ok },
        Err(e) => {
            log::warn!("{e}; serving without the stored routes and keys until it answers");
            let state = StoreState::Unreachable(e.to_string());
            Stored { rows: Vec::new(), keys: Vec::new(), marker: NEVER_LOADED, state }
        }
    })
}

/// The first fleet: the servers found by DNS name, resolved once, the config's and the
/// stored routes, and the health registry every later snapshot carries on.
struct FleetStart {
    discovery: Arc<Discovery>,
    discovered: Vec<crate::config::ServerSpec>,
    health: Arc<Health>,
    fleet: Arc<ArcSwap<Fleet>>,
}

impl FleetStart {
    fn build(settings: &Settings, rows: &[StoredRoute]) -> FleetStart {
        let discovery = Arc::new(Discovery::new(settings));
        let discovered = resolve_at_start(&discovery);
        let health = Health::new();
        let fleet = Arc::new(ArcSwap::from_pointee(Fleet::build(settings, rows, &discovered, &health, None)));
        log::info!(
            "drover {} listening on {} with {} servers and {} virtual models",
            env!("CARGO_PKG_VERSION"),
            settings.listen,
            fleet.load().servers.len(),
            fleet.load().routes.len()
        );
        FleetStart { discovery, discovered, health, fleet }
    }
}

/// The parts shared by the balancer, the admin API and the background services.
struct Parts {
    settings: Arc<Settings>,
    fleet: Arc<ArcSwap<Fleet>>,
    keyring: Arc<Keyring>,
    store: Arc<StoreHandle>,
    tally: Arc<Tally>,
    reloader: Arc<Reloader>,
    resources: Arc<ResourceCheck>,
    shared: Arc<Shared>,
    client: Arc<Client>,
    queue: Arc<Queue>,
    replicas: Arc<Replicas>,
    keeper: Arc<Keeper>,
    access_log: Arc<AccessLog>,
}

impl Parts {
    fn build(settings: &Arc<Settings>, stored: Stored, start: &FleetStart, shared: Arc<Shared>) -> Parts {
        let fleet = start.fleet.clone();
        let keyring = Arc::new(Keyring::default());
        keyring.replace(stored.keys);
        if settings.require_keys && keyring.is_empty() {
            log::warn!("auth.require_keys is on and no API key exists yet: every model call gets 401 until one is made (POST /admin/keys)");
        }
        let store = Arc::new(StoreHandle::new(&settings.database_url, settings.database_pool_size));
        let tally = Arc::new(Tally::default());
        let sources = (stored.marker, stored.rows, start.discovered.clone());
        let reloader = Arc::new(Reloader::new(
            settings.clone(),
            store.clone(),
            fleet.clone(),
            keyring.clone(),
            tally.clone(),
            sources,
        ));
        reloader.starts(stored.state);
        let resources = ResourceCheck::new(settings.resources.clone(), settings.load_balancer.health_check_timeout);
        let client = Arc::new(Client::default());
        let lb = &settings.load_balancer;
        let queue = Arc::new(Queue::new(lb.queue_size, lb.queue_timeout));
        let replicas = Replicas::new(
            lb.replicas.clone(),
            fleet.clone(),
            queue.clone(),
            resources.clone(),
            client.clone(),
            settings.http_client.read_timeout,
        );
        Parts {
            settings: settings.clone(),
            keeper: Arc::new(Keeper::new(settings, fleet.clone(), client.clone())),
            access_log: Arc::new(AccessLog::new(&settings.access_log)),
            fleet,
            keyring,
            store,
            tally,
            reloader,
            resources,
            shared,
            client,
            queue,
            replicas,
        }
    }
}

/// The balancer, one part per stage of a request, each given only what it uses.
fn balancer(p: &Parts) -> Drover {
    let settings = &p.settings;
    let admin = Arc::new(Admin::new(AdminParts {
        settings: settings.clone(),
        store: p.store.clone(),
        reloader: p.reloader.clone(),
        keyring: p.keyring.clone(),
        client: p.client.clone(),
        keeper: p.keeper.clone(),
        resources: p.resources.clone(),
        fleet: p.fleet.clone(),
    }));
    let guard = Arc::new(AdminGuard::new(settings));
    let scheduler = Arc::new(Scheduler::new(settings, p.resources.clone(), p.queue.clone()));
    let cache = Arc::new(ResponseCache::new(settings.cache.clone(), p.shared.clone()));
    let memory = Arc::new(Memory::new(settings.memory.clone(), p.shared.clone(), p.store.clone()));
    let recent_errors = Arc::new(RecentErrors::default());
    Drover::new(
        Admission::new(settings, p.keyring.clone(), guard.clone(), p.shared.clone()),
        Routing::new(settings, p.fleet.clone(), scheduler.clone(), memory.clone(), cache.clone(), p.client.clone()),
        Upstream::new(settings, scheduler, p.shared.clone()),
        Relay::new(settings, p.tally.clone(), p.replicas.clone(), memory, cache),
        Accounting::new(p.access_log.clone(), recent_errors.clone(), p.shared.clone()),
        OwnAnswers::new(
            settings,
            OwnParts {
                fleet: p.fleet.clone(),
                guard,
                admin,
                keeper: p.keeper.clone(),
                client: p.client.clone(),
                reloader: p.reloader.clone(),
                resources: p.resources.clone(),
                replicas: p.replicas.clone(),
                queue: p.queue.clone(),
                shared: p.shared.clone(),
                recent_errors,
            },
        ),
        Responder::new(settings),
    )
}

/// The balancer's listening service: Pingora's proxy app, behind the wrapper that lets a
/// connection accepted just before a graceful stop (upgrade or SIGTERM) have its first
/// request answered, on the plain listener and the TLS one when configured.
fn proxy_service(
    server: &Server,
    settings: &Settings,
    drover: Drover,
) -> Result<Service<FirstRequest<pingora::proxy::HttpProxy<Drover>>>, TlsError> {
    let linger = Duration::from_secs(1).min(Duration::from_secs(settings.grace_period_seconds));
    let app =
        FirstRequest::new(pingora::proxy::http_proxy(&server.configuration, drover), linger, settings.header_timeout);
    let mut proxy = Service::new("drover".to_string(), app);
    // No L4 read buffer in front of client connections: Pingora's HTTP/1 session reads into
    // buffers of its own, so the 64 KiB default only costs memory per open connection.
    let listener = ListenerConfig::tcp(settings.listen.to_string()).l4_buffer(L4BufferSettings::default().read(0));
    proxy.add_listener(listener);
    if let Some(tls) = &settings.tls {
        proxy.add_tls_with_settings(&tls.listen.to_string(), None, tls_settings(tls)?);
        log::info!("TLS on {} ({}), HTTP/2 by ALPN", tls.listen, tls.cert.display());
    }
    Ok(proxy)
}

/// What runs beside the proxy: DNS discovery, the store follower, required models, replicas,
/// the Redis follower, health checks, and the exit once a stop has drained.
fn background_services(server: &mut Server, parts: Parts, start: FleetStart) {
    let Parts { settings, fleet, reloader, keeper, replicas, shared, access_log, .. } = parts;
    let lb = &settings.load_balancer;
    if !start.discovery.is_empty() {
        let following =
            DnsService { discovery: start.discovery, reloader: reloader.clone(), interval: lb.dns_interval };
        server.add_service(background_service("dns discovery", following));
    }
    server.add_service(background_service("routes reload", ReloaderService(reloader)));
    server.add_service(background_service("required models", KeeperService(keeper)));
    if replicas.enabled() {
        server.add_service(background_service("replicas", ReplicasService(replicas)));
    }
    let following = SharedService { shared, fleet: fleet.clone() };
    server.add_service(background_service("shared state", following));
    // Active health checks: drover's check, run over the fleet's health registry by
    // pingora-load-balancing's own service.
    let checks = start.health.service(ServerCheck::new(fleet, lb), lb.health_check_interval);
    server.add_service(background_service("health checks", checks));
    // Exits once a graceful stop has begun and nothing is left in flight (stop.rs).
    let grace = Duration::from_secs(settings.grace_period_seconds);
    server.add_service(background_service("stop when idle", Stopper { access_log, grace }));
}

/// Why the TLS listener cannot start.
#[derive(Debug, thiserror::Error)]
enum TlsError {
    #[error("no certificate in {cert} or no private key in {key}")]
    Missing { cert: String, key: String },
    #[error("cannot load {cert} / {key}: {source}")]
    Load {
        cert: String,
        key: String,
        #[source]
        source: pingora::BError,
    },
    #[error("{0}")]
    Settings(#[source] pingora::BError),
}

/// The TLS listener's settings, after checking that the certificate and key load (Pingora
/// would panic on a bad file when the listener starts).
fn tls_settings(tls: &crate::config::Tls) -> Result<pingora::listeners::tls::TlsSettings, TlsError> {
    let (cert, key) = (tls.cert.display().to_string(), tls.key.display().to_string());
    match pingora::tls::load_certs_and_key_files(&cert, &key) {
        Ok(Some(_)) => {}
        Ok(None) => return Err(TlsError::Missing { cert, key }),
        Err(source) => return Err(TlsError::Load { cert, key, source }),
    }
    let mut settings = pingora::listeners::tls::TlsSettings::intermediate(&cert, &key).map_err(TlsError::Settings)?;
    settings.enable_h2();
    Ok(settings)
}

/// The `dns:` servers' first addresses (none for a name that does not resolve yet: it is
/// tried again every dns_interval).
fn resolve_at_start(discovery: &Discovery) -> Vec<crate::config::ServerSpec> {
    if discovery.is_empty() {
        return Vec::new();
    }
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => {
            runtime.block_on(discovery.refresh());
        }
        Err(e) => log::error!("dns: cannot start a runtime: {e}"),
    }
    discovery.servers()
}

/// The marker of a store never read: any marker the database has differs, so the first
/// poll that reaches it loads the routes and keys.
const NEVER_LOADED: i64 = i64::MIN;

/// Why the store could not be read at start (drover serves without it until it answers).
#[derive(Debug, thiserror::Error)]
enum StoreLoadError {
    #[error("cannot start a runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("{0}")]
    Open(#[source] StoreError),
    #[error("database {url}: {source}")]
    Read {
        url: String,
        #[source]
        source: StoreError,
    },
}

/// Opens the store once at start: creates and migrates it, and reads the routes, keys and marker.
/// The connection made here is closed; the reloader opens its own on its own runtime.
fn load_store(settings: &Settings) -> Result<(Vec<StoredRoute>, Vec<StoredKey>, i64), StoreLoadError> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(StoreLoadError::Runtime)?;
    runtime.block_on(async {
        let store = Store::open(&settings.database_url, 1).await.map_err(StoreLoadError::Open)?;
        let what = |source: StoreError| StoreLoadError::Read { url: store.url.clone(), source };
        let marker = store.marker().await.map_err(what)?;
        let rows = store.list().await.map_err(what)?;
        let keys = store.list_keys().await.map_err(what)?;
        log::info!(
            "database {} ({}): {} stored routes, {} API keys",
            store.url,
            store.backend.as_str(),
            rows.len(),
            keys.len()
        );
        store.close().await;
        Ok((rows, keys, marker))
    })
}

/// Runs the reloader, shared with the proxy, as a Pingora background service.
struct ReloaderService(Arc<Reloader>);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for ReloaderService {
    async fn start(&self, shutdown: pingora::server::ShutdownWatch) {
        self.0.start(shutdown).await
    }
}
