//! Chaos: under steady load, one part after another fails or changes: a server killed and
//! restarted, the database stopped and restarted, a probe gone silent, a graceful upgrade,
//! and the access log reopened (SIGUSR1). Whole answers must never fail (drover retries
//! them before any byte is sent), nor may streams: one whose server is killed under it is
//! continued on the other server. At the end, drover's counters in /metrics add up to what
//! the clients received.

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::mock_ollama::MockOllama;
use support::{database_urls, free_port, fresh_database, http, Drover, TcpRelay};

/// When the load began: failures are reported against it, beside the steps' own times.
static START: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

/// What the clients saw.
#[derive(Default, Debug)]
struct Seen {
    whole_ok: usize,
    whole_failed: Vec<String>,
    streams_ok: usize,
    /// Streams that ended with an error line, with when.
    streams_broken: Vec<Instant>,
    /// Streams that ended without their final object and without an error: never allowed.
    /// Each with its status, what arrived, and how long after the load began.
    streams_cut_silently: Vec<String>,
    /// Tokens the answers reported (prompt + completion).
    tokens: u64,
}

async fn one_request(url: &str, stream: bool, seen: &Mutex<Seen>) {
    let body = json!({ "model": "chat", "stream": stream, "messages": [{ "role": "user", "content": "hi" }] });
    let r = http().post(format!("{url}/api/chat")).json(&body).send().await;
    let (status, text) = match r {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    };
    let mut s = seen.lock().unwrap();
    if !stream {
        match serde_json::from_str::<Value>(&text) {
            Ok(v) if status == 200 && v["done"] == true => {
                s.whole_ok += 1;
                s.tokens += v["prompt_eval_count"].as_u64().unwrap_or(0) + v["eval_count"].as_u64().unwrap_or(0);
            }
            _ => s.whole_failed.push(format!("{status}: {text}")),
        }
        return;
    }
    let last: Option<Value> = text.lines().last().and_then(|l| serde_json::from_str(l).ok());
    match last {
        Some(v) if status == 200 && v["done"] == true => {
            s.streams_ok += 1;
            s.tokens += v["prompt_eval_count"].as_u64().unwrap_or(0) + v["eval_count"].as_u64().unwrap_or(0);
        }
        Some(v) if v.get("error").is_some() => s.streams_broken.push(Instant::now()),
        _ if status >= 500 => s.whole_failed.push(format!("stream refused {status}: {text}")),
        _ => s.streams_cut_silently.push(format!("{status} at {:?}: {text:?}", START.elapsed())),
    }
}

fn load(url: &str, seen: &Arc<Mutex<Seen>>, stop: &Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4)
        .map(|i| {
            let (url, seen, stop) = (url.to_string(), seen.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    one_request(&url, (n + i).is_multiple_of(3), &seen).await;
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect()
}

/// The sum of a counter's series in Prometheus text.
fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn metrics(d: &Drover) -> String {
    http().get(format!("{}/metrics", d.url)).send().await.unwrap().text().await.unwrap()
}

struct Probe(Child);

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn steady_load_survives_failures_and_changes() {
    // The store: PostgreSQL behind a relay that can cut it off (SQLite when no PostgreSQL is
    // configured outside CI: the database step is then skipped).
    let pg = database_urls().into_iter().find(|(k, _)| *k == "postgres");
    let (db_url, db_relay) = match &pg {
        Some((kind, base)) => {
            let (relay, through) = TcpRelay::in_front_of(&fresh_database(kind, base).await).await;
            (through, Some(relay))
        }
        None => (String::new(), None),
    };
    // A real probe agent, behind a relay that can silence it.
    let probe_port = free_port();
    let _probe = Probe(
        Command::new(env!("CARGO_BIN_EXE_drover"))
            .args(["probe", "--listen", &format!("127.0.0.1:{probe_port}"), "--device", "cpu"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let probe_relay = TcpRelay::start(format!("127.0.0.1:{probe_port}").parse().unwrap()).await;
    let a = MockOllama::start("a", &["llama3:latest"]).await;
    let b = MockOllama::start("b", &["llama3:latest"]).await;
    for m in [&a, &b] {
        m.set_stream(4, Duration::from_millis(20));
    }
    let route = |m: &MockOllama| {
        format!(
            "  - {{ virtual_model_name: chat, server_url: \"{}\", actual_model_name: \"llama3:latest\", \
             probe_url: \"http://127.0.0.1:{}\", performance: 0.001 }}\n",
            m.url, probe_relay.port
        )
    };
    let yaml = format!(
        "load_balancer:\n  health_check_interval: 200ms\n  health_check_timeout: 500ms\n  rise: 1\n  fall: 1\n  \
         cooldown: 1s\n  max_fails: 1\n  db_check_interval: 200ms\nresources:\n  cache_ttl_min: 100ms\n  cache_ttl_max: 200ms\n\
         routes:\n{}{}",
        route(&a),
        route(&b)
    );
    let d =
        if db_url.is_empty() { Drover::start(&yaml).await } else { Drover::start_with_db(&yaml, Some(&db_url)).await };
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let step = |what: &str| eprintln!("chaos: {what} at {:?}", START.elapsed());
    step("load begins");
    let workers = load(&d.url, &seen, &stop);
    tokio::time::sleep(Duration::from_millis(700)).await;

    // 1. A server killed, then back.
    step("server killed");
    b.stop();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    b.restart().await;
    step("server back");
    let restarted = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // 2. The database stopped, then back.
    if let Some(relay) = &db_relay {
        step("database cut off");
        relay.stop();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        relay.restart().await;
        step("database back");
        tokio::time::sleep(Duration::from_millis(800)).await;
    }

    // 3. The probe goes silent (resources.fail_open: requests go on), then answers again.
    step("probe silent");
    probe_relay.stop();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    probe_relay.restart().await;
    step("probe back");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 4. A graceful upgrade under load.
    let mut old = d;
    step("upgrade begins");
    let d = old.upgrade().await;
    step("new process ready");
    assert!(old.exits_within(Duration::from_secs(10)).await, "the old process drained and exited");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // From here everything goes to the new process: its counters must match what clients got.
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let before = std::mem::take(&mut *seen.lock().unwrap());
    let m0 = metrics(&d).await;
    stop.store(false, Ordering::SeqCst);
    let workers = load(&d.url, &seen, &stop);

    // 5. The access log moved away and reopened with SIGUSR1.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = d.dir.join("access.log");
    let moved = d.dir.join("access.log.1");
    std::fs::rename(&log, &moved).unwrap();
    step("access log reopened");
    assert!(Command::new("kill").args(["-USR1", &d.pid().to_string()]).status().unwrap().success());
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let after = std::mem::take(&mut *seen.lock().unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m1 = metrics(&d).await;

    // Nothing failed: not a whole answer, not a stream (those on the killed server went on
    // elsewhere).
    for s in [&before, &after] {
        assert!(s.whole_failed.is_empty(), "{:?}", s.whole_failed);
        assert!(s.streams_cut_silently.is_empty(), "{s:?}");
        assert!(s.streams_broken.is_empty(), "{s:?}");
    }
    assert!(before.whole_ok > 100 && before.streams_ok > 30, "{before:?}");
    eprintln!(
        "chaos: {} whole answers, {} streams, 0 broken (killed at {:?}, back at {:?}), 0 other failures",
        before.whole_ok + after.whole_ok,
        before.streams_ok + after.streams_ok,
        killed.duration_since(*START),
        restarted.duration_since(*START),
    );

    // The counters add up: requests answered and tokens reported since the snapshot.
    let answered = (after.whole_ok + after.streams_ok) as u64;
    assert!(answered > 20, "{after:?}");
    let requests = metric_sum(&m1, "drover_requests_total") - metric_sum(&m0, "drover_requests_total");
    assert_eq!(requests, answered, "drover_requests_total against what the clients received");
    let tokens = metric_sum(&m1, "drover_tokens_total") - metric_sum(&m0, "drover_tokens_total");
    assert_eq!(tokens, after.tokens, "drover_tokens_total against the answers' token counts");
    // The reopened log got the lines written after SIGUSR1; the moved one keeps the rest.
    let new_lines = std::fs::read_to_string(&log).unwrap_or_default().lines().count();
    let old_lines = std::fs::read_to_string(&moved).unwrap().lines().count();
    assert!(new_lines > 5 && old_lines > 100, "new {new_lines}, moved {old_lines}");
}
