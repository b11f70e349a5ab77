//! The command line: --help, --version, and `serve -t` reporting every config error at once.

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

#[test]
fn an_unreachable_database_at_start_is_named_with_its_password_hidden() {
    let dir = std::env::temp_dir().join(format!("drover-cli-db-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("db.yaml");
    std::fs::write(
        &path,
        format!(
            "server: {{ listen: '127.0.0.1:0' }}\ndatabase: {{ url: 'postgres://drover:hunter2@127.0.0.1:1/drover' }}\n\
             pingora: {{ upgrade_sock: '{0}/u.sock', pid_file: '{0}/p.pid' }}\n",
            dir.display()
        ),
    )
    .unwrap();
    let (code, _, err) = drover(&["serve", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("postgres://drover:***@127.0.0.1:1/drover"), "{err}");
    assert!(err.contains("cannot connect"), "{err}");
    assert!(!err.contains("hunter2"), "password leaked: {err}");
    std::fs::remove_dir_all(dir).unwrap();
}
