//! Replicas that follow demand (load_balancer.replicas), through a real drover on simulated
//! Ollama servers (tests/support/sim.rs: loads take time, memory is finite, /api/ps tells the
//! truth): requests that wait place another copy of their model, which then serves them; the
//! copy is let go once idle, never below min_replicas; never more than max_replicas copies.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::sim::{SimConfig, SimServer, GB};
use support::{header, http, Drover};

/// A server with one 4 GB model that takes 400 ms to load, one request at a time, 40 ms per answer.
async fn sim(name: &str) -> SimServer {
    SimServer::start(SimConfig {
        num_parallel: 1,
        token_delay: Duration::from_millis(10),
        ..SimConfig::new(name, 24 * GB, vec![("m:1b".into(), 4 * GB)])
    })
    .await
}

/// warm_first on `sims` (up to four requests in flight each, so a short line waits for the
/// warm server rather than spill to a cold one), with the replica keeper on.
async fn drover(sims: &[&SimServer], max_replicas: usize) -> Drover {
    drover_with(sims, 1, max_replicas, 4).await
}

async fn drover_with(sims: &[&SimServer], min_replicas: usize, max_replicas: usize, max_concurrency: usize) -> Drover {
    let routes: String = sims
        .iter()
        .map(|s| format!("  - {{ virtual_model_name: m, server_url: \"{}\", actual_model_name: \"m:1b\" }}\n", s.url))
        .collect();
    let yaml = format!(
        "load_balancer:\n  strategy: warm_first\n  max_concurrency: {max_concurrency}\n  health_check_interval: 200ms\n  rise: 1\n  fall: 1\n  \
         queue_timeout: 30s\n  replicas: {{ enabled: true, scale_up_wait: 200ms, scale_up_for: 300ms, scale_down_idle: 1500ms, \
         min_replicas: {min_replicas}, max_replicas: {max_replicas} }}\nroutes:\n{routes}"
    );
    Drover::start(&yaml).await
}

async fn ask(url: &str) -> String {
    let body = json!({ "model": "m", "stream": false, "options": { "num_predict": 4 },
                       "messages": [{ "role": "user", "content": "hi" }] });
    let r = http().post(format!("{url}/api/chat")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    header(&r, "x-drover-server")
}

/// `n` requests at once; the servers that answered them.
async fn burst(url: &str, n: usize) -> Vec<String> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn({
                let url = url.to_string();
                async move { ask(&url).await }
            })
        })
        .collect();
    let mut by = Vec::new();
    for t in tasks {
        by.push(t.await.unwrap());
    }
    by
}

async fn replicas(d: &Drover) -> Value {
    let stats: Value = http().get(format!("{}/lb-stats", d.url)).send().await.unwrap().json().await.unwrap();
    stats["replicas"].clone()
}

async fn changes(d: &Drover, change: &str) -> usize {
    let metrics = http().get(format!("{}/metrics", d.url)).send().await.unwrap().text().await.unwrap();
    metrics
        .lines()
        .filter(|l| l.starts_with("drover_replica_changes_total{") && l.contains(&format!("change=\"{change}\"")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as usize)
        .sum()
}

#[tokio::test]
async fn waiting_requests_place_a_copy_that_serves_them_and_an_idle_copy_is_let_go() {
    let (a, b) = (sim("a").await, sim("b").await);
    let d = drover(&[&a, &b], 2).await;
    // The first request loads the model where selection puts it.
    let first = ask(&d.url).await;
    let (warm, cold) = if first == a.url { (&a, &b) } else { (&b, &a) };
    assert_eq!(cold.stats().cold_loads.load(Ordering::SeqCst), 0);

    // A burst the warm server takes four at a time: the rest wait past scale_up_wait for
    // scale_up_for, and the keeper loads the model on the other server, which then serves.
    let by = burst(&d.url, 40).await;
    let on_cold = by.iter().filter(|u| **u == cold.url).count();
    assert_eq!(cold.stats().preloads.load(Ordering::SeqCst), 1, "placed by a preload, not by a request's cold load");
    assert_eq!(cold.stats().cold_loads.load(Ordering::SeqCst), 1);
    assert!(on_cold > 0, "the new copy served part of the burst: {by:?}");
    let r = replicas(&d).await;
    assert_eq!(r["placed"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["placed"][0]["server"], cold.url.as_str(), "{r}");
    assert_eq!(r["changes"][0]["change"], "up", "{r}");
    assert_eq!(changes(&d, "up").await, 1);
    assert_eq!(warm.stats().unloads.load(Ordering::SeqCst), 0);

    // Idle for scale_down_idle: the copy drover placed is let go; the first stays (min_replicas 1).
    let deadline = Instant::now() + Duration::from_secs(10);
    while cold.stats().unloads.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the idle copy was never unloaded: {}", replicas(&d).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cold.loaded_models(), Vec::<String>::new());
    assert_eq!(warm.loaded_models(), ["m:1b"], "min_replicas: the last copy is kept");
    assert_eq!(warm.stats().unloads.load(Ordering::SeqCst), 0);
    let r = replicas(&d).await;
    assert!(r["placed"].as_array().unwrap().is_empty(), "{r}");
    assert_eq!(r["changes"][1]["change"], "down", "{r}");
    assert_eq!(changes(&d, "down").await, 1);
    // Requests go on to the copy that is left.
    assert_eq!(ask(&d.url).await, warm.url);
}

#[tokio::test]
async fn never_more_than_max_replicas_copies() {
    let (a, b, c) = (sim("a").await, sim("b").await, sim("c").await);
    let d = drover(&[&a, &b, &c], 2).await;
    ask(&d.url).await;
    // A long backlog: the oldest waits past scale_up_wait many times over.
    burst(&d.url, 60).await;
    let copies = [&a, &b, &c].iter().filter(|s| !s.loaded_models().is_empty()).count();
    let preloads: usize = [&a, &b, &c].iter().map(|s| s.stats().preloads.load(Ordering::SeqCst)).sum();
    assert_eq!((copies, preloads), (2, 1), "max_replicas 2: one copy placed beside the first");
}

#[tokio::test]
async fn a_model_in_use_is_kept_on_min_replicas_servers_without_waiting() {
    let (a, b, c) = (sim("a").await, sim("b").await, sim("c").await);
    let d = drover_with(&[&a, &b, &c], 2, 3, 4).await;
    // One request, nothing waits: the keeper still places a second copy of a model in use.
    ask(&d.url).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while [&a, &b, &c].iter().filter(|s| !s.loaded_models().is_empty()).count() < 2 {
        assert!(Instant::now() < deadline, "no second copy: {}", replicas(&d).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let copies = [&a, &b, &c].iter().filter(|s| !s.loaded_models().is_empty()).count();
    let preloads: usize = [&a, &b, &c].iter().map(|s| s.stats().preloads.load(Ordering::SeqCst)).sum();
    assert_eq!((copies, preloads), (2, 1), "min_replicas 2: one copy placed, no more");
    // Idle past scale_down_idle: the placed copy is not let go, as that would leave one.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let unloads: usize = [&a, &b, &c].iter().map(|s| s.stats().unloads.load(Ordering::SeqCst)).sum();
    assert_eq!(unloads, 0);
}

#[tokio::test]
async fn streams_slow_to_start_on_a_warm_server_place_a_copy_too() {
    let (a, b) = (sim("a").await, sim("b").await);
    // drover lets sixteen requests at once onto a server that answers one at a time: nothing
    // waits in drover's queue; the waiting happens inside the server, which Ollama does not
    // report. The first bytes of the streams say it.
    let d = drover_with(&[&a, &b], 1, 2, 16).await;
    let first = ask(&d.url).await;
    let cold = if first == a.url { &b } else { &a };
    let streams: Vec<_> = (0..16)
        .map(|_| {
            let url = d.url.clone();
            tokio::spawn(async move {
                let body = json!({ "model": "m", "stream": true, "options": { "num_predict": 8 },
                                   "messages": [{ "role": "user", "content": "hi" }] });
                let r = http().post(format!("{url}/api/chat")).json(&body).send().await.unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
            })
        })
        .collect();
    for s in streams {
        s.await.unwrap();
    }
    assert_eq!(cold.stats().preloads.load(Ordering::SeqCst), 1, "{}", replicas(&d).await);
    assert_eq!(changes(&d, "up").await, 1);
}
