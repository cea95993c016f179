//! The tower layer in the axum example (examples/axum_service.rs), over a real socket: the
//! proxy's decisions with no proxy hop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../examples/axum_service.rs"]
mod example;

use std::net::SocketAddr;
use std::sync::Arc;

use chrono::Utc;
use tokengate::clock::SystemClock;
use tokengate::config::Config;
use tokengate::credential::format::{self, TokenKind};
use tokengate::headers::IdentityHeaders;
use tokengate::model::{App, User, UserStatus, UserToken};
use tokengate::server::{build, open_store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_admits_and_refuses_over_a_real_socket() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml(
        &format!(
            "[store]\nbackend = \"embedded\"\npath = {:?}\n[limits]\nfailures_per_minute = 2\n\
             [[routes]]\npath = \"/db/{{app}}\"\n",
            dir.path().join("t.db")
        ),
        Vec::new(),
    )
    .unwrap();
    let parts = build(
        &config,
        open_store(&config.store).unwrap(),
        Arc::new(SystemClock),
    )
    .unwrap();
    let now = Utc::now();
    let store = parts.store.clone();
    store
        .insert_app(&App {
            id: "bq1".into(),
            name: "B".into(),
            tenant: None,
            require_app_token: false,
            created_at: now,
            headers: Default::default(),
        })
        .await
        .unwrap();
    store
        .insert_user(&User {
            id: "alice".into(),
            email: "alice@example.com".into(),
            name: "Alice".into(),
            department: None,
            user_type: None,
            tenant: None,
            status: UserStatus::Active,
            apps: vec!["bq1".into()],
            password_hash: None,
            created_at: now,
            headers: Default::default(),
        })
        .await
        .unwrap();
    let secret = format::generate(TokenKind::UserToken).unwrap();
    store
        .insert_user_token(
            &UserToken {
                id: secret.id.clone(),
                secret_hash: secret.hash,
                name: "t".into(),
                description: String::new(),
                user_id: "alice".into(),
                apps: vec!["bq1".into()],
                active: true,
                held_by_admin: false,
                expires_at: None,
                department: None,
                user_type: None,
                created_at: now,
                last_used_at: None,
                used: Default::default(),
                headers: Default::default(),
            },
            100,
        )
        .await
        .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = example::app(
        parts.engine.clone(),
        IdentityHeaders::new("x-auth-").unwrap(),
    );
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://{addr}{path}");
    let auth = format!("QB-USER-TOKEN {}", secret.token);

    let r = client
        .get(url("/db/bq1"))
        .header("authorization", &auth)
        .header("x-auth-user-id", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        "hello Alice (bq1), by user_token\n"
    );
    let r = client
        .get(url(&format!("/db/bq1?usertoken={}", secret.token)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the credential in the query");

    async fn error(r: reqwest::Response) -> (u16, String, bool) {
        let status = r.status().as_u16();
        let challenge = r.headers().contains_key("www-authenticate");
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        (
            status,
            v["error"].as_str().unwrap_or("").to_owned(),
            challenge,
        )
    }
    let r = client.get(url("/db/bq1")).send().await.unwrap();
    assert_eq!(error(r).await, (401, "missing_credentials".into(), true));
    let r = client
        .get(url("/db/other"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(error(r).await, (403, "app_not_allowed".into(), false));
    let r = client
        .get(url("/elsewhere"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(error(r).await, (404, "no_route".into(), false));
    // Failed credentials are counted per client address, as behind the proxy.
    let bad = format!("QB-USER-TOKEN tgu_{}", "a".repeat(68));
    for expected in [401, 401, 429] {
        let r = client
            .get(url("/db/bq1"))
            .header("authorization", &bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), expected);
    }
}
