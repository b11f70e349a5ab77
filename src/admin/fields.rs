//! The admin API's answers and field checks: the reply type, errors, the 400 that names
//! every bad field at once (and writes nothing), store failures as 409/404/503, and the one
//! loop every admin validator (routes, keys) runs its fields through.

use serde_json::{json, Map, Value};

use crate::storage::store::StoreError;

/// An admin answer: status and JSON body.
pub(crate) type Reply = (u16, Value);

pub(crate) fn error(status: u16, message: impl Into<String>) -> Reply {
    (status, json!({ "error": message.into() }))
}

/// The answer to a store failure: 409 when the write conflicts with a stored row (a
/// uniqueness rule), 404 when the row is gone, 503 when the database cannot be reached.
/// `after` follows the cause, e.g. ", nothing was changed".
pub(crate) fn store_failed(e: &StoreError, after: &str) -> Reply {
    let (status, cause) = match e {
        StoreError::Conflict(_) => (409, "conflicts with a stored row"),
        StoreError::NotFound(_) => (404, "not found in the store"),
        StoreError::Unavailable(_) => (503, "store unreachable"),
    };
    error(status, format!("{cause}{after}: {e}"))
}

/// The 400 for a request with bad fields: each named with why, and nothing written.
pub(crate) fn invalid(bad: Map<String, Value>) -> Reply {
    let names: Vec<String> = bad.iter().map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or(""))).collect();
    (400, json!({ "error": format!("invalid fields, nothing was changed: {}", names.join("; ")), "fields": bad }))
}

pub(crate) fn parse_body(body: Option<&[u8]>) -> Result<Map<String, Value>, Reply> {
    let body = body.filter(|b| !b.is_empty()).ok_or_else(|| error(400, "a JSON object body is required"))?;
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(error(400, "the body must be a JSON object")),
        Err(e) => Err(error(400, format!("the body is not valid JSON: {e}"))),
    }
}

/// Checks an admin request's fields: `field` checks (and keeps) each one, the names in
/// `ignored` (read-only fields a client may send back) are skipped, and each of `required`
/// must be present. Every bad field is named with why in one 400.
pub(crate) fn check_fields(
    m: &Map<String, Value>,
    ignored: &[&str],
    required: &[&str],
    mut field: impl FnMut(&str, &Value) -> Result<(), String>,
) -> Result<(), Reply> {
    let mut bad: Map<String, Value> = Map::new();
    for (key, v) in m {
        if ignored.contains(&key.as_str()) {
            continue;
        }
        if let Err(why) = field(key, v) {
            bad.insert(key.clone(), json!(why));
        }
    }
    for name in required {
        if !m.contains_key(*name) {
            bad.insert(name.to_string(), json!("is required"));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(invalid(bad))
    }
}

/// A nullable field: `None` for JSON null, else `check`'s value.
pub(crate) fn nullable<T>(v: &Value, check: impl FnOnce(&Value) -> Result<T, String>) -> Result<Option<T>, String> {
    match v {
        Value::Null => Ok(None),
        _ => check(v).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_failures_map_to_their_status() {
        let after = ", nothing was changed";
        assert_eq!(store_failed(&StoreError::Conflict("dup".into()), after).0, 409);
        assert_eq!(store_failed(&StoreError::NotFound("gone".into()), after).0, 404);
        let (status, body) = store_failed(&StoreError::Unavailable("refused".into()), after);
        assert_eq!(status, 503);
        assert_eq!(body["error"], "store unreachable, nothing was changed: refused");
    }

    #[test]
    fn every_bad_field_is_named_and_required_ones_too() {
        let m = serde_json::from_str::<Map<String, Value>>(r#"{"a": 1, "b": "x", "id": 7}"#).unwrap();
        let (status, body) = check_fields(&m, &["id"], &["c"], |k, _| match k {
            "a" => Ok(()),
            _ => Err("bad".into()),
        })
        .unwrap_err();
        assert_eq!(status, 400);
        assert_eq!(body["fields"], json!({ "b": "bad", "c": "is required" }));
        assert!(check_fields(&m, &["id", "b"], &["a"], |_, _| Ok(())).is_ok());
    }
}
