//! drover's active health check, run over the fleet's `HealthRegistry` (backends.rs) by pingora-load-balancing's `HealthCheckService`.
//!
//! The check is per server kind: an Ollama server is asked GET /api/version, an
//! openai-kind one GET /v1/models (neither loads a model), and a healthy answer refreshes
//! the server's /api/tags and /api/ps in the same pass, and an openai-kind server's own
//! report of its load (llama.cpp's /slots, vLLM's or llama.cpp's /metrics: protocol/load.rs).
//! The crate keeps the rise/fall state and logs each flip.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::lb::health_check::HealthCheck;
use pingora::lb::Backend;
use pingora::{Error, ErrorType};
use serde_json::Value;

use crate::config::LoadBalancing;
use crate::fleet::client::{CallError, Client};
use crate::fleet::server::LoadSource;
use crate::fleet::{Fleet, Server};
use crate::protocol::load;
use crate::protocol::ollama::{contexts_of, models_of, names_of, Inventory, Kind, ServerUrl};

/// A server that reported no load is asked again every this many health passes.
const ASK_LOAD_AGAIN: u32 = 30;

/// drover's check of one server, by kind, with the inventory refresh in the same pass.
pub(crate) struct ServerCheck {
    fleet: Arc<ArcSwap<Fleet>>,
    client: Client,
    timeout: Duration,
    rise: usize,
    fall: usize,
}

impl ServerCheck {
    pub(crate) fn new(fleet: Arc<ArcSwap<Fleet>>, lb: &LoadBalancing) -> ServerCheck {
        ServerCheck {
            fleet,
            client: Client::default(),
            timeout: lb.health_check_timeout,
            rise: lb.rise as usize,
            fall: lb.fall as usize,
        }
    }

    fn server(&self, target: &Backend) -> Option<Arc<Server>> {
        let url = target.ext.get::<ServerUrl>()?;
        self.fleet.load().by_url.get(url.as_str()).cloned()
    }

    async fn refresh_inventory(&self, server: &Server, check_answer: Value) {
        let inventory = match server.kind {
            Kind::OpenAi => inventory_from_openai(&check_answer),
            Kind::Ollama => {
                let (tags, ps) = futures::join!(
                    self.client.get_json(server, "/api/tags", self.timeout),
                    self.client.get_json(server, "/api/ps", self.timeout),
                );
                let previous = server.inventory();
                let version = check_answer.get("version").and_then(Value::as_str).map(str::to_string);
                // Keep the last good list when one refresh fails: a slow answer is not an empty server.
                let tags = tags.map(|v| models_of(&v)).unwrap_or_else(|_| previous.tags.clone());
                let loaded = ps.map(|v| models_of(&v)).unwrap_or_else(|_| previous.loaded.clone());
                Inventory {
                    names: names_of(&tags),
                    loaded_names: names_of(&loaded),
                    loaded_ctx: contexts_of(&loaded),
                    tags,
                    loaded,
                    version,
                    vllm: false,
                }
            }
        };
        server.set_inventory(inventory);
    }

    /// Reads the load an openai-kind server reports: from where it last answered, else
    /// llama.cpp's /slots, then /metrics. A server that answers neither (a hosted API, a
    /// llama.cpp without them) is asked again every ASK_LOAD_AGAIN passes.
    async fn refresh_load(&self, server: &Server) {
        let known = server.load_source();
        if known == LoadSource::None && !server.missed_load().is_multiple_of(ASK_LOAD_AGAIN) {
            return;
        }
        let order = match known {
            LoadSource::Metrics => [LoadSource::Metrics, LoadSource::Slots],
            _ => [LoadSource::Slots, LoadSource::Metrics],
        };
        let asked_with = server.in_flight();
        for source in order {
            let reading = match source {
                LoadSource::Slots => {
                    self.client.get_json(server, "/slots", self.timeout).await.ok().and_then(|v| load::from_slots(&v))
                }
                _ => self
                    .client
                    .get_text(server, "/metrics", self.timeout)
                    .await
                    .ok()
                    .and_then(|t| load::from_metrics(&t)),
            };
            if let Some(r) = reading {
                if source != known {
                    log::info!("server {}: reads its load from {}", server.url.as_str(), source.path());
                    server.set_load_source(source);
                }
                server.set_reported(r, source.path(), asked_with);
                return;
            }
        }
        server.clear_reported();
        if known != LoadSource::None {
            server.set_load_source(LoadSource::None);
        }
    }
}

#[async_trait]
impl HealthCheck for ServerCheck {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        // A server already gone from the fleet passes: it is about to leave the view.
        let Some(server) = self.server(target) else { return Ok(()) };
        let result = match server.refresh_address().await {
            Err(source) => Err(CallError::Resolve { host: server.url.host.clone(), source }),
            Ok(_) => match server.kind {
                Kind::Ollama => self.client.get_json(&server, "/api/version", self.timeout).await,
                Kind::OpenAi => self.client.get_json(&server, "/v1/models", self.timeout).await,
            },
        };
        match result {
            Ok(answer) => {
                server.check_passed();
                if server.kind == Kind::OpenAi {
                    futures::join!(self.refresh_inventory(&server, answer), self.refresh_load(&server));
                } else {
                    self.refresh_inventory(&server, answer).await;
                }
                Ok(())
            }
            Err(why) => {
                let why = why.to_string();
                server.note_error(&why);
                server.clear_reported();
                Error::e_explain(ErrorType::ConnectError, why)
            }
        }
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        if let (true, Some(server)) = (healthy, self.server(target)) {
            // A server the checks saw come back is worth trying again at once.
            server.end_cooldown();
        }
    }

    fn backend_summary(&self, target: &Backend) -> String {
        target.ext.get::<ServerUrl>().map_or_else(|| format!("{target:?}"), |u| format!("server {}", u.as_str()))
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.rise
        } else {
            self.fall
        }
    }
}

/// An openai-kind server's /v1/models, described as Ollama tags so the fleet view is uniform.
fn inventory_from_openai(answer: &Value) -> Inventory {
    let tags: Vec<Value> = answer
        .get("data")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| Some((m, m.get("id").and_then(Value::as_str)?, m.get("created").and_then(Value::as_i64))))
        .map(|(m, id, created)| {
            // Shown with its tag, as Ollama lists models; `own` keeps the id the server knows.
            let mut tag = crate::protocol::ollama::synthetic_tag(id, created);
            tag["own"] = Value::from(id);
            // vLLM tells its context size here (llama.cpp in /props).
            if let Some(n) = m.get("max_model_len").and_then(Value::as_u64) {
                tag["context_length"] = n.into();
            }
            tag
        })
        .collect();
    let vllm = answer["data"].as_array().is_some_and(|d| d.iter().any(|m| m["owned_by"] == "vllm"));
    Inventory { names: names_of(&tags), tags, vllm, ..Inventory::default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn openai_models_become_tags() {
        let inv = inventory_from_openai(&json!({"object": "list", "data": [{"id": "smol"}, {"id": "x:1b"}]}));
        assert!(inv.names.contains("smol:latest"));
        assert!(inv.names.contains("x:1b"));
        assert_eq!(inv.tags[0]["name"], "smol:latest");
        assert_eq!(inv.own_name("smol:latest"), Some("smol"), "requests name it as the server does");
        assert!(!inv.vllm);
        let vllm = inventory_from_openai(&json!({"data": [{"id": "q", "owned_by": "vllm", "max_model_len": 8192}]}));
        assert!(vllm.vllm, "vLLM says so in owned_by: a continuation is sent continue_final_message");
    }
}
