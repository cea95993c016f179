//! Tickets, application tokens and the Quickbase XML API, end to end over real sockets, on the
//! embedded store and on a real redis-server (PRODUCT.md §1-4, §6, §11; seeds 000-002).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Backend, RedisServer, Tokengate, Upstream, http};
use serde_json::json;

const PASSWORD: &str = "correct horse battery";

fn routes() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/examples/quickbase.toml"
    ))
    .unwrap()
    .split("[[routes]]")
    .skip(1)
    .map(|r| format!("[[routes]]{r}"))
    .collect::<Vec<_>>()
    .join("\n")
        + "\n[[routes]]\npath = \"/ui\"\napp = \"bq1\"\nui = true\n"
}

struct Fixture {
    tg: Tokengate,
    up: Upstream,
}

fn setup(backend: &Backend) -> Fixture {
    let up = Upstream::start();
    let extra = "[limits]\napp_tokens_per_app = 2\nxml_body_bytes = 4096\n[tickets]\ndefault_hours = 12\nmax_hours = 48\n";
    let tg = Tokengate::start(
        backend,
        &up.url(),
        &routes().replace(
            "[[routes]]\npath = \"/ui\"",
            "[[routes]]\npath = \"/app-ui\"",
        ),
        extra,
    );
    for (id, require) in [("bq1", false), ("bq2", true)] {
        let r = tg.admin(
            "POST",
            "/v1/apps",
            Some(json!({"id": id, "name": id, "require_app_token": require})),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let r = tg.admin(
        "POST",
        "/v1/users",
        Some(json!({"id": "alice", "email": "alice@example.com", "name": "Alice", "department": "Ops",
                    "apps": ["bq1", "bq2"], "password": PASSWORD})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(
        !r.text().contains("argon2") && r.json().get("password").is_none(),
        "no hash in the answer"
    );
    Fixture { tg, up }
}

fn post_json(tg: &Tokengate, path: &str, body: serde_json::Value) -> common::Response {
    http(
        tg.port,
        "POST",
        path,
        &[("content-type", "application/json")],
        Some(body.to_string().as_bytes()),
    )
}

fn sign_in(tg: &Tokengate) -> String {
    let r = post_json(
        tg,
        "/_auth/authenticate",
        json!({"username": "alice@example.com", "password": PASSWORD}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["ticket"].as_str().unwrap().to_owned()
}

fn app_token(tg: &Tokengate, app: &str) -> (String, String) {
    let r = tg.admin(
        "POST",
        &format!("/v1/apps/{app}/app-tokens"),
        Some(json!({"name": "web"})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let token = r.json()["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("tga_"));
    (token, r.json()["id"].as_str().unwrap().to_owned())
}

fn authenticate(f: &Fixture) {
    let tg = &f.tg;
    // JSON, by email; the cookie carries the same ticket.
    let r = post_json(
        tg,
        "/_auth/authenticate",
        json!({"username": "alice@example.com", "password": PASSWORD, "hours": 2}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let ticket = v["ticket"].as_str().unwrap();
    assert!(ticket.starts_with("tgt_"));
    assert_eq!(v["user_id"], "alice");
    let expires: chrono::DateTime<chrono::Utc> = v["expires_at"].as_str().unwrap().parse().unwrap();
    let hours = (expires - chrono::Utc::now()).num_minutes();
    assert!((115..=120).contains(&hours), "2 hours, got {hours} minutes");
    let cookie = r.header("set-cookie").unwrap();
    assert!(cookie.starts_with(&format!("TICKET={ticket};")), "{cookie}");
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Max-Age=7200"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    // A form, by id, default hours (12).
    let r = http(
        tg.port,
        "POST",
        "/_auth/authenticate",
        &[("content-type", "application/x-www-form-urlencoded")],
        Some(format!("username=alice&password={}", PASSWORD.replace(' ', "+")).as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=43200"));

    for (body, field) in [
        (
            json!({"username": "alice", "password": PASSWORD, "hours": 0}),
            "hours",
        ),
        (
            json!({"username": "alice", "password": PASSWORD, "hours": 49}),
            "hours",
        ),
        (
            json!({"username": "alice", "password": PASSWORD, "hours": "soon"}),
            "hours",
        ),
        (json!({"password": PASSWORD}), "username"),
        (json!({"username": "alice"}), "password"),
    ] {
        let r = post_json(tg, "/_auth/authenticate", body.clone());
        assert_eq!(
            (r.status, r.json()["field"].clone()),
            (400, json!(field)),
            "{body}: {}",
            r.text()
        );
    }
    for body in [
        json!({"username": "alice", "password": "wrong password"}),
        json!({"username": "nobody@example.com", "password": PASSWORD}),
    ] {
        let r = post_json(tg, "/_auth/authenticate", body);
        assert_eq!(
            (r.status, r.error().as_str()),
            (401, "invalid_token"),
            "{}",
            r.text()
        );
        assert!(r.header("set-cookie").is_none());
    }
    assert_eq!(tg.get("/_auth/authenticate", &[]).status, 405);
    assert_eq!(tg.get("/_auth/nothing-here", &[]).error(), "no_route");
}

fn tickets_are_admitted(f: &Fixture) {
    let (tg, up) = (&f.tg, &f.up);
    let ticket = sign_in(tg);
    let bearer = format!("Bearer {ticket}");
    let cookie = format!("theme=dark; TICKET={ticket}");
    for (target, headers) in [
        (format!("/db/bq1?a=API_DoQuery&ticket={ticket}"), vec![]),
        (
            "/db/bq1?a=API_DoQuery".to_owned(),
            vec![("cookie", cookie.as_str())],
        ),
        (
            "/db/bq1?a=API_DoQuery".to_owned(),
            vec![("authorization", bearer.as_str())],
        ),
    ] {
        let r = tg.get(&target, &headers);
        assert_eq!(r.status, 200, "{target} {headers:?}: {}", r.text());
        let seen = up.last();
        assert_eq!(
            seen.target, "/db/bq1?a=API_DoQuery",
            "the ticket never goes upstream"
        );
        assert_eq!(seen.header("x-auth-method"), Some("ticket"));
        assert_eq!(seen.header("x-auth-user-id"), Some("alice"));
        assert_eq!(seen.header("x-auth-department"), Some("Ops"));
        assert!(seen.header("x-auth-expires-at").is_some());
        assert!(seen.header("authorization").is_none());
        assert!(!format!("{:?}", seen.headers).contains(&ticket));
        if !headers.is_empty() && headers[0].0 == "cookie" {
            assert_eq!(
                seen.header("cookie"),
                Some("theme=dark"),
                "other cookies pass"
            );
        }
    }
    // Who am I, by the ticket: no route, no app.
    let r = tg.get("/_auth/whoami", &[("authorization", &bearer)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let me = r.json();
    assert_eq!(
        (me["user_id"].as_str(), me["method"].as_str()),
        (Some("alice"), Some("ticket"))
    );
    assert_eq!(me["email"], "alice@example.com");
    assert_eq!(
        me["credential_id"].as_str(),
        Some(&ticket["tgt_".len().."tgt_".len() + 16])
    );
    assert!(me["expires_at"].is_string() && !r.text().contains(&ticket));
    assert_eq!(tg.get("/_auth/whoami", &[]).error(), "missing_credentials");
    assert_eq!(
        tg.get("/_auth/whoami?ticket=tgt_nope", &[]).error(),
        "invalid_token"
    );
    // A ticket may reach the UI; a user token may not.
    assert_eq!(tg.get("/app-ui", &[("authorization", &bearer)]).status, 200);
    // The XML body form.
    let body = format!(
        "<qdbapi>\n  <udata>mine</udata>\n  <ticket>{ticket}</ticket>\n  <field fid=\"8\">a &amp; b</field>\n</qdbapi>"
    );
    let r = http(
        tg.port,
        "POST",
        "/db/bq1?a=API_AddRecord",
        &[("content-type", "application/xml")],
        Some(body.as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    let forwarded = String::from_utf8(seen.body.clone()).unwrap();
    assert_eq!(
        forwarded,
        "<qdbapi>\n  <udata>mine</udata>\n  \n  <field fid=\"8\">a &amp; b</field>\n</qdbapi>"
    );
    assert_eq!(
        seen.header("content-length"),
        Some(forwarded.len().to_string().as_str())
    );
    assert_eq!(seen.header("x-auth-method"), Some("ticket"));
}

fn app_tokens(f: &Fixture) {
    let (tg, up) = (&f.tg, &f.up);
    let ticket = sign_in(tg);
    let (token, token_id) = app_token(tg, "bq2");
    let (other_app_token, _) = app_token(tg, "bq1");
    let list = tg.admin("GET", "/v1/apps/bq2/app-tokens", None);
    assert_eq!(list.json()["items"].as_array().unwrap().len(), 1);
    assert!(!list.text().contains(&token), "the secret is shown once");
    let before = up.count();
    let t = format!("/db/bq2?x=1&ticket={ticket}");
    let r = tg.get(&t, &[]);
    assert_eq!(
        (r.status, r.error().as_str()),
        (401, "app_token_required"),
        "{}",
        r.text()
    );
    assert_eq!(
        tg.get(&format!("{t}&apptoken={other_app_token}"), &[])
            .error(),
        "invalid_app_token"
    );
    assert_eq!(
        tg.get(&format!("{t}&apptoken=tga_garbage"), &[]).error(),
        "invalid_app_token"
    );
    assert_eq!(
        up.count(),
        before,
        "refused requests never reach the upstream"
    );

    assert_eq!(tg.get(&format!("{t}&apptoken={token}"), &[]).status, 200);
    assert_eq!(
        up.last().target,
        "/db/bq2?x=1",
        "ticket and app token both removed"
    );
    assert_eq!(tg.get(&t, &[("qb-app-token", &token)]).status, 200);
    assert!(up.last().header("qb-app-token").is_none());
    let body =
        format!("<qdbapi><ticket>{ticket}</ticket><apptoken>{token}</apptoken><x>1</x></qdbapi>");
    let r = http(
        tg.port,
        "POST",
        "/db/bq2?a=API_AddRecord",
        &[("content-type", "text/xml")],
        Some(body.as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().body, b"<qdbapi><x>1</x></qdbapi>");

    // A user token never needs an app token.
    let r = tg.admin(
        "POST",
        "/v1/users/alice/tokens",
        Some(json!({"name": "ci", "apps": ["bq2"]})),
    );
    let user_token = r.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(
        tg.get(
            &format!("/db/bq2?a=API_DoQuery&usertoken={user_token}"),
            &[]
        )
        .status,
        200
    );

    // Limit, then delete.
    let (_, _) = app_token(tg, "bq2");
    let r = tg.admin(
        "POST",
        "/v1/apps/bq2/app-tokens",
        Some(json!({"name": "third"})),
    );
    assert_eq!(r.status, 409, "app_tokens_per_app = 2: {}", r.text());
    assert_eq!(
        tg.admin(
            "POST",
            "/v1/apps/nope/app-tokens",
            Some(json!({"name": "x"}))
        )
        .status,
        404
    );
    assert_eq!(
        tg.admin(
            "DELETE",
            &format!("/v1/apps/bq1/app-tokens/{token_id}"),
            None
        )
        .status,
        404,
        "another app's"
    );
    assert_eq!(
        tg.admin(
            "DELETE",
            &format!("/v1/apps/bq2/app-tokens/{token_id}"),
            None
        )
        .status,
        204
    );
    assert_eq!(
        tg.get(&format!("{t}&apptoken={token}"), &[]).error(),
        "invalid_app_token",
        "deleted at once"
    );
}

fn xml_bodies(f: &Fixture) {
    let (tg, up) = (&f.tg, &f.up);
    let before = up.count();
    let big = format!("<qdbapi><x>{}</x></qdbapi>", "a".repeat(5000));
    let r = http(
        tg.port,
        "POST",
        "/db/bq1?a=API_AddRecord",
        &[("content-type", "application/xml")],
        Some(big.as_bytes()),
    );
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(
        r.text().contains("<errcode>"),
        "the XML API is answered in XML: {}",
        r.text()
    );
    let r = http(
        tg.port,
        "POST",
        "/db/bq1",
        &[("content-type", "application/xml")],
        Some(b"<qdbapi><ticket>x</qdbapi>"),
    );
    assert_eq!(
        (r.status, r.error().as_str()),
        (400, "malformed_body"),
        "{}",
        r.text()
    );
    let r = http(
        tg.port,
        "POST",
        "/db/bq1",
        &[("content-type", "application/xml")],
        Some(b"<qdbapi><ticket>tgt_nope</ticket></qdbapi>"),
    );
    assert_eq!((r.status, r.error().as_str()), (401, "invalid_token"));
    let r = http(
        tg.port,
        "POST",
        "/db/bq1",
        &[("content-type", "application/xml")],
        Some(b"<qdbapi><ticket>tgt_a</ticket><ticket>tgt_b</ticket></qdbapi>"),
    );
    assert_eq!(
        (r.status, r.error().as_str()),
        (400, "ambiguous_credentials")
    );
    assert_eq!(
        up.count(),
        before,
        "a refused body sends the upstream nothing"
    );
}

fn qdbapi_errors(f: &Fixture) {
    let tg = &f.tg;
    let ticket = sign_in(tg);
    let cases: Vec<(String, u16, &str)> = vec![
        ("/db/bq1?a=API_DoQuery".into(), 401, "22"),
        ("/db/bq1?a=API_DoQuery&ticket=tgt_bad".into(), 401, "4"),
        (format!("/db/bq2?a=API_DoQuery&ticket={ticket}"), 401, "24"),
        (
            format!("/db/nosuchapp?a=API_DoQuery&ticket={ticket}"),
            403,
            "83",
        ),
    ];
    for (target, status, code) in cases {
        let r = tg.get(&target, &[]);
        assert_eq!(r.status, status, "{target}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/xml"));
        let text = r.text();
        assert!(text.contains("<action>API_DoQuery</action>"), "{text}");
        assert!(
            text.contains(&format!("<errcode>{code}</errcode>")),
            "{target}: {text}"
        );
        assert!(text.contains("<errtext>"));
    }
    let r = tg.get("/db/bq1", &[("quickbase-action", "API_DoQuery")]);
    assert!(
        r.text().contains("<errcode>22</errcode>"),
        "the header names the action too"
    );
    let r = tg.get("/db/bq1?a=other", &[]);
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "not the XML API"
    );
}

fn xml_api_sign_in_and_out(f: &Fixture) {
    let (tg, up) = (&f.tg, &f.up);
    let before = up.count();
    let r = tg.get(
        &format!(
            "/db/main?a=API_Authenticate&username=alice%40example.com&password={}&hours=3",
            PASSWORD.replace(' ', "%20")
        ),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    assert!(
        text.contains("<action>API_Authenticate</action>") && text.contains("<errcode>0</errcode>"),
        "{text}"
    );
    assert!(text.contains("<userid>alice</userid>"));
    let ticket = text
        .split("<ticket>")
        .nth(1)
        .unwrap()
        .split("</ticket>")
        .next()
        .unwrap()
        .to_owned();
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=10800"));

    let body =
        format!("<qdbapi><username>alice</username><password>{PASSWORD}</password></qdbapi>");
    let r = http(
        tg.port,
        "POST",
        "/db/main",
        &[
            ("content-type", "application/xml"),
            ("quickbase-action", "API_Authenticate"),
        ],
        Some(body.as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("<ticket>tgt_"));

    let r = tg.get(
        "/db/main?a=API_Authenticate&username=alice&password=nope",
        &[],
    );
    assert_eq!(r.status, 401);
    assert!(r.text().contains("<errcode>20</errcode>"), "{}", r.text());
    let r = tg.get(
        &format!(
            "/db/main?a=API_Authenticate&username=alice&password={}&hours=4381",
            PASSWORD.replace(' ', "%20")
        ),
        &[],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        up.count(),
        before,
        "sign-in is answered by tokengate itself"
    );

    assert_eq!(
        tg.get(&format!("/db/bq1?a=API_DoQuery&ticket={ticket}"), &[])
            .status,
        200
    );
    let r = tg.get(&format!("/db/main?a=API_SignOut&ticket={ticket}"), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("<action>API_SignOut</action>")
            && r.text().contains("<errcode>0</errcode>")
    );
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    let r = tg.get(&format!("/db/bq1?a=API_DoQuery&ticket={ticket}"), &[]);
    assert_eq!(r.status, 401);
    assert!(
        r.text().contains("<errcode>4</errcode>") && r.text().contains("revoked"),
        "{}",
        r.text()
    );
}

fn quickbase_routes(f: &Fixture) {
    let tg = &f.tg;
    let ticket = sign_in(tg);
    let r = tg.admin(
        "POST",
        "/v1/users/alice/tokens",
        Some(json!({"name": "qb", "apps": ["bq1"]})),
    );
    let user_token = format!("QB-USER-TOKEN {}", r.json()["token"].as_str().unwrap());
    let post = |target: &str, auth: &str| {
        http(
            tg.port,
            "POST",
            target,
            &[("authorization", auth)],
            Some(b""),
        )
    };
    assert_eq!(
        post("/db/main?a=API_GrantedDBs", &user_token).status,
        200,
        "API_GrantedDBs takes a user token"
    );
    let r = post("/db/main?a=API_CreateDatabase", &user_token);
    assert_eq!(
        r.status,
        403,
        "no user token posting to db/main: {}",
        r.text()
    );
    assert!(r.text().contains("<errcode>83</errcode>"));
    assert_eq!(
        post("/db/main?a=API_CreateDatabase", &format!("Bearer {ticket}")).status,
        200
    );
    assert_eq!(
        tg.get(
            "/db/main?a=API_GetUserInfo",
            &[("authorization", &user_token)]
        )
        .status,
        200
    );
    assert_eq!(post("/db/bq1?a=API_AddRecord", &user_token).status, 200);
}

fn revocation(f: &Fixture) {
    let tg = &f.tg;
    let [a, b, c, d] = [sign_in(tg), sign_in(tg), sign_in(tg), sign_in(tg)];
    let get = |t: &str| tg.get(&format!("/db/bq1?ticket={t}"), &[]);
    for t in [&a, &b, &c, &d] {
        assert_eq!(get(t).status, 200);
    }
    // Listed as sessions of kind ticket, with the admin guide's fields.
    let r = tg.admin("GET", "/v1/sessions?user=alice&kind=ticket", None);
    let items = r.json()["items"].as_array().unwrap().clone();
    assert!(items.len() >= 4, "{}", r.text());
    let id_of = |t: &str| t["tgt_".len().."tgt_".len() + 16].to_owned();
    let item = items.iter().find(|i| i["id"] == id_of(&a)).unwrap();
    for field in [
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
        assert!(item.get(field).is_some(), "{field} missing from {item}");
    }
    assert_eq!(item["kind"], "ticket");
    assert_eq!(item["user_name"], "Alice");
    assert!(!r.text().contains(&a), "no secret in a listing");

    // Sign-out revokes it everywhere.
    let r = http(
        tg.port,
        "POST",
        "/_auth/signout",
        &[("cookie", &format!("TICKET={a}"))],
        Some(b""),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&a).error(), "token_revoked");
    // The admin API revokes one, or many.
    assert_eq!(
        tg.admin("DELETE", &format!("/v1/sessions/{}", id_of(&b)), None)
            .status,
        204
    );
    assert_eq!(get(&b).error(), "token_revoked");
    assert_eq!(tg.admin("DELETE", "/v1/sessions/nosuch", None).status, 404);
    let r = tg.admin(
        "POST",
        "/v1/sessions/delete",
        Some(json!({"ids": [id_of(&c)]})),
    );
    assert_eq!(r.json()["deleted"], 1);
    assert_eq!(get(&c).error(), "token_revoked");
    let r = tg.admin("GET", "/v1/sessions?user=alice", None);
    assert!(
        !r.text().contains(&id_of(&a)),
        "revoked tickets are not listed"
    );
    // A disabled user's tickets stop; enabled again, they work.
    tg.admin(
        "PATCH",
        "/v1/users/alice",
        Some(json!({"status": "disabled"})),
    );
    assert_eq!(get(&d).error(), "user_disabled");
    let r = post_json(
        tg,
        "/_auth/authenticate",
        json!({"username": "alice", "password": PASSWORD}),
    );
    assert_eq!(r.status, 401, "a disabled user can't sign in");
    tg.admin(
        "PATCH",
        "/v1/users/alice",
        Some(json!({"status": "active"})),
    );
    assert_eq!(get(&d).status, 200);
    // A new password: the old one stops working for sign-in.
    assert_eq!(
        tg.admin(
            "POST",
            "/v1/users/alice/password",
            Some(json!({"password": "short"}))
        )
        .json()["field"],
        "password"
    );
    assert_eq!(
        tg.admin(
            "POST",
            "/v1/users/alice/password",
            Some(json!({"password": "a brand new one"}))
        )
        .status,
        204
    );
    assert_eq!(
        post_json(
            tg,
            "/_auth/authenticate",
            json!({"username": "alice", "password": PASSWORD})
        )
        .status,
        401
    );
    assert_eq!(
        post_json(
            tg,
            "/_auth/authenticate",
            json!({"username": "alice", "password": "a brand new one"})
        )
        .status,
        200
    );
    // Revoke all of a user's sessions, then delete the user: its tickets are gone.
    let e = post_json(
        tg,
        "/_auth/authenticate",
        json!({"username": "alice", "password": "a brand new one"}),
    )
    .json()["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        tg.admin("DELETE", "/v1/users/alice/sessions", None).json()["deleted"]
            .as_u64()
            .unwrap()
            >= 2
    );
    assert_eq!(get(&e).error(), "token_revoked");
    assert_eq!(tg.admin("DELETE", "/v1/users/alice", None).status, 204);
    assert_eq!(get(&d).error(), "invalid_token");
    assert_eq!(
        tg.admin("GET", "/v1/sessions?user=alice", None).json()["items"],
        json!([])
    );
    assert!(
        !tg.log().contains(&a) && !tg.log().contains(PASSWORD),
        "no secret in the log"
    );
}

fn all(backend: &Backend) {
    let f = setup(backend);
    authenticate(&f);
    tickets_are_admitted(&f);
    app_tokens(&f);
    xml_bodies(&f);
    qdbapi_errors(&f);
    xml_api_sign_in_and_out(&f);
    quickbase_routes(&f);
    revocation(&f);
}

#[test]
fn tickets_on_the_embedded_store() {
    all(&Backend::Embedded);
}

#[test]
fn tickets_on_redis() {
    let redis = RedisServer::start();
    all(&Backend::Redis(redis.url()));
}
