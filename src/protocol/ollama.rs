//! Ollama's vocabulary, read by config, fleet, health and selection alike: server URLs and
//! kinds, devices, model names, and what a server reports it has.

use std::collections::HashSet;

use serde_json::Value;

/// What API a server speaks: a full Ollama, or only the OpenAI-compatible /v1 (llama.cpp, vLLM...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Ollama,
    OpenAi,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Ollama => "ollama",
            Kind::OpenAi => "openai",
        }
    }
}

/// Which memory a route's model lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Device {
    Cpu,
    Gpu,
}

impl Device {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Device::Cpu => "CPU",
            Device::Gpu => "GPU",
        }
    }
}

/// A server's base URL, normalised so that the same server always has the same identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ServerUrl {
    text: String,
    pub(crate) tls: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
    /// Path prefix without a trailing slash ("" for most servers).
    pub(crate) base_path: String,
    /// The Host header value to send (made once: it goes with every request).
    authority: String,
}

/// Why a text is not a server URL.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum ServerUrlError {
    #[error("{text:?}: not a URL ({source})")]
    NotAUrl {
        text: String,
        #[source]
        source: url::ParseError,
    },
    #[error("{text:?}: scheme {scheme:?} is not http or https")]
    Scheme { text: String, scheme: String },
    #[error("{0:?}: has no host")]
    NoHost(String),
    #[error("{0:?}: must not have a query or fragment")]
    QueryOrFragment(String),
}

impl ServerUrl {
    pub(crate) fn parse(text: &str) -> Result<ServerUrl, ServerUrlError> {
        let url = url::Url::parse(text.trim())
            .map_err(|source| ServerUrlError::NotAUrl { text: text.to_string(), source })?;
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            other => return Err(ServerUrlError::Scheme { text: text.to_string(), scheme: other.to_string() }),
        };
        let host = match url.host() {
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(h) => h.to_string(),
            None => return Err(ServerUrlError::NoHost(text.to_string())),
        };
        if url.query().is_some() || url.fragment().is_some() {
            return Err(ServerUrlError::QueryOrFragment(text.to_string()));
        }
        let port = url.port_or_known_default().unwrap_or(if tls { 443 } else { 80 });
        let base_path = url.path().trim_end_matches('/').to_string();
        let text = format!("{}{}", url.origin().ascii_serialization(), base_path);
        let default = if tls { 443 } else { 80 };
        let bracketed = if host.contains(':') { format!("[{host}]") } else { host.clone() };
        let authority = if port == default { bracketed } else { format!("{bracketed}:{port}") };
        Ok(ServerUrl { text, tls, host, port, base_path, authority })
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// The Host header value to send.
    pub(crate) fn authority(&self) -> &str {
        &self.authority
    }
}

/// What a server reported at its last refresh.
#[derive(Debug, Default, Clone)]
pub struct Inventory {
    /// Entries of /api/tags (or synthesised from /v1/models for openai servers).
    pub tags: Vec<Value>,
    /// Entries of /api/ps.
    pub loaded: Vec<Value>,
    /// Canonical names of the models it has (see `canonical_model`).
    pub names: HashSet<String>,
    pub loaded_names: HashSet<String>,
    /// The context size each loaded model runs with, where known: /api/ps's `context_length`,
    /// or the `num_ctx` of the request drover last sent it.
    pub loaded_ctx: std::collections::HashMap<String, u32>,
    /// /api/version of an Ollama server.
    pub version: Option<String>,
    /// An openai-kind server whose /v1/models says its models are vLLM's (`owned_by`):
    /// it continues a final assistant message only when told to.
    pub vllm: bool,
}

/// A model name as Ollama resolves it, in the short form it lists (`/api/tags`): "llama3",
/// "llama3:latest", "library/llama3" and "registry.ollama.ai/library/llama3:latest" are one
/// model, "llama3:latest". The default registry host and the `library` namespace are left
/// out, a missing tag is `latest`; any other host or namespace is kept ("hf.co/u/m:Q4",
/// "myreg:5000/team/m:latest"). Borrowed when the name is already in that form.
pub(crate) fn canonical(name: &str) -> std::borrow::Cow<'_, str> {
    // The common case, asked on every request: a plain "model" or "model:tag" (nothing to
    // trim, no digest, no namespace or host).
    if name.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b'@') {
        return if name.contains(':') {
            std::borrow::Cow::Borrowed(name)
        } else {
            std::borrow::Cow::Owned(with_latest(name))
        };
    }
    resolve(name)
}

/// `canonical` for any name.
fn resolve(name: &str) -> std::borrow::Cow<'_, str> {
    let name = name.trim();
    // A digest pin ("m@sha256:...") names the same model.
    let name = name.split_once('@').map_or(name, |(n, _)| n);
    let mut rest = name;
    if let Some(r) = strip_prefix_ignore_case(rest, "registry.ollama.ai/") {
        rest = r;
        if let Some(r) = strip_prefix_ignore_case(rest, "library/") {
            rest = r;
        }
    } else if !rest[..rest.rfind('/').unwrap_or(0)].contains('/') {
        // "library/m": namespace and model only (a host has a dot or a port, or a third part).
        if let Some(r) = strip_prefix_ignore_case(rest, "library/") {
            rest = r;
        }
    }
    let last = &rest[rest.rfind('/').map_or(0, |i| i + 1)..];
    if last.contains(':') {
        std::borrow::Cow::Borrowed(rest)
    } else {
        std::borrow::Cow::Owned(with_latest(rest))
    }
}

/// `name` with the default tag (a concatenation; `format!` costs more, on every request).
fn with_latest(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + ":latest".len());
    s.push_str(name);
    s.push_str(":latest");
    s
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    (s.len() >= prefix.len() && s.is_char_boundary(prefix.len()) && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

/// `canonical`, owned.
pub(crate) fn canonical_model(name: &str) -> String {
    canonical(name).into_owned()
}

/// An Ollama-shaped /api/tags entry for a model a server names without Ollama's metadata
/// (an openai-kind server's /v1/models, a virtual name no server lists yet): the name with
/// its tag, a digest stable per name (SHA-256 of it: clients key caches by digest), and the
/// details the name tells (parameter size "7b", quantization "Q4_K_M", family).
/// `created` is the Unix time the server gave, if any.
pub(crate) fn synthetic_tag(name: &str, created: Option<i64>) -> Value {
    use sha2::Digest;
    let name = canonical(name);
    let digest: String = sha2::Sha256::digest(name.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let modified = std::time::UNIX_EPOCH + std::time::Duration::from_secs(created.unwrap_or(0).max(0) as u64);
    let base = &name[name.rfind('/').map_or(0, |i| i + 1)..];
    let words: Vec<&str> = base.split([':', '-', '_', '.']).filter(|w| !w.is_empty()).collect();
    let size_word = |w: &&str| {
        let (num, unit) = w.split_at(w.len() - 1);
        !num.is_empty() && num.chars().all(|c| c.is_ascii_digit() || c == '.') && matches!(unit, "b" | "B" | "m" | "M")
    };
    let quant = base.rsplit([':', '-', '.']).find(|w| {
        let u = w.to_ascii_uppercase();
        (u.starts_with('Q') && u[1..].starts_with(|c: char| c.is_ascii_digit()))
            || ["F16", "BF16", "F32", "FP16"].contains(&u.as_str())
    });
    let family: String =
        words.first().map(|w| w.chars().take_while(|c| c.is_ascii_alphabetic()).collect()).unwrap_or_default();
    serde_json::json!({
        "name": name,
        "model": name,
        "modified_at": humantime::format_rfc3339_seconds(modified).to_string(),
        "size": 0,
        "digest": digest,
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": family.to_ascii_lowercase(),
            "families": null,
            "parameter_size": words.iter().find(|w| size_word(w)).map(|w| w.to_ascii_uppercase()).unwrap_or_default(),
            "quantization_level": quant.map(|q| q.to_ascii_uppercase()).unwrap_or_default(),
        },
    })
}

/// The `models` array of an /api/tags or /api/ps answer.
pub(crate) fn models_of(answer: &Value) -> Vec<Value> {
    answer.get("models").and_then(Value::as_array).cloned().unwrap_or_default()
}

/// Canonical name -> `context_length` of the /api/ps entries that report one.
pub(crate) fn contexts_of(models: &[Value]) -> std::collections::HashMap<String, u32> {
    models
        .iter()
        .filter_map(|m| {
            let name = m.get("name").or_else(|| m.get("model")).and_then(Value::as_str)?;
            let ctx = m.get("context_length").and_then(Value::as_u64)?;
            Some((canonical_model(name), u32::try_from(ctx).ok()?))
        })
        .collect()
}

impl Inventory {
    /// The name this server knows a model by (as its /api/tags or /v1/models lists it), for
    /// a model's canonical name.
    pub(crate) fn own_name(&self, canonical_name: &str) -> Option<&str> {
        self.tags.iter().find_map(|m| {
            let listed = m.get("name").or_else(|| m.get("model")).and_then(Value::as_str)?;
            let own = m.get("own").and_then(Value::as_str).unwrap_or(listed);
            (canonical(listed) == canonical_name).then_some(own)
        })
    }

    /// Whether `model` is loaded here in a way a request with `num_ctx` can use without a
    /// reload: loaded, and (when both are known) with that context size. A request without
    /// num_ctx gets the server's default, which drover does not know: any load counts.
    pub(crate) fn warm_for(&self, model: &str, num_ctx: Option<u32>) -> bool {
        let name = canonical_model(model);
        self.loaded_names.contains(&name)
            && match (num_ctx, self.loaded_ctx.get(&name)) {
                (Some(want), Some(have)) => want == *have,
                _ => true,
            }
    }
}

pub(crate) fn names_of(models: &[Value]) -> std::collections::HashSet<String> {
    models
        .iter()
        .filter_map(|m| m.get("name").or_else(|| m.get("model")).and_then(Value::as_str))
        .map(canonical_model)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls_are_normalised() {
        let a = ServerUrl::parse("http://Box:11434/").unwrap();
        assert_eq!(a.as_str(), "http://box:11434");
        assert_eq!(a.authority(), "box:11434");
        let b = ServerUrl::parse("https://gpu.example/ollama/").unwrap();
        assert_eq!(b.as_str(), "https://gpu.example/ollama");
        assert_eq!((b.port, b.tls, b.base_path.as_str()), (443, true, "/ollama"));
        assert_eq!(b.authority(), "gpu.example");
        assert_eq!(
            ServerUrl::parse("ftp://x").unwrap_err().to_string(),
            r#""ftp://x": scheme "ftp" is not http or https"#
        );
        let e = ServerUrl::parse("not a url").unwrap_err();
        assert_eq!(e.to_string(), r#""not a url": not a URL (relative URL without a base)"#);
        assert!(std::error::Error::source(&e).is_some());
        assert!(ServerUrl::parse("not a url").is_err());
    }

    #[test]
    fn canonical_names_add_latest() {
        assert_eq!(canonical_model("llama3"), "llama3:latest");
        assert_eq!(canonical_model("qwen3:14b"), "qwen3:14b");
    }

    #[test]
    fn names_resolve_as_ollama_resolves_them() {
        for same in [
            "llama3",
            "llama3:latest",
            "library/llama3",
            "library/llama3:latest",
            "registry.ollama.ai/library/llama3",
            "registry.ollama.ai/library/llama3:latest",
            "Registry.Ollama.AI/library/llama3:latest",
            "llama3@sha256:abc",
            " llama3 ",
        ] {
            assert_eq!(canonical(same), "llama3:latest", "{same}");
        }
        assert_eq!(canonical("registry.ollama.ai/someone/m"), "someone/m:latest");
        assert_eq!(canonical("hf.co/bartowski/Qwen3-GGUF:Q4_K_M"), "hf.co/bartowski/Qwen3-GGUF:Q4_K_M");
        assert_eq!(canonical("myreg:5000/team/m"), "myreg:5000/team/m:latest");
        assert_eq!(canonical("team/m:7b"), "team/m:7b");
        assert!(matches!(canonical("qwen3:14b"), std::borrow::Cow::Borrowed(_)), "no allocation when canonical");
    }

    #[test]
    fn the_fast_path_resolves_as_the_general_one() {
        for name in ["", "m", "m:7b", "m:", ":", "a-b_c.d:Q4_K_M", "myreg:5000", "x:y:z", "Llama3", "ü", "m\t"] {
            assert_eq!(canonical(name), resolve(name), "{name:?}");
        }
        let server = ServerUrl::parse("http://[::1]:8080").unwrap();
        assert_eq!(server.authority(), "[::1]:8080");
        assert_eq!(ServerUrl::parse("https://[::1]").unwrap().authority(), "[::1]");
    }

    #[test]
    fn synthetic_tags_are_ollama_shaped() {
        let t = synthetic_tag("Qwen3-8B-Q4_K_M", Some(1_700_000_000));
        assert_eq!(t["name"], "Qwen3-8B-Q4_K_M:latest");
        assert_eq!(t["digest"].as_str().unwrap().len(), 64);
        assert_eq!(t["digest"], synthetic_tag("Qwen3-8B-Q4_K_M:latest", None)["digest"], "stable per model");
        assert_ne!(t["digest"], synthetic_tag("other", None)["digest"]);
        assert_eq!(t["modified_at"], "2023-11-14T22:13:20Z");
        assert_eq!(t["details"]["parameter_size"], "8B");
        assert_eq!(t["details"]["quantization_level"], "Q4_K_M");
        assert_eq!(t["details"]["family"], "qwen");
        assert_eq!(synthetic_tag("smol", None)["details"]["parameter_size"], "");
    }

    #[test]
    fn tags_names_are_canonical() {
        let tags = models_of(&json!({"models": [{"name": "llama3:latest"}, {"model": "qwen3"}]}));
        let names = names_of(&tags);
        assert!(names.contains("llama3:latest") && names.contains("qwen3:latest"));
    }

    #[test]
    fn warm_for_a_context_size() {
        let loaded = vec![json!({ "name": "m:7b", "context_length": 8192 }), json!({ "name": "n:1b" })];
        let inv = Inventory {
            loaded_names: names_of(&loaded),
            loaded_ctx: contexts_of(&loaded),
            loaded,
            ..Default::default()
        };
        assert!(inv.warm_for("m:7b", Some(8192)) && inv.warm_for("m:7b", None));
        assert!(!inv.warm_for("m:7b", Some(2048)), "Ollama would reload it");
        assert!(inv.warm_for("n:1b", Some(2048)), "unknown context: counted warm");
        assert!(!inv.warm_for("o", None));
    }
}
