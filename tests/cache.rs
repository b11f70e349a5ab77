//! The response cache through a real drover: deterministic requests answered again from the
//! cache, streamed and not; everything else, errors and broken streams never.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::mock_ollama::{MockOllama, Mode};
use support::{http, Drover, FAST};

/// The cache is off unless the configuration turns it on.
const CACHE: &str = "cache:\n  enabled: true\n";

async fn post(d: &Drover, path: &str, body: &Value, headers: &[(&str, &str)]) -> (u16, String, String, Vec<u8>) {
    let mut req = http().post(format!("{}{path}", d.url)).json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let cache = support::header(&r, "x-drover-cache");
    let ct = support::header(&r, "content-type");
    (status, cache, ct, r.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn deterministic_answers_come_back_from_the_cache() {
    let m = MockOllama::start("m", &["llama3:latest"]).await;
    m.set_stream(3, Duration::from_millis(5));
    let d =
        Drover::start(&format!("{FAST}{CACHE}routes:\n{}", support::route_yaml("chat", &m.url, "llama3:latest", 1, 1)))
            .await;
    let msgs = json!([{ "role": "user", "content": "what is 2+2?" }]);

    // Not streamed, temperature 0: the second answer is the first, and the server saw one.
    let body = json!({ "model": "chat", "stream": false, "messages": msgs, "options": { "temperature": 0 } });
    let first = post(&d, "/api/chat", &body, &[]).await;
    assert_eq!((first.0, first.1.as_str()), (200, "miss"));
    let seen = m.requests();
    let again = post(&d, "/api/chat", &body, &[]).await;
    assert_eq!((again.0, again.1.as_str()), (200, "hit"));
    assert_eq!(again.3, first.3, "the same bytes");
    assert_eq!(m.requests(), seen);
    // Another virtual name for the same model on the same server shares the entry; another
    // question does not.
    let other = json!({ "model": "chat", "stream": false, "messages": [{ "role": "user", "content": "3+3?" }],
                        "options": { "temperature": 0 } });
    assert_eq!(post(&d, "/api/chat", &other, &[]).await.1, "miss");

    // Streamed with a fixed seed (NDJSON): replayed as a stream, line by line.
    let stream = json!({ "model": "chat", "messages": msgs, "options": { "seed": 42 } });
    let first = post(&d, "/api/chat", &stream, &[]).await;
    assert_eq!(first.1, "miss");
    let again = post(&d, "/api/chat", &stream, &[]).await;
    assert_eq!((again.1.as_str(), again.2.as_str()), ("hit", "application/x-ndjson"));
    assert_eq!(again.3, first.3);
    let lines: Vec<Value> =
        String::from_utf8(again.3).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines.last().unwrap()["done"], true);

    // OpenAI SSE, temperature 0 at the top level.
    let sse = json!({ "model": "chat", "messages": msgs, "temperature": 0, "stream": true });
    let first = post(&d, "/v1/chat/completions", &sse, &[]).await;
    let again = post(&d, "/v1/chat/completions", &sse, &[]).await;
    assert_eq!((first.1.as_str(), again.1.as_str()), ("miss", "hit"));
    assert!(again.2.starts_with("text/event-stream"));
    assert!(String::from_utf8(again.3.clone()).unwrap().ends_with("data: [DONE]\n\n"));
    assert_eq!(again.3, first.3);

    // Cache-Control: no-cache asks the server again; sampling requests are never cached.
    let seen = m.requests();
    assert_eq!(post(&d, "/api/chat", &body, &[("cache-control", "no-cache")]).await.1, "miss");
    assert_eq!(m.requests(), seen + 1);
    let sampled = json!({ "model": "chat", "stream": false, "messages": msgs, "options": { "temperature": 0.7 } });
    for _ in 0..2 {
        assert_eq!(post(&d, "/api/chat", &sampled, &[]).await.1, "");
    }
    assert_eq!(m.requests(), seen + 3);

    // Errors and broken streams are not kept: the next identical request goes to the server.
    let fresh = json!({ "model": "chat", "stream": false, "messages": [{ "role": "user", "content": "4+4?" }],
                        "options": { "temperature": 0 } });
    m.set_mode(Mode::Error);
    assert_eq!(post(&d, "/api/chat", &fresh, &[]).await.0, 500);
    m.set_mode(Mode::Normal);
    assert_eq!(post(&d, "/api/chat", &fresh, &[]).await.1, "miss", "the 500 was not kept");
    let broken =
        json!({ "model": "chat", "messages": [{ "role": "user", "content": "5+5?" }], "options": { "seed": 1 } });
    m.set_mode(Mode::DropMidStream);
    let cut = post(&d, "/api/chat", &broken, &[]).await;
    assert!(String::from_utf8_lossy(&cut.3).contains("\"error\""), "the stream ended with an error line");
    m.set_mode(Mode::Normal);
    let whole = post(&d, "/api/chat", &broken, &[]).await;
    assert_eq!(whole.1, "miss", "the broken stream was not kept");
    assert_eq!(post(&d, "/api/chat", &broken, &[]).await.1, "hit");

    let metrics = http().get(format!("{}/metrics", d.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("drover_cache_requests_total{result=\"hit\"} 4"), "{metrics}");
}

#[tokio::test]
async fn a_cache_hit_takes_no_slot_and_no_queue_place() {
    // One slot on the only server, held by a request that never gets its answer: a hit is
    // answered anyway, where a miss waits in the queue and times out.
    let m = MockOllama::start("m", &["llama3:latest"]).await;
    let config = format!(
        "{FAST}  queue_timeout: 1s\n{CACHE}routes:\n{}",
        support::route_yaml_with("chat", &m.url, "llama3:latest", ", max_concurrency: 1")
    );
    let d = Drover::start(&config).await;
    let msgs = json!([{ "role": "user", "content": "what is 2+2?" }]);
    let body = json!({ "model": "chat", "stream": false, "messages": msgs, "options": { "temperature": 0 } });
    assert_eq!(post(&d, "/api/chat", &body, &[]).await.1, "miss");

    m.set_mode(Mode::Hang);
    let held = {
        let url = format!("{}/api/chat", d.url);
        let sampled = json!({ "model": "chat", "stream": false, "messages": msgs, "options": { "temperature": 0.7 } });
        tokio::spawn(async move { http().post(url).json(&sampled).send().await.map(|r| r.status().as_u16()) })
    };
    let mut taken = false;
    for _ in 0..100 {
        let s: Value = http().get(format!("{}/lb-stats", d.url)).send().await.unwrap().json().await.unwrap();
        taken = s.to_string().contains("\"in_flight\":1");
        if taken {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(taken, "the held request took the only slot");
    let started = std::time::Instant::now();
    let hit = post(&d, "/api/chat", &body, &[]).await;
    assert_eq!((hit.0, hit.1.as_str()), (200, "hit"), "answered from the cache while the only slot is taken");
    assert!(started.elapsed() < Duration::from_millis(900), "not queued: {:?}", started.elapsed());
    let other = json!({ "model": "chat", "stream": false, "messages": [{ "role": "user", "content": "3+3?" }],
                        "options": { "temperature": 0 } });
    assert_eq!(post(&d, "/api/chat", &other, &[]).await.0, 503, "a miss waits for the slot and times out");
    held.abort();
}

async fn chat_in(d: &Drover, path: &str, session: Option<&str>, messages: Value, stream: bool) -> u16 {
    let mut req = http()
        .post(format!("{}{path}", d.url))
        .json(&json!({ "model": "chat", "messages": messages, "stream": stream }));
    if let Some(s) = session {
        req = req.header("X-Session-Id", s);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    r.bytes().await.unwrap();
    status
}

#[tokio::test]
async fn conversation_memory_carries_a_session_from_turn_to_turn() {
    let m = MockOllama::start("m", &["llama3:latest"]).await;
    m.set_stream(2, Duration::from_millis(1));
    let d = Drover::start(&format!(
        "{FAST}memory: {{ enabled: true, ttl: 2s, max_messages: 6 }}\nroutes:\n{}",
        support::route_yaml("chat", &m.url, "llama3:latest", 1, 1)
    ))
    .await;
    let sent_messages = || m.last_json()["messages"].as_array().unwrap().clone();
    let system = json!({ "role": "system", "content": "be brief" });
    let q1 = json!({ "role": "user", "content": "my name is Ann" });
    let q2 = json!({ "role": "user", "content": "what is my name?" });

    // Turn 1 goes as sent; turn 2 sends only its question and the server sees the history.
    assert_eq!(chat_in(&d, "/api/chat", Some("s1"), json!([system, q1]), false).await, 200);
    assert_eq!(sent_messages(), vec![system.clone(), q1.clone()]);
    assert_eq!(chat_in(&d, "/api/chat", Some("s1"), json!([q2]), true).await, 200);
    let seen = sent_messages();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!((seen[0].clone(), seen[1].clone(), seen[3].clone()), (system.clone(), q1.clone(), q2.clone()));
    assert_eq!(seen[2], json!({ "role": "assistant", "content": "tok0 tok1 from m" }), "turn 1's answer");
    // The streamed answer of turn 2 was read too; the OpenAI API shares the session.
    assert_eq!(
        chat_in(&d, "/v1/chat/completions", Some("s1"), json!([{ "role": "user", "content": "and?" }]), true).await,
        200
    );
    let seen = sent_messages();
    assert_eq!(seen[4]["content"], "tok0 tok1 ", "turn 2's streamed answer: {seen:?}");
    assert_eq!(seen.len(), 6);

    // Bounded: max_messages 6 keeps the system prompt and the latest five.
    assert_eq!(chat_in(&d, "/api/chat", Some("s1"), json!([{ "role": "user", "content": "last" }]), false).await, 200);
    let seen = sent_messages();
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert_eq!(seen[0], system);
    assert_eq!(seen[5]["content"], "last");

    // Other sessions, and requests without the header, are left alone.
    assert_eq!(chat_in(&d, "/api/chat", Some("s2"), json!([q2]), false).await, 200);
    assert_eq!(sent_messages(), vec![q2.clone()]);
    assert_eq!(chat_in(&d, "/api/chat", None, json!([q2]), false).await, 200);
    assert_eq!(sent_messages(), vec![q2.clone()]);

    // A session idle for the TTL is forgotten.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(chat_in(&d, "/api/chat", Some("s1"), json!([q2]), false).await, 200);
    assert_eq!(sent_messages(), vec![q2]);
}
