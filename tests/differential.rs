//! What the server reads is what drover checked: drover's body reading against Go's
//! encoding/json decoding Ollama's request types (tests/go/ollama_decode, a decoder of the
//! same shapes Ollama's handlers decode, and the same choice of `model` or `name`).
//!
//! For every body of the corpus and of generated ones (keys in mixed case, duplicates,
//! escapes, the long s and the Kelvin sign that Go folds onto ASCII, nesting, values of
//! other types, bad strings): either drover refuses the body, or the model Go reads from the
//! body drover forwards (the model rewritten to the route's name) is that name, and the
//! model Go reads from the client's body is the one drover authorised; `options.num_ctx`
//! likewise. Needs Go (Debian's golang-go; scripts/setup installs it).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine;
use bytes::Bytes;
use drover::placement::manage::{read, Op};
use drover::protocol::body::RoutableBody;
use serde_json::Value;

/// Builds the Go decoder into a scratch directory.
fn decoder() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("drover-go-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("ollama_decode");
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/go/ollama_decode");
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(&src)
        .env("GOPATH", dir.join("gopath"))
        .env("GOCACHE", std::env::var("GOCACHE").unwrap_or_else(|_| dir.join("gocache").display().to_string()))
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local")
        .status()
        .expect("Go (Debian package golang-go; scripts/setup installs it) builds the reference decoder");
    assert!(built.success(), "go build failed");
    bin
}

/// Each (endpoint, body) as Go decodes it: one JSON object per body.
fn go_decode(bin: &PathBuf, cases: &[(&str, Vec<u8>)]) -> Vec<Value> {
    let mut child = Command::new(bin).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut input = Vec::new();
    for (endpoint, body) in cases {
        input.extend_from_slice(endpoint.as_bytes());
        input.push(b'\t');
        input.extend_from_slice(base64::engine::general_purpose::STANDARD.encode(body).as_bytes());
        input.push(b'\n');
    }
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let lines: Vec<Value> = out
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len(), cases.len(), "one answer a body");
    assert!(lines.iter().all(|l| l.get("harness_error").is_none()), "the decoder read every line");
    lines
}

/// A small deterministic generator (xorshift), so a failure names a body that comes again.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[(self.next() % from.len() as u64) as usize]
    }
}

const MODEL_KEYS: &[&str] = &[
    "model",
    "model",
    "model",
    "MODEL",
    "Model",
    "mOdEl",
    "mod\\u0065l",
    "\\u006dodel",
    "name",
    "NAME",
    "Name",
    "n\\u0061me",
    "models",
    "mode",
    "model ",
    "\\u004dODEL",
];
const MODEL_VALUES: &[&str] = &[
    "\"m-x\"",
    "\"m-y\"",
    "\"M-Y\"",
    "\"m-\\u0078\"",
    "\"\"",
    "null",
    "7",
    "\" m-x\"",
    "\"m-x\\u0000\"",
    "\"m\\ud800x\"",
    "\"m-x\\\"y\"",
    "[\"m-y\"]",
    "{\"model\":\"m-y\"}",
];
const OTHER_PAIRS: &[&str] = &[
    "\"messages\":[{\"role\":\"user\",\"content\":\"{\\\"model\\\":\\\"m-y\\\"}\"}]",
    "\"Messages\":[]",
    "\"prompt\":\"hi\"",
    "\"stream\":false",
    "\"STREAM\":true",
    "\"\u{17f}tream\":true",
    "\"keep_alive\":\"5m\"",
    "\"\u{212a}eep_alive\":0",
    "\"options\":{\"num_ctx\":4096}",
    "\"options\":{\"num_ctx\":1.31072e5}",
    "\"options\":{\"num_ctx\":4096.9}",
    "\"options\":{\"num_ctx\":\"8192\"}",
    "\"options\":{\"num_ctx\":2048,\"num_ctx\":131072}",
    "\"options\":{\"NUM_CTX\":8192,\"model\":\"m-y\"}",
    "\"Options\":{\"num_ctx\":131072}",
    "\"options\":null",
    "\"metadata\":{\"model\":\"m-y\",\"MODEL\":\"m-y\"}",
    "\"format\":{\"type\":\"object\",\"properties\":{\"model\":{\"type\":\"string\"}}}",
    "\"source\":\"m-x\"",
    "\"Source\":\"m-y\"",
    "\"destination\":\"m-x-copy\"",
    "\"DESTINATION\":\"m-y\"",
    "\"from\":\"m-x\"",
    "\"From\":\"m-y\"",
    "\"remote_host\":\"\"",
];
const SPACE: &[&str] = &["", " ", "\n", "\t ", "\r\n  "];

/// A body of 1 to 5 fields drawn from the lists above, sometimes with bytes after it.
fn generated(g: &mut Gen) -> Vec<u8> {
    let mut fields = Vec::new();
    for _ in 0..1 + g.next() % 5 {
        let field = if g.next().is_multiple_of(2) {
            format!("\"{}\"{}:{}{}", g.pick(MODEL_KEYS), g.pick(SPACE), g.pick(SPACE), g.pick(MODEL_VALUES))
        } else {
            g.pick(OTHER_PAIRS).to_string()
        };
        fields.push(field);
    }
    let sep = format!("{},{}", g.pick(SPACE), g.pick(SPACE));
    let mut body = format!("{}{{{}}}", g.pick(SPACE), fields.join(&sep)).into_bytes();
    match g.next() % 20 {
        0 => body.extend_from_slice(b" {\"model\":\"m-y\"}"),
        1 => body.extend_from_slice(b"x"),
        2 => body.extend_from_slice(b"\xff"),
        _ => {}
    }
    body
}

fn corpus() -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut bodies: Vec<Vec<u8>> =
        std::fs::read_dir(dir).unwrap().map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect();
    // The attacks of tests/attacks.rs, and bodies of real clients.
    for body in [
        r#"{"model":"m-x","MODEL":"m-y","messages":[]}"#,
        r#"{"model":"m-x","model":"m-y"}"#,
        r#"{"Model":"m-y"}"#,
        r#"{"mod\u0065l":"m-x","stream":false}"#,
        r#"{"name":"m-x","Name":"m-y"}"#,
        r#"{"model":"m-x","name":"m-y"}"#,
        r#"{"model":"","name":"m-y"}"#,
        r#"{"model":"llama3.2","messages":[{"role":"user","content":"hi"}],"stream":true,"options":{"num_ctx":8192}}"#,
        r#"{"source":"m-x","destination":"m-y","SOURCE":"m-y"}"#,
    ] {
        bodies.push(body.as_bytes().to_vec());
    }
    bodies
}

/// Go's reading of a string field: `None` when absent (null in the answer).
fn text<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    v.get(field).and_then(Value::as_str)
}

#[test]
fn the_model_a_server_reads_is_the_model_drover_checked() {
    let bin = decoder();
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    let mut bodies = corpus();
    bodies.extend((0..20_000).map(|_| generated(&mut g)));

    // Model-routed endpoints: the client's body, and the body drover forwards.
    const ROUTED: [&str; 5] = ["chat", "generate", "embed", "embeddings", "show"];
    const ROUTE: &str = "routed-name:1b";
    let mut cases = Vec::new();
    let mut accepted = Vec::new();
    for body in &bodies {
        let parsed = RoutableBody::parse(Bytes::copy_from_slice(body)).ok();
        for endpoint in ROUTED {
            cases.push((endpoint, body.clone()));
            if let Some(b) = &parsed {
                cases.push((endpoint, b.rewritten(ROUTE).to_vec()));
            }
        }
        accepted.push(parsed);
    }
    let answers = go_decode(&bin, &cases);
    let mut answers = answers.iter();
    let (mut checked, mut refused, mut attacks_refused) = (0, 0, 0);
    for (body, parsed) in bodies.iter().zip(&accepted) {
        for _ in ROUTED {
            let original = answers.next().unwrap();
            let Some(b) = parsed else {
                refused += 1;
                // A body Go reads with a model drover could not have checked (another key
                // than the first "model") is one drover must refuse, and did.
                attacks_refused += usize::from(original.get("error").is_none());
                continue;
            };
            let forwarded = answers.next().unwrap();
            let shown = String::from_utf8_lossy(body);
            // Go refusing a body is the server refusing it (400): nothing runs.
            if let Some(model) = text(original, "model").filter(|m| !m.is_empty()) {
                assert_eq!(model, b.model, "the client's body {shown}: Go reads {original}");
            }
            if forwarded.get("error").is_none() {
                let model = text(forwarded, "model").unwrap();
                // Empty: Ollama refuses a request without a model (a chat body naming only
                // the legacy `name`).
                assert!(model == ROUTE || model.is_empty(), "forwarded {shown}: Go reads {forwarded}");
                if let Some(raw) = text(forwarded, "num_ctx") {
                    // Ollama's options take any number as an integer, its fraction dropped.
                    let read = raw.parse::<f64>().ok().filter(|n| *n >= 0.0).map(|n| n as u32);
                    assert_eq!(read, b.num_ctx, "num_ctx of {shown}: {forwarded}");
                } else {
                    assert_eq!(b.num_ctx, None, "num_ctx of {shown}: {forwarded}");
                }
                checked += 1;
            }
        }
    }
    assert!(answers.next().is_none());
    // The generator reaches both sides: bodies passed and checked, attacks refused.
    assert!(checked > 5_000 && refused > 5_000 && attacks_refused > 1_000, "{checked} {refused} {attacks_refused}");

    // Model management: drover reads the whole body (manage.rs); Go reads the same model
    // (copy: source and destination; create: from).
    const MANAGED: [(&str, Op); 5] =
        [("copy", Op::Copy), ("create", Op::Create), ("delete", Op::Delete), ("pull", Op::Pull), ("push", Op::Push)];
    let mut cases = Vec::new();
    let mut read_by_drover = Vec::new();
    for body in &bodies {
        for (endpoint, op) in MANAGED {
            cases.push((endpoint, body.clone()));
            read_by_drover.push(read(op, body).ok());
        }
    }
    let answers = go_decode(&bin, &cases);
    let mut agreed = 0;
    for (((_, body), go), drover) in cases.iter().zip(&answers).zip(&read_by_drover) {
        let (Some(req), None) = (drover, go.get("error")) else { continue };
        let shown = String::from_utf8_lossy(body);
        assert_eq!(text(go, "model"), Some(req.model.as_str()), "{shown}: Go reads {go}");
        for field in ["destination", "from"] {
            if let Some(name) = text(go, field).filter(|n| !n.trim().is_empty()) {
                assert!(req.names.iter().any(|n| n == name), "{field} of {shown} not checked: {go}");
            }
        }
        agreed += 1;
    }
    assert!(agreed > 1_000, "{agreed}");
}
