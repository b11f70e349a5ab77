//! The end of a request: Prometheus counters and one JSON access-log line.

use std::sync::Arc;

use pingora::proxy::Session;

use super::ctx::RequestCtx;
use crate::ops::errors::RecentErrors;
use crate::state::shared::Shared;
use crate::telemetry::accesslog::{AccessLog, Line};

/// The accounting stage: where a finished request is written down.
pub(crate) struct Accounting {
    access_log: Arc<AccessLog>,
    /// The last errors clients got, for the dashboard.
    recent_errors: Arc<RecentErrors>,
    /// A key's token bucket, debited fleet-wide when Redis is configured.
    shared: Arc<Shared>,
}

impl Accounting {
    pub(crate) fn new(access_log: Arc<AccessLog>, recent_errors: Arc<RecentErrors>, shared: Arc<Shared>) -> Accounting {
        Accounting { access_log, recent_errors, shared }
    }

    /// Counts the request in the metrics and writes its access-log line.
    pub(super) fn log(&self, session: &Session, ctx: &mut RequestCtx) {
        // An answer that never ended (the client hung up before the last line, or the server
        // broke off) is charged for what passed; one the client left before it began, for
        // its prompt: hanging up cannot dodge a token quota.
        if let Some(r) = ctx.routed.as_deref_mut() {
            if let Some(scan) = r.relay.scan.take() {
                ctx.usage = scan.settle(prompt_estimate(r.body.len()));
            } else if ctx.status == 0 && ctx.attempts > 0 && ctx.usage.prompt_tokens.is_none() {
                ctx.usage.prompt_tokens = Some(prompt_estimate(r.body.len()));
            }
        }
        let ctx = &*ctx;
        account(ctx);
        // A key's usage: the model calls it made that went to a server.
        if let Some(key) = ctx.key.as_ref().filter(|_| ctx.attempts > 0) {
            key.record(&ctx.usage, std::time::Instant::now());
            // With Redis, the key's token bucket is the fleet's: debit it there, in batches.
            let tokens = ctx.usage.prompt_tokens.unwrap_or(0) + ctx.usage.completion_tokens.unwrap_or(0);
            if let Some((bucket, per_minute)) =
                crate::state::shared::BucketUse::key_tokens(key).filter(|_| tokens > 0 && self.shared.active())
            {
                self.shared.debit_soon(&bucket, per_minute, tokens);
            }
        }
        let req = session.req_header();
        let u = &ctx.usage;
        // For the dashboard: refusals drover wrote, and server errors it relayed.
        let error = ctx
            .error
            .clone()
            .or_else(|| (ctx.status >= 500).then(|| format!("the server answered HTTP {}", ctx.status)));
        if let Some(error) = error.filter(|_| ctx.status >= 400 && !req.uri.path().starts_with("/dashboard")) {
            let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
            self.recent_errors.push(serde_json::json!({
                "time": time, "status": ctx.status, "model": ctx.model, "server": ctx.server,
                "path": req.uri.path(), "error": error,
            }));
        }
        let mut line = Line::new();
        line.now("time").str("request_id", Some(&ctx.request_id));
        match session.client_addr() {
            Some(a) => match a.as_inet() {
                Some(inet) => line.addr("client", Some(*inet)),
                None => line.str("client", Some(&a.to_string())),
            },
            None => line.str("client", None),
        };
        let line = line
            .str("method", Some(req.method.as_str()))
            .str("path", Some(req.uri.path()))
            .str("model", ctx.model.as_deref())
            .str("actual_model", ctx.actual_model.as_deref())
            .str("server", ctx.server.as_deref())
            .str("key", ctx.key.as_ref().map(|k| k.record.name.as_str()))
            .num("status", Some(ctx.status))
            .num("attempts", Some(ctx.attempts))
            .millis("ttfb_ms", ctx.ttfb)
            .millis("duration_ms", Some(ctx.started.elapsed()))
            .num("bytes_in", Some(ctx.bytes_in))
            .num("bytes_out", Some(ctx.bytes_out))
            .num("prompt_tokens", u.prompt_tokens)
            .num("completion_tokens", u.completion_tokens)
            .str("error", ctx.error.as_deref())
            .finish();
        self.access_log.write(line);
    }
}

/// Counts a finished request in the metrics (model-routed requests only: the rest are drover's own pages).
fn account(ctx: &RequestCtx) {
    let Some(model) = ctx.model.as_deref() else { return };
    let model = if ctx.model_known { model } else { crate::telemetry::metrics::UNKNOWN_MODEL };
    let server = ctx.server.as_deref().unwrap_or("none");
    let mut status = itoa::Buffer::new();
    crate::telemetry::metrics::REQUESTS.with_label_values(&[model, server, status.format(ctx.status)]).inc();
    crate::telemetry::metrics::REQUEST_DURATION
        .with_label_values(&[model])
        .observe(ctx.started.elapsed().as_secs_f64());
    if let Some(t) = ctx.ttfb {
        crate::telemetry::metrics::TTFB.with_label_values(&[model]).observe(t.as_secs_f64());
    }
    let u = &ctx.usage;
    for (kind, n) in [("prompt", u.prompt_tokens), ("completion", u.completion_tokens)] {
        if let Some(n) = n {
            crate::telemetry::metrics::TOKENS.with_label_values(&[model, server, kind]).inc_by(n);
        }
    }
    if let Some(load) = u.load_seconds {
        crate::telemetry::metrics::MODEL_LOAD.with_label_values(&[model, server]).observe(load);
    }
}

/// Tokens a prompt of `bytes` bytes is charged when the server never said: about four bytes
/// a token, as tokenizers of English text average.
pub(super) fn prompt_estimate(bytes: usize) -> u64 {
    (bytes as u64 / 4).max(1)
}
