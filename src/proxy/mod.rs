//! The Pingora `ProxyHttp`: each hook hands the request to one stage, a struct holding only
//! what that stage uses (drover.rs), implemented in the file named after it.
//!
//! - `request_filter`: the request id, CORS and who may call (admit.rs, `Admission`);
//!   drover's own endpoints (own.rs, `OwnAnswers`, with blobs.rs); for a model-routed call
//!   the body stage (route.rs, `Routing`): read and parse the body, keeping its tail in
//!   Pingora's retry buffer, a session's history first (memory.rs), an unload for every
//!   server (unload.rs), /api/show of an openai-kind model (show.rs), an answer from the
//!   response cache (cache.rs), else a first route (wait.rs).
//! - `upstream_peer`, `upstream_request_filter`, `request_body_filter`, `fail_to_connect`,
//!   `error_while_proxy`, `upstream_response_filter`: one attempt on one server, and whether
//!   a failure is retried elsewhere (upstream.rs, `Upstream`).
//! - `response_filter`, `response_body_filter`, `fail_to_proxy`: the answer on its way back,
//!   and errors in the client's format (relay.rs, `Relay`).
//! - `logging`: the answer kept for the cache (cache.rs); metrics and the access-log line
//!   (account.rs, `Accounting`).
//!
//! `Drover`, one part per stage, is in drover.rs; a request's state in ctx.rs; every answer
//! drover writes itself goes through respond.rs (`Responder`).
//!
//! Owns: the per-request context, the per-address limiter and the request-id counter (admit.rs).
//! May import: every folder but serve, accept and probe (it sits on top).

mod account;
mod admit;
mod blobs;
mod cache;
mod ctx;
mod drover;
mod memory;
mod own;
mod relay;
mod respond;
mod route;
mod show;
mod unload;
mod upstream;
mod wait;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};

pub(crate) use account::Accounting;
pub(crate) use admit::Admission;
pub(crate) use ctx::RequestCtx;
pub(crate) use drover::Drover;
pub(crate) use own::{OwnAnswers, OwnParts};
pub(crate) use relay::Relay;
pub(crate) use respond::Responder;
pub(crate) use route::Routing;
pub(crate) use upstream::Upstream;
pub(crate) use upstream::STALE_RETRIES;

use crate::protocol::api::{classify, Api, Endpoint};

#[async_trait]
impl ProxyHttp for Drover {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    /// Pingora's response compression (gzip, zstd, brotli by Accept-Encoding), turned off per
    /// answer for streams and small bodies (`Responder::worth_compressing`).
    fn init_downstream_modules(&self, modules: &mut pingora::modules::http::HttpModules) {
        modules.add_module(pingora::modules::http::compression::ResponseCompressionBuilder::enable(
            self.out.compression_level,
        ));
    }

    /// Answers drover's own endpoints; for a model-routed call, reads the body and takes a first route.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> pingora::Result<bool> {
        ctx.request_id = self.admission.request_id(session);
        ctx.api = Api::of_path(session.req_header().uri.path());
        if let Some(e) = self.admission.header_refused(session.req_header()) {
            session.set_keepalive(None);
            self.out.error(session, ctx, e).await;
            return Ok(true);
        }
        if self.admission.cors_refused(session, ctx).await {
            return Ok(true);
        }
        let endpoint = {
            let req = session.req_header();
            classify(&req.method, req.uri.path())
        };
        if let Err(e) = self.admission.admit(session, ctx, &endpoint).await {
            self.out.error(session, ctx, e).await;
            return Ok(true);
        }
        match endpoint {
            // ctx.api is the call's already: Api::of_path above.
            Endpoint::Routed(call) => Ok(self.routing.route(session, ctx, call).await),
            other => {
                // Boxed: drover's own endpoints (admin, dashboard, views) would otherwise
                // size this future, which Pingora boxes for every request.
                Box::pin(self.own.answer(session, ctx, other)).await;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut RequestCtx) -> pingora::Result<Box<HttpPeer>> {
        self.upstream.peer(session, ctx).await
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
        if let Some(run) = ctx.routed.as_deref_mut().and_then(|r| r.attempt.running()) {
            run.corked = upstream::cork(fd);
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        self.upstream.prepare_request(upstream_request, ctx)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if let Some(run) = ctx.routed.as_deref_mut().and_then(|r| r.attempt.running()) {
            // Called with the retry buffer (the body's tail) at the start of every attempt:
            // the server gets the whole rewritten body instead, once.
            *body = std::mem::take(&mut run.armed).then(|| run.payload.clone());
            if let Some(fd) = run.corked.take() {
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
        self.upstream.connect_failed(ctx, e)
    }

    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        self.upstream.attempt_failed(session, ctx, e, client_reused)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        self.upstream.check_status(session, upstream_response, ctx).await
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let h2 = session.is_http2();
        self.relay.relay_header(upstream_response, h2, ctx)?;
        if !self.out.worth_compressing(upstream_response) {
            respond::no_compression(session);
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
        if crate::stop::ending() && !end_of_stream {
            // The grace period ends: the stream ends with its error line rather than be cut
            // mid-chunk when Pingora drops what is left (stop.rs).
            ctx.error = Some("drover is stopping: the answer outlived pingora.grace_period_seconds".into());
            return Error::e_explain(ErrorType::InternalError, "drover is stopping");
        }
        self.relay.relay_body(body, end_of_stream, ctx);
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        self.relay.give_up(session, e, ctx).await
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if e.is_none() {
            self.relay.keep_answer(ctx).await;
        }
        self.accounting.log(session, ctx);
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
