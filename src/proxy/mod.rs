//! The Pingora `ProxyHttp`: each hook is one stage of a request, implemented in the file named after it.
//!
//! - `request_filter`: classify; answer drover's own endpoints (local.rs); for a model-routed
//!   call read and parse the body, keeping its tail in Pingora's retry buffer, and wait for
//!   a first route (wait.rs).
//! - `upstream_peer`, `upstream_request_filter`, `request_body_filter`, `fail_to_connect`,
//!   `error_while_proxy`, `upstream_response_filter`: one attempt on one server, and whether
//!   a failure is retried elsewhere (upstream.rs).
//! - `response_filter`, `response_body_filter`, `fail_to_proxy`: the answer on its way back,
//!   and errors in the client's format (relay.rs).
//! - `logging`: metrics and the access-log line (account.rs).

mod account;
mod admit;
mod cached;
mod ctx;
mod local;
mod relay;
mod upstream;
mod wait;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::Error;

pub use ctx::RequestCtx;
pub use upstream::STALE_RETRIES;
pub use wait::{unknown_model, Scheduler};

use crate::admin::Admin;
use crate::api::{classify, Api, ApiError, Endpoint};
use crate::config::Settings;
use crate::fleet::Fleet;
use crate::reload::{Reloader, Tally};

/// The balancer: one per process, shared by every request.
pub struct Drover {
    fleet: Arc<ArcSwap<Fleet>>,
    scheduler: Scheduler,
    tally: Arc<Tally>,
    pub(crate) admin: Admin,
    access_log: crate::accesslog::AccessLog,
    cors: crate::cors::Cors,
    keys: Arc<crate::keys::Keyring>,
    require_keys: bool,
    client_limit: Option<crate::limits::ClientLimiter>,
    compression_level: u32,
    compression_min_bytes: usize,
    max_body_bytes: usize,
    max_header_bytes: usize,
    max_retry_count: u32,
    connect_timeout: Duration,
    read_timeout: Duration,
    config_source: Option<String>,
    database: String,
    started: Instant,
    next_id: AtomicU64,
    id_prefix: String,
    /// The last errors clients got, for the dashboard.
    recent_errors: crate::dashboard::RecentErrors,
    /// Limits and cooldowns shared with other drovers through Redis (shared.rs).
    pub(crate) shared: Arc<crate::shared::Shared>,
    /// Answers to deterministic requests (cache.rs).
    cache: crate::cache::ResponseCache,
    /// Conversation memory (memory.rs).
    memory: Arc<crate::memory::Memory>,
}

impl Drover {
    /// The balancer over the shared parts serve.rs builds: the fleet snapshot, the reloader
    /// (store, tally) and the resource check.
    pub fn new(
        settings: Arc<Settings>,
        fleet: Arc<ArcSwap<Fleet>>,
        reloader: Arc<Reloader>,
        resources: Arc<crate::resources::ResourceCheck>,
        shared: Arc<crate::shared::Shared>,
    ) -> Drover {
        let boot = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let scheduler = Scheduler::new(&settings, resources.clone());
        let client = Arc::new(crate::client::Client::default());
        let keeper = Arc::new(crate::required::Keeper::new(&settings, fleet.clone(), client.clone()));
        Drover {
            access_log: crate::accesslog::AccessLog::new(&settings.access_log),
            cors: crate::cors::Cors::new(&settings.cors_origins),
            keys: reloader.keys.clone(),
            require_keys: settings.require_keys,
            client_limit: settings.client_requests_per_minute.map(crate::limits::ClientLimiter::new),
            compression_level: settings.compression_level,
            compression_min_bytes: settings.compression_min_bytes,
            tally: reloader.tally.clone(),
            admin: Admin {
                settings: settings.clone(),
                client,
                keeper,
                resources,
                fleet: fleet.clone(),
                reloader: reloader.clone(),
            },
            scheduler,
            fleet,
            max_body_bytes: settings.load_balancer.max_body_bytes,
            max_header_bytes: settings.load_balancer.max_header_bytes,
            max_retry_count: settings.load_balancer.max_retry_count,
            connect_timeout: settings.http_client.connect_timeout,
            read_timeout: settings.http_client.read_timeout,
            config_source: settings.source.as_ref().map(|p| p.display().to_string()),
            database: crate::store::redact_url(&settings.database_url),
            started: Instant::now(),
            next_id: AtomicU64::new(0),
            id_prefix: format!("{:x}{:x}", boot.as_secs(), std::process::id()),
            recent_errors: Default::default(),
            cache: crate::cache::ResponseCache::new(settings.cache.clone(), shared.clone()),
            memory: Arc::new(crate::memory::Memory::new(settings.memory.clone(), shared.clone(), reloader.clone())),
            shared,
        }
    }
}

#[async_trait]
impl ProxyHttp for Drover {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    /// Pingora's response compression (gzip, zstd, brotli by Accept-Encoding), turned off per
    /// answer for streams and small bodies (relay.rs, local.rs).
    fn init_downstream_modules(&self, modules: &mut pingora::modules::http::HttpModules) {
        modules.add_module(pingora::modules::http::compression::ResponseCompressionBuilder::enable(
            self.compression_level,
        ));
    }

    /// Answers drover's own endpoints; for a model-routed call, reads the body and takes a first route.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> pingora::Result<bool> {
        ctx.request_id = self.request_id(session);
        ctx.api = Api::of_path(session.req_header().uri.path());
        let size = header_bytes(session.req_header());
        if size > self.max_header_bytes {
            let e = ApiError::new(
                431,
                "header_too_large",
                format!(
                    "the request header is {size} bytes, over the {} this server accepts (load_balancer.max_header_bytes)",
                    self.max_header_bytes
                ),
            );
            session.set_keepalive(None);
            self.error(session, ctx, e).await;
            return Ok(true);
        }
        if self.cors_refused(session, ctx).await {
            return Ok(true);
        }
        let endpoint = {
            let req = session.req_header();
            classify(&req.method, req.uri.path())
        };
        if let Err(e) = self.admit(session, ctx, &endpoint).await {
            self.error(session, ctx, e).await;
            return Ok(true);
        }
        match endpoint {
            Endpoint::Routed { api, native } => {
                ctx.api = api;
                Ok(self.route(session, ctx, native).await)
            }
            other => {
                self.answer(session, ctx, other).await;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut RequestCtx) -> pingora::Result<Box<HttpPeer>> {
        self.peer(session, ctx).await
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if let Some(r) = ctx.routed.as_deref_mut() {
            r.corked = upstream::cork(fd);
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        self.prepare_request(upstream_request, ctx)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if let Some(r) = ctx.routed.as_deref_mut() {
            // Called with the retry buffer (the body's tail) at the start of every attempt:
            // the server gets the whole rewritten body instead, once.
            *body = std::mem::take(&mut r.payload_armed).then(|| r.payload.clone());
            if let Some(fd) = r.corked.take() {
                upstream::uncork_soon(fd);
            }
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        self.connect_failed(ctx, e)
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        self.attempt_failed(session, ctx, e, client_reused)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        self.check_status(session, upstream_response, ctx).await
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        self.relay_header(upstream_response, ctx)?;
        if !self.worth_compressing(upstream_response) {
            no_compression(session);
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Option<Duration>> {
        self.relay_body(body.as_ref(), end_of_stream, ctx);
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        self.give_up(session, e, ctx).await
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if e.is_none() {
            self.keep_answer(session, ctx).await;
        }
        self.log(session, ctx);
        // The slot and any memory reservation are given back now, not when Pingora drops the context.
        ctx.routed = None;
    }

    /// drover logs each failure itself, with the request id and the server.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        true
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
        _error: &Error,
        _context: ProxyWarnLogContext,
    ) -> bool {
        true
    }
}

impl Drover {
    /// Whether an answer may be compressed: a whole one (never a stream, whose lines would
    /// wait in the encoder) of at least compression.min_bytes. Whether the client accepts
    /// an encoding, and whether the answer is encoded already, Pingora's module decides.
    fn worth_compressing(&self, resp: &ResponseHeader) -> bool {
        let text = |name| resp.headers.get(name).and_then(|v: &http::HeaderValue| v.to_str().ok());
        let length = text(http::header::CONTENT_LENGTH).and_then(|l| l.parse::<usize>().ok());
        if self.compression_level == 0 || length.is_none_or(|n| n < self.compression_min_bytes) {
            return false;
        }
        let content_type = text(http::header::CONTENT_TYPE).unwrap_or("").to_ascii_lowercase();
        !(content_type.starts_with("text/event-stream") || content_type.starts_with("application/x-ndjson"))
    }
}

/// Turns response compression off for this answer.
fn no_compression(session: &mut Session) {
    use pingora::modules::http::compression::ResponseCompression;
    if let Some(c) = session.downstream_modules_ctx.get_mut::<ResponseCompression>() {
        c.adjust_level(0);
    }
}

/// The size of a request header block as it came on the wire (request line and fields).
fn header_bytes(req: &RequestHeader) -> usize {
    let fields: usize = req.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    req.method.as_str().len() + req.raw_path().len() + 12 + fields
}
