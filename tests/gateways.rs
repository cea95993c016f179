//! Real gateways asking tokengate: nginx (`auth_request`) and Caddy (`forward_auth`) from
//! Debian's packages, each running the shipped example config (config/examples/) with only
//! the addresses changed, in front of a test upstream, on both store backends. Allowed
//! requests arrive with tokengate's identity headers (and no forged ones); denied ones never
//! arrive.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, RedisServer, Tokengate, Upstream, free_port, http};
use serde_json::json;

const ROUTES: &str = "[[routes]]\npath = \"/db/{app}\"\n";

/// A gateway process of the test's own, stopped by its pid (nginx runs as one process, without
/// a master, so killing it leaves no worker behind).
struct Gateway {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    fn spawn(mut cmd: Command, port: u16, dir: tempfile::TempDir, what: &str) -> Self {
        let log = dir.path().join("gateway.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut child = cmd
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap_or_else(|e| panic!("{what} must be installed (apt-get install {what}): {e}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{what} exited: {status}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "{what} never listened");
            std::thread::sleep(Duration::from_millis(10));
        }
        Self {
            port,
            child,
            _dir: dir,
        }
    }

    /// nginx with config/examples/nginx-auth-request.conf.
    fn nginx(tokengate: u16, upstream: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let site = example("nginx-auth-request.conf")
            .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
            .replace("127.0.0.1:3000", &format!("127.0.0.1:{upstream}"))
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{tokengate}"));
        let d = dir.path().display();
        let conf = format!(
            "master_process off;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             {site}\n}}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let mut cmd = Command::new("nginx");
        cmd.arg("-p").arg(dir.path()).arg("-c").arg(&path);
        Self::spawn(cmd, port, dir, "nginx")
    }

    /// Caddy with config/examples/Caddyfile.
    fn caddy(tokengate: u16, upstream: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let site = example("Caddyfile")
            .replace(":80 {", &format!("http://127.0.0.1:{port} {{"))
            .replace("127.0.0.1:3000", &format!("127.0.0.1:{upstream}"))
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{tokengate}"));
        let conf = format!("{{\n\tadmin off\n\tauto_https off\n}}\n\n{site}");
        let path = dir.path().join("Caddyfile");
        std::fs::write(&path, conf).unwrap();
        let mut cmd = Command::new("caddy");
        cmd.args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&path)
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path().join("data"))
            .env("XDG_CONFIG_HOME", dir.path().join("config"));
        Self::spawn(cmd, port, dir, "caddy")
    }
}

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/examples")
        .join(name);
    std::fs::read_to_string(path).unwrap()
}

fn seed(tg: &Tokengate) -> String {
    tg.admin("POST", "/v1/apps", Some(json!({"id": "bq1", "name": "B"})));
    tg.admin(
        "POST",
        "/v1/users",
        Some(
            json!({"id": "al", "email": "al@x.com", "name": "Al", "department": "Sales",
                    "tenant": "acme", "apps": ["bq1"]}),
        ),
    );
    tg.admin("PATCH", "/v1/apps/bq1", Some(json!({"tenant": "acme"})));
    tg.user_token("al", &["bq1"]).0
}

/// Through `gateway`: allowed with identity, forged identity gone, denied never forwarded.
fn through(gateway: &Gateway, up: &Upstream, secret: &str) {
    let auth = format!("QB-USER-TOKEN {secret}");
    let r = http(
        gateway.port,
        "GET",
        "/db/bq1?a=API_DoQuery",
        &[
            ("authorization", &auth),
            ("x-auth-user-id", "forged"),
            ("x-auth-department", "Board"),
        ],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(seen.target, "/db/bq1?a=API_DoQuery");
    assert_eq!(seen.header("x-auth-user-id"), Some("al"));
    assert_eq!(seen.header("x-auth-user-email"), Some("al@x.com"));
    assert_eq!(seen.header("x-auth-app-id"), Some("bq1"));
    assert_eq!(seen.header("x-auth-department"), Some("Sales"));
    assert_eq!(seen.header("x-auth-tenant"), Some("acme"));
    assert_eq!(seen.header("x-auth-method"), Some("user_token"));
    let forged: Vec<_> = seen
        .headers
        .iter()
        .filter(|(k, v)| k.starts_with("x-auth-") && (v == "forged" || v == "Board"))
        .collect();
    assert!(
        forged.is_empty(),
        "a forged identity got through: {forged:?}"
    );

    // The credential in the query works too.
    let r = http(
        gateway.port,
        "GET",
        &format!("/db/bq1?usertoken={secret}"),
        &[],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // Denied, every way: nothing reaches the upstream.
    let before = up.count();
    for (path, headers) in [
        ("/db/bq1", vec![]),
        (
            "/db/bq1",
            vec![(
                "authorization",
                "QB-USER-TOKEN tgu_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            )],
        ),
        ("/db/other", vec![("authorization", auth.as_str())]),
        ("/elsewhere", vec![("authorization", auth.as_str())]),
    ] {
        let r = http(gateway.port, "GET", path, &headers, None);
        assert!(
            matches!(r.status, 401 | 403 | 404 | 500),
            "{path}: {} {}",
            r.status,
            r.text()
        );
    }
    assert_eq!(up.count(), before, "nothing denied reached the upstream");
}

fn gateways(backend: &Backend) {
    let up = Upstream::start();
    let tg = Tokengate::start(backend, "echo", ROUTES, "");
    let secret = seed(&tg);
    let nginx = Gateway::nginx(tg.port, up.port);
    through(&nginx, &up, &secret);
    let caddy = Gateway::caddy(tg.port, up.port);
    through(&caddy, &up, &secret);
    // A refusal keeps tokengate's status through Caddy (nginx answers 401/403 its own way).
    let r = http(
        caddy.port,
        "GET",
        "/db/other",
        &[("authorization", &format!("QB-USER-TOKEN {secret}"))],
        None,
    );
    assert_eq!((r.status, r.error().as_str()), (403, "app_not_allowed"));
}

#[test]
fn nginx_and_caddy_ask_tokengate_on_the_embedded_store() {
    gateways(&Backend::Embedded);
}

#[test]
fn nginx_and_caddy_ask_tokengate_on_redis() {
    let redis = RedisServer::start();
    gateways(&Backend::Redis(redis.url()));
}
