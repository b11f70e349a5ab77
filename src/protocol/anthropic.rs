//! Anthropic's Messages API on a server that has only OpenAI's chat completions (a llama.cpp
//! or vLLM build without /v1/messages, a hosted OpenAI-compatible service): the request
//! translated to /v1/chat/completions, the answer translated back, a stream event by event.
//!
//! Request: `system` (a string or text blocks) first; content blocks `text`, `image`
//! (base64 -> an `image_url` data URI), `tool_use` (-> `tool_calls`), `tool_result` (-> a
//! `tool` message); `tools` (`input_schema` -> `parameters`), `tool_choice`; `max_tokens`,
//! `temperature`, `top_p`, `top_k`, `stop_sequences` -> `stop`, `stream`. Answer: text and
//! `tool_use` blocks, `stop_reason` (end_turn, max_tokens, tool_use), `usage`; a stream as
//! message_start, content_block_start/delta/stop, message_delta, message_stop.

use bytes::{Bytes, BytesMut};
use serde_json::{json, Map, Value};

use super::translate::{FromChat, TranslateError, Translator};

/// Anthropic's request body -> OpenAI's chat completion, for the server's model `actual`;
/// also whether the answer streams.
pub(crate) fn request(body: &[u8], actual: &str) -> Result<(Bytes, bool), TranslateError> {
    let req: Map<String, Value> = serde_json::from_slice(body).map_err(TranslateError::NotJson)?;
    let mut messages = Vec::new();
    match req.get("system") {
        Some(Value::String(s)) if !s.is_empty() => messages.push(json!({ "role": "system", "content": s })),
        Some(Value::Array(blocks)) => {
            let text: Vec<&str> = blocks.iter().filter_map(|b| b["text"].as_str()).collect();
            if !text.is_empty() {
                messages.push(json!({ "role": "system", "content": text.join("\n") }));
            }
        }
        _ => {}
    }
    for m in req.get("messages").and_then(Value::as_array).into_iter().flatten() {
        let role = m["role"].as_str().unwrap_or("user");
        match &m["content"] {
            Value::String(s) => messages.push(json!({ "role": role, "content": s })),
            Value::Array(blocks) => {
                let mut parts = Vec::new();
                let mut calls = Vec::new();
                for b in blocks {
                    match b["type"].as_str() {
                        Some("text") => parts.push(json!({ "type": "text", "text": b["text"] })),
                        Some("image") => {
                            let src = &b["source"];
                            let media = src["media_type"].as_str().unwrap_or("image/png");
                            let url = match src["type"].as_str() {
                                Some("url") => src["url"].as_str().unwrap_or("").to_string(),
                                _ => format!("data:{media};base64,{}", src["data"].as_str().unwrap_or("")),
                            };
                            parts.push(json!({ "type": "image_url", "image_url": { "url": url } }));
                        }
                        Some("tool_use") => calls.push(json!({
                            "id": b["id"], "type": "function",
                            "function": { "name": b["name"], "arguments": b["input"].to_string() } })),
                        Some("tool_result") => {
                            let content = match &b["content"] {
                                Value::String(s) => s.clone(),
                                Value::Array(a) => {
                                    a.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("\n")
                                }
                                other => other.to_string(),
                            };
                            messages
                                .push(json!({ "role": "tool", "tool_call_id": b["tool_use_id"], "content": content }));
                        }
                        _ => {}
                    }
                }
                if !parts.is_empty() || !calls.is_empty() {
                    let only_text = parts.iter().all(|p| p["type"] == "text");
                    let content = if only_text {
                        Value::from(parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join(""))
                    } else {
                        Value::Array(parts)
                    };
                    let mut msg = json!({ "role": role, "content": content });
                    if !calls.is_empty() {
                        msg["tool_calls"] = calls.into();
                    }
                    messages.push(msg);
                }
            }
            _ => return Err(TranslateError::Content),
        }
    }
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let mut out = json!({ "model": actual, "messages": messages, "stream": stream });
    if stream {
        out["stream_options"] = json!({ "include_usage": true });
    }
    for same in ["max_tokens", "temperature", "top_p", "top_k"] {
        if let Some(v) = req.get(same).filter(|v| !v.is_null()) {
            out[same] = v.clone();
        }
    }
    if let Some(stop) = req.get("stop_sequences").filter(|v| v.is_array()) {
        out["stop"] = stop.clone();
    }
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                json!({ "type": "function", "function": {
                "name": t["name"], "description": t.get("description").cloned().unwrap_or(Value::from("")),
                "parameters": t.get("input_schema").cloned().unwrap_or(json!({ "type": "object" })) } })
            })
            .collect();
        out["tools"] = tools.into();
    }
    match req.get("tool_choice").and_then(|c| c["type"].as_str()) {
        Some("any") => out["tool_choice"] = "required".into(),
        Some("none") => out["tool_choice"] = "none".into(),
        Some("tool") => {
            out["tool_choice"] = json!({ "type": "function", "function": { "name": req["tool_choice"]["name"] } })
        }
        _ => {}
    }
    Ok((serde_json::to_vec(&out).expect("json values serialise").into(), stream))
}

fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls") | Some("function_call") => "tool_use",
        _ => "end_turn",
    }
}

/// Reads an OpenAI chat answer (whole or SSE) and writes Anthropic's.
pub(crate) struct Answer {
    model: String,
    started: bool,
    /// The content block open now: its index, and whether it is text (else a tool call,
    /// identified by OpenAI's tool-call index).
    open: Option<(usize, Option<u64>)>,
    blocks: usize,
    finish: Option<String>,
    input_tokens: u64,
    output_tokens: u64,
    done: bool,
}

impl Answer {
    pub(crate) fn new(stream: bool, ok: bool, model: &str) -> Translator<Answer> {
        let answer = Answer {
            model: model.to_string(),
            started: false,
            open: None,
            blocks: 0,
            finish: None,
            input_tokens: 0,
            output_tokens: 0,
            done: false,
        };
        Translator::new(answer, stream, ok)
    }

    fn event(out: &mut BytesMut, name: &str, data: &Value) {
        out.extend_from_slice(format!("event: {name}\ndata: {data}\n\n").as_bytes());
    }

    fn start(&mut self, out: &mut BytesMut) {
        if !self.started {
            self.started = true;
            let message = json!({ "id": "msg_drover", "type": "message", "role": "assistant", "model": self.model,
                                  "content": [], "stop_reason": null, "stop_sequence": null,
                                  "usage": { "input_tokens": 0, "output_tokens": 0 } });
            Self::event(out, "message_start", &json!({ "type": "message_start", "message": message }));
        }
    }

    fn close_block(&mut self, out: &mut BytesMut) {
        if let Some((index, _)) = self.open.take() {
            Self::event(out, "content_block_stop", &json!({ "type": "content_block_stop", "index": index }));
        }
    }
}

impl FromChat for Answer {
    fn sse_line(&mut self, line: &[u8], out: &mut BytesMut) {
        let line = std::str::from_utf8(line).unwrap_or("").trim();
        let Some(data) = line.strip_prefix("data:").map(str::trim) else { return };
        if data == "[DONE]" {
            self.end_stream(out);
            return;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else { return };
        self.start(out);
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.input_tokens = u["prompt_tokens"].as_u64().unwrap_or(self.input_tokens);
            self.output_tokens = u["completion_tokens"].as_u64().unwrap_or(self.output_tokens);
        }
        let Some(choice) = chunk["choices"].get(0) else { return };
        if let Some(f) = choice["finish_reason"].as_str() {
            self.finish = Some(f.to_string());
        }
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            if !matches!(self.open, Some((_, None))) {
                self.close_block(out);
                let index = self.blocks;
                self.blocks += 1;
                self.open = Some((index, None));
                let block = json!({ "type": "content_block_start", "index": index, "content_block": { "type": "text", "text": "" } });
                Self::event(out, "content_block_start", &block);
            }
            let index = self.open.map_or(0, |(i, _)| i);
            let d = json!({ "type": "content_block_delta", "index": index, "delta": { "type": "text_delta", "text": text } });
            Self::event(out, "content_block_delta", &d);
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let which = call["index"].as_u64().unwrap_or(0);
            if self.open.map(|(_, t)| t) != Some(Some(which)) {
                self.close_block(out);
                let index = self.blocks;
                self.blocks += 1;
                self.open = Some((index, Some(which)));
                let block = json!({ "type": "content_block_start", "index": index, "content_block": {
                    "type": "tool_use", "id": call["id"].as_str().unwrap_or("toolu_drover"),
                    "name": call["function"]["name"].as_str().unwrap_or(""), "input": {} } });
                Self::event(out, "content_block_start", &block);
            }
            if let Some(args) = call["function"]["arguments"].as_str().filter(|a| !a.is_empty()) {
                let index = self.open.map_or(0, |(i, _)| i);
                let d = json!({ "type": "content_block_delta", "index": index,
                                "delta": { "type": "input_json_delta", "partial_json": args } });
                Self::event(out, "content_block_delta", &d);
            }
        }
    }

    fn end_stream(&mut self, out: &mut BytesMut) {
        if self.done {
            return;
        }
        self.done = true;
        self.start(out);
        self.close_block(out);
        let delta = json!({ "type": "message_delta",
                            "delta": { "stop_reason": stop_reason(self.finish.as_deref()), "stop_sequence": null },
                            "usage": { "input_tokens": self.input_tokens, "output_tokens": self.output_tokens } });
        Self::event(out, "message_delta", &delta);
        Self::event(out, "message_stop", &json!({ "type": "message_stop" }));
    }

    fn whole(&mut self, answer: &Value) -> Value {
        let choice = &answer["choices"][0];
        let m = &choice["message"];
        let mut content = Vec::new();
        if let Some(t) = m["content"].as_str().filter(|t| !t.is_empty()) {
            content.push(json!({ "type": "text", "text": t }));
        }
        for c in m["tool_calls"].as_array().into_iter().flatten() {
            let input =
                serde_json::from_str::<Value>(c["function"]["arguments"].as_str().unwrap_or("{}")).unwrap_or(json!({}));
            content.push(json!({ "type": "tool_use", "id": c["id"].as_str().unwrap_or("toolu_drover"),
                                 "name": c["function"]["name"], "input": input }));
        }
        json!({
            "id": answer["id"].as_str().map_or_else(|| "msg_drover".to_string(), |id| format!("msg_{id}")),
            "type": "message", "role": "assistant", "model": self.model, "content": content,
            "stop_reason": stop_reason(choice["finish_reason"].as_str()), "stop_sequence": null,
            "usage": { "input_tokens": answer["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
                       "output_tokens": answer["usage"]["completion_tokens"].as_u64().unwrap_or(0) },
        })
    }

    fn error(&self, message: String) -> Value {
        json!({ "type": "error", "error": { "type": "api_error", "message": message } })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::translate::Translating;

    #[test]
    fn requests_map_system_blocks_images_tools_and_results() {
        let body = json!({ "model": "coder", "max_tokens": 16, "system": [{ "type": "text", "text": "be brief" }],
            "stop_sequences": ["END"], "tool_choice": { "type": "any" },
            "tools": [{ "name": "lookup", "description": "d", "input_schema": { "type": "object" } }],
            "messages": [
              { "role": "user", "content": [{ "type": "text", "text": "what is " }, { "type": "image", "source": { "type": "base64", "media_type": "image/jpeg", "data": "AAA" } }] },
              { "role": "assistant", "content": [{ "type": "tool_use", "id": "t1", "name": "lookup", "input": { "q": 1 } }] },
              { "role": "user", "content": [{ "type": "tool_result", "tool_use_id": "t1", "content": "42" }] } ] });
        let (out, stream) = request(&serde_json::to_vec(&body).unwrap(), "smol").unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert!(!stream);
        assert_eq!(out["model"], "smol");
        assert_eq!(out["messages"][0], json!({ "role": "system", "content": "be brief" }));
        assert_eq!(out["messages"][1]["content"][1]["image_url"]["url"], "data:image/jpeg;base64,AAA");
        assert_eq!(
            out["messages"][2]["tool_calls"][0]["function"],
            json!({ "name": "lookup", "arguments": "{\"q\":1}" })
        );
        assert_eq!(out["messages"][3], json!({ "role": "tool", "tool_call_id": "t1", "content": "42" }));
        assert_eq!(
            (out["max_tokens"].as_i64(), out["stop"].clone(), out["tool_choice"].as_str()),
            (Some(16), json!(["END"]), Some("required"))
        );
        assert_eq!(out["tools"][0]["function"]["parameters"], json!({ "type": "object" }));
    }

    fn events(text: &str) -> Vec<(String, Value)> {
        text.split("\n\n")
            .filter(|e| !e.trim().is_empty())
            .map(|e| {
                let mut lines = e.lines();
                let name = lines.next().unwrap().trim_start_matches("event: ").to_string();
                (name, serde_json::from_str(lines.next().unwrap().trim_start_matches("data: ")).unwrap())
            })
            .collect()
    }

    #[test]
    fn a_stream_becomes_anthropic_events() {
        let mut a = Answer::new(true, true, "coder");
        let mut out = Vec::new();
        for (i, c) in [
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c1\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n",
        ]
        .iter()
        .enumerate()
        {
            out.extend_from_slice(&a.feed(Some(&Bytes::copy_from_slice(c.as_bytes())), i == 2));
        }
        let ev = events(&String::from_utf8(out).unwrap());
        let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(ev[0].1["message"]["model"], "coder");
        assert_eq!(ev[3].1["delta"]["text"], "lo");
        assert_eq!(ev[5].1["content_block"]["type"], "tool_use");
        assert_eq!(ev[8].1["delta"]["stop_reason"], "tool_use");
        assert_eq!(ev[8].1["usage"]["output_tokens"], 2);
        assert_eq!(a.content_type(), "text/event-stream");
    }

    #[test]
    fn whole_answers_and_errors() {
        let mut a = Answer::new(false, true, "coder");
        let out = a.feed(Some(&Bytes::from_static(b"{\"id\":\"x\",\"choices\":[{\"message\":{\"content\":\"hi\"},\"finish_reason\":\"length\"}],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}")), true);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["content"], json!([{ "type": "text", "text": "hi" }]));
        assert_eq!((v["stop_reason"].as_str(), v["usage"]["input_tokens"].as_u64()), (Some("max_tokens"), Some(3)));
        let mut e = Answer::new(true, false, "coder");
        let out = e.feed(Some(&Bytes::from_static(b"{\"error\":{\"message\":\"too long\"}}")), true);
        assert_eq!(serde_json::from_slice::<Value>(&out).unwrap()["error"]["message"], "too long");
    }
}
