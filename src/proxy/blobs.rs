//! `/api/blobs/{digest}` for `ollama create` from local files (and Open WebUI's GGUF upload):
//! the client asks whether the blob is there (HEAD) and uploads it (POST) before the create
//! that names it. A blob must be on every server the create goes to, so a HEAD is 200 only
//! when every healthy Ollama server has it, and a POST streams the body to all of them at
//! once as it arrives (nothing held whole: blobs are model files).

use std::time::Duration;

use bytes::Bytes;
use pingora::proxy::Session;
use serde_json::json;

use super::ctx::RequestCtx;
use super::own::OwnAnswers;
use crate::protocol::api::ApiError;
use crate::protocol::ollama::Kind;

/// Chunks in flight per server: the slowest server sets the pace of the upload.
const IN_FLIGHT: usize = 8;

impl OwnAnswers {
    pub(super) async fn blob(&self, session: &mut Session, ctx: &mut RequestCtx, digest: &str) {
        if !is_digest(digest) {
            // Only a digest is ever put into the path the servers get: no dot segments or
            // encoded slashes, in any spelling, can reach them.
            let shown: String = digest.chars().take(80).collect();
            let e = ApiError::new(
                400,
                "invalid_digest",
                format!("{shown:?} is not a blob digest: expected sha256: (or sha256-) and 64 hexadecimal digits"),
            );
            return self.out.error(session, ctx, e).await;
        }
        let restricted = ctx.key.as_ref().is_some_and(|k| k.restricted());
        if restricted && session.req_header().method == http::Method::POST {
            // A blob is stored on every server and can back any model: a key limited to some
            // models makes its models from those (`from`), not from uploaded files.
            let e = ApiError::new(
                403,
                "blob_not_allowed",
                "uploading blobs needs an API key that may use every model (models: [\"*\"])",
            );
            return self.out.error(session, ctx, e).await;
        }
        let path = format!("/api/blobs/{digest}");
        let fleet = self.parts.fleet.load_full();
        let servers: Vec<_> = fleet.servers.iter().filter(|s| s.kind == Kind::Ollama && s.healthy()).cloned().collect();
        if servers.is_empty() {
            let e =
                ApiError::new(503, "no_server_available", "no healthy Ollama server to keep the blob").retry_after(1);
            return self.out.error(session, ctx, e).await;
        }
        let idle = self.read_timeout.min(Duration::from_secs(60));
        let upload = session.req_header().method == http::Method::POST;
        let length = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let mut senders = Vec::new();
        let mut calls = Vec::new();
        for s in &servers {
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(IN_FLIGHT);
            if upload {
                senders.push(tx);
            }
            let (client, server, path) = (self.parts.client.clone(), s.clone(), path.clone());
            let method = if upload { "POST" } else { "HEAD" };
            calls.push(tokio::spawn(async move {
                let result = client.send_stream(method, &server, &path, length.filter(|_| upload), rx, idle).await;
                let result = result.map_err(|e| e.to_string());
                (server.url.as_str().to_string(), result)
            }));
        }
        if upload {
            let mut sent = 0u64;
            loop {
                match session.read_request_body().await {
                    Ok(Some(chunk)) => {
                        sent += chunk.len() as u64;
                        for tx in &senders {
                            // A server that failed has dropped its receiver; the rest go on.
                            let _ = tx.send(chunk.clone()).await;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        ctx.error = Some(format!("blob upload cut: {e}"));
                        session.set_keepalive(None);
                        return;
                    }
                }
            }
            ctx.bytes_in = sent;
            drop(senders);
        }
        let mut failed = Vec::new();
        let mut missing = 0;
        let mut refused: Option<(u16, String)> = None;
        for call in calls {
            // A task that did not finish is a server that did not get the blob.
            let (server, result) = call.await.unwrap_or_else(|e| ("a server".into(), Err(format!("upload task: {e}"))));
            match result {
                Ok((status, _)) if (200..300).contains(&status) => {}
                Ok((404, _)) if !upload => missing += 1,
                Ok((status, said)) if (400..500).contains(&status) => {
                    let why = said.unwrap_or_else(|| format!("HTTP {status}"));
                    refused.get_or_insert((status, why.clone()));
                    failed.push(format!("{server}: {why}"));
                }
                Ok((status, said)) => {
                    failed.push(format!("{server}: {}", said.unwrap_or_else(|| format!("HTTP {status}"))))
                }
                Err(e) => failed.push(format!("{server}: {e}")),
            }
        }
        if !upload {
            // Present only where every server has it: otherwise the client uploads it.
            let status = if missing == 0 && failed.is_empty() { 200 } else { 404 };
            ctx.status = status;
            return self.out.send(session, ctx, status, "text/plain; charset=utf-8", Bytes::new()).await;
        }
        match (failed.is_empty(), refused) {
            (true, _) => self.out.send(session, ctx, 201, "text/plain; charset=utf-8", Bytes::new()).await,
            // The servers refused the blob itself (a digest that does not match): the client's mistake.
            (false, Some((status, why))) if failed.len() == servers.len() => {
                self.out.json(session, ctx, status, &json!({ "error": why })).await
            }
            (false, _) => {
                let e = ApiError::new(
                    502,
                    "blob_upload_failed",
                    format!("blob {digest} not stored on {}", failed.join("; ")),
                );
                self.out.error(session, ctx, e).await
            }
        }
    }
}

/// Ollama's own rule for a blob's name: `sha256:` or `sha256-`, then 64 hexadecimal digits.
fn is_digest(digest: &str) -> bool {
    let hex = digest.strip_prefix("sha256:").or_else(|| digest.strip_prefix("sha256-"));
    hex.is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_digest_is_a_blob_name() {
        let hex = "0123456789abcdef".repeat(4);
        assert!(super::is_digest(&format!("sha256:{hex}")));
        assert!(super::is_digest(&format!("sha256-{}", hex.to_uppercase())));
        for bad in [
            format!("sha256:{}", &hex[1..]),
            format!("sha256:{hex}0"),
            format!("sha512:{hex}"),
            format!("sha256:{}/..", &hex[..61]),
            "%2e%2e/%2e%2e/api/chat".to_string(),
            "..".to_string(),
            format!("sha256:{}%2F", &hex[..61]),
        ] {
            assert!(!super::is_digest(&bad), "{bad}");
        }
    }
}
