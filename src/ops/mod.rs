//! drover's own answers, built in one place: the fleet-wide views and status pages
//! (views.rs: /api/tags, /api/ps, /v1/models, /api/version, /health, /status, /lb-stats),
//! the dashboard with its page and script (dashboard.rs, dashboard.html, dashboard.js), and
//! the last errors clients got (errors.rs). Each builds a JSON value from what it is given;
//! proxy/own.rs writes it to the client.
//!
//! Owns: the recent errors.
//! May import: config, fleet, protocol, storage, telemetry.

pub mod dashboard;
pub mod errors;
pub mod views;
