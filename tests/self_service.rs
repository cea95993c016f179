//! Self-service user tokens (PRODUCT.md §6): a user signed in with a ticket or a session
//! manages their own user tokens at `/_auth/tokens`, over real sockets, on both store backends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backend, RedisServer, Tokengate, Upstream, http};
use serde_json::{Value, json};

const PASSWORD: &str = "correct horse battery staple";
const ROUTES: &str = "[[routes]]\npath = \"/db/{app}\"\n";

fn setup(backend: &Backend) -> (Tokengate, Upstream) {
    let up = Upstream::start();
    let tg = Tokengate::start(
        backend,
        &up.url(),
        ROUTES,
        "[limits]\ntokens_per_user = 3\n",
    );
    for app in ["bq1", "bq2", "other"] {
        let r = tg.admin("POST", "/v1/apps", Some(json!({"id": app, "name": app})));
        assert_eq!(r.status, 201, "{}", r.text());
    }
    for (id, apps) in [("ann", json!(["bq1", "bq2"])), ("bob", json!(["other"]))] {
        let r = tg.admin(
            "POST",
            "/v1/users",
            Some(
                json!({"id": id, "email": format!("{id}@example.com"), "name": id,
                        "department": "Sales", "user_type": "member",
                        "apps": apps, "password": PASSWORD}),
            ),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    (tg, up)
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

/// A ticket for `user`, as the `Authorization` header carries it.
fn ticket(tg: &Tokengate, user: &str) -> String {
    let r = post_json(
        tg,
        "/_auth/authenticate",
        &json!({"username": user, "password": PASSWORD}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    format!("Bearer {}", r.json()["ticket"].as_str().unwrap())
}

/// A session JWT for `user`, as the `Authorization` header carries it.
fn session(tg: &Tokengate, user: &str) -> String {
    let r = post_json(
        tg,
        "/_auth/login",
        &json!({"username": user, "password": PASSWORD}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    format!("Bearer {}", r.json()["token"].as_str().unwrap())
}

/// One self-service call as the holder of `auth`.
fn call(
    tg: &Tokengate,
    auth: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> common::Response {
    let body = body.map(Value::to_string);
    let mut headers = vec![("content-type", "application/json")];
    if !auth.is_empty() {
        headers.push(("authorization", auth));
    }
    http(
        tg.port,
        method,
        path,
        &headers,
        body.as_deref().map(str::as_bytes),
    )
}

fn ids(r: &common::Response) -> Vec<String> {
    r.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect()
}

fn proxy(tg: &Tokengate, app: &str, secret: &str) -> u16 {
    let auth = format!("QB-USER-TOKEN {secret}");
    tg.get(&format!("/db/{app}"), &[("authorization", &auth)])
        .status
}

fn self_service(backend: &Backend) {
    let (tg, up) = setup(backend);
    let ann = ticket(&tg, "ann@example.com");
    let bob = ticket(&tg, "bob");

    // Bob's token, made by the administrator, is not Ann's to see or touch.
    let r = tg.admin(
        "POST",
        "/v1/users/bob/tokens",
        Some(json!({"name": "bob's", "apps": ["other"]})),
    );
    let bobs = r.json()["id"].as_str().unwrap().to_owned();

    // Create: the secret once, the owner fixed to the caller whatever the body says.
    let r = call(
        &tg,
        &ann,
        "POST",
        "/_auth/tokens",
        Some(&json!({"name": "reports", "apps": ["bq1"], "description": "nightly"})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (v["user_id"].as_str(), v["apps"].clone()),
        (Some("ann"), json!(["bq1"]))
    );
    let secret = v["token"].as_str().unwrap().to_owned();
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(proxy(&tg, "bq1", &secret), 200);
    assert_eq!(up.last().header("x-auth-user-id"), Some("ann"));
    let r = call(
        &tg,
        &ann,
        "POST",
        "/_auth/tokens",
        Some(&json!({"name": "x", "apps": ["bq1"], "user_id": "bob"})),
    );
    assert_eq!(r.status, 400, "an unknown field: {}", r.text());

    // Only apps one may use; no department or user type but one's own.
    let r = call(
        &tg,
        &ann,
        "POST",
        "/_auth/tokens",
        Some(&json!({"name": "x", "apps": ["other"]})),
    );
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (400, json!("apps")),
        "{}",
        r.text()
    );
    assert!(r.json()["request_id"].is_string(), "{}", r.text());
    for (field, value) in [("user_type", "admin"), ("department", "Finance")] {
        let mut body = json!({"name": "x", "apps": ["bq1"]});
        body[field] = json!(value);
        let r = call(&tg, &ann, "POST", "/_auth/tokens", Some(&body));
        assert_eq!(
            (r.status, r.json()["field"].clone()),
            (400, json!(field)),
            "{}",
            r.text()
        );
    }
    let r = call(
        &tg,
        &ann,
        "POST",
        "/_auth/tokens",
        Some(&json!({"name": "same", "apps": ["bq2"], "department": "Sales"})),
    );
    assert_eq!(r.status, 201, "one's own department: {}", r.text());
    let second = r.json()["id"].as_str().unwrap().to_owned();

    // List: one's own, and nobody else's.
    let r = call(&tg, &ann, "GET", "/_auth/tokens", None);
    assert_eq!(r.status, 200, "{}", r.text());
    let mut mine = ids(&r);
    mine.sort();
    let mut expected = vec![id.clone(), second.clone()];
    expected.sort();
    assert_eq!(mine, expected);
    assert!(!r.text().contains(&secret), "a list never shows a secret");
    let r = call(&tg, &ann, "GET", "/_auth/tokens?limit=1", None);
    assert_eq!(ids(&r).len(), 1);
    assert!(r.json()["next_cursor"].is_string(), "{}", r.text());
    let r = call(&tg, &bob, "GET", "/_auth/tokens", None);
    assert_eq!(ids(&r), vec![bobs.clone()]);

    // Inspect and change one's own; another's is as unknown as a missing one.
    let path = format!("/_auth/tokens/{id}");
    let r = call(&tg, &ann, "GET", &path, None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["usage"].is_object(), "{}", r.text());
    let r = call(&tg, &ann, "PATCH", &path, Some(&json!({"active": false})));
    assert_eq!(
        (r.status, r.json()["active"].clone()),
        (200, json!(false)),
        "{}",
        r.text()
    );
    assert_eq!(proxy(&tg, "bq1", &secret), 401);
    let r = call(
        &tg,
        &ann,
        "PATCH",
        &path,
        Some(&json!({"active": true, "apps": ["other"]})),
    );
    assert_eq!((r.status, r.json()["field"].clone()), (400, json!("apps")));
    let r = call(&tg, &ann, "PATCH", &path, Some(&json!({"active": true})));
    assert_eq!(r.status, 200);
    assert_eq!(proxy(&tg, "bq1", &secret), 200);

    // Deactivated by an administrator (found compromised, say): its owner can't undo that.
    let admin_path = format!("/v1/tokens/{id}");
    let r = tg.admin("PATCH", &admin_path, Some(json!({"active": false})));
    assert_eq!(
        r.json()["deactivated_by_admin"],
        json!(true),
        "{}",
        r.text()
    );
    let r = call(&tg, &ann, "PATCH", &path, Some(&json!({"active": true})));
    assert_eq!(
        (r.status, r.error().as_str()),
        (403, "forbidden"),
        "{}",
        r.text()
    );
    assert_eq!(proxy(&tg, "bq1", &secret), 401, "still refused");
    let r = call(&tg, &ann, "GET", &path, None);
    assert_eq!(
        (
            r.json()["active"].clone(),
            r.json()["deactivated_by_admin"].clone()
        ),
        (json!(false), json!(true))
    );
    // Her other changes still go through; an administrator lifts the hold.
    let r = call(&tg, &ann, "PATCH", &path, Some(&json!({"name": "renamed"})));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = tg.admin("PATCH", &admin_path, Some(json!({"active": true})));
    assert_eq!(
        r.json()["deactivated_by_admin"],
        json!(false),
        "{}",
        r.text()
    );
    assert_eq!(proxy(&tg, "bq1", &secret), 200);
    let r = call(&tg, &ann, "PATCH", &path, Some(&json!({"active": false})));
    assert_eq!(r.status, 200);
    let r = call(&tg, &ann, "PATCH", &path, Some(&json!({"active": true})));
    assert_eq!(r.status, 200, "her own pause is hers to lift");

    // An expiry: she may set one and bring it closer, never lift it or push it back.
    let (later, sooner) = ("2099-01-01T00:00:00Z", "2098-01-01T00:00:00Z");
    let expires = |r: &common::Response| r.json()["expires_at"].clone();
    let r = call(
        &tg,
        &ann,
        "PATCH",
        &path,
        Some(&json!({"expires_at": later})),
    );
    assert_eq!((r.status, expires(&r)), (200, json!(later)), "{}", r.text());
    let r = call(
        &tg,
        &ann,
        "PATCH",
        &path,
        Some(&json!({"expires_at": sooner})),
    );
    assert_eq!(
        (r.status, expires(&r)),
        (200, json!(sooner)),
        "{}",
        r.text()
    );
    for lifted in [json!(null), json!(later)] {
        let r = call(
            &tg,
            &ann,
            "PATCH",
            &path,
            Some(&json!({"expires_at": lifted})),
        );
        assert_eq!(
            (r.status, r.error().as_str()),
            (403, "forbidden"),
            "{lifted}"
        );
    }
    let r = tg.admin("PATCH", &admin_path, Some(json!({"expires_at": null})));
    assert_eq!(
        (r.status, expires(&r)),
        (200, json!(null)),
        "an administrator may"
    );
    let theirs = format!("/_auth/tokens/{bobs}");
    for (method, body) in [
        ("GET", None),
        ("PATCH", Some(json!({"active": false}))),
        ("DELETE", None),
    ] {
        let r = call(&tg, &ann, method, &theirs, body.as_ref());
        assert_eq!(
            (r.status, r.error().as_str()),
            (404, "not_found"),
            "{method}"
        );
    }
    let r = tg.admin("GET", &format!("/v1/tokens/{bobs}"), None);
    assert_eq!(r.json()["active"], json!(true), "Bob's token untouched");

    // A session works as well as a ticket.
    let ann_session = session(&tg, "ann");
    let r = call(&tg, &ann_session, "GET", "/_auth/tokens", None);
    assert_eq!((r.status, ids(&r).len()), (200, 2), "{}", r.text());

    // A session opened for one app manages tokens for that app only.
    let r = post_json(
        &tg,
        "/_auth/login",
        &json!({"username": "ann", "password": PASSWORD, "app": "bq1"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let bound = format!("Bearer {}", r.json()["token"].as_str().unwrap());
    let r = call(
        &tg,
        &bound,
        "POST",
        "/_auth/tokens",
        Some(&json!({"name": "wider", "apps": ["bq1", "bq2"]})),
    );
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (400, json!("apps")),
        "{}",
        r.text()
    );
    let r = call(&tg, &bound, "PATCH", &path, Some(&json!({"apps": ["bq2"]})));
    assert_eq!(r.status, 400, "{}", r.text());

    // The limit holds here too.
    let r = call(
        &tg,
        &ann_session,
        "POST",
        "/_auth/tokens",
        Some(&json!({"name": "third", "apps": ["bq1"]})),
    );
    assert_eq!(r.status, 201);
    let r = call(
        &tg,
        &ann_session,
        "POST",
        "/_auth/tokens",
        Some(&json!({"name": "fourth", "apps": ["bq1"]})),
    );
    assert_eq!((r.status, r.error().as_str()), (409, "token_limit_reached"));

    // A user token can't manage tokens, not even its own; no credential is 401.
    let r = call(
        &tg,
        &format!("QB-USER-TOKEN {secret}"),
        "GET",
        "/_auth/tokens",
        None,
    );
    assert_eq!(
        (r.status, r.error().as_str()),
        (403, "credential_not_allowed")
    );
    let r = call(
        &tg,
        &format!("QB-USER-TOKEN {secret}"),
        "DELETE",
        &path,
        None,
    );
    assert_eq!(r.status, 403);
    let r = call(&tg, "", "GET", "/_auth/tokens", None);
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some());

    // Bad input: a clear error, nothing written.
    let r = http(
        tg.port,
        "POST",
        "/_auth/tokens",
        &[
            ("authorization", &ann),
            ("content-type", "application/json"),
        ],
        Some(b"{not json"),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let r = http(
        tg.port,
        "POST",
        "/_auth/tokens",
        &[("authorization", &ann), ("content-type", "text/plain")],
        Some(br#"{"name": "x", "apps": ["bq1"]}"#),
    );
    assert_eq!(r.status, 415, "a write from a form: {}", r.text());
    let r = call(&tg, &ann, "PUT", "/_auth/tokens", None);
    assert_eq!(r.status, 405);
    let r = call(&tg, &ann, "GET", "/_auth/tokens/a/b", None);
    assert_eq!(r.status, 404);

    // Delete one's own: gone through the proxy at once.
    let r = call(&tg, &ann, "DELETE", &path, None);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(proxy(&tg, "bq1", &secret), 401);
    let r = call(&tg, &ann, "GET", &path, None);
    assert_eq!(r.status, 404);

    // Signed out: the ticket manages nothing any more.
    let r = http(
        tg.port,
        "POST",
        "/_auth/signout",
        &[("authorization", &ann)],
        Some(b""),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(&tg, &ann, "GET", "/_auth/tokens", None);
    assert_eq!(r.status, 401);
}

#[test]
fn self_service_on_the_embedded_store() {
    self_service(&Backend::Embedded);
}

#[test]
fn self_service_on_redis() {
    let redis = RedisServer::start();
    self_service(&Backend::Redis(redis.url()));
}
