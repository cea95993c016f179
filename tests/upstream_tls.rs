//! An `https://` upstream and `upstream.ca_file`: nginx from Debian's packages serves a
//! certificate of a test CA that `openssl` makes here, on a socket this test binds to port 0
//! and hands to nginx, so nginx is never waited for. With `ca_file` naming that CA (in a bundle,
//! behind another CA) a request arrives, with the URL's host as its SNI; without `ca_file`, or
//! with another CA, it gets tokengate's `502 upstream_unavailable` and nginx never sees it. A
//! `ca_file` that can't be used stops `check-config` and `serve`, naming the key and the path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::certs::{make_ca, make_cert};
use common::{Backend, Tokengate, free_port};
use serde_json::json;

const ROUTES: &str = "[[routes]]\npath = \"/db/{app}\"\n";

/// nginx serving HTTPS (`upstream.crt`) on a socket of the test's own: bound and listening
/// before nginx starts and handed to it as its stdin, with `NGINX=0;` (nginx's inherited-socket
/// handover, as in a binary upgrade). A connection made at once waits in the backlog until nginx
/// accepts it: there is nothing to wait for. Stopped by its pid when dropped.
struct HttpsUpstream {
    addr: SocketAddr,
    child: Child,
    dir: PathBuf,
}

impl HttpsUpstream {
    fn start(dir: &Path) -> Self {
        // Where `localhost` resolves first is where tokengate connects.
        let ip = ("localhost", 0)
            .to_socket_addrs()
            .unwrap()
            .next()
            .expect("localhost resolves")
            .ip();
        let listener = TcpListener::bind((ip, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             default_type text/plain;\n\
             server {{\n    listen {addr} ssl;\n    ssl_certificate {d}/upstream.crt;\n    ssl_certificate_key {d}/upstream.key;\n\
             location / {{ return 200 \"upstream answered $request_uri, SNI $ssl_server_name\\n\"; }}\n  }}\n}}\n"
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let out = std::fs::File::create(dir.join("nginx.out")).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&path)
            .env("NGINX", "0;")
            .stdin(Stdio::from(OwnedFd::from(listener)))
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap_or_else(|e| panic!("nginx must be installed (apt-get install nginx): {e}"));
        Self {
            addr,
            child,
            dir: dir.to_owned(),
        }
    }

    /// nginx's access log: one line per request it received.
    fn requests(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    /// What nginx said about itself (its error log, and its output).
    fn log(&self) -> String {
        let read = |name| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        read("error.log") + &read("nginx.out")
    }
}

impl Drop for HttpsUpstream {
    fn drop(&mut self) {
        // SIGTERM to the master, ours, stops its worker with it (SIGKILL would orphan it).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Points the config at `ca_file` (or at none: the system's roots), for the next restart.
fn set_ca_file(tg: &Tokengate, ca_file: Option<&Path>) {
    tg.rewrite_config(|config| {
        let config: String = config
            .lines()
            .filter(|l| !l.starts_with("ca_file = "))
            .map(|l| format!("{l}\n"))
            .collect();
        match ca_file {
            Some(path) => config.replacen(
                "[upstream]\n",
                &format!("[upstream]\nca_file = {path:?}\n"),
                1,
            ),
            None => config,
        }
    });
}

/// `path` is refused with tokengate's own 502, because the upstream's certificate isn't trusted.
fn refused(tg: &Tokengate, up: &HttpsUpstream, path: &str, auth: &str) {
    let rejections = || tg.log().matches("UnknownIssuer").count();
    let before = rejections();
    let r = tg.get(path, &[("authorization", auth)]);
    assert_eq!(
        (r.status, r.error().as_str()),
        (502, "upstream_unavailable"),
        "{path}: {}\n{}\n{}",
        r.text(),
        tg.log(),
        up.log()
    );
    assert!(r.header("x-request-id").is_some(), "tokengate's own answer");
    // Logged before the answer was written: the certificate was refused, not the connection.
    assert!(
        rejections() > before,
        "{path}: not for its certificate:\n{}",
        tg.log()
    );
}

#[test]
fn an_https_upstream_is_trusted_through_upstream_ca_file() {
    let pki = tempfile::tempdir().unwrap();
    let dir = pki.path();
    make_ca(dir, "ca");
    make_ca(dir, "other");
    make_cert(dir, "ca", "upstream.crt", "upstream.key", "upstream");
    // The upstream's CA second in a bundle: every certificate of the file counts.
    let bundle = std::fs::read_to_string(dir.join("other.crt")).unwrap()
        + &std::fs::read_to_string(dir.join("ca.crt")).unwrap();
    std::fs::write(dir.join("bundle.pem"), bundle).unwrap();
    let up = HttpsUpstream::start(dir);

    let url = format!("https://localhost:{}", up.addr.port());
    let mut tg = Tokengate::start(&Backend::Embedded, &url, ROUTES, "");
    tg.admin("POST", "/v1/apps", Some(json!({"id": "bq1", "name": "B"})));
    tg.admin(
        "POST",
        "/v1/users",
        Some(json!({"id": "al", "email": "al@x.com", "name": "Al", "apps": ["bq1"]})),
    );
    let (secret, _) = tg.user_token("al", &["bq1"]);
    let auth = format!("QB-USER-TOKEN {secret}");

    // No ca_file: the system's roots, which don't know the test CA.
    refused(&tg, &up, "/db/bq1/no-ca-file", &auth);

    // Another CA: refused the same way.
    set_ca_file(&tg, Some(&dir.join("other.crt")));
    tg.restart();
    refused(&tg, &up, "/db/bq1/other-ca", &auth);

    // The bundle holding the upstream's CA: through, with the URL's host as the SNI.
    set_ca_file(&tg, Some(&dir.join("bundle.pem")));
    tg.restart();
    for path in ["/db/bq1/first", "/db/bq1/second"] {
        let r = tg.get(path, &[("authorization", &auth)]);
        assert_eq!(
            r.status,
            200,
            "{path}: {}\n{}\n{}",
            r.text(),
            tg.log(),
            up.log()
        );
        assert_eq!(
            r.text(),
            format!("upstream answered {path}, SNI localhost\n")
        );
    }
    // nginx logged the first before it read the second: what it logged is all it received.
    let seen = up.requests();
    assert!(seen.contains("GET /db/bq1/first HTTP/1.1"), "{seen}");
    assert!(
        !seen.contains("no-ca-file") && !seen.contains("other-ca"),
        "a refused request reached the upstream:\n{seen}"
    );

    // Without ca_file again: refused again (nothing about the CA outlives its config).
    set_ca_file(&tg, None);
    tg.restart();
    refused(&tg, &up, "/db/bq1/no-ca-file-again", &auth);
}

#[test]
fn a_ca_file_that_cant_be_used_is_named_by_check_config_and_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_ca(d, "ca");
    let key_only = d.join("ca.key");
    let not_pem = d.join("notes.txt");
    std::fs::write(&not_pem, "the CA is on the wiki\n").unwrap();
    let missing = d.join("nowhere.pem");
    let config = |ca_file: &Path| {
        let path = d.join("tokengate.toml");
        std::fs::write(
            &path,
            format!(
                "[server]\nlisten = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\n\n\
                 [upstream]\nurl = \"https://localhost:8443\"\nca_file = {ca_file:?}\nread_timeout = \"soon\"\n\n\
                 [store]\npath = {:?}\n\n{ROUTES}",
                free_port(),
                free_port(),
                d.join("tokengate.db")
            ),
        )
        .unwrap();
        path
    };
    let run = |verb: &str, config: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .args([verb, "-c"])
            .arg(config)
            .current_dir(d)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        (out.status.success(), said)
    };
    for (ca_file, why) in [
        (&missing, "can't read it"),
        (&key_only, "no certificate in it"),
        (&not_pem, "not PEM"),
    ] {
        let (ok, said) = run("check-config", &config(ca_file));
        assert!(!ok, "{said}");
        let named = format!(
            "upstream.ca_file = {:?}: {why}",
            ca_file.display().to_string()
        );
        assert!(said.contains(&named), "{named} not in:\n{said}");
        // Listed with the config's other problem, not instead of it.
        assert!(said.contains("upstream.read_timeout"), "{said}");
    }
    // `serve` refuses to start on it, with the same words.
    let (ok, said) = run("serve", &config(&missing));
    assert!(!ok, "{said}");
    assert!(said.contains("upstream.ca_file = "), "{said}");

    // The CA itself passes.
    let path = config(&d.join("ca.crt"));
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("read_timeout = \"soon\"\n", "");
    std::fs::write(&path, text).unwrap();
    let (ok, said) = run("check-config", &path);
    assert!(ok, "{said}");
}
