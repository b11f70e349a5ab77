//! The body stage of a model-routed call: read the body whole (bounded), put a session's
//! earlier messages first (memory.rs), parse it once, check the key may use the model, and
//! answer an unload for every server (unload.rs), from the response cache, or wait for a
//! first route (wait.rs).

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::proxy::Session;

use super::ctx::{Attempt, RequestCtx, Routed};
use super::respond::Responder;
use crate::config::Settings;
use crate::fleet::client::Client;
use crate::fleet::Fleet;
use crate::protocol::api::Call;
use crate::protocol::body::{read_bounded, RoutableBody};
use crate::protocol::resume::Format;
use crate::routing::scheduler::{Refused, Scheduler};
use crate::state::cache::ResponseCache;
use crate::state::memory::Memory;

/// The body stage and a first route: what it reads, answers from, and asks.
pub(crate) struct Routing {
    pub(super) fleet: Arc<ArcSwap<Fleet>>,
    pub(super) scheduler: Arc<Scheduler>,
    /// Conversation memory (state/memory.rs): a session's earlier messages.
    pub(super) memory: Arc<Memory>,
    /// Answers to deterministic requests (state/cache.rs).
    pub(super) cache: Arc<ResponseCache>,
    /// For an unload sent to every server that has the model (unload.rs).
    pub(super) client: Arc<Client>,
    max_body_bytes: usize,
    resume: Resumption,
    pub(super) out: Responder,
}

impl Routing {
    pub(crate) fn new(
        settings: &Settings,
        fleet: Arc<ArcSwap<Fleet>>,
        scheduler: Arc<Scheduler>,
        memory: Arc<Memory>,
        cache: Arc<ResponseCache>,
        client: Arc<Client>,
    ) -> Routing {
        let lb = &settings.load_balancer;
        Routing {
            fleet,
            scheduler,
            memory,
            cache,
            client,
            max_body_bytes: lb.max_body_bytes,
            resume: Resumption { on: lb.resume, per_model: lb.model_resume.clone() },
            out: Responder::new(settings),
        }
    }

    /// The body stage of a model-routed call: read and parse the body, then wait for a
    /// first route. Returns true when the request was answered here (an error).
    pub(super) async fn route(&self, session: &mut Session, ctx: &mut RequestCtx, call: Call) -> bool {
        let body = match read_bounded(session, self.max_body_bytes, true).await {
            Ok(b) => b,
            Err(e) => {
                self.out.refuse_body(session, ctx, e).await;
                return true;
            }
        };
        ctx.bytes_in = body.len() as u64;
        // The rare paths' futures are boxed, so that this one (inside `request_filter`'s,
        // which Pingora boxes for every request) stays small.
        let req = session.req_header();
        let (body, turn) = match self.memory.session(call, &req.headers) {
            Some(id) => {
                // Sessions are the key's own (state/memory.rs); without keys, one anonymous tenant's.
                let tenant = ctx.key.as_ref().map_or("", |k| k.tenant());
                Box::pin(self.with_history(tenant, id, body)).await
            }
            None => (body, None),
        };
        let body = match RoutableBody::parse(body) {
            Ok(b) => b,
            Err(e) => {
                self.out.error(session, ctx, e.into()).await;
                return true;
            }
        };
        ctx.model = Some(body.name.clone());
        if let Some(key) = ctx.key.as_ref().filter(|k| !k.allows(&body.name)) {
            let e = key.refuse_model(&body.model);
            self.out.error(session, ctx, e).await;
            return true;
        }
        if call.can_unload() && body.unload {
            Box::pin(self.unload(session, ctx, call, &body)).await;
            return true;
        }
        if call == Call::Show && Box::pin(self.show_locally(session, ctx, &body)).await {
            return true;
        }
        let mut routed = Routed::new(body, call, self.fleet.load_full());
        if let Some(key) = &ctx.key {
            // Its place in the queue's fair order (routing/queue.rs).
            routed.tenant = crate::routing::queue::Tenant {
                key: key.record.id,
                weight: key.scheduling.weight,
                batch: key.scheduling.class == crate::edge::keys::Class::Batch,
            };
        }
        routed.resume = self.resume.format(&routed.body.name, call);
        routed.memory = turn.map(|t| (t, Vec::new()));
        routed.affinity = self.scheduler.conversation(&session.req_header().headers, &routed.body);
        if self.answered_from_cache(session, ctx, &mut routed).await {
            return true;
        }
        let taken = super::wait::take_route(&self.scheduler, session, &routed, false).await;
        ctx.model_known = !matches!(&taken, Err(Refused::Error(e)) if e.code == "model_not_found");
        match taken {
            Ok(chosen) => {
                routed.attempt = Attempt::Ready(chosen);
                ctx.routed = Some(Box::new(routed));
                false
            }
            Err(Refused::ClientGone) => {
                ctx.error = Some("client disconnected".into());
                session.set_keepalive(None);
                true
            }
            Err(Refused::Error(e)) => {
                self.out.error(session, ctx, e).await;
                true
            }
        }
    }
}

/// load_balancer.resume, and its per-model exceptions.
struct Resumption {
    on: bool,
    per_model: HashMap<String, bool>,
}

impl Resumption {
    /// The format in which a stream of `model` from `call` is continued elsewhere when its
    /// server breaks off; `None` where resumption is off or the call cannot be continued.
    fn format(&self, model: &str, call: Call) -> Option<Format> {
        let on = self.per_model.get(model).copied().unwrap_or(self.on);
        Format::of_call(call).filter(|_| on)
    }
}
