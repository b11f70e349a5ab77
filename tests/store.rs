//! The routes store on SQLite, PostgreSQL and MariaDB: admin API, hot reload (API and direct SQL), outage, counts.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::mock_ollama::MockOllama;
use support::{database_urls, fresh_database, http, route_yaml, sql, Drover, TcpRelay, FAST};

const RELOAD: &str = "  db_check_interval: 300ms\n";

struct Api<'a> {
    d: &'a Drover,
    token: Option<&'a str>,
}

impl Api<'_> {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = http().request(method, format!("{}{path}", self.d.url));
        if let Some(t) = self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    async fn chat(&self, model: &str) -> (u16, String, Value) {
        support::chat(self.d, model).await
    }
}

async fn admin_suite(kind: &str, url: &str) {
    let m = MockOllama::start("m", &["qwen3:14b", "llama3:latest"]).await;
    let yaml = format!(
        "{FAST}{RELOAD}admin: {{ token: secret }}\nroutes:\n{}",
        route_yaml("fixed", &m.url, "llama3:latest", 1, 1)
    );
    let d = Drover::start_with_db(&yaml, Some(url)).await;
    let api = Api { d: &d, token: Some("secret") };

    // Auth: missing or wrong token is a 401.
    assert_eq!(Api { d: &d, token: None }.get("/admin/servers").await.0, 401, "{kind}");
    assert_eq!(Api { d: &d, token: Some("wrong") }.get("/admin/servers").await.0, 401, "{kind}");
    assert_eq!(Api { d: &d, token: None }.post("/admin/servers", json!({})).await.0, 401, "{kind}");
    let (s, list) = api.get("/admin/servers").await;
    assert_eq!(s, 200, "{kind}");
    assert_eq!(list["servers"].as_array().unwrap().len(), 1);
    assert_eq!(list["servers"][0]["id"], "config-0");
    assert_eq!(list["servers"][0]["read_only"], true);

    // Create; it applies at once.
    let (s, row) = api
        .post(
            "/admin/servers",
            json!({ "virtual_model_name": "chat", "server_url": format!("{}/", m.url), "actual_model_name": "qwen3:14b",
                    "weight": 5, "type": "GPU", "performance": 8.5, "description": "primary" }),
        )
        .await;
    assert_eq!(s, 201, "{kind}: {row}");
    let id = row["id"].as_i64().unwrap();
    assert_eq!(row["server_url"], m.url, "stored normalised");
    assert_eq!((row["weight"].as_i64(), row["priority"].as_i64()), (Some(5), Some(1)));
    assert_eq!((row["performance"].as_f64(), row["is_active"].as_bool()), (Some(8.5), Some(true)));
    assert_eq!(row["source"], "store");
    let (s, _, answer) = api.chat("chat").await;
    assert_eq!((s, answer["model"].as_str()), (200, Some("chat")), "{kind}: named as asked");
    assert_eq!(api.get(&format!("/admin/servers/{id}")).await.1["description"], "primary");

    // Bad input: 400 naming the field, nothing written.
    for (body, field) in [
        (json!({ "virtual_model_name": "x", "server_url": "ftp://nope" }), "server_url"),
        (json!({ "virtual_model_name": "x", "server_url": m.url, "weight": 0 }), "weight"),
        (json!({ "virtual_model_name": "x", "server_url": m.url, "priority": -2 }), "priority"),
        (json!({ "virtual_model_name": "x", "server_url": m.url, "type": "TPU" }), "type"),
        (json!({ "virtual_model_name": "x", "server_url": m.url, "performance": -1 }), "performance"),
        (json!({ "virtual_model_name": "", "server_url": m.url }), "virtual_model_name"),
        (json!({ "virtual_model_name": "x".repeat(101), "server_url": m.url }), "virtual_model_name"),
        (json!({ "virtual_model_name": "x", "server_url": m.url, "weight": "heavy" }), "weight"),
        (json!({ "virtual_model_name": "x", "server_url": m.url, "owner": "me" }), "owner"),
        (json!({ "server_url": m.url }), "virtual_model_name"),
    ] {
        let (s, e) = api.post("/admin/servers", body.clone()).await;
        assert_eq!(s, 400, "{kind}: {body}");
        assert!(e["fields"].get(field).is_some(), "{kind}: {field} not named for {body}: {e}");
        assert!(e["error"].as_str().unwrap().contains(field));
    }
    let (s, e) = api.call(reqwest::Method::POST, "/admin/servers", None).await;
    assert_eq!(s, 400, "{e}");
    let (s, _) = api.put(&format!("/admin/servers/{id}"), json!({ "weight": 0, "priority": 3 })).await;
    assert_eq!(s, 400);
    let (_, row) = api.get(&format!("/admin/servers/{id}")).await;
    assert_eq!(
        (row["weight"].as_i64(), row["priority"].as_i64()),
        (Some(5), Some(1)),
        "{kind}: a bad PUT changes nothing"
    );
    assert_eq!(api.get("/admin/servers").await.1["servers"].as_array().unwrap().len(), 2, "{kind}: nothing written");

    // Update, deactivate, reactivate: each applies at once.
    let (s, row) = api.put(&format!("/admin/servers/{id}"), json!({ "weight": 7, "is_active": false })).await;
    assert_eq!((s, row["weight"].as_i64(), row["is_active"].as_bool()), (200, Some(7), Some(false)), "{kind}");
    assert_eq!(api.chat("chat").await.0, 404, "{kind}: inactive route, no server lists 'chat'");
    assert_eq!(api.put(&format!("/admin/servers/{id}"), json!({ "is_active": true })).await.0, 200);
    assert_eq!(api.chat("chat").await.0, 200);

    // Unknown ids and read-only config routes.
    assert_eq!(api.get("/admin/servers/999999").await.0, 404);
    assert_eq!(api.put("/admin/servers/999999", json!({ "weight": 2 })).await.0, 404);
    assert_eq!(api.delete("/admin/servers/999999").await.0, 404);
    assert_eq!(api.get("/admin/servers/abc").await.0, 404);
    assert_eq!(api.get("/admin/servers/config-0").await.0, 200);
    assert_eq!(api.put("/admin/servers/config-0", json!({ "weight": 2 })).await.0, 409);
    assert_eq!(api.delete("/admin/servers/config-0").await.0, 409);

    // Why a model goes where.
    let (s, check) = api.get("/admin/server-priority/check/chat").await;
    assert_eq!(s, 200);
    assert_eq!(check["order"][0]["server_url"], m.url);
    assert_eq!(check["order"][0]["share_percent"], 100.0);
    let (_, overview) = api.get("/admin/server-priority/overview").await;
    let names: Vec<&str> =
        overview["models"].as_array().unwrap().iter().map(|m| m["virtual_model_name"].as_str().unwrap()).collect();
    assert_eq!(names, ["chat:latest", "fixed:latest"], "named as Ollama resolves them");
    assert_eq!(api.get("/admin/resource-cache/stats").await.0, 200);
    assert_eq!(api.post("/admin/resource-cache/clear", json!({})).await.0, 200);

    // Counts reach the table in batches: 2 requests so far, 3 more.
    for _ in 0..3 {
        assert_eq!(api.chat("chat").await.0, 200);
    }
    let mut count = 0;
    for _ in 0..40 {
        count = api.get(&format!("/admin/servers/{id}")).await.1["count"].as_i64().unwrap();
        if count == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count, 5, "{kind}: count column");

    // Delete.
    let (s, gone) = api.delete(&format!("/admin/servers/{id}")).await;
    assert_eq!((s, gone["deleted"]["id"].as_i64()), (200, Some(id)), "{kind}");
    assert_eq!(api.get(&format!("/admin/servers/{id}")).await.0, 404);
    assert_eq!(api.chat("chat").await.0, 404);

    // A row written by hand in SQL is in effect within db_check_interval.
    sql(
        url,
        &format!(
            "INSERT INTO ollama_servers (virtual_model_name, server_url, actual_model_name, weight, priority) \
             VALUES ('bysql', '{}', 'qwen3:14b', 1, 1)",
            m.url
        ),
    )
    .await;
    let started = Instant::now();
    let mut status = 0;
    while started.elapsed() < Duration::from_secs(3) && status != 200 {
        status = api.chat("bysql").await.0;
    }
    assert_eq!(status, 200, "{kind}: hand-inserted row picked up");
    eprintln!("{kind}: hand-written SQL row in effect after {:?}", started.elapsed());
    sql(url, "UPDATE ollama_servers SET is_active = FALSE WHERE virtual_model_name = 'bysql'").await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) && status != 404 {
        status = api.chat("bysql").await.0;
    }
    assert_eq!(status, 404, "{kind}: hand-deactivated row dropped");
}

#[tokio::test]
async fn admin_api_and_direct_sql_on_every_database() {
    for (kind, base) in database_urls() {
        let url = fresh_database(kind, &base).await;
        admin_suite(kind, &url).await;
    }
}

#[tokio::test]
async fn without_a_token_loopback_clients_are_answered() {
    let d = Drover::start(FAST).await;
    let (s, list) = Api { d: &d, token: None }.get("/admin/servers").await;
    assert_eq!(s, 200);
    assert!(list["servers"].as_array().unwrap().is_empty());
}

/// Requests flow while routes are added, re-weighted, deactivated and deleted, through the
/// API and through SQL: none fails, and traffic follows each change within db_check_interval.
async fn reload_under_load(kind: &str, url: &str) {
    let a = MockOllama::start("a", &["m:1b"]).await;
    let b = MockOllama::start("b", &["m:1b"]).await;
    let d = Drover::start_with_db(&format!("{FAST}  max_concurrency: 64\n{RELOAD}"), Some(url)).await;
    let api = Api { d: &d, token: None };
    let (s, ra) = api
        .post("/admin/servers", json!({ "virtual_model_name": "m", "server_url": a.url, "actual_model_name": "m:1b" }))
        .await;
    assert_eq!(s, 201);
    let log: Arc<Mutex<Vec<(Instant, String, u16)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..6 {
        let (log, stop, base) = (log.clone(), stop.clone(), d.url.clone());
        workers.push(tokio::spawn(async move {
            let c = http();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let sent = Instant::now();
                let r = c
                    .post(format!("{base}/api/chat"))
                    .json(&json!({ "model": "m", "stream": false }))
                    .send()
                    .await
                    .unwrap();
                let server =
                    r.headers().get("x-drover-server").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
                let status = r.status().as_u16();
                if status != 200 {
                    eprintln!("a request failed: {status} {}", r.text().await.unwrap_or_default());
                }
                log.lock().unwrap().push((sent, server, status));
            }
        }));
    }
    // Each change, then the share of b among requests sent after the change settled.
    let settle = Duration::from_millis(300 + 400);
    let share_b_after = |since: Instant| {
        let log = log.lock().unwrap();
        let later: Vec<&(Instant, String, u16)> = log.iter().filter(|(t, _, _)| *t > since + settle).collect();
        let b_count = later.iter().filter(|(_, s, _)| *s == b.url).count();
        (b_count as f64 / later.len().max(1) as f64, later.len())
    };
    let window = || tokio::time::sleep(settle + Duration::from_millis(700));

    let t = Instant::now();
    eprintln!("{kind}: b added at {:?}", t.duration_since(started));
    let (s, rb) = api
        .post("/admin/servers", json!({ "virtual_model_name": "m", "server_url": b.url, "actual_model_name": "m:1b" }))
        .await;
    assert_eq!(s, 201);
    window().await;
    let (share, n) = share_b_after(t);
    assert!((0.4..=0.6).contains(&share), "{kind}: added b gets half ({share} of {n})");

    let t = Instant::now();
    eprintln!("{kind}: b re-weighted at {:?}", t.duration_since(started));
    assert_eq!(api.put(&format!("/admin/servers/{}", rb["id"]), json!({ "weight": 9 })).await.0, 200);
    window().await;
    let (share, n) = share_b_after(t);
    assert!((0.8..=1.0).contains(&share), "{kind}: re-weighted b gets 90% ({share} of {n})");

    let t = Instant::now();
    eprintln!("{kind}: a deactivated by SQL at {:?}", t.duration_since(started));
    sql(url, &format!("UPDATE ollama_servers SET is_active = FALSE WHERE id = {}", ra["id"])).await;
    window().await;
    let (share, n) = share_b_after(t);
    assert_eq!(share, 1.0, "{kind}: a deactivated by SQL ({n} requests)");

    let t = Instant::now();
    eprintln!("{kind}: a back, b deleted by SQL at {:?}", t.duration_since(started));
    sql(url, &format!("UPDATE ollama_servers SET is_active = TRUE WHERE id = {}", ra["id"])).await;
    sql(url, &format!("DELETE FROM ollama_servers WHERE id = {}", rb["id"])).await;
    window().await;
    let (share, n) = share_b_after(t);
    assert_eq!(share, 0.0, "{kind}: b deleted by SQL ({n} requests)");

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let log = log.lock().unwrap();
    let failed: Vec<String> = log
        .iter()
        .filter(|(_, _, s)| *s != 200)
        .map(|(at, server, s)| format!("{s} from {server:?} sent {:?} after the start", at.duration_since(started)))
        .collect();
    eprintln!("{kind}: reload under load: {} requests, {} failed", log.len(), failed.len());
    assert!(failed.is_empty(), "{kind}: {failed:?}");
}

#[tokio::test]
async fn hot_reload_under_load_on_every_database() {
    for (kind, base) in database_urls() {
        let url = fresh_database(kind, &base).await;
        reload_under_load(kind, &url).await;
    }
}

/// The database goes away under load: drover keeps serving, says degraded, and recovers.
async fn outage(kind: &str, url: &str) {
    let (relay, relayed) = TcpRelay::in_front_of(url).await;
    let m = MockOllama::start("m", &["m:1b"]).await;
    let d = Drover::start_with_db(&format!("{FAST}{RELOAD}"), Some(&relayed)).await;
    let api = Api { d: &d, token: None };
    let route = |name: &str| json!({ "virtual_model_name": name, "server_url": m.url, "actual_model_name": "m:1b" });
    assert_eq!(api.post("/admin/servers", route("m")).await.0, 201);

    relay.stop();
    let t = Instant::now();
    let (mut served, mut failed) = (0, 0);
    let mut degraded = false;
    while t.elapsed() < Duration::from_secs(4) {
        match api.chat("m").await {
            (200, _, _) => served += 1,
            (status, _, body) => {
                if failed == 0 {
                    eprintln!("{kind}: first failure during the outage: {status} {body}");
                }
                failed += 1
            }
        }
        let (_, health) = api.get("/health").await;
        degraded |= health["status"] == "degraded" && health["store"]["state"] == "unreachable";
    }
    assert!(degraded, "{kind}: /health reports the outage");
    let (s, e) = api.post("/admin/servers", route("n")).await;
    assert_eq!(s, 503, "{kind}: {e}");
    assert!(e["error"].as_str().unwrap().contains("nothing was changed"));
    eprintln!("{kind}: during a 4s database outage: {served} requests served, {failed} failed");
    assert_eq!(failed, 0, "{kind}");
    assert!(d.log().matches("unreachable, serving with the last good routes").count() == 1, "{kind}: logged once");

    relay.restart().await;
    let recovered = {
        let mut ok = false;
        for _ in 0..80 {
            if api.get("/health").await.1["store"]["state"] == "ok" {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ok
    };
    assert!(recovered, "{kind}: recovered by itself");
    assert!(d.log().contains("reachable again"));
    assert_eq!(api.post("/admin/servers", route("n")).await.0, 201);
    assert_eq!(api.chat("n").await.0, 200);
}

#[tokio::test]
async fn database_outage_keeps_serving_on_server_databases() {
    let servers: Vec<_> = database_urls().into_iter().filter(|(k, _)| *k != "sqlite").collect();
    for (kind, base) in servers {
        let url = fresh_database(kind, &base).await;
        outage(kind, &url).await;
    }
}

/// Reload time with 10,000 routes (a measurement, printed; the assertion is only correctness).
#[tokio::test]
async fn ten_thousand_routes_reload() {
    for (kind, base) in database_urls() {
        let url = fresh_database(kind, &base).await;
        // Loopback ports nothing listens on; health checks slowed so 1,000 servers stay cheap.
        let d = Drover::start_with_db(
            "load_balancer: { health_check_interval: 60s, db_check_interval: 300ms }\n",
            Some(&url),
        )
        .await;
        let mut values = Vec::new();
        for i in 0..10_000 {
            values.push(format!(
                "('model-{}', 'http://127.0.0.1:{}', 'actual-{i}', {}, {})",
                i % 2500,
                20_000 + i % 1000,
                1 + i % 7,
                1 + i % 3
            ));
        }
        let written = Instant::now();
        for chunk in values.chunks(1000) {
            sql(&url, &format!(
                "INSERT INTO ollama_servers (virtual_model_name, server_url, actual_model_name, weight, priority) VALUES {}",
                chunk.join(", ")
            ))
            .await;
        }
        let inserted = written.elapsed();
        let t = Instant::now();
        let api = Api { d: &d, token: None };
        let mut seen = false;
        while !seen && t.elapsed() < Duration::from_secs(20) {
            seen = api.get("/status").await.1["stored_routes"] == 10_000;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(seen, "{kind}: 10,000 routes loaded");
        let line = d.log().lines().rev().find(|l| l.contains("10000 stored routes in")).unwrap_or_default().to_string();
        let reload = line.rsplit(" in ").next().unwrap_or("?");
        eprintln!(
            "{kind}: 10,000 routes: inserted in {inserted:?}, visible {:?} later, reload took {reload}",
            t.elapsed()
        );
    }
}

/// API keys on each database: made through the admin API, used, usage written back to the
/// row, and revoked by hand-written SQL (the key table's triggers move the change marker).
async fn keys_suite(kind: &str, url: &str) {
    let m = MockOllama::start("m", &["m:1b"]).await;
    let yaml = format!(
        "{FAST}{RELOAD}admin: {{ token: secret }}\nauth: {{ require_keys: true }}\nroutes:\n{}",
        route_yaml("chat", &m.url, "m:1b", 1, 1)
    );
    let d = Drover::start_with_db(&yaml, Some(url)).await;
    let api = Api { d: &d, token: Some("secret") };
    let (s, made) =
        api.post("/admin/keys", json!({ "name": "ci", "models": ["chat"], "tokens_per_minute": 100000 })).await;
    assert_eq!(s, 201, "{kind}: {made}");
    let key = made["key"].as_str().unwrap().to_string();
    let id = made["id"].as_i64().unwrap();
    let body = json!({ "model": "chat", "stream": false });
    for _ in 0..3 {
        let r = http().post(format!("{}/api/chat", d.url)).bearer_auth(&key).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200, "{kind}");
    }
    // Written to the row by the next poll; the admin API shows the same figures before and after.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, row) = api.get(&format!("/admin/keys/{id}")).await;
    assert_eq!((row["request_count"].as_i64(), row["prompt_tokens"].as_i64()), (Some(3), Some(15)), "{kind}: {row}");
    assert_eq!(row["models"], json!(["chat"]), "{kind}");

    sql(url, "UPDATE drover_api_keys SET is_active = FALSE").await;
    let started = Instant::now();
    let mut status = 200;
    while started.elapsed() < Duration::from_secs(3) && status != 401 {
        status = http()
            .post(format!("{}/api/chat", d.url))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
    }
    assert_eq!(status, 401, "{kind}: a key revoked in SQL is refused");
    eprintln!("{kind}: key revoked by SQL refused after {:?}", started.elapsed());
}

#[tokio::test]
async fn api_keys_on_every_database() {
    for (kind, base) in database_urls() {
        let url = fresh_database(kind, &base).await;
        keys_suite(kind, &url).await;
    }
}

/// Conversation memory kept in the store's drover_conversations table (no Redis).
#[tokio::test]
async fn conversation_memory_on_every_database() {
    for (kind, base) in database_urls() {
        let url = fresh_database(kind, &base).await;
        let m = MockOllama::start("m", &["m:1b"]).await;
        let yaml = format!("{FAST}memory: {{ enabled: true }}\nroutes:\n{}", route_yaml("chat", &m.url, "m:1b", 1, 1));
        let d = Drover::start_with_db(&yaml, Some(&url)).await;
        for (turn, text) in ["first question", "second question"].iter().enumerate() {
            let body = json!({ "model": "chat", "stream": false, "messages": [{ "role": "user", "content": text }] });
            let r = http()
                .post(format!("{}/api/chat", d.url))
                .header("x-session-id", "abc")
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{kind}");
            let sent = m.last_json()["messages"].as_array().unwrap().len();
            assert_eq!(sent, 1 + turn * 2, "{kind}: turn {turn}: {}", d.log());
        }
    }
}
