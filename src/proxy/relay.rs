//! The answer on its way back: drover's headers, tokens read as chunks pass, and the error a client sees when the proxy gives up.

use std::sync::Arc;

use pingora::http::ResponseHeader;
use pingora::proxy::{FailToProxy, Session};
use pingora::{Error, ErrorSource, ErrorType};

use super::ctx::{Attempt, RequestCtx, Translation};
use super::respond::Responder;
use crate::fleet::Origin;
use crate::placement::replicas::Replicas;
use crate::protocol::api::{is_stream, stream_error_tail, ApiError};
use crate::protocol::echo::Echo;
use crate::protocol::translate::{Answer, Translating};
use crate::protocol::usage::UsageScan;
use crate::protocol::{anthropic, responses};
use crate::state::cache::ResponseCache;
use crate::state::memory::Memory;
use crate::state::reload::Tally;

/// The relay stage: what an answer on its way back is counted in, kept in, and told to.
pub(crate) struct Relay {
    /// Requests served per stored route, written back by the reloader.
    tally: Arc<Tally>,
    /// Copies of models that follow demand: told how long a stream waited for its first byte.
    replicas: Arc<Replicas>,
    /// A session's turn is stored here once its answer is whole.
    memory: Arc<Memory>,
    /// A cache miss's answer is kept here (cache.rs).
    pub(super) cache: Arc<ResponseCache>,
    out: Responder,
}

impl Relay {
    pub(crate) fn new(
        settings: &crate::config::Settings,
        tally: Arc<Tally>,
        replicas: Arc<Replicas>,
        memory: Arc<Memory>,
        cache: Arc<ResponseCache>,
    ) -> Relay {
        Relay { tally, replicas, memory, cache, out: Responder::new(settings) }
    }

    /// `response_filter`: the answer's header is on its way to the client.
    pub(super) fn relay_header(
        &self,
        resp: &mut ResponseHeader,
        h2: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let Some(r) = ctx.routed.as_deref_mut() else { return Ok(()) };
        let Some(route) = r.attempt.route().cloned() else { return Ok(()) };
        let translated = match &r.attempt {
            Attempt::Running(run) => run.translated,
            _ => None,
        };
        let status = resp.status.as_u16();
        let content_type = resp.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        r.relay.scan = Some(UsageScan::new(content_type));
        r.relay.content_type = content_type.to_string();
        r.relay.sized = resp.headers.contains_key(http::header::CONTENT_LENGTH);
        ctx.status = status;
        if r.asked.is_some() {
            // A continuation: the client's answer goes on; its first byte came long ago.
            ctx.error = None;
        } else {
            ctx.ttfb = Some(ctx.started.elapsed());
        }
        if let (Origin::Store, Some(id)) = (route.origin, route.id) {
            self.tally.add(id);
        }
        if status < 500 {
            route.server.record_success();
        }
        // How long a stream (not a continuation) waited for its first byte from a warm
        // server: the replica keeper's view of a server's own queue (a cold load's wait is
        // not demand).
        if let Some(waited) =
            ctx.ttfb.filter(|_| r.asked.is_none() && status < 400 && self.replicas.enabled() && is_stream(content_type))
        {
            if route.server.inventory().warm_for(&route.actual_model, None) {
                self.replicas.observe_first_byte(&r.body.name, waited);
            }
        }
        if status < 400 {
            // It answered, so the model is loaded there now, whatever /api/ps said last.
            route.server.mark_loaded(&route.actual_model, r.body.num_ctx);
        }
        resp.insert_header("x-drover-server", route.server.url.as_str())?;
        resp.insert_header("x-drover-model", route.actual_model.as_str())?;
        if let Some(translation) = translated {
            // An openai-kind server's answer, translated back to the client's API.
            let ok = status < 400;
            let answer: Box<dyn Translating> = match translation {
                Translation::Ollama(endpoint, stream) => {
                    Box::new(Answer::new(endpoint, stream, ok, &r.body.model, ctx.started))
                }
                Translation::Messages(stream) => Box::new(anthropic::Answer::new(stream, ok, &route.actual_model)),
                Translation::Responses(stream) => Box::new(responses::Answer::new(stream, ok, &route.actual_model)),
            };
            resp.insert_header(http::header::CONTENT_TYPE, answer.content_type())?;
            resp.remove_header(&http::header::CONTENT_LENGTH);
            if !h2 {
                resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
            }
            r.relay.scan = Some(UsageScan::new(answer.content_type()));
            r.relay.content_type = answer.content_type().to_string();
            r.relay.sized = false;
            r.relay.translate = Some(answer);
        } else if r.call.native() {
            // Ollama names the model as it was asked for: the answer is rewritten line by line,
            // so its length changes.
            r.relay.echo = Echo::new(&route.actual_model, &r.body.model);
            let length =
                resp.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
            if let Some(echo) = r.relay.echo.as_mut() {
                match length {
                    // A whole JSON answer keeps a Content-Length (padded: protocol/echo.rs).
                    Some(n) if r.relay.content_type.starts_with("application/json") => {
                        resp.insert_header(http::header::CONTENT_LENGTH, echo.keep_length(n))?;
                    }
                    Some(_) => {
                        resp.remove_header(&http::header::CONTENT_LENGTH);
                        if !h2 {
                            resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
                        }
                    }
                    None => {}
                }
            }
        }
        if r.relay.stream.is_none() && is_stream(&r.relay.content_type) && !r.relay.sized && status < 300 {
            r.relay.stream = r.resume.map(crate::protocol::resume::Stream::new);
        }
        if r.cache_fill.is_some() {
            resp.insert_header("x-drover-cache", "miss")?;
        }
        resp.insert_header("x-drover-attempts", ctx.attempts.to_string())?;
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        super::respond::cors_headers(resp, ctx)?;
        Ok(())
    }

    /// `response_body_filter`: counts the bytes and reads token figures; the chunk itself passes untouched.
    pub(super) fn relay_body(&self, body: &mut Option<bytes::Bytes>, end: bool, ctx: &mut RequestCtx) {
        let Some(r) = ctx.routed.as_deref_mut() else { return };
        if let Some(answer) = r.relay.translate.as_mut() {
            *body = Some(answer.feed(body.as_ref(), end));
        } else if let Some(echo) = r.relay.echo.as_mut() {
            *body = echo.feed(body.as_ref(), end);
        }
        if let Some(stream) = r.relay.stream.as_mut() {
            *body = stream.feed(body.as_ref(), end);
        }
        if let Some(data) = body.as_ref() {
            if let Some(&last) = data.last() {
                r.relay.ends_line = last == b'\n';
            }
            ctx.bytes_out += data.len() as u64;
            if let Some(scan) = r.relay.scan.as_mut() {
                scan.feed(data);
            }
            // A copy kept for the session's memory and for the cache, each dropped once too big.
            if r.memory.as_mut().is_some_and(|(_, a)| !append_within(a, data, self.memory.settings.max_bytes * 4)) {
                r.memory = None;
            }
            if r.cache_fill.as_mut().is_some_and(|f| !append_within(f, data, self.cache.settings.max_entry_bytes)) {
                r.cache_fill = None;
            }
        }
        if end {
            if let Some(scan) = r.relay.scan.take() {
                // A whole answer is charged for what it said it used, or (a stream without
                // usage) what passed; an error answer only for what it said.
                ctx.usage = if (200..300).contains(&ctx.status) {
                    scan.settle(super::account::prompt_estimate(r.body.len()))
                } else {
                    scan.finish()
                };
            }
            // The answer is whole: the session's turn is stored before the client can send
            // the next one (which waits for it).
            if let Some((turn, answer)) = r.memory.take().filter(|_| ctx.status == 200) {
                self.memory.remember_soon(turn, crate::state::memory::answer_text(&answer));
            }
        }
    }

    /// `fail_to_proxy`: the proxy gave up. Before any byte reached the client it gets an error
    /// in its API's format; after, a stream ends with an error line in its own format.
    pub(super) async fn give_up(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        let client_gone = ctx.routed.as_ref().is_some_and(|r| r.client_gone)
            || (e.esource() == &ErrorSource::Downstream
                && matches!(e.etype(), ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError));
        if client_gone {
            ctx.error = Some("client disconnected".into());
            return FailToProxy { error_code: 0, can_reuse_downstream: false };
        }
        if session.response_written().is_some() {
            self.end_broken_stream(session, ctx).await;
            return FailToProxy { error_code: ctx.status, can_reuse_downstream: false };
        }
        let refusal = ctx.routed.as_deref_mut().and_then(|r| r.refusal.take());
        let api_error = refusal.unwrap_or_else(|| match e.etype() {
            ErrorType::HTTPStatus(code) if *code >= 400 => {
                ApiError::new(*code, "upstream_failed", format!("the request failed: {e}"))
            }
            _ if e.esource() == &ErrorSource::Downstream => {
                ApiError::new(400, "bad_request", format!("could not read the request: {e}"))
            }
            _ => ApiError::new(502, "upstream_failed", format!("the request failed: {e}")),
        });
        let status = api_error.status;
        self.out.error(session, ctx, api_error).await;
        FailToProxy { error_code: status, can_reuse_downstream: session.is_body_done() }
    }

    /// Bytes already reached the client: say so in the stream's own format, never cut silently.
    async fn end_broken_stream(&self, session: &mut Session, ctx: &mut RequestCtx) {
        let why = ctx.error.clone().unwrap_or_else(|| "the server broke off mid-response".into());
        let tail = ctx
            .routed
            .as_deref()
            .filter(|r| !r.relay.sized)
            .and_then(|r| Some((stream_error_tail(ctx.api, &r.relay.content_type, &why)?, r.relay.ends_line)));
        session.set_keepalive(None);
        match tail {
            Some((tail, ends_line)) => {
                let tail = if ends_line { tail } else { [&b"\n"[..], &tail].concat().into() };
                ctx.bytes_out += tail.len() as u64;
                let _ = session.write_response_body(Some(tail), true).await;
            }
            None => session.shutdown().await,
        }
    }
}

/// Appends `data` to `buf` if the result stays within `limit` bytes; false when it would not.
fn append_within(buf: &mut Vec<u8>, data: &[u8], limit: usize) -> bool {
    let fits = buf.len() + data.len() <= limit;
    if fits {
        buf.extend_from_slice(data);
    }
    fits
}
