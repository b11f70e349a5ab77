//! Micro-benchmarks of the request path's own work: selection, body parse + model rewrite,
//! /api/tags merge, and per stream line: the asked model name put back into an Ollama line,
//! an OpenAI SSE line translated to Ollama's NDJSON.
//!
//! Run: `cargo bench --bench micro`.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use drover::config::{Env, Settings, Strategy};
use drover::fleet::backends::Health;
use drover::fleet::Fleet;
use drover::protocol::body::RoutableBody;
use drover::protocol::ollama::Inventory;
use drover::routing::select::{select, NoChecks, Request, Selection};
use serde_json::json;

/// A fleet whose model "m" has `n` routes over `n` servers in three priority tiers.
fn fleet_with_routes(n: usize) -> Fleet {
    let mut yaml = String::from("load_balancer: { max_concurrency: 1000000 }\nroutes:\n");
    for i in 0..n {
        yaml.push_str(&format!(
            "  - {{ virtual_model_name: m, server_url: 'http://10.{}.{}.{}:11434', actual_model_name: 'm:7b', weight: {}, priority: {} }}\n",
            i / 65536,
            (i / 256) % 256,
            i % 256,
            1 + i % 10,
            1 + i % 3
        ));
    }
    Fleet::build(&Settings::parse(&yaml, None, &Env::default()).unwrap(), &[], &[], &Health::new(), None)
}

fn selection(c: &mut Criterion) {
    let mut group = c.benchmark_group("select");
    for n in [1, 10, 100, 1000] {
        let fleet = fleet_with_routes(n);
        let req = Request::plain("m", true);
        group.bench_with_input(BenchmarkId::new("weighted", n), &n, |b, _| {
            b.iter(|| match select(black_box(&fleet), Strategy::Weighted, &req, &NoChecks) {
                Selection::Chosen(route, slot, _) => {
                    black_box(&route);
                    drop(slot);
                }
                _ => unreachable!("every route is eligible"),
            })
        });
    }
    group.finish();
}

fn chat_body(size: usize) -> Bytes {
    let filler = "x".repeat(size.saturating_sub(120));
    let body = json!({ "model": "chat", "stream": true, "options": { "temperature": 0.2 },
                       "messages": [{ "role": "user", "content": filler }] });
    Bytes::from(serde_json::to_vec(&body).unwrap())
}

fn body_rewrite(c: &mut Criterion) {
    let mut group = c.benchmark_group("body_parse_and_rewrite");
    for (label, size) in [("1KiB", 1024), ("64KiB", 64 * 1024), ("4MiB", 4 * 1024 * 1024)] {
        let body = chat_body(size);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(label, |b| {
            b.iter(|| {
                let parsed = RoutableBody::parse(black_box(body.clone())).unwrap();
                black_box(parsed.rewritten("qwen3:14b"))
            })
        });
    }
    group.finish();
}

fn tags_merge(c: &mut Criterion) {
    let mut yaml = String::from("servers:\n");
    for i in 0..50 {
        yaml.push_str(&format!("  - 'http://10.0.0.{i}:11434'\n"));
    }
    yaml.push_str("routes:\n  - { virtual_model_name: chat, server_url: 'http://10.0.0.1:11434', actual_model_name: 'model-3:7b' }\n");
    let fleet = Fleet::build(&Settings::parse(&yaml, None, &Env::default()).unwrap(), &[], &[], &Health::new(), None);
    // 50 servers, 20 models each, half of them shared with the other servers.
    for (i, s) in fleet.servers.iter().enumerate() {
        let names: Vec<String> =
            (0..20).map(|m| if m < 10 { format!("model-{m}:7b") } else { format!("own-{i}-{m}:7b") }).collect();
        let tags = names
            .iter()
            .map(|n| {
                json!({ "name": n, "model": n, "size": 4_000_000_000u64, "digest": "sha256:0123",
                             "details": { "family": "llama", "parameter_size": "7B", "quantization_level": "Q4_K_M" } })
            })
            .collect();
        s.set_inventory(Inventory { names: names.into_iter().collect(), tags, ..Inventory::default() });
    }
    c.bench_function("tags_merge/50_servers", |b| b.iter(|| black_box(drover::ops::views::tags(black_box(&fleet)))));
}

/// One streamed line of each: what a stream pays per line on top of passing it through.
fn stream_lines(c: &mut Criterion) {
    use drover::protocol::echo::Echo;
    use drover::protocol::translate::{Answer, Endpoint, Translating};
    let ndjson = Bytes::from_static(
        b"{\"model\":\"llama3.2:latest\",\"created_at\":\"2026-12-05T04:00:00.123456789Z\",\"message\":{\"role\":\"assistant\",\"content\":\" the\"},\"done\":false}\n",
    );
    let sse = Bytes::from_static(
        b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"smol\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" the\"},\"finish_reason\":null}]}\n\n",
    );
    let mut echo = Echo::new("llama3.2:latest", "team-llama").unwrap();
    c.bench_function("stream_line/echo_asked_name", |b| {
        b.iter(|| black_box(echo.feed(Some(black_box(&ndjson)), false)))
    });
    let mut answer = Answer::new(Endpoint::Chat, true, true, "team", std::time::Instant::now());
    c.bench_function("stream_line/translate_sse_to_ndjson", |b| {
        b.iter(|| black_box(answer.feed(Some(black_box(&sse)), false)))
    });
}

criterion_group!(benches, selection, body_rewrite, tags_merge, stream_lines);
criterion_main!(benches);
