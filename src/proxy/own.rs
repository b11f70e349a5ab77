//! What drover answers itself: the fleet views, operations pages, the admin API and the
//! dashboard behind its token, and model management (pull, push, create, copy, delete)
//! merged over the servers. Writes through respond.rs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::Value;

use super::ctx::RequestCtx;
use super::respond::Responder;
use super::respond::{cors_headers, no_compression, request_host, ADMIN_BODY_LIMIT};
use crate::admin::guard::AdminGuard;
use crate::admin::Admin;
use crate::config::Settings;
use crate::fleet::client::Client;
use crate::fleet::Fleet;
use crate::ops::errors::RecentErrors;
use crate::ops::views;
use crate::placement::manage::{Op, Progress};
use crate::placement::replicas::Replicas;
use crate::placement::required::Keeper;
use crate::protocol::api::{Api, ApiError, DashboardPart, Endpoint};
use crate::protocol::body::read_bounded;
use crate::routing::queue::Queue;
use crate::routing::resources::ResourceCheck;
use crate::routing::scheduler::unknown_model;
use crate::state::reload::Reloader;
use crate::state::shared::Shared;

/// What drover answers itself reads from: the fleet and every part an operator asks about.
pub(crate) struct OwnAnswers {
    /// The shared parts, as serve.rs handed them in.
    pub(super) parts: OwnParts,
    started: Instant,
    config_source: Option<String>,
    database: String,
    /// How long a server may stay silent during model management and blob uploads.
    pub(super) read_timeout: Duration,
    pub(super) out: Responder,
}

/// The parts drover's own answers read, each built once by serve.rs.
pub(crate) struct OwnParts {
    pub(crate) fleet: Arc<ArcSwap<Fleet>>,
    /// The admin API's token and its DNS-rebinding guard.
    pub(crate) guard: Arc<AdminGuard>,
    pub(crate) admin: Arc<Admin>,
    /// Required models, reported in /health and on the dashboard.
    pub(crate) keeper: Arc<Keeper>,
    /// For calls to every server: model management, blobs.
    pub(crate) client: Arc<Client>,
    /// The store follower: its state for /health.
    pub(crate) reloader: Arc<Reloader>,
    pub(crate) resources: Arc<ResourceCheck>,
    pub(crate) replicas: Arc<Replicas>,
    /// Requests waiting for a busy model: their number for /lb-stats and the dashboard.
    pub(crate) queue: Arc<Queue>,
    /// Redis's state for /health.
    pub(crate) shared: Arc<Shared>,
    pub(crate) recent_errors: Arc<RecentErrors>,
}

impl OwnAnswers {
    pub(crate) fn new(settings: &Settings, parts: OwnParts) -> OwnAnswers {
        OwnAnswers {
            parts,
            started: Instant::now(),
            config_source: settings.source.as_ref().map(|p| p.display().to_string()),
            database: crate::storage::store::redact_url(&settings.database_url),
            read_timeout: settings.http_client.read_timeout,
            out: Responder::new(settings),
        }
    }

    /// Answers an endpoint that is not model-routed.
    pub(super) async fn answer(&self, session: &mut Session, ctx: &mut RequestCtx, endpoint: Endpoint) {
        let fleet = self.parts.fleet.load_full();
        let restricted = ctx.key.as_ref().is_some_and(|k| k.restricted());
        if restricted && matches!(endpoint, Endpoint::Status | Endpoint::LbStats) {
            // Every server's loaded models, placements and last errors: the fleet's, not a tenant's.
            let e = ApiError::new(403, "not_allowed", "the fleet's status needs an API key that may use every model");
            return self.out.error(session, ctx, e).await;
        }
        match endpoint {
            Endpoint::Routed(_) => unreachable!("routed calls are proxied"),
            Endpoint::Tags => {
                self.out.json(session, ctx, 200, &visible(ctx, views::tags(&fleet), "models", "name")).await
            }
            Endpoint::Ps => self.out.json(session, ctx, 200, &visible(ctx, views::ps(&fleet), "models", "name")).await,
            Endpoint::Models => {
                ctx.api = Api::OpenAi;
                self.out.json(session, ctx, 200, &visible(ctx, views::models(&fleet), "data", "id")).await
            }
            Endpoint::Model(name) => {
                ctx.api = Api::OpenAi;
                // A model the key may not use is one it cannot see.
                let seen = ctx.key.as_ref().is_none_or(|k| k.allows(&name));
                match views::model(&fleet, &name).filter(|_| seen) {
                    Some(m) => self.out.json(session, ctx, 200, &m).await,
                    None if seen => self.out.error(session, ctx, unknown_model(&fleet, &name)).await,
                    None => {
                        let shown = name.strip_suffix(":latest").unwrap_or(&name);
                        let e = ApiError::new(404, "model_not_found", format!("model {shown:?} not found"));
                        self.out.error(session, ctx, e).await
                    }
                }
            }
            Endpoint::Version => self.out.json(session, ctx, 200, &views::version(&fleet)).await,
            Endpoint::Metrics => {
                let (body, content_type) = crate::telemetry::metrics::render();
                self.out.send(session, ctx, 200, &content_type, body.into()).await
            }
            Endpoint::Root => {
                self.out.send(session, ctx, 200, "text/plain; charset=utf-8", "Ollama is running".into()).await
            }
            Endpoint::Health => {
                let (code, body) = views::health(
                    &fleet,
                    &self.parts.reloader.state(),
                    self.parts.keeper.report(),
                    self.parts.shared.report(),
                );
                self.out.json(session, ctx, code, &body).await
            }
            Endpoint::Status => {
                let body = views::status(&fleet, self.started.elapsed(), self.config_source.as_deref(), &self.database);
                self.out.json(session, ctx, 200, &body).await
            }
            Endpoint::LbStats => {
                let body = views::lb_stats(&fleet, self.parts.queue.len(), self.parts.replicas.view());
                self.out.json(session, ctx, 200, &body).await
            }
            Endpoint::Admin => self.admin(session, ctx).await,
            Endpoint::Dashboard(part) => self.dashboard(session, ctx, part, &fleet).await,
            Endpoint::Management => self.manage(session, ctx).await,
            Endpoint::Blob(digest) => self.blob(session, ctx, &digest).await,
            Endpoint::NotFound(api) => {
                ctx.api = api;
                let path = session.req_header().uri.path().to_string();
                self.out.error(session, ctx, ApiError::new(404, "not_found", format!("no such endpoint: {path}"))).await
            }
            Endpoint::MethodNotAllowed(api) => {
                ctx.api = api;
                let req = session.req_header();
                let msg = format!("{} is not allowed on {}", req.method, req.uri.path());
                self.out.error(session, ctx, ApiError::new(405, "method_not_allowed", msg)).await
            }
        }
    }

    /// The admin API's auth (token, or loopback without one); answers the refusal itself.
    /// The dashboard's cookie stands for the token on reads, and on writes that carry
    /// `X-Drover-Dashboard` (ops/dashboard.rs).
    async fn admin_refused(&self, session: &mut Session, ctx: &mut RequestCtx) -> bool {
        let client = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let req = session.req_header();
        let text = |name| req.headers.get(name).and_then(|v: &http::HeaderValue| v.to_str().ok());
        let cookie_allowed = req.method == http::Method::GET || text("x-drover-dashboard").is_some();
        let from_cookie = crate::ops::dashboard::cookie_token(text("cookie"))
            .filter(|_| cookie_allowed)
            .map(|t| format!("Bearer {t}"));
        let auth = text("authorization").map(str::to_string).or(from_cookie);
        let refused = self.parts.guard.authorize(client, auth.as_deref()).err();
        match refused.or_else(|| self.parts.guard.browser_refused(request_host(req), text("origin"))) {
            None => false,
            Some((code, body)) => {
                session.set_keepalive(None);
                ctx.error = body.get("error").and_then(Value::as_str).map(str::to_string);
                self.out.json(session, ctx, code, &body).await;
                true
            }
        }
    }

    async fn admin(&self, session: &mut Session, ctx: &mut RequestCtx) {
        if self.admin_refused(session, ctx).await {
            return;
        }
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let body = if method == http::Method::POST || method == http::Method::PUT {
            match read_bounded(session, ADMIN_BODY_LIMIT, false).await {
                Ok(b) => Some(b),
                Err(e) => return self.out.refuse_body(session, ctx, e).await,
            }
        } else {
            None
        };
        let (code, reply) = self.parts.admin.handle(&method, &path, body.as_deref()).await;
        if code >= 400 {
            ctx.error = reply.get("error").and_then(Value::as_str).map(str::to_string);
        }
        self.out.json(session, ctx, code, &reply).await
    }

    /// The dashboard: the page, its script, its data. `GET /dashboard?token=...` with the
    /// admin token sets the cookie that lets the page in, and sends the browser back to a
    /// URL without the token.
    async fn dashboard(&self, session: &mut Session, ctx: &mut RequestCtx, part: DashboardPart, fleet: &Fleet) {
        if part == DashboardPart::Page {
            let given = session.req_header().uri.query().and_then(|q| {
                url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned())
            });
            if let Some(token) = given {
                // A cookie value carries only visible ASCII without separators.
                let cookie_safe = token.bytes().all(|b| b.is_ascii_graphic() && !b"\";,\\".contains(&b));
                if !cookie_safe {
                    let e = ApiError::new(
                        400,
                        "token_not_cookie_safe",
                        "this admin.token cannot travel in a cookie; send it as Authorization: Bearer",
                    );
                    return self.out.error(session, ctx, e).await;
                }
                if self.parts.guard.authorize(None, Some(&format!("Bearer {token}"))).is_ok() {
                    let mut header = ResponseHeader::build(303, Some(3)).expect("valid status");
                    header.insert_header(http::header::LOCATION, "/dashboard").expect("static header");
                    let cookie =
                        format!("{}={token}; Path=/; HttpOnly; SameSite=Strict", crate::ops::dashboard::COOKIE);
                    header.insert_header(http::header::SET_COOKIE, cookie).expect("token is header-safe");
                    header.insert_header(http::header::CONTENT_LENGTH, "0").expect("static header");
                    ctx.status = 303;
                    return self.out.write(session, ctx, header, Bytes::new()).await;
                }
            }
        }
        if self.admin_refused(session, ctx).await {
            return;
        }
        match part {
            DashboardPart::Page => {
                self.out.send(session, ctx, 200, "text/html; charset=utf-8", crate::ops::dashboard::PAGE.into()).await
            }
            DashboardPart::Script => {
                self.out
                    .send(session, ctx, 200, "text/javascript; charset=utf-8", crate::ops::dashboard::SCRIPT.into())
                    .await
            }
            DashboardPart::Data => {
                let data = crate::ops::dashboard::data(crate::ops::dashboard::Snapshot {
                    fleet,
                    queued: self.parts.queue.len(),
                    replicas: self.parts.replicas.view(),
                    free_memory: self.parts.resources.free_memory(),
                    errors: self.parts.recent_errors.snapshot(),
                    required: self.parts.keeper.report(),
                    uptime_seconds: self.started.elapsed().as_secs(),
                });
                self.out.json(session, ctx, 200, &data).await
            }
        }
    }

    /// /api/pull, /api/push, /api/create, /api/copy, /api/delete: sent to the servers that
    /// should hold the model (placement/manage.rs), their progress merged into one NDJSON stream.
    async fn manage(&self, session: &mut Session, ctx: &mut RequestCtx) {
        let (method, path, query) = {
            let req = session.req_header();
            (req.method.clone(), req.uri.path().to_string(), req.uri.query().map(str::to_string))
        };
        let op = Op::named(&path).expect("classified as management");
        if method != op.method() {
            let msg = format!("{method} is not allowed on {path} (use {})", op.method());
            return self.out.error(session, ctx, ApiError::new(405, "method_not_allowed", msg)).await;
        }
        if op.destructive() && self.admin_refused(session, ctx).await {
            return;
        }
        let body = match read_bounded(session, ADMIN_BODY_LIMIT, false).await {
            Ok(b) => b,
            Err(e) => return self.out.refuse_body(session, ctx, e).await,
        };
        let fleet = self.parts.fleet.load_full();
        let plan = match crate::placement::manage::plan(op, &body, query.as_deref(), &fleet) {
            Ok(p) => p,
            Err(e) => return self.out.error(session, ctx, e).await,
        };
        // Logged and counted under its canonical name, a label only when the fleet knows it
        // (every spelling of a name is one name).
        let canonical = crate::protocol::ollama::canonical_model(&plan.model);
        ctx.model_known = fleet.named_routes(&canonical).is_some()
            || fleet.servers.iter().any(|s| s.inventory().names.contains(&canonical));
        ctx.model = Some(canonical);
        // Every model it names: a key limited to some models may not copy one over another
        // tenant's, nor make one from a model it may not use.
        if let Some((key, name)) =
            ctx.key.as_ref().and_then(|k| plan.names.iter().find(|n| !k.allows(n)).map(|n| (k, n)))
        {
            let e = key.refuse_model(name);
            return self.out.error(session, ctx, e).await;
        }
        let idle = self.read_timeout;
        if !plan.stream {
            let (code, reply) = crate::placement::manage::run_to_end(&plan, &self.parts.client, idle).await;
            ctx.error = reply.get("error").and_then(Value::as_str).map(str::to_string);
            return self.out.json(session, ctx, code, &reply).await;
        }
        let mut header = ResponseHeader::build(200, Some(3)).expect("valid status");
        header.insert_header(http::header::CONTENT_TYPE, "application/x-ndjson").expect("static header");
        header.insert_header("x-request-id", ctx.request_id.as_str()).expect("valid id");
        cors_headers(&mut header, ctx).expect("valid CORS headers");
        no_compression(session);
        ctx.status = 200;
        if session.write_response_header(Box::new(header), false).await.is_err() {
            return;
        }
        let mut progress = crate::placement::manage::run(&plan, &self.parts.client, idle);
        let mut outcome = crate::placement::manage::Outcome::default();
        let mut client_gone = false;
        let mut merge = crate::placement::manage::Merge::default();
        while let Some(p) = progress.recv().await {
            let line = match p {
                Progress::Line(v) => match merge.line(v) {
                    Some(line) => line,
                    None => continue,
                },
                Progress::Done { server, result } => {
                    outcome.record(op, server, result);
                    continue;
                }
            };
            // The servers carry on if the client leaves, as Ollama's own pull does.
            if !client_gone {
                client_gone = self.write_line(session, ctx, &line, false).await.is_err();
            }
        }
        let (code, last) = outcome.summary(&plan);
        if code >= 400 {
            ctx.error = last.get("error").and_then(Value::as_str).map(str::to_string);
        }
        if !client_gone {
            let _ = self.write_line(session, ctx, &last, true).await;
        }
    }

    async fn write_line(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        line: &Value,
        end: bool,
    ) -> pingora::Result<()> {
        let mut bytes = serde_json::to_vec(line).expect("json values serialise");
        bytes.push(b'\n');
        ctx.bytes_out += bytes.len() as u64;
        session.write_response_body(Some(Bytes::from(bytes)), end).await
    }
}

/// A model listing as the request's key may see it: a key limited to some models sees only
/// those (`list` is the array of models, `field` the name in each).
fn visible(ctx: &RequestCtx, mut listing: Value, list: &str, field: &str) -> Value {
    let Some(key) = ctx.key.as_ref().filter(|k| k.restricted()) else {
        return listing;
    };
    if let Some(models) = listing.get_mut(list).and_then(Value::as_array_mut) {
        models.retain(|m| m.get(field).and_then(Value::as_str).is_some_and(|n| key.allows(n)));
    }
    listing
}
