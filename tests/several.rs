//! Several drovers as one: three drover processes, one PostgreSQL store (SQLite when no
//! PostgreSQL is configured outside CI) and one Redis, all on loopback.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::mock_ollama::MockOllama;
use support::{database_urls, fresh_database, http, Drover, RedisServer};

async fn create_key(d: &Drover, body: Value) -> String {
    let r = http().post(format!("{}/admin/keys", d.url)).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let made: Value = r.json().await.unwrap();
    made["key"].as_str().unwrap().to_string()
}

async fn chat(d: &Drover, key: &str, model: &str) -> (u16, String) {
    let body = json!({ "model": model, "stream": false, "messages": [{ "role": "user", "content": "hi" }] });
    match http().post(format!("{}/api/chat", d.url)).bearer_auth(key).json(&body).send().await {
        Ok(r) => (r.status().as_u16(), support::header(&r, "x-drover-server")),
        Err(e) => (0, e.to_string()),
    }
}

/// Waits until every drover knows `key` (each reloads keys from the store on its own).
async fn key_known_everywhere(drovers: &[Drover], key: &str) {
    for d in drovers {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = http().get(format!("{}/api/tags", d.url)).bearer_auth(key).send().await.unwrap();
            if r.status() == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "{} never learnt the key", d.url);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn health(d: &Drover) -> Value {
    http().get(format!("{}/health", d.url)).send().await.unwrap().json().await.unwrap()
}

/// Requests sent over the three drovers from `workers` loops until `stop`; failures counted.
struct Load {
    sent: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<(Instant, String)>>>,
}

impl Load {
    fn start(urls: &[String], key: &str, model: &str) -> Load {
        let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = urls
            .iter()
            .map(|url| {
                let (url, key, model) = (url.clone(), key.to_string(), model.to_string());
                let (sent, failed, stop) = (sent.clone(), failed.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut served = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let body = json!({ "model": model, "stream": false, "messages": [{ "role": "user", "content": "hi" }] });
                        let r = http().post(format!("{url}/api/chat")).bearer_auth(&key).json(&body).send().await;
                        sent.fetch_add(1, Ordering::SeqCst);
                        match r {
                            Ok(r) if r.status() == 200 => served.push((Instant::now(), support::header(&r, "x-drover-server"))),
                            _ => {
                                failed.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    served
                })
            })
            .collect();
        Load { sent, failed, stop, tasks }
    }

    async fn finish(self) -> (usize, usize, Vec<(Instant, String)>) {
        self.stop.store(true, Ordering::SeqCst);
        let mut served = Vec::new();
        for t in self.tasks {
            served.extend(t.await.unwrap());
        }
        (self.sent.load(Ordering::SeqCst), self.failed.load(Ordering::SeqCst), served)
    }
}

#[tokio::test]
async fn three_drovers_share_limits_cooldowns_and_routes() {
    let Some(mut redis) = RedisServer::start().await else { return };
    let (kind, base) = database_urls().into_iter().find(|(k, _)| *k == "postgres").unwrap_or(("sqlite", String::new()));
    let db = fresh_database(kind, &base).await;
    let a = MockOllama::start("a", &["llama3:latest"]).await;
    let b = MockOllama::start("b", &["llama3:latest"]).await;
    // Health checks slow on purpose: a dead server must be avoided through failures and the
    // shared cooldown, not because each drover's own checks saw it.
    let yaml = format!(
        "load_balancer:\n  health_check_interval: 30s\n  db_check_interval: 200ms\n  max_fails: 1\n  cooldown: 30s\n\
         auth:\n  require_keys: true\nmemory:\n  enabled: true\ncache:\n  enabled: true\nstate:\n  redis_url: \"{}\"\nroutes:\n{}{}",
        redis.url,
        support::route_yaml("chat", &a.url, "llama3:latest", 100, 1),
        support::route_yaml("chat", &b.url, "llama3:latest", 100, 1),
    );
    let mut drovers = Vec::new();
    for _ in 0..3 {
        drovers.push(Drover::start_with_db(&yaml, Some(&db)).await);
    }
    let urls: Vec<String> = drovers.iter().map(|d| d.url.clone()).collect();
    for d in &drovers {
        assert_eq!(health(d).await["shared_state"]["state"], "ok");
    }

    // 1. A key limited to 5 requests a minute: exactly 5 pass across the three, at once.
    let limited = create_key(&drovers[0], json!({ "name": "five", "models": ["*"], "requests_per_minute": 5 })).await;
    key_known_everywhere(&drovers, &limited).await;
    let calls = (0..15).map(|i| {
        let (d, key) = (&drovers[i % 3], limited.clone());
        async move { chat(d, &key, "chat").await.0 }
    });
    let statuses = futures::future::join_all(calls).await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 10, "{statuses:?}");

    // 2. A route added through one drover's admin API is used by the others within the
    // reload interval.
    let open = create_key(&drovers[0], json!({ "name": "open", "models": ["*"], "requests_per_minute": 100000 })).await;
    key_known_everywhere(&drovers, &open).await;
    let r = http()
        .post(format!("{}/admin/servers", drovers[1].url))
        .json(&json!({ "virtual_model_name": "extra", "server_url": a.url, "actual_model_name": "llama3:latest" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let added = Instant::now();
    for d in [&drovers[0], &drovers[2]] {
        loop {
            if chat(d, &open, "extra").await == (200, a.url.clone()) {
                break;
            }
            assert!(added.elapsed() < Duration::from_secs(3), "{} did not pick up the route", d.url);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // The response cache is shared through Redis: an answer one drover got, the others replay.
    let body = json!({ "model": "chat", "stream": false, "messages": [{ "role": "user", "content": "2+2?" }],
                       "options": { "temperature": 0 } });
    let mut seen = Vec::new();
    for d in &drovers {
        let r = http().post(format!("{}/api/chat", d.url)).bearer_auth(&open).json(&body).send().await.unwrap();
        seen.push(support::header(&r, "x-drover-cache"));
        // An answer is stored as its request ends, just after its last byte went out: the
        // next client, on another drover, comes at a person's pace (README: Response cache).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, ["miss", "hit", "hit"]);

    // Conversation memory in Redis: a session's second turn, on another drover, carries the
    // first. (A turn is stored as its answer ends; on another drover, the next turn must come
    // a moment later to see it: a person's pace, here 100 ms.)
    for (d, text) in [(&drovers[0], "my name is Ann"), (&drovers[2], "what is my name?")] {
        let body = json!({ "model": "extra", "stream": false, "messages": [{ "role": "user", "content": text }] });
        let r = http().post(format!("{}/api/chat", d.url)).bearer_auth(&open).header("x-session-id", "s-1");
        assert_eq!(r.json(&body).send().await.unwrap().status(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent = a.last_json()["messages"].as_array().unwrap().clone();
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert_eq!(sent[0]["content"], "my name is Ann");

    // 3. Redis stopped and started again under load: no request lost; each drover says so
    // in /health while it is down, and uses Redis again once it is back.
    let load = Load::start(&urls, &open, "chat");
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for d in &drovers {
        let h = health(d).await;
        assert_eq!(h["shared_state"]["state"], "unreachable", "{h}");
        assert_eq!(h["status"], "degraded");
    }
    redis.restart().await;
    let restarted = Instant::now();
    for d in &drovers {
        loop {
            if health(d).await["shared_state"]["state"] == "ok" {
                break;
            }
            assert!(restarted.elapsed() < Duration::from_secs(5), "{} did not reconnect to Redis", d.url);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (sent, failed, _) = load.finish().await;
    assert!(sent > 50, "{sent}");
    assert_eq!(failed, 0, "of {sent} requests");

    // 4. A server killed under load: nothing fails (each request not yet answered is
    // retried), and within a second none of the three sends anything to it, though their
    // own health checks have not run: the first drover to fail on it cools it down for all.
    let load = Load::start(&urls, &open, "chat");
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.stop();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (sent, failed, served) = load.finish().await;
    assert_eq!(failed, 0, "of {sent} requests");
    let late: Vec<&(Instant, String)> = served.iter().filter(|(at, _)| *at > killed + Duration::from_secs(1)).collect();
    assert!(late.len() > 30, "{}", late.len());
    assert!(late.iter().all(|(_, s)| *s == a.url), "a drover still sent to the dead server");
    for d in &drovers {
        let lb: Value =
            http().get(format!("{}/lb-stats", d.url)).bearer_auth(&open).send().await.unwrap().json().await.unwrap();
        let dead = lb["servers"].as_array().unwrap().iter().find(|s| s["url"] == b.url.as_str()).unwrap().clone();
        assert_eq!(dead["status"], "cooling_down", "{}: {dead}", d.url);
    }
}
