//! drover exposed: API keys in the store (admin CRUD, hashes only), who may call what, rate
//! limits under concurrency, and the credentials each server gets instead of the client's.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::mock_ollama::MockOllama;
use support::{admin, create_key, http, route_yaml, Drover, FAST};

fn route(model: &str, server: &MockOllama) -> String {
    route_yaml(model, &server.url, "m:1b", 1, 1)
}

async fn call(d: &Drover, path: &str, key: Option<&str>, body: Value) -> reqwest::Response {
    call_from(&http(), d, path, key, body).await
}

async fn call_from(c: &reqwest::Client, d: &Drover, path: &str, key: Option<&str>, body: Value) -> reqwest::Response {
    let mut req = c.post(format!("{}{path}", d.url)).json(&body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().await.unwrap()
}

fn chat(model: &str) -> Value {
    json!({ "model": model, "stream": false, "messages": [{ "role": "user", "content": "hi" }] })
}

#[tokio::test]
async fn with_keys_required_nothing_reaches_a_server_without_a_valid_key() {
    let m = MockOllama::start("m", &["m:1b"]).await;
    let d = Drover::start(&format!(
        "{FAST}auth:\n  require_keys: true\nroutes:\n{}{}",
        route("chat", &m),
        route("other", &m)
    ))
    .await;

    // No key: 401 in each API's format, on model calls and fleet views alike.
    let r = call(&d, "/api/chat", None, chat("chat")).await;
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("www-authenticate").is_some());
    let e: Value = r.json().await.unwrap();
    assert!(e["error"].as_str().unwrap().contains("Authorization: Bearer"), "{e}");
    let r = call(&d, "/v1/chat/completions", Some("drv_not-a-key"), chat("chat")).await;
    assert_eq!(r.status(), 401);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "invalid_api_key");
    let r = call(&d, "/v1/messages", None, json!({ "model": "chat", "max_tokens": 1, "messages": [] })).await;
    assert_eq!(r.status(), 401);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "authentication_error");
    for path in ["/api/tags", "/api/ps", "/v1/models", "/api/version", "/lb-stats"] {
        let r = http().get(format!("{}{path}", d.url)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    // Liveness stays open for load balancers.
    assert_eq!(http().get(format!("{}/health", d.url)).send().await.unwrap().status(), 200);

    // A key made through the admin API: shown once, stored as a hash.
    let (id, key) = create_key(&d, json!({ "name": "team-a", "models": ["chat"], "requests_per_minute": 100 })).await;
    assert!(key.starts_with("drv_") && key.len() > 30, "{key}");
    let (_, listed) = admin(&d, reqwest::Method::GET, "keys", None).await;
    let text = listed.to_string();
    assert!(!text.contains(&key) && !text.contains("key_hash"), "{listed}");
    assert_eq!(listed["keys"][0]["key_prefix"], key[..10]);

    let r = call(&d, "/api/chat", Some(&key), chat("chat")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(m.last_header("authorization"), None, "the client's key is drover's, not the server's");
    let r = http().get(format!("{}/api/tags", d.url)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Anthropic clients send x-api-key.
    let r = http()
        .post(format!("{}/v1/messages", d.url))
        .header("x-api-key", &key)
        .json(&json!({ "model": "chat", "max_tokens": 4, "messages": [] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A model the key may not use: 403.
    let before = m.requests();
    let r = call(&d, "/v1/chat/completions", Some(&key), chat("other")).await;
    assert_eq!(r.status(), 403);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "model_not_allowed");
    assert!(e["error"]["message"].as_str().unwrap().contains("chat"), "{e}");
    assert_eq!(m.requests(), before);

    // Usage per key: in the admin API and the metrics.
    let (_, k) = admin(&d, reqwest::Method::GET, &format!("keys/{id}"), None).await;
    assert_eq!(k["request_count"], 2, "{k}");
    assert_eq!(k["prompt_tokens"], 10, "{k}");
    let metrics = http().get(format!("{}/metrics", d.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("drover_key_requests_total{key=\"team-a\"} 2"), "{metrics}");

    // Bad admin input changes nothing.
    let (status, e) =
        admin(&d, reqwest::Method::POST, "keys", Some(json!({ "name": "", "requests_per_minute": -1 }))).await;
    assert_eq!(status, 400);
    assert!(e["fields"]["name"].is_string() && e["fields"]["requests_per_minute"].is_string(), "{e}");
    let (_, listed) = admin(&d, reqwest::Method::GET, "keys", None).await;
    assert_eq!(listed["keys"].as_array().unwrap().len(), 1);

    // Disabled, then deleted: refused at once.
    let (status, _) = admin(&d, reqwest::Method::PUT, &format!("keys/{id}"), Some(json!({ "is_active": false }))).await;
    assert_eq!(status, 200);
    assert_eq!(call(&d, "/api/chat", Some(&key), chat("chat")).await.status(), 401);
    let (status, _) = admin(&d, reqwest::Method::PUT, &format!("keys/{id}"), Some(json!({ "is_active": true }))).await;
    assert_eq!(status, 200);
    assert_eq!(call(&d, "/api/chat", Some(&key), chat("chat")).await.status(), 200);
    let (status, _) = admin(&d, reqwest::Method::DELETE, &format!("keys/{id}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(call(&d, "/api/chat", Some(&key), chat("chat")).await.status(), 401);
    assert_eq!(m.requests(), before + 1, "only the calls with a valid key reached the server");
}

/// A client whose requests come from another loopback address.
fn from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder().local_address(ip.parse::<std::net::IpAddr>().unwrap()).build().unwrap()
}

/// Fires `n` requests at once from `client` and counts the answers by status.
async fn burst(c: &reqwest::Client, d: &Drover, n: usize, key: Option<&str>) -> (usize, usize, Vec<String>) {
    let calls = (0..n).map(|_| call_from(c, d, "/api/chat", key, chat("chat")));
    let answers = futures::future::join_all(calls).await;
    let ok = answers.iter().filter(|r| r.status() == 200).count();
    let limited: Vec<&reqwest::Response> = answers.iter().filter(|r| r.status() == 429).collect();
    let retry_after =
        limited.iter().map(|r| r.headers().get("retry-after").unwrap().to_str().unwrap().to_string()).collect();
    (ok, limited.len(), retry_after)
}

#[tokio::test]
async fn rate_limits_admit_exactly_their_allowance_under_concurrency() {
    let m = MockOllama::start("m", &["m:1b"]).await;
    m.set_answer_delay(Duration::from_millis(50));
    let d = Drover::start(&format!(
        "{FAST}  max_concurrency: 100\nauth:\n  require_keys: true\nroutes:\n{}",
        route("chat", &m)
    ))
    .await;
    let (_, key) = create_key(&d, json!({ "name": "five", "requests_per_minute": 5 })).await;
    let (ok, limited, retry_after) = burst(&http(), &d, 20, Some(&key)).await;
    assert_eq!((ok, limited), (5, 15));
    // One request a minute / 5 comes back every 12 s.
    assert!(retry_after.iter().all(|s| s.parse::<u64>().is_ok_and(|s| (1..=12).contains(&s))), "{retry_after:?}");
    let (_, other) = create_key(&d, json!({ "name": "other" })).await;
    assert_eq!(burst(&http(), &d, 10, Some(&other)).await.0, 10, "limits are per key");

    // Tokens per minute: each answer reports 5 + 4 tokens; a budget of 10 admits a second
    // request (1 token left) and refuses the third.
    let (_, small) = create_key(&d, json!({ "name": "small", "tokens_per_minute": 10 })).await;
    assert_eq!(call(&d, "/api/chat", Some(&small), chat("chat")).await.status(), 200);
    assert_eq!(call(&d, "/api/chat", Some(&small), chat("chat")).await.status(), 200);
    let r = call(&d, "/api/chat", Some(&small), chat("chat")).await;
    assert_eq!(r.status(), 429);
    let e: Value = r.json().await.unwrap();
    assert!(e["error"].as_str().unwrap().contains("10 tokens per minute"), "{e}");

    // Per client address, without keys (the clients come from addresses of their own).
    let d = Drover::start(&format!(
        "{FAST}  max_concurrency: 100\nlimits:\n  client_requests_per_minute: 7\nroutes:\n{}",
        route("chat", &m)
    ))
    .await;
    let (ok, limited, _) = burst(&from("127.0.0.2"), &d, 20, None).await;
    assert_eq!((ok, limited), (7, 13));
    let r = call_from(&from("127.0.0.3"), &d, "/api/chat", None, chat("chat")).await;
    assert_eq!(r.status(), 200, "another address has its own allowance");
    assert_eq!(http().get(format!("{}/health", d.url)).send().await.unwrap().status(), 200, "not on /health");
}

#[tokio::test]
async fn each_server_gets_its_own_credentials_not_the_clients() {
    let locked = MockOllama::start("locked", &["m:1b"]).await;
    let open = MockOllama::start("open", &["m:1b"]).await;
    let d = Drover::start(&format!(
        "{FAST}servers:\n  - {{ url: \"{}\", api_key: \"upstream-secret\", headers: {{ x-team: blue }} }}\n  \
         - {{ url: \"{}\", forward_client_auth: true }}\nroutes:\n{}{}",
        locked.url,
        open.url,
        route("locked", &locked),
        route("open", &open)
    ))
    .await;
    let r = call(&d, "/api/chat", Some("client-token"), chat("locked")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(locked.last_header("authorization").as_deref(), Some("Bearer upstream-secret"));
    assert_eq!(locked.last_header("x-team").as_deref(), Some("blue"));
    let r = call(&d, "/api/chat", Some("client-token"), chat("open")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(open.last_header("authorization").as_deref(), Some("Bearer client-token"), "forwarded when asked");

    // The secret is never shown.
    for path in ["/status", "/lb-stats", "/admin/servers", "/admin/server-priority/overview"] {
        let text = http().get(format!("{}{path}", d.url)).send().await.unwrap().text().await.unwrap();
        assert!(!text.contains("upstream-secret"), "{path}: {text}");
    }
    assert!(!d.log().contains("upstream-secret"));
}

/// A key's weight and priority class (the queue's fair order) are set and checked through the
/// admin API, and a request under a batch key waits behind an interactive one.
#[tokio::test]
async fn key_weight_and_priority_order_the_queue() {
    let m = MockOllama::start("m", &["m:1b"]).await;
    m.set_answer_delay(Duration::from_millis(150));
    let d = Drover::start(&format!(
        "{FAST}  max_concurrency: 1\nauth:\n  require_keys: true\nroutes:\n{}",
        route("chat", &m)
    ))
    .await;
    let (id, batch) = create_key(&d, json!({ "name": "nightly", "weight": 3, "priority": "batch" })).await;
    let (_, k) = admin(&d, reqwest::Method::GET, &format!("keys/{id}"), None).await;
    assert_eq!((k["weight"].as_i64(), k["priority"].as_str()), (Some(3), Some("batch")), "{k}");
    let (status, e) =
        admin(&d, reqwest::Method::PUT, &format!("keys/{id}"), Some(json!({ "weight": 0, "priority": "urgent" })))
            .await;
    assert_eq!(status, 400, "{e}");
    let (_, k) = admin(&d, reqwest::Method::GET, &format!("keys/{id}"), None).await;
    assert_eq!((k["weight"].as_i64(), k["priority"].as_str()), (Some(3), Some("batch")), "nothing half-written");
    let (_, interactive) = create_key(&d, json!({ "name": "chat" })).await;

    // One slot: the batch key fills it and queues three more; an interactive request sent
    // after them is answered second.
    let done = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let send = |key: String, tag: &'static str, after: u64| {
        let (d_url, done) = (d.url.clone(), done.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(after)).await;
            let r = http()
                .post(format!("{d_url}/api/chat"))
                .bearer_auth(key)
                .json(&json!({ "model": "chat", "stream": false }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            done.lock().unwrap().push(tag);
        })
    };
    let mut tasks: Vec<_> = (0..4).map(|i| send(batch.clone(), "batch", i * 10)).collect();
    tasks.push(send(interactive, "interactive", 80));
    for t in tasks {
        t.await.unwrap();
    }
    let order = done.lock().unwrap().clone();
    assert_eq!(order.iter().position(|t| *t == "interactive"), Some(1), "{order:?}");
}
