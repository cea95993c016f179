//! Session tokens (JWTs signed by tokengate: Knack-style user tokens, the admin guide's mobile
//! sessions), end to end over real sockets against the real binary, on the embedded store and
//! on a real redis-server (PRODUCT.md §1, §2, §4, §6, §10, §11; seed 003).
//!
//! Most of it runs on a server configured with a key file this test generated, so the test can
//! sign claims of its own with the very key the server trusts and show that only a genuine,
//! unexpired, unrevoked token of the right issuer and audience gets through.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use common::{Backend, RedisServer, Seen, Tokengate, Upstream, http};
use data_encoding::{BASE64, BASE64URL_NOPAD};
use serde_json::{Value, json};
use tokengate::jwt::{Algorithm, KeySet, SigningKey};

const PASSWORD: &str = "correct horse battery";

/// Apps in the path; one route with no app at all.
const ROUTES: &str = "[[routes]]\npath = \"/apps/{app}\"\n\n[[routes]]\npath = \"/open\"\n";

/// Many refusals on purpose: keep the failure limiter (`too_many_failures`) out of the way.
const LIMITS: &str = "[limits]\nfailures_per_minute = 100000\n";

// ---------------------------------------------------------------- helpers

/// A store of its own for one server: the embedded file in the server's temp dir, or a
/// redis-server of its own (kept alive as long as the returned guard).
fn store(redis: bool) -> (Backend, Option<RedisServer>) {
    if redis {
        let r = RedisServer::start();
        (Backend::Redis(r.url()), Some(r))
    } else {
        (Backend::Embedded, None)
    }
}

/// Generates an EdDSA key, writes it as PKCS#8 PEM into `dir`, and loads it back the way the
/// server does (the kid is derived from the public key), so the test signs with the same key
/// and kid the server trusts.
fn key_file(dir: &Path, name: &str) -> (PathBuf, SigningKey) {
    let made = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let pem = made.to_pem().unwrap();
    let path = dir.join(name);
    std::fs::write(&path, &pem).unwrap();
    (path, SigningKey::from_pem(Algorithm::EdDSA, &pem).unwrap())
}

fn key_files_line(paths: &[&Path]) -> String {
    let files: Vec<String> = paths
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    format!("key_files = [{}]", files.join(", "))
}

fn signer(key: &SigningKey) -> KeySet {
    let mut keys = KeySet::new();
    keys.add(key.clone()).unwrap();
    keys
}

/// Apps ka, kb, kc; alice (Ops, admin) may use ka and kb; bob and dora may use ka.
fn seed(tg: &Tokengate) {
    for id in ["ka", "kb", "kc"] {
        let r = tg.admin(
            "POST",
            "/v1/apps",
            Some(json!({"id": id, "name": format!("App {id}")})),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    for (id, name, apps) in [
        ("alice", "Alice", json!(["ka", "kb"])),
        ("bob", "Bob", json!(["ka"])),
        ("dora", "Dora", json!(["ka"])),
    ] {
        let r = tg.admin(
            "POST",
            "/v1/users",
            Some(
                json!({"id": id, "email": format!("{id}@example.com"), "name": name,
                        "department": "Ops", "user_type": "admin", "apps": apps,
                        "password": PASSWORD}),
            ),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
}

fn post_json(tg: &Tokengate, path: &str, body: &Value) -> common::Response {
    http(
        tg.port,
        "POST",
        path,
        &[("content-type", "application/json")],
        Some(body.to_string().as_bytes()),
    )
}

/// A login's answer.
#[derive(Debug, Clone)]
struct Login {
    token: String,
    sid: String,
    expires_at: DateTime<Utc>,
}

fn login(tg: &Tokengate, body: &Value) -> Login {
    let r = post_json(tg, "/_auth/login", body);
    assert_eq!(r.status, 200, "{body}: {}", r.text());
    let v = r.json();
    Login {
        token: v["token"].as_str().unwrap().to_owned(),
        sid: v["session_id"].as_str().unwrap().to_owned(),
        expires_at: v["expires_at"].as_str().unwrap().parse().unwrap(),
    }
}

fn login_as(tg: &Tokengate, user: &str) -> Login {
    login(tg, &json!({"username": user, "password": PASSWORD}))
}

fn b64_json(v: &Value) -> String {
    BASE64URL_NOPAD.encode(v.to_string().as_bytes())
}

fn part(part: &str) -> Value {
    serde_json::from_slice(&BASE64URL_NOPAD.decode(part.as_bytes()).unwrap()).unwrap()
}

/// The header and payload of a compact JWT, decoded by hand.
fn decode(token: &str) -> (Value, Value) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWS in compact form: {token}");
    (part(parts[0]), part(parts[1]))
}

fn kid_of(token: &str) -> String {
    decode(token).0["kid"].as_str().unwrap().to_owned()
}

/// Claims for `sid` that the server would accept, with `over` applied (`null` removes one).
fn claims(sub: &str, sid: &str, over: &Value) -> Value {
    let now = Utc::now().timestamp();
    let mut c = json!({"sub": sub, "sid": sid, "iat": now, "exp": now + 3600,
                       "iss": "tokengate", "aud": "tokengate", "jti": "crafted-by-the-test"});
    for (k, v) in over.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn jwks(tg: &Tokengate) -> Value {
    let r = tg.get("/_auth/jwks.json", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn jwks_kids(tg: &Tokengate) -> Vec<String> {
    jwks(tg)["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

/// What the upstream must see for a request admitted by the session `l`.
fn assert_session_headers(seen: &Seen, l: &Login, user: &str, app: Option<&str>) {
    assert_eq!(seen.header("x-auth-method"), Some("session"), "{seen:?}");
    assert_eq!(seen.header("x-auth-credential-id"), Some(l.sid.as_str()));
    assert_eq!(seen.header("x-auth-user-id"), Some(user));
    assert_eq!(
        seen.header("x-auth-user-email"),
        Some(format!("{user}@example.com").as_str())
    );
    assert_eq!(seen.header("x-auth-app-id"), app);
    let expires = DateTime::parse_from_rfc3339(seen.header("x-auth-expires-at").unwrap()).unwrap();
    assert_eq!(expires.timestamp(), l.expires_at.timestamp());
    assert!(
        seen.header("authorization").is_none(),
        "the token is removed"
    );
    assert!(
        !format!("{seen:?}").contains(&l.token),
        "the token never reaches the upstream"
    );
}

// ---------------------------------------------------------------- the fixture

struct Fixture {
    tg: Tokengate,
    up: Upstream,
    /// The server's key, as the test loaded it from the same file.
    key: SigningKey,
    _keys_dir: tempfile::TempDir,
    _redis: Option<RedisServer>,
}

fn setup(redis: bool) -> Fixture {
    let (backend, redis) = store(redis);
    let keys_dir = tempfile::tempdir().unwrap();
    let (path, key) = key_file(keys_dir.path(), "session-key.pem");
    let up = Upstream::start();
    let extra = format!("{LIMITS}\n[sessions]\n{}\n", key_files_line(&[&path]));
    let tg = Tokengate::start(&backend, &up.url(), ROUTES, &extra);
    seed(&tg);
    Fixture {
        tg,
        up,
        key,
        _keys_dir: keys_dir,
        _redis: redis,
    }
}

// ---------------------------------------------------------------- 1. login

fn logging_in(f: &Fixture) {
    let (tg, up) = (&f.tg, &f.up);
    let before = up.count();

    // By email, defaults: 48 hours, no app.
    let r = post_json(
        tg,
        "/_auth/login",
        &json!({"username": "alice@example.com", "password": PASSWORD}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["expires_at", "session_id", "token", "user_id"]);
    assert_eq!(v["user_id"], "alice");
    let token = v["token"].as_str().unwrap();
    let sid = v["session_id"].as_str().unwrap();
    let expires: DateTime<Utc> = v["expires_at"].as_str().unwrap().parse().unwrap();
    let minutes = (expires - Utc::now()).num_minutes();
    assert!(
        (48 * 60 - 2..=48 * 60).contains(&minutes),
        "48 hours by default, got {minutes} minutes"
    );
    let (header, payload) = decode(token);
    assert_eq!(header["alg"], "EdDSA", "{header}");
    assert_eq!(header["kid"], f.key.kid(), "signed by the configured key");
    assert_eq!(payload["sub"], "alice", "{payload}");
    assert_eq!(payload["sid"], sid);
    assert_eq!(payload["iss"], "tokengate");
    assert_eq!(payload["aud"], "tokengate");
    assert!(!payload["jti"].as_str().unwrap().is_empty());
    let iat = payload["iat"].as_i64().unwrap();
    assert!(
        (iat - Utc::now().timestamp()).abs() < 60,
        "iat is now: {iat}"
    );
    assert_eq!(payload["exp"].as_i64(), Some(expires.timestamp()));
    assert!(payload.get("app").is_none(), "no app asked, none bound");
    assert!(
        !payload.to_string().contains(PASSWORD),
        "no password in a token"
    );

    // By id, bound to an app, remembered: 14 days.
    let l = login(
        tg,
        &json!({"username": "alice", "password": PASSWORD, "app": "ka", "remember_me": true}),
    );
    let hours = (l.expires_at - Utc::now()).num_hours();
    assert!(
        (14 * 24 - 1..=14 * 24).contains(&hours),
        "14 days with remember_me, got {hours} hours"
    );
    let (header, payload) = decode(&l.token);
    assert_eq!(
        (header["alg"].as_str(), header["kid"].as_str()),
        (Some("EdDSA"), Some(f.key.kid()))
    );
    assert_eq!(payload["app"], "ka");
    assert_eq!(payload["sid"], l.sid.as_str());
    assert_ne!(l.sid, sid, "every login is a new session");
    assert_ne!(
        payload["jti"].as_str(),
        Some(decode(token).1["jti"].as_str().unwrap())
    );
    // remember_me false is the default; a form body works too.
    let l = login(
        tg,
        &json!({"username": "alice", "password": PASSWORD, "remember_me": false}),
    );
    assert!((l.expires_at - Utc::now()).num_hours() <= 48);
    let r = http(
        tg.port,
        "POST",
        "/_auth/login",
        &[("content-type", "application/x-www-form-urlencoded")],
        Some(
            format!(
                "username=alice%40example.com&password={}&remember_me=true",
                PASSWORD.replace(' ', "+")
            )
            .as_bytes(),
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let expires: DateTime<Utc> = r.json()["expires_at"].as_str().unwrap().parse().unwrap();
    assert!((expires - Utc::now()).num_days() >= 13);

    // Refusals.
    for body in [
        json!({"username": "alice", "password": "wrong password"}),
        json!({"username": "alice@example.com", "password": "wrong password"}),
        json!({"username": "nobody@example.com", "password": PASSWORD}),
    ] {
        let r = post_json(tg, "/_auth/login", &body);
        assert_eq!(
            (r.status, r.error().as_str()),
            (401, "invalid_token"),
            "{body}: {}",
            r.text()
        );
        assert!(r.header("www-authenticate").is_some());
        assert!(r.json().get("token").is_none());
    }
    for (body, field) in [
        (json!({"password": PASSWORD}), "username"),
        (json!({"password": PASSWORD, "app": "ka"}), "username"),
        (json!({"username": "alice"}), "password"),
        (
            json!({"username": "alice", "password": PASSWORD, "remember_me": "perhaps"}),
            "remember_me",
        ),
    ] {
        let r = post_json(tg, "/_auth/login", &body);
        assert_eq!(
            (r.status, r.error().as_str(), r.json()["field"].as_str()),
            (400, "invalid_request", Some(field)),
            "{body}: {}",
            r.text()
        );
        assert!(
            r.json()["message"].as_str().unwrap().contains(field),
            "the message names the field: {}",
            r.text()
        );
    }
    let r = http(tg.port, "POST", "/_auth/login", &[], Some(b"not json"));
    assert_eq!(r.status, 400, "{}", r.text());
    for app in ["kc", "no-such-app"] {
        let r = post_json(
            tg,
            "/_auth/login",
            &json!({"username": "alice", "password": PASSWORD, "app": app}),
        );
        assert_eq!(
            (r.status, r.error().as_str()),
            (403, "app_not_allowed"),
            "{app}: {}",
            r.text()
        );
        assert!(r.json().get("token").is_none());
    }
    assert_eq!(tg.get("/_auth/login", &[]).status, 405);
    assert_eq!(up.count(), before, "login is answered by tokengate itself");
}

// ---------------------------------------------------------------- 2. admission

fn sessions_are_admitted(f: &Fixture) {
    let (tg, up) = (&f.tg, &f.up);
    let l = login_as(tg, "alice");
    let bare = l.token.clone();
    let with_scheme = bearer(&l.token);
    for auth in [&bare, &with_scheme] {
        let r = tg.get(
            "/apps/ka/records?rows=10",
            &[("authorization", auth), ("x-auth-user-id", "mallory")],
        );
        assert_eq!(r.status, 200, "{auth}: {}", r.text());
        assert_eq!(r.text(), "upstream ok");
        let seen = up.last();
        assert_eq!(seen.target, "/apps/ka/records?rows=10");
        assert_session_headers(&seen, &l, "alice", Some("ka"));
        assert_eq!(seen.header("x-auth-department"), Some("Ops"));
        assert_eq!(seen.header("x-auth-user-type"), Some("admin"));
        assert_eq!(seen.header("x-auth-user-name"), Some("Alice"));
        assert_eq!(
            seen.headers
                .iter()
                .filter(|(k, _)| k == "x-auth-user-id")
                .count(),
            1,
            "a forged identity header is dropped"
        );
    }
    // An unbound session reaches any app its user may use, and routes with no app.
    assert_eq!(tg.get("/apps/kb", &[("authorization", &bare)]).status, 200);
    assert_session_headers(&up.last(), &l, "alice", Some("kb"));
    assert_eq!(
        tg.get("/open", &[("authorization", &with_scheme)]).status,
        200
    );
    assert_session_headers(&up.last(), &l, "alice", None);

    let before = up.count();
    let r = tg.get("/apps/kc", &[("authorization", &bare)]);
    assert_eq!(
        (r.status, r.error().as_str()),
        (403, "app_not_allowed"),
        "not one of alice's apps: {}",
        r.text()
    );
    assert_eq!(
        tg.get("/apps/nosuch", &[("authorization", &bare)]).error(),
        "app_not_allowed"
    );

    // A session bound to ka is for ka only.
    let bound = login(
        tg,
        &json!({"username": "alice", "password": PASSWORD, "app": "ka"}),
    );
    for auth in [bound.token.clone(), bearer(&bound.token)] {
        let r = tg.get("/apps/kb", &[("authorization", &auth)]);
        assert_eq!(
            (r.status, r.error().as_str()),
            (403, "app_not_allowed"),
            "bound to ka, used on kb: {}",
            r.text()
        );
    }
    assert_eq!(
        up.count(),
        before,
        "refused requests never reach the upstream"
    );
    assert_eq!(
        tg.get("/apps/ka", &[("authorization", &bound.token)])
            .status,
        200
    );
    assert_session_headers(&up.last(), &bound, "alice", Some("ka"));

    // Garbage that looks like a session token.
    let before = up.count();
    for auth in [
        "Bearer abc.def.ghi",
        "abc.def.ghi",
        "Bearer not-a-jwt",
        "Bearer ",
    ] {
        let r = tg.get("/apps/ka", &[("authorization", auth)]);
        assert_eq!(r.status, 401, "{auth}: {}", r.text());
        assert!(r.header("www-authenticate").is_some());
    }
    assert_eq!(
        tg.get("/apps/ka", &[("authorization", "Bearer abc.def.ghi")])
            .error(),
        "invalid_token"
    );
    assert_eq!(up.count(), before);
}

// ---------------------------------------------------------------- 3. JWKS

fn jwks_is_public_only(f: &Fixture) {
    let (tg, up) = (&f.tg, &f.up);
    let before = up.count();
    let r = tg.get("/_auth/jwks.json", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let doc = r.json();
    let keys = doc["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "only the configured key: {doc}");
    let key = &keys[0];
    assert_eq!(key["kid"], f.key.kid());
    assert_eq!(key["alg"], "EdDSA");
    assert_eq!(key["use"], "sig");
    assert_eq!(
        (key["kty"].as_str(), key["crv"].as_str()),
        (Some("OKP"), Some("Ed25519"))
    );
    assert_eq!(
        Some(key),
        f.key.public_jwk().as_ref(),
        "the public half, exactly"
    );
    for k in keys {
        for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
            assert!(k.get(private).is_none(), "{private} published: {k}");
        }
        assert_ne!(k["kty"], "oct", "no symmetric key is ever published");
        for field in ["kid", "alg", "use"] {
            assert!(k[field].is_string(), "{field} missing: {k}");
        }
    }
    // The private key (PKCS#8; the Ed25519 seed is its last 32 bytes) appears in no form.
    let pem = f.key.to_pem().unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = BASE64.decode(body.as_bytes()).unwrap();
    let seed = &der[der.len() - 32..];
    let text = r.text();
    for secret in [
        body.clone(),
        BASE64URL_NOPAD.encode(seed),
        BASE64.encode(seed),
    ] {
        assert!(!text.contains(&secret), "private material in the JWKS");
    }
    assert_eq!(up.count(), before);
}

// ---------------------------------------------------------------- 4. crafted tokens

fn verification_cannot_be_fooled(f: &Fixture) {
    let (tg, up) = (&f.tg, &f.up);
    let keys = signer(&f.key);
    let kid = f.key.kid().to_owned();
    let alice = login_as(tg, "alice");
    let bob = login_as(tg, "bob");
    let sign = |over: Value| {
        keys.sign_claims(&claims("alice", &alice.sid, &over))
            .unwrap()
    };

    // The test really holds the server's key: its own token for alice's session is admitted.
    let good = sign(json!({}));
    let r = tg.get("/apps/ka", &[("authorization", &bearer(&good))]);
    assert_eq!(r.status, 200, "a crafted valid token: {}", r.text());
    assert_eq!(
        up.last().header("x-auth-credential-id"),
        Some(alice.sid.as_str())
    );
    let good_parts: Vec<&str> = good.split('.').collect();
    let (good_header, good_payload) = decode(&good);
    let public_x = BASE64URL_NOPAD
        .decode(
            f.key.public_jwk().unwrap()["x"]
                .as_str()
                .unwrap()
                .as_bytes(),
        )
        .unwrap();

    let mut cases: Vec<(&str, String, &str)> = Vec::new();
    // A changed signature.
    let mut sig: Vec<u8> = good_parts[2].bytes().collect();
    sig[10] = if sig[10] == b'A' { b'B' } else { b'A' };
    cases.push((
        "tampered signature",
        format!(
            "{}.{}.{}",
            good_parts[0],
            good_parts[1],
            String::from_utf8(sig).unwrap()
        ),
        "invalid_token",
    ));
    cases.push((
        "signature cut off",
        format!("{}.{}.", good_parts[0], good_parts[1]),
        "invalid_token",
    ));
    // A changed payload under the genuine signature: another user, a later expiry.
    for (what, over) in [
        ("tampered payload (sub)", json!({"sub": "bob"})),
        (
            "tampered payload (exp)",
            json!({"exp": Utc::now().timestamp() + 86_400 * 365}),
        ),
        ("tampered payload (app)", json!({"app": "kb"})),
    ] {
        let mut payload = good_payload.clone();
        for (k, v) in over.as_object().unwrap() {
            payload[k] = v.clone();
        }
        cases.push((
            what,
            format!("{}.{}.{}", good_parts[0], b64_json(&payload), good_parts[2]),
            "invalid_token",
        ));
    }
    // alg: none with the real kid, without and with the genuine signature.
    let none = b64_json(&json!({"alg": "none", "typ": "JWT", "kid": kid}));
    cases.push((
        "alg none, no signature",
        format!("{none}.{}.", good_parts[1]),
        "invalid_token",
    ));
    cases.push((
        "alg none, genuine signature",
        format!("{none}.{}.{}", good_parts[1], good_parts[2]),
        "invalid_token",
    ));
    let mut header = good_header.clone();
    header["alg"] = json!("None");
    cases.push((
        "alg None",
        format!("{}.{}.", b64_json(&header), good_parts[1]),
        "invalid_token",
    ));
    // HS256 under the real kid, with the public key as the HMAC secret (the classic
    // confusion), and with the published JWK text as the secret.
    let jwks_text = tg.get("/_auth/jwks.json", &[]).text();
    for (what, secret) in [
        ("HS256 keyed with the public key", public_x.clone()),
        (
            "HS256 keyed with the published JWKS",
            jwks_text.into_bytes(),
        ),
    ] {
        let hmac = SigningKey::from_secret(&secret)
            .unwrap()
            .with_kid(kid.clone())
            .unwrap();
        let token = signer(&hmac)
            .sign_claims(&claims("alice", &alice.sid, &json!({})))
            .unwrap();
        assert_eq!(decode(&token).0["alg"], "HS256");
        cases.push((what, token, "invalid_token"));
    }
    // Another key: its own kid (unknown), the real kid, or another algorithm under the real kid.
    let other = SigningKey::generate(Algorithm::EdDSA).unwrap();
    let valid_claims = claims("alice", &alice.sid, &json!({}));
    cases.push((
        "another key, unknown kid",
        signer(&other).sign_claims(&valid_claims).unwrap(),
        "invalid_token",
    ));
    cases.push((
        "another key under the real kid",
        signer(&other.clone().with_kid(kid.clone()).unwrap())
            .sign_claims(&valid_claims)
            .unwrap(),
        "invalid_token",
    ));
    cases.push((
        "an ES256 key under the real kid",
        signer(
            &SigningKey::generate(Algorithm::ES256)
                .unwrap()
                .with_kid(kid.clone())
                .unwrap(),
        )
        .sign_claims(&valid_claims)
        .unwrap(),
        "invalid_token",
    ));
    // Genuinely signed, but the claims say no.
    let now = Utc::now().timestamp();
    cases.push((
        "expired beyond the leeway",
        sign(json!({"iat": now - 7200, "exp": now - 60})),
        "token_expired",
    ));
    cases.push((
        "not valid before an hour from now",
        sign(json!({"nbf": now + 3600})),
        "invalid_token",
    ));
    cases.push((
        "wrong issuer",
        sign(json!({"iss": "https://evil.example.com"})),
        "invalid_token",
    ));
    cases.push(("no issuer", sign(json!({"iss": null})), "invalid_token"));
    cases.push((
        "wrong audience",
        sign(json!({"aud": "another-api"})),
        "invalid_token",
    ));
    cases.push(("no audience", sign(json!({"aud": null})), "invalid_token"));
    cases.push(("no expiry", sign(json!({"exp": null})), "invalid_token"));
    cases.push((
        "bob's session under alice's name",
        keys.sign_claims(&claims("alice", &bob.sid, &json!({})))
            .unwrap(),
        "invalid_token",
    ));
    cases.push((
        "alice's session under bob's name",
        keys.sign_claims(&claims("bob", &alice.sid, &json!({})))
            .unwrap(),
        "invalid_token",
    ));
    // Genuine, valid, but no server-side session by that sid: revoked (or never was).
    cases.push((
        "no session with this sid",
        sign(json!({"sid": "AAAAAAAAAAAAAAAAAAAAAA"})),
        "token_revoked",
    ));

    let before = up.count();
    for (what, token, error) in &cases {
        let mut forms = vec![bearer(token)];
        if token.split('.').all(|p| !p.is_empty()) {
            forms.push(token.clone());
        }
        for auth in forms {
            let r = tg.get("/apps/ka", &[("authorization", &auth)]);
            assert_eq!(
                (r.status, r.error().as_str()),
                (401, *error),
                "{what} ({auth}): {}",
                r.text()
            );
            assert!(r.header("www-authenticate").is_some(), "{what}");
        }
        let r = tg.get("/_auth/whoami", &[("authorization", &bearer(token))]);
        assert_eq!(
            (r.status, r.error().as_str()),
            (401, *error),
            "whoami, {what}"
        );
    }
    assert_eq!(
        up.count(),
        before,
        "no crafted token reaches the upstream: {:?}",
        up.seen().last()
    );
    // The genuine ones still work after all that.
    assert_eq!(
        tg.get("/apps/ka", &[("authorization", &alice.token)])
            .status,
        200
    );
    assert_eq!(tg.get("/apps/ka", &[("authorization", &good)]).status, 200);
}

// ---------------------------------------------------------------- 6. revocation

fn sign_out(tg: &Tokengate, auth: &str) -> common::Response {
    http(
        tg.port,
        "POST",
        "/_auth/signout",
        &[("authorization", auth)],
        Some(b""),
    )
}

fn listed(tg: &Tokengate, query: &str) -> Vec<Value> {
    let r = tg.admin("GET", &format!("/v1/sessions?{query}"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["items"].as_array().unwrap().clone()
}

fn listed_ids(tg: &Tokengate, query: &str) -> Vec<String> {
    listed(tg, query)
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

fn revocation(f: &Fixture) {
    let (tg, up) = (&f.tg, &f.up);
    let get = |l: &Login| tg.get("/apps/ka", &[("authorization", &l.token)]);
    let [a, b, c, d, e] = std::array::from_fn(|_| login_as(tg, "dora"));
    for l in [&a, &b, &c, &d, &e] {
        assert_eq!(get(l).status, 200);
    }

    // Sign-out with the session, Bearer or bare: refused from then on.
    let r = sign_out(tg, &bearer(&a.token));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["signed_out"], true);
    let before = up.count();
    let r = get(&a);
    assert_eq!(
        (r.status, r.error().as_str()),
        (401, "token_revoked"),
        "{}",
        r.text()
    );
    assert_eq!(
        tg.get("/apps/ka", &[("authorization", &bearer(&a.token))])
            .error(),
        "token_revoked"
    );
    assert_eq!(up.count(), before);
    assert_eq!(sign_out(tg, &b.token).status, 200, "Knack style");
    assert_eq!(get(&b).error(), "token_revoked");
    let r = http(tg.port, "POST", "/_auth/signout", &[], Some(b""));
    assert_eq!((r.status, r.error().as_str()), (401, "missing_credentials"));
    let forged = signer(&SigningKey::generate(Algorithm::EdDSA).unwrap())
        .sign_claims(&claims("dora", &c.sid, &json!({})))
        .unwrap();
    let r = sign_out(tg, &bearer(&forged));
    assert_eq!(
        (r.status, r.error().as_str()),
        (401, "invalid_token"),
        "only a genuine token signs out: {}",
        r.text()
    );
    assert_eq!(get(&c).status, 200, "a forged sign-out revokes nothing");

    // The admin listing: live sessions only, with the admin guide's fields.
    let r = post_json(
        tg,
        "/_auth/authenticate",
        &json!({"username": "dora", "password": PASSWORD}),
    );
    assert_eq!(r.status, 200, "a ticket for dora: {}", r.text());
    let items = listed(tg, "kind=session&user=dora");
    let ids: Vec<&str> = items.iter().map(|i| i["id"].as_str().unwrap()).collect();
    for l in [&c, &d, &e] {
        assert!(ids.contains(&l.sid.as_str()), "{} not in {ids:?}", l.sid);
    }
    for l in [&a, &b] {
        assert!(
            !ids.contains(&l.sid.as_str()),
            "revoked {} is listed",
            l.sid
        );
    }
    assert_eq!(items.len(), 3, "sessions only, no ticket: {items:?}");
    let item = items.iter().find(|i| i["id"] == c.sid.as_str()).unwrap();
    for field in [
        "id",
        "kind",
        "user_id",
        "user_name",
        "email",
        "department",
        "user_type",
        "issued_at",
        "expires_at",
        "last_active_at",
    ] {
        assert!(
            item.get(field).is_some_and(|v| !v.is_null()),
            "{field} missing from {item}"
        );
    }
    assert_eq!(item["kind"], "session");
    assert_eq!(item["user_id"], "dora");
    assert_eq!(item["user_name"], "Dora");
    assert_eq!(item["email"], "dora@example.com");
    assert_eq!(item["department"], "Ops");
    assert_eq!(item["user_type"], "admin");
    let expires: DateTime<Utc> = item["expires_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(expires.timestamp(), c.expires_at.timestamp());
    let issued: DateTime<Utc> = item["issued_at"].as_str().unwrap().parse().unwrap();
    assert!((Utc::now() - issued).num_minutes() < 10);
    let text = tg
        .admin("GET", "/v1/sessions?kind=session&user=dora", None)
        .text();
    assert!(!text.contains(&c.token), "no token in a listing");
    assert!(
        listed(tg, "kind=ticket&user=dora")
            .iter()
            .all(|i| i["kind"] == "ticket"),
        "kind=ticket lists tickets only"
    );
    assert_eq!(
        tg.admin("GET", "/v1/sessions?kind=cookie", None).status,
        400
    );

    // Admin revocation: one, many, all of a user's.
    assert_eq!(
        tg.admin("DELETE", &format!("/v1/sessions/{}", c.sid), None)
            .status,
        204
    );
    let r = get(&c);
    assert_eq!(
        (r.status, r.error().as_str()),
        (401, "token_revoked"),
        "{}",
        r.text()
    );
    assert!(!listed_ids(tg, "kind=session&user=dora").contains(&c.sid));
    assert_eq!(
        tg.admin("DELETE", "/v1/sessions/no-such-session", None)
            .status,
        404
    );
    let r = tg.admin("POST", "/v1/sessions/delete", Some(json!({"ids": [d.sid]})));
    assert_eq!(r.json()["deleted"], 1, "{}", r.text());
    assert_eq!(get(&d).error(), "token_revoked");
    let g = login_as(tg, "dora");
    assert_eq!(get(&g).status, 200);
    let r = tg.admin("DELETE", "/v1/users/dora/sessions", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json()["deleted"].as_u64().unwrap() >= 2,
        "e, g and the ticket: {}",
        r.text()
    );
    for l in [&e, &g] {
        assert_eq!(get(l).error(), "token_revoked");
    }
    assert_eq!(listed(tg, "kind=session&user=dora"), Vec::<Value>::new());

    // Disabled, the user's sessions stop (and it can't log in); enabled, they work again.
    let h = login_as(tg, "dora");
    let r = tg.admin(
        "PATCH",
        "/v1/users/dora",
        Some(json!({"status": "disabled"})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(&h);
    assert_eq!(
        (r.status, r.error().as_str()),
        (401, "user_disabled"),
        "{}",
        r.text()
    );
    let r = post_json(
        tg,
        "/_auth/login",
        &json!({"username": "dora", "password": PASSWORD}),
    );
    assert_eq!(r.status, 401, "a disabled user can't log in: {}", r.text());
    tg.admin("PATCH", "/v1/users/dora", Some(json!({"status": "active"})));
    assert_eq!(get(&h).status, 200);

    // Deleted, its sessions are gone with it.
    assert_eq!(tg.admin("DELETE", "/v1/users/dora", None).status, 204);
    let before = up.count();
    let r = get(&h);
    assert_eq!(
        (r.status, r.error().as_str()),
        (401, "user_disabled"),
        "owner deleted: {}",
        r.text()
    );
    assert_eq!(up.count(), before);
    assert_eq!(listed(tg, "user=dora"), Vec::<Value>::new());
    let log = tg.log();
    for l in [&a, &c, &h] {
        assert!(!log.contains(&l.token), "no token in the log");
    }
    assert!(!log.contains(PASSWORD), "no password in the log");
}

// ---------------------------------------------------------------- 7. whoami

fn whoami(f: &Fixture) {
    let tg = &f.tg;
    let l = login_as(tg, "alice");
    for auth in [l.token.clone(), bearer(&l.token)] {
        let r = tg.get("/_auth/whoami", &[("authorization", &auth)]);
        assert_eq!(r.status, 200, "{}", r.text());
        let me = r.json();
        assert_eq!(me["method"], "session");
        assert_eq!(me["credential_id"], l.sid.as_str());
        assert_eq!(me["user_id"], "alice");
        assert_eq!(me["email"], "alice@example.com");
        assert_eq!(me["name"], "Alice");
        assert_eq!(me["department"], "Ops");
        assert_eq!(me["user_type"], "admin");
        let expires: DateTime<Utc> = me["expires_at"].as_str().unwrap().parse().unwrap();
        assert_eq!(expires.timestamp(), l.expires_at.timestamp());
        assert!(!r.text().contains(&l.token));
    }
    assert_eq!(sign_out(tg, &l.token).status, 200);
    assert_eq!(
        tg.get("/_auth/whoami", &[("authorization", &l.token)])
            .error(),
        "token_revoked"
    );
}

// ---------------------------------------------------------------- 8. the store's own key

/// No key configured (the default): the store makes one, keeps it, and every restart signs and
/// verifies with it.
fn default_key_survives_restart(redis: bool) {
    let (backend, _redis) = store(redis);
    let up = Upstream::start();
    let mut tg = Tokengate::start(&backend, &up.url(), ROUTES, LIMITS);
    seed(&tg);
    let l = login_as(&tg, "alice");
    let kid = kid_of(&l.token);
    assert_eq!(decode(&l.token).0["alg"], "EdDSA", "EdDSA by default");
    assert_eq!(jwks_kids(&tg), [kid.as_str()]);
    assert_eq!(
        tg.get("/apps/ka", &[("authorization", &l.token)]).status,
        200
    );

    tg.restart();
    let r = tg.get("/apps/ka", &[("authorization", &l.token)]);
    assert_eq!(
        r.status,
        200,
        "the token still verifies after a restart: {}",
        r.text()
    );
    assert_session_headers(&up.last(), &l, "alice", Some("ka"));
    assert_eq!(jwks_kids(&tg), [kid.as_str()], "the same key, kept");
    let again = login_as(&tg, "alice");
    assert_eq!(kid_of(&again.token), kid);
    assert_eq!(
        tg.get("/apps/ka", &[("authorization", &again.token)])
            .status,
        200
    );
    let log = tg.log();
    assert!(!log.contains(&l.token) && !log.contains(PASSWORD));
}

// ---------------------------------------------------------------- Knack-style routes

fn knack_routes() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/examples/knack.toml"
    ))
    .unwrap()
    .split("[[routes]]")
    .skip(1)
    .map(|r| format!("[[routes]]{r}"))
    .collect::<Vec<_>>()
    .join("\n")
}

/// The view-based request of seed 003, through config/examples/knack.toml's routes.
fn knack_style(redis: bool) {
    const APP: &str = "539e663b6e53ecc560000b79";
    const OTHER: &str = "5547ea65d2a7381409257ad3";
    let (backend, _redis) = store(redis);
    let up = Upstream::start();
    let tg = Tokengate::start(&backend, &up.url(), &knack_routes(), LIMITS);
    for id in [APP, OTHER] {
        let r = tg.admin("POST", "/v1/apps", Some(json!({"id": id, "name": id})));
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let r = tg.admin(
        "POST",
        "/v1/users",
        Some(
            json!({"id": "alice", "email": "alice@example.com", "name": "Alice",
                    "apps": [APP], "password": PASSWORD}),
        ),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let l = login(
        &tg,
        &json!({"username": "alice@example.com", "password": PASSWORD, "app": APP}),
    );

    let view = "/v1/pages/scene_1/views/view_1/records";
    let r = tg.get(
        view,
        &[
            ("authorization", &l.token),
            ("x-knack-application-id", APP),
            ("content-type", "application/json"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(seen.target, view);
    assert_session_headers(&seen, &l, "alice", Some(APP));
    assert_eq!(
        seen.header("x-knack-application-id"),
        Some(APP),
        "the application id goes on"
    );

    let before = up.count();
    let r = tg.get(view, &[("authorization", &l.token)]);
    assert_eq!(
        (r.status, r.error().as_str()),
        (403, "app_not_allowed"),
        "no X-Knack-Application-Id: {}",
        r.text()
    );
    let r = tg.get(
        view,
        &[
            ("authorization", &l.token),
            ("x-knack-application-id", OTHER),
        ],
    );
    assert_eq!(
        (r.status, r.error().as_str()),
        (403, "app_not_allowed"),
        "another application: {}",
        r.text()
    );
    let r = tg.get(view, &[("x-knack-application-id", APP)]);
    assert_eq!((r.status, r.error().as_str()), (401, "missing_credentials"));
    assert_eq!(
        tg.get("/v1/elsewhere", &[("authorization", &l.token)])
            .error(),
        "no_route"
    );
    assert_eq!(up.count(), before, "none of these reaches the upstream");

    // Object-based requests: a script's user token, or the session.
    let r = tg.admin(
        "POST",
        "/v1/users/alice/tokens",
        Some(json!({"name": "sync", "apps": [APP]})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let user_token = r.json()["token"].as_str().unwrap().to_owned();
    let objects = "/v1/objects/object_1/records";
    for (auth, method) in [
        (bearer(&user_token), "user_token"),
        (l.token.clone(), "session"),
    ] {
        let r = tg.get(
            objects,
            &[("authorization", &auth), ("x-knack-application-id", APP)],
        );
        assert_eq!(r.status, 200, "{method}: {}", r.text());
        let seen = up.last();
        assert_eq!(seen.header("x-auth-method"), Some(method));
        assert_eq!(seen.header("x-auth-app-id"), Some(APP));
        assert!(seen.header("authorization").is_none());
    }
}

// ---------------------------------------------------------------- the runs

fn all(redis: bool) {
    let f = setup(redis);
    logging_in(&f);
    sessions_are_admitted(&f);
    jwks_is_public_only(&f);
    verification_cannot_be_fooled(&f);
    whoami(&f);
    revocation(&f);
    drop(f);
    default_key_survives_restart(redis);
    knack_style(redis);
}

#[test]
fn sessions_on_the_embedded_store() {
    all(false);
}

#[test]
fn sessions_on_redis() {
    all(true);
}

/// Rotation with key files: add B (A still verifies, B signs), then drop A (A is refused).
/// On the embedded store, whose data survives the restarts.
#[test]
fn key_rotation_by_key_files() {
    let keys_dir = tempfile::tempdir().unwrap();
    let (a_path, a) = key_file(keys_dir.path(), "a.pem");
    let (b_path, b) = key_file(keys_dir.path(), "b.pem");
    assert_ne!(a.kid(), b.kid());
    let up = Upstream::start();
    let only_a = key_files_line(&[&a_path]);
    let mut tg = Tokengate::start(
        &Backend::Embedded,
        &up.url(),
        ROUTES,
        &format!("{LIMITS}\n[sessions]\n{only_a}\n"),
    );
    seed(&tg);
    let get = |tg: &Tokengate, l: &Login| tg.get("/apps/ka", &[("authorization", &l.token)]);
    let ta = login_as(&tg, "alice");
    assert_eq!(kid_of(&ta.token), a.kid());
    assert_eq!(get(&tg, &ta).status, 200);
    assert_eq!(jwks_kids(&tg), [a.kid()]);

    // [A, B]: B signs, A still verifies.
    let both = key_files_line(&[&a_path, &b_path]);
    tg.rewrite_config(|c| {
        assert!(c.contains(&only_a), "{c}");
        c.replace(&only_a, &both)
    });
    tg.restart();
    let r = get(&tg, &ta);
    assert_eq!(r.status, 200, "A still verifies: {}", r.text());
    assert_session_headers(&up.last(), &ta, "alice", Some("ka"));
    let tb = login_as(&tg, "alice");
    assert_eq!(kid_of(&tb.token), b.kid(), "the last key signs");
    assert_eq!(get(&tg, &tb).status, 200);
    assert_eq!(jwks_kids(&tg), [a.kid(), b.kid()]);

    // [B]: A is refused, B admitted.
    let only_b = key_files_line(&[&b_path]);
    tg.rewrite_config(|c| {
        assert!(c.contains(&both), "{c}");
        c.replace(&both, &only_b)
    });
    tg.restart();
    let before = up.count();
    let r = get(&tg, &ta);
    assert_eq!(
        (r.status, r.error().as_str()),
        (401, "invalid_token"),
        "A's key is gone: {}",
        r.text()
    );
    assert_eq!(up.count(), before);
    assert_eq!(get(&tg, &tb).status, 200);
    assert_eq!(jwks_kids(&tg), [b.kid()]);
    assert_eq!(kid_of(&login_as(&tg, "alice").token), b.kid());
}

/// An HS256 secret signs and verifies, and is never published.
#[test]
fn hs256_secret_is_never_published() {
    const SECRET: &str = "hs256-test-secret-0123456789abcdef-0123456789";
    let up = Upstream::start();
    let tg = Tokengate::start(
        &Backend::Embedded,
        &up.url(),
        ROUTES,
        &format!("{LIMITS}\n[sessions]\nalgorithm = \"HS256\"\nkey = {SECRET:?}\n"),
    );
    seed(&tg);
    let key = SigningKey::from_secret(SECRET.as_bytes()).unwrap();
    let l = login_as(&tg, "alice");
    let (header, _) = decode(&l.token);
    assert_eq!(
        (header["alg"].as_str(), header["kid"].as_str()),
        (Some("HS256"), Some(key.kid()))
    );
    assert_eq!(
        tg.get("/apps/ka", &[("authorization", &l.token)]).status,
        200
    );
    let r = tg.get("/_auth/jwks.json", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"keys": []}), "no HS256 key is published");
    for secret in [
        SECRET.to_owned(),
        BASE64URL_NOPAD.encode(SECRET.as_bytes()),
        BASE64.encode(SECRET.as_bytes()),
    ] {
        assert!(!r.text().contains(&secret));
    }
    // Another secret under the same kid is refused; the right one (held by the test) works.
    let other = SigningKey::from_secret(b"another-secret-0123456789abcdef-0123456789")
        .unwrap()
        .with_kid(key.kid())
        .unwrap();
    let c = claims("alice", &l.sid, &json!({}));
    let r = tg.get(
        "/apps/ka",
        &[("authorization", &signer(&other).sign_claims(&c).unwrap())],
    );
    assert_eq!((r.status, r.error().as_str()), (401, "invalid_token"));
    assert_eq!(
        tg.get(
            "/apps/ka",
            &[("authorization", &signer(&key).sign_claims(&c).unwrap())]
        )
        .status,
        200
    );
    assert!(!tg.log().contains(SECRET), "the secret is never logged");
}
