//! TLS termination: rustls on server.tls beside the plain listener, HTTP/2 offered by ALPN,
//! and the certificate read again by the new process of a graceful upgrade. The client is
//! the openssl command line (Python's clients are in tests/e2e).

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::mock_ollama::MockOllama;
use support::{free_port, http, scratch_dir, Drover, FAST};

/// A self-signed certificate for localhost and 127.0.0.1, written as cert.pem and key.pem in `dir`.
fn make_certificate(dir: &Path, name: &str) {
    let ok = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", &format!("/CN={name}"), "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs (scripts/setup installs it)");
    assert!(ok.success());
}

/// What a TLS client that trusts only `ca` sees at `port`: the negotiated ALPN protocol and
/// the certificate's subject; None when the certificate does not verify.
fn handshake(port: u16, ca: &Path) -> Option<(String, String)> {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", "localhost"])
        .args(["-alpn", "h2,http/1.1", "-verify_return_error", "-CAfile"])
        .arg(ca)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !text.contains("Verify return code: 0 (ok)") {
        return None;
    }
    let field = |prefix: &str| {
        text.lines().find_map(|l| l.trim().strip_prefix(prefix)).map(str::trim).unwrap_or_default().to_string()
    };
    Some((field("ALPN protocol:"), field("subject=")))
}

#[tokio::test]
async fn tls_beside_plain_with_h2_by_alpn_and_the_certificate_reread_on_upgrade() {
    let m = MockOllama::start("m", &["m:1b"]).await;
    let certs = scratch_dir("certs");
    make_certificate(&certs, "first");
    let port = free_port();
    let d = Drover::start_with_server(
        &format!(
            "{FAST}routes:\n  - {{ virtual_model_name: m, server_url: \"{}\", actual_model_name: \"m:1b\" }}\n",
            m.url
        ),
        &format!(
            "  tls: {{ listen: \"127.0.0.1:{port}\", cert: \"{dir}/cert.pem\", key: \"{dir}/key.pem\" }}\n",
            dir = certs.display()
        ),
    )
    .await;
    let (alpn, subject) = handshake(port, &certs.join("cert.pem")).expect("the certificate verifies");
    assert_eq!(alpn, "h2");
    assert!(subject.contains("first"), "{subject}");
    // The plain listener still answers.
    assert_eq!(http().get(format!("{}/api/tags", d.url)).send().await.unwrap().status(), 200);

    // A renewed certificate is taken by the new process of a graceful upgrade.
    make_certificate(&certs, "second");
    let new = d.upgrade().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut seen = None;
    while seen.is_none() && std::time::Instant::now() < deadline {
        // Verifies only once the new process, with the new certificate, answers.
        seen = handshake(port, &certs.join("cert.pem"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (alpn, subject) = seen.expect("the renewed certificate is served after the upgrade");
    assert_eq!(alpn, "h2");
    assert!(subject.contains("second"), "{subject}");
    drop(d);
    drop(new);
}

#[test]
fn a_certificate_that_does_not_load_is_a_clear_error_not_a_panic() {
    let dir = scratch_dir("badcert");
    std::fs::write(dir.join("cert.pem"), "not a certificate").unwrap();
    std::fs::write(dir.join("key.pem"), "not a key").unwrap();
    let config = dir.join("drover.yaml");
    std::fs::write(
        &config,
        format!(
            "server:\n  listen: \"127.0.0.1:{}\"\n  tls: {{ listen: \"127.0.0.1:{}\", cert: \"{d}/cert.pem\", key: \"{d}/key.pem\" }}\n\
             database: {{ url: \"sqlite://{d}/drover.db\" }}\npingora: {{ upgrade_sock: \"{d}/u.sock\", pid_file: \"{d}/p.pid\" }}\n",
            free_port(),
            free_port(),
            d = dir.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_drover")).args(["serve", "-c"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("server.tls") && err.contains("cert.pem"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
