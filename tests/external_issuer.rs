//! JWTs from another issuer (`[[sessions.issuers]]`), end to end: its JWKS served by a test
//! server over TCP, fetched by tokengate in the background, refreshed when a token names a key
//! it doesn't know (at most once per interval), and `iss` / `aud` / `exp` / the user checked.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Backend, Tokengate, Upstream};
use serde_json::{Value, json};
use tokengate::jwt::{Algorithm, KeySet, SigningKey};

const ISSUER: &str = "https://idp.example.test";

/// Serves one JWKS document (which the test may change) and counts the fetches.
struct JwksServer {
    port: u16,
    document: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    fn start(document: Value) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let document = Arc::new(Mutex::new(document.to_string()));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (doc, count) = (document.clone(), fetches.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                count.fetch_add(1, Ordering::SeqCst);
                let body = doc.lock().unwrap().clone();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: public, max-age=3600\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self {
            port,
            document,
            fetches,
        }
    }

    fn publish(&self, keys: &KeySet) {
        *self.document.lock().unwrap() = keys.jwks().to_string();
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

fn token(keys: &KeySet, claims: Value) -> String {
    keys.sign_claims(&claims).unwrap()
}

fn claims(sub: &str, aud: &str, exp_in: i64) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"iss": ISSUER, "aud": aud, "sub": sub, "iat": now, "exp": now + exp_in, "jti": format!("j-{sub}-{exp_in}-{aud}")})
}

#[test]
fn another_issuers_tokens_are_verified_by_its_jwks() {
    let mut idp = KeySet::new();
    idp.add(SigningKey::generate(Algorithm::RS256).unwrap())
        .unwrap();
    let jwks = JwksServer::start(idp.jwks());
    let up = Upstream::start();
    let extra = format!(
        "[sessions]\n\n[[sessions.issuers]]\nissuer = {ISSUER:?}\njwks_url = \"http://127.0.0.1:{}/jwks\"\naudience = \"my-api\"\nuser_claim = \"sub\"\n",
        jwks.port
    );
    let tg = Tokengate::start(
        &Backend::Embedded,
        &up.url(),
        "[[routes]]\npath = \"/db/{app}\"\n",
        &extra,
    );
    tg.admin("POST", "/v1/apps", Some(json!({"id": "bq1", "name": "B"})));
    tg.admin(
        "POST",
        "/v1/users",
        Some(
            json!({"id": "alice", "email": "alice@example.com", "name": "Alice", "apps": ["bq1"]}),
        ),
    );
    // The first fetch runs in the background at start.
    let deadline = Instant::now() + Duration::from_secs(10);
    while jwks.fetches() == 0 {
        assert!(Instant::now() < deadline, "the JWKS was never fetched");
        std::thread::sleep(Duration::from_millis(10));
    }
    let bearer = |t: &str| format!("Bearer {t}");

    let good = token(&idp, claims("alice", "my-api", 600));
    let r = tg.get("/db/bq1", &[("authorization", &bearer(&good))]);
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(seen.header("x-auth-user-id"), Some("alice"));
    assert_eq!(seen.header("x-auth-method"), Some("session"));
    assert_eq!(
        seen.header("x-auth-credential-id"),
        Some("j-alice-600-my-api")
    );
    assert!(seen.header("authorization").is_none());
    let r = tg.get("/db/bq1", &[("authorization", &good)]);
    assert_eq!(r.status, 200, "Knack style, no scheme: {}", r.text());

    // Another issuer's token, which tokengate can't revoke, makes no user tokens of its own.
    for (method, path) in [("GET", "/_auth/tokens"), ("POST", "/_auth/tokens")] {
        let r = common::http(
            tg.port,
            method,
            path,
            &[
                ("authorization", &bearer(&good)),
                ("content-type", "application/json"),
            ],
            Some(br#"{"name": "minted", "apps": ["bq1"]}"#),
        );
        assert_eq!(
            (r.status, r.error().as_str()),
            (403, "credential_not_allowed"),
            "{method} {path}: {}",
            r.text()
        );
    }
    let r = tg.admin("GET", "/v1/tokens?user=alice", None);
    assert_eq!(r.json()["items"], json!([]), "{}", r.text());

    let before = up.count();
    for (what, t, code) in [
        (
            "another audience",
            token(&idp, claims("alice", "other-api", 600)),
            "invalid_token",
        ),
        (
            "expired",
            token(&idp, claims("alice", "my-api", -600)),
            "token_expired",
        ),
        (
            "a user tokengate doesn't know",
            token(&idp, claims("nobody", "my-api", 600)),
            "invalid_token",
        ),
        (
            "an issuer not configured",
            token(
                &idp,
                json!({"iss": "https://evil.test", "aud": "my-api", "sub": "alice", "exp": chrono::Utc::now().timestamp() + 600}),
            ),
            "invalid_token",
        ),
    ] {
        let r = tg.get("/db/bq1", &[("authorization", &bearer(&t))]);
        assert_eq!(
            (r.status, r.error().as_str()),
            (401, code),
            "{what}: {}",
            r.text()
        );
    }
    assert_eq!(
        up.count(),
        before,
        "refused tokens never reach the upstream"
    );

    // The IdP rotates: a token under a new key makes tokengate fetch the JWKS again.
    let fetched = jwks.fetches();
    idp.add(SigningKey::generate(Algorithm::ES256).unwrap())
        .unwrap();
    jwks.publish(&idp);
    let rotated = token(&idp, claims("alice", "my-api", 601));
    let r = tg.get("/db/bq1", &[("authorization", &bearer(&rotated))]);
    assert_eq!(r.status, 200, "a new key is picked up: {}", r.text());
    assert_eq!(jwks.fetches(), fetched + 1);

    // A flood of made-up key ids: refused, and at most one more fetch.
    let mut forger = KeySet::new();
    forger
        .add(SigningKey::generate(Algorithm::EdDSA).unwrap())
        .unwrap();
    let fetched = jwks.fetches();
    for i in 0..20 {
        let t = token(&forger, claims("alice", "my-api", 700 + i));
        assert_eq!(
            tg.get("/db/bq1", &[("authorization", &bearer(&t))]).error(),
            "invalid_token"
        );
    }
    assert!(
        jwks.fetches() <= fetched + 1,
        "{} fetches for 20 unknown key ids",
        jwks.fetches() - fetched
    );

    // A disabled user's tokens stop, even cached.
    tg.admin(
        "PATCH",
        "/v1/users/alice",
        Some(json!({"status": "disabled"})),
    );
    assert_eq!(
        tg.get("/db/bq1", &[("authorization", &bearer(&good))])
            .error(),
        "user_disabled"
    );
}
