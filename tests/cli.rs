//! The command line: --help, --version, `serve -t` reporting every config error at once, and
//! `scripts/cluster` (a local fleet in one command).

use std::process::Command;

fn drover(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_drover")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_and_version() {
    let (code, out, _) = drover(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("serve"), "{out}");
    let (code, out, _) = drover(&["serve", "--help"]);
    assert_eq!(code, 0);
    for flag in ["--config", "--upgrade", "--daemon", "--test"] {
        assert!(out.contains(flag), "{flag} missing in {out}");
    }
    let (code, out, _) = drover(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("drover {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn test_flag_accepts_the_shipped_config() {
    let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/drover.yaml");
    let (code, out, err) = drover(&["serve", "-t", "-c", conf]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("configuration OK"), "{out}");
}

#[test]
fn test_flag_prints_every_error_with_key_and_value() {
    let dir = std::env::temp_dir().join(format!("drover-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.yaml");
    std::fs::write(
        &path,
        "server: { listen: 'everywhere' }\nload_balancer: { cooldown: 'a while', strategy: random }\n\
         routes:\n  - { virtual_model_name: m, server_url: 'gopher://x', weight: -1 }\n",
    )
    .unwrap();
    let (code, _, err) = drover(&["serve", "-t", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    for expected in [
        "server.listen: \"everywhere\"",
        "load_balancer.cooldown: \"a while\"",
        "load_balancer.strategy: \"random\"",
        "routes[0].server_url: \"gopher://x\"",
        "routes[0].weight: -1",
    ] {
        assert!(err.contains(expected), "{expected:?} missing in:\n{err}");
    }
    let (code, _, err) = drover(&["serve", "-t", "-c", "/nonexistent/drover.yaml"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read config file"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// A database away at start does not stop drover (compose and Kubernetes start things in any
/// order): it starts serving, and says which database, its password hidden, and why.
#[test]
fn an_unreachable_database_at_start_is_named_with_its_password_hidden() {
    let dir = std::env::temp_dir().join(format!("drover-cli-db-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("db.yaml");
    std::fs::write(
        &path,
        format!(
            "server: {{ listen: '127.0.0.1:0', metrics_listen: '127.0.0.1:0' }}\n\
             database: {{ url: 'postgres://drover:hunter2@127.0.0.1:1/drover' }}\n\
             pingora: {{ upgrade_sock: '{0}/u.sock', pid_file: '{0}/p.pid' }}\n",
            dir.display()
        ),
    )
    .unwrap();
    let log = dir.join("drover.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["serve", "-c", path.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .env_remove("DATABASE_URL")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut err = String::new();
    while std::time::Instant::now() < deadline && !err.contains("listening on") {
        assert!(child.try_wait().unwrap().is_none(), "drover exited: {err}");
        std::thread::sleep(std::time::Duration::from_millis(50));
        err = std::fs::read_to_string(&log).unwrap_or_default();
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(err.contains("listening on"), "it serves: {err}");
    assert!(err.contains("postgres://drover:***@127.0.0.1:1/drover"), "{err}");
    assert!(err.contains("cannot connect"), "{err}");
    assert!(err.contains("serving without the stored routes and keys until it answers"), "{err}");
    assert!(!err.contains("hunter2"), "password leaked: {err}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// A local fleet in one command: scripts/cluster with mock servers and this build's binaries,
/// then stopped, leaving nothing behind.
#[test]
fn scripts_cluster_starts_a_fleet_and_stops_exactly_it() {
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_drover")).parent().unwrap().to_path_buf();
    assert!(
        bin_dir.join("examples/mock_ollama").exists(),
        "build the examples first (cargo build --examples; scripts/test does)"
    );
    // Four consecutive free ports (drover, its metrics, two backends), below the kernel's
    // ephemeral range so that no outgoing connection of a test running beside this one takes
    // one of them between this check and the script's start.
    let base = (20000..32000u16)
        .step_by(4)
        .skip((std::process::id() % 2500) as usize)
        .find(|&b| (b..b + 4).map(|p| std::net::TcpListener::bind(("127.0.0.1", p))).all(|l| l.is_ok()))
        .expect("four free loopback ports");
    let (port, backends) = (base, base + 1);
    let dir = std::env::temp_dir().join(format!("drover-cluster-test-{}", std::process::id()));
    let cluster = |arg: &[&str]| {
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster"))
            .args(arg)
            .env("CLUSTER_DIR", &dir)
            .env("CLUSTER_PORT", port.to_string())
            .env("CLUSTER_BACKEND_PORT", backends.to_string())
            .env("CLUSTER_BIN_DIR", &bin_dir)
            .env("CLUSTER_NO_BUILD", "1")
            .output()
            .unwrap()
    };
    let out = cluster(&["start", "2", "--mock"]);
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains(&format!("http://127.0.0.1:{port}")), "{said}");
    let pids: Vec<u32> = std::fs::read_to_string(dir.join("pids"))
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 3, "two backends and a drover");

    // Both backends answer through drover, in turn.
    let mut servers = std::collections::HashSet::new();
    for _ in 0..4 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let body = r#"{"model": "chat", "stream": false, "messages": []}"#;
        let req = format!(
            "POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut s, &mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let server = answer.lines().find_map(|l| l.strip_prefix("x-drover-server: ")).unwrap().to_string();
        servers.insert(server);
    }
    assert_eq!(servers.len(), 2, "{servers:?}");

    let out = cluster(&["stop"]);
    assert!(out.status.success());
    for pid in pids {
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ");
        assert!(!alive, "pid {pid} still running");
    }
    assert!(!dir.join("pids").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
