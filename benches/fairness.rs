//! Fair queueing benchmark: two API keys share a saturated fleet, one sending ten times the
//! other's rate. Measures the light key's wait (time to its answer) against its wait alone,
//! and how much of the capacity the light key leaves the heavy key gets, with one key per
//! tenant (drover's fair order) and with both tenants under no key (one first-come line).
//!
//! Run: `cargo bench --bench fairness` (under `cargo test` it makes a short smoke run).
//! The fleet: one mock server whose answers take SERVICE, SLOTS at a time
//! (max_concurrency); open-loop load, each request sent on its schedule whatever came back.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::mock_ollama::MockOllama;
use support::{http, route_yaml, Drover};

const SERVICE: Duration = Duration::from_millis(200);
const SLOTS: usize = 8;
/// Requests per second the fleet can answer.
const CAPACITY: f64 = SLOTS as f64 / 0.2;
const LIGHT_RATE: f64 = 4.0;
const HEAVY_RATE: f64 = 40.0;

struct Load {
    key: Option<String>,
    rate: f64,
}

/// Sends `load` for `secs`, open loop: the answers' times (request to whole answer).
async fn send(d: &Drover, load: &Load, secs: f64) -> Vec<Duration> {
    let n = (load.rate * secs) as usize;
    let gap = Duration::from_secs_f64(1.0 / load.rate);
    let start = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (url, key) = (format!("{}/api/chat", d.url), load.key.clone());
            tokio::spawn(async move {
                tokio::time::sleep_until((start + gap * i as u32).into()).await;
                let sent = Instant::now();
                let body = json!({ "model": "m", "stream": false, "messages": [{ "role": "user", "content": "hi" }] });
                let mut req = http().post(url).json(&body);
                if let Some(k) = key {
                    req = req.bearer_auth(k);
                }
                let ok = req.send().await.is_ok_and(|r| r.status() == 200);
                ok.then(|| sent.elapsed())
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        if let Ok(Some(d)) = t.await {
            out.push(d);
        }
    }
    out
}

fn p95(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get((v.len() * 95 / 100).min(v.len().saturating_sub(1))).copied().unwrap_or_default()
}

async fn fleet(keys: bool) -> (MockOllama, Drover, Option<(String, String)>) {
    let m = MockOllama::start("m", &["m:1b"]).await;
    m.set_answer_delay(SERVICE);
    let auth = if keys { "auth:\n  require_keys: true\n" } else { "" };
    let yaml = format!(
        "load_balancer:\n  max_concurrency: {SLOTS}\n  queue_timeout: 120s\n{auth}routes:\n{}",
        route_yaml("m", &m.url, "m:1b", 1, 1)
    );
    let d = Drover::start(&yaml).await;
    let made = if keys {
        let mut ks = Vec::new();
        for name in ["light", "heavy"] {
            let r = http().post(format!("{}/admin/keys", d.url)).json(&json!({ "name": name })).send().await.unwrap();
            let v: Value = r.json().await.unwrap();
            ks.push(v["key"].as_str().unwrap().to_string());
        }
        Some((ks[0].clone(), ks[1].clone()))
    } else {
        None
    };
    (m, d, made)
}

#[tokio::main]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let secs = if bench { 12.0 } else { 2.0 };
    println!(
        "\nFair queueing: one server, {SLOTS} slots, answers of {} ms ({CAPACITY:.0} requests/s); the light tenant sends {LIGHT_RATE}/s, the heavy one {HEAVY_RATE}/s, for {secs} s (open loop).\n",
        SERVICE.as_millis()
    );
    println!("| run | light p95 ms | light p95 vs alone | heavy answered/s | heavy share of what light leaves |");
    println!("|---|---|---|---|---|");

    let (_m, d, _) = fleet(false).await;
    let alone = p95(send(&d, &Load { key: None, rate: LIGHT_RATE }, secs).await);
    println!("| light alone | {} | 1.00x | - | - |", alone.as_millis());
    drop(d);

    for keys in [false, true] {
        let (_m, d, made) = fleet(keys).await;
        let (light_key, heavy_key) = made.map_or((None, None), |(l, h)| (Some(l), Some(h)));
        let light = Load { key: light_key, rate: LIGHT_RATE };
        let heavy = Load { key: heavy_key, rate: HEAVY_RATE };
        let started = Instant::now();
        let (l, h) = tokio::join!(send(&d, &light, secs), send(&d, &heavy, secs));
        let wall = started.elapsed().as_secs_f64();
        let heavy_rate = h.len() as f64 / wall;
        let light_p95 = p95(l);
        println!(
            "| {} | {} | {:.2}x | {:.1} | {:.2} |",
            if keys { "both, a key each (fair order)" } else { "both, no keys (one first-come line)" },
            light_p95.as_millis(),
            light_p95.as_secs_f64() / alone.as_secs_f64().max(1e-9),
            heavy_rate,
            heavy_rate / (CAPACITY - LIGHT_RATE),
        );
    }
    println!(
        "\nThe heavy tenant's rate is measured over the whole run, its backlog drained at the end; 1.00 means it got all the capacity the light one left."
    );
}
