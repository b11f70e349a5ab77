//! Ollama's API on a server that speaks only OpenAI's (llama.cpp, vLLM, LM Studio, a hosted
//! OpenAI-compatible service): the request translated to /v1, the answer translated back,
//! chunk by chunk for streams.
//!
//! | Ollama | OpenAI |
//! |---|---|
//! | /api/chat | /v1/chat/completions |
//! | /api/generate | /v1/completions (`system` put before the prompt) |
//! | /api/embed, /api/embeddings | /v1/embeddings |
//!
//! Options: temperature, top_p, top_k, min_p, seed, stop, presence_penalty,
//! frequency_penalty, repeat_penalty as they are; num_predict -> max_tokens; `format: "json"`
//! -> `response_format: json_object`, a JSON schema -> `json_schema`. Messages: `images`
//! -> `image_url` data URIs; `tools` as they are; `tool_calls` both ways (arguments an
//! object in Ollama, a JSON string in OpenAI); `thinking` <- `reasoning_content`. What
//! cannot map (generate's `images`, `suffix`, `template`, `raw`, `context`) is a 400 that
//! says so. The final object carries done_reason, prompt_eval_count, eval_count and the
//! durations (measured by drover: the server reports none).

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use serde_json::{json, Map, Value};

use super::api::{ApiError, Call};

/// Which Ollama endpoint is translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Generate,
    /// /api/embed: `input` a string or a list, `embeddings` back.
    Embed,
    /// /api/embeddings (the older one): `prompt`, one `embedding` back.
    Embeddings,
}

impl Endpoint {
    /// The Ollama calls that can be translated.
    pub(crate) fn of_call(call: Call) -> Option<Endpoint> {
        match call {
            Call::Chat => Some(Endpoint::Chat),
            Call::Generate => Some(Endpoint::Generate),
            Call::Embed => Some(Endpoint::Embed),
            Call::Embeddings => Some(Endpoint::Embeddings),
            _ => None,
        }
    }

    /// The OpenAI path the request goes to.
    pub(crate) fn openai_path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Generate => "/v1/completions",
            Endpoint::Embed | Endpoint::Embeddings => "/v1/embeddings",
        }
    }
}

/// A translated request: the OpenAI body, and whether the answer streams.
#[derive(Debug)]
pub(crate) struct Translated {
    pub(crate) body: Bytes,
    pub(crate) stream: bool,
}

/// Why a request cannot be translated for an OpenAI-compatible server: Ollama's here,
/// Anthropic's (anthropic.rs) and the Responses API's (responses.rs) alike.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TranslateError {
    #[error("the body is not a JSON object: {0}")]
    NotJson(#[source] serde_json::Error),
    /// A field of /api/generate that chat completions' /v1/completions has no room for.
    #[error("{0:?} on /api/generate cannot be sent to an OpenAI-compatible server; use /api/chat")]
    GenerateField(&'static str),
    #[error("every message must be an object")]
    MessageNotObject,
    /// Ollama's `format`, neither "json" nor a schema.
    #[error("format {0}: expected \"json\" or a JSON schema")]
    Format(Value),
    /// An Anthropic message whose content is neither text nor blocks.
    #[error("every message's content must be a string or a list of blocks")]
    Content,
    /// A Responses input item chat completions have no message for.
    #[error("input items of type {0:?} cannot be sent as chat completions")]
    InputItem(String),
    #[error("input must be a string or a list of items")]
    Input,
}

/// The client's answer: a 400 that says why, in its API's format. Every server such a
/// request could go to would refuse it the same way, so it is never retried elsewhere.
impl From<TranslateError> for ApiError {
    fn from(e: TranslateError) -> ApiError {
        ApiError::new(400, "cannot_translate", e.to_string())
    }
}

/// Ollama's request body -> OpenAI's, for the server's own model name `actual`. The error
/// says what cannot be translated (a 400 for the client).
pub(crate) fn request(endpoint: Endpoint, body: &[u8], actual: &str) -> Result<Translated, TranslateError> {
    let req: Map<String, Value> = serde_json::from_slice(body).map_err(TranslateError::NotJson)?;
    let mut out = Map::new();
    out.insert("model".into(), actual.into());
    // Ollama streams unless told not to; embeddings never stream.
    let stream = matches!(endpoint, Endpoint::Chat | Endpoint::Generate)
        && req.get("stream").and_then(Value::as_bool).unwrap_or(true);
    match endpoint {
        Endpoint::Chat => {
            let messages = req.get("messages").and_then(Value::as_array).cloned().unwrap_or_default();
            let messages: Result<Vec<Value>, TranslateError> = messages.iter().map(chat_message).collect();
            out.insert("messages".into(), Value::Array(messages?));
            if let Some(tools) = req.get("tools").filter(|t| !t.is_null()) {
                out.insert("tools".into(), tools.clone());
            }
        }
        Endpoint::Generate => {
            for unsupported in ["images", "suffix", "template", "context"] {
                if req.get(unsupported).is_some_and(|v| !v.is_null() && v != &json!([]) && v != &json!("")) {
                    return Err(TranslateError::GenerateField(unsupported));
                }
            }
            let prompt = req.get("prompt").and_then(Value::as_str).unwrap_or("");
            let prompt = match req.get("system").and_then(Value::as_str).filter(|s| !s.is_empty()) {
                Some(system) => format!("{system}\n\n{prompt}"),
                None => prompt.to_string(),
            };
            out.insert("prompt".into(), prompt.into());
        }
        Endpoint::Embed => {
            let input = req.get("input").cloned().unwrap_or(Value::Array(Vec::new()));
            out.insert("input".into(), input);
            if let Some(d) = req.get("dimensions").filter(|d| d.is_u64()) {
                out.insert("dimensions".into(), d.clone());
            }
        }
        Endpoint::Embeddings => {
            out.insert("input".into(), req.get("prompt").cloned().unwrap_or_else(|| "".into()));
        }
    }
    if matches!(endpoint, Endpoint::Chat | Endpoint::Generate) {
        options(&req, &mut out)?;
        out.insert("stream".into(), stream.into());
        if stream {
            out.insert("stream_options".into(), json!({ "include_usage": true }));
        }
    }
    let body = serde_json::to_vec(&Value::Object(out)).expect("json values serialise");
    Ok(Translated { body: body.into(), stream })
}

/// One Ollama chat message as OpenAI's.
fn chat_message(m: &Value) -> Result<Value, TranslateError> {
    let Some(obj) = m.as_object() else { return Err(TranslateError::MessageNotObject) };
    let role = obj.get("role").and_then(Value::as_str).unwrap_or("user");
    let text = obj.get("content").and_then(Value::as_str).unwrap_or("");
    let images: Vec<&str> =
        obj.get("images").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let content = if images.is_empty() {
        Value::from(text)
    } else {
        let mut parts = vec![json!({ "type": "text", "text": text })];
        for b64 in images {
            parts.push(json!({ "type": "image_url", "image_url": { "url": format!("data:{};base64,{b64}", image_type(b64)) } }));
        }
        Value::Array(parts)
    };
    let mut out = json!({ "role": role, "content": content });
    if let Some(calls) = obj.get("tool_calls").and_then(Value::as_array) {
        let calls: Vec<Value> = calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let f = &c["function"];
                let args = match &f["arguments"] {
                    Value::String(s) => s.clone(),
                    other => serde_json::to_string(other).expect("json values serialise"),
                };
                let id = c.get("id").and_then(Value::as_str).map_or_else(|| format!("call_{i}"), str::to_string);
                json!({ "id": id, "type": "function", "function": { "name": f["name"], "arguments": args } })
            })
            .collect();
        out["tool_calls"] = calls.into();
    }
    if role == "tool" {
        if let Some(id) = obj.get("tool_call_id").or_else(|| obj.get("tool_name")) {
            out["tool_call_id"] = id.clone();
        }
    }
    Ok(out)
}

/// The media type of a base64 image, from its first bytes (PNG, JPEG, GIF, WebP).
fn image_type(b64: &str) -> &'static str {
    match b64.get(..4) {
        Some("/9j/") => "image/jpeg",
        Some("R0lG") => "image/gif",
        Some("UklG") => "image/webp",
        _ => "image/png",
    }
}

/// Ollama's `options` and `format` as OpenAI's top-level fields.
fn options(req: &Map<String, Value>, out: &mut Map<String, Value>) -> Result<(), TranslateError> {
    let opts = req.get("options").and_then(Value::as_object).cloned().unwrap_or_default();
    for same in [
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "seed",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "repeat_penalty",
    ] {
        if let Some(v) = opts.get(same).filter(|v| !v.is_null()) {
            out.insert(same.into(), v.clone());
        }
    }
    if let Some(n) = opts.get("num_predict").and_then(Value::as_i64).filter(|n| *n > 0) {
        out.insert("max_tokens".into(), n.into());
    }
    match req.get("format") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) if s == "json" => {
            out.insert("response_format".into(), json!({ "type": "json_object" }));
        }
        Some(schema @ Value::Object(_)) => {
            out.insert(
                "response_format".into(),
                json!({ "type": "json_schema", "json_schema": { "name": "response", "schema": schema, "strict": true } }),
            );
        }
        Some(other) => return Err(TranslateError::Format(other.clone())),
    }
    Ok(())
}

/// What a translator of OpenAI's chat answer does with its pieces: this file's for Ollama,
/// anthropic.rs's and responses.rs's. The reading they share (whole lines, a whole answer,
/// the content type) is `Translator`'s.
pub trait FromChat: Send + Sync + 'static {
    /// The content type of what the client gets: a stream's, then a whole answer's.
    const CONTENT_TYPES: [&'static str; 2] = ["text/event-stream", "application/json"];
    /// One line of an SSE stream.
    fn sse_line(&mut self, line: &[u8], out: &mut BytesMut);
    /// The stream ended: what closes it in the client's API.
    fn end_stream(&mut self, out: &mut BytesMut);
    /// A whole successful answer.
    fn whole(&mut self, answer: &Value) -> Value;
    /// A whole error answer, with the server's message (`error_message`).
    fn error(&self, message: String) -> Value;
}

/// An OpenAI chat answer translated back to the client's API as it passes: the reading
/// every translator shares, around the one (`T`) that translates the pieces.
pub struct Translator<T> {
    inner: T,
    /// A stream is read line by line; anything else, or an error answer, whole.
    stream: bool,
    /// The status the server answered: an error body is translated whole.
    ok: bool,
    /// Bytes not yet a whole line (a stream) or the whole answer so far (the rest).
    pending: BytesMut,
}

impl<T: FromChat> Translator<T> {
    pub(crate) fn new(inner: T, stream: bool, ok: bool) -> Translator<T> {
        Translator { inner, stream: stream && ok, ok, pending: BytesMut::new() }
    }
}

/// An answer being translated, whichever API it goes back to: the relay's one handle on it.
pub trait Translating: Send + Sync {
    /// The content type of what the client gets.
    fn content_type(&self) -> &'static str;
    /// The translation of `chunk` (and at `end`, of what was left).
    fn feed(&mut self, chunk: Option<&Bytes>, end: bool) -> Bytes;
}

impl<T: FromChat> Translating for Translator<T> {
    fn content_type(&self) -> &'static str {
        T::CONTENT_TYPES[if self.stream { 0 } else { 1 }]
    }

    /// A stream line by line (an unfinished last line waits for the rest), a whole answer
    /// once it has all come (`pending` holds what waits).
    fn feed(&mut self, chunk: Option<&Bytes>, end: bool) -> Bytes {
        let Translator { inner: t, stream, ok, pending } = self;
        if let Some(c) = chunk {
            pending.extend_from_slice(c);
        }
        let mut out = BytesMut::new();
        if *stream {
            while let Some(i) = memchr::memchr(b'\n', pending) {
                let line = pending.split_to(i + 1);
                t.sse_line(&line, &mut out);
            }
            if end {
                let rest = pending.split();
                t.sse_line(&rest, &mut out);
                t.end_stream(&mut out);
            }
        } else if end {
            let whole = pending.split();
            let answer = serde_json::from_slice::<Value>(&whole).unwrap_or(Value::Null);
            let translated = if *ok { t.whole(&answer) } else { t.error(error_message(&answer, &whole)) };
            out.extend_from_slice(&serde_json::to_vec(&translated).expect("json values serialise"));
        }
        out.freeze()
    }
}

/// The message of an OpenAI error answer (`{"error": {"message"}}`, or a bare string), or
/// the start of whatever the server sent.
fn error_message(answer: &Value, raw: &[u8]) -> String {
    match &answer["error"] {
        Value::String(s) => s.clone(),
        Value::Object(e) => e.get("message").and_then(Value::as_str).unwrap_or("the server failed").to_string(),
        _ => answer["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(raw).trim().chars().take(500).collect()),
    }
}

/// Reads an OpenAI answer (whole or SSE) and writes Ollama's, as it passes.
pub struct Answer {
    endpoint: Endpoint,
    /// The model as the client named it.
    model: String,
    started: Instant,
    first_token: Option<Instant>,
    /// Streamed tool calls, assembled from their pieces.
    tool_calls: Vec<(String, String)>,
    finish: Option<String>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    /// Pieces counted when the server sends no usage.
    pieces: u64,
    done: bool,
}

impl Answer {
    pub fn new(endpoint: Endpoint, stream: bool, ok: bool, model: &str, started: Instant) -> Translator<Answer> {
        let answer = Answer {
            endpoint,
            model: model.to_string(),
            started,
            first_token: None,
            tool_calls: Vec::new(),
            finish: None,
            prompt_tokens: None,
            completion_tokens: None,
            pieces: 0,
            done: false,
        };
        Translator::new(answer, stream, ok)
    }

    fn usage(&mut self, answer: &Value) {
        let u = &answer["usage"];
        if let Some(n) = u["prompt_tokens"].as_u64() {
            self.prompt_tokens = Some(n);
        }
        if let Some(n) = u["completion_tokens"].as_u64() {
            self.completion_tokens = Some(n);
        }
    }

    /// `model` and `created_at`, as every Ollama line starts.
    fn head(&self) -> Value {
        let now = humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
        json!({ "model": self.model, "created_at": now })
    }

    /// The counts and durations of the final object, in nanoseconds as Ollama gives them.
    fn stats(&self, line: &mut Value) {
        let now = Instant::now();
        let ns = |d: std::time::Duration| d.as_nanos().min(u64::MAX as u128) as u64;
        let first = self.first_token.unwrap_or(now);
        line["total_duration"] = ns(now - self.started).into();
        line["load_duration"] = 0.into();
        line["prompt_eval_count"] = self.prompt_tokens.unwrap_or(0).into();
        line["prompt_eval_duration"] = ns(first.saturating_duration_since(self.started)).into();
        line["eval_count"] = self.completion_tokens.unwrap_or(self.pieces).into();
        line["eval_duration"] = ns(now.saturating_duration_since(first)).into();
    }

    fn done_reason(&self) -> &str {
        match self.finish.as_deref() {
            Some("length") => "length",
            Some("tool_calls") | Some("stop") | None => "stop",
            Some(other) => other,
        }
    }

    fn final_line(&mut self, out: &mut BytesMut) {
        self.done = true;
        let mut line = self.head();
        match self.endpoint {
            Endpoint::Chat => {
                line["message"] = json!({ "role": "assistant", "content": "" });
                let calls: Vec<Value> = self.tool_calls.iter().map(|(name, args)| tool_call(name, args)).collect();
                if !calls.is_empty() {
                    line["message"]["tool_calls"] = calls.into();
                }
            }
            _ => line["response"] = "".into(),
        }
        line["done"] = true.into();
        line["done_reason"] = self.done_reason().into();
        self.stats(&mut line);
        push_line(out, &line);
    }
}

impl FromChat for Answer {
    const CONTENT_TYPES: [&'static str; 2] = ["application/x-ndjson", "application/json; charset=utf-8"];

    /// One SSE line: `data: {chunk}` becomes an NDJSON line; `data: [DONE]` the final one.
    fn sse_line(&mut self, line: &[u8], out: &mut BytesMut) {
        let line = std::str::from_utf8(line).unwrap_or("").trim();
        let Some(data) = line.strip_prefix("data:").map(str::trim) else { return };
        if data == "[DONE]" {
            if !self.done {
                self.final_line(out);
            }
            return;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else { return };
        if let Some(e) = chunk.get("error") {
            let message = e.get("message").and_then(Value::as_str).map_or_else(|| e.to_string(), str::to_string);
            push_line(out, &json!({ "error": message }));
            self.done = true;
            return;
        }
        self.usage(&chunk);
        let Some(choice) = chunk["choices"].get(0) else { return };
        if let Some(f) = choice["finish_reason"].as_str() {
            self.finish = Some(f.to_string());
        }
        let delta = if self.endpoint == Endpoint::Chat { &choice["delta"] } else { choice };
        let text = if self.endpoint == Endpoint::Chat { delta["content"].as_str() } else { delta["text"].as_str() };
        let thinking = delta["reasoning_content"].as_str().or(delta["reasoning"].as_str());
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let i = call["index"].as_u64().unwrap_or(self.tool_calls.len() as u64) as usize;
            if self.tool_calls.len() <= i {
                self.tool_calls.resize(i + 1, (String::new(), String::new()));
            }
            if let Some(n) = call["function"]["name"].as_str() {
                self.tool_calls[i].0.push_str(n);
            }
            if let Some(a) = call["function"]["arguments"].as_str() {
                self.tool_calls[i].1.push_str(a);
            }
        }
        let text = text.unwrap_or("");
        if text.is_empty() && thinking.is_none_or(str::is_empty) {
            return;
        }
        self.first_token.get_or_insert_with(Instant::now);
        self.pieces += 1;
        let mut line = self.head();
        match self.endpoint {
            Endpoint::Chat => {
                line["message"] = json!({ "role": "assistant", "content": text });
                if let Some(t) = thinking.filter(|t| !t.is_empty()) {
                    line["message"]["thinking"] = t.into();
                }
            }
            _ => line["response"] = text.into(),
        }
        line["done"] = false.into();
        push_line(out, &line);
    }

    fn end_stream(&mut self, out: &mut BytesMut) {
        if !self.done {
            self.final_line(out);
        }
    }

    /// A whole OpenAI answer as Ollama's.
    fn whole(&mut self, answer: &Value) -> Value {
        self.usage(answer);
        self.first_token.get_or_insert(self.started);
        let mut out = self.head();
        match self.endpoint {
            Endpoint::Chat | Endpoint::Generate => {
                let choice = &answer["choices"][0];
                self.finish = choice["finish_reason"].as_str().map(str::to_string);
                if self.endpoint == Endpoint::Chat {
                    let m = &choice["message"];
                    out["message"] = json!({ "role": "assistant", "content": m["content"].as_str().unwrap_or("") });
                    if let Some(t) = m["reasoning_content"].as_str().or(m["reasoning"].as_str()) {
                        out["message"]["thinking"] = t.into();
                    }
                    let calls: Vec<Value> = m["tool_calls"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|c| {
                            let f = &c["function"];
                            tool_call(f["name"].as_str().unwrap_or(""), f["arguments"].as_str().unwrap_or("{}"))
                        })
                        .collect();
                    if !calls.is_empty() {
                        out["message"]["tool_calls"] = calls.into();
                    }
                } else {
                    out["response"] = choice["text"].as_str().unwrap_or("").into();
                }
                out["done"] = true.into();
                out["done_reason"] = self.done_reason().into();
                self.stats(&mut out);
                out
            }
            Endpoint::Embed | Endpoint::Embeddings => {
                let mut data: Vec<&Value> = answer["data"].as_array().into_iter().flatten().collect();
                data.sort_by_key(|d| d["index"].as_u64().unwrap_or(0));
                let vectors: Vec<Value> = data.iter().map(|d| d["embedding"].clone()).collect();
                if self.endpoint == Endpoint::Embeddings {
                    return json!({ "embedding": vectors.into_iter().next().unwrap_or(json!([])) });
                }
                out["embeddings"] = vectors.into();
                out.as_object_mut().expect("an object").remove("created_at");
                let ns = self.started.elapsed().as_nanos() as u64;
                out["total_duration"] = ns.into();
                out["load_duration"] = 0.into();
                out["prompt_eval_count"] = self.prompt_tokens.unwrap_or(0).into();
                out
            }
        }
    }

    fn error(&self, message: String) -> Value {
        json!({ "error": message })
    }
}

/// An OpenAI tool call as Ollama's: `arguments` an object.
fn tool_call(name: &str, args: &str) -> Value {
    let arguments = serde_json::from_str::<Value>(args).unwrap_or_else(|_| json!({}));
    json!({ "function": { "name": name, "arguments": arguments } })
}

fn push_line(out: &mut BytesMut, line: &Value) {
    out.extend_from_slice(&serde_json::to_vec(line).expect("json values serialise"));
    out.extend_from_slice(b"\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    fn translated(endpoint: Endpoint, v: Value) -> Value {
        let t = request(endpoint, &body(v), "smol").unwrap();
        serde_json::from_slice(&t.body).unwrap()
    }

    #[test]
    fn chat_requests_map_options_images_tools_and_format() {
        let out = translated(
            Endpoint::Chat,
            json!({ "model": "team", "format": "json", "keep_alive": "5m",
                    "messages": [
                        { "role": "user", "content": "what is this?", "images": ["iVBORw0KGgo="] },
                        { "role": "assistant", "content": "", "tool_calls": [{ "function": { "name": "f", "arguments": { "a": 1 } } }] },
                        { "role": "tool", "content": "42", "tool_name": "f" }],
                    "tools": [{ "type": "function", "function": { "name": "f", "parameters": {} } }],
                    "options": { "temperature": 0.2, "num_predict": 8, "stop": ["\n"], "seed": 7, "num_ctx": 4096 } }),
        );
        assert_eq!(out["model"], "smol");
        assert_eq!(
            (out["stream"].as_bool(), out["stream_options"]["include_usage"].as_bool()),
            (Some(true), Some(true))
        );
        assert_eq!(
            (out["temperature"].as_f64(), out["max_tokens"].as_i64(), out["seed"].as_i64()),
            (Some(0.2), Some(8), Some(7))
        );
        assert_eq!(out["stop"], json!(["\n"]));
        assert!(out.get("num_ctx").is_none() && out.get("keep_alive").is_none() && out.get("options").is_none());
        assert_eq!(out["response_format"], json!({ "type": "json_object" }));
        let parts = &out["messages"][0]["content"];
        assert_eq!(parts[1]["image_url"]["url"], "data:image/png;base64,iVBORw0KGgo=");
        assert_eq!(out["messages"][1]["tool_calls"][0]["function"]["arguments"], "{\"a\":1}");
        assert_eq!(out["messages"][2]["tool_call_id"], "f");
        assert_eq!(out["tools"][0]["function"]["name"], "f");
        let schema =
            translated(Endpoint::Chat, json!({ "messages": [], "stream": false, "format": { "type": "object" } }));
        assert_eq!(schema["response_format"]["json_schema"]["schema"], json!({ "type": "object" }));
        assert_eq!(schema["stream"], false);
    }

    #[test]
    fn generate_and_embeddings_requests() {
        let g = translated(Endpoint::Generate, json!({ "prompt": "hi", "system": "be brief", "stream": false }));
        assert_eq!((g["prompt"].as_str(), g["stream"].as_bool()), (Some("be brief\n\nhi"), Some(false)));
        let e = request(Endpoint::Generate, &body(json!({ "prompt": "x", "images": ["abc"] })), "smol").unwrap_err();
        let e = e.to_string();
        assert!(e.contains("\"images\"") && e.contains("/api/chat"), "{e}");
        assert_eq!(translated(Endpoint::Embed, json!({ "input": ["a", "b"] }))["input"], json!(["a", "b"]));
        assert_eq!(translated(Endpoint::Embeddings, json!({ "prompt": "a" }))["input"], "a");
        assert!(translated(Endpoint::Embed, json!({ "input": "a" })).get("stream").is_none());
    }

    #[test]
    fn untranslatable_requests_say_why_with_their_cause() {
        use std::error::Error;
        let e = request(Endpoint::Chat, b"[1]", "smol").unwrap_err();
        let cause = serde_json::from_slice::<Map<String, Value>>(b"[1]").unwrap_err().to_string();
        assert_eq!(e.to_string(), format!("the body is not a JSON object: {cause}"));
        assert_eq!(e.source().map(ToString::to_string), Some(cause));
        let e = request(Endpoint::Chat, &body(json!({ "messages": [1] })), "smol").unwrap_err();
        assert_eq!(e.to_string(), "every message must be an object");
        let e = request(Endpoint::Chat, &body(json!({ "messages": [], "format": 7 })), "smol").unwrap_err();
        assert_eq!(e.to_string(), "format 7: expected \"json\" or a JSON schema");
        let e = request(Endpoint::Generate, &body(json!({ "suffix": "x" })), "smol").unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"suffix\" on /api/generate cannot be sent to an OpenAI-compatible server; use /api/chat"
        );
        let api = ApiError::from(e);
        assert_eq!((api.status, api.code), (400, "cannot_translate"));
    }

    fn feed_all(a: &mut impl Translating, chunks: &[&str]) -> Vec<Value> {
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            out.extend_from_slice(&a.feed(Some(&Bytes::copy_from_slice(c.as_bytes())), i == chunks.len() - 1));
        }
        String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn a_stream_becomes_ndjson_line_by_line_with_a_final_object() {
        let mut a = Answer::new(Endpoint::Chat, true, true, "team", Instant::now());
        let lines = feed_all(
            &mut a,
            &[
                "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"}}]}\n\ndata: {\"choi",
                "ces\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":null}]}\n\n",
                "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\"\"}}]}}]}\n\n",
                "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\":1}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n",
                "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n",
            ],
        );
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!((lines[0]["message"]["content"].as_str(), lines[0]["model"].as_str()), (Some("Hel"), Some("team")));
        assert_eq!(lines[1]["done"], false);
        let last = &lines[2];
        assert_eq!((last["done"].as_bool(), last["done_reason"].as_str()), (Some(true), Some("stop")));
        assert_eq!((last["prompt_eval_count"].as_u64(), last["eval_count"].as_u64()), (Some(9), Some(3)));
        assert!(last["total_duration"].as_u64().is_some() && last["eval_duration"].as_u64().is_some());
        assert_eq!(last["message"]["tool_calls"][0], json!({ "function": { "name": "f", "arguments": { "a": 1 } } }));
        assert_eq!(a.content_type(), "application/x-ndjson");
    }

    #[test]
    fn whole_answers_embeddings_and_errors() {
        let mut a = Answer::new(Endpoint::Chat, false, true, "team", Instant::now());
        let whole = "{\"choices\":[{\"message\":{\"role\":\"assistant\",\"content\":\"hi\",\"reasoning_content\":\"hmm\"},\"finish_reason\":\"length\"}],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2}}";
        let out = feed_all(&mut a, &[&whole[..20], &whole[20..]]);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0]["message"]["content"].as_str(), out[0]["message"]["thinking"].as_str()),
            (Some("hi"), Some("hmm"))
        );
        assert_eq!((out[0]["done_reason"].as_str(), out[0]["eval_count"].as_u64()), (Some("length"), Some(2)));

        let mut e = Answer::new(Endpoint::Embed, false, true, "emb", Instant::now());
        let out = feed_all(&mut e, &["{\"data\":[{\"index\":1,\"embedding\":[2.0]},{\"index\":0,\"embedding\":[1.0]}],\"usage\":{\"prompt_tokens\":3}}"]);
        assert_eq!(out[0]["embeddings"], json!([[1.0], [2.0]]), "in input order");
        assert_eq!(out[0]["prompt_eval_count"], 3);
        let mut e = Answer::new(Endpoint::Embeddings, false, true, "emb", Instant::now());
        assert_eq!(
            feed_all(&mut e, &["{\"data\":[{\"index\":0,\"embedding\":[1.0]}]}"])[0],
            json!({ "embedding": [1.0] })
        );

        let mut bad = Answer::new(Endpoint::Chat, true, false, "team", Instant::now());
        let out =
            feed_all(&mut bad, &["{\"error\":{\"message\":\"context too long\",\"type\":\"invalid_request_error\"}}"]);
        assert_eq!(out[0], json!({ "error": "context too long" }));
        assert_eq!(bad.content_type(), "application/json; charset=utf-8");
    }
}
