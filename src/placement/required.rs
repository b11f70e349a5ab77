//! Required models: `servers[].required_models` in the config. A background pass pulls
//! each one a healthy Ollama server lacks (one pull per model and server at a time), and
//! keeps each pull's progress for /health and `GET /admin/models/required`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::{json, Value};

use crate::fleet::client::Client;
use crate::fleet::Fleet;
use crate::placement::manage::{Op, Plan, Progress, Target};
use crate::protocol::ollama::{canonical_model, Kind};

/// Where one required model stands on one server.
#[derive(Debug, Clone, Default)]
struct Pull {
    running: bool,
    status: String,
    completed: u64,
    total: u64,
    error: Option<String>,
    /// When the last pull failed: the next is tried after `RETRY_AFTER_FAILURE`.
    failed_at: Option<Instant>,
}

const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(300);

pub(crate) struct Keeper {
    /// (server URL, model) for every required model in the config.
    wanted: Vec<(String, String)>,
    pulls: Mutex<BTreeMap<(String, String), Pull>>,
    fleet: Arc<arc_swap::ArcSwap<Fleet>>,
    client: Arc<Client>,
    idle: Duration,
    interval: Duration,
}

impl Keeper {
    pub(crate) fn new(
        settings: &crate::config::Settings,
        fleet: Arc<arc_swap::ArcSwap<Fleet>>,
        client: Arc<Client>,
    ) -> Keeper {
        let wanted = settings
            .servers
            .iter()
            .flat_map(|s| s.required_models.iter().map(|m| (s.url.as_str().to_string(), m.clone())))
            .collect();
        Keeper {
            wanted,
            pulls: Mutex::new(BTreeMap::new()),
            fleet,
            client,
            idle: settings.http_client.read_timeout,
            interval: settings.load_balancer.health_check_interval.max(Duration::from_secs(1)),
        }
    }

    /// One pass: a pull started for each required model a healthy Ollama server lacks.
    pub(crate) fn check(self: &Arc<Self>) {
        let fleet = self.fleet.load_full();
        for (url, model) in &self.wanted {
            let Some(server) = fleet.by_url.get(url.as_str()) else { continue };
            if server.kind != Kind::Ollama || !server.healthy() {
                continue;
            }
            let present = server.inventory().names.contains(&canonical_model(model));
            let mut pulls = self.pulls.lock().unwrap();
            let entry = pulls.entry((url.clone(), model.clone())).or_default();
            if present {
                if !entry.running {
                    *entry = Pull { status: "present".into(), ..Pull::default() };
                }
                continue;
            }
            if entry.running || entry.failed_at.is_some_and(|t| t.elapsed() < RETRY_AFTER_FAILURE) {
                continue;
            }
            *entry = Pull { running: true, status: "starting".into(), ..Pull::default() };
            drop(pulls);
            log::info!("required model {model} missing on {url}: pulling it");
            let plan = Plan {
                op: Op::Pull,
                model: model.clone(),
                names: vec![model.clone()],
                targets: vec![Target { server: server.clone(), body: json!({ "model": model, "stream": true }) }],
                stream: true,
            };
            let mut progress = crate::placement::manage::run(&plan, &self.client, self.idle);
            let (keeper, key) = (self.clone(), (url.clone(), model.clone()));
            tokio::spawn(async move {
                while let Some(p) = progress.recv().await {
                    let mut pulls = keeper.pulls.lock().unwrap();
                    let entry = pulls.entry(key.clone()).or_default();
                    match p {
                        Progress::Line(v) => {
                            entry.status = v["status"].as_str().unwrap_or_default().to_string();
                            if let (Some(c), Some(t)) = (v["completed"].as_u64(), v["total"].as_u64()) {
                                (entry.completed, entry.total) = (c, t);
                            }
                        }
                        Progress::Done { result, .. } => {
                            entry.running = false;
                            match result {
                                Ok(()) => *entry = Pull { status: "present".into(), ..Pull::default() },
                                Err(e) => {
                                    log::warn!("required model {} on {}: pull failed: {e}", key.1, key.0);
                                    entry.status = "failed".into();
                                    entry.error = Some(e.to_string());
                                    entry.failed_at = Some(Instant::now());
                                }
                            }
                        }
                    }
                }
            });
        }
    }

    /// Every required model with where it stands: present, pulling (with bytes done), failed.
    pub(crate) fn report(&self) -> Value {
        let pulls = self.pulls.lock().unwrap();
        let rows: Vec<Value> = self
            .wanted
            .iter()
            .map(|(url, model)| {
                let p = pulls.get(&(url.clone(), model.clone())).cloned().unwrap_or_default();
                let state = match (p.running, p.status.as_str(), &p.error) {
                    (true, ..) => "pulling",
                    (false, _, Some(_)) => "failed",
                    (false, "present", _) => "present",
                    _ => "waiting",
                };
                let mut row = json!({ "server": url, "model": model, "state": state });
                if p.running {
                    row["status"] = json!(p.status);
                    row["completed"] = json!(p.completed);
                    row["total"] = json!(p.total);
                }
                if let Some(e) = p.error {
                    row["error"] = json!(e);
                }
                row
            })
            .collect();
        json!(rows)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.wanted.is_empty()
    }
}

/// The background pass, every health-check interval.
pub(crate) struct KeeperService(pub Arc<Keeper>);

#[async_trait]
impl BackgroundService for KeeperService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if self.0.is_empty() {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.0.interval) => self.0.check(),
                _ = shutdown.changed() => break,
            }
        }
    }
}
