//! TLS to Redis (`rediss://`): a real `redis-server` of the test's own serving TLS only, with a
//! certificate from a test CA made by openssl. The store passes its whole conformance suite over
//! it when given the CA (`store.ca_file`), refuses the server without it, and the tokengate
//! binary admits and refuses over it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/conformance.rs"]
mod conformance;

use common::certs::{make_ca, make_cert};
use common::{Backend, RedisServer, Tokengate, Upstream};
use conformance::conformance;
use serde_json::json;
use tokengate::store::Store;
use tokengate::store::redis::RedisStore;

/// A redis-server of the test's own speaking TLS only, with a certificate for 127.0.0.1 from
/// the test CA `ca`, and a second CA (`other`) that signed nothing here. The folder holds the
/// certificates; both go when the test drops them.
fn tls_redis() -> (RedisServer, tempfile::TempDir) {
    let certs = tempfile::tempdir().unwrap();
    make_ca(certs.path(), "ca");
    make_cert(certs.path(), "ca", "redis.crt", "redis.key", "redis");
    make_ca(certs.path(), "other");
    let redis = RedisServer::start_tls(certs.path());
    assert_ne!(redis.port, 6379, "never the machine's shared Redis");
    (redis, certs)
}

#[tokio::test]
async fn the_store_conforms_over_tls_and_trusts_only_its_ca() {
    let (redis, certs) = tls_redis();
    let store =
        RedisStore::with_options(&redis.url(), Some(&certs.path().join("ca.crt")), None).unwrap();
    conformance(&store).await;

    // The system's CAs, or another CA, don't vouch for this server: nothing is read.
    for ca in [None, Some(certs.path().join("other.crt"))] {
        let store = RedisStore::with_options(&redis.url(), ca.as_deref(), None).unwrap();
        let refused = store.user("anyone").await;
        assert!(refused.is_err(), "{ca:?}: {refused:?}");
    }
}

#[test]
fn tokengate_admits_and_refuses_over_rediss() {
    let (redis, certs) = tls_redis();
    let up = Upstream::start();
    // Written right after the [store] section's url, so it is store.ca_file.
    let ca = format!("ca_file = {:?}\n", certs.path().join("ca.crt"));
    let tg = Tokengate::start(
        &Backend::Redis(redis.url()),
        &up.url(),
        "[[routes]]\npath = \"/db/{app}\"\n",
        &ca,
    );
    let r = tg.admin("POST", "/v1/apps", Some(json!({"id": "bq1", "name": "B"})));
    assert_eq!(r.status, 201, "{}", r.text());
    let r = tg.admin(
        "POST",
        "/v1/users",
        Some(json!({"id": "ann", "email": "ann@example.com", "name": "Ann", "apps": ["bq1"]})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = tg.admin(
        "POST",
        "/v1/users/ann/tokens",
        Some(json!({"name": "t", "apps": ["bq1"]})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let (id, token) = (
        r.json()["id"].as_str().unwrap().to_owned(),
        r.json()["token"].as_str().unwrap().to_owned(),
    );
    let auth = format!("QB-USER-TOKEN {token}");
    assert_eq!(tg.get("/db/bq1", &[("authorization", &auth)]).status, 200);
    let r = tg.admin(
        "PATCH",
        &format!("/v1/tokens/{id}"),
        Some(json!({"active": false})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(tg.get("/db/bq1", &[("authorization", &auth)]).status, 401);
    let ready = tg.admin("GET", "/readyz", None);
    assert_eq!(ready.status, 200, "{}", ready.text());
}
