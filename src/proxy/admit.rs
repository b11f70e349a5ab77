//! Who may call: the per-address rate limit, the API key, and the key's own limits.
//!
//! Applied to model calls and fleet views; drover's liveness and metrics pages (/, /health,
//! /metrics) stay open for load balancers and scrapers, and the admin API has its own token.

use std::time::Instant;

use pingora::proxy::Session;

use super::{Drover, RequestCtx};
use crate::api::{ApiError, Endpoint};
use crate::limits::retry_after_seconds;

impl Drover {
    /// Checks a request against the limits and keys before anything else is done with it.
    pub(super) fn admit(&self, session: &Session, ctx: &mut RequestCtx, endpoint: &Endpoint) -> Result<(), ApiError> {
        use Endpoint::*;
        let model_call = matches!(endpoint, Routed { .. });
        let guarded =
            model_call || matches!(endpoint, Tags | Ps | Models | Model(_) | Version | Status | LbStats | Management);
        if !guarded {
            return Ok(());
        }
        let now = Instant::now();
        if let Some(limit) = &self.client_limit {
            if let Some(ip) = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()) {
                limit.admit(ip, now).map_err(|wait| {
                    crate::metrics::RATE_LIMITED.with_label_values(&["client"]).inc();
                    ApiError::new(
                        429,
                        "rate_limit_exceeded",
                        format!("too many requests from {ip} (limits.client_requests_per_minute)"),
                    )
                    .retry_after(retry_after_seconds(wait))
                })?;
            }
        }
        if !self.require_keys {
            return Ok(());
        }
        let headers = &session.req_header().headers;
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        // Model management as the admin (the admin token, or loopback without one) needs no key.
        let client = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        if matches!(endpoint, Management) && self.admin.authorize(client, text("authorization")).is_ok() {
            return Ok(());
        }
        let presented = crate::keys::presented(text("authorization"), text("x-api-key"));
        let key = self.keys.authenticate(presented)?;
        if model_call {
            key.admit(now).inspect_err(|_| crate::metrics::RATE_LIMITED.with_label_values(&["key"]).inc())?;
        }
        ctx.key = Some(key);
        Ok(())
    }
}
