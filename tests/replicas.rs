//! Many replicas and bad days, with real processes: two tokengate instances sharing one real
//! `redis-server`; a change made on one refused on the other (over Redis pub/sub, timed);
//! Redis killed and restarted in the middle of traffic; the subscription cut; a flood of
//! made-up tokens counted in Redis's own command statistics; SIGTERM draining a request in
//! flight.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{Backend, RedisServer, Tokengate, Upstream, http};
use serde_json::{Value, json};
use tokengate::credential::format::{self, TokenKind};

const ROUTES: &str = "[[routes]]\npath = \"/db/{app}\"\n";
/// A cache that never expires within a test: a replica that refuses a change it had cached
/// heard of it over pub/sub.
/// (Refusals count as failed credentials: no limit here, where they are the point.)
const LONG_CACHE: &str =
    "[cache]\nttl = \"1h\"\nnegative_ttl = \"1h\"\n[limits]\nfailures_per_minute = 0\n";
const PASSWORD: &str = "a long enough password";

fn qb(token: &str) -> String {
    format!("QB-USER-TOKEN {token}")
}

fn seed(tg: &Tokengate) {
    for app in ["bq1", "bq2"] {
        let r = tg.admin("POST", "/v1/apps", Some(json!({"id": app, "name": app})));
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let r = tg.admin(
        "POST",
        "/v1/users",
        Some(
            json!({"id": "al", "email": "al@x.com", "name": "Al", "apps": ["bq1", "bq2"],
                    "password": PASSWORD}),
        ),
    );
    assert_eq!(r.status, 201, "{}", r.text());
}

/// A new user token of `al` for both apps: (secret, id).
fn token(tg: &Tokengate) -> (String, String) {
    tg.user_token("al", &["bq1", "bq2"])
}

fn session(tg: &Tokengate) -> (String, String) {
    let body = json!({"username": "al", "password": PASSWORD}).to_string();
    let r = http(
        tg.port,
        "POST",
        "/_auth/login",
        &[("content-type", "application/json")],
        Some(body.as_bytes()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    (
        format!("Bearer {}", v["token"].as_str().unwrap()),
        v["session_id"].as_str().unwrap().to_owned(),
    )
}

fn status(tg: &Tokengate, auth: &str) -> u16 {
    tg.get("/db/bq1", &[("authorization", auth)]).status
}

/// How long after `since` the replica first refuses `auth` (bounded).
fn refused_after(tg: &Tokengate, auth: &str, since: Instant) -> Duration {
    let deadline = since + Duration::from_secs(5);
    loop {
        if status(tg, auth) != 200 {
            return since.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "still admitted 5 s after the change"
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[test]
fn a_change_on_one_replica_is_refused_by_the_other_at_once() {
    let redis = RedisServer::start();
    let up = Upstream::start();
    let backend = Backend::Redis(redis.url());
    let a = Tokengate::start(&backend, &up.url(), ROUTES, LONG_CACHE);
    let b = Tokengate::start(&backend, &up.url(), ROUTES, LONG_CACHE);
    seed(&a);
    let a = &a;

    const ROUNDS: usize = 200;
    let mut times = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        // Every kind of change in turn, made on A, after B has cached the credential.
        let (auth, change): (String, Box<dyn Fn() + '_>) = match round % 5 {
            0 => {
                let (secret, id) = token(a);
                let path = format!("/v1/tokens/{id}");
                (
                    qb(&secret),
                    Box::new(move || {
                        let r = a.admin("PATCH", &path, Some(json!({"active": false})));
                        assert_eq!(r.status, 200, "{}", r.text());
                    }),
                )
            }
            1 => {
                let (secret, id) = token(a);
                let path = format!("/v1/tokens/{id}");
                (
                    qb(&secret),
                    Box::new(move || assert_eq!(a.admin("DELETE", &path, None).status, 204)),
                )
            }
            2 => {
                let (secret, id) = token(a);
                let path = format!("/v1/tokens/{id}");
                (
                    qb(&secret),
                    Box::new(move || {
                        let r = a.admin("PATCH", &path, Some(json!({"apps": ["bq2"]})));
                        assert_eq!(r.status, 200, "app unassigned: {}", r.text());
                    }),
                )
            }
            3 => {
                let (secret, _) = token(a);
                (
                    qb(&secret),
                    Box::new(move || {
                        let r =
                            a.admin("PATCH", "/v1/users/al", Some(json!({"status": "disabled"})));
                        assert_eq!(r.status, 200, "{}", r.text());
                    }),
                )
            }
            _ => {
                let (auth, sid) = session(a);
                let path = format!("/v1/sessions/{sid}");
                (
                    auth,
                    Box::new(move || assert_eq!(a.admin("DELETE", &path, None).status, 204)),
                )
            }
        };
        assert_eq!(status(&b, &auth), 200, "round {round}: cached on B");
        assert_eq!(status(&b, &auth), 200);
        change();
        // The admin API has acknowledged: from here, B must refuse.
        times.push(refused_after(&b, &auth, Instant::now()));
        if round % 5 == 3 {
            a.admin("PATCH", "/v1/users/al", Some(json!({"status": "active"})));
        }
        // Keep under the token limit.
        let r = a.admin("GET", "/v1/tokens?user=al", None);
        let ids: Vec<Value> = r.json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].clone())
            .collect();
        if ids.len() > 50 {
            a.admin("POST", "/v1/tokens/delete", Some(json!({ "ids": ids })));
        }
    }
    times.sort();
    let (p50, p99, max) = (
        percentile(&times, 50.0),
        percentile(&times, 99.0),
        times[times.len() - 1],
    );
    println!(
        "propagation over {ROUNDS} changes (admin ack on A -> first refusal on B): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    assert!(
        b.metric("tokengate_invalidations_total", &["source=\"remote\""]) >= ROUNDS as f64,
        "B heard A's changes"
    );
}

/// Requests with `auth` to both replicas, over and over, until stopped: the statuses seen.
struct Traffic {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<Vec<u16>>>,
}

impl Traffic {
    fn start(ports: &[u16], auth: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = ports
            .iter()
            .map(|&port| {
                let (stop, auth) = (stop.clone(), auth.to_owned());
                thread::spawn(move || {
                    let mut seen = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let r = http(port, "GET", "/db/bq1", &[("authorization", &auth)], None);
                        seen.push(r.status);
                    }
                    seen
                })
            })
            .collect();
        Self { stop, threads }
    }

    fn stop(self) -> Vec<u16> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    }
}

fn subscribers(redis: &RedisServer) -> i64 {
    let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg("tg:invalidate")
        .query(&mut redis.connection())
        .unwrap();
    counts.first().map_or(0, |c| c.1)
}

fn wait_for_subscribers(redis: &RedisServer, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while subscribers(redis) != n {
        assert!(Instant::now() < deadline, "{n} replicas never resubscribed");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn replicas_ride_out_a_redis_restart_and_hear_each_other_again() {
    let mut redis = RedisServer::start_persistent();
    let up = Upstream::start();
    let backend = Backend::Redis(redis.url());
    let a = Tokengate::start(&backend, &up.url(), ROUTES, LONG_CACHE);
    let b = Tokengate::start(&backend, &up.url(), ROUTES, LONG_CACHE);
    seed(&a);
    let (cached, cached_id) = token(&a);
    let (uncached, _) = token(&a);
    let cached = qb(&cached);
    assert_eq!((status(&a, &cached), status(&b, &cached)), (200, 200));
    wait_for_subscribers(&redis, 2);

    let traffic = Traffic::start(&[a.port, b.port], &cached);
    redis.kill();
    // Anything not cached: 503 with Retry-After, never a guess; admin writes: a clear 503.
    let r = b.get("/db/bq1", &[("authorization", &qb(&uncached))]);
    assert_eq!((r.status, r.error().as_str()), (503, "auth_unavailable"));
    assert!(r.header("retry-after").is_some());
    let r = a.admin("POST", "/v1/apps", Some(json!({"id": "bq3", "name": "C"})));
    assert_eq!((r.status, r.error().as_str()), (503, "store_unavailable"));
    assert_eq!(a.metric("tokengate_store_up", &[]), 0.0);
    assert_eq!(b.admin_raw("GET", "/readyz", None, None).status, 200);

    redis.restart();
    // Every replica reconnects by itself: what wasn't cached is admitted again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&b, &qb(&uncached)) != 200 {
        assert!(
            Instant::now() < deadline,
            "B never reconnected:\n{}",
            b.log()
        );
        thread::sleep(Duration::from_millis(10));
    }
    let seen = traffic.stop();
    assert!(seen.len() > 10, "traffic flowed: {} requests", seen.len());
    assert!(
        seen.iter().all(|&s| s == 200),
        "a cached decision served through the outage: {:?}",
        seen.iter()
            .filter(|&&s| s != 200)
            .fold(std::collections::BTreeMap::new(), |mut m, s| {
                *m.entry(*s).or_insert(0) += 1;
                m
            })
    );
    assert!(b.metric("tokengate_cache_lookups_total", &["result=\"stale\""]) > 0.0);
    assert_eq!(a.metric("tokengate_store_up", &[]), 1.0);

    // The subscriptions are back, and a change on A reaches B's cache again.
    wait_for_subscribers(&redis, 2);
    assert_eq!(status(&b, &cached), 200);
    let r = a.admin(
        "PATCH",
        &format!("/v1/tokens/{cached_id}"),
        Some(json!({"active": false})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    refused_after(&b, &cached, Instant::now());
}

#[test]
fn a_lost_subscription_empties_the_cache() {
    let redis = RedisServer::start();
    let tg = Tokengate::start(&Backend::Redis(redis.url()), "echo", ROUTES, LONG_CACHE);
    seed(&tg);
    let (secret, _) = token(&tg);
    assert_eq!(status(&tg, &qb(&secret)), 200);
    wait_for_subscribers(&redis, 1);
    let reads =
        |tg: &Tokengate| tg.metric("tokengate_store_requests_total", &["op=\"get_user_token\""]);
    let before = reads(&tg);
    assert_eq!(status(&tg, &qb(&secret)), 200);
    assert_eq!(reads(&tg), before, "a hit");
    let resyncs = tg.metric("tokengate_invalidations_total", &["source=\"resync\""]);

    // Cut the subscription, not the store: changes may have been missed meanwhile.
    let _: Value = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut redis.connection())
        .map(|n: i64| json!(n))
        .unwrap();
    wait_for_subscribers(&redis, 1);
    assert!(tg.metric("tokengate_invalidations_total", &["source=\"resync\""]) >= resyncs + 2.0);
    assert_eq!(status(&tg, &qb(&secret)), 200);
    assert_eq!(reads(&tg), before + 1.0, "read again from the store");
}

fn reads(redis: &RedisServer) -> u64 {
    let calls = redis.command_calls();
    ["get", "mget"]
        .iter()
        .map(|c| calls.get(*c).copied().unwrap_or(0))
        .sum()
}

#[test]
fn a_flood_of_made_up_tokens_costs_the_store_a_bounded_number_of_reads() {
    let redis = RedisServer::start();
    let tg = Tokengate::start(
        &Backend::Redis(redis.url()),
        "echo",
        ROUTES,
        "[limits]\nfailures_per_minute = 20\n",
    );
    seed(&tg);
    let (secret, _) = token(&tg);

    // 64 concurrent requests with one token nobody has used: one read of each record.
    let before = reads(&redis);
    let port = tg.port;
    let auth = qb(&secret);
    let threads: Vec<_> = (0..64)
        .map(|_| {
            let auth = auth.clone();
            thread::spawn(move || {
                http(port, "GET", "/db/bq1", &[("authorization", &auth)], None).status
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    let concurrent = reads(&redis) - before;
    println!("64 concurrent requests, one uncached token: {concurrent} store reads");
    assert!(
        concurrent <= 4,
        "the token (and its last use), its owner, its app: {concurrent}"
    );

    // A flood of made-up tokens from one client: past the failure limit, they are refused
    // without a read.
    let before = reads(&redis);
    for _ in 0..1000 {
        let made_up = format::generate(TokenKind::UserToken).unwrap().token;
        let r = tg.get("/db/bq1", &[("authorization", &qb(&made_up))]);
        assert!(matches!(r.status, 401 | 429), "{}", r.status);
    }
    let flood = reads(&redis) - before;
    println!("1000 made-up tokens from one client: {flood} store reads");
    assert!(
        flood <= 2 * 20 + 1,
        "failures_per_minute reads to reach the limit, as many more past it: {flood}"
    );
    // The genuine token, cached, still passes.
    assert_eq!(status(&tg, &auth), 200);
}

#[test]
fn sigterm_drains_a_request_in_flight() {
    let up = Upstream::start();
    let mut tg = Tokengate::start(&Backend::Embedded, &up.url(), ROUTES, "");
    seed(&tg);
    let (secret, _) = token(&tg);
    up.hold();
    let port = tg.port;
    let auth = qb(&secret);
    let in_flight = thread::spawn(move || {
        http(port, "GET", "/db/bq1", &[("authorization", &auth)], None).status
    });
    up.wait_for_count(1);
    tg.terminate();
    // Shutting down: no new connections are taken, while the one in flight waits.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        thread::sleep(Duration::from_millis(5));
    }
    if in_flight.is_finished() {
        panic!("finished early: {:?}\n{}", in_flight.join(), tg.log());
    }
    up.release();
    assert_eq!(
        in_flight.join().unwrap(),
        200,
        "the request in flight finished"
    );
    let status = tg.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "exited cleanly: {status}");
}
