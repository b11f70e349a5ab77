//! The edge: who may call and from where. API keys and the in-memory keyring (keys.rs), token
//! buckets per key and per client address (limits.rs), and CORS with OLLAMA_ORIGINS
//! semantics (cors.rs).
//!
//! Owns: the keyring (keys by hash, their buckets and pending usage), the client limiter.
//! May import: protocol, storage, telemetry.

pub mod cors;
pub mod keys;
pub mod limits;
