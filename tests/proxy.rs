//! End to end over real sockets: the real binary in front of a real upstream, on the embedded
//! store and on a real redis-server. The allow/deny matrix of PRODUCT.md §4 for user tokens,
//! the routes of §3, what the upstream receives (§5), and that a denied request never reaches
//! the upstream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backend, RedisServer, Tokengate, Upstream, http};
use serde_json::json;

const ROUTES: &str = r#"
[[routes]]
path = "/ui"
app = "bq1"
ui = true

[[routes]]
path = "/sales"
app = "bq1"
departments = ["Sales"]

[[routes]]
path = "/admins"
app = "bq1"
user_types = ["admin"]

[[routes]]
path = "/tickets-only"
app = "bq1"
allow = ["ticket"]

[[routes]]
path = "/knack"
app_header = "X-Knack-Application-Id"

[[routes]]
path = "/public"
auth = "none"

[[routes]]
path = "/maybe"
app = "bq1"
auth = "optional"

[[routes]]
path = "/anyapp"

[[routes]]
path = "/raw"
app = "bq1"
forward_credentials = true

[[routes]]
path = "/db/{app}"
"#;

const LIMITS: &str = "[limits]\ntokens_per_user = 3\napps_per_token = 2\n";

struct Fixture {
    tg: Tokengate,
    up: Upstream,
    token: String,
    token_id: String,
}

fn setup(backend: &Backend) -> Fixture {
    let up = Upstream::start();
    let tg = Tokengate::start(backend, &up.url(), ROUTES, LIMITS);
    for app in ["bq1", "bq2"] {
        let r = tg.admin(
            "POST",
            "/v1/apps",
            Some(json!({"id": app, "name": format!("App {app}")})),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let r = tg.admin(
        "POST",
        "/v1/users",
        Some(json!({"id": "alice", "email": "alice@example.com", "name": "Alice",
                    "department": "Sales", "user_type": "member", "tenant": "acme", "apps": ["bq1", "bq2"]})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = tg.admin(
        "POST",
        "/v1/users/alice/tokens",
        Some(json!({"name": "ci", "apps": ["bq1"]})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let token = r.json()["token"].as_str().unwrap().to_owned();
    let token_id = r.json()["id"].as_str().unwrap().to_owned();
    assert!(token.starts_with("tgu_") && token.len() >= 4 + 52);
    Fixture {
        tg,
        up,
        token,
        token_id,
    }
}

fn qb(token: &str) -> String {
    format!("QB-USER-TOKEN {token}")
}

fn admits_and_forwards_identity(f: &Fixture) {
    let (tg, up) = (&f.tg, &f.up);
    let auth = qb(&f.token);
    let n = up.count();
    let r = tg.get(
        "/db/bq1/records?a=API_DoQuery",
        &[("authorization", &auth), ("cookie", "theme=dark")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "upstream ok");
    assert_eq!(up.count(), n + 1);
    let seen = up.last();
    assert_eq!(seen.target, "/db/bq1/records?a=API_DoQuery");
    assert_eq!(seen.header("x-auth-user-id"), Some("alice"));
    assert_eq!(seen.header("x-auth-user-email"), Some("alice@example.com"));
    assert_eq!(seen.header("x-auth-user-name"), Some("Alice"));
    assert_eq!(seen.header("x-auth-method"), Some("user_token"));
    assert_eq!(
        seen.header("x-auth-credential-id"),
        Some(f.token_id.as_str())
    );
    assert_eq!(seen.header("x-auth-app-id"), Some("bq1"));
    assert_eq!(seen.header("x-auth-department"), Some("Sales"));
    assert_eq!(seen.header("x-auth-user-type"), Some("member"));
    assert_eq!(seen.header("x-auth-tenant"), Some("acme"));
    assert_eq!(
        seen.header("x-auth-expires-at"),
        None,
        "the token never expires"
    );
    assert_eq!(
        seen.header("cookie"),
        Some("theme=dark"),
        "other cookies pass"
    );
    assert!(
        seen.header("authorization").is_none(),
        "the credential is removed"
    );
    assert!(seen.header("x-request-id").is_some_and(|id| !id.is_empty()));
    assert_eq!(
        r.header("x-request-id"),
        None,
        "the upstream's answer passes unchanged"
    );

    let r = tg.get(
        "/db/bq1",
        &[("authorization", &format!("Bearer {}", f.token))],
    );
    assert_eq!(r.status, 200, "Bearer tgu_: {}", r.text());

    let r = tg.get(
        &format!("/db/bq1?a=API_DoQuery&usertoken={}&b=2", f.token),
        &[],
    );
    assert_eq!(r.status, 200, "?usertoken=: {}", r.text());
    assert_eq!(
        up.last().target,
        "/db/bq1?a=API_DoQuery&b=2",
        "usertoken stripped, the rest kept"
    );

    let r = tg.get(
        &format!("/db/bq1?usertoken={}", f.token),
        &[("authorization", &auth)],
    );
    assert_eq!(r.status, 200, "the same token twice is not ambiguous");
    assert_eq!(up.last().target, "/db/bq1");

    // Forged identity is removed before identity is set.
    let r = tg.get(
        "/db/bq1",
        &[
            ("authorization", &auth),
            ("x-auth-user-id", "mallory"),
            ("X-Auth-User-Type", "admin"),
            ("x-auth-extra", "1"),
        ],
    );
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.header("x-auth-user-id"), Some("alice"));
    assert_eq!(seen.header("x-auth-user-type"), Some("member"));
    assert_eq!(seen.header("x-auth-extra"), None);
    assert_eq!(
        seen.headers
            .iter()
            .filter(|(k, _)| k == "x-auth-user-id")
            .count(),
        1
    );

    // A client's sane request id is kept; the upstream and the client see the same one.
    tg.get(
        "/db/bq1",
        &[("authorization", &auth), ("x-request-id", "trace-123")],
    );
    assert_eq!(up.last().header("x-request-id"), Some("trace-123"));
}

fn routes_apply_their_rules(f: &Fixture) {
    let (tg, up) = (&f.tg, &f.up);
    let auth = qb(&f.token);
    let r = tg.get("/sales/report", &[("authorization", &auth)]);
    assert_eq!(r.status, 200, "department Sales is allowed: {}", r.text());
    let r = tg.get(
        "/knack/views",
        &[("authorization", &auth), ("x-knack-application-id", "bq1")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().header("x-auth-app-id"), Some("bq1"));
    let r = tg.get("/anyapp/x", &[("authorization", &auth)]);
    assert_eq!(
        r.status,
        200,
        "a route without an app admits any valid token: {}",
        r.text()
    );
    assert_eq!(up.last().header("x-auth-app-id"), None);

    let r = tg.get("/public/page", &[("x-auth-user-id", "mallory")]);
    assert_eq!(r.status, 200, "auth = none");
    assert_eq!(
        up.last().header("x-auth-user-id"),
        None,
        "forged identity removed on open routes too"
    );
    let r = tg.get("/maybe", &[]);
    assert_eq!(r.status, 200, "optional, no credential");
    assert_eq!(up.last().header("x-auth-user-id"), None);
    let r = tg.get("/maybe", &[("authorization", &auth)]);
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header("x-auth-user-id"), Some("alice"));

    let r = tg.get("/raw", &[("authorization", &auth)]);
    assert_eq!(r.status, 200);
    assert_eq!(
        up.last().header("authorization"),
        Some(auth.as_str()),
        "forward_credentials keeps it"
    );
}

/// target, request headers, expected status, expected error code
type Case<'a> = (&'a str, Vec<(&'a str, String)>, u16, &'a str);

fn denials(f: &Fixture) {
    let (tg, up) = (&f.tg, &f.up);
    let auth = qb(&f.token);
    let before = up.count();
    let wrong = format!(
        "{}{}",
        &f.token[..f.token.len() - 2],
        if f.token.ends_with("ab") { "cd" } else { "ab" }
    );
    let other = format!("tgu_{}", "a".repeat(68));
    let cases: Vec<Case> = vec![
        ("/db/bq1", vec![], 401, "missing_credentials"),
        (
            "/db/bq1",
            vec![("authorization", "Basic dXNlcjpwYXNz".into())],
            401,
            "missing_credentials",
        ),
        (
            "/db/bq1",
            vec![("x-auth-user-id", "mallory".into())],
            401,
            "missing_credentials",
        ),
        (
            "/db/bq1",
            vec![("authorization", qb(&wrong))],
            401,
            "invalid_token",
        ),
        (
            "/db/bq1",
            vec![("authorization", "QB-USER-TOKEN garbage".into())],
            401,
            "invalid_token",
        ),
        (
            "/db/bq1",
            vec![("authorization", qb(&other))],
            401,
            "invalid_token",
        ),
        (
            "/db/bq1",
            vec![("authorization", format!("Bearer tgt_{}", "b".repeat(68)))],
            401,
            "invalid_token",
        ),
        (
            "/db/bq1",
            vec![("authorization", "Bearer aaa.bbb.ccc".into())],
            401,
            "invalid_token",
        ),
        (
            "/db/bq2",
            vec![("authorization", auth.clone())],
            403,
            "app_not_allowed",
        ),
        (
            "/db/nosuchapp",
            vec![("authorization", auth.clone())],
            403,
            "app_not_allowed",
        ),
        (
            "/knack/views",
            vec![("authorization", auth.clone())],
            403,
            "app_not_allowed",
        ),
        (
            "/ui/home",
            vec![("authorization", auth.clone())],
            403,
            "credential_not_allowed",
        ),
        (
            "/tickets-only",
            vec![("authorization", auth.clone())],
            403,
            "credential_not_allowed",
        ),
        (
            "/admins",
            vec![("authorization", auth.clone())],
            403,
            "forbidden",
        ),
        (
            "/maybe",
            vec![("authorization", qb(&wrong))],
            401,
            "invalid_token",
        ),
        (
            "/db/bq1?usertoken=tgu_other",
            vec![("authorization", auth.clone())],
            400,
            "ambiguous_credentials",
        ),
        (
            "/elsewhere",
            vec![("authorization", auth.clone())],
            404,
            "no_route",
        ),
    ];
    for (target, headers, status, code) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = tg.get(target, &headers);
        assert_eq!(
            (r.status, r.error().as_str()),
            (*status, *code),
            "{target} {headers:?}: {}",
            r.text()
        );
        assert!(
            r.json()["request_id"]
                .as_str()
                .is_some_and(|id| !id.is_empty()),
            "{target}: request_id"
        );
        assert!(r.json()["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.header("www-authenticate").is_some(),
            *status == 401,
            "{target}: WWW-Authenticate only on 401"
        );
        assert!(!r.text().contains(&f.token), "no secret in an error");
    }
    // A denied POST with a body: answered, and the upstream hears nothing.
    let r = http(
        tg.port,
        "POST",
        "/db/bq2",
        &[("authorization", &auth)],
        Some(b"<qdbapi/>"),
    );
    assert_eq!(r.status, 403);
    assert_eq!(up.count(), before, "no denied request reached the upstream");
}

fn lifecycle(f: &Fixture) {
    let (tg, up) = (&f.tg, &f.up);
    let auth = qb(&f.token);
    let path = format!("/v1/tokens/{}", f.token_id);

    let r = tg.admin("GET", &path, None);
    assert_eq!(r.status, 200);
    let v = r.json();
    assert!(
        v.get("token").is_none() && !r.text().contains(&f.token),
        "inspect never shows the secret"
    );
    assert_eq!(v["user_name"], "Alice");
    assert_eq!(v["email"], "alice@example.com");
    assert_eq!(v["tenant"], "acme");
    assert!(
        v["usage"]["curl"]
            .as_str()
            .unwrap()
            .contains("QB-USER-TOKEN")
    );

    let r = tg.admin("PATCH", &path, Some(json!({"active": false})));
    assert_eq!((r.status, r.json()["active"].clone()), (200, json!(false)));
    assert_eq!(
        tg.get("/db/bq1", &[("authorization", &auth)]).error(),
        "token_inactive"
    );
    tg.admin("PATCH", &path, Some(json!({"active": true})));
    assert_eq!(
        tg.get("/db/bq1", &[("authorization", &auth)]).status,
        200,
        "reactivated at once"
    );

    tg.admin("PATCH", &path, Some(json!({"apps": ["bq1", "bq2"]})));
    assert_eq!(
        tg.get("/db/bq2", &[("authorization", &auth)]).status,
        200,
        "newly assigned app"
    );
    tg.admin("PATCH", "/v1/users/alice", Some(json!({"apps": ["bq1"]})));
    assert_eq!(
        tg.get("/db/bq2", &[("authorization", &auth)]).error(),
        "app_not_allowed",
        "the owner lost the app"
    );
    tg.admin(
        "PATCH",
        "/v1/users/alice",
        Some(json!({"apps": ["bq1", "bq2"]})),
    );
    tg.admin("PATCH", &path, Some(json!({"apps": ["bq1"]})));
    assert_eq!(
        tg.get("/db/bq2", &[("authorization", &auth)]).error(),
        "app_not_allowed",
        "unassigned"
    );

    let r = tg.admin(
        "PATCH",
        "/v1/users/alice",
        Some(json!({"status": "disabled"})),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        tg.get("/db/bq1", &[("authorization", &auth)]).error(),
        "user_disabled"
    );
    tg.admin(
        "PATCH",
        "/v1/users/alice",
        Some(json!({"status": "active"})),
    );
    assert_eq!(tg.get("/db/bq1", &[("authorization", &auth)]).status, 200);

    let r = tg.admin(
        "PATCH",
        &path,
        Some(json!({"expires_at": "2099-01-01T00:00:00Z"})),
    );
    assert_eq!(r.status, 200);
    assert_eq!(tg.get("/db/bq1", &[("authorization", &auth)]).status, 200);
    assert_eq!(
        up.last().header("x-auth-expires-at"),
        Some("2099-01-01T00:00:00Z")
    );

    let r = tg.admin("GET", "/v1/tokens?user=alice&active=true", None);
    assert_eq!(r.json()["items"].as_array().unwrap().len(), 1);
    assert_eq!(r.json()["next_cursor"], json!(null));

    let r = tg.admin("DELETE", &path, None);
    assert_eq!(r.status, 204);
    assert_eq!(
        tg.get("/db/bq1", &[("authorization", &auth)]).error(),
        "invalid_token"
    );
    assert_eq!(tg.admin("GET", &path, None).status, 404);

    // Deleting a user deletes its tokens.
    let r = tg.admin(
        "POST",
        "/v1/users/alice/tokens",
        Some(json!({"name": "second", "apps": ["bq1"]})),
    );
    let second = r.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(
        tg.get("/db/bq1", &[("authorization", &qb(&second))]).status,
        200
    );
    assert_eq!(tg.admin("DELETE", "/v1/users/alice", None).status, 204);
    assert_eq!(
        tg.get("/db/bq1", &[("authorization", &qb(&second))])
            .error(),
        "invalid_token"
    );
    assert_eq!(
        tg.admin("GET", "/v1/tokens?user=alice", None).json()["items"],
        json!([])
    );

    assert!(
        !tg.log().contains(&f.token) && !tg.log().contains(&second),
        "no secret in the log"
    );
}

fn admin_input(f: &Fixture) {
    let tg = &f.tg;
    assert_eq!(tg.admin_raw("GET", "/v1/users", None, None).status, 401);
    let r = tg.admin_raw("GET", "/v1/users", Some("wrong-key-0123456789"), None);
    assert_eq!((r.status, r.error().as_str()), (401, "unauthorized"));
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(tg.admin_raw("GET", open, None, None).status, 200, "{open}");
    }
    let r = tg.admin_raw(
        "POST",
        "/v1/apps",
        Some(common::ADMIN_KEY),
        Some("{not json"),
    );
    assert_eq!((r.status, r.error().as_str()), (400, "invalid_request"));
    let r = tg.admin(
        "POST",
        "/v1/apps",
        Some(json!({"id": "x", "name": "X", "colour": "red"})),
    );
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (400, json!("colour")),
        "{}",
        r.text()
    );
    let r = tg.admin("POST", "/v1/apps", Some(json!({"id": "x"})));
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (400, json!("name")),
        "{}",
        r.text()
    );
    let r = tg.admin(
        "POST",
        "/v1/users",
        Some(json!({"email": "nope", "name": "N"})),
    );
    assert_eq!((r.status, r.json()["field"].clone()), (400, json!("email")));
    let r = tg.admin(
        "POST",
        "/v1/users",
        Some(json!({"email": "b@x", "name": "B", "apps": ["ghost"]})),
    );
    assert_eq!((r.status, r.json()["field"].clone()), (400, json!("apps")));
    let r = tg.admin(
        "POST",
        "/v1/apps",
        Some(json!({"id": "bq1", "name": "again"})),
    );
    assert_eq!(r.status, 409);
    let big = format!("{{\"id\": \"big\", \"name\": \"{}\"}}", "x".repeat(70_000));
    let r = tg.admin_raw("POST", "/v1/apps", Some(common::ADMIN_KEY), Some(&big));
    assert_eq!(r.status, 413);
    assert_eq!(
        tg.admin("GET", "/v1/apps/big", None).status,
        404,
        "nothing half-written"
    );
    assert_eq!(tg.admin("GET", "/v1/tokens/nosuch", None).status, 404);
    assert_eq!(
        tg.admin("PATCH", "/v1/tokens/nosuch", Some(json!({"active": false})))
            .status,
        404
    );
    assert_eq!(tg.admin("DELETE", "/v1/users/nosuch", None).status, 404);

    // Token rules: apps the owner may use, at most apps_per_token, at most tokens_per_user.
    tg.admin(
        "POST",
        "/v1/apps",
        Some(json!({"id": "bq3", "name": "Three"})),
    );
    let r = tg.admin(
        "POST",
        "/v1/users/alice/tokens",
        Some(json!({"name": "t", "apps": ["bq3"]})),
    );
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (400, json!("apps")),
        "alice may not use bq3"
    );
    tg.admin(
        "PATCH",
        "/v1/users/alice",
        Some(json!({"apps": ["bq1", "bq2", "bq3"]})),
    );
    let r = tg.admin(
        "POST",
        "/v1/users/alice/tokens",
        Some(json!({"name": "t", "apps": ["bq1", "bq2", "bq3"]})),
    );
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (400, json!("apps")),
        "over apps_per_token"
    );
    let r = tg.admin(
        "POST",
        "/v1/users/alice/tokens",
        Some(json!({"name": "t", "apps": ["bq1"], "expires_at": "2001-01-01T00:00:00Z"})),
    );
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (400, json!("expires_at"))
    );
    let mut made = Vec::new();
    loop {
        let r = tg.admin(
            "POST",
            "/v1/users/alice/tokens",
            Some(json!({"name": "t", "apps": ["bq1"]})),
        );
        if r.status != 201 {
            assert_eq!((r.status, r.error().as_str()), (409, "token_limit_reached"));
            break;
        }
        made.push(r.json()["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(made.len(), 2, "tokens_per_user = 3, one already held");
    let r = tg.admin("POST", "/v1/tokens/delete", Some(json!({"ids": made})));
    assert_eq!(r.json()["deleted"], 2);
}

fn decisions_are_counted(f: &Fixture) {
    let m = f.tg.admin_raw("GET", "/metrics", None, None).text();
    assert!(
        m.contains(
            r#"tokengate_auth_decisions_total{method="user_token",outcome="allow",reason="ok"}"#
        ),
        "{m}"
    );
    assert!(m.contains(r#"tokengate_auth_decisions_total{method="none",outcome="deny",reason="missing_credentials"}"#));
    assert!(
        !m.contains(&f.token) && !m.contains("alice") && !m.contains("/db/"),
        "no secret, user or path in a label"
    );
}

fn matrix(backend: &Backend) {
    let f = setup(backend);
    admits_and_forwards_identity(&f);
    routes_apply_their_rules(&f);
    denials(&f);
    admin_input(&f);
    decisions_are_counted(&f);
    lifecycle(&f);
}

#[test]
fn user_tokens_on_the_embedded_store() {
    matrix(&Backend::Embedded);
}

#[test]
fn user_tokens_on_redis() {
    let redis = RedisServer::start();
    matrix(&Backend::Redis(redis.url()));
}

#[test]
fn embedded_data_survives_a_restart() {
    let up = Upstream::start();
    let mut tg = Tokengate::start(
        &Backend::Embedded,
        &up.url(),
        "[[routes]]\npath = \"/db/{app}\"\n",
        "",
    );
    tg.admin("POST", "/v1/apps", Some(json!({"id": "bq1", "name": "B"})));
    tg.admin(
        "POST",
        "/v1/users",
        Some(json!({"id": "bob", "email": "bob@x.com", "name": "Bob", "apps": ["bq1"]})),
    );
    let token = tg
        .admin(
            "POST",
            "/v1/users/bob/tokens",
            Some(json!({"name": "t", "apps": ["bq1"]})),
        )
        .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    tg.restart();
    assert_eq!(tg.admin("GET", "/v1/users/bob", None).status, 200);
    let r = tg.get("/db/bq1", &[("authorization", &qb(&token))]);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn the_echo_upstream_shows_the_identity() {
    let tg = Tokengate::start(
        &Backend::Embedded,
        "echo",
        "[[routes]]\npath = \"/db/{app}\"\n",
        "",
    );
    tg.admin("POST", "/v1/apps", Some(json!({"id": "bq1", "name": "B"})));
    tg.admin(
        "POST",
        "/v1/users",
        Some(json!({"id": "eve", "email": "eve@x.com", "name": "Eve", "apps": ["bq1"]})),
    );
    let token = tg
        .admin(
            "POST",
            "/v1/users/eve/tokens",
            Some(json!({"name": "t", "apps": ["bq1"]})),
        )
        .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = tg.get(&format!("/db/bq1?x=1&usertoken={token}"), &[]);
    assert_eq!(r.status, 200);
    let echoed = r.json();
    assert_eq!(echoed["path"], "/db/bq1");
    assert_eq!(echoed["query"], "x=1");
    assert_eq!(echoed["headers"]["x-auth-user-id"], "eve");
    assert!(!r.text().contains(&token));
}

#[test]
fn an_unreachable_upstream_is_a_json_502_and_logs_no_secret() {
    let dead = format!("http://127.0.0.1:{}", common::free_port());
    let routes =
        "[[routes]]\npath = \"/open\"\nauth = \"none\"\n[[routes]]\npath = \"/db/{app}\"\n";
    let tg = Tokengate::start(&Backend::Embedded, &dead, routes, "");
    let r = tg.get("/open", &[]);
    assert_eq!(
        (r.status, r.error().as_str()),
        (502, "upstream_unavailable"),
        "{}",
        r.text()
    );
    tg.admin("POST", "/v1/apps", Some(json!({"id": "bq1", "name": "B"})));
    tg.admin(
        "POST",
        "/v1/users",
        Some(json!({"id": "al", "email": "al@x.com", "name": "Al", "apps": ["bq1"]})),
    );
    let token = tg
        .admin(
            "POST",
            "/v1/users/al/tokens",
            Some(json!({"name": "t", "apps": ["bq1"]})),
        )
        .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = tg.get(
        &format!("/db/bq1?a=x&usertoken={token}"),
        &[("authorization", &qb(&token))],
    );
    assert_eq!(r.status, 502);
    let log = tg.log();
    assert!(log.contains("upstream"), "the failure is logged: {log}");
    assert!(!log.contains(&token), "but never the credential: {log}");
}

#[test]
fn redis_down_is_auth_unavailable_never_a_guess() {
    let mut redis = RedisServer::start();
    let up = Upstream::start();
    let tg = Tokengate::start(
        &Backend::Redis(redis.url()),
        &up.url(),
        "[[routes]]\npath = \"/db/{app}\"\n",
        "",
    );
    tg.admin("POST", "/v1/apps", Some(json!({"id": "bq1", "name": "B"})));
    tg.admin(
        "POST",
        "/v1/users",
        Some(json!({"id": "al", "email": "al@x.com", "name": "Al", "apps": ["bq1"]})),
    );
    let mk = || {
        tg.admin(
            "POST",
            "/v1/users/al/tokens",
            Some(json!({"name": "t", "apps": ["bq1"]})),
        )
        .json()["token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (cached, uncached) = (mk(), mk());
    assert_eq!(
        tg.get("/db/bq1", &[("authorization", &qb(&cached))]).status,
        200
    );
    let seen = up.count();

    redis.kill();
    let r = tg.get("/db/bq1", &[("authorization", &qb(&uncached))]);
    assert_eq!(
        (r.status, r.error().as_str()),
        (503, "auth_unavailable"),
        "{}",
        r.text()
    );
    assert!(r.header("retry-after").is_some());
    assert_eq!(up.count(), seen, "nothing forwarded on a guess");
    assert_eq!(
        tg.get("/db/bq1", &[("authorization", &qb(&cached))]).status,
        200,
        "a cached decision still serves"
    );
    // Ready still: cached decisions serve for up to cache.stale_for, and every replica shares
    // this store, so failing readiness would take them all out of service at once.
    let r = tg.admin_raw("GET", "/readyz", None, None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("has not answered"), "{}", r.text());
    let metrics = tg.admin_raw("GET", "/metrics", None, None).text();
    assert!(
        metrics.lines().any(|l| l == "tokengate_store_up 0"),
        "the store itself is reported down"
    );
    let r = tg.admin("POST", "/v1/apps", Some(json!({"id": "bq2", "name": "C"})));
    assert_eq!(
        (r.status, r.error().as_str()),
        (503, "store_unavailable"),
        "{}",
        r.text()
    );
}

#[test]
fn without_stale_serving_a_store_outage_is_not_ready() {
    let mut redis = RedisServer::start();
    let tg = Tokengate::start(
        &Backend::Redis(redis.url()),
        "echo",
        "[[routes]]\npath = \"/db/{app}\"\n",
        "[cache]\nstale_for = \"0s\"\n",
    );
    redis.kill();
    let r = tg.admin_raw("GET", "/readyz", None, None);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("store not answering"), "{}", r.text());
}

#[test]
fn too_many_failed_credentials_from_one_client_is_429() {
    let up = Upstream::start();
    let tg = Tokengate::start(
        &Backend::Embedded,
        &up.url(),
        "[[routes]]\npath = \"/db/{app}\"\n",
        "[limits]\nfailures_per_minute = 3\n",
    );
    tg.admin("POST", "/v1/apps", Some(json!({"id": "bq1", "name": "B"})));
    tg.admin("POST", "/v1/users", Some(json!({"id": "al", "email": "al@x.com", "name": "Al", "apps": ["bq1"], "password": "a long password"})));
    let good = tg
        .admin(
            "POST",
            "/v1/users/al/tokens",
            Some(json!({"name": "t", "apps": ["bq1"]})),
        )
        .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let uncached = tg
        .admin(
            "POST",
            "/v1/users/al/tokens",
            Some(json!({"name": "u", "apps": ["bq1"]})),
        )
        .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        tg.get("/db/bq1", &[("authorization", &qb(&good))]).status,
        200
    );
    let bad = qb(&format!("tgu_{}", "a".repeat(68)));
    assert_eq!(
        tg.get("/db/bq1", &[]).error(),
        "missing_credentials",
        "no credential is no failed credential"
    );
    for _ in 0..3 {
        assert_eq!(
            tg.get("/db/bq1", &[("authorization", &bad)]).error(),
            "invalid_token"
        );
    }
    let r = tg.get("/db/bq1", &[("authorization", &bad)]);
    assert_eq!(
        (r.status, r.error().as_str()),
        (429, "too_many_failures"),
        "{}",
        r.text()
    );
    assert!(r.header("retry-after").is_some());
    let r = tg.get("/db/bq1", &[("authorization", &qb(&good))]);
    assert_eq!(
        r.status, 200,
        "a cached credential still passes: one guesser behind a shared address can't lock everyone out"
    );
    // One not cached yet is still looked up (a blocked client has a few lookups a minute
    // more; tests/replicas.rs counts the bound a flood meets).
    let r = tg.get("/db/bq1", &[("authorization", &qb(&uncached))]);
    assert_eq!(r.status, 200);
    let r = http(
        tg.port,
        "POST",
        "/_auth/authenticate",
        &[("content-type", "application/json")],
        Some(br#"{"username": "al", "password": "a long password"}"#),
    );
    assert_eq!(r.status, 429, "sign-in too: {}", r.text());
}

#[test]
fn forwarded_for_names_the_client_only_behind_a_trusted_proxy() {
    let up = Upstream::start();
    let mut tg = Tokengate::start(
        &Backend::Embedded,
        &up.url(),
        "[[routes]]\npath = \"/db/{app}\"\n",
        "[limits]\nfailures_per_minute = 2\n",
    );
    let bad = qb(&format!("tgu_{}", "a".repeat(68)));
    let from = |tg: &Tokengate, client: &str| {
        tg.get(
            "/db/bq1",
            &[("authorization", &bad), ("x-forwarded-for", client)],
        )
        .status
    };
    // Not trusted: the header is the client's own say, and every request is the peer's.
    assert_eq!(from(&tg, "203.0.113.1"), 401);
    assert_eq!(from(&tg, "203.0.113.2"), 401);
    assert_eq!(
        from(&tg, "203.0.113.3"),
        429,
        "one client, whatever it claims"
    );

    tg.rewrite_config(|c| {
        c.replace(
            "threads = 1\n",
            "threads = 1\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
        )
    });
    tg.restart();
    for _ in 0..2 {
        assert_eq!(from(&tg, "203.0.113.1"), 401);
    }
    assert_eq!(from(&tg, "203.0.113.1"), 429);
    assert_eq!(
        from(&tg, "203.0.113.2"),
        401,
        "another client behind the proxy"
    );
    // A client can't pose as another by writing the header itself: the trusted proxy
    // appends, and the rightmost untrusted hop is the client.
    assert_eq!(from(&tg, "203.0.113.2, 203.0.113.1"), 429);
}

#[test]
fn a_wrong_password_counts_as_a_failed_attempt() {
    let up = Upstream::start();
    let tg = Tokengate::start(
        &Backend::Embedded,
        &up.url(),
        "[[routes]]\npath = \"/db/{app}\"\n",
        "[limits]\nfailures_per_minute = 2\n",
    );
    tg.admin(
        "POST",
        "/v1/users",
        Some(json!({"id": "al", "email": "al@x.com", "name": "Al", "password": "a long password"})),
    );
    let sign_in = |password: &str| {
        let body = json!({"username": "al", "password": password}).to_string();
        http(
            tg.port,
            "POST",
            "/_auth/authenticate",
            &[("content-type", "application/json")],
            Some(body.as_bytes()),
        )
    };
    assert_eq!(sign_in("wrong one").status, 401);
    assert_eq!(sign_in("wrong two").status, 401);
    let r = sign_in("wrong three");
    assert_eq!(
        (r.status, r.error().as_str()),
        (429, "too_many_failures"),
        "{}",
        r.text()
    );
    assert_eq!(
        sign_in("a long password").status,
        429,
        "held off even with the right password"
    );
    let r = tg.get("/db/main?a=API_Authenticate&username=al&password=x", &[]);
    assert!(r.text().contains("<errcode>77</errcode>"), "{}", r.text());
}

#[test]
fn last_use_is_visible_to_the_admin_within_five_seconds_embedded() {
    last_use_is_visible_to_the_admin_within_five_seconds(&Backend::Embedded);
}

#[test]
fn last_use_is_visible_to_the_admin_within_five_seconds_redis() {
    let redis = RedisServer::start();
    last_use_is_visible_to_the_admin_within_five_seconds(&Backend::Redis(redis.url()));
}

fn last_use_is_visible_to_the_admin_within_five_seconds(backend: &Backend) {
    let up = Upstream::start();
    let tg = Tokengate::start(backend, &up.url(), "[[routes]]\npath = \"/db/{app}\"\n", "");
    tg.admin("POST", "/v1/apps", Some(json!({"id": "bq1", "name": "B"})));
    tg.admin("POST", "/v1/users", Some(json!({"id": "al", "email": "al@x.com", "name": "Al", "apps": ["bq1"], "password": "a long password"})));
    let r = tg.admin(
        "POST",
        "/v1/users/al/tokens",
        Some(json!({"name": "t", "apps": ["bq1"]})),
    );
    let (token, id) = (
        r.json()["token"].as_str().unwrap().to_owned(),
        r.json()["id"].as_str().unwrap().to_owned(),
    );
    assert_eq!(r.json()["last_used_at"], json!(null));
    let body = br#"{"username": "al", "password": "a long password"}"#;
    let ticket = http(
        tg.port,
        "POST",
        "/_auth/authenticate",
        &[("content-type", "application/json")],
        Some(body),
    )
    .json()["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    let session = http(
        tg.port,
        "POST",
        "/_auth/login",
        &[("content-type", "application/json")],
        Some(body),
    )
    .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let used_at = std::time::Instant::now();
    assert_eq!(
        tg.get("/db/bq1", &[("authorization", &qb(&token))]).status,
        200
    );
    assert_eq!(tg.get(&format!("/db/bq1?ticket={ticket}"), &[]).status, 200);
    let bearer = format!("Bearer {session}");
    assert_eq!(tg.get("/db/bq1", &[("authorization", &bearer)]).status, 200);
    let deadline = used_at + std::time::Duration::from_secs(5);
    loop {
        let token_seen =
            tg.admin("GET", &format!("/v1/tokens/{id}"), None).json()["last_used_at"].is_string();
        let sessions = tg.admin("GET", "/v1/sessions?user=al", None).json();
        let items = sessions["items"].as_array().unwrap();
        assert_eq!(items.len(), 2, "a ticket and a session: {sessions}");
        let all_seen = items
            .iter()
            .all(|s| s["last_active_at"].is_string() && s["last_active_at"] != s["issued_at"]);
        if token_seen && all_seen {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "last use not visible within 5 s: {sessions}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn ambiguous_paths_actions_and_apps_are_refused_and_open_routes_get_no_credentials() {
    let up = Upstream::start();
    let routes = "[[routes]]\npath = \"/public\"\nauth = \"none\"\n\n[[routes]]\npath = \"/db/main\"\nactions = [\"API_GrantedDBs\"]\n\n[[routes]]\npath = \"/db/main\"\nmethods = [\"POST\"]\nallow = [\"ticket\"]\n\n[[routes]]\npath = \"/knack\"\napp_header = \"X-Knack-Application-Id\"\n\n[[routes]]\npath = \"/db/{app}\"\n";
    let tg = Tokengate::start(&Backend::Embedded, &up.url(), routes, "");
    for app in ["bq1", "bq2"] {
        tg.admin("POST", "/v1/apps", Some(json!({"id": app, "name": app})));
    }
    tg.admin(
        "POST",
        "/v1/users",
        Some(json!({"id": "al", "email": "al@x.com", "name": "Al", "apps": ["bq1", "bq2"]})),
    );
    let token = tg
        .admin(
            "POST",
            "/v1/users/al/tokens",
            Some(json!({"name": "t", "apps": ["bq1"]})),
        )
        .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let auth = qb(&token);
    let before = up.count();
    for (target, headers) in [
        ("/public/../admin/secret", vec![]),
        ("/db/bq1/../bq2", vec![("authorization", auth.as_str())]),
        ("/db/bq1/%2e%2e/bq2", vec![("authorization", auth.as_str())]),
        ("/db/bq1%2Fx", vec![("authorization", auth.as_str())]),
        (
            "/db/main?a=API_CreateDatabase",
            vec![
                ("authorization", auth.as_str()),
                ("quickbase-action", "API_GrantedDBs"),
            ],
        ),
        (
            "/db/main?a=API_GrantedDBs&a=API_CreateDatabase",
            vec![("authorization", auth.as_str())],
        ),
        (
            "/knack/x",
            vec![
                ("authorization", auth.as_str()),
                ("x-knack-application-id", "bq1"),
                ("x-knack-application-id", "bq2"),
            ],
        ),
    ] {
        let r = http(tg.port, "POST", target, &headers, Some(b""));
        assert_eq!(r.status, 400, "{target}: {}", r.text());
        assert!(
            r.error() == "bad_request" || r.text().contains("<errcode>2</errcode>"),
            "{target}: {}",
            r.text()
        );
    }
    assert_eq!(up.count(), before, "none of them reached the upstream");
    // The same requests, unambiguous, pass where they should.
    let r = http(
        tg.port,
        "POST",
        "/db/main?a=API_GrantedDBs",
        &[
            ("authorization", &auth),
            ("quickbase-action", "api_granteddbs"),
        ],
        Some(b""),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = tg.get(
        "/knack/x",
        &[("authorization", &auth), ("x-knack-application-id", "bq1")],
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // An open route checks nothing, and forwards no credential either.
    let r = tg.get(
        &format!("/public/page?x=1&usertoken={token}"),
        &[("authorization", &auth), ("cookie", "TICKET=tgt_x; a=b")],
    );
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.target, "/public/page?x=1");
    assert!(seen.header("authorization").is_none());
    assert_eq!(seen.header("cookie"), Some("a=b"));
    let r = tg.get("/public/page", &[("authorization", "Basic dXNlcjpwYXNz")]);
    assert_eq!(r.status, 200);
    assert_eq!(
        up.last().header("authorization"),
        Some("Basic dXNlcjpwYXNz"),
        "not ours: left alone"
    );

    // Signing out takes a POST: a link or an image can't sign anyone out.
    assert_eq!(tg.get("/_auth/signout?ticket=tgt_x", &[]).status, 405);
}

#[test]
fn a_deleted_app_leaves_no_grant_behind_for_an_app_made_later_under_its_id() {
    let up = Upstream::start();
    let tg = Tokengate::start(
        &Backend::Embedded,
        &up.url(),
        "[[routes]]\npath = \"/db/{app}\"\n",
        "",
    );
    tg.admin("POST", "/v1/apps", Some(json!({"id": "bq1", "name": "B"})));
    tg.admin(
        "POST",
        "/v1/users",
        Some(json!({"id": "al", "email": "al@x.com", "name": "Al", "apps": ["bq1"]})),
    );
    let r = tg.admin(
        "POST",
        "/v1/users/al/tokens",
        Some(json!({"name": "t", "apps": ["bq1"]})),
    );
    let (token, id) = (
        r.json()["token"].as_str().unwrap().to_owned(),
        r.json()["id"].as_str().unwrap().to_owned(),
    );
    assert_eq!(
        tg.get("/db/bq1", &[("authorization", &qb(&token))]).status,
        200
    );
    assert_eq!(tg.admin("DELETE", "/v1/apps/bq1", None).status, 204);
    assert_eq!(
        tg.get("/db/bq1", &[("authorization", &qb(&token))]).error(),
        "app_not_allowed"
    );
    assert_eq!(
        tg.admin("GET", "/v1/users/al", None).json()["apps"],
        json!([])
    );
    assert_eq!(
        tg.admin("GET", &format!("/v1/tokens/{id}"), None).json()["apps"],
        json!([])
    );
    tg.admin(
        "POST",
        "/v1/apps",
        Some(json!({"id": "bq1", "name": "Someone else's"})),
    );
    assert_eq!(
        tg.get("/db/bq1", &[("authorization", &qb(&token))]).error(),
        "app_not_allowed",
        "no old grant revived"
    );
}

#[test]
fn the_upstream_can_check_the_identity_with_the_assertion() {
    let up = Upstream::start();
    let tg = Tokengate::start(
        &Backend::Embedded,
        &up.url(),
        "[[routes]]\npath = \"/db/{app}\"\n",
        "[headers]\nassertion = true\n",
    );
    tg.admin("POST", "/v1/apps", Some(json!({"id": "bq1", "name": "B"})));
    tg.admin("POST", "/v1/users", Some(json!({"id": "al", "email": "al@x.com", "name": "Al", "department": "Ops", "apps": ["bq1"]})));
    let r = tg.admin(
        "POST",
        "/v1/users/al/tokens",
        Some(json!({"name": "t", "apps": ["bq1"]})),
    );
    let (token, id) = (
        r.json()["token"].as_str().unwrap().to_owned(),
        r.json()["id"].as_str().unwrap().to_owned(),
    );
    let r = tg.get(
        "/db/bq1",
        &[
            ("authorization", &qb(&token)),
            ("x-auth-assertion", "forged"),
        ],
    );
    assert_eq!(r.status, 200);
    let assertion = up.last().header("x-auth-assertion").unwrap().to_owned();
    assert_ne!(assertion, "forged");
    let jwks = tg.get("/_auth/jwks.json", &[]).json();
    let keys = tokengate::jwt::KeySet::from_jwks(&jwks).unwrap().keys;
    let rules = tokengate::jwt::VerifyRules {
        issuer: "tokengate",
        audience: "tokengate-assertion",
        leeway_secs: 0,
        now: chrono::Utc::now().timestamp(),
    };
    let claims: serde_json::Value = keys.verify_claims(&assertion, &rules).unwrap();
    assert_eq!(claims["sub"], "al");
    assert_eq!(claims["method"], "user_token");
    assert_eq!(claims["credential_id"], id.as_str());
    assert_eq!(claims["app_id"], "bq1");
    assert_eq!(claims["department"], "Ops");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        60,
        "at most 60 s"
    );
    assert!(!assertion.contains(&token));
    let r = tg.get(
        "/db/bq1",
        &[("authorization", &format!("Bearer {assertion}"))],
    );
    assert_eq!(r.status, 401, "an assertion is not a session: {}", r.text());
}

#[test]
fn each_request_is_one_access_log_line_with_no_secret() {
    let up = Upstream::start();
    let tg = Tokengate::start(
        &Backend::Embedded,
        &up.url(),
        "[[routes]]\npath = \"/db/{app}\"\n",
        "",
    );
    tg.admin("POST", "/v1/apps", Some(json!({"id": "bq1", "name": "B"})));
    tg.admin(
        "POST",
        "/v1/users",
        Some(json!({"id": "al", "email": "al@x.com", "name": "Al", "apps": ["bq1"]})),
    );
    let token = tg
        .admin(
            "POST",
            "/v1/users/al/tokens",
            Some(json!({"name": "t", "apps": ["bq1"]})),
        )
        .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let ok = tg.get(
        &format!("/db/bq1?usertoken={token}"),
        &[("x-request-id", "req-ok")],
    );
    assert_eq!(ok.status, 200);
    let bad = format!("tgu_{}", "b".repeat(68));
    tg.get(
        "/db/bq1",
        &[("authorization", &qb(&bad)), ("x-request-id", "req-bad")],
    );
    // The access line is written once the answer has gone out: wait for it, briefly.
    let line = |id: &str| -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let found = tg
                .log()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["target"] == "access" && v["fields"]["request_id"] == id);
            if let Some(v) = found {
                return v;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no access line for {id}:\n{}",
                tg.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    let allowed = line("req-ok");
    assert_eq!(allowed["fields"]["decision"], "allow");
    assert_eq!(allowed["fields"]["route"], "/db/{app}");
    assert_eq!(allowed["fields"]["app"], "bq1");
    assert_eq!(allowed["fields"]["credential"], "user_token");
    assert_eq!(allowed["fields"]["status"], 200);
    assert!(allowed["fields"]["latency_us"].as_u64().is_some());
    let denied = line("req-bad");
    assert_eq!(
        (
            denied["fields"]["decision"].as_str(),
            denied["fields"]["reason"].as_str()
        ),
        (Some("deny"), Some("invalid_token"))
    );
    assert_eq!(denied["fields"]["status"], 401);
    let log = tg.log();
    assert!(
        !log.contains(&token) && !log.contains(&bad),
        "no credential in the log"
    );
}

#[test]
fn tenants_keep_to_themselves_embedded() {
    tenants_keep_to_themselves(&Backend::Embedded);
}

#[test]
fn tenants_keep_to_themselves_redis() {
    let redis = RedisServer::start();
    tenants_keep_to_themselves(&Backend::Redis(redis.url()));
}

fn tenants_keep_to_themselves(backend: &Backend) {
    let up = Upstream::start();
    let tg = Tokengate::start(backend, &up.url(), "[[routes]]\npath = \"/db/{app}\"\n", "");
    tg.admin(
        "POST",
        "/v1/apps",
        Some(json!({"id": "a1", "name": "A", "tenant": "acme"})),
    );
    tg.admin(
        "POST",
        "/v1/apps",
        Some(json!({"id": "g1", "name": "G", "tenant": "globex"})),
    );
    let r = tg.admin("POST", "/v1/users", Some(json!({"id": "al", "email": "al@x.com", "name": "Al", "tenant": "acme", "apps": ["a1", "g1"]})));
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (400, json!("apps")),
        "another tenant's app: {}",
        r.text()
    );
    let r = tg.admin("POST", "/v1/users", Some(json!({"id": "al", "email": "al@x.com", "name": "Al", "tenant": "acme", "apps": ["a1"]})));
    assert_eq!(r.status, 201);
    let r = tg.admin("PATCH", "/v1/users/al", Some(json!({"apps": ["a1", "g1"]})));
    assert_eq!((r.status, r.json()["field"].clone()), (400, json!("apps")));
    let r = tg.admin("PATCH", "/v1/users/al", Some(json!({"tenant": "globex"})));
    assert_eq!(
        r.status,
        400,
        "moving tenant with the old tenant's apps: {}",
        r.text()
    );
    let r = tg.admin(
        "POST",
        "/v1/users/al/tokens",
        Some(json!({"name": "t", "apps": ["a1"]})),
    );
    assert_eq!(r.json()["tenant"], "acme");
    let token = r.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(
        tg.get("/db/a1", &[("authorization", &qb(&token))]).status,
        200
    );
    assert_eq!(up.last().header("x-auth-tenant"), Some("acme"));
    // An app moved to another tenant is out of reach at once.
    tg.admin("PATCH", "/v1/apps/a1", Some(json!({"tenant": "globex"})));
    assert_eq!(
        tg.get("/db/a1", &[("authorization", &qb(&token))]).error(),
        "app_not_allowed"
    );
}

#[test]
fn a_narrower_token_replaces_its_owners_department_and_user_type_embedded() {
    a_narrower_token_replaces_its_owners_department_and_user_type(&Backend::Embedded);
}

#[test]
fn a_narrower_token_replaces_its_owners_department_and_user_type_redis() {
    let redis = RedisServer::start();
    a_narrower_token_replaces_its_owners_department_and_user_type(&Backend::Redis(redis.url()));
}

fn a_narrower_token_replaces_its_owners_department_and_user_type(backend: &Backend) {
    let up = Upstream::start();
    let routes = "[[routes]]\npath = \"/sales\"\napp = \"bq1\"\ndepartments = [\"Sales\"]\n\n[[routes]]\npath = \"/admins\"\napp = \"bq1\"\nuser_types = [\"admin\"]\n\n[[routes]]\npath = \"/db/{app}\"\n";
    let tg = Tokengate::start(backend, &up.url(), routes, "");
    tg.admin("POST", "/v1/apps", Some(json!({"id": "bq1", "name": "B"})));
    tg.admin("POST", "/v1/users", Some(json!({"id": "al", "email": "al@x.com", "name": "Al", "department": "Sales", "user_type": "admin", "apps": ["bq1"]})));
    let full = tg
        .admin(
            "POST",
            "/v1/users/al/tokens",
            Some(json!({"name": "full", "apps": ["bq1"]})),
        )
        .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = tg.admin("POST", "/v1/users/al/tokens", Some(json!({"name": "narrow", "apps": ["bq1"], "department": "Support", "user_type": "member"})));
    assert_eq!(
        (
            r.json()["department"].as_str(),
            r.json()["user_type"].as_str()
        ),
        (Some("Support"), Some("member"))
    );
    let narrow = r.json()["token"].as_str().unwrap().to_owned();
    for path in ["/sales", "/admins"] {
        assert_eq!(
            tg.get(path, &[("authorization", &qb(&full))]).status,
            200,
            "{path}, the owner's own"
        );
        assert_eq!(
            tg.get(path, &[("authorization", &qb(&narrow))]).error(),
            "forbidden",
            "{path}, narrowed"
        );
    }
    assert_eq!(
        tg.get("/db/bq1", &[("authorization", &qb(&narrow))]).status,
        200
    );
    let seen = up.last();
    assert_eq!(
        (
            seen.header("x-auth-department"),
            seen.header("x-auth-user-type")
        ),
        (Some("Support"), Some("member"))
    );
}
