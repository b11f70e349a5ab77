//! OpenAI's Responses API on a server that has only chat completions (llama.cpp, most
//! OpenAI-compatible servers): the request translated to /v1/chat/completions, the answer
//! translated back, a stream event by event.
//!
//! Request: `instructions` -> a system message; `input` a string or items (messages with
//! `input_text` / `input_image` parts, `function_call`, `function_call_output`); `tools`
//! (`{type: function, name, parameters}` -> chat's nested form), `tool_choice`;
//! `max_output_tokens` -> `max_tokens`; `temperature`, `top_p`; `text.format` json_schema /
//! json_object -> `response_format`. Answer: a `message` item with `output_text` and
//! `function_call` items, `status` (`incomplete` when the length ran out), `usage`; a stream
//! as response.created, output items and text deltas, response.completed.

use bytes::{Bytes, BytesMut};
use serde_json::{json, Map, Value};

use super::translate::{FromChat, TranslateError, Translator};

/// The Responses request body -> a chat completion for the server's model `actual`; also
/// whether the answer streams.
pub(crate) fn request(body: &[u8], actual: &str) -> Result<(Bytes, bool), TranslateError> {
    let req: Map<String, Value> = serde_json::from_slice(body).map_err(TranslateError::NotJson)?;
    let mut messages = Vec::new();
    if let Some(i) = req.get("instructions").and_then(Value::as_str).filter(|i| !i.is_empty()) {
        messages.push(json!({ "role": "system", "content": i }));
    }
    match req.get("input") {
        Some(Value::String(s)) => messages.push(json!({ "role": "user", "content": s })),
        Some(Value::Array(items)) => {
            for item in items {
                match item["type"].as_str() {
                    Some("function_call") => messages.push(json!({ "role": "assistant", "content": null,
                        "tool_calls": [{ "id": item["call_id"], "type": "function",
                                         "function": { "name": item["name"], "arguments": item["arguments"] } }] })),
                    Some("function_call_output") => messages
                        .push(json!({ "role": "tool", "tool_call_id": item["call_id"], "content": item["output"] })),
                    None | Some("message") => {
                        let role = match item["role"].as_str() {
                            Some("developer") => "system",
                            Some(r) => r,
                            None => "user",
                        };
                        messages.push(json!({ "role": role, "content": content(&item["content"]) }));
                    }
                    Some(other) => return Err(TranslateError::InputItem(other.to_string())),
                }
            }
        }
        _ => return Err(TranslateError::Input),
    }
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let mut out = json!({ "model": actual, "messages": messages, "stream": stream });
    if stream {
        out["stream_options"] = json!({ "include_usage": true });
    }
    for same in ["temperature", "top_p"] {
        if let Some(v) = req.get(same).filter(|v| !v.is_null()) {
            out[same] = v.clone();
        }
    }
    if let Some(n) = req.get("max_output_tokens").filter(|v| v.is_u64()) {
        out["max_tokens"] = n.clone();
    }
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .filter(|t| t["type"] == "function")
            .map(|t| {
                json!({ "type": "function", "function": {
                "name": t["name"], "description": t.get("description").cloned().unwrap_or(Value::from("")),
                "parameters": t.get("parameters").cloned().unwrap_or(json!({ "type": "object" })) } })
            })
            .collect();
        out["tools"] = tools.into();
    }
    match req.get("tool_choice") {
        Some(Value::String(s)) => out["tool_choice"] = s.as_str().into(),
        Some(c @ Value::Object(_)) if c["name"].is_string() => {
            out["tool_choice"] = json!({ "type": "function", "function": { "name": c["name"] } })
        }
        _ => {}
    }
    match req.get("text").and_then(|t| t.get("format")) {
        Some(f) if f["type"] == "json_schema" => {
            out["response_format"] = json!({ "type": "json_schema", "json_schema": {
                "name": f.get("name").cloned().unwrap_or(Value::from("response")),
                "schema": f["schema"], "strict": f.get("strict").cloned().unwrap_or(Value::Bool(false)) } })
        }
        Some(f) if f["type"] == "json_object" => out["response_format"] = json!({ "type": "json_object" }),
        _ => {}
    }
    Ok((serde_json::to_vec(&out).expect("json values serialise").into(), stream))
}

/// A message's content: a string as it is, parts as chat's.
fn content(c: &Value) -> Value {
    match c {
        Value::Array(parts) => Value::Array(
            parts
                .iter()
                .filter_map(|p| match p["type"].as_str() {
                    Some("input_text") | Some("output_text") | Some("text") => {
                        Some(json!({ "type": "text", "text": p["text"] }))
                    }
                    Some("input_image") => Some(json!({ "type": "image_url", "image_url": { "url": p["image_url"] } })),
                    _ => None,
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Reads a chat answer (whole or SSE) and writes the Responses API's.
pub(crate) struct Answer {
    model: String,
    id: String,
    sequence: u64,
    started: bool,
    text: Option<String>,
    /// Tool calls as they stream: (call id, name, arguments).
    calls: Vec<(String, String, String)>,
    finish: Option<String>,
    input_tokens: u64,
    output_tokens: u64,
    done: bool,
}

impl Answer {
    pub(crate) fn new(stream: bool, ok: bool, model: &str) -> Translator<Answer> {
        let id = format!(
            "resp_drover{:x}",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos()
        );
        let answer = Answer {
            model: model.to_string(),
            id,
            sequence: 0,
            started: false,
            text: None,
            calls: Vec::new(),
            finish: None,
            input_tokens: 0,
            output_tokens: 0,
            done: false,
        };
        Translator::new(answer, stream, ok)
    }

    fn event(&mut self, out: &mut BytesMut, name: &str, mut data: Value) {
        data["type"] = name.into();
        data["sequence_number"] = self.sequence.into();
        self.sequence += 1;
        out.extend_from_slice(format!("event: {name}\ndata: {data}\n\n").as_bytes());
    }

    fn response(&self, status: &str, output: Vec<Value>) -> Value {
        let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        let mut r = json!({ "id": self.id, "object": "response", "created_at": created, "status": status,
                            "model": self.model, "output": output, "parallel_tool_calls": true, "tool_choice": "auto",
                            "tools": [], "error": null, "incomplete_details": null });
        if status != "in_progress" {
            r["usage"] = json!({ "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                                 "total_tokens": self.input_tokens + self.output_tokens,
                                 "input_tokens_details": { "cached_tokens": 0 },
                                 "output_tokens_details": { "reasoning_tokens": 0 } });
        }
        if status == "incomplete" {
            r["incomplete_details"] = json!({ "reason": "max_output_tokens" });
        }
        r
    }

    fn message_item(&self, status: &str, text: &str) -> Value {
        json!({ "type": "message", "id": format!("msg_{}", &self.id[5..]), "status": status, "role": "assistant",
                "content": [{ "type": "output_text", "text": text, "annotations": [] }] })
    }

    fn call_item(&self, i: usize, status: &str) -> Value {
        let (call_id, name, args) = &self.calls[i];
        json!({ "type": "function_call", "id": format!("fc_{i}_{}", &self.id[5..]), "call_id": call_id, "name": name,
                "arguments": args, "status": status })
    }

    fn status(&self) -> &'static str {
        if self.finish.as_deref() == Some("length") {
            "incomplete"
        } else {
            "completed"
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
        if !self.started {
            self.started = true;
            let r = self.response("in_progress", Vec::new());
            self.event(out, "response.created", json!({ "response": r }));
        }
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.input_tokens = u["prompt_tokens"].as_u64().unwrap_or(self.input_tokens);
            self.output_tokens = u["completion_tokens"].as_u64().unwrap_or(self.output_tokens);
        }
        let Some(choice) = chunk["choices"].get(0) else { return };
        if let Some(f) = choice["finish_reason"].as_str() {
            self.finish = Some(f.to_string());
        }
        let delta = &choice["delta"];
        if let Some(t) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            if self.text.is_none() {
                self.text = Some(String::new());
                let item = json!({ "type": "message", "id": format!("msg_{}", &self.id[5..]), "status": "in_progress",
                                   "role": "assistant", "content": [] });
                self.event(out, "response.output_item.added", json!({ "output_index": 0, "item": item }));
                let part = json!({ "type": "output_text", "text": "", "annotations": [] });
                let id = format!("msg_{}", &self.id[5..]);
                self.event(
                    out,
                    "response.content_part.added",
                    json!({ "item_id": id, "output_index": 0, "content_index": 0, "part": part }),
                );
            }
            self.text.as_mut().expect("started above").push_str(t);
            let id = format!("msg_{}", &self.id[5..]);
            self.event(
                out,
                "response.output_text.delta",
                json!({ "item_id": id, "output_index": 0, "content_index": 0, "delta": t, "logprobs": [] }),
            );
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let i = call["index"].as_u64().unwrap_or(0) as usize;
            if self.calls.len() <= i {
                self.calls.resize(i + 1, (String::new(), String::new(), String::new()));
            }
            if let Some(id) = call["id"].as_str() {
                self.calls[i].0 = id.to_string();
            }
            if let Some(n) = call["function"]["name"].as_str() {
                self.calls[i].1.push_str(n);
            }
            if let Some(a) = call["function"]["arguments"].as_str() {
                self.calls[i].2.push_str(a);
            }
        }
    }

    fn end_stream(&mut self, out: &mut BytesMut) {
        if self.done {
            return;
        }
        self.done = true;
        let mut output = Vec::new();
        if let Some(text) = self.text.clone() {
            let id = format!("msg_{}", &self.id[5..]);
            self.event(
                out,
                "response.output_text.done",
                json!({ "item_id": id, "output_index": 0, "content_index": 0, "text": text, "logprobs": [] }),
            );
            let item = self.message_item("completed", &text);
            self.event(out, "response.output_item.done", json!({ "output_index": 0, "item": item }));
            output.push(item);
        }
        for i in 0..self.calls.len() {
            let index = output.len();
            let item = self.call_item(i, "completed");
            self.event(out, "response.output_item.added", json!({ "output_index": index, "item": item }));
            self.event(out, "response.output_item.done", json!({ "output_index": index, "item": item }));
            output.push(item);
        }
        let r = self.response(self.status(), output);
        self.event(out, "response.completed", json!({ "response": r }));
    }

    fn whole(&mut self, answer: &Value) -> Value {
        let choice = &answer["choices"][0];
        self.finish = choice["finish_reason"].as_str().map(str::to_string);
        self.input_tokens = answer["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
        self.output_tokens = answer["usage"]["completion_tokens"].as_u64().unwrap_or(0);
        let m = &choice["message"];
        let mut output = Vec::new();
        if let Some(t) = m["content"].as_str().filter(|t| !t.is_empty()) {
            output.push(self.message_item("completed", t));
        }
        for c in m["tool_calls"].as_array().into_iter().flatten() {
            self.calls.push((
                c["id"].as_str().unwrap_or("call_drover").to_string(),
                c["function"]["name"].as_str().unwrap_or("").to_string(),
                c["function"]["arguments"].as_str().unwrap_or("{}").to_string(),
            ));
            output.push(self.call_item(self.calls.len() - 1, "completed"));
        }
        self.response(self.status(), output)
    }

    fn error(&self, message: String) -> Value {
        json!({ "error": { "message": message, "type": "server_error", "param": null, "code": null } })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::translate::Translating;

    #[test]
    fn requests_map_instructions_items_tools_and_format() {
        let body = json!({ "model": "m", "instructions": "be brief", "max_output_tokens": 9,
            "text": { "format": { "type": "json_schema", "name": "x", "schema": { "type": "object" } } },
            "tools": [{ "type": "function", "name": "f", "parameters": { "type": "object" } }],
            "input": [
              { "role": "user", "content": [{ "type": "input_text", "text": "hi" }, { "type": "input_image", "image_url": "data:image/png;base64,AA" }] },
              { "type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}" },
              { "type": "function_call_output", "call_id": "c1", "output": "42" } ] });
        let (out, stream) = request(&serde_json::to_vec(&body).unwrap(), "smol").unwrap();
        let out: Value = serde_json::from_slice(&out).unwrap();
        assert!(!stream);
        assert_eq!(out["messages"][0], json!({ "role": "system", "content": "be brief" }));
        assert_eq!(out["messages"][1]["content"][1]["image_url"]["url"], "data:image/png;base64,AA");
        assert_eq!(out["messages"][2]["tool_calls"][0]["function"]["name"], "f");
        assert_eq!(out["messages"][3], json!({ "role": "tool", "tool_call_id": "c1", "content": "42" }));
        assert_eq!(
            (out["max_tokens"].as_u64(), out["response_format"]["type"].as_str()),
            (Some(9), Some("json_schema"))
        );
        assert_eq!(out["tools"][0]["function"]["name"], "f");
        let (plain, _) = request(br#"{"model":"m","input":"hello","stream":true}"#, "smol").unwrap();
        let plain: Value = serde_json::from_slice(&plain).unwrap();
        assert_eq!((plain["messages"][0]["content"].as_str(), plain["stream"].as_bool()), (Some("hello"), Some(true)));
    }

    #[test]
    fn streams_and_whole_answers() {
        let mut a = Answer::new(true, true, "smol");
        let sse = "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";
        let out = String::from_utf8(a.feed(Some(&Bytes::copy_from_slice(sse.as_bytes())), true).to_vec()).unwrap();
        let names: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        let last: Value =
            serde_json::from_str(out.trim_end().lines().last().unwrap().trim_start_matches("data: ")).unwrap();
        assert_eq!(last["response"]["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(
            (last["response"]["usage"]["input_tokens"].as_u64(), last["sequence_number"].as_u64()),
            (Some(4), Some(7))
        );
        let mut w = Answer::new(false, true, "smol");
        let whole = w.feed(Some(&Bytes::from_static(b"{\"choices\":[{\"message\":{\"content\":\"hi\",\"tool_calls\":[{\"id\":\"c\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},\"finish_reason\":\"length\"}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}")), true);
        let v: Value = serde_json::from_slice(&whole).unwrap();
        assert_eq!((v["object"].as_str(), v["status"].as_str()), (Some("response"), Some("incomplete")));
        assert_eq!(
            (v["output"][0]["content"][0]["text"].as_str(), v["output"][1]["type"].as_str()),
            (Some("hi"), Some("function_call"))
        );
    }
}
