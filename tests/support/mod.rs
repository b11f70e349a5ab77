//! Test support: mock Ollama servers and a real `drover serve` process on loopback sockets.

#![allow(dead_code)]

pub mod mock_ollama;
pub mod sim;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// An HTTP client with a bounded timeout.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// A response header as text; empty when absent.
pub fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers().get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

/// POST /api/chat (not streamed) for `model`: status, X-Drover-Server, and the JSON answer.
pub async fn chat(d: &Drover, model: &str) -> (u16, String, serde_json::Value) {
    let body = serde_json::json!({ "model": model, "stream": false, "options": { "num_predict": 4 } });
    let r = http().post(format!("{}/api/chat", d.url)).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    let server = r.headers().get("x-drover-server").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (status, server, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// The admin token tests that set one use (`admin: { token: ... }`); the admin helpers send it
/// always (a drover without a token answers its loopback clients and ignores it).
pub const ADMIN_TOKEN: &str = "attacks-admin-token";

/// A call to the admin API: status and JSON answer.
pub async fn admin(
    d: &Drover,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = http().request(method, format!("{}/admin/{path}", d.url)).bearer_auth(ADMIN_TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(serde_json::Value::Null))
}

/// A key made through the admin API: its id and the key, shown once.
pub async fn create_key(d: &Drover, body: serde_json::Value) -> (i64, String) {
    let (status, made) = admin(d, reqwest::Method::POST, "keys", Some(body)).await;
    assert_eq!(status, 201, "{made}");
    (made["id"].as_i64().unwrap(), made["key"].as_str().unwrap().to_string())
}

/// A config line for one route.
pub fn route_yaml(model: &str, server_url: &str, actual: &str, weight: u32, priority: u32) -> String {
    route_yaml_with(model, server_url, actual, &format!(", weight: {weight}, priority: {priority}"))
}

/// A `routes:` entry with `extra` fields (", key: value, ...") after the three names.
pub fn route_yaml_with(model: &str, server_url: &str, actual: &str, extra: &str) -> String {
    format!(
        "  - {{ virtual_model_name: {model}, server_url: \"{server_url}\", actual_model_name: \"{actual}\"{extra} }}\n"
    )
}

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
    /// The Prometheus service (server.metrics_listen).
    pub metrics_url: String,
    pub dir: PathBuf,
}

impl Drover {
    /// Starts drover with `yaml` (the listen address, socket and pid paths are added) and waits until it answers.
    pub async fn start(yaml: &str) -> Drover {
        Self::start_with_db(yaml, None).await
    }

    /// As `start`, with the routes store at `database_url` (default: an SQLite file of its own).
    pub async fn start_with_db(yaml: &str, database_url: Option<&str>) -> Drover {
        Self::launch(yaml, database_url, 1, "").await
    }

    /// As `start`, with a grace period other than the tests' 1 s after SIGTERM or an upgrade.
    pub async fn start_with_grace(yaml: &str, grace_seconds: u64) -> Drover {
        Self::launch(yaml, None, grace_seconds, "").await
    }

    /// As `start`, with more keys in the `server:` section (e.g. `  tls: {...}\n`).
    pub async fn start_with_server(yaml: &str, server_extra: &str) -> Drover {
        Self::launch(yaml, None, 1, server_extra).await
    }

    async fn launch(yaml: &str, database_url: Option<&str>, grace_seconds: u64, server_extra: &str) -> Drover {
        let dir = scratch_dir("drover");
        let database_url = database_url.map_or_else(|| format!("sqlite://{}/drover.db", dir.display()), str::to_string);
        let port = free_port();
        let metrics = free_port();
        let config = format!(
            "server:\n  listen: \"127.0.0.1:{port}\"\n  metrics_listen: \"127.0.0.1:{metrics}\"\n  threads: 2\n{server_extra}\
             pingora:\n  upgrade_sock: \"{dir}/upgrade.sock\"\n  pid_file: \"{dir}/drover.pid\"\n  grace_period_seconds: {grace_seconds}\n\
             logging:\n  access_log: \"{dir}/access.log\"\n\
             database:\n  url: \"{database_url}\"\n{yaml}",
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
        let mut d = Drover {
            child,
            addr,
            url: format!("http://{addr}"),
            metrics_url: format!("http://127.0.0.1:{metrics}"),
            dir,
        };
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

    /// Waits until /health says every server is up (their first health checks passed): a
    /// test that needs the whole fleet waits for it, not for a fixed time a loaded machine
    /// may not keep.
    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = reqwest::Client::new();
        loop {
            let health = client.get(format!("{}/health", self.url)).header("host", "localhost").send().await;
            let body = match health {
                Ok(r) => r.json::<serde_json::Value>().await.unwrap_or_default(),
                Err(_) => serde_json::Value::Null,
            };
            if body["status"] == "ok" {
                return;
            }
            assert!(Instant::now() < deadline, "the fleet did not become healthy within 10s: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A graceful upgrade: starts `drover serve -u` with the same config, waits until it is
    /// ready for the listening sockets, and sends SIGQUIT to this process, which hands them
    /// over and drains. Returns the new process.
    pub async fn upgrade(&self) -> Drover {
        let sock = self.dir.join("upgrade.sock");
        let _ = std::fs::remove_file(&sock);
        let log = std::fs::File::create(self.dir.join("drover-upgraded.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_drover"))
            .args(["serve", "-u", "-c"])
            .arg(self.dir.join("drover.yaml"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while !sock.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(sock.exists(), "the new process listens on {}", sock.display());
        let ok = Command::new("kill").args(["-QUIT", &self.pid().to_string()]).status().unwrap().success();
        assert!(ok, "SIGQUIT to the old process");
        Drover {
            child,
            addr: self.addr,
            url: self.url.clone(),
            metrics_url: self.metrics_url.clone(),
            dir: self.dir.clone(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("drover.log")).unwrap_or_default()
    }

    /// The process's resident memory now, in bytes (Linux /proc).
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kb * 1024
    }

    /// Whether the process has exited (and reaps it: `kill -0` would see a zombie as alive).
    pub fn has_exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// Waits up to `within` for the process to exit.
    pub async fn exits_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while !self.has_exited() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// Waits up to `within` for the process to exit; its exit code (`None`: still running,
    /// or ended by a signal).
    pub async fn exit_code_within(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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

/// A TCP relay on loopback in front of a database: `stop()` makes the database unreachable
/// for drover (connections cut, new ones refused) without touching the server itself.
pub struct TcpRelay {
    pub port: u16,
    target: SocketAddr,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl TcpRelay {
    pub async fn start(target: SocketAddr) -> TcpRelay {
        let listener = mock_ollama::bind_restartable();
        let port = listener.local_addr().unwrap().port();
        let relay = TcpRelay { port, target, task: std::sync::Mutex::new(None) };
        *relay.task.lock().unwrap() = Some(tokio::spawn(relay_loop(listener, target)));
        relay
    }

    /// A relay in front of the database `url` names, and the same URL through it.
    pub async fn in_front_of(url: &str) -> (TcpRelay, String) {
        let u = url::Url::parse(url).unwrap();
        let target: SocketAddr = format!("{}:{}", u.host_str().unwrap(), u.port().unwrap()).parse().unwrap();
        let relay = TcpRelay::start(target).await;
        let through = url.replacen(&format!(":{}/", target.port()), &format!(":{}/", relay.port), 1);
        (relay, through)
    }

    pub fn stop(&self) {
        if let Some(t) = self.task.lock().unwrap().take() {
            t.abort();
        }
    }

    pub async fn restart(&self) {
        self.stop();
        let listener = mock_ollama::bind_again(SocketAddr::from(([127, 0, 0, 1], self.port))).await;
        *self.task.lock().unwrap() = Some(tokio::spawn(relay_loop(listener, self.target)));
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn relay_loop(listener: tokio::net::TcpListener, target: SocketAddr) {
    let mut pipes = tokio::task::JoinSet::new();
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else { continue };
        pipes.spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
        while pipes.try_join_next().is_some() {}
    }
}

/// The databases to test against: SQLite always; PostgreSQL and MariaDB when
/// DROVER_TEST_POSTGRES_URL / DROVER_TEST_MYSQL_URL name a server (scripts/databases starts
/// them). With DROVER_REQUIRE_DATABASES=1 (CI) a missing one is a failure, not a skip.
pub fn database_urls() -> Vec<(&'static str, String)> {
    let mut out = vec![("sqlite", String::new())];
    let required = std::env::var("DROVER_REQUIRE_DATABASES").is_ok_and(|v| v == "1");
    for (name, var) in [("postgres", "DROVER_TEST_POSTGRES_URL"), ("mysql", "DROVER_TEST_MYSQL_URL")] {
        match std::env::var(var) {
            Ok(url) if !url.is_empty() => out.push((name, url)),
            _ if required => panic!("{var} is not set but DROVER_REQUIRE_DATABASES=1"),
            _ => eprintln!("{var} not set: skipping {name} (run scripts/databases start)"),
        }
    }
    out
}

/// A new, empty database on the server `base` names (an SQLite file for "sqlite").
pub async fn fresh_database(kind: &str, base: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!("drover_t_{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
    if kind == "sqlite" {
        return format!("sqlite://{}/{name}.db", scratch_dir("sqlite").display());
    }
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(base).await.unwrap();
    sqlx::raw_sql(&format!("CREATE DATABASE {name}")).execute(&pool).await.unwrap();
    pool.close().await;
    let (prefix, _) = base.rsplit_once('/').unwrap();
    format!("{prefix}/{name}")
}

/// Runs one SQL statement (or several, without parameters) against `url`.
pub async fn sql(url: &str, statement: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    sqlx::raw_sql(statement).execute(&pool).await.unwrap();
    pool.close().await;
}

/// A throwaway redis-server on a loopback port, owned by the test (stopped and started at
/// will), killed on drop. `None` when redis-server is not installed, unless
/// DROVER_REQUIRE_DATABASES=1 (CI), where that is a failure.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    pub url: String,
}

impl RedisServer {
    pub async fn start() -> Option<RedisServer> {
        let found = Command::new("redis-server").arg("--version").stdout(Stdio::null()).status().is_ok();
        if !found {
            if std::env::var("DROVER_REQUIRE_DATABASES").is_ok_and(|v| v == "1") {
                panic!("redis-server is not installed but DROVER_REQUIRE_DATABASES=1");
            }
            eprintln!("redis-server not installed: skipping (scripts/databases installs it)");
            return None;
        }
        // Below the ephemeral range, as it is stopped and started again on the same port.
        let port = mock_ollama::bind_restartable().local_addr().unwrap().port();
        let mut r = RedisServer { child: None, port, url: format!("redis://127.0.0.1:{port}") };
        r.restart().await;
        Some(r)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: no persistence).
    pub async fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not start on port {}", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
