//! The load a server reports about itself: llama.cpp's `/slots`, and the Prometheus `/metrics` of vLLM and llama.cpp.
//!
//! The health pass reads it (fleet/health.rs); selection counts it (fleet/server.rs:
//! `load_estimate`, `at_capacity`).

use serde_json::Value;

/// What a server said of its own load at one reading.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Reported {
    /// Requests it is working on.
    pub(crate) running: u32,
    /// Requests it holds in its own queue.
    pub(crate) waiting: u32,
    /// Its KV cache in use, 0 to 1, where it says.
    pub(crate) kv_cache: Option<f64>,
    /// Its parallel slots, where it says (llama.cpp's /slots).
    pub(crate) slots: Option<u32>,
}

impl Reported {
    /// A server with requests queued, or its KV cache full, takes no more now.
    pub(crate) fn full(&self) -> bool {
        self.waiting > 0 || self.kv_cache.is_some_and(|k| k >= 0.99) || self.slots.is_some_and(|s| self.running >= s)
    }
}

/// llama.cpp's `GET /slots`: one object per slot, busy when `is_processing` (or, in older
/// servers, `state` 1).
pub(crate) fn from_slots(v: &Value) -> Option<Reported> {
    let slots = v.as_array()?;
    let busy = slots
        .iter()
        .filter(|s| s["is_processing"].as_bool().unwrap_or_else(|| s["state"].as_u64().is_some_and(|n| n != 0)))
        .count();
    Some(Reported { running: busy as u32, waiting: 0, kv_cache: None, slots: Some(slots.len() as u32) })
}

/// A Prometheus text exposition from vLLM (`vllm:num_requests_running`, `..._waiting`,
/// `vllm:gpu_cache_usage_perc` or `vllm:kv_cache_usage_perc`, a fraction) or llama.cpp
/// (`llamacpp:requests_processing`, `llamacpp:requests_deferred`,
/// `llamacpp:kv_cache_usage_ratio`); series of one name are summed (vLLM labels them by
/// model). `None` when it names none of them.
pub(crate) fn from_metrics(text: &str) -> Option<Reported> {
    let mut r = Reported::default();
    let mut seen = false;
    let mut kv: Option<f64> = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.trim().parse::<f64>() else { continue };
        let name = series.split('{').next().unwrap_or(series).trim();
        match name {
            "vllm:num_requests_running" | "llamacpp:requests_processing" => r.running += value.max(0.0) as u32,
            "vllm:num_requests_waiting" | "llamacpp:requests_deferred" => r.waiting += value.max(0.0) as u32,
            "vllm:gpu_cache_usage_perc" | "vllm:kv_cache_usage_perc" | "llamacpp:kv_cache_usage_ratio" => {
                kv = Some(kv.map_or(value, |k: f64| k.max(value)));
            }
            _ => continue,
        }
        seen = true;
    }
    r.kv_cache = kv.map(|k| k.clamp(0.0, 1.0));
    seen.then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn llama_cpp_slots_old_and_new() {
        let new = json!([{ "id": 0, "is_processing": true }, { "id": 1, "is_processing": false }]);
        assert_eq!(from_slots(&new), Some(Reported { running: 1, slots: Some(2), ..Reported::default() }));
        let old = json!([{ "id": 0, "state": 1 }, { "id": 1, "state": 1 }]);
        let r = from_slots(&old).unwrap();
        assert_eq!((r.running, r.full()), (2, true), "every slot busy: full");
        assert_eq!(from_slots(&json!({ "error": "slots disabled" })), None);
    }

    #[test]
    fn vllm_and_llama_cpp_metrics() {
        let vllm = "# HELP vllm:num_requests_running Number of requests in model execution batches.\n\
            # TYPE vllm:num_requests_running gauge\n\
            vllm:num_requests_running{engine=\"0\",model_name=\"q\"} 3.0\n\
            vllm:num_requests_waiting{engine=\"0\",model_name=\"q\"} 2.0\n\
            vllm:gpu_cache_usage_perc{engine=\"0\",model_name=\"q\"} 0.42\n\
            vllm:prompt_tokens_total{model_name=\"q\"} 1234.0\n";
        let r = from_metrics(vllm).unwrap();
        assert_eq!((r.running, r.waiting, r.kv_cache), (3, 2, Some(0.42)));
        assert!(r.full(), "a waiting queue: full");
        let llama =
            "llamacpp:requests_processing 1\nllamacpp:requests_deferred 0\nllamacpp:kv_cache_usage_ratio 0.995\n";
        let r = from_metrics(llama).unwrap();
        assert!(r.full(), "KV cache full");
        assert_eq!(from_metrics("process_cpu_seconds_total 3\n"), None);
    }
}
