//! The request body: a bounded read, the `model` field found in one pass, and the model name rewritten in place.
//!
//! The body is never turned into a JSON tree: it is validated and scanned once, the byte
//! span of the `model` value is remembered, and a rewrite splices the new name into that
//! span, leaving every other byte exactly as the client sent it.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::api::ApiError;

/// Why a body cannot be routed.
#[derive(Debug, PartialEq)]
pub enum BodyError {
    TooLarge { limit: usize },
    Malformed(String),
    NotAnObject,
    MissingModel,
    ModelNotString,
    Read(String),
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> ApiError {
        match e {
            BodyError::TooLarge { limit } => ApiError::new(
                413,
                "body_too_large",
                format!(
                    "request body is larger than the {limit} bytes this server accepts (load_balancer.max_body_bytes)"
                ),
            ),
            BodyError::Malformed(why) => {
                ApiError::new(400, "invalid_json", format!("request body is not valid JSON: {why}"))
            }
            BodyError::NotAnObject => ApiError::new(400, "invalid_json", "request body must be a JSON object"),
            BodyError::MissingModel => {
                ApiError::new(400, "missing_model", "model is required: add a \"model\" field naming the model to use")
            }
            BodyError::ModelNotString => {
                ApiError::new(400, "missing_model", "\"model\" must be a string naming the model to use")
            }
            BodyError::Read(why) => {
                ApiError::new(400, "body_read_failed", format!("could not read the request body: {why}"))
            }
        }
    }
}

/// A body whose model is known and whose model field can be rewritten.
#[derive(Debug, Clone)]
pub struct RoutableBody {
    bytes: Bytes,
    pub model: String,
    /// Byte range of the `model` value (the JSON string, quotes included).
    span: Range<usize>,
}

impl RoutableBody {
    pub fn parse(bytes: Bytes) -> Result<RoutableBody, BodyError> {
        let (model, span) = {
            let mut de = serde_json::Deserializer::from_slice(&bytes);
            let raw = match (&mut de).deserialize_any(ModelFinder) {
                Ok(Found::Object(raw)) => raw,
                Ok(Found::NotObject) => return Err(BodyError::NotAnObject),
                Err(e) => return Err(BodyError::Malformed(e.to_string())),
            };
            de.end().map_err(|e| BodyError::Malformed(e.to_string()))?;
            let raw = raw.ok_or(BodyError::MissingModel)?;
            let text = raw.get();
            if !text.starts_with('"') {
                return Err(BodyError::ModelNotString);
            }
            let model: String = serde_json::from_str(text).map_err(|_| BodyError::ModelNotString)?;
            if model.trim().is_empty() {
                return Err(BodyError::MissingModel);
            }
            let start = text.as_ptr() as usize - bytes.as_ptr() as usize;
            (model, start..start + text.len())
        };
        Ok(RoutableBody { bytes, model, span })
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The body with `model` set to `actual`; the original bytes when nothing changes.
    pub fn rewritten(&self, actual: &str) -> Bytes {
        if actual == self.model && self.bytes[self.span.clone()].len() == actual.len() + 2 {
            return self.bytes.clone();
        }
        let quoted = serde_json::to_string(actual).expect("strings serialise");
        let mut out = BytesMut::with_capacity(self.bytes.len() - self.span.len() + quoted.len());
        out.extend_from_slice(&self.bytes[..self.span.start]);
        out.extend_from_slice(quoted.as_bytes());
        out.extend_from_slice(&self.bytes[self.span.end..]);
        out.freeze()
    }
}

enum Found<'a> {
    Object(Option<&'a RawValue>),
    NotObject,
}

/// Walks the top-level object once; keeps the last `model` value (as Go's decoder, and so Ollama, does).
struct ModelFinder;

impl<'de> Visitor<'de> for ModelFinder {
    type Value = Found<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut model = None;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key == "model" {
                model = Some(map.next_value::<&'de RawValue>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Found::Object(model))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Found::NotObject)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Found::NotObject)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Found::NotObject)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Found::NotObject)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Found::NotObject)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Found::NotObject)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Found::NotObject)
    }
}

/// Reads the whole request body, refusing more than `limit` bytes.
pub async fn read_bounded(
    session: &mut pingora::protocols::http::ServerSession,
    limit: usize,
) -> Result<Bytes, BodyError> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge { limit });
    }
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        // Pingora does not answer Expect itself when the body is read from a filter.
        session.write_continue_response().await.map_err(|e| BodyError::Read(e.to_string()))?;
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(8 * 1024).min(limit));
    while let Some(chunk) = session.read_request_body().await.map_err(|e| BodyError::Read(e.to_string()))? {
        if buf.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<RoutableBody, BodyError> {
        RoutableBody::parse(Bytes::from(s.to_string()))
    }

    #[test]
    fn finds_and_rewrites_model_leaving_the_rest() {
        let b = parse(r#"{"messages":[{"role":"user","content":"hi \"model\""}], "model" : "qwen3" ,"stream":true}"#)
            .unwrap();
        assert_eq!(b.model, "qwen3");
        let out = b.rewritten("qwen3:14b");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"messages":[{"role":"user","content":"hi \"model\""}], "model" : "qwen3:14b" ,"stream":true}"#
        );
    }

    #[test]
    fn same_name_is_zero_copy() {
        let b = parse(r#"{"model":"m"}"#).unwrap();
        let out = b.rewritten("m");
        assert_eq!(out.as_ptr(), b.bytes.as_ptr());
    }

    #[test]
    fn escaped_names_are_decoded_and_reencoded() {
        let b = parse(r#"{"model":"a\u0062c"}"#).unwrap();
        assert_eq!(b.model, "abc");
        assert_eq!(&b.rewritten("abc")[..], br#"{"model":"abc"}"#);
        assert_eq!(&b.rewritten("x\"y")[..], br#"{"model":"x\"y"}"#);
    }

    #[test]
    fn nested_model_keys_are_not_the_model() {
        let b = parse(r#"{"options":{"model":"inner"},"model":"outer"}"#).unwrap();
        assert_eq!(b.model, "outer");
        assert_eq!(&b.rewritten("o2")[..], br#"{"options":{"model":"inner"},"model":"o2"}"#);
    }

    #[test]
    fn bad_bodies_are_named() {
        assert!(matches!(parse("{\"model\": \"x\""), Err(BodyError::Malformed(_))));
        assert!(matches!(parse("{\"model\": \"x\"} trailing"), Err(BodyError::Malformed(_))));
        assert!(matches!(parse(""), Err(BodyError::Malformed(_))));
        assert_eq!(parse("[1,2]").unwrap_err(), BodyError::NotAnObject);
        assert_eq!(parse("{\"prompt\":\"hi\"}").unwrap_err(), BodyError::MissingModel);
        assert_eq!(parse("{\"model\":\"  \"}").unwrap_err(), BodyError::MissingModel);
        assert_eq!(parse("{\"model\":7}").unwrap_err(), BodyError::ModelNotString);
        assert_eq!(parse("{\"model\":null}").unwrap_err(), BodyError::ModelNotString);
    }

    #[test]
    fn large_bodies_keep_their_bytes() {
        let filler = "x".repeat(8 * 1024 * 1024);
        let text = format!(r#"{{"model":"v","prompt":"{filler}"}}"#);
        let b = parse(&text).unwrap();
        let out = b.rewritten("actual:7b");
        assert_eq!(out.len(), text.len() + "actual:7b".len() - 1);
        assert!(out.ends_with(format!("{filler}\"}}").as_bytes()));
    }
}
