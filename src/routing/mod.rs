//! Routing: which route an attempt takes. Selection (select/: eligibility, priority tiers,
//! one file per strategy, panic mode, the dry-run explanation), the scheduler that asks it
//! and waits (scheduler.rs), conversation affinity (affinity.rs), the queue in fair order
//! (queue.rs), the resource check with its probe cache and memory reservations (resources.rs).
//!
//! Owns: the queue, the probe readings, the memory reserved by cold loads in flight.
//! May import: config, fleet, protocol, telemetry, probe.

pub mod affinity;
pub mod queue;
pub mod resources;
pub mod scheduler;
pub mod select;
