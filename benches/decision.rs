#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The decision path on a cache hit, end to end but in-process: `Engine::decide` finds the
//! credential, verifies it (cache hit: no store call), applies the route's scope, and (in the
//! `_with_headers` bench) the proxy's header edits on admission. Pingora's own I/O is not in it.
//!
//! Setup (not timed): an embedded store in a tempdir with app `bq1`, user `alice` and one user
//! token, the engine from `server::build`, and one warm-up decide that fills the cache. The cache
//! TTL is set to 1h so every timed decide is a hit: the run fails if the store's request count
//! moved between the warm-up and the end of the group. No client address is passed, so the
//! failure limiter stays out of the deny benches.
//!
//! Each iteration is one `rt.block_on(..)` on a current-thread runtime, so that overhead is part
//! of the figure; `user_token_cache_hit_batched` runs 1000 decides in one `block_on` and reports
//! throughput, to show the per-decision cost without it.
//!
//! Run: `cargo bench --bench decision -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::Arc;

use chrono::Utc;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use tokengate::clock::SystemClock;
use tokengate::config::Config;
use tokengate::credential::format::{self, TokenKind};
use tokengate::engine::{Engine, RequestParts};
use tokengate::error::AuthError;
use tokengate::headers::{self, IdentityHeaders};
use tokengate::metrics::Metrics;
use tokengate::model::{App, Ticket, User, UserStatus, UserToken};
use tokengate::server::{self, Parts};
use tokengate::store::embedded::EmbeddedStore;
use tokengate::store::{SharedStore, Store};
use tokengate::usage::UseMark;
use tokio::runtime::Runtime;

const PATH: &str = "/db/bq1";
const QUERY: Option<&str> = Some("a=API_DoQuery");

struct Fixture {
    rt: Runtime,
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    identity: IdentityHeaders,
    token: String,
    ticket: String,
    session: String,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tokengate.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let store = EmbeddedStore::open(&db).unwrap();
    let secret = format::generate(TokenKind::UserToken).unwrap();
    let ticket = format::generate(TokenKind::Ticket).unwrap();
    let now = Utc::now();
    rt.block_on(async {
        store
            .insert_app(&App {
                id: "bq1".into(),
                name: "Bench app".into(),
                tenant: None,
                require_app_token: false,
                created_at: now,
            })
            .await
            .unwrap();
        store
            .insert_user(&User {
                id: "alice".into(),
                email: "alice@example.com".into(),
                name: "Alice".into(),
                department: Some("finance".into()),
                user_type: Some("staff".into()),
                tenant: None,
                status: UserStatus::Active,
                apps: vec!["bq1".into()],
                password_hash: None,
                created_at: now,
            })
            .await
            .unwrap();
        store
            .insert_user_token(
                &UserToken {
                    id: secret.id.clone(),
                    secret_hash: secret.hash,
                    name: "bench".into(),
                    description: String::new(),
                    user_id: "alice".into(),
                    apps: vec!["bq1".into()],
                    active: true,
                    expires_at: None,
                    department: None,
                    user_type: None,
                    created_at: now,
                    last_used_at: None,
                    used: UseMark::default(),
                },
                100,
            )
            .await
            .unwrap();
        store
            .insert_ticket(&Ticket {
                id: ticket.id.clone(),
                secret_hash: ticket.hash,
                user_id: "alice".into(),
                issued_at: now,
                expires_at: now + chrono::Duration::hours(12),
                last_active_at: None,
                revoked_at: None,
                used: UseMark::default(),
            })
            .await
            .unwrap();
    });

    let session_key = tokengate::jwt::SigningKey::generate(tokengate::jwt::Algorithm::EdDSA)
        .unwrap()
        .to_pem()
        .unwrap();
    let toml = format!(
        "[store]\nbackend = \"embedded\"\npath = {:?}\n\n[cache]\nttl = \"1h\"\n\n\
         [sessions]\nkey = '''\n{session_key}'''\n\n\
         [[routes]]\npath = \"/db/{{app}}\"\n",
        db.to_str().unwrap()
    );
    let config = Config::from_toml(&toml, Vec::new()).unwrap();
    let store: SharedStore = Arc::new(store);
    let Parts {
        engine,
        metrics,
        store: store_handle,
    } = server::build(&config, store, Arc::new(SystemClock)).unwrap();
    let identity = IdentityHeaders::new(&config.header_prefix).unwrap();
    let sessions = tokengate::sessions::SessionTokens::new(
        engine.clone(),
        store_handle.clone(),
        config.session_ttl,
        config.remember_me_ttl,
        config.session_algorithm,
    );
    let session = rt.block_on(async {
        let alice = store_handle.user("alice").await.unwrap().unwrap();
        sessions.open(&alice, None, false).await.unwrap().0
    });

    Fixture {
        rt,
        engine,
        metrics,
        identity,
        token: secret.token,
        ticket: ticket.token,
        session,
        _dir: dir,
    }
}

fn request_headers(authorization: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("tokengate.example"));
    h.insert("accept", HeaderValue::from_static("*/*"));
    h.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    if let Some(v) = authorization {
        h.insert("authorization", HeaderValue::from_str(v).unwrap());
    }
    h
}

fn parts(headers: &HeaderMap) -> RequestParts<'_> {
    RequestParts {
        method: &Method::GET,
        path: PATH,
        query: QUERY,
        headers,
        xml: None,
        // No client address: the failure limiter is not consulted, so the deny benches keep
        // measuring their own path instead of turning into 429s.
        client: None,
    }
}

fn bench_decision(c: &mut Criterion) {
    let f = fixture();
    let Fixture {
        rt,
        engine,
        metrics,
        identity,
        token,
        ticket,
        session,
        ..
    } = &f;

    let ok = request_headers(Some(&format!("QB-USER-TOKEN {token}")));
    let with_ticket = request_headers(Some(&format!("Bearer {ticket}")));
    let with_session = request_headers(Some(session));
    let missing = request_headers(None);
    let malformed = request_headers(Some("QB-USER-TOKEN garbage"));

    // Warm-up: the first decide loads token, user and app into the cache.
    let admission = rt.block_on(engine.decide(parts(&ok))).unwrap();
    let who = admission.identity.as_ref().unwrap();
    assert_eq!(who.user.id, "alice");
    assert_eq!(who.app_id(), Some("bq1"));
    assert!(admission.credentials.authorization);
    let by_session = rt.block_on(engine.decide(parts(&with_session))).unwrap();
    assert_eq!(by_session.identity.unwrap().method().as_str(), "session");
    let by_ticket = rt.block_on(engine.decide(parts(&with_ticket))).unwrap();
    assert_eq!(by_ticket.identity.unwrap().method().as_str(), "ticket");
    let store_calls = metrics.store_requests_total();
    // From here on every user-token decide must be a cache hit.
    assert!(rt.block_on(engine.decide(parts(&ok))).is_ok());
    assert_eq!(metrics.store_requests_total(), store_calls);

    let denial = rt.block_on(engine.decide(parts(&missing))).unwrap_err();
    assert_eq!(denial.error, AuthError::MissingCredentials);
    let denial = rt.block_on(engine.decide(parts(&malformed))).unwrap_err();
    assert_eq!(denial.error, AuthError::InvalidToken);
    assert_eq!(metrics.store_requests_total(), store_calls);

    // The header edits, checked once outside the loop.
    let mut edited = ok.clone();
    identity.strip_forged(&mut edited);
    headers::strip_credentials(&mut edited, admission.credentials, engine.names());
    identity.set(&mut edited, who);
    assert!(edited.get("authorization").is_none());
    assert_eq!(edited.get("x-auth-user-id").unwrap(), "alice");
    assert_eq!(edited.get("x-auth-app-id").unwrap(), "bq1");
    assert_eq!(edited.get("x-auth-department").unwrap(), "finance");

    let mut g = c.benchmark_group("decision");

    g.bench_function("user_token_cache_hit", |b| {
        b.iter(|| black_box(rt.block_on(engine.decide(black_box(parts(&ok))))));
    });

    g.bench_function("ticket_cache_hit", |b| {
        b.iter(|| black_box(rt.block_on(engine.decide(black_box(parts(&with_ticket))))));
    });

    g.bench_function("session_cache_hit", |b| {
        b.iter(|| black_box(rt.block_on(engine.decide(black_box(parts(&with_session))))));
    });

    g.bench_function("user_token_cache_hit_with_headers", |b| {
        // The clone is made (and the edited map dropped) outside the timing: the proxy edits
        // the request it already holds.
        b.iter_batched(
            || ok.clone(),
            |mut map| {
                let admission = rt.block_on(engine.decide(black_box(parts(&ok)))).unwrap();
                identity.strip_forged(&mut map);
                headers::strip_credentials(&mut map, admission.credentials, engine.names());
                if let Some(who) = &admission.identity {
                    identity.set(&mut map, who);
                }
                black_box(admission);
                map
            },
            BatchSize::SmallInput,
        );
    });

    g.bench_function("deny_missing_credentials", |b| {
        b.iter(|| black_box(rt.block_on(engine.decide(black_box(parts(&missing))))));
    });

    g.bench_function("deny_invalid_token_malformed", |b| {
        b.iter(|| black_box(rt.block_on(engine.decide(black_box(parts(&malformed))))));
    });

    g.throughput(Throughput::Elements(1000));
    g.bench_function("user_token_cache_hit_batched", |b| {
        b.iter(|| {
            rt.block_on(async {
                for _ in 0..1000 {
                    let _ = black_box(engine.decide(black_box(parts(&ok))).await);
                }
            });
        });
    });

    g.finish();

    // Every user-token decide above was served from the cache.
    assert_eq!(
        metrics.store_requests_total(),
        store_calls,
        "a timed decide reached the store: the figures are not cache hits"
    );
}

criterion_group!(benches, bench_decision);
criterion_main!(benches);
