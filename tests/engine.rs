//! The decision engine in-process, on both store backends: a cache hit makes no store call,
//! concurrent misses share one store read, unknown tokens are remembered (negative cache),
//! expiry follows a controllable clock, and an admin change is seen at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use http::{HeaderMap, HeaderValue, Method};
use tokengate::cache::Invalidation;
use tokengate::clock::{Clock, ManualClock};
use tokengate::config::Config;
use tokengate::credential::format::{self, TokenKind};
use tokengate::engine::{Engine, RequestParts};
use tokengate::error::AuthError;
use tokengate::metrics::Metrics;
use tokengate::model::{App, User, UserStatus, UserToken};
use tokengate::server::{build, open_store};
use tokengate::sessions::SessionTokens;
use tokengate::store::SharedStore;

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

struct World {
    engine: Arc<Engine>,
    store: SharedStore,
    metrics: Arc<Metrics>,
    clock: Arc<ManualClock>,
    token: String,
    token_id: String,
    _dir: tempfile::TempDir,
    _redis: Option<common::RedisServer>,
}

async fn world(redis: bool, expires_at: Option<DateTime<Utc>>) -> World {
    let dir = tempfile::tempdir().unwrap();
    let redis = redis.then(common::RedisServer::start);
    let store = match &redis {
        Some(r) => format!("backend = \"redis\"\nurl = {:?}", r.url()),
        None => format!(
            "backend = \"embedded\"\npath = {:?}",
            dir.path().join("t.db")
        ),
    };
    let config = Config::from_toml(
        &format!(
            "[store]\n{store}\n[sessions]\nalgorithm = \"HS256\"\nkey = \"{}\"\n[[routes]]\npath = \"/db/{{app}}\"\n",
            "s".repeat(32)
        ),
        Vec::new(),
    )
    .unwrap();
    let clock = Arc::new(ManualClock::new(t0()));
    let parts = build(&config, open_store(&config.store).unwrap(), clock.clone()).unwrap();
    let store = parts.store.clone();
    store
        .insert_app(&App {
            id: "bq1".into(),
            name: "B".into(),
            tenant: None,
            require_app_token: false,
            created_at: t0(),
            headers: Default::default(),
        })
        .await
        .unwrap();
    store
        .insert_user(&User {
            id: "alice".into(),
            email: "alice@example.com".into(),
            name: "Alice".into(),
            department: Some("Sales".into()),
            user_type: None,
            tenant: None,
            status: UserStatus::Active,
            apps: vec!["bq1".into()],
            password_hash: None,
            created_at: t0(),
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
                name: "ci".into(),
                description: String::new(),
                user_id: "alice".into(),
                apps: vec!["bq1".into()],
                active: true,
                held_by_admin: false,
                expires_at,
                department: None,
                user_type: None,
                created_at: t0(),
                last_used_at: None,
                used: Default::default(),
                headers: Default::default(),
            },
            100,
        )
        .await
        .unwrap();
    World {
        engine: parts.engine,
        store,
        metrics: parts.metrics,
        clock,
        token: secret.token,
        token_id: secret.id,
        _dir: dir,
        _redis: redis,
    }
}

fn headers(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "authorization",
        HeaderValue::from_str(&format!("QB-USER-TOKEN {token}")).unwrap(),
    );
    h
}

async fn decide(engine: &Engine, token: &str) -> Result<(), AuthError> {
    let h = headers(token);
    let parts = RequestParts {
        method: &Method::GET,
        path: "/db/bq1",
        query: None,
        headers: &h,
        xml: None,
        client: None,
    };
    engine.decide(parts).await.map(|_| ()).map_err(|d| d.error)
}

async fn a_cache_hit_makes_no_store_call(redis: bool) {
    let w = world(redis, None).await;
    let before = w.metrics.store_requests_total();
    decide(&w.engine, &w.token).await.unwrap();
    let after_miss = w.metrics.store_requests_total();
    assert_eq!(
        after_miss - before,
        3,
        "a miss reads the token, its owner and the app"
    );
    for _ in 0..1000 {
        decide(&w.engine, &w.token).await.unwrap();
    }
    assert_eq!(
        w.metrics.store_requests_total(),
        after_miss,
        "1000 cache hits, no store call"
    );
}

#[tokio::test]
async fn a_cache_hit_makes_no_store_call_embedded() {
    a_cache_hit_makes_no_store_call(false).await;
}

#[tokio::test]
async fn a_cache_hit_makes_no_store_call_redis() {
    a_cache_hit_makes_no_store_call(true).await;
}

async fn concurrent_misses_share_one_read(redis: bool) {
    let w = world(redis, None).await;
    let before = w.metrics.store_requests_total();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (engine, token) = (w.engine.clone(), w.token.clone());
        tasks.spawn(async move { decide(&engine, &token).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    assert_eq!(
        w.metrics.store_requests_total() - before,
        3,
        "64 concurrent misses, one read per record"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_share_one_read_embedded() {
    concurrent_misses_share_one_read(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_share_one_read_redis() {
    concurrent_misses_share_one_read(true).await;
}

#[tokio::test]
async fn unknown_tokens_are_remembered_and_malformed_ones_never_looked_up() {
    let w = world(false, None).await;
    let unknown = format::generate(TokenKind::UserToken).unwrap().token;
    let before = w.metrics.store_requests_total();
    assert_eq!(
        decide(&w.engine, &unknown).await,
        Err(AuthError::InvalidToken)
    );
    assert_eq!(w.metrics.store_requests_total() - before, 1);
    for _ in 0..100 {
        assert_eq!(
            decide(&w.engine, &unknown).await,
            Err(AuthError::InvalidToken)
        );
        assert_eq!(
            decide(&w.engine, "tgu_short").await,
            Err(AuthError::InvalidToken)
        );
    }
    assert_eq!(
        w.metrics.store_requests_total() - before,
        1,
        "negative cache; malformed never reaches the store"
    );
    // A wrong secret on a known id is refused from the cached record.
    let wrong = format!("tgu_{}{}", w.token_id, "a".repeat(format::SECRET_LEN));
    assert_eq!(
        decide(&w.engine, &wrong).await,
        Err(AuthError::InvalidToken)
    );
}

async fn the_cache_ttl_follows_the_clock(redis: bool) {
    // Defaults: cache.ttl 30 s, cache.negative_ttl 5 s.
    let w = world(redis, None).await;
    decide(&w.engine, &w.token).await.unwrap();
    // Deactivated behind this replica's back: no invalidation is heard.
    let mut record = w.store.user_token(&w.token_id).await.unwrap().unwrap();
    record.active = false;
    w.store.update_user_token(&record).await.unwrap();
    let before = w.metrics.store_requests_total();
    w.clock.advance(Duration::seconds(29));
    assert_eq!(decide(&w.engine, &w.token).await, Ok(()), "fresh for 29 s");
    assert_eq!(w.metrics.store_requests_total(), before, "a hit");
    w.clock.advance(Duration::seconds(1));
    assert_eq!(
        decide(&w.engine, &w.token).await,
        Err(AuthError::TokenInactive),
        "at 30 s the record is read again"
    );
    let reread = w.metrics.store_requests_total();
    assert!(reread > before);
    assert_eq!(
        decide(&w.engine, &w.token).await,
        Err(AuthError::TokenInactive)
    );
    assert_eq!(w.metrics.store_requests_total(), reread, "and cached again");

    // An absence is fresh for negative_ttl only.
    let unknown = format::generate(TokenKind::UserToken).unwrap().token;
    let before = w.metrics.store_requests_total();
    decide(&w.engine, &unknown).await.unwrap_err();
    w.clock.advance(Duration::seconds(4));
    decide(&w.engine, &unknown).await.unwrap_err();
    assert_eq!(w.metrics.store_requests_total() - before, 1);
    w.clock.advance(Duration::seconds(1));
    decide(&w.engine, &unknown).await.unwrap_err();
    assert_eq!(w.metrics.store_requests_total() - before, 2);
}

#[tokio::test]
async fn the_cache_ttl_follows_the_clock_embedded() {
    the_cache_ttl_follows_the_clock(false).await;
}

#[tokio::test]
async fn the_cache_ttl_follows_the_clock_redis() {
    the_cache_ttl_follows_the_clock(true).await;
}

#[tokio::test]
async fn expiry_follows_the_clock_even_on_a_cache_hit() {
    let w = world(false, Some(t0() + Duration::hours(1))).await;
    decide(&w.engine, &w.token).await.unwrap();
    w.clock.advance(Duration::minutes(59));
    decide(&w.engine, &w.token).await.unwrap();
    w.clock.advance(Duration::minutes(1));
    assert_eq!(
        decide(&w.engine, &w.token).await,
        Err(AuthError::TokenExpired),
        "refused once expires_at has passed"
    );
}

#[tokio::test]
async fn an_admin_change_is_seen_at_once() {
    let w = world(false, None).await;
    decide(&w.engine, &w.token).await.unwrap();
    let mut token = w.store.user_token(&w.token_id).await.unwrap().unwrap();
    token.active = false;
    w.store.update_user_token(&token).await.unwrap();
    decide(&w.engine, &w.token)
        .await
        .expect("the cache still holds the active token until told");
    w.engine
        .invalidate(&Invalidation::UserToken(w.token_id.clone()))
        .await;
    assert_eq!(
        decide(&w.engine, &w.token).await,
        Err(AuthError::TokenInactive)
    );

    let mut user = w.store.user("alice").await.unwrap().unwrap();
    user.status = UserStatus::Disabled;
    token.active = true;
    w.store.update_user_token(&token).await.unwrap();
    w.store.update_user(&user).await.unwrap();
    w.engine
        .invalidate(&Invalidation::UserToken(w.token_id.clone()))
        .await;
    w.engine
        .invalidate(&Invalidation::User("alice".into()))
        .await;
    assert_eq!(
        decide(&w.engine, &w.token).await,
        Err(AuthError::UserDisabled)
    );
}

async fn a_burst_writes_nothing_until_the_flush(redis: bool) {
    let w = world(redis, None).await;
    decide(&w.engine, &w.token).await.unwrap();
    let before = w.metrics.store_requests_total();
    for _ in 0..500 {
        decide(&w.engine, &w.token).await.unwrap();
    }
    assert_eq!(
        w.metrics.store_requests_total(),
        before,
        "500 uses, no store write yet"
    );
    w.engine.usage().flush().await;
    assert_eq!(
        w.metrics.store_requests_total() - before,
        1,
        "one batched write"
    );
    let stored = w.store.user_token(&w.token_id).await.unwrap().unwrap();
    assert_eq!(
        stored.last_used_at,
        Some(t0()),
        "the flush landed, with the clock's time"
    );
    w.engine.usage().flush().await;
    assert_eq!(
        w.metrics.store_requests_total() - before,
        2,
        "the read above, then nothing new: no write"
    );
}

#[tokio::test]
async fn a_burst_writes_nothing_until_the_flush_embedded() {
    a_burst_writes_nothing_until_the_flush(false).await;
}

#[tokio::test]
async fn a_burst_writes_nothing_until_the_flush_redis() {
    a_burst_writes_nothing_until_the_flush(true).await;
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h
}

async fn decide_with(engine: &Engine, h: &HeaderMap) -> Result<(), AuthError> {
    let parts = RequestParts {
        method: &Method::GET,
        path: "/db/bq1",
        query: None,
        headers: h,
        xml: None,
        client: None,
    };
    engine.decide(parts).await.map(|_| ()).map_err(|d| d.error)
}

#[tokio::test]
async fn session_expiry_and_not_before_follow_the_clock_even_on_a_cache_hit() {
    let w = world(false, None).await;
    let sessions = SessionTokens::new(
        w.engine.clone(),
        w.store.clone(),
        std::time::Duration::from_secs(48 * 3600),
        std::time::Duration::from_secs(14 * 86_400),
        tokengate::jwt::Algorithm::HS256,
    );
    let alice = w.store.user("alice").await.unwrap().unwrap();
    let (token, session) = sessions.open(&alice, None, false).await.unwrap();
    assert_eq!(session.expires_at, t0() + Duration::hours(48));
    decide_with(&w.engine, &bearer(&token)).await.unwrap();
    let reads = w.metrics.store_requests_total();
    decide_with(&w.engine, &bearer(&token)).await.unwrap();
    assert_eq!(
        w.metrics.store_requests_total(),
        reads,
        "a cache hit: no store call, no signature"
    );
    w.clock.advance(Duration::hours(48) - Duration::seconds(1));
    decide_with(&w.engine, &bearer(&token)).await.unwrap();
    w.clock.advance(Duration::seconds(6));
    assert_eq!(
        decide_with(&w.engine, &bearer(&token)).await,
        Err(AuthError::TokenExpired),
        "past exp and the 5 s leeway"
    );

    // Not yet valid: a token whose nbf is ahead of the engine's clock.
    let now = w.clock.now().timestamp();
    let keys = w.engine.sessions().keys().unwrap();
    let (_, fresh) = sessions.open(&alice, None, false).await.unwrap();
    let early = keys
        .sign_claims(&serde_json::json!({
            "sub": "alice", "sid": fresh.id, "iat": now, "nbf": now + 3600, "exp": now + 7200,
            "iss": "tokengate", "aud": "tokengate", "jti": "early"
        }))
        .unwrap();
    assert_eq!(
        decide_with(&w.engine, &bearer(&early)).await,
        Err(AuthError::InvalidToken)
    );
    w.clock.advance(Duration::hours(1));
    decide_with(&w.engine, &bearer(&early))
        .await
        .expect("valid once its nbf has come");

    // Revocation is honoured on a cache hit.
    sessions.revoke(fresh).await.unwrap();
    assert_eq!(
        decide_with(&w.engine, &bearer(&early)).await,
        Err(AuthError::TokenRevoked)
    );
}

fn stale_lookups(metrics: &Metrics) -> u64 {
    metrics
        .render()
        .lines()
        .filter(|l| {
            l.starts_with("tokengate_cache_lookups_total") && l.contains("result=\"stale\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn a_cached_decision_serves_through_a_store_outage_for_stale_for() {
    // Defaults: cache.ttl 30 s, cache.stale_for 5 min.
    let mut w = world(true, None).await;
    decide(&w.engine, &w.token).await.unwrap();
    w._redis.as_mut().unwrap().kill();
    // A lost subscription empties the cache; the copies kept for stale serving stay.
    w.engine.cache().resync(true);
    assert_eq!(decide(&w.engine, &w.token).await, Ok(()), "served stale");
    assert!(stale_lookups(&w.metrics) >= 1);
    let unknown = format::generate(TokenKind::UserToken).unwrap().token;
    assert_eq!(
        decide(&w.engine, &unknown).await,
        Err(AuthError::AuthUnavailable),
        "nothing cached: never a guess"
    );
    w.clock.advance(Duration::seconds(30 + 5 * 60 - 1));
    assert_eq!(
        decide(&w.engine, &w.token).await,
        Ok(()),
        "within ttl + stale_for"
    );
    w.clock.advance(Duration::seconds(2));
    assert_eq!(
        decide(&w.engine, &w.token).await,
        Err(AuthError::AuthUnavailable),
        "past ttl + stale_for"
    );
}

#[tokio::test]
async fn a_change_or_a_resync_takes_the_stale_copy_too() {
    let mut w = world(true, None).await;
    decide(&w.engine, &w.token).await.unwrap();
    w._redis.as_mut().unwrap().kill();
    // A change announced by another replica: its stale copy goes as well.
    w.engine
        .apply_remote(&format!("elsewhere user_token {}", w.token_id))
        .await;
    assert_eq!(
        decide(&w.engine, &w.token).await,
        Err(AuthError::AuthUnavailable)
    );

    let mut w = world(true, None).await;
    decide(&w.engine, &w.token).await.unwrap();
    w._redis.as_mut().unwrap().kill();
    // The subscription is back (so changes were surely missed): nothing kept is trusted.
    w.engine.cache().resync(false);
    assert_eq!(
        decide(&w.engine, &w.token).await,
        Err(AuthError::AuthUnavailable)
    );
}

#[tokio::test]
async fn a_record_found_gone_is_never_served_stale() {
    let mut w = world(true, None).await;
    decide(&w.engine, &w.token).await.unwrap();
    // Deleted by a change this replica never heard of (its subscription was down).
    w.store.delete_user_token(&w.token_id).await.unwrap();
    w.engine.cache().resync(true);
    assert_eq!(
        decide(&w.engine, &w.token).await,
        Err(AuthError::InvalidToken)
    );
    // Then the store goes away: the old copy must not come back.
    w._redis.as_mut().unwrap().kill();
    w.engine.cache().resync(true);
    assert_eq!(
        decide(&w.engine, &w.token).await,
        Err(AuthError::AuthUnavailable)
    );
}
