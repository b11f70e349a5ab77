//! The load servers report about themselves, through a real drover: llama.cpp's /slots and
//! vLLM's /metrics are read in the health pass, shown in /lb-stats, and counted by
//! selection: a server that says it is full takes nothing more; least_busy prefers the one
//! with the least reported load; a server that reports nothing is served as before.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::mock_ollama::{MockOllama, Report};
use support::{header, http, route_yaml, Drover, FAST};

/// Two openai-kind servers of one model, equal in weight and tier.
async fn two(strategy: &str) -> (MockOllama, MockOllama, Drover) {
    let a = MockOllama::start("a", &["m:1b"]).await;
    let b = MockOllama::start("b", &["m:1b"]).await;
    let yaml = format!(
        "{FAST}  strategy: {strategy}\nservers:\n  - {{ url: \"{}\", kind: openai }}\n  - {{ url: \"{}\", kind: openai }}\nroutes:\n{}{}",
        a.url,
        b.url,
        route_yaml("m", &a.url, "m:1b", 1, 1),
        route_yaml("m", &b.url, "m:1b", 1, 1)
    );
    (a, b, Drover::start(&yaml).await)
}

async fn chat(d: &Drover) -> reqwest::Response {
    let body = json!({ "model": "m", "messages": [{ "role": "user", "content": "hi" }] });
    http().post(format!("{}/v1/chat/completions", d.url)).json(&body).send().await.unwrap()
}

/// Which servers answered `n` requests sent one after another.
async fn answered_by(d: &Drover, n: usize) -> Vec<String> {
    let mut by = Vec::new();
    for _ in 0..n {
        let r = chat(d).await;
        assert_eq!(r.status(), 200);
        by.push(header(&r, "x-drover-server"));
    }
    by
}

async fn server_stats(d: &Drover, url: &str) -> Value {
    let stats: Value = http().get(format!("{}/lb-stats", d.url)).send().await.unwrap().json().await.unwrap();
    stats["servers"].as_array().unwrap().iter().find(|s| s["url"] == url).unwrap().clone()
}

/// Waits until /lb-stats shows a reading of `url` for which `ok` holds.
async fn reading(d: &Drover, url: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = server_stats(d, url).await;
        if ok(&s["reported_load"]) {
            return s;
        }
        assert!(Instant::now() < deadline, "no such reading of {url}: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_server_whose_llama_cpp_slots_are_all_busy_takes_nothing_until_one_frees() {
    let (a, b, d) = two("weighted").await;
    // Another client fills a's four slots.
    a.report(Some(Report::Slots { busy: 4, total: 4 }));
    b.report(Some(Report::Slots { busy: 0, total: 4 }));
    let s = reading(&d, &a.url, |r| r["running"] == 4).await;
    assert_eq!(s["reported_load"]["slots"], 4, "{s}");
    assert_eq!(s["reported_load"]["from"], "/slots", "{s}");
    assert_eq!(s["reported_load"]["full"], true, "{s}");
    assert_eq!(s["status"], "busy", "{s}");
    assert_eq!(s["load_estimate"], 4, "{s}");
    let before = a.requests();
    let by = answered_by(&d, 6).await;
    assert!(by.iter().all(|u| *u == b.url), "a reported every slot busy: {by:?}");
    assert_eq!(a.requests(), before);

    // Its slots free up: the next reading puts it back, and weighted splits evenly again.
    a.report(Some(Report::Slots { busy: 0, total: 4 }));
    reading(&d, &a.url, |r| r["running"] == 0 && r["full"] == false).await;
    let by = answered_by(&d, 6).await;
    assert_eq!(by.iter().filter(|u| **u == a.url).count(), 3, "{by:?}");
}

#[tokio::test]
async fn a_vllm_server_with_a_waiting_queue_is_busy_and_least_busy_prefers_the_least_reported_load() {
    let (a, b, d) = two("least_busy").await;
    a.report(Some(Report::Vllm { running: 6, waiting: 2, kv: 0.5 }));
    b.report(Some(Report::Vllm { running: 1, waiting: 0, kv: 0.1 }));
    let s = reading(&d, &a.url, |r| r["waiting"] == 2).await;
    assert_eq!(
        (s["reported_load"]["running"].as_u64(), s["reported_load"]["kv_cache_used"].as_f64()),
        (Some(6), Some(0.5)),
        "{s}"
    );
    assert_eq!((s["reported_load"]["from"].as_str(), s["status"].as_str()), (Some("/metrics"), Some("busy")), "{s}");
    reading(&d, &b.url, |r| r["running"] == 1).await;
    let by = answered_by(&d, 4).await;
    assert!(by.iter().all(|u| *u == b.url), "a has a queue of its own: {by:?}");

    // No queue, but more running than b: least_busy still sends to b.
    a.report(Some(Report::Vllm { running: 5, waiting: 0, kv: 0.5 }));
    reading(&d, &a.url, |r| r["waiting"] == 0 && r["full"] == false).await;
    assert_eq!(server_stats(&d, &a.url).await["status"], "up");
    let by = answered_by(&d, 4).await;
    assert!(by.iter().all(|u| *u == b.url), "least reported load first: {by:?}");

    // The load moves to b: the choice follows it.
    a.report(Some(Report::Vllm { running: 0, waiting: 0, kv: 0.0 }));
    b.report(Some(Report::Vllm { running: 7, waiting: 0, kv: 0.9 }));
    reading(&d, &b.url, |r| r["running"] == 7).await;
    reading(&d, &a.url, |r| r["running"] == 0).await;
    let by = answered_by(&d, 4).await;
    assert!(by.iter().all(|u| *u == a.url), "{by:?}");

    // A full KV cache is full too.
    a.report(Some(Report::Vllm { running: 1, waiting: 0, kv: 1.0 }));
    reading(&d, &a.url, |r| r["full"] == true).await;
    let by = answered_by(&d, 2).await;
    assert!(by.iter().all(|u| *u == b.url), "{by:?}");
    let metrics = http().get(format!("{}/metrics", d.url)).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("drover_server_reported_requests{") && l.contains(&b.url)),
        "{metrics}"
    );
}

#[tokio::test]
async fn requests_queued_behind_a_full_server_go_when_it_reports_room() {
    let a = MockOllama::start("a", &["m:1b"]).await;
    a.report(Some(Report::Slots { busy: 2, total: 2 }));
    let yaml = format!(
        "{FAST}  queue_timeout: 10s\nservers:\n  - {{ url: \"{}\", kind: openai }}\nroutes:\n{}",
        a.url,
        route_yaml("m", &a.url, "m:1b", 1, 1)
    );
    let d = Drover::start(&yaml).await;
    reading(&d, &a.url, |r| r["full"] == true).await;
    let waiting = tokio::spawn({
        let url = d.url.clone();
        async move {
            let body = json!({ "model": "m", "messages": [{ "role": "user", "content": "hi" }] });
            let sent = Instant::now();
            let r = http().post(format!("{url}/v1/chat/completions")).json(&body).send().await.unwrap();
            (r.status(), sent.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(a.requests(), 0, "held in drover's queue while the server says it is full");
    a.report(Some(Report::Slots { busy: 1, total: 2 }));
    let (status, took) = waiting.await.unwrap();
    assert_eq!(status, 200);
    assert!(took >= Duration::from_millis(800), "{took:?}");
    assert_eq!(a.requests(), 1);
}

#[tokio::test]
async fn a_server_that_reports_no_load_is_served_as_before_and_not_asked_every_pass() {
    let (a, _b, d) = two("weighted").await;
    // Neither reports anything (a hosted API, a llama.cpp without /slots): no reading, both used.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let s = server_stats(&d, &a.url).await;
    assert!(s["reported_load"].is_null(), "{s}");
    let by = answered_by(&d, 6).await;
    assert_eq!(by.iter().filter(|u| **u == a.url).count(), 3, "{by:?}");
    // Six passes or so went by: /slots and /metrics were asked once each, then left alone.
    let asked = a.state.load_asks.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(asked, 2, "/slots and /metrics asked on every pass");
    // It starts reporting: found on a later pass (asked again now and then, not every pass).
    a.report(Some(Report::Slots { busy: 0, total: 1 }));
    let s = reading(&d, &a.url, |r| r["slots"] == 1).await;
    assert_eq!(s["reported_load"]["from"], "/slots");
}
