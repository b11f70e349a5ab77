//! Test support: mock Ollama servers and a real `drover serve` process on loopback sockets.

#![allow(dead_code)]

pub mod mock_ollama;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A free loopback port (bound, then released for the child to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A scratch directory unique to this test process and call.
pub fn scratch_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "drover-test-{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Health checks and cooldowns fast enough for tests.
pub const FAST: &str = "load_balancer:\n  health_check_interval: 200ms\n  health_check_timeout: 500ms\n  rise: 1\n  fall: 1\n  cooldown: 1s\n";

/// A running `drover serve` with its own config, killed on drop.
pub struct Drover {
    child: Child,
    pub addr: SocketAddr,
    pub url: String,
    pub dir: PathBuf,
}

impl Drover {
    /// Starts drover with `yaml` (the listen address, socket and pid paths are added) and waits until it answers.
    pub async fn start(yaml: &str) -> Drover {
        let dir = scratch_dir("drover");
        let port = free_port();
        let config = format!(
            "server:\n  listen: \"127.0.0.1:{port}\"\n  threads: 2\n\
             pingora:\n  upgrade_sock: \"{dir}/upgrade.sock\"\n  pid_file: \"{dir}/drover.pid\"\n  grace_period_seconds: 1\n\
             database:\n  url: \"sqlite://{dir}/drover.db\"\n{yaml}",
            dir = dir.display()
        );
        let path = dir.join("drover.yaml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.join("drover.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_drover"))
            .args(["serve", "-c"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .env_remove("DROVER_SERVERS")
            .env_remove("DROVER_LISTEN")
            .env_remove("DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut d = Drover { child, addr, url: format!("http://{addr}"), dir };
        d.wait_ready().await;
        d
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let client = reqwest::Client::new();
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("drover exited with {status}: {}", self.log());
            }
            if client.get(format!("{}/status", self.url)).send().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("drover did not answer within 15s: {}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("drover.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Drover {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `cond` every 50 ms until it holds or `within` passes; returns whether it held.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
