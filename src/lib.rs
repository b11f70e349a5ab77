//! drover: a load balancer for fleets of Ollama servers, built on Pingora.
//!
//! Folders by concern, lower ones never importing higher ones (ARCHITECTURE.md has the
//! table; tests/layout.rs checks it):
//!
//! - `protocol`, `storage`, `telemetry`: the APIs' shapes, the outside stores, counters.
//! - `config`: the file format and the validated settings.
//! - `fleet`: the servers, their health, the snapshot of routes.
//! - `edge`: keys, limits, CORS. `routing`: selection, affinity, queue, resource check.
//! - `state`: Redis-shared limits, the response cache, conversation memory, the store follower.
//! - `placement`: which servers hold which models: management, required models, replicas.
//! - `ops`: drover's own answers: fleet views, status pages, the dashboard, recent errors.
//! - `admin`: the admin API and its guard.
//! - `proxy`: the Pingora `ProxyHttp`, one stage per hook, on top of all of them.
//!
//! `serve` is the composition root: it builds every shared part once and starts Pingora.
//! `accept` wraps Pingora's proxy app; `stop` exits a stopping process once nothing is busy;
//! `probe` is the resource agent run on each host.

pub mod accept;
pub mod admin;
pub mod config;
pub mod edge;
pub mod fleet;
pub mod ops;
pub mod placement;
pub mod probe;
pub mod protocol;
pub mod proxy;
pub mod routing;
pub mod serve;
pub mod state;
pub mod stop;
pub mod storage;
pub mod telemetry;
