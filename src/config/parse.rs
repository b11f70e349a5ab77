//! Loading: YAML text and the environment into `Settings`, section by section, never
//! stopping at the first mistake, so `drover serve -t` can print every error at once, each
//! with its key.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::file::*;
use super::model::*;
use super::route::RouteInput;
use super::rules;
use crate::protocol::ollama::{canonical_model, Kind, ServerUrl};

impl Settings {
    /// Loads `path` (or defaults when `path` is None), then applies `env`.
    pub(crate) fn load(path: Option<&Path>, env: &Env) -> Result<Settings, ConfigErrors> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|e| {
                ConfigErrors(vec![ConfigError {
                    key: p.display().to_string(),
                    message: format!("cannot read config file: {e}"),
                }])
            })?,
            None => String::new(),
        };
        Self::parse(&text, path.map(Path::to_path_buf), env)
    }

    /// Parses YAML text; every error in it is reported together.
    pub fn parse(text: &str, source: Option<PathBuf>, env: &Env) -> Result<Settings, ConfigErrors> {
        let mut v = Validator::default();
        let root: serde_yaml::Value = if text.trim().is_empty() {
            serde_yaml::Value::Mapping(Default::default())
        } else {
            match serde_yaml::from_str(text) {
                Ok(r) => r,
                Err(e) => {
                    v.error("(file)", format!("not valid YAML: {e}"));
                    return Err(ConfigErrors(v.errors));
                }
            }
        };
        let Some(map) = root.as_mapping() else {
            v.error("(file)", "the top level must be a mapping of sections");
            return Err(ConfigErrors(v.errors));
        };
        for key in map.keys() {
            let name = key.as_str().unwrap_or("?");
            if !SECTIONS.contains(&name) {
                v.error(name, format!("unknown section; expected one of {}", SECTIONS.join(", ")));
            }
        }
        let server = v.server_section(map, env);
        let (database_url, database_pool_size) = v.database_section(map, env);
        let lb: LbSection = v.section(map, "load_balancer");
        let default_concurrency = v.positive("load_balancer.max_concurrency", lb.max_concurrency.unwrap_or(4));
        let (servers, dns_servers, routes) = v.fleet_sections(map, env);
        let load_balancer = v.load_balancer_section(lb, default_concurrency);
        let resources = v.resources_section(map);
        let http_client = v.http_client_section(map);
        let admin: AdminSection = v.section(map, "admin");
        let cors: CorsSection = v.section(map, "cors");
        let auth: AuthSection = v.section(map, "auth");
        let compression: CompressionSection = v.section(map, "compression");
        let compression_level = compression.level.unwrap_or(3);
        if compression_level > 9 {
            v.error("compression.level", format!("{compression_level}: expected 0 (off) to 9"));
        }
        let affinity = v.affinity_section(map);
        let (redis_url, redis_timeout) = v.state_section(map, env);
        let (cache, memory) = v.cache_and_memory_sections(map);
        let limits: LimitsSection = v.section(map, "limits");
        if limits.max_tracked_clients.is_some_and(|n| n < 16) {
            v.error("limits.max_tracked_clients", "must be at least 16");
        }
        if limits.client_requests_per_minute == Some(0) {
            v.error("limits.client_requests_per_minute", "must be at least 1 (leave it out for no limit)");
        }
        let logging: LoggingSection = v.section(map, "logging");
        let pingora: PingoraSection = v.section(map, "pingora");
        let admin_token = env.admin_token.clone().or(admin.token).filter(|t| !t.is_empty());
        if !v.errors.is_empty() {
            return Err(ConfigErrors(v.errors));
        }
        Ok(Settings {
            source,
            listen: server.listen.expect("checked"),
            tls: server.tls,
            metrics_listen: server.metrics_listen.expect("checked"),
            threads: server.threads,
            header_timeout: server.header_timeout,
            database_url,
            database_pool_size,
            servers,
            dns_servers,
            routes,
            load_balancer,
            resources,
            http_client,
            admin_token,
            admin_allowed_hosts: admin
                .allowed_hosts
                .iter()
                .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
                .collect(),
            cors_origins: cors.allowed_origins,
            affinity,
            redis_url,
            redis_timeout,
            cache,
            memory,
            require_keys: auth.require_keys.unwrap_or(false),
            compression_level,
            compression_min_bytes: compression.min_bytes.unwrap_or(1024),
            client_requests_per_minute: limits.client_requests_per_minute,
            max_tracked_clients: limits.max_tracked_clients.unwrap_or(65_536),
            access_log: logging.access_log.unwrap_or_else(|| "logs/access.log".into()),
            grace_period_seconds: pingora.grace_period_seconds.unwrap_or(30),
            upgrade_sock: pingora.upgrade_sock.unwrap_or_else(|| "/tmp/drover_upgrade.sock".into()),
            pid_file: pingora.pid_file.unwrap_or_else(|| "/tmp/drover.pid".into()),
        })
    }
}

/// The sections a file may have.
const SECTIONS: [&str; 18] = [
    "server",
    "database",
    "servers",
    "routes",
    "load_balancer",
    "resources",
    "http_client",
    "admin",
    "auth",
    "limits",
    "cors",
    "compression",
    "affinity",
    "state",
    "cache",
    "memory",
    "logging",
    "pingora",
];

/// `server:` as checked: the listeners (None where an address is bad) and the thread count.
struct Listeners {
    listen: Option<SocketAddr>,
    metrics_listen: Option<SocketAddr>,
    tls: Option<Tls>,
    threads: usize,
    header_timeout: Duration,
}

/// One function per section: each reads its section, checks every value and records each
/// error under its key, and returns the section's part of the model (defaults where a value
/// is bad, as the errors stop the load anyway).
impl Validator {
    fn server_section(&mut self, map: &serde_yaml::Mapping, env: &Env) -> Listeners {
        let server: ServerSection = self.section(map, "server");
        let listen_text = env.listen.clone().or(server.listen);
        let listen = self.addr("server.listen", listen_text.as_deref().unwrap_or("0.0.0.0:8083"));
        let metrics_listen =
            self.addr("server.metrics_listen", server.metrics_listen.as_deref().unwrap_or("127.0.0.1:9091"));
        let tls = server.tls.and_then(|t| {
            let listen = self.addr("server.tls.listen", t.listen.as_deref().unwrap_or("0.0.0.0:8443"));
            let mut file = |key: &str, value: Option<String>| match value {
                Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
                _ => {
                    self.error(key, "is required for a TLS listener (a PEM file)");
                    None
                }
            };
            let cert = file("server.tls.cert", t.cert);
            let key = file("server.tls.key", t.key);
            Some(Tls { listen: listen?, cert: cert?, key: key? })
        });
        // One worker thread per core this process may run on (a container's CPU set, taskset).
        let threads = server.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        if threads == 0 {
            self.error("server.threads", "must be at least 1, got 0");
        }
        // The whole request header, first byte to last (each read alone has Pingora's 60 s).
        let header_timeout = self.duration("server.header_timeout", server.header_timeout, "10s");
        if header_timeout.is_zero() {
            self.error("server.header_timeout", "must be more than 0");
        }
        Listeners { listen, metrics_listen, tls, threads, header_timeout }
    }

    fn database_section(&mut self, map: &serde_yaml::Mapping, env: &Env) -> (String, u32) {
        let database: DatabaseSection = self.section(map, "database");
        let url = env.database_url.clone().or(database.url).unwrap_or_else(|| "sqlite://drover.db".to_string());
        if !["sqlite:", "postgres:", "postgresql:", "mysql:", "mariadb:"].iter().any(|p| url.starts_with(p)) {
            let shown = crate::storage::store::redact_url(&url);
            self.error("database.url", format!("{shown:?}: expected sqlite://, postgres:// or mysql://"));
        }
        (url, database.pool_size.unwrap_or(10))
    }

    /// `servers:` (or DROVER_SERVERS) and `routes:`.
    fn fleet_sections(
        &mut self,
        map: &serde_yaml::Mapping,
        env: &Env,
    ) -> (Vec<ServerSpec>, Vec<DnsServer>, Vec<RouteSpec>) {
        let raw_servers: Vec<RawServer> = self.list(map, "servers");
        let raw_routes: Vec<RouteInput> = self.list(map, "routes");
        let entries: Vec<(ServerSpec, Option<(String, u16)>)> = match &env.servers {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .enumerate()
                .filter_map(|(i, u)| self.server(&format!("DROVER_SERVERS[{i}]"), RawServer::Url(u.into())))
                .collect(),
            None => raw_servers
                .into_iter()
                .enumerate()
                .filter_map(|(i, s)| self.server(&format!("servers[{i}]"), s))
                .collect(),
        };
        let (mut servers, mut dns_servers) = (Vec::new(), Vec::new());
        for (spec, dns) in entries {
            match dns {
                Some((host, port)) => dns_servers.push(DnsServer { host, port, template: spec }),
                None => servers.push(spec),
            }
        }
        let routes =
            raw_routes.into_iter().enumerate().filter_map(|(i, r)| self.route(&format!("routes[{i}]"), r)).collect();
        let mut seen = HashSet::new();
        for (i, s) in servers.iter().enumerate() {
            if !seen.insert(s.url.as_str().to_string()) {
                self.error(format!("servers[{i}].url"), format!("{:?} is listed twice", s.url.as_str()));
            }
        }
        (servers, dns_servers, routes)
    }

    fn load_balancer_section(&mut self, lb: LbSection, max_concurrency: usize) -> LoadBalancing {
        let strategy = self.strategy("load_balancer.strategy", lb.strategy.as_deref().unwrap_or("weighted"));
        let model_strategies = lb
            .model_strategies
            .unwrap_or_default()
            .into_iter()
            .map(|(model, s)| {
                let parsed = self.strategy(&format!("load_balancer.model_strategies.{model}"), &s);
                (canonical_model(&model), parsed)
            })
            .collect();
        let model_resume =
            lb.model_resume.unwrap_or_default().into_iter().map(|(m, on)| (canonical_model(&m), on)).collect();
        let mut at_least_one = |key: &str, n: u32| {
            if n == 0 {
                self.error(key, "must be at least 1, got 0");
            }
            n
        };
        let rise = at_least_one("load_balancer.rise", lb.rise.unwrap_or(2));
        let fall = at_least_one("load_balancer.fall", lb.fall.unwrap_or(2));
        let max_fails = at_least_one("load_balancer.max_fails", lb.max_fails.unwrap_or(3));
        let max_body_bytes = lb.max_body_bytes.unwrap_or(32 * 1024 * 1024);
        if max_body_bytes == 0 {
            self.error("load_balancer.max_body_bytes", "must be at least 1, got 0");
        }
        let replicas = self.replicas_section(lb.replicas.unwrap_or_default());
        let max_header_bytes = lb.max_header_bytes.unwrap_or(64 * 1024);
        if !(1024..=1024 * 1024).contains(&max_header_bytes) {
            self.error("load_balancer.max_header_bytes", format!("{max_header_bytes}: expected 1024 to 1048576"));
        }
        LoadBalancing {
            health_check_interval: self.duration("load_balancer.health_check_interval", lb.health_check_interval, "5s"),
            health_check_timeout: self.duration("load_balancer.health_check_timeout", lb.health_check_timeout, "1s"),
            rise,
            fall,
            db_check_interval: self.duration("load_balancer.db_check_interval", lb.db_check_interval, "5s"),
            dns_interval: self.duration("load_balancer.dns_interval", lb.dns_interval, "10s"),
            dns_resolver: lb.dns_resolver.as_deref().and_then(|r| {
                r.parse().map_err(|_| self.error("load_balancer.dns_resolver", format!("{r:?}: expected ip:port"))).ok()
            }),
            max_retry_count: lb.max_retry_count.unwrap_or(2),
            cooldown: self.duration("load_balancer.cooldown", lb.cooldown, "10s"),
            max_fails,
            fail_timeout: self.duration("load_balancer.fail_timeout", lb.fail_timeout, "10s"),
            panic_mode: lb.panic_mode.unwrap_or(true),
            match_num_ctx: lb.match_num_ctx.unwrap_or(true),
            max_body_bytes: max_body_bytes as usize,
            max_header_bytes: max_header_bytes as usize,
            strategy,
            model_strategies,
            max_concurrency,
            queue_size: lb.queue_size.unwrap_or(1000),
            queue_timeout: self.duration("load_balancer.queue_timeout", lb.queue_timeout, "30s"),
            resume: lb.resume.unwrap_or(true),
            model_resume,
            max_rest: self.duration("load_balancer.max_rest", lb.max_rest, "60s"),
            replicas,
        }
    }

    fn replicas_section(&mut self, r: ReplicasSection) -> Replicas {
        let min_replicas = r.min_replicas.unwrap_or(1);
        let max_replicas = r.max_replicas.unwrap_or(3);
        if min_replicas == 0 {
            self.error("load_balancer.replicas.min_replicas", "must be at least 1, got 0");
        }
        if max_replicas < min_replicas {
            self.error(
                "load_balancer.replicas.max_replicas",
                format!("{max_replicas} is below min_replicas ({min_replicas})"),
            );
        }
        Replicas {
            enabled: r.enabled.unwrap_or(false),
            scale_up_wait: self.duration("load_balancer.replicas.scale_up_wait", r.scale_up_wait, "2s"),
            scale_up_for: self.duration("load_balancer.replicas.scale_up_for", r.scale_up_for, "5s"),
            scale_down_idle: self.duration("load_balancer.replicas.scale_down_idle", r.scale_down_idle, "10m"),
            min_replicas: min_replicas as usize,
            max_replicas: max_replicas as usize,
        }
    }

    fn resources_section(&mut self, map: &serde_yaml::Mapping) -> Resources {
        let res: ResourcesSection = self.section(map, "resources");
        let memory_threshold = res.memory_threshold.unwrap_or(90.0);
        if !(memory_threshold > 0.0 && memory_threshold <= 100.0) {
            self.error("resources.memory_threshold", format!("{memory_threshold}: expected a percentage in (0, 100]"));
        }
        let resources = Resources {
            memory_threshold,
            cache_ttl_min: self.duration("resources.cache_ttl_min", res.cache_ttl_min, "2s"),
            cache_ttl_max: self.duration("resources.cache_ttl_max", res.cache_ttl_max, "30s"),
            fail_open: res.fail_open.unwrap_or(true),
        };
        if resources.cache_ttl_min > resources.cache_ttl_max {
            self.error("resources.cache_ttl_min", "must not exceed resources.cache_ttl_max");
        }
        resources
    }

    fn http_client_section(&mut self, map: &serde_yaml::Mapping) -> HttpClient {
        let http: HttpClientSection = self.section(map, "http_client");
        HttpClient {
            connect_timeout: self.duration("http_client.connect_timeout", http.connect_timeout, "2s"),
            read_timeout: self.duration("http_client.read_timeout", http.read_timeout, "300s"),
            keepalive_pool: http.keepalive_pool.unwrap_or(128),
        }
    }

    fn affinity_section(&mut self, map: &serde_yaml::Mapping) -> Affinity {
        let aff: AffinitySection = self.section(map, "affinity");
        let mode = match aff.mode.as_deref().unwrap_or("header") {
            "off" => AffinityMode::Off,
            "header" => AffinityMode::Header,
            "prefix" => AffinityMode::Prefix,
            other => {
                self.error("affinity.mode", format!("{other:?}: expected off, header or prefix"));
                AffinityMode::Off
            }
        };
        let header = self.header_name("affinity.header", aff.header.as_deref());
        let load_factor = aff.load_factor.unwrap_or(1.25);
        if !(1.0..=100.0).contains(&load_factor) {
            self.error("affinity.load_factor", format!("{load_factor}: expected 1.0 to 100 (1.25 is usual)"));
        }
        Affinity { mode, header, load_factor }
    }

    /// `state:` (or REDIS_URL): the Redis URL, checked, and the timeout of one call.
    fn state_section(&mut self, map: &serde_yaml::Mapping, env: &Env) -> (Option<String>, Duration) {
        let state: StateSection = self.section(map, "state");
        let redis_url = env.redis_url.clone().or(state.redis_url);
        if let Some(u) = &redis_url {
            if let Err(e) = crate::storage::redis::Redis::from_url(u, Duration::from_secs(1)) {
                self.error("state.redis_url", e.to_string());
            }
        }
        (redis_url, self.duration("state.redis_timeout", state.redis_timeout, "50ms"))
    }

    fn cache_and_memory_sections(&mut self, map: &serde_yaml::Mapping) -> (CacheSettings, MemorySettings) {
        let c: CacheSection = self.section(map, "cache");
        let cache = CacheSettings {
            enabled: c.enabled.unwrap_or(false),
            ttl: self.duration("cache.ttl", c.ttl, "10m"),
            max_bytes: c.max_bytes.unwrap_or(64 * 1024 * 1024),
            max_entry_bytes: c.max_entry_bytes.unwrap_or(1024 * 1024),
            shared_across_keys: c.shared_across_keys.unwrap_or(false),
        };
        let mem: MemorySection = self.section(map, "memory");
        let memory = MemorySettings {
            enabled: mem.enabled.unwrap_or(false),
            header: self.header_name("memory.header", mem.header.as_deref()),
            ttl: self.duration("memory.ttl", mem.ttl, "1h"),
            max_messages: mem.max_messages.unwrap_or(50),
            max_bytes: mem.max_bytes.unwrap_or(256 * 1024),
        };
        if memory.max_messages < 2 {
            let n = memory.max_messages;
            self.error("memory.max_messages", format!("{n}: must be at least 2 (a question and its answer)"));
        }
        if cache.max_entry_bytes > cache.max_bytes {
            let n = cache.max_entry_bytes;
            self.error("cache.max_entry_bytes", format!("{n}: must not exceed cache.max_bytes"));
        }
        (cache, memory)
    }

    /// A header name (default X-Session-Id), lower-cased.
    fn header_name(&mut self, key: &str, text: Option<&str>) -> http::HeaderName {
        let text = text.unwrap_or("x-session-id");
        http::HeaderName::try_from(text.to_ascii_lowercase()).unwrap_or_else(|_| {
            self.error(key, format!("{text:?} is not a valid header name"));
            http::HeaderName::from_static("x-session-id")
        })
    }
}

/// Collects errors while translating raw values.
#[derive(Default)]
struct Validator {
    errors: Vec<ConfigError>,
}

impl Validator {
    fn error(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError { key: key.into(), message: message.into() });
    }

    fn section<T: DeserializeOwned + Default>(&mut self, map: &serde_yaml::Mapping, key: &str) -> T {
        match map.get(key) {
            None | Some(serde_yaml::Value::Null) => T::default(),
            Some(value) => serde_yaml::from_value(value.clone()).unwrap_or_else(|e| {
                self.error(key, e.to_string());
                T::default()
            }),
        }
    }

    /// A list whose items are checked one by one, so one bad entry does not hide the others.
    fn list<T: DeserializeOwned>(&mut self, map: &serde_yaml::Mapping, key: &str) -> Vec<T> {
        let items = match map.get(key) {
            None | Some(serde_yaml::Value::Null) => return Vec::new(),
            Some(serde_yaml::Value::Sequence(items)) => items,
            Some(_) => {
                self.error(key, "must be a list");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match serde_yaml::from_value(item.clone()) {
                Ok(t) => out.push(t),
                Err(e) => self.error(format!("{key}[{i}]"), e.to_string()),
            }
        }
        out
    }

    fn strategy(&mut self, key: &str, text: &str) -> Strategy {
        match text {
            "weighted" => Strategy::Weighted,
            "warm_first" => Strategy::WarmFirst,
            "least_busy" => Strategy::LeastBusy,
            other => {
                self.error(key, format!("{other:?}: expected weighted, warm_first or least_busy"));
                Strategy::Weighted
            }
        }
    }

    fn addr(&mut self, key: &str, text: &str) -> Option<SocketAddr> {
        match text.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.error(key, format!("{text:?}: expected an address like 0.0.0.0:8083"));
                None
            }
        }
    }

    fn duration(&mut self, key: &str, raw: Option<RawDuration>, default: &str) -> Duration {
        let parsed = match raw {
            None => humantime::parse_duration(default).map_err(|e| e.to_string()),
            Some(RawDuration::Seconds(s)) => Ok(Duration::from_secs(s)),
            Some(RawDuration::Text(t)) => {
                humantime::parse_duration(&t).map_err(|e| format!("{t:?}: {e}; expected e.g. 5s, 250ms, 2m"))
            }
        };
        match parsed {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.error(key, "must be longer than zero");
                Duration::from_secs(1)
            }
            Err(e) => {
                self.error(key, e);
                Duration::from_secs(1)
            }
        }
    }

    fn positive(&mut self, key: &str, n: i64) -> usize {
        if n < 1 {
            self.error(key, format!("{n}: must be at least 1"));
            1
        } else {
            n as usize
        }
    }

    fn url(&mut self, key: &str, text: &str) -> Option<ServerUrl> {
        ServerUrl::parse(text).map_err(|e| self.error(key, e.to_string())).ok()
    }

    /// One `servers:` entry: a server by URL, or (`dns:`) the template of the servers a name
    /// resolves to, with the name.
    fn server(&mut self, key: &str, raw: RawServer) -> Option<(ServerSpec, Option<(String, u16)>)> {
        let obj = match raw {
            RawServer::Url(url) => RawServerObject {
                url: Some(url),
                dns: None,
                kind: None,
                probe_url: None,
                max_concurrency: None,
                max_fails: None,
                fail_timeout: None,
                api_key: None,
                required_models: None,
                headers: None,
                forward_client_auth: None,
            },
            RawServer::Object(o) => *o,
        };
        let (url, dns) = match (&obj.url, &obj.dns) {
            (Some(url), None) => (self.url(&format!("{key}.url"), url), None),
            (None, Some(name)) => match dns_name(name) {
                // The template's URL names the host: what logs and errors say until it resolves.
                Ok((host, port)) => {
                    (self.url(&format!("{key}.dns"), &format!("http://{host}:{port}")), Some((host, port)))
                }
                Err(e) => {
                    self.error(format!("{key}.dns"), e);
                    (None, None)
                }
            },
            (Some(_), Some(_)) => {
                self.error(key, "give url or dns, not both");
                (None, None)
            }
            (None, None) => {
                self.error(format!("{key}.url"), "missing (or dns: \"host:port\")");
                (None, None)
            }
        };
        if dns.is_some() && obj.probe_url.is_some() {
            self.error(format!("{key}.probe_url"), "not with dns: one probe cannot stand for every address");
        }
        if dns.is_some() && obj.required_models.as_ref().is_some_and(|m| !m.is_empty()) {
            self.error(format!("{key}.required_models"), "not with dns (pull them with /admin/models/pull)");
        }
        let kind = match obj.kind.as_deref().unwrap_or("ollama") {
            "ollama" => Kind::Ollama,
            "openai" => Kind::OpenAi,
            other => {
                self.error(format!("{key}.kind"), format!("{other:?}: expected ollama or openai"));
                Kind::Ollama
            }
        };
        let probe_url = obj.probe_url.and_then(|p| self.url(&format!("{key}.probe_url"), &p));
        let max_concurrency = obj.max_concurrency.map(|n| self.positive(&format!("{key}.max_concurrency"), n));
        if obj.max_fails == Some(0) {
            self.error(format!("{key}.max_fails"), "must be at least 1, got 0");
        }
        let fail_timeout = obj.fail_timeout.map(|d| self.duration(&format!("{key}.fail_timeout"), Some(d), "10s"));
        let mut credentials =
            Credentials { headers: Vec::new(), forward_client_auth: obj.forward_client_auth.unwrap_or(false) };
        let mut wanted: Vec<(String, String, String)> = Vec::new();
        if let Some(k) = obj.api_key {
            wanted.push((format!("{key}.api_key"), "authorization".into(), format!("Bearer {k}")));
        }
        for (name, value) in obj.headers.unwrap_or_default() {
            wanted.push((format!("{key}.headers.{name}"), name, value));
        }
        for (at, name, value) in wanted {
            let value = match expand_env(&value) {
                Ok(v) => v,
                Err(e) => {
                    self.error(at, e);
                    continue;
                }
            };
            match (http::HeaderName::try_from(name.as_str()), http::HeaderValue::try_from(value)) {
                (Ok(n), Ok(mut v)) => {
                    v.set_sensitive(true);
                    credentials.headers.push((n, v));
                }
                (Err(_), _) => self.error(at, format!("{name:?} is not a valid header name")),
                (_, Err(_)) => self.error(at, "the value is not a valid header value"),
            }
        }
        let required_models = obj.required_models.unwrap_or_default();
        for (i, m) in required_models.iter().enumerate() {
            if let Err(e) = rules::name(m) {
                self.error(format!("{key}.required_models[{i}]"), e);
            }
        }
        if !required_models.is_empty() && kind != Kind::Ollama {
            self.error(format!("{key}.required_models"), "only Ollama servers can pull models");
        }
        let spec = ServerSpec {
            url: url?,
            required_models,
            kind,
            probe_url,
            max_concurrency,
            max_fails: obj.max_fails,
            fail_timeout,
            credentials,
        };
        Some((spec, dns))
    }

    fn route(&mut self, key: &str, r: RouteInput) -> Option<RouteSpec> {
        r.validate()
            .map_err(|bad| {
                for (field, why) in bad {
                    self.error(format!("{key}.{field}"), why);
                }
            })
            .ok()
    }
}

/// `host:port` of a `dns:` server entry (the port is required: a name has no default one).
fn dns_name(text: &str) -> Result<(String, u16), String> {
    let (host, port) = text.rsplit_once(':').ok_or(format!("{text:?}: expected host:port"))?;
    let port: u16 = port.parse().map_err(|_| format!("{text:?}: {port:?} is not a port"))?;
    // A fully qualified name may end with a dot.
    let name = host.strip_suffix('.').unwrap_or(host);
    let label = |l: &str| !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    let valid = !name.is_empty() && name.len() <= 253 && name.split('.').all(label);
    if !valid || port == 0 {
        return Err(format!("{text:?}: expected a DNS name and a port, e.g. \"ollama.ai.svc.cluster.local:11434\""));
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, ConfigErrors> {
        Settings::parse(text, None, &Env::default())
    }

    #[test]
    fn empty_file_gives_defaults_and_local_ollama() {
        let s = parse("").unwrap();
        assert_eq!(s.listen, "0.0.0.0:8083".parse().unwrap());
        assert_eq!(s.load_balancer.max_body_bytes, 32 * 1024 * 1024);
        assert_eq!(s.load_balancer.cooldown, Duration::from_secs(10));
        assert!(s.servers.is_empty(), "the default fleet is decided with the stored routes");
        assert_eq!(s.database_url, "sqlite://drover.db");
        assert!(!s.cache.enabled, "a proxy standing in for Ollama answers from a cache only when asked to");
    }

    #[test]
    fn servers_as_strings_and_objects() {
        let s =
            parse("servers:\n  - http://a:11434/\n  - { url: 'http://b:8080', kind: openai, max_concurrency: 8 }\n")
                .unwrap();
        assert_eq!(s.servers[0].url.as_str(), "http://a:11434");
        assert_eq!(s.servers[1].kind, Kind::OpenAi);
        assert_eq!(s.servers[1].max_concurrency, Some(8));
    }

    #[test]
    fn servers_by_dns_name() {
        let s = parse(
            "servers:\n  - { dns: 'ollama.ai.svc.cluster.local.:11434', kind: openai, max_concurrency: 2 }\n  - http://a:1\n\
             load_balancer: { dns_interval: 2s, dns_resolver: '127.0.0.1:5353' }\n",
        )
        .unwrap();
        assert_eq!(s.servers.len(), 1, "the URL entry only");
        let d = &s.dns_servers[0];
        assert_eq!((d.host.as_str(), d.port, d.template.kind), ("ollama.ai.svc.cluster.local.", 11434, Kind::OpenAi));
        let at = d.at("10.1.2.3".parse().unwrap());
        assert_eq!((at.url.as_str(), at.max_concurrency), ("http://10.1.2.3:11434", Some(2)));
        assert_eq!(d.at("fd00::1".parse().unwrap()).url.as_str(), "http://[fd00::1]:11434");
        assert_eq!(s.load_balancer.dns_interval, Duration::from_secs(2));
        assert_eq!(s.load_balancer.dns_resolver, Some("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(parse("").unwrap().load_balancer.dns_interval, Duration::from_secs(10));

        let err = parse(
            "servers: [ { dns: 'no-port' }, { dns: 'a:1', url: 'http://a:1' }, { kind: ollama }, \
             { dns: 'bad_name:1' }, { dns: 'a:1', probe_url: 'http://a:8005' } ]\n\
             load_balancer: { dns_resolver: 'somewhere' }\n",
        )
        .unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|e| e.key.as_str()).collect();
        for expected in [
            "servers[0].dns",
            "servers[1]",
            "servers[2].url",
            "servers[3].dns",
            "servers[4].probe_url",
            "load_balancer.dns_resolver",
        ] {
            assert!(keys.contains(&expected), "missing {expected} in {keys:?}");
        }
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let err = parse(
            "server: { listen: 'nowhere' }\nload_balancer: { cooldown: 'soon', strategy: fastest, rise: 0 }\n\
             routes:\n  - { virtual_model_name: m, server_url: 'ftp://x', weight: 0, type: TPU }\n\
             servers: [ { url: 'http://a', kind: grpc } ]\nbogus: 1\n",
        )
        .unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|e| e.key.as_str()).collect();
        for expected in [
            "bogus",
            "server.listen",
            "routes[0].server_url",
            "routes[0].weight",
            "routes[0].type",
            "servers[0].kind",
            "load_balancer.strategy",
            "load_balancer.rise",
            "load_balancer.cooldown",
        ] {
            assert!(keys.contains(&expected), "missing {expected} in {keys:?}");
        }
        let text = err.to_string();
        assert!(text.contains("\"soon\""), "bad value is quoted: {text}");
        assert!(text.contains("\"fastest\""), "{text}");
    }

    #[test]
    fn unknown_key_inside_a_section_is_named() {
        let err = parse("load_balancer: { retries: 3 }\n").unwrap_err();
        assert_eq!(err.0[0].key, "load_balancer");
        assert!(err.0[0].message.contains("retries"), "{}", err.0[0].message);
    }

    #[test]
    fn environment_overrides_file() {
        let env = Env {
            listen: Some("127.0.0.1:9000".into()),
            servers: Some("http://x:1, http://y:2".into()),
            admin_token: Some("secret".into()),
            database_url: Some("postgres://u:p@h/db".into()),
            redis_url: Some("redis://r:6380/1".into()),
        };
        let s =
            Settings::parse("servers: [ 'http://z:3' ]\nstate: { redis_url: 'redis://other' }\n", None, &env).unwrap();
        assert_eq!(s.redis_url.as_deref(), Some("redis://r:6380/1"));
        assert_eq!(s.listen.port(), 9000);
        let urls: Vec<&str> = s.servers.iter().map(|s| s.url.as_str()).collect();
        assert_eq!(urls, ["http://x:1", "http://y:2"]);
        assert_eq!(s.admin_token.as_deref(), Some("secret"));
        assert!(s.database_url.starts_with("postgres://"));
    }

    #[test]
    fn strategies_per_model() {
        let s = parse("load_balancer: { strategy: least_busy, model_strategies: { qwen3: warm_first } }\n").unwrap();
        assert_eq!(s.load_balancer.strategy, Strategy::LeastBusy);
        assert_eq!(s.load_balancer.model_strategies["qwen3:latest"], Strategy::WarmFirst);
        let err = parse("load_balancer: { model_strategies: { qwen3: fastest } }\n").unwrap_err();
        assert_eq!(err.0[0].key, "load_balancer.model_strategies.qwen3");
    }

    #[test]
    fn durations_accept_numbers_and_units() {
        let s = parse("load_balancer: { cooldown: 3, queue_timeout: 250ms }\n").unwrap();
        assert_eq!(s.load_balancer.cooldown, Duration::from_secs(3));
        assert_eq!(s.load_balancer.queue_timeout, Duration::from_millis(250));
    }

    #[test]
    fn route_defaults_actual_name_to_virtual() {
        let s = parse("routes:\n  - { virtual_model_name: llama3, server_url: 'http://a:1' }\n").unwrap();
        assert_eq!(s.routes[0].actual_model_name, "llama3");
        assert_eq!(s.routes[0].weight, 1);
        assert!(s.servers.is_empty(), "routes alone define the fleet");
    }

    #[test]
    fn edge_settings_parse_and_secrets_stay_out_of_debug() {
        std::env::set_var("DROVER_UNIT_TEST_KEY", "from-env");
        let s = parse(
            "servers:\n  - { url: \"http://a:1\", api_key: \"top-secret\", headers: { x-team: \"${DROVER_UNIT_TEST_KEY}\" } }\n\
             auth: { require_keys: true }\nlimits: { client_requests_per_minute: 60 }\ncompression: { level: 0 }\n\
             server: { tls: { listen: \"127.0.0.1:8443\", cert: c.pem, key: k.pem } }\n",
        )
        .unwrap();
        let creds = &s.servers[0].credentials;
        assert_eq!(creds.headers[0].0, "authorization");
        assert_eq!(creds.headers[0].1, "Bearer top-secret");
        assert_eq!(creds.headers[1].1, "from-env");
        assert!(!format!("{:?}", s.servers[0]).contains("top-secret"));
        assert!(s.require_keys);
        assert_eq!((s.client_requests_per_minute, s.compression_level), (Some(60), 0));
        assert_eq!(s.tls.as_ref().unwrap().cert, PathBuf::from("c.pem"));

        let e = parse(
            "servers:\n  - { url: \"http://a:1\", api_key: \"${DROVER_UNIT_TEST_UNSET}\", headers: { \"bad name\": v } }\n\
             limits: { client_requests_per_minute: 0 }\ncompression: { level: 12 }\nserver: { tls: { listen: \"127.0.0.1:8443\" } }\n",
        )
        .unwrap_err();
        let text = e.to_string();
        for key in [
            "servers[0].api_key",
            "servers[0].headers.bad name",
            "limits.client_requests_per_minute",
            "compression.level",
            "server.tls.cert",
            "server.tls.key",
        ] {
            assert!(text.contains(key), "{key}: {text}");
        }
        assert!(text.contains("DROVER_UNIT_TEST_UNSET is not set"), "{text}");
    }

    #[test]
    fn affinity_num_ctx_and_required_models() {
        let s = parse(
            "servers:\n  - { url: \"http://a:1\", required_models: [\"qwen3:14b\"] }\n\
             affinity: { mode: prefix, header: X-Conversation, load_factor: 1.5 }\nload_balancer: { match_num_ctx: false }\n",
        )
        .unwrap();
        assert_eq!(s.servers[0].required_models, ["qwen3:14b"]);
        assert_eq!((s.affinity.mode, s.affinity.header.as_str()), (AffinityMode::Prefix, "x-conversation"));
        assert!(!s.load_balancer.match_num_ctx);
        let d = parse("").unwrap();
        assert_eq!((d.affinity.mode, d.affinity.load_factor), (AffinityMode::Header, 1.25));
        assert!(d.load_balancer.match_num_ctx);

        let e = parse(
            "servers:\n  - { url: \"http://a:1\", kind: openai, required_models: [\"\"] }\n\
             affinity: { mode: sticky, load_factor: 0.5 }\n",
        )
        .unwrap_err()
        .to_string();
        for key in
            ["servers[0].required_models[0]", "servers[0].required_models:", "affinity.mode", "affinity.load_factor"]
        {
            assert!(e.contains(key), "{key}: {e}");
        }
    }
}
