//! The Redis store on a Redis Cluster and through Sentinel, with real processes on free ports:
//! the store conformance suite on each; every key in one hash slot; an unreachable cluster or
//! sentinel reported as unavailable; the real binary on a cluster (a user token admitted, then
//! refused on another replica after an admin deactivates it, over pub/sub across nodes); and a
//! sentinel failover followed by the store and by the invalidation subscription.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/conformance.rs"]
mod conformance;

use std::time::{Duration, Instant};

use chrono::DateTime;
use common::{Backend, RedisCluster, RedisSentinel, Tokengate, Upstream, free_port, poll};
use conformance::conformance;
use futures_util::StreamExt;
use serde_json::json;
use tokengate::model::{User, UserStatus};
use tokengate::store::redis::{INVALIDATION_CHANNEL, RedisStore};
use tokengate::store::{Store, StoreError};

/// The key prefix of the store (`src/store/redis.rs`): its hash tag is the one slot.
const PREFIX: &str = "tg:{tg}:";

fn user(id: &str) -> User {
    User {
        id: id.to_owned(),
        email: format!("{id}@example.com"),
        name: format!("User {id}"),
        department: None,
        user_type: None,
        tenant: None,
        status: UserStatus::Active,
        apps: Vec::new(),
        password_hash: None,
        created_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        headers: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_store_conforms_with_every_key_in_one_slot() {
    let cluster = RedisCluster::start();
    let store = RedisStore::new(&cluster.url()).unwrap();
    assert_eq!(store.backend(), "redis");
    conformance(&store).await;

    // Everything the suite left behind sits on the one node serving the slot.
    let counts = cluster.key_counts();
    let holder = cluster.node_of(PREFIX);
    assert!(counts[holder] > 0, "keys per node: {counts:?}");
    for (i, n) in counts.iter().enumerate() {
        if i != holder {
            assert_eq!(*n, 0, "keys outside the one slot: {counts:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sentinel_store_conforms() {
    let sentinel = RedisSentinel::start();
    let store = RedisStore::new(&sentinel.url()).unwrap();
    conformance(&store).await;
    // It wrote to the master the sentinel names.
    let keys: i64 = sentinel.master.query(&mut redis::cmd("DBSIZE")).unwrap();
    assert!(keys > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn sentinels_that_want_a_password_get_store_sentinel_password() {
    let sentinel = RedisSentinel::start();
    // From now on the sentinel wants a password of every client (`requirepass`, as ACL).
    let ok: String = sentinel
        .sentinel
        .query(
            redis::cmd("ACL")
                .arg("SETUSER")
                .arg("default")
                .arg("resetpass")
                .arg(">sentinel-secret"),
        )
        .unwrap();
    assert_eq!(ok, "OK");
    let without = RedisStore::new(&sentinel.url()).unwrap();
    let refused = without.ping().await;
    assert!(refused.is_err(), "{refused:?}");
    let wrong = RedisStore::with_options(&sentinel.url(), None, Some("not-it")).unwrap();
    assert!(wrong.ping().await.is_err());
    let with = RedisStore::with_options(&sentinel.url(), None, Some("sentinel-secret")).unwrap();
    conformance(&with).await;
    // It wrote to the master the sentinel named (the master itself wants no password).
    let keys: i64 = sentinel.master.query(&mut redis::cmd("DBSIZE")).unwrap();
    assert!(keys > 0);
}

/// `ping` and a read against nothing at all: `Unavailable`, within a bound.
async fn unavailable(url: &str) {
    let store = RedisStore::new(url).unwrap();
    let bound = Duration::from_secs(10);
    let started = Instant::now();
    for what in ["ping", "user"] {
        let r = tokio::time::timeout(bound, async {
            match what {
                "ping" => store.ping().await,
                _ => store.user("x").await.map(|_| ()),
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what} against {url} did not return within {bound:?}"));
        assert!(
            matches!(r, Err(StoreError::Unavailable(_))),
            "{what} against {url}: expected Err(Unavailable), got {r:?}"
        );
    }
    assert!(started.elapsed() < bound, "took {:?}", started.elapsed());
}

#[tokio::test]
async fn an_unreachable_cluster_or_sentinel_is_unavailable() {
    let (a, b) = (free_port(), free_port());
    unavailable(&format!("redis+cluster://127.0.0.1:{a},127.0.0.1:{b}")).await;
    unavailable(&format!(
        "redis+sentinel://127.0.0.1:{a},127.0.0.1:{b}/mymaster"
    ))
    .await;
}

const ROUTES: &str = "[[routes]]\npath = \"/db/{app}\"\n";
/// A cache that outlives the test: a replica that refuses what it had cached heard of the change.
const LONG_CACHE: &str =
    "[cache]\nttl = \"1h\"\nnegative_ttl = \"1h\"\n[limits]\nfailures_per_minute = 0\n";

#[test]
fn a_user_token_on_a_cluster_is_admitted_and_refused_everywhere_once_deactivated() {
    let cluster = RedisCluster::start();
    // PUBLISH goes to the node serving the slot; the replicas subscribe on the first seed that
    // answers. Seeds that start elsewhere make the message cross the cluster bus.
    let publisher = cluster.node_of(PREFIX);
    let url = cluster.url_from(publisher + 1);
    let up = Upstream::start();
    let backend = Backend::Redis(url);
    let a = Tokengate::start(&backend, &up.url(), ROUTES, LONG_CACHE);
    let b = Tokengate::start(&backend, &up.url(), ROUTES, LONG_CACHE);
    // Both replicas listen on a node that does not serve the slot.
    let subscriber = &cluster.nodes[(publisher + 1) % cluster.nodes.len()];
    poll(Duration::from_secs(10), "both replicas subscribed", || {
        let (_, n): (String, i64) = subscriber
            .query(redis::cmd("PUBSUB").arg("NUMSUB").arg(INVALIDATION_CHANNEL))
            .ok()?;
        (n == 2).then_some(())
    });

    let r = a.admin(
        "POST",
        "/v1/apps",
        Some(json!({"id": "bq1", "name": "bq1"})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = a.admin(
        "POST",
        "/v1/users",
        Some(json!({"id": "al", "email": "al@x.com", "name": "Al", "apps": ["bq1"]})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = a.admin(
        "POST",
        "/v1/users/al/tokens",
        Some(json!({"name": "t", "apps": ["bq1"]})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let auth = format!("QB-USER-TOKEN {}", r.json()["token"].as_str().unwrap());
    let id = r.json()["id"].as_str().unwrap().to_owned();

    let status = |tg: &Tokengate| tg.get("/db/bq1", &[("authorization", &auth)]).status;
    assert_eq!(status(&a), 200, "{}", a.log());
    assert_eq!(status(&b), 200, "{}", b.log());
    assert_eq!(up.last().header("x-auth-user-id"), Some("al"));

    let r = a.admin(
        "PATCH",
        &format!("/v1/tokens/{id}"),
        Some(json!({"active": false})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(status(&a), 401);
    // B had it cached for an hour: only the message over the cluster tells it.
    poll(
        Duration::from_secs(5),
        "B refusing the deactivated token",
        || (status(&b) == 401).then_some(()),
    );
    let r = b.get("/db/bq1", &[("authorization", &auth)]);
    assert_eq!(r.error(), "token_inactive", "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_store_and_the_subscription_follow_a_sentinel_failover() {
    let sentinel = RedisSentinel::start();
    let store = RedisStore::new(&sentinel.url()).unwrap();
    store.insert_user(&user("before")).await.unwrap();
    assert_eq!(sentinel.master_port(), sentinel.master.port);
    // The replica has it before it is promoted.
    let acked: i64 = sentinel
        .master
        .query(redis::cmd("WAIT").arg(1).arg(5000))
        .unwrap();
    assert_eq!(acked, 1);

    let (subscriber, channel) = store.subscriber().unwrap();
    let mut pubsub = subscriber.pubsub().await.unwrap();
    pubsub.subscribe(channel).await.unwrap();

    let sentinel = tokio::task::spawn_blocking(move || {
        sentinel.failover();
        sentinel
    })
    .await
    .unwrap();

    // The old master cut its clients when it became a replica: the old subscription ends.
    let mut messages = pubsub.into_on_message();
    let ended = tokio::time::timeout(Duration::from_secs(10), messages.next()).await;
    assert!(
        matches!(ended, Ok(None)),
        "the subscription on the old master should have ended"
    );

    // The store asks the sentinel again: writes reach the new master. Until it has, a call
    // may fail, but only as unavailable.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.insert_user(&user("after")).await {
            Ok(()) => break,
            Err(StoreError::Unavailable(e)) => {
                assert!(Instant::now() < deadline, "still unavailable: {e}");
            }
            Err(e) => panic!("after the failover: {e:?}"),
        }
    }
    let on_new: i64 = sentinel
        .replica
        .query(redis::cmd("EXISTS").arg(format!("{PREFIX}user:after")))
        .unwrap();
    assert_eq!(on_new, 1, "the write went to the new master");
    let ids: Vec<String> = store
        .users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.id)
        .collect();
    assert_eq!(ids, ["after", "before"]);

    // A new subscription is on the new master, and hears the store's announcements.
    let mut pubsub = subscriber.pubsub().await.unwrap();
    pubsub.subscribe(channel).await.unwrap();
    let (_, n): (String, i64) = sentinel
        .replica
        .query(redis::cmd("PUBSUB").arg("NUMSUB").arg(channel))
        .unwrap();
    assert_eq!(n, 1, "subscribed on the new master");
    store.publish("r1 user after").await.unwrap();
    let mut messages = pubsub.into_on_message();
    let message = tokio::time::timeout(Duration::from_secs(5), messages.next())
        .await
        .expect("no message within 5 s")
        .expect("the subscription ended");
    assert_eq!(message.get_payload::<String>().unwrap(), "r1 user after");
}
