//! Which API a request speaks and what drover does with it, and errors in that API's own format.

use bytes::Bytes;
use http::Method;
use pingora::http::ResponseHeader;
use serde_json::json;

/// The client API a path belongs to; errors are written in its format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    /// Ollama's native API under /api (and drover's own endpoints).
    Ollama,
    /// The OpenAI-compatible API under /v1.
    OpenAi,
    /// The Anthropic-compatible /v1/messages (Ollama 0.14+, coding agents such as Claude Code).
    Anthropic,
    /// OpenAI's Responses API, /v1/responses: OpenAI's error object, its own stream events.
    Responses,
}

impl Api {
    /// The API a path belongs to, before anything else is known about the request.
    pub(crate) fn of_path(path: &str) -> Api {
        match path {
            "/v1/messages" | "/v1/messages/count_tokens" => Api::Anthropic,
            "/v1/responses" => Api::Responses,
            p if p.starts_with("/v1/") => Api::OpenAi,
            _ => Api::Ollama,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DashboardPart {
    Page,
    Script,
    Data,
}

/// A model-routed call, told apart once by `classify`: the later stages read what they need
/// of it here (translate.rs and resume.rs map it to their own terms), never the path again.
/// Its API is `Api::of_path` of its path, set on the request before it is classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    /// Ollama's /api/generate.
    Generate,
    /// Ollama's /api/chat.
    Chat,
    /// Ollama's /api/embed.
    Embed,
    /// Ollama's older /api/embeddings.
    Embeddings,
    /// Ollama's /api/show.
    Show,
    /// OpenAI's /v1/chat/completions.
    ChatCompletions,
    /// OpenAI's /v1/completions.
    Completions,
    /// OpenAI's /v1/embeddings.
    OpenAiEmbeddings,
    /// Anthropic's /v1/messages.
    Messages,
    /// Anthropic's /v1/messages/count_tokens.
    CountTokens,
    /// OpenAI's Responses API, /v1/responses.
    Responses,
}

impl Call {
    const ALL: [Call; 11] = [
        Call::Generate,
        Call::Chat,
        Call::Embed,
        Call::Embeddings,
        Call::Show,
        Call::ChatCompletions,
        Call::Completions,
        Call::OpenAiEmbeddings,
        Call::Messages,
        Call::CountTokens,
        Call::Responses,
    ];

    /// The routed call on `path`, if it is one.
    pub(crate) fn of_path(path: &str) -> Option<Call> {
        Call::ALL.into_iter().find(|c| c.path() == path)
    }

    /// The path the client called (and an Ollama-compatible server is called on).
    pub(crate) fn path(self) -> &'static str {
        match self {
            Call::Generate => "/api/generate",
            Call::Chat => "/api/chat",
            Call::Embed => "/api/embed",
            Call::Embeddings => "/api/embeddings",
            Call::Show => "/api/show",
            Call::ChatCompletions => "/v1/chat/completions",
            Call::Completions => "/v1/completions",
            Call::OpenAiEmbeddings => "/v1/embeddings",
            Call::Messages => "/v1/messages",
            Call::CountTokens => "/v1/messages/count_tokens",
            Call::Responses => "/v1/responses",
        }
    }

    /// Ollama's native /api.
    pub(crate) fn native(self) -> bool {
        matches!(self, Call::Generate | Call::Chat | Call::Embed | Call::Embeddings | Call::Show)
    }

    /// A call whose body may be Ollama's unload (`keep_alive: 0`, nothing to answer).
    pub(crate) fn can_unload(self) -> bool {
        matches!(self, Call::Generate | Call::Chat)
    }

    /// A chat with a messages list: where a session's earlier messages go (state/memory.rs).
    pub(crate) fn is_chat(self) -> bool {
        matches!(self, Call::Chat | Call::ChatCompletions)
    }

    /// Anthropic's Messages or the Responses API: translated to chat completions for an
    /// openai-kind server that has neither (its path, the one the server may lack).
    pub(crate) fn chat_fallback(self) -> Option<&'static str> {
        matches!(self, Call::Messages | Call::Responses).then(|| self.path())
    }
}

/// What drover does with a request, decided from method and path alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// Routed by the `model` field of the JSON body.
    Routed(Call),
    Tags,
    Ps,
    Models,
    /// GET /v1/models/{model}
    Model(String),
    Version,
    Root,
    Health,
    Status,
    LbStats,
    Metrics,
    /// /api/pull, /api/push, /api/create, /api/copy, /api/delete: change the servers' disks (placement/manage.rs).
    Management,
    /// /api/blobs/{digest}: HEAD (does every server have it) and POST (upload to every server).
    Blob(String),
    /// /admin/...: drover's admin API.
    Admin,
    /// /dashboard (the page), /dashboard/app.js, /dashboard/data: the live fleet page.
    Dashboard(DashboardPart),
    NotFound(Api),
    MethodNotAllowed(Api),
}

pub(crate) fn classify(method: &Method, path: &str) -> Endpoint {
    let api = Api::of_path(path);
    let is_get = method == Method::GET || method == Method::HEAD;
    let post = |e: Endpoint| if method == Method::POST { e } else { Endpoint::MethodNotAllowed(api) };
    let get = |e: Endpoint| if is_get { e } else { Endpoint::MethodNotAllowed(api) };
    if let Some(call) = Call::of_path(path) {
        return post(Endpoint::Routed(call));
    }
    match path {
        "/api/tags" => get(Endpoint::Tags),
        "/api/ps" => get(Endpoint::Ps),
        "/v1/models" => get(Endpoint::Models),
        "/api/version" => get(Endpoint::Version),
        "/" => get(Endpoint::Root),
        "/health" => get(Endpoint::Health),
        "/status" => get(Endpoint::Status),
        "/lb-stats" => get(Endpoint::LbStats),
        "/metrics" => get(Endpoint::Metrics),
        // The method (DELETE for /api/delete, POST for the rest) is checked where it is answered.
        "/api/pull" | "/api/push" | "/api/create" | "/api/copy" | "/api/delete" => Endpoint::Management,
        p if p.starts_with("/admin/") => Endpoint::Admin,
        p if p.starts_with("/api/blobs/") && p.len() > "/api/blobs/".len() => match *method {
            Method::HEAD | Method::GET | Method::POST => Endpoint::Blob(p["/api/blobs/".len()..].to_string()),
            _ => Endpoint::MethodNotAllowed(api),
        },
        "/dashboard" | "/dashboard/" => get(Endpoint::Dashboard(DashboardPart::Page)),
        "/dashboard/app.js" => get(Endpoint::Dashboard(DashboardPart::Script)),
        "/dashboard/data" => get(Endpoint::Dashboard(DashboardPart::Data)),
        p if p.starts_with("/v1/models/") && p.len() > "/v1/models/".len() => {
            get(Endpoint::Model(p["/v1/models/".len()..].to_string()))
        }
        _ => Endpoint::NotFound(api),
    }
}

/// An error a client sees, with a message that says what to do.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub(crate) status: u16,
    /// Short machine-readable code, used as OpenAI's `code`.
    pub(crate) code: &'static str,
    pub(crate) message: String,
    /// Seconds for a Retry-After header.
    pub(crate) retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), retry_after: None }
    }

    pub(crate) fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The JSON body in the client's format.
    pub(crate) fn body(&self, api: Api) -> Bytes {
        let value = match api {
            Api::Ollama => json!({ "error": self.message }),
            Api::Anthropic => json!({ "type": "error", "error": {
                "type": anthropic_type(self.status),
                "message": self.message,
            }}),
            Api::OpenAi | Api::Responses => json!({ "error": {
                "message": self.message,
                "type": openai_type(self.status),
                "param": if self.code == "model_not_found" || self.code == "missing_model" { Some("model") } else { None },
                "code": self.code,
            }}),
        };
        Bytes::from(serde_json::to_vec(&value).expect("json values serialise"))
    }

    pub(crate) fn header(&self, body_len: usize) -> ResponseHeader {
        let mut h = ResponseHeader::build(self.status, Some(4)).expect("valid status");
        h.insert_header(http::header::CONTENT_TYPE, "application/json").expect("static header");
        h.insert_header(http::header::CONTENT_LENGTH, body_len.to_string()).expect("number header");
        if self.status == 401 {
            h.insert_header(http::header::WWW_AUTHENTICATE, "Bearer realm=\"drover\"").expect("static header");
        }
        if let Some(s) = self.retry_after {
            h.insert_header(http::header::RETRY_AFTER, s.to_string()).expect("number header");
        }
        h
    }
}

fn openai_type(status: u16) -> &'static str {
    match status {
        401 | 403 => "authentication_error",
        404 => "invalid_request_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    }
}

/// Anthropic's error types (https://docs.anthropic.com/en/api/errors).
fn anthropic_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// Whether an answer of this Content-Type streams: NDJSON (Ollama's) or server-sent events.
pub(crate) fn is_stream(content_type: &str) -> bool {
    let starts = |p: &str| content_type.get(..p.len()).is_some_and(|head| head.eq_ignore_ascii_case(p));
    starts("application/x-ndjson") || starts("text/event-stream")
}

/// The last words of a stream that broke after bytes reached the client, in the stream's format.
pub(crate) fn stream_error_tail(api: Api, content_type: &str, message: &str) -> Option<Bytes> {
    let ct = content_type.to_ascii_lowercase();
    let line = if ct.starts_with("text/event-stream") {
        match api {
            Api::Anthropic => {
                let event = json!({ "type": "error", "error": { "type": "api_error", "message": message } });
                format!("event: error\ndata: {event}\n\n")
            }
            Api::Responses => {
                let event = json!({ "type": "error", "code": "upstream_failed", "message": message, "param": null });
                format!("event: error\ndata: {event}\n\n")
            }
            Api::Ollama | Api::OpenAi => {
                let event =
                    json!({ "error": { "message": message, "type": "server_error", "code": "upstream_failed" } });
                format!("data: {event}\n\n")
            }
        }
    } else if ct.starts_with("application/x-ndjson") || ct.starts_with("application/json") {
        format!("{}\n", json!({ "error": message }))
    } else {
        return None;
    };
    Some(Bytes::from(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_known_by_content_type_in_any_case() {
        assert!(is_stream("application/x-ndjson") && is_stream("Text/Event-Stream; charset=utf-8"));
        assert!(!is_stream("application/json") && !is_stream("text/event") && !is_stream(""));
    }

    #[test]
    fn classifies_paths() {
        // Each routed call: its endpoint, and the API and nativeness the stages read of it.
        let routed = |path| match classify(&Method::POST, path) {
            Endpoint::Routed(call) => (call, Api::of_path(call.path()), call.native(), call.path() == path),
            other => panic!("{path}: {other:?}"),
        };
        assert_eq!(routed("/api/chat"), (Call::Chat, Api::Ollama, true, true));
        assert_eq!(routed("/v1/chat/completions"), (Call::ChatCompletions, Api::OpenAi, false, true));
        assert_eq!(classify(&Method::GET, "/api/chat"), Endpoint::MethodNotAllowed(Api::Ollama));
        assert_eq!(routed("/v1/messages"), (Call::Messages, Api::Anthropic, false, true));
        assert_eq!(routed("/v1/responses"), (Call::Responses, Api::Responses, false, true));
        assert_eq!(routed("/v1/messages/count_tokens"), (Call::CountTokens, Api::Anthropic, false, true));
        for call in Call::ALL {
            assert_eq!(routed(call.path()).0, call, "every call is classified by its own path");
        }
        assert_eq!(classify(&Method::GET, "/v1/messages"), Endpoint::MethodNotAllowed(Api::Anthropic));
        assert_eq!(classify(&Method::HEAD, "/"), Endpoint::Root);
        assert_eq!(classify(&Method::GET, "/v1/models/qwen3:14b"), Endpoint::Model("qwen3:14b".into()));
        assert_eq!(classify(&Method::GET, "/v1/nothing"), Endpoint::NotFound(Api::OpenAi));
        assert_eq!(classify(&Method::DELETE, "/api/delete"), Endpoint::Management);
        assert_eq!(classify(&Method::HEAD, "/api/blobs/sha256:ab"), Endpoint::Blob("sha256:ab".into()));
        assert_eq!(classify(&Method::DELETE, "/api/blobs/sha256:ab"), Endpoint::MethodNotAllowed(Api::Ollama));
        assert_eq!(classify(&Method::PUT, "/admin/servers/3"), Endpoint::Admin);
    }

    #[test]
    fn errors_follow_each_api() {
        let e = ApiError::new(404, "model_not_found", "model \"x\" not found");
        let ollama: serde_json::Value = serde_json::from_slice(&e.body(Api::Ollama)).unwrap();
        assert_eq!(ollama, json!({"error": "model \"x\" not found"}));
        let openai: serde_json::Value = serde_json::from_slice(&e.body(Api::OpenAi)).unwrap();
        assert_eq!(openai["error"]["message"], "model \"x\" not found");
        assert_eq!(openai["error"]["type"], "invalid_request_error");
        assert_eq!(openai["error"]["code"], "model_not_found");
        assert_eq!(openai["error"]["param"], "model");
        let anthropic: serde_json::Value = serde_json::from_slice(&e.body(Api::Anthropic)).unwrap();
        assert_eq!(
            anthropic,
            json!({"type": "error", "error": {"type": "not_found_error", "message": "model \"x\" not found"}})
        );
        let responses: serde_json::Value = serde_json::from_slice(&e.body(Api::Responses)).unwrap();
        assert_eq!(responses["error"]["code"], "model_not_found");
    }

    #[test]
    fn stream_tails_match_the_stream() {
        let sse = stream_error_tail(Api::OpenAi, "text/event-stream; charset=utf-8", "gone").unwrap();
        assert!(sse.starts_with(b"data: {\"error\":"));
        assert!(sse.ends_with(b"\n\n"));
        let nd = stream_error_tail(Api::Ollama, "application/x-ndjson", "gone").unwrap();
        assert_eq!(&nd[..], b"{\"error\":\"gone\"}\n");
        assert!(stream_error_tail(Api::Ollama, "text/plain", "gone").is_none());
        let anthropic = stream_error_tail(Api::Anthropic, "text/event-stream", "gone").unwrap();
        let data = std::str::from_utf8(&anthropic).unwrap().strip_prefix("event: error\ndata: ").unwrap();
        let v: serde_json::Value = serde_json::from_str(data.trim_end()).unwrap();
        assert_eq!(v, json!({"type": "error", "error": {"type": "api_error", "message": "gone"}}));
        let responses = stream_error_tail(Api::Responses, "text/event-stream", "gone").unwrap();
        assert!(responses.starts_with(b"event: error\ndata: {"));
        assert!(std::str::from_utf8(&responses).unwrap().contains("\"type\":\"error\""));
    }
}
