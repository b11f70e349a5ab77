//! `GET /dashboard`: one live page on the fleet, served by drover itself (no build step, no
//! CDN): dashboard.html and dashboard.js beside this file, compiled into the binary. The page
//! polls `GET /dashboard/data` every second and acts through the admin API (drain/enable a
//! server, pull a model).
//!
//! Auth is the admin API's: loopback clients without `admin.token`; with a token, a bearer
//! header, or the `drover_admin` cookie that `GET /dashboard?token=...` sets (HttpOnly,
//! SameSite=Strict). The cookie alone is accepted for reads; a write made with it must also
//! carry `X-Drover-Dashboard: 1`, which a cross-site form cannot send.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::fleet::Fleet;

pub(crate) const PAGE: &str = include_str!("dashboard.html");
pub(crate) const SCRIPT: &str = include_str!("dashboard.js");
pub(crate) const COOKIE: &str = "drover_admin";

/// Everything the page shows, as of now. Counters are totals; the page turns them into
/// rates between two polls.
pub(crate) struct Snapshot<'a> {
    pub(crate) fleet: &'a Fleet,
    pub(crate) queued: usize,
    /// (server, free RAM, free VRAM) from the probes.
    pub(crate) free_memory: Vec<(String, u64, Option<u64>)>,
    pub(crate) errors: Vec<Value>,
    pub(crate) required: Value,
    pub(crate) uptime_seconds: u64,
    /// The replica keeper's view (placement/replicas.rs).
    pub(crate) replicas: Value,
}

pub(crate) fn data(s: Snapshot) -> Value {
    let fleet = s.fleet;
    let free: BTreeMap<&str, (u64, Option<u64>)> =
        s.free_memory.iter().map(|(u, ram, vram)| (u.as_str(), (*ram, *vram))).collect();
    let servers: Vec<Value> = fleet
        .servers
        .iter()
        .map(|srv| {
            let url = srv.url.as_str();
            let mut tiers: Vec<Value> = fleet
                .routes
                .iter()
                .flat_map(|(model, mr)| mr.routes.iter().map(move |r| (model, r)))
                .filter(|(_, r)| std::sync::Arc::ptr_eq(&r.server, srv) && r.is_active)
                .map(|(model, r)| json!({ "model": model, "priority": r.priority, "weight": r.weight }))
                .collect();
            tiers.sort_by_key(|t| (t["priority"].as_u64(), t["model"].as_str().map(str::to_string)));
            let inv = srv.inventory();
            let mut loaded: Vec<&String> = inv.loaded_names.iter().collect();
            loaded.sort();
            let state = srv.condition();
            let (ram, vram) = free.get(url).copied().map_or((None, None), |(r, v)| (Some(r), v));
            json!({
                "url": url,
                "kind": srv.kind.as_str(),
                "state": state,
                "drained": srv.drained(),
                "routes": tiers,
                "in_flight": srv.in_flight(),
                "max_concurrency": srv.max_concurrency,
                "reported_load": super::views::reported_load(srv),
                "loaded": loaded,
                "free_ram_bytes": ram,
                "free_vram_bytes": vram,
                "requests": srv.request_count(),
                "errors": srv.error_count(),
                "last_error": srv.last_error(),
                "down_reason": srv.refused(),
                "rests": srv.rest_count(),
                "version": inv.version,
            })
        })
        .collect();
    let models: Vec<Value> = crate::telemetry::metrics::per_model()
        .into_iter()
        .map(|(model, (requests, tokens))| json!({ "model": model, "requests": requests, "tokens": tokens }))
        .collect();
    json!({
        "uptime_seconds": s.uptime_seconds,
        "queued": s.queued,
        "servers": servers,
        "models": models,
        "errors": s.errors,
        "required_models": s.required,
        "replicas": s.replicas,
    })
}

/// The token in a `Cookie` header, if it carries drover's.
pub(crate) fn cookie_token(cookie: Option<&str>) -> Option<&str> {
    cookie?.split(';').map(str::trim).find_map(|c| c.strip_prefix(COOKIE)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cookie_among_others() {
        assert_eq!(cookie_token(Some("a=1; drover_admin=s3cret; b=2")), Some("s3cret"));
        assert_eq!(cookie_token(Some("drover_admin_x=1")), None);
        assert_eq!(cookie_token(None), None);
    }
}
