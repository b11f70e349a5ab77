//! Telemetry: what drover reports about itself. Prometheus counters and histograms counted
//! on the request path (metrics.rs) and the JSON access log (accesslog.rs).
//!
//! Owns: the default Prometheus registry's request metrics, the access-log writer thread.
//! May import: nothing else of drover's (every other folder may count here). The fleet's
//! scrape-time gauges live beside the fleet (fleet/gauges.rs); the dashboard in ops/.

pub mod accesslog;
pub mod metrics;
