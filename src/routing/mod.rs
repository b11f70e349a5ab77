//! Routing: which route an attempt takes. Selection (select/: eligibility, priority tiers,
//! one file per strategy, panic mode, the dry-run explanation), conversation affinity
//! (affinity.rs), the queue in fair order (queue.rs), the resource check with its probe cache
//! and memory reservations (resources.rs), and replicas that follow demand (replicas.rs).
//!
//! Owns: the queue, the probe readings, the memory reserved by cold loads in flight, the
//! copies of models placed by the replica keeper.
//! May import: config, fleet, protocol, telemetry, probe.

pub mod affinity;
pub mod queue;
pub mod replicas;
pub mod resources;
pub mod scheduler;
pub mod select;
