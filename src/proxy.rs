//! The Pingora service: every request is classified, then answered from the fleet view or forwarded by model.
//!
//! drover is a Pingora `HttpServerApp`, not a `ProxyHttp`: it answers every request itself
//! (forwarding model-routed ones with Pingora's connector, see forward.rs), so Pingora's
//! proxy state machine would be carried for nothing on each request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession as Session;
use pingora::server::ShutdownWatch;
use pingora::ErrorType;
use serde_json::Value;

use crate::accesslog::Line;
use crate::admin::Admin;
use crate::api::{classify, Api, ApiError, Endpoint};
use crate::body::{read_bounded, RoutableBody};
use crate::config::Settings;
use crate::fleet::Fleet;
use crate::forward::{Forwarder, Outcome};
use crate::reload::Reloader;
use crate::usage::Usage;
use crate::view;

/// Admin requests are small JSON objects.
const ADMIN_BODY_LIMIT: usize = 1024 * 1024;

/// What one request did, for the log line written when it ends.
pub struct RequestCtx {
    pub request_id: String,
    pub started: Instant,
    pub api: Api,
    pub model: Option<String>,
    pub actual_model: Option<String>,
    pub server: Option<String>,
    pub attempts: u32,
    pub status: u16,
    pub ttfb: Option<Duration>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub error: Option<String>,
    /// What the answer said it used (tokens, load time).
    pub usage: Usage,
}

pub struct Drover {
    fleet: Arc<ArcSwap<Fleet>>,
    access_log: crate::accesslog::AccessLog,
    forwarder: Forwarder,
    admin: Admin,
    max_body_bytes: usize,
    config_source: Option<String>,
    database: String,
    started: Instant,
    next_id: AtomicU64,
    id_prefix: String,
}

impl Drover {
    pub fn new(settings: Arc<Settings>, fleet: Arc<ArcSwap<Fleet>>, reloader: Arc<Reloader>) -> Drover {
        let boot = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let forwarder = Forwarder::new(&settings, reloader.tally.clone());
        Drover {
            access_log: crate::accesslog::AccessLog::new(&settings.access_log),
            admin: Admin {
                settings: settings.clone(),
                resources: forwarder.resources.clone(),
                fleet: fleet.clone(),
                reloader,
            },
            forwarder,
            fleet,
            max_body_bytes: settings.load_balancer.max_body_bytes,
            config_source: settings.source.as_ref().map(|p| p.display().to_string()),
            database: crate::redact_url(&settings.database_url),
            started: Instant::now(),
            next_id: AtomicU64::new(0),
            id_prefix: format!("{:x}{:x}", boot.as_secs(), std::process::id()),
        }
    }

    /// The resource check, for the metrics collector.
    pub fn resources(&self) -> Arc<crate::resources::ResourceCheck> {
        self.forwarder.resources.clone()
    }

    async fn answer(&self, session: &mut Session, ctx: &mut RequestCtx) {
        let endpoint = {
            let req = session.req_header();
            classify(&req.method, req.uri.path())
        };
        let fleet = self.fleet.load_full();
        match endpoint {
            Endpoint::Routed { api, native } => {
                ctx.api = api;
                self.route(session, ctx, &fleet, native).await
            }
            Endpoint::Tags => self.json(session, ctx, 200, &view::tags(&fleet)).await,
            Endpoint::Ps => self.json(session, ctx, 200, &view::ps(&fleet)).await,
            Endpoint::Models => {
                ctx.api = Api::OpenAi;
                self.json(session, ctx, 200, &view::models(&fleet)).await
            }
            Endpoint::Model(name) => {
                ctx.api = Api::OpenAi;
                match view::model(&fleet, &name) {
                    Some(m) => self.json(session, ctx, 200, &m).await,
                    None => self.error(session, ctx, crate::forward::unknown_model(&fleet, &name)).await,
                }
            }
            Endpoint::Version => self.json(session, ctx, 200, &view::version(&fleet)).await,
            Endpoint::Metrics => {
                let (body, content_type) = crate::metrics::render();
                self.send(session, ctx, 200, &content_type, body.into()).await
            }
            Endpoint::Root => {
                self.send(session, ctx, 200, "text/plain; charset=utf-8", "Ollama is running".into()).await
            }
            Endpoint::Health => {
                let (code, body) = view::health(&fleet, &self.admin.reloader.state());
                self.json(session, ctx, code, &body).await
            }
            Endpoint::Status => {
                let body = view::status(&fleet, self.started.elapsed(), self.config_source.as_deref(), &self.database);
                self.json(session, ctx, 200, &body).await
            }
            Endpoint::LbStats => {
                let body = view::lb_stats(&fleet, self.forwarder.queue_len());
                self.json(session, ctx, 200, &body).await
            }
            Endpoint::Admin => self.admin(session, ctx).await,
            Endpoint::Management => {
                let e = ApiError::new(
                    403,
                    "management_not_proxied",
                    "model management (pull, push, create, copy, delete) changes one server's disk; \
                     run it against that server directly, then drover discovers the change",
                );
                self.error(session, ctx, e).await
            }
            Endpoint::NotFound(api) => {
                ctx.api = api;
                let path = session.req_header().uri.path().to_string();
                self.error(session, ctx, ApiError::new(404, "not_found", format!("no such endpoint: {path}"))).await
            }
            Endpoint::MethodNotAllowed(api) => {
                ctx.api = api;
                let req = session.req_header();
                let msg = format!("{} is not allowed on {}", req.method, req.uri.path());
                self.error(session, ctx, ApiError::new(405, "method_not_allowed", msg)).await
            }
        }
    }

    async fn admin(&self, session: &mut Session, ctx: &mut RequestCtx) {
        let client = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let auth = session.req_header().headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if let Err((code, body)) = self.admin.authorize(client, auth) {
            session.set_keepalive(None);
            return self.json(session, ctx, code, &body).await;
        }
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let body = if method == http::Method::POST || method == http::Method::PUT {
            match read_bounded(session, ADMIN_BODY_LIMIT).await {
                Ok(b) => Some(b),
                Err(e) => {
                    session.set_keepalive(None);
                    return self.error(session, ctx, e.into()).await;
                }
            }
        } else {
            None
        };
        let (code, reply) = self.admin.handle(&method, &path, body.as_deref()).await;
        if code >= 400 {
            ctx.error = reply.get("error").and_then(Value::as_str).map(str::to_string);
        }
        self.json(session, ctx, code, &reply).await
    }

    /// A model-routed call: read and parse the body, then forward it.
    async fn route(&self, session: &mut Session, ctx: &mut RequestCtx, fleet: &Fleet, native: bool) {
        let body = match read_bounded(session, self.max_body_bytes).await {
            Ok(b) => b,
            Err(e) => {
                // The rest of the body is unread: this connection cannot carry another request.
                session.set_keepalive(None);
                return self.error(session, ctx, e.into()).await;
            }
        };
        ctx.bytes_in = body.len() as u64;
        let body = match RoutableBody::parse(body) {
            Ok(b) => b,
            Err(e) => return self.error(session, ctx, e.into()).await,
        };
        ctx.model = Some(body.model.clone());
        match self.forwarder.forward(session, ctx, fleet, &body, native).await {
            Outcome::Answered => {}
            Outcome::ClientGone => {
                ctx.error = Some("client disconnected".into());
                session.set_keepalive(None);
            }
            Outcome::Refused(e) => self.error(session, ctx, e).await,
        }
    }

    async fn json(&self, session: &mut Session, ctx: &mut RequestCtx, status: u16, value: &Value) {
        let body = serde_json::to_vec(value).expect("json values serialise");
        self.send(session, ctx, status, "application/json; charset=utf-8", body.into()).await
    }

    async fn error(&self, session: &mut Session, ctx: &mut RequestCtx, e: ApiError) {
        let body = e.body(ctx.api);
        ctx.error = Some(e.message.clone());
        ctx.status = e.status;
        let mut header = e.header(body.len());
        header.insert_header("x-request-id", ctx.request_id.as_str()).expect("valid id");
        if ctx.attempts > 0 {
            header.insert_header("x-drover-attempts", ctx.attempts.to_string()).expect("number");
        }
        self.write(session, ctx, header, body).await
    }

    async fn send(&self, session: &mut Session, ctx: &mut RequestCtx, status: u16, content_type: &str, body: Bytes) {
        let mut header = ResponseHeader::build(status, Some(3)).expect("valid status");
        header.insert_header(http::header::CONTENT_TYPE, content_type).expect("static header");
        header.insert_header(http::header::CONTENT_LENGTH, body.len().to_string()).expect("number");
        header.insert_header("x-request-id", ctx.request_id.as_str()).expect("valid id");
        ctx.status = status;
        self.write(session, ctx, header, body).await
    }

    async fn write(&self, session: &mut Session, ctx: &mut RequestCtx, header: ResponseHeader, body: Bytes) {
        let head = session.req_header().method == http::Method::HEAD;
        ctx.bytes_out += if head { 0 } else { body.len() as u64 };
        if session.write_response_header(Box::new(header)).await.is_ok() {
            let _ = if head { session.finish_body().await } else { session.write_response_body(body, true).await };
        }
    }

    /// Counts the request in the metrics and writes its access-log line.
    fn log(&self, session: &Session, ctx: &RequestCtx) {
        self.account(ctx);
        let req = session.req_header();
        let client = session.client_addr().map(|a| a.to_string());
        let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let u = &ctx.usage;
        let line = Line::new()
            .str("time", Some(&time))
            .str("request_id", Some(&ctx.request_id))
            .str("client", client.as_deref())
            .str("method", Some(req.method.as_str()))
            .str("path", Some(req.uri.path()))
            .str("model", ctx.model.as_deref())
            .str("actual_model", ctx.actual_model.as_deref())
            .str("server", ctx.server.as_deref())
            .num("status", Some(ctx.status))
            .num("attempts", Some(ctx.attempts))
            .millis("ttfb_ms", ctx.ttfb)
            .millis("duration_ms", Some(ctx.started.elapsed()))
            .num("bytes_in", Some(ctx.bytes_in))
            .num("bytes_out", Some(ctx.bytes_out))
            .num("prompt_tokens", u.prompt_tokens)
            .num("completion_tokens", u.completion_tokens)
            .str("error", ctx.error.as_deref())
            .finish();
        self.access_log.write(line);
    }

    /// Counts a finished request in the metrics (model-routed requests only: the rest are drover's own pages).
    fn account(&self, ctx: &RequestCtx) {
        let Some(model) = ctx.model.as_deref() else { return };
        let server = ctx.server.as_deref().unwrap_or("none");
        let status = ctx.status.to_string();
        crate::metrics::REQUESTS.with_label_values(&[model, server, &status]).inc();
        crate::metrics::REQUEST_DURATION.with_label_values(&[model]).observe(ctx.started.elapsed().as_secs_f64());
        if let Some(t) = ctx.ttfb {
            crate::metrics::TTFB.with_label_values(&[model]).observe(t.as_secs_f64());
        }
        let u = &ctx.usage;
        for (kind, n) in [("prompt", u.prompt_tokens), ("completion", u.completion_tokens)] {
            if let Some(n) = n {
                crate::metrics::TOKENS.with_label_values(&[model, server, kind]).inc_by(n);
            }
        }
        if let Some(load) = u.load_seconds {
            crate::metrics::MODEL_LOAD.with_label_values(&[model, server]).observe(load);
        }
    }

    /// The client's X-Request-Id when it sent a usable one, else a new one.
    fn request_id(&self, session: &Session) -> String {
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
}

#[async_trait]
impl HttpServerApp for Drover {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: Session,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        // A kept-alive connection waiting for its next request is closed when the service
        // stops, rather than waited for through the grace period.
        let mut stopping = shutdown.clone();
        let read = tokio::select! {
            biased; // a request already buffered is served, not dropped
            r = session.read_request() => r,
            _ = stopping.wait_for(|stop| *stop) => return None,
        };
        match read {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                if e.etype() == &ErrorType::InvalidHTTPHeader {
                    let _ = session.respond_error(400).await;
                }
                session.shutdown().await;
                return None;
            }
        }
        if *shutdown.borrow() {
            session.set_keepalive(None);
        }
        let mut ctx = RequestCtx {
            request_id: self.request_id(&session),
            started: Instant::now(),
            api: Api::Ollama,
            model: None,
            actual_model: None,
            server: None,
            attempts: 0,
            status: 0,
            ttfb: None,
            bytes_in: 0,
            bytes_out: 0,
            error: None,
            usage: Usage::default(),
        };
        self.answer(&mut session, &mut ctx).await;
        self.log(&session, &ctx);
        let settings = HttpPersistentSettings::for_session(&session);
        let reusable = session.finish().await.ok().flatten()?;
        Some(ReusedHttpStream::from_reusable_stream(reusable, settings))
    }
}
