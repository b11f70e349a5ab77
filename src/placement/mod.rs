//! Placement: which servers hold which models. Model management merged over the servers
//! (manage.rs: pull, push, create, copy, delete sent where a model should be), required
//! models kept pulled (required.rs), and copies of a model that follow demand (replicas.rs).
//!
//! Owns: the required models' state, the copies placed by the replica keeper.
//! May import: config, fleet, protocol, routing, telemetry.

pub mod manage;
pub mod replicas;
pub mod required;
