//! Configuration: the YAML file and environment, translated into a validated model with real types.
//!
//! Loading never stops at the first mistake: every section is parsed on its own and every
//! value is checked, so `drover serve -t` can print all errors at once, each with its key.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::protocol::ollama::{Device, Kind, ServerUrl};

/// The fleet used when neither `servers:`, `routes:` nor the store names one: a local Ollama.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:11434";

/// One configuration error: where it is and what is wrong with it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every error found while loading; never empty.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// ---- the file, as written -------------------------------------------------------------

/// A duration written as "5s", "250ms", "2m", or a bare number of seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Seconds(u64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ServerSection {
    listen: Option<String>,
    metrics_listen: Option<String>,
    threads: Option<usize>,
    tls: Option<TlsSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct TlsSection {
    listen: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

/// server.tls: a TLS listener beside the plain one (rustls; HTTP/2 offered by ALPN).
#[derive(Debug, Clone)]
pub struct Tls {
    pub listen: SocketAddr,
    /// PEM certificate chain and private key, read at start (and so again by the new
    /// process of a graceful upgrade).
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct DatabaseSection {
    url: Option<String>,
    pool_size: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawServer {
    Url(String),
    Object(RawServerObject),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerObject {
    url: String,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    probe_url: Option<String>,
    #[serde(default)]
    max_concurrency: Option<i64>,
    #[serde(default)]
    max_fails: Option<u32>,
    #[serde(default)]
    fail_timeout: Option<RawDuration>,
    /// Sent as `Authorization: Bearer ...`; `${VAR}` reads the environment.
    #[serde(default)]
    api_key: Option<String>,
    /// Models drover pulls onto this server when it lacks them (required.rs).
    #[serde(default)]
    required_models: Option<Vec<String>>,
    /// Extra headers for this server (e.g. `x-api-key`); `${VAR}` reads the environment.
    #[serde(default)]
    headers: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    forward_client_auth: Option<bool>,
}

/// A route as written, in the config file (`routes:`), a row of the store, or an admin
/// request, before validation. `RouteInput::validate` is the one validator for all three.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteInput {
    #[serde(default)]
    pub virtual_model_name: Option<String>,
    #[serde(default)]
    pub server_url: Option<String>,
    #[serde(default)]
    pub actual_model_name: Option<String>,
    #[serde(default)]
    pub weight: Option<i64>,
    #[serde(default)]
    pub priority: Option<i64>,
    #[serde(default, rename = "type")]
    pub device: Option<String>,
    #[serde(default)]
    pub performance: Option<f64>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub is_active: Option<bool>,
    #[serde(default)]
    pub skip_resource_check: Option<bool>,
    #[serde(default)]
    pub probe_url: Option<String>,
    #[serde(default)]
    pub max_concurrency: Option<i64>,
}

impl RouteInput {
    /// The validated route, with defaults for what is not given; or every bad field, named
    /// as in the table and the admin API, with why.
    pub fn validate(self) -> Result<RouteSpec, Vec<(&'static str, String)>> {
        let mut bad: Vec<(&'static str, String)> = Vec::new();
        let mut check = |field: &'static str, result: Result<(), String>| {
            if let Err(e) = result {
                bad.push((field, e));
            }
        };
        let virtual_model_name = self.virtual_model_name.unwrap_or_default();
        match self.server_url {
            None => check("server_url", Err("is required".into())),
            Some(_) if virtual_model_name.is_empty() => check("virtual_model_name", Err("is required".into())),
            Some(_) => check("virtual_model_name", rules::name(&virtual_model_name)),
        }
        let actual_model_name = self.actual_model_name.unwrap_or_else(|| virtual_model_name.clone());
        check("actual_model_name", rules::name(&actual_model_name));
        let weight = self.weight.unwrap_or(1);
        check("weight", rules::at_least_one(weight));
        let priority = self.priority.unwrap_or(1);
        check("priority", rules::at_least_one(priority));
        let device = rules::device(self.device.as_deref().unwrap_or("GPU"));
        check("type", device.clone().map(drop));
        let performance = self.performance.unwrap_or(0.0);
        check("performance", rules::performance(performance));
        if let Some(n) = self.max_concurrency {
            check("max_concurrency", rules::at_least_one(n));
        }
        let server_url = self.server_url.as_deref().map(ServerUrl::parse).transpose();
        check("server_url", server_url.clone().map(drop));
        let probe_url = self.probe_url.as_deref().filter(|p| !p.is_empty()).map(ServerUrl::parse).transpose();
        check("probe_url", probe_url.clone().map(drop));
        match (server_url, probe_url, device) {
            (Ok(Some(server_url)), Ok(probe_url), Ok(device)) if bad.is_empty() => Ok(RouteSpec {
                virtual_model_name,
                server_url,
                actual_model_name,
                weight: weight as u32,
                priority: priority as u32,
                device,
                performance,
                description: self.description.unwrap_or_default(),
                is_active: self.is_active.unwrap_or(true),
                skip_resource_check: self.skip_resource_check.unwrap_or(false),
                probe_url,
                max_concurrency: self.max_concurrency.map(|n| n as usize),
            }),
            _ => Err(bad),
        }
    }
}

impl From<&crate::storage::store::StoredRoute> for RouteInput {
    fn from(row: &crate::storage::store::StoredRoute) -> RouteInput {
        RouteInput {
            virtual_model_name: Some(row.virtual_model_name.clone()),
            server_url: Some(row.server_url.clone()),
            actual_model_name: Some(row.actual_model_name.clone()),
            weight: Some(row.weight),
            priority: Some(row.priority),
            device: Some(row.device.clone()),
            performance: Some(row.performance),
            description: row.description.clone(),
            is_active: Some(row.is_active),
            skip_resource_check: Some(row.skip_resource_check),
            probe_url: row.probe_url.clone(),
            max_concurrency: row.max_concurrency,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LbSection {
    health_check_interval: Option<RawDuration>,
    health_check_timeout: Option<RawDuration>,
    rise: Option<u32>,
    fall: Option<u32>,
    db_check_interval: Option<RawDuration>,
    max_retry_count: Option<u32>,
    cooldown: Option<RawDuration>,
    max_fails: Option<u32>,
    fail_timeout: Option<RawDuration>,
    panic_mode: Option<bool>,
    max_body_bytes: Option<u64>,
    max_header_bytes: Option<u64>,
    strategy: Option<String>,
    model_strategies: Option<std::collections::BTreeMap<String, String>>,
    max_concurrency: Option<i64>,
    queue_size: Option<usize>,
    queue_timeout: Option<RawDuration>,
    match_num_ctx: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct MemorySection {
    enabled: Option<bool>,
    header: Option<String>,
    ttl: Option<RawDuration>,
    max_messages: Option<usize>,
    max_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct CacheSection {
    enabled: Option<bool>,
    ttl: Option<RawDuration>,
    max_bytes: Option<usize>,
    max_entry_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct StateSection {
    redis_url: Option<String>,
    redis_timeout: Option<RawDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct AffinitySection {
    mode: Option<String>,
    header: Option<String>,
    load_factor: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ResourcesSection {
    memory_threshold: Option<f64>,
    cache_ttl_min: Option<RawDuration>,
    cache_ttl_max: Option<RawDuration>,
    fail_open: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct HttpClientSection {
    connect_timeout: Option<RawDuration>,
    read_timeout: Option<RawDuration>,
    keepalive_pool: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct AdminSection {
    token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct AuthSection {
    require_keys: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LimitsSection {
    client_requests_per_minute: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct CompressionSection {
    level: Option<u32>,
    min_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct CorsSection {
    allowed_origins: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LoggingSection {
    access_log: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PingoraSection {
    grace_period_seconds: Option<u64>,
    upgrade_sock: Option<String>,
    pid_file: Option<String>,
}

// ---- the validated model --------------------------------------------------------------

/// How traffic is split inside the winning priority tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Weighted,
    WarmFirst,
    LeastBusy,
}

#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub url: ServerUrl,
    pub kind: Kind,
    pub probe_url: Option<ServerUrl>,
    pub max_concurrency: Option<usize>,
    /// Passive failure counting, overriding load_balancer.max_fails / fail_timeout.
    pub max_fails: Option<u32>,
    pub fail_timeout: Option<Duration>,
    pub credentials: Credentials,
    /// Pulled in the background when missing (required.rs).
    pub required_models: Vec<String>,
}

/// What a server is sent to let drover in: its own API key or headers, never the client's
/// unless `forward_client_auth` says so.
#[derive(Clone, Default, PartialEq)]
pub struct Credentials {
    /// Sent on every request to the server, health checks included (`api_key` becomes
    /// `Authorization: Bearer ...`).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Pass the client's Authorization / x-api-key on to this server.
    pub forward_client_auth: bool,
}

/// Header names only: values are secrets and never reach a log.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Credentials")
            .field("headers", &names)
            .field("forward_client_auth", &self.forward_client_auth)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub virtual_model_name: String,
    pub server_url: ServerUrl,
    pub actual_model_name: String,
    pub weight: u32,
    pub priority: u32,
    pub device: Device,
    pub performance: f64,
    pub description: String,
    pub is_active: bool,
    pub skip_resource_check: bool,
    pub probe_url: Option<ServerUrl>,
    pub max_concurrency: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct LoadBalancing {
    pub health_check_interval: Duration,
    pub health_check_timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub db_check_interval: Duration,
    pub max_retry_count: u32,
    /// How long a server that failed `max_fails` requests within `fail_timeout` is skipped.
    pub cooldown: Duration,
    /// Failed requests within `fail_timeout` that put a server into cooldown (nginx's max_fails).
    pub max_fails: u32,
    pub fail_timeout: Duration,
    /// When every route of a model is cooling down, try the one that failed longest ago
    /// instead of refusing (Envoy's panic mode).
    pub panic_mode: bool,
    pub max_body_bytes: usize,
    /// Largest request header block accepted; larger ones get 431.
    pub max_header_bytes: usize,
    pub strategy: Strategy,
    /// Per virtual model, overriding `strategy`.
    pub model_strategies: std::collections::HashMap<String, Strategy>,
    pub max_concurrency: usize,
    pub queue_size: usize,
    pub queue_timeout: Duration,
    /// A server with the model loaded at another num_ctx counts as cold for a request that
    /// asks for a context size (Ollama would reload it).
    pub match_num_ctx: bool,
}

/// Which requests of one conversation go back to the server that served the last turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AffinityMode {
    Off,
    /// Only requests that carry the session header.
    Header,
    /// The session header, else a hash of the conversation's opening.
    Prefix,
}

#[derive(Debug, Clone)]
pub struct Affinity {
    pub mode: AffinityMode,
    /// Lower-case header name.
    pub header: http::HeaderName,
    /// A server takes a conversation while its requests in flight stay under
    /// load_factor x the tier's average (bounded-load consistent hashing).
    pub load_factor: f64,
}

#[derive(Debug, Clone)]
pub struct Resources {
    pub memory_threshold: f64,
    pub cache_ttl_min: Duration,
    pub cache_ttl_max: Duration,
    pub fail_open: bool,
}

#[derive(Debug, Clone)]
pub struct HttpClient {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub keepalive_pool: usize,
}

/// The response cache (cache.enabled, ttl, max_bytes, max_entry_bytes).
#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub enabled: bool,
    pub ttl: Duration,
    pub max_bytes: usize,
    pub max_entry_bytes: usize,
}

/// Conversation memory (memory.enabled, header, ttl, max_messages, max_bytes).
#[derive(Debug, Clone)]
pub struct MemorySettings {
    pub enabled: bool,
    pub header: http::HeaderName,
    pub ttl: Duration,
    pub max_messages: usize,
    pub max_bytes: usize,
}

/// Everything drover runs on, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The file it came from, if any.
    pub source: Option<PathBuf>,
    pub listen: SocketAddr,
    pub tls: Option<Tls>,
    pub metrics_listen: SocketAddr,
    pub threads: usize,
    pub database_url: String,
    pub database_pool_size: u32,
    pub servers: Vec<ServerSpec>,
    pub routes: Vec<RouteSpec>,
    pub load_balancer: LoadBalancing,
    pub resources: Resources,
    pub http_client: HttpClient,
    pub admin_token: Option<String>,
    /// Origin patterns allowed beside Ollama's local defaults (cors.allowed_origins).
    pub cors_origins: Vec<String>,
    /// compression.level: gzip/zstd/brotli level for whole answers a client accepts compressed (0: off).
    pub compression_level: u32,
    /// compression.min_bytes: answers smaller than this go as they are.
    pub compression_min_bytes: usize,
    pub affinity: Affinity,
    /// state.redis_url (or REDIS_URL): limits and cooldowns shared by several drovers.
    pub redis_url: Option<String>,
    /// state.redis_timeout: a slower Redis call counts as Redis down.
    pub redis_timeout: Duration,
    /// The response cache for deterministic requests (cache.rs).
    pub cache: CacheSettings,
    /// Conversation memory (memory.rs), off by default.
    pub memory: MemorySettings,
    /// auth.require_keys: model calls and fleet views need an API key.
    pub require_keys: bool,
    /// limits.client_requests_per_minute: per client address, on model calls and fleet views.
    pub client_requests_per_minute: Option<u64>,
    pub access_log: String,
    pub grace_period_seconds: u64,
    pub upgrade_sock: String,
    pub pid_file: String,
}

/// The environment variables drover reads, gathered so tests can pass their own.
#[derive(Debug, Default, Clone)]
pub struct Env {
    pub database_url: Option<String>,
    pub listen: Option<String>,
    pub admin_token: Option<String>,
    pub servers: Option<String>,
    pub redis_url: Option<String>,
}

impl Env {
    pub fn from_process() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Env {
            database_url: var("DATABASE_URL"),
            listen: var("DROVER_LISTEN"),
            admin_token: var("DROVER_ADMIN_TOKEN"),
            servers: var("DROVER_SERVERS"),
            redis_url: var("REDIS_URL"),
        }
    }
}

impl Settings {
    /// Loads `path` (or defaults when `path` is None), then applies `env`.
    pub fn load(path: Option<&Path>, env: &Env) -> Result<Settings, ConfigErrors> {
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
        for key in map.keys() {
            let name = key.as_str().unwrap_or("?");
            if !SECTIONS.contains(&name) {
                v.error(name, format!("unknown section; expected one of {}", SECTIONS.join(", ")));
            }
        }
        let server: ServerSection = v.section(map, "server");
        let database: DatabaseSection = v.section(map, "database");
        let raw_servers: Vec<RawServer> = v.list(map, "servers");
        let raw_routes: Vec<RouteInput> = v.list(map, "routes");
        let lb: LbSection = v.section(map, "load_balancer");
        let res: ResourcesSection = v.section(map, "resources");
        let http: HttpClientSection = v.section(map, "http_client");
        let admin: AdminSection = v.section(map, "admin");
        let cors: CorsSection = v.section(map, "cors");
        let auth: AuthSection = v.section(map, "auth");
        let compression: CompressionSection = v.section(map, "compression");
        let compression_level = compression.level.unwrap_or(3);
        if compression_level > 9 {
            v.error("compression.level", format!("{compression_level}: expected 0 (off) to 9"));
        }
        let aff: AffinitySection = v.section(map, "affinity");
        let mode = match aff.mode.as_deref().unwrap_or("header") {
            "off" => AffinityMode::Off,
            "header" => AffinityMode::Header,
            "prefix" => AffinityMode::Prefix,
            other => {
                v.error("affinity.mode", format!("{other:?}: expected off, header or prefix"));
                AffinityMode::Off
            }
        };
        let header = aff.header.as_deref().unwrap_or("x-session-id");
        let header = http::HeaderName::try_from(header.to_ascii_lowercase()).unwrap_or_else(|_| {
            v.error("affinity.header", format!("{header:?} is not a valid header name"));
            http::HeaderName::from_static("x-session-id")
        });
        let load_factor = aff.load_factor.unwrap_or(1.25);
        if !(1.0..=100.0).contains(&load_factor) {
            v.error("affinity.load_factor", format!("{load_factor}: expected 1.0 to 100 (1.25 is usual)"));
        }
        let affinity = Affinity { mode, header, load_factor };
        let state: StateSection = v.section(map, "state");
        let redis_url = env.redis_url.clone().or(state.redis_url);
        if let Some(u) = &redis_url {
            if let Err(e) = crate::storage::redis::Redis::from_url(u, Duration::from_secs(1)) {
                v.error("state.redis_url", e);
            }
        }
        let redis_timeout = v.duration("state.redis_timeout", state.redis_timeout, "50ms");
        let c: CacheSection = v.section(map, "cache");
        let cache = CacheSettings {
            enabled: c.enabled.unwrap_or(true),
            ttl: v.duration("cache.ttl", c.ttl, "10m"),
            max_bytes: c.max_bytes.unwrap_or(64 * 1024 * 1024),
            max_entry_bytes: c.max_entry_bytes.unwrap_or(1024 * 1024),
        };
        let mem: MemorySection = v.section(map, "memory");
        let mem_header = mem.header.as_deref().unwrap_or("x-session-id");
        let memory = MemorySettings {
            enabled: mem.enabled.unwrap_or(false),
            header: http::HeaderName::try_from(mem_header.to_ascii_lowercase()).unwrap_or_else(|_| {
                v.error("memory.header", format!("{mem_header:?} is not a valid header name"));
                http::HeaderName::from_static("x-session-id")
            }),
            ttl: v.duration("memory.ttl", mem.ttl, "1h"),
            max_messages: mem.max_messages.unwrap_or(50),
            max_bytes: mem.max_bytes.unwrap_or(256 * 1024),
        };
        if memory.max_messages < 2 {
            v.error(
                "memory.max_messages",
                format!("{}: must be at least 2 (a question and its answer)", memory.max_messages),
            );
        }
        if cache.max_entry_bytes > cache.max_bytes {
            v.error("cache.max_entry_bytes", format!("{}: must not exceed cache.max_bytes", cache.max_entry_bytes));
        }
        let limits: LimitsSection = v.section(map, "limits");
        if limits.client_requests_per_minute == Some(0) {
            v.error("limits.client_requests_per_minute", "must be at least 1 (leave it out for no limit)");
        }
        let logging: LoggingSection = v.section(map, "logging");
        let pingora: PingoraSection = v.section(map, "pingora");

        let listen_text = env.listen.clone().or(server.listen);
        let listen = v.addr("server.listen", listen_text.as_deref().unwrap_or("0.0.0.0:8083"));
        let metrics_listen =
            v.addr("server.metrics_listen", server.metrics_listen.as_deref().unwrap_or("127.0.0.1:9091"));
        let tls = server.tls.and_then(|t| {
            let listen = v.addr("server.tls.listen", t.listen.as_deref().unwrap_or("0.0.0.0:8443"));
            let mut file = |key: &str, value: Option<String>| match value {
                Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
                _ => {
                    v.error(key, "is required for a TLS listener (a PEM file)");
                    None
                }
            };
            let cert = file("server.tls.cert", t.cert);
            let key = file("server.tls.key", t.key);
            Some(Tls { listen: listen?, cert: cert?, key: key? })
        });
        let threads = server.threads.unwrap_or(2);
        if threads == 0 {
            v.error("server.threads", "must be at least 1, got 0");
        }

        let database_url =
            env.database_url.clone().or(database.url).unwrap_or_else(|| "sqlite://drover.db".to_string());
        if !["sqlite:", "postgres:", "postgresql:", "mysql:", "mariadb:"].iter().any(|p| database_url.starts_with(p)) {
            v.error(
                "database.url",
                format!(
                    "{:?}: expected sqlite://, postgres:// or mysql://",
                    crate::storage::store::redact_url(&database_url)
                ),
            );
        }

        let default_concurrency = v.positive("load_balancer.max_concurrency", lb.max_concurrency.unwrap_or(4));
        let servers = match &env.servers {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .enumerate()
                .filter_map(|(i, u)| v.server(&format!("DROVER_SERVERS[{i}]"), RawServer::Url(u.into())))
                .collect(),
            None => raw_servers
                .into_iter()
                .enumerate()
                .filter_map(|(i, s)| v.server(&format!("servers[{i}]"), s))
                .collect::<Vec<_>>(),
        };
        let routes: Vec<RouteSpec> =
            raw_routes.into_iter().enumerate().filter_map(|(i, r)| v.route(&format!("routes[{i}]"), r)).collect();
        let mut seen = HashSet::new();
        for (i, s) in servers.iter().enumerate() {
            if !seen.insert(s.url.as_str().to_string()) {
                v.error(format!("servers[{i}].url"), format!("{:?} is listed twice", s.url.as_str()));
            }
        }

        let strategy = v.strategy("load_balancer.strategy", lb.strategy.as_deref().unwrap_or("weighted"));
        let model_strategies = lb
            .model_strategies
            .unwrap_or_default()
            .into_iter()
            .map(|(model, s)| {
                let parsed = v.strategy(&format!("load_balancer.model_strategies.{model}"), &s);
                (model, parsed)
            })
            .collect();
        let rise = lb.rise.unwrap_or(2);
        let fall = lb.fall.unwrap_or(2);
        if rise == 0 {
            v.error("load_balancer.rise", "must be at least 1, got 0");
        }
        if fall == 0 {
            v.error("load_balancer.fall", "must be at least 1, got 0");
        }
        let max_body_bytes = lb.max_body_bytes.unwrap_or(32 * 1024 * 1024);
        if max_body_bytes == 0 {
            v.error("load_balancer.max_body_bytes", "must be at least 1, got 0");
        }
        let max_header_bytes = lb.max_header_bytes.unwrap_or(64 * 1024);
        if !(1024..=1024 * 1024).contains(&max_header_bytes) {
            v.error("load_balancer.max_header_bytes", format!("{max_header_bytes}: expected 1024 to 1048576"));
        }
        let max_fails = lb.max_fails.unwrap_or(3);
        if max_fails == 0 {
            v.error("load_balancer.max_fails", "must be at least 1, got 0");
        }
        let load_balancer = LoadBalancing {
            health_check_interval: v.duration("load_balancer.health_check_interval", lb.health_check_interval, "5s"),
            health_check_timeout: v.duration("load_balancer.health_check_timeout", lb.health_check_timeout, "1s"),
            rise,
            fall,
            db_check_interval: v.duration("load_balancer.db_check_interval", lb.db_check_interval, "5s"),
            max_retry_count: lb.max_retry_count.unwrap_or(2),
            cooldown: v.duration("load_balancer.cooldown", lb.cooldown, "10s"),
            max_fails,
            fail_timeout: v.duration("load_balancer.fail_timeout", lb.fail_timeout, "10s"),
            panic_mode: lb.panic_mode.unwrap_or(true),
            match_num_ctx: lb.match_num_ctx.unwrap_or(true),
            max_body_bytes: max_body_bytes as usize,
            max_header_bytes: max_header_bytes as usize,
            strategy,
            model_strategies,
            max_concurrency: default_concurrency,
            queue_size: lb.queue_size.unwrap_or(1000),
            queue_timeout: v.duration("load_balancer.queue_timeout", lb.queue_timeout, "30s"),
        };

        let memory_threshold = res.memory_threshold.unwrap_or(90.0);
        if !(memory_threshold > 0.0 && memory_threshold <= 100.0) {
            v.error("resources.memory_threshold", format!("{memory_threshold}: expected a percentage in (0, 100]"));
        }
        let resources = Resources {
            memory_threshold,
            cache_ttl_min: v.duration("resources.cache_ttl_min", res.cache_ttl_min, "2s"),
            cache_ttl_max: v.duration("resources.cache_ttl_max", res.cache_ttl_max, "30s"),
            fail_open: res.fail_open.unwrap_or(true),
        };
        if resources.cache_ttl_min > resources.cache_ttl_max {
            v.error("resources.cache_ttl_min", "must not exceed resources.cache_ttl_max");
        }
        let http_client = HttpClient {
            connect_timeout: v.duration("http_client.connect_timeout", http.connect_timeout, "2s"),
            read_timeout: v.duration("http_client.read_timeout", http.read_timeout, "300s"),
            keepalive_pool: http.keepalive_pool.unwrap_or(128),
        };
        let admin_token = env.admin_token.clone().or(admin.token).filter(|t| !t.is_empty());

        if v.errors.is_empty() {
            Ok(Settings {
                source,
                listen: listen.expect("checked"),
                tls,
                metrics_listen: metrics_listen.expect("checked"),
                threads,
                database_url,
                database_pool_size: database.pool_size.unwrap_or(10),
                servers,
                routes,
                load_balancer,
                resources,
                http_client,
                admin_token,
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
                access_log: logging.access_log.unwrap_or_else(|| "logs/access.log".into()),
                grace_period_seconds: pingora.grace_period_seconds.unwrap_or(30),
                upgrade_sock: pingora.upgrade_sock.unwrap_or_else(|| "/tmp/drover_upgrade.sock".into()),
                pid_file: pingora.pid_file.unwrap_or_else(|| "/tmp/drover.pid".into()),
            })
        } else {
            Err(ConfigErrors(v.errors))
        }
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
        ServerUrl::parse(text).map_err(|e| self.error(key, e)).ok()
    }

    fn server(&mut self, key: &str, raw: RawServer) -> Option<ServerSpec> {
        let obj = match raw {
            RawServer::Url(url) => RawServerObject {
                url,
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
            RawServer::Object(o) => o,
        };
        let url = self.url(&format!("{key}.url"), &obj.url);
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
        Some(ServerSpec {
            url: url?,
            required_models,
            kind,
            probe_url,
            max_concurrency,
            max_fails: obj.max_fails,
            fail_timeout,
            credentials,
        })
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

/// `${NAME}` replaced by the environment variable NAME; an unset one is an error.
fn expand_env(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or("an unclosed ${ (write ${NAME})")?;
        let name = &after[..end];
        match std::env::var(name) {
            Ok(v) => out.push_str(&v),
            Err(_) => return Err(format!("environment variable {name} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The rules a route's fields obey, wherever the route comes from (config file or admin API).
pub mod rules {
    use crate::protocol::ollama::Device;

    pub fn name(s: &str) -> Result<(), String> {
        if s.trim().is_empty() || s.chars().count() > 100 {
            Err(format!("{s:?}: must be 1 to 100 characters"))
        } else {
            Ok(())
        }
    }

    pub fn at_least_one(n: i64) -> Result<(), String> {
        if (1..=u32::MAX as i64).contains(&n) {
            Ok(())
        } else {
            Err(format!("{n}: must be at least 1"))
        }
    }

    pub fn device(s: &str) -> Result<Device, String> {
        match s {
            "GPU" | "gpu" => Ok(Device::Gpu),
            "CPU" | "cpu" => Ok(Device::Cpu),
            other => Err(format!("{other:?}: expected CPU or GPU")),
        }
    }

    pub fn performance(gb: f64) -> Result<(), String> {
        if gb >= 0.0 && gb.is_finite() {
            Ok(())
        } else {
            Err(format!("{gb}: must be >= 0 (GB)"))
        }
    }
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
        assert_eq!(s.load_balancer.model_strategies["qwen3"], Strategy::WarmFirst);
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
