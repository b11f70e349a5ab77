//! Operations: Prometheus metrics, the access log, graceful upgrade and stop, daemon mode.

mod support;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use support::mock_ollama::MockOllama;
use support::{chat, http, route_yaml, Drover, FAST};

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().unwrap().success();
    assert!(ok, "kill -{sig} {pid}");
}

fn alive(pid: u32) -> bool {
    Command::new("kill").args(["-0", &pid.to_string()]).stderr(Stdio::null()).status().unwrap().success()
}

/// Samples of a Prometheus text exposition: "name{labels}" -> value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Sum of the samples of `name` whose labels contain every `label="value"` given.
fn sum(s: &HashMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    s.iter()
        .filter(|(k, _)| k.split('{').next() == Some(name) && labels.iter().all(|l| k.contains(l)))
        .map(|(_, v)| v)
        .sum()
}

fn promtool_accepts(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/setup installs it)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn metrics_are_valid_and_count_what_was_sent() {
    let m = MockOllama::start("m", &["qwen3:14b"]).await;
    let d = Drover::start(&format!("{FAST}routes:\n{}", route_yaml("chat", &m.url, "qwen3:14b", 1, 1))).await;
    let c = http();
    let post = |path: &'static str, body: Value| {
        let c = c.clone();
        let url = format!("{}{path}", d.url);
        async move {
            let r = c.post(url).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
        }
    };
    // Ollama: 3 answers (5 prompt, 4 completion tokens each) and 2 streams (5 prompt, 3 completion).
    for _ in 0..3 {
        post("/api/chat", json!({ "model": "chat", "stream": false })).await;
    }
    for _ in 0..2 {
        post("/api/chat", json!({ "model": "chat" })).await;
    }
    // OpenAI: 1 answer (5 + 4) and 1 SSE stream with usage (5 + 3).
    post("/v1/chat/completions", json!({ "model": "chat" })).await;
    post(
        "/v1/chat/completions",
        json!({ "model": "chat", "stream": true, "stream_options": { "include_usage": true } }),
    )
    .await;
    let unknown = c.post(format!("{}/api/chat", d.url)).json(&json!({ "model": "nope" })).send().await.unwrap();
    assert_eq!(unknown.status(), 404);

    let main = c.get(format!("{}/metrics", d.url)).send().await.unwrap().text().await.unwrap();
    let service = c.get(format!("{}/metrics", d.metrics_url)).send().await.unwrap().text().await.unwrap();
    promtool_accepts(&main);
    promtool_accepts(&service);
    for text in [&main, &service] {
        let s = samples(text);
        let server = format!("server=\"{}\"", m.url);
        assert_eq!(
            sum(&s, "drover_requests_total", &["model=\"chat:latest\"", &server, "status=\"200\""]),
            7.0,
            "{text}"
        );
        assert_eq!(sum(&s, "drover_requests_total", &["model=\"(unknown)\"", "status=\"404\""]), 1.0);
        assert!(!text.contains("nope"), "a name the fleet does not know is no label");
        assert_eq!(sum(&s, "drover_tokens_total", &["model=\"chat:latest\"", "kind=\"prompt\""]), 35.0);
        assert_eq!(
            sum(&s, "drover_tokens_total", &["model=\"chat:latest\"", "kind=\"completion\""]),
            3.0 * 4.0 + 2.0 * 3.0 + 4.0 + 3.0
        );
        assert_eq!(sum(&s, "drover_request_duration_seconds_count", &["model=\"chat:latest\""]), 7.0);
        assert_eq!(sum(&s, "drover_time_to_first_byte_seconds_count", &["model=\"chat:latest\""]), 7.0);
        assert_eq!(
            sum(&s, "drover_model_load_seconds_count", &["model=\"chat:latest\""]),
            5.0,
            "Ollama answers carry load_duration"
        );
        assert_eq!(sum(&s, "drover_server_up", &[&server]), 1.0);
        assert_eq!(sum(&s, "drover_server_in_flight", &[&server]), 0.0);
    }

    // Every metric the shipped Grafana dashboard queries exists (those of the resource
    // check and the queue appear once a probe or a queue has been used).
    let dashboard =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/grafana-dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&dashboard).unwrap();
    let declared: Vec<&str> =
        main.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for name in expr.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|w| w.starts_with("drover_")) {
                let family = name.trim_end_matches("_bucket");
                // Labelled families appear with their first sample; these have none here.
                let optional = family.starts_with("drover_resource_") || family == "drover_upstream_retries_total";
                assert!(optional || declared.contains(&family), "dashboard queries {name}, not in /metrics");
                queried += 1;
            }
        }
    }
    assert!(queried >= 14);
}

#[tokio::test]
async fn retries_are_counted_by_reason() {
    let bad = MockOllama::start("bad", &["m:1b"]).await;
    let good = MockOllama::start("good", &["m:1b"]).await;
    bad.set_mode(support::mock_ollama::Mode::Busy);
    let d = Drover::start(&format!(
        "load_balancer: {{ health_check_interval: 60s }}\nroutes:\n{}{}",
        route_yaml("m", &bad.url, "m:1b", 100, 1),
        route_yaml("m", &good.url, "m:1b", 1, 1)
    ))
    .await;
    assert_eq!(chat(&d, "m").await.0, 200);
    let text = http().get(format!("{}/metrics", d.url)).send().await.unwrap().text().await.unwrap();
    assert_eq!(sum(&samples(&text), "drover_upstream_retries_total", &["reason=\"status_5xx\""]), 1.0, "{text}");
}

#[tokio::test]
async fn access_log_has_a_json_line_per_request_and_reopens_on_sigusr1() {
    let m = MockOllama::start("m", &["qwen3:14b"]).await;
    let d = Drover::start(&format!("{FAST}routes:\n{}", route_yaml("chat", &m.url, "qwen3:14b", 1, 1))).await;
    let c = http();
    for i in 0..3 {
        let r = c
            .post(format!("{}/api/chat", d.url))
            .header("x-request-id", format!("req-{i}"))
            .json(&json!({ "model": "chat", "stream": false }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-request-id"], format!("req-{i}").as_str(), "the id comes back");
        r.bytes().await.unwrap();
        assert_eq!(m.last_header("x-request-id").unwrap(), format!("req-{i}"), "and went upstream");
    }
    let path = d.dir.join("access.log");
    let read_lines = || -> Vec<Value> {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line is JSON"))
            .collect()
    };
    let mut lines = Vec::new();
    for _ in 0..40 {
        lines = read_lines();
        if lines.iter().filter(|l| l["request_id"].as_str().is_some_and(|r| r.starts_with("req-"))).count() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ours: Vec<&Value> =
        lines.iter().filter(|l| l["request_id"].as_str().is_some_and(|r| r.starts_with("req-"))).collect();
    assert_eq!(ours.len(), 3, "{lines:?}");
    let l = ours[0];
    assert_eq!(
        (l["method"].as_str(), l["path"].as_str(), l["status"].as_u64()),
        (Some("POST"), Some("/api/chat"), Some(200))
    );
    assert_eq!((l["model"].as_str(), l["actual_model"].as_str()), (Some("chat:latest"), Some("qwen3:14b")));
    assert_eq!(l["server"], m.url);
    assert_eq!(
        (l["attempts"].as_u64(), l["prompt_tokens"].as_u64(), l["completion_tokens"].as_u64()),
        (Some(1), Some(5), Some(4))
    );
    assert!(l["ttfb_ms"].as_f64().unwrap() <= l["duration_ms"].as_f64().unwrap());
    assert!(l["bytes_in"].as_u64().unwrap() > 0 && l["bytes_out"].as_u64().unwrap() > 0);
    assert!(l["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(l["time"].as_str().unwrap().ends_with('Z'));

    // logrotate: move the file away, signal, and the next line goes to a new file.
    std::fs::rename(&path, d.dir.join("access.log.1")).unwrap();
    signal(d.pid(), "USR1");
    tokio::time::sleep(Duration::from_millis(400)).await;
    c.get(format!("{}/api/version", d.url)).header("x-request-id", "after-rotate").send().await.unwrap();
    let mut found = false;
    for _ in 0..40 {
        found = read_lines().iter().any(|l| l["request_id"] == "after-rotate");
        if found {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(found, "a new access.log after SIGUSR1");
}

/// Sustained streaming and plain traffic while a new drover takes over the sockets.
#[tokio::test]
async fn graceful_upgrade_under_load_fails_nothing() {
    let m = MockOllama::start("m", &["m:1b"]).await;
    m.set_stream(8, Duration::from_millis(100));
    m.set_answer_delay(Duration::from_millis(20));
    let mut old =
        Drover::start(&format!("{FAST}  max_concurrency: 64\nroutes:\n{}", route_yaml("m", &m.url, "m:1b", 1, 1)))
            .await;
    let stop = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<Vec<(bool, bool, String)>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..6 {
        let (stop, results, url) = (stop.clone(), results.clone(), old.url.clone());
        workers.push(tokio::spawn(async move {
            // A new connection per request: a kept-alive idle connection closed by the old
            // process at the instant of a new request is a race of HTTP itself, not of drover.
            let c =
                reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(20)).build().unwrap();
            while !stop.load(Ordering::SeqCst) {
                let streaming = w % 2 == 0;
                let body = json!({ "model": "m", "stream": streaming });
                let (ok, complete, detail) = match c.post(format!("{url}/api/chat")).json(&body).send().await {
                    Err(e) => (false, false, e.to_string()),
                    Ok(r) if !r.status().is_success() => (false, false, r.status().to_string()),
                    Ok(r) => {
                        let mut text = Vec::new();
                        let mut stream = r.bytes_stream();
                        let mut broken = None;
                        while let Some(chunk) = stream.next().await {
                            match chunk {
                                Ok(b) => text.extend_from_slice(&b),
                                Err(e) => broken = Some(e.to_string()),
                            }
                        }
                        let text = String::from_utf8_lossy(&text).to_string();
                        let last: Value =
                            text.lines().last().and_then(|l| serde_json::from_str(l).ok()).unwrap_or(Value::Null);
                        let complete = broken.is_none() && last["done"] == true;
                        (true, complete, broken.unwrap_or(text))
                    }
                };
                results.lock().unwrap().push((ok, complete, detail));
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let started = Instant::now();
    let new = old.upgrade().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let results = std::mem::take(&mut *results.lock().unwrap());
    let failed: Vec<&(bool, bool, String)> = results.iter().filter(|(ok, complete, _)| !ok || !complete).collect();
    eprintln!(
        "graceful upgrade under load: {} requests ({} streams), {} failed; new process answered {:?} after the upgrade began",
        results.len(),
        results.len() / 2,
        failed.len(),
        started.elapsed()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(results.len() > 20);
    assert!(old.exits_within(Duration::from_secs(10)).await, "the old process exited after draining");
    assert_eq!(chat(&new, "m").await.0, 200, "the new process serves");
}

#[tokio::test]
async fn sigterm_lets_streams_in_flight_finish() {
    let m = MockOllama::start("m", &["m:1b"]).await;
    m.set_stream(10, Duration::from_millis(100));
    let mut d = Drover::start_with_grace(&format!("{FAST}routes:\n{}", route_yaml("m", &m.url, "m:1b", 1, 1)), 5).await;
    let streams: Vec<_> = (0..4)
        .map(|_| {
            let url = format!("{}/api/chat", d.url);
            tokio::spawn(async move {
                let r = http().post(url).json(&json!({ "model": "m" })).send().await.unwrap();
                String::from_utf8(r.bytes().await.unwrap().to_vec()).unwrap()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(d.pid(), "TERM");
    for s in streams {
        let text = s.await.unwrap();
        let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(last["done"], true, "stream complete: {text}");
        assert_eq!(text.lines().count(), 11);
    }
    assert!(d.exits_within(Duration::from_secs(10)).await, "exited after draining");
    assert!(http().get(format!("{}/status", d.url)).send().await.is_err(), "and no longer accepts");
}

/// An idle drover exits as soon as it is told to stop, with 0, whatever its grace period:
/// `docker stop` (10 s) and rolling updates no longer wait out the 30 s default.
#[tokio::test]
async fn sigterm_when_idle_exits_at_once_with_0() {
    let m = MockOllama::start("m", &["m:1b"]).await;
    let mut d =
        Drover::start_with_grace(&format!("{FAST}routes:\n{}", route_yaml("m", &m.url, "m:1b", 1, 1)), 20).await;
    // Served something first, and the client still holds its kept-alive connection.
    let client = http();
    let r = client.post(format!("{}/api/chat", d.url)).json(&json!({ "model": "m", "stream": false })).send().await;
    assert_eq!(r.unwrap().status(), 200);
    let t = Instant::now();
    signal(d.pid(), "TERM");
    let code = d.exit_code_within(Duration::from_secs(5)).await;
    let took = t.elapsed();
    assert_eq!(code, Some(0), "exited with 0: {}", d.log());
    assert!(took < Duration::from_secs(1), "idle, it exits within a second of SIGTERM: {took:?}");
    assert!(d.log().contains("stopped: nothing in flight"), "{}", d.log());
    // The access log was written out before the exit.
    let access = std::fs::read_to_string(d.dir.join("access.log")).unwrap();
    assert!(access.lines().any(|l| l.contains("/api/chat")), "{access}");
}

/// With requests in flight, drover exits when the last one ends: not before, and not at
/// the end of the grace period (20 s here).
#[tokio::test]
async fn sigterm_exits_when_the_last_stream_ends() {
    let m = MockOllama::start("m", &["m:1b"]).await;
    m.set_stream(15, Duration::from_millis(100));
    let mut d =
        Drover::start_with_grace(&format!("{FAST}routes:\n{}", route_yaml("m", &m.url, "m:1b", 1, 1)), 20).await;
    let url = format!("{}/api/chat", d.url);
    let stream = tokio::spawn(async move {
        let r = http().post(url).json(&json!({ "model": "m" })).send().await.unwrap();
        let text = String::from_utf8(r.bytes().await.unwrap().to_vec()).unwrap();
        (text, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(d.pid(), "TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!d.has_exited(), "a stream is in flight: drover waits for it");
    let (text, ended) = stream.await.unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["done"], true, "the stream completed: {text}");
    assert_eq!(d.exit_code_within(Duration::from_secs(5)).await, Some(0), "{}", d.log());
    let after = ended.elapsed();
    assert!(
        after < Duration::from_secs(2),
        "exited {after:?} after the last stream ended, not at the grace period's end"
    );
}

/// The old process of a graceful upgrade (SIGQUIT) exits once it has handed its sockets
/// over and its requests are done, not at the end of its grace period (20 s here).
#[tokio::test]
async fn the_old_process_of_an_upgrade_exits_once_drained() {
    let m = MockOllama::start("m", &["m:1b"]).await;
    let mut old =
        Drover::start_with_grace(&format!("{FAST}routes:\n{}", route_yaml("m", &m.url, "m:1b", 1, 1)), 20).await;
    let t = Instant::now();
    let new = old.upgrade().await;
    // Pingora keeps the old process's listeners 5 s after the handover before it stops them.
    assert_eq!(old.exit_code_within(Duration::from_secs(12)).await, Some(0), "{}", old.log());
    assert!(t.elapsed() < Duration::from_secs(12), "{:?}", t.elapsed());
    assert_eq!(chat(&new, "m").await.0, 200, "the new process serves");
}

/// A kept-alive connection waiting for its next request is closed as soon as drover stops,
/// not kept open through the grace period (20 s here) for a request that may never come.
#[tokio::test]
async fn sigterm_closes_idle_kept_alive_connections_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = Drover::start_with_grace(FAST, 20).await;
    let mut idle = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    idle.write_all(b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    signal(d.pid(), "TERM");
    let read = tokio::time::timeout(Duration::from_secs(3), idle.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed at once, without another answer: {read:?}");
}

/// A connection accepted just before drover stops, whose request is still on its way, is
/// answered (and then closed), not dropped with the idle ones: under load that was a client's
/// fresh connection failing in the middle of a graceful upgrade.
#[tokio::test]
async fn a_connection_opened_just_before_sigterm_gets_its_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut d = Drover::start_with_grace(FAST, 2).await;
    let mut fresh = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    // Let drover accept it and start waiting for the request, then stop drover.
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(d.pid(), "TERM");
    tokio::time::sleep(Duration::from_millis(400)).await;
    fresh.write_all(b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), fresh.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(matches!(read, Ok(Ok(_))), "{read:?}");
    assert!(answer.starts_with("http/1.1 200"), "answered: {answer:?}");
    assert!(answer.contains("connection: close"), "and closed after it: {answer:?}");
    assert!(answer.contains("\"version\""), "{answer:?}");
    assert!(d.exits_within(Duration::from_secs(10)).await, "exited after draining");
}

#[tokio::test]
async fn a_bad_config_at_upgrade_leaves_the_old_process_serving() {
    let m = MockOllama::start("m", &["m:1b"]).await;
    let d = Drover::start(&format!("{FAST}routes:\n{}", route_yaml("m", &m.url, "m:1b", 1, 1))).await;
    let bad = d.dir.join("bad.yaml");
    std::fs::write(&bad, "load_balancer: { cooldown: never }\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_drover")).args(["serve", "-u", "-c"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("load_balancer.cooldown"));
    assert_eq!(chat(&d, "m").await.0, 200);
}

#[tokio::test]
async fn daemon_mode_writes_its_pid_file() {
    let m = MockOllama::start("m", &["m:1b"]).await;
    let d = Drover::start(&format!("{FAST}routes:\n{}", route_yaml("m", &m.url, "m:1b", 1, 1))).await;
    // A second config like the first, on other ports, run as a daemon.
    let config = std::fs::read_to_string(d.dir.join("drover.yaml")).unwrap();
    let port = support::free_port();
    let daemon_dir = support::scratch_dir("daemon");
    let config = config
        .replace(&format!("127.0.0.1:{}", d.addr.port()), &format!("127.0.0.1:{port}"))
        .replace(&d.metrics_url.replace("http://", ""), &format!("127.0.0.1:{}", support::free_port()))
        .replace(&d.dir.display().to_string(), &daemon_dir.display().to_string());
    let path = daemon_dir.join("drover.yaml");
    std::fs::write(&path, config).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["serve", "-d", "-c"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "the launching process returns");
    let pid_file = daemon_dir.join("drover.pid");
    let mut pid = None;
    for _ in 0..100 {
        if let Some(p) = std::fs::read_to_string(&pid_file).ok().and_then(|t| t.trim().parse::<u32>().ok()) {
            pid = Some(p);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = pid.expect("pid file written");
    assert!(alive(pid));
    let mut served = false;
    for _ in 0..100 {
        if let Ok(r) = http().get(format!("http://127.0.0.1:{port}/status")).send().await {
            served = r.status() == 200;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(pid, "INT");
    assert!(served, "the daemon serves");
    let _ = std::fs::remove_dir_all(daemon_dir);
}

/// A stream still open when the grace period ends is ended with an error line in its API's
/// format (the client reads why), not cut mid-chunk when Pingora drops what is left.
#[tokio::test]
async fn a_stream_that_outlives_the_grace_period_ends_with_an_error_line() {
    let m = MockOllama::start("m", &["m:1b"]).await;
    m.set_stream(60, Duration::from_millis(100));
    let mut d = Drover::start_with_grace(&format!("{FAST}routes:\n{}", route_yaml("m", &m.url, "m:1b", 1, 1)), 2).await;
    let url = format!("{}/api/chat", d.url);
    let stream = tokio::spawn(async move {
        let r = http().post(url).json(&json!({ "model": "m" })).send().await.unwrap();
        let mut body = r.bytes_stream();
        let mut text = String::new();
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.expect("the body ends cleanly, not cut")));
        }
        text
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    signal(d.pid(), "TERM");
    let text = stream.await.unwrap();
    let ended = t.elapsed();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert!(last["error"].as_str().unwrap().contains("stopping"), "an error line ends it: {text}");
    assert!(text.lines().count() > 5, "after the chunks it had: {text}");
    assert!(ended < Duration::from_secs(2), "within the grace period (2 s): {ended:?}");
    assert_eq!(d.exit_code_within(Duration::from_secs(5)).await, Some(0), "{}", d.log());
}
