//! TLS to Redis (`rediss://`): a real `redis-server` of the test's own serving TLS only, with a
//! certificate from a test CA made by openssl. The store passes its whole conformance suite over
//! it when given the CA (`store.ca_file`), refuses the server without it, and the tokengate
//! binary admits and refuses over it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/conformance.rs"]
mod conformance;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{Backend, Tokengate, Upstream, free_port, wait_for_port};
use conformance::conformance;
use serde_json::json;
use tokengate::store::Store;
use tokengate::store::redis::RedisStore;

fn openssl(dir: &Path, args: &[&str]) {
    let ok = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl must be installed")
        .success();
    assert!(ok, "openssl {args:?}");
}

/// A CA (`ca.crt`) and a certificate for 127.0.0.1 and localhost signed by it (`redis.crt`,
/// `redis.key`), in `dir`.
fn make_certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-days",
        "2",
        "-subj",
        "/CN=test Redis CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-subj",
        "/CN=redis",
        "-keyout",
        "redis.key",
        "-out",
        "redis.csr",
    ]);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("redis.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "redis.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "redis.ext",
            "-out",
            "redis.crt",
        ],
    );
    // A second CA that signed nothing here: the wrong one to trust.
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=another CA",
            "-keyout",
            "other.key",
            "-out",
            "other.crt",
        ],
    );
}

/// A `redis-server` of the test's own that speaks TLS only (no plain port), stopped by its
/// pid when dropped.
struct TlsRedis {
    port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl TlsRedis {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        make_certificates(dir.path());
        let port = free_port();
        assert_ne!(port, 6379, "never the machine's shared Redis");
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args([
                "--tls-cert-file",
                "redis.crt",
                "--tls-key-file",
                "redis.key",
            ])
            .args(["--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no"])
            .args(["--save", "", "--appendonly", "no", "--dir", "."])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        wait_for_port(port, &mut child, "redis-server (TLS)", None);
        Self { port, child, dir }
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0", self.port)
    }

    fn file(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_store_conforms_over_tls_and_trusts_only_its_ca() {
    let redis = TlsRedis::start();
    let store = RedisStore::with_options(&redis.url(), Some(&redis.file("ca.crt")), None).unwrap();
    conformance(&store).await;

    // The system's CAs, or another CA, don't vouch for this server: nothing is read.
    for ca in [None, Some(redis.file("other.crt"))] {
        let store = RedisStore::with_options(&redis.url(), ca.as_deref(), None).unwrap();
        let refused = store.user("anyone").await;
        assert!(refused.is_err(), "{ca:?}: {refused:?}");
    }
}

#[test]
fn tokengate_admits_and_refuses_over_rediss() {
    let redis = TlsRedis::start();
    let up = Upstream::start();
    // Written right after the [store] section's url, so it is store.ca_file.
    let ca = format!("ca_file = {:?}\n", redis.file("ca.crt"));
    let tg = Tokengate::start(
        &Backend::Redis(redis.url()),
        &up.url(),
        "[[routes]]\npath = \"/db/{app}\"\n",
        &ca,
    );
    let r = tg.admin("POST", "/v1/apps", Some(json!({"id": "bq1", "name": "B"})));
    assert_eq!(r.status, 201, "{}", r.text());
    let r = tg.admin(
        "POST",
        "/v1/users",
        Some(json!({"id": "ann", "email": "ann@example.com", "name": "Ann", "apps": ["bq1"]})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = tg.admin(
        "POST",
        "/v1/users/ann/tokens",
        Some(json!({"name": "t", "apps": ["bq1"]})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let (id, token) = (
        r.json()["id"].as_str().unwrap().to_owned(),
        r.json()["token"].as_str().unwrap().to_owned(),
    );
    let auth = format!("QB-USER-TOKEN {token}");
    assert_eq!(tg.get("/db/bq1", &[("authorization", &auth)]).status, 200);
    let r = tg.admin(
        "PATCH",
        &format!("/v1/tokens/{id}"),
        Some(json!({"active": false})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(tg.get("/db/bq1", &[("authorization", &auth)]).status, 401);
    let ready = tg.admin("GET", "/readyz", None);
    assert_eq!(ready.status, 200, "{}", ready.text());
}
