//! Models on the servers, through drover's admin API: preloading where routing will want a model.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::mock_ollama::{MockOllama, Mode};
use support::{http, Drover, FAST};

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
