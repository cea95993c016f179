//! The operators' view, from outside: the real binary under allowed, denied and failed traffic;
//! `/metrics` scraped; every metric the shipped dashboard and alerts use is there; no label
//! holds a secret, a user, an id or a path; the audit log says who changed what.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::{Backend, Tokengate, Upstream, http};
use serde_json::json;

const ROUTES: &str = "[[routes]]\npath = \"/db/{app}\"\n";

/// Every `tokengate_…` name in a text (PromQL in JSON or YAML).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("tokengate_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// The name a sample line belongs to: a histogram's `_bucket`, `_sum`, `_count` too.
fn exported(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap_or("");
        names.insert(name.to_owned());
    }
    names
}

/// Every label value of every sample.
fn label_values(scrape: &str) -> Vec<String> {
    let mut values = Vec::new();
    for line in scrape.lines().filter(|l| !l.starts_with('#')) {
        let Some(labels) = line
            .split_once('{')
            .and_then(|(_, rest)| rest.split_once('}'))
        else {
            continue;
        };
        for pair in labels.0.split(',') {
            if let Some((_, v)) = pair.split_once('=') {
                values.push(v.trim_matches('"').to_owned());
            }
        }
    }
    values
}

#[test]
fn metrics_cover_the_dashboard_and_alerts_and_hold_nothing_personal() {
    let up = Upstream::start();
    let tg = Tokengate::start(&Backend::Embedded, &up.url(), ROUTES, "");
    tg.admin("POST", "/v1/apps", Some(json!({"id": "bq1", "name": "B"})));
    let r = tg.admin(
        "POST",
        "/v1/users",
        Some(
            json!({"id": "alice", "email": "alice@example.com", "name": "Alice",
                    "apps": ["bq1"], "password": "a long enough password"}),
        ),
    );
    assert_eq!(r.status, 201);
    let (secret, token_id) = tg.user_token("alice", &["bq1"]);
    let auth = format!("QB-USER-TOKEN {secret}");
    // Allowed, denied every way, a sign-in, a revocation.
    assert_eq!(tg.get("/db/bq1", &[("authorization", &auth)]).status, 200);
    assert_eq!(tg.get("/db/bq1", &[("authorization", &auth)]).status, 200);
    assert_eq!(tg.get("/db/bq1", &[]).status, 401);
    assert_eq!(tg.get("/db/zz9", &[("authorization", &auth)]).status, 403);
    assert_eq!(tg.get("/nowhere", &[("authorization", &auth)]).status, 404);
    let made_up = format!("QB-USER-TOKEN tgu_{}", "a".repeat(68));
    assert_eq!(
        tg.get("/db/bq1", &[("authorization", &made_up)]).status,
        401
    );
    let r = http(
        tg.port,
        "POST",
        "/_auth/authenticate",
        &[("content-type", "application/json")],
        Some(br#"{"username": "alice@example.com", "password": "a long enough password"}"#),
    );
    assert_eq!(r.status, 200);
    let ticket = r.json()["ticket"].as_str().unwrap().to_owned();
    let r = tg.admin(
        "PATCH",
        &format!("/v1/tokens/{token_id}"),
        Some(json!({"active": false})),
    );
    assert_eq!(r.status, 200);
    assert_eq!(tg.get("/db/bq1", &[("authorization", &auth)]).status, 401);

    // An upstream that doesn't answer: a 502 of tokengate's, counted as such.
    let dead = Tokengate::start(
        &Backend::Embedded,
        &format!("http://127.0.0.1:{}", common::free_port()),
        "[[routes]]\npath = \"/open\"\nauth = \"none\"\n",
        "",
    );
    assert_eq!(dead.get("/open", &[]).status, 502);
    assert_eq!(
        dead.metric(
            "tokengate_upstream_requests_total",
            &["status_class=\"error\""]
        ),
        1.0
    );

    let scrape = tg.admin_raw("GET", "/metrics", None, None).text();
    let have = exported(&scrape);
    let root = env!("CARGO_MANIFEST_DIR");
    for file in [
        "deploy/monitoring/grafana-dashboard.json",
        "deploy/monitoring/prometheusrule.yaml",
        "deploy/helm/tokengate/templates/prometheusrule.yaml",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let used = metric_names(&text);
        assert!(!used.is_empty(), "{file} uses no metric");
        for name in &used {
            // A histogram is named by its base too (in descriptions, say).
            assert!(
                have.contains(name) || have.contains(&format!("{name}_bucket")),
                "{file} uses {name}, which /metrics doesn't export"
            );
        }
    }
    // Every metric of PRODUCT.md §9.
    for name in [
        "tokengate_auth_decisions_total",
        "tokengate_auth_duration_seconds_bucket",
        "tokengate_cache_lookups_total",
        "tokengate_cache_entries",
        "tokengate_store_requests_total",
        "tokengate_store_duration_seconds_bucket",
        "tokengate_store_up",
        "tokengate_invalidations_total",
        "tokengate_upstream_requests_total",
        "tokengate_upstream_duration_seconds_bucket",
        "tokengate_credentials_issued_total",
        "tokengate_revocations_total",
    ] {
        assert!(have.contains(name), "{name} missing from:\n{scrape}");
    }
    assert_eq!(
        tg.metric("tokengate_revocations_total", &["kind=\"user_token\""]),
        1.0
    );
    assert!(tg.metric("tokengate_cache_entries", &["kind=\"user_token\""]) >= 1.0);

    // Bounded labels only: nothing a user, a credential or a request brought.
    let personal = [
        secret.as_str(),
        &secret[4..20],
        token_id.as_str(),
        ticket.as_str(),
        "alice",
        "example.com",
        "/db",
        "bq1",
        "zz9",
        "nowhere",
    ];
    for value in label_values(&scrape) {
        for p in personal {
            assert!(!value.contains(p), "label value {value:?} holds {p:?}");
        }
        assert!(value.len() <= 32, "an unbounded-looking label: {value:?}");
    }
}

#[test]
fn the_audit_log_says_who_changed_what_and_never_a_secret() {
    let tg = Tokengate::start(&Backend::Embedded, "echo", ROUTES, "");
    tg.admin("POST", "/v1/apps", Some(json!({"id": "bq1", "name": "B"})));
    tg.admin(
        "POST",
        "/v1/users",
        Some(
            json!({"id": "bo", "email": "bo@example.com", "name": "Bo", "apps": ["bq1"],
                    "password": "a long enough password"}),
        ),
    );
    let r = http(
        tg.port,
        "POST",
        "/_auth/authenticate",
        &[("content-type", "application/json")],
        Some(br#"{"username": "bo", "password": "a long enough password"}"#),
    );
    let ticket = r.json()["ticket"].as_str().unwrap().to_owned();
    let r = http(
        tg.port,
        "POST",
        "/_auth/tokens",
        &[
            ("content-type", "application/json"),
            ("authorization", &format!("Bearer {ticket}")),
        ],
        Some(br#"{"name": "mine", "apps": ["bq1"]}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let secret = r.json()["token"].as_str().unwrap().to_owned();
    tg.admin("DELETE", "/v1/users/bo", None);

    // Written as the changes happen: wait (bounded) for the last one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let audit: Vec<serde_json::Value> = loop {
        let lines: Vec<serde_json::Value> = tg
            .log()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &serde_json::Value| v["target"] == "audit")
            .collect();
        if lines
            .iter()
            .any(|v| v["fields"]["message"] == "user deleted, with their credentials")
        {
            break lines;
        }
        assert!(std::time::Instant::now() < deadline, "{}", tg.log());
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let said = |message: &str| {
        audit
            .iter()
            .find(|v| v["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no audit line {message:?} in {audit:?}"))["fields"]
            .clone()
    };
    assert_eq!(said("app created")["actor"], "admin");
    assert_eq!(said("user created")["user_id"], "bo");
    assert_eq!(said("ticket issued")["user_id"], "bo");
    let created = said("user token created");
    assert_eq!(created["actor"], "user:bo", "self-service: the user did it");
    let deleted = said("user deleted, with their credentials");
    assert_eq!(
        (deleted["actor"].clone(), deleted["user_tokens"].clone()),
        (json!("admin"), json!(1))
    );
    let log = tg.log();
    assert!(
        !log.contains(&secret) && !log.contains(&ticket),
        "no secret in the log"
    );
    assert!(!log.contains("a long enough password"));
}
