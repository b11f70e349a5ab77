//! A mock Ollama server on a real socket: the Ollama and OpenAI APIs, streaming with delays, and failures on demand.
//!
//! It answers /api/chat, /api/generate, /api/embed, /api/embeddings, /api/show,
//! /v1/chat/completions, /v1/completions, /v1/embeddings, /api/tags, /api/ps, /v1/models and
//! /api/version, and model management (/api/pull, /api/push, /api/create with NDJSON progress,
//! /api/copy, /api/delete; a model named `missing*` does not exist in the registry, so its
//! pull fails mid-stream as Ollama's does). Every answer names the model it received, so tests can see the rewrite.
//! `stop()` closes the listener and every open connection (a dead host); `restart()` binds
//! the same port again.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How the mock answers model-routed calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Normal = 0,
    /// 503, as Ollama when OLLAMA_MAX_QUEUE is exceeded.
    Busy = 1,
    /// 500 with an error body.
    Error = 2,
    /// Accept the request and never answer.
    Hang = 3,
    /// Send `drop_after` lines of a stream (two unless set), then break the connection.
    DropMidStream = 4,
    /// 429 with `Retry-After: retry_after_secs`, as a rate-limited hosted service or vLLM.
    RateLimited = 5,
    /// 401 to model calls, as a server whose auth proxy guards inference (its health
    /// endpoints stay open).
    Unauthorized = 6,
}

/// The load the mock reports about itself, as an openai-kind server does (none: /slots and
/// /metrics answer 404, as Ollama's and a hosted API's do).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Report {
    /// llama.cpp's `GET /slots`: `busy` of `total` slots processing.
    Slots { busy: usize, total: usize },
    /// vLLM's `GET /metrics`: requests running and waiting, KV cache in use (0 to 1).
    Vllm { running: usize, waiting: usize, kv: f64 },
}

pub struct Recorded {
    pub path: String,
    pub body: Bytes,
    pub headers: HeaderMap,
}

pub struct MockState {
    pub name: String,
    mode: AtomicU8,
    pub models: Mutex<Vec<String>>,
    pub loaded: Mutex<Vec<String>>,
    /// Gap between streamed chunks, in milliseconds.
    pub chunk_delay_ms: AtomicU64,
    /// Content chunks per streamed answer (the final "done" object comes on top).
    pub chunks: AtomicUsize,
    /// Delay before a non-streamed answer, in milliseconds.
    pub answer_delay_ms: AtomicU64,
    /// Model management calls received (pull, push, create, copy, delete), as "path model".
    pub managed: Mutex<Vec<String>>,
    /// Model-routed requests received.
    pub requests: AtomicUsize,
    /// Health and inventory calls received.
    pub probes: AtomicUsize,
    /// Streams whose reader went away before the end.
    pub cancelled: AtomicUsize,
    pub completed: AtomicUsize,
    pub last: Mutex<Option<Recorded>>,
    pub version: String,
    pub healthy: AtomicBool,
    /// Serve one request per connection, and close a kept-alive connection unanswered when
    /// the next request comes on it (a keep-alive timeout racing the client's next request).
    pub close_reused: AtomicBool,
    /// Answer /v1/messages and /v1/responses with 404, as a server with only chat completions.
    pub no_messages: AtomicBool,
    /// Lines of a stream sent before `Mode::DropMidStream` breaks it.
    pub drop_after: AtomicUsize,
    /// `Mode::DropMidStream` goes silent instead, the connection left open (a stalled GPU).
    pub stall: AtomicBool,
    /// The Retry-After of `Mode::RateLimited`, in seconds.
    pub retry_after_secs: AtomicU64,
    /// Blobs received (POST /api/blobs/:digest), by digest.
    pub blobs: Mutex<std::collections::HashMap<String, usize>>,
    /// What /slots or /metrics report (see [`Report`]).
    pub report: Mutex<Option<Report>>,
    /// Load readings asked for (/slots, /metrics), answered or not.
    pub load_asks: AtomicUsize,
}

pub struct MockOllama {
    pub addr: SocketAddr,
    pub url: String,
    pub state: Arc<MockState>,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl MockOllama {
    pub async fn start(name: &str, models: &[&str]) -> MockOllama {
        Self::serve_on(bind_restartable(), name, models)
    }

    pub async fn start_at(addr: &str, name: &str, models: &[&str]) -> MockOllama {
        Self::serve_on(TcpListener::bind(addr).await.unwrap(), name, models)
    }

    fn serve_on(listener: TcpListener, name: &str, models: &[&str]) -> MockOllama {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(MockState {
            name: name.to_string(),
            mode: AtomicU8::new(Mode::Normal as u8),
            models: Mutex::new(models.iter().map(|m| m.to_string()).collect()),
            loaded: Mutex::new(Vec::new()),
            chunk_delay_ms: AtomicU64::new(10),
            chunks: AtomicUsize::new(3),
            answer_delay_ms: AtomicU64::new(0),
            requests: AtomicUsize::new(0),
            managed: Mutex::new(Vec::new()),
            probes: AtomicUsize::new(0),
            cancelled: AtomicUsize::new(0),
            completed: AtomicUsize::new(0),
            last: Mutex::new(None),
            version: "0.6.5".into(),
            healthy: AtomicBool::new(true),
            close_reused: AtomicBool::new(false),
            blobs: Mutex::new(std::collections::HashMap::new()),
            no_messages: AtomicBool::new(false),
            drop_after: AtomicUsize::new(2),
            stall: AtomicBool::new(false),
            retry_after_secs: AtomicU64::new(2),
            report: Mutex::new(None),
            load_asks: AtomicUsize::new(0),
        });
        let mock = MockOllama { addr, url: format!("http://{addr}"), state: state.clone(), server: Mutex::new(None) };
        *mock.server.lock().unwrap() = Some(tokio::spawn(serve(listener, state)));
        mock
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// What the mock reports of its load from now on (None: it reports none).
    pub fn report(&self, report: Option<Report>) {
        *self.state.report.lock().unwrap() = report;
    }

    pub fn set_stream(&self, chunks: usize, delay: Duration) {
        self.state.chunks.store(chunks, Ordering::SeqCst);
        self.state.chunk_delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// See [`MockState::close_reused`].
    pub fn close_reused_connections(&self, on: bool) {
        self.state.close_reused.store(on, Ordering::SeqCst);
    }

    pub fn set_answer_delay(&self, delay: Duration) {
        self.state.answer_delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn set_loaded(&self, models: &[&str]) {
        *self.state.loaded.lock().unwrap() = models.iter().map(|m| m.to_string()).collect();
    }

    pub fn models(&self) -> Vec<String> {
        self.state.models.lock().unwrap().clone()
    }

    /// The model management calls received, as "path model".
    pub fn managed(&self) -> Vec<String> {
        self.state.managed.lock().unwrap().clone()
    }

    /// The models this server has loaded now (its /api/ps).
    pub fn loaded(&self) -> Vec<String> {
        self.state.loaded.lock().unwrap().clone()
    }

    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    pub fn last_body(&self) -> Option<Bytes> {
        self.state.last.lock().unwrap().as_ref().map(|r| r.body.clone())
    }

    pub fn last_json(&self) -> Value {
        serde_json::from_slice(&self.last_body().expect("a request was received")).unwrap()
    }

    pub fn last_header(&self, name: &str) -> Option<String> {
        let last = self.state.last.lock().unwrap();
        last.as_ref()?.headers.get(name)?.to_str().ok().map(str::to_string)
    }

    /// Closes the listener and every connection, as a host that died.
    pub fn stop(&self) {
        if let Some(task) = self.server.lock().unwrap().take() {
            task.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&self) {
        self.stop();
        let listener = bind_again(self.addr).await;
        *self.server.lock().unwrap() = Some(tokio::spawn(serve(listener, self.state.clone())));
    }
}

impl Drop for MockOllama {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback listener on a port below the kernel's ephemeral range (32768 and up on Linux),
/// for servers a test stops and starts again on the same port: while one is stopped, no
/// outgoing connection can take its port as a source port and keep it from listening again.
pub fn bind_restartable() -> TcpListener {
    use std::hash::{BuildHasher, RandomState};
    let seed = RandomState::new().hash_one(std::process::id());
    for i in 0..2000u64 {
        let port = 20000 + (seed.wrapping_add(i.wrapping_mul(7919)) % 12000) as u16;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            l.set_nonblocking(true).unwrap();
            return TcpListener::from_std(l).unwrap();
        }
    }
    panic!("no free loopback port between 20000 and 32000");
}

/// Binds `addr` again once the previous listener on it is gone (a few seconds at most).
pub async fn bind_again(addr: SocketAddr) -> TcpListener {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if std::time::Instant::now() > deadline => panic!("{addr} stayed taken for 10 s: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Accepts connections; aborting this task drops the JoinSet and so every connection.
async fn serve(listener: TcpListener, state: Arc<MockState>) {
    let app = router(state.clone());
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        // As Ollama (Go's net/http sets TCP_NODELAY on every connection): without it, a
        // streamed chunk written while the previous one is unacknowledged waits for the
        // peer's delayed ACK (up to 40 ms), which would be charged to whoever proxies it.
        let _ = stream.set_nodelay(true);
        let inner = hyper_util::service::TowerToHyperService::new(app.clone());
        let (state, served) = (state.clone(), AtomicUsize::new(0));
        let service = hyper::service::service_fn(move |req| {
            use hyper::service::Service as _;
            let refuse = served.fetch_add(1, Ordering::SeqCst) > 0 && state.close_reused.load(Ordering::SeqCst);
            let answer = inner.call(req);
            async move {
                if refuse {
                    // An error from the service makes hyper close the connection, unanswered.
                    return Err(std::io::Error::other("closing a reused connection"));
                }
                answer.await.map_err(|never| match never {})
            }
        });
        connections.spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
        while connections.try_join_next().is_some() {}
    }
}

fn router(state: Arc<MockState>) -> Router {
    Router::new()
        .route("/", get(|| async { "Ollama is running" }))
        .route("/api/version", get(version))
        .route("/api/tags", get(tags))
        .route("/api/ps", get(ps))
        .route("/v1/models", get(v1_models))
        .route("/slots", get(slots))
        .route("/metrics", get(metrics))
        .route("/api/chat", post(routed))
        .route("/api/generate", post(routed))
        .route("/api/embed", post(routed))
        .route("/api/embeddings", post(routed))
        .route("/api/show", post(routed))
        .route("/v1/chat/completions", post(routed))
        .route("/v1/completions", post(routed))
        .route("/v1/embeddings", post(routed))
        .route("/v1/messages", post(routed))
        .route("/v1/messages/count_tokens", post(routed))
        .route("/v1/responses", post(routed))
        .route("/api/pull", post(manage))
        .route("/api/push", post(manage))
        .route("/api/create", post(manage))
        .route("/api/copy", post(manage))
        .route("/api/delete", axum::routing::delete(manage))
        .route("/api/blobs/{digest}", axum::routing::head(blob_head).post(blob_upload))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

fn unhealthy(s: &MockState) -> Option<Response> {
    s.probes.fetch_add(1, Ordering::SeqCst);
    (!s.healthy.load(Ordering::SeqCst)).then(|| (StatusCode::SERVICE_UNAVAILABLE, "unhealthy").into_response())
}

async fn version(State(s): State<Arc<MockState>>) -> Response {
    unhealthy(&s).unwrap_or_else(|| axum::Json(json!({ "version": s.version })).into_response())
}

fn model_entry(name: &str) -> Value {
    json!({ "name": name, "model": name, "modified_at": "2026-01-01T00:00:00Z", "size": 1000, "digest": format!("sha-{name}"),
            "details": { "format": "gguf", "family": "mock", "parameter_size": "1B", "quantization_level": "Q4_0" } })
}

async fn tags(State(s): State<Arc<MockState>>) -> Response {
    if let Some(r) = unhealthy(&s) {
        return r;
    }
    let models: Vec<Value> = s.models.lock().unwrap().iter().map(|m| model_entry(m)).collect();
    axum::Json(json!({ "models": models })).into_response()
}

async fn ps(State(s): State<Arc<MockState>>) -> Response {
    if let Some(r) = unhealthy(&s) {
        return r;
    }
    let models: Vec<Value> = s
        .loaded
        .lock()
        .unwrap()
        .iter()
        .map(|m| {
            let mut e = model_entry(m);
            e["size_vram"] = json!(1000);
            e["expires_at"] = json!("2030-01-01T00:00:00Z");
            e
        })
        .collect();
    axum::Json(json!({ "models": models })).into_response()
}

async fn v1_models(State(s): State<Arc<MockState>>) -> Response {
    if let Some(r) = unhealthy(&s) {
        return r;
    }
    let data: Vec<Value> = s
        .models
        .lock()
        .unwrap()
        .iter()
        .map(|m| json!({ "id": m, "object": "model", "created": 0, "owned_by": "library" }))
        .collect();
    axum::Json(json!({ "object": "list", "data": data })).into_response()
}

/// HEAD /api/blobs/:digest: 200 when the blob is here, 404 otherwise (as Ollama).
async fn blob_head(
    State(s): State<Arc<MockState>>,
    axum::extract::Path(digest): axum::extract::Path<String>,
) -> Response {
    if s.blobs.lock().unwrap().contains_key(&digest) {
        StatusCode::OK.into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

/// POST /api/blobs/:digest: stored when the body's SHA-256 is the digest, 201; 400 otherwise.
async fn blob_upload(
    State(s): State<Arc<MockState>>,
    axum::extract::Path(digest): axum::extract::Path<String>,
    body: Bytes,
) -> Response {
    use sha2::Digest;
    let actual: String = sha2::Sha256::digest(&body).iter().map(|b| format!("{b:02x}")).collect();
    if digest.strip_prefix("sha256:") != Some(actual.as_str()) {
        return error(StatusCode::BAD_REQUEST, "digest mismatch");
    }
    s.blobs.lock().unwrap().insert(digest, body.len());
    StatusCode::CREATED.into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// llama.cpp's `GET /slots`, as its server answers it (one object per slot).
async fn slots(State(s): State<Arc<MockState>>) -> Response {
    s.load_asks.fetch_add(1, Ordering::SeqCst);
    let Some(Report::Slots { busy, total }) = *s.report.lock().unwrap() else {
        return (StatusCode::NOT_FOUND, "404 page not found").into_response();
    };
    let slots: Vec<Value> = (0..total)
        .map(|i| json!({ "id": i, "id_task": -1, "n_ctx": 4096, "speculative": false, "is_processing": i < busy }))
        .collect();
    axum::Json(Value::from(slots)).into_response()
}

/// vLLM's `GET /metrics`: a Prometheus exposition, the series labelled by engine and model.
async fn metrics(State(s): State<Arc<MockState>>) -> Response {
    s.load_asks.fetch_add(1, Ordering::SeqCst);
    let Some(Report::Vllm { running, waiting, kv }) = *s.report.lock().unwrap() else {
        return (StatusCode::NOT_FOUND, "404 page not found").into_response();
    };
    let model = s.models.lock().unwrap().first().cloned().unwrap_or_default();
    let labels = format!("engine=\"0\",model_name=\"{model}\"");
    let text = format!(
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n\
         # TYPE vllm:num_requests_running gauge\n\
         vllm:num_requests_running{{{labels}}} {running}.0\n\
         # HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n\
         # TYPE vllm:num_requests_waiting gauge\n\
         vllm:num_requests_waiting{{{labels}}} {waiting}.0\n\
         # HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n\
         # TYPE vllm:kv_cache_usage_perc gauge\n\
         vllm:kv_cache_usage_perc{{{labels}}} {kv}\n\
         # HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n\
         # TYPE vllm:prompt_tokens_total counter\n\
         vllm:prompt_tokens_total{{{labels}}} 1234.0\n"
    );
    ([("content-type", "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

async fn routed(State(s): State<Arc<MockState>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    s.requests.fetch_add(1, Ordering::SeqCst);
    let path = uri.path().to_string();
    *s.last.lock().unwrap() = Some(Recorded { path: path.clone(), body: body.clone(), headers });
    let mode = s.mode.load(Ordering::SeqCst);
    if mode == Mode::Busy as u8 {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server busy, please try again.  maximum pending requests exceeded",
        );
    }
    if mode == Mode::Error as u8 {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "mock failure");
    }
    if mode == Mode::RateLimited as u8 {
        let mut r = error(StatusCode::TOO_MANY_REQUESTS, "rate limit reached, retry later");
        let secs = s.retry_after_secs.load(Ordering::SeqCst).to_string();
        r.headers_mut().insert("retry-after", secs.parse().unwrap());
        return r;
    }
    if mode == Mode::Unauthorized as u8 {
        return error(StatusCode::UNAUTHORIZED, "invalid api key");
    }
    if mode == Mode::Hang as u8 {
        std::future::pending::<()>().await;
    }
    if (path.starts_with("/v1/messages") || path == "/v1/responses") && s.no_messages.load(Ordering::SeqCst) {
        return (StatusCode::NOT_FOUND, "404 page not found").into_response();
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid JSON");
    };
    // Ollama's /api/show (and model management) still read the legacy `name`.
    let model = req["model"].as_str().or(req["name"].as_str()).unwrap_or_default().to_string();
    let known = s.models.lock().unwrap().iter().any(|m| m == &model || *m == format!("{model}:latest"));
    if !known {
        return error(StatusCode::NOT_FOUND, &format!("model \"{model}\" not found, try pulling it first"));
    }
    let openai = path.starts_with("/v1/");
    // keep_alive 0 with nothing to answer unloads the model, as `ollama stop` asks it.
    let asks_nothing = req.get("messages").is_none_or(|m| m.as_array().is_some_and(|a| a.is_empty()))
        && req.get("prompt").is_none_or(|p| p.as_str() == Some(""));
    let keep_alive_zero = req
        .get("keep_alive")
        .is_some_and(|k| k.as_i64() == Some(0) || k.as_str() == Some("0") || k.as_str() == Some("0s"));
    if !openai && asks_nothing && keep_alive_zero && (path == "/api/generate" || path == "/api/chat") {
        s.loaded.lock().unwrap().retain(|m| m != &model && *m != format!("{model}:latest"));
        let created_at = "2026-01-01T00:00:00Z";
        let answer = if path == "/api/chat" {
            json!({ "model": model, "created_at": created_at, "message": { "role": "assistant", "content": "" },
                    "done_reason": "unload", "done": true })
        } else {
            json!({ "model": model, "created_at": created_at, "response": "", "done": true, "done_reason": "unload" })
        };
        return axum::Json(answer).into_response();
    }
    {
        let mut loaded = s.loaded.lock().unwrap();
        if !loaded.contains(&model) {
            loaded.push(model.clone());
        }
    }
    if path == "/v1/messages/count_tokens" {
        let words = req["messages"].to_string().split_whitespace().count() as u64;
        return axum::Json(json!({ "input_tokens": words + 3 })).into_response();
    }
    if path.ends_with("embed") || path.ends_with("embeddings") || path == "/api/show" {
        // One vector per input, in order (the i-th starts with i).
        let inputs = match &req["input"] {
            Value::Array(a) => a.len().max(1),
            _ => 1,
        };
        let vector = |i: usize| json!([i as f64, 0.2, 0.3]);
        let answer = match path.as_str() {
            "/api/show" => json!({ "model": model, "modelfile": "", "parameters": "", "template": "{{ .Prompt }}",
                                   "details": { "parent_model": "", "format": "gguf", "family": "mock", "families": ["mock"],
                                                "parameter_size": "1B", "quantization_level": "Q4_0" },
                                   "model_info": { "general.architecture": "mock", "mock.context_length": 4096 },
                                   "capabilities": ["completion", "tools"], "modified_at": "2026-01-01T00:00:00Z" }),
            "/api/embeddings" => json!({ "embedding": vector(0) }),
            "/v1/embeddings" => {
                let data: Vec<Value> =
                    (0..inputs).map(|i| json!({ "object": "embedding", "index": i, "embedding": vector(i) })).collect();
                json!({ "object": "list", "model": model, "data": data, "usage": { "prompt_tokens": 2, "total_tokens": 2 } })
            }
            _ => {
                json!({ "model": model, "embeddings": (0..inputs).map(vector).collect::<Vec<_>>(), "prompt_eval_count": 2 })
            }
        };
        return axum::Json(answer).into_response();
    }
    let streaming = req["stream"].as_bool().unwrap_or(!openai);
    if !streaming {
        let delay = s.answer_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        s.completed.fetch_add(1, Ordering::SeqCst);
        let mut answer = whole_answer(&s, &path, &model);
        // Asked with tools: the answer calls the first one, as a model that uses tools does.
        if let Some(tool) = req["tools"].get(0) {
            let name = tool["function"]["name"].clone();
            if path == "/v1/chat/completions" {
                answer["choices"][0]["message"]["tool_calls"] = json!([{ "id": "call_1", "type": "function", "function": { "name": name, "arguments": "{\"q\":1}" } }]);
                answer["choices"][0]["finish_reason"] = json!("tool_calls");
            } else if path == "/api/chat" {
                answer["message"]["tool_calls"] = json!([{ "function": { "name": name, "arguments": { "q": 1 } } }]);
            }
        }
        return axum::Json(answer).into_response();
    }
    let tool = req["tools"].get(0).map(|t| t["function"]["name"].as_str().unwrap_or("").to_string());
    // A final assistant message (or a prompt) that already holds part of the answer is
    // continued from where it ends, as a model continues a prefill.
    let history = req["messages"].as_array().or(req["input"].as_array());
    let last = history.and_then(|m| m.last()).filter(|m| m["role"] == "assistant");
    let prefix = last.and_then(|m| m["content"].as_str()).or(req["prompt"].as_str()).unwrap_or("");
    let skip = prefix.matches("tok").count();
    // Ollama's /v1 streams carry usage only when asked (stream_options.include_usage), in a
    // chunk of its own with no choices after the last.
    let usage = req["stream_options"]["include_usage"].as_bool().unwrap_or(false);
    stream_answer(s, path, model, mode == Mode::DropMidStream as u8, tool, skip, usage)
}

fn content(s: &MockState) -> String {
    (0..s.chunks.load(Ordering::SeqCst)).map(|i| format!("tok{i} ")).collect::<String>() + &format!("from {}", s.name)
}

fn whole_answer(s: &MockState, path: &str, model: &str) -> Value {
    let text = content(s);
    match path {
        "/v1/chat/completions" => json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": text }, "finish_reason": "stop" }],
            "usage": { "prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9 } }),
        "/v1/completions" => json!({
            "id": "cmpl-1", "object": "text_completion", "created": 0, "model": model,
            "choices": [{ "index": 0, "text": text, "finish_reason": "stop" }],
            "usage": { "prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9 } }),
        "/v1/messages" => json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": model,
            "content": [{ "type": "text", "text": text }], "stop_reason": "end_turn",
            "usage": { "input_tokens": 5, "output_tokens": 4 } }),
        "/v1/responses" => json!({
            "id": "resp_1", "object": "response", "status": "completed", "model": model,
            "output": [{ "type": "message", "role": "assistant", "content": [{ "type": "output_text", "text": text }] }],
            "usage": { "input_tokens": 5, "output_tokens": 4, "total_tokens": 9 } }),
        "/api/generate" => json!({ "model": model, "response": text, "done": true, "done_reason": "stop",
            "total_duration": 1_000_000, "load_duration": 1000, "prompt_eval_count": 5, "eval_count": 4, "eval_duration": 500 }),
        _ => {
            json!({ "model": model, "message": { "role": "assistant", "content": text }, "done": true, "done_reason": "stop",
            "total_duration": 1_000_000, "load_duration": 1000, "prompt_eval_count": 5, "eval_count": 4, "eval_duration": 500 })
        }
    }
}

/// Stands for the send time in a streamed line's `created_at` until the line is sent.
const SENT_AT: &str = "@sent-at@";

/// Streams NDJSON (Ollama) or SSE (OpenAI), one chunk per gap; counts readers that leave early.
fn stream_answer(
    s: Arc<MockState>,
    path: String,
    model: String,
    drop_mid: bool,
    tool: Option<String>,
    skip: usize,
    usage: bool,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let sse = path.starts_with("/v1/");
    tokio::spawn(async move {
        let all = s.chunks.load(Ordering::SeqCst);
        let n = all.saturating_sub(skip);
        let drop_after = s.drop_after.load(Ordering::SeqCst);
        let gap = Duration::from_millis(s.chunk_delay_ms.load(Ordering::SeqCst));
        let mut lines: Vec<String> = Vec::new();
        for i in skip.min(all)..all {
            let piece = format!("tok{i} ");
            lines.push(if path == "/v1/messages" {
                let e = json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": piece } });
                format!("event: content_block_delta\ndata: {e}\n\n")
            } else if path == "/v1/responses" {
                let e = json!({ "type": "response.output_text.delta", "item_id": format!("msg_{}", s.name),
                                "output_index": 0, "content_index": 0, "delta": piece });
                format!("event: response.output_text.delta\ndata: {e}\n\n")
            } else if path == "/v1/completions" {
                let c = json!({ "id": "cmpl-1", "object": "text_completion", "model": model,
                                "choices": [{ "index": 0, "text": piece, "finish_reason": null }] });
                format!("data: {c}\n\n")
            } else if sse {
                // As Ollama's OpenAI API: the role in every chunk.
                let c = json!({ "id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model,
                                "choices": [{ "index": 0, "delta": { "role": "assistant", "content": piece }, "finish_reason": null }] });
                format!("data: {c}\n\n")
            } else if path == "/api/generate" {
                format!("{}\n", json!({ "model": model, "created_at": SENT_AT, "response": piece, "done": false }))
            } else {
                format!(
                    "{}\n",
                    json!({ "model": model, "created_at": SENT_AT, "message": { "role": "assistant", "content": piece },
                            "done": false })
                )
            });
        }
        if path == "/v1/messages" {
            let start = json!({ "type": "message_start", "message": { "id": "msg_1", "type": "message", "role": "assistant",
                                "model": model, "content": [], "usage": { "input_tokens": 5, "output_tokens": 1 } } });
            let block =
                json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "text", "text": "" } });
            lines.insert(0, format!("event: content_block_start\ndata: {block}\n\n"));
            lines.insert(0, format!("event: message_start\ndata: {start}\n\n"));
            lines.push("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n".into());
            let delta = json!({ "type": "message_delta", "delta": { "stop_reason": "end_turn" }, "usage": { "output_tokens": n } });
            lines.push(format!("event: message_delta\ndata: {delta}\n\n"));
            lines.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".into());
        } else if path == "/v1/responses" {
            // As Ollama's Responses API: the response and its message item announced, the text,
            // then each closed with its whole text; every event numbered.
            let (id, item) = (format!("resp_{}", s.name), format!("msg_{}", s.name));
            let text: String = (skip.min(all)..all).map(|i| format!("tok{i} ")).collect();
            let message = |status: &str, text: &str| {
                json!({ "type": "message", "id": item, "status": status, "role": "assistant",
                        "content": [{ "type": "output_text", "text": text, "annotations": [] }] })
            };
            let response = |status: &str, output: Value| {
                json!({ "id": id, "object": "response", "status": status, "model": model, "output": output,
                        "usage": { "input_tokens": 5, "output_tokens": n, "total_tokens": 5 + n } })
            };
            let mut empty = message("in_progress", "");
            empty["content"] = json!([]);
            let opening = [
                json!({ "type": "response.created", "response": response("in_progress", json!([])) }),
                json!({ "type": "response.in_progress", "response": response("in_progress", json!([])) }),
                json!({ "type": "response.output_item.added", "output_index": 0, "item": empty }),
                json!({ "type": "response.content_part.added", "item_id": item, "output_index": 0, "content_index": 0,
                        "part": { "type": "output_text", "text": "", "annotations": [] } }),
            ];
            let closing = [
                json!({ "type": "response.output_text.done", "item_id": item, "output_index": 0, "content_index": 0, "text": text }),
                json!({ "type": "response.content_part.done", "item_id": item, "output_index": 0, "content_index": 0,
                        "part": { "type": "output_text", "text": text, "annotations": [] } }),
                json!({ "type": "response.output_item.done", "output_index": 0, "item": message("completed", &text) }),
                json!({ "type": "response.completed", "response": response("completed", json!([message("completed", &text)])) }),
            ];
            let sse = |e: &Value| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap());
            for (i, e) in opening.iter().enumerate() {
                lines.insert(i, sse(e));
            }
            lines.extend(closing.iter().map(sse));
            for (i, line) in lines.iter_mut().enumerate() {
                let data = line.split_once("data: ").map_or("", |(_, d)| d.trim_end());
                let mut e: Value = serde_json::from_str(data).unwrap();
                e["sequence_number"] = json!(i);
                *line = sse(&e);
            }
        } else if sse {
            // Asked with tools: the call streams in two pieces, as OpenAI's servers send it.
            if let (Some(name), "/v1/chat/completions") = (&tool, path.as_str()) {
                for piece in [
                    json!({ "index": 0, "id": "call_1", "type": "function", "function": { "name": name, "arguments": "{\"q\"" } }),
                    json!({ "index": 0, "function": { "arguments": ":1}" } }),
                ] {
                    let c = json!({ "id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model,
                                    "choices": [{ "index": 0, "delta": { "tool_calls": [piece] }, "finish_reason": null }] });
                    lines.push(format!("data: {c}\n\n"));
                }
            }
            let finish = if tool.is_some() { "tool_calls" } else { "stop" };
            let last = json!({ "id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model,
                               "choices": [{ "index": 0, "delta": {}, "finish_reason": finish }] });
            lines.push(format!("data: {last}\n\n"));
            if usage {
                let counts = json!({ "id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model, "choices": [],
                                     "usage": { "prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n } });
                lines.push(format!("data: {counts}\n\n"));
            }
            lines.push("data: [DONE]\n\n".into());
        } else {
            let mut done = json!({ "model": model, "created_at": SENT_AT, "done": true, "done_reason": "stop", "total_duration": 1_000_000, "load_duration": 1000,
                        "prompt_eval_count": 5, "eval_count": n, "eval_duration": 500, "message": { "role": "assistant", "content": "" } });
            if let Some(name) = &tool {
                done["message"]["tool_calls"] = json!([{ "function": { "name": name, "arguments": { "q": 1 } } }]);
            }
            if path == "/api/generate" {
                // Ollama's generate ends with an empty `response` (and the context), not a message.
                done.as_object_mut().unwrap().remove("message");
                done["response"] = json!("");
                done["context"] = json!([1, 2, 3]);
            }
            lines.push(format!("{done}\n"));
        }
        for (i, line) in lines.into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(gap).await;
            }
            if drop_mid && i == drop_after && s.stall.load(Ordering::SeqCst) {
                // Silent, the connection open, until the reader gives up.
                tx.closed().await;
                s.cancelled.fetch_add(1, Ordering::SeqCst);
                return;
            }
            if drop_mid && i == drop_after {
                let _ = tx.send(Err(std::io::Error::other("mock drops the stream"))).await;
                return;
            }
            // As Ollama, each line says when it was made: here, the moment it is handed over.
            let line =
                line.replacen(SENT_AT, &humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string(), 1);
            if tx.send(Ok(Bytes::from(line))).await.is_err() {
                s.cancelled.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
        s.completed.fetch_add(1, Ordering::SeqCst);
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let content_type = if sse { "text/event-stream" } else { "application/x-ndjson" };
    Response::builder().header("content-type", content_type).body(Body::from_stream(stream)).unwrap()
}

/// Ollama's model management: pull, push and create stream NDJSON progress (or answer once
/// with `"stream": false`), copy and delete answer 200 with an empty body or 404.
async fn manage(State(s): State<Arc<MockState>>, uri: Uri, body: Bytes) -> Response {
    if let Some(r) = unhealthy(&s) {
        return r;
    }
    if s.mode.load(Ordering::SeqCst) == Mode::Error as u8 {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "mock failure");
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid JSON");
    };
    let path = uri.path().to_string();
    let name = |k: &str| req[k].as_str().map(str::to_string);
    let model = name("model").or_else(|| name("name")).or_else(|| name("source")).unwrap_or_default();
    s.managed.lock().unwrap().push(format!("{path} {model}"));
    let has = |m: &str| s.models.lock().unwrap().iter().any(|x| x == m || *x == format!("{m}:latest"));
    let steps: Vec<Value> = match path.as_str() {
        "/api/delete" | "/api/copy" => {
            if !has(&model) {
                return error(StatusCode::NOT_FOUND, &format!("model '{model}' not found"));
            }
            let mut models = s.models.lock().unwrap();
            if path == "/api/delete" {
                models.retain(|x| x != &model && *x != format!("{model}:latest"));
                s.loaded.lock().unwrap().retain(|x| x != &model);
            } else if let Some(to) = name("destination") {
                models.push(tagged(&to));
            }
            return StatusCode::OK.into_response();
        }
        "/api/push" if !has(&model) => return error(StatusCode::NOT_FOUND, &format!("model '{model}' not found")),
        "/api/push" => vec![json!({ "status": "retrieving manifest" }), json!({ "status": "pushing manifest" })],
        "/api/create" => {
            vec![json!({ "status": "using existing layer sha256:1" }), json!({ "status": "writing manifest" })]
        }
        _ => {
            let digest = format!("sha256:{:x}", model.len() * 7919);
            let mut v = vec![json!({ "status": "pulling manifest" })];
            for done in [0, 250, 500, 750, 1000] {
                v.push(json!({ "status": format!("pulling {}", &digest[7..]), "digest": digest, "total": 1000, "completed": done }));
            }
            v.push(json!({ "status": "verifying sha256 digest" }));
            v.push(json!({ "status": "writing manifest" }));
            v
        }
    };
    let fails = path == "/api/pull" && model.starts_with("missing");
    if matches!(path.as_str(), "/api/pull" | "/api/create") && !fails && !has(&model) {
        s.models.lock().unwrap().push(tagged(&model));
    }
    if req["stream"] == json!(false) {
        return if fails {
            error(StatusCode::INTERNAL_SERVER_ERROR, "pull model manifest: file does not exist")
        } else {
            axum::Json(json!({ "status": "success" })).into_response()
        };
    }
    let gap = Duration::from_millis(s.chunk_delay_ms.load(Ordering::SeqCst));
    let mut lines: Vec<Value> = if fails { steps.into_iter().take(1).collect() } else { steps };
    lines.push(if fails {
        json!({ "error": "pull model manifest: file does not exist" })
    } else {
        json!({ "status": "success" })
    });
    let stream = futures::stream::unfold(lines.into_iter().enumerate(), move |mut it| async move {
        let (i, line) = it.next()?;
        if i > 0 {
            tokio::time::sleep(gap).await;
        }
        Some((Ok::<_, std::io::Error>(Bytes::from(format!("{line}\n"))), it))
    });
    Response::builder().header("content-type", "application/x-ndjson").body(Body::from_stream(stream)).unwrap()
}

/// A model name as Ollama stores it: with a tag (`latest` when none was given).
fn tagged(name: &str) -> String {
    if name.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}
