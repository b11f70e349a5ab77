//! The load benchmark's generator for what wrk does not measure: latency at a fixed request
//! rate (open loop), stream timing (time to first byte, and how long each streamed line took
//! from the backend), and many streams held open at once. Used by benches/load.sh; loopback
//! targets only.
//!
//! loadgen rate   URL BODY_FILE RPS SECONDS   -> "p50_ms p99_ms ok failed"
//! loadgen stream URL BODY_FILE COUNT [URL BODY_FILE]...
//!                                            -> per target, "ttfb_ms line_transit_ms..." (medians over
//!                                               COUNT streams, the targets taken in turn)
//! loadgen hold   URL BODY_FILE N SECONDS     -> opens N streams, holds them SECONDS, prints "open N"

use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

async fn rate(client: reqwest::Client, url: String, body: Vec<u8>, rps: u64, seconds: u64) {
    let gap = Duration::from_secs_f64(1.0 / rps as f64);
    let start = tokio::time::Instant::now();
    let n = rps * seconds;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            tokio::spawn(async move {
                tokio::time::sleep_until(start + gap * i as u32).await;
                let sent = Instant::now();
                let mut req = client.post(url).header("content-type", "application/json").body(body);
                // An API key, for drovers that require one (KEY in the environment).
                if let Ok(key) = std::env::var("KEY") {
                    req = req.bearer_auth(key);
                }
                let r = req.send().await;
                let ok = match r {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                (ok, sent.elapsed().as_secs_f64() * 1000.0)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut failed = 0;
    for t in tasks {
        match t.await.unwrap() {
            (true, ms) => lat.push(ms),
            _ => failed += 1,
        }
    }
    lat.sort_by(f64::total_cmp);
    println!("{:.3} {:.3} {} {}", percentile(&lat, 0.5), percentile(&lat, 0.99), lat.len(), failed);
}

/// One stream: time to the header (ms from sending), then for each NDJSON line its transit
/// time: when it was complete here minus the `created_at` the backend stamped on it when it
/// sent it (same machine, same clock). Through a proxy, the difference to direct is what the
/// proxy adds to each line, without the delay it added to the request.
async fn one_stream(client: &reqwest::Client, url: &str, body: &[u8]) -> Option<(f64, Vec<f64>)> {
    let sent = Instant::now();
    let r = client.post(url).header("content-type", "application/json").body(body.to_vec()).send().await.ok()?;
    let ttfb = sent.elapsed().as_secs_f64() * 1000.0;
    let mut transit = Vec::new();
    let mut partial = Vec::new();
    let mut s = r.bytes_stream();
    while let Some(c) = s.next().await {
        let now = SystemTime::now();
        partial.extend_from_slice(&c.ok()?);
        while let Some(nl) = memchr::memchr(b'\n', &partial) {
            let line: Vec<u8> = partial.drain(..=nl).collect();
            let made = created_at(&line)?;
            transit.push(now.duration_since(made).map_or(0.0, |d| d.as_secs_f64() * 1000.0));
        }
    }
    Some((ttfb, transit))
}

/// The `created_at` of an Ollama stream line.
fn created_at(line: &[u8]) -> Option<SystemTime> {
    const KEY: &[u8] = b"\"created_at\":\"";
    let at = memchr::memmem::find(line, KEY)? + KEY.len();
    let end = at + memchr::memchr(b'"', &line[at..])?;
    humantime::parse_rfc3339(std::str::from_utf8(&line[at..end]).ok()?).ok()
}

/// Streams from each target in turn, `count` rounds (interleaved, so that a slow spell of
/// the machine hits every target alike); one line per target, in the order given.
async fn stream(client: reqwest::Client, targets: Vec<(String, Vec<u8>)>, count: usize) {
    let mut ttfbs = vec![Vec::new(); targets.len()];
    let mut offsets: Vec<Vec<Vec<f64>>> = vec![Vec::new(); targets.len()];
    for _ in 0..count {
        for (k, (url, body)) in targets.iter().enumerate() {
            if let Some((ttfb, lines)) = one_stream(&client, url, body).await {
                ttfbs[k].push(ttfb);
                for (i, t) in lines.into_iter().enumerate() {
                    if offsets[k].len() <= i {
                        offsets[k].push(Vec::new());
                    }
                    offsets[k][i].push(t);
                }
            }
        }
    }
    for (ttfb, lines) in ttfbs.into_iter().zip(offsets) {
        let cols: Vec<String> = lines.into_iter().map(|v| format!("{:.3}", median(v))).collect();
        println!("{:.3} {}", median(ttfb), cols.join(" "));
    }
}

async fn hold(client: reqwest::Client, url: String, body: Vec<u8>, n: usize, seconds: u64) {
    let opened = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, url, body, opened) = (client.clone(), url.clone(), body.clone(), opened.clone());
            tokio::spawn(async move {
                let r = client.post(url).header("content-type", "application/json").body(body).send().await;
                if let Ok(r) = r {
                    if r.status().is_success() {
                        opened.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let mut s = r.bytes_stream();
                        let until = tokio::time::Instant::now() + Duration::from_secs(seconds);
                        while let Ok(Some(_)) = tokio::time::timeout_at(until, s.next()).await {}
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    println!("open {}", opened.load(std::sync::atomic::Ordering::SeqCst));
    for t in tasks {
        t.abort();
    }
}

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().collect();
    let usage = "usage: loadgen rate|stream|hold URL BODY_FILE ...";
    let (mode, url) = (a.get(1).expect(usage).as_str(), a.get(2).expect(usage).clone());
    assert!(url.starts_with("http://127.0.0.1:"), "loopback targets only");
    let body = std::fs::read(a.get(3).expect(usage)).expect("body file");
    let num = |i: usize| a.get(i).and_then(|v| v.parse::<u64>().ok()).expect(usage);
    let client =
        reqwest::Client::builder().pool_max_idle_per_host(4096).timeout(Duration::from_secs(600)).build().unwrap();
    match mode {
        "rate" => rate(client, url, body, num(4), num(5)).await,
        "stream" => {
            let mut targets = vec![(url, body)];
            for pair in a[5..].chunks(2) {
                assert!(pair.len() == 2 && pair[0].starts_with("http://127.0.0.1:"), "{usage}");
                targets.push((pair[0].clone(), std::fs::read(&pair[1]).expect("body file")));
            }
            stream(client, targets, num(4) as usize).await
        }
        "hold" => hold(client, url, body, num(4) as usize, num(5)).await,
        _ => panic!("{usage}"),
    }
}
