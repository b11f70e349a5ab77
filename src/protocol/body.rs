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

use pingora::protocols::http::ServerSession;

use crate::protocol::api::ApiError;

/// Why a body cannot be routed.
#[derive(Debug, PartialEq)]
pub enum BodyError {
    TooLarge {
        limit: usize,
    },
    /// A chunked body too large to be replayed by the proxy (see `read_bounded`).
    ChunkedTooLarge,
    /// Arrays and objects nested deeper than `MAX_DEPTH`.
    TooDeep,
    Malformed(String),
    NotAnObject,
    MissingModel,
    ModelNotString,
    /// A model name longer than `MAX_MODEL_BYTES`.
    ModelTooLong,
    /// A field drover decides on, written twice or in another spelling that a server reads
    /// as the same field (Go's decoder, and so Ollama, matches keys case-insensitively).
    AmbiguousKey(String),
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
            BodyError::ChunkedTooLarge => ApiError::new(
                411,
                "length_required",
                format!(
                    "a chunked request body over {} KiB cannot be routed: send it with a Content-Length header",
                    TAIL_LIMIT / 1024
                ),
            ),
            BodyError::TooDeep => ApiError::new(
                400,
                "invalid_json",
                format!("request body nests arrays or objects more than {MAX_DEPTH} levels deep"),
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
            BodyError::ModelTooLong => ApiError::new(
                400,
                "invalid_model",
                format!("\"model\" is longer than the {MAX_MODEL_BYTES} bytes a model name may have"),
            ),
            BodyError::AmbiguousKey(why) => ApiError::new(400, "ambiguous_field", why),
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
    /// The model as the client wrote it: what answers name (protocol/echo.rs) and errors quote.
    pub model: String,
    /// The model as Ollama resolves it ("m" is "m:latest"): the one truth of what was asked,
    /// the key of routes, queues, affinity, a key's allowed models and metric labels. What
    /// a server is sent is the route's `actual_model`, written over `model`'s span.
    pub(crate) name: String,
    /// Byte range of the `model` value (the JSON string, quotes included).
    span: Range<usize>,
    /// `options.num_ctx`: Ollama reloads a model loaded with another context size.
    pub num_ctx: Option<u32>,
    /// Temperature 0 or a fixed seed (Ollama's options or OpenAI's top level): the response
    /// cache may answer it.
    pub(crate) deterministic: bool,
    /// `keep_alive: 0` with no prompt and no messages: Ollama's unload (what `ollama stop` sends).
    pub(crate) unload: bool,
}

/// Whether a `keep_alive` value (a number of seconds, or a duration such as "0", "0s", "0m")
/// is zero: unload now.
fn keep_alive_is_zero(raw: &str) -> bool {
    let text = raw.trim().trim_matches('"');
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    !digits.is_empty() && digits.parse::<f64>().is_ok_and(|n| n == 0.0)
}

/// An option's integer as Ollama reads it: any JSON number, its fraction dropped (Go's
/// `int64(float64)`: `1.31072e5` is 131072); `None` for anything else or a negative one.
fn whole_number(raw: &str) -> Option<u32> {
    let n = raw.parse::<f64>().ok().filter(|n| n.is_finite() && *n >= 0.0)?;
    Some(n.min(u32::MAX as f64) as u32)
}

/// How much of a prompt names its conversation (see `conversation_key`).
const PROMPT_PREFIX: usize = 512;

impl RoutableBody {
    pub fn parse(bytes: Bytes) -> Result<RoutableBody, BodyError> {
        let (model, span, num_ctx, deterministic, unload) = {
            let mut de = serde_json::Deserializer::from_slice(&bytes);
            let kept = match (&mut de).deserialize_any(ModelFinder) {
                Ok(Found::Object(kept)) => kept,
                Ok(Found::NotObject) => return Err(BodyError::NotAnObject),
                Err(e) => return Err(BodyError::of_scan(e)),
            };
            de.end().map_err(|e| BodyError::Malformed(e.to_string()))?;
            let raw = kept.model.or(kept.name).ok_or(BodyError::MissingModel)?;
            let text = raw.get();
            if !text.starts_with('"') {
                return Err(BodyError::ModelNotString);
            }
            let model: String = serde_json::from_str(text).map_err(|_| BodyError::ModelNotString)?;
            if model.trim().is_empty() {
                return Err(BodyError::MissingModel);
            }
            if model.len() > MAX_MODEL_BYTES {
                return Err(BodyError::ModelTooLong);
            }
            let start = text.as_ptr() as usize - bytes.as_ptr() as usize;
            let options = kept.options;
            let number = |v: Option<&RawValue>| v.and_then(|v| v.get().parse::<f64>().ok());
            let num_ctx = options.num_ctx.and_then(|v| whole_number(v.get()));
            // The same body gives the same answer: no sampling, or a fixed seed.
            let deterministic = [number(options.temperature), number(kept.temperature)].contains(&Some(0.0))
                || options.seed.is_some_and(|s| s.get().parse::<i64>().is_ok())
                || number(kept.seed).is_some();
            let unload = kept.keep_alive.is_some_and(|k| keep_alive_is_zero(k.get())) && !kept.asks;
            (model, start..start + text.len(), num_ctx, deterministic, unload)
        };
        let name = crate::protocol::ollama::canonical_model(&model);
        Ok(RoutableBody { bytes, model, name, span, num_ctx, deterministic, unload })
    }

    /// A key for the conversation this request continues, from its opening: the messages up
    /// to and including the first user message (so the system prompt and the first question),
    /// or the system prompt and the first `PROMPT_PREFIX` bytes of a prompt. The same for
    /// every turn of one conversation as clients resend the history; `None` when the body
    /// has neither. A second pass over the body, made only when prefix affinity is on.
    pub fn conversation_key(&self) -> Option<u64> {
        use std::hash::{Hash, Hasher};
        #[derive(serde::Deserialize)]
        struct Opening<'a> {
            #[serde(borrow)]
            messages: Option<Vec<&'a RawValue>>,
            #[serde(borrow)]
            system: Option<&'a RawValue>,
            #[serde(borrow)]
            instructions: Option<&'a RawValue>,
            #[serde(borrow)]
            prompt: Option<Cow<'a, str>>,
            #[serde(borrow)]
            input: Option<&'a RawValue>,
        }
        #[derive(serde::Deserialize)]
        struct Role<'a> {
            #[serde(borrow)]
            role: Option<Cow<'a, str>>,
        }
        let o: Opening = serde_json::from_slice(&self.bytes).ok()?;
        // std's SipHash with fixed keys: the same key in every drover process of one build.
        let mut h = std::hash::DefaultHasher::new();
        self.name.hash(&mut h);
        let mut any = false;
        for part in [o.system, o.instructions].into_iter().flatten() {
            part.get().hash(&mut h);
            any = true;
        }
        let messages = o
            .messages
            .or_else(|| o.input.filter(|i| i.get().starts_with('[')).and_then(|i| serde_json::from_str(i.get()).ok()));
        if let Some(messages) = messages {
            for m in messages {
                m.get().hash(&mut h);
                any = true;
                let role = serde_json::from_str::<Role>(m.get()).ok().and_then(|r| r.role);
                if role.as_deref() == Some("user") {
                    break;
                }
            }
        } else if let Some(p) = o.prompt.as_deref() {
            let end = (0..=p.len().min(PROMPT_PREFIX)).rev().find(|&i| p.is_char_boundary(i)).unwrap_or(0);
            p[..end].hash(&mut h);
            any = true;
        } else if let Some(i) = o.input {
            i.get().hash(&mut h);
            any = true;
        }
        any.then(|| h.finish())
    }

    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// The body as the client sent it.
    pub(crate) fn bytes(&self) -> &Bytes {
        &self.bytes
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

/// A value skipped like `Skip`, noting whether it is blank: null, "" or [].
struct Blank(bool);

impl<'de> serde::Deserialize<'de> for Blank {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Blank, D::Error> {
        d.deserialize_any(BlankVisitor)
    }
}

struct BlankVisitor;

impl<'de> Visitor<'de> for BlankVisitor {
    type Value = Blank;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Blank, A::Error> {
        let empty = seq.next_element::<Skip>()?.is_none();
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Blank(empty))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Blank, A::Error> {
        SkipVisitor.visit_map(map).map(|_| Blank(false))
    }

    fn visit_str<E>(self, v: &str) -> Result<Blank, E> {
        Ok(Blank(v.is_empty()))
    }

    fn visit_unit<E>(self) -> Result<Blank, E> {
        Ok(Blank(true))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Blank, E> {
        Ok(Blank(false))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Blank, E> {
        Ok(Blank(false))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Blank, E> {
        Ok(Blank(false))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Blank, E> {
        Ok(Blank(false))
    }
}

/// A value read only to be checked and dropped. Unlike `IgnoredAny`, which serde_json skips
/// without any depth limit, it goes through `deserialize_any`, so serde_json's recursion
/// limit (`MAX_DEPTH` nested arrays and objects) applies to the whole body.
struct Skip;

impl<'de> serde::Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Skip, D::Error> {
        d.deserialize_any(SkipVisitor)
    }
}

struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = Skip;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value::<Skip>()?;
        }
        Ok(Skip)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }

    fn visit_borrowed_str<E>(self, _: &'de str) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_unit<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }
}

/// The top-level values the parse keeps.
#[derive(Default)]
struct Kept<'a> {
    model: Option<&'a RawValue>,
    /// The legacy `name` (Ollama's /api/show and model management accept it for `model`).
    name: Option<&'a RawValue>,
    options: Options<'a>,
    temperature: Option<&'a RawValue>,
    seed: Option<&'a RawValue>,
    keep_alive: Option<&'a RawValue>,
    /// A non-blank `prompt` or `messages`: something to answer.
    asks: bool,
}

enum Found<'a> {
    Object(Kept<'a>),
    NotObject,
}

/// The top-level fields drover decides on: each must appear once, spelled exactly so.
const DECISIVE: [&str; 9] =
    ["model", "name", "options", "temperature", "seed", "keep_alive", "prompt", "messages", "stream"];

/// The fields of `options` drover decides on (memory, the response cache).
const DECISIVE_OPTIONS: [&str; 3] = ["num_ctx", "temperature", "seed"];

/// Marks a scan error that is an ambiguous key (see `BodyError::of_scan`).
const AMBIGUOUS: &str = "ambiguous field: ";

/// A character of a key as Go's encoding/json compares it with a field name (and so Ollama
/// reads it; the same from Go 1.19 to 1.26): ASCII letters regardless of case, and the only
/// two non-ASCII letters whose case folding reaches ASCII: the Kelvin sign (k) and the long
/// s (s). `None` for any other character, which matches no field.
fn folded(c: char) -> Option<u8> {
    match c {
        c if c.is_ascii() => Some((c as u8).to_ascii_lowercase()),
        '\u{212A}' => Some(b'k'),
        '\u{017F}' => Some(b's'),
        _ => None,
    }
}

/// Whether a server decoding with Go's rules reads the (decoded) key `key` as the field
/// `field` (lowercase ASCII): "MODEL", "Model" and "mode\u006c" all name "model".
pub(crate) fn names_field(key: &str, field: &str) -> bool {
    let mut want = field.bytes();
    key.chars().all(|c| folded(c).is_some_and(|a| want.next() == Some(a))) && want.next().is_none()
}

/// Checks one key against the fields drover decides on: the index of the field it is,
/// `None` for a key drover does not read, an error for a second one or another spelling.
/// `seen` has a bit per field already found.
fn decisive<E: serde::de::Error>(key: &str, fields: &[&str], seen: &mut u32) -> Result<Option<usize>, E> {
    let exact = fields.iter().position(|f| *f == key);
    let i = match exact.or_else(|| fields.iter().position(|f| names_field(key, f))) {
        Some(i) => i,
        None => return Ok(None),
    };
    let field = fields[i];
    if exact.is_none() {
        return Err(E::custom(format!(
            "{AMBIGUOUS}the key {key:?} is read as {field:?} by Ollama (its decoder ignores case): spell it {field:?}"
        )));
    }
    if *seen & (1 << i) != 0 {
        return Err(E::custom(format!(
            "{AMBIGUOUS}the key {field:?} appears twice; servers differ on which one they read: send it once"
        )));
    }
    *seen |= 1 << i;
    Ok(Some(i))
}

/// Walks the top-level object once; keeps the values drover decides on, and refuses a body
/// where one of them is not written exactly once (a server could read another than drover).
struct ModelFinder;

impl<'de> Visitor<'de> for ModelFinder {
    type Value = Found<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut kept = Kept::default();
        let mut seen = 0;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let slot = match decisive(&key, &DECISIVE, &mut seen)?.map(|i| DECISIVE[i]) {
                Some("model") => &mut kept.model,
                Some("name") => &mut kept.name,
                Some("temperature") => &mut kept.temperature,
                Some("seed") => &mut kept.seed,
                Some("keep_alive") => &mut kept.keep_alive,
                Some("options") => {
                    kept.options = map.next_value::<Options>()?;
                    continue;
                }
                Some("prompt" | "messages") => {
                    // Skipped in the same pass, noting only whether it is blank.
                    kept.asks |= !map.next_value::<Blank>()?.0;
                    continue;
                }
                _ => {
                    map.next_value::<Skip>()?;
                    continue;
                }
            };
            // Kept whole (the model string, numbers), and checked for depth like the rest.
            let raw = map.next_value::<&'de RawValue>()?;
            serde_json::from_str::<Skip>(raw.get()).map_err(serde::de::Error::custom)?;
            *slot = Some(raw);
        }
        Ok(Found::Object(kept))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
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

/// The `options` values drover decides on, each checked like the top-level fields. Any other
/// value of `options` (not an object) is skipped: the server refuses it.
#[derive(Default)]
struct Options<'a> {
    num_ctx: Option<&'a RawValue>,
    temperature: Option<&'a RawValue>,
    seed: Option<&'a RawValue>,
}

impl<'de> serde::Deserialize<'de> for Options<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Options<'de>, D::Error> {
        d.deserialize_any(OptionsVisitor)
    }
}

struct OptionsVisitor;

impl<'de> Visitor<'de> for OptionsVisitor {
    type Value = Options<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Options<'de>, A::Error> {
        let mut options = Options::default();
        let mut seen = 0;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let slot = match decisive(&key, &DECISIVE_OPTIONS, &mut seen)? {
                Some(0) => &mut options.num_ctx,
                Some(1) => &mut options.temperature,
                Some(_) => &mut options.seed,
                None => {
                    map.next_value::<Skip>()?;
                    continue;
                }
            };
            let raw = map.next_value::<&'de RawValue>()?;
            serde_json::from_str::<Skip>(raw.get()).map_err(serde::de::Error::custom)?;
            *slot = Some(raw);
        }
        Ok(options)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Options<'de>, A::Error> {
        SkipVisitor.visit_seq(seq).map(|_| Options::default())
    }

    fn visit_str<E>(self, _: &str) -> Result<Options<'de>, E> {
        Ok(Options::default())
    }

    fn visit_bool<E>(self, _: bool) -> Result<Options<'de>, E> {
        Ok(Options::default())
    }

    fn visit_i64<E>(self, _: i64) -> Result<Options<'de>, E> {
        Ok(Options::default())
    }

    fn visit_u64<E>(self, _: u64) -> Result<Options<'de>, E> {
        Ok(Options::default())
    }

    fn visit_f64<E>(self, _: f64) -> Result<Options<'de>, E> {
        Ok(Options::default())
    }

    fn visit_unit<E>(self) -> Result<Options<'de>, E> {
        Ok(Options::default())
    }
}

impl BodyError {
    /// A scan error: too deep, an ambiguous key, or malformed.
    fn of_scan(e: serde_json::Error) -> BodyError {
        let text = e.to_string();
        if text.starts_with("recursion limit exceeded") {
            return BodyError::TooDeep;
        }
        match text.strip_prefix(AMBIGUOUS) {
            // serde_json appends where it was; the key is what the client needs.
            Some(why) => BodyError::AmbiguousKey(why.rsplit_once(" at line ").map_or(why, |(w, _)| w).to_string()),
            None => BodyError::Malformed(text),
        }
    }
}

/// Checks that a body's top-level `fields` (lowercase) each appear at most once, spelled
/// exactly so, the way the routed scan does; for bodies drover reads whole with serde_json
/// (model management), before they are read. Not-JSON bodies pass: their reader refuses them.
pub(crate) fn unambiguous(body: &[u8], fields: &'static [&'static str]) -> Result<(), BodyError> {
    struct Keys(&'static [&'static str]);
    impl<'de> Visitor<'de> for Keys {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = 0;
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                decisive(&key, self.0, &mut seen)?;
                map.next_value::<Skip>()?;
            }
            Ok(())
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    match de.deserialize_map(Keys(fields)) {
        Err(e) if e.to_string().starts_with(AMBIGUOUS) => Err(BodyError::of_scan(e)),
        _ => Ok(()),
    }
}

/// The longest model name a request may name (Ollama's own names are shorter: host,
/// namespace, model and tag of at most 350, 80, 80 and 80 bytes).
pub(crate) const MAX_MODEL_BYTES: usize = 600;

/// How deep a body may nest arrays and objects, the top-level object included: serde_json's
/// own recursion limit (it refuses a 128th level), which stops a hostile body from
/// exhausting the stack; deeper bodies are refused (400) and never forwarded.
pub(crate) const MAX_DEPTH: usize = 127;

/// The size of Pingora's retry buffer: the proxy loop replays a body only when this buffer
/// holds it whole. See `read_bounded`.
pub(crate) const TAIL_LIMIT: usize = 64 * 1024;

/// Reads the whole request body, refusing more than `limit` bytes.
///
/// With `keep_tail`, the body's last bytes are kept in Pingora's retry buffer: it is switched
/// on once at most `TAIL_LIMIT` bytes remain, so it is never truncated. The proxy loop then
/// calls `request_body_filter` at the start of every attempt, and drover hands it the whole
/// rewritten body there. A chunked body (length unknown in advance) has to fit the buffer
/// whole; a larger one gets 411.
pub(crate) async fn read_bounded(
    session: &mut ServerSession,
    limit: usize,
    keep_tail: bool,
) -> Result<Bytes, BodyError> {
    let headers = &session.req_header().headers;
    let declared = if headers.contains_key(http::header::TRANSFER_ENCODING) {
        None
    } else {
        headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok())
    };
    if declared.is_some_and(|n: usize| n > limit) {
        return Err(BodyError::TooLarge { limit });
    }
    if expects_continue(session) {
        // Pingora does not answer Expect itself when the body is read from a filter, and by
        // default closes a connection that was answered before its body was read.
        session.set_close_on_response_before_downstream_finish(false);
        let sent = session.write_continue_response().await;
        session.set_close_on_response_before_downstream_finish(true);
        sent.map_err(|e| BodyError::Read(e.to_string()))?;
    }
    // A body that comes in one chunk is kept as that chunk, not copied; `buf` gathers one
    // that comes in more (allocated then).
    let mut buf = BytesMut::new();
    let mut first: Option<Bytes> = None;
    // Whether the retry buffer was on before a chunk was read (so it holds the tail).
    let mut tail_kept = false;
    loop {
        let buffering = keep_tail && declared.is_none_or(|n| n - session.body_bytes_read() <= TAIL_LIMIT);
        if buffering {
            session.enable_retry_buffering();
        }
        match session.read_request_body().await.map_err(|e| BodyError::Read(e.to_string()))? {
            Some(chunk) if chunk.is_empty() => {}
            Some(chunk) => {
                tail_kept |= buffering;
                if buf.len() + first.as_ref().map_or(0, Bytes::len) + chunk.len() > limit {
                    return Err(BodyError::TooLarge { limit });
                }
                if let Some(earlier) = first.take() {
                    buf.reserve(declared.unwrap_or(8 * 1024).min(limit));
                    buf.extend_from_slice(&earlier);
                    buf.extend_from_slice(&chunk);
                } else if buf.is_empty() {
                    first = Some(chunk);
                } else {
                    buf.extend_from_slice(&chunk);
                }
            }
            None => break,
        }
    }
    let body = first.unwrap_or_else(|| buf.freeze());
    // (`retry_buffer_truncated`, not `get_retry_buffer().is_none()`: the latter copies the tail.)
    if keep_tail && !body.is_empty() && (!tail_kept || session.retry_buffer_truncated()) {
        return Err(BodyError::ChunkedTooLarge);
    }
    Ok(body)
}

/// Whether the client waits for `100 Continue` before sending its body.
pub(crate) fn expects_continue(session: &ServerSession) -> bool {
    session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Reads and discards what is left of a refused body, so that the client, still sending,
/// reads the refusal instead of a reset connection. Bounded in bytes and time.
pub(crate) async fn drain(session: &mut ServerSession, max_bytes: usize, within: std::time::Duration) {
    if session.is_body_done() || (expects_continue(session) && session.body_bytes_read() == 0) {
        // Done, or the client was never told to send it.
        return;
    }
    let _ = tokio::time::timeout(within, async {
        let mut read = 0;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            read += chunk.len();
            if read > max_bytes {
                break;
            }
        }
    })
    .await;
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
    fn the_legacy_name_field_stands_for_a_missing_model() {
        let b = parse(r#"{"name":"team-llama","verbose":true}"#).unwrap();
        assert_eq!((b.model.as_str(), b.name.as_str()), ("team-llama", "team-llama:latest"));
        assert_eq!(&b.rewritten("llama3.2:3b")[..], br#"{"name":"llama3.2:3b","verbose":true}"#);
        let both = parse(r#"{"name":"a","model":"b"}"#).unwrap();
        assert_eq!(both.model, "b", "model wins");
    }

    #[test]
    fn an_unload_is_keep_alive_zero_with_nothing_to_answer() {
        for unload in [
            r#"{"model":"m","keep_alive":0}"#,
            r#"{"model":"m","keep_alive":"0s","prompt":""}"#,
            r#"{"model":"m","messages":[],"keep_alive":"0"}"#,
            r#"{"model":"m","keep_alive":0.0,"stream":false}"#,
        ] {
            assert!(parse(unload).unwrap().unload, "{unload}");
        }
        for not in [
            r#"{"model":"m"}"#,
            r#"{"model":"m","keep_alive":"5m"}"#,
            r#"{"model":"m","keep_alive":-1}"#,
            r#"{"model":"m","keep_alive":0,"prompt":"hi"}"#,
            r#"{"model":"m","keep_alive":0,"messages":[{"role":"user","content":"hi"}]}"#,
        ] {
            assert!(!parse(not).unwrap().unload, "{not}");
        }
    }

    #[test]
    fn a_field_a_server_could_read_otherwise_is_refused() {
        let ambiguous = |s: &str| match parse(s) {
            Err(BodyError::AmbiguousKey(why)) => why,
            other => panic!("{s}: {other:?}"),
        };
        // Go's decoder (Ollama) matches keys without case, the last one winning.
        assert!(ambiguous(r#"{"model":"m-x","MODEL":"m-y"}"#).contains("\"MODEL\" is read as \"model\""));
        assert!(ambiguous(r#"{"Model":"m-y"}"#).contains("spell it \"model\""));
        // Python's and Rust's parsers take one of two equal keys; which one differs.
        assert!(ambiguous(r#"{"model":"m-x","model":"m-y"}"#).contains("appears twice"));
        // Escaped keys are compared as decoded, and Go folds the long s and the Kelvin sign.
        assert!(ambiguous(r#"{"model":"m","\u004dodel":"y"}"#).contains("model"));
        ambiguous("{\"model\":\"m\",\"\u{17f}tream\":false}");
        ambiguous("{\"model\":\"m\",\"\u{212a}eep_alive\":0}");
        ambiguous(r#"{"model":"m","NAME":"y"}"#);
        ambiguous(r#"{"model":"m","messages":[],"Messages":[{"role":"user","content":"hi"}]}"#);
        // Inside options: what decides memory and the cache.
        ambiguous(r#"{"model":"m","options":{"num_ctx":2048,"num_ctx":131072}}"#);
        ambiguous(r#"{"model":"m","options":{"temperature":0,"Temperature":1}}"#);
        // An escape that decodes to the exact name is the name; other fields are not checked.
        assert_eq!(parse(r#"{"mod\u0065l":"abc","Format":"json","format":"json"}"#).unwrap().model, "abc");
        assert_eq!(parse(r#"{"model":"m","options":{"model":"x","Stop":["a"]}}"#).unwrap().model, "m");
        let e: ApiError = parse(r#"{"model":"a","MODEL":"b"}"#).unwrap_err().into();
        assert_eq!((e.status, e.code), (400, "ambiguous_field"));
        assert!(!e.message.contains(" at line"), "{}", e.message);
    }

    #[test]
    fn keys_fold_as_gos_decoder_folds_them() {
        for (key, field) in [("MODEL", "model"), ("keep_ALIVE", "keep_alive"), ("\u{17f}eed", "seed")] {
            assert!(names_field(key, field), "{key}");
        }
        for (key, field) in
            [("models", "model"), ("mode", "model"), ("m\u{f6}del", "model"), ("keep-alive", "keep_alive")]
        {
            assert!(!names_field(key, field), "{key}");
        }
        assert!(unambiguous(br#"{"source":"a","destination":"b"}"#, &["source", "destination"]).is_ok());
        assert!(unambiguous(br#"{"source":"a","Destination":"b","destination":"c"}"#, &["destination"]).is_err());
        assert!(unambiguous(b"not json", &["model"]).is_ok(), "left to the reader that refuses it");
    }

    #[test]
    fn a_model_name_is_bounded() {
        let long = "m".repeat(MAX_MODEL_BYTES + 1);
        assert_eq!(parse(&format!(r#"{{"model":"{long}"}}"#)).unwrap_err(), BodyError::ModelTooLong);
        let most = "m".repeat(MAX_MODEL_BYTES);
        assert_eq!(parse(&format!(r#"{{"model":"{most}"}}"#)).unwrap().model, most);
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
    fn nesting_is_bounded() {
        let nested = |depth: usize| format!("{{\"model\":\"m\",\"x\":{}1{}}}", "[".repeat(depth), "]".repeat(depth));
        // The top-level object is one level: 126 arrays inside it make the most allowed.
        assert_eq!(parse(&nested(MAX_DEPTH - 1)).unwrap().model, "m");
        assert_eq!(parse(&nested(MAX_DEPTH)).unwrap_err(), BodyError::TooDeep);
        let deep_object = format!("{{\"model\":\"m\",\"o\":{}{}}}", "{\"a\":".repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH));
        assert_eq!(parse(&deep_object).unwrap_err(), BodyError::TooDeep);
        assert_eq!(parse(&nested(100_000)).unwrap_err(), BodyError::TooDeep, "no stack overflow");
        let e: ApiError = BodyError::TooDeep.into();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("127 levels"), "{}", e.message);
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

    #[test]
    fn num_ctx_is_read_from_options() {
        assert_eq!(parse(r#"{"model":"m","options":{"temperature":0,"num_ctx":8192}}"#).unwrap().num_ctx, Some(8192));
        assert_eq!(parse(r#"{"model":"m","options":{"num_ctx":"big"}}"#).unwrap().num_ctx, None);
        // Ollama takes any number, dropping the fraction: so does drover's memory planning.
        assert_eq!(parse(r#"{"model":"m","options":{"num_ctx":1.31072e5}}"#).unwrap().num_ctx, Some(131072));
        assert_eq!(parse(r#"{"model":"m","options":{"num_ctx":4096.9}}"#).unwrap().num_ctx, Some(4096));
        assert_eq!(parse(r#"{"model":"m"}"#).unwrap().num_ctx, None);
        let deep = format!(r#"{{"model":"m","options":{}1{}}}"#, "[".repeat(200), "]".repeat(200));
        assert!(matches!(parse(&deep), Err(BodyError::TooDeep)), "options are depth-checked too");
    }

    #[test]
    fn a_conversation_keeps_its_key_from_turn_to_turn() {
        let key = |s: &str| parse(s).unwrap().conversation_key();
        let sys = r#"{"role":"system","content":"be brief"}"#;
        let u1 = r#"{"role":"user","content":"hi"}"#;
        let a1 = r#"{"role":"assistant","content":"hello"}"#;
        let u2 = r#"{"role":"user","content":"more"}"#;
        let turn1 = key(&format!(r#"{{"model":"m","messages":[{sys},{u1}]}}"#));
        let turn2 = key(&format!(r#"{{"model":"m","messages":[{sys},{u1},{a1},{u2}],"stream":true}}"#));
        assert!(turn1.is_some());
        assert_eq!(turn1, turn2);
        // Without a system prompt too.
        assert_eq!(
            key(&format!(r#"{{"model":"m","messages":[{u1}]}}"#)),
            key(&format!(r#"{{"model":"m","messages":[{u1},{a1},{u2}]}}"#))
        );
        // Another opening, another model: another conversation.
        assert_ne!(turn1, key(&format!(r#"{{"model":"m","messages":[{sys},{u2}]}}"#)));
        assert_ne!(turn1, key(&format!(r#"{{"model":"n","messages":[{sys},{u1}]}}"#)));
        // A prompt's opening; nothing to go by in an embedding of numbers.
        let long = "x".repeat(600);
        assert_eq!(
            key(&format!(r#"{{"model":"m","prompt":"{long}"}}"#)),
            key(&format!(r#"{{"model":"m","prompt":"{long} and more"}}"#))
        );
        assert_eq!(key(r#"{"model":"m","keep_alive":0}"#), None);
    }
}
