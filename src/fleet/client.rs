//! A small JSON client over Pingora's connector: GETs for health checks and inventory
//! refreshes, POSTs for the admin API's calls to servers (preload), and POSTs whose answer is
//! NDJSON progress handed over line by line (model management: pull, push, create).

use std::time::Duration;

use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use serde_json::Value;

use crate::fleet::Server;
use crate::protocol::ollama::ServerUrl;

/// Pooled connections found closed, one after another, before a GET counts as failed.
const STALE_RETRIES: u32 = 4;

/// Responses larger than this are not inventories: refuse them rather than buffer them.
const MAX_JSON_BYTES: usize = 32 * 1024 * 1024;

/// A call to a server that failed, and why.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    /// The system's resolver found no address (a probe's URL).
    #[error("cannot resolve {0}")]
    NoAddress(String),
    #[error("connect: {0}")]
    Connect(#[source] pingora::BError),
    /// The request's header could not be built.
    #[error("{0}")]
    Header(#[source] pingora::BError),
    /// The exchange broke off: writing the request or reading the answer.
    #[error("{method} {path}: {source}")]
    Exchange {
        method: &'static str,
        path: String,
        #[source]
        source: pingora::BError,
    },
    #[error("{method} {path}: answer larger than {MAX_JSON_BYTES} bytes")]
    TooLarge { method: &'static str, path: String },
    /// Not a 2xx, with the server's own `error`, if it gave one.
    #[error("{method} {path}: HTTP {status}{}", .said.as_deref().map(|e| format!(": {e}")).unwrap_or_default())]
    Status { method: &'static str, path: String, status: u16, said: Option<String> },
    #[error("{method} {path}: not JSON ({source})")]
    NotJson {
        method: &'static str,
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("GET {0}: not text")]
    NotText(String),
    #[error("progress line is not JSON ({0})")]
    ProgressNotJson(#[source] serde_json::Error),
    /// An `{"error": ...}` progress line, in the server's own words.
    #[error("{0}")]
    Said(String),
    #[error("{method} {path}: no answer within {timeout:?}")]
    Timeout { method: &'static str, path: String, timeout: Duration },
}

impl CallError {
    /// The HTTP status a server answered with, when that is why the call failed.
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            CallError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Why a GET failed: before any answer (a stale pooled connection looks like this), or otherwise.
enum Failure {
    BeforeAnswer(CallError),
    Other(CallError),
}

impl Failure {
    fn into_error(self) -> CallError {
        match self {
            Failure::BeforeAnswer(e) | Failure::Other(e) => e,
        }
    }
}

pub(crate) struct Client {
    connector: Connector,
}

impl Default for Client {
    fn default() -> Self {
        Client { connector: Connector::new(None) }
    }
}

/// One request to a server.
struct Call<'a> {
    method: &'static str,
    url: &'a ServerUrl,
    headers: &'a [(http::HeaderName, http::HeaderValue)],
    path: &'a str,
    body: Option<bytes::Bytes>,
    timeout: Duration,
    /// Where each line of a 2xx answer goes as it arrives (NDJSON progress), instead of the
    /// answer being parsed whole. The read timeout then applies per read, not to the call.
    lines: Option<&'a tokio::sync::mpsc::UnboundedSender<Value>>,
    /// The answer is text (a Prometheus exposition), handed back as a JSON string.
    text: bool,
}

impl Client {
    /// GETs `path` on `server` and parses the answer as JSON, all within `timeout`.
    pub(crate) async fn get_json(&self, server: &Server, path: &str, timeout: Duration) -> Result<Value, CallError> {
        self.get(server, path, timeout, false).await
    }

    /// GETs `path` on `server` as text (a Prometheus `/metrics`), all within `timeout`.
    pub(crate) async fn get_text(&self, server: &Server, path: &str, timeout: Duration) -> Result<String, CallError> {
        match self.get(server, path, timeout, true).await? {
            Value::String(s) => Ok(s),
            _ => Err(CallError::NotText(path.to_string())),
        }
    }

    async fn get(&self, server: &Server, path: &str, timeout: Duration, text: bool) -> Result<Value, CallError> {
        let headers = &server.credentials.headers;
        let call = Call { method: "GET", url: &server.url, headers, path, body: None, timeout, lines: None, text };
        self.call_server(server, call).await
    }

    /// Loads `model` on an Ollama server and keeps it for `keep_alive`: a generate with no
    /// prompt, as `ollama run` does before the first question. It then counts as loaded there.
    pub(crate) async fn load_model(
        &self,
        server: &Server,
        model: &str,
        keep_alive: Value,
        timeout: Duration,
    ) -> Result<(), CallError> {
        let body = serde_json::json!({ "model": model, "prompt": "", "keep_alive": keep_alive, "stream": false });
        self.post_json(server, "/api/generate", &body, timeout).await?;
        server.mark_loaded(model, None);
        Ok(())
    }

    /// Unloads `model` from an Ollama server (`keep_alive: 0`, as `ollama stop` asks).
    pub(crate) async fn unload_model(&self, server: &Server, model: &str, timeout: Duration) -> Result<(), CallError> {
        let body = serde_json::json!({ "model": model, "keep_alive": 0 });
        self.post_json(server, "/api/generate", &body, timeout).await?;
        server.mark_unloaded(model);
        Ok(())
    }

    /// POSTs `body` as JSON to `path` on `server` and parses the answer, all within `timeout`.
    pub(crate) async fn post_json(
        &self,
        server: &Server,
        path: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let body = Some(bytes::Bytes::from(serde_json::to_vec(body).expect("json values serialise")));
        let call = Call {
            method: "POST",
            url: &server.url,
            headers: &server.credentials.headers,
            path,
            body,
            timeout,
            lines: None,
            text: false,
        };
        self.call_server(server, call).await
    }

    /// Sends `body` with `method` (POST, DELETE) to `path` on `server` and hands each line of a
    /// successful NDJSON answer to `lines` as it arrives; `idle` bounds each read, not the
    /// whole call (a pull of a large model takes as long as it takes). An `{"error": ...}`
    /// line ends the call with that error; an empty answer (copy, delete) is a success.
    pub(crate) async fn stream_json(
        &self,
        method: &'static str,
        server: &Server,
        path: &str,
        body: &Value,
        idle: Duration,
        lines: &tokio::sync::mpsc::UnboundedSender<Value>,
    ) -> Result<(), CallError> {
        let body = Some(bytes::Bytes::from(serde_json::to_vec(body).expect("json values serialise")));
        let call = Call {
            method,
            url: &server.url,
            headers: &server.credentials.headers,
            path,
            body,
            timeout: idle,
            lines: Some(lines),
            text: false,
        };
        let addr = server.resolve().await.map_err(|e| unresolved(server, e))?;
        self.send(&call, addr).await.map(|_| ())
    }

    /// GETs `path` at `url` (resolving its host) and parses the answer as JSON, all within `timeout`.
    pub(crate) async fn get_json_at(&self, url: &ServerUrl, path: &str, timeout: Duration) -> Result<Value, CallError> {
        let call = Call { method: "GET", url, headers: &[], path, body: None, timeout, lines: None, text: false };
        let run = async {
            let addr = tokio::net::lookup_host((url.host.as_str(), url.port))
                .await
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| CallError::NoAddress(url.host.clone()))?;
            self.send(&call, addr).await
        };
        within(&call, run).await
    }

    async fn call_server(&self, server: &Server, call: Call<'_>) -> Result<Value, CallError> {
        let run = async {
            let addr = server.resolve().await.map_err(|e| unresolved(server, e))?;
            self.send(&call, addr).await
        };
        within(&call, run).await
    }

    /// One exchange, retried on a stale pooled connection.
    async fn send(&self, call: &Call<'_>, addr: std::net::SocketAddr) -> Result<Value, CallError> {
        let url = call.url;
        let mut peer = pingora::upstreams::peer::HttpPeer::new(addr, url.tls, url.host.clone());
        peer.options.connection_timeout = Some(call.timeout);
        let mut stale = 0;
        loop {
            let (up, reused) = self.connector.get_http_session(&peer).await.map_err(CallError::Connect)?;
            match self.exchange(up, &peer, call).await {
                // A pooled connection the server closed while idle (Go's servers do): that
                // says nothing about the server's health; ask again on another connection.
                Err(Failure::BeforeAnswer(e)) if reused && stale < STALE_RETRIES => {
                    log::debug!("stale pooled connection to {}: {e}", url.as_str());
                    stale += 1;
                }
                result => return result.map_err(Failure::into_error),
            }
        }
    }

    async fn exchange(
        &self,
        mut up: pingora::protocols::http::client::HttpSession,
        peer: &pingora::upstreams::peer::HttpPeer,
        call: &Call<'_>,
    ) -> Result<Value, Failure> {
        let Call { method, url, headers, path, timeout, .. } = *call;
        let body = call.body.clone();
        let broke = |source| CallError::Exchange { method, path: path.to_string(), source };
        let before = |e: pingora::BError| Failure::BeforeAnswer(broke(e));
        let header = |e| Failure::Other(CallError::Header(e));
        up.set_read_timeout(Some(timeout));
        up.set_write_timeout(Some(timeout));
        let full = format!("{}{path}", url.base_path);
        let mut req = RequestHeader::build(method, full.as_bytes(), Some(4)).map_err(header)?;
        req.insert_header(http::header::HOST, url.authority()).map_err(header)?;
        for (name, value) in headers {
            req.insert_header(name.clone(), value.clone()).map_err(header)?;
        }
        if let Some(b) = &body {
            req.insert_header(http::header::CONTENT_TYPE, "application/json").map_err(header)?;
            req.insert_header(http::header::CONTENT_LENGTH, b.len()).map_err(header)?;
        }
        up.write_request_header(Box::new(req)).await.map_err(before)?;
        if let Some(b) = body {
            up.write_request_body(b, true).await.map_err(before)?;
        }
        up.finish_request_body().await.map_err(before)?;
        up.read_response_header().await.map_err(|e| match e.etype() {
            pingora::ErrorType::ReadTimedout => Failure::Other(broke(e)),
            _ => before(e),
        })?;
        let status = up.response_header().map_or(0, |h| h.status.as_u16());
        let lines = call.lines.filter(|_| (200..300).contains(&status));
        let mut answer = Vec::new();
        while let Some(chunk) = up.read_response_body().await.map_err(|e| Failure::Other(broke(e)))? {
            if let Some(tx) = lines {
                answer.extend_from_slice(&chunk);
                while let Some(end) = memchr::memchr(b'\n', &answer) {
                    let line: Vec<u8> = answer.drain(..=end).collect();
                    forward_line(&line, tx).map_err(Failure::Other)?;
                }
                continue;
            }
            if answer.len() + chunk.len() > MAX_JSON_BYTES {
                return Err(Failure::Other(CallError::TooLarge { method, path: path.to_string() }));
            }
            answer.extend_from_slice(&chunk);
        }
        if up.response_done() {
            self.connector.release_http_session(up, peer, Some(Duration::from_secs(60))).await;
        }
        if !(200..300).contains(&status) {
            let said = serde_json::from_slice::<Value>(&answer)
                .ok()
                .and_then(|v| v.get("error").map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_string)));
            return Err(Failure::Other(CallError::Status { method, path: path.to_string(), status, said }));
        }
        if let Some(tx) = lines {
            forward_line(&answer, tx).map_err(Failure::Other)?;
            return Ok(Value::Null);
        }
        if call.text {
            return Ok(Value::String(String::from_utf8_lossy(&answer).into_owned()));
        }
        if answer.iter().all(u8::is_ascii_whitespace) && call.body.is_some() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&answer)
            .map_err(|source| Failure::Other(CallError::NotJson { method, path: path.to_string(), source }))
    }
}

impl Client {
    /// Sends `method` `path` to `server` with a body of `length` bytes that arrives on `chunks`
    /// (a blob upload, streamed as it comes: nothing is held whole); `HEAD` with no body.
    /// Returns the status and the server's `error`, if it gave one. `idle` bounds each write
    /// and the wait for the answer.
    pub(crate) async fn send_stream(
        &self,
        method: &'static str,
        server: &Server,
        path: &str,
        length: Option<u64>,
        mut chunks: tokio::sync::mpsc::Receiver<bytes::Bytes>,
        idle: Duration,
    ) -> Result<(u16, Option<String>), CallError> {
        let addr = server.resolve().await.map_err(|e| unresolved(server, e))?;
        let url = &server.url;
        let mut peer = pingora::upstreams::peer::HttpPeer::new(addr, url.tls, url.host.clone());
        peer.options.connection_timeout = Some(idle);
        // A connector of its own, so a fresh connection: a body that cannot be sent again must
        // not meet a pooled one the server closed while idle.
        let (mut up, _) = Connector::new(None).get_http_session(&peer).await.map_err(CallError::Connect)?;
        up.set_read_timeout(Some(idle));
        up.set_write_timeout(Some(idle));
        let full = format!("{}{path}", url.base_path);
        let fail = |source| CallError::Exchange { method, path: path.to_string(), source };
        let mut req = RequestHeader::build(method, full.as_bytes(), Some(4)).map_err(fail)?;
        req.insert_header(http::header::HOST, url.authority()).map_err(fail)?;
        for (name, value) in &server.credentials.headers {
            req.insert_header(name.clone(), value.clone()).map_err(fail)?;
        }
        match length {
            Some(n) => req.insert_header(http::header::CONTENT_LENGTH, n).map_err(fail)?,
            // A body of unknown length (the client sent it chunked): chunked on to the server.
            None if method != "HEAD" => req.insert_header(http::header::TRANSFER_ENCODING, "chunked").map_err(fail)?,
            None => {}
        }
        up.write_request_header(Box::new(req)).await.map_err(fail)?;
        while let Some(chunk) = chunks.recv().await {
            up.write_request_body(chunk, false).await.map_err(fail)?;
        }
        up.finish_request_body().await.map_err(fail)?;
        up.read_response_header().await.map_err(fail)?;
        let status = up.response_header().map_or(0, |h| h.status.as_u16());
        let mut answer: Vec<u8> = Vec::new();
        if method != "HEAD" {
            while let Some(chunk) = up.read_response_body().await.map_err(fail)? {
                if answer.len() < 64 * 1024 {
                    answer.extend_from_slice(&chunk);
                }
            }
        }
        let said = serde_json::from_slice::<Value>(&answer)
            .ok()
            .and_then(|v| v.get("error").map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_string)));
        Ok((status, said))
    }
}

/// One NDJSON line to `tx`; an `{"error": ...}` line is the call's error, in the server's own
/// words. Blank lines pass.
fn forward_line(line: &[u8], tx: &tokio::sync::mpsc::UnboundedSender<Value>) -> Result<(), CallError> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let v: Value = serde_json::from_slice(line).map_err(CallError::ProgressNotJson)?;
    if let Some(e) = v.get("error") {
        return Err(CallError::Said(e.as_str().map_or_else(|| e.to_string(), str::to_string)));
    }
    let _ = tx.send(v);
    Ok(())
}

/// Runs `run` within the call's timeout.
async fn within(
    call: &Call<'_>,
    run: impl std::future::Future<Output = Result<Value, CallError>>,
) -> Result<Value, CallError> {
    tokio::time::timeout(call.timeout, run).await.unwrap_or_else(|_| {
        Err(CallError::Timeout { method: call.method, path: call.path.to_string(), timeout: call.timeout })
    })
}

fn unresolved(server: &Server, source: std::io::Error) -> CallError {
    CallError::Resolve { host: server.url.host.clone(), source }
}
