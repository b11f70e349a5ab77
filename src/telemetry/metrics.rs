//! Prometheus metrics, in the default registry that pingora-prometheus serves on metrics_listen
//! (and drover at GET /metrics). The request path only counts; per-server gauges are read
//! from the fleet snapshot at scrape time (fleet/gauges.rs).

use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_histogram_vec, register_int_counter_vec, register_int_gauge, Encoder, Histogram,
    HistogramVec, IntCounterVec, IntGauge, TextEncoder,
};

/// LLM latencies: tens of milliseconds (a cached embedding) to minutes (a cold 70B load).
const LATENCY_BUCKETS: &[f64] =
    &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0];

/// The model label of a request for a model the fleet does not know: every such name counts
/// under this one value, so label values cannot be added from outside.
pub(crate) const UNKNOWN_MODEL: &str = "(unknown)";

pub(crate) static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "drover_requests_total",
        "Requests answered, by model asked, server and status",
        &["model", "server", "status"]
    )
    .expect("metric registers once")
});

pub(crate) static REQUEST_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "drover_request_duration_seconds",
        "Time from request to the end of the answer",
        &["model"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

pub(crate) static TTFB: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "drover_time_to_first_byte_seconds",
        "Time from request to the answer's header",
        &["model"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

pub(crate) static RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "drover_upstream_retries_total",
        "Attempts that failed, by reason (mid_stream: after bytes reached the client)",
        &["reason"]
    )
    .expect("metric registers once")
});

pub(crate) static RESUMPTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "drover_stream_resumptions_total",
        "Streams whose server broke off: continued on another server, or ended with an error line",
        &["outcome"]
    )
    .expect("metric registers once")
});

pub(crate) static REPLICA_CHANGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "drover_replica_changes_total",
        "Copies of a model placed or let go by load_balancer.replicas: up (loaded on another server while its requests waited), down (unloaded after scale_down_idle), failed (a load that did not succeed)",
        &["model", "server", "change"]
    )
    .expect("metric registers once")
});

pub(crate) static UPSTREAM_REFUSALS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "drover_upstream_refusals_total",
        "Answers that sent a request elsewhere without counting as failures: rate_limited (429, or 503 with Retry-After; the server rests) and credentials (401/403 to drover's credentials; the server is down until a health check passes)",
        &["server", "reason"]
    )
    .expect("metric registers once")
});

pub(crate) static KEY_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("drover_key_requests_total", "Model-routed requests answered, by API key name", &["key"])
        .expect("metric registers once")
});

pub(crate) static KEY_TOKENS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "drover_key_tokens_total",
        "Tokens the servers reported, by API key name and kind (prompt, completion)",
        &["key", "kind"]
    )
    .expect("metric registers once")
});

pub(crate) static RATE_LIMITED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "drover_rate_limited_total",
        "Requests refused with 429, by limit (key, client)",
        &["limit"]
    )
    .expect("metric registers once")
});

pub(crate) static TOKENS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "drover_tokens_total",
        "Tokens the servers reported, by kind (prompt, completion)",
        &["model", "server", "kind"]
    )
    .expect("metric registers once")
});

pub(crate) static MODEL_LOAD: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "drover_model_load_seconds",
        "Model load time Ollama reported (load_duration)",
        &["model", "server"],
        LATENCY_BUCKETS.to_vec()
    )
    .expect("metric registers once")
});

pub(crate) static RESOURCE_CHECKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("drover_resource_checks_total", "Resource checks, by result", &["result"])
        .expect("metric registers once")
});

pub(crate) static QUEUE_LENGTH: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("drover_queue_length", "Requests waiting for a server").expect("metric registers once")
});

pub(crate) static QUEUE_WAIT: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!("drover_queue_wait_seconds", "Time requests spent in the queue", LATENCY_BUCKETS.to_vec())
        .expect("metric registers once")
});

/// Registers every metric at start, so each is exported (at zero) before its first event.
pub(crate) static CACHE: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "drover_cache_requests_total",
        "Deterministic requests and the response cache: hit, miss, or bypass (Cache-Control)",
        &["result"]
    )
    .expect("metric registers once")
});

pub(crate) static CACHE_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("drover_cache_bytes", "Bytes held by the in-memory response cache")
        .expect("metric registers once")
});

/// Per model asked: requests answered and tokens reported (prompt and completion), since start.
pub(crate) fn per_model() -> std::collections::BTreeMap<String, (u64, u64)> {
    use prometheus::core::Collector;
    let mut out: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    let label = |m: &prometheus::proto::Metric| {
        m.get_label().iter().find(|l| l.name() == "model").map(|l| l.value().to_string()).unwrap_or_default()
    };
    for family in REQUESTS.collect() {
        for m in family.get_metric() {
            out.entry(label(m)).or_default().0 += m.get_counter().value() as u64;
        }
    }
    for family in TOKENS.collect() {
        for m in family.get_metric() {
            out.entry(label(m)).or_default().1 += m.get_counter().value() as u64;
        }
    }
    out.remove("");
    out
}

pub(crate) fn init() {
    LazyLock::force(&REQUESTS);
    LazyLock::force(&REQUEST_DURATION);
    LazyLock::force(&TTFB);
    LazyLock::force(&RETRIES);
    LazyLock::force(&RESUMPTIONS);
    LazyLock::force(&UPSTREAM_REFUSALS);
    LazyLock::force(&REPLICA_CHANGES);
    LazyLock::force(&TOKENS);
    LazyLock::force(&MODEL_LOAD);
    LazyLock::force(&RESOURCE_CHECKS);
    LazyLock::force(&QUEUE_LENGTH);
    LazyLock::force(&QUEUE_WAIT);
    LazyLock::force(&CACHE);
    LazyLock::force(&CACHE_BYTES);
}

/// Why an attempt failed before any byte reached the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryReason {
    Connect,
    Timeout,
    Send,
    Response,
    Status5xx,
    /// The server broke off after bytes reached the client.
    MidStream,
}

impl RetryReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RetryReason::Connect => "connect",
            RetryReason::Timeout => "timeout",
            RetryReason::Send => "send",
            RetryReason::Response => "response",
            RetryReason::Status5xx => "status_5xx",
            RetryReason::MidStream => "mid_stream",
        }
    }
}

/// Outcome of one resource check.
#[derive(Debug, Clone, Copy)]
pub(crate) enum CheckResult {
    Pass,
    NoMemory,
    FailOpen,
    ProbeUnreachable,
}

pub(crate) fn resource_check(result: CheckResult) {
    let label = match result {
        CheckResult::Pass => "pass",
        CheckResult::NoMemory => "no_memory",
        CheckResult::FailOpen => "fail_open",
        CheckResult::ProbeUnreachable => "probe_unreachable",
    };
    RESOURCE_CHECKS.with_label_values(&[label]).inc();
}

/// The Prometheus text exposition of every registered metric.
pub(crate) fn render() -> (Vec<u8>, String) {
    let encoder = TextEncoder::new();
    let mut out = Vec::new();
    encoder.encode(&prometheus::gather(), &mut out).expect("text encoding of gathered metrics");
    (out, encoder.format_type().to_string())
}
