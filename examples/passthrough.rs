//! Pingora's own floor for drover's shape: a stock `ProxyHttp` that round-robins over the
//! same backends without touching a body (no parse, no rewrite, no limits, no metrics),
//! built from the same lock file. `benches/load.sh` measures it beside drover, so drover's
//! cost reads as a ratio to what the framework itself costs.
//!
//! Usage: passthrough LISTEN THREADS BACKEND[,BACKEND...]
//!
//! Built with the system allocator, as a stock Pingora program is; passthrough_jemalloc is the
//! same proxy with drover's allocator, to tell the allocator's gain from drover's own.

include!("floor/proxy.rs");
