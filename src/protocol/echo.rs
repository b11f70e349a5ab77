//! The model name in an Ollama answer, put back to the name the client asked for.
//!
//! Ollama echoes the request's `model` in every stream line and in a whole answer. When
//! drover sends a request on under another name (a virtual model's actual one, or "llama3"
//! resolved to "llama3:latest"), the answer carries the server's name; a client that
//! compares it with what it asked for (Open WebUI, some SDKs) would be confused. The top
//! level `"model":"<actual>"` of each line becomes `"model":"<asked>"`; everything else
//! passes byte for byte. Lines are rewritten whole: a chunk's unfinished last line waits
//! for the rest of it (Ollama and llama.cpp end every chunk with a line).

use bytes::{Bytes, BytesMut};

/// Rewrites one answer as it streams.
pub struct Echo {
    /// `"model":` and the server's name as a JSON string, quotes included.
    from: Vec<u8>,
    /// The asked name as a JSON string, quotes included.
    to: Vec<u8>,
    /// The start of a line whose end has not come yet.
    carry: BytesMut,
    /// A whole JSON answer with a Content-Length: the length promised to the client, which the
    /// rewritten answer is padded to with spaces (JSON allows whitespace after the value).
    pad_to: Option<usize>,
    /// The answer's own length: once that much is here it is whole, end of stream or not.
    whole_at: usize,
}

impl Echo {
    /// `None` when there is nothing to rewrite (the names are the same).
    pub fn new(actual: &str, asked: &str) -> Option<Echo> {
        if actual == asked {
            return None;
        }
        let quoted = |s: &str| serde_json::to_vec(s).expect("a string serialises");
        Some(Echo {
            from: quoted(actual),
            to: quoted(asked),
            carry: BytesMut::new(),
            pad_to: None,
            whole_at: usize::MAX,
        })
    }

    /// For a whole JSON answer of `length` bytes: the length the rewritten answer will have
    /// (the longer of the two), so that the Content-Length can stay and the answer need not
    /// be sent chunked. One JSON value names its model once, at the top.
    pub(crate) fn keep_length(&mut self, length: usize) -> usize {
        let rewritten = (length + self.to.len()).saturating_sub(self.from.len());
        let promised = length.max(rewritten);
        self.pad_to = Some(promised);
        self.whole_at = length;
        promised
    }

    /// The bytes to send for `chunk` (and, at the end, for what was held back).
    pub fn feed(&mut self, chunk: Option<&Bytes>, end: bool) -> Option<Bytes> {
        if let Some(c) = chunk {
            self.carry.extend_from_slice(c);
        }
        if let Some(promised) = self.pad_to {
            // A whole answer: rewritten once it is all here, then padded to the promised length.
            if !end && self.carry.len() < self.whole_at {
                return Some(Bytes::new());
            }
            if self.carry.is_empty() {
                return chunk.map(|_| Bytes::new());
            }
            let whole = self.carry.split();
            let mut out = BytesMut::with_capacity(promised);
            self.line(&whole, &mut out);
            if out.len() < promised {
                out.resize(promised, b' ');
            }
            return Some(out.freeze());
        }
        let upto = if end { self.carry.len() } else { memchr::memrchr(b'\n', &self.carry).map_or(0, |i| i + 1) };
        if upto == 0 && !end {
            return Some(Bytes::new());
        }
        let done = self.carry.split_to(upto);
        let mut out = BytesMut::with_capacity(done.len() + 16);
        for line in done.split_inclusive(|&b| b == b'\n') {
            self.line(line, &mut out);
        }
        Some(out.freeze())
    }

    /// One line: its first `"model":` key followed by the server's name gets the asked name.
    fn line(&self, line: &[u8], out: &mut BytesMut) {
        const KEY: &[u8] = b"\"model\":";
        if let Some(at) = memchr::memmem::find(line, KEY) {
            let after = at + KEY.len();
            let spaces = line[after..].iter().take_while(|b| **b == b' ').count();
            let value = after + spaces;
            if line[value..].starts_with(&self.from) {
                out.extend_from_slice(&line[..value]);
                out.extend_from_slice(&self.to);
                out.extend_from_slice(&line[value + self.from.len()..]);
                return;
            }
        }
        out.extend_from_slice(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(echo: &mut Echo, chunks: &[&str]) -> String {
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let b = Bytes::copy_from_slice(c.as_bytes());
            out.extend_from_slice(&echo.feed(Some(&b), i == chunks.len() - 1).unwrap());
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn each_line_names_the_asked_model_even_split_across_chunks() {
        let mut e = Echo::new("llama3.2:latest", "team-llama").unwrap();
        let out = run(
            &mut e,
            &[
                "{\"model\":\"llama3.2:latest\",\"message\":{\"content\":\"hi\"},\"done\":false}\n{\"mo",
                "del\": \"llama3.2:latest\",\"done\":true}\n",
            ],
        );
        assert_eq!(
            out,
            "{\"model\":\"team-llama\",\"message\":{\"content\":\"hi\"},\"done\":false}\n{\"model\": \"team-llama\",\"done\":true}\n"
        );
    }

    #[test]
    fn other_names_and_content_pass_untouched() {
        let mut e = Echo::new("m:latest", "m").unwrap();
        let body = "{\"model\":\"other\",\"response\":\"the \\\"model\\\":\\\"m:latest\\\" text\"}";
        assert_eq!(run(&mut e, &[body]), body, "a whole answer without a final newline ends at the stream's end");
        assert!(Echo::new("m", "m").is_none());
        let mut e = Echo::new("a\"b", "c").unwrap();
        assert_eq!(run(&mut e, &["{\"model\":\"a\\\"b\"}\n"]), "{\"model\":\"c\"}\n", "names are JSON-escaped");
    }

    #[test]
    fn a_whole_answer_keeps_a_content_length_padded_with_spaces() {
        let body = "{\"model\":\"qwen3:14b\",\"done\":true}";
        for (asked, want) in [
            ("chat", "{\"model\":\"chat\",\"done\":true}     "),
            ("a-longer-name", "{\"model\":\"a-longer-name\",\"done\":true}"),
        ] {
            let mut e = Echo::new("qwen3:14b", asked).unwrap();
            let promised = e.keep_length(body.len());
            let out = run(&mut e, &[&body[..10], &body[10..]]);
            assert_eq!((out.as_str(), out.len()), (want, promised));
            assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["model"], asked);
        }
        // Whole once its own length is here: sent then, not held for the end of the stream.
        let mut e = Echo::new("qwen3:14b", "chat").unwrap();
        let promised = e.keep_length(body.len());
        let now = e.feed(Some(&Bytes::copy_from_slice(body.as_bytes())), false).unwrap();
        assert_eq!(now.len(), promised);
        assert_eq!(e.feed(None, true), None, "nothing left for the end");
        // A body that does not name the model is padded all the same.
        let mut e = Echo::new("m:latest", "a-long-virtual-name").unwrap();
        let promised = e.keep_length(2);
        assert_eq!(run(&mut e, &["{}"]).len(), promised);
    }

    #[test]
    fn an_unfinished_line_waits_and_nothing_is_lost_at_the_end() {
        let mut e = Echo::new("x:1b", "x").unwrap();
        let first = e.feed(Some(&Bytes::from_static(b"{\"model\":\"x:1")), false).unwrap();
        assert!(first.is_empty());
        let rest = e.feed(Some(&Bytes::from_static(b"b\"}")), true).unwrap();
        assert_eq!(&rest[..], b"{\"model\":\"x\"}");
    }
}
