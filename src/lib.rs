//! drover: a load balancer for fleets of Ollama servers, built on Pingora.
//!
//! The data path, one file per stage: `api` (which API and endpoint) -> `body` (bounded
//! read, model rewrite) -> `select` (tiers, weights, eligibility) -> `proxy` (the Pingora
//! `ProxyHttp`: wait, upstream, relay, account). `fleet` holds the snapshot they read;
//! `health` keeps it current; `view` answers fleet-wide calls; `serve` starts it all.

pub mod accept;
pub mod accesslog;
pub mod admin;
pub mod admin_keys;
pub mod admin_models;
pub mod affinity;
pub mod api;
pub mod backends;
pub mod body;
pub mod cache;
pub mod client;
pub mod config;
pub mod cors;
pub mod dashboard;
pub mod fleet;
pub mod health;
pub mod keys;
pub mod limits;
pub mod manage;
pub mod memory;
pub mod metrics;
pub mod ollama;
pub mod probe;
pub mod proxy;
pub mod queue;
pub mod redis;
pub mod reload;
pub mod required;
pub mod resources;
pub mod select;
pub mod serve;
pub mod shared;
pub mod store;
pub mod usage;
pub mod view;
