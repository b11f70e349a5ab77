//! Background health checks and inventory refreshes: each interval, every server is checked at once.
//!
//! An Ollama server is checked with GET /api/version, an openai-kind one with GET /v1/models
//! (neither loads a model). rise/fall thresholds turn results into up/down transitions,
//! logged once per change with the reason. A healthy Ollama server's /api/tags and
//! /api/ps are refreshed in the same pass; the request path reads them from the snapshot.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::Value;

use crate::client::Client;
use crate::config::LoadBalancing;
use crate::fleet::{canonical_model, Fleet, Inventory, Kind, Server, Transition};

pub struct HealthChecker {
    fleet: Arc<ArcSwap<Fleet>>,
    client: Client,
    interval: Duration,
    timeout: Duration,
    rise: u32,
    fall: u32,
}

impl HealthChecker {
    pub fn new(fleet: Arc<ArcSwap<Fleet>>, lb: &LoadBalancing) -> Self {
        HealthChecker {
            fleet,
            client: Client::default(),
            interval: lb.health_check_interval,
            timeout: lb.health_check_timeout,
            rise: lb.rise,
            fall: lb.fall,
        }
    }

    /// Checks every server of the current snapshot concurrently.
    pub async fn check_all(&self) {
        let fleet = self.fleet.load_full();
        futures::future::join_all(fleet.servers.iter().map(|s| self.check(s))).await;
    }

    async fn check(&self, server: &Arc<Server>) {
        let result = match server.refresh_address().await {
            Err(e) => Err(format!("cannot resolve {}: {e}", server.url.host)),
            Ok(_) => match server.kind {
                Kind::Ollama => self.client.get_json(server, "/api/version", self.timeout).await,
                Kind::OpenAi => self.client.get_json(server, "/v1/models", self.timeout).await,
            },
        };
        let reason = result.as_ref().err().map(String::as_str);
        match server.record_check(result.is_ok(), self.rise, self.fall, reason) {
            Some(Transition::Down) => {
                log::warn!("server {} is down: {}", server.url.as_str(), reason.unwrap_or("health check failed"))
            }
            Some(Transition::Up) => log::info!("server {} is up", server.url.as_str()),
            None => {}
        }
        if let Ok(answer) = result {
            if server.healthy() {
                self.refresh_inventory(server, answer).await;
            }
        }
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
                Inventory { names: names_of(&tags), loaded_names: names_of(&loaded), tags, loaded, version }
            }
        };
        server.set_inventory(inventory);
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            self.check_all().await;
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// The `models` array of an /api/tags or /api/ps answer.
pub fn models_of(answer: &Value) -> Vec<Value> {
    answer.get("models").and_then(Value::as_array).cloned().unwrap_or_default()
}

pub fn names_of(models: &[Value]) -> std::collections::HashSet<String> {
    models
        .iter()
        .filter_map(|m| m.get("name").or_else(|| m.get("model")).and_then(Value::as_str))
        .map(canonical_model)
        .collect()
}

/// An openai-kind server's /v1/models, described as Ollama tags so the fleet view is uniform.
fn inventory_from_openai(answer: &Value) -> Inventory {
    let tags: Vec<Value> = answer
        .get("data")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("id").and_then(Value::as_str))
        .map(|id| serde_json::json!({ "name": id, "model": id, "size": 0, "digest": "", "details": {} }))
        .collect();
    Inventory { names: names_of(&tags), tags, ..Inventory::default() }
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
        assert_eq!(inv.tags[0]["name"], "smol");
    }

    #[test]
    fn tags_names_are_canonical() {
        let tags = models_of(&json!({"models": [{"name": "llama3:latest"}, {"model": "qwen3"}]}));
        let names = names_of(&tags);
        assert!(names.contains("llama3:latest") && names.contains("qwen3:latest"));
    }
}
