//! Servers found by DNS (`servers: [{ dns: "name:port" }]`), against a nameserver the test
//! runs, whose answers change: addresses that join become servers, addresses that leave
//! leave the fleet, and a stream in flight on a departing server finishes there.

mod support;

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::mock_ollama::MockOllama;
use support::{http, Drover, FAST};

/// A nameserver on loopback: A records for `name` as the test sets them, NXDOMAIN for
/// other names, no AAAA records.
struct Nameserver {
    addr: std::net::SocketAddr,
    answers: Arc<Mutex<Vec<Ipv4Addr>>>,
    asked: Arc<std::sync::atomic::AtomicUsize>,
}

impl Nameserver {
    async fn start(name: &'static str) -> Nameserver {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let answers: Arc<Mutex<Vec<Ipv4Addr>>> = Arc::default();
        let asked: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let (answers2, asked2) = (answers.clone(), asked.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                asked2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let q = &buf[..n];
                // The question: labels from byte 12 to the root label, then type and class.
                let mut at = 12;
                let mut labels = Vec::new();
                while q[at] != 0 {
                    let len = q[at] as usize;
                    labels.push(String::from_utf8_lossy(&q[at + 1..at + 1 + len]).to_lowercase());
                    at += 1 + len;
                }
                let qend = at + 5;
                let qtype = u16::from_be_bytes([q[at + 1], q[at + 2]]);
                let known = labels.join(".") == name;
                let records: Vec<Ipv4Addr> =
                    if known && qtype == 1 { answers2.lock().unwrap().clone() } else { Vec::new() };
                let mut m = q[..2].to_vec();
                m.extend_from_slice(&[0x81, if known { 0x80 } else { 0x83 }, 0, 1]);
                m.extend_from_slice(&(records.len() as u16).to_be_bytes());
                m.extend_from_slice(&[0, 0, 0, 0]);
                m.extend_from_slice(&q[12..qend]);
                for ip in records {
                    m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4]);
                    m.extend_from_slice(&ip.octets());
                }
                let _ = socket.send_to(&m, from).await;
            }
        });
        Nameserver { addr, answers, asked }
    }

    fn set(&self, ips: &[&str]) {
        *self.answers.lock().unwrap() = ips.iter().map(|i| i.parse().unwrap()).collect();
    }
}

async fn lb_servers(d: &Drover) -> Vec<String> {
    let stats: Value = http().get(format!("{}/lb-stats", d.url)).send().await.unwrap().json().await.unwrap();
    let mut urls: Vec<String> =
        stats["servers"].as_array().unwrap().iter().map(|s| s["url"].as_str().unwrap().to_string()).collect();
    urls.sort();
    urls
}

async fn fleet_becomes(d: &Drover, want: &[&str]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if lb_servers(d).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Which server answers a whole chat, waiting up to 10 s for one that can: a server that
/// just joined serves once its first health check has read its models.
async fn served_by(d: &Drover) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = http().post(format!("{}/api/chat", d.url)).json(&json!({ "model": "m:1b", "stream": false }));
        let r = r.send().await.unwrap();
        if r.status() == 200 {
            return support::header(&r, "x-drover-server");
        }
        assert!(Instant::now() < deadline, "no server answered within 10 s: {}", r.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn servers_follow_the_names_addresses() {
    let ns = Nameserver::start("ollama.ai.svc.cluster.local").await;
    // Two servers on the same port at two loopback addresses, as pods behind a headless Service.
    let a = MockOllama::start_at("127.0.0.2:0", "a", &["m:1b"]).await;
    let port = a.addr.port();
    let b = MockOllama::start_at(&format!("127.0.0.3:{port}"), "b", &["m:1b"]).await;
    let (url_a, url_b) = (format!("http://127.0.0.2:{port}"), format!("http://127.0.0.3:{port}"));
    ns.set(&["127.0.0.2"]);
    let yaml = format!(
        "{FAST}  dns_interval: 200ms\n  dns_resolver: \"{}\"\n\
         servers:\n  - {{ dns: \"ollama.ai.svc.cluster.local:{port}\", kind: ollama }}\n",
        ns.addr
    );
    let d = Drover::start(&yaml).await;
    assert_eq!(lb_servers(&d).await, [url_a.as_str()], "resolved before the first request");
    assert_eq!(served_by(&d).await, url_a);
    let tags: Value = http().get(format!("{}/api/tags", d.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(tags["models"][0]["name"], "m:1b", "discovery lists the server's models: {tags}");

    // A second address joins: a second server, which takes requests.
    ns.set(&["127.0.0.2", "127.0.0.3"]);
    assert!(fleet_becomes(&d, &[&url_a, &url_b]).await, "{:?}", lb_servers(&d).await);
    // Both take requests (the new one once its first health check has read its models).
    let mut seen = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 2 && Instant::now() < deadline {
        seen.insert(served_by(&d).await);
    }
    assert_eq!(seen.len(), 2, "both serve: {seen:?}");

    // The first leaves while a stream is on it: the stream finishes there, new requests go
    // to the one left.
    a.set_stream(12, Duration::from_millis(100));
    b.set_stream(12, Duration::from_millis(100));
    let mut on_a = None;
    for _ in 0..20 {
        let r = http().post(format!("{}/api/chat", d.url)).json(&json!({ "model": "m:1b" })).send().await.unwrap();
        if support::header(&r, "x-drover-server") == url_a {
            on_a = Some(tokio::spawn(async move { String::from_utf8(r.bytes().await.unwrap().to_vec()).unwrap() }));
            break;
        }
        drop(r);
    }
    let on_a = on_a.expect("a stream on the first server");
    ns.set(&["127.0.0.3"]);
    assert!(fleet_becomes(&d, &[&url_b]).await, "{:?}", lb_servers(&d).await);
    let text = on_a.await.unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["done"], true, "the stream in flight finished on its server: {text}");
    assert_eq!(text.lines().count(), 13);
    b.set_stream(0, Duration::ZERO);
    for _ in 0..5 {
        assert_eq!(served_by(&d).await, url_b);
    }

    // The name has no addresses left: no servers; one comes back: served again.
    ns.set(&[]);
    assert!(fleet_becomes(&d, &[]).await, "{:?}", lb_servers(&d).await);
    let r = http().post(format!("{}/api/chat", d.url)).json(&json!({ "model": "m:1b", "stream": false })).send().await;
    assert_ne!(r.unwrap().status(), 200, "nothing serves while the name has no addresses");
    ns.set(&["127.0.0.2"]);
    assert!(fleet_becomes(&d, &[&url_a]).await);
    assert_eq!(served_by(&d).await, url_a, "served again by the address that came back");
    assert!(ns.asked.load(std::sync::atomic::Ordering::SeqCst) > 10, "asked every dns_interval");
    assert!(d.log().contains("dns ollama.ai.svc.cluster.local"), "changes are logged: {}", d.log());
}

/// A name the system resolver knows (/etc/hosts: localhost) works without dns_resolver.
#[tokio::test]
async fn the_system_resolver_is_the_default() {
    let m = MockOllama::start("m", &["m:1b"]).await;
    let yaml = format!("{FAST}servers:\n  - {{ dns: \"localhost:{}\" }}\n", m.addr.port());
    let d = Drover::start(&yaml).await;
    let servers = lb_servers(&d).await;
    assert!(servers.contains(&format!("http://127.0.0.1:{}", m.addr.port())), "{servers:?}");
    assert_eq!(support::chat(&d, "m:1b").await.0, 200);
}
