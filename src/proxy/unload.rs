//! Ollama's unload through drover: `keep_alive: 0` with no prompt and no messages (what
//! `ollama stop` and Open WebUI's unload send) goes to every Ollama server whose /api/ps
//! shows the model, not to one of them; the merged /api/ps stops listing it at once. The
//! answer is Ollama's own (`done_reason: "unload"`), naming the model as it was asked for.

use std::collections::HashSet;
use std::time::Duration;

use pingora::proxy::Session;
use serde_json::{json, Value};

use super::ctx::RequestCtx;
use super::route::Routing;
use crate::protocol::api::{ApiError, Call};
use crate::protocol::body::RoutableBody;
use crate::protocol::ollama::Kind;
use crate::routing::scheduler::unknown_model;

/// How long one server has to unload.
const UNLOAD_TIMEOUT: Duration = Duration::from_secs(30);

impl Routing {
    /// Answers an unload of `body.model` by `call` (/api/generate or /api/chat), sent as the same call.
    pub(super) async fn unload(&self, session: &mut Session, ctx: &mut RequestCtx, call: Call, body: &RoutableBody) {
        let path = call.path();
        let fleet = self.fleet.load_full();
        let routes = fleet.serving_routes(&body.name);
        if routes.is_empty() {
            return self.out.error(session, ctx, unknown_model(&fleet, &body.name)).await;
        }
        ctx.model_known = true;
        let mut seen = HashSet::new();
        let targets: Vec<_> = routes
            .iter()
            .filter(|r| r.server.kind == Kind::Ollama && r.server.healthy())
            .filter(|r| r.server.inventory().warm_for(&r.actual_model, None))
            .filter(|r| seen.insert((r.server.url.as_str().to_string(), r.actual_model.clone())))
            .collect();
        let calls = targets.iter().map(|r| {
            let unload = json!({ "model": r.actual_model, "keep_alive": 0 });
            async move {
                let result = self.client.post_json(&r.server, path, &unload, UNLOAD_TIMEOUT).await;
                if result.is_ok() {
                    r.server.mark_unloaded(&r.actual_model);
                }
                (r.server.url.as_str().to_string(), result)
            }
        });
        let results = futures::future::join_all(calls).await;
        let failed: Vec<String> =
            results.into_iter().filter_map(|(server, r)| r.err().map(|e| format!("{server}: {e}"))).collect();
        ctx.server = (targets.len() == 1).then(|| targets[0].server.url.as_str().to_string());
        if !failed.is_empty() {
            let e = ApiError::new(
                502,
                "unload_failed",
                format!("model {:?} not unloaded on {}", body.model, failed.join("; ")),
            );
            return self.out.error(session, ctx, e).await;
        }
        let created_at = humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
        let answer: Value = if call == Call::Chat {
            json!({ "model": body.model, "created_at": created_at, "message": { "role": "assistant", "content": "" },
                    "done_reason": "unload", "done": true })
        } else {
            json!({ "model": body.model, "created_at": created_at, "response": "", "done": true, "done_reason": "unload" })
        };
        self.out.json(session, ctx, 200, &answer).await
    }
}
