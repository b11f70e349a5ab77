//! The admin API for API keys: /admin/keys (list, create), /admin/keys/{id} (read, change, remove).
//!
//! A new key is in the answer to its creation and nowhere else. Every field is checked
//! before anything is written; a bad request is a 400 naming each bad field. A write is
//! applied to the keyring before the answer is sent.

use serde_json::{json, Map, Value};

use super::fields::{check_fields, error, nullable, parse_body, store_failed, Reply};
use super::Admin;
use crate::config::rules;
use crate::storage::store::{KeyFields, StoredKey};

/// Fields drover writes itself; accepted and ignored, so that what was read can be sent back.
const IGNORED: [&str; 6] = ["id", "created_at", "key_prefix", "request_count", "prompt_tokens", "completion_tokens"];

impl Admin {
    pub(crate) async fn keys(&self, method: &http::Method, id: Option<&str>, body: Option<&[u8]>) -> Reply {
        use http::Method;
        match (method, id) {
            (&Method::GET, None) => self.list_keys().await,
            (&Method::POST, None) => self.create_key(body).await,
            (&Method::GET, Some(id)) => self.get_key(id).await,
            (&Method::PUT, Some(id)) => self.update_key(id, body).await,
            (&Method::DELETE, Some(id)) => self.delete_key(id).await,
            _ => error(405, format!("{method} is not allowed here")),
        }
    }

    fn key_json(&self, row: &StoredKey) -> Value {
        let pending = self.keyring.pending(row.id);
        let mut v = serde_json::to_value(row).expect("a key serialises");
        v["request_count"] = json!(row.request_count + pending.requests as i64);
        v["prompt_tokens"] = json!(row.prompt_tokens + pending.prompt_tokens as i64);
        v["completion_tokens"] = json!(row.completion_tokens + pending.completion_tokens as i64);
        v
    }

    async fn list_keys(&self) -> Reply {
        let rows = match self.store.get().await {
            Ok(store) => store.list_keys().await,
            Err(e) => Err(e),
        };
        match rows {
            Ok(rows) => (200, json!({ "keys": rows.iter().map(|r| self.key_json(r)).collect::<Vec<_>>() })),
            Err(e) => store_failed(&e, ""),
        }
    }

    async fn get_key(&self, id: &str) -> Reply {
        let id = match key_id(id) {
            Ok(id) => id,
            Err(reply) => return reply,
        };
        match self.store.get().await {
            Err(e) => store_failed(&e, ""),
            Ok(store) => match store.get_key(id).await {
                Ok(Some(row)) => (200, self.key_json(&row)),
                Ok(None) => error(404, format!("no key with id {id}")),
                Err(e) => store_failed(&e, ""),
            },
        }
    }

    async fn create_key(&self, body: Option<&[u8]>) -> Reply {
        let fields = match parse_body(body).and_then(|m| key_fields(&m, true)) {
            Ok(f) => f,
            Err(reply) => return reply,
        };
        let (key, hash, prefix) = crate::edge::keys::generate();
        match self.store_write(|store| async move { store.insert_key(&fields, &hash, &prefix).await }).await {
            Ok(row) => {
                let mut v = self.key_json(&row);
                v["key"] = json!(key);
                v["note"] = json!("the key is shown only now: store it; drover keeps only its hash");
                (201, v)
            }
            Err(reply) => reply,
        }
    }

    async fn update_key(&self, id: &str, body: Option<&[u8]>) -> Reply {
        let id = match key_id(id) {
            Ok(id) => id,
            Err(reply) => return reply,
        };
        let fields = match parse_body(body).and_then(|m| key_fields(&m, false)) {
            Ok(f) => f,
            Err(reply) => return reply,
        };
        match self.store_write(|store| async move { store.update_key(id, &fields).await }).await {
            Ok(Some(row)) => (200, self.key_json(&row)),
            Ok(None) => error(404, format!("no key with id {id}")),
            Err(reply) => reply,
        }
    }

    async fn delete_key(&self, id: &str) -> Reply {
        let id = match key_id(id) {
            Ok(id) => id,
            Err(reply) => return reply,
        };
        let gone = self
            .store_write(|store| async move {
                let gone = store.get_key(id).await?;
                if gone.is_some() {
                    store.delete_key(id).await?;
                }
                Ok(gone)
            })
            .await;
        match gone {
            Ok(Some(row)) => (200, json!({ "deleted": self.key_json(&row) })),
            Ok(None) => error(404, format!("no key with id {id}")),
            Err(reply) => reply,
        }
    }
}

/// A key id from the path; any other text is an id no key has.
fn key_id(id: &str) -> Result<i64, Reply> {
    id.parse().map_err(|_| error(404, format!("no key with id {id}")))
}

/// Checks every field of a key request; on any error, a 400 naming each bad field.
fn key_fields(m: &Map<String, Value>, creating: bool) -> Result<KeyFields, Reply> {
    let mut f = KeyFields::default();
    let required: &[&str] = if creating { &["name"] } else { &[] };
    let per_minute = |v: &Value| {
        nullable(v, |v| match v.as_i64() {
            Some(n) if n >= 1 => Ok(n),
            _ => Err(format!("{v}: must be an integer >= 1, or null for no limit")),
        })
    };
    check_fields(m, &IGNORED, required, |k, v| {
        match k {
            "name" => match v.as_str() {
                Some(s) if !s.trim().is_empty() && s.chars().count() <= 100 => f.name = Some(s.trim().to_string()),
                _ => return Err(format!("{v}: must be a string of 1 to 100 characters")),
            },
            "models" => match v.as_array() {
                Some(list) if !list.is_empty() => {
                    let mut names = Vec::new();
                    let mut bad = None;
                    for m in list {
                        match m.as_str() {
                            Some("*") => names.push("*".to_string()),
                            Some(s) => match rules::name(s) {
                                Ok(()) => names.push(s.to_string()),
                                Err(e) => bad = Some(e),
                            },
                            None => bad = Some(format!("{m}: must be a model name")),
                        }
                    }
                    if let Some(why) = bad {
                        return Err(why);
                    }
                    f.models = Some(names);
                }
                _ => return Err(format!("{v}: must be a non-empty list of virtual model names, or [\"*\"] for all")),
            },
            "requests_per_minute" => f.requests_per_minute = Some(per_minute(v)?),
            "tokens_per_minute" => f.tokens_per_minute = Some(per_minute(v)?),
            "expires_at" => match v {
                Value::Null => f.expires_at = Some(None),
                Value::String(s) => match humantime::parse_rfc3339_weak(s) {
                    Ok(t) => f.expires_at = Some(Some(humantime::format_rfc3339_seconds(t).to_string())),
                    Err(e) => {
                        return Err(format!("{s:?}: expected an RFC 3339 time such as 2027-01-31T00:00:00Z ({e})"))
                    }
                },
                _ => return Err(format!("{v}: must be an RFC 3339 time or null")),
            },
            "is_active" => match v {
                Value::Bool(b) => f.is_active = Some(*b),
                _ => return Err(format!("{v}: must be true or false")),
            },
            "weight" => match v.as_i64() {
                Some(n) if (1..=1000).contains(&n) => f.weight = Some(n),
                _ => return Err(format!("{v}: must be an integer from 1 to 1000 (its share of freed slots)")),
            },
            "priority" => match v.as_str() {
                Some(p @ ("interactive" | "batch")) => f.priority = Some(p.to_string()),
                _ => return Err(format!("{v}: must be \"interactive\" or \"batch\"")),
            },
            "key" | "key_hash" => return Err("drover makes keys itself; create a new key instead".into()),
            _ => return Err("unknown field".into()),
        }
        Ok(())
    })?;
    if creating && f.models.is_none() {
        f.models = Some(vec!["*".into()]);
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: Value, creating: bool) -> Result<KeyFields, Reply> {
        key_fields(v.as_object().unwrap(), creating)
    }

    #[test]
    fn key_fields_are_checked_together() {
        let f = fields(json!({ "name": "ci", "requests_per_minute": 60, "expires_at": "2030-01-01T00:00:00Z" }), true)
            .unwrap();
        assert_eq!(f.models, Some(vec!["*".to_string()]));
        assert_eq!(f.requests_per_minute, Some(Some(60)));
        assert_eq!(f.expires_at, Some(Some("2030-01-01T00:00:00Z".into())));
        let (status, e) =
            fields(json!({ "models": [], "tokens_per_minute": 0, "expires_at": "soon", "color": 1, "key": "x" }), true)
                .unwrap_err();
        assert_eq!(status, 400);
        for field in ["name", "models", "tokens_per_minute", "expires_at", "color", "key"] {
            assert!(e["fields"].get(field).is_some(), "{field}: {e}");
        }
        let f = fields(json!({ "requests_per_minute": null, "id": 3, "request_count": 9 }), false).unwrap();
        assert_eq!(f.requests_per_minute, Some(None));
        assert_eq!(f.name, None);
    }
}
