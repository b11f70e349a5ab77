//! The response cache on the request path (state/cache.rs): a deterministic request is
//! answered from the cache before it takes a queue place, a slot or a memory reservation
//! (the key is the name a server knows the model by: each of the model's actual names is
//! looked up, usually one); a miss keeps the answer as it passes, stored only when it
//! ended well, under the key of the route that gave it.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use super::ctx::{Attempt, RequestCtx, Routed};
use super::relay::Relay;
use super::respond::{cors_headers, no_compression};
use super::route::Routing;
use crate::state::cache::{Directive, ResponseCache};
use crate::telemetry::metrics::CACHE;

/// Whose answers a request may be given: its API key's own (the key's hash, never another key's), unless
/// cache.shared_across_keys; without keys, everyone's.
fn cache_tenant(cache: &ResponseCache, ctx: &RequestCtx) -> String {
    match ctx.key.as_ref().filter(|_| !cache.settings.shared_across_keys) {
        Some(k) => k.tenant().to_string(),
        None => String::new(),
    }
}

impl Routing {
    /// Answers from the cache when it holds this request's answer under one of the model's
    /// actual names; true when it did. On a miss, the answer will be kept as it passes.
    pub(super) async fn answered_from_cache(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        routed: &mut Routed,
    ) -> bool {
        if !self.cache.settings.enabled || !routed.body.deterministic {
            return false;
        }
        let headers = &session.req_header().headers;
        let directive = Directive::of(headers.get(http::header::CACHE_CONTROL).and_then(|v| v.to_str().ok()));
        if directive == Directive::Bypass {
            CACHE.with_label_values(&["bypass"]).inc();
            return false;
        }
        routed.cache_fill = Some(Vec::new());
        if directive == Directive::Refresh {
            CACHE.with_label_values(&["bypass"]).inc();
            return false;
        }
        let mut found = None;
        let tenant = cache_tenant(&self.cache, ctx);
        for actual in routed.fleet.actual_models(&routed.body.name) {
            let key = ResponseCache::key(
                &tenant,
                routed.call.path(),
                &answer_name(routed, &actual),
                &routed.body.rewritten(&actual),
            );
            if let Some(entry) = self.cache.get(&key).await {
                found = Some((actual, entry));
                break;
            }
        }
        let Some((actual, entry)) = found else {
            CACHE.with_label_values(&["miss"]).inc();
            return false;
        };
        CACHE.with_label_values(&["hit"]).inc();
        ctx.model_known = true;
        ctx.server = Some(entry.server.clone());
        ctx.actual_model = Some(actual);
        ctx.status = 200;
        let mut header = ResponseHeader::build(200, Some(5)).expect("valid status");
        header.insert_header(http::header::CONTENT_TYPE, entry.content_type.as_str()).expect("stored header");
        if !entry.streamed() {
            header.insert_header(http::header::CONTENT_LENGTH, entry.body.len().to_string()).expect("number");
        }
        header.insert_header("x-drover-cache", "hit").expect("static header");
        header.insert_header("x-drover-server", entry.server.as_str()).expect("stored header");
        header.insert_header("x-request-id", ctx.request_id.as_str()).expect("valid id");
        cors_headers(&mut header, ctx).expect("valid CORS headers");
        if entry.streamed() || !self.out.worth_compressing(&header) {
            no_compression(session);
        }
        if session.write_response_header(Box::new(header), false).await.is_err() {
            return true;
        }
        let mut pieces = entry.pieces();
        if pieces.is_empty() {
            pieces.push(Bytes::new()); // an empty stream still ends
        }
        let last = pieces.len() - 1;
        for (i, piece) in pieces.into_iter().enumerate() {
            ctx.bytes_out += piece.len() as u64;
            if session.write_response_body(Some(piece), i == last).await.is_err() {
                break;
            }
        }
        true
    }
}

impl Relay {
    /// `logging` of a request that ended without an error: a whole successful answer of a
    /// cache miss is kept, under the key of the route that gave it.
    pub(super) async fn keep_answer(&self, ctx: &mut RequestCtx) {
        let tenant = cache_tenant(&self.cache, ctx);
        let Some(r) = ctx.routed.as_deref_mut() else { return };
        let Some(fill) = r.cache_fill.take() else { return };
        let Attempt::Running(run) = &r.attempt else { return };
        if ctx.status != 200 || ctx.error.is_some() || r.client_gone {
            return;
        }
        let name = answer_name(r, &run.route.actual_model);
        let key = ResponseCache::key(&tenant, r.call.path(), &name, &run.payload);
        let entry = crate::state::cache::Entry {
            content_type: r.relay.content_type.clone(),
            server: run.route.server.url.as_str().to_string(),
            body: Bytes::from(fill),
        };
        self.cache.put(&key, entry).await;
    }
}

/// What the cache keys an answer by besides the path and the body: the model that served it,
/// and on Ollama's API, where the answer names the model as asked (protocol/echo.rs), that
/// name too.
fn answer_name(r: &Routed, actual: &str) -> String {
    if r.call.native() && r.body.model != actual {
        format!("{actual}\0{}", r.body.model)
    } else {
        actual.to_string()
    }
}
