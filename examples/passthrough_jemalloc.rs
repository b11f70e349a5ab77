//! The floor (examples/passthrough.rs) with drover's allocator, jemalloc: what the
//! allocator alone gives a stock Pingora pass-through, measured beside drover by
//! `benches/load.sh`.
//!
//! Usage: passthrough_jemalloc LISTEN THREADS BACKEND[,BACKEND...]

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

include!("floor/proxy.rs");
