//! The validated configuration: real types (addresses, durations, URLs, strategies), each
//! value checked, with its defaults applied. Everything else in drover reads this.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::protocol::ollama::{Device, Kind, ServerUrl};

/// The fleet used when neither `servers:`, `routes:` nor the store names one: a local Ollama.
pub(crate) const DEFAULT_SERVER: &str = "http://127.0.0.1:11434";

/// One configuration error: where it is and what is wrong with it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub(crate) key: String,
    pub(crate) message: String,
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

/// server.tls: a TLS listener beside the plain one (rustls; HTTP/2 offered by ALPN).
#[derive(Debug, Clone)]
pub(crate) struct Tls {
    pub(crate) listen: SocketAddr,
    /// PEM certificate chain and private key, read at start (and so again by the new
    /// process of a graceful upgrade).
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

/// How traffic is split inside the winning priority tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Weighted,
    WarmFirst,
    LeastBusy,
}

/// A `servers:` entry given by `dns: "host:port"`: every address the name resolves to is a
/// server with the entry's settings (`template`, whose URL names the host itself).
#[derive(Debug, Clone)]
pub(crate) struct DnsServer {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) template: ServerSpec,
}

impl DnsServer {
    /// The server at one of the name's addresses.
    pub(crate) fn at(&self, ip: std::net::IpAddr) -> ServerSpec {
        let host = match ip {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        };
        let mut spec = self.template.clone();
        spec.url = ServerUrl::parse(&format!("http://{host}:{}", self.port)).expect("an address and a port make a URL");
        spec
    }
}

#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub(crate) url: ServerUrl,
    pub(crate) kind: Kind,
    pub(crate) probe_url: Option<ServerUrl>,
    pub(crate) max_concurrency: Option<usize>,
    /// Passive failure counting, overriding load_balancer.max_fails / fail_timeout.
    pub(crate) max_fails: Option<u32>,
    pub(crate) fail_timeout: Option<Duration>,
    pub(crate) credentials: Credentials,
    /// Pulled in the background when missing (placement/required.rs).
    pub(crate) required_models: Vec<String>,
}

/// What a server is sent to let drover in: its own API key or headers, never the client's
/// unless `forward_client_auth` says so.
#[derive(Clone, Default, PartialEq)]
pub(crate) struct Credentials {
    /// Sent on every request to the server, health checks included (`api_key` becomes
    /// `Authorization: Bearer ...`).
    pub(crate) headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Pass the client's Authorization / x-api-key on to this server.
    pub(crate) forward_client_auth: bool,
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
pub(crate) struct RouteSpec {
    pub(crate) virtual_model_name: String,
    pub(crate) server_url: ServerUrl,
    pub(crate) actual_model_name: String,
    pub(crate) weight: u32,
    pub(crate) priority: u32,
    pub(crate) device: Device,
    pub(crate) performance: f64,
    pub(crate) description: String,
    pub(crate) is_active: bool,
    pub(crate) skip_resource_check: bool,
    pub(crate) probe_url: Option<ServerUrl>,
    pub(crate) max_concurrency: Option<usize>,
}

#[derive(Debug, Clone)]
pub(crate) struct LoadBalancing {
    pub(crate) health_check_interval: Duration,
    pub(crate) health_check_timeout: Duration,
    pub(crate) rise: u32,
    pub(crate) fall: u32,
    pub(crate) db_check_interval: Duration,
    /// How often the `dns:` servers' names are resolved again.
    pub(crate) dns_interval: Duration,
    /// A nameserver to ask directly (UDP, then TCP when truncated) instead of the system's
    /// resolver (/etc/resolv.conf, search domains included).
    pub(crate) dns_resolver: Option<SocketAddr>,
    pub(crate) max_retry_count: u32,
    /// How long a server that failed `max_fails` requests within `fail_timeout` is skipped.
    pub(crate) cooldown: Duration,
    /// Failed requests within `fail_timeout` that put a server into cooldown (nginx's max_fails).
    pub(crate) max_fails: u32,
    pub(crate) fail_timeout: Duration,
    /// When every route of a model is cooling down, try the one that failed longest ago
    /// instead of refusing (Envoy's panic mode).
    pub(crate) panic_mode: bool,
    pub(crate) max_body_bytes: usize,
    /// Largest request header block accepted; larger ones get 431.
    pub(crate) max_header_bytes: usize,
    pub(crate) strategy: Strategy,
    /// Per virtual model, overriding `strategy`.
    pub(crate) model_strategies: std::collections::HashMap<String, Strategy>,
    pub(crate) max_concurrency: usize,
    pub(crate) queue_size: usize,
    pub(crate) queue_timeout: Duration,
    /// A server with the model loaded at another num_ctx counts as cold for a request that
    /// asks for a context size (Ollama would reload it).
    pub(crate) match_num_ctx: bool,
    /// A stream whose server breaks off is continued on another server (protocol/resume.rs).
    pub(crate) resume: bool,
    /// Per virtual model, overriding `resume`.
    pub(crate) model_resume: std::collections::HashMap<String, bool>,
    /// The longest a server that answered 429 or 503 with Retry-After is left to rest.
    pub(crate) max_rest: Duration,
    /// Models placed on more servers when their requests wait (placement/replicas.rs).
    pub(crate) replicas: Replicas,
}

/// Replicas follow demand: when a model's requests have waited longer than `scale_up_wait`
/// (in drover's queue, or for a stream's first byte), continuously for `scale_up_for`,
/// drover loads it on another server that may serve it and has the memory; a model in use
/// is kept on `min_replicas` servers; a copy it placed that served nothing for
/// `scale_down_idle` is unloaded, never below `min_replicas` copies; at most `max_replicas`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Replicas {
    pub(crate) enabled: bool,
    pub(crate) scale_up_wait: Duration,
    pub(crate) scale_up_for: Duration,
    pub(crate) scale_down_idle: Duration,
    pub(crate) min_replicas: usize,
    pub(crate) max_replicas: usize,
}

/// Which requests of one conversation go back to the server that served the last turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AffinityMode {
    Off,
    /// Only requests that carry the session header.
    Header,
    /// The session header, else a hash of the conversation's opening.
    Prefix,
}

#[derive(Debug, Clone)]
pub(crate) struct Affinity {
    pub(crate) mode: AffinityMode,
    /// Lower-case header name.
    pub(crate) header: http::HeaderName,
    /// A server takes a conversation while its requests in flight stay under
    /// load_factor x the tier's average (bounded-load consistent hashing).
    pub(crate) load_factor: f64,
}

#[derive(Debug, Clone)]
pub(crate) struct Resources {
    pub(crate) memory_threshold: f64,
    pub(crate) cache_ttl_min: Duration,
    pub(crate) cache_ttl_max: Duration,
    pub(crate) fail_open: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct HttpClient {
    pub(crate) connect_timeout: Duration,
    pub(crate) read_timeout: Duration,
    pub(crate) keepalive_pool: usize,
}

/// The response cache (cache.enabled, ttl, max_bytes, max_entry_bytes).
#[derive(Debug, Clone)]
pub(crate) struct CacheSettings {
    pub(crate) enabled: bool,
    pub(crate) ttl: Duration,
    pub(crate) max_bytes: usize,
    pub(crate) max_entry_bytes: usize,
    /// One cache for every API key (a hit tells one tenant what another asked); by default
    /// each key has its own.
    pub(crate) shared_across_keys: bool,
}

/// Conversation memory (memory.enabled, header, ttl, max_messages, max_bytes).
#[derive(Debug, Clone)]
pub(crate) struct MemorySettings {
    pub(crate) enabled: bool,
    pub(crate) header: http::HeaderName,
    pub(crate) ttl: Duration,
    pub(crate) max_messages: usize,
    pub(crate) max_bytes: usize,
}

/// Everything drover runs on, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The file it came from, if any.
    pub(crate) source: Option<PathBuf>,
    pub(crate) listen: SocketAddr,
    pub(crate) tls: Option<Tls>,
    pub(crate) metrics_listen: SocketAddr,
    pub(crate) threads: usize,
    /// How long a client may take to send a whole request header (server.header_timeout).
    pub(crate) header_timeout: Duration,
    pub(crate) database_url: String,
    pub(crate) database_pool_size: u32,
    pub(crate) servers: Vec<ServerSpec>,
    /// Servers found by DNS: each of a name's addresses is a server like `template`.
    pub(crate) dns_servers: Vec<DnsServer>,
    pub(crate) routes: Vec<RouteSpec>,
    pub(crate) load_balancer: LoadBalancing,
    pub(crate) resources: Resources,
    pub(crate) http_client: HttpClient,
    pub(crate) admin_token: Option<String>,
    /// Host names (exact, or `*.suffix`) the admin API and dashboard answer besides loopback
    /// names and IP addresses (admin.allowed_hosts): the DNS-rebinding guard.
    pub(crate) admin_allowed_hosts: Vec<String>,
    /// Origin patterns allowed beside Ollama's local defaults (cors.allowed_origins).
    pub(crate) cors_origins: Vec<String>,
    /// compression.level: gzip/zstd/brotli level for whole answers a client accepts compressed (0: off).
    pub(crate) compression_level: u32,
    /// compression.min_bytes: answers smaller than this go as they are.
    pub(crate) compression_min_bytes: usize,
    pub(crate) affinity: Affinity,
    /// state.redis_url (or REDIS_URL): limits and cooldowns shared by several drovers.
    pub(crate) redis_url: Option<String>,
    /// state.redis_timeout: a slower Redis call counts as Redis down.
    pub(crate) redis_timeout: Duration,
    /// The response cache for deterministic requests (cache.rs).
    pub(crate) cache: CacheSettings,
    /// Conversation memory (memory.rs), off by default.
    pub(crate) memory: MemorySettings,
    /// auth.require_keys: model calls and fleet views need an API key.
    pub(crate) require_keys: bool,
    /// limits.client_requests_per_minute: per client address, on model calls and fleet views.
    pub(crate) client_requests_per_minute: Option<u64>,
    /// limits.max_tracked_clients: the most client addresses the per-address limit keeps
    /// buckets for (a flood of new addresses evicts, never grows the table past it).
    pub(crate) max_tracked_clients: usize,
    pub(crate) access_log: String,
    pub(crate) grace_period_seconds: u64,
    pub(crate) upgrade_sock: String,
    pub(crate) pid_file: String,
}

/// The environment variables drover reads, gathered so tests can pass their own.
#[derive(Debug, Default, Clone)]
pub struct Env {
    pub(crate) database_url: Option<String>,
    pub(crate) listen: Option<String>,
    pub(crate) admin_token: Option<String>,
    pub(crate) servers: Option<String>,
    pub(crate) redis_url: Option<String>,
}

impl Env {
    pub(crate) fn from_process() -> Self {
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
