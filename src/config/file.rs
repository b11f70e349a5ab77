//! The configuration file as written: one serde type per YAML section (unknown keys refused),
//! durations as numbers or text, servers as URLs or objects, and `${NAME}` expansion.

use serde::Deserialize;

// ---- the file, as written -------------------------------------------------------------

/// A duration written as "5s", "250ms", "2m", or a bare number of seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum RawDuration {
    Seconds(u64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct ServerSection {
    pub(super) listen: Option<String>,
    pub(super) metrics_listen: Option<String>,
    pub(super) threads: Option<usize>,
    pub(super) tls: Option<TlsSection>,
    pub(super) header_timeout: Option<RawDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct TlsSection {
    pub(super) listen: Option<String>,
    pub(super) cert: Option<String>,
    pub(super) key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct DatabaseSection {
    pub(super) url: Option<String>,
    pub(super) pool_size: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawServer {
    Url(String),
    Object(Box<RawServerObject>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServerObject {
    #[serde(default)]
    pub(super) url: Option<String>,
    /// A name whose addresses are the servers (`host:port`, e.g. a headless Service), re-resolved
    /// every `load_balancer.dns_interval`; instead of `url`.
    #[serde(default)]
    pub(super) dns: Option<String>,
    #[serde(default)]
    pub(super) kind: Option<String>,
    #[serde(default)]
    pub(super) probe_url: Option<String>,
    #[serde(default)]
    pub(super) max_concurrency: Option<i64>,
    #[serde(default)]
    pub(super) max_fails: Option<u32>,
    #[serde(default)]
    pub(super) fail_timeout: Option<RawDuration>,
    /// Sent as `Authorization: Bearer ...`; `${VAR}` reads the environment.
    #[serde(default)]
    pub(super) api_key: Option<String>,
    /// Models drover pulls onto this server when it lacks them (placement/required.rs).
    #[serde(default)]
    pub(super) required_models: Option<Vec<String>>,
    /// Extra headers for this server (e.g. `x-api-key`); `${VAR}` reads the environment.
    #[serde(default)]
    pub(super) headers: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    pub(super) forward_client_auth: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct LbSection {
    pub(super) health_check_interval: Option<RawDuration>,
    pub(super) health_check_timeout: Option<RawDuration>,
    pub(super) rise: Option<u32>,
    pub(super) fall: Option<u32>,
    pub(super) db_check_interval: Option<RawDuration>,
    pub(super) dns_interval: Option<RawDuration>,
    pub(super) dns_resolver: Option<String>,
    pub(super) max_retry_count: Option<u32>,
    pub(super) cooldown: Option<RawDuration>,
    pub(super) max_fails: Option<u32>,
    pub(super) fail_timeout: Option<RawDuration>,
    pub(super) panic_mode: Option<bool>,
    pub(super) max_body_bytes: Option<u64>,
    pub(super) max_header_bytes: Option<u64>,
    pub(super) strategy: Option<String>,
    pub(super) model_strategies: Option<std::collections::BTreeMap<String, String>>,
    pub(super) max_concurrency: Option<i64>,
    pub(super) queue_size: Option<usize>,
    pub(super) queue_timeout: Option<RawDuration>,
    pub(super) match_num_ctx: Option<bool>,
    pub(super) resume: Option<bool>,
    pub(super) model_resume: Option<std::collections::BTreeMap<String, bool>>,
    pub(super) max_rest: Option<RawDuration>,
    pub(super) replicas: Option<ReplicasSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct ReplicasSection {
    pub(super) enabled: Option<bool>,
    pub(super) scale_up_wait: Option<RawDuration>,
    pub(super) scale_up_for: Option<RawDuration>,
    pub(super) scale_down_idle: Option<RawDuration>,
    pub(super) min_replicas: Option<u32>,
    pub(super) max_replicas: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct MemorySection {
    pub(super) enabled: Option<bool>,
    pub(super) header: Option<String>,
    pub(super) ttl: Option<RawDuration>,
    pub(super) max_messages: Option<usize>,
    pub(super) max_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct CacheSection {
    pub(super) enabled: Option<bool>,
    pub(super) ttl: Option<RawDuration>,
    pub(super) max_bytes: Option<usize>,
    pub(super) max_entry_bytes: Option<usize>,
    pub(super) shared_across_keys: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct StateSection {
    pub(super) redis_url: Option<String>,
    pub(super) redis_timeout: Option<RawDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct AffinitySection {
    pub(super) mode: Option<String>,
    pub(super) header: Option<String>,
    pub(super) load_factor: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct ResourcesSection {
    pub(super) memory_threshold: Option<f64>,
    pub(super) cache_ttl_min: Option<RawDuration>,
    pub(super) cache_ttl_max: Option<RawDuration>,
    pub(super) fail_open: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct HttpClientSection {
    pub(super) connect_timeout: Option<RawDuration>,
    pub(super) read_timeout: Option<RawDuration>,
    pub(super) keepalive_pool: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct AdminSection {
    pub(super) token: Option<String>,
    pub(super) allowed_hosts: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct AuthSection {
    pub(super) require_keys: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct LimitsSection {
    pub(super) client_requests_per_minute: Option<u64>,
    pub(super) max_tracked_clients: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct CompressionSection {
    pub(super) level: Option<u32>,
    pub(super) min_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct CorsSection {
    pub(super) allowed_origins: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct LoggingSection {
    pub(super) access_log: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct PingoraSection {
    pub(super) grace_period_seconds: Option<u64>,
    pub(super) upgrade_sock: Option<String>,
    pub(super) pid_file: Option<String>,
}

/// `${NAME}` replaced by the environment variable NAME; an unset one is an error.
pub(super) fn expand_env(text: &str) -> Result<String, String> {
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
