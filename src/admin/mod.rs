//! The admin API: routes in the store (list, add, change, remove), and why a model would go where.
//!
//! Bearer-token auth (admin.token, guard.rs); with no token configured only loopback clients
//! are answered. Every field is checked before anything is written; a bad request is a 400
//! naming each bad field and writes nothing. Config-file routes are listed read-only
//! (ids `config-N`) and any change to them is a 409. A write is applied to the routing
//! table before the answer is sent.
//!
//! Owns: the admin API (this file: routes; keys.rs; models.rs: preload and management as the
//! admin), its field checks (fields.rs), and who may call it (guard.rs).
//! May import: config, edge, fleet, placement, protocol, routing, state, storage, telemetry.

pub mod fields;
pub mod guard;
pub mod keys;
pub mod models;

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::Method;
use serde_json::{json, Map, Value};

pub(crate) use fields::Reply;
use fields::{check_fields, error, invalid, nullable, parse_body, store_failed};

use crate::config::{rules, RouteInput, RouteSpec, Settings, Strategy};
use crate::edge::keys::Keyring;
use crate::fleet::client::Client;
use crate::fleet::{Fleet, ModelRoutes, Origin, Route};
use crate::placement::required::Keeper;
use crate::protocol::ollama::{canonical, Kind, ServerUrl};
use crate::routing::resources::ResourceCheck;
use crate::routing::select::{explain, Explanation, Request};
use crate::state::reload::Reloader;
use crate::storage::store::{RouteFields, StoreError, StoreHandle, StoredRoute};

/// The admin API over the shared parts serve.rs built.
pub(crate) struct Admin {
    settings: Arc<Settings>,
    /// Routes and keys are written here; `reloader` then applies them at once.
    store: Arc<StoreHandle>,
    reloader: Arc<Reloader>,
    /// The keyring, for usage not yet written back.
    keyring: Arc<Keyring>,
    /// For calls the admin API makes to servers (preload).
    client: Arc<Client>,
    /// Required models: pulled in the background, reported here and in /health.
    keeper: Arc<Keeper>,
    resources: Arc<ResourceCheck>,
    fleet: Arc<ArcSwap<Fleet>>,
}

/// What the admin API works with, each part built once by serve.rs.
pub(crate) struct AdminParts {
    pub(crate) settings: Arc<Settings>,
    pub(crate) store: Arc<StoreHandle>,
    pub(crate) reloader: Arc<Reloader>,
    pub(crate) keyring: Arc<Keyring>,
    pub(crate) client: Arc<Client>,
    pub(crate) keeper: Arc<Keeper>,
    pub(crate) resources: Arc<ResourceCheck>,
    pub(crate) fleet: Arc<ArcSwap<Fleet>>,
}

impl Admin {
    pub(crate) fn new(parts: AdminParts) -> Admin {
        let AdminParts { settings, store, reloader, keyring, client, keeper, resources, fleet } = parts;
        Admin { settings, store, reloader, keyring, client, keeper, resources, fleet }
    }

    pub(crate) async fn handle(&self, method: &Method, path: &str, body: Option<&[u8]>) -> Reply {
        let rest = path.trim_start_matches("/admin/");
        let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
        match (method, parts.as_slice()) {
            (&Method::GET, ["servers"]) => self.list().await,
            (&Method::POST, ["servers"]) => self.create(body).await,
            (&Method::GET, ["servers", id]) => self.get(id).await,
            (&Method::PUT, ["servers", id]) => self.update(id, body).await,
            (&Method::DELETE, ["servers", id]) => self.delete(id).await,
            (&Method::GET, ["server-priority", "check", model]) => (200, self.check(&decode(model))),
            (&Method::GET, ["server-priority", "overview"]) => (200, self.overview()),
            (&Method::GET, ["resource-cache", "stats"]) => (200, self.resources.stats()),
            (&Method::POST, ["resource-cache", "clear"]) => (200, json!({ "cleared": self.resources.clear() })),
            (&Method::POST, ["drain"]) => self.drain(body),
            (&Method::POST, ["models", "preload"]) => self.preload(body).await,
            (&Method::POST, ["models", op]) => self.manage_models(op, body).await,
            (&Method::GET, ["models", "required"]) => (200, self.keeper.report()),
            (_, ["keys"]) => self.keys(method, None, body).await,
            (_, ["keys", id]) => self.keys(method, Some(id), body).await,
            _ => error(404, format!("no such admin endpoint: {method} {path}")),
        }
    }

    /// Takes a server out of selection by hand (`"drained": true`), whatever its health
    /// checks say, or puts it back. Requests in flight finish; nothing is written to the store.
    fn drain(&self, body: Option<&[u8]>) -> Reply {
        let m = match parse_body(body) {
            Ok(m) => m,
            Err(reply) => return reply,
        };
        let mut bad = Map::new();
        let url = match m.get("server_url").map(|v| v.as_str().map(ServerUrl::parse)) {
            Some(Some(Ok(u))) => Some(u),
            Some(Some(Err(e))) => {
                bad.insert("server_url".into(), json!(e.to_string()));
                None
            }
            Some(None) => {
                bad.insert("server_url".into(), json!("must be a string URL"));
                None
            }
            None => {
                bad.insert("server_url".into(), json!("is required"));
                None
            }
        };
        let drained = match m.get("drained") {
            Some(Value::Bool(b)) => Some(*b),
            _ => {
                bad.insert("drained".into(), json!("must be true or false"));
                None
            }
        };
        for k in m.keys().filter(|k| *k != "server_url" && *k != "drained") {
            bad.insert(k.clone(), json!("unknown field"));
        }
        let (Some(url), Some(drained), true) = (url, drained, bad.is_empty()) else {
            return invalid(bad);
        };
        let fleet = self.fleet.load();
        let Some(server) = fleet.by_url.get(url.as_str()) else {
            return error(404, format!("no server {} in the fleet", url.as_str()));
        };
        server.set_enabled(!drained);
        log::info!("server {} {} by the admin API", url.as_str(), if drained { "drained" } else { "put back" });
        (200, json!({ "server_url": url.as_str(), "drained": drained, "healthy": server.healthy() }))
    }

    async fn list(&self) -> Reply {
        let stored = match self.store.get().await {
            Ok(store) => store.list().await,
            Err(e) => Err(e),
        };
        let stored = match stored {
            Ok(rows) => rows,
            Err(e) => return store_failed(&e, ""),
        };
        let mut out: Vec<Value> = stored.iter().map(stored_json).collect();
        out.extend(self.settings.routes.iter().enumerate().map(|(i, r)| config_json(i, r)));
        (200, json!({ "servers": out }))
    }

    async fn get(&self, id: &str) -> Reply {
        let id = match self.stored_id(id) {
            Ok(id) => id,
            Err(reply) if reply.0 == 409 => return self.config_route(id),
            Err(reply) => return reply,
        };
        match self.store.get().await {
            Err(e) => store_failed(&e, ""),
            Ok(store) => match store.get(id).await {
                Ok(Some(row)) => (200, stored_json(&row)),
                Ok(None) => error(404, format!("no route with id {id}")),
                Err(e) => store_failed(&e, ""),
            },
        }
    }

    fn config_route(&self, id: &str) -> Reply {
        let index: Option<usize> = id.strip_prefix("config-").and_then(|n| n.parse().ok());
        match index.and_then(|i| self.settings.routes.get(i).map(|r| (i, r))) {
            Some((i, r)) => (200, config_json(i, r)),
            None => error(404, format!("no route with id {id}")),
        }
    }

    async fn create(&self, body: Option<&[u8]>) -> Reply {
        let fields = match parse_body(body).and_then(|m| parse_fields(&m, true)) {
            Ok(f) => f,
            Err(reply) => return reply,
        };
        if let Err(reply) = whole(patched(RouteInput::default(), &fields)) {
            return reply;
        }
        self.write(|store| async move { store.insert(&fields).await.map(Some) }, 201).await
    }

    async fn update(&self, id: &str, body: Option<&[u8]>) -> Reply {
        let id = match self.stored_id(id) {
            Ok(id) => id,
            Err(reply) => return reply,
        };
        let fields = match parse_body(body).and_then(|m| parse_fields(&m, false)) {
            Ok(f) => f,
            Err(reply) => return reply,
        };
        if fields == RouteFields::default() {
            return error(400, "nothing to change: send at least one field");
        }
        // The route as it would be after the change passes the same validator as any other.
        let current = match self.store.get().await {
            Ok(store) => store.get(id).await,
            Err(e) => Err(e),
        };
        match current {
            Ok(Some(row)) => {
                if let Err(reply) = whole(patched(RouteInput::from(&row), &fields)) {
                    return reply;
                }
            }
            Ok(None) => return error(404, format!("no route with id {id}")),
            Err(e) => return store_failed(&e, ", nothing was changed"),
        }
        match self.write(|store| async move { store.update(id, &fields).await }, 200).await {
            (200, Value::Null) => error(404, format!("no route with id {id}")),
            reply => reply,
        }
    }

    async fn delete(&self, id: &str) -> Reply {
        let id = match self.stored_id(id) {
            Ok(id) => id,
            Err(reply) => return reply,
        };
        let reply = self
            .write(
                |store| async move {
                    let gone = store.get(id).await?;
                    if gone.is_some() {
                        store.delete(id).await?;
                    }
                    Ok(gone)
                },
                200,
            )
            .await;
        match reply {
            (200, Value::Null) => error(404, format!("no route with id {id}")),
            (200, row) => (200, json!({ "deleted": row })),
            other => other,
        }
    }

    /// Runs one write, then applies it to the routing table before answering.
    async fn write<'a, F, Fut>(&'a self, op: F, status: u16) -> Reply
    where
        F: FnOnce(&'a crate::storage::store::Store) -> Fut,
        Fut: std::future::Future<Output = Result<Option<StoredRoute>, StoreError>>,
    {
        match self.store_write(op).await {
            Ok(row) => (status, row.as_ref().map_or(Value::Null, stored_json)),
            Err(reply) => reply,
        }
    }

    /// Runs one write against the store, then reads routes and keys again so that the change
    /// holds for the next request; a 503 saying nothing was changed when the store fails.
    pub(crate) async fn store_write<'a, T, F, Fut>(&'a self, op: F) -> Result<T, Reply>
    where
        F: FnOnce(&'a crate::storage::store::Store) -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let store = match self.store.get().await {
            Ok(s) => s,
            Err(e) => return Err(store_failed(&e, ", nothing was changed")),
        };
        let written = match op(store).await {
            Ok(written) => written,
            Err(e) => return Err(store_failed(&e, ", nothing was changed")),
        };
        if let Err(e) = self.reloader.reload().await {
            log::warn!("change stored but not yet applied (next poll retries): {e}");
        }
        Ok(written)
    }

    /// A numeric store id, or the error for a config route or a malformed id.
    fn stored_id(&self, id: &str) -> Result<i64, Reply> {
        if id.starts_with("config-") {
            return Err(error(
                409,
                format!("route {id} comes from the config file and is read-only; edit the file instead"),
            ));
        }
        id.parse().map_err(|_| error(404, format!("no route with id {id}")))
    }

    /// Which routes a request for `model` would use now and why every other is skipped:
    /// `select::explain`, the request path's own selection as a dry run (resource check included).
    pub(crate) fn check(&self, model: &str) -> Value {
        let fleet = self.fleet.load_full();
        let strategy = self.strategy_of(model);
        let req = Request { panic_mode: self.settings.load_balancer.panic_mode, ..Request::plain(model, false) };
        let explained = explain(&fleet, strategy, &req, &self.resources);
        let serving: Vec<&Arc<Route>> =
            explained.verdicts.iter().filter(|(_, why)| why.is_none()).map(|(r, _)| r).collect();
        let total: u64 = serving.iter().map(|r| r.weight as u64).sum();
        let mut order: Vec<&Arc<Route>> = serving.clone();
        order.sort_by_key(|r| std::cmp::Reverse(r.weight));
        let order: Vec<Value> = order
            .iter()
            .map(|r| {
                json!({
                    "id": route_id(r), "server_url": r.server.url.as_str(), "actual_model_name": r.actual_model,
                    "priority": r.priority, "weight": r.weight,
                    "share_percent": percent(r.weight as u64, total),
                    "in_flight": r.server.in_flight(), "max_concurrency": r.server.max_concurrency,
                    "serves": if r.server.kind == Kind::OpenAi { "/v1 only" } else { "/api and /v1" },
                })
            })
            .collect();
        let skipped: Vec<Value> = explained
            .verdicts
            .iter()
            .filter_map(|(r, why)| {
                let reason = why.as_ref()?;
                Some(json!({
                    "id": route_id(r), "server_url": r.server.url.as_str(), "actual_model_name": r.actual_model,
                    "priority": r.priority, "reason": reason,
                }))
            })
            .collect();
        json!({ "model": model, "source": explained.source, "strategy": strategy_name(strategy),
                "serving_priority": explained.serving, "order": order, "skipped": skipped })
    }

    /// Per virtual model: tiers, weights, and the share of traffic each route gets now.
    pub(crate) fn overview(&self) -> Value {
        let fleet = self.fleet.load_full();
        let models: Vec<Value> = fleet
            .routes
            .iter()
            .map(|(name, mr)| {
                let req = Request { panic_mode: self.settings.load_balancer.panic_mode, ..Request::plain(name, false) };
                model_overview(name, mr, &explain(&fleet, self.strategy_of(name), &req, &self.resources))
            })
            .collect();
        json!({ "models": models })
    }

    fn strategy_of(&self, model: &str) -> Strategy {
        let lb = &self.settings.load_balancer;
        lb.model_strategies.get(canonical(model).as_ref()).copied().unwrap_or(lb.strategy)
    }
}

fn model_overview(name: &str, mr: &ModelRoutes, explained: &Explanation) -> Value {
    let live = |r: &Arc<Route>| explained.verdicts.iter().any(|(v, why)| Arc::ptr_eq(v, r) && why.is_none());
    let live_total: u64 = mr.routes.iter().filter(|r| live(r)).map(|r| r.weight as u64).sum();
    let mut tiers: Vec<u32> = mr.routes.iter().map(|r| r.priority).collect();
    tiers.sort_unstable();
    tiers.dedup();
    let tiers: Vec<Value> = tiers
        .into_iter()
        .map(|p| {
            let in_tier: Vec<&Arc<Route>> = mr.routes.iter().filter(|r| r.priority == p && r.is_active).collect();
            let configured: u64 = in_tier.iter().map(|r| r.weight as u64).sum();
            let routes: Vec<Value> = mr
                .routes
                .iter()
                .filter(|r| r.priority == p)
                .map(|r| {
                    json!({
                        "id": route_id(r), "server_url": r.server.url.as_str(), "actual_model_name": r.actual_model,
                        "weight": r.weight, "is_active": r.is_active, "healthy": r.server.healthy(),
                        "weight_share_percent": if r.is_active { percent(r.weight as u64, configured) } else { 0.0 },
                        "traffic_share_percent": if live(r) { percent(r.weight as u64, live_total) } else { 0.0 },
                    })
                })
                .collect();
            json!({ "priority": p, "routes": routes })
        })
        .collect();
    json!({ "virtual_model_name": name, "serving_priority": explained.serving, "tiers": tiers })
}

fn percent(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        (part as f64 * 1000.0 / total as f64).round() / 10.0
    }
}

fn route_id(r: &Route) -> Value {
    match (r.origin, r.id) {
        (Origin::Store, Some(id)) => json!(id),
        (Origin::Config, Some(i)) => json!(format!("config-{i}")),
        _ => Value::Null,
    }
}

fn strategy_name(s: Strategy) -> &'static str {
    match s {
        Strategy::Weighted => "weighted",
        Strategy::WarmFirst => "warm_first",
        Strategy::LeastBusy => "least_busy",
    }
}

fn config_json(i: usize, r: &RouteSpec) -> Value {
    json!({
        "id": format!("config-{i}"),
        "virtual_model_name": r.virtual_model_name,
        "server_url": r.server_url.as_str(),
        "actual_model_name": r.actual_model_name,
        "weight": r.weight,
        "priority": r.priority,
        "type": r.device.as_str(),
        "performance": r.performance,
        "description": r.description,
        "is_active": r.is_active,
        "skip_resource_check": r.skip_resource_check,
        "probe_url": r.probe_url.as_ref().map(ServerUrl::as_str),
        "max_concurrency": r.max_concurrency,
        "count": null,
        "source": "config",
        "read_only": true,
    })
}

fn stored_json(row: &StoredRoute) -> Value {
    let mut v = serde_json::to_value(row).expect("rows serialise");
    v["source"] = json!("store");
    v["read_only"] = json!(false);
    v
}

fn decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment).decode_utf8_lossy().into_owned()
}

/// Fields drover writes itself; sent back unchanged by clients that PUT what they GOT.
const IGNORED_FIELDS: [&str; 6] = ["id", "created_at", "updated_at", "count", "source", "read_only"];

/// Checks every field of an admin request; on any error, a 400 naming each bad field.
/// `base` with the fields of a request applied.
fn patched(base: RouteInput, f: &RouteFields) -> RouteInput {
    RouteInput {
        virtual_model_name: f.virtual_model_name.clone().or(base.virtual_model_name),
        server_url: f.server_url.clone().or(base.server_url),
        actual_model_name: f.actual_model_name.clone().or(base.actual_model_name),
        weight: f.weight.or(base.weight),
        priority: f.priority.or(base.priority),
        device: f.device.clone().or(base.device),
        performance: f.performance.or(base.performance),
        description: f.description.clone().unwrap_or(base.description),
        is_active: f.is_active.or(base.is_active),
        skip_resource_check: f.skip_resource_check.or(base.skip_resource_check),
        probe_url: f.probe_url.clone().unwrap_or(base.probe_url),
        max_concurrency: f.max_concurrency.unwrap_or(base.max_concurrency),
    }
}

/// The route validator's verdict on a whole route, as a 400 naming each bad field.
fn whole(route: RouteInput) -> Result<(), Reply> {
    route
        .validate()
        .map(drop)
        .map_err(|bad| invalid(bad.into_iter().map(|(k, why)| (k.to_string(), json!(why))).collect()))
}

pub(crate) fn parse_fields(m: &Map<String, Value>, creating: bool) -> Result<RouteFields, Reply> {
    let mut f = RouteFields::default();
    let required: &[&str] = if creating { &["virtual_model_name", "server_url"] } else { &[] };
    let name = |v: &Value| match v.as_str() {
        Some(s) => rules::name(s).map(|()| s.to_string()),
        None => Err(format!("{v}: must be a string")),
    };
    let url = |v: &Value| match v.as_str() {
        Some(s) => ServerUrl::parse(s).map(|u| u.as_str().to_string()).map_err(|e| e.to_string()),
        None => Err(format!("{v}: must be a string URL")),
    };
    let at_least_one = |v: &Value, what: &str| match v.as_i64() {
        Some(n) => rules::at_least_one(n).map(|()| n),
        None => Err(format!("{v}: must be an integer >= 1{what}")),
    };
    check_fields(m, &IGNORED_FIELDS, required, |k, v| {
        match k {
            "virtual_model_name" => f.virtual_model_name = Some(name(v)?),
            "actual_model_name" => f.actual_model_name = Some(name(v)?),
            "server_url" => f.server_url = Some(url(v)?),
            "probe_url" => {
                let u = match v {
                    Value::Null | Value::String(_) => nullable(v, url)?,
                    _ => return Err(format!("{v}: must be a URL or null")),
                };
                f.probe_url = Some(u)
            }
            "weight" => f.weight = Some(at_least_one(v, "")?),
            "priority" => f.priority = Some(at_least_one(v, "")?),
            "max_concurrency" => f.max_concurrency = Some(nullable(v, |v| at_least_one(v, " or null"))?),
            "type" => match v.as_str().map(rules::device) {
                Some(d) => f.device = Some(d?.as_str().to_string()),
                None => return Err(format!("{v}: expected \"CPU\" or \"GPU\"")),
            },
            "performance" => match v.as_f64() {
                Some(n) => f.performance = Some(rules::performance(n).map(|()| n)?),
                None => return Err(format!("{v}: must be a number of GB >= 0")),
            },
            "description" => match v {
                Value::Null => f.description = Some(None),
                Value::String(s) => f.description = Some(Some(s.clone())),
                _ => return Err(format!("{v}: must be a string or null")),
            },
            "is_active" | "skip_resource_check" => {
                let b = match v {
                    Value::Bool(b) => *b,
                    Value::Number(n) if n.as_i64() == Some(0) || n.as_i64() == Some(1) => n.as_i64() == Some(1),
                    _ => return Err(format!("{v}: must be true or false")),
                };
                if k == "is_active" {
                    f.is_active = Some(b)
                } else {
                    f.skip_resource_check = Some(b)
                }
            }
            _ => return Err("unknown field".into()),
        }
        Ok(())
    })?;
    if creating && f.actual_model_name.is_none() {
        f.actual_model_name = f.virtual_model_name.clone();
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: Value, creating: bool) -> Result<RouteFields, Reply> {
        parse_fields(v.as_object().unwrap(), creating)
    }

    #[test]
    fn good_fields_are_normalised() {
        let f = fields(
            json!({ "virtual_model_name": "chat", "server_url": "http://A:11434/", "type": "cpu", "weight": 3,
                    "is_active": 1, "id": 99, "count": 7 }),
            true,
        )
        .unwrap();
        assert_eq!(f.server_url.as_deref(), Some("http://a:11434"));
        assert_eq!(f.actual_model_name.as_deref(), Some("chat"));
        assert_eq!(f.device.as_deref(), Some("CPU"));
        assert_eq!(f.is_active, Some(true));
    }

    #[test]
    fn each_bad_field_is_named() {
        let (status, body) = fields(
            json!({ "server_url": "ftp://x", "weight": 0, "priority": "high", "type": "TPU", "performance": -1,
                    "virtual_model_name": "", "colour": "red" }),
            true,
        )
        .unwrap_err();
        assert_eq!(status, 400);
        let bad = body["fields"].as_object().unwrap();
        for f in ["server_url", "weight", "priority", "type", "performance", "virtual_model_name", "colour"] {
            assert!(bad.contains_key(f), "{f} not named in {body}");
        }
        let long = "x".repeat(101);
        let (_, body) = fields(json!({ "virtual_model_name": long, "server_url": "http://a" }), true).unwrap_err();
        assert!(body["fields"]["virtual_model_name"].as_str().unwrap().contains("1 to 100"));
        let (_, body) = fields(json!({ "weight": 2 }), true).unwrap_err();
        assert_eq!(body["fields"]["server_url"], "is required");
    }

    #[test]
    fn a_change_is_checked_as_the_whole_route_it_makes() {
        let stored = RouteInput {
            virtual_model_name: Some("m".into()),
            server_url: Some("http://a:1".into()),
            ..RouteInput::default()
        };
        let rename = fields(json!({ "actual_model_name": "m:7b", "weight": 5 }), false).unwrap();
        let spec = patched(stored.clone(), &rename).validate().unwrap();
        assert_eq!((spec.actual_model_name.as_str(), spec.weight, spec.server_url.as_str()), ("m:7b", 5, "http://a:1"));
        // A row edited by hand in SQL with a bad value: a change that keeps it is refused.
        let broken = RouteInput { weight: Some(0), ..stored };
        let (status, body) = whole(patched(broken, &fields(json!({ "priority": 2 }), false).unwrap())).unwrap_err();
        assert_eq!(status, 400);
        assert!(body["fields"]["weight"].as_str().unwrap().contains("at least 1"), "{body}");
    }
}
