//! Writing drover's own answers: JSON, text, errors in the client's API format, the CORS
//! headers every answer carries, and refusing a body that could not be read.

use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::Value;

use super::ctx::RequestCtx;
use crate::protocol::api::ApiError;
use crate::protocol::body::{drain, BodyError};

/// Admin requests and model-management calls are small JSON objects.
pub(super) const ADMIN_BODY_LIMIT: usize = 1024 * 1024;

/// A refused body is read and dropped for at most this long (and this many bytes), so
/// that the client reads the refusal rather than a reset connection.
const DRAIN_TIME: Duration = Duration::from_secs(5);
const DRAIN_BYTES: usize = 256 * 1024 * 1024;

/// Writes drover's own answers and decides which answers are compressed: the one setting
/// every stage that answers shares.
#[derive(Clone, Copy)]
pub(crate) struct Responder {
    pub(super) compression_level: u32,
    compression_min_bytes: usize,
}

impl Responder {
    pub(crate) fn new(settings: &crate::config::Settings) -> Responder {
        Responder {
            compression_level: settings.compression_level,
            compression_min_bytes: settings.compression_min_bytes,
        }
    }

    /// Whether an answer may be compressed: a whole one (never a stream, whose lines would
    /// wait in the encoder) of at least compression.min_bytes. Whether the client accepts
    /// an encoding, and whether the answer is encoded already, Pingora's module decides.
    pub(super) fn worth_compressing(&self, resp: &ResponseHeader) -> bool {
        let text = |name| resp.headers.get(name).and_then(|v: &http::HeaderValue| v.to_str().ok());
        let length = text(http::header::CONTENT_LENGTH).and_then(|l| l.parse::<usize>().ok());
        if self.compression_level == 0 || length.is_none_or(|n| n < self.compression_min_bytes) {
            return false;
        }
        !crate::protocol::api::is_stream(text(http::header::CONTENT_TYPE).unwrap_or(""))
    }
}

impl Responder {
    /// Refuses a body that could not be read whole; the connection closes after the answer.
    /// Boxed, as `error`.
    pub(super) fn refuse_body<'a>(
        &'a self,
        session: &'a mut Session,
        ctx: &'a mut RequestCtx,
        e: BodyError,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            session.set_keepalive(None);
            let drains = matches!(e, BodyError::TooLarge { .. } | BodyError::ChunkedTooLarge);
            self.error(session, ctx, e.into()).await;
            if drains {
                drain(session, DRAIN_BYTES, DRAIN_TIME).await;
            }
        })
    }

    pub(super) async fn json(&self, session: &mut Session, ctx: &mut RequestCtx, status: u16, value: &Value) {
        let body = serde_json::to_vec(value).expect("json values serialise");
        self.send(session, ctx, status, "application/json; charset=utf-8", body.into()).await
    }

    /// Writes `e` in the client's API format.
    ///
    /// Boxed: the hooks that may refuse (`request_filter` above all) hold only a pointer to
    /// this future, not its state, so the future Pingora boxes for every request stays small
    /// (see BENCHMARKS.md, issue 21: a 21 KB hook future was copied into its box per request).
    pub(super) fn error<'a>(
        &'a self,
        session: &'a mut Session,
        ctx: &'a mut RequestCtx,
        e: ApiError,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let e = seen_by_key(ctx, e);
            let body = e.body(ctx.api);
            ctx.error = Some(e.message.clone());
            ctx.status = e.status;
            let mut header = e.header(body.len());
            header.insert_header("x-request-id", ctx.request_id.as_str()).expect("valid id");
            if ctx.attempts > 0 {
                header.insert_header("x-drover-attempts", ctx.attempts.to_string()).expect("number");
            }
            self.write(session, ctx, header, body).await
        })
    }

    pub(super) async fn send(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        status: u16,
        content_type: &str,
        body: Bytes,
    ) {
        let mut header = ResponseHeader::build(status, Some(3)).expect("valid status");
        header.insert_header(http::header::CONTENT_TYPE, content_type).expect("static header");
        header.insert_header(http::header::CONTENT_LENGTH, body.len().to_string()).expect("number");
        header.insert_header("x-request-id", ctx.request_id.as_str()).expect("valid id");
        ctx.status = status;
        self.write(session, ctx, header, body).await
    }

    pub(super) async fn write(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        mut header: ResponseHeader,
        body: Bytes,
    ) {
        cors_headers(&mut header, ctx).expect("valid CORS headers");
        if !self.worth_compressing(&header) {
            no_compression(session);
        }
        let head = session.req_header().method == http::Method::HEAD;
        ctx.bytes_out += if head { 0 } else { body.len() as u64 };
        if session.write_response_header(Box::new(header), head).await.is_ok() && !head {
            let _ = session.write_response_body(Some(body), true).await;
        }
    }
}

/// The CORS headers of an answer to an allowed cross-origin request.
pub(super) fn cors_headers(header: &mut ResponseHeader, ctx: &RequestCtx) -> pingora::Result<()> {
    if let Some(origin) = &ctx.cors_origin {
        header.insert_header(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.as_str())?;
        header.insert_header(http::header::ACCESS_CONTROL_EXPOSE_HEADERS, crate::edge::cors::EXPOSE_HEADERS)?;
        header.append_header(http::header::VARY, "Origin")?;
    }
    Ok(())
}

/// Turns response compression off for this answer.
pub(super) fn no_compression(session: &mut Session) {
    use pingora::modules::http::compression::ResponseCompression;
    if let Some(c) = session.downstream_modules_ctx.get_mut::<ResponseCompression>() {
        c.adjust_level(0);
    }
}

/// An error as the request's key may see it: an unknown model's 404 lists the fleet's
/// models, which a key limited to some models is shown only as its own.
fn seen_by_key(ctx: &RequestCtx, mut e: ApiError) -> ApiError {
    let Some(key) = ctx.key.as_ref().filter(|k| k.restricted()) else { return e };
    if e.code == "model_not_found" {
        if let Some((head, _)) = e.message.split_once("; ") {
            e.message = format!("{head}; this API key may use: {}", key.record.models.join(", "));
        }
    }
    e
}

/// The host a request names: its Host header, or the authority of an HTTP/2 request.
pub(super) fn request_host(req: &pingora::http::RequestHeader) -> Option<&str> {
    let header = req.headers.get(http::header::HOST).and_then(|v| v.to_str().ok());
    header.or(req.uri.authority().map(|a| a.as_str()))
}
