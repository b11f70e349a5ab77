//! `Drover`, the balancer every request shares: one part per stage of a request, each built
//! by serve.rs (the composition root) from only what that stage uses, and handed in.

use pingora::http::ResponseHeader;

use super::account::Accounting;
use super::admit::Admission;
use super::own::OwnAnswers;
use super::relay::Relay;
use super::route::Routing;
use super::upstream::Upstream;

/// The balancer: one per process, shared by every request. The hooks (mod.rs) hand each
/// stage the request; a stage reaches only its own parts.
pub struct Drover {
    /// request_filter: the request id, CORS, API keys and limits (admit.rs).
    pub(super) admission: Admission,
    /// request_filter: the body stage, the response cache, a first route (route.rs).
    pub(super) routing: Routing,
    /// upstream_peer to upstream_response_filter: one attempt on one server (upstream.rs).
    pub(super) upstream: Upstream,
    /// response_filter to fail_to_proxy: the answer on its way back (relay.rs).
    pub(super) relay: Relay,
    /// logging: metrics, the access log, usage (account.rs).
    pub(super) accounting: Accounting,
    /// request_filter: what drover answers itself (own.rs).
    pub(super) own: OwnAnswers,
    /// How every answer is compressed, drover's own and relayed (respond.rs).
    pub(super) out: Responder,
}

impl Drover {
    pub fn new(
        admission: Admission,
        routing: Routing,
        upstream: Upstream,
        relay: Relay,
        accounting: Accounting,
        own: OwnAnswers,
        out: Responder,
    ) -> Drover {
        Drover { admission, routing, upstream, relay, accounting, own, out }
    }
}

/// Writes drover's own answers (respond.rs) and decides which answers are compressed:
/// the one setting every stage that answers shares.
#[derive(Clone, Copy)]
pub struct Responder {
    pub(super) compression_level: u32,
    compression_min_bytes: usize,
}

impl Responder {
    pub fn new(settings: &crate::config::Settings) -> Responder {
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
