//! The response cache: an identical deterministic request (temperature 0, or a fixed seed)
//! is answered with the answer the server gave last time, streamed or not.
//!
//! The key is a SHA-256 of the path, the model's actual name on the server and the body as
//! that server receives it (model rewritten), so two virtual names for one model share
//! entries and one virtual name on two different models does not. Entries live in memory
//! (least recently used evicted past `cache.max_bytes`), and in Redis when shared state is
//! configured (so the drovers of a fleet share them). Each expires after `cache.ttl`.
//! Only whole, successful answers are kept: a 200 whose body ended normally and fits
//! `cache.max_entry_bytes`; never an error, a refusal or a stream that broke. A client's
//! `Cache-Control: no-cache` skips the lookup (the fresh answer replaces the entry),
//! `no-store` skips both. A streamed answer replays as a stream, line by line.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::config::CacheSettings;
use crate::state::shared::Shared;
use crate::storage::redis::Reply;

/// A cached answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub(crate) content_type: String,
    /// Which server gave it (X-Drover-Server on a replay).
    pub(crate) server: String,
    pub(crate) body: Bytes,
}

impl Entry {
    /// Streamed answers (NDJSON, SSE) replay as streams.
    pub(crate) fn streamed(&self) -> bool {
        let ct = self.content_type.to_ascii_lowercase();
        ct.starts_with("application/x-ndjson") || ct.starts_with("text/event-stream")
    }

    /// The body in the pieces a replay writes: one per line (NDJSON) or event (SSE).
    pub(crate) fn pieces(&self) -> Vec<Bytes> {
        if !self.streamed() {
            return vec![self.body.clone()];
        }
        let sep: &[u8] = if self.content_type.starts_with("text/event-stream") { b"\n\n" } else { b"\n" };
        let mut out = Vec::new();
        let mut start = 0;
        let b = &self.body;
        while start < b.len() {
            let end = memchr::memmem::find(&b[start..], sep).map_or(b.len(), |i| start + i + sep.len());
            out.push(b.slice(start..end));
            start = end;
        }
        out
    }

    /// Redis form: a JSON header line, then the body.
    fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(&json!({ "ct": self.content_type, "server": self.server })).expect("json");
        v.push(b'\n');
        v.extend_from_slice(&self.body);
        v
    }

    fn decode(raw: &[u8]) -> Option<Entry> {
        let nl = memchr::memchr(b'\n', raw)?;
        let head: serde_json::Value = serde_json::from_slice(&raw[..nl]).ok()?;
        Some(Entry {
            content_type: head["ct"].as_str()?.to_string(),
            server: head["server"].as_str()?.to_string(),
            body: Bytes::copy_from_slice(&raw[nl + 1..]),
        })
    }

    fn size(&self) -> usize {
        self.body.len() + self.content_type.len() + self.server.len() + 64
    }
}

/// What a client's Cache-Control asks of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Directive {
    Use,
    /// `no-cache`: fetch a fresh answer (and keep it).
    Refresh,
    /// `no-store`: neither look up nor keep.
    Bypass,
}

impl Directive {
    pub(crate) fn of(cache_control: Option<&str>) -> Directive {
        let Some(v) = cache_control else { return Directive::Use };
        let v = v.to_ascii_lowercase();
        if v.contains("no-store") {
            Directive::Bypass
        } else if v.contains("no-cache") {
            Directive::Refresh
        } else {
            Directive::Use
        }
    }
}

struct Stored {
    entry: Arc<Entry>,
    expires: Instant,
    turn: u64,
}

#[derive(Default)]
struct Memory {
    entries: HashMap<String, Stored>,
    /// Least recently used first.
    order: BTreeMap<u64, String>,
    bytes: usize,
    turn: u64,
}

impl Memory {
    fn remove(&mut self, key: &str) {
        if let Some(s) = self.entries.remove(key) {
            self.order.remove(&s.turn);
            self.bytes -= s.entry.size();
        }
    }
}

pub(crate) struct ResponseCache {
    pub(crate) settings: CacheSettings,
    memory: Mutex<Memory>,
    shared: Arc<Shared>,
}

impl ResponseCache {
    pub(crate) fn new(settings: CacheSettings, shared: Arc<Shared>) -> ResponseCache {
        ResponseCache { settings, memory: Mutex::new(Memory::default()), shared }
    }

    /// The key of a request as one server receives it.
    /// The key of an answer: whose (`tenant`: the API key's `tenant`, empty when shared or with no
    /// keys), where, for which model and body.
    pub(crate) fn key(tenant: &str, path: &str, actual_model: &str, payload: &[u8]) -> String {
        let mut h = Sha256::new();
        for part in [tenant.as_bytes(), b"\0", path.as_bytes(), b"\0", actual_model.as_bytes(), b"\0", payload] {
            h.update(part);
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    pub(crate) async fn get(&self, key: &str) -> Option<Arc<Entry>> {
        if let Some(e) = self.get_memory(key) {
            return Some(e);
        }
        if !self.shared.active() {
            return None;
        }
        let redis_key = format!("drover:cache:{key}");
        match self.shared.query(&[b"GET", redis_key.as_bytes()]).await {
            Some(Reply::Bulk(Some(raw))) => {
                let entry = Arc::new(Entry::decode(&raw)?);
                self.put_memory(key, entry.clone());
                Some(entry)
            }
            _ => None,
        }
    }

    fn get_memory(&self, key: &str) -> Option<Arc<Entry>> {
        let mut m = self.memory.lock().unwrap();
        let now = Instant::now();
        let (entry, old_turn) = match m.entries.get(key) {
            Some(s) if s.expires > now => (s.entry.clone(), s.turn),
            Some(_) => {
                m.remove(key);
                return None;
            }
            None => return None,
        };
        m.turn += 1;
        let turn = m.turn;
        m.order.remove(&old_turn);
        m.order.insert(turn, key.to_string());
        m.entries.get_mut(key).expect("present").turn = turn;
        Some(entry)
    }

    /// Keeps an answer (in memory, and in Redis when shared state is on).
    pub(crate) async fn put(&self, key: &str, entry: Entry) {
        if entry.body.len() > self.settings.max_entry_bytes {
            return;
        }
        let entry = Arc::new(entry);
        self.put_memory(key, entry.clone());
        if self.shared.active() {
            let redis_key = format!("drover:cache:{key}");
            let ms = self.settings.ttl.as_millis().max(1).to_string();
            let raw = entry.encode();
            self.shared.query(&[b"SET", redis_key.as_bytes(), &raw, b"PX", ms.as_bytes()]).await;
        }
    }

    fn put_memory(&self, key: &str, entry: Arc<Entry>) {
        let mut m = self.memory.lock().unwrap();
        m.remove(key);
        let size = entry.size();
        if size > self.settings.max_bytes {
            return;
        }
        while m.bytes + size > self.settings.max_bytes {
            let Some((_, oldest)) = m.order.pop_first() else { break };
            if let Some(s) = m.entries.remove(&oldest) {
                m.bytes -= s.entry.size();
            }
        }
        m.turn += 1;
        let turn = m.turn;
        m.order.insert(turn, key.to_string());
        m.bytes += size;
        m.entries.insert(key.to_string(), Stored { entry, expires: Instant::now() + self.settings.ttl, turn });
        crate::telemetry::metrics::CACHE_BYTES.set(m.bytes as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cache(max_bytes: usize) -> ResponseCache {
        let settings = CacheSettings {
            enabled: true,
            ttl: Duration::from_secs(60),
            max_bytes,
            max_entry_bytes: 1 << 20,
            shared_across_keys: false,
        };
        ResponseCache::new(settings, Arc::new(Shared::none()))
    }

    fn entry(body: &str) -> Entry {
        Entry {
            content_type: "application/json".into(),
            server: "http://a".into(),
            body: Bytes::from(body.to_string()),
        }
    }

    #[test]
    fn keys_differ_by_path_model_and_body() {
        let k = ResponseCache::key("", "/api/chat", "m:7b", b"{}");
        assert_eq!(k.len(), 64);
        assert_eq!(k, ResponseCache::key("", "/api/chat", "m:7b", b"{}"));
        assert_ne!(k, ResponseCache::key("", "/api/generate", "m:7b", b"{}"));
        assert_ne!(k, ResponseCache::key("", "/api/chat", "m:3b", b"{}"));
        assert_ne!(k, ResponseCache::key("", "/api/chat", "m:7b", b"{ }"));
        assert_ne!(k, ResponseCache::key("7", "/api/chat", "m:7b", b"{}"), "each tenant its own");
    }

    #[tokio::test]
    async fn least_recently_used_goes_first() {
        let c = cache(3 * entry("x").size());
        for k in ["a", "b", "c"] {
            c.put(k, entry("x")).await;
        }
        assert!(c.get("a").await.is_some()); // a is now the most recent
        c.put("d", entry("x")).await;
        assert!(c.get("b").await.is_none(), "b was the least recently used");
        assert!(c.get("a").await.is_some() && c.get("c").await.is_some() && c.get("d").await.is_some());
    }

    #[test]
    fn streams_replay_in_their_pieces() {
        let ndjson = Entry { content_type: "application/x-ndjson".into(), ..entry("{\"a\":1}\n{\"b\":2}\n") };
        assert_eq!(ndjson.pieces(), vec![Bytes::from("{\"a\":1}\n"), Bytes::from("{\"b\":2}\n")]);
        let sse = Entry { content_type: "text/event-stream".into(), ..entry("data: 1\n\ndata: [DONE]\n\n") };
        assert_eq!(sse.pieces().len(), 2);
        assert_eq!(entry("{}").pieces().len(), 1);
        let round = Entry::decode(&ndjson.encode()).unwrap();
        assert_eq!(round, ndjson);
    }

    #[test]
    fn cache_control() {
        assert_eq!(Directive::of(None), Directive::Use);
        assert_eq!(Directive::of(Some("no-cache")), Directive::Refresh);
        assert_eq!(Directive::of(Some("No-Store, max-age=0")), Directive::Bypass);
    }
}
