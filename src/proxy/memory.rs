//! Conversation memory on the request path (state/memory.rs): a chat request with a session
//! gets the session's earlier messages put first; its turn is stored once the answer is
//! whole (relay.rs).

use bytes::Bytes;

use super::route::Routing;

impl Routing {
    /// A chat request with a session (memory.rs): its body with the session's earlier
    /// messages put first, and the turn to store after the answer. Otherwise the body as is.
    pub(super) async fn with_history(
        &self,
        tenant: &str,
        id: &str,
        body: Bytes,
    ) -> (Bytes, Option<crate::state::memory::Turn>) {
        match self.memory.recall(tenant, id, &body).await {
            Some((with_history, turn)) => (Bytes::from(with_history), Some(turn)),
            None => (body, None),
        }
    }
}
