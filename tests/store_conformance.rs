//! The `Store` contract (`src/store/mod.rs`), checked the same way against both backends: the
//! embedded redb file in a temporary directory and a real `redis-server` of the test's own on a
//! free port. Every check runs on a fresh store, so the suite may assume it starts empty. The
//! suite itself is `tests/common/conformance.rs` (also run on a cluster and on sentinels by
//! `tests/redis_topologies.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/conformance.rs"]
mod conformance;

use std::time::{Duration, Instant};

use common::{RedisServer, free_port};
use conformance::conformance;
use tokengate::store::embedded::EmbeddedStore;
use tokengate::store::redis::RedisStore;
use tokengate::store::{Store, StoreError};

#[tokio::test]
async fn embedded_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    assert_eq!(store.backend(), "embedded");
    conformance(&store).await;
}

#[tokio::test]
async fn redis_store_conforms() {
    let server = RedisServer::start();
    assert_ne!(server.port, 6379, "never the machine's shared Redis");
    let store = RedisStore::new(&server.url()).unwrap();
    assert_eq!(store.backend(), "redis");
    conformance(&store).await;
}

#[tokio::test]
async fn redis_store_reports_unavailable_when_redis_is_down() {
    let port = free_port();
    assert_ne!(port, 6379, "never the machine's shared Redis");
    let store = RedisStore::new(&format!("redis://127.0.0.1:{port}/0")).unwrap();
    // The store bounds each attempt (1 s connect, 500 ms response); this only keeps a
    // regression from hanging the suite.
    let bound = Duration::from_secs(10);
    let started = Instant::now();
    let r = tokio::time::timeout(bound, store.ping())
        .await
        .expect("ping against a dead Redis did not return within 10 s");
    assert!(
        matches!(r, Err(StoreError::Unavailable(_))),
        "ping against a dead Redis: expected Err(Unavailable), got {r:?}"
    );
    let r = tokio::time::timeout(bound, store.user("x"))
        .await
        .expect("user(\"x\") against a dead Redis did not return within 10 s");
    assert!(
        matches!(r, Err(StoreError::Unavailable(_))),
        "user(\"x\") against a dead Redis: expected Err(Unavailable), got {r:?}"
    );
    assert!(
        started.elapsed() < bound,
        "answers against a dead Redis took {:?}",
        started.elapsed()
    );
}
