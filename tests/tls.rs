//! HTTPS on the proxy listener from certificate files, and a renewed certificate served
//! without a restart. Certificates are made by Debian's `openssl`; what is served is read back
//! with `openssl s_client`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::certs::{make_ca, make_cert};
use common::{Backend, Tokengate};
use serde_json::json;

/// The subject of the certificate served on `port`.
fn served_subject(port: u16) -> String {
    let mut s_client = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let x509 = Command::new("openssl")
        .args(["x509", "-noout", "-subject"])
        .stdin(s_client.stdout.take().unwrap())
        .output()
        .unwrap();
    let _ = s_client.wait();
    String::from_utf8_lossy(&x509.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_serves_https_and_picks_up_a_renewed_certificate() {
    let mut tg = Tokengate::start(
        &Backend::Embedded,
        "echo",
        "[[routes]]\npath = \"/db/{app}\"\n",
        "",
    );
    let dir = tg.dir.path().to_owned();
    make_ca(&dir, "ca");
    make_cert(&dir, "ca", "tls.crt", "tls.key", "first");
    tg.rewrite_config(|c| {
        c.replace(
            "threads = 1\n",
            &format!(
                "threads = 1\ntls_cert = {:?}\ntls_key = {:?}\n",
                dir.join("tls.crt"),
                dir.join("tls.key")
            ),
        )
    });
    tg.restart();
    tg.admin("POST", "/v1/apps", Some(json!({"id": "bq1", "name": "B"})));
    tg.admin(
        "POST",
        "/v1/users",
        Some(json!({"id": "al", "email": "al@x.com", "name": "Al", "apps": ["bq1"]})),
    );
    let (secret, _) = tg.user_token("al", &["bq1"]);

    // A client that trusts the CA gets through over HTTPS.
    let ca = reqwest::Certificate::from_pem(&std::fs::read(dir.join("ca.crt")).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let r = client
        .get(format!("https://127.0.0.1:{}/db/bq1", tg.port))
        .header("authorization", format!("QB-USER-TOKEN {secret}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(served_subject(tg.port).contains("first"));

    // Renewed as a Secret update does it: new files swapped in.
    make_cert(&dir, "ca", "new.crt", "new.key", "second");
    std::fs::rename(dir.join("new.key"), dir.join("tls.key")).unwrap();
    std::fs::rename(dir.join("new.crt"), dir.join("tls.crt")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let subject = served_subject(tg.port);
        if subject.contains("second") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still serving {subject:?}\n{}",
            tg.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Same process: no restart happened.
    assert!(
        tg.log().contains("TLS certificate reloaded"),
        "{}",
        tg.log()
    );

    // The admin listener over HTTPS too, with the same certificate.
    tg.rewrite_config(|c| c.replace("threads = 1\n", "threads = 1\nadmin_tls = true\n"));
    tg.restart_unready();
    let admin = format!("https://127.0.0.1:{}/readyz", tg.admin_port);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.get(&admin).send().await {
            Ok(r) if r.status() == 200 => break,
            _ => {}
        }
        assert!(Instant::now() < deadline, "no HTTPS admin:\n{}", tg.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served_subject(tg.admin_port).contains("second"));
    // A client that connects and never says hello holds nobody else up.
    let _silent: Vec<_> = (0..4)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", tg.admin_port)).unwrap())
        .collect();
    let started = Instant::now();
    let r = client.get(&admin).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "waited behind silent handshakes: {:?}",
        started.elapsed()
    );
    let r = client
        .get(format!("https://127.0.0.1:{}/v1/apps", tg.admin_port))
        .header("authorization", format!("Bearer {}", common::ADMIN_KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_ne!(
        tg.admin_raw("GET", "/healthz", None, None).status,
        200,
        "no plain HTTP on it any more"
    );

    // A pair that can't be served stops the start, with the reason.
    let out = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(["check-config", "-c"])
        .arg(tg.config_path())
        .output()
        .unwrap();
    assert!(out.status.success());
    // A key that isn't the certificate's.
    make_cert(&dir, "ca", "other.crt", "other.key", "other");
    std::fs::copy(dir.join("other.key"), dir.join("tls.key")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(["check-config", "-c"])
        .arg(tg.config_path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("not the certificate's"), "{said}");
    std::fs::write(dir.join("tls.key"), "not a key").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(["check-config", "-c"])
        .arg(tg.config_path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("server.tls_cert / tls_key"), "{said}");
}
