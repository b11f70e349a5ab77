//! Scheduling benchmark: drover's strategies against a plain round robin (what nginx would do)
//! on a simulated fleet, with the same bursty, skewed workload for each.
//!
//! Run: `cargo bench --bench scheduling` (add `-- --quick` for a shorter run; under
//! `cargo test` it makes a small smoke run). Each
//! contestant gets fresh simulated servers (tests/support/sim.rs) and its own drover
//! process. Prints a Markdown table: cold loads, loads that failed for lack of memory,
//! failed requests, p50/p95 latency and tokens/s, with ratios to round robin.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::sim::{SimConfig, SimServer, GB};
use support::Drover;

/// Six models: (name, size in GB, popularity weight): skewed, not by size.
const MODELS: [(&str, u64, f64); 6] =
    [("m1", 8, 1.0), ("m2", 4, 0.5), ("m3", 12, 0.33), ("m4", 6, 0.25), ("m5", 14, 0.2), ("m6", 10, 0.17)];
const SERVERS: usize = 3;
const CAPACITY_GB: u64 = 24;
const TOKENS: u64 = 16;

struct Contestant {
    name: &'static str,
    /// load_balancer settings (YAML flow mapping entries).
    lb: &'static str,
    probes: bool,
}

const CONTESTANTS: [Contestant; 4] = [
    Contestant {
        name: "round robin (nginx-like)",
        // nginx: no retry of a failed POST, no queue, and a 500 does not mark the server down.
        lb: "strategy: weighted, max_retry_count: 0, max_concurrency: 1000, cooldown: 1ms",
        probes: false,
    },
    Contestant { name: "drover weighted", lb: "strategy: weighted, max_concurrency: 8", probes: true },
    Contestant { name: "drover least_busy", lb: "strategy: least_busy, max_concurrency: 8", probes: true },
    Contestant { name: "drover warm_first", lb: "strategy: warm_first, max_concurrency: 8", probes: true },
];

/// xorshift64*: a fixed seed gives every contestant the same workload.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Bursts of requests (offset from start, model index).
fn workload(bursts: usize, per_burst: usize) -> Vec<(Duration, usize)> {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let total: f64 = MODELS.iter().map(|m| m.2).sum();
    let mut out = Vec::new();
    for b in 0..bursts {
        let start = BURST_GAP * b as u32;
        for i in 0..per_burst {
            let mut x = rng.next() * total;
            let model = MODELS.iter().position(|m| {
                x -= m.2;
                x <= 0.0
            });
            out.push((start + Duration::from_millis(i as u64 * 12), model.unwrap_or(0)));
        }
    }
    out
}

#[derive(Clone)]
struct Outcome {
    requests: usize,
    failed: usize,
    cold_loads: usize,
    failed_loads: usize,
    p50: Duration,
    p95: Duration,
    /// p95 of requests sent after the first WARMUP_BURSTS bursts (first loads done).
    p95_steady: Duration,
    tokens_per_s: f64,
}

const BURST_GAP: Duration = Duration::from_millis(900);
const WARMUP_BURSTS: u32 = 3;

async fn run(c: &Contestant, work: &[(Duration, usize)]) -> Outcome {
    let mut sims = Vec::new();
    for i in 0..SERVERS {
        sims.push(
            SimServer::start(SimConfig {
                name: format!("s{i}"),
                capacity_bytes: CAPACITY_GB * GB,
                models: MODELS.iter().map(|(m, gb, _)| (format!("{m}:1b"), gb * GB)).collect(),
                load_time_per_gb: Duration::from_millis(100),
                token_delay: Duration::from_millis(10),
                num_parallel: 4,
                keep_alive: Duration::from_secs(300),
            })
            .await,
        );
    }
    let mut routes = String::from("routes:\n");
    for (m, gb, _) in MODELS {
        for s in &sims {
            let probe = if c.probes { format!(", probe_url: \"{}\"", s.url) } else { String::new() };
            routes.push_str(&format!(
                "  - {{ virtual_model_name: {m}, server_url: \"{}\", actual_model_name: \"{m}:1b\", performance: {gb}{probe} }}\n",
                s.url
            ));
        }
    }
    let yaml = format!(
        "load_balancer: {{ {}, health_check_interval: 500ms, queue_timeout: 60s }}\nhttp_client: {{ read_timeout: 60s }}\n{routes}",
        c.lb
    );
    let d = Drover::start(&yaml).await;
    let client =
        reqwest::Client::builder().timeout(Duration::from_secs(120)).pool_max_idle_per_host(256).build().unwrap();
    let started = Instant::now();
    let tasks: Vec<_> = work
        .iter()
        .map(|&(at, model)| {
            let client = client.clone();
            let url = format!("{}/api/chat", d.url);
            tokio::spawn(async move {
                tokio::time::sleep_until(tokio::time::Instant::from_std(started + at)).await;
                let sent = Instant::now();
                let body = json!({ "model": MODELS[model].0, "stream": false, "options": { "num_predict": TOKENS },
                                   "messages": [{ "role": "user", "content": "hi" }] });
                let ok = match client.post(url).json(&body).send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                (ok, at, sent.elapsed())
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut steady = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (ok, at, took) = t.await.unwrap();
        if ok {
            latencies.push(took);
            if at >= BURST_GAP * WARMUP_BURSTS {
                steady.push(took);
            }
        } else {
            failed += 1;
        }
    }
    let wall = started.elapsed();
    latencies.sort();
    steady.sort();
    let pct = |v: &[Duration], p: f64| v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1))).copied();
    let sum = |f: fn(&support::sim::SimStats) -> usize| sims.iter().map(|s| f(s.stats())).sum::<usize>();
    Outcome {
        requests: work.len(),
        failed,
        cold_loads: sum(|s| s.cold_loads.load(std::sync::atomic::Ordering::SeqCst)),
        failed_loads: sum(|s| s.failed_loads.load(std::sync::atomic::Ordering::SeqCst)),
        p50: pct(&latencies, 0.50).unwrap_or_default(),
        p95: pct(&latencies, 0.95).unwrap_or_default(),
        p95_steady: pct(&steady, 0.95).unwrap_or_default(),
        tokens_per_s: latencies.len() as f64 * TOKENS as f64 / wall.as_secs_f64(),
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this without it: a smoke run.
    let work = if !args.iter().any(|a| a == "--bench") {
        workload(2, 8)
    } else if args.iter().any(|a| a == "--quick") {
        workload(6, 20)
    } else {
        workload(15, 24)
    };
    println!(
        "\nScheduling benchmark: {} servers x {} GB, {} models of 4-14 GB (54 GB in all), load 100 ms/GB, \
         10 ms/token, {} tokens/answer, OLLAMA_NUM_PARALLEL 4; {} requests in bursts, skewed popularity.\n",
        SERVERS,
        CAPACITY_GB,
        MODELS.len(),
        TOKENS,
        work.len()
    );
    println!(
        "| strategy | requests | failed requests | cold loads | failed loads | p50 ms | p95 ms | p95 ms after warm-up | tokens/s | cold loads vs RR | p95 vs RR | p95 after warm-up vs RR |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut baseline: Option<Outcome> = None;
    for c in &CONTESTANTS {
        let o = run(c, &work).await;
        let rr = baseline.get_or_insert_with(|| o.clone());
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.1}x fewer | {:.1}x lower | {:.1}x lower |",
            c.name,
            o.requests,
            o.failed,
            o.cold_loads,
            o.failed_loads,
            o.p50.as_millis(),
            o.p95.as_millis(),
            o.p95_steady.as_millis(),
            o.tokens_per_s,
            rr.cold_loads as f64 / o.cold_loads.max(1) as f64,
            ratio(rr.p95, o.p95),
            ratio(rr.p95_steady, o.p95_steady),
        );
    }
    println!("\nLatency percentiles count completed requests only; round robin's failed requests are not in them.");
}
