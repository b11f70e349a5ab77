//! drover on real sockets in front of mock Ollama servers: routing, rewrite, selection, failover, streaming, fleet view.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use support::mock_ollama::{MockOllama, Mode};
use support::{eventually, header, Drover, FAST};

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

async fn post(d: &Drover, path: &str, body: Value) -> reqwest::Response {
    client().post(format!("{}{path}", d.url)).json(&body).send().await.unwrap()
}

fn route(model: &str, server: &MockOllama, actual: &str, weight: u32, priority: u32) -> String {
    support::route_yaml(model, &server.url, actual, weight, priority)
}

#[tokio::test]
async fn names_resolve_as_ollama_resolves_them_and_an_unload_reaches_every_server() {
    let a = MockOllama::start("a", &["llama3:latest"]).await;
    let b = MockOllama::start("b", &["llama3:latest"]).await;
    let d = Drover::start(&format!(
        "{FAST}routes:\n{}{}",
        route("team", &a, "llama3:latest", 1, 1),
        route("team", &b, "llama3:latest", 1, 1)
    ))
    .await;
    let msgs = json!([{ "role": "user", "content": "hi" }]);
    for name in ["team", "team:latest", "library/team", "registry.ollama.ai/library/team:latest"] {
        let r = post(&d, "/api/chat", json!({ "model": name, "stream": false, "messages": msgs })).await;
        assert_eq!(r.status(), 200, "{name}");
        assert_eq!(header(&r, "x-drover-model"), "llama3:latest");
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["model"], name, "the answer names the model as asked");
    }
    // Streamed: every line names it as asked.
    let r = post(&d, "/api/generate", json!({ "model": "team", "prompt": "hi" })).await;
    let text = r.text().await.unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.len() > 1 && lines.iter().all(|l| l["model"] == "team"), "{text}");
    // Listed with its tag; loaded on both servers, as the merged /api/ps says at once.
    let get = |path: &str| {
        let url = format!("{}{path}", d.url);
        async move { client().get(url).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let names = |v: &Value| -> Vec<String> {
        v["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap().to_string()).collect()
    };
    assert!(names(&get("/api/tags").await).contains(&"team:latest".to_string()));
    assert_eq!(a.loaded(), ["llama3:latest"]);
    assert_eq!(b.loaded(), ["llama3:latest"]);
    assert!(names(&get("/api/ps").await).contains(&"team:latest".to_string()));

    // `ollama stop team`: unloaded on every server that has it, and gone from /api/ps at once.
    let r = post(&d, "/api/generate", json!({ "model": "team", "keep_alive": 0 })).await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!((answer["done_reason"].as_str(), answer["model"].as_str()), (Some("unload"), Some("team")));
    assert!(a.loaded().is_empty() && b.loaded().is_empty(), "{:?} {:?}", a.loaded(), b.loaded());
    let ps = names(&get("/api/ps").await);
    assert!(!ps.contains(&"team:latest".to_string()) && !ps.contains(&"llama3:latest".to_string()), "{ps:?}");
    let r = post(&d, "/api/chat", json!({ "model": "team:latest", "messages": [], "keep_alive": "0s" })).await;
    let answer: Value = r.json().await.unwrap();
    assert_eq!((answer["done_reason"].as_str(), answer["message"]["content"].as_str()), (Some("unload"), Some("")));

    // /api/show with the legacy `name` (litellm sends it), for the virtual model.
    let r = post(&d, "/api/show", json!({ "name": "team" })).await;
    assert_eq!(r.status(), 200);
    let shown = if a.last_json()["name"].is_string() { a.last_json() } else { b.last_json() };
    assert_eq!(shown["name"], "llama3:latest", "the server was asked for the actual model");

    // Anthropic's count_tokens is routed by model like /v1/messages.
    let r = post(&d, "/v1/messages/count_tokens", json!({ "model": "team", "messages": msgs })).await;
    assert_eq!(r.status(), 200);
    assert!(r.json::<Value>().await.unwrap()["input_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn ollama_api_on_an_openai_kind_server_by_translation() {
    let llama = MockOllama::start("llama", &["smol"]).await;
    llama.set_stream(3, Duration::from_millis(5));
    let d = Drover::start(&format!(
        "{FAST}servers:\n  - {{ url: \"{}\", kind: openai }}\nroutes:\n{}",
        llama.url,
        route("team", &llama, "smol", 1, 1)
    ))
    .await;
    let msgs = json!([{ "role": "user", "content": "hi" }]);

    // Streamed chat: NDJSON line by line, named as asked, a final object with counts.
    let r = post(
        &d,
        "/api/chat",
        json!({ "model": "team", "messages": msgs, "options": { "num_predict": 8, "temperature": 0 } }),
    )
    .await;
    assert_eq!((r.status().as_u16(), header(&r, "content-type").as_str()), (200, "application/x-ndjson"));
    let sent = llama.last_json();
    assert_eq!(llama.state.last.lock().unwrap().as_ref().unwrap().path, "/v1/chat/completions");
    assert_eq!(
        (sent["model"].as_str(), sent["max_tokens"].as_i64(), sent["temperature"].as_f64()),
        (Some("smol"), Some(8), Some(0.0))
    );
    assert!(sent.get("options").is_none());
    let text = r.text().await.unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines.iter().all(|l| l["model"] == "team"));
    assert_eq!(lines[0]["message"]["content"], "tok0 ");
    let last = lines.last().unwrap();
    assert_eq!((last["done"].as_bool(), last["done_reason"].as_str()), (Some(true), Some("stop")));
    assert_eq!((last["prompt_eval_count"].as_u64(), last["eval_count"].as_u64()), (Some(5), Some(3)));

    // Whole chat with tools: the call comes back with its arguments as an object.
    let tools = json!([{ "type": "function", "function": { "name": "lookup", "parameters": { "type": "object" } } }]);
    let r = post(&d, "/api/chat", json!({ "model": "team", "messages": msgs, "stream": false, "tools": tools })).await;
    assert_eq!(r.status(), 200);
    let whole: Value = r.json().await.unwrap();
    assert_eq!(whole["message"]["tool_calls"][0], json!({ "function": { "name": "lookup", "arguments": { "q": 1 } } }));
    assert_eq!((whole["done"].as_bool(), whole["model"].as_str()), (Some(true), Some("team")));

    // Generate, streamed and whole.
    let r = post(&d, "/api/generate", json!({ "model": "team", "prompt": "hi" })).await;
    let text = r.text().await.unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["response"], "tok0 ", "{text}");
    assert_eq!(lines.last().unwrap()["done"], true);
    assert_eq!(llama.state.last.lock().unwrap().as_ref().unwrap().path, "/v1/completions");
    let r = post(&d, "/api/generate", json!({ "model": "team", "prompt": "hi", "stream": false })).await;
    assert!(r.json::<Value>().await.unwrap()["response"].as_str().unwrap().ends_with("from llama"));

    // Embeddings, new and old: one vector per input, in order.
    let r = post(&d, "/api/embed", json!({ "model": "team", "input": ["a", "b"] })).await;
    let e: Value = r.json().await.unwrap();
    assert_eq!((e["embeddings"][0][0].as_f64(), e["embeddings"][1][0].as_f64()), (Some(0.0), Some(1.0)), "{e}");
    assert_eq!(e["model"], "team");
    let r = post(&d, "/api/embeddings", json!({ "model": "team", "prompt": "a" })).await;
    assert_eq!(r.json::<Value>().await.unwrap()["embedding"][1], 0.2);

    // /api/show from what drover knows; the model discovered by its own name works too.
    let r = post(&d, "/api/show", json!({ "model": "team" })).await;
    assert_eq!(r.status(), 200);
    let shown: Value = r.json().await.unwrap();
    assert_eq!(shown["capabilities"], json!(["completion"]));
    assert!(shown["details"].is_object() && shown["model_info"].is_object());
    let r = post(&d, "/api/chat", json!({ "model": "smol", "messages": msgs, "stream": false })).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["model"], "smol");

    // What cannot be translated is a 400 that says so, not a retryable 503.
    let r = post(&d, "/api/generate", json!({ "model": "team", "prompt": "x", "images": ["iVBOR"] })).await;
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().await.unwrap()["error"].as_str().unwrap().contains("/api/chat"));

    // Tokens are counted as for any answer.
    let metrics = client().get(format!("{}/metrics", d.url)).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("drover_tokens_total{")
            && l.contains("model=\"team:latest\"")
            && l.contains("kind=\"prompt\"")),
        "{metrics}"
    );
}

#[tokio::test]
async fn anthropic_and_responses_reach_a_server_without_them_as_chat_completions() {
    let llama = MockOllama::start("llama", &["smol"]).await;
    llama.set_stream(3, Duration::from_millis(5));
    llama.state.no_messages.store(true, std::sync::atomic::Ordering::SeqCst);
    let d = Drover::start(&format!(
        "{FAST}servers:\n  - {{ url: \"{}\", kind: openai }}\nroutes:\n{}",
        llama.url,
        route("coder", &llama, "smol", 1, 1)
    ))
    .await;
    let msgs = json!([{ "role": "user", "content": "hi" }]);
    // The server answers 404 for /v1/messages: the same request goes again as chat completions.
    let r =
        post(&d, "/v1/messages", json!({ "model": "coder", "max_tokens": 8, "system": "be brief", "messages": msgs }))
            .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-drover-attempts"), "1", "not counted as a failed attempt");
    let answer: Value = r.json().await.unwrap();
    assert_eq!((answer["type"].as_str(), answer["role"].as_str()), (Some("message"), Some("assistant")));
    assert!(answer["content"][0]["text"].as_str().unwrap().ends_with("from llama"), "{answer}");
    assert_eq!((answer["stop_reason"].as_str(), answer["usage"]["input_tokens"].as_u64()), (Some("end_turn"), Some(5)));
    let sent = llama.last_json();
    assert_eq!(llama.state.last.lock().unwrap().as_ref().unwrap().path, "/v1/chat/completions");
    assert_eq!((sent["messages"][0]["role"].as_str(), sent["max_tokens"].as_i64()), (Some("system"), Some(8)));
    // From now on straight to chat completions; a stream comes back as Anthropic's events.
    let before = llama.requests();
    let r =
        post(&d, "/v1/messages", json!({ "model": "coder", "max_tokens": 8, "messages": msgs, "stream": true })).await;
    assert_eq!(header(&r, "content-type"), "text/event-stream");
    let text = r.text().await.unwrap();
    assert_eq!(llama.requests(), before + 1, "no second 404");
    let names: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    assert_eq!(names.iter().filter(|n| **n == "content_block_delta").count(), 3, "{text}");

    // The Responses API the same way, whole and streamed.
    let r = post(&d, "/v1/responses", json!({ "model": "coder", "instructions": "be brief", "input": "hi" })).await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!((answer["object"].as_str(), answer["status"].as_str()), (Some("response"), Some("completed")));
    assert!(answer["output"][0]["content"][0]["text"].as_str().unwrap().ends_with("from llama"), "{answer}");
    assert_eq!(llama.state.last.lock().unwrap().as_ref().unwrap().path, "/v1/chat/completions");
    let r = post(&d, "/v1/responses", json!({ "model": "coder", "input": "hi", "stream": true })).await;
    let text = r.text().await.unwrap();
    assert!(
        text.contains("event: response.output_text.delta")
            && text.trim_end().lines().last().unwrap().contains("response.completed"),
        "{text}"
    );
}

#[tokio::test]
async fn rewrites_the_model_and_leaves_the_rest_of_the_body() {
    let gpu = MockOllama::start("gpu", &["qwen3:14b"]).await;
    let d = Drover::start(&format!("{FAST}routes:\n{}", route("chat", &gpu, "qwen3:14b", 1, 1))).await;
    let body = json!({ "model": "chat", "messages": [{ "role": "user", "content": "héllo \"model\": x" }],
                       "stream": false, "options": { "temperature": 0.2, "model": "inner" }, "keep_alive": "5m" });
    let r = post(&d, "/api/chat", body.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-drover-server"), gpu.url);
    assert_eq!(header(&r, "x-drover-attempts"), "1");
    assert_eq!(header(&r, "x-drover-model"), "qwen3:14b", "the server's name for it, in a header");
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["model"], "chat", "Ollama's API names the model as it was asked for");
    let mut expected = body.clone();
    expected["model"] = json!("qwen3:14b");
    assert_eq!(gpu.last_json(), expected, "only the model field changed");
    assert!(gpu.last_header("x-request-id").is_some_and(|id| !id.is_empty()));

    // The OpenAI API routes by the same table.
    let r =
        post(&d, "/v1/chat/completions", json!({ "model": "chat", "messages": [{ "role": "user", "content": "hi" }] }))
            .await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["model"], "qwen3:14b");
    assert_eq!(answer["object"], "chat.completion");

    // Every model-routed endpoint forwards.
    for (path, key) in [
        ("/api/generate", "response"),
        ("/api/embed", "embeddings"),
        ("/api/show", "details"),
        ("/api/embeddings", "embedding"),
        ("/v1/completions", "choices"),
        ("/v1/embeddings", "data"),
    ] {
        let r = post(&d, path, json!({ "model": "chat", "prompt": "p", "input": "i", "stream": false })).await;
        assert_eq!(r.status(), 200, "{path}");
        let answer: Value = r.json().await.unwrap();
        assert!(answer.get(key).is_some(), "{path}: {answer}");
        assert_eq!(gpu.last_json()["model"], "qwen3:14b", "{path}");
    }
}

#[tokio::test]
async fn bad_input_gets_an_error_in_the_clients_format_and_reaches_no_server() {
    let m = MockOllama::start("m", &["llama3:latest"]).await;
    let d = Drover::start(&format!(
        "{FAST}  max_body_bytes: 1024\nservers: [ \"{}\" ]\nroutes:\n{}",
        m.url,
        route("chat", &m, "llama3:latest", 1, 1)
    ))
    .await;
    let c = client();
    let send = |path: &'static str, body: Vec<u8>| {
        let c = c.clone();
        let url = format!("{}{path}", d.url);
        async move {
            let r = c.post(url).header("content-type", "application/json").body(body).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let (s, e) = send("/api/chat", b"{\"model\": \"chat\", ".to_vec()).await;
    assert_eq!(s, 400);
    assert!(e["error"].as_str().unwrap().contains("not valid JSON"), "{e}");
    let (s, e) = send("/api/chat", b"{\"messages\": []}".to_vec()).await;
    assert_eq!(s, 400);
    assert!(e["error"].as_str().unwrap().contains("model is required"), "{e}");
    let (s, e) = send("/api/generate", b"{\"model\": 42}".to_vec()).await;
    assert_eq!(s, 400);
    assert!(e["error"].as_str().unwrap().contains("must be a string"), "{e}");
    let big = format!("{{\"model\":\"chat\",\"prompt\":\"{}\"}}", "x".repeat(2000)).into_bytes();
    let (s, e) = send("/api/generate", big).await;
    assert_eq!(s, 413);
    assert!(e["error"].as_str().unwrap().contains("1024 bytes"), "{e}");

    // Eventually the inventory is known, and an unknown model's 404 lists what exists.
    assert!(eventually(Duration::from_secs(5), || m.state.probes.load(std::sync::atomic::Ordering::SeqCst) >= 3).await);
    let (s, e) = send("/api/chat", b"{\"model\": \"nope\"}".to_vec()).await;
    assert_eq!(s, 404);
    let msg = e["error"].as_str().unwrap();
    assert!(msg.contains("\"nope\" not found") && msg.contains("chat") && msg.contains("llama3:latest"), "{msg}");

    // The OpenAI API gets OpenAI-shaped errors.
    let (s, e) = send("/v1/chat/completions", b"{\"model\": \"nope\"}".to_vec()).await;
    assert_eq!(s, 404);
    assert_eq!(e["error"]["code"], "model_not_found");
    assert_eq!(e["error"]["type"], "invalid_request_error");
    assert!(e["error"]["message"].as_str().unwrap().contains("available models"));
    let (s, e) = send("/v1/chat/completions", b"[]".to_vec()).await;
    assert_eq!(s, 400);
    assert_eq!(e["error"]["code"], "invalid_json");

    let r = c.get(format!("{}/api/chat", d.url)).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let r = c.get(format!("{}/v1/nothing", d.url)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert!(e["error"]["message"].as_str().unwrap().contains("/v1/nothing"));

    assert_eq!(m.requests(), 0, "no bad request reached a server");
    // And drover still serves.
    let r = post(&d, "/api/chat", json!({ "model": "chat", "stream": false })).await;
    assert_eq!(r.status(), 200);
}

/// An 8 MiB body with Content-Length survives a 503 and a retry intact; a chunked one that
/// large is refused with 411 (the proxy can replay only 64 KiB of a body of unknown length),
/// while a small chunked body is routed.
#[tokio::test]
async fn large_bodies_are_resent_on_retry() {
    let busy = MockOllama::start("busy", &["big:1b"]).await;
    let good = MockOllama::start("good", &["big:1b"]).await;
    busy.set_mode(Mode::Busy);
    let d = Drover::start(&format!(
        "{FAST}routes:\n{}{}",
        route("big", &busy, "big:1b", 1000, 1),
        route("big", &good, "big:1b", 1, 1)
    ))
    .await;
    let chunked_body = |text: &str| {
        let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
            text.as_bytes().chunks(16 * 1024).map(|c| Ok(c.to_vec())).collect();
        reqwest::Body::wrap_stream(futures::stream::iter(pieces))
    };
    for size in [100 * 1024, 8 * 1024 * 1024] {
        let filler = "y".repeat(size);
        let text = format!("{{\"model\":\"big\",\"stream\":false,\"prompt\":\"{filler}\"}}");
        let expected_len = text.len() + "big:1b".len() - "big".len();
        let (busy_before, good_before) = (busy.requests(), good.requests());
        let started = Instant::now();
        let r = client().post(format!("{}/api/generate", d.url)).body(text.clone()).send().await.unwrap();
        assert_eq!(r.status(), 200, "{size}: {}", d.log());
        let attempts = header(&r, "x-drover-attempts");
        assert_eq!(header(&r, "x-drover-model"), "big:1b");
        assert_eq!(r.json::<Value>().await.unwrap()["model"], "big", "named as asked");
        assert_eq!(good.requests(), good_before + 1);
        let got = good.last_body().unwrap();
        assert_eq!(got.len(), expected_len, "{size}");
        assert!(got.ends_with(format!("{filler}\"}}").as_bytes()));
        // The first request went to the heavy-weighted busy server and failed over.
        assert_eq!(attempts, "2");
        assert_eq!(busy.requests(), busy_before + 1);
        assert_eq!(busy.last_body().unwrap().len(), expected_len, "the busy server got the whole body too");
        eprintln!("{size} byte body with Content-Length, attempts={attempts}: {:?}", started.elapsed());

        let (busy_before, good_before) = (busy.requests(), good.requests());
        let r = client().post(format!("{}/api/generate", d.url)).body(chunked_body(&text)).send().await.unwrap();
        assert_eq!(r.status(), 411, "{size}");
        let e: Value = r.json().await.unwrap();
        assert!(e["error"].as_str().unwrap().contains("Content-Length"), "{e}");
        assert_eq!((busy.requests(), good.requests()), (busy_before, good_before), "nothing reached a server");
    }
    // A chunked body that fits the replay buffer is routed, retried and rewritten like any other.
    let text = format!("{{\"model\":\"big\",\"stream\":false,\"prompt\":\"{}\"}}", "z".repeat(40 * 1024));
    let r = client().post(format!("{}/api/generate", d.url)).body(chunked_body(&text)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-drover-attempts"), "2");
    assert_eq!(good.last_body().unwrap().len(), text.len() + 3);
}

#[tokio::test]
async fn weights_30_70_split_within_two_points_over_1000_requests() {
    let a = MockOllama::start("a", &["m:7b"]).await;
    let b = MockOllama::start("b", &["m:7b"]).await;
    let d =
        Drover::start(&format!("{FAST}routes:\n{}{}", route("m", &a, "m:7b", 30, 1), route("m", &b, "m:7b", 70, 1)))
            .await;
    let c = client();
    let mut counts: HashMap<String, usize> = HashMap::new();
    let body = json!({ "model": "m", "stream": false });
    let results = futures::stream::iter(0..1000)
        .map(|_| {
            let c = c.clone();
            let body = body.clone();
            let url = format!("{}/api/chat", d.url);
            async move {
                let r = c.post(url).json(&body).send().await.unwrap();
                assert_eq!(r.status(), 200);
                header(&r, "x-drover-server")
            }
        })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await;
    for s in results {
        *counts.entry(s).or_default() += 1;
    }
    let share_a = counts[&a.url] as f64 / 10.0;
    eprintln!("split over 1000 requests: a={share_a}% b={}%", counts[&b.url] as f64 / 10.0);
    assert!((28.0..=32.0).contains(&share_a), "a got {share_a}%");
    assert_eq!(a.requests() + b.requests(), 1000);
}

#[tokio::test]
async fn backup_tier_takes_over_and_hands_back() {
    let primary = MockOllama::start("primary", &["m:7b"]).await;
    let backup = MockOllama::start("backup", &["m:3b"]).await;
    let d = Drover::start(&format!(
        "{FAST}routes:\n{}{}",
        route("m", &primary, "m:7b", 1, 1),
        route("m", &backup, "m:3b", 1, 2)
    ))
    .await;
    let ask = || async {
        let r = post(&d, "/api/chat", json!({ "model": "m", "stream": false })).await;
        assert_eq!(r.status(), 200);
        let server = header(&r, "x-drover-server");
        let model = header(&r, "x-drover-model");
        assert_eq!(r.json::<Value>().await.unwrap()["model"], "m", "named as asked");
        (server, model)
    };
    for _ in 0..5 {
        assert_eq!(ask().await, (primary.url.clone(), "m:7b".to_string()));
    }
    primary.stop();
    // Every request still succeeds: the first after the stop fails over, later ones skip the dead server.
    for _ in 0..10 {
        assert_eq!(ask().await, (backup.url.clone(), "m:3b".to_string()));
    }
    primary.restart().await;
    let mut back = false;
    for _ in 0..60 {
        if ask().await.0 == primary.url {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "primary is used again once it answers health checks");
    for _ in 0..5 {
        assert_eq!(ask().await.0, primary.url, "and keeps the traffic");
    }
}

/// Each way a server can fail before answering is retried on the other one.
#[tokio::test]
async fn fails_over_on_refused_500_503_and_hang() {
    for mode in ["refused", "500", "503", "hang"] {
        let bad = MockOllama::start("bad", &["m:1b"]).await;
        let good = MockOllama::start("good", &["m:1b"]).await;
        match mode {
            "refused" => bad.stop(),
            "500" => bad.set_mode(Mode::Error),
            "503" => bad.set_mode(Mode::Busy),
            _ => bad.set_mode(Mode::Hang),
        }
        // Health checks slow enough that the request itself meets the failure.
        let d = Drover::start(&format!(
            "load_balancer: {{ health_check_interval: 60s, cooldown: 30s, max_fails: 1 }}\nhttp_client: {{ read_timeout: 1s }}\nroutes:\n{}{}",
            route("m", &bad, "m:1b", 100, 1),
            route("m", &good, "m:1b", 1, 1)
        ))
        .await;
        let started = Instant::now();
        let r = post(&d, "/api/chat", json!({ "model": "m", "stream": false })).await;
        let took = started.elapsed();
        assert_eq!(r.status(), 200, "{mode}");
        assert_eq!(header(&r, "x-drover-server"), good.url, "{mode}");
        assert_eq!(header(&r, "x-drover-attempts"), "2", "{mode}");
        eprintln!("failover after {mode}: {took:?}");
        // The failed server cools down: the next request goes straight to the good one.
        let r = post(&d, "/api/chat", json!({ "model": "m", "stream": false })).await;
        assert_eq!(header(&r, "x-drover-attempts"), "1", "{mode}");
    }
}

#[tokio::test]
async fn every_server_failing_gives_the_last_servers_answer_or_a_502() {
    let a = MockOllama::start("a", &["m:1b"]).await;
    let b = MockOllama::start("b", &["m:1b"]).await;
    a.set_mode(Mode::Error);
    b.set_mode(Mode::Busy);
    // One failure cools a server down, and no panic mode: the second request is refused.
    let d = Drover::start(&format!(
        "load_balancer: {{ health_check_interval: 60s, max_fails: 1, panic_mode: false }}\nroutes:\n{}{}",
        route("m", &a, "m:1b", 10, 1),
        route("m", &b, "m:1b", 1, 1)
    ))
    .await;
    let r = post(&d, "/api/chat", json!({ "model": "m", "stream": false })).await;
    assert_eq!(r.status(), 503, "the last server's own answer is passed on");
    assert_eq!(header(&r, "x-drover-attempts"), "2");
    let e: Value = r.json().await.unwrap();
    assert!(e["error"].as_str().unwrap().contains("server busy"));
    // Both now cool down: a new request is refused with the reason.
    let r = post(&d, "/v1/chat/completions", json!({ "model": "m" })).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let e: Value = r.json().await.unwrap();
    assert!(e["error"]["message"].as_str().unwrap().contains("cooling down"), "{e}");

    a.stop();
    b.stop();
    let d = Drover::start(&format!(
        "load_balancer: {{ health_check_interval: 60s }}\nroutes:\n{}{}",
        route("m", &a, "m:1b", 10, 1),
        route("m", &b, "m:1b", 1, 1)
    ))
    .await;
    let r = post(&d, "/api/chat", json!({ "model": "m" })).await;
    assert_eq!(r.status(), 502);
    let e: Value = r.json().await.unwrap();
    assert!(e["error"].as_str().unwrap().contains("every server tried failed"), "{e}");
}

/// Reads a streamed response, returning each chunk with the time it arrived.
async fn timed_chunks(r: reqwest::Response) -> Vec<(Duration, Vec<u8>)> {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut stream = r.bytes_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => out.push((started.elapsed(), c.to_vec())),
            Err(_) => break,
        }
    }
    out
}

#[tokio::test]
async fn streams_arrive_chunk_by_chunk_as_written() {
    let m = MockOllama::start("m", &["s:1b"]).await;
    m.set_stream(5, Duration::from_millis(150));
    let d = Drover::start(&format!("{FAST}routes:\n{}", route("s", &m, "s:1b", 1, 1))).await;

    let r = post(&d, "/api/chat", json!({ "model": "s", "messages": [] })).await;
    assert_eq!(header(&r, "content-type"), "application/x-ndjson");
    let chunks = timed_chunks(r).await;
    let text: String = chunks.iter().map(|(_, c)| String::from_utf8_lossy(c).to_string()).collect();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 6);
    assert_eq!(lines[5]["done"], true);
    assert!(lines.iter().all(|l| l["model"] == "s"), "every line names the model as asked");
    let first = chunks.first().unwrap().0;
    let last = chunks.last().unwrap().0;
    eprintln!("NDJSON: {} chunks, first at {first:?}, last at {last:?}", chunks.len());
    assert!(chunks.len() >= 5, "chunks were not merged: {}", chunks.len());
    assert!(last - first >= Duration::from_millis(600), "spread over time: {first:?}..{last:?}");

    let r = post(&d, "/v1/chat/completions", json!({ "model": "s", "stream": true, "messages": [] })).await;
    assert_eq!(header(&r, "content-type"), "text/event-stream");
    let chunks = timed_chunks(r).await;
    let text: String = chunks.iter().map(|(_, c)| String::from_utf8_lossy(c).to_string()).collect();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(text.matches("data: ").count(), 7);
    assert!(chunks.last().unwrap().0 - chunks[0].0 >= Duration::from_millis(600));
}

#[tokio::test]
async fn a_stream_that_breaks_ends_with_an_error_in_its_own_format() {
    let m = MockOllama::start("m", &["s:1b"]).await;
    m.set_stream(5, Duration::from_millis(20));
    m.set_mode(Mode::DropMidStream);
    let d = Drover::start(&format!("{FAST}routes:\n{}", route("s", &m, "s:1b", 1, 1))).await;

    let r = post(&d, "/api/chat", json!({ "model": "s" })).await;
    assert_eq!(r.status(), 200);
    let text = String::from_utf8(r.bytes().await.unwrap().to_vec()).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("every line is JSON")).collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0]["done"], false);
    assert!(lines[2]["error"].as_str().unwrap().contains("broke off"), "{text}");

    // The break cooled the server down (1s in FAST): wait it out.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let r = post(&d, "/v1/chat/completions", json!({ "model": "s", "stream": true })).await;
    let text = String::from_utf8(r.bytes().await.unwrap().to_vec()).unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert!(events.len() >= 2, "{text:?}");
    let last: Value = serde_json::from_str(events.last().unwrap().strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(last["error"]["type"], "server_error", "{text}");
    assert!(!text.contains("[DONE]"));
}

#[tokio::test]
async fn a_client_that_hangs_up_stops_the_upstream_request() {
    let m = MockOllama::start("m", &["s:1b"]).await;
    m.set_stream(50, Duration::from_millis(100));
    let d = Drover::start(&format!("{FAST}routes:\n{}", route("s", &m, "s:1b", 1, 1))).await;
    let r = post(&d, "/api/chat", json!({ "model": "s" })).await;
    let mut stream = r.bytes_stream();
    assert!(stream.next().await.is_some());
    drop(stream);
    let cancelled =
        eventually(Duration::from_secs(3), || m.state.cancelled.load(std::sync::atomic::Ordering::SeqCst) == 1).await;
    assert!(cancelled, "the mock saw its reader leave");
    assert_eq!(m.state.completed.load(std::sync::atomic::Ordering::SeqCst), 0);
    let stats: Value = client().get(format!("{}/lb-stats", d.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["servers"][0]["in_flight"], 0, "the slot was released");
}

#[tokio::test]
async fn fleet_wide_answers_merge_the_servers() {
    let a = MockOllama::start("a", &["llama3:latest", "qwen3:14b"]).await;
    let b = MockOllama::start("b", &["llama3:latest", "phi4:latest"]).await;
    b.set_loaded(&["phi4:latest"]);
    let d = Drover::start(&format!(
        "{FAST}servers: [ \"{}\", \"{}\" ]\nroutes:\n{}",
        a.url,
        b.url,
        route("chat", &a, "qwen3:14b", 1, 1)
    ))
    .await;
    let c = client();
    let get = |path: &'static str| {
        let c = c.clone();
        let url = format!("{}{path}", d.url);
        async move { c.get(url).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    assert!(
        eventually(Duration::from_secs(5), || a.state.probes.load(std::sync::atomic::Ordering::SeqCst) >= 3
            && b.state.probes.load(std::sync::atomic::Ordering::SeqCst) >= 3)
        .await
    );
    let tags = get("/api/tags").await;
    let names: Vec<&str> = tags["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["chat:latest", "llama3:latest", "phi4:latest", "qwen3:14b"], "listed with their tags");
    assert_eq!(tags["models"][0]["details"]["family"], "mock", "virtual entry has real details");
    let ps = get("/api/ps").await;
    assert_eq!(ps["models"][0]["name"], "phi4:latest");
    let models = get("/v1/models").await;
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, names);
    assert_eq!(get("/api/version").await["version"], "0.6.5");
    assert_eq!(get("/v1/models/phi4:latest").await["id"], "phi4:latest");

    let r = c.get(format!("{}/", d.url)).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "Ollama is running");
    let r = c.head(format!("{}/", d.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Discovery: a model no route names goes to the server that lists it.
    let r = post(&d, "/api/chat", json!({ "model": "phi4", "stream": false })).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-drover-server"), b.url);
    assert_eq!(r.json::<Value>().await.unwrap()["model"], "phi4");

    // A server going down leaves the fleet view.
    a.stop();
    assert!(eventually(Duration::from_secs(5), || true).await);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let tags = get("/api/tags").await;
    let names: Vec<&str> = tags["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert!(!names.contains(&"qwen3:14b"), "{names:?}");
    let health = get("/health").await;
    assert_eq!(health["status"], "degraded");
}

/// One server dies under concurrent load; no request fails.
#[tokio::test]
async fn a_killed_server_under_load_fails_no_request() {
    let mocks = [
        MockOllama::start("a", &["m:1b"]).await,
        MockOllama::start("b", &["m:1b"]).await,
        MockOllama::start("c", &["m:1b"]).await,
    ];
    for m in &mocks {
        m.set_answer_delay(Duration::from_millis(20));
    }
    let routes: String = mocks.iter().map(|m| route("m", m, "m:1b", 1, 1)).collect();
    let d = Drover::start(&format!("{FAST}  max_concurrency: 64\nroutes:\n{routes}")).await;
    let c = client();
    let url = format!("{}/api/chat", d.url);
    let load = futures::stream::iter(0..600)
        .map(|i| {
            let c = c.clone();
            let url = url.clone();
            async move {
                let body = json!({ "model": "m", "stream": false, "messages": [{ "role": "user", "content": i.to_string() }] });
                let r = c.post(url).json(&body).send().await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap_or_default())
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>();
    let killer = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        mocks[0].stop();
    };
    let (answers, ()) = tokio::join!(load, killer);
    let failed: Vec<&(u16, String)> = answers.iter().filter(|(s, _)| *s != 200).collect();
    eprintln!("killed one of 3 servers under load: {} requests, {} failed", answers.len(), failed.len());
    assert!(failed.is_empty(), "{failed:?}");
    assert!(mocks[0].requests() > 0, "the killed server served before it died");
    assert!(mocks[1].requests() + mocks[2].requests() > 400);
}

/// The requests in flight on a server at the moment it dies (each waiting for its answer,
/// on fresh and on pooled connections) are all answered by another: the deterministic core
/// of the test above, every request caught mid-flight rather than the few a timed kill finds.
#[tokio::test]
async fn every_request_in_flight_on_a_dying_server_is_answered_elsewhere() {
    let a = MockOllama::start("a", &["m:1b"]).await;
    let b = MockOllama::start("b", &["m:1b"]).await;
    let d = Drover::start(&format!(
        "{FAST}  max_concurrency: 64\nroutes:\n{}{}",
        route("m", &a, "m:1b", 1, 1),
        route("m", &b, "m:1b", 1, 2)
    ))
    .await;
    let c = client();
    // Warm drover's pool to a, so that some of the requests below go out on pooled connections.
    for _ in 0..8 {
        let r =
            c.post(format!("{}/api/chat", d.url)).json(&json!({ "model": "m", "stream": false })).send().await.unwrap();
        assert_eq!(header(&r, "x-drover-server"), a.url);
    }
    a.set_mode(Mode::Hang);
    let before = a.requests();
    let load = futures::stream::iter(0..16)
        .map(|i| {
            let (c, url) = (c.clone(), format!("{}/api/chat", d.url));
            async move {
                let body = json!({ "model": "m", "stream": i % 2 == 0, "messages": [{ "role": "user", "content": i.to_string() }] });
                let r = c.post(url).json(&body).send().await.unwrap();
                (r.status().as_u16(), header(&r, "x-drover-server"), r.text().await.unwrap_or_default())
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>();
    let killer = async {
        assert!(support::eventually(Duration::from_secs(5), || a.requests() == before + 16).await, "all 16 reached a");
        a.stop();
    };
    let (answers, ()) = tokio::join!(load, killer);
    for (status, server, text) in &answers {
        assert_eq!((*status, server.as_str()), (200, b.url.as_str()), "{text}");
        assert!(!text.contains("error"), "{text}");
    }
}

/// A pooled connection that the server closes as the next request arrives (its keep-alive
/// timeout racing the request) is replaced on the spot: the request succeeds on its first
/// try, and the server is not marked as failing (with one server there is nowhere else to go).
#[tokio::test]
async fn a_pooled_connection_closed_by_the_server_is_replaced_not_failed() {
    let m = MockOllama::start("m", &["m:1b"]).await;
    let d = Drover::start(&format!("{FAST}routes:\n{}", route("m", &m, "m:1b", 1, 1))).await;
    m.close_reused_connections(true);
    for round in 0..6 {
        let r = post(&d, "/api/chat", json!({ "model": "m", "stream": false })).await;
        assert_eq!(r.status(), 200, "round {round}");
        assert_eq!(header(&r, "x-drover-attempts"), "1", "round {round}");
        r.bytes().await.unwrap();
    }
    assert_eq!(m.requests(), 6);
}

/// A request that is not valid HTTP gets a 400 and the connection is closed; drover goes on serving.
#[tokio::test]
async fn a_malformed_request_gets_400_and_a_closed_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let m = MockOllama::start("m", &["m:1b"]).await;
    let d = Drover::start(&format!("{FAST}routes:\n{}", route("m", &m, "m:1b", 1, 1))).await;
    for bad in
        [&b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nno colon here\r\n\r\n"[..], b"\x16\x03\x01\x00\xa5\r\n\r\n"]
    {
        let mut s = tokio::net::TcpStream::connect(d.addr).await.unwrap();
        s.write_all(bad).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut answer)).await.expect("closed").unwrap();
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    }
    assert_eq!(m.requests(), 0);
    let r = post(&d, "/api/chat", json!({ "model": "m", "stream": false })).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn anthropic_messages_and_openai_responses_route_by_model_in_their_own_formats() {
    let m = MockOllama::start("m", &["qwen3:14b"]).await;
    m.set_stream(3, Duration::from_millis(10));
    let d = Drover::start(&format!("{FAST}routes:\n{}", route("coder", &m, "qwen3:14b", 1, 1))).await;

    // Whole answers: the model rewritten, the answer passed through, the tokens counted.
    let messages = json!({ "model": "coder", "max_tokens": 16, "messages": [{ "role": "user", "content": "hi" }] });
    let r = post(&d, "/v1/messages", messages.clone()).await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["type"], "message");
    assert_eq!(answer["model"], "qwen3:14b");
    let mut expected = messages.clone();
    expected["model"] = json!("qwen3:14b");
    assert_eq!(m.last_json(), expected);
    let r = post(&d, "/v1/responses", json!({ "model": "coder", "input": "hi" })).await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["object"], "response");
    assert_eq!(m.state.last.lock().unwrap().as_ref().unwrap().path, "/v1/responses");

    // Streams pass event by event, untouched apart from what the server wrote.
    let mut streamed = messages.clone();
    streamed["stream"] = json!(true);
    let r = post(&d, "/v1/messages", streamed.clone()).await;
    assert_eq!(header(&r, "content-type"), "text/event-stream");
    let text = r.text().await.unwrap();
    let names: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let r = post(&d, "/v1/responses", json!({ "model": "coder", "input": "hi", "stream": true })).await;
    let text = r.text().await.unwrap();
    assert!(text.trim_end().lines().next_back().unwrap().contains("response.completed"), "{text}");

    let metrics = client().get(format!("{}/metrics", d.url)).send().await.unwrap().text().await.unwrap();
    let tokens = |kind: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("drover_tokens_total{")
                    && l.contains("model=\"coder:latest\"")
                    && l.contains(&format!("kind=\"{kind}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    // 4 answers: 5 prompt tokens each; completions 4 + 4 whole, 3 + 3 streamed.
    assert_eq!(tokens("prompt"), 20, "{metrics}");
    assert_eq!(tokens("completion"), 14, "{metrics}");

    // Errors in each API's own format.
    let r = post(&d, "/v1/messages", json!({ "model": "nope", "max_tokens": 1, "messages": [] })).await;
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["type"], "error");
    assert_eq!(e["error"]["type"], "not_found_error");
    assert!(e["error"]["message"].as_str().unwrap().contains("\"nope\""), "{e}");
    let r = post(&d, "/v1/responses", json!({ "input": "hi" })).await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "missing_model");

    // A stream that breaks ends with Anthropic's error event.
    m.set_mode(Mode::DropMidStream);
    let r = post(&d, "/v1/messages", streamed).await;
    let text = r.text().await.unwrap();
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    let data = last.strip_prefix("event: error\ndata: ").unwrap_or_else(|| panic!("{text:?}"));
    let event: Value = serde_json::from_str(data).unwrap();
    assert_eq!(event["type"], "error");
    assert_eq!(event["error"]["type"], "api_error");
}

#[tokio::test]
async fn whole_answers_are_compressed_when_accepted_and_streams_never_are() {
    let models: Vec<String> = (0..40).map(|i| format!("model-number-{i}:7b")).collect();
    let names: Vec<&str> = models.iter().map(String::as_str).collect();
    let m = MockOllama::start("m", &names).await;
    m.set_stream(4, Duration::from_millis(150));
    let d = Drover::start(&format!("{FAST}routes:\n{}", route("s", &m, "model-number-0:7b", 1, 1))).await;
    assert!(
        support::eventually(Duration::from_secs(5), || m.state.probes.load(std::sync::atomic::Ordering::SeqCst) >= 3)
            .await
    );

    // The fleet's model list, gzip when asked for, identical once decoded.
    let plain = client().get(format!("{}/api/tags", d.url)).send().await.unwrap();
    assert_eq!(header(&plain, "content-encoding"), "");
    let plain: Value = plain.json().await.unwrap();
    assert!(plain["models"].as_array().unwrap().len() >= 40);
    let r = client().get(format!("{}/api/tags", d.url)).header("accept-encoding", "gzip").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-encoding"), "gzip");
    let packed = r.bytes().await.unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&packed[..]), &mut text).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), plain);
    assert!(packed.len() * 3 < text.len(), "{} bytes packed from {}", packed.len(), text.len());
    // A small answer goes as it is.
    let r = client().get(format!("{}/api/version", d.url)).header("accept-encoding", "gzip").send().await.unwrap();
    assert_eq!(header(&r, "content-encoding"), "");

    // A streamed answer, with the client accepting gzip: not encoded, lines as they come.
    let r = client()
        .post(format!("{}/api/chat", d.url))
        .header("accept-encoding", "gzip, zstd")
        .json(&json!({ "model": "s", "messages": [] }))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "content-encoding"), "");
    let chunks = timed_chunks(r).await;
    assert!(chunks.len() >= 4, "{} chunks", chunks.len());
    assert!(chunks.last().unwrap().0 - chunks[0].0 >= Duration::from_millis(400), "not held back");
    let text: String = chunks.iter().map(|(_, c)| String::from_utf8_lossy(c).to_string()).collect();
    assert_eq!(text.lines().count(), 5);
}
