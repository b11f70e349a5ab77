//! Who may call: the request's id, its header's size, CORS (the Origin, and preflights), the
//! per-address rate limit, the API key, and the key's own limits.
//!
//! Applied to model calls and fleet views; drover's liveness and metrics pages (/, /health,
//! /metrics) stay open for load balancers and scrapers, and the admin API has its own token.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use super::ctx::RequestCtx;
use super::respond::request_host;
use super::respond::Responder;
use crate::admin::guard::AdminGuard;
use crate::config::Settings;
use crate::edge::cors::{Cors, Verdict};
use crate::edge::keys::{Key, Keyring};
use crate::edge::limits::{retry_after_seconds, ClientLimiter};
use crate::protocol::api::{ApiError, Endpoint};
use crate::state::shared::{BucketUse, Shared};

/// The admission stage: what it takes to judge who may call.
pub(crate) struct Admission {
    cors: Cors,
    keys: Arc<Keyring>,
    require_keys: bool,
    /// Listening on loopback only, without keys: every API request's Host must be one a web
    /// page cannot rebind (as Ollama checks when bound to loopback; guard.rs host_allowed).
    host_guard: bool,
    /// The admin token's guard: model management as the admin needs no key.
    guard: Arc<AdminGuard>,
    client_limit: Option<ClientLimiter>,
    /// The buckets judged fleet-wide when Redis is configured (state/shared.rs).
    shared: Arc<Shared>,
    max_header_bytes: usize,
    next_id: AtomicU64,
    id_prefix: String,
    out: Responder,
}

impl Admission {
    pub(crate) fn new(
        settings: &Settings,
        keys: Arc<Keyring>,
        guard: Arc<AdminGuard>,
        shared: Arc<Shared>,
    ) -> Admission {
        let boot = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Admission {
            cors: Cors::new(&settings.cors_origins),
            keys,
            require_keys: settings.require_keys,
            host_guard: settings.listen.ip().is_loopback() && settings.tls.is_none() && !settings.require_keys,
            guard,
            client_limit: settings
                .client_requests_per_minute
                .map(|n| ClientLimiter::new(n, settings.max_tracked_clients)),
            shared,
            max_header_bytes: settings.load_balancer.max_header_bytes,
            next_id: AtomicU64::new(0),
            id_prefix: format!("{:x}{:x}", boot.as_secs(), std::process::id()),
            out: Responder::new(settings),
        }
    }

    /// The client's X-Request-Id when it sent a usable one, else a new one.
    pub(super) fn request_id(&self, session: &Session) -> String {
        session
            .req_header()
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .map(str::to_string)
            .unwrap_or_else(|| {
                let n = self.next_id.fetch_add(1, Ordering::Relaxed);
                format!("{}-{n:x}", self.id_prefix)
            })
    }

    /// A header block over load_balancer.max_header_bytes: 431.
    pub(super) fn header_refused(&self, req: &pingora::http::RequestHeader) -> Option<ApiError> {
        let size = header_bytes(req);
        (size > self.max_header_bytes).then(|| {
            ApiError::new(
                431,
                "header_too_large",
                format!(
                    "the request header is {size} bytes, over the {} this server accepts (load_balancer.max_header_bytes)",
                    self.max_header_bytes
                ),
            )
        })
    }

    /// Checks a request against the limits and keys before anything else is done with it.
    pub(super) async fn admit(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        endpoint: &Endpoint,
    ) -> Result<(), ApiError> {
        use Endpoint::*;
        let model_call = matches!(endpoint, Routed(_));
        let guarded = model_call
            || matches!(endpoint, Tags | Ps | Models | Model(_) | Version | Status | LbStats | Management | Blob(_));
        if !guarded {
            return Ok(());
        }
        if self.host_guard {
            // A page on any site, its name rebound to 127.0.0.1, would otherwise drive the fleet
            // as the local user: only names it cannot rebind are answered.
            if !self.guard.host_allowed(request_host(session.req_header())) {
                let msg = "this drover listens on loopback only, without API keys, and answers only a loopback name or an address in Host: send Host: localhost, or add the name to admin.allowed_hosts";
                return Err(ApiError::new(403, "host_not_allowed", msg));
            }
        }
        let now = Instant::now();
        let ip = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let client_refused = |ip: std::net::IpAddr, wait| {
            crate::telemetry::metrics::RATE_LIMITED.with_label_values(&["client"]).inc();
            ApiError::new(
                429,
                "rate_limit_exceeded",
                format!("too many requests from {ip} (limits.client_requests_per_minute)"),
            )
            .retry_after(retry_after_seconds(wait))
        };
        // With Redis, the client's and the key's buckets are judged fleet-wide in one call
        // once the key is known (below); without it, here and by the key, in this process.
        let shared = self.shared.active();
        if !shared {
            if let (Some(limit), Some(ip)) = (&self.client_limit, ip) {
                limit.admit(ip, now).map_err(|wait| client_refused(ip, wait))?;
            }
        }
        let key = if self.require_keys {
            let headers = &session.req_header().headers;
            let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
            // Model management as the admin (the admin token, or loopback without one) needs no key.
            if matches!(endpoint, Management)
                && self.guard.authorize(ip, text("authorization")).is_ok()
                && self.guard.browser_refused(request_host(session.req_header()), text("origin")).is_none()
            {
                None
            } else {
                let presented = crate::edge::keys::presented(text("authorization"), text("x-api-key"));
                Some(self.keys.authenticate(presented)?)
            }
        } else {
            None
        };
        if shared {
            Box::pin(self.admit_shared(ip, key.as_deref().filter(|_| model_call))).await.map_err(
                |(i, wait, kind)| match kind {
                    Limit::Client => client_refused(ip.expect("a client bucket has an address"), wait),
                    Limit::Key => {
                        crate::telemetry::metrics::RATE_LIMITED.with_label_values(&["key"]).inc();
                        key.as_ref().expect("a key bucket has a key").refusal(i, wait)
                    }
                },
            )?;
        } else if let Some(k) = key.as_ref().filter(|_| model_call) {
            k.admit(now).inspect_err(|_| crate::telemetry::metrics::RATE_LIMITED.with_label_values(&["key"]).inc())?;
        }
        ctx.key = key;
        Ok(())
    }

    /// The request's buckets judged in Redis (shared.rs); when Redis fails mid-call, in
    /// this process after all. The error names the bucket that refused and for how long.
    async fn admit_shared(
        &self,
        ip: Option<std::net::IpAddr>,
        key: Option<&Key>,
    ) -> Result<(), (usize, Duration, Limit)> {
        let mut buckets = Vec::new();
        let mut kinds = Vec::new();
        if let (Some(limit), Some(ip)) = (&self.client_limit, ip) {
            buckets.push(BucketUse::client(ip, limit.per_minute()));
            kinds.push((Limit::Client, 0));
        }
        if let Some(k) = key {
            for (i, b) in BucketUse::of_key(k).into_iter().enumerate() {
                buckets.push(b);
                kinds.push((Limit::Key, i));
            }
        }
        match self.shared.admit(&buckets).await {
            Some(Ok(())) => Ok(()),
            Some(Err((i, wait))) => {
                let (kind, which) = kinds[i];
                Err((which, wait, kind))
            }
            None => {
                // Redis went away during the call: judge here, as without it.
                let now = Instant::now();
                if let (Some(limit), Some(ip)) = (&self.client_limit, ip) {
                    limit.admit(ip, now).map_err(|wait| (0, wait, Limit::Client))?;
                }
                if let Some(k) = key {
                    k.admit_local(now).map_err(|(i, wait)| (i, wait, Limit::Key))?;
                }
                Ok(())
            }
        }
    }

    /// CORS: records an allowed Origin for the answer's headers; answers a preflight (204) or
    /// a request from an origin not allowed (403) here. True when the request was answered.
    pub(super) async fn cors_refused(&self, session: &mut Session, ctx: &mut RequestCtx) -> bool {
        let req = session.req_header();
        let text = |name| req.headers.get(name).and_then(|v: &http::HeaderValue| v.to_str().ok());
        let host = request_host(req);
        match self.cors.judge(text(http::header::ORIGIN), host) {
            Verdict::NotCors => false,
            Verdict::Deny(origin) => {
                let msg =
                    format!("origin {origin:?} is not allowed; add it to cors.allowed_origins (patterns may use *)");
                self.out.error(session, ctx, ApiError::new(403, "origin_not_allowed", msg)).await;
                true
            }
            Verdict::Allow(origin) => {
                let preflight = req.method == http::Method::OPTIONS
                    && req.headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD);
                let asked = text(http::header::ACCESS_CONTROL_REQUEST_HEADERS).map(str::to_string);
                ctx.cors_origin = Some(origin);
                if !preflight {
                    return false;
                }
                let mut h = ResponseHeader::build(204, Some(6)).expect("valid status");
                h.insert_header(http::header::ACCESS_CONTROL_ALLOW_METHODS, crate::edge::cors::ALLOW_METHODS)
                    .expect("static");
                if let Some(asked) = asked {
                    h.insert_header(http::header::ACCESS_CONTROL_ALLOW_HEADERS, asked).expect("a header value");
                }
                h.insert_header(http::header::ACCESS_CONTROL_MAX_AGE, crate::edge::cors::MAX_AGE).expect("static");
                h.insert_header(http::header::CONTENT_LENGTH, "0").expect("static");
                ctx.status = 204;
                Box::pin(self.out.write(session, ctx, h, Bytes::new())).await;
                true
            }
        }
    }
}

/// The size of a request header block as it came on the wire (request line and fields).
fn header_bytes(req: &pingora::http::RequestHeader) -> usize {
    let fields: usize = req.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    req.method.as_str().len() + req.raw_path().len() + 12 + fields
}

/// Which limit refused a request.
#[derive(Clone, Copy)]
enum Limit {
    Client,
    Key,
}
