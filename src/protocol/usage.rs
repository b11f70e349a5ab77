//! What an answer says it used (tokens, load and total time), read from the bytes as they pass.
//!
//! Streams are never held back: each chunk is forwarded first and scanned after. Only the
//! last, unfinished line is kept between chunks, and only lines that can carry the figures
//! are parsed: Ollama's final `"done":true` object, or an SSE event with `"usage"`. A
//! non-streamed answer is one JSON object, parsed at the end if it is not too large.

use memchr::memmem;
use serde::Deserialize;
use serde_json::value::RawValue;

/// Lines or bodies longer than this are not scanned (an answer's figures are in short objects).
const MAX_HELD: usize = 4 * 1024 * 1024;

/// How much of the end of a whole answer over `MAX_HELD` is searched for its counts.
const TAIL_KEPT: usize = 64 * 1024;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Usage {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// Seconds Ollama spent loading the model for this request.
    pub(crate) load_seconds: Option<f64>,
    pub(crate) total_seconds: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Ndjson,
    Sse,
    Json,
    Other,
}

pub struct UsageScan {
    format: Format,
    held: Vec<u8>,
    overflow: bool,
    /// Records of a stream seen so far (NDJSON lines, SSE data lines): about one token each,
    /// what is charged for a stream that never reached the server's counts.
    records: u64,
    /// The last `TAIL_KEPT` bytes of a whole answer too large to hold: its counts come last.
    tail: Vec<u8>,
    pub(crate) usage: Usage,
}

impl UsageScan {
    pub fn new(content_type: &str) -> UsageScan {
        let ct = content_type.to_ascii_lowercase();
        let format = if ct.starts_with("application/x-ndjson") {
            Format::Ndjson
        } else if ct.starts_with("text/event-stream") {
            Format::Sse
        } else if ct.starts_with("application/json") {
            Format::Json
        } else {
            Format::Other
        };
        UsageScan { format, held: Vec::new(), overflow: false, records: 0, tail: Vec::new(), usage: Usage::default() }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        match self.format {
            Format::Other => {}
            Format::Json => self.hold(chunk),
            Format::Ndjson | Format::Sse => {
                let mut rest = chunk;
                while let Some(nl) = memchr::memchr(b'\n', rest) {
                    self.hold(&rest[..nl]);
                    let line = std::mem::take(&mut self.held);
                    if !std::mem::take(&mut self.overflow) {
                        self.line(&line);
                    }
                    rest = &rest[nl + 1..];
                }
                self.hold(rest);
            }
        }
    }

    /// Call when the answer ended; returns what it said it used.
    pub fn finish(self) -> Usage {
        self.finish_counting().0
    }

    /// What the answer said it used, and how many records it had.
    fn finish_counting(mut self) -> (Usage, u64) {
        let held = std::mem::take(&mut self.held);
        if !self.overflow && !held.is_empty() {
            match self.format {
                Format::Json => self.read(&held),
                Format::Ndjson | Format::Sse => self.line(&held),
                Format::Other => {}
            }
        }
        if self.overflow && self.format == Format::Json {
            let tail = std::mem::take(&mut self.tail);
            self.tail_counts(&tail);
        }
        (self.usage, self.records)
    }

    /// What a request is charged (the key's bucket, its usage, the metrics): what the answer
    /// said it used, and where its counts never came (a stream without usage, one cut off
    /// by a client that hung up or a server that broke off): a token a stream record that
    /// passed, and `prompt_estimate` for the prompt.
    pub(crate) fn settle(self, prompt_estimate: u64) -> Usage {
        let (mut usage, records) = self.finish_counting();
        if usage.completion_tokens.is_none() && records > 0 {
            usage.completion_tokens = Some(records);
        }
        usage.prompt_tokens = usage.prompt_tokens.or(Some(prompt_estimate));
        usage
    }

    fn hold(&mut self, bytes: &[u8]) {
        if self.overflow || self.held.len() + bytes.len() > MAX_HELD {
            if self.format == Format::Json {
                // Too large to read whole (a big batch of embeddings): its tail is kept for
                // the counts Ollama and OpenAI put at the end.
                if !self.overflow {
                    self.tail = std::mem::take(&mut self.held);
                }
                self.tail.extend_from_slice(bytes);
                if self.tail.len() > TAIL_KEPT {
                    self.tail.drain(..self.tail.len() - TAIL_KEPT);
                }
            }
            self.overflow = true;
            self.held.clear();
        } else {
            self.held.extend_from_slice(bytes);
        }
    }

    /// The counts in the end of an answer too large to parse: the last number after each
    /// field's name (Ollama's `prompt_eval_count` / `eval_count`, OpenAI's `usage`).
    fn tail_counts(&mut self, tail: &[u8]) {
        let last = |field: &[u8]| -> Option<u64> {
            let at = memmem::rfind(tail, field)? + field.len();
            let rest = tail[at..].trim_ascii_start().strip_prefix(b":")?.trim_ascii_start();
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
        };
        let u = &mut self.usage;
        u.prompt_tokens = last(b"\"prompt_eval_count\"").or(last(b"\"prompt_tokens\"")).or(last(b"\"input_tokens\""));
        u.completion_tokens = last(b"\"eval_count\"").or(last(b"\"completion_tokens\"")).or(last(b"\"output_tokens\""));
    }

    fn line(&mut self, line: &[u8]) {
        self.records += u64::from(match self.format {
            Format::Ndjson => !line.trim_ascii().is_empty(),
            Format::Sse => line.starts_with(b"data:") && line[5..].trim_ascii() != b"[DONE]",
            _ => false,
        });
        let json = match self.format {
            Format::Ndjson
                if memmem::find(line, b"\"done\":true").is_some()
                    || memmem::find(line, b"\"done\": true").is_some() =>
            {
                line
            }
            Format::Sse if memmem::find(line, b"\"usage\"").is_some() => match line.strip_prefix(b"data:") {
                Some(rest) => rest,
                None => return,
            },
            _ => return,
        };
        self.read(json);
    }

    /// Ollama's final object (counts and durations in ns) or OpenAI's `usage`.
    ///
    /// Only the few fields wanted are looked at; the rest of the object is skipped without
    /// building anything. A field of another type than expected is ignored, not an error.
    fn read(&mut self, json: &[u8]) {
        let Some(v) = Figures::of(json) else { return };
        let u = &mut self.usage;
        // `usage` at the top (OpenAI, Anthropic's message and message_delta, a Responses
        // answer), or inside Anthropic's message_start `message` / Responses' `response`.
        // Ollama's own figures are at the top: its `message` (the answer's text) is not read again.
        let ollama = v.prompt_eval_count.is_some() || v.eval_count.is_some();
        let usage = match v.usage {
            Some(top) => Some(top),
            None if ollama => None,
            None => nested(v.message).or_else(|| nested(v.response)),
        };
        if let Some(usage) = usage.and_then(OpenAiUsage::of) {
            let prompt = count(usage.prompt_tokens).or(count(usage.input_tokens));
            let completion = count(usage.completion_tokens).or(count(usage.output_tokens));
            u.prompt_tokens = prompt.or(u.prompt_tokens);
            u.completion_tokens = completion.or(u.completion_tokens);
        }
        let seconds = |raw| count(raw).map(|ns| ns as f64 / 1e9);
        u.prompt_tokens = count(v.prompt_eval_count).or(u.prompt_tokens);
        u.completion_tokens = count(v.eval_count).or(u.completion_tokens);
        u.load_seconds = seconds(v.load_duration).or(u.load_seconds);
        u.total_seconds = seconds(v.total_duration).or(u.total_seconds);
    }
}

/// The fields of an answer that carry its figures, as raw JSON (any type, checked on use;
/// `null` is absent).
struct Figures<'a> {
    usage: Option<&'a str>,
    prompt_eval_count: Option<&'a str>,
    eval_count: Option<&'a str>,
    load_duration: Option<&'a str>,
    total_duration: Option<&'a str>,
    message: Option<&'a str>,
    response: Option<&'a str>,
}

impl<'a> Figures<'a> {
    fn of(json: &'a [u8]) -> Option<Figures<'a>> {
        const KEYS: [&str; 7] =
            ["usage", "prompt_eval_count", "eval_count", "load_duration", "total_duration", "message", "response"];
        let [usage, prompt_eval_count, eval_count, load_duration, total_duration, message, response] =
            match std::str::from_utf8(json) {
                Ok(text) => raw_fields(text, KEYS, FiguresJson::fields)?,
                // Not UTF-8: serde_json reads it as before (the scan takes only text).
                Err(_) => serde_json::from_slice::<FiguresJson>(json).ok()?.fields().map(|r| r.map(RawValue::get)),
            };
        Some(Figures { usage, prompt_eval_count, eval_count, load_duration, total_duration, message, response })
    }
}

/// The raw JSON of `keys` among the top-level members of the object `json` (`null` as
/// absent): from `members`' scan where it decides, else from serde_json reading `T`, whose
/// fields `fields` gives in `keys`' order. `None` when neither takes `json`.
fn raw_fields<'a, T: Deserialize<'a>, const N: usize>(
    json: &'a str,
    keys: [&str; N],
    fields: impl FnOnce(T) -> [Option<&'a RawValue>; N],
) -> Option<[Option<&'a str>; N]> {
    match members(json, keys) {
        Some(found) => Some(found.map(not_null)),
        None => Some(fields(serde_json::from_str::<T>(json).ok()?).map(|r| r.map(RawValue::get))),
    }
}

/// `null` read as absent, as serde reads an `Option`.
fn not_null(raw: Option<&str>) -> Option<&str> {
    raw.filter(|r| *r != "null")
}

/// `Figures` as serde_json reads it, for what `members` does not take.
#[derive(Deserialize)]
struct FiguresJson<'a> {
    #[serde(borrow)]
    usage: Option<&'a RawValue>,
    #[serde(borrow)]
    prompt_eval_count: Option<&'a RawValue>,
    #[serde(borrow)]
    eval_count: Option<&'a RawValue>,
    #[serde(borrow)]
    load_duration: Option<&'a RawValue>,
    #[serde(borrow)]
    total_duration: Option<&'a RawValue>,
    #[serde(borrow)]
    message: Option<&'a RawValue>,
    #[serde(borrow)]
    response: Option<&'a RawValue>,
}

impl<'a> FiguresJson<'a> {
    fn fields(self) -> [Option<&'a RawValue>; 7] {
        let FiguresJson { usage, prompt_eval_count, eval_count, load_duration, total_duration, message, response } =
            self;
        [usage, prompt_eval_count, eval_count, load_duration, total_duration, message, response]
    }
}

/// `usage` one level down in `raw`, when it is an object that has it.
fn nested(raw: Option<&str>) -> Option<&str> {
    let [usage] = raw_fields(raw?, ["usage"], |n: Nested<'_>| [n.usage])?;
    usage
}

/// An object that may carry `usage` one level down.
#[derive(Deserialize)]
struct Nested<'a> {
    #[serde(borrow)]
    usage: Option<&'a RawValue>,
}

/// OpenAI's `usage` (or Anthropic's, or the Responses API's), its counts as raw JSON.
struct OpenAiUsage<'a> {
    prompt_tokens: Option<&'a str>,
    completion_tokens: Option<&'a str>,
    input_tokens: Option<&'a str>,
    output_tokens: Option<&'a str>,
}

impl<'a> OpenAiUsage<'a> {
    fn of(raw: &'a str) -> Option<OpenAiUsage<'a>> {
        let [prompt_tokens, completion_tokens, input_tokens, output_tokens] = raw_fields(
            raw,
            ["prompt_tokens", "completion_tokens", "input_tokens", "output_tokens"],
            |u: OpenAiUsageJson<'a>| [u.prompt_tokens, u.completion_tokens, u.input_tokens, u.output_tokens],
        )?;
        Some(OpenAiUsage { prompt_tokens, completion_tokens, input_tokens, output_tokens })
    }
}

#[derive(Deserialize)]
struct OpenAiUsageJson<'a> {
    #[serde(borrow)]
    prompt_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    completion_tokens: Option<&'a RawValue>,
    /// Anthropic's and the Responses API's names.
    #[serde(borrow)]
    input_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    output_tokens: Option<&'a RawValue>,
}

/// A non-negative integer, or nothing for any other JSON value.
fn count(raw: Option<&str>) -> Option<u64> {
    raw?.parse().ok()
}
/// The raw JSON of `wanted` top-level members of `text`, one object, found by a scan that
/// builds nothing: the same answer as serde_json for the documents it takes, and `None` for
/// the rest, which serde_json then reads (a string with a `\u` escape, nesting deeper than
/// 64, a wanted key twice, anything malformed). Cheaper than serde_json on an answer, read
/// on every request.
fn members<'a, const N: usize>(text: &'a str, wanted: [&str; N]) -> Option<[Option<&'a str>; N]> {
    let json = text.as_bytes();
    let mut s = Scan { b: json, i: 0 };
    let mut found = [None; N];
    s.ws();
    s.eat(b'{')?;
    s.ws();
    if s.peek() == Some(b'}') {
        s.i += 1;
    } else {
        loop {
            s.ws();
            let key = s.string()?;
            s.ws();
            s.eat(b':')?;
            s.ws();
            let start = s.i;
            s.value(0)?;
            if let Some(k) = wanted.iter().position(|w| w.as_bytes() == &json[key.start + 1..key.end - 1]) {
                if found[k].is_some() {
                    return None;
                }
                found[k] = Some(&text[start..s.i]);
            }
            s.ws();
            match s.next()? {
                b',' => {}
                b'}' => break,
                _ => return None,
            }
        }
    }
    s.ws();
    (s.i == json.len()).then_some(found)
}

/// A cursor for `members`; each method returns `None` on anything it does not take.
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scan<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// A string, quotes included; escapes other than `\u` only.
    fn string(&mut self) -> Option<std::ops::Range<usize>> {
        let start = self.i;
        self.eat(b'"')?;
        loop {
            match self.next()? {
                b'"' => return Some(start..self.i),
                b'\\' => match self.next()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    _ => return None,
                },
                0..=0x1f => return None,
                _ => {}
            }
        }
    }

    fn digits(&mut self) -> Option<()> {
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        (self.i > start).then_some(())
    }

    /// JSON's number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => {
                while matches!(self.peek(), Some(b'0'..=b'9')) {
                    self.i += 1;
                }
            }
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            self.digits()?;
        }
        Some(())
    }

    fn word(&mut self, w: &[u8]) -> Option<()> {
        let end = self.i.checked_add(w.len())?;
        (self.b.get(self.i..end)? == w).then(|| self.i = end)
    }

    fn value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => self.number(),
            b't' => self.word(b"true"),
            b'f' => self.word(b"false"),
            b'n' => self.word(b"null"),
            open @ (b'{' | b'[') if depth < 64 => {
                self.i += 1;
                let close = if open == b'{' { b'}' } else { b']' };
                self.ws();
                if self.peek() == Some(close) {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.ws();
                    if open == b'{' {
                        self.string()?;
                        self.ws();
                        self.eat(b':')?;
                        self.ws();
                    }
                    self.value(depth + 1)?;
                    self.ws();
                    match self.next()? {
                        b',' => {}
                        c if c == close => return Some(()),
                        _ => return None,
                    }
                }
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cut_stream_is_charged_for_what_passed() {
        let mut scan = super::UsageScan::new("application/x-ndjson");
        scan.feed(b"{\"message\":{\"content\":\"a\"},\"done\":false}\n{\"message\":{\"content\":\"b\"},\"done\":false}\n{\"mess");
        let u = scan.settle(40);
        assert_eq!((u.prompt_tokens, u.completion_tokens), (Some(40), Some(3)), "two whole lines and a part");
        let mut sse = super::UsageScan::new("text/event-stream");
        sse.feed(b"data: {\"choices\":[]}\n\ndata: {\"choices\":[]}\n\ndata: [DONE]\n\n");
        assert_eq!(sse.settle(7).completion_tokens, Some(2));
        // The server's own counts, when they came, are what is charged.
        let mut whole = super::UsageScan::new("application/x-ndjson");
        whole.feed(b"{\"done\":true,\"prompt_eval_count\":5,\"eval_count\":9}\n");
        let u = whole.settle(40);
        assert_eq!((u.prompt_tokens, u.completion_tokens), (Some(5), Some(9)));
        // Nothing came back (the client left before the answer): the prompt is charged.
        let u = super::UsageScan::new("application/x-ndjson").settle(40);
        assert_eq!((u.prompt_tokens, u.completion_tokens), (Some(40), None));
        // A whole answer too large to read keeps its end, where the counts are.
        let mut big = super::UsageScan::new("application/json");
        big.feed(b"{\"model\":\"e\",\"embeddings\":[[");
        for _ in 0..300 {
            big.feed(&b"0.0123456789,".repeat(2000));
        }
        big.feed(b"0]],\"total_duration\":1,\"prompt_eval_count\": 4321}");
        assert_eq!(big.settle(1).prompt_tokens, Some(4321));
    }
    use super::*;

    fn scan(content_type: &str, chunks: &[&str]) -> Usage {
        let mut s = UsageScan::new(content_type);
        for c in chunks {
            s.feed(c.as_bytes());
        }
        s.finish()
    }

    #[test]
    fn ollama_stream_final_object_split_across_chunks() {
        let u = scan(
            "application/x-ndjson",
            &[
                "{\"model\":\"m\",\"message\":{\"content\":\"done\"},\"done\":false}\n{\"model\":\"m\",\"do",
                "ne\":true,\"prompt_eval_count\":12,\"eval_count\":34,\"load_duration\":2500000000,\"total_duration\":4000000000}\n",
            ],
        );
        assert_eq!(u.prompt_tokens, Some(12));
        assert_eq!(u.completion_tokens, Some(34));
        assert_eq!(u.load_seconds, Some(2.5));
        assert_eq!(u.total_seconds, Some(4.0));
    }

    #[test]
    fn openai_sse_usage_and_plain_json() {
        let u = scan(
            "text/event-stream",
            &[
                "data: {\"choices\":[{\"delta\":{\"content\":\"usage\"}}],\"usage\":null}\n\n",
                "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7}}\n\ndata: [DONE]\n\n",
            ],
        );
        assert_eq!((u.prompt_tokens, u.completion_tokens), (Some(5), Some(7)));
        let u =
            scan("application/json; charset=utf-8", &["{\"usage\":{\"prompt_tokens\":3,", "\"completion_tokens\":4}}"]);
        assert_eq!((u.prompt_tokens, u.completion_tokens), (Some(3), Some(4)));
        let u = scan("application/json", &["{\"model\":\"m\",\"done\":true,\"prompt_eval_count\":9,\"eval_count\":1}"]);
        assert_eq!((u.prompt_tokens, u.completion_tokens), (Some(9), Some(1)));
    }

    #[test]
    fn fields_of_another_type_are_skipped_not_fatal() {
        let u = scan(
            "application/json",
            &["{\"usage\":\"n/a\",\"prompt_eval_count\":-1,\"eval_count\":2.5,\"load_duration\":null,\"total_duration\":1000000000,\"message\":{\"content\":\"\\\"eval_count\\\": 9\"}}"],
        );
        assert_eq!(u, Usage { total_seconds: Some(1.0), ..Usage::default() });
        let u = scan(
            "application/json",
            &["{\"usage\":{\"prompt_tokens\":\"3\",\"completion_tokens\":4,\"extra\":[1,{}]}}"],
        );
        assert_eq!((u.prompt_tokens, u.completion_tokens), (None, Some(4)));
    }

    #[test]
    fn anthropic_and_responses_usage() {
        let anthropic = scan(
            "text/event-stream",
            &[
                "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":11,\"output_tokens\":1}}}\n\n",
                "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n\n",
            ],
        );
        assert_eq!((anthropic.prompt_tokens, anthropic.completion_tokens), (Some(11), Some(7)));
        let responses = scan(
            "text/event-stream",
            &["event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":5,\"output_tokens\":3,\"total_tokens\":8}}}\n\n"],
        );
        assert_eq!((responses.prompt_tokens, responses.completion_tokens), (Some(5), Some(3)));
        let plain =
            scan("application/json", &["{\"type\":\"message\",\"usage\":{\"input_tokens\":4,\"output_tokens\":2}}"]);
        assert_eq!((plain.prompt_tokens, plain.completion_tokens), (Some(4), Some(2)));
    }

    /// What serde_json reads for the keys `members` looks for, `null` as absent.
    fn by_serde(json: &[u8]) -> Option<[Option<String>; 3]> {
        #[derive(Deserialize)]
        struct Three<'a> {
            #[serde(borrow)]
            usage: Option<&'a RawValue>,
            #[serde(borrow)]
            eval_count: Option<&'a RawValue>,
            #[serde(borrow)]
            message: Option<&'a RawValue>,
        }
        let t = serde_json::from_slice::<Three>(json).ok()?;
        Some([t.usage, t.eval_count, t.message].map(|r| r.map(|r| r.get().to_string())))
    }

    fn by_scan(json: &[u8]) -> Option<[Option<String>; 3]> {
        let text = std::str::from_utf8(json).ok()?;
        members(text, ["usage", "eval_count", "message"]).map(|f| f.map(|r| not_null(r).map(str::to_string)))
    }

    #[test]
    fn the_scan_takes_common_answers_and_agrees_with_serde() {
        let ollama = br#"{"model":"m","created_at":"2026-01-01T00:00:00Z","message":{"role":"assistant","content":"Hi!\n\"ok\""},"done":true,"eval_count":8, "usage" : null }"#;
        let openai = br#" {"id":"c","choices":[{"index":0,"message":{"content":"x"}}],"usage":{"prompt_tokens":1,"completion_tokens":2}} "#;
        for doc in [&ollama[..], &openai[..], b"{}", b"{\"eval_count\":-0.5e+3}", "{\"k\":\"é\"}".as_bytes()] {
            assert!(by_scan(doc).is_some(), "{}", String::from_utf8_lossy(doc));
            assert_eq!(by_scan(doc), by_serde(doc), "{}", String::from_utf8_lossy(doc));
        }
        // Left to serde: \u escapes, duplicates of a wanted key, deep nesting, and all that is malformed.
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(70), "]".repeat(70));
        for doc in [
            &br#"{"message":{"content":"\u003c"}}"#[..],
            br#"{"eval_count":1,"eval_count":2}"#,
            deep.as_bytes(),
            b"{\"a\":01}",
            b"{\"a\":1,}",
            b"{\"a\":tru}",
            b"{\"a\":1} x",
            b"[1]",
            b"{\"a\":\"\t\"}",
            b"{\"a\":\"\\x\"}",
            b"{\"a\":1",
            b"",
        ] {
            assert_eq!(by_scan(doc), None, "{}", String::from_utf8_lossy(doc));
        }
    }

    proptest::proptest! {
        /// For any JSON, and any JSON with a byte changed, dropped or added: whatever the scan
        /// takes, serde_json takes too, with the same values.
        #[test]
        fn the_scan_never_disagrees_with_serde(
            doc in proptest::collection::vec(
                (proptest::sample::select(vec!["usage", "eval_count", "message", "model", "e\\nval"]),
                 proptest::prelude::any::<proptest::sample::Index>()), 0..6),
            edit in proptest::option::of((proptest::prelude::any::<proptest::sample::Index>(), 0u8..3, proptest::prelude::any::<u8>())),
        ) {
            let values = [r#"1"#, r#"-2.5e3"#, r#"null"#, r#"true"#, r#""a\"b""#, r#"{"x":[1,{"y":"z"}]}"#, r#"[]"#, r#""é""#, r#""\u0041""#];
            let body: Vec<String> = doc.iter().map(|(k, v)| format!("\"{k}\": {}", v.get(&values))).collect();
            let mut bytes = format!("{{{}}}", body.join(",")).into_bytes();
            if let Some((at, how, byte)) = edit {
                let i = at.index(bytes.len());
                match how {
                    0 => bytes[i] = byte,
                    1 => { bytes.remove(i); }
                    _ => bytes.insert(i, byte),
                }
            }
            if let Some(found) = by_scan(&bytes) {
                proptest::prop_assert_eq!(Some(found), by_serde(&bytes), "{}", String::from_utf8_lossy(&bytes));
            }
        }
    }

    #[test]
    fn nothing_to_read_is_nothing() {
        assert_eq!(scan("text/plain", &["eval_count 5\n"]), Usage::default());
        assert_eq!(scan("application/x-ndjson", &["{\"done\":false,\"eval_count\":3}\n"]), Usage::default());
    }
}
