#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The decision path, end to end but in-process: `Engine::decide` finds the credential,
//! verifies it, applies the route's scope, and (in the `_with_headers` bench) the proxy's header
//! edits on admission. Pingora's own I/O is not in it.
//!
//! Groups:
//! - `decision`: cache hits (no store call) per credential kind, two denials, and a batched
//!   run. The run fails if the store's request count moved during the group.
//! - `decision_miss_embedded`, `decision_miss_redis`: the same decide per kind when the
//!   credential's own record is not cached, so it is read from the store on every timed
//!   iteration. Before each iteration (criterion's `iter_batched` setup, with
//!   `BatchSize::PerIteration` so that it is one setup per timed decide and never in the timing)
//!   the record is dropped from the cache with `Cache::invalidate`, the call an admin change
//!   makes. The owner and the app stay cached, so a miss is one store read of the credential
//!   (user token, ticket, or a session's server-side record). A session's signature stays
//!   verified (the verified-token cache is keyed by the token, not dropped by an invalidation):
//!   a never-seen session token pays the JWT check on top (`benches/jwt.rs`). The run fails
//!   unless the store's request count grew by exactly one per timed decide. The loaded entry
//!   is also what stale serving (`cache.stale_for`, on by default) would read, as in
//!   production.
//! - After the groups, a plain timing loop per backend and kind: 10,000 rounds of (invalidate,
//!   timed miss, timed hit), printing p50/p90/p99/p99.9/max of each and the latency a miss
//!   adds at each percentile: miss pX minus the hit's median (what the same request costs
//!   when cached). Criterion reports means and medians only.
//!
//! Backends: an embedded (redb) store in a tempdir, and a `redis-server` this bench starts on a
//! free port with nothing on disk (stopped by its pid at the end; the Redis part is skipped
//! with a note when `redis-server` is not installed). The shared Redis on 6379 is never used.
//!
//! Setup (not timed): app `bq1`, user `alice`, one user token, one ticket and one session, the
//! engine from `server::build` with a 1h cache TTL. No client address is passed, so the failure
//! limiter stays out. The last-use recorder's flusher is not running: each miss loads a record
//! with a fresh use mark, so it queues one last-use note (the queue is bounded; past it the
//! note is dropped), as a miss does in production.
//!
//! Each iteration is one `rt.block_on(..)` on a current-thread runtime, so that overhead is part
//! of the figure; `user_token_cache_hit_batched` runs 1000 decides in one `block_on` and reports
//! throughput, to show the per-decision cost without it.
//!
//! Run: `cargo bench --bench decision -- --warm-up-time 1 --measurement-time 3`

use std::cell::Cell;
use std::hint::black_box;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use tokengate::cache::Invalidation;
use tokengate::clock::SystemClock;
use tokengate::config::Config;
use tokengate::credential::format::{self, TokenKind};
use tokengate::engine::{Engine, RequestParts};
use tokengate::error::AuthError;
use tokengate::headers::{self, IdentityHeaders};
use tokengate::metrics::Metrics;
use tokengate::model::{App, Ticket, User, UserStatus, UserToken};
use tokengate::server::{self, Parts};
use tokengate::store::SharedStore;
use tokengate::store::embedded::EmbeddedStore;
use tokengate::store::redis::RedisStore;
use tokengate::usage::UseMark;
use tokio::runtime::Runtime;

const PATH: &str = "/db/bq1";
const QUERY: Option<&str> = Some("a=API_DoQuery");

/// Where the fixture keeps its records.
enum Backend<'a> {
    Embedded,
    Redis(&'a RedisServer),
}

struct Fixture {
    rt: Runtime,
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    identity: IdentityHeaders,
    token: String,
    token_id: String,
    ticket: String,
    ticket_id: String,
    session: String,
    session_id: String,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// One request per credential kind, and the invalidation that makes it a miss.
    fn kinds(&self) -> [(&'static str, HeaderMap, Invalidation); 3] {
        [
            (
                "user_token",
                request_headers(Some(&format!("QB-USER-TOKEN {}", self.token))),
                Invalidation::UserToken(self.token_id.clone()),
            ),
            (
                "ticket",
                request_headers(Some(&format!("Bearer {}", self.ticket))),
                Invalidation::Ticket(self.ticket_id.clone()),
            ),
            (
                "session",
                request_headers(Some(&self.session)),
                Invalidation::Session(self.session_id.clone()),
            ),
        ]
    }

    /// Drops the credential's record from the cache (not announced: nobody else listens).
    fn invalidate(&self, what: &Invalidation) {
        self.rt
            .block_on(self.engine.cache().invalidate(what, false));
    }
}

fn fixture(backend: Backend<'_>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tokengate.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let (store, store_toml): (SharedStore, String) = match backend {
        Backend::Embedded => (
            Arc::new(EmbeddedStore::open(&db).unwrap()),
            format!("backend = \"embedded\"\npath = {:?}", db.to_str().unwrap()),
        ),
        Backend::Redis(server) => (
            Arc::new(RedisStore::new(&server.url()).unwrap()),
            format!("backend = \"redis\"\nurl = {:?}", server.url()),
        ),
    };
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
                headers: Default::default(),
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
                headers: Default::default(),
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
                    held_by_admin: false,
                    expires_at: None,
                    department: None,
                    user_type: None,
                    created_at: now,
                    last_used_at: None,
                    used: UseMark::default(),
                    headers: Default::default(),
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
                headers: Default::default(),
            })
            .await
            .unwrap();
    });

    let session_key = tokengate::jwt::SigningKey::generate(tokengate::jwt::Algorithm::EdDSA)
        .unwrap()
        .to_pem()
        .unwrap();
    let toml = format!(
        "[store]\n{store_toml}\n\n[cache]\nttl = \"1h\"\n\n\
         [sessions]\nkey = '''\n{session_key}'''\n\n\
         [[routes]]\npath = \"/db/{{app}}\"\n"
    );
    let config = Config::from_toml(&toml, Vec::new()).unwrap();
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
    let (session, session_record) = rt.block_on(async {
        let alice = store_handle.user("alice").await.unwrap().unwrap();
        sessions.open(&alice, None, false).await.unwrap()
    });

    Fixture {
        rt,
        engine,
        metrics,
        identity,
        token: secret.token,
        token_id: secret.id,
        ticket: ticket.token,
        ticket_id: ticket.id,
        session,
        session_id: session_record.id,
        _dir: dir,
    }
}

/// A `redis-server` of the bench's own on a free port, keeping nothing on disk; stopped by its
/// pid when dropped.
struct RedisServer {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// `None` (with a note) when `redis-server` can't be started.
    fn start() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let spawned = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                println!(
                    "note: can't start redis-server ({e}): the Redis miss benches are skipped"
                );
                return None;
            }
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                println!(
                    "note: redis-server exited ({status}): the Redis miss benches are skipped"
                );
                return None;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                println!("note: redis-server did not listen: the Redis miss benches are skipped");
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Some(Self {
            port,
            child,
            _dir: dir,
        })
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

fn bench_hits(c: &mut Criterion, f: &Fixture) {
    let Fixture {
        rt,
        engine,
        metrics,
        identity,
        token,
        ticket,
        session,
        ..
    } = f;

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

/// Each timed decide misses the credential's record and reads it from the store.
fn bench_misses(c: &mut Criterion, backend: &str, f: &Fixture) {
    let Fixture {
        rt,
        engine,
        metrics,
        ..
    } = f;
    let kinds = f.kinds();
    for (kind, headers, what) in &kinds {
        // Every kind admits (and so loads owner and app) before anything is timed.
        let admission = rt.block_on(engine.decide(parts(headers))).unwrap();
        assert_eq!(admission.identity.unwrap().method().as_str(), *kind);
        f.invalidate(what);
        let before = metrics.store_requests_total();
        assert!(rt.block_on(engine.decide(parts(headers))).is_ok());
        assert_eq!(
            metrics.store_requests_total(),
            before + 1,
            "{kind}: a miss should be exactly one store read"
        );
    }

    let mut g = c.benchmark_group(format!("decision_miss_{backend}"));
    for (kind, headers, what) in &kinds {
        let timed = Cell::new(0u64);
        let before = metrics.store_requests_total();
        g.bench_function(*kind, |b| {
            // `PerIteration`: one invalidation, then one timed decide. (Larger batches run
            // every setup first, so only the first decide of a batch would miss.)
            b.iter_batched(
                || f.invalidate(what),
                |()| {
                    timed.set(timed.get() + 1);
                    rt.block_on(engine.decide(black_box(parts(headers))))
                },
                BatchSize::PerIteration,
            );
        });
        assert_eq!(
            metrics.store_requests_total() - before,
            timed.get(),
            "{backend} {kind}: the store was not read exactly once per timed decide"
        );
    }
    g.finish();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Rounds of (invalidate, timed miss, timed hit): the tail criterion doesn't show.
fn miss_tail(backend: &str, f: &Fixture, rounds: usize) {
    let Fixture {
        rt,
        engine,
        metrics,
        ..
    } = f;
    const PS: [(&str, f64); 5] = [
        ("p50", 0.50),
        ("p90", 0.90),
        ("p99", 0.99),
        ("p99.9", 0.999),
        ("max", 1.0),
    ];
    println!("\nmiss tail, {backend}, {rounds} misses per kind (µs):");
    println!(
        "{:<12} {:<6} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "kind", "", "p50", "p90", "p99", "p99.9", "max"
    );
    for (kind, headers, what) in &f.kinds() {
        let mut miss = Vec::with_capacity(rounds);
        let mut hit = Vec::with_capacity(rounds);
        let before = metrics.store_requests_total();
        for _ in 0..rounds {
            f.invalidate(what);
            let started = Instant::now();
            let out = rt.block_on(engine.decide(black_box(parts(headers))));
            miss.push(started.elapsed());
            assert!(out.is_ok());
            let started = Instant::now();
            let out = rt.block_on(engine.decide(black_box(parts(headers))));
            hit.push(started.elapsed());
            assert!(out.is_ok());
        }
        assert_eq!(
            metrics.store_requests_total() - before,
            rounds as u64,
            "{backend} {kind}: not one store read per miss"
        );
        miss.sort_unstable();
        hit.sort_unstable();
        let row = |label: &str, values: &dyn Fn(f64) -> f64| {
            let cells: Vec<String> = PS
                .iter()
                .map(|(_, p)| format!("{:>9.1}", values(*p)))
                .collect();
            println!("{kind:<12} {label:<6} {}", cells.join(" "));
        };
        row("miss", &|p| micros(percentile(&miss, p)));
        row("hit", &|p| micros(percentile(&hit, p)));
        let hit_p50 = micros(percentile(&hit, 0.5));
        row("added", &|p| micros(percentile(&miss, p)) - hit_p50);
    }
}

fn bench_decision(c: &mut Criterion) {
    // `cargo bench -- --test` (or `cargo test --benches`) only checks that everything runs.
    let quick = std::env::args().any(|a| a == "--test");
    let rounds = if quick { 100 } else { 10_000 };

    let embedded = fixture(Backend::Embedded);
    bench_hits(c, &embedded);
    bench_misses(c, "embedded", &embedded);

    let redis = RedisServer::start();
    let redis_fixture = redis.as_ref().map(|server| fixture(Backend::Redis(server)));
    if let Some(f) = &redis_fixture {
        bench_misses(c, "redis", f);
    }

    miss_tail("embedded", &embedded, rounds);
    if let Some(f) = &redis_fixture {
        miss_tail("redis", f, rounds);
    }
    // The engine (and its Redis connection) goes before the server it talks to.
    drop(redis_fixture);
    drop(redis);
}

criterion_group!(benches, bench_decision);
criterion_main!(benches);
