//! The admin verbs of the command line (PRODUCT.md §7), run as the real binary against the
//! real server's admin API: tables for people, `--json` for scripts, a secret shown once, and
//! the server's error code with a non-zero exit on failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{ADMIN_KEY, Backend, Tokengate, http};
use serde_json::{Value, json};

const ROUTES: &str = "[[routes]]\npath = \"/db/{app}\"\n";

/// What one run of the binary left.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap()
    }
}

fn run_with(tg: &Tokengate, key: &str, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(args)
        .env(
            "TOKENGATE_ADMIN_URL",
            format!("http://127.0.0.1:{}", tg.admin_port),
        )
        .env("TOKENGATE_ADMIN_KEY", key)
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn run(tg: &Tokengate, args: &[&str]) -> Run {
    run_with(tg, ADMIN_KEY, args)
}

fn start() -> Tokengate {
    Tokengate::start(&Backend::Embedded, "echo", ROUTES, "")
}

/// Every line of a table starts its columns at the same places as the header.
fn assert_aligned(table: &str, headers: &[&str]) {
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines.len() >= 2, "a header and a row:\n{table}");
    let starts: Vec<usize> = headers
        .iter()
        .map(|h| {
            lines[0]
                .find(h)
                .unwrap_or_else(|| panic!("{h} in\n{table}"))
        })
        .collect();
    for line in &lines[1..] {
        for &s in &starts[1..] {
            let (before, at) = (line.as_bytes()[s - 1], line.as_bytes()[s]);
            assert!(
                before == b' ' && at != b' ',
                "column at {s} in {line:?}\n{table}"
            );
        }
    }
}

fn proxy_status(tg: &Tokengate, secret: &str) -> u16 {
    let auth = format!("QB-USER-TOKEN {secret}");
    tg.get("/db/bq1", &[("authorization", &auth)]).status
}

#[test]
fn apps_users_and_tokens_end_to_end() {
    let tg = start();
    let out = run(&tg, &["app", "add", "--id", "bq1", "--name", "Sales DB"]).ok();
    assert!(out.stdout.contains("added app bq1"), "{}", out.stdout);
    let out = run(
        &tg,
        &[
            "user",
            "add",
            "--id",
            "u1",
            "--email",
            "ann@example.com",
            "--name",
            "Ann",
            "--department",
            "Sales",
            "--app",
            "bq1",
        ],
    )
    .ok();
    assert!(out.stdout.contains("added user u1"), "{}", out.stdout);

    let apps = run(&tg, &["app", "list"]).ok().stdout;
    assert_aligned(&apps, &["ID", "NAME", "TENANT", "APP TOKEN", "CREATED"]);
    assert!(apps.contains("Sales DB") && apps.contains(" ago"), "{apps}");
    let users = run(&tg, &["user", "list"]).ok().stdout;
    assert_aligned(&users, &["ID", "NAME", "EMAIL", "STATUS", "TENANT", "APPS"]);
    assert!(users.contains("ann@example.com") && users.contains("active"));
    let v = run(&tg, &["user", "inspect", "u1", "--json"]).ok().json();
    assert_eq!(
        (v["id"].as_str(), v["department"].as_str()),
        (Some("u1"), Some("Sales"))
    );

    // Created: the secret printed once, clearly marked.
    let out = run(
        &tg,
        &[
            "token", "create", "--user", "u1", "--name", "reports", "--app", "bq1",
        ],
    )
    .ok()
    .stdout;
    assert!(out.contains("shown once"), "{out}");
    let secret = out
        .lines()
        .skip_while(|l| !l.contains("shown once"))
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();
    let id = out
        .lines()
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();
    assert!(!secret.is_empty() && !id.is_empty(), "{out}");
    assert_eq!(proxy_status(&tg, &secret), 200);

    // Inspect and list never show it; --json parses.
    let inspect = run(&tg, &["token", "inspect", &id]).ok().stdout;
    assert!(!inspect.contains(&secret), "{inspect}");
    assert!(
        inspect.contains("Ann") && inspect.contains("QB-USER-TOKEN"),
        "{inspect}"
    );
    let v = run(&tg, &["--json", "token", "inspect", &id]).ok().json();
    assert_eq!(v["id"], json!(id));
    assert!(v.get("token").is_none(), "{v}");
    let list = run(&tg, &["token", "list", "--user", "u1"]).ok().stdout;
    assert!(!list.contains(&secret), "{list}");
    assert_aligned(
        &list,
        &[
            "ID",
            "NAME",
            "USER",
            "APPS",
            "ACTIVE",
            "EXPIRES",
            "LAST USED",
        ],
    );
    assert!(list.contains("never") && list.contains(" ago"), "{list}");
    let v = run(&tg, &["token", "list", "--json"]).ok().json();
    assert_eq!(v["items"].as_array().unwrap().len(), 1);

    // A narrower token: its own user type, shown; expiry in RFC 3339.
    let v = run(
        &tg,
        &[
            "--json",
            "token",
            "create",
            "--user",
            "u1",
            "--name",
            "viewer",
            "--app",
            "bq1",
            "--user-type",
            "viewer",
            "--expires-at",
            "2099-01-01T00:00:00Z",
        ],
    )
    .ok()
    .json();
    assert_eq!(
        (v["user_type"].as_str(), v["department"].as_str()),
        (Some("viewer"), None)
    );
    assert!(v["expires_at"].as_str().unwrap().starts_with("2099-01-01"));
    let narrow = v["id"].as_str().unwrap().to_owned();
    let inspect = run(&tg, &["token", "inspect", &narrow]).ok().stdout;
    assert!(
        inspect.contains("viewer") && inspect.contains("in "),
        "{inspect}"
    );
    run(&tg, &["token", "delete", &narrow]).ok();

    // Deactivated: refused through the proxy; activated: let in again.
    run(&tg, &["token", "deactivate", &id]).ok();
    assert_eq!(proxy_status(&tg, &secret), 401);
    let v = run(&tg, &["token", "list", "--active", "false", "--json"])
        .ok()
        .json();
    assert_eq!(v["items"][0]["id"], json!(id));
    run(&tg, &["token", "activate", &id]).ok();
    assert_eq!(proxy_status(&tg, &secret), 200);

    // A disabled user's token is refused.
    run(&tg, &["user", "disable", "u1"]).ok();
    assert_eq!(proxy_status(&tg, &secret), 401);
    run(&tg, &["user", "enable", "u1"]).ok();
    assert_eq!(proxy_status(&tg, &secret), 200);

    run(&tg, &["token", "delete", &id]).ok();
    assert_eq!(proxy_status(&tg, &secret), 401);
    run(&tg, &["user", "delete", "u1"]).ok();
    run(&tg, &["app", "delete", "bq1"]).ok();
    let v = run(&tg, &["user", "list", "--json"]).ok().json();
    assert_eq!(v["items"], json!([]));
}

#[test]
fn failures_exit_non_zero_with_the_server_code() {
    let tg = start();
    let out = run(&tg, &["token", "inspect", "nope"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.starts_with("error: not_found: "),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty());

    let out = run_with(&tg, "wrong-key", &["user", "list"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("unauthorized"), "{}", out.stderr);

    let out = run(
        &tg,
        &["user", "add", "--email", "not-an-email", "--name", "X"],
    );
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("invalid_request") && out.stderr.contains("email"));

    let out = run(
        &tg,
        &[
            "token",
            "create",
            "--user",
            "u",
            "--name",
            "n",
            "--expires-at",
            "soon",
        ],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);

    let dead = common::free_port();
    let out = run(
        &tg,
        &[
            "--admin-url",
            &format!("http://127.0.0.1:{dead}"),
            "app",
            "list",
        ],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.starts_with("error: connection_failed: "),
        "{}",
        out.stderr
    );

    let out = run(&tg, &["user", "frobnicate"]);
    assert_eq!(out.code, 2);
}

#[test]
fn app_tokens_and_sessions() {
    let tg = start();
    run(
        &tg,
        &[
            "app",
            "add",
            "--id",
            "bq1",
            "--name",
            "DB",
            "--require-app-token",
        ],
    )
    .ok();
    let v = run(&tg, &["app", "list", "--json"]).ok().json();
    assert_eq!(v["items"][0]["require_app_token"], json!(true));

    let out = run(
        &tg,
        &["app-token", "create", "--app", "bq1", "--name", "ci"],
    )
    .ok()
    .stdout;
    assert!(out.contains("shown once"), "{out}");
    let v = run(
        &tg,
        &[
            "--json",
            "app-token",
            "create",
            "--app",
            "bq1",
            "--name",
            "ci2",
        ],
    )
    .ok()
    .json();
    assert!(v["token"].as_str().is_some_and(|t| !t.is_empty()), "{v}");
    let tid = v["id"].as_str().unwrap();
    run(&tg, &["app-token", "delete", "--app", "bq1", tid]).ok();
    let out = run(&tg, &["app-token", "delete", "--app", "bq1", tid]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("not_found"), "{}", out.stderr);

    run(
        &tg,
        &[
            "user",
            "add",
            "--id",
            "u2",
            "--email",
            "bo@example.com",
            "--name",
            "Bo",
            "--app",
            "bq1",
            "--password",
            "a long enough password 1",
        ],
    )
    .ok();
    let body = json!({"username": "u2", "password": "a long enough password 1"}).to_string();
    let r = http(
        tg.port,
        "POST",
        "/_auth/login",
        &[("content-type", "application/json")],
        Some(body.as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let sid = r.json()["session_id"].as_str().unwrap().to_owned();

    let list = run(&tg, &["session", "list", "--user", "u2"]).ok().stdout;
    assert_aligned(
        &list,
        &[
            "ID",
            "KIND",
            "USER",
            "EMAIL",
            "ISSUED",
            "LAST ACTIVE",
            "EXPIRES",
        ],
    );
    assert!(
        list.contains(&sid) && list.contains(" ago") && list.contains("in "),
        "{list}"
    );
    let v = run(&tg, &["session", "list", "--kind", "ticket", "--json"])
        .ok()
        .json();
    assert_eq!(v["items"], json!([]));
    run(&tg, &["session", "revoke", &sid]).ok();
    let v = run(&tg, &["session", "list", "--json"]).ok().json();
    assert_eq!(v["items"], json!([]));
}
