//! `Drover`, the balancer every request shares: one part per stage of a request, each built
//! by serve.rs (the composition root) from only what that stage uses, and handed in.

use super::account::Accounting;
use super::admit::Admission;
use super::own::OwnAnswers;
use super::relay::Relay;
use super::respond::Responder;
use super::route::Routing;
use super::upstream::Upstream;

/// The balancer: one per process, shared by every request. The hooks (mod.rs) hand each
/// stage the request; a stage reaches only its own parts.
pub(crate) struct Drover {
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
    pub(crate) fn new(
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
