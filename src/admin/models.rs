//! The admin API for models on the servers: `POST /admin/models/preload` loads a model where
//! routing will want it, so that the first request does not wait for the load.
//!
//! Ollama loads a model when asked to generate from an empty prompt, and keeps it for
//! `keep_alive`. With no `servers` given, the targets are the model's routes in the best
//! priority tier that has a healthy Ollama server (or, for a model no route names, every
//! healthy Ollama server that lists it); all are asked at once.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Map, Value};

use super::fields::{error, invalid, parse_body, Reply};
use super::Admin;
use crate::fleet::{Fleet, Server};
use crate::placement::manage::Op;
use crate::protocol::ollama::{Kind, ServerUrl};

/// How long a preloaded model stays loaded when the request does not say.
const DEFAULT_KEEP_ALIVE: &str = "30m";

impl Admin {
    pub(crate) async fn preload(&self, body: Option<&[u8]>) -> Reply {
        let m = match parse_body(body) {
            Ok(m) => m,
            Err(reply) => return reply,
        };
        let fleet = self.fleet.load_full();
        let (model, keep_alive, targets) = match preload_request(&m, &fleet) {
            Ok(r) => r,
            Err(reply) => return reply,
        };
        if targets.is_empty() {
            return error(404, format!("model {model:?}: no healthy Ollama server to load it on"));
        }
        let timeout = self.settings.http_client.read_timeout;
        let loads = targets.into_iter().map(|(server, actual)| {
            let keep_alive = keep_alive.clone();
            async move {
                let started = Instant::now();
                let result = self.client.load_model(&server, &actual, keep_alive, timeout).await;
                let mut row = json!({ "server": server.url.as_str(), "actual_model": actual, "loaded": result.is_ok(),
                                      "seconds": (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0 });
                if let Err(e) = result {
                    row["error"] = json!(e.to_string());
                }
                row
            }
        });
        let results = futures::future::join_all(loads).await;
        let failed = results.iter().filter(|r| r["loaded"] != true).count();
        let status = if failed == 0 { 200 } else { 502 };
        (status, json!({ "model": model, "keep_alive": keep_alive, "results": results, "failed": failed }))
    }
}

impl Admin {
    /// `POST /admin/models/{pull,push,create,copy,delete}`: the same as Ollama's call through
    /// drover (placement/manage.rs), answered once every server is done, with per-server results.
    pub(crate) async fn manage_models(&self, op: &str, body: Option<&[u8]>) -> Reply {
        let Some(op) = Op::named(op) else {
            return error(404, format!("no such admin endpoint: POST /admin/models/{op}"));
        };
        let fleet = self.fleet.load_full();
        match crate::placement::manage::plan(op, body.unwrap_or_default(), None, &fleet) {
            Ok(plan) => {
                crate::placement::manage::run_to_end(&plan, &self.client, self.settings.http_client.read_timeout).await
            }
            Err(e) => error(e.status, e.message),
        }
    }
}

type Targets = Vec<(Arc<Server>, String)>;

/// The model, keep_alive and (server, name there) pairs of a preload request; a 400 naming
/// each bad field otherwise.
fn preload_request(m: &Map<String, Value>, fleet: &Fleet) -> Result<(String, Value, Targets), Reply> {
    let mut bad = Map::new();
    let model = match m.get("model").map(|v| (v, v.as_str())) {
        Some((_, Some(s))) if crate::config::rules::name(s).is_ok() => Some(s.to_string()),
        Some((v, _)) => {
            bad.insert("model".into(), json!(format!("{v}: must be a model name")));
            None
        }
        None => {
            bad.insert("model".into(), json!("is required"));
            None
        }
    };
    let keep_alive = match m.get("keep_alive") {
        None => json!(DEFAULT_KEEP_ALIVE),
        Some(v @ (Value::String(_) | Value::Number(_))) => v.clone(),
        Some(v) => {
            bad.insert("keep_alive".into(), json!(format!("{v}: a duration such as \"30m\", or seconds")));
            Value::Null
        }
    };
    let mut chosen: Option<Vec<Arc<Server>>> = None;
    match m.get("servers") {
        None => {}
        Some(Value::Array(list)) if !list.is_empty() => {
            let mut servers = Vec::new();
            for v in list {
                let found =
                    v.as_str().and_then(|s| ServerUrl::parse(s).ok()).and_then(|u| fleet.by_url.get(u.as_str()));
                match found {
                    Some(s) => servers.push(s.clone()),
                    None => {
                        bad.insert("servers".into(), json!(format!("{v}: not a server of the fleet")));
                    }
                }
            }
            chosen = Some(servers);
        }
        Some(v) => {
            bad.insert("servers".into(), json!(format!("{v}: must be a non-empty list of server URLs")));
        }
    }
    for k in m.keys().filter(|k| !["model", "keep_alive", "servers"].contains(&k.as_str())) {
        bad.insert(k.clone(), json!("unknown field"));
    }
    let Some(model) = model.filter(|_| bad.is_empty()) else { return Err(invalid(bad)) };
    let targets = match chosen {
        Some(servers) => servers
            .into_iter()
            .map(|s| {
                // The name the server knows the model by: its route's, else the model's own.
                let actual = fleet
                    .named_routes(&model)
                    .and_then(|mr| {
                        mr.routes.iter().find(|r| Arc::ptr_eq(&r.server, &s)).map(|r| r.actual_model.clone())
                    })
                    .unwrap_or_else(|| model.clone());
                (s, actual)
            })
            .collect(),
        None => default_targets(fleet, &model),
    };
    Ok((model, keep_alive, targets))
}

/// Where routing will want the model: the active routes of its best tier on healthy Ollama
/// servers, or every healthy Ollama server that lists it.
fn default_targets(fleet: &Fleet, model: &str) -> Targets {
    let usable = |s: &Server| s.kind == Kind::Ollama && s.healthy() && !s.drained();
    match fleet.named_routes(model) {
        Some(mr) => {
            let live: Vec<_> = mr.routes.iter().filter(|r| r.is_active && usable(&r.server)).collect();
            let best = live.iter().map(|r| r.priority).min();
            live.into_iter()
                .filter(|r| Some(r.priority) == best)
                .map(|r| (r.server.clone(), r.actual_model.clone()))
                .collect()
        }
        None => fleet
            .discover(model)
            .into_iter()
            .filter(|r| usable(&r.server))
            .map(|r| (r.server.clone(), model.to_string()))
            .collect(),
    }
}
