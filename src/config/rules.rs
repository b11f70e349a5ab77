//! The rules a route's fields obey, wherever the route comes from (config file or admin API).

use crate::protocol::ollama::Device;

pub(crate) fn name(s: &str) -> Result<(), String> {
    if s.trim().is_empty() || s.chars().count() > 100 {
        Err(format!("{s:?}: must be 1 to 100 characters"))
    } else {
        Ok(())
    }
}

pub(crate) fn at_least_one(n: i64) -> Result<(), String> {
    if (1..=u32::MAX as i64).contains(&n) {
        Ok(())
    } else {
        Err(format!("{n}: must be at least 1"))
    }
}

pub(crate) fn device(s: &str) -> Result<Device, String> {
    match s {
        "GPU" | "gpu" => Ok(Device::Gpu),
        "CPU" | "cpu" => Ok(Device::Cpu),
        other => Err(format!("{other:?}: expected CPU or GPU")),
    }
}

pub(crate) fn performance(gb: f64) -> Result<(), String> {
    if gb >= 0.0 && gb.is_finite() {
        Ok(())
    } else {
        Err(format!("{gb}: must be >= 0 (GB)"))
    }
}
