//! A small JSON GET client over Pingora's connector, for health checks and inventory refreshes.

use std::time::Duration;

use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use serde_json::Value;

use crate::fleet::Server;
use crate::ollama::ServerUrl;

/// Pooled connections found closed, one after another, before a GET counts as failed.
const STALE_RETRIES: u32 = 4;

/// Responses larger than this are not inventories: refuse them rather than buffer them.
const MAX_JSON_BYTES: usize = 32 * 1024 * 1024;

/// Why a GET failed: before any answer (a stale pooled connection looks like this), or otherwise.
enum Failure {
    BeforeAnswer(String),
    Other(String),
}

impl Failure {
    fn into_message(self) -> String {
        match self {
            Failure::BeforeAnswer(m) | Failure::Other(m) => m,
        }
    }
}

pub struct Client {
    connector: Connector,
}

impl Default for Client {
    fn default() -> Self {
        Client { connector: Connector::new(None) }
    }
}

impl Client {
    /// GETs `path` on `server` and parses the answer as JSON, all within `timeout`.
    pub async fn get_json(&self, server: &Server, path: &str, timeout: Duration) -> Result<Value, String> {
        let get = async {
            let addr = server.resolve().await.map_err(|e| format!("cannot resolve {}: {e}", server.url.host))?;
            self.get(&server.url, &server.credentials.headers, addr, path, timeout).await
        };
        tokio::time::timeout(timeout, get)
            .await
            .unwrap_or_else(|_| Err(format!("GET {path}: no answer within {timeout:?}")))
    }

    /// GETs `path` at `url` (resolving its host) and parses the answer as JSON, all within `timeout`.
    pub async fn get_json_at(&self, url: &ServerUrl, path: &str, timeout: Duration) -> Result<Value, String> {
        let get = async {
            let addr = tokio::net::lookup_host((url.host.as_str(), url.port))
                .await
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| format!("cannot resolve {}", url.host))?;
            self.get(url, &[], addr, path, timeout).await
        };
        tokio::time::timeout(timeout, get)
            .await
            .unwrap_or_else(|_| Err(format!("GET {path}: no answer within {timeout:?}")))
    }

    async fn get(
        &self,
        url: &ServerUrl,
        headers: &[(http::HeaderName, http::HeaderValue)],
        addr: std::net::SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> Result<Value, String> {
        let mut peer = pingora::upstreams::peer::HttpPeer::new(addr, url.tls, url.host.clone());
        peer.options.connection_timeout = Some(timeout);
        let mut stale = 0;
        loop {
            let (up, reused) = self.connector.get_http_session(&peer).await.map_err(|e| format!("connect: {e}"))?;
            match self.exchange(up, &peer, url, headers, path, timeout).await {
                // A pooled connection the server closed while idle (Go's servers do): that
                // says nothing about the server's health; ask again on another connection.
                Err(Failure::BeforeAnswer(e)) if reused && stale < STALE_RETRIES => {
                    log::debug!("stale pooled connection to {}: {e}", url.as_str());
                    stale += 1;
                }
                result => return result.map_err(Failure::into_message),
            }
        }
    }

    async fn exchange(
        &self,
        mut up: pingora::protocols::http::client::HttpSession,
        peer: &pingora::upstreams::peer::HttpPeer,
        url: &ServerUrl,
        headers: &[(http::HeaderName, http::HeaderValue)],
        path: &str,
        timeout: Duration,
    ) -> Result<Value, Failure> {
        let before = |e: pingora::BError| Failure::BeforeAnswer(format!("GET {path}: {e}"));
        up.set_read_timeout(Some(timeout));
        up.set_write_timeout(Some(timeout));
        let full = format!("{}{path}", url.base_path);
        let mut req =
            RequestHeader::build("GET", full.as_bytes(), Some(2)).map_err(|e| Failure::Other(e.to_string()))?;
        req.insert_header(http::header::HOST, url.authority()).map_err(|e| Failure::Other(e.to_string()))?;
        for (name, value) in headers {
            req.insert_header(name.clone(), value.clone()).map_err(|e| Failure::Other(e.to_string()))?;
        }
        up.write_request_header(Box::new(req)).await.map_err(before)?;
        up.finish_request_body().await.map_err(before)?;
        up.read_response_header().await.map_err(|e| match e.etype() {
            pingora::ErrorType::ReadTimedout => Failure::Other(format!("GET {path}: {e}")),
            _ => before(e),
        })?;
        let status = up.response_header().map_or(0, |h| h.status.as_u16());
        let mut body = Vec::new();
        while let Some(chunk) = up.read_response_body().await.map_err(|e| Failure::Other(format!("GET {path}: {e}")))? {
            if body.len() + chunk.len() > MAX_JSON_BYTES {
                return Err(Failure::Other(format!("GET {path}: answer larger than {MAX_JSON_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        if up.response_done() {
            self.connector.release_http_session(up, peer, Some(Duration::from_secs(60))).await;
        }
        if !(200..300).contains(&status) {
            return Err(Failure::Other(format!("GET {path}: HTTP {status}")));
        }
        serde_json::from_slice(&body).map_err(|e| Failure::Other(format!("GET {path}: not JSON ({e})")))
    }
}
