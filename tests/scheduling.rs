//! Resource-aware and warm-aware scheduling on simulated servers, the probe agent, and the queue.

mod support;

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::mock_ollama::MockOllama;
use support::sim::{SimConfig, SimServer, GB};
use support::{chat, free_port, http, Drover, FAST};

fn sim(name: &str, capacity_gb: u64, models: &[(&str, u64)], load_ms_per_gb: u64) -> SimConfig {
    SimConfig {
        load_time_per_gb: Duration::from_millis(load_ms_per_gb),
        ..SimConfig::new(name, capacity_gb * GB, models.iter().map(|(m, gb)| (m.to_string(), gb * GB)).collect())
    }
}

/// A route line with a probe and a memory need.
fn probed_route(model: &str, s: &SimServer, actual: &str, gb: f64, extra: &str) -> String {
    format!(
        "  - {{ virtual_model_name: {model}, server_url: \"{0}\", probe_url: \"{0}\", actual_model_name: \"{actual}\", performance: {gb}{extra} }}\n",
        s.url
    )
}

#[tokio::test]
async fn the_probe_agent_reports_cpu_memory_without_a_gpu() {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["probe", "--listen", &format!("127.0.0.1:{port}"), "--device", "gpu"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let mut reading = Value::Null;
    for _ in 0..100 {
        if let Ok(r) = http().get(format!("{url}/resources")).send().await {
            reading = r.json().await.unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    // CI has no NVIDIA driver: CPU memory, and a note saying why there are no GPUs.
    if reading["gpus"].as_array().is_some_and(|g| g.is_empty()) {
        assert_eq!(reading["device"], "CPU");
        assert!(reading["note"].as_str().unwrap().contains("NVML"), "{reading}");
    } else {
        assert_eq!(reading["device"], "GPU");
        assert!(reading["gpus"][0]["total_bytes"].as_u64().unwrap() > 0);
    }
    let total = reading["memory"]["total_bytes"].as_u64().unwrap();
    let available = reading["memory"]["available_bytes"].as_u64().unwrap();
    assert!(total > 0 && available <= total, "{reading}");
    assert!(reading["at"].as_str().unwrap().starts_with("20"));

    let bad = Command::new(env!("CARGO_BIN_EXE_drover")).args(["probe", "--listen", "nowhere"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--listen \"nowhere\""));
}

#[tokio::test]
async fn resource_check_passes_fails_and_fails_open() {
    let s = SimServer::start(sim("a", 10, &[("small:1b", 2), ("big:1b", 8)], 10)).await;
    let other = SimServer::start(sim("b", 10, &[("small:1b", 2)], 10)).await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let yaml = format!(
        "{FAST}  queue_timeout: 600ms\nroutes:\n{}{}  - {{ virtual_model_name: blind, server_url: \"{}\", probe_url: \"{dead}\", actual_model_name: \"small:1b\", performance: 2 }}\n",
        probed_route("fits", &s, "big:1b", 8.0, ""),
        probed_route("toolarge", &s, "small:1b", 12.0, ""),
        other.url
    );
    let d = Drover::start(&yaml).await;
    let (status, _, _) = chat(&d, "fits").await;
    assert_eq!(status, 200, "8 GB fits in 10 GB under the 90% threshold");
    let requests_before = s.stats().requests.load(Ordering::SeqCst);
    let (status, _, e) = chat(&d, "toolarge").await;
    assert_eq!(status, 503);
    assert!(e["error"].as_str().unwrap().contains("memory"), "{e}");
    assert_eq!(s.stats().requests.load(Ordering::SeqCst), requests_before, "refused before reaching the server");
    // Probe unreachable, fail_open (default): allowed.
    assert_eq!(chat(&d, "blind").await.0, 200);
    let stats: Value =
        http().get(format!("{}/admin/resource-cache/stats", d.url)).send().await.unwrap().json().await.unwrap();
    let probes = stats["probes"].as_array().unwrap();
    let hits: u64 = probes.iter().map(|p| p["hits"].as_u64().unwrap()).sum();
    assert!(hits < 100, "waiting for memory re-checks now and then, not in a spin: {hits} cache hits");
    assert!(probes.iter().any(|p| p["error"].is_string()), "the dead probe's error is shown: {stats}");
    assert!(probes.iter().any(|p| p["reading"]["gpus"][0]["total_bytes"] == 10 * GB));
    drop(d);

    // fail_open: false refuses a server whose probe does not answer (a fresh one: a model
    // already loaded needs no check at all).
    let other = SimServer::start(sim("c", 10, &[("small:1b", 2)], 10)).await;
    let d = Drover::start(&format!("{FAST}resources: {{ fail_open: false }}\nroutes:\n  - {{ virtual_model_name: blind, server_url: \"{}\", probe_url: \"{dead}\", actual_model_name: \"small:1b\", performance: 2 }}\n", other.url)).await;
    let (status, _, e) = chat(&d, "blind").await;
    assert_eq!(status, 503);
    assert!(e["error"].as_str().unwrap().contains("probe unreachable"), "{e}");
    let cleared: Value =
        http().post(format!("{}/admin/resource-cache/clear", d.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(cleared["cleared"], 1);
}

/// Two models that do not both fit are never loaded onto one server at once: the second
/// waits for the first request to end, then goes (Ollama unloads the idle first one).
#[tokio::test]
async fn concurrent_cold_loads_that_do_not_both_fit_are_serialised() {
    let s = SimServer::start(sim("a", 10, &[("a:1b", 6), ("b:1b", 6)], 150)).await;
    let yaml = format!(
        "{FAST}  queue_timeout: 10s\nroutes:\n{}{}",
        probed_route("a", &s, "a:1b", 6.0, ""),
        probed_route("b", &s, "b:1b", 6.0, "")
    );
    let d = Drover::start(&yaml).await;
    let (ra, rb) = tokio::join!(chat(&d, "a"), chat(&d, "b"));
    assert_eq!((ra.0, rb.0), (200, 200), "{ra:?} {rb:?}");
    let st = s.stats();
    assert_eq!(st.failed_loads.load(Ordering::SeqCst), 0, "no load failed for lack of memory");
    assert_eq!(st.cold_loads.load(Ordering::SeqCst), 2);
    assert!(st.peak_bytes.load(Ordering::SeqCst) as u64 <= 6 * GB, "never both in memory");
}

/// N concurrent requests that need the same server's reading share one probe.
#[tokio::test]
async fn concurrent_checks_share_one_probe() {
    let s = SimServer::start(sim("a", 40, &[("m:1b", 4)], 100)).await;
    let d = Drover::start(&format!("{FAST}  max_concurrency: 64\nroutes:\n{}", probed_route("m", &s, "m:1b", 4.0, "")))
        .await;
    let before = s.stats().probes.load(Ordering::SeqCst);
    let all = futures::future::join_all((0..20).map(|_| chat(&d, "m"))).await;
    assert!(all.iter().all(|(status, _, _)| *status == 200));
    assert_eq!(s.stats().probes.load(Ordering::SeqCst) - before, 1, "one probe for 20 requests");
    assert_eq!(s.stats().cold_loads.load(Ordering::SeqCst), 1);
    let stats: Value =
        http().get(format!("{}/admin/resource-cache/stats", d.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["probes"][0]["misses"], 1, "{stats}");
}

#[tokio::test]
async fn warm_first_sends_traffic_where_the_model_is_loaded() {
    let cold = SimServer::start(sim("cold", 20, &[("m:1b", 4)], 50)).await;
    let warm = SimServer::start(sim("warm", 20, &[("m:1b", 4)], 50)).await;
    let d = Drover::start(&format!(
        "{FAST}  strategy: warm_first\nroutes:\n{}{}",
        probed_route("m", &cold, "m:1b", 4.0, ", weight: 10"),
        probed_route("m", &warm, "m:1b", 4.0, ", weight: 1")
    ))
    .await;
    // Load the model on the low-weight server by asking it directly, then let /api/ps refresh.
    let r = http().post(format!("{}/api/chat", warm.url)).json(&json!({ "model": "m:1b" })).send().await.unwrap();
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..10 {
        let (status, server, _) = chat(&d, "m").await;
        assert_eq!((status, server.as_str()), (200, warm.url.as_str()));
    }
    assert_eq!(cold.stats().cold_loads.load(Ordering::SeqCst), 0);
}

/// max_concurrency 1: waiting requests go in arrival order, time out with Retry-After, and leave when the client does.
#[tokio::test]
async fn the_queue_is_fifo_bounded_in_time_and_left_on_disconnect() {
    let m = MockOllama::start("m", &["m:1b"]).await;
    m.set_answer_delay(Duration::from_millis(300));
    let d = Drover::start(&format!(
        "{FAST}  max_concurrency: 1\n  queue_timeout: 5s\nroutes:\n  - {{ virtual_model_name: m, server_url: \"{}\", actual_model_name: \"m:1b\" }}\n",
        m.url
    ))
    .await;
    let started = Instant::now();
    let mut handles = Vec::new();
    for i in 0..5 {
        let url = format!("{}/api/chat", d.url);
        handles.push(tokio::spawn(async move {
            let body =
                json!({ "model": "m", "stream": false, "messages": [{ "role": "user", "content": i.to_string() }] });
            let r = http().post(url).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200);
            (i, Instant::now())
        }));
        // Send the next one only once this one is in service (the first) or queued (the
        // rest), so that the arrival order is the order above, however loaded the machine.
        let arrived = async {
            loop {
                let stats: Value =
                    http().get(format!("{}/lb-stats", d.url)).send().await.unwrap().json().await.unwrap();
                let here = if i == 0 { m.requests() == 1 } else { stats["queued_requests"] == i };
                if here {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), arrived).await.expect("request reached drover");
    }
    let mut done = Vec::new();
    for h in handles {
        done.push(h.await.unwrap());
    }
    done.sort_by_key(|(_, t)| *t);
    let order: Vec<i32> = done.iter().map(|(i, _)| *i).collect();
    assert_eq!(order, [0, 1, 2, 3, 4], "served in arrival order");
    assert!(started.elapsed() >= Duration::from_millis(1400), "one at a time");

    // A waiting client that hangs up leaves the queue.
    let busy = tokio::spawn({
        let url = format!("{}/api/chat", d.url);
        async move { http().post(url).json(&json!({ "model": "m", "stream": false })).send().await.unwrap().status() }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let quitter = reqwest::Client::builder().timeout(Duration::from_millis(100)).build().unwrap();
    assert!(quitter.post(format!("{}/api/chat", d.url)).json(&json!({ "model": "m" })).send().await.is_err());
    let requests_before = m.requests();
    assert_eq!(busy.await.unwrap(), 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(m.requests(), requests_before, "the departed client's request never reached the server");
    let stats: Value = http().get(format!("{}/lb-stats", d.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["queued_requests"], 0);
}

#[tokio::test]
async fn a_full_wait_ends_in_503_with_retry_after() {
    let m = MockOllama::start("m", &["m:1b"]).await;
    m.set_answer_delay(Duration::from_millis(1500));
    let d = Drover::start(&format!(
        "{FAST}  max_concurrency: 1\n  queue_timeout: 400ms\nroutes:\n  - {{ virtual_model_name: m, server_url: \"{}\", actual_model_name: \"m:1b\" }}\n",
        m.url
    ))
    .await;
    let first = tokio::spawn({
        let url = format!("{}/api/chat", d.url);
        async move { http().post(url).json(&json!({ "model": "m", "stream": false })).send().await.unwrap().status() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = http().post(format!("{}/v1/chat/completions", d.url)).json(&json!({ "model": "m" })).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "queue_timeout");
    assert_eq!(first.await.unwrap(), 200);
}

/// One conversation's turn `n` (1-based): the history so far and a new question.
fn turn(model: &str, conversation: usize, n: usize) -> Value {
    let mut messages = vec![json!({ "role": "system", "content": "be brief" })];
    for t in 1..=n {
        messages.push(json!({ "role": "user", "content": format!("conversation {conversation}, question {t}") }));
        if t < n {
            messages.push(json!({ "role": "assistant", "content": format!("answer {t}") }));
        }
    }
    json!({ "model": model, "stream": false, "messages": messages, "options": { "num_predict": 2 } })
}

#[tokio::test]
async fn the_turns_of_a_conversation_go_back_to_its_server() {
    // Nine conversations; each server's KV cache holds all nine (one per parallel slot),
    // so a turn misses only if it lands away from its conversation's server, whatever the
    // hash makes of the servers' ports.
    let wide = |name| SimConfig { num_parallel: 9, ..sim(name, 20, &[("m:1b", 2)], 10) };
    let sims =
        [SimServer::start(wide("a")).await, SimServer::start(wide("b")).await, SimServer::start(wide("c")).await];
    let routes: String = sims.iter().map(|s| probed_route("m", s, "m:1b", 2.0, "")).collect();
    let d = Drover::start(&format!("{FAST}affinity: {{ mode: prefix }}\nroutes:\n{routes}")).await;
    // Nine conversations of four turns, one turn at a time: each sticks to one server, and
    // every turn after the first finds its history in that server's KV cache.
    let mut servers_of: Vec<std::collections::HashSet<String>> = vec![Default::default(); 9];
    for n in 1..=4 {
        for (c, seen) in servers_of.iter_mut().enumerate() {
            let r = http().post(format!("{}/api/chat", d.url)).json(&turn("m", c, n)).send().await.unwrap();
            assert_eq!(r.status(), 200);
            seen.insert(support::header(&r, "x-drover-server"));
        }
    }
    assert!(servers_of.iter().all(|s| s.len() == 1), "{servers_of:?}");
    let used: std::collections::HashSet<&String> = servers_of.iter().flatten().collect();
    assert!(used.len() >= 2, "conversations spread over the tier: {used:?}");
    let hits: usize = sims.iter().map(|s| s.stats().kv_hits.load(Ordering::SeqCst)).sum();
    assert_eq!(hits, 9 * 3, "every later turn reused its cache");

    // A session header wins over the body: different openings, one server.
    let mut seen = std::collections::HashSet::new();
    for c in 10..16 {
        let r = http()
            .post(format!("{}/api/chat", d.url))
            .header("X-Session-Id", "user-42")
            .json(&turn("m", c, 1))
            .send()
            .await
            .unwrap();
        seen.insert(support::header(&r, "x-drover-server"));
    }
    assert_eq!(seen.len(), 1, "{seen:?}");

    // Affinity never beats health: with its server down, a conversation moves, and stays.
    let home = servers_of[0].iter().next().unwrap().clone();
    let sim_home = sims.iter().find(|s| s.url == home).unwrap();
    let (status, _) = admin_drain(&d, &sim_home.url, true).await;
    assert_eq!(status, 200);
    let mut moved = std::collections::HashSet::new();
    for n in 5..=7 {
        let r = http().post(format!("{}/api/chat", d.url)).json(&turn("m", 0, n)).send().await.unwrap();
        moved.insert(support::header(&r, "x-drover-server"));
    }
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert!(!moved.contains(&home));
}

async fn admin_drain(d: &Drover, server: &str, drained: bool) -> (u16, Value) {
    let r = http()
        .post(format!("{}/admin/drain", d.url))
        .json(&json!({ "server_url": server, "drained": drained }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Two client groups asking one model at two context sizes, alternately, on two servers.
async fn alternate_contexts(match_num_ctx: bool) -> usize {
    let a = SimServer::start(sim("a", 20, &[("m:1b", 2)], 20)).await;
    let b = SimServer::start(sim("b", 20, &[("m:1b", 2)], 20)).await;
    let d = Drover::start(&format!(
        "{FAST}  strategy: warm_first\n  match_num_ctx: {match_num_ctx}\nroutes:\n{}{}",
        probed_route("m", &a, "m:1b", 2.0, ""),
        probed_route("m", &b, "m:1b", 2.0, "")
    ))
    .await;
    for i in 0..12 {
        let ctx = if i % 2 == 0 { 8192 } else { 2048 };
        let body = json!({ "model": "m", "stream": false, "options": { "num_ctx": ctx, "num_predict": 1 },
                           "messages": [{ "role": "user", "content": "hi" }] });
        let r = http().post(format!("{}/api/chat", d.url)).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    [&a, &b].iter().map(|s| s.stats().ctx_reloads.load(Ordering::SeqCst)).sum()
}

#[tokio::test]
async fn warm_first_keeps_each_context_size_on_its_own_server() {
    assert_eq!(alternate_contexts(true).await, 0, "each size found its own server and stayed");
    // The same traffic judged by model name alone: the model is reloaded again and again.
    assert!(alternate_contexts(false).await >= 6);
}
