//! API keys: who may call, which models, how fast; checked with no database round trip.
//!
//! A key is `drv_` and 40 random alphanumerics, shown once when created; the store keeps
//! only its SHA-256 (a key carries 238 bits of randomness, so a fast hash is as safe as a
//! slow one) and its first characters. The `Keyring` is an in-memory copy of the key
//! table, swapped whole whenever the reloader sees the change marker move (the key table's
//! triggers move it too), so a request looks its key up in a hash map. Each key's rate
//! buckets and not-yet-stored usage live beside the copy and survive reloads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use rand::distributions::{Alphanumeric, DistString};
use sha2::{Digest, Sha256};

use crate::edge::limits::{retry_after_seconds, Bucket};
use crate::protocol::api::ApiError;
use crate::protocol::usage::Usage;
use crate::storage::store::{KeyUsage, StoredKey};

/// What every key starts with (so that secret scanners and people recognise one).
pub(crate) const KEY_PREFIX: &str = "drv_";
/// Characters of a key kept in the store to tell keys apart in lists.
const SHOWN: usize = 10;

/// A new random key, and the hash and prefix to store for it.
pub(crate) fn generate() -> (String, String, String) {
    let key = format!("{KEY_PREFIX}{}", Alphanumeric.sample_string(&mut rand::rngs::OsRng, 40));
    let hash = hash(&key);
    let prefix = key[..SHOWN].to_string();
    (key, hash, prefix)
}

/// The stored form of a key: SHA-256, lowercase hex.
pub(crate) fn hash(key: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    out
}

/// The key a request presents: `Authorization: Bearer <key>` (ollama, openai clients) or
/// `x-api-key: <key>` (Anthropic clients).
pub(crate) fn presented<'a>(authorization: Option<&'a str>, x_api_key: Option<&'a str>) -> Option<&'a str> {
    let bearer = authorization.and_then(|h| {
        let (scheme, rest) = h.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    bearer.or(x_api_key.map(str::trim)).filter(|k| !k.is_empty())
}

/// A key's live state: its rate buckets and the usage not yet added to its row.
#[derive(Default)]
struct KeyState {
    requests: Mutex<Option<Bucket>>,
    tokens: Mutex<Option<Bucket>>,
    pending: Mutex<KeyUsage>,
}

/// One key as the request path sees it.
pub(crate) struct Key {
    pub(crate) record: StoredKey,
    /// Its place among the keys waiting for a busy model, read from the row once.
    pub(crate) scheduling: Scheduling,
    expires: Option<SystemTime>,
    state: Arc<KeyState>,
}

/// How a key's requests are ordered when a model is busy (routing/queue.rs): its share by
/// weight, and whether it waits behind interactive keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scheduling {
    /// 1 to 1000: a key of weight 2 is served twice as often as one of weight 1.
    pub(crate) weight: u32,
    pub(crate) class: Class,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Interactive,
    /// Served only when no interactive request waits for the model.
    Batch,
}

impl Scheduling {
    /// As a row says it: the admin API checks what it writes, but a row edited by hand in
    /// SQL may hold anything, read as the nearest sound value (weight clamped, class
    /// interactive unless it says batch).
    pub(crate) fn of_row(weight: i64, priority: &str) -> Scheduling {
        let class = if priority == "batch" { Class::Batch } else { Class::Interactive };
        Scheduling { weight: weight.clamp(1, 1000) as u32, class }
    }
}

impl Key {
    /// Whose data (sessions, cached answers) the key's requests see: its hash, which no other
    /// key ever has (an id can be given again after a key is deleted, on some databases).
    pub(crate) fn tenant(&self) -> &str {
        &self.record.key_hash
    }

    /// Whether the key is limited to some models (not `["*"]`): such a key sees only its
    /// models, and not what belongs to the whole fleet.
    pub(crate) fn restricted(&self) -> bool {
        !self.record.models.iter().any(|m| m == "*")
    }

    /// Whether the key may use this virtual model.
    pub(crate) fn allows(&self, model: &str) -> bool {
        if self.record.models.iter().any(|m| m == "*" || m == model) {
            return true;
        }
        // "llama3" and "llama3:latest" are one model.
        let canonical = crate::protocol::ollama::canonical_model(model);
        self.record.models.iter().any(|m| crate::protocol::ollama::canonical_model(m) == canonical)
    }

    /// The 403 for a model the key may not use.
    pub(crate) fn refuse_model(&self, model: &str) -> ApiError {
        ApiError::new(
            403,
            "model_not_allowed",
            format!(
                "API key {:?} may not use model {model:?}; it may use: {}",
                self.record.name,
                self.record.models.join(", ")
            ),
        )
    }

    /// Admits one request under the key's limits, or the 429 to answer.
    pub(crate) fn admit(&self, now: Instant) -> Result<(), ApiError> {
        self.admit_local(now).map_err(|(i, wait)| self.refusal(i, wait))
    }

    /// The key's limits in the order `admit_local`, the shared buckets (state/shared.rs) and `refusal` number
    /// them: tokens per minute (admitted while above zero), then requests per minute.
    pub(crate) fn limits(&self) -> Vec<(&'static str, u64)> {
        let mut v = Vec::new();
        if let Some(n) = self.record.tokens_per_minute {
            v.push(("tok", n.max(1) as u64));
        }
        if let Some(n) = self.record.requests_per_minute {
            v.push(("req", n.max(1) as u64));
        }
        v
    }

    /// Admits one request under the key's own buckets in this process, or says which limit
    /// (see `limits`) refused it and for how long.
    pub(crate) fn admit_local(&self, now: Instant) -> Result<(), (usize, Duration)> {
        let mut i = 0;
        if let Some(b) = self.state.tokens.lock().unwrap().as_mut() {
            b.check(now).map_err(|wait| (i, wait))?;
            i += 1;
        }
        if let Some(b) = self.state.requests.lock().unwrap().as_mut() {
            b.take(1.0, now).map_err(|wait| (i, wait))?;
        }
        Ok(())
    }

    /// The 429 for limit `i` (see `limits`), retry after `wait`.
    pub(crate) fn refusal(&self, i: usize, wait: Duration) -> ApiError {
        let name = &self.record.name;
        let message = match self.limits().get(i) {
            Some(("tok", n)) => format!("API key {name:?} used its {n} tokens per minute"),
            Some((_, n)) => format!("API key {name:?} is limited to {n} requests per minute"),
            None => format!("API key {name:?} is over its limits"),
        };
        ApiError::new(429, "rate_limit_exceeded", message).retry_after(retry_after_seconds(wait))
    }
    /// Counts a finished request and the tokens its answer reported.
    pub(crate) fn record(&self, usage: &Usage, now: Instant) {
        let prompt = usage.prompt_tokens.unwrap_or(0);
        let completion = usage.completion_tokens.unwrap_or(0);
        *self.state.pending.lock().unwrap() +=
            KeyUsage { requests: 1, prompt_tokens: prompt, completion_tokens: completion };
        if let Some(b) = self.state.tokens.lock().unwrap().as_mut() {
            b.debit((prompt + completion) as f64, now);
        }
        let name = self.record.name.as_str();
        crate::telemetry::metrics::KEY_REQUESTS.with_label_values(&[name]).inc();
        crate::telemetry::metrics::KEY_TOKENS.with_label_values(&[name, "prompt"]).inc_by(prompt);
        crate::telemetry::metrics::KEY_TOKENS.with_label_values(&[name, "completion"]).inc_by(completion);
    }
}

/// Every key, by hash.
#[derive(Default)]
pub(crate) struct Keyring {
    by_hash: ArcSwap<HashMap<String, Arc<Key>>>,
    /// Live state by key id, kept across reloads.
    states: Mutex<HashMap<i64, Arc<KeyState>>>,
}

impl Keyring {
    /// Replaces the keys with the table as read from the store.
    pub(crate) fn replace(&self, rows: Vec<StoredKey>) {
        let now = Instant::now();
        let mut states = self.states.lock().unwrap();
        let mut kept = HashMap::with_capacity(rows.len());
        let mut by_hash = HashMap::with_capacity(rows.len());
        for record in rows {
            let state = states.get(&record.id).cloned().unwrap_or_default();
            limit(&state.requests, record.requests_per_minute, now);
            limit(&state.tokens, record.tokens_per_minute, now);
            kept.insert(record.id, state.clone());
            let expires = record.expires_at.as_deref().and_then(|t| humantime::parse_rfc3339_weak(t).ok());
            let scheduling = Scheduling::of_row(record.weight, &record.priority);
            by_hash.insert(record.key_hash.clone(), Arc::new(Key { record, scheduling, expires, state }));
        }
        // Usage of a deleted key has no row left to go to.
        *states = kept;
        self.by_hash.store(Arc::new(by_hash));
    }

    pub(crate) fn len(&self) -> usize {
        self.by_hash.load().len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key a request presented, if it is one that may call now; else the 401.
    pub(crate) fn authenticate(&self, presented: Option<&str>) -> Result<Arc<Key>, ApiError> {
        let Some(presented) = presented else {
            return Err(ApiError::new(
                401,
                "missing_api_key",
                "an API key is required: send Authorization: Bearer <key>",
            ));
        };
        let invalid = || ApiError::new(401, "invalid_api_key", "the API key is not valid");
        let key = self.by_hash.load().get(&hash(presented)).cloned().ok_or_else(invalid)?;
        if !key.record.is_active {
            return Err(ApiError::new(401, "invalid_api_key", format!("API key {:?} is disabled", key.record.name)));
        }
        if key.expires.is_some_and(|t| t <= SystemTime::now()) {
            return Err(ApiError::new(401, "expired_api_key", format!("API key {:?} has expired", key.record.name)));
        }
        Ok(key)
    }

    /// The usage of every key since the last call, for the store; `restore` puts it back.
    pub(crate) fn take_usage(&self) -> Vec<(i64, KeyUsage)> {
        let states = self.states.lock().unwrap();
        states
            .iter()
            .filter_map(|(id, s)| {
                let taken = std::mem::take(&mut *s.pending.lock().unwrap());
                (taken != KeyUsage::default()).then_some((*id, taken))
            })
            .collect()
    }

    pub(crate) fn restore(&self, usage: Vec<(i64, KeyUsage)>) {
        let states = self.states.lock().unwrap();
        for (id, u) in usage {
            if let Some(s) = states.get(&id) {
                *s.pending.lock().unwrap() += u;
            }
        }
    }

    /// Usage not yet stored for one key (added to the stored figures in admin answers).
    pub(crate) fn pending(&self, id: i64) -> KeyUsage {
        self.states.lock().unwrap().get(&id).map(|s| *s.pending.lock().unwrap()).unwrap_or_default()
    }
}

/// Sets a bucket to a key's limit: created, changed or removed.
fn limit(bucket: &Mutex<Option<Bucket>>, per_minute: Option<i64>, now: Instant) {
    let mut b = bucket.lock().unwrap();
    match (per_minute.filter(|n| *n > 0), b.as_mut()) {
        (None, _) => *b = None,
        (Some(n), Some(existing)) => existing.set_limit(n as u64, now),
        (Some(n), None) => *b = Some(Bucket::new(n as u64, now)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, key: &str, models: &[&str], rpm: Option<i64>) -> StoredKey {
        StoredKey {
            id,
            name: format!("k{id}"),
            key_hash: hash(key),
            key_prefix: key[..SHOWN.min(key.len())].to_string(),
            models: models.iter().map(|m| m.to_string()).collect(),
            requests_per_minute: rpm,
            tokens_per_minute: None,
            expires_at: None,
            is_active: true,
            created_at: String::new(),
            request_count: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            weight: 1,
            priority: "interactive".into(),
        }
    }

    #[test]
    fn keys_are_random_and_only_their_hash_matches() {
        let (a, hash_a, prefix) = generate();
        let (b, _, _) = generate();
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() == 44);
        assert_eq!(hash_a.len(), 64);
        // SHA-256 of "abc", as every implementation gives it.
        assert_eq!(hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(a.starts_with(&prefix));
        let ring = Keyring::default();
        let mut stored = row(1, &a, &["chat"], None);
        stored.key_hash = hash_a;
        ring.replace(vec![stored]);
        assert!(ring.authenticate(Some(&a)).is_ok());
        assert_eq!(ring.authenticate(Some(&b)).err().unwrap().status, 401);
        assert_eq!(ring.authenticate(None).err().unwrap().code, "missing_api_key");
    }

    #[test]
    fn presented_from_either_header() {
        assert_eq!(presented(Some("Bearer abc"), None), Some("abc"));
        assert_eq!(presented(Some("bearer  abc "), None), Some("abc"));
        assert_eq!(presented(None, Some("xyz")), Some("xyz"));
        assert_eq!(presented(Some("Basic Zm9v"), None), None);
        assert_eq!(presented(Some("Bearer "), None), None);
    }

    #[test]
    fn models_disabled_expired_and_limits_survive_a_reload() {
        let ring = Keyring::default();
        let mut disabled = row(2, "drv_disabled", &["*"], None);
        disabled.is_active = false;
        let mut expired = row(3, "drv_expired", &["*"], None);
        expired.expires_at = Some("2020-01-01T00:00:00Z".into());
        ring.replace(vec![row(1, "drv_one", &["chat"], Some(2)), disabled, expired]);
        let k = ring.authenticate(Some("drv_one")).unwrap();
        assert!(k.allows("chat") && !k.allows("other"));
        assert_eq!(k.refuse_model("other").status, 403);
        assert_eq!(ring.authenticate(Some("drv_disabled")).err().unwrap().status, 401);
        assert_eq!(ring.authenticate(Some("drv_expired")).err().unwrap().code, "expired_api_key");

        let now = Instant::now();
        assert!(k.admit(now).is_ok());
        k.record(&Usage { prompt_tokens: Some(3), completion_tokens: Some(4), ..Default::default() }, now);
        // The table is read again (as after any change): the bucket and usage carry over.
        ring.replace(vec![row(1, "drv_one", &["chat"], Some(2))]);
        let k = ring.authenticate(Some("drv_one")).unwrap();
        assert!(k.admit(now).is_ok());
        let e = k.admit(now).unwrap_err();
        assert_eq!((e.status, e.retry_after), (429, Some(30)));
        assert_eq!(ring.take_usage(), [(1, KeyUsage { requests: 1, prompt_tokens: 3, completion_tokens: 4 })]);
        assert!(ring.take_usage().is_empty());
    }

    #[test]
    fn a_keys_scheduling_is_read_once_from_its_row_as_the_nearest_sound_value() {
        let read = |w, p| Scheduling::of_row(w, p);
        assert_eq!(read(5, "batch"), Scheduling { weight: 5, class: Class::Batch });
        assert_eq!(read(1, "interactive"), Scheduling { weight: 1, class: Class::Interactive });
        // Rows edited by hand in SQL.
        assert_eq!(read(0, "BATCH"), Scheduling { weight: 1, class: Class::Interactive });
        assert_eq!(read(5000, ""), Scheduling { weight: 1000, class: Class::Interactive });
        let ring = Keyring::default();
        let mut batch = row(7, "k", &["*"], None);
        (batch.weight, batch.priority) = (3, "batch".into());
        ring.replace(vec![batch]);
        let key = ring.authenticate(Some("k")).unwrap();
        assert_eq!(key.scheduling, Scheduling { weight: 3, class: Class::Batch });
    }
}
