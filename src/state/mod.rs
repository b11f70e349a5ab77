//! State that outlives a request and is kept in step with the world outside this process:
//! limits and cooldowns shared with other drovers through Redis (shared.rs), the response
//! cache (cache.rs), conversation memory (memory.rs), the follower of the SQL store that
//! rebuilds the fleet and the keyring when it changes (reload.rs), and the follower of the
//! `dns:` servers' names, whose addresses join and leave the fleet the same way (dns.rs).
//!
//! Owns: the shared-state switch and Redis key names, the cache's entries, the sessions
//! being written, the store's state for /health, the tally of requests per stored route,
//! the addresses last resolved.
//! May import: config, edge, fleet, protocol, stop, storage, telemetry.

pub mod cache;
pub mod dns;
pub mod memory;
pub mod reload;
pub mod shared;
