//! One attempt on one server: the peer, the rewritten request, and whether a failure is retried elsewhere.
//!
//! Retries follow one rule: a connect error, a timeout or a 5xx before any byte reached the
//! client goes to the next eligible route (up to load_balancer.max_retry_count), with the
//! whole rewritten body sent again; after bytes reached the client, a stream is continued on
//! the next route (protocol/resume.rs), anything else ends. A server's own 429 or 401/403 is
//! passed on without counting as a failure. A pooled connection the server had closed is
//! replaced on the same server without counting a try.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};

use super::ctx::Routed;
use super::ctx::{as_chat, Attempt, RequestCtx, Running, Translation};
use super::wait::take_route;
use crate::config::Settings;
use crate::fleet::Route;
use crate::protocol::api::ApiError;
use crate::protocol::body::RoutableBody;
use crate::protocol::ollama::Kind;
use crate::protocol::resume;
use crate::protocol::translate;
use crate::routing::scheduler::{Chosen, Refused, Scheduler};
use crate::state::shared::Shared;
use crate::telemetry::metrics::{self, RetryReason};

/// Stale pooled connections replaced on one request before the failure counts.
pub(crate) const STALE_RETRIES: u32 = 2;

/// The upstream stage: how long a server is given, how often a request is tried, and where
/// the next route comes from.
pub(crate) struct Upstream {
    /// The next route after a failure (wait.rs).
    scheduler: Arc<Scheduler>,
    /// Cooldowns told to the other drovers (state/shared.rs).
    shared: Arc<Shared>,
    connect_timeout: Duration,
    read_timeout: Duration,
    max_retry_count: u32,
    /// The longest a server's Retry-After rests it.
    max_rest: Duration,
}

impl Upstream {
    pub(crate) fn new(settings: &Settings, scheduler: Arc<Scheduler>, shared: Arc<Shared>) -> Upstream {
        let lb = &settings.load_balancer;
        Upstream {
            scheduler,
            shared,
            connect_timeout: settings.http_client.connect_timeout,
            read_timeout: settings.http_client.read_timeout,
            max_retry_count: lb.max_retry_count,
            max_rest: lb.max_rest,
        }
    }

    /// `upstream_peer`: the route picked before this attempt (or the next one now), its
    /// payload armed for `request_body_filter`.
    pub(super) async fn peer(&self, session: &mut Session, ctx: &mut RequestCtx) -> pingora::Result<Box<HttpPeer>> {
        let RequestCtx { routed, attempts, server, actual_model, request_id, .. } = ctx;
        let Some(r) = routed.as_deref_mut() else {
            return Error::e_explain(ErrorType::InternalError, "upstream_peer for a request drover answers itself");
        };
        let (fallback, bytes) = (r.chat_fallback, r.body.bytes().clone());
        if let Some(run) = r.attempt.running().filter(|run| run.resend) {
            run.resend = false;
            // The server said it has no such endpoint (`check_status`): the same request, translated.
            let lacks = fallback.filter(|p| run.translated.is_none() && run.route.server.lacks(p));
            if let Some(path) = lacks {
                match as_chat(path, &bytes, &run.route.actual_model) {
                    Ok((body, translation)) => {
                        run.payload = body;
                        run.translated = Some(translation);
                    }
                    Err(why) => return Err(self.untranslatable(r, why)),
                }
            }
            if let Ok(addr) = run.route.server.resolve().await {
                run.armed = true;
                return Ok(Box::new(run.route.server.peer(addr, self.connect_timeout, self.read_timeout)));
            }
            r.attempt.fail();
        }
        loop {
            let chosen = match std::mem::replace(&mut r.attempt, Attempt::Waiting) {
                Attempt::Ready(chosen) | Attempt::Failed { next: Some(chosen), .. } => chosen,
                previous => {
                    r.attempt = previous;
                    self.next_route(session, r, *attempts).await?
                }
            };
            let route = chosen.route.clone();
            r.tried.push(route.server.clone());
            *attempts += 1;
            *server = Some(route.server.url.as_str().to_string());
            *actual_model = Some(route.actual_model.clone());
            let resolved = route.server.resolve().await;
            // Ollama's API to a server that speaks only OpenAI's: translated (protocol/translate.rs).
            let openai = route.server.kind == Kind::OpenAi;
            let translate = r.translatable.filter(|_| openai);
            let chat = r.chat_fallback.filter(|p| openai && route.server.lacks(p));
            let translated = match (translate, chat) {
                (Some(endpoint), _) => translate::request(endpoint, r.body.bytes(), &route.actual_model)
                    .map(|t| Some((t.body, Translation::Ollama(endpoint, t.stream)))),
                (None, Some(path)) => as_chat(path, r.body.bytes(), &route.actual_model).map(Some),
                (None, None) => Ok(None),
            };
            let (mut payload, translated) = match translated {
                Ok(Some((body, translation))) => (body, Some(translation)),
                Ok(None) if resolved.is_ok() => (r.body.rewritten(&route.actual_model), None),
                Ok(None) => (Bytes::new(), None),
                Err(why) => return Err(self.untranslatable(r, why)),
            };
            if r.asked.is_some() && openai && route.server.inventory().vllm {
                payload = crate::protocol::resume::for_vllm(&payload).unwrap_or(payload);
            }
            r.attempt = Attempt::Running(Running {
                payload,
                armed: resolved.is_ok(),
                route: route.clone(),
                held: Some(chosen),
                corked: None,
                resend: false,
                translated,
                answered: false,
            });
            match resolved {
                Ok(addr) => return Ok(Box::new(route.server.peer(addr, self.connect_timeout, self.read_timeout))),
                Err(e) => {
                    let why = format!("cannot resolve {}: {e}", route.server.url.host);
                    self.failed(r, &route, RetryReason::Connect, why, request_id);
                    if *attempts > self.max_retry_count {
                        return Err(self.exhausted(r, *attempts));
                    }
                }
            }
        }
    }

    /// The end of a request that cannot be translated for the server it must go to: a 400
    /// that says why, never a retry elsewhere (every such server would refuse it the same way).
    fn untranslatable(&self, r: &mut Routed, why: translate::TranslateError) -> Box<Error> {
        r.refusal = Some(why.into());
        let mut e = Error::explain(ErrorType::HTTPStatus(400), "request cannot be translated");
        e.set_retry(false);
        e
    }

    /// Waits for the next route after a failure; none left gives the client's error.
    async fn next_route(&self, session: &mut Session, r: &mut Routed, attempts: u32) -> pingora::Result<Chosen> {
        if attempts > self.max_retry_count {
            return Err(self.exhausted(r, attempts));
        }
        let picked = take_route(&self.scheduler, session.as_mut(), r, true).await;
        match picked {
            Ok(chosen) => Ok(chosen),
            Err(Refused::ClientGone) => {
                r.client_gone = true;
                Err(Error::explain(ErrorType::ConnectionClosed, "client disconnected while waiting").into_down())
            }
            Err(Refused::Error(e)) => {
                r.refusal = Some(e);
                Err(self.exhausted(r, attempts))
            }
        }
    }

    /// The error that ends a request no server could answer; the client gets `r.refusal`,
    /// or, after failures, a 502 naming the last one.
    fn exhausted(&self, r: &mut Routed, attempts: u32) -> Box<Error> {
        if let (None, Some((rest, all_429))) = (&r.last_failure, r.rested) {
            // Every server tried asked to rest: the soonest any takes requests again (the
            // scheduler's 429 says when the others that rest already do).
            let others = r.refusal.as_ref().filter(|e| e.status == 429).and_then(|e| e.retry_after);
            let soonest = others.map_or(rest, |s| rest.min(Duration::from_secs(s)));
            let mut e = crate::routing::scheduler::rate_limited(&r.body.model, soonest);
            if !all_429 {
                e.status = 503;
            }
            r.refusal = Some(e);
        }
        if let Some(why) = &r.last_failure {
            r.refusal = Some(ApiError::new(
                502,
                "upstream_failed",
                format!("model {:?}: every server tried failed ({attempts} attempts); last error: {why}", r.body.model),
            ));
        }
        let status = r.refusal.as_ref().map_or(502, |e| e.status);
        let mut e = Error::explain(ErrorType::HTTPStatus(status), "no server left to try");
        e.set_retry(false);
        e
    }

    /// `upstream_request_filter`: the server's path prefix and Host, the rewritten body's
    /// length, and the request id. Pingora has already removed hop-by-hop headers.
    pub(super) fn prepare_request(&self, req: &mut RequestHeader, ctx: &RequestCtx) -> pingora::Result<()> {
        let Some(Attempt::Running(run)) = ctx.routed.as_deref().map(|r| &r.attempt) else { return Ok(()) };
        let route = &run.route;
        let url = &route.server.url;
        if let Some(translation) = run.translated {
            let uri = format!("{}{}", url.base_path, translation.openai_path());
            req.set_uri(uri.parse().map_err(|e| Error::because(ErrorType::InternalError, "translated path", e))?);
        } else if !url.base_path.is_empty() {
            let pq = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
            let uri = format!("{}{pq}", url.base_path);
            req.set_uri(uri.parse().map_err(|e| Error::because(ErrorType::InternalError, "server base path", e))?);
        }
        req.insert_header(http::header::HOST, url.authority())?;
        req.insert_header(http::header::CONTENT_LENGTH, run.payload.len())?;
        strip(req, &http::header::TRANSFER_ENCODING);
        strip(req, &http::header::EXPECT);
        // drover answers CORS at the edge; a server's own origin check (OLLAMA_ORIGINS) would
        // refuse what drover allowed.
        strip(req, &http::header::ORIGIN);
        // Answers come back plain, so that drover can read their usage; drover compresses
        // toward the client itself.
        strip(req, &http::header::ACCEPT_ENCODING);
        // The client's key is for drover; a server gets its own credentials instead.
        let creds = &route.server.credentials;
        if !creds.forward_client_auth {
            strip(req, &http::header::AUTHORIZATION);
            strip(req, &X_API_KEY);
        }
        for (name, value) in &creds.headers {
            req.insert_header(name.clone(), value.clone())?;
        }
        req.insert_header("x-request-id", ctx.request_id.as_str())?;
        Ok(())
    }

    /// `fail_to_connect`: count the failure, and retry while attempts remain.
    pub(super) fn connect_failed(&self, ctx: &mut RequestCtx, mut e: Box<Error>) -> Box<Error> {
        let attempts = ctx.attempts;
        let Some(r) = ctx.routed.as_deref_mut() else { return e };
        if let Some(route) = r.attempt.route().cloned() {
            self.failed(r, &route, RetryReason::Connect, format!("connect: {e}"), &ctx.request_id);
            e.set_retry(attempts <= self.max_retry_count);
        }
        e
    }

    /// `error_while_proxy`: an error once connected. Retried only while nothing has reached the client.
    pub(super) fn attempt_failed(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
        client_reused: bool,
    ) -> Box<Error> {
        let attempts = ctx.attempts;
        let Some(r) = ctx.routed.as_deref_mut() else { return e };
        let Some(route) = r.attempt.route().cloned() else { return e };
        if r.attempt.running().is_some_and(|run| run.resend) {
            // `check_status` asked for the same route again (a server without /v1/messages).
            e.set_retry(true);
            return e;
        }
        if r.attempt.has_next() {
            // A 5xx turned into this error by `check_status`, the next route already taken.
            e.set_retry(true);
            return e;
        }
        if e.esource() == &ErrorSource::Downstream {
            r.client_gone = true;
            e.set_retry(false);
            return e;
        }
        if !matches!(r.attempt, Attempt::Running(_)) {
            // `check_status` charged this attempt already and found nowhere else to go.
            e.set_retry(false);
            return e;
        }
        let reason = match e.etype() {
            ErrorType::ReadTimedout => RetryReason::Timeout,
            ErrorType::WriteError | ErrorType::WriteTimedout => RetryReason::Send,
            _ => RetryReason::Response,
        };
        let answered = r.attempt.running().is_some_and(|run| run.answered);
        if client_reused && !answered && reason != RetryReason::Timeout && r.stale_retries < STALE_RETRIES {
            // A pooled connection the server closed while idle: not the server's fault.
            log::debug!("stale pooled connection to {}: {e}", route.server.url.as_str());
            r.stale_retries += 1;
            if let Some(run) = r.attempt.running() {
                run.resend = true;
            }
            e.set_retry(true);
            return e;
        }
        if session.response_written().is_some() {
            // Bytes reached the client: continued on another server when it can be, else
            // fail_to_proxy ends the stream with an error line.
            let why = format!("broke off mid-response: {e}");
            ctx.error = Some(format!("{} {why}", route.server.url.as_str()));
            self.failed(r, &route, RetryReason::MidStream, why, &ctx.request_id);
            let resumed = attempts <= self.max_retry_count && self.ask_continuation(r, &ctx.request_id);
            if !resumed && r.relay.stream.is_some() {
                metrics::RESUMPTIONS.with_label_values(&["ended"]).inc();
            }
            e.set_retry(resumed);
            return e;
        }
        let why = match reason {
            RetryReason::Send => format!("sending request: {e}"),
            _ => format!("waiting for the response: {e}"),
        };
        self.failed(r, &route, reason, why, &ctx.request_id);
        e.set_retry(attempts <= self.max_retry_count);
        e
    }

    /// `upstream_response_filter`: a server's refusal sends the request on before anything of
    /// it reaches the client. A 429 (or 503 with Retry-After) rests the server, a 401/403 to
    /// drover's own credentials takes it out until a health check passes, neither counted as
    /// a failure; a 5xx goes to the next route when there is one, the last server's own 5xx
    /// answer passed on. A continuation that is not a 2xx is a failure of its own.
    pub(super) async fn check_status(
        &self,
        session: &mut Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let status = resp.status.as_u16();
        let attempts = ctx.attempts;
        let continuing = session.response_written().is_some();
        let Some(r) = ctx.routed.as_deref_mut() else { return Ok(()) };
        let fallback = r.chat_fallback;
        if let Some(run) = r.attempt.running() {
            run.answered = true;
            // An openai-kind server without /v1/messages or /v1/responses: the same request
            // again on the same server, translated to chat completions (and so from now on).
            let missing = matches!(status, 404 | 405 | 501);
            let path =
                fallback.filter(|_| missing && run.translated.is_none() && run.route.server.kind == Kind::OpenAi);
            if let Some(path) = path {
                run.route.server.set_lacks(path);
                run.resend = true;
                let mut e = Error::explain(ErrorType::HTTPStatus(status), "endpoint missing on this server");
                e.set_retry(true);
                return Err(e);
            }
        }
        if (200..300).contains(&status) {
            return Ok(());
        }
        let Some(route) = r.attempt.route().cloned() else { return Ok(()) };
        let rest = match status {
            429 | 503 => retry_after(resp).map(|d| d.min(self.max_rest)),
            _ => None,
        };
        if let Some(rest) = rest.or((status == 429).then_some(Duration::from_secs(1))) {
            route.server.rest_for(rest);
            let url = route.server.url.as_str();
            metrics::UPSTREAM_REFUSALS.with_label_values(&[url, "rate_limited"]).inc();
            log::info!("{} {url} answered {status}: it rests for {rest:?}", ctx.request_id);
            let (shortest, all_429) = r.rested.unwrap_or((rest, true));
            r.rested = Some((shortest.min(rest), all_429 && status == 429));
            return self.pass_on(session, r, attempts, status).await;
        }
        if matches!(status, 401 | 403) && !route.server.credentials.forward_client_auth {
            let url = route.server.url.as_str();
            let why = format!("upstream credentials refused (HTTP {status})");
            if route.server.refuse_credentials(&why) {
                log::error!("server {url} refused drover's credentials for it (HTTP {status}): down until a health check passes; check its api_key or headers");
            }
            metrics::UPSTREAM_REFUSALS.with_label_values(&[url, "credentials"]).inc();
            r.last_failure = Some(format!("{url}: {why}"));
            return self.pass_on(session, r, attempts, status).await;
        }
        if continuing && !(200..300).contains(&status) {
            // error_while_proxy charges it, and continues the answer elsewhere if it can.
            return Error::e_explain(ErrorType::HTTPStatus(status), format!("the continuation answered HTTP {status}"));
        }
        if status < 500 {
            return Ok(());
        }
        let why = format!("answered HTTP {status}");
        self.failed(r, &route, RetryReason::Status5xx, why.clone(), &ctx.request_id);
        if attempts > self.max_retry_count {
            return Ok(());
        }
        let picked = take_route(&self.scheduler, session.as_mut(), r, true).await;
        match picked {
            Ok(chosen) => {
                if let Attempt::Failed { next, .. } = &mut r.attempt {
                    *next = Some(chosen);
                }
                let mut e = Error::explain(ErrorType::HTTPStatus(status), why);
                e.set_retry(true);
                Err(e)
            }
            Err(Refused::ClientGone) => {
                r.client_gone = true;
                Err(Error::explain(ErrorType::ConnectionClosed, "client disconnected while waiting").into_down())
            }
            Err(Refused::Error(_)) => Ok(()),
        }
    }

    /// The server refused without failing (it asked to rest, or refused drover's credentials):
    /// the request goes to the next route, or, with none left, the client gets what the
    /// servers said (`exhausted`).
    async fn pass_on(&self, session: &mut Session, r: &mut Routed, attempts: u32, status: u16) -> pingora::Result<()> {
        r.attempt.fail();
        let chosen = self.next_route(session, r, attempts).await?;
        if let Attempt::Failed { next, .. } = &mut r.attempt {
            *next = Some(chosen);
        }
        let mut e = Error::explain(ErrorType::HTTPStatus(status), "passed on to the next server");
        e.set_retry(true);
        Err(e)
    }

    /// A failed attempt: counted, logged, and charged to the server (max_fails within fail_timeout).
    fn failed(&self, r: &mut Routed, route: &Arc<Route>, reason: RetryReason, why: String, request_id: &str) {
        let url = route.server.url.as_str();
        metrics::RETRIES.with_label_values(&[reason.as_str()]).inc();
        log::warn!("{request_id} failed on {url} (attempt {}): {why}", r.tried.len());
        if route.server.record_failure(&why) {
            self.share_cooldown(&route.server);
            let p = route.server.fail_policy;
            log::warn!(
                "server {url} cools down for {:?}: {} failed requests within {:?}",
                p.cooldown,
                p.max_fails,
                p.fail_timeout
            );
        }
        r.last_failure = Some(format!("{url}: {why}"));
        r.attempt.fail();
    }
}

impl Upstream {
    /// Asks the next server to continue the answer the client is receiving: the client's
    /// request with the text so far as the assistant's message to be continued
    /// (protocol/resume.rs). False when this stream cannot be continued.
    fn ask_continuation(&self, r: &mut Routed, request_id: &str) -> bool {
        let Some(format) = r.resume else { return false };
        let Some(stream) = r.relay.stream.as_mut() else { return false };
        let Some(so_far) = stream.broken() else { return false };
        let asked = r.asked.get_or_insert_with(|| r.body.bytes().clone());
        let continuation = resume::request(format, asked, so_far)
            .map_err(|e| e.to_string())
            .and_then(|b| RoutableBody::parse(b).map_err(|e| ApiError::from(e).message));
        match continuation {
            Ok(body) => {
                log::info!("{request_id} continues on another server after {} tokens", so_far.tokens);
                stream.continue_elsewhere();
                r.body = body;
                // The answer is whole in the end, but not one server's: not kept.
                r.cache_fill = None;
                metrics::RESUMPTIONS.with_label_values(&["continued"]).inc();
                true
            }
            Err(why) => {
                log::warn!("{request_id} cannot be continued elsewhere: {why}");
                false
            }
        }
    }
}

/// A Retry-After header's delay (seconds, or an HTTP date).
fn retry_after(resp: &ResponseHeader) -> Option<Duration> {
    let value = resp.headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    match value.parse::<u64>() {
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            Some(at.duration_since(std::time::SystemTime::now()).unwrap_or_default())
        }
    }
}

static X_API_KEY: http::HeaderName = http::HeaderName::from_static("x-api-key");

/// Removes a header the server must not get. Most requests have none of them: a lookup in
/// one map is cheaper than a removal from both of Pingora's (values and case).
fn strip(req: &mut RequestHeader, name: &http::HeaderName) {
    if req.headers.contains_key(name) {
        req.remove_header(name);
    }
}

/// Holds a small request's header in the kernel until its body is written too.
///
/// Pingora's proxy flushes the request header on its own, then writes the body: two sends,
/// two packets, and two wake-ups of the server, where one would do (a third of drover's
/// CPU per small request went to sends). With TCP_CORK set when the connection is handed
/// to this attempt, the header waits in the kernel; `uncork_soon`, called as the body
/// goes to Pingora's upstream writer, releases both as one packet. Only an optimisation:
/// whatever the order, uncorking sends what is pending, and the kernel itself sends
/// corked data after 200 ms.
pub(super) fn cork(fd: std::os::unix::io::RawFd) -> Option<std::os::unix::io::RawFd> {
    set_cork(fd, true).then_some(fd)
}

/// Uncorks `fd` in a task of its own: spawned from the request's task, it runs once that
/// task has written the body and waits for the answer, so the header and body leave together.
pub(super) fn uncork_soon(fd: std::os::unix::io::RawFd) {
    tokio::spawn(async move {
        set_cork(fd, false);
    });
}

fn set_cork(fd: std::os::unix::io::RawFd, on: bool) -> bool {
    let value: libc::c_int = on.into();
    // SAFETY: setsockopt reads `value` (a c_int, its size passed) and touches nothing else;
    // on an fd that is no longer a TCP socket it fails, and the result is only a hint.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

impl Upstream {
    /// Tells the other drovers (through Redis, when configured) that a server cools down.
    fn share_cooldown(&self, server: &crate::fleet::Server) {
        if self.shared.active() {
            let (shared, url, d) = (self.shared.clone(), server.url.as_str().to_string(), server.fail_policy.cooldown);
            tokio::spawn(async move { shared.cooldown(&url, d).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_retry_after(value: &str) -> ResponseHeader {
        let mut h = ResponseHeader::build(429, Some(1)).expect("valid status");
        h.insert_header(http::header::RETRY_AFTER, value).expect("valid header");
        h
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(retry_after(&with_retry_after("7")), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        let left = retry_after(&with_retry_after(&httpdate::fmt_http_date(later))).unwrap();
        assert!(left > Duration::from_secs(27) && left <= Duration::from_secs(30), "{left:?}");
        let past = httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(5));
        assert_eq!(retry_after(&with_retry_after(&past)), Some(Duration::ZERO), "a date gone by: no rest");
        assert_eq!(retry_after(&with_retry_after("soon")), None);
        assert_eq!(retry_after(&ResponseHeader::build(429, None).unwrap()), None);
    }
}
