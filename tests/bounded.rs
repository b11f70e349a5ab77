//! Untrusted input never becomes unbounded state: 100,000 requests, each carrying values no
//! client sent before in every place drover keys state by, grow drover's memory no faster
//! than the same requests without new values, and /metrics not at all. A test binary of its
//! own, so that no other test's load runs beside the measurement.

mod support;

use support::mock_ollama::MockOllama;
use support::{http, route_yaml, Drover, FAST};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `n` requests built by `request(i)` (a raw HTTP/1.1 request, `Connection: close`
/// left out: the connections are kept), `width` at a time, each from a loopback address of
/// its own when `addresses`; returns how many were answered with each status class.
async fn flood(d: &Drover, n: usize, start: usize, addresses: bool, request: fn(usize) -> Vec<u8>) -> [usize; 6] {
    use futures_like::run_width;
    let counts = std::sync::Arc::new(std::sync::Mutex::new([0usize; 6]));
    let addr = d.addr;
    let all = counts.clone();
    run_width(
        16,
        (start..start + n).map(move |i| {
            let counts = all.clone();
            async move {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                if addresses {
                    // 127.0.0.0/8 is all loopback: a client address of its own per request.
                    let ip = std::net::Ipv4Addr::new(127, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8);
                    socket.bind(std::net::SocketAddr::new(ip.into(), 0)).unwrap();
                }
                let mut s = socket.connect(addr).await.unwrap();
                s.write_all(&request(i)).await.unwrap();
                let mut head = [0u8; 16];
                let _ = s.read_exact(&mut head).await;
                let class = (head[9].wrapping_sub(b'0') as usize).min(5);
                counts.lock().unwrap()[class] += 1;
            }
        }),
    )
    .await;
    let c = *counts.lock().unwrap();
    c
}

mod futures_like {
    /// Runs the futures `width` at a time (tokio tasks), to the end.
    pub async fn run_width<F>(width: usize, futures: impl Iterator<Item = F>)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut running = tokio::task::JoinSet::new();
        for f in futures {
            if running.len() >= width {
                running.join_next().await.unwrap().unwrap();
            }
            running.spawn(f);
        }
        while let Some(r) = running.join_next().await {
            r.unwrap();
        }
    }
}

fn post(path: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{extra_headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Requests each carrying a value no one has sent before, in every place drover keys state by:
/// a model name (metric labels, queues), a deterministic prompt (the response cache), a
/// session id, an API key, a client address (the per-address limiter).
fn hostile(i: usize) -> Vec<u8> {
    match i % 5 {
        0 => post("/api/chat", "", &format!(r#"{{"model":"no-such-model-{i}-{}","messages":[]}}"#, "x".repeat(150))),
        1 => post(
            "/api/generate",
            "",
            &format!(r#"{{"model":"m-x","stream":false,"prompt":"question {i}","options":{{"temperature":0}}}}"#),
        ),
        2 => post(
            "/api/chat",
            &format!("X-Session-Id: session-{i}\r\n"),
            &format!(r#"{{"model":"unknown-{i}","messages":[{{"role":"user","content":"hi"}}]}}"#),
        ),
        3 => post(
            &format!("/v1/chat/completions?q={i}"),
            &format!("X-Request-Id: forged-{i}\r\nAuthorization: Bearer drv_forged{i:08}\r\n"),
            &format!(r#"{{"model":"m-x","user":"user-{i}","messages":[]}}"#),
        ),
        _ => {
            post("/v1/chat/completions", "", &format!(r#"{{"model":"{}","messages":[]}}"#, "long".repeat(200 + i % 7)))
        }
    }
}

/// The same requests with nothing new in them: the values of the first five, again and again.
fn ordinary(i: usize) -> Vec<u8> {
    hostile(i % 5)
}

#[tokio::test]
async fn untrusted_input_never_becomes_unbounded_state() {
    let m = MockOllama::start("m", &["x:1b"]).await;
    let d = Drover::start(&format!(
        "{FAST}  max_concurrency: 64\nmemory: {{ enabled: true }}\ncache: {{ enabled: true, max_bytes: 1048576, max_entry_bytes: 65536 }}\n\
         limits:\n  client_requests_per_minute: 1000000\n  max_tracked_clients: 1024\nroutes:\n{}",
        route_yaml("m-x", &m.url, "x:1b", 1, 1)
    ))
    .await;
    let metrics = || async { http().get(format!("{}/metrics", d.url)).send().await.unwrap().text().await.unwrap() };
    // Warm up: every path has run, every bounded table (the per-address limiter's 1,024, the
    // cache's 1 MiB) is full, every pool and arena has found its size.
    let warm = flood(&d, 40_000, 0, true, hostile).await;
    assert!(warm[2] > 0 && warm[4] > 0, "answers and refusals both: {warm:?}");
    let metrics_warm = metrics().await.len();
    // Then, by turns, requests whose every value is new (from addresses never seen) and the
    // same requests with nothing new: what the hostile values add is the difference.
    let (mut grown_hostile, mut grown_ordinary) = (0i64, 0i64);
    let mut next = 40_000;
    // RSS read once the access log's writer has caught up.
    let settled_rss = || async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        d.rss() as i64
    };
    for _ in 0..3 {
        let before = settled_rss().await;
        flood(&d, 10_000, 0, false, ordinary).await;
        let between = settled_rss().await;
        let answered = flood(&d, 20_000, next, true, hostile).await;
        assert_eq!(answered.iter().sum::<usize>(), 20_000, "{answered:?}");
        next += 20_000;
        grown_ordinary += between - before;
        grown_hostile += settled_rss().await - between;
    }
    let metrics_end = metrics().await.len();
    let (hostile_slope, ordinary_slope) = (grown_hostile as f64 / 60_000.0, grown_ordinary as f64 / 30_000.0);
    eprintln!(
        "100,000 requests of hostile values: RSS {hostile_slope:.1} bytes a request beyond warm-up, \
         against {ordinary_slope:.1} for the same requests without new values; /metrics {metrics_warm} -> {metrics_end} bytes"
    );
    // A label kept per value is kilobytes (a histogram's buckets in several families), a cache
    // entry or a session hundreds of bytes: the margin is for the allocator's noise.
    assert!(
        hostile_slope < ordinary_slope.max(0.0) + 64.0,
        "hostile values grow memory {hostile_slope:.1} bytes a request, ordinary ones {ordinary_slope:.1}"
    );
    assert!(metrics_end < metrics_warm + 4096, "/metrics grew from {metrics_warm} to {metrics_end} bytes");
    let text = metrics().await;
    assert!(!text.contains("no-such-model") && !text.contains("unknown-"), "a hostile name became a label");
}
