//! `drover probe`: the agent on each Ollama host that reports free RAM (sysinfo) and VRAM (NVML).
//!
//! NVML is loaded at run time (nvml-wrapper opens libnvidia-ml.so.1 when asked), so a host
//! without an NVIDIA driver reports CPU memory only, says why, and never fails to start.
//! Memory is read when asked, not polled: the agent does nothing between requests.

use std::sync::Mutex;

use async_trait::async_trait;
use http::Response;
use nvml_wrapper::Nvml;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::listening::Service;
use serde::{Deserialize, Serialize};

/// One GPU's memory, in bytes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Gpu {
    pub(crate) index: u32,
    pub(crate) name: String,
    pub(crate) total_bytes: u64,
    pub(crate) free_bytes: u64,
    pub(crate) used_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Memory {
    pub(crate) total_bytes: u64,
    pub(crate) available_bytes: u64,
}

/// The answer of GET /resources.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Resources {
    /// "GPU" when NVIDIA GPUs are visible (and not disabled with --device cpu), else "CPU".
    pub(crate) device: String,
    pub(crate) memory: Memory,
    pub(crate) gpus: Vec<Gpu>,
    /// When the reading was taken (RFC 3339).
    pub(crate) at: String,
    /// Why GPUs are not reported, when they are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) note: Option<String>,
}

impl Resources {
    /// Free and total bytes of the memory a route of the given device loads into.
    pub(crate) fn free_and_total(&self, gpu: bool) -> (u64, u64) {
        if gpu && !self.gpus.is_empty() {
            let free = self.gpus.iter().map(|g| g.free_bytes).sum();
            let total = self.gpus.iter().map(|g| g.total_bytes).sum();
            (free, total)
        } else {
            (self.memory.available_bytes, self.memory.total_bytes)
        }
    }
}

/// Which memory the agent reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceMode {
    /// GPUs through NVML when a driver is present, else CPU memory
    Auto,
    /// CPU memory only
    Cpu,
    /// GPUs through NVML; without a driver, CPU memory and a note saying so
    Gpu,
}

/// Why GPUs are not reported: the note each reading carries.
#[derive(Debug, thiserror::Error)]
enum NoGpus {
    #[error("GPU reporting disabled (--device cpu)")]
    Disabled,
    #[error("no NVIDIA driver (NVML: {0}); reporting CPU memory only")]
    NoDriver(#[source] nvml_wrapper::error::NvmlError),
}

pub(crate) struct Probe {
    system: Mutex<sysinfo::System>,
    nvml: Result<Nvml, NoGpus>,
}

impl Probe {
    pub(crate) fn new(mode: DeviceMode) -> Probe {
        let nvml = match mode {
            DeviceMode::Cpu => Err(NoGpus::Disabled),
            _ => Nvml::init().map_err(NoGpus::NoDriver),
        };
        if let Err(why) = &nvml {
            if mode == DeviceMode::Gpu {
                log::warn!("{why}");
            } else {
                log::info!("{why}");
            }
        }
        Probe { system: Mutex::new(sysinfo::System::new()), nvml }
    }

    pub(crate) fn read(&self) -> Resources {
        let memory = {
            let mut sys = self.system.lock().unwrap();
            sys.refresh_memory();
            Memory { total_bytes: sys.total_memory(), available_bytes: sys.available_memory() }
        };
        let (gpus, note) = match &self.nvml {
            Ok(nvml) => match gpus(nvml) {
                Ok(g) => (g, None),
                Err(e) => (Vec::new(), Some(format!("NVML failed to read the GPUs: {e}"))),
            },
            Err(why) => (Vec::new(), Some(why.to_string())),
        };
        Resources {
            device: if gpus.is_empty() { "CPU" } else { "GPU" }.to_string(),
            memory,
            gpus,
            at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            note,
        }
    }
}

fn gpus(nvml: &Nvml) -> Result<Vec<Gpu>, nvml_wrapper::error::NvmlError> {
    (0..nvml.device_count()?)
        .map(|index| {
            let d = nvml.device_by_index(index)?;
            let m = d.memory_info()?;
            Ok(Gpu { index, name: d.name()?, total_bytes: m.total, free_bytes: m.free, used_bytes: m.used })
        })
        .collect()
}

#[async_trait]
impl ServeHttp for Probe {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let (status, body) = match (session.req_header().method.as_str(), session.req_header().uri.path()) {
            ("GET", "/resources") => (200, serde_json::to_vec(&self.read()).expect("readings serialise")),
            ("GET", "/health") => (200, br#"{"status":"ok"}"#.to_vec()),
            _ => (404, br#"{"error":"no such endpoint; try GET /resources or GET /health"}"#.to_vec()),
        };
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("content-length", body.len())
            .body(body)
            .expect("valid response")
    }
}

/// Runs the agent; returns the exit code.
pub fn run(listen: &str, mode: DeviceMode) -> i32 {
    if let Err(e) = listen.parse::<std::net::SocketAddr>() {
        eprintln!("drover probe: --listen {listen:?}: {e}; expected an address like 0.0.0.0:8005");
        return 1;
    }
    // Nothing to drain: a probe answers in microseconds.
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut service = Service::new("drover probe".to_string(), Probe::new(mode));
    service.add_tcp(listen);
    server.add_service(service);
    log::info!("drover probe listening on {listen}");
    server.run_forever()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_mode_reports_ram_and_says_why_no_gpus() {
        let r = Probe::new(DeviceMode::Cpu).read();
        assert_eq!(r.device, "CPU");
        assert!(r.gpus.is_empty());
        assert!(r.memory.total_bytes > 0);
        assert!(r.memory.available_bytes <= r.memory.total_bytes);
        assert!(r.note.unwrap().contains("--device cpu"));
        assert_eq!(r.at.len(), "2026-01-01T00:00:00.000Z".len());
    }

    #[test]
    fn gpu_routes_use_vram_and_cpu_routes_use_ram() {
        let r = Resources {
            device: "GPU".into(),
            memory: Memory { total_bytes: 100, available_bytes: 60 },
            gpus: vec![
                Gpu { index: 0, name: "a".into(), total_bytes: 10, free_bytes: 4, used_bytes: 6 },
                Gpu { index: 1, name: "b".into(), total_bytes: 10, free_bytes: 5, used_bytes: 5 },
            ],
            at: String::new(),
            note: None,
        };
        assert_eq!(r.free_and_total(true), (9, 20));
        assert_eq!(r.free_and_total(false), (60, 100));
    }
}
