//! `/_auth/check` (PRODUCT.md §12), asked the way nginx `auth_request`, Traefik ForwardAuth,
//! Caddy `forward_auth` and Envoy's HTTP `ext_authz` ask it, over real sockets, on both store
//! backends: the same routes, scope and errors as the proxy, the identity headers on a 200.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backend, RedisServer, Tokengate, http};
use serde_json::json;

const ROUTES: &str =
    "[[routes]]\npath = \"/db/{app}\"\n\n[[routes]]\npath = \"/public\"\nauth = \"none\"\n";

fn check(backend: &Backend) {
    let tg = Tokengate::start(backend, "echo", ROUTES, "");
    tg.admin("POST", "/v1/apps", Some(json!({"id": "bq1", "name": "B"})));
    tg.admin(
        "POST",
        "/v1/users",
        Some(
            json!({"id": "al", "email": "al@x.com", "name": "Al", "department": "Sales",
                    "apps": ["bq1"], "password": "a long enough password"}),
        ),
    );
    let (secret, _) = tg.user_token("al", &["bq1"]);
    let auth = format!("QB-USER-TOKEN {secret}");
    let ask = |path: &str, headers: &[(&str, &str)]| http(tg.port, "GET", path, headers, None);

    // nginx auth_request: the original in X-Original-URI / X-Original-Method.
    let r = ask(
        "/_auth/check",
        &[
            ("x-original-uri", "/db/bq1?a=API_DoQuery"),
            ("x-original-method", "GET"),
            ("authorization", &auth),
            ("x-auth-user-id", "forged"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // No body: nginx's auth_request keeps its connection to tokengate only then.
    assert_eq!(
        (r.header("content-length"), r.text().as_str()),
        (Some("0"), "")
    );
    assert_eq!(r.header("x-auth-user-id"), Some("al"));
    assert_eq!(r.header("x-auth-app-id"), Some("bq1"));
    assert_eq!(r.header("x-auth-department"), Some("Sales"));
    assert_eq!(r.header("x-auth-method"), Some("user_token"));
    // Every identity header is answered, empty where there is no value, so a gateway that
    // copies them overwrites what a client sent.
    assert_eq!(r.header("x-auth-tenant"), Some(""));
    assert_eq!(r.header("x-auth-user-type"), Some(""));

    // Traefik and Caddy pass the client's headers on: a client's own X-Original-* that
    // disagrees with the gateway's X-Forwarded-* decides nothing.
    let r = ask(
        "/_auth/check",
        &[
            ("x-forwarded-uri", "/db/zz9"),
            ("x-forwarded-method", "GET"),
            ("x-original-uri", "/db/bq1"),
            ("authorization", &auth),
        ],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = ask(
        "/_auth/check",
        &[
            ("x-forwarded-uri", "/db/bq1"),
            ("x-forwarded-method", "DELETE"),
            ("x-original-method", "GET"),
            ("authorization", &auth),
        ],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = ask(
        "/_auth/check/db/zz9",
        &[("x-original-uri", "/db/bq1"), ("authorization", &auth)],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    // An open route: every identity header, all empty.
    let r = ask("/_auth/check", &[("x-forwarded-uri", "/public")]);
    assert_eq!((r.status, r.header("x-auth-user-id")), (200, Some("")));
    // The same question about another app: the proxy's answer.
    let r = ask(
        "/_auth/check",
        &[("x-original-uri", "/db/zz9"), ("authorization", &auth)],
    );
    assert_eq!((r.status, r.error().as_str()), (403, "app_not_allowed"));
    assert!(r.header("x-auth-user-id").is_none());

    // Traefik / Caddy: X-Forwarded-Uri / X-Forwarded-Method; the credential in the original
    // query.
    let uri = format!("/db/bq1?usertoken={secret}");
    let r = ask(
        "/_auth/check",
        &[("x-forwarded-uri", &uri), ("x-forwarded-method", "POST")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-auth-user-id"), Some("al"));
    let r = ask(
        "/_auth/check",
        &[
            ("x-forwarded-uri", "/db/bq1"),
            ("x-forwarded-method", "GET"),
        ],
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.error(), "missing_credentials");
    assert!(r.header("www-authenticate").is_some());
    let r = ask(
        "/_auth/check",
        &[("x-forwarded-uri", "/nowhere"), ("authorization", &auth)],
    );
    assert_eq!((r.status, r.error().as_str()), (404, "no_route"));

    // A ticket in its cookie.
    let r = http(
        tg.port,
        "POST",
        "/_auth/authenticate",
        &[("content-type", "application/json")],
        Some(br#"{"username": "al", "password": "a long enough password"}"#),
    );
    let cookie = format!("TICKET={}", r.json()["ticket"].as_str().unwrap());
    let r = ask(
        "/_auth/check",
        &[("x-original-uri", "/db/bq1"), ("cookie", &cookie)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-auth-method"), Some("ticket"));

    // Envoy ext_authz: the original path under the prefix, the original method.
    let r = http(
        tg.port,
        "DELETE",
        "/_auth/check/db/bq1?a=API_DoQuery",
        &[("authorization", &auth)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-auth-user-id"), Some("al"));

    // Quickbase's XML API is refused in its own form.
    let r = ask(
        "/_auth/check",
        &[("x-original-uri", "/db/bq1?a=API_DoQuery")],
    );
    assert_eq!(r.status, 401);
    assert!(r.text().contains("<qdbapi>"), "{}", r.text());

    // What can't be decided here says so.
    let r = ask("/_auth/check", &[]);
    assert_eq!(
        (r.status, r.json()["field"].as_str()),
        (400, Some("x-original-uri"))
    );
    let r = ask(
        "/_auth/check",
        &[
            ("x-original-uri", "/db/bq1"),
            ("content-type", "application/xml"),
        ],
    );
    assert_eq!(r.status, 401);
    assert!(r.text().contains("XML body"), "{}", r.text());
    let r = ask(
        "/_auth/check",
        &[
            ("x-original-uri", "/db/bq1"),
            ("x-original-method", "G E T"),
        ],
    );
    assert_eq!(r.status, 400);
}

#[test]
fn check_on_the_embedded_store() {
    check(&Backend::Embedded);
}

#[test]
fn check_on_redis() {
    let redis = RedisServer::start();
    check(&Backend::Redis(redis.url()));
}
