//! Ollama's vocabulary, read by config, fleet, health and selection alike: server URLs and
//! kinds, devices, model names, and what a server reports it has.

use std::collections::HashSet;

use serde_json::Value;

/// What API a server speaks: a full Ollama, or only the OpenAI-compatible /v1 (llama.cpp, vLLM...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ollama,
    OpenAi,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ollama => "ollama",
            Kind::OpenAi => "openai",
        }
    }
}

/// Which memory a route's model lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Gpu,
}

impl Device {
    pub fn as_str(self) -> &'static str {
        match self {
            Device::Cpu => "CPU",
            Device::Gpu => "GPU",
        }
    }
}

/// A server's base URL, normalised so that the same server always has the same identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerUrl {
    text: String,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash ("" for most servers).
    pub base_path: String,
}

impl ServerUrl {
    pub fn parse(text: &str) -> Result<ServerUrl, String> {
        let url = url::Url::parse(text.trim()).map_err(|e| format!("{text:?}: not a URL ({e})"))?;
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            other => return Err(format!("{text:?}: scheme {other:?} is not http or https")),
        };
        let host = match url.host() {
            Some(url::Host::Ipv6(a)) => a.to_string(),
            Some(h) => h.to_string(),
            None => return Err(format!("{text:?}: has no host")),
        };
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!("{text:?}: must not have a query or fragment"));
        }
        let port = url.port_or_known_default().unwrap_or(if tls { 443 } else { 80 });
        let base_path = url.path().trim_end_matches('/').to_string();
        let text = format!("{}{}", url.origin().ascii_serialization(), base_path);
        Ok(ServerUrl { text, tls, host, port, base_path })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The Host header value to send.
    pub fn authority(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
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
}

/// Ollama treats "llama3" and "llama3:latest" as the same model.
pub fn canonical_model(name: &str) -> String {
    if name.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

/// The `models` array of an /api/tags or /api/ps answer.
pub fn models_of(answer: &Value) -> Vec<Value> {
    answer.get("models").and_then(Value::as_array).cloned().unwrap_or_default()
}

/// Canonical name -> `context_length` of the /api/ps entries that report one.
pub fn contexts_of(models: &[Value]) -> std::collections::HashMap<String, u32> {
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
    /// Whether `model` is loaded here in a way a request with `num_ctx` can use without a
    /// reload: loaded, and (when both are known) with that context size. A request without
    /// num_ctx gets the server's default, which drover does not know: any load counts.
    pub fn warm_for(&self, model: &str, num_ctx: Option<u32>) -> bool {
        let name = canonical_model(model);
        self.loaded_names.contains(&name)
            && match (num_ctx, self.loaded_ctx.get(&name)) {
                (Some(want), Some(have)) => want == *have,
                _ => true,
            }
    }
}

pub fn names_of(models: &[Value]) -> std::collections::HashSet<String> {
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
        assert!(ServerUrl::parse("ftp://x").unwrap_err().contains("ftp"));
        assert!(ServerUrl::parse("not a url").is_err());
    }

    #[test]
    fn canonical_names_add_latest() {
        assert_eq!(canonical_model("llama3"), "llama3:latest");
        assert_eq!(canonical_model("qwen3:14b"), "qwen3:14b");
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
