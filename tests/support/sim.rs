//! A simulated Ollama server for scheduling tests and the scheduling benchmark.
//!
//! It models what matters to a balancer: a memory capacity; models of given sizes that take
//! time to load (proportional to size); idle models unloaded after keep_alive, or earlier,
//! least recently used first, when a new load needs the memory; a load that cannot fit
//! (memory held by busy models) fails with a 500 as Ollama's does; OLLAMA_NUM_PARALLEL
//! requests at once per model, the rest queue; a per-token delay. /api/ps tells the truth
//! and GET /resources answers in `drover probe`'s format with the simulated free memory.
//!
//! Prompt processing: each message of a chat is `TOKENS_PER_MESSAGE` prompt tokens, each
//! costing `prompt_token_time` unless the model's KV cache here still holds the
//! conversation (keyed by its messages up to the first user message; one cached conversation per parallel slot,
//! least recently used dropped), in which case only the new messages are processed.
//! Context size: a model runs at the request's `options.num_ctx` (else `default_ctx`); a
//! request for another size waits for the model to go idle and reloads it, as Ollama does
//! (`ctx_reloads`). With `"stream": true` the answer is NDJSON, the first line sent when
//! the first token is ready, so a client can time its first token. A generate with no prompt
//! loads the model and answers `done_reason: "load"`; with `keep_alive: 0` as well it unloads
//! it once idle (`"unload"`), as Ollama does.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

pub const GB: u64 = 1_000_000_000;

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub name: String,
    pub capacity_bytes: u64,
    /// Model name and size in bytes.
    pub models: Vec<(String, u64)>,
    pub load_time_per_gb: Duration,
    pub token_delay: Duration,
    pub num_parallel: usize,
    pub keep_alive: Duration,
    /// Prompt processing per token not in the KV cache (zero: prompts are free).
    pub prompt_token_time: Duration,
    /// The context size of a request without options.num_ctx.
    pub default_ctx: u32,
    /// Answers GET /metrics as vLLM does (requests running and waiting), so a balancer can
    /// see load it did not send; otherwise /metrics is a 404, as Ollama's.
    pub report_load: bool,
}

/// Prompt tokens per chat message.
pub const TOKENS_PER_MESSAGE: usize = 100;

impl SimConfig {
    /// A server with free prompts and the usual defaults beside what a test sets.
    pub fn new(name: &str, capacity_bytes: u64, models: Vec<(String, u64)>) -> SimConfig {
        SimConfig {
            name: name.into(),
            capacity_bytes,
            models,
            load_time_per_gb: Duration::from_millis(100),
            token_delay: Duration::from_millis(5),
            num_parallel: 4,
            keep_alive: Duration::from_secs(300),
            prompt_token_time: Duration::ZERO,
            default_ctx: 4096,
            report_load: false,
        }
    }
}

struct Loaded {
    size: u64,
    active: usize,
    last_used: Instant,
    /// False while loading; flips to true when the load is done.
    ready: watch::Receiver<bool>,
    slots: Arc<Semaphore>,
    ctx: u32,
    /// Conversations whose prompt the KV cache holds: (opening, tokens), most recent last.
    kv: Vec<(u64, usize)>,
}

#[derive(Default)]
pub struct SimStats {
    pub requests: AtomicUsize,
    pub cold_loads: AtomicUsize,
    pub failed_loads: AtomicUsize,
    pub evictions: AtomicUsize,
    /// GET /resources calls.
    pub probes: AtomicUsize,
    /// Largest memory ever held by loaded (or loading) models.
    pub peak_bytes: AtomicUsize,
    /// Loads of a model already loaded at another context size.
    pub ctx_reloads: AtomicUsize,
    /// Requests whose conversation was in the KV cache.
    pub kv_hits: AtomicUsize,
    /// Prompt tokens processed (not served from the KV cache).
    pub prompt_tokens: AtomicUsize,
    /// Loads asked for with no prompt (a preload), and unloads (keep_alive 0) done.
    pub preloads: AtomicUsize,
    pub unloads: AtomicUsize,
}

struct Sim {
    cfg: SimConfig,
    loaded: Mutex<HashMap<String, Loaded>>,
    stats: SimStats,
}

pub struct SimServer {
    pub url: String,
    pub addr: SocketAddr,
    sim: Arc<Sim>,
    task: tokio::task::JoinHandle<()>,
}

impl SimServer {
    pub async fn start(cfg: SimConfig) -> SimServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sim = Arc::new(Sim { cfg, loaded: Mutex::new(HashMap::new()), stats: SimStats::default() });
        let app = Router::new()
            .route("/api/version", get(|| async { axum::Json(json!({ "version": "0.6.5" })) }))
            .route("/api/tags", get(tags))
            .route("/api/ps", get(ps))
            .route("/resources", get(resources))
            .route("/v1/models", get(v1_models))
            .route("/metrics", get(metrics))
            .route("/api/chat", post(generate))
            .route("/api/generate", post(generate))
            .route("/v1/chat/completions", post(generate))
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(sim.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        SimServer { url: format!("http://{addr}"), addr, sim, task }
    }

    pub fn stats(&self) -> &SimStats {
        &self.sim.stats
    }

    /// A reader of the loaded models that outlives a borrow of the server (for samplers).
    pub fn loaded_handle(&self) -> impl Fn() -> Vec<String> + Send + Sync + 'static {
        let sim = self.sim.clone();
        move || sim.loaded.lock().unwrap().keys().cloned().collect()
    }

    pub fn loaded_models(&self) -> Vec<String> {
        let mut v: Vec<String> = self.sim.loaded.lock().unwrap().keys().cloned().collect();
        v.sort();
        v
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sim {
    fn size_of(&self, model: &str) -> Option<u64> {
        let wanted = if model.contains(':') { model.to_string() } else { format!("{model}:latest") };
        self.cfg.models.iter().find(|(m, _)| *m == wanted || m == model).map(|(_, s)| *s)
    }

    /// Drops idle models whose keep_alive ran out.
    fn expire(&self, loaded: &mut HashMap<String, Loaded>) {
        let keep = self.cfg.keep_alive;
        let before = loaded.len();
        loaded.retain(|_, l| l.active > 0 || !*l.ready.borrow() || l.last_used.elapsed() < keep);
        self.stats.evictions.fetch_add(before - loaded.len(), Ordering::Relaxed);
    }

    fn used(loaded: &HashMap<String, Loaded>) -> u64 {
        loaded.values().map(|l| l.size).sum()
    }

    /// Makes `model` loaded at context size `ctx` and takes a request on it; Err when it
    /// cannot fit. Returns the load time spent by this request, if it loaded the model.
    async fn begin(&self, model: &str, size: u64, ctx: u32) -> Result<(Arc<Semaphore>, Option<Duration>), String> {
        // Another context size: wait for the model to go idle, then unload it for a reload.
        loop {
            {
                let mut loaded = self.loaded.lock().unwrap();
                match loaded.get(model) {
                    Some(l) if l.ctx != ctx && l.active == 0 && *l.ready.borrow() => {
                        loaded.remove(model);
                        self.stats.ctx_reloads.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Some(l) if l.ctx != ctx => {}
                    _ => break,
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let (mut ready, slots, loader) = {
            let mut loaded = self.loaded.lock().unwrap();
            self.expire(&mut loaded);
            if let Some(l) = loaded.get_mut(model) {
                l.active += 1;
                l.last_used = Instant::now();
                (l.ready.clone(), l.slots.clone(), None)
            } else {
                // Unload idle models, least recently used first, until the new one fits.
                while Self::used(&loaded) + size > self.cfg.capacity_bytes {
                    let victim = loaded
                        .iter()
                        .filter(|(_, l)| l.active == 0 && *l.ready.borrow())
                        .min_by_key(|(_, l)| l.last_used)
                        .map(|(m, _)| m.clone());
                    match victim {
                        Some(m) => {
                            loaded.remove(&m);
                            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
                        }
                        None => {
                            self.stats.failed_loads.fetch_add(1, Ordering::Relaxed);
                            return Err(format!(
                                "model requires more system memory ({:.1} GiB) than is available ({:.1} GiB)",
                                size as f64 / GB as f64,
                                (self.cfg.capacity_bytes - Self::used(&loaded)) as f64 / GB as f64
                            ));
                        }
                    }
                }
                let (tx, rx) = watch::channel(false);
                let slots = Arc::new(Semaphore::new(self.cfg.num_parallel));
                loaded.insert(
                    model.to_string(),
                    Loaded {
                        size,
                        active: 1,
                        last_used: Instant::now(),
                        ready: rx.clone(),
                        slots: slots.clone(),
                        ctx,
                        kv: Vec::new(),
                    },
                );
                let used = Self::used(&loaded) as usize;
                self.stats.peak_bytes.fetch_max(used, Ordering::Relaxed);
                self.stats.cold_loads.fetch_add(1, Ordering::Relaxed);
                (rx, slots, Some(tx))
            }
        };
        let mut load_time = None;
        if let Some(tx) = loader {
            let t = self.cfg.load_time_per_gb.mul_f64(size as f64 / GB as f64);
            tokio::time::sleep(t).await;
            let _ = tx.send(true);
            load_time = Some(t);
        } else {
            let _ = ready.wait_for(|r| *r).await;
        }
        Ok((slots, load_time))
    }

    /// Prompt tokens this request must process: all of them, less what the KV cache holds
    /// of its conversation; the cache then holds the conversation up to its answer.
    fn prefill(&self, model: &str, conversation: u64, prompt: usize, answer: usize) -> usize {
        let mut loaded = self.loaded.lock().unwrap();
        let Some(l) = loaded.get_mut(model) else { return prompt };
        let cached = match l.kv.iter().position(|(c, _)| *c == conversation) {
            Some(i) => {
                self.stats.kv_hits.fetch_add(1, Ordering::Relaxed);
                l.kv.remove(i).1.min(prompt)
            }
            None => 0,
        };
        l.kv.push((conversation, prompt + answer));
        if l.kv.len() > self.cfg.num_parallel {
            l.kv.remove(0);
        }
        self.stats.prompt_tokens.fetch_add(prompt - cached, Ordering::Relaxed);
        prompt - cached
    }

    fn end(&self, model: &str) {
        if let Some(l) = self.loaded.lock().unwrap().get_mut(model) {
            l.active -= 1;
            l.last_used = Instant::now();
        }
    }
}

async fn tags(State(sim): State<Arc<Sim>>) -> axum::Json<Value> {
    let models: Vec<Value> = sim.cfg.models.iter().map(|(m, s)| json!({ "name": m, "model": m, "size": s })).collect();
    axum::Json(json!({ "models": models }))
}

async fn ps(State(sim): State<Arc<Sim>>) -> axum::Json<Value> {
    let mut loaded = sim.loaded.lock().unwrap();
    sim.expire(&mut loaded);
    let models: Vec<Value> = loaded
        .iter()
        .filter(|(_, l)| *l.ready.borrow())
        .map(|(m, l)| json!({ "name": m, "model": m, "size": l.size, "size_vram": l.size, "context_length": l.ctx }))
        .collect();
    axum::Json(json!({ "models": models }))
}

async fn v1_models(State(sim): State<Arc<Sim>>) -> axum::Json<Value> {
    let data: Vec<Value> =
        sim.cfg.models.iter().map(|(m, _)| json!({ "id": m, "object": "model", "owned_by": "vllm" })).collect();
    axum::Json(json!({ "object": "list", "data": data }))
}

/// vLLM's gauges: requests holding one of a model's parallel slots, and those queued for one.
async fn metrics(State(sim): State<Arc<Sim>>) -> Response {
    if !sim.cfg.report_load {
        return (StatusCode::NOT_FOUND, "404 page not found").into_response();
    }
    let (mut running, mut waiting) = (0, 0);
    for l in sim.loaded.lock().unwrap().values() {
        let busy = sim.cfg.num_parallel - l.slots.available_permits();
        running += busy;
        waiting += l.active.saturating_sub(busy);
    }
    let text = format!(
        "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{model_name=\"sim\"}} {running}.0\n\
         # TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{model_name=\"sim\"}} {waiting}.0\n"
    );
    text.into_response()
}

async fn resources(State(sim): State<Arc<Sim>>) -> axum::Json<Value> {
    sim.stats.probes.fetch_add(1, Ordering::Relaxed);
    let mut loaded = sim.loaded.lock().unwrap();
    sim.expire(&mut loaded);
    let used = Sim::used(&loaded);
    let total = sim.cfg.capacity_bytes;
    axum::Json(json!({
        "device": "GPU",
        "memory": { "total_bytes": 64 * GB, "available_bytes": 48 * GB },
        "gpus": [{ "index": 0, "name": format!("sim-{}", sim.cfg.name), "total_bytes": total,
                   "free_bytes": total - used.min(total), "used_bytes": used }],
        "at": "2026-01-01T00:00:00.000Z",
    }))
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

async fn generate(State(sim): State<Arc<Sim>>, uri: Uri, body: Bytes) -> Response {
    sim.stats.requests.fetch_add(1, Ordering::Relaxed);
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid JSON");
    };
    let model = req["model"].as_str().unwrap_or_default().to_string();
    let Some(size) = sim.size_of(&model) else {
        return error(StatusCode::NOT_FOUND, &format!("model \"{model}\" not found, try pulling it first"));
    };
    let tokens = req["options"]["num_predict"].as_u64().or(req["max_tokens"].as_u64()).unwrap_or(8) as usize;
    let ctx = req["options"]["num_ctx"].as_u64().map_or(sim.cfg.default_ctx, |c| c as u32);
    let messages = req["messages"].as_array().cloned().unwrap_or_default();
    let conversation = {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        // The opening up to the first question (a shared system prompt alone is no conversation).
        let first_user = messages.iter().position(|m| m["role"] == "user").unwrap_or(0);
        for m in messages.iter().take(first_user + 1) {
            m.to_string().hash(&mut h);
        }
        h.finish()
    };
    let started = Instant::now();
    let no_input = req.get("messages").is_none() && req["prompt"].as_str().is_none_or(str::is_empty);
    if no_input && req["keep_alive"] == json!(0) {
        let mut loaded = sim.loaded.lock().unwrap();
        if loaded.get(&model).is_some_and(|l| l.active == 0 && *l.ready.borrow()) {
            loaded.remove(&model);
            sim.stats.unloads.fetch_add(1, Ordering::Relaxed);
        }
        return axum::Json(json!({ "model": model, "done": true, "done_reason": "unload", "response": "" }))
            .into_response();
    }
    if no_input {
        sim.stats.preloads.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = sim.begin(&model, size, ctx).await {
            return error(StatusCode::INTERNAL_SERVER_ERROR, &e);
        }
        sim.end(&model);
        return axum::Json(json!({ "model": model, "done": true, "done_reason": "load", "response": "" }))
            .into_response();
    }
    let (slots, load_time) = match sim.begin(&model, size, ctx).await {
        Ok(x) => x,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    let permit = slots.acquire_owned().await.expect("semaphore stays open");
    let to_process = sim.prefill(&model, conversation, messages.len().max(1) * TOKENS_PER_MESSAGE, tokens);
    tokio::time::sleep(sim.cfg.prompt_token_time * to_process as u32).await;
    let load_ns = load_time.map_or(0, |t| t.as_nanos() as u64);
    if req["stream"] == json!(true) && !uri.path().starts_with("/v1/") {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        tokio::spawn(async move {
            for _ in 0..tokens {
                tokio::time::sleep(sim.cfg.token_delay).await;
                let line = json!({ "model": model, "done": false, "message": { "role": "assistant", "content": "x" } });
                let _ = tx.send(Ok(Bytes::from(format!("{line}\n")))).await;
            }
            drop(permit);
            sim.end(&model);
            let last = json!({ "model": model, "done": true, "message": { "role": "assistant", "content": "" },
                               "total_duration": started.elapsed().as_nanos() as u64, "load_duration": load_ns, "eval_count": tokens });
            let _ = tx.send(Ok(Bytes::from(format!("{last}\n")))).await;
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        return Response::builder()
            .header("content-type", "application/x-ndjson")
            .body(Body::from_stream(stream))
            .unwrap();
    }
    for _ in 0..tokens {
        tokio::time::sleep(sim.cfg.token_delay).await;
    }
    drop(permit);
    sim.end(&model);
    let answer = if uri.path().starts_with("/v1/") {
        json!({ "object": "chat.completion", "model": model,
                "choices": [{ "index": 0, "message": { "role": "assistant", "content": "x" }, "finish_reason": "stop" }],
                "usage": { "prompt_tokens": 1, "completion_tokens": tokens, "total_tokens": tokens + 1 } })
    } else {
        json!({ "model": model, "done": true, "message": { "role": "assistant", "content": "x" },
                "total_duration": started.elapsed().as_nanos() as u64, "load_duration": load_ns, "eval_count": tokens })
    };
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&answer).unwrap()))
        .unwrap()
}
