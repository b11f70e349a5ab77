//! Models on the servers through drover: pull, push, create, copy and delete fanned out to
//! the servers that should hold the model (merged NDJSON progress), required models pulled in
//! the background, and preloading where routing will want a model.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::mock_ollama::{MockOllama, Mode};
use support::{http, Drover, FAST};

/// The NDJSON lines of a management call through drover's Ollama API.
async fn manage(d: &Drover, path_query: &str, body: Value) -> (u16, Vec<Value>) {
    let method = if path_query.starts_with("/api/delete") { reqwest::Method::DELETE } else { reqwest::Method::POST };
    let r = http().request(method, format!("{}{path_query}", d.url)).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"))).collect())
}

fn two_route_fleet(a: &MockOllama, b: &MockOllama) -> String {
    format!(
        "{FAST}routes:\n  - {{ virtual_model_name: coder, server_url: \"{}\", actual_model_name: \"qwen2.5-coder:7b\" }}\n  \
         - {{ virtual_model_name: coder, server_url: \"{}\", actual_model_name: \"qwen2.5-coder:3b\", priority: 2 }}\n",
        a.url, b.url
    )
}

#[tokio::test]
async fn a_pull_goes_to_every_server_the_routes_name_with_merged_progress() {
    let a = MockOllama::start("a", &["llama3:latest"]).await;
    let b = MockOllama::start("b", &["llama3:latest"]).await;
    let other = MockOllama::start("other", &["llama3:latest"]).await;
    let d = Drover::start(&format!("{}servers:\n  - \"{}\"\n", two_route_fleet(&a, &b), other.url)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (status, lines) = manage(&d, "/api/pull", json!({ "model": "coder" })).await;
    assert_eq!(status, 200);
    // Each server pulled the model under its own route's name, and nobody else was asked.
    assert_eq!(a.managed(), ["/api/pull qwen2.5-coder:7b"]);
    assert_eq!(b.managed(), ["/api/pull qwen2.5-coder:3b"]);
    assert!(other.managed().is_empty());
    // One pull as Ollama shows it: a layer's bytes summed over both servers, each status once,
    // which server moved a line in a field of its own, never in the status text.
    for m in [&a, &b] {
        assert!(lines.iter().any(|l| l["server"] == m.url.as_str()), "{lines:?}");
    }
    let layer: Vec<&Value> = lines.iter().filter(|l| l["digest"].is_string()).collect();
    let totals: Vec<u64> = layer.iter().map(|l| l["total"].as_u64().unwrap()).collect();
    assert!(totals.windows(2).all(|w| w[0] <= w[1]), "a layer's total only grows as servers report: {totals:?}");
    assert_eq!(
        (layer.last().unwrap()["total"].as_u64(), layer.last().unwrap()["completed"].as_u64()),
        (Some(2000), Some(2000)),
        "both servers fetch the same layer: {lines:?}"
    );
    assert_eq!(lines.iter().filter(|l| l["status"] == "pulling manifest").count(), 1);
    assert!(lines.iter().all(|l| !l["status"].as_str().unwrap_or("").contains("http")), "{lines:?}");
    let last = lines.last().unwrap();
    assert_eq!(last["status"], "success", "only when all succeeded: {last}");
    assert_eq!(lines.iter().filter(|l| l["status"] == "success").count(), 1);
    // drover knows at once: the new names are in its merged /api/tags.
    let tags: Value = http().get(format!("{}/api/tags", d.url)).send().await.unwrap().json().await.unwrap();
    let names: Vec<&str> = tags["models"].as_array().unwrap().iter().filter_map(|m| m["name"].as_str()).collect();
    assert!(names.contains(&"qwen2.5-coder:7b") && names.contains(&"qwen2.5-coder:3b"), "{names:?}");

    // A model the registry does not have: the stream ends with an error naming each server.
    let (status, lines) = manage(&d, "/api/pull?fleet=all", json!({ "model": "missing-model" })).await;
    assert_eq!(status, 200, "the stream started before anyone failed, as Ollama's does");
    let err = lines.last().unwrap()["error"].as_str().unwrap().to_string();
    assert!(err.starts_with("pull failed on 3 of 3 servers"), "{err}");
    for m in [&a, &b, &other] {
        assert!(err.contains(&format!("{}: pull model manifest: file does not exist", m.url)), "{err}");
    }
    assert!(!lines.iter().any(|l| l["status"] == "success"));

    // One server failing, the others not: named, and no final success.
    b.set_mode(Mode::Error);
    let (_, lines) = manage(&d, "/api/pull", json!({ "name": "coder" })).await;
    let last = lines.last().unwrap();
    let err = last["error"].as_str().unwrap();
    assert!(
        err.starts_with("pull failed on 1 of 2 servers: ") && err.contains(&b.url) && err.contains("500"),
        "{last}"
    );
    b.set_mode(Mode::Normal);

    // stream: false answers once, with per-server results; a chosen server only.
    let (status, lines) =
        manage(&d, &format!("/api/pull?servers={}", other.url), json!({ "model": "phi4", "stream": false })).await;
    assert_eq!(status, 200, "{lines:?}");
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["status"], "success");
    assert_eq!(lines[0]["servers"][0]["server"], other.url);
    assert_eq!(other.managed(), ["/api/pull missing-model", "/api/pull phi4"]);

    // Bad requests: a clear error in Ollama's format, nothing sent anywhere.
    let sent = a.managed().len() + b.managed().len() + other.managed().len();
    for (query, body) in [
        ("/api/pull", json!({})),
        ("/api/pull", json!({ "model": 7 })),
        ("/api/pull?servers=http://not-ours:1", json!({ "model": "x" })),
        ("/api/pull?fleet=some", json!({ "model": "x" })),
        ("/api/copy", json!({ "source": "coder" })),
    ] {
        let (status, lines) = manage(&d, query, body.clone()).await;
        assert_eq!(status, 400, "{query} {body}: {lines:?}");
        assert!(lines[0]["error"].is_string(), "{lines:?}");
    }
    let r = http().get(format!("{}/api/pull", d.url)).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(a.managed().len() + b.managed().len() + other.managed().len(), sent);
}

#[tokio::test]
async fn delete_needs_the_admin_token_and_copy_goes_where_the_source_is() {
    let a = MockOllama::start("a", &["qwen2.5-coder:7b"]).await;
    let b = MockOllama::start("b", &["qwen2.5-coder:3b"]).await;
    let d = Drover::start(&format!("{}admin:\n  token: \"sesame\"\n", two_route_fleet(&a, &b))).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Without the token: 401, and nothing deleted.
    let (status, lines) = manage(&d, "/api/delete", json!({ "model": "coder" })).await;
    assert_eq!(status, 401, "{lines:?}");
    assert!(a.managed().is_empty() && b.managed().is_empty());

    // Copy (not destructive): on each server, from the name it knows.
    let (status, lines) = manage(&d, "/api/copy", json!({ "source": "coder", "destination": "coder-backup" })).await;
    assert_eq!(status, 200, "{lines:?}");
    assert!(a.models().contains(&"coder-backup:latest".to_string()));
    assert!(b.models().contains(&"coder-backup:latest".to_string()));
    assert_eq!(a.managed(), ["/api/copy qwen2.5-coder:7b"]);

    // With the token, through the Ollama API: deleted on both.
    let delete = |model: &str| {
        http().delete(format!("{}/api/delete", d.url)).bearer_auth("sesame").json(&json!({ "model": model })).send()
    };
    let r = delete("coder").await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["servers"].as_array().unwrap().len(), 2, "{body}");
    assert!(!a.models().contains(&"qwen2.5-coder:7b".to_string()));
    assert!(!b.models().contains(&"qwen2.5-coder:3b".to_string()));
    // Again: absent everywhere is a 404, as Ollama says for a model it does not have.
    let r = delete("coder").await.unwrap();
    assert_eq!(r.status(), 404);

    // The admin API offers the same; a pull answers once with per-server results.
    let admin = |op: &str, body: Value| {
        http().post(format!("{}/admin/models/{op}", d.url)).bearer_auth("sesame").json(&body).send()
    };
    let r = admin("pull", json!({ "model": "coder" })).await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "success", "{body}");
    assert!(a.models().contains(&"qwen2.5-coder:7b".to_string()));
    let r = admin("unpack", json!({ "model": "coder" })).await.unwrap();
    assert_eq!(r.status(), 404);
    let r =
        http().post(format!("{}/admin/models/pull", d.url)).json(&json!({ "model": "coder" })).send().await.unwrap();
    assert_eq!(r.status(), 401, "the admin API needs the token too");
}

#[tokio::test]
async fn required_models_are_pulled_in_the_background_and_reported_in_health() {
    let a = MockOllama::start("a", &["llama3:latest"]).await;
    a.set_stream(3, Duration::from_millis(150));
    let d = Drover::start(&format!(
        "{FAST}servers:\n  - {{ url: \"{}\", required_models: [\"nomic-embed-text\", \"llama3\"] }}\n",
        a.url
    ))
    .await;
    // A pull in progress shows in /health with its byte counts; then the model is present.
    let mut seen_pulling = false;
    let mut health = Value::Null;
    for _ in 0..100 {
        health = http().get(format!("{}/health", d.url)).send().await.unwrap().json().await.unwrap();
        let rows = health["required_models"].as_array().cloned().unwrap_or_default();
        let row = rows.iter().find(|r| r["model"] == "nomic-embed-text").cloned().unwrap_or(Value::Null);
        seen_pulling |= row["state"] == "pulling";
        if row["state"] == "present" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows = health["required_models"].as_array().unwrap();
    assert!(rows.iter().all(|r| r["state"] == "present" && r["server"] == a.url.as_str()), "{health}");
    assert!(seen_pulling, "progress was visible while the pull ran");
    assert!(a.models().contains(&"nomic-embed-text:latest".to_string()));
    assert_eq!(a.managed(), ["/api/pull nomic-embed-text"], "llama3 was there already; pulled once");
    let r: Value = http().get(format!("{}/admin/models/required", d.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(r.as_array().unwrap().len(), 2, "{r}");
}

async fn preload(d: &Drover, body: Value) -> (u16, Value) {
    let r = http().post(format!("{}/admin/models/preload", d.url)).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn preload_loads_the_model_where_routing_will_want_it() {
    let first = MockOllama::start("first", &["qwen3:14b"]).await;
    let backup = MockOllama::start("backup", &["qwen3:4b"]).await;
    let d = Drover::start(&format!(
        "{FAST}routes:\n  - {{ virtual_model_name: qwen3, server_url: \"{}\", actual_model_name: \"qwen3:14b\", priority: 1 }}\n  \
         - {{ virtual_model_name: qwen3, server_url: \"{}\", actual_model_name: \"qwen3:4b\", priority: 2 }}\n",
        first.url, backup.url
    ))
    .await;

    // The best tier only: Ollama's empty-prompt load, with keep_alive, under the server's name.
    let (status, answer) = preload(&d, json!({ "model": "qwen3", "keep_alive": "1h" })).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"].as_array().unwrap().len(), 1, "{answer}");
    assert_eq!(answer["results"][0]["server"], first.url);
    assert_eq!(answer["results"][0]["loaded"], true);
    let sent = first.last_json();
    assert_eq!((sent["model"].as_str(), sent["prompt"].as_str()), (Some("qwen3:14b"), Some("")));
    assert_eq!(sent["keep_alive"], "1h");
    assert_eq!(backup.requests(), 0);
    assert!(first.state.loaded.lock().unwrap().contains(&"qwen3:14b".to_string()));

    // Named servers: each under its own route's model name.
    let (status, answer) = preload(&d, json!({ "model": "qwen3", "servers": [backup.url] })).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(backup.last_json()["model"], "qwen3:4b");
    assert_eq!(backup.last_json()["keep_alive"], "30m", "the default");
    assert_eq!(answer["results"][0]["actual_model"], "qwen3:4b");

    // A server that fails says so, per server, and the answer is a 502.
    first.set_mode(Mode::Error);
    let (status, answer) = preload(&d, json!({ "model": "qwen3" })).await;
    assert_eq!(status, 502, "{answer}");
    assert_eq!(answer["failed"], 1);
    assert!(answer["results"][0]["error"].as_str().unwrap().contains("500"), "{answer}");
    first.set_mode(Mode::Normal);

    // Bad requests change nothing.
    let before = first.requests() + backup.requests();
    let (status, e) = preload(&d, json!({ "servers": ["http://elsewhere:11434"], "color": 1 })).await;
    assert_eq!(status, 400);
    for field in ["model", "servers", "color"] {
        assert!(e["fields"].get(field).is_some(), "{field}: {e}");
    }
    let (status, _) = preload(&d, json!({ "model": "nothing-serves-this" })).await;
    assert_eq!(status, 404);
    assert_eq!(first.requests() + backup.requests(), before);

    // With the first tier down, routing would use the backup: so does preload.
    first.stop();
    let mut answer = Value::Null;
    for _ in 0..50 {
        let (_, a) = preload(&d, json!({ "model": "qwen3" })).await;
        answer = a;
        if answer["results"][0]["server"] == backup.url.as_str() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answer["results"][0]["server"], backup.url, "{answer}");
}

#[tokio::test]
async fn a_blob_reaches_every_server_before_the_create_that_names_it() {
    use sha2::Digest;
    let a = MockOllama::start("a", &["llama3:latest"]).await;
    let b = MockOllama::start("b", &["llama3:latest"]).await;
    let d = Drover::start(&format!("{FAST}servers: [ \"{}\", \"{}\" ]\n", a.url, b.url)).await;
    d.wait_healthy().await;
    // A model file's worth of bytes, sent in pieces: every server gets all of it.
    let blob: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let digest =
        format!("sha256:{}", sha2::Sha256::digest(&blob).iter().map(|b| format!("{b:02x}")).collect::<String>());
    let url = format!("{}/api/blobs/{digest}", d.url);
    assert_eq!(http().head(&url).send().await.unwrap().status(), 404, "nobody has it yet");
    let r = http().post(&url).body(blob.clone()).send().await.unwrap();
    assert_eq!(r.status(), 201);
    for m in [&a, &b] {
        assert_eq!(m.state.blobs.lock().unwrap().get(&digest), Some(&blob.len()), "{}", m.url);
    }
    assert_eq!(http().head(&url).send().await.unwrap().status(), 200);
    // Only on one server: not there for the fleet, so the client uploads it.
    b.state.blobs.lock().unwrap().clear();
    assert_eq!(http().head(&url).send().await.unwrap().status(), 404);
    // Bytes that are not the digest: the servers' refusal, in Ollama's shape.
    let r = http().post(&url).body(b"not the same bytes".to_vec()).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "digest mismatch");
}
