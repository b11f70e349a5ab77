//! A server's own refusals through a real drover: 429 (and 503) with Retry-After rest the
//! server and send the request elsewhere; 401/403 to drover's credentials take the server
//! out until a health check passes. Neither counts as a failure.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{json, Value};
use support::mock_ollama::{MockOllama, Mode};
use support::{header, http, route_yaml, Drover, FAST};

async fn two(a_mode: Mode) -> (MockOllama, MockOllama, Drover) {
    let a = MockOllama::start("a", &["m:1b"]).await;
    let b = MockOllama::start("b", &["m:1b"]).await;
    a.set_mode(a_mode);
    let yaml = format!(
        "{FAST}  max_fails: 1\nroutes:\n{}{}",
        route_yaml("m", &a.url, "m:1b", 1, 1),
        route_yaml("m", &b.url, "m:1b", 1, 2)
    );
    (a, b, Drover::start(&yaml).await)
}

async fn chat(d: &Drover, path: &str) -> reqwest::Response {
    let body = json!({ "model": "m", "stream": false, "messages": [{ "role": "user", "content": "hi" }] });
    http().post(format!("{}{path}", d.url)).json(&body).send().await.unwrap()
}

async fn get(d: &Drover, path: &str) -> Value {
    http().get(format!("{}{path}", d.url)).send().await.unwrap().json().await.unwrap()
}

fn server<'a>(stats: &'a Value, url: &str) -> &'a Value {
    stats["servers"].as_array().unwrap().iter().find(|s| s["url"] == url).unwrap()
}

#[tokio::test]
async fn a_429_rests_its_server_and_the_request_goes_on() {
    let (a, b, d) = two(Mode::RateLimited).await;
    a.state.retry_after_secs.store(3, Ordering::SeqCst);
    let r = chat(&d, "/api/chat").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-drover-server"), b.url);
    assert_eq!(header(&r, "x-drover-attempts"), "2");

    // It rests, counted apart from failures: skipped without being asked while it rests.
    let stats = get(&d, "/lb-stats").await;
    let sa = server(&stats, &a.url);
    assert_eq!(sa["status"], "resting", "{sa}");
    assert!(sa["rest_seconds_left"].as_f64().unwrap() > 1.5, "{sa}");
    assert_eq!((sa["error_count"].as_u64(), sa["rest_count"].as_u64()), (Some(0), Some(1)), "{sa}");
    let asked = a.requests();
    for _ in 0..3 {
        let r = chat(&d, "/api/chat").await;
        assert_eq!(header(&r, "x-drover-attempts"), "1");
    }
    assert_eq!(a.requests(), asked, "a resting server is not asked");
    let metrics = http().get(format!("{}/metrics", d.url)).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("drover_upstream_refusals_total{")
            && l.contains("rate_limited")
            && l.contains(&a.url)
            && l.ends_with(" 1")),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_client_gets_429_only_when_every_server_said_429_with_the_soonest_retry() {
    let (a, b, d) = two(Mode::RateLimited).await;
    b.set_mode(Mode::RateLimited);
    a.state.retry_after_secs.store(7, Ordering::SeqCst);
    b.state.retry_after_secs.store(4, Ordering::SeqCst);
    let r = chat(&d, "/v1/chat/completions").await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after"), "4");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "rate_limited", "in OpenAI's format: {e}");
    // While both rest, a new request is told at once, with the soonest either takes requests again.
    let r = chat(&d, "/api/chat").await;
    assert_eq!(r.status(), 429);
    let secs: u64 = header(&r, "retry-after").parse().unwrap();
    assert!((3..=4).contains(&secs), "{secs}");
    assert!(r.json::<Value>().await.unwrap()["error"].as_str().unwrap().contains("retry after"));
    assert_eq!((a.requests(), b.requests()), (1, 1));

    // One said 429, the other failed: that is a failure, not a rate limit.
    let (a, b, d) = two(Mode::RateLimited).await;
    b.set_mode(Mode::Error);
    let r = chat(&d, "/api/chat").await;
    assert_eq!(r.status(), 500, "the last server's own 5xx is passed on");
    assert_eq!((a.requests(), b.requests()), (1, 1));
}

#[tokio::test]
async fn a_servers_refused_credentials_take_it_out_until_a_health_check_passes() {
    let a = MockOllama::start("a", &["m:1b"]).await;
    let b = MockOllama::start("b", &["m:1b"]).await;
    a.set_mode(Mode::Unauthorized);
    // Health checks every 2 s: the first ran before drover was ready, the next is well after
    // the first requests.
    let yaml = format!(
        "load_balancer:\n  health_check_interval: 2s\n  rise: 1\n  fall: 1\nservers:\n  - {{ url: \"{}\", api_key: wrong }}\nroutes:\n{}{}",
        a.url,
        route_yaml("m", &a.url, "m:1b", 1, 1),
        route_yaml("m", &b.url, "m:1b", 1, 2)
    );
    let d = Drover::start(&yaml).await;
    let r = chat(&d, "/api/chat").await;
    assert_eq!(r.status(), 200, "the client's key was not refused: the next server answers");
    assert_eq!(header(&r, "x-drover-server"), b.url);
    assert_eq!(a.last_header("authorization").as_deref(), Some("Bearer wrong"));

    let health = get(&d, "/health").await;
    let sa = server(&health, &a.url);
    assert_eq!(sa["state"], "down", "{sa}");
    assert_eq!(sa["down_reason"], "upstream credentials refused (HTTP 401)", "{sa}");
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(sa["healthy"], true, "its health checks pass: {sa}");
    let stats = get(&d, "/lb-stats").await;
    assert_eq!(server(&stats, &a.url)["status"], "down");
    assert_eq!(server(&stats, &a.url)["error_count"], 0, "not counted as a failure");
    let asked = a.requests();
    chat(&d, "/api/chat").await;
    assert_eq!(a.requests(), asked, "a server that refused drover's credentials is not asked again");
    let dash = get(&d, "/dashboard/data").await;
    assert_eq!(server(&dash, &a.url)["down_reason"], "upstream credentials refused (HTTP 401)");

    // The credentials fixed (here: the server accepts them again): the next passing health
    // check brings it back.
    a.set_mode(Mode::Normal);
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    while server(&get(&d, "/lb-stats").await, &a.url)["status"] != "up" {
        assert!(std::time::Instant::now() < deadline, "a passing health check brings it back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = chat(&d, "/api/chat").await;
    assert_eq!(header(&r, "x-drover-server"), a.url);

    // When every server refuses drover's credentials, the client gets a 502 that says so.
    a.set_mode(Mode::Unauthorized);
    b.set_mode(Mode::Unauthorized);
    let r = chat(&d, "/api/chat").await;
    assert_eq!(r.status(), 502);
    let e: Value = r.json().await.unwrap();
    assert!(e["error"].as_str().unwrap().contains("upstream credentials refused"), "{e}");
}
