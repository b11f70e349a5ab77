//! Fleet-wide answers: /api/tags, /api/ps, /v1/models and /api/version merged from the
//! servers, and the status pages (/health, /status, /lb-stats), each built whole here.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde_json::{json, Value};

use crate::fleet::{Fleet, Origin, Server};
use crate::protocol::ollama::{canonical_model, Kind};
use crate::storage::store::StoreState;

/// Servers that take requests: up by their health checks, their credentials not refused.
fn healthy(fleet: &Fleet) -> impl Iterator<Item = &std::sync::Arc<Server>> {
    fleet.servers.iter().filter(|s| s.healthy() && !s.refusing())
}

/// Entries keyed by canonical name, first server wins; then one entry per virtual model.
fn merged(
    fleet: &Fleet,
    pick: impl Fn(&crate::protocol::ollama::Inventory) -> &Vec<Value>,
    virtual_only_if_present: bool,
) -> Vec<Value> {
    let mut by_name: BTreeMap<String, Value> = BTreeMap::new();
    for s in healthy(fleet) {
        let inv = s.inventory();
        for m in pick(&inv) {
            if let Some(name) = m.get("name").or_else(|| m.get("model")).and_then(Value::as_str) {
                by_name.entry(canonical_model(name)).or_insert_with(|| {
                    let mut entry = m.clone();
                    if let Some(o) = entry.as_object_mut() {
                        o.remove("own");
                    }
                    entry
                });
            }
        }
    }
    let mut virtuals: Vec<(String, Value)> = Vec::new();
    for (virtual_name, mr) in &fleet.routes {
        let key = virtual_name.clone();
        if by_name.contains_key(&key) {
            continue;
        }
        let active = mr.routes.iter().filter(|r| r.is_active);
        let template = active.clone().find_map(|r| by_name.get(&canonical_model(&r.actual_model)).cloned());
        let entry = match template {
            Some(mut t) => {
                t["name"] = json!(virtual_name);
                t["model"] = json!(virtual_name);
                t
            }
            None if virtual_only_if_present => continue,
            None if active.count() == 0 => continue,
            None => crate::protocol::ollama::synthetic_tag(virtual_name, None),
        };
        virtuals.push((key, entry));
    }
    by_name.extend(virtuals);
    // Listed as Ollama lists them: the name with its tag.
    by_name
        .into_iter()
        .map(|(name, mut entry)| {
            entry["name"] = json!(name);
            entry["model"] = json!(name);
            entry
        })
        .collect()
}

/// GET /api/tags: every model the healthy servers have, and every virtual model name.
pub fn tags(fleet: &Fleet) -> Value {
    json!({ "models": merged(fleet, |i| &i.tags, false) })
}

/// GET /api/ps: every model loaded somewhere, and virtual names whose model is loaded.
pub(crate) fn ps(fleet: &Fleet) -> Value {
    json!({ "models": merged(fleet, |i| &i.loaded, true) })
}

/// GET /v1/models in OpenAI's format.
pub(crate) fn models(fleet: &Fleet) -> Value {
    let data: Vec<Value> = merged(fleet, |i| &i.tags, false)
        .iter()
        .filter_map(|m| m.get("name").and_then(Value::as_str))
        .map(openai_model)
        .collect();
    json!({ "object": "list", "data": data })
}

/// GET /v1/models/{model}, or None when no server has it.
pub(crate) fn model(fleet: &Fleet, name: &str) -> Option<Value> {
    let wanted = canonical_model(name);
    let known: HashSet<String> = fleet.model_names().iter().map(|n| canonical_model(n)).collect();
    known.contains(&wanted).then(|| openai_model(name))
}

fn openai_model(name: &str) -> Value {
    json!({ "id": name, "object": "model", "created": 0, "owned_by": "drover" })
}

/// GET /api/version: the oldest version among healthy Ollama servers, which every client can rely on.
pub(crate) fn version(fleet: &Fleet) -> Value {
    let oldest = healthy(fleet)
        .filter(|s| s.kind == Kind::Ollama)
        .filter_map(|s| s.inventory().version.clone())
        .min_by_key(|v| version_key(v));
    json!({ "version": oldest.unwrap_or_else(|| "0.0.0".to_string()) })
}

fn version_key(v: &str) -> Vec<u64> {
    v.split(['.', '-']).map(|p| p.parse().unwrap_or(0)).collect()
}

fn server_state(s: &Server) -> Value {
    json!({
        "url": s.url.as_str(),
        "kind": s.kind.as_str(),
        "state": s.condition(),
        "healthy": s.healthy(),
        "down_reason": s.refused(),
        "cooldown_seconds_left": s.cooling_down().map(|d| d.as_secs_f64()),
        "rest_seconds_left": s.resting().map(|d| d.as_secs_f64()),
        "last_error": s.last_error(),
    })
}

/// GET /health: ok when every server is up and the store answers, degraded when some
/// server is down or the store is unreachable (drover then serves its last good routes),
/// or Redis is configured and not answering; down when no server is up. `required` is the
/// required models' report (an empty list when none are set), `shared` Redis's report
/// (none without Redis).
pub(crate) fn health(fleet: &Fleet, store: &StoreState, required: Value, shared: Option<Value>) -> (u16, Value) {
    let up = healthy(fleet).count();
    let status = if up == 0 {
        "down"
    } else if up < fleet.servers.len() || *store != StoreState::Ok {
        "degraded"
    } else {
        "ok"
    };
    let servers: Vec<Value> = fleet.servers.iter().map(|s| server_state(s)).collect();
    let store = match store {
        StoreState::Ok => json!({ "state": "ok" }),
        StoreState::Unreachable(why) => {
            json!({ "state": "unreachable", "error": why, "serving": "last good routing table" })
        }
    };
    let code = if status == "down" { 503 } else { 200 };
    let mut body = json!({ "status": status, "servers": servers, "store": store });
    if required.as_array().is_some_and(|r| !r.is_empty()) {
        body["required_models"] = required;
    }
    if let Some(shared) = shared {
        if shared["state"] != "ok" && body["status"] == "ok" {
            body["status"] = "degraded".into();
        }
        body["shared_state"] = shared;
    }
    (code, body)
}

/// GET /status: what this drover is and runs on.
pub(crate) fn status(fleet: &Fleet, uptime: Duration, config: Option<&str>, database: &str) -> Value {
    let routes: usize = fleet.routes.values().map(|mr| mr.routes.len()).sum();
    let stored = fleet.routes.values().flat_map(|mr| &mr.routes).filter(|r| r.origin == Origin::Store).count();
    json!({
        "name": "drover",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": uptime.as_secs(),
        "config_file": config,
        "database": database,
        "database_kind": crate::storage::store::Backend::of(database).map(|b| b.as_str()),
        "servers": fleet.servers.len(),
        "healthy_servers": healthy(fleet).count(),
        "routes": routes,
        "stored_routes": stored,
        "config_routes": routes - stored,
        "virtual_models": fleet.routes.len(),
    })
}

/// The load a server last reported about itself (null when it reports none): requests
/// running and waiting there, its KV cache in use and parallel slots where it says, where
/// it was read and how long ago, and whether it counts as full.
pub(crate) fn reported_load(s: &Server) -> Value {
    let Some(r) = s.reported() else { return Value::Null };
    json!({
        "running": r.reported.running,
        "waiting": r.reported.waiting,
        "kv_cache_used": r.reported.kv_cache,
        "slots": r.reported.slots,
        "from": r.source,
        "seconds_ago": (r.at.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "drover_in_flight_then": r.own,
        "full": s.reported_full(),
    })
}

/// GET /lb-stats: per-server counters and loaded models, the queue, and the replica
/// keeper's view (placement/replicas.rs).
pub(crate) fn lb_stats(fleet: &Fleet, queued: usize, replicas: Value) -> Value {
    let servers: Vec<Value> = fleet
        .servers
        .iter()
        .map(|s| {
            let loaded: Vec<Value> = s.inventory().loaded.iter().filter_map(|m| m.get("name").cloned()).collect();
            json!({
                "url": s.url.as_str(),
                "kind": s.kind.as_str(),
                "healthy": s.healthy(),
                "status": s.condition(),
                "down_reason": s.refused(),
                "cooldown_seconds_left": s.cooling_down().map(|d| d.as_secs_f64()),
                "rest_seconds_left": s.resting().map(|d| d.as_secs_f64()),
                "request_count": s.request_count(),
                "error_count": s.error_count(),
                "rest_count": s.rest_count(),
                "last_error": s.last_error(),
                "in_flight": s.in_flight(),
                "max_concurrency": s.max_concurrency,
                "load_estimate": s.load_estimate(),
                "reported_load": reported_load(s),
                "loaded_models": loaded,
            })
        })
        .collect();
    // `endpoints` is the name tools written for other Ollama balancers read; `servers` is drover's own.
    json!({
        "total_endpoints": fleet.servers.len(),
        "healthy_endpoints": healthy(fleet).count(),
        "queued_requests": queued,
        "endpoints": servers.clone(),
        "servers": servers,
        "replicas": replicas,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Env, Settings};
    use crate::fleet::backends::Health;
    use crate::protocol::ollama::Inventory;

    fn fleet() -> Fleet {
        let yaml = "servers: [ 'http://a:1', 'http://b:1' ]\nroutes:\n\
            - { virtual_model_name: chat, server_url: 'http://a:1', actual_model_name: 'qwen3:14b' }\n\
            - { virtual_model_name: ghost, server_url: 'http://a:1', actual_model_name: 'none:1b' }\n";
        let f = Fleet::build(&Settings::parse(yaml, None, &Env::default()).unwrap(), &[], &[], &Health::new(), None);
        for (s, models, ver) in [
            (&f.servers[0], vec!["qwen3:14b", "llama3:latest"], "0.6.2"),
            (&f.servers[1], vec!["llama3:latest"], "0.5.10"),
        ] {
            let tags: Vec<Value> = models.iter().map(|m| json!({"name": m, "model": m, "size": 7})).collect();
            s.set_inventory(Inventory {
                names: models.iter().map(|m| m.to_string()).collect(),
                loaded_names: HashSet::from(["qwen3:14b".to_string()]),
                loaded: vec![json!({"name": "qwen3:14b", "model": "qwen3:14b", "size_vram": 9})],
                loaded_ctx: Default::default(),
                tags,
                version: Some(ver.into()),
                vllm: false,
            });
        }
        f
    }

    #[test]
    fn tags_are_merged_deduplicated_and_include_virtual_names() {
        let t = tags(&fleet());
        let names: Vec<&str> = t["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            ["chat:latest", "ghost:latest", "llama3:latest", "qwen3:14b"],
            "with their tags, as Ollama lists them"
        );
        assert_eq!(t["models"][0]["size"], 7, "virtual entry borrows the actual model's details");
        assert_eq!(
            t["models"][1]["digest"].as_str().unwrap().len(),
            64,
            "a virtual name no server has is Ollama-shaped"
        );
        assert!(t["models"][1]["modified_at"].is_string());
    }

    #[test]
    fn ps_lists_loaded_and_their_virtual_names() {
        let p = ps(&fleet());
        let names: Vec<&str> = p["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["chat:latest", "qwen3:14b"]);
    }

    #[test]
    fn version_is_the_oldest_and_models_are_openai_shaped() {
        let f = fleet();
        assert_eq!(version(&f)["version"], "0.5.10");
        let m = models(&f);
        assert_eq!(m["object"], "list");
        assert_eq!(m["data"][0]["id"], "chat:latest");
        assert!(model(&f, "llama3").is_some());
        assert!(model(&f, "nope").is_none());
    }

    #[test]
    fn health_degrades_then_goes_down() {
        let f = fleet();
        assert_eq!(health(&f, &StoreState::Ok, json!([]), None).1["status"], "ok");
        let outage = StoreState::Unreachable("connection refused".into());
        let (_, h) = health(&f, &outage, json!([]), None);
        assert_eq!((h["status"].as_str(), h["store"]["state"].as_str()), (Some("degraded"), Some("unreachable")));
        f.servers[0].note_error("refused");
        f.servers[0].set_enabled(false);
        assert_eq!(health(&f, &StoreState::Ok, json!([]), None).1["status"], "degraded");
        f.servers[1].set_enabled(false);
        let (code, h) = health(&f, &StoreState::Ok, json!([]), None);
        assert_eq!((code, h["status"].as_str()), (503, Some("down")));
        assert_eq!(h["servers"][0]["last_error"], "refused");
    }
}
