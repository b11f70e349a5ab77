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

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Usage {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// Seconds Ollama spent loading the model for this request.
    pub load_seconds: Option<f64>,
    pub total_seconds: Option<f64>,
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
    pub usage: Usage,
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
        UsageScan { format, held: Vec::new(), overflow: false, usage: Usage::default() }
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
    pub fn finish(mut self) -> Usage {
        let held = std::mem::take(&mut self.held);
        if !self.overflow && !held.is_empty() {
            match self.format {
                Format::Json => self.read(&held),
                Format::Ndjson | Format::Sse => self.line(&held),
                Format::Other => {}
            }
        }
        self.usage
    }

    fn hold(&mut self, bytes: &[u8]) {
        if self.overflow || self.held.len() + bytes.len() > MAX_HELD {
            self.overflow = true;
            self.held.clear();
        } else {
            self.held.extend_from_slice(bytes);
        }
    }

    fn line(&mut self, line: &[u8]) {
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
        let Ok(v) = serde_json::from_slice::<Figures>(json) else { return };
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
        if let Some(usage) = usage.and_then(|raw| serde_json::from_str::<OpenAiUsage>(raw.get()).ok()) {
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

/// The fields of an answer that carry its figures, as raw JSON (any type, checked on use).
#[derive(Deserialize)]
struct Figures<'a> {
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

/// `usage` one level down in `raw`, when it is an object that has it.
fn nested(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.and_then(|r| serde_json::from_str::<Nested>(r.get()).ok()).and_then(|n| n.usage)
}

/// An object that may carry `usage` one level down.
#[derive(Deserialize)]
struct Nested<'a> {
    #[serde(borrow)]
    usage: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct OpenAiUsage<'a> {
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
fn count(raw: Option<&RawValue>) -> Option<u64> {
    raw?.get().parse().ok()
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn nothing_to_read_is_nothing() {
        assert_eq!(scan("text/plain", &["eval_count 5\n"]), Usage::default());
        assert_eq!(scan("application/x-ndjson", &["{\"done\":false,\"eval_count\":3}\n"]), Usage::default());
    }
}
