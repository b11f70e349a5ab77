//! Waiting for a server: the one place a routed request asks the scheduler
//! (routing/scheduler.rs) for a route, first or after a failure, giving up if the client
//! hangs up meanwhile.

use std::time::Duration;

use pingora::protocols::http::ServerSession;

use super::ctx::Routed;
use crate::routing::scheduler::{Chosen, Refused, Scheduler};

/// A route for the request's next attempt (`retrying` after a failure), with its slot: the
/// routing stage's first, the upstream stage's after a failure.
pub(super) async fn take_route(
    scheduler: &Scheduler,
    session: &mut ServerSession,
    r: &Routed,
    retrying: bool,
) -> Result<Chosen, Refused> {
    // Only what cannot be translated needs an Ollama server.
    let needs_ollama = r.call.native() && r.translatable.is_none();
    let req = scheduler.request(&r.body, needs_ollama, &r.tried, r.affinity);
    scheduler.acquire(&r.fleet, &req, r.tenant, retrying, client_gone(session)).await
}

/// Resolves when the client has gone away (it never sends more once the body is read).
pub(crate) async fn client_gone(session: &mut ServerSession) {
    loop {
        match session.read_body_or_idle(true).await {
            Err(_) => return,
            // Bytes of a pipelined next request: not a hang-up, keep watching.
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
