//! Stream resumption through a real drover: a server that dies mid-stream, the answer
//! continued on another server and spliced into the client's stream, in each API's format.

mod support;

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use support::mock_ollama::{MockOllama, Mode};
use support::{header, http, route_yaml, Drover, FAST};

/// `a` (first tier) breaks every stream after `lines` lines; `b` (second tier) answers.
async fn fleet(lines: usize, extra: &str) -> (MockOllama, MockOllama, Drover) {
    let a = MockOllama::start("a", &["m:1b"]).await;
    let b = MockOllama::start("b", &["m:1b"]).await;
    for m in [&a, &b] {
        m.set_stream(6, Duration::from_millis(15));
    }
    a.set_mode(Mode::DropMidStream);
    a.state.drop_after.store(lines, std::sync::atomic::Ordering::SeqCst);
    let yaml = format!(
        "{FAST}  max_fails: 1000\n  max_concurrency: 64\n{extra}routes:\n{}{}",
        route_yaml("m", &a.url, "m:1b", 1, 1),
        route_yaml("m", &b.url, "m:1b", 1, 2)
    );
    let d = Drover::start(&yaml).await;
    (a, b, d)
}

async fn post(d: &Drover, path: &str, body: Value) -> reqwest::Response {
    http().post(format!("{}{path}", d.url)).json(&body).send().await.unwrap()
}

/// The data of each event of an SSE stream.
fn sse_events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| serde_json::from_str(e.split_once("data: ").unwrap().1).unwrap())
        .collect()
}

fn ndjson(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?} in {text}"))).collect()
}

#[tokio::test]
async fn streams_whose_server_dies_are_continued_on_another_under_load() {
    let (a, b, d) = fleet(3, "").await;
    let ask = |i: usize| json!({ "model": "m", "messages": [{ "role": "user", "content": format!("count {i}") }] });
    let answers: Vec<(u16, String, String)> = futures::stream::iter(0..24)
        .map(|i| {
            let d = &d;
            async move {
                let r = post(d, "/api/chat", ask(i)).await;
                let attempts = header(&r, "x-drover-attempts");
                (r.status().as_u16(), attempts, r.text().await.unwrap())
            }
        })
        .buffer_unordered(12)
        .collect()
        .await;
    assert!(a.requests() >= 12, "the first tier took its share: {}", a.requests());
    for (status, _, text) in &answers {
        assert_eq!(*status, 200);
        let lines = ndjson(text);
        assert!(lines.iter().all(|l| l.get("error").is_none()), "no error line: {text}");
        let content: String = lines.iter().filter_map(|l| l["message"]["content"].as_str()).collect();
        assert_eq!(content, "tok0 tok1 tok2 tok3 tok4 tok5 ", "one uninterrupted answer: {text}");
        let done: Vec<&Value> = lines.iter().filter(|l| l["done"] == true).collect();
        assert_eq!(done.len(), 1, "one final object: {text}");
        assert_eq!(done[0]["eval_count"], 6, "both parts' tokens: {text}");
        assert_eq!(done[0]["model"], "m", "the model as asked: {text}");
    }
    // The continuation was asked with the first part as the assistant's message.
    let asked = b.last_json();
    let messages = asked["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{asked}");
    assert_eq!(messages[1], json!({ "role": "assistant", "content": "tok0 tok1 tok2 " }));
    assert_eq!(asked["model"], "m:1b");

    let metrics = http().get(format!("{}/metrics", d.url)).send().await.unwrap().text().await.unwrap();
    let continued = metrics.lines().find(|l| l.starts_with("drover_stream_resumptions_total{outcome=\"continued\"}"));
    let n: f64 = continued.and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0);
    assert!(n >= a.requests() as f64, "{continued:?}");
}

#[tokio::test]
async fn openai_and_anthropic_streams_continue_in_their_own_format() {
    let (_a, b, d) = fleet(4, "").await;

    // OpenAI: one id throughout, one role announcement, usage counting both parts.
    let body = json!({ "model": "m", "stream": true, "stream_options": { "include_usage": true },
                       "messages": [{ "role": "user", "content": "count" }] });
    let r = post(&d, "/v1/chat/completions", body).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.last(), Some(&"data: [DONE]"), "{text}");
    let chunks: Vec<Value> =
        events.iter().filter(|e| **e != "data: [DONE]").map(|e| serde_json::from_str(&e[6..]).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["id"] == chunks[0]["id"]), "one stream id: {text}");
    let content: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, "tok0 tok1 tok2 tok3 tok4 tok5 ", "{text}");
    let usage = chunks.iter().find(|c| c["usage"].is_object()).expect("usage");
    assert_eq!(usage["usage"]["completion_tokens"], 6, "{text}");
    assert_eq!(b.last_json()["messages"][1]["content"], "tok0 tok1 tok2 tok3 ");

    // Anthropic: the continuation's text flows on in the open block; one message_start, one message_stop.
    let body =
        json!({ "model": "m", "stream": true, "max_tokens": 32, "messages": [{ "role": "user", "content": "count" }] });
    let r = post(&d, "/v1/messages", body).await;
    let text = r.text().await.unwrap();
    let events = sse_events(&text);
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "message_start").count(), 1, "{text}");
    assert_eq!(kinds.iter().filter(|k| **k == "content_block_start").count(), 1, "{text}");
    assert_eq!(kinds.last(), Some(&"message_stop"), "{text}");
    let content: String = events.iter().filter_map(|e| e["delta"]["text"].as_str()).collect();
    assert_eq!(content, "tok0 tok1 tok2 tok3 tok4 tok5 ", "{text}");
    assert!(events.iter().filter(|e| e["index"].is_u64()).all(|e| e["index"] == 0), "{text}");
    assert_eq!(b.last_json()["messages"][1], json!({ "role": "assistant", "content": "tok0 tok1 " }));
}

#[tokio::test]
async fn a_responses_stream_continues_in_the_open_message_item() {
    // Six lines in: created, in_progress, the message item, its part, and two deltas.
    let (a, b, d) = fleet(6, "").await;
    let r = post(&d, "/v1/responses", json!({ "model": "m", "stream": true, "input": "count" })).await;
    let text = r.text().await.unwrap();
    let events = sse_events(&text);
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    for once in ["response.created", "response.output_item.added", "response.content_part.added", "response.completed"]
    {
        assert_eq!(kinds.iter().filter(|k| **k == once).count(), 1, "{once}: {text}");
    }
    let numbers: Vec<u64> = events.iter().map(|e| e["sequence_number"].as_u64().unwrap()).collect();
    assert_eq!(numbers, (0..events.len() as u64).collect::<Vec<_>>(), "numbered on: {text}");
    let deltas: String = events.iter().filter_map(|e| e["delta"].as_str()).collect();
    assert_eq!(deltas, "tok0 tok1 tok2 tok3 tok4 tok5 ");
    let item = format!("msg_{}", a.state.name);
    assert!(events.iter().filter(|e| e.get("item_id").is_some()).all(|e| e["item_id"] == item.as_str()), "{text}");
    let done = events.iter().find(|e| e["type"] == "response.output_text.done").unwrap();
    assert_eq!(done["text"], "tok0 tok1 tok2 tok3 tok4 tok5 ", "the closing events carry the whole text");
    let last = events.last().unwrap();
    assert_eq!(last["response"]["id"], format!("resp_{}", a.state.name));
    assert_eq!(last["response"]["output"][0]["content"][0]["text"], "tok0 tok1 tok2 tok3 tok4 tok5 ");
    assert_eq!(last["response"]["output"][0]["id"], item.as_str());
    assert_eq!(last["response"]["usage"]["output_tokens"], 6);
    let asked = b.last_json();
    assert_eq!(asked["input"][1], json!({ "role": "assistant", "content": "tok0 tok1 " }), "{asked}");
}

/// A server that goes silent mid-stream (the connection open) is given up after
/// http_client.read_timeout, and the answer goes on elsewhere.
#[tokio::test]
async fn a_stream_stalled_past_the_read_timeout_continues_elsewhere() {
    let (a, _b, d) = fleet(3, "http_client: { read_timeout: 700ms }\n").await;
    a.state.stall.store(true, std::sync::atomic::Ordering::SeqCst);
    let started = std::time::Instant::now();
    let r = post(&d, "/api/chat", json!({ "model": "m", "messages": [{ "role": "user", "content": "count" }] })).await;
    let lines = ndjson(&r.text().await.unwrap());
    let content: String = lines.iter().filter_map(|l| l["message"]["content"].as_str()).collect();
    assert_eq!(content, "tok0 tok1 tok2 tok3 tok4 tok5 ");
    assert!(lines.iter().all(|l| l.get("error").is_none()), "{lines:?}");
    assert!(started.elapsed() >= Duration::from_millis(700), "it waited out the read timeout");
    assert!(
        support::eventually(Duration::from_secs(2), || a.state.cancelled.load(std::sync::atomic::Ordering::SeqCst)
            == 1)
        .await,
        "the stalled server's stream was let go"
    );
}

#[tokio::test]
async fn resumption_is_off_per_model_and_without_another_server() {
    // Off for the model: the stream ends with its error line, as before.
    let (_a, b, d) = fleet(3, "  model_resume: { m: false }\n").await;
    let r = post(&d, "/api/generate", json!({ "model": "m", "prompt": "count" })).await;
    let lines = ndjson(&r.text().await.unwrap());
    assert!(lines.last().unwrap()["error"].as_str().unwrap().contains("broke off"), "{lines:?}");
    assert_eq!(b.requests(), 0);
    drop(d);

    // On, but the only other server is down too: the error line says why.
    let (_a, b, d) = fleet(3, "").await;
    b.stop();
    let r = post(&d, "/api/generate", json!({ "model": "m", "prompt": "count" })).await;
    let lines = ndjson(&r.text().await.unwrap());
    let last = lines.last().unwrap();
    assert!(last["error"].as_str().unwrap().contains("broke off"), "{lines:?}");
    assert_eq!(lines.iter().filter_map(|l| l["response"].as_str()).collect::<String>(), "tok0 tok1 tok2 ");
}

#[tokio::test]
async fn a_generate_stream_continues_from_its_prompt_and_the_text_so_far() {
    let (_a, b, d) = fleet(2, "").await;
    let r = post(&d, "/api/generate", json!({ "model": "m", "prompt": "Count: " })).await;
    let lines = ndjson(&r.text().await.unwrap());
    let text: String = lines.iter().filter_map(|l| l["response"].as_str()).collect();
    assert_eq!(text, "tok0 tok1 tok2 tok3 tok4 tok5 ");
    assert_eq!(b.last_json()["prompt"], "Count: tok0 tok1 ");
    assert_eq!(lines.last().unwrap()["eval_count"], 6);
}
