//! Model management through drover: Ollama's /api/pull, /api/push, /api/create, /api/copy
//! and /api/delete (and the admin API's /admin/models/{op}) sent to the servers that should
//! hold the model, all at once, their progress merged into one NDJSON stream.
//!
//! Which servers: by default those whose routes name the model (with the name each knows it
//! by), or, for a model no route names, every healthy Ollama server (pull, create) or every
//! server that lists it (copy, delete, push). A request narrows or widens that with
//! drover's own `servers` field (a list of server URLs) or the query `?servers=URL,URL`,
//! or `?fleet=all` (every healthy Ollama server). Push goes to one server only: the
//! registry needs the model once. Only Ollama servers manage models; openai-kind servers
//! are never targets.
//!
//! The merged stream looks like one Ollama pull (`Merge`): one progress line per layer with
//! `total`/`completed` summed over the servers, each other status once, a `server` field
//! saying whose progress moved the line (never in the status text); the last
//! line is `{"status": "success"}` only when every server succeeded, otherwise an
//! `{"error": ...}` line naming each server that failed and why (Ollama's clients raise on
//! it). With `"stream": false` the answer is one object: 200 with `status` and per-server
//! results, or 502 with `error` and the same results.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::fleet::client::{CallError, Client};
use crate::fleet::{Fleet, Server};
use crate::protocol::api::ApiError;
use crate::protocol::ollama::{canonical_model, Kind, ServerUrl};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Pull,
    Push,
    Create,
    Copy,
    Delete,
}

impl Op {
    /// The operation of an Ollama path (`/api/pull`) or an admin one (`pull`).
    pub(crate) fn named(name: &str) -> Option<Op> {
        Some(match name.trim_start_matches("/api/") {
            "pull" => Op::Pull,
            "push" => Op::Push,
            "create" => Op::Create,
            "copy" => Op::Copy,
            "delete" => Op::Delete,
            _ => return None,
        })
    }

    pub(crate) fn path(self) -> &'static str {
        match self {
            Op::Pull => "/api/pull",
            Op::Push => "/api/push",
            Op::Create => "/api/create",
            Op::Copy => "/api/copy",
            Op::Delete => "/api/delete",
        }
    }

    fn verb(self) -> &'static str {
        &self.path()[5..]
    }

    /// Pull, push and create answer with NDJSON progress unless asked not to.
    fn streams_progress(self) -> bool {
        matches!(self, Op::Pull | Op::Push | Op::Create)
    }

    /// Delete removes what cannot be brought back without a pull: it needs the admin token.
    pub(crate) fn destructive(self) -> bool {
        self == Op::Delete
    }

    /// The HTTP method Ollama expects.
    pub(crate) fn method(self) -> &'static str {
        if self == Op::Delete {
            "DELETE"
        } else {
            "POST"
        }
    }
}

/// One server's part: where, and the body it gets (the model under the name it knows).
pub(crate) struct Target {
    pub(crate) server: Arc<Server>,
    pub(crate) body: Value,
}

/// A management request, checked and resolved to its servers.
pub(crate) struct Plan {
    pub(crate) op: Op,
    /// The model as the client named it (for copy: the source).
    pub(crate) model: String,
    /// Every model the request names, each to be allowed to the caller's key: the model (for
    /// copy the source and the destination; for create the one it is made from too).
    pub(crate) names: Vec<String>,
    pub(crate) targets: Vec<Target>,
    pub(crate) stream: bool,
}

/// Which servers, beyond the default.
enum Scope {
    Default,
    All,
    Servers(Vec<Arc<Server>>),
}

/// A management body as drover reads it: the object, the model it is about (for copy: the
/// source), every model it names, and whether its progress streams.
pub struct Request {
    pub(crate) body: Map<String, Value>,
    pub model: String,
    pub names: Vec<String>,
    pub(crate) stream: bool,
}

/// Reads a management body (as Ollama's handlers would: `model`, else the legacy `name`);
/// a 400 names the bad field.
pub fn read(op: Op, body: &[u8]) -> Result<Request, ApiError> {
    let bad = |m: String| ApiError::new(400, "invalid_request", m);
    // Read whole below (last key wins): first, no field it decides on is written twice or
    // in a spelling Ollama reads as the same (body.rs).
    crate::protocol::body::unambiguous(body, &DECISIVE).map_err(ApiError::from)?;
    let m: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(bad("the body must be a JSON object".into())),
        Err(e) => return Err(bad(format!("the body is not valid JSON: {e}"))),
    };
    let key = if op == Op::Copy { "source" } else { "model" };
    let model = match m.get(key).or_else(|| if op == Op::Copy { None } else { m.get("name") }) {
        Some(Value::String(s)) if crate::config::rules::name(s).is_ok() => s.clone(),
        Some(v) => return Err(bad(format!("{key}: {v} is not a model name"))),
        None => return Err(ApiError::new(400, "missing_model", format!("{key} is required"))),
    };
    let mut names = vec![model.clone()];
    if op == Op::Copy {
        match m.get("destination") {
            Some(Value::String(s)) if crate::config::rules::name(s).is_ok() => names.push(s.clone()),
            Some(v) => return Err(bad(format!("destination: {v} is not a model name"))),
            None => return Err(bad("destination is required".into())),
        }
    }
    if op == Op::Create {
        // The model it is made from (a name, or a path the server reads: named all the same).
        match m.get("from") {
            Some(Value::String(s)) if !s.trim().is_empty() => names.push(s.clone()),
            None | Some(Value::Null) => {}
            Some(v) => return Err(bad(format!("from: {v} is not a model name"))),
        }
        // A model pointing at another host: that host is named too (only a key that may use
        // every model may name one).
        if let Some(host) = m.get("remote_host").and_then(Value::as_str).filter(|h| !h.is_empty()) {
            names.push(host.to_string());
        }
        // The old form (Ollama up to 0.5.4 read it; later ones ignore it): a Modelfile's
        // FROM lines name its base. A Modelfile path on the server's own disk is refused.
        if let Some(text) = m.get("modelfile").and_then(Value::as_str) {
            names.extend(modelfile_bases(text));
        }
        if m.get("path").is_some_and(|v| !v.is_null()) {
            return Err(bad("path: a Modelfile on the server's disk cannot be named through drover; send \"from\" and \"files\" as `ollama create` does".into()));
        }
    }
    let stream = match m.get("stream") {
        None => op.streams_progress(),
        Some(Value::Bool(b)) => *b && op.streams_progress(),
        Some(v) => return Err(bad(format!("stream: {v} must be true or false"))),
    };
    Ok(Request { body: m, model, names, stream })
}

/// Checks a management request (the body as Ollama takes it, plus drover's `servers`) and
/// finds its servers. A 400 names the bad field; a 404 says why no server qualifies.
pub(crate) fn plan(op: Op, body: &[u8], query: Option<&str>, fleet: &Fleet) -> Result<Plan, ApiError> {
    let bad = |m: String| ApiError::new(400, "invalid_request", m);
    let Request { body: mut m, model, names, stream } = read(op, body)?;
    let key = if op == Op::Copy { "source" } else { "model" };
    let scope = scope(m.remove("servers"), query, fleet).map_err(|e| bad(e.to_string()))?;
    let wanted = canonical_model(&model);
    let holds = |s: &Server, name: &str| s.inventory().names.contains(&canonical_model(name));
    let usable = |s: &Server| s.kind == Kind::Ollama && s.healthy();
    // (server, the model's name there) by the default rule.
    let named: Vec<(Arc<Server>, String)> = fleet
        .named_routes(&model)
        .map(|mr| {
            let mut seen = Vec::new();
            for r in &mr.routes {
                if r.server.kind == Kind::Ollama
                    && !seen.iter().any(|(s, _): &(Arc<Server>, String)| Arc::ptr_eq(s, &r.server))
                {
                    seen.push((r.server.clone(), r.actual_model.clone()));
                }
            }
            seen
        })
        .unwrap_or_default();
    let name_on = |s: &Arc<Server>| {
        named.iter().find(|(n, _)| Arc::ptr_eq(n, s)).map_or_else(|| model.clone(), |(_, a)| a.clone())
    };
    let mut chosen: Vec<(Arc<Server>, String)> = match scope {
        Scope::Servers(list) => list.into_iter().map(|s| (s.clone(), name_on(&s))).collect(),
        Scope::All => fleet.servers.iter().filter(|s| usable(s)).map(|s| (s.clone(), name_on(s))).collect(),
        Scope::Default if !named.is_empty() => named.clone(),
        Scope::Default => fleet
            .servers
            .iter()
            .filter(|s| usable(s) && (matches!(op, Op::Pull | Op::Create) || s.inventory().names.contains(&wanted)))
            .map(|s| (s.clone(), model.clone()))
            .collect(),
    };
    chosen.retain(|(s, _)| s.kind == Kind::Ollama);
    if op == Op::Push {
        // Once is enough: the first healthy server that holds it.
        chosen.retain(|(s, name)| s.healthy() && holds(s, name));
        chosen.truncate(1);
    }
    if chosen.is_empty() {
        let why = match op {
            Op::Pull | Op::Create => "no Ollama server to send it to",
            _ => "no Ollama server holds it",
        };
        return Err(ApiError::new(404, "model_not_found", format!("model {model:?}: {why}")));
    }
    let targets = chosen
        .into_iter()
        .map(|(server, actual)| {
            let mut body = m.clone();
            body.insert(key.into(), json!(actual));
            if key == "model" && body.contains_key("name") {
                body.insert("name".into(), json!(actual));
            }
            // The other model a request names (copy's destination, create's base) is the one
            // its route serves on this server too, as the key was allowed it: never a model
            // that only happens to have that name there.
            for other in ["destination", "from"] {
                if let Some(name) = body.get(other).and_then(Value::as_str) {
                    let on_server = fleet.named_routes(name).and_then(|mr| {
                        mr.routes.iter().find(|r| Arc::ptr_eq(&r.server, &server)).map(|r| r.actual_model.clone())
                    });
                    if let Some(actual) = on_server {
                        body.insert(other.into(), json!(actual));
                    }
                }
            }
            if op.streams_progress() {
                body.insert("stream".into(), json!(stream));
            }
            Target { server, body: Value::Object(body) }
        })
        .collect();
    Ok(Plan { op, model, names, targets, stream })
}

/// The fields a management body is routed and checked by (drover's `servers` among them).
const DECISIVE: [&str; 10] =
    ["model", "name", "source", "destination", "from", "stream", "servers", "modelfile", "path", "remote_host"];

/// The models a Modelfile's FROM lines name (the instruction is case-insensitive).
fn modelfile_bases(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let (word, rest) = line.split_once(char::is_whitespace)?;
            word.eq_ignore_ascii_case("from").then(|| rest.trim().trim_matches('"').to_string())
        })
        .filter(|name| !name.is_empty())
        .collect()
}

/// Why the servers a request names cannot be used.
#[derive(Debug, thiserror::Error)]
enum ScopeError {
    #[error("servers: {0} must be a non-empty list of server URLs")]
    NotAList(Value),
    #[error("fleet={0}: only fleet=all, without servers, is understood")]
    Fleet(String),
    #[error("unknown query parameter {0:?} (servers, fleet=all)")]
    UnknownParameter(String),
    #[error("servers: {0:?} is an openai-kind server, which cannot manage models")]
    OpenAi(String),
    #[error("servers: {0:?} is not a server of the fleet")]
    NotInFleet(String),
}

/// The servers a request names (`servers` field or query), or `fleet=all`.
fn scope(field: Option<Value>, query: Option<&str>, fleet: &Fleet) -> Result<Scope, ScopeError> {
    let mut urls: Option<Vec<String>> = None;
    if let Some(v) = field {
        match v {
            Value::Array(list) if !list.is_empty() && list.iter().all(Value::is_string) => {
                urls = Some(list.iter().filter_map(Value::as_str).map(str::to_string).collect());
            }
            v => return Err(ScopeError::NotAList(v)),
        }
    }
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match (k.as_ref(), v.as_ref()) {
            ("fleet", "all") if urls.is_none() => return Ok(Scope::All),
            ("fleet", other) => return Err(ScopeError::Fleet(other.to_string())),
            ("servers", list) => urls = Some(list.split(',').map(|s| s.trim().to_string()).collect()),
            (other, _) => return Err(ScopeError::UnknownParameter(other.to_string())),
        }
    }
    let Some(urls) = urls else { return Ok(Scope::Default) };
    let mut servers = Vec::new();
    for u in urls {
        let found = ServerUrl::parse(&u).ok().and_then(|p| fleet.by_url.get(p.as_str()).cloned());
        match found {
            Some(s) if s.kind == Kind::Ollama => servers.push(s),
            Some(_) => return Err(ScopeError::OpenAi(u)),
            None => return Err(ScopeError::NotInFleet(u)),
        }
    }
    Ok(Scope::Servers(servers))
}

/// What a running plan reports, in order per server.
pub(crate) enum Progress {
    /// A progress line from a server, `server` already added.
    Line(Value),
    /// A server finished: `Ok` or why not.
    Done { server: String, result: Result<(), CallError> },
}

/// Starts every target at once; progress arrives on the receiver, each server's `Done`
/// last for that server. Servers where the change succeeded have their inventory updated
/// at once (so routing sees a pulled model before the next health pass).
pub(crate) fn run(plan: &Plan, client: &Arc<Client>, idle: Duration) -> tokio::sync::mpsc::UnboundedReceiver<Progress> {
    let (out, rx) = tokio::sync::mpsc::unbounded_channel();
    for t in &plan.targets {
        let (client, server, body, out, op) = (client.clone(), t.server.clone(), t.body.clone(), out.clone(), plan.op);
        tokio::spawn(async move {
            let url = server.url.as_str().to_string();
            let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
            let call = client.stream_json(op.method(), &server, op.path(), &body, idle, &lines_tx);
            tokio::pin!(call);
            let result = loop {
                tokio::select! {
                    biased;
                    Some(line) = lines_rx.recv() => forward(&out, &url, line),
                    r = &mut call => break r,
                }
            };
            while let Ok(line) = lines_rx.try_recv() {
                forward(&out, &url, line);
            }
            if result.is_ok() {
                apply(op, &server, &body);
            }
            let _ = out.send(Progress::Done { server: url, result });
        });
    }
    rx
}

fn forward(out: &tokio::sync::mpsc::UnboundedSender<Progress>, url: &str, mut line: Value) {
    if let Some(o) = line.as_object_mut() {
        o.insert("server".into(), json!(url));
    }
    let _ = out.send(Progress::Line(line));
}

/// The servers' progress lines merged into what one Ollama pull shows: one line per layer
/// (`digest`) with `total` and `completed` summed over the servers fetching it, each other
/// status once, no server's own `success` (the stream's last line says success once all
/// succeeded). `server` names the server whose progress moved the line; status texts carry
/// no server.
#[derive(Default)]
pub(crate) struct Merge {
    /// Per digest, per server: (total, completed).
    layers: HashMap<String, HashMap<String, (u64, u64)>>,
    said: HashSet<String>,
}

impl Merge {
    /// The line to send for a server's line, if any.
    pub(crate) fn line(&mut self, line: Value) -> Option<Value> {
        let status = line.get("status").and_then(Value::as_str).unwrap_or("").to_string();
        let server = line.get("server").and_then(Value::as_str).unwrap_or("").to_string();
        if line.get("error").is_some() {
            return Some(line);
        }
        if status == "success" {
            return None;
        }
        let Some(digest) = line.get("digest").and_then(Value::as_str) else {
            return self.said.insert(status).then_some(line);
        };
        let n = |k: &str| line.get(k).and_then(Value::as_u64).unwrap_or(0);
        let servers = self.layers.entry(digest.to_string()).or_default();
        servers.insert(server.clone(), (n("total"), n("completed")));
        let (total, completed) = servers.values().fold((0, 0), |(t, c), (t2, c2)| (t + t2, c + c2));
        Some(json!({ "status": status, "digest": digest, "total": total, "completed": completed, "server": server }))
    }
}

/// What a successful call changed on the server, in drover's copy of its inventory (names
/// and /api/tags entries; the next health pass brings the full entries).
fn apply(op: Op, server: &Server, body: &Value) {
    let name = |k: &str| body.get(k).and_then(Value::as_str).map(canonical_model);
    let entry_name = |e: &Value| e.get("name").or_else(|| e.get("model")).and_then(Value::as_str).map(canonical_model);
    let mut inv = (*server.inventory()).clone();
    let added = match op {
        Op::Pull | Op::Create => name("model"),
        Op::Copy => name("destination"),
        Op::Delete => {
            if let Some(n) = name("model") {
                inv.names.remove(&n);
                inv.loaded_names.remove(&n);
                inv.tags.retain(|e| entry_name(e).as_ref() != Some(&n));
            }
            None
        }
        Op::Push => return,
    };
    if let Some(n) = added.filter(|n| !inv.names.contains(n)) {
        inv.tags.push(json!({ "name": n, "model": n }));
        inv.names.insert(n);
    }
    server.set_inventory(inv);
}

/// Per-server outcomes, gathered as `Done`s arrive.
#[derive(Default)]
pub(crate) struct Outcome {
    results: Vec<Value>,
    failed: Vec<String>,
    absent: usize,
}

impl Outcome {
    /// Records a server's end. A delete that finds no such model there is `absent`, not a failure.
    pub(crate) fn record(&mut self, op: Op, server: String, result: Result<(), CallError>) {
        let row = match result {
            Ok(()) => json!({ "server": server, "status": "success" }),
            Err(e) if op == Op::Delete && e.status() == Some(404) => {
                self.absent += 1;
                json!({ "server": server, "status": "absent" })
            }
            Err(e) => {
                self.failed.push(format!("{server}: {e}"));
                json!({ "server": server, "status": "failed", "error": e.to_string() })
            }
        };
        self.results.push(row);
    }

    /// The final line of a stream, or the whole answer: status and body.
    pub(crate) fn summary(&self, plan: &Plan) -> (u16, Value) {
        let n = self.results.len();
        if !self.failed.is_empty() {
            let msg = format!(
                "{} failed on {} of {n} servers: {}",
                plan.op.verb(),
                self.failed.len(),
                self.failed.join("; ")
            );
            (502, json!({ "error": msg, "servers": self.results }))
        } else if self.absent == n {
            (
                404,
                json!({ "error": format!("model '{}' not found on any server", plan.model), "servers": self.results }),
            )
        } else {
            (200, json!({ "status": "success", "servers": self.results }))
        }
    }
}

/// Runs a plan to its end, for callers that want the summary only (the admin API,
/// `"stream": false`, required models): status and body.
pub(crate) async fn run_to_end(plan: &Plan, client: &Arc<Client>, idle: Duration) -> (u16, Value) {
    let mut rx = run(plan, client, idle);
    let mut outcome = Outcome::default();
    while let Some(p) = rx.recv().await {
        if let Progress::Done { server, result } = p {
            outcome.record(plan.op, server, result);
        }
    }
    outcome.summary(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_operations() {
        assert_eq!(Op::named("/api/pull"), Some(Op::Pull));
        assert_eq!(Op::named("delete"), Some(Op::Delete));
        assert_eq!(Op::named("/api/chat"), None);
        assert!(Op::Delete.destructive() && !Op::Pull.destructive());
        assert_eq!(Op::Delete.method(), "DELETE");
    }

    #[test]
    fn summary_names_failures_and_absences() {
        let plan =
            Plan { op: Op::Delete, model: "m".into(), names: vec!["m".into()], targets: Vec::new(), stream: false };
        let mut o = Outcome::default();
        let said = Some("model 'm' not found".to_string());
        let absent = CallError::Status { method: "DELETE", path: "/api/delete".into(), status: 404, said };
        assert_eq!(absent.to_string(), "DELETE /api/delete: HTTP 404: model 'm' not found");
        o.record(Op::Delete, "http://a".into(), Err(absent));
        assert_eq!(o.summary(&plan).0, 404);
        o.record(Op::Delete, "http://b".into(), Ok(()));
        assert_eq!(o.summary(&plan).0, 200);
        o.record(Op::Delete, "http://c".into(), Err(CallError::NoAddress("c".into())));
        let (code, body) = o.summary(&plan);
        assert_eq!(code, 502);
        assert_eq!(body["error"], "delete failed on 1 of 3 servers: http://c: cannot resolve c");
        assert_eq!(body["servers"][0]["status"], "absent");
    }
}
