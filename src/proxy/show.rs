//! `/api/show` for a model only openai-kind servers have: answered by drover in Ollama's
//! shape from what it knows (the name's details, the context length where the server tells
//! it: vLLM's `max_model_len` in /v1/models, llama.cpp's `n_ctx` in /props), named as asked.

use std::time::Duration;

use pingora::proxy::Session;
use serde_json::{json, Value};

use super::ctx::RequestCtx;
use super::route::Routing;
use crate::protocol::body::RoutableBody;
use crate::protocol::ollama::{synthetic_tag, Kind};

impl Routing {
    /// Answers /api/show when no Ollama server serves the model but an openai-kind one does;
    /// false when an Ollama server should answer it (or nothing serves it).
    pub(super) async fn show_locally(&self, session: &mut Session, ctx: &mut RequestCtx, body: &RoutableBody) -> bool {
        let fleet = self.fleet.load_full();
        let routes = fleet.serving_routes(&body.name);
        if routes.is_empty() || routes.iter().any(|r| r.server.kind == Kind::Ollama) {
            return false;
        }
        ctx.model_known = true;
        let route = routes.iter().find(|r| r.server.healthy()).unwrap_or(&routes[0]);
        let tag = route
            .server
            .inventory()
            .tags
            .iter()
            .find(|t| t.get("own").and_then(Value::as_str) == Some(route.actual_model.as_str()))
            .cloned()
            .unwrap_or_else(|| synthetic_tag(&route.actual_model, None));
        let details = tag["details"].clone();
        let family = details["family"].as_str().filter(|f| !f.is_empty()).unwrap_or("unknown").to_string();
        let context = match tag.get("context_length").and_then(Value::as_u64) {
            Some(n) => Some(n),
            None => self
                .client
                .get_json(&route.server, "/props", Duration::from_secs(2))
                .await
                .ok()
                .and_then(|p| p["default_generation_settings"]["n_ctx"].as_u64().or(p["n_ctx"].as_u64())),
        };
        let mut model_info = json!({ "general.architecture": family, "general.basename": route.actual_model });
        if let Some(n) = context {
            model_info[format!("{family}.context_length")] = n.into();
        }
        let embedding = route.actual_model.to_ascii_lowercase().contains("embed");
        let capabilities = if embedding { json!(["embedding"]) } else { json!(["completion"]) };
        ctx.server = Some(route.server.url.as_str().to_string());
        ctx.actual_model = Some(route.actual_model.clone());
        let answer = json!({
            "modelfile": "",
            "parameters": "",
            "template": "",
            "details": details,
            "model_info": model_info,
            "capabilities": capabilities,
            "modified_at": tag["modified_at"],
        });
        self.out.json(session, ctx, 200, &answer).await;
        true
    }
}
