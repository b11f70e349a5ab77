//! The fleet's gauges: server up, requests in flight, the load servers report and free memory, read from the current
//! snapshot when Prometheus scrapes (registered in the same default registry as
//! telemetry/metrics.rs), so the request path never updates them.

use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts};

use super::Fleet;

/// Free memory per server as the probes last reported it: (server, RAM bytes, VRAM bytes).
pub(crate) type FreeMemory = Box<dyn Fn() -> Vec<(String, u64, Option<u64>)> + Send + Sync>;

/// Server up, requests in flight and free memory, read from the current snapshot when scraped.
pub(crate) struct FleetCollector {
    fleet: Arc<ArcSwap<Fleet>>,
    free_memory: FreeMemory,
    descs: Vec<Desc>,
}

impl FleetCollector {
    fn reported() -> (IntGaugeVec, prometheus::GaugeVec) {
        let requests = IntGaugeVec::new(
            Opts::new(
                "drover_server_reported_requests",
                "Requests the server reported running or waiting at its last reading",
            ),
            &["server", "state"],
        );
        let kv = prometheus::GaugeVec::new(
            Opts::new(
                "drover_server_kv_cache_used_ratio",
                "KV cache in use the server reported at its last reading, 0 to 1",
            ),
            &["server"],
        );
        (requests.expect("valid metric"), kv.expect("valid metric"))
    }

    fn gauges() -> (IntGaugeVec, IntGaugeVec, IntGaugeVec) {
        let up =
            IntGaugeVec::new(Opts::new("drover_server_up", "1 when the server passes its health checks"), &["server"]);
        let in_flight =
            IntGaugeVec::new(Opts::new("drover_server_in_flight", "Requests in flight on the server"), &["server"]);
        let free = IntGaugeVec::new(
            Opts::new("drover_resource_free_bytes", "Free memory the server's probe last reported"),
            &["server", "kind"],
        );
        (up.expect("valid metric"), in_flight.expect("valid metric"), free.expect("valid metric"))
    }

    /// Registers the collector in the default registry (once per process).
    pub(crate) fn register(fleet: Arc<ArcSwap<Fleet>>, free_memory: FreeMemory) {
        let (up, in_flight, free) = Self::gauges();
        let (requests, kv) = Self::reported();
        let descs = [up.desc(), in_flight.desc(), free.desc(), requests.desc(), kv.desc()]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        if let Err(e) = prometheus::register(Box::new(FleetCollector { fleet, free_memory, descs })) {
            log::warn!("fleet metrics not registered: {e}");
        }
    }
}

impl Collector for FleetCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (up, in_flight, free) = Self::gauges();
        let (requests, kv) = Self::reported();
        for s in &self.fleet.load().servers {
            up.with_label_values(&[s.url.as_str()]).set(s.healthy() as i64);
            in_flight.with_label_values(&[s.url.as_str()]).set(s.in_flight() as i64);
            if let Some(r) = s.reported() {
                requests.with_label_values(&[s.url.as_str(), "running"]).set(i64::from(r.reported.running));
                requests.with_label_values(&[s.url.as_str(), "waiting"]).set(i64::from(r.reported.waiting));
                if let Some(k) = r.reported.kv_cache {
                    kv.with_label_values(&[s.url.as_str()]).set(k);
                }
            }
        }
        for (server, ram, vram) in (self.free_memory)() {
            free.with_label_values(&[&server, "ram"]).set(ram as i64);
            if let Some(v) = vram {
                free.with_label_values(&[&server, "vram"]).set(v as i64);
            }
        }
        [up.collect(), in_flight.collect(), free.collect(), requests.collect(), kv.collect()].concat()
    }
}
