//! Storage: drover's connections to the stores outside it. The SQL store of routes, API keys
//! and conversations through sqlx (store.rs, with its typed errors and embedded
//! migrations), and a small Redis client (redis.rs).
//!
//! Owns: connections, SQL and RESP; no drover logic above a row or a reply.
//! May import: nothing else of drover's.

pub mod redis;
pub mod store;
