//! Conversation memory (opt-in, `memory.enabled`): a chat request that carries the session
//! header (`memory.header`, default X-Session-Id) gets the session's earlier messages put
//! before its own, and after a successful answer the session holds its messages and the
//! answer. For clients that send only the new message each turn.
//!
//! Where: Redis when shared state is configured (`drover:memory:<hash>`, expiring after
//! `memory.ttl`), else the SQL store (`drover_conversations`). Sessions are stored under a
//! SHA-256 of their id. Bounds: the last `memory.max_messages` messages and at most
//! `memory.max_bytes` of them are kept (oldest dropped first, a leading system message
//! kept); a session idle for `memory.ttl` is forgotten. Only /api/chat and
//! /v1/chat/completions; an unreadable store leaves the request as the client sent it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::config::MemorySettings;
use crate::protocol::api::Call;
use crate::state::shared::Shared;
use crate::storage::redis::Reply;
use crate::storage::store::StoreHandle;

pub(crate) struct Memory {
    pub(crate) settings: MemorySettings,
    shared: Arc<Shared>,
    /// The SQL store, where sessions live without Redis.
    store: Arc<StoreHandle>,
    /// Sessions whose last turn is being stored: the next turn waits for it (a client can
    /// send it the moment the answer's last byte arrives).
    pending: Mutex<HashMap<String, watch::Receiver<bool>>>,
}

/// How long a turn waits for the previous one to be stored.
const PENDING_WAIT: Duration = Duration::from_secs(2);

/// One request's part in its session: what to store once the answer is in.
pub(crate) struct Turn {
    key: String,
    messages: Vec<Value>,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64
}

/// Where a session is stored: a SHA-256 of its id, within its tenant's (the anonymous
/// tenant's sessions keep the plain hash they always had).
fn session_key(tenant: &str, session: &str) -> String {
    let mut h = Sha256::new();
    if !tenant.is_empty() {
        h.update(b"key:");
        h.update(tenant.as_bytes());
        h.update(b"\0");
    }
    h.update(session.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl Memory {
    pub(crate) fn new(settings: MemorySettings, shared: Arc<Shared>, store: Arc<StoreHandle>) -> Memory {
        Memory { settings, shared, store, pending: Mutex::new(HashMap::new()) }
    }

    /// The session a `call` with these headers takes part in, if any.
    pub(crate) fn session<'a>(&self, call: Call, headers: &'a http::HeaderMap) -> Option<&'a str> {
        if !self.settings.enabled || !call.is_chat() {
            return None;
        }
        headers.get(&self.settings.header).and_then(|v| v.to_str().ok()).filter(|s| !s.is_empty())
    }

    /// The body with the session's history before its messages, and the turn to store after
    /// the answer; `None` when the body has no messages array (left as it is).
    /// `tenant` is whose session it is (the API key's `tenant`; empty without keys): a session id
    /// names a session within its tenant only, so one key can neither read nor extend
    /// another's by sending its id.
    pub(crate) async fn recall(&self, tenant: &str, session: &str, body: &[u8]) -> Option<(Vec<u8>, Turn)> {
        let mut object: Map<String, Value> = serde_json::from_slice(body).ok()?;
        let sent = match object.get_mut("messages") {
            Some(Value::Array(m)) => std::mem::take(m),
            _ => return None,
        };
        let key = session_key(tenant, session);
        let pending = self.pending.lock().unwrap().get(&key).cloned();
        if let Some(mut stored) = pending {
            let _ = tokio::time::timeout(PENDING_WAIT, stored.wait_for(|done| *done)).await;
        }
        let mut history = self.load(&key).await;
        // The request's own system prompt, if it sends one, replaces the stored one.
        if sent.first().is_some_and(|m| m["role"] == "system") {
            history.retain(|m| m["role"] != "system");
            let mut all = vec![sent[0].clone()];
            all.extend(history);
            all.extend(sent.into_iter().skip(1));
            history = all;
        } else {
            history.extend(sent);
        }
        let messages = self.bounded(history);
        object.insert("messages".into(), Value::Array(messages.clone()));
        let body = serde_json::to_vec(&object).expect("json values serialise");
        Some((body, Turn { key, messages }))
    }

    /// Stores the turn with the answer's text, in the background; the session's next turn
    /// waits for it. Called as the answer's last bytes go to the client.
    pub(crate) fn remember_soon(self: &Arc<Self>, turn: Turn, answer: String) {
        let (done, stored) = watch::channel(false);
        self.pending.lock().unwrap().insert(turn.key.clone(), stored);
        let memory = self.clone();
        tokio::spawn(async move {
            let key = turn.key.clone();
            memory.remember(turn, answer).await;
            let _ = done.send(true);
            let mut pending = memory.pending.lock().unwrap();
            if pending.get(&key).is_some_and(|rx| *rx.borrow()) {
                pending.remove(&key);
            }
        });
    }

    /// Stores the turn with the answer's text (an assistant message).
    async fn remember(&self, turn: Turn, answer: String) {
        let mut messages = turn.messages;
        messages.push(json!({ "role": "assistant", "content": answer }));
        let messages = self.bounded(messages);
        let text = serde_json::to_string(&messages).expect("json values serialise");
        let ttl = self.settings.ttl;
        if self.shared.active() {
            let k = format!("drover:memory:{}", turn.key);
            let ms = ttl.as_millis().max(1).to_string();
            if self.shared.query(&[b"SET", k.as_bytes(), text.as_bytes(), b"PX", ms.as_bytes()]).await.is_some() {
                return;
            }
        }
        let now = now_ms();
        match self.store.get().await {
            Ok(store) => {
                if let Err(e) = store.put_conversation(&turn.key, &text, now + ttl.as_millis() as i64, now).await {
                    log::warn!("conversation memory: not stored: {e}");
                }
            }
            Err(e) => log::warn!("conversation memory: not stored: {e}"),
        }
    }

    async fn load(&self, key: &str) -> Vec<Value> {
        let text = if self.shared.active() {
            let k = format!("drover:memory:{key}");
            match self.shared.query(&[b"GET", k.as_bytes()]).await {
                Some(Reply::Bulk(Some(raw))) => String::from_utf8(raw).ok(),
                Some(_) => None,
                None => self.load_sql(key).await,
            }
        } else {
            self.load_sql(key).await
        };
        text.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
    }

    async fn load_sql(&self, key: &str) -> Option<String> {
        let store = self.store.get().await.ok()?;
        store.get_conversation(key, now_ms()).await.unwrap_or_else(|e| {
            log::warn!("conversation memory: not read: {e}");
            None
        })
    }

    fn bounded(&self, messages: Vec<Value>) -> Vec<Value> {
        bounded(messages, self.settings.max_messages, self.settings.max_bytes)
    }
}

/// The last `max_messages` messages within `max_bytes`, a leading system message kept.
fn bounded(mut messages: Vec<Value>, max_messages: usize, max_bytes: usize) -> Vec<Value> {
    let system = messages.first().filter(|m| m["role"] == "system").cloned();
    if system.is_some() {
        messages.remove(0);
    }
    let budget = |m: &Value| m.to_string().len();
    let mut bytes: usize = system.iter().map(budget).sum::<usize>() + messages.iter().map(budget).sum::<usize>();
    let limit = max_messages.saturating_sub(usize::from(system.is_some()));
    while messages.len() > 1 && (messages.len() > limit || bytes > max_bytes) {
        bytes -= budget(&messages.remove(0));
    }
    system.into_iter().chain(messages).collect()
}

/// The assistant's text in an answer: one JSON object, NDJSON lines, or SSE events, in the
/// Ollama or OpenAI shape.
pub(crate) fn answer_text(body: &[u8]) -> String {
    let piece = |v: &Value| -> Option<String> {
        let s = v["message"]["content"]
            .as_str()
            .or_else(|| v["choices"][0]["delta"]["content"].as_str())
            .or_else(|| v["choices"][0]["message"]["content"].as_str())?;
        Some(s.to_string())
    };
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return piece(&v).unwrap_or_default();
    }
    let text = String::from_utf8_lossy(body);
    text.lines()
        .filter_map(|l| {
            let l = l.strip_prefix("data:").map(str::trim).unwrap_or(l);
            serde_json::from_str::<Value>(l).ok()
        })
        .filter_map(|v| piece(&v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_answers_in_every_shape() {
        assert_eq!(answer_text(br#"{"message":{"role":"assistant","content":"hi"},"done":true}"#), "hi");
        let ndjson = b"{\"message\":{\"content\":\"a\"}}\n{\"message\":{\"content\":\"b\"}}\n{\"done\":true,\"message\":{\"content\":\"\"}}\n";
        assert_eq!(answer_text(ndjson), "ab");
        let sse = b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"y\"}}]}\n\ndata: [DONE]\n\n";
        assert_eq!(answer_text(sse), "xy");
        assert_eq!(answer_text(br#"{"choices":[{"message":{"content":"z"}}]}"#), "z");
    }

    #[test]
    fn keeps_the_last_messages_and_the_system_prompt() {
        let msgs: Vec<Value> = std::iter::once(json!({ "role": "system", "content": "s" }))
            .chain((0..5).map(|i| json!({ "role": "user", "content": i })))
            .collect();
        let expect = |ids: &[i32]| -> Vec<Value> {
            std::iter::once(json!({ "role": "system", "content": "s" }))
                .chain(ids.iter().map(|i| json!({ "role": "user", "content": i })))
                .collect()
        };
        assert_eq!(bounded(msgs.clone(), 3, 1 << 20), expect(&[3, 4]));
        // A byte budget of the system prompt and two small messages.
        let size = |v: Value| v.to_string().len();
        let budget =
            size(json!({ "role": "system", "content": "s" })) + 2 * size(json!({ "role": "user", "content": 0 }));
        assert_eq!(bounded(msgs, 50, budget), expect(&[3, 4]));
    }
}
