//! The protocols drover speaks: which API and call a request is (api.rs), errors in that
//! API's own format, the request body read bounded and its model found and rewritten in
//! one pass (body.rs), usage read from answers as they pass (usage.rs), the asked model
//! name put back into Ollama answers (echo.rs), Ollama's API translated to and from OpenAI's
//! for servers that speak only that (translate.rs, with the reading every chat-answer
//! translator shares), Anthropic's Messages (anthropic.rs) and the Responses API
//! (responses.rs) as chat completions and back, a broken stream's continuation on another
//! server spliced into it (resume.rs), the load a server reports about itself (load.rs:
//! llama.cpp's /slots, vLLM's and llama.cpp's /metrics), DNS queries and answers for servers
//! found by name (dns.rs), and Ollama's vocabulary: server URLs, kinds, devices, model
//! names, inventories (ollama.rs).
//!
//! Owns: pure functions and value types, no state.
//! May import: nothing else of drover's.

pub mod anthropic;
pub mod api;
pub mod body;
pub mod dns;
pub mod echo;
pub mod load;
pub mod ollama;
pub mod responses;
pub mod resume;
pub mod translate;
pub mod usage;
