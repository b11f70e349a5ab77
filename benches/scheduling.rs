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
                token_delay: Duration::from_millis(10),
                ..SimConfig::new(
                    &format!("s{i}"),
                    CAPACITY_GB * GB,
                    MODELS.iter().map(|(m, gb, _)| (format!("{m}:1b"), gb * GB)).collect(),
                )
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
    // `-- demand`: only the sections of issue 24 (shifting popularity, two drovers).
    if args.iter().any(|a| a == "demand") {
        let smoke = !args.iter().any(|a| a == "--bench");
        shifting(smoke).await;
        two_drovers(smoke).await;
        return;
    }
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
    let smoke = !args.iter().any(|a| a == "--bench");
    conversations(if smoke { (3, 3) } else { (9, 6) }).await;
    contexts(if smoke { 8 } else { 48 }).await;
    shifting(smoke).await;
    two_drovers(smoke).await;
}

/// Multi-turn conversations on a fleet where the model is loaded everywhere: the cost is
/// prompt processing, which a server's KV cache saves for the conversation it served last.
async fn conversations((count, turns): (usize, usize)) {
    println!(
        "\nConversation affinity: 3 servers, one model loaded on each, prompt processing 0.2 ms/token \
         ({} tokens per message), KV cache of 4 conversations per server; {count} conversations of {turns} turns \
         at once, each turn sent when the last one ended, streamed; time to first token of turns 2 and later.\n",
        support::sim::TOKENS_PER_MESSAGE
    );
    println!("| routing | turns | TTFT p50 ms | TTFT p95 ms | KV cache hits | prompt tokens processed | TTFT p50 vs no affinity | prompt tokens vs no affinity |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut reference: Option<(Duration, usize)> = None;
    for (name, affinity, header) in [
        ("weighted, no affinity", "off", false),
        ("affinity: prefix", "prefix", false),
        ("affinity: header", "header", true),
    ] {
        let mut sims = Vec::new();
        for i in 0..3 {
            sims.push(
                SimServer::start(SimConfig {
                    prompt_token_time: Duration::from_micros(200),
                    token_delay: Duration::from_millis(10),
                    ..SimConfig::new(&format!("s{i}"), 24 * GB, vec![("m:1b".into(), 2 * GB)])
                })
                .await,
            );
        }
        let routes: String = sims
            .iter()
            .map(|s| {
                format!("  - {{ virtual_model_name: m, server_url: \"{}\", actual_model_name: \"m:1b\" }}\n", s.url)
            })
            .collect();
        let d = Drover::start(&format!(
            "load_balancer: {{ health_check_interval: 500ms }}\naffinity: {{ mode: {affinity} }}\nroutes:\n{routes}"
        ))
        .await;
        let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let url = format!("{}/api/chat", d.url);
        let tasks: Vec<_> = (0..count)
            .map(|c| {
                let (client, url) = (client.clone(), url.clone());
                tokio::spawn(async move {
                    let mut ttft = Vec::new();
                    let mut messages = vec![json!({ "role": "system", "content": "be brief" })];
                    for t in 1..=turns {
                        messages.push(json!({ "role": "user", "content": format!("conversation {c} question {t}") }));
                        let body = json!({ "model": "m", "messages": messages, "stream": true, "options": { "num_predict": 4 } });
                        let mut req = client.post(&url).json(&body);
                        if header {
                            req = req.header("X-Session-Id", format!("session-{c}"));
                        }
                        let sent = Instant::now();
                        let mut r = req.send().await.unwrap();
                        let _first = r.chunk().await.unwrap();
                        if t > 1 {
                            ttft.push(sent.elapsed());
                        }
                        while r.chunk().await.unwrap().is_some() {}
                        messages.push(json!({ "role": "assistant", "content": format!("answer {t}") }));
                    }
                    ttft
                })
            })
            .collect();
        let mut ttft = Vec::new();
        for t in tasks {
            ttft.extend(t.await.unwrap());
        }
        ttft.sort();
        let pct = |p: f64| ttft[((ttft.len() as f64 * p) as usize).min(ttft.len() - 1)];
        let sum = |f: fn(&support::sim::SimStats) -> usize| sims.iter().map(|s| f(s.stats())).sum::<usize>();
        let hits = sum(|s| s.kv_hits.load(std::sync::atomic::Ordering::SeqCst));
        let tokens = sum(|s| s.prompt_tokens.load(std::sync::atomic::Ordering::SeqCst));
        let (p50, p95) = (pct(0.5), pct(0.95));
        let base = *reference.get_or_insert((p50, tokens));
        println!(
            "| {name} | {} | {} | {} | {hits} | {tokens} | {:.2}x | {:.2}x |",
            count * turns,
            p50.as_millis(),
            p95.as_millis(),
            p50.as_secs_f64() / base.0.as_secs_f64(),
            tokens as f64 / base.1 as f64
        );
    }
}

/// Two groups of clients asking one model with different num_ctx, interleaved, on two
/// servers with warm_first: judged by name alone, each group's request reloads the model
/// the other group loaded.
async fn contexts(requests: usize) {
    println!(
        "\nnum_ctx-aware routing: 2 servers, warm_first, one 4 GB model (load 100 ms/GB), {requests} requests \
         alternating num_ctx 8192 and 2048, 4 at a time.\n"
    );
    println!("| warm means | reloads for another num_ctx | cold loads | p50 ms | p95 ms | reloads vs by name |");
    println!("|---|---|---|---|---|---|");
    let mut reference = None;
    for (name, matching) in [("the model is loaded (by name)", false), ("loaded at the asked num_ctx", true)] {
        let mut sims = Vec::new();
        for i in 0..2 {
            sims.push(SimServer::start(SimConfig::new(&format!("s{i}"), 24 * GB, vec![("m:1b".into(), 4 * GB)])).await);
        }
        let routes: String = sims
            .iter()
            .map(|s| {
                format!(
                    "  - {{ virtual_model_name: m, server_url: \"{0}\", probe_url: \"{0}\", actual_model_name: \"m:1b\", performance: 4 }}\n",
                    s.url
                )
            })
            .collect();
        let d = Drover::start(&format!(
            "load_balancer: {{ strategy: warm_first, match_num_ctx: {matching}, health_check_interval: 500ms, queue_timeout: 60s }}\nroutes:\n{routes}"
        ))
        .await;
        let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let url = format!("{}/api/chat", d.url);
        let mut latencies = Vec::new();
        for wave in 0..requests / 4 {
            let tasks: Vec<_> = (0..4)
                .map(|i| {
                    let (client, url) = (client.clone(), url.clone());
                    let ctx = if (wave * 4 + i) % 2 == 0 { 8192 } else { 2048 };
                    tokio::spawn(async move {
                        let body = json!({ "model": "m", "stream": false, "options": { "num_ctx": ctx, "num_predict": 4 },
                                           "messages": [{ "role": "user", "content": "hi" }] });
                        let sent = Instant::now();
                        let ok = client.post(url).json(&body).send().await.is_ok_and(|r| r.status().is_success());
                        assert!(ok);
                        sent.elapsed()
                    })
                })
                .collect();
            for t in tasks {
                latencies.push(t.await.unwrap());
            }
        }
        latencies.sort();
        let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
        let sum = |f: fn(&support::sim::SimStats) -> usize| sims.iter().map(|s| f(s.stats())).sum::<usize>();
        let reloads = sum(|s| s.ctx_reloads.load(std::sync::atomic::Ordering::SeqCst));
        let cold = sum(|s| s.cold_loads.load(std::sync::atomic::Ordering::SeqCst));
        let base = *reference.get_or_insert(reloads);
        println!(
            "| {name} | {reloads} | {cold} | {} | {} | {} |",
            pct(0.5).as_millis(),
            pct(0.95).as_millis(),
            if reloads == 0 { format!("{base} -> 0") } else { format!("{:.2}x", reloads as f64 / base.max(1) as f64) }
        );
    }
}

/// Four 6 GB models on three 24 GB servers (three fit on each under the 90% memory threshold); the hot one changes every phase.
const SHIFT_MODELS: [&str; 4] = ["h1", "h2", "h3", "h4"];

/// The shifting workload: (offset from start, model index), open loop. A warm-up phase asks
/// every model a little; then each phase sends `hot_rate` requests/s for one model and
/// `cold_rate` for each of the others, the hot model changing every phase.
fn shifting_workload(phase: Duration, phases: usize, hot_rate: f64, cold_rate: f64) -> Vec<(Duration, usize)> {
    let mut rng = Rng(0x5eed_0000_0024_0001);
    let mut out = Vec::new();
    let warmup = Duration::from_secs(2);
    for m in 0..SHIFT_MODELS.len() {
        out.push((Duration::from_millis(m as u64 * 300), m));
    }
    for p in 0..phases {
        let hot = p % SHIFT_MODELS.len();
        let start = warmup + phase * p as u32;
        for (m, _) in SHIFT_MODELS.iter().enumerate() {
            let rate = if m == hot { hot_rate } else { cold_rate };
            // Poisson arrivals: exponential gaps.
            let mut t = 0.0;
            loop {
                t += -(1.0 - rng.next()).ln() / rate;
                if t >= phase.as_secs_f64() {
                    break;
                }
                out.push((start + Duration::from_secs_f64(t), m));
            }
        }
    }
    out.sort_by_key(|w| w.0);
    out
}

/// Popularity that shifts: warm_first alone against warm_first with replicas that follow
/// demand. Time to first token (streamed), cold loads, failed loads.
async fn shifting(smoke: bool) {
    let (phase, phases, hot, cold) =
        if smoke { (Duration::from_secs(2), 2, 30.0, 1.0) } else { (Duration::from_secs(6), 8, 45.0, 2.0) };
    let work = shifting_workload(phase, phases, hot, cold);
    println!(
        "\nShifting popularity: 3 servers x 24 GB, four 6 GB models (load 100 ms/GB: 0.6 s), 10 ms/token, 16 tokens, \
         OLLAMA_NUM_PARALLEL 4, max_concurrency 8, resource probes on; {phases} phases of {} s, each with one model hot \
         ({hot}/s) and the others at {cold}/s each, Poisson arrivals; {} requests, streamed.\n",
        phase.as_secs(),
        work.len()
    );
    println!("| scheduling | requests | failed | cold loads | failed loads | replicas placed / let go | TTFT p50 ms | TTFT p95 ms | TTFT p99 ms | p95 vs warm_first | cold loads vs warm_first |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut reference: Option<(Duration, usize)> = None;
    for (name, replicas) in [
        ("warm_first", ""),
        (
            "warm_first + replicas (1 to 3)",
            ", replicas: { enabled: true, scale_up_wait: 100ms, scale_up_for: 100ms, scale_down_idle: 4s, min_replicas: 1, max_replicas: 3 }",
        ),
        (
            "warm_first + replicas (2 to 3)",
            ", replicas: { enabled: true, scale_up_wait: 100ms, scale_up_for: 100ms, scale_down_idle: 4s, min_replicas: 2, max_replicas: 3 }",
        ),
    ] {
        let mut sims = Vec::new();
        for i in 0..3 {
            sims.push(
                SimServer::start(SimConfig {
                    token_delay: Duration::from_millis(10),
                    ..SimConfig::new(
                        &format!("s{i}"),
                        24 * GB,
                        SHIFT_MODELS.iter().map(|m| (format!("{m}:1b"), 6 * GB)).collect(),
                    )
                })
                .await,
            );
        }
        let mut routes = String::from("routes:\n");
        for m in SHIFT_MODELS {
            for s in &sims {
                routes.push_str(&format!(
                    "  - {{ virtual_model_name: {m}, server_url: \"{0}\", probe_url: \"{0}\", actual_model_name: \"{m}:1b\", performance: 6 }}\n",
                    s.url
                ));
            }
        }
        let d = Drover::start(&format!(
            "load_balancer: {{ strategy: warm_first, max_concurrency: 8, health_check_interval: 500ms, queue_timeout: 60s{replicas} }}\n\
             http_client: {{ read_timeout: 60s }}\n{routes}"
        ))
        .await;
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
                    let body = json!({ "model": SHIFT_MODELS[model], "stream": true, "options": { "num_predict": TOKENS },
                                       "messages": [{ "role": "user", "content": "hi" }] });
                    let sent = Instant::now();
                    let mut r = match client.post(url).json(&body).send().await {
                        Ok(r) if r.status().is_success() => r,
                        _ => return None,
                    };
                    let first = r.chunk().await.ok().flatten()?;
                    let ttft = sent.elapsed();
                    let mut body = first.to_vec();
                    while let Ok(Some(c)) = r.chunk().await {
                        body.extend_from_slice(&c);
                    }
                    body.windows(11).any(|w| w == b"\"done\":true").then_some(ttft)
                })
            })
            .collect();
        // DEMAND_TRACE=1: every 500 ms, the copies of each model and the hot model's median TTFT.
        let trace = std::env::var_os("DEMAND_TRACE").is_some();
        let copies_seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sampler = trace.then(|| {
            let seen = copies_seen.clone();
            let loaded: Vec<_> = sims.iter().map(|s| s.loaded_handle()).collect();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let copies: Vec<usize> = SHIFT_MODELS
                        .iter()
                        .map(|m| loaded.iter().filter(|l| l().iter().any(|n| n.starts_with(m))).count())
                        .collect();
                    seen.lock().unwrap().push((started.elapsed(), copies));
                }
            })
        });
        let mut ttft = Vec::new();
        let mut timeline: Vec<(Duration, usize, Duration)> = Vec::new();
        let mut failed = 0;
        for (t, &(at, model)) in tasks.into_iter().zip(&work) {
            match t.await.unwrap() {
                Some(d) => {
                    ttft.push(d);
                    timeline.push((at, model, d));
                }
                None => failed += 1,
            }
        }
        if let Some(s) = sampler {
            s.abort();
            for (when, copies) in copies_seen.lock().unwrap().iter() {
                let hot = (when.saturating_sub(Duration::from_secs(2)).as_secs_f64() / phase.as_secs_f64()) as usize
                    % SHIFT_MODELS.len();
                let mut hot_ttft: Vec<Duration> = timeline
                    .iter()
                    .filter(|(at, m, _)| *m == hot && *at <= *when && *at + Duration::from_millis(500) > *when)
                    .map(|(_, _, d)| *d)
                    .collect();
                hot_ttft.sort();
                let median = hot_ttft.get(hot_ttft.len() / 2).map_or(0, |d| d.as_millis());
                eprintln!("{name} t={:.1}s hot={} copies={copies:?} hot p50={median}ms", when.as_secs_f64(), SHIFT_MODELS[hot]);
            }
        }
        ttft.sort();
        let pct = |p: f64| ttft.get(((ttft.len() as f64 * p) as usize).min(ttft.len().saturating_sub(1))).copied().unwrap_or_default();
        let sum = |f: fn(&support::sim::SimStats) -> usize| sims.iter().map(|s| f(s.stats())).sum::<usize>();
        let cold_loads = sum(|s| s.cold_loads.load(std::sync::atomic::Ordering::SeqCst));
        let failed_loads = sum(|s| s.failed_loads.load(std::sync::atomic::Ordering::SeqCst));
        let placed = sum(|s| s.preloads.load(std::sync::atomic::Ordering::SeqCst));
        let let_go = sum(|s| s.unloads.load(std::sync::atomic::Ordering::SeqCst));
        let p95 = pct(0.95);
        let base = *reference.get_or_insert((p95, cold_loads));
        println!(
            "| {name} | {} | {failed} | {cold_loads} | {failed_loads} | {placed} / {let_go} | {} | {} | {} | {:.2}x lower | {:.2}x |",
            work.len(),
            pct(0.5).as_millis(),
            p95.as_millis(),
            pct(0.99).as_millis(),
            base.0.as_secs_f64() / p95.as_secs_f64().max(1e-9),
            cold_loads as f64 / base.1.max(1) as f64,
        );
    }
}

/// Two drovers sharing one fleet of two vLLM-like servers: the first sends a steady
/// backlog to server A only; the second splits its own traffic between A and B. Without
/// reported load the second drover cannot see A's queue; with it, it stops sending there.
async fn two_drovers(smoke: bool) {
    let (seconds, busy_clients, rate) = if smoke { (2, 12, 10.0) } else { (10, 12, 15.0) };
    println!(
        "\nTwo drovers, one fleet: 2 openai-kind servers (4 parallel slots each, 10 ms/token, 16 tokens), drover 1 \
         keeps {busy_clients} requests at once on server A (closed loop); drover 2 routes to A and B, weighted 1:1, \
         {rate} requests/s of its own for {seconds} s (open loop). Drover 2's latency and where it sent its requests.\n"
    );
    println!("| servers report their load | drover 2 requests | sent to A | p50 ms | p95 ms | p95 vs not reported |");
    println!("|---|---|---|---|---|---|");
    let mut reference = None;
    for report in [false, true] {
        let mut sims = Vec::new();
        for name in ["a", "b"] {
            sims.push(
                SimServer::start(SimConfig {
                    token_delay: Duration::from_millis(10),
                    report_load: report,
                    ..SimConfig::new(name, 24 * GB, vec![("m:1b".into(), 4 * GB)])
                })
                .await,
            );
        }
        let server = |s: &SimServer| format!("  - {{ url: \"{}\", kind: openai }}\n", s.url);
        let route = |s: &SimServer| {
            format!("  - {{ virtual_model_name: m, server_url: \"{}\", actual_model_name: \"m:1b\" }}\n", s.url)
        };
        let lb = "load_balancer: { max_concurrency: 16, health_check_interval: 200ms, queue_timeout: 60s }\n";
        let first = Drover::start(&format!("{lb}servers:\n{}routes:\n{}", server(&sims[0]), route(&sims[0]))).await;
        let second = Drover::start(&format!(
            "{lb}servers:\n{}{}routes:\n{}{}",
            server(&sims[0]),
            server(&sims[1]),
            route(&sims[0]),
            route(&sims[1])
        ))
        .await;
        let client =
            reqwest::Client::builder().timeout(Duration::from_secs(60)).pool_max_idle_per_host(64).build().unwrap();
        let body = json!({ "model": "m", "max_tokens": TOKENS, "messages": [{ "role": "user", "content": "hi" }] });
        let stop = Instant::now() + Duration::from_secs(seconds + 2);
        let backlog: Vec<_> = (0..busy_clients)
            .map(|_| {
                let (client, url, body) = (client.clone(), format!("{}/v1/chat/completions", first.url), body.clone());
                tokio::spawn(async move {
                    while Instant::now() < stop {
                        let _ = client.post(&url).json(&body).send().await.map(|r| r.bytes());
                    }
                })
            })
            .collect();
        // Let the backlog build and a health pass or two read it.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let started = Instant::now();
        let n = (seconds as f64 * rate) as usize;
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let (client, url, body) = (client.clone(), format!("{}/v1/chat/completions", second.url), body.clone());
                let at = Duration::from_secs_f64(i as f64 / rate);
                tokio::spawn(async move {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(started + at)).await;
                    let sent = Instant::now();
                    let r = client.post(&url).json(&body).send().await.ok()?;
                    let server = r.headers().get("x-drover-server")?.to_str().ok()?.to_string();
                    r.status().is_success().then_some(())?;
                    r.bytes().await.ok()?;
                    Some((server, sent.elapsed()))
                })
            })
            .collect();
        let mut latencies = Vec::new();
        let mut to_a = 0;
        for t in tasks {
            if let Some((server, took)) = t.await.unwrap() {
                to_a += usize::from(server == sims[0].url);
                latencies.push(took);
            }
        }
        for t in backlog {
            t.await.unwrap();
        }
        latencies.sort();
        let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
        let p95 = pct(0.95);
        let base = *reference.get_or_insert(p95);
        println!(
            "| {} | {} | {to_a} | {} | {} | {:.2}x lower |",
            if report { "yes (vLLM /metrics)" } else { "no" },
            latencies.len(),
            pct(0.5).as_millis(),
            p95.as_millis(),
            base.as_secs_f64() / p95.as_secs_f64()
        );
    }
}
