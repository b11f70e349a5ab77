//! Stream resumption: what a client has received of a stream, the request that asks another server to continue it, and the continuation spliced into the same stream.
//!
//! Everything here works on the client's own format (after any translation), so the server
//! that continues may be of another kind than the one that broke off. A stream is passed
//! on record by record (an NDJSON line, an SSE event): an unfinished record is held back
//! until its end arrives, so that a break leaves the client at a record's end, where the
//! continuation can follow.

use bytes::Bytes;
use serde_json::{json, Value};

use super::api::Call;

/// A streamed answer drover can continue on another server, by the client's endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    OllamaChat,
    OllamaGenerate,
    OpenAiChat,
    OpenAiCompletion,
    /// Anthropic's Messages.
    Messages,
    /// OpenAI's Responses API.
    Responses,
}

impl Format {
    /// The resumable format of a client's call; `None` for the rest.
    pub(crate) fn of_call(call: Call) -> Option<Format> {
        match call {
            Call::Chat => Some(Format::OllamaChat),
            Call::Generate => Some(Format::OllamaGenerate),
            Call::ChatCompletions => Some(Format::OpenAiChat),
            Call::Completions => Some(Format::OpenAiCompletion),
            Call::Messages => Some(Format::Messages),
            Call::Responses => Some(Format::Responses),
            _ => None,
        }
    }

    fn sse(self) -> bool {
        !matches!(self, Format::OllamaChat | Format::OllamaGenerate)
    }
}

/// A record longer than this is passed on unfinished, and its stream can no longer resume.
const MAX_HELD: usize = 1 << 20;
/// Records kept raw before they are read into `SoFar`: reading costs a parse, keeping costs
/// memory for every open stream (the text alone is a twentieth of an NDJSON stream).
const FOLD_AT: usize = 16 << 10;

/// What the client has received of an answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct SoFar {
    /// The answer's text (thinking and tool calls left out).
    pub(crate) text: String,
    /// Records that carried generated text or thinking: one token each, as servers stream them.
    pub(crate) tokens: u64,
    /// The stream's id (OpenAI's chunks, the Responses API's response), kept by the continuation.
    id: Option<String>,
    /// Anthropic's last content block.
    block: Option<Block>,
    /// The Responses API's last output item, and its last sequence number.
    item: Option<Item>,
    sequence: u64,
    /// Records read.
    records: u64,
    /// The answer's end was among them (Ollama's `done`, a `finish_reason`, `message_stop`):
    /// there is nothing left to continue.
    complete: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct Item {
    index: u64,
    id: String,
    open: bool,
    message: bool,
    /// Its content part was announced.
    part: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Block {
    index: u64,
    open: bool,
    text: bool,
}

impl SoFar {
    /// Reads one record's JSON.
    fn read(&mut self, format: Format, v: &Value) {
        self.records += 1;
        self.complete |= match format {
            Format::OllamaChat | Format::OllamaGenerate => v["done"] == true,
            Format::OpenAiChat | Format::OpenAiCompletion => {
                v["choices"].as_array().is_some_and(|c| c.iter().any(|c| !c["finish_reason"].is_null()))
            }
            Format::Messages => v["type"] == "message_stop" || !v["delta"]["stop_reason"].is_null(),
            Format::Responses => {
                matches!(v["type"].as_str(), Some("response.completed" | "response.incomplete" | "response.failed"))
            }
        };
        let counted = |text: Option<&str>, other: Option<&str>, so_far: &mut SoFar| {
            let text = text.unwrap_or("");
            so_far.text.push_str(text);
            if !text.is_empty() || other.is_some_and(|t| !t.is_empty()) {
                so_far.tokens += 1;
            }
        };
        match format {
            Format::OllamaChat if v["done"] != true => {
                let m = &v["message"];
                counted(m["content"].as_str(), m["thinking"].as_str(), self);
            }
            Format::OllamaGenerate if v["done"] != true => {
                counted(v["response"].as_str(), v["thinking"].as_str(), self);
            }
            Format::OpenAiChat | Format::OpenAiCompletion => {
                if let Some(id) = v["id"].as_str().filter(|_| self.id.is_none()) {
                    self.id = Some(id.to_string());
                }
                let choice = &v["choices"][0];
                if format == Format::OpenAiChat {
                    let d = &choice["delta"];
                    let reasoning = d["reasoning_content"].as_str().or(d["reasoning"].as_str());
                    counted(d["content"].as_str(), reasoning, self);
                } else {
                    counted(choice["text"].as_str(), None, self);
                }
            }
            Format::Responses => {
                self.sequence = v["sequence_number"].as_u64().unwrap_or(self.sequence);
                match v["type"].as_str().unwrap_or("") {
                    "response.created" => self.id = v["response"]["id"].as_str().map(str::to_string),
                    "response.output_item.added" => {
                        self.item = Some(Item {
                            index: v["output_index"].as_u64().unwrap_or(0),
                            id: v["item"]["id"].as_str().unwrap_or("").to_string(),
                            open: true,
                            message: v["item"]["type"] == "message",
                            part: false,
                        })
                    }
                    "response.content_part.added" => {
                        if let Some(i) = self.item.as_mut() {
                            i.part = true;
                        }
                    }
                    "response.output_item.done" => {
                        if let Some(i) = self.item.as_mut() {
                            i.open = false;
                        }
                    }
                    "response.output_text.delta" => counted(v["delta"].as_str(), None, self),
                    t if t.starts_with("response.reasoning") && t.ends_with(".delta") => {
                        counted(None, v["delta"].as_str(), self)
                    }
                    _ => {}
                }
            }
            Format::Messages => match v["type"].as_str() {
                Some("content_block_start") => {
                    let index = v["index"].as_u64().unwrap_or(0);
                    let text = v["content_block"]["type"] == "text";
                    self.block = Some(Block { index, open: true, text });
                }
                Some("content_block_delta") => {
                    let d = &v["delta"];
                    counted(d["text"].as_str(), d["thinking"].as_str().or(d["partial_json"].as_str()), self);
                }
                Some("content_block_stop") => {
                    if let Some(b) = self.block.as_mut() {
                        b.open = false;
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }
}

/// A streamed answer on its way to the client, record by record.
pub(crate) struct Stream {
    format: Format,
    /// An unfinished record, held back until its end arrives.
    pending: Vec<u8>,
    /// Whole records sent since they were last read into `so_far`.
    sent: Vec<u8>,
    so_far: SoFar,
    /// Set once the answer continues on another server.
    splice: Option<Splice>,
    /// False once a record too long to hold was passed on unfinished.
    aligned: bool,
}

/// How a continuation's records are fitted to what the client already has.
#[derive(Debug)]
struct Splice {
    /// Tokens sent before the continuation began, added to its final counts.
    tokens_before: u64,
    id: Option<String>,
    /// Added to the continuation's content block indexes (Anthropic).
    offset: u64,
    /// The continuation's first text block continues the client's open one.
    merge_first: bool,
    /// An open block of another kind, closed before the continuation's first block.
    close: Option<u64>,
    /// The continuation's first record is still to come.
    first: bool,
    /// The Responses API: the client's open message item (its id), the text it holds so far
    /// (the continuation's closing events repeat their text whole), the continuation's own
    /// id for that item once it is announced, and the sequence number reached.
    item_id: Option<String>,
    prefix: String,
    joining: Option<String>,
    sequence: u64,
    /// The client's open message item had its content part announced already.
    part: bool,
}

impl Stream {
    pub(crate) fn new(format: Format) -> Stream {
        Stream { format, pending: Vec::new(), sent: Vec::new(), so_far: SoFar::default(), splice: None, aligned: true }
    }

    /// The chunk as the client must get it: whole records only (`None` while a record is
    /// unfinished), fitted to the earlier part when this is a continuation.
    pub(crate) fn feed(&mut self, chunk: Option<&Bytes>, end: bool) -> Option<Bytes> {
        let data: &[u8] = chunk.map_or(&[], |c| c);
        if self.pending.is_empty() && self.splice.is_none() && !data.is_empty() && (end || self.ends_record(data)) {
            // The common case: a chunk of whole records, passed as it is.
            self.keep(data);
            return chunk.cloned();
        }
        self.pending.extend_from_slice(data);
        let mut cut = if end { self.pending.len() } else { records_end(&self.pending, self.format.sse()) };
        if cut == 0 && self.pending.len() > MAX_HELD {
            self.aligned = false;
            cut = self.pending.len();
        }
        let whole: Vec<u8> = self.pending.drain(..cut).collect();
        let out = if self.splice.is_some() { self.fit(&whole) } else { whole };
        self.keep(&out);
        (!out.is_empty()).then(|| Bytes::from(out))
    }

    fn ends_record(&self, data: &[u8]) -> bool {
        if self.format.sse() {
            data.ends_with(b"\n\n") || data.ends_with(b"\r\n\r\n")
        } else {
            data.ends_with(b"\n")
        }
    }

    fn keep(&mut self, data: &[u8]) {
        self.sent.extend_from_slice(data);
        if self.sent.len() > FOLD_AT {
            self.fold();
        }
    }

    /// Reads the records sent since the last fold into `so_far`.
    fn fold(&mut self) {
        let sent = std::mem::take(&mut self.sent);
        for payload in payloads(&sent, self.format.sse()) {
            if let Ok(v) = serde_json::from_slice::<Value>(payload) {
                self.so_far.read(self.format, &v);
            }
        }
        self.sent = sent;
        self.sent.clear();
    }

    /// The server broke off: what the client has (the unfinished record it never got is
    /// dropped), or `None` when the stream cannot be continued cleanly.
    pub(crate) fn broken(&mut self) -> Option<&SoFar> {
        self.pending.clear();
        if !self.aligned {
            return None;
        }
        self.fold();
        (!self.so_far.complete).then_some(&self.so_far)
    }

    /// What follows comes from another server continuing the answer.
    pub(crate) fn continue_elsewhere(&mut self) {
        if self.so_far.records == 0 {
            // Nothing reached the client but the header: the continuation is the whole answer.
            self.splice = None;
            return;
        }
        let (offset, merge_first, close) = match (&self.so_far.block, &self.so_far.item) {
            (Some(Block { index, open: true, text: true }), _) => (*index, true, None),
            (Some(Block { index, open: true, text: false }), _) => (index + 1, false, Some(*index)),
            (Some(Block { index, open: false, .. }), _) => (index + 1, false, None),
            (None, Some(Item { index, open: true, message: true, .. })) => (*index, true, None),
            (None, Some(Item { index, .. })) => (index + 1, false, None),
            (None, None) => (0, false, None),
        };
        let item_id = self.so_far.item.as_ref().filter(|_| merge_first).map(|i| i.id.clone());
        self.splice = Some(Splice {
            tokens_before: self.so_far.tokens,
            id: self.so_far.id.clone(),
            offset,
            merge_first,
            close,
            first: true,
            prefix: if item_id.is_some() { self.so_far.text.clone() } else { String::new() },
            item_id,
            joining: None,
            sequence: self.so_far.sequence,
            part: self.so_far.item.as_ref().is_some_and(|i| i.part),
        });
    }

    /// A continuation's whole records, fitted to what the client already has.
    fn fit(&mut self, whole: &[u8]) -> Vec<u8> {
        let Some(splice) = self.splice.as_mut() else { return whole.to_vec() };
        let mut out = Vec::with_capacity(whole.len() + 64);
        for record in records(whole, self.format.sse()) {
            splice.record(self.format, record, &mut out);
        }
        out
    }
}

impl Splice {
    fn record(&mut self, format: Format, record: &[u8], out: &mut Vec<u8>) {
        let first = std::mem::replace(&mut self.first, false);
        let payload = payloads(record, format.sse()).next();
        let Some(mut v) = payload.and_then(|p| serde_json::from_slice::<Value>(p).ok()) else {
            // Comments, keep-alives, `[DONE]`: as they are.
            out.extend_from_slice(record);
            return;
        };
        let before = self.tokens_before;
        match format {
            Format::OllamaChat | Format::OllamaGenerate => {
                if v["done"] != true {
                    out.extend_from_slice(record);
                    return;
                }
                add(&mut v["eval_count"], before);
                out.extend_from_slice(format!("{v}\n").as_bytes());
            }
            Format::OpenAiChat | Format::OpenAiCompletion => {
                let delta = &v["choices"][0]["delta"];
                let opening = format == Format::OpenAiChat
                    && delta.get("role").is_some()
                    && delta["content"].as_str().is_none_or(str::is_empty)
                    && delta.get("tool_calls").is_none()
                    && v["choices"][0]["finish_reason"].is_null();
                if first && opening {
                    // The continuation's role announcement: the client had its own.
                    return;
                }
                if let Some(id) = &self.id {
                    v["id"] = json!(id);
                }
                if v["usage"].is_object() {
                    add(&mut v["usage"]["completion_tokens"], before);
                    add(&mut v["usage"]["total_tokens"], before);
                }
                out.extend_from_slice(format!("data: {v}\n\n").as_bytes());
            }
            Format::Messages => {
                let kind = v["type"].as_str().unwrap_or("").to_string();
                match kind.as_str() {
                    "message_start" | "ping" => return,
                    "content_block_start" => {
                        if let Some(index) = self.close.take() {
                            let stop = json!({ "type": "content_block_stop", "index": index });
                            out.extend_from_slice(format!("event: content_block_stop\ndata: {stop}\n\n").as_bytes());
                        }
                        let merge = std::mem::replace(&mut self.merge_first, false);
                        if merge && v["index"] == 0 && v["content_block"]["type"] == "text" {
                            return;
                        }
                        shift(&mut v["index"], self.offset);
                    }
                    "content_block_delta" | "content_block_stop" => shift(&mut v["index"], self.offset),
                    "message_delta" => add(&mut v["usage"]["output_tokens"], before),
                    _ => {}
                }
                out.extend_from_slice(format!("event: {kind}\ndata: {v}\n\n").as_bytes());
            }
            Format::Responses => self.responses_event(v, before, out),
        }
    }

    /// A continuation's Responses API event: its opening events dropped, its message joined to
    /// the client's open one (same id, the closing events' text whole), indexes, ids and
    /// sequence numbers following on, the final usage counting both parts.
    fn responses_event(&mut self, mut v: Value, before: u64, out: &mut Vec<u8>) {
        let kind = v["type"].as_str().unwrap_or("").to_string();
        let is_message_start = v["item"]["type"] == "message" && v["output_index"] == 0;
        match kind.as_str() {
            "response.created" | "response.in_progress" => return,
            "response.output_item.added" if std::mem::replace(&mut self.merge_first, false) && is_message_start => {
                self.joining = v["item"]["id"].as_str().map(str::to_string);
                return;
            }
            "response.content_part.added" if self.part && self.joins(&v) => return,
            _ => {}
        }
        let joined = self.joins(&v);
        if let Some(i) = v["output_index"].as_u64() {
            v["output_index"] = json!(i + self.offset);
        }
        if let (true, Some(id)) = (joined, &self.item_id) {
            if v.get("item_id").is_some() {
                v["item_id"] = json!(id);
            }
            match kind.as_str() {
                "response.output_text.done" => prefix(&mut v["text"], &self.prefix),
                "response.content_part.done" => prefix(&mut v["part"]["text"], &self.prefix),
                "response.output_item.done" => {
                    v["item"]["id"] = json!(id);
                    prefix(&mut v["item"]["content"][0]["text"], &self.prefix);
                }
                _ => {}
            }
        }
        if matches!(kind.as_str(), "response.completed" | "response.incomplete" | "response.failed") {
            let r = &mut v["response"];
            if let Some(id) = &self.id {
                r["id"] = json!(id);
            }
            for item in r["output"].as_array_mut().into_iter().flatten() {
                if self.joining.is_some() && item["id"].as_str() == self.joining.as_deref() {
                    item["id"] = json!(self.item_id.clone().unwrap_or_default());
                    prefix(&mut item["content"][0]["text"], &self.prefix);
                }
            }
            add(&mut r["usage"]["output_tokens"], before);
            add(&mut r["usage"]["total_tokens"], before);
        }
        if v.get("sequence_number").is_some() {
            self.sequence += 1;
            v["sequence_number"] = json!(self.sequence);
        }
        out.extend_from_slice(format!("event: {kind}\ndata: {v}\n\n").as_bytes());
    }

    /// Whether a Responses API event belongs to the continuation's message that joins the client's.
    fn joins(&self, v: &Value) -> bool {
        let Some(joining) = self.joining.as_deref() else { return false };
        v["item_id"].as_str() == Some(joining) || v["item"]["id"].as_str() == Some(joining)
    }
}

fn prefix(text: &mut Value, with: &str) {
    if let Some(t) = text.as_str() {
        *text = json!(format!("{with}{t}"));
    }
}

fn add(n: &mut Value, by: u64) {
    if let Some(x) = n.as_u64() {
        *n = json!(x + by);
    }
}

fn shift(index: &mut Value, by: u64) {
    *index = json!(index.as_u64().unwrap_or(0) + by);
}

/// The end of the last whole record in `buf` (0 when there is none): a line of NDJSON, an
/// SSE event (ended by a blank line).
fn records_end(buf: &[u8], sse: bool) -> usize {
    let mut i = buf.len();
    while i > 0 {
        i -= 1;
        if buf[i] != b'\n' {
            continue;
        }
        if !sse || buf[..i].ends_with(b"\n") || buf[..i].ends_with(b"\n\r") {
            return i + 1;
        }
    }
    0
}

/// The records of `buf`, each with its terminator.
fn records(buf: &[u8], sse: bool) -> impl Iterator<Item = &[u8]> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = match records_end_first(rest, sse) {
            0 => rest.len(),
            n => n,
        };
        let (record, tail) = rest.split_at(end);
        rest = tail;
        Some(record)
    })
}

/// The end of the first whole record in `buf` (0 when there is none).
fn records_end_first(buf: &[u8], sse: bool) -> usize {
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' && (!sse || buf[..i].ends_with(b"\n") || buf[..i].ends_with(b"\n\r")) {
            return i + 1;
        }
    }
    0
}

/// The JSON payloads of `buf`: every NDJSON line, every SSE `data:` line.
fn payloads(buf: &[u8], sse: bool) -> impl Iterator<Item = &[u8]> {
    buf.split(|&b| b == b'\n').filter_map(move |line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let json = if sse { line.strip_prefix(b"data:")?.trim_ascii_start() } else { line };
        (!json.is_empty() && json[0] == b'{').then_some(json)
    })
}

/// Why a broken stream's request cannot be made into a continuation.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ContinuationError {
    #[error("the request is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("the request has no messages")]
    NoMessages,
    #[error("the request has no input to continue")]
    NoInput,
    #[error("the request has no prompt to continue")]
    NoPrompt,
    #[error("{0}")]
    Serialize(#[source] serde_json::Error),
}

/// The request that asks a server to continue an answer: the client's request with the text
/// so far as the assistant's message to be continued (chat APIs), or appended to the prompt
/// (completion APIs). With no text yet, the request as it was.
pub(crate) fn request(format: Format, body: &Bytes, so_far: &SoFar) -> Result<Bytes, ContinuationError> {
    if so_far.text.is_empty() {
        return Ok(body.clone());
    }
    let mut v: Value = serde_json::from_slice(body).map_err(ContinuationError::NotJson)?;
    let text = so_far.text.as_str();
    match format {
        Format::OllamaChat | Format::OpenAiChat | Format::Messages => {
            let messages = v["messages"].as_array_mut().ok_or(ContinuationError::NoMessages)?;
            match messages.last_mut() {
                // The client's own prefill, continued further.
                Some(last) if last["role"] == "assistant" && last["content"].is_string() => {
                    let content = format!("{}{text}", last["content"].as_str().unwrap_or(""));
                    last["content"] = json!(content);
                }
                _ => messages.push(json!({ "role": "assistant", "content": text })),
            }
        }
        Format::Responses => {
            let message = json!({ "role": "assistant", "content": text });
            match v["input"].take() {
                Value::String(said) => v["input"] = json!([{ "role": "user", "content": said }, message]),
                Value::Array(mut items) => {
                    items.push(message);
                    v["input"] = Value::Array(items);
                }
                _ => return Err(ContinuationError::NoInput),
            }
        }
        Format::OllamaGenerate | Format::OpenAiCompletion => {
            let prompt = v["prompt"].as_str().ok_or(ContinuationError::NoPrompt)?;
            v["prompt"] = json!(format!("{prompt}{text}"));
        }
    }
    serde_json::to_vec(&v).map(Bytes::from).map_err(ContinuationError::Serialize)
}

/// The fields vLLM needs to continue a final assistant message rather than answer it.
pub(crate) fn for_vllm(body: &Bytes) -> Option<Bytes> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let last_is_assistant = v["messages"].as_array()?.last().is_some_and(|m| m["role"] == "assistant");
    if !last_is_assistant {
        return None;
    }
    v["continue_final_message"] = json!(true);
    v["add_generation_prompt"] = json!(false);
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(s: &mut Stream, chunks: &[&str]) -> String {
        let mut out = String::new();
        for (i, c) in chunks.iter().enumerate() {
            let b = Bytes::from(c.to_string());
            if let Some(o) = s.feed(Some(&b), i + 1 == chunks.len() && c.is_empty()) {
                out.push_str(std::str::from_utf8(&o).unwrap());
            }
        }
        out
    }

    #[test]
    fn unfinished_records_are_held_back_and_dropped_at_a_break() {
        let mut s = Stream::new(Format::OllamaChat);
        let line =
            |t: &str| format!("{}\n", json!({ "message": { "role": "assistant", "content": t }, "done": false }));
        let (a, b) = (line("Hel"), line("lo"));
        let out = feed_all(&mut s, &[&a, &b[..5]]);
        assert_eq!(out, a, "the half line waits");
        let so_far = s.broken().unwrap();
        assert_eq!((so_far.text.as_str(), so_far.tokens), ("Hel", 1));
        let mut s = Stream::new(Format::OpenAiChat);
        let e = "data: {\"id\":\"x\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n";
        assert_eq!(feed_all(&mut s, &[e]), "", "an SSE event ends at a blank line");
        assert_eq!(feed_all(&mut s, &["\n"]), format!("{e}\n"));
    }

    #[test]
    fn an_ollama_continuation_adds_its_tokens_to_the_final_counts() {
        let mut s = Stream::new(Format::OllamaGenerate);
        let piece = |t: &str| format!("{}\n", json!({ "response": t, "done": false }));
        feed_all(&mut s, &[&piece("one "), &piece("two ")]);
        let so_far = s.broken().unwrap().clone();
        assert_eq!((so_far.text.as_str(), so_far.tokens), ("one two ", 2));
        let body = Bytes::from(json!({ "model": "m", "prompt": "count: " }).to_string());
        let asked: Value = serde_json::from_slice(&request(Format::OllamaGenerate, &body, &so_far).unwrap()).unwrap();
        assert_eq!(asked["prompt"], "count: one two ");
        s.continue_elsewhere();
        let done = format!("{}\n", json!({ "response": "", "done": true, "eval_count": 3, "prompt_eval_count": 9 }));
        let out = feed_all(&mut s, &[&piece("three"), &done]);
        let last: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        assert_eq!((last["eval_count"].as_u64(), last["prompt_eval_count"].as_u64()), (Some(5), Some(9)));
        assert!(out.starts_with(&piece("three")));
    }

    #[test]
    fn an_openai_continuation_keeps_the_stream_id_and_drops_its_role_chunk() {
        let mut s = Stream::new(Format::OpenAiChat);
        let chunk = |id: &str, delta: Value| {
            format!(
                "data: {}\n\n",
                json!({ "id": id, "choices": [{ "index": 0, "delta": delta, "finish_reason": null }] })
            )
        };
        feed_all(
            &mut s,
            &[&chunk("a", json!({ "role": "assistant", "content": "" })), &chunk("a", json!({ "content": "Hi" }))],
        );
        let so_far = s.broken().unwrap().clone();
        let body = Bytes::from(json!({ "model": "m", "messages": [{ "role": "user", "content": "hi" }] }).to_string());
        let asked: Value = serde_json::from_slice(&request(Format::OpenAiChat, &body, &so_far).unwrap()).unwrap();
        assert_eq!(asked["messages"][1], json!({ "role": "assistant", "content": "Hi" }));
        s.continue_elsewhere();
        let usage = format!(
            "data: {}\n\n",
            json!({ "id": "b", "choices": [], "usage": { "prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6 } })
        );
        let out = feed_all(
            &mut s,
            &[
                &chunk("b", json!({ "role": "assistant", "content": "" })),
                &chunk("b", json!({ "content": " there" })),
                &usage,
                "data: [DONE]\n\n",
            ],
        );
        let events: Vec<&str> = out.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 3, "{out}");
        let first: Value = serde_json::from_str(&events[0][6..]).unwrap();
        assert_eq!(
            (first["id"].as_str(), first["choices"][0]["delta"]["content"].as_str()),
            (Some("a"), Some(" there"))
        );
        let usage: Value = serde_json::from_str(&events[1][6..]).unwrap();
        assert_eq!(usage["usage"], json!({ "prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7 }));
        assert_eq!(events[2], "data: [DONE]");
    }

    #[test]
    fn a_messages_continuation_merges_into_the_open_text_block() {
        let mut s = Stream::new(Format::Messages);
        let ev = |v: Value| format!("event: {}\ndata: {v}\n\n", v["type"].as_str().unwrap());
        let start = ev(json!({ "type": "message_start", "message": { "id": "msg_a" } }));
        let block = |i: u64, kind: &str| {
            ev(json!({ "type": "content_block_start", "index": i, "content_block": { "type": kind } }))
        };
        let delta = |i: u64, t: &str| {
            ev(json!({ "type": "content_block_delta", "index": i, "delta": { "type": "text_delta", "text": t } }))
        };
        feed_all(
            &mut s,
            &[
                &start,
                &block(0, "thinking"),
                &ev(json!({ "type": "content_block_stop", "index": 0 })),
                &block(1, "text"),
                &delta(1, "Hel"),
            ],
        );
        let so_far = s.broken().unwrap().clone();
        assert_eq!(so_far.text, "Hel");
        s.continue_elsewhere();
        let end = ev(
            json!({ "type": "message_delta", "delta": { "stop_reason": "end_turn" }, "usage": { "output_tokens": 2 } }),
        );
        let out = feed_all(
            &mut s,
            &[
                &start,
                &block(0, "text"),
                &delta(0, "lo"),
                &ev(json!({ "type": "content_block_stop", "index": 0 })),
                &end,
            ],
        );
        let events: Vec<Value> = out
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| serde_json::from_str(e.split_once("data: ").unwrap().1).unwrap())
            .collect();
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["content_block_delta", "content_block_stop", "message_delta"]);
        assert_eq!((events[0]["index"].as_u64(), events[1]["index"].as_u64()), (Some(1), Some(1)));
        assert_eq!(events[2]["usage"]["output_tokens"], 3);
    }

    #[test]
    fn a_finished_answer_is_not_continued_and_an_empty_one_is_asked_again_whole() {
        let mut s = Stream::new(Format::OllamaChat);
        let done = format!("{}\n", json!({ "message": { "content": "" }, "done": true, "eval_count": 1 }));
        feed_all(&mut s, &[&done]);
        assert!(s.broken().is_none(), "its final object arrived: nothing to continue");
        let mut s = Stream::new(Format::OpenAiChat);
        assert_eq!(s.broken().map(|f| f.text.clone()), Some(String::new()));
        s.continue_elsewhere();
        let role = "data: {\"id\":\"b\",\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n";
        assert_eq!(feed_all(&mut s, &[role]), role, "the continuation's opening is the client's only one: kept");
    }

    #[test]
    fn a_clients_own_prefill_is_continued_and_vllm_is_told_to_continue() {
        let body = Bytes::from(
            json!({ "model": "m", "messages": [{ "role": "user", "content": "hi" }, { "role": "assistant", "content": "Sure: " }] })
                .to_string(),
        );
        let so_far = SoFar { text: "one".into(), tokens: 1, records: 1, ..SoFar::default() };
        let asked = request(Format::OpenAiChat, &body, &so_far).unwrap();
        let v: Value = serde_json::from_slice(&asked).unwrap();
        assert_eq!(
            (v["messages"].as_array().unwrap().len(), v["messages"][1]["content"].as_str()),
            (2, Some("Sure: one"))
        );
        let vllm: Value = serde_json::from_slice(&for_vllm(&asked).unwrap()).unwrap();
        assert_eq!(
            (vllm["continue_final_message"].as_bool(), vllm["add_generation_prompt"].as_bool()),
            (Some(true), Some(false))
        );
        assert_eq!(
            request(Format::OllamaChat, &body, &SoFar::default()).unwrap(),
            body,
            "nothing received: asked again as it was"
        );
    }
}
