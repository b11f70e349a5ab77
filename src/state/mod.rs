//! State that outlives a request and is kept in step with the world outside this process:
//! limits and cooldowns shared with other drovers through Redis (shared.rs), the response
//! cache (cache.rs), conversation memory (memory.rs), and the follower of the SQL store
//! that rebuilds the fleet and the keyring when it changes (reload.rs).
//!
//! Owns: the shared-state switch and Redis key names, the cache's entries, the sessions
//! being written, the store's state for /health, the tally of requests per stored route.
//! May import: config, edge, fleet, protocol, storage, telemetry.

pub mod cache;
pub mod memory;
pub mod reload;
pub mod shared;
