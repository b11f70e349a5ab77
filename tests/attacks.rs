//! drover attacked as an edge proxy in front of a shared fleet: one test per class of attack,
//! each through a real drover (keys, memory and cache on where they matter) and mock Ollama
//! servers, each failing on the behaviour it guards against.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::mock_ollama::MockOllama;
use support::{admin, create_key, http, route_yaml, Drover, ADMIN_TOKEN, FAST};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// POSTs `body` as raw bytes (so duplicate keys reach drover as written).
async fn post_raw(d: &Drover, path: &str, key: &str, body: &str) -> (u16, Value) {
    let r = http()
        .post(format!("{}{path}", d.url))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Sends `request` on a raw connection and reads the answer until the server closes or
/// `within` passes.
async fn raw(d: &Drover, request: &[u8], within: Duration) -> String {
    let mut s = TcpStream::connect(d.addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// A mock server's two models behind virtual names m-x and m-y, keys required, and an admin
/// token (so the tests' loopback clients are tenants, not the admin).
async fn fleet(extra: &str) -> (MockOllama, Drover) {
    let m = MockOllama::start("m", &["x:1b", "y:1b"]).await;
    let d = Drover::start(&format!(
        "{FAST}auth:\n  require_keys: true\nadmin:\n  token: {ADMIN_TOKEN}\n{extra}routes:\n{}{}",
        route_yaml("m-x", &m.url, "x:1b", 1, 1),
        route_yaml("m-y", &m.url, "y:1b", 1, 1)
    ))
    .await;
    (m, d)
}

#[tokio::test]
async fn the_model_a_server_reads_is_the_model_drover_checked() {
    let (m, d) = fleet("").await;
    let (_, key) = create_key(&d, json!({ "name": "x-only", "models": ["m-x"] })).await;
    let before = m.requests();
    // Ollama's Go decoder matches keys without case and keeps the last: each of these would
    // run m-y (or another context, or stream) for a key checked against m-x.
    for body in [
        r#"{"model":"m-x","MODEL":"m-y","messages":[]}"#,
        r#"{"model":"m-x","Model":"m-y"}"#,
        r#"{"model":"m-x","model":"m-y"}"#,
        r#"{"model":"m-x","\u004dodel":"m-y"}"#,
        "{\"model\":\"m-x\",\"\u{17f}tream\":false}",
        "{\"model\":\"m-x\",\"\u{212a}eep_alive\":0}",
        r#"{"model":"m-x","options":{"num_ctx":2048,"num_ctx":131072}}"#,
        r#"{"model":"m-x","options":{},"OPTIONS":{"num_ctx":131072}}"#,
    ] {
        let (status, e) = post_raw(&d, "/api/chat", &key, body).await;
        assert_eq!(status, 400, "{body}: {e}");
        assert!(e["error"].as_str().unwrap().contains("spell it") || e["error"].as_str().unwrap().contains("twice"));
    }
    // In the client's own API format.
    let (status, e) = post_raw(&d, "/v1/chat/completions", &key, r#"{"model":"m-x","MODEL":"m-y"}"#).await;
    assert_eq!((status, e["error"]["code"].as_str()), (400, Some("ambiguous_field")), "{e}");
    let (status, e) = post_raw(&d, "/v1/messages", &key, r#"{"model":"m-x","model":"m-y","max_tokens":1}"#).await;
    assert_eq!((status, e["type"].as_str()), (400, Some("error")), "{e}");
    // Model management reads `name` too: the same rule.
    let (status, _) = post_raw(&d, "/api/pull", &key, r#"{"model":"m-x","NAME":"m-y"}"#).await;
    assert_eq!(status, 400);
    let (status, _) = post_raw(&d, "/api/show", &key, r#"{"name":"m-x","Name":"m-y"}"#).await;
    assert_eq!(status, 400);
    assert_eq!(m.requests(), before, "no ambiguous body reached the server");
    assert!(m.managed().is_empty());
    // What a real client sends still goes, and the server reads the name drover routed.
    let (status, _) = post_raw(&d, "/api/chat", &key, r#"{"mod\u0065l":"m-x","stream":false}"#).await;
    assert_eq!(status, 200);
    assert_eq!(m.last_json()["model"], "x:1b");
}

#[tokio::test]
async fn every_model_a_request_names_is_authorised() {
    let (m, d) = fleet("").await;
    let (_, key) = create_key(&d, json!({ "name": "x-only", "models": ["m-x"] })).await;
    for (path, body) in [
        ("/api/copy", json!({ "source": "m-x", "destination": "m-y" })),
        ("/api/copy", json!({ "source": "m-y", "destination": "m-x" })),
        ("/api/create", json!({ "model": "m-x", "from": "m-y" })),
        ("/api/create", json!({ "model": "m-x", "modelfile": "# base\nfrom m-y\nSYSTEM hi" })),
        ("/api/create", json!({ "model": "m-x", "from": "m-x", "remote_host": "http://10.0.0.1:11434" })),
        ("/api/push", json!({ "model": "m-y" })),
    ] {
        let (status, e) = post_raw(&d, path, &key, &body.to_string()).await;
        assert_eq!(status, 403, "{path} {body}: {e}");
        assert!(e["error"].as_str().unwrap().contains("may not use"), "{e}");
    }
    let (status, _) = post_raw(&d, "/api/create", &key, &json!({ "model": "m-x", "path": "/etc/x" }).to_string()).await;
    assert_eq!(status, 400, "a Modelfile on the server's disk");
    assert!(m.managed().is_empty(), "nothing reached the server: {:?}", m.managed());
    // Its own model: allowed.
    let (status, _) =
        post_raw(&d, "/api/copy", &key, &json!({ "source": "m-x", "destination": "m-x-backup" }).to_string()).await;
    assert_eq!(status, 403, "a destination it may not use, though the source is its own");
    let (status, e) =
        post_raw(&d, "/api/create", &key, &json!({ "model": "m-x", "from": "m-x", "stream": false }).to_string()).await;
    assert_eq!(status, 200, "{e}");

    // Listings show it only its models.
    let get = |path: &'static str| {
        let (url, key) = (format!("{}{path}", d.url), key.clone());
        async move { http().get(url).bearer_auth(key).send().await.unwrap() }
    };
    let tags: Value = get("/api/tags").await.json().await.unwrap();
    let names: Vec<&str> = tags["models"].as_array().unwrap().iter().filter_map(|t| t["name"].as_str()).collect();
    assert!(!names.is_empty() && names.iter().all(|n| n.starts_with("m-x")), "{tags}");
    let models: Value = get("/v1/models").await.json().await.unwrap();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().filter_map(|t| t["id"].as_str()).collect();
    assert!(!ids.is_empty() && ids.iter().all(|n| n.starts_with("m-x")), "{models}");
    assert_eq!(get("/v1/models/m-y").await.status(), 404);
    assert_eq!(get("/v1/models/m-x").await.status(), 200);
    // Nor the fleet's internals, nor other models in an error, nor blobs for any model.
    assert_eq!(get("/lb-stats").await.status(), 403);
    let (_, ghost) = create_key(&d, json!({ "name": "ghost", "models": ["m-x", "ghost"] })).await;
    let (status, e) = post_raw(&d, "/api/chat", &ghost, r#"{"model":"ghost"}"#).await;
    assert_eq!(status, 404, "{e}");
    assert!(!e.to_string().contains("m-y"), "the 404 lists another tenant's model: {e}");
    let r = http()
        .post(format!("{}/api/blobs/sha256:{}", d.url, "ab".repeat(32)))
        .bearer_auth(&key)
        .body("weights")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    m.set_loaded(&["x:1b", "y:1b"]);
    tokio::time::sleep(Duration::from_millis(500)).await; // a health pass reads /api/ps
    let ps: Value = get("/api/ps").await.json().await.unwrap();
    assert!(!ps.to_string().contains("m-y") && !ps.to_string().contains("y:1b"), "{ps}");
}

#[tokio::test]
async fn paths_and_digests_are_checked_before_they_are_forwarded() {
    let m = MockOllama::start("m", &["x:1b"]).await;
    let d = Drover::start(&format!("{FAST}routes:\n{}", route_yaml("m-x", &m.url, "x:1b", 1, 1))).await;
    let before = m.requests();
    let hex = "ab".repeat(32);
    for path in [
        "/api/blobs/%2e%2e/%2e%2e/api/chat".to_string(),
        "/api/blobs/..%2f..%2fapi%2fchat".to_string(),
        "/api/blobs/sha256:../../api/chat".to_string(),
        format!("/api/blobs/sha256:{}/../x", &hex[..62]),
        format!("/api/blobs/sha256:{hex}%2F.."),
        "/api/blobs/sha256:abc".to_string(),
    ] {
        let answer = raw(
            &d,
            format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}")
                .as_bytes(),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(status_of(&answer), 400, "{path}: {answer}");
    }
    // Paths that only look like an endpoint are not one.
    for path in ["/api/chat/../tags", "/api//chat", "/api/%63hat", "/api/chat/"] {
        let answer = raw(
            &d,
            format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 17\r\nConnection: close\r\n\r\n{{\"model\":\"m-x\"}}")
                .as_bytes(),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(status_of(&answer), 404, "{path}: {answer}");
    }
    assert_eq!(m.requests(), before, "nothing reached the server");
    assert!(m.state.blobs.lock().unwrap().is_empty());
    // A real digest goes to the servers.
    let r = http().head(format!("{}/api/blobs/sha256:{hex}", d.url)).send().await.unwrap();
    assert_eq!(r.status(), 404, "asked of the server, which does not have it");
}

#[tokio::test]
async fn sessions_and_cached_answers_belong_to_one_tenant() {
    let (m, d) = fleet("memory: { enabled: true }\ncache:\n  enabled: true\n").await;
    let (_, a) = create_key(&d, json!({ "name": "a", "models": ["*"] })).await;
    let (_, b) = create_key(&d, json!({ "name": "b", "models": ["*"] })).await;
    let turn = |key: &str, text: &str| {
        let (url, key, text) = (format!("{}/api/chat", d.url), key.to_string(), text.to_string());
        async move {
            let body = json!({ "model": "m-x", "stream": false, "messages": [{ "role": "user", "content": text }] });
            http().post(url).bearer_auth(key).header("x-session-id", "shared-id").json(&body).send().await.unwrap()
        }
    };
    assert_eq!(turn(&a, "my password is hunter2").await.status(), 200);
    assert_eq!(turn(&b, "what did the last person say?").await.status(), 200);
    let seen = m.last_json()["messages"].to_string();
    assert!(!seen.contains("hunter2"), "key b read key a's session: {seen}");
    // And b's turn was not written into a's session.
    assert_eq!(turn(&a, "again").await.status(), 200);
    let seen = m.last_json()["messages"].to_string();
    assert!(seen.contains("hunter2") && !seen.contains("last person"), "{seen}");

    // The response cache: a hit for the same key, never for another.
    let ask = |key: &str| {
        let (url, key) = (format!("{}/api/generate", d.url), key.to_string());
        async move {
            let body =
                json!({ "model": "m-x", "stream": false, "prompt": "secret plan", "options": { "temperature": 0 } });
            let r = http().post(url).bearer_auth(key).json(&body).send().await.unwrap();
            support::header(&r, "x-drover-cache")
        }
    };
    assert_eq!(ask(&a).await, "miss");
    assert_eq!(ask(&a).await, "hit");
    assert_eq!(ask(&b).await, "miss", "b was answered from a's cache");
}

#[tokio::test]
async fn the_admin_api_does_not_answer_pages_under_foreign_names() {
    let m = MockOllama::start("m", &["x:1b"]).await;
    let d = Drover::start(&format!("{FAST}routes:\n{}", route_yaml("m-x", &m.url, "x:1b", 1, 1))).await;
    let body = r#"{"name":"evil"}"#;
    let post = |host: &str, origin: Option<&str>| {
        let origin = origin.map_or_else(String::new, |o| format!("Origin: {o}\r\n"));
        format!(
            "POST /admin/keys HTTP/1.1\r\nHost: {host}\r\n{origin}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    // DNS rebinding: the attacker's name resolves to 127.0.0.1; Host and Origin are its own.
    let port = d.addr.port();
    for (host, origin) in [
        (format!("evil.example:{port}"), Some(format!("http://evil.example:{port}"))),
        (format!("evil.example:{port}"), None),
        (format!("127.0.0.1:{port}"), Some("https://evil.example".to_string())),
    ] {
        let answer = raw(&d, post(&host, origin.as_deref()).as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(status_of(&answer), 403, "{host} {origin:?}: {answer}");
    }
    for path in ["/dashboard", "/dashboard/data", "/admin/servers"] {
        let answer = raw(
            &d,
            format!("GET {path} HTTP/1.1\r\nHost: attacker.example\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(status_of(&answer), 403, "{path}: {answer}");
    }
    // Model management as the loopback admin, the same.
    let answer = raw(
        &d,
        format!("DELETE /api/delete HTTP/1.1\r\nHost: evil.example:{port}\r\nContent-Length: 15\r\nConnection: close\r\n\r\n{{\"model\":\"x:1b\"}}").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_of(&answer), 403, "{answer}");
    assert!(m.managed().is_empty());
    let (_, keys) = admin(&d, reqwest::Method::GET, "keys", None).await;
    assert_eq!(keys["keys"].as_array().map(Vec::len), Some(0), "no key was made: {keys}");
    // Listening on loopback without keys, the model API is guarded the same way.
    let before = m.requests();
    let answer = raw(
        &d,
        format!("POST /api/chat HTTP/1.1\r\nHost: evil.example:{port}\r\nContent-Length: 15\r\nConnection: close\r\n\r\n{{\"model\":\"m-x\"}}").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_of(&answer), 403, "{answer}");
    assert_eq!(m.requests(), before);
    // The operator on loopback: as before.
    let answer = raw(&d, post(&format!("localhost:{port}"), None).as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status_of(&answer), 201, "{answer}");
}

#[tokio::test]
async fn hanging_up_does_not_dodge_a_token_quota() {
    let (m, d) = fleet("").await;
    m.set_stream(40, Duration::from_millis(25));
    let (id, key) = create_key(&d, json!({ "name": "thirty", "models": ["*"], "tokens_per_minute": 30 })).await;
    let mut refused = false;
    for _ in 0..8 {
        let r = http()
            .post(format!("{}/api/chat", d.url))
            .bearer_auth(&key)
            .json(&json!({ "model": "m-x", "messages": [{ "role": "user", "content": "hi" }] }))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            refused = true;
            break;
        }
        assert_eq!(r.status(), 200);
        // Read a few lines of the stream, then hang up before its final counts.
        let mut r = r;
        let mut lines = 0;
        while let Some(chunk) = r.chunk().await.unwrap() {
            lines += chunk.iter().filter(|b| **b == b'\n').count();
            if lines >= 12 {
                break;
            }
        }
        drop(r);
        // drover charges when it notices the client left (its next write).
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(refused, "eight cut streams all passed a 30-token quota");
    let (_, k) = admin(&d, reqwest::Method::GET, &format!("keys/{id}"), None).await;
    assert!(k["completion_tokens"].as_u64().unwrap() >= 12, "{k}");
    let metrics = http().get(format!("{}/metrics", d.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("drover_key_tokens_total{key=\"thirty\",kind=\"completion\"}"), "charged in the metrics");

    // A stream read to its end whose server sent no counts (an OpenAI client that did not
    // ask for stream_options.include_usage) is charged for what passed too.
    m.set_stream(12, Duration::from_millis(1));
    let (_, key) = create_key(&d, json!({ "name": "thirty-more", "models": ["*"], "tokens_per_minute": 30 })).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = http()
            .post(format!("{}/v1/chat/completions", d.url))
            .bearer_auth(&key)
            .json(&json!({ "model": "m-x", "stream": true, "messages": [{ "role": "user", "content": "hi" }] }))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        let text = r.text().await.unwrap();
        assert!(!text.contains("\"usage\""), "the server sent no counts: {text}");
    }
    assert!(statuses.contains(&429), "six uncounted streams passed a 30-token quota: {statuses:?}");
}

#[tokio::test]
async fn a_trickled_header_is_cut_at_its_deadline() {
    let m = MockOllama::start("m", &["x:1b"]).await;
    let d = Drover::start_with_server(
        &format!("{FAST}routes:\n{}", route_yaml("m-x", &m.url, "x:1b", 1, 1)),
        "  header_timeout: 1s\n",
    )
    .await;
    // A byte every 100 ms: each read alone is quick, the whole would take 8 s. Also when it
    // opens with blank lines (the parser skips them) or with what begins HTTP/2's preface.
    let header = "GET /api/version HTTP/1.1\r\nHost: localhost\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    for trickled in [header.to_string(), format!("\r\n\r\n{header}"), header.replacen("GET", "POST", 1)] {
        let mut s = TcpStream::connect(d.addr).await.unwrap();
        let started = Instant::now();
        let mut cut = false;
        for b in trickled.as_bytes() {
            if s.write_all(&[*b]).await.is_err() {
                cut = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut probe = [0u8; 64];
            if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut probe)).await {
                cut = true;
                break;
            }
        }
        let held = started.elapsed();
        assert!(cut, "the trickled header {trickled:?} was read whole");
        assert!(held < Duration::from_secs(4), "{trickled:?} held for {held:?}");
    }

    // Idle time between requests is not the header's: a kept-alive connection waits.
    let mut s = TcpStream::connect(d.addr).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    // A body may take longer than the header's deadline.
    let body = br#"{"model":"m-x","stream":false,"messages":[]}"#;
    let mut s = TcpStream::connect(d.addr).await.unwrap();
    s.write_all(
        format!("POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
    )
    .await
    .unwrap();
    for part in body.chunks(10) {
        tokio::time::sleep(Duration::from_millis(400)).await;
        s.write_all(part).await.unwrap();
    }
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
}

#[tokio::test]
async fn a_smuggled_request_never_reaches_a_server() {
    let m = MockOllama::start("m", &["x:1b"]).await;
    let d = Drover::start(&format!("{FAST}routes:\n{}", route_yaml("m-x", &m.url, "x:1b", 1, 1))).await;
    let before = m.requests();
    let body = r#"{"model":"m-x","stream":false}"#;
    let hidden = "POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 15\r\n\r\n{\"model\":\"m-x\"}";
    for request in [
        // Content-Length and Transfer-Encoding together (CL.TE / TE.CL).
        format!("POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}", 5),
        // Two lengths that disagree.
        format!("POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nContent-Length: 5\r\n\r\n{body}{hidden}", body.len()),
        // An obfuscated Transfer-Encoding.
        format!("POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nTransfer-Encoding : chunked\r\n\r\n{body}{hidden}", body.len()),
        // A header value carrying a line break (header injection).
        format!("POST /api/chat HTTP/1.1\r\nHost: localhost\r\nX-Session-Id: a\rX-Injected: 1\r\nContent-Length: {}\r\n\r\n{body}", body.len()),
    ] {
        let answer = raw(&d, request.as_bytes(), Duration::from_secs(5)).await;
        let statuses: Vec<u16> = answer.match_indices("HTTP/1.1 ").map(|(i, _)| status_of(&answer[i..])).collect();
        // Refused whole (Pingora's HTTP/1 parser): one answer, a 400, and the connection closed.
        assert_eq!(statuses, [400], "{request:?}: {answer}");
    }
    assert_eq!(m.requests(), before, "nothing reached the server");
}
