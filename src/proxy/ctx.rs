//! What one request carries from hook to hook: what was asked, where it went, and what came back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::fleet::{Fleet, Route, Server};
use crate::protocol::api::{Api, ApiError, Call};
use crate::protocol::body::RoutableBody;
use crate::protocol::translate::TranslateError;
use crate::protocol::usage::{Usage, UsageScan};
use crate::routing::scheduler::Chosen;

/// A request's context (Pingora's `CTX`), created for each request and logged when it ends.
pub(crate) struct RequestCtx {
    pub(crate) request_id: String,
    pub(crate) started: Instant,
    pub(crate) api: Api,
    /// The model as asked (canonical), whatever it is: the access log's copy. The truth of
    /// a routed request is `Routed::body.name` (what was asked) and its attempt's
    /// `route.actual_model` (what a server is sent); these two fields only report them.
    pub(crate) model: Option<String>,
    /// Whether `model` is one the fleet knows (routed or discovered): only such names become
    /// metric labels, so a client cannot add label values at will.
    pub(crate) model_known: bool,
    /// The name the last server tried knows the model by (the access log's copy).
    pub(crate) actual_model: Option<String>,
    pub(crate) server: Option<String>,
    pub(crate) attempts: u32,
    pub(crate) status: u16,
    pub(crate) ttfb: Option<Duration>,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) error: Option<String>,
    /// The API key the request presented, when keys are required.
    pub(crate) key: Option<Arc<crate::edge::keys::Key>>,
    /// The allowed Origin of a cross-origin browser request, echoed in every answer.
    pub(crate) cors_origin: Option<String>,
    /// What the answer said it used (tokens, load time).
    pub(crate) usage: Usage,
    /// Set for model-routed requests once the body is read and parsed.
    pub(crate) routed: Option<Box<Routed>>,
    /// Counted until the request ends: a graceful stop exits when none is left.
    _busy: crate::stop::Busy,
}

impl RequestCtx {
    pub(crate) fn new() -> RequestCtx {
        RequestCtx {
            request_id: String::new(),
            started: Instant::now(),
            api: Api::Ollama,
            model: None,
            model_known: false,
            actual_model: None,
            server: None,
            attempts: 0,
            status: 0,
            ttfb: None,
            bytes_in: 0,
            bytes_out: 0,
            error: None,
            key: None,
            cors_origin: None,
            usage: Usage::default(),
            routed: None,
            _busy: crate::stop::Busy::hold(),
        }
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}

/// The state of a model-routed request across its attempts.
pub(crate) struct Routed {
    pub(crate) body: RoutableBody,
    /// The answer as it passes, to keep in the response cache (cache.rs), when it may be;
    /// `None` again once it outgrows cache.max_entry_bytes.
    pub(crate) cache_fill: Option<Vec<u8>>,
    /// The session turn to store once the answer is in (memory.rs), and the answer so far.
    pub(crate) memory: Option<(crate::state::memory::Turn, Vec<u8>)>,
    /// The conversation it continues (affinity.rs), when affinity applies.
    pub(crate) affinity: Option<u64>,
    /// The call the client made (protocol/api.rs `Call`): its path and what can be done with it.
    pub(crate) call: Call,
    /// Anthropic's /v1/messages or the Responses API's /v1/responses: translated to chat
    /// completions for an openai-kind server that has none.
    pub(crate) chat_fallback: Option<&'static str>,
    /// An Ollama endpoint an openai-kind server can answer through translation (chat,
    /// generate, embed, embeddings); the rest of /api needs an Ollama server.
    pub(crate) translatable: Option<crate::protocol::translate::Endpoint>,
    /// The fleet snapshot the request started with, used to its end.
    pub(crate) fleet: Arc<Fleet>,
    /// Servers already tried.
    pub(crate) tried: Vec<Arc<Server>>,
    /// Where the request stands between its attempts.
    pub(crate) attempt: Attempt,
    /// Stale pooled connections replaced so far (load_balancer retries do not count them).
    pub(crate) stale_retries: u32,
    /// "server: what went wrong", for the error when no server is left.
    pub(crate) last_failure: Option<String>,
    /// The error the client gets when the proxy gives up (written by `fail_to_proxy`).
    pub(crate) refusal: Option<ApiError>,
    /// The client went away while the request waited or was being answered.
    pub(crate) client_gone: bool,
    /// Reading the answer as it passes.
    pub(crate) relay: Relay,
    /// The answer's stream can be continued on another server if its server breaks off
    /// (load_balancer.resume), in this format.
    pub(crate) resume: Option<crate::protocol::resume::Format>,
    /// The client's own request, kept once the body asks for a continuation instead (so
    /// set while the answer is being continued).
    pub(crate) asked: Option<Bytes>,
    /// Whose request it is, for the queue's fair order.
    pub(crate) tenant: crate::routing::queue::Tenant,
    /// Servers that asked to rest (429, or 503 with Retry-After): the shortest rest asked,
    /// and whether every one said 429.
    pub(crate) rested: Option<(std::time::Duration, bool)>,
}

/// Where a routed request stands between its attempts, in the order Pingora's hooks move it:
/// `Waiting` -> `Ready` (the body stage took a first route) -> `Running` (`upstream_peer`)
/// -> `Failed` (a failure before any byte reached the client) -> `Running` again on the next
/// route, or the end. A hook that finds another state than its own has nothing to act on.
pub(crate) enum Attempt {
    /// No route taken yet.
    Waiting,
    /// A route is taken, with its slot, for an attempt not yet started.
    Ready(Chosen),
    /// An attempt under way (or answered) on its route.
    Running(Running),
    /// The last attempt failed and gave its slot back. `next` is the route already taken for
    /// the following one (a 5xx answer, while another server was free).
    Failed { last: Running, next: Option<Chosen> },
}

/// One attempt on one route.
pub(crate) struct Running {
    pub(crate) route: Arc<Route>,
    /// Its slot and reservation; `None` once the attempt failed.
    pub(crate) held: Option<Chosen>,
    /// The body as this route's server must see it (model rewritten).
    pub(crate) payload: Bytes,
    /// Set by `upstream_peer`, cleared when `request_body_filter` sends the payload: once per attempt.
    pub(crate) armed: bool,
    /// The upstream socket, corked until the body is written (see `upstream::cork`).
    pub(crate) corked: Option<std::os::unix::io::RawFd>,
    /// The attempt met a pooled connection the server had closed: the next one goes to the
    /// same route on a fresh connection, not counted as an attempt.
    pub(crate) resend: bool,
    /// The request translated for an openai-kind server.
    pub(crate) translated: Option<Translation>,
    /// Its server's answer header arrived.
    pub(crate) answered: bool,
}

impl Attempt {
    /// The route of the attempt under way, or of the last one.
    pub(crate) fn route(&self) -> Option<&Arc<Route>> {
        match self {
            Attempt::Running(run) | Attempt::Failed { last: run, .. } => Some(&run.route),
            Attempt::Waiting | Attempt::Ready(_) => None,
        }
    }

    /// The attempt under way, if one is.
    pub(crate) fn running(&mut self) -> Option<&mut Running> {
        match self {
            Attempt::Running(run) => Some(run),
            _ => None,
        }
    }

    /// The attempt under way failed: its slot goes back now, the server free for others
    /// while the request moves on.
    pub(crate) fn fail(&mut self) {
        *self = match std::mem::replace(self, Attempt::Waiting) {
            Attempt::Running(mut last) => {
                last.held = None;
                Attempt::Failed { last, next: None }
            }
            other => other,
        };
    }

    /// Whether the next attempt's route is taken already (after a 5xx).
    pub(crate) fn has_next(&self) -> bool {
        matches!(self, Attempt::Failed { next: Some(_), .. })
    }
}

/// How a request was translated for an openai-kind server, and whether its answer streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Translation {
    /// Ollama's chat, generate, embed or embeddings (protocol/translate.rs).
    Ollama(crate::protocol::translate::Endpoint, bool),
    /// Anthropic's Messages as chat completions (protocol/anthropic.rs).
    Messages(bool),
    /// The Responses API as chat completions (protocol/responses.rs).
    Responses(bool),
}

impl Translation {
    /// The OpenAI path the translated request goes to.
    pub(crate) fn openai_path(self) -> &'static str {
        match self {
            Translation::Ollama(endpoint, _) => endpoint.openai_path(),
            Translation::Messages(_) | Translation::Responses(_) => "/v1/chat/completions",
        }
    }
}

/// Anthropic's or the Responses API's request as a chat completion for `actual`.
pub(crate) fn as_chat(path: &str, body: &[u8], actual: &str) -> Result<(Bytes, Translation), TranslateError> {
    if path == "/v1/messages" {
        crate::protocol::anthropic::request(body, actual).map(|(b, stream)| (b, Translation::Messages(stream)))
    } else {
        crate::protocol::responses::request(body, actual).map(|(b, stream)| (b, Translation::Responses(stream)))
    }
}

/// What the relay learns about the answer as it streams back.
pub(crate) struct Relay {
    pub(crate) content_type: String,
    /// The answer had a Content-Length (a broken body cannot be given an error tail).
    pub(crate) sized: bool,
    /// Whether the last byte sent ended a line (an error tail starts on a line of its own).
    pub(crate) ends_line: bool,
    pub(crate) scan: Option<UsageScan>,
    /// Ollama's API under another name than the client's: the answer's model put back.
    pub(crate) echo: Option<crate::protocol::echo::Echo>,
    /// An openai-kind server's answer, translated back to the client's API.
    pub(crate) translate: Option<Box<dyn crate::protocol::translate::Translating>>,
    /// A stream passed on record by record, continued elsewhere if its server breaks off.
    pub(crate) stream: Option<crate::protocol::resume::Stream>,
}

impl Routed {
    pub(crate) fn new(body: RoutableBody, call: Call, fleet: Arc<Fleet>) -> Routed {
        Routed {
            cache_fill: None,
            memory: None,
            affinity: None,
            body,
            call,
            translatable: crate::protocol::translate::Endpoint::of_call(call),
            chat_fallback: call.chat_fallback(),
            fleet,
            tried: Vec::new(),
            attempt: Attempt::Waiting,
            stale_retries: 0,
            last_failure: None,
            refusal: None,
            client_gone: false,
            resume: None,
            asked: None,
            rested: None,
            tenant: Default::default(),
            relay: Relay {
                content_type: String::new(),
                sized: false,
                ends_line: true,
                scan: None,
                echo: None,
                translate: None,
                stream: None,
            },
        }
    }
}
