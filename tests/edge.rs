//! drover at the edge: hostile or oversized requests, and failures that must not take a server out for everyone.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::mock_ollama::{MockOllama, Mode};
use support::{free_port, header, http, Drover, FAST};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn route(model: &str, server: &MockOllama, extra: &str) -> String {
    support::route_yaml_with(model, &server.url, "m:1b", extra)
}

async fn post_text(d: &Drover, body: String) -> reqwest::Response {
    http()
        .post(format!("{}/api/chat", d.url))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_body_nested_too_deep_is_refused_at_the_edge() {
    let m = MockOllama::start("m", &["m:1b"]).await;
    let d = Drover::start(&format!("{FAST}routes:\n{}", route("m", &m, ""))).await;
    let nested = |depth: usize| {
        format!("{{\"model\":\"m\",\"stream\":false,\"x\":{}1{}}}", "[".repeat(depth), "]".repeat(depth))
    };
    for depth in [127, 200, 100_000] {
        let r = post_text(&d, nested(depth)).await;
        assert_eq!(r.status(), 400, "depth {depth}");
        let e: Value = r.json().await.unwrap();
        assert!(e["error"].as_str().unwrap().contains("more than 127 levels deep"), "{e}");
    }
    assert_eq!(m.requests(), 0, "never forwarded");
    let r = post_text(&d, nested(100)).await;
    assert_eq!(r.status(), 200, "a deep but sane body passes");
    let sent = m.last_body().unwrap();
    assert!(sent.ends_with(format!("{}1{}}}", "[".repeat(100), "]".repeat(100)).as_bytes()), "the body is untouched");
}

#[tokio::test]
async fn a_header_block_over_the_limit_gets_431() {
    let m = MockOllama::start("m", &["m:1b"]).await;
    let d = Drover::start(&format!("{FAST}routes:\n{}", route("m", &m, ""))).await;
    let body = json!({ "model": "m", "stream": false });
    let r = http().post(format!("{}/api/chat", d.url)).header("x-big", "a".repeat(70 * 1024)).json(&body).send().await;
    let r = r.unwrap();
    assert_eq!(r.status(), 431);
    let e: Value = r.json().await.unwrap();
    assert!(e["error"].as_str().unwrap().contains("load_balancer.max_header_bytes"), "{e}");
    // The same on a fleet-wide call, in OpenAI's format on /v1.
    let r = http().get(format!("{}/v1/models", d.url)).header("x-big", "a".repeat(70 * 1024)).send().await.unwrap();
    assert_eq!(r.status(), 431);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "header_too_large", "{e}");
    assert_eq!(m.requests(), 0);
    // Headers of ordinary size pass.
    let r = http().post(format!("{}/api/chat", d.url)).header("x-big", "a".repeat(16 * 1024)).json(&body).send().await;
    assert_eq!(r.unwrap().status(), 200);
    assert_eq!(m.requests(), 1);
}

/// Writes a POST /api/chat declaring `length` bytes, with `extra` header lines and `body`,
/// then reads until drover closes the connection.
async fn raw_post(d: &Drover, length: usize, extra: &str, body: Option<&str>) -> String {
    let mut s = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    let head = format!(
        "POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n{extra}\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    if let Some(body) = body {
        s.write_all(body.as_bytes()).await.expect("the whole body is taken");
    }
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await.expect("answered").unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// A body over max_body_bytes gets a 413 the client reads, whether it declared its length,
/// sent it chunked, or asked to be told before sending (Expect: 100-continue).
#[tokio::test]
async fn a_body_over_the_limit_gets_a_413_the_client_can_read() {
    let m = MockOllama::start("m", &["m:1b"]).await;
    let d = Drover::start(&format!(
        "load_balancer: {{ max_body_bytes: 1048576, health_check_interval: 200ms }}\nroutes:\n{}",
        route("m", &m, "")
    ))
    .await;
    let big = format!("{{\"model\":\"m\",\"prompt\":\"{}\"}}", "p".repeat(8 * 1024 * 1024));
    for chunked in [false, true] {
        let body = if chunked {
            let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
                big.as_bytes().chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
            reqwest::Body::wrap_stream(futures::stream::iter(pieces))
        } else {
            reqwest::Body::from(big.clone())
        };
        let r = http().post(format!("{}/api/chat", d.url)).body(body).send().await;
        let r = r.unwrap_or_else(|e| panic!("chunked={chunked}: the client got no answer: {e:?}"));
        assert_eq!(r.status(), 413, "chunked={chunked}");
        let e: Value = r.json().await.unwrap();
        assert!(e["error"].as_str().unwrap().contains("load_balancer.max_body_bytes"), "{e}");
    }
    // A plain client that writes its whole request before reading: without the body being
    // read and dropped, its writes would meet a reset connection and never see the answer.
    let answer = raw_post(&d, big.len(), "", Some(&big)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // A client that waits for 100 Continue is refused before it sends anything.
    let answer = raw_post(&d, big.len(), "Expect: 100-continue\r\n", None).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(m.requests(), 0);
    let r = post_text(&d, json!({ "model": "m", "stream": false }).to_string()).await;
    assert_eq!(r.status(), 200, "drover goes on serving");
}

/// nginx's max_fails: one failed request does not cool a server down; max_fails within
/// fail_timeout do (a success in between starts the count again).
#[tokio::test]
async fn a_server_cools_down_after_max_fails_not_after_one() {
    let m = MockOllama::start("m", &["m:1b"]).await;
    let d = Drover::start(&format!(
        "load_balancer: {{ health_check_interval: 60s, max_fails: 3, fail_timeout: 30s, cooldown: 30s, panic_mode: false }}\nroutes:\n{}",
        route("m", &m, "")
    ))
    .await;
    let chat = || post_text(&d, json!({ "model": "m", "stream": false }).to_string());
    m.set_mode(Mode::Error);
    assert_eq!(chat().await.status(), 500, "the only server's own answer");
    m.set_mode(Mode::Normal);
    assert_eq!(chat().await.status(), 200, "one failure did not take it out");
    m.set_mode(Mode::Error);
    for _ in 0..3 {
        assert_eq!(chat().await.status(), 500);
    }
    m.set_mode(Mode::Normal);
    let r = chat().await;
    assert_eq!(r.status(), 503, "three failures within fail_timeout did");
    let e: Value = r.json().await.unwrap();
    assert!(e["error"].as_str().unwrap().contains("cooling down"), "{e}");
    assert_eq!(m.requests(), 5);
    let stats: Value = http().get(format!("{}/lb-stats", d.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["endpoints"][0]["status"], "cooling_down", "{stats}");
    assert_eq!(stats["endpoints"][0]["error_count"], 4, "{stats}");
}

/// Envoy's panic mode: with every route of a model cooling down, the one that failed
/// longest ago is tried instead of refusing at once.
#[tokio::test]
async fn with_every_route_cooling_down_the_oldest_failure_is_tried() {
    let a = MockOllama::start("a", &["m:1b"]).await;
    let b = MockOllama::start("b", &["m:1b"]).await;
    let d = Drover::start(&format!(
        "load_balancer: {{ health_check_interval: 60s, max_fails: 1, cooldown: 60s }}\nroutes:\n{}{}",
        route("m", &a, ", weight: 10"),
        route("m", &b, ", weight: 1")
    ))
    .await;
    let chat = || post_text(&d, json!({ "model": "m", "stream": false }).to_string());
    a.set_mode(Mode::Error);
    b.set_mode(Mode::Busy);
    assert_eq!(chat().await.status(), 503, "a failed, then b: b's answer is passed on");
    a.set_mode(Mode::Normal);
    b.set_mode(Mode::Normal);
    // Both cool down for a minute; a failed first, so it is tried.
    for _ in 0..3 {
        let r = chat().await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-drover-server"].to_str().unwrap(), a.url);
    }
    assert_eq!(b.requests(), 1);
}

#[tokio::test]
async fn an_unreachable_probe_is_logged_once_not_per_request() {
    let m = MockOllama::start("m", &["m:1b"]).await;
    let silent = format!("http://127.0.0.1:{}", free_port());
    let d = Drover::start(&format!(
        "{FAST}resources: {{ cache_ttl_min: 50ms, cache_ttl_max: 50ms, fail_open: true }}\nroutes:\n{}",
        route("m", &m, &format!(", probe_url: \"{silent}\", performance: 1"))
    ))
    .await;
    for _ in 0..5 {
        let r = post_text(&d, json!({ "model": "m", "stream": false }).to_string()).await;
        assert_eq!(r.status(), 200, "fail_open lets requests through");
        // The model unloads, and the health check sees it after the cached failure expired:
        // each request needs a reading again.
        m.set_loaded(&[]);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let stats: Value =
        http().get(format!("{}/admin/resource-cache/stats", d.url)).send().await.unwrap().json().await.unwrap();
    let misses = stats["probes"][0]["misses"].as_u64().unwrap();
    assert!(misses >= 3, "the probe was asked again and again: {stats}");
    let log = d.log();
    let warnings = log.matches(&format!("probe {silent} unreachable")).count();
    assert_eq!(warnings, 1, "{log}");
}

/// An operator takes a server out by hand and puts it back (POST /admin/drain).
#[tokio::test]
async fn a_drained_server_gets_no_new_requests_until_put_back() {
    let a = MockOllama::start("a", &["m:1b"]).await;
    let b = MockOllama::start("b", &["m:1b"]).await;
    let d = Drover::start(&format!("{FAST}routes:\n{}{}", route("m", &a, ""), route("m", &b, ""))).await;
    let drain = |body: Value| http().post(format!("{}/admin/drain", d.url)).json(&body).send();
    let r = drain(json!({ "server_url": a.url, "drained": true })).await.unwrap();
    assert_eq!(r.status(), 200);
    for _ in 0..6 {
        let r = post_text(&d, json!({ "model": "m", "stream": false }).to_string()).await;
        assert_eq!(r.headers()["x-drover-server"].to_str().unwrap(), b.url);
    }
    let stats: Value = http().get(format!("{}/lb-stats", d.url)).send().await.unwrap().json().await.unwrap();
    let a_stats = stats["endpoints"].as_array().unwrap().iter().find(|e| e["url"] == a.url.as_str()).unwrap();
    assert_eq!(a_stats["status"], "drained", "{stats}");
    // Bad requests change nothing.
    assert_eq!(drain(json!({ "server_url": "http://nowhere:1", "drained": true })).await.unwrap().status(), 404);
    let r = drain(json!({ "server_url": a.url, "drained": "yes", "colour": 1 })).await.unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert!(e["fields"]["drained"].is_string() && e["fields"]["colour"].is_string(), "{e}");
    assert_eq!(drain(json!({ "server_url": a.url, "drained": false })).await.unwrap().status(), 200);
    let mut servers = std::collections::HashSet::new();
    for _ in 0..6 {
        let r = post_text(&d, json!({ "model": "m", "stream": false }).to_string()).await;
        servers.insert(r.headers()["x-drover-server"].to_str().unwrap().to_string());
    }
    assert_eq!(servers.len(), 2, "both serve again");
    assert_eq!(a.requests(), 3);
}

#[tokio::test]
async fn cors_preflight_answered_and_origins_checked_as_ollama_does() {
    let m = MockOllama::start("m", &["m:1b"]).await;
    let d = Drover::start(&format!(
        "{FAST}cors:\n  allowed_origins: [\"https://*.example.com\"]\nroutes:\n{}",
        route("m", &m, "")
    ))
    .await;
    let c = http();

    // A browser's preflight, answered here.
    let r = c
        .request(reqwest::Method::OPTIONS, format!("{}/api/chat", d.url))
        .header("origin", "https://chat.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization, content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "access-control-allow-origin"), "https://chat.example.com");
    assert!(header(&r, "access-control-allow-methods").contains("POST"));
    assert_eq!(header(&r, "access-control-allow-headers"), "authorization, content-type");
    assert!(!header(&r, "access-control-max-age").is_empty());

    // The request itself: proxied, the origin echoed, Origin not passed to the server (which
    // would check it against its own OLLAMA_ORIGINS).
    let body = json!({ "model": "m", "stream": false });
    let r = c.post(format!("{}/api/chat", d.url)).header("origin", "https://chat.example.com").json(&body).send();
    let r = r.await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "access-control-allow-origin"), "https://chat.example.com");
    assert!(header(&r, "vary").contains("Origin"));
    assert!(header(&r, "access-control-expose-headers").contains("x-request-id"));
    assert_eq!(m.last_header("origin"), None);
    // Ollama's local defaults hold for drover's own answers too.
    let r = c.get(format!("{}/api/tags", d.url)).header("origin", "http://localhost:5173").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "access-control-allow-origin"), "http://localhost:5173");
    // No Origin, no CORS headers.
    let r = c.post(format!("{}/api/chat", d.url)).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "access-control-allow-origin"), "");

    // Any other origin: 403, preflight or not, and nothing reaches a server.
    let before = m.requests();
    let r = c
        .request(reqwest::Method::OPTIONS, format!("{}/api/chat", d.url))
        .header("origin", "https://example.com.evil.net")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c.post(format!("{}/v1/chat/completions", d.url)).header("origin", "https://evil.net").json(&body).send();
    let r = r.await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(header(&r, "access-control-allow-origin"), "");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "origin_not_allowed");
    assert!(e["error"]["message"].as_str().unwrap().contains("cors.allowed_origins"));
    assert_eq!(m.requests(), before);
}
