//! Property tests of what reads client and server bytes: the body scanner and model
//! rewrite, the conversation key, and the usage scan of answers.
//!
//! For any bytes: no panic, and an answer (an error is an answer). For any JSON object with
//! a string `model`: the rewrite means what parsing, setting `model` and serialising would,
//! and every byte outside the model's value is the client's. A corpus of real bodies
//! (tests/corpus/) is checked the same way. CI runs proptest's default 256 cases per
//! property; a long run: `PROPTEST_CASES=200000 cargo test --release --test properties`.

use bytes::Bytes;
use drover::protocol::body::{BodyError, RoutableBody};
use drover::protocol::usage::UsageScan;
use proptest::prelude::*;
use serde_json::{Map, Value};

/// Any JSON value, nested up to a few levels, strings with any Unicode (escapes included).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((any::<String>(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

/// A top-level object with a `model` string somewhere among its keys, serialised compactly
/// or pretty, and the model name.
fn routable_body() -> impl Strategy<Value = (Vec<u8>, String)> {
    // drover refuses a blank model (400), so the names here are never blank.
    let model = any::<String>().prop_map(|s| if s.trim().is_empty() { format!("m{s}") } else { s });
    (prop::collection::vec((any::<String>(), json_value()), 0..8), model, any::<bool>()).prop_map(
        |(fields, model, pretty)| {
            let mut object: Map<String, Value> = fields.into_iter().filter(|(k, _)| k != "model").collect();
            object.insert("model".into(), Value::String(model.clone()));
            let value = Value::Object(object);
            let bytes = if pretty { serde_json::to_vec_pretty(&value) } else { serde_json::to_vec(&value) }.unwrap();
            (bytes, model)
        },
    )
}

/// Checks the rewrite of `bytes` (whose `model` is `model`) to `actual`: semantically a
/// parse-set-serialise, and byte for byte the original outside the model's value.
fn check_rewrite(bytes: &[u8], model: &str, actual: &str) -> Result<(), TestCaseError> {
    let body = RoutableBody::parse(Bytes::copy_from_slice(bytes)).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
    prop_assert_eq!(&body.model, model);
    let out = body.rewritten(actual);
    // Compared through the same parser (serde_json rounds some floats on the way in).
    let mut expected: Value = serde_json::from_slice(bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    expected["model"] = Value::String(actual.to_string());
    let got: Value = serde_json::from_slice(&out).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(got, expected);
    // Byte for byte: the original with one JSON string, which decodes to the model, replaced
    // by the new name's JSON string. The string starts at a quote at or before the first
    // byte that differs.
    if bytes == &out[..] {
        return Ok(());
    }
    let first_diff = bytes.iter().zip(out.iter()).take_while(|(a, b)| a == b).count().min(bytes.len() - 1);
    let quoted = serde_json::to_vec(actual).unwrap();
    let found = (0..=first_diff).rev().filter(|&i| bytes[i] == b'"').any(|i| {
        let mut strings = serde_json::Deserializer::from_slice(&bytes[i..]).into_iter::<String>();
        match strings.next() {
            Some(Ok(s)) if s == model => {
                let j = i + strings.byte_offset();
                out[..] == [&bytes[..i], &quoted[..], &bytes[j..]].concat()[..]
            }
            _ => false,
        }
    });
    prop_assert!(found, "the rewrite changed more than the model's value");
    Ok(())
}

proptest! {
    #[test]
    fn any_bytes_get_an_answer(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let _ = RoutableBody::parse(Bytes::from(bytes)).map(|b| (b.conversation_key(), b.rewritten("x")));
    }

    #[test]
    fn any_json_text_gets_an_answer(value in json_value()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        match RoutableBody::parse(Bytes::from(bytes)) {
            // `model`, or where it is missing the legacy `name` (as Ollama's /api/show reads it).
            Ok(b) => prop_assert!(
                value.is_object()
                    && value.get("model").map_or(value["name"].as_str(), Value::as_str) == Some(b.model.as_str())
            ),
            Err(BodyError::NotAnObject) => prop_assert!(!value.is_object()),
            Err(BodyError::MissingModel) | Err(BodyError::ModelNotString) => prop_assert!(value.is_object()),
            Err(e) => prop_assert!(false, "unexpected {e:?} for {value}"),
        }
    }

    #[test]
    fn the_rewrite_is_a_parse_set_serialise((bytes, model) in routable_body(), actual in any::<String>()) {
        check_rewrite(&bytes, &model, &actual)?;
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed(depth in 100usize..5000) {
        let body = format!("{{\"model\":\"m\",\"x\":{}1{}}}", "[".repeat(depth), "]".repeat(depth));
        let r = RoutableBody::parse(Bytes::from(body));
        prop_assert_eq!(r.is_ok(), depth <= 126, "126 arrays inside the object are the most allowed");
    }

    #[test]
    fn the_usage_scan_takes_any_bytes_cut_anywhere(
        content_type in prop_oneof![Just("application/x-ndjson"), Just("text/event-stream"), Just("application/json"), Just("text/plain")],
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut scan = UsageScan::new(content_type);
        let mut at = 0;
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        for c in cuts.into_iter().chain([bytes.len()]) {
            scan.feed(&bytes[at..c]);
            at = c;
        }
        let _ = scan.finish();
    }

    #[test]
    fn the_usage_of_a_stream_does_not_depend_on_where_it_is_cut(
        lines in 1usize..20, eval in 0u64..100000, prompt in 0u64..100000, cut in any::<usize>(),
    ) {
        let mut text = String::new();
        for i in 0..lines {
            text.push_str(&format!("{{\"model\":\"m\",\"message\":{{\"content\":\"tok{i} \\\"q\\\"\"}},\"done\":false}}\n"));
        }
        text.push_str(&format!("{{\"model\":\"m\",\"done\":true,\"prompt_eval_count\":{prompt},\"eval_count\":{eval}}}\n"));
        let whole = {
            let mut s = UsageScan::new("application/x-ndjson");
            s.feed(text.as_bytes());
            s.finish()
        };
        let cut = cut % (text.len() + 1);
        let mut s = UsageScan::new("application/x-ndjson");
        s.feed(&text.as_bytes()[..cut]);
        s.feed(&text.as_bytes()[cut..]);
        let parts = s.finish();
        prop_assert_eq!(&parts, &whole);
        prop_assert_eq!((whole.prompt_tokens, whole.completion_tokens), (Some(prompt), Some(eval)));
    }
}

#[test]
fn the_corpus_of_real_bodies_rewrites_exactly() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        let model = value["model"].as_str().unwrap().to_string();
        for actual in ["qwen3:14b", "a \"quoted\" \\ name", "llama3", &model] {
            check_rewrite(&bytes, &model, actual).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
        seen += 1;
    }
    assert!(seen >= 7, "{seen} corpus files");
    // The escaped name in the corpus is the plain one, and it wins over nested "model" keys.
    let b = RoutableBody::parse(Bytes::from(std::fs::read(dir.join("unicode_escaped_model.json")).unwrap())).unwrap();
    assert_eq!(b.model, "llama3:8b");
    let b = RoutableBody::parse(Bytes::from(std::fs::read(dir.join("model_last_nested_model_keys.json")).unwrap()))
        .unwrap();
    assert_eq!(b.model, "qwen3:14b");
}
