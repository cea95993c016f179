//! The `Store` contract (`src/store/mod.rs`) as one suite, run against every backend and Redis
//! topology: `tests/store_conformance.rs` (embedded, one Redis server) and
//! `tests/redis_topologies.rs` (Redis Cluster, Sentinel). Included by `#[path]`, so each test
//! binary that runs it compiles it; the suite may assume the store starts empty.

use chrono::{DateTime, Utc};
use tokengate::model::{App, AppToken, Session, Ticket, User, UserStatus, UserToken};
use tokengate::store::{Store, StoreError, StoreResult, TokenFilter};
use tokengate::usage::{Usage, UsageKind};

/// Asserts that `result` is an `Err` matching `pattern`, naming the backend and the case.
macro_rules! assert_err {
    ($store:expr, $result:expr, $pattern:pat, $($msg:tt)+) => {
        match $result {
            Err($pattern) => {}
            other => panic!(
                "[{}] {}: expected Err({}), got {:?}",
                $store.backend(),
                format!($($msg)+),
                stringify!($pattern),
                other
            ),
        }
    };
}

/// Unwraps an `Ok`, naming the backend and the case when it isn't one.
fn ok<T>(store: &dyn Store, result: StoreResult<T>, what: &str) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!("[{}] {what}: expected Ok, got Err({e:?})", store.backend()),
    }
}

/// A fixed instant, in whole seconds, so JSON round-trips compare equal.
fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap()
}

/// A valid user-token id (16 characters of lowercase base32) made of one character.
fn tid(c: char) -> String {
    std::iter::repeat_n(c, 16).collect()
}

fn ids(tokens: &[UserToken]) -> Vec<&str> {
    tokens.iter().map(|t| t.id.as_str()).collect()
}

fn user(id: &str) -> User {
    User {
        id: id.to_owned(),
        email: format!("{id}@example.com"),
        name: format!("User {id}"),
        department: Some("Engineering".to_owned()),
        user_type: Some("employee".to_owned()),
        tenant: Some("acme".to_owned()),
        status: UserStatus::Active,
        apps: vec!["app-a".to_owned()],
        password_hash: None,
        created_at: at(1_700_000_000),
        headers: Default::default(),
    }
}

fn app(id: &str) -> App {
    App {
        id: id.to_owned(),
        name: format!("App {id}"),
        tenant: Some("acme".to_owned()),
        require_app_token: false,
        created_at: at(1_700_000_100),
        headers: Default::default(),
    }
}

fn token(id: &str, user_id: &str, apps: &[&str], active: bool) -> UserToken {
    UserToken {
        id: id.to_owned(),
        secret_hash: [7u8; 32],
        name: format!("token {id}"),
        description: String::new(),
        user_id: user_id.to_owned(),
        apps: apps.iter().map(|a| (*a).to_owned()).collect(),
        active,
        held_by_admin: false,
        expires_at: None,
        department: None,
        user_type: None,
        created_at: at(1_700_000_200),
        last_used_at: None,
        used: Default::default(),
        headers: Default::default(),
    }
}

fn by_user(user: &str) -> TokenFilter {
    TokenFilter {
        user: Some(user.to_owned()),
        ..TokenFilter::default()
    }
}

/// Every check, on a store that starts empty.
pub async fn conformance(store: &dyn Store) {
    admin_key(store).await;
    ping(store).await;
    users(store).await;
    apps(store).await;
    user_tokens(store).await;
    delete_user(store).await;
    tickets(store).await;
    app_tokens(store).await;
    usage(store).await;
    sessions_and_keys(store).await;
}

async fn sessions_and_keys(store: &dyn Store) {
    let b = store.backend();
    ok(
        store,
        store.insert_user(&user("s-sam")).await,
        "insert user",
    );
    let session = |id: &str| Session {
        id: id.to_owned(),
        user_id: "s-sam".to_owned(),
        app: Some("app-x".to_owned()),
        issued_at: at(1_700_006_000),
        expires_at: at(1_700_178_800),
        remember_me: false,
        last_active_at: None,
        revoked_at: None,
        external: false,
        used: Default::default(),
        headers: Default::default(),
    };
    let mut orphan = session("s-orphan");
    orphan.user_id = "s-nobody".to_owned();
    assert_err!(
        store,
        store.insert_session(&orphan).await,
        StoreError::NotFound,
        "session of an unknown user"
    );
    ok(store, store.insert_session(&session("s-2")).await, "insert");
    ok(store, store.insert_session(&session("s-1")).await, "insert");
    assert_err!(
        store,
        store.insert_session(&session("s-1")).await,
        StoreError::Conflict,
        "duplicate session"
    );
    assert_eq!(
        ok(store, store.session("s-1").await, "get"),
        Some(session("s-1")),
        "[{b}] round trip"
    );
    let listed: Vec<String> = ok(store, store.sessions(Some("s-sam")).await, "list")
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, ["s-1", "s-2"], "[{b}] a user's sessions, sorted");
    let mut revoked = session("s-1");
    revoked.revoked_at = Some(at(1_700_007_000));
    ok(store, store.update_session(&revoked).await, "revoke");
    assert_eq!(
        ok(store, store.session("s-1").await, "get"),
        Some(revoked),
        "[{b}] update round trip"
    );
    ok(
        store,
        store
            .record_usage(&[Usage {
                kind: UsageKind::Session,
                id: "s-2".into(),
                at: at(1_700_006_500),
            }])
            .await,
        "use",
    );
    assert_eq!(
        ok(store, store.session("s-2").await, "get")
            .unwrap()
            .last_active_at,
        Some(at(1_700_006_500)),
        "[{b}] last activity"
    );
    let deleted = ok(store, store.delete_user("s-sam").await, "delete user");
    let mut gone = deleted.sessions.clone();
    gone.sort();
    assert_eq!(
        gone,
        ["s-1", "s-2"],
        "[{b}] deleting a user returns its sessions"
    );
    assert_eq!(
        ok(store, store.session("s-2").await, "get"),
        None,
        "[{b}] and deletes them"
    );

    assert_eq!(
        ok(store, store.signing_keys().await, "keys at first"),
        None,
        "[{b}] no keys at first"
    );
    assert_eq!(
        ok(
            store,
            store.init_signing_keys(b"first".to_vec()).await,
            "init"
        ),
        b"first",
        "[{b}] kept"
    );
    assert_eq!(
        ok(
            store,
            store.init_signing_keys(b"second".to_vec()).await,
            "init again"
        ),
        b"first",
        "[{b}] the first keys stay"
    );
    assert_eq!(
        ok(store, store.signing_keys().await, "keys"),
        Some(b"first".to_vec()),
        "[{b}] read back"
    );
}

fn ticket(id: &str, user_id: &str) -> Ticket {
    Ticket {
        id: id.to_owned(),
        secret_hash: [9u8; 32],
        user_id: user_id.to_owned(),
        issued_at: at(1_700_001_000),
        expires_at: at(1_700_044_200),
        last_active_at: None,
        revoked_at: None,
        used: Default::default(),
        headers: Default::default(),
    }
}

async fn tickets(store: &dyn Store) {
    let b = store.backend();
    ok(
        store,
        store.insert_user(&user("t-tom")).await,
        "insert t-tom",
    );
    ok(
        store,
        store.insert_user(&user("t-una")).await,
        "insert t-una",
    );
    assert_err!(
        store,
        store.insert_ticket(&ticket("tk-x", "t-nobody")).await,
        StoreError::NotFound,
        "ticket of an unknown user"
    );
    assert_eq!(
        ok(store, store.ticket("tk-x").await, "get refused"),
        None,
        "[{b}] nothing written"
    );
    let (t1, t2, t3) = (
        ticket("tk-1", "t-tom"),
        ticket("tk-2", "t-tom"),
        ticket("tk-3", "t-una"),
    );
    for t in [&t2, &t1, &t3] {
        ok(store, store.insert_ticket(t).await, "insert ticket");
    }
    assert_err!(
        store,
        store.insert_ticket(&t1).await,
        StoreError::Conflict,
        "duplicate ticket"
    );
    assert_eq!(
        ok(store, store.ticket("tk-1").await, "get"),
        Some(t1.clone()),
        "[{b}] round trip"
    );
    let listed: Vec<String> = ok(store, store.tickets(Some("t-tom")).await, "list")
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(listed, ["tk-1", "tk-2"], "[{b}] one user's tickets, sorted");
    assert_eq!(
        ok(store, store.tickets(None).await, "all").len(),
        3,
        "[{b}] every ticket"
    );
    let mut revoked = t1.clone();
    revoked.revoked_at = Some(at(1_700_002_000));
    ok(store, store.update_ticket(&revoked).await, "revoke");
    assert_eq!(
        ok(store, store.ticket("tk-1").await, "get"),
        Some(revoked),
        "[{b}] update round trip"
    );
    assert_err!(
        store,
        store.update_ticket(&ticket("tk-none", "t-tom")).await,
        StoreError::NotFound,
        "update unknown ticket"
    );
    let deleted = ok(store, store.delete_user("t-tom").await, "delete t-tom");
    let mut gone = deleted.tickets.clone();
    gone.sort();
    assert_eq!(
        gone,
        ["tk-1", "tk-2"],
        "[{b}] deleting a user returns its tickets"
    );
    assert_eq!(
        ok(store, store.ticket("tk-2").await, "get"),
        None,
        "[{b}] and deletes them"
    );
    assert_eq!(
        ok(store, store.tickets(None).await, "all").len(),
        1,
        "[{b}] others stay"
    );
}

fn app_token(id: &str, app_id: &str) -> AppToken {
    AppToken {
        id: id.to_owned(),
        secret_hash: [5u8; 32],
        app_id: app_id.to_owned(),
        name: "web".to_owned(),
        created_at: at(1_700_003_000),
    }
}

async fn app_tokens(store: &dyn Store) {
    let b = store.backend();
    ok(store, store.insert_app(&app("at-app")).await, "insert app");
    ok(
        store,
        store.insert_app(&app("at-other")).await,
        "insert app",
    );
    assert_err!(
        store,
        store
            .insert_app_token(&app_token("at-x", "at-nope"), 5)
            .await,
        StoreError::NotFound,
        "unknown app"
    );
    ok(
        store,
        store
            .insert_app_token(&app_token("at-2", "at-app"), 2)
            .await,
        "insert",
    );
    ok(
        store,
        store
            .insert_app_token(&app_token("at-1", "at-app"), 2)
            .await,
        "insert",
    );
    assert_err!(
        store,
        store
            .insert_app_token(&app_token("at-3", "at-app"), 2)
            .await,
        StoreError::LimitReached(2),
        "the app's limit"
    );
    assert_eq!(
        ok(store, store.app_token("at-3").await, "get refused"),
        None,
        "[{b}] nothing written past the limit"
    );
    assert_err!(
        store,
        store
            .insert_app_token(&app_token("at-1", "at-other"), 5)
            .await,
        StoreError::Conflict,
        "id taken"
    );
    ok(
        store,
        store
            .insert_app_token(&app_token("at-o", "at-other"), 5)
            .await,
        "another app's",
    );
    assert_eq!(
        ok(store, store.app_token("at-1").await, "get"),
        Some(app_token("at-1", "at-app")),
        "[{b}] round trip"
    );
    let listed: Vec<String> = ok(store, store.app_tokens("at-app").await, "list")
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(listed, ["at-1", "at-2"], "[{b}] an app's tokens, sorted");
    ok(store, store.delete_app_token("at-2").await, "delete");
    assert_err!(
        store,
        store.delete_app_token("at-2").await,
        StoreError::NotFound,
        "delete again"
    );
    assert_eq!(
        ok(store, store.app_tokens("at-app").await, "list").len(),
        1,
        "[{b}] deleted from the list"
    );
    ok(
        store,
        store
            .insert_app_token(&app_token("at-4", "at-app"), 2)
            .await,
        "room again after a delete",
    );
    let mut gone = ok(store, store.delete_app("at-app").await, "delete app");
    gone.sort();
    assert_eq!(
        gone,
        ["at-1", "at-4"],
        "[{b}] deleting an app returns its app tokens"
    );
    assert_eq!(
        ok(store, store.app_token("at-1").await, "get"),
        None,
        "[{b}] and deletes them"
    );
    assert!(
        ok(store, store.app_token("at-o").await, "get").is_some(),
        "[{b}] another app's stay"
    );
}

async fn usage(store: &dyn Store) {
    let b = store.backend();
    ok(
        store,
        store.insert_user(&user("u-use")).await,
        "insert user",
    );
    let t = token(&tid('u'), "u-use", &[], true);
    ok(store, store.insert_user_token(&t, 10).await, "insert token");
    ok(
        store,
        store.insert_ticket(&ticket("tk-use", "u-use")).await,
        "insert ticket",
    );
    let used = |kind, id: &str, secs| Usage {
        kind,
        id: id.to_owned(),
        at: at(secs),
    };
    ok(
        store,
        store
            .record_usage(&[
                used(UsageKind::UserToken, &t.id, 1_700_005_000),
                used(UsageKind::Ticket, "tk-use", 1_700_005_001),
            ])
            .await,
        "record",
    );
    assert_eq!(
        ok(store, store.user_token(&t.id).await, "get")
            .unwrap()
            .last_used_at,
        Some(at(1_700_005_000)),
        "[{b}] last use on get"
    );
    assert_eq!(
        ok(store, store.ticket("tk-use").await, "get")
            .unwrap()
            .last_active_at,
        Some(at(1_700_005_001)),
        "[{b}] ticket's last activity"
    );
    ok(
        store,
        store
            .record_usage(&[used(UsageKind::UserToken, &t.id, 1_700_004_000)])
            .await,
        "record an older use",
    );
    let listed = ok(
        store,
        store
            .user_tokens(&TokenFilter {
                user: Some("u-use".into()),
                ..TokenFilter::default()
            })
            .await,
        "list",
    );
    assert_eq!(
        listed[0].last_used_at,
        Some(at(1_700_005_000)),
        "[{b}] a later use is never replaced by an earlier one; lists show it"
    );
    ok(
        store,
        store
            .record_usage(&[used(UsageKind::UserToken, "nosuchtoken", 1_700_005_000)])
            .await,
        "a deleted credential's use is dropped",
    );
    ok(store, store.delete_user_token(&t.id).await, "delete");
    ok(
        store,
        store.insert_user_token(&t, 10).await,
        "the same id again",
    );
    assert_eq!(
        ok(store, store.user_token(&t.id).await, "get")
            .unwrap()
            .last_used_at,
        None,
        "[{b}] a deleted token's last use went with it"
    );
}

async fn ping(store: &dyn Store) {
    ok(store, store.ping().await, "ping");
}

async fn admin_key(store: &dyn Store) {
    let b = store.backend();
    let (h1, h2) = ([1u8; 32], [2u8; 32]);
    assert_eq!(
        ok(
            store,
            store.admin_key_hash().await,
            "admin_key_hash at first"
        ),
        None,
        "[{b}] a new store keeps no admin key hash"
    );
    assert_eq!(
        ok(store, store.init_admin_key_hash(h1).await, "first init"),
        h1,
        "[{b}] the first init keeps and returns its hash"
    );
    assert_eq!(
        ok(store, store.init_admin_key_hash(h2).await, "second init"),
        h1,
        "[{b}] a second init returns the hash kept first, not its own"
    );
    assert_eq!(
        ok(
            store,
            store.admin_key_hash().await,
            "admin_key_hash after init"
        ),
        Some(h1),
        "[{b}] the kept admin key hash is the first one"
    );
}

async fn users(store: &dyn Store) {
    let b = store.backend();
    assert!(
        ok(store, store.users().await, "users() on a new store").is_empty(),
        "[{b}] a new store lists no users"
    );

    let bob = user("u-bob");
    let mut alice = user("u-alice");
    alice.password_hash = Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned());
    alice.apps = vec!["app-a".to_owned(), "app-b".to_owned()];
    let mut carol = user("u-carol");
    carol.department = None;
    carol.user_type = None;
    carol.tenant = None;
    carol.apps = Vec::new();
    // Inserted out of order, so a sorted list is the store's doing.
    for u in [&bob, &alice, &carol] {
        ok(
            store,
            store.insert_user(u).await,
            &format!("insert {}", u.id),
        );
    }

    for u in [&alice, &bob, &carol] {
        assert_eq!(
            ok(store, store.user(&u.id).await, &format!("get {}", u.id)).as_ref(),
            Some(u),
            "[{b}] get returns the user as inserted: {}",
            u.id
        );
    }
    assert_eq!(
        ok(store, store.user("u-nobody").await, "get unknown user"),
        None,
        "[{b}] get of an unknown user id is Ok(None)"
    );

    let mut impostor = user("u-alice");
    impostor.email = "impostor@example.com".to_owned();
    assert_err!(
        store,
        store.insert_user(&impostor).await,
        StoreError::Conflict,
        "insert of a taken user id"
    );
    assert_eq!(
        ok(store, store.user("u-alice").await, "get after conflict"),
        Some(alice.clone()),
        "[{b}] a refused insert leaves the existing user unchanged"
    );

    assert_err!(
        store,
        store.update_user(&user("u-zed")).await,
        StoreError::NotFound,
        "update of an absent user"
    );
    assert_eq!(
        ok(store, store.user("u-zed").await, "get after refused update"),
        None,
        "[{b}] a refused update does not create the user"
    );

    let mut bob2 = bob.clone();
    bob2.name = "Robert".to_owned();
    bob2.email = "robert@example.com".to_owned();
    bob2.status = UserStatus::Disabled;
    bob2.department = Some("Sales".to_owned());
    bob2.apps = vec!["app-b".to_owned(), "app-c".to_owned()];
    ok(store, store.update_user(&bob2).await, "update u-bob");
    assert_eq!(
        ok(store, store.user("u-bob").await, "get after update"),
        Some(bob2.clone()),
        "[{b}] get shows the update"
    );

    assert_eq!(
        ok(store, store.users().await, "users()"),
        vec![alice, bob2, carol],
        "[{b}] users() lists every user, sorted by id"
    );
}

async fn apps(store: &dyn Store) {
    let b = store.backend();
    assert!(
        ok(store, store.apps().await, "apps() on a new store").is_empty(),
        "[{b}] a new store lists no apps"
    );

    let a = app("app-a");
    let mut bq = app("app-b");
    bq.require_app_token = true;
    let mut c = app("app-c");
    c.tenant = None;
    for x in [&bq, &c, &a] {
        ok(
            store,
            store.insert_app(x).await,
            &format!("insert {}", x.id),
        );
    }

    for x in [&a, &bq, &c] {
        assert_eq!(
            ok(store, store.app(&x.id).await, &format!("get {}", x.id)).as_ref(),
            Some(x),
            "[{b}] get returns the app as inserted: {}",
            x.id
        );
    }
    assert_eq!(
        ok(store, store.app("app-nope").await, "get unknown app"),
        None,
        "[{b}] get of an unknown app id is Ok(None)"
    );

    let mut dup = app("app-a");
    dup.name = "Other".to_owned();
    assert_err!(
        store,
        store.insert_app(&dup).await,
        StoreError::Conflict,
        "insert of a taken app id"
    );
    assert_eq!(
        ok(store, store.app("app-a").await, "get after conflict"),
        Some(a.clone()),
        "[{b}] a refused insert leaves the existing app unchanged"
    );

    assert_err!(
        store,
        store.update_app(&app("app-zed")).await,
        StoreError::NotFound,
        "update of an absent app"
    );
    assert_eq!(
        ok(
            store,
            store.app("app-zed").await,
            "get after refused update"
        ),
        None,
        "[{b}] a refused update does not create the app"
    );

    let mut c2 = c.clone();
    c2.name = "Renamed".to_owned();
    c2.require_app_token = true;
    c2.tenant = Some("globex".to_owned());
    ok(store, store.update_app(&c2).await, "update app-c");
    assert_eq!(
        ok(store, store.app("app-c").await, "get after update"),
        Some(c2.clone()),
        "[{b}] get shows the update"
    );

    assert_eq!(
        ok(store, store.apps().await, "apps()"),
        vec![a.clone(), bq.clone(), c2],
        "[{b}] apps() lists every app, sorted by id"
    );

    ok(store, store.delete_app("app-c").await, "delete app-c");
    assert_eq!(
        ok(store, store.app("app-c").await, "get after delete"),
        None,
        "[{b}] a deleted app is gone from get"
    );
    assert_eq!(
        ok(store, store.apps().await, "apps() after delete"),
        vec![a, bq],
        "[{b}] a deleted app is gone from apps()"
    );
    assert_err!(
        store,
        store.delete_app("app-c").await,
        StoreError::NotFound,
        "second delete of the same app"
    );
    assert_err!(
        store,
        store.delete_app("app-nope").await,
        StoreError::NotFound,
        "delete of an unknown app"
    );
}

async fn user_tokens(store: &dyn Store) {
    let b = store.backend();
    for id in ["t-ann", "t-ben"] {
        ok(
            store,
            store.insert_user(&user(id)).await,
            &format!("insert {id}"),
        );
    }

    // An unknown owner.
    let orphan = token(&tid('z'), "t-ghost", &[], true);
    assert_err!(
        store,
        store.insert_user_token(&orphan, 2).await,
        StoreError::NotFound,
        "insert_user_token for an unknown owner"
    );
    assert_eq!(
        ok(
            store,
            store.user_token(&orphan.id).await,
            "get refused orphan"
        ),
        None,
        "[{b}] a token refused for an unknown owner is not written"
    );

    // Two tokens for ann, inserted out of id order; c carries every optional field.
    let mut tc = token(&tid('c'), "t-ann", &["app-a"], true);
    tc.secret_hash = core::array::from_fn(|i| u8::try_from(i).unwrap() * 7 + 1);
    tc.description = "nightly export".to_owned();
    tc.expires_at = Some(at(1_800_000_000));
    tc.department = Some("Sales".to_owned());
    tc.user_type = Some("contractor".to_owned());
    tc.last_used_at = Some(at(1_700_000_500));
    let ta = token(&tid('a'), "t-ann", &["app-b"], false);
    ok(
        store,
        store.insert_user_token(&tc, 2).await,
        "insert ann's c",
    );
    ok(
        store,
        store.insert_user_token(&ta, 2).await,
        "insert ann's a",
    );
    assert_eq!(
        ok(store, store.user_token(&tc.id).await, "get c"),
        Some(tc.clone()),
        "[{b}] get returns the token as inserted (hash, expiry, department, type, last use)"
    );
    assert_eq!(
        ok(store, store.user_token(&ta.id).await, "get a"),
        Some(ta.clone()),
        "[{b}] get returns the token as inserted"
    );
    assert_eq!(
        ok(
            store,
            store.user_token(&tid('y')).await,
            "get unknown token"
        ),
        None,
        "[{b}] get of an unknown token id is Ok(None)"
    );

    // A taken id, even for another owner with room left.
    let dup = token(&tc.id, "t-ben", &[], true);
    assert_err!(
        store,
        store.insert_user_token(&dup, 2).await,
        StoreError::Conflict,
        "insert_user_token with a taken id"
    );
    assert_eq!(
        ok(store, store.user_token(&tc.id).await, "get after conflict"),
        Some(tc.clone()),
        "[{b}] a refused duplicate leaves the existing token unchanged"
    );
    assert!(
        ok(
            store,
            store.user_tokens(&by_user("t-ben")).await,
            "ben's tokens"
        )
        .is_empty(),
        "[{b}] a refused duplicate is not listed under the other owner"
    );

    // The limit: a third token for ann is refused, and nothing is written.
    let te = token(&tid('e'), "t-ann", &["app-a"], true);
    assert_err!(
        store,
        store.insert_user_token(&te, 2).await,
        StoreError::LimitReached(2),
        "third token for one user with limit 2"
    );
    assert_eq!(
        ok(store, store.user_token(&te.id).await, "get refused token"),
        None,
        "[{b}] a token refused for the limit is not written"
    );
    assert_eq!(
        ids(&ok(
            store,
            store.user_tokens(&by_user("t-ann")).await,
            "ann's tokens"
        )),
        vec![ta.id.as_str(), tc.id.as_str()],
        "[{b}] after a refusal for the limit the owner still holds exactly 2 tokens"
    );
    assert!(
        !ids(&ok(
            store,
            store.user_tokens(&TokenFilter::default()).await,
            "all tokens"
        ))
        .contains(&te.id.as_str()),
        "[{b}] a token refused for the limit is not in the list of all tokens"
    );

    // Another user is not affected by ann's limit.
    let tb = token(&tid('b'), "t-ben", &["app-a"], true);
    let td = token(&tid('d'), "t-ben", &[], false);
    ok(
        store,
        store.insert_user_token(&td, 2).await,
        "insert ben's d",
    );
    ok(
        store,
        store.insert_user_token(&tb, 2).await,
        "insert ben's b",
    );

    // Filters, each sorted by id.
    let list = |f: TokenFilter| async move { store.user_tokens(&f).await };
    assert_eq!(
        ok(store, list(by_user("t-ann")).await, "filter user=ann"),
        vec![ta.clone(), tc.clone()],
        "[{b}] filter by user lists that user's tokens, sorted by id"
    );
    assert_eq!(
        ok(store, list(by_user("t-ben")).await, "filter user=ben"),
        vec![tb.clone(), td.clone()],
        "[{b}] filter by user lists that user's tokens, sorted by id"
    );
    assert!(
        ok(store, list(by_user("t-ghost")).await, "filter user=ghost").is_empty(),
        "[{b}] filter by an unknown user lists nothing"
    );
    let app_a = TokenFilter {
        app: Some("app-a".to_owned()),
        ..TokenFilter::default()
    };
    assert_eq!(
        ids(&ok(store, list(app_a).await, "filter app=app-a")),
        vec![tb.id.as_str(), tc.id.as_str()],
        "[{b}] filter by app lists the tokens assigned to it, sorted by id"
    );
    let inactive = TokenFilter {
        active: Some(false),
        ..TokenFilter::default()
    };
    assert_eq!(
        ids(&ok(
            store,
            list(inactive.clone()).await,
            "filter active=false"
        )),
        vec![ta.id.as_str(), td.id.as_str()],
        "[{b}] filter active=false lists the inactive tokens, sorted by id"
    );
    let ann_inactive = TokenFilter {
        user: Some("t-ann".to_owned()),
        active: Some(false),
        ..TokenFilter::default()
    };
    assert_eq!(
        ids(&ok(
            store,
            list(ann_inactive).await,
            "filter user=ann,active=false"
        )),
        vec![ta.id.as_str()],
        "[{b}] filters combine"
    );
    assert_eq!(
        ids(&ok(store, list(TokenFilter::default()).await, "no filter")),
        vec![
            ta.id.as_str(),
            tb.id.as_str(),
            tc.id.as_str(),
            td.id.as_str()
        ],
        "[{b}] the empty filter lists every token, sorted by id"
    );

    // Update.
    let mut ta2 = ta.clone();
    ta2.active = true;
    ta2.name = "renamed".to_owned();
    ta2.apps = vec!["app-a".to_owned(), "app-b".to_owned()];
    ta2.expires_at = Some(at(1_900_000_000));
    ta2.last_used_at = Some(at(1_700_000_900));
    ta2.department = Some("Support".to_owned());
    ta2.held_by_admin = true;
    ok(store, store.update_user_token(&ta2).await, "update a");
    assert_eq!(
        ok(store, store.user_token(&ta2.id).await, "get after update"),
        Some(ta2.clone()),
        "[{b}] get shows the token update"
    );
    assert_eq!(
        ids(&ok(
            store,
            list(inactive).await,
            "filter active=false after update"
        )),
        vec![td.id.as_str()],
        "[{b}] filters see the updated token"
    );
    let unknown = token(&tid('y'), "t-ann", &[], true);
    assert_err!(
        store,
        store.update_user_token(&unknown).await,
        StoreError::NotFound,
        "update_user_token of an unknown id"
    );
    assert_eq!(
        ok(
            store,
            store.user_token(&unknown.id).await,
            "get after refused update"
        ),
        None,
        "[{b}] a refused token update does not create the token"
    );

    // Delete.
    ok(store, store.delete_user_token(&tc.id).await, "delete c");
    assert_eq!(
        ok(store, store.user_token(&tc.id).await, "get after delete"),
        None,
        "[{b}] a deleted token is gone from get"
    );
    assert_eq!(
        ok(
            store,
            list(by_user("t-ann")).await,
            "ann's tokens after delete"
        ),
        vec![ta2.clone()],
        "[{b}] a deleted token is gone from its owner's list"
    );
    assert!(
        !ids(&ok(
            store,
            list(TokenFilter::default()).await,
            "all after delete"
        ))
        .contains(&tc.id.as_str()),
        "[{b}] a deleted token is gone from the list of all tokens"
    );
    assert_err!(
        store,
        store.delete_user_token(&tc.id).await,
        StoreError::NotFound,
        "second delete of the same token"
    );
    assert_err!(
        store,
        store.delete_user_token(&tid('y')).await,
        StoreError::NotFound,
        "delete_user_token of an unknown id"
    );

    // Room again under the limit.
    ok(
        store,
        store.insert_user_token(&te, 2).await,
        "insert under the limit after a delete",
    );
    assert_eq!(
        ok(
            store,
            list(by_user("t-ann")).await,
            "ann's tokens after re-insert"
        ),
        vec![ta2, te],
        "[{b}] after a delete the owner can create a token again under the limit"
    );
}

async fn delete_user(store: &dyn Store) {
    let b = store.backend();
    for id in ["d-dan", "d-eve", "d-fay"] {
        ok(
            store,
            store.insert_user(&user(id)).await,
            &format!("insert {id}"),
        );
    }
    let dan: Vec<UserToken> = ['h', 'f', 'g']
        .map(|c| token(&tid(c), "d-dan", &["app-a"], c != 'g'))
        .into();
    let eve: Vec<UserToken> = ['i', 'j']
        .map(|c| token(&tid(c), "d-eve", &["app-a"], c == 'i'))
        .into();
    for t in dan.iter().chain(&eve) {
        ok(
            store,
            store.insert_user_token(t, 5).await,
            &format!("insert {}", t.id),
        );
    }

    let mut deleted = ok(store, store.delete_user("d-dan").await, "delete d-dan").user_tokens;
    deleted.sort();
    assert_eq!(
        deleted,
        vec![tid('f'), tid('g'), tid('h')],
        "[{b}] delete_user returns exactly the ids of the user's tokens"
    );
    assert_eq!(
        ok(store, store.user("d-dan").await, "get deleted user"),
        None,
        "[{b}] a deleted user is gone from get"
    );
    assert!(
        !ok(store, store.users().await, "users() after delete")
            .iter()
            .any(|u| u.id == "d-dan"),
        "[{b}] a deleted user is gone from users()"
    );
    for t in &dan {
        assert_eq!(
            ok(
                store,
                store.user_token(&t.id).await,
                "get token of deleted user"
            ),
            None,
            "[{b}] the deleted user's token {} is gone from get",
            t.id
        );
    }
    assert!(
        ok(
            store,
            store.user_tokens(&by_user("d-dan")).await,
            "dan's tokens"
        )
        .is_empty(),
        "[{b}] the deleted user has no tokens listed under it"
    );
    for f in [
        TokenFilter::default(),
        TokenFilter {
            app: Some("app-a".to_owned()),
            ..TokenFilter::default()
        },
        TokenFilter {
            active: Some(true),
            ..TokenFilter::default()
        },
        TokenFilter {
            active: Some(false),
            ..TokenFilter::default()
        },
    ] {
        let listed = ok(store, store.user_tokens(&f).await, &format!("filter {f:?}"));
        assert!(
            !listed.iter().any(|t| t.user_id == "d-dan"),
            "[{b}] no list shows a deleted user's tokens ({f:?}): {:?}",
            ids(&listed)
        );
    }

    for t in &eve {
        assert_eq!(
            ok(
                store,
                store.user_token(&t.id).await,
                "get other user's token"
            )
            .as_ref(),
            Some(t),
            "[{b}] deleting one user leaves another user's token {} alone",
            t.id
        );
    }
    assert_eq!(
        ok(
            store,
            store.user_tokens(&by_user("d-eve")).await,
            "eve's tokens"
        ),
        eve,
        "[{b}] deleting one user leaves another user's list alone"
    );

    assert_eq!(
        ok(
            store,
            store.delete_user("d-fay").await,
            "delete a user without tokens"
        ),
        tokengate::store::DeletedUser::default(),
        "[{b}] deleting a user without tokens returns no ids"
    );
    assert_err!(
        store,
        store.delete_user("d-dan").await,
        StoreError::NotFound,
        "second delete of the same user"
    );
    assert_err!(
        store,
        store.delete_user("d-nobody").await,
        StoreError::NotFound,
        "delete_user of an unknown user"
    );

    // A user made again under the same id starts with nothing.
    ok(
        store,
        store.insert_user(&user("d-dan")).await,
        "re-insert d-dan",
    );
    assert!(
        ok(
            store,
            store.user_tokens(&by_user("d-dan")).await,
            "re-made dan's tokens"
        )
        .is_empty(),
        "[{b}] a user re-made under a deleted id holds no tokens"
    );
    let again = token(&tid('k'), "d-dan", &[], true);
    ok(
        store,
        store.insert_user_token(&again, 1).await,
        "re-made user's first token with limit 1",
    );
}
