//! Forwarding a model-routed request: take a slot, send the rewritten body, retry before the first byte, stream back.
//!
//! Pingora's proxy loop cannot send a body it did not read itself beyond its 64 KiB retry
//! buffer, so model-routed requests are forwarded here with Pingora's own upstream
//! connector (pooled connections, timeouts), from drover's own request handler. That gives full control
//! of retries: the rewritten body is re-sent on every attempt, a 5xx before any byte
//! reached the client goes to the next server, and a client that hangs up drops the
//! upstream request at once (so Ollama stops generating).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName};
use pingora::connectors::http::v1::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::v1::client::HttpSession;
use pingora::protocols::http::ServerSession as Session;
use pingora::upstreams::peer::HttpPeer;
use tokio::io::AsyncWriteExt;

use crate::api::{stream_error_tail, ApiError};
use crate::body::RoutableBody;
use crate::config::{Settings, Strategy};
use crate::fleet::{Fleet, Origin, Route, Server, Slot};
use crate::metrics::{self, RetryReason};
use crate::proxy::RequestCtx;
use crate::queue::Queue;
use crate::reload::Tally;
use crate::resources::{Reservation, ResourceCheck};
use crate::select::{select, Request, Selection};
use crate::usage::UsageScan;

/// How a forwarded request ended.
pub enum Outcome {
    /// A response (success or the last server's error) was written to the client.
    Answered,
    /// The client hung up; nothing more can be written.
    ClientGone,
    /// Nothing was written yet; the caller answers with this error.
    Refused(ApiError),
}

pub struct Forwarder {
    connector: Connector,
    tally: Arc<Tally>,
    pub resources: Arc<ResourceCheck>,
    connect_timeout: Duration,
    read_timeout: Duration,
    max_retry_count: u32,
    cooldown: Duration,
    strategy: Strategy,
    model_strategies: HashMap<String, Strategy>,
    queue: Queue,
}

/// What one attempt on one server gave.
enum Attempt {
    Done,
    ClientGone,
    /// Failed before any byte reached the client: try another server.
    Failed(RetryReason, String),
    /// The server answered 5xx; kept in case no other server can be tried.
    ServerError(Box<(HttpSession, HttpPeer)>),
}

/// Headers that belong to one connection, not to the message (RFC 9110 7.6.1), plus those drover sets itself.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

impl Forwarder {
    pub fn new(settings: &Settings, tally: Arc<Tally>) -> Forwarder {
        let mut options = pingora::connectors::ConnectorOptions::new(settings.http_client.keepalive_pool);
        options.keepalive_pool_size = settings.http_client.keepalive_pool;
        let lb = &settings.load_balancer;
        Forwarder {
            connector: Connector::new(Some(options)),
            tally,
            resources: ResourceCheck::new(settings.resources.clone(), settings.load_balancer.health_check_timeout),
            connect_timeout: settings.http_client.connect_timeout,
            read_timeout: settings.http_client.read_timeout,
            max_retry_count: lb.max_retry_count,
            cooldown: lb.cooldown,
            strategy: lb.strategy,
            model_strategies: lb.model_strategies.clone(),
            queue: Queue::new(lb.queue_size, lb.queue_timeout),
        }
    }

    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    pub async fn forward(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        fleet: &Fleet,
        body: &RoutableBody,
        native: bool,
    ) -> Outcome {
        let mut tried: Vec<Arc<Server>> = Vec::new();
        let mut last_failure: Option<String> = None;
        let mut pending: Option<(Box<HttpSession>, HttpPeer, Arc<Route>)> = None;
        loop {
            let can_retry = ctx.attempts <= self.max_retry_count;
            let next = if can_retry {
                let req = Request { model: &body.model, native_api: native, tried: &tried, waiting: 0 };
                Some(self.acquire(session, fleet, &req, !tried.is_empty()).await)
            } else {
                None
            };
            let (route, slot, _reservation) = match next {
                Some(Ok(chosen)) => chosen,
                Some(Err(Outcome::ClientGone)) => return Outcome::ClientGone,
                other => {
                    // Out of servers or out of retries: the last server's own 5xx answer says
                    // most; failing that, say what went wrong where.
                    if let Some((up, peer, route)) = pending.take() {
                        return self.relay(session, ctx, &route, up, peer).await;
                    }
                    return match (other, last_failure) {
                        (_, Some(why)) => Outcome::Refused(ApiError::new(
                            502,
                            "upstream_failed",
                            format!(
                                "model {:?}: every server tried failed ({} attempts); last error: {why}",
                                body.model, ctx.attempts
                            ),
                        )),
                        (Some(Err(refused)), None) => refused,
                        _ => unreachable!("no retry can be refused before a first attempt"),
                    };
                }
            };
            pending = None;
            tried.push(route.server.clone());
            ctx.attempts += 1;
            ctx.server = Some(route.server.url.as_str().to_string());
            ctx.actual_model = Some(route.actual_model.clone());
            let payload = body.rewritten(&route.actual_model);
            match self.attempt(session, ctx, &route, payload).await {
                Attempt::Done => return Outcome::Answered,
                Attempt::ClientGone => return Outcome::ClientGone,
                Attempt::Failed(reason, why) => {
                    metrics::RETRIES.with_label_values(&[reason.as_str()]).inc();
                    log::warn!(
                        "{} failed on {} (attempt {}): {why}",
                        ctx.request_id,
                        route.server.url.as_str(),
                        ctx.attempts
                    );
                    route.server.record_failure(&why, self.cooldown);
                    last_failure = Some(format!("{}: {why}", route.server.url.as_str()));
                }
                Attempt::ServerError(failed) => {
                    metrics::RETRIES.with_label_values(&[RetryReason::Status5xx.as_str()]).inc();
                    let (up, peer) = *failed;
                    let status = up.resp_header().map_or(0, |h| h.status.as_u16());
                    let why = format!("answered HTTP {status}");
                    log::warn!("{} {} {why} (attempt {})", ctx.request_id, route.server.url.as_str(), ctx.attempts);
                    route.server.record_failure(&why, self.cooldown);
                    last_failure = Some(format!("{}: {why}", route.server.url.as_str()));
                    pending = Some((Box::new(up), peer, route.clone()));
                }
            }
            drop(slot);
        }
    }

    /// Takes a slot on the best eligible route, waiting in the queue while all are busy.
    async fn acquire(
        &self,
        session: &mut Session,
        fleet: &Fleet,
        req: &Request<'_>,
        retrying: bool,
    ) -> Result<(Arc<Route>, Slot, Option<Reservation>), Outcome> {
        let deadline = Instant::now() + self.queue.timeout;
        let mut ticket = None;
        let queue_full = || {
            Outcome::Refused(
                ApiError::new(
                    503,
                    "queue_full",
                    format!(
                        "every server for model {:?} is busy and {} requests are already waiting (load_balancer.queue_size); retry later",
                        req.model, self.queue.size
                    ),
                )
                .retry_after(1),
            )
        };
        if self.queue.has_line(req.model) {
            // Others are already waiting for this model: no overtaking them.
            ticket = Some(self.queue.enter(req.model, &fleet.released).ok_or_else(queue_full)?);
        }
        loop {
            let released = fleet.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let my_turn = ticket.as_ref().is_none_or(|t| t.at_head());
            let selection = if my_turn {
                if let Some(mr) = fleet.named_routes(req.model) {
                    self.resources.refresh(&mr.routes).await;
                }
                let strategy = self.model_strategies.get(req.model).copied().unwrap_or(self.strategy);
                let req = Request { waiting: self.queue.line_len(req.model), ..*req };
                select(fleet, strategy, &req, &self.resources)
            } else {
                Selection::AllBusy { memory: None }
            };
            match selection {
                Selection::Chosen(route, slot, reservation) => return Ok((route, slot, reservation)),
                Selection::UnknownModel => return Err(Outcome::Refused(unknown_model(fleet, req.model))),
                Selection::Unavailable(why) => {
                    let what = if retrying { "no other server can serve" } else { "no server can serve" };
                    return Err(Outcome::Refused(
                        ApiError::new(503, "no_server_available", format!("{what} model {:?} now: {why}", req.model))
                            .retry_after(self.cooldown.as_secs().max(1)),
                    ));
                }
                Selection::AllBusy { memory } => {
                    if ticket.is_none() {
                        ticket = Some(self.queue.enter(req.model, &fleet.released).ok_or_else(queue_full)?);
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        let message = match memory {
                            Some(why) => format!(
                                "no server had the memory to load model {:?} within {:?} (load_balancer.queue_timeout): {why}",
                                req.model, self.queue.timeout
                            ),
                            None => format!(
                                "every server for model {:?} stayed busy for {:?} (load_balancer.queue_timeout); retry later",
                                req.model, self.queue.timeout
                            ),
                        };
                        return Err(Outcome::Refused(
                            ApiError::new(503, "queue_timeout", message)
                                .retry_after(self.queue.timeout.as_secs().max(1)),
                        ));
                    }
                    // Wake on a freed slot, and now and then anyway: health and cooldowns change too.
                    tokio::select! {
                        _ = released => {}
                        _ = tokio::time::sleep(left.min(Duration::from_millis(250))) => {}
                        _ = client_gone(session) => return Err(Outcome::ClientGone),
                    }
                }
            }
        }
    }

    /// One try on one server: send, wait for the response header, then relay or report.
    async fn attempt(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Arc<Route>,
        payload: Bytes,
    ) -> Attempt {
        let server = &route.server;
        let addr = match server.resolve().await {
            Ok(a) => a,
            Err(e) => return Attempt::Failed(RetryReason::Connect, format!("cannot resolve {}: {e}", server.url.host)),
        };
        let peer = server.peer(addr, self.connect_timeout, self.read_timeout);
        // A pooled connection may have been closed by the server while idle; such a failure
        // before any response byte is retried once on a fresh connection, not counted as a try.
        let mut fresh_only = false;
        loop {
            // A pooled connection first; connecting is boxed, because its future is large
            // (about 9 KB) and would otherwise be part of every request's state while it streams.
            let pooled = match fresh_only {
                false => self.connector.reused_http_session(&peer).await,
                true => None,
            };
            let (up, reused) = match pooled {
                Some(up) => (up, true),
                None => match Box::pin(self.connector.get_http_session(&peer)).await {
                    Ok(s) => s,
                    Err(e) => return Attempt::Failed(RetryReason::Connect, format!("connect: {e}")),
                },
            };
            let reused = reused && !fresh_only;
            let (up, header) = match send(up, &peer, session.req_header(), server, &payload, &ctx.request_id).await {
                Err(e) if reused => {
                    log::debug!("stale pooled connection to {}: {e}", server.url.as_str());
                    fresh_only = true;
                    continue;
                }
                Err(e) => return Attempt::Failed(RetryReason::Send, format!("sending request: {e}")),
                Ok(mut up) => {
                    let header = tokio::select! {
                        r = read_final_header(&mut up) => r,
                        _ = client_gone(session) => return Attempt::ClientGone,
                    };
                    (up, header)
                }
            };
            match header {
                Err(e) if reused && !matches!(e.etype(), pingora::ErrorType::ReadTimedout) => {
                    log::debug!("stale pooled connection to {}: {e}", server.url.as_str());
                    fresh_only = true;
                    continue;
                }
                Err(e) => {
                    let reason = match e.etype() {
                        pingora::ErrorType::ReadTimedout => RetryReason::Timeout,
                        _ => RetryReason::Response,
                    };
                    return Attempt::Failed(reason, format!("waiting for the response: {e}"));
                }
                Ok(status) if status >= 500 => return Attempt::ServerError(Box::new((up, peer))),
                Ok(_) => return self.relay(session, ctx, route, Box::new(up), peer).await.into(),
            }
        }
    }

    /// Streams the upstream response to the client, chunk by chunk as it arrives.
    async fn relay(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &Route,
        mut up: Box<HttpSession>,
        peer: HttpPeer,
    ) -> Outcome {
        let uh = up.resp_header().expect("header was read");
        let status = uh.status.as_u16();
        let content_type = uh.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let mut resp = ResponseHeader::build_no_case(uh.status, Some(uh.headers.len() + 4)).expect("valid status");
        for (name, value) in uh.headers.iter() {
            if !HOP_BY_HOP.contains(name) {
                resp.append_header(name.clone(), value.clone()).expect("valid header");
            }
        }
        let sized = uh.headers.contains_key(header::CONTENT_LENGTH);
        if !sized && session.req_header().version == http::Version::HTTP_11 {
            resp.insert_header(header::TRANSFER_ENCODING, "chunked").expect("static header");
        }
        resp.insert_header("x-drover-server", route.server.url.as_str()).expect("url is a valid header");
        resp.insert_header("x-drover-attempts", ctx.attempts.to_string()).expect("number");
        resp.insert_header("x-request-id", ctx.request_id.as_str()).expect("request id is a valid header");
        ctx.status = status;
        ctx.ttfb = Some(ctx.started.elapsed());
        if let (Origin::Store, Some(id)) = (route.origin, route.id) {
            self.tally.add(id);
        }
        if status < 400 {
            // It answered, so the model is loaded there now, whatever /api/ps said last.
            route.server.mark_loaded(&route.actual_model);
        }
        if session.write_response_header(Box::new(resp)).await.is_err() {
            return Outcome::ClientGone;
        }
        let mut ends_line = true;
        let mut usage = UsageScan::new(&content_type);
        loop {
            let chunk = tokio::select! {
                biased;
                c = up.read_body_bytes() => c,
                _ = client_gone(session) => return Outcome::ClientGone,
            };
            match chunk {
                Ok(Some(data)) => {
                    if let Some(&last) = data.last() {
                        ends_line = last == b'\n';
                    }
                    ctx.bytes_out += data.len() as u64;
                    // Forwarded first, read after: the scan never delays a chunk.
                    let scanned = data.clone();
                    if session.write_response_body(data, false).await.is_err() {
                        return Outcome::ClientGone;
                    }
                    usage.feed(&scanned);
                }
                Ok(None) => {
                    ctx.usage = usage.finish();
                    break;
                }
                Err(e) => {
                    // Bytes already reached the client: say so in the stream's own format, never cut silently.
                    let why = format!("{} broke off mid-response: {e}", route.server.url.as_str());
                    log::warn!("{} {why}", ctx.request_id);
                    route.server.record_failure(&why, self.cooldown);
                    ctx.error = Some(why.clone());
                    if let (false, Some(tail)) = (sized, stream_error_tail(&content_type, &why)) {
                        let tail = if ends_line { tail } else { [&b"\n"[..], &tail].concat().into() };
                        let _ = session.write_response_body(tail, true).await;
                    } else {
                        session.set_keepalive(None);
                        session.shutdown().await;
                    }
                    return Outcome::Answered;
                }
            }
        }
        if session.finish_body().await.is_err() {
            return Outcome::ClientGone;
        }
        if up.is_body_done() {
            self.connector.release_http_session(*up, &peer, peer.options.idle_timeout).await;
        }
        Outcome::Answered
    }
}

impl From<Outcome> for Attempt {
    fn from(o: Outcome) -> Attempt {
        match o {
            Outcome::ClientGone => Attempt::ClientGone,
            _ => Attempt::Done,
        }
    }
}

/// Whether a client header is passed upstream: not hop-by-hop, and not one drover sets itself.
fn passed_on(name: &HeaderName) -> bool {
    !HOP_BY_HOP.contains(name)
        && name != header::HOST
        && name != header::CONTENT_LENGTH
        && name != header::EXPECT
        && name.as_str() != "x-request-id"
}

/// The upstream request as HTTP/1.1 bytes: the client's, minus hop-by-hop headers, with the
/// server's Host, the new length and the request id; the body appended when it is small.
/// Written straight from the client's parsed header (every part of it already validated).
fn upstream_wire(client: &RequestHeader, base_path: &str, authority: &str, body: &[u8], request_id: &str) -> Vec<u8> {
    let pq = client.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let inline = body.len() <= ONE_WRITE_MAX;
    let mut w = Vec::with_capacity(256 + client.headers.len() * 48 + if inline { body.len() } else { 0 });
    w.extend_from_slice(client.method.as_str().as_bytes());
    w.push(b' ');
    w.extend_from_slice(base_path.as_bytes());
    w.extend_from_slice(pq.as_bytes());
    w.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in client.headers.iter().filter(|(name, _)| passed_on(name)) {
        for part in [name.as_str().as_bytes(), b": ", value.as_bytes(), b"\r\n"] {
            w.extend_from_slice(part);
        }
    }
    let mut length = itoa::Buffer::new();
    for (name, value) in
        [("host", authority), ("content-length", length.format(body.len())), ("x-request-id", request_id)]
    {
        for part in [name, ": ", value, "\r\n"] {
            w.extend_from_slice(part.as_bytes());
        }
    }
    w.extend_from_slice(b"\r\n");
    if inline {
        w.extend_from_slice(body);
    }
    w
}

/// Bodies up to this size go out in the same write as the request header.
const ONE_WRITE_MAX: usize = 64 * 1024;

/// Sends the request header and body.
///
/// Pingora's client flushes the header on its own, so a small request would cost two sends,
/// and the server two wake-ups. The header and body are written here in one write through
/// the session's stream, and a fresh session (same pooled connection) reads the response
/// (for a POST it needs nothing from the request to read the answer).
async fn send(
    up: HttpSession,
    peer: &HttpPeer,
    client: &RequestHeader,
    server: &Server,
    payload: &Bytes,
    request_id: &str,
) -> pingora::Result<HttpSession> {
    debug_assert_eq!(client.method, http::Method::POST, "only POSTs are model-routed");
    let wire = upstream_wire(client, &server.url.base_path, &server.url.authority(), payload, request_id);
    let mut stream = up.into_inner();
    let write = async {
        stream.write_all(&wire).await?;
        if payload.len() > ONE_WRITE_MAX {
            stream.write_all(payload).await?;
        }
        stream.flush().await
    };
    let written = match peer.options.write_timeout {
        Some(t) => tokio::time::timeout(t, write).await.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
        None => write.await,
    };
    written.map_err(|e| {
        let etype = match e.kind() {
            std::io::ErrorKind::TimedOut => pingora::ErrorType::WriteTimedout,
            _ => pingora::ErrorType::WriteError,
        };
        pingora::Error::because(etype, "sending request", e)
    })?;
    let mut up = HttpSession::new_with_options(stream, peer);
    // Pingora's client sessions do not take the timeouts from the peer options.
    up.read_timeout = peer.options.read_timeout;
    up.write_timeout = peer.options.write_timeout;
    Ok(up)
}

/// Reads the response header, skipping 1xx interim responses.
async fn read_final_header(up: &mut HttpSession) -> pingora::Result<u16> {
    loop {
        up.read_response().await?;
        let status = up.resp_header().expect("header was read").status;
        if !status.is_informational() {
            return Ok(status.as_u16());
        }
    }
}

/// Resolves when the client has gone away (it never sends more once the body is read).
pub async fn client_gone(session: &mut Session) {
    loop {
        match session.read_body_or_idle(true).await {
            Err(_) => return,
            // Bytes of a pipelined next request: not a hang-up, keep watching.
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A 404 that lists the models a client can ask for.
pub fn unknown_model(fleet: &Fleet, model: &str) -> ApiError {
    let names = fleet.model_names();
    let known = if names.is_empty() {
        "no models are available yet (no server reported any)".to_string()
    } else {
        let shown: Vec<&str> = names.iter().take(50).map(String::as_str).collect();
        format!("available models: {}", shown.join(", "))
    };
    ApiError::new(404, "model_not_found", format!("model {model:?} not found on any server; {known}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_wire_drops_hop_by_hop_and_sets_host_length_and_id() {
        let mut client = RequestHeader::build("POST", b"/api/chat?x=1", None).unwrap();
        for (name, value) in [
            ("host", "drover:11434"),
            ("content-type", "application/json"),
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("content-length", "999"),
            ("expect", "100-continue"),
            ("x-request-id", "from-client"),
            ("authorization", "Bearer t"),
            ("x-custom", "a"),
            ("x-custom", "b"),
        ] {
            client.append_header(name, value).unwrap();
        }
        let body = br#"{"model":"qwen3:14b"}"#;
        let wire = upstream_wire(&client, "/ollama", "gpu1:11434", body, "req-1");
        let text = String::from_utf8(wire).unwrap();
        let (head, sent_body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(sent_body.as_bytes(), body);
        let mut lines = head.split("\r\n");
        assert_eq!(lines.next(), Some("POST /ollama/api/chat?x=1 HTTP/1.1"));
        let mut headers: Vec<&str> = lines.collect();
        headers.sort();
        assert_eq!(
            headers,
            [
                "authorization: Bearer t",
                "content-length: 21",
                "content-type: application/json",
                "host: gpu1:11434",
                "x-custom: a",
                "x-custom: b",
                "x-request-id: req-1",
            ]
        );
        // A large body is sent after the header, not copied into it.
        let big = vec![b' '; ONE_WRITE_MAX + 1];
        let wire = upstream_wire(&client, "", "gpu1:11434", &big, "req-2");
        assert!(wire.ends_with(b"\r\n\r\n") && wire.len() < 1024);
        assert!(String::from_utf8(wire).unwrap().contains(&format!("content-length: {}\r\n", big.len())));
    }
}
