//! moka in front of the store: users, apps and user tokens by id, found (`ttl`) or known to be
//! absent (`negative_ttl`). A hit is one concurrent-map read and an `Arc` clone: no store call,
//! no write, no lock. Concurrent misses on one key share a single store read.
//!
//! Invalidation: an admin change calls [`Cache::invalidate`] at once; the same
//! [`Invalidation`] is what the cross-replica bus (Redis pub/sub, `crate::bus`) carries. A load
//! racing an invalidation is used once but not kept, so a change is never papered over by a
//! stale read. When messages may have been missed (the subscription dropped),
//! [`Cache::resync`] empties the tables, so the bound on a missed change is the TTL at worst.
//!
//! Stale serving: every record loaded is also kept, beside the table, for `ttl + stale_for`
//! (by the engine's clock). That copy is read only when the store can't be reached: a decision
//! already cached keeps serving through a store outage for up to `stale_for` past its TTL.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use prometheus::IntCounter;

use chrono::{DateTime, Utc};

use crate::clock::Clock;
use crate::config::CacheConfig;
use crate::metrics::Metrics;
use crate::model::{App, AppToken, Session, Ticket, User, UserToken};
use crate::store::{SharedStore, StoreError, StoreResult};

/// A cached answer of the store.
#[derive(Debug)]
pub enum Cached<T> {
    Found(Arc<T>),
    Missing,
}

impl<T> Clone for Cached<T> {
    fn clone(&self) -> Self {
        match self {
            Self::Found(v) => Self::Found(v.clone()),
            Self::Missing => Self::Missing,
        }
    }
}

impl<T> Cached<T> {
    fn from_option(v: Option<T>) -> Self {
        v.map_or(Self::Missing, |v| Self::Found(Arc::new(v)))
    }
}

/// What changed: the record to drop from every cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalidation {
    User(String),
    App(String),
    UserToken(String),
    Ticket(String),
    Session(String),
    AppToken(String),
}

struct TtlByKind {
    found: Duration,
    missing: Duration,
}

impl<T> Expiry<String, Cached<T>> for TtlByKind {
    fn expire_after_create(&self, _: &String, value: &Cached<T>, _: Instant) -> Option<Duration> {
        Some(match value {
            Cached::Found(_) => self.found,
            Cached::Missing => self.missing,
        })
    }
}

enum LoadError<T> {
    Store(StoreError),
    /// An invalidation landed while the store was read: use the value, don't keep it.
    Raced(Cached<T>),
}

/// A record as loaded, kept for stale serving.
struct Kept<T> {
    value: Arc<T>,
    loaded_at: DateTime<Utc>,
}

impl<T> Clone for Kept<T> {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
            loaded_at: self.loaded_at,
        }
    }
}

struct Table<T> {
    entries: moka::future::Cache<String, Cached<T>>,
    /// Found records for stale serving; `None` when `stale_for` is zero.
    kept: Option<moka::future::Cache<String, Kept<T>>>,
    hits: IntCounter,
    misses: IntCounter,
    stale: IntCounter,
}

/// What a table needs from its cache to load.
struct Loading<'a> {
    epoch: &'a AtomicU64,
    clock: &'a dyn Clock,
    /// How long after its load a kept record may still be served: `ttl + stale_for`.
    serve_for: chrono::Duration,
    breaker: &'a Breaker,
}

/// Once the store is found unreachable, misses don't wait on it again for a while: they are
/// answered from the kept copies (or refused) at once, and one probe goes to the store each
/// `PROBE_EVERY`. Without it every miss of an outage would wait out the store's timeouts.
#[derive(Default)]
struct Breaker {
    /// Milliseconds (by the engine's clock) before which the store isn't asked; 0: closed.
    open_until: std::sync::atomic::AtomicI64,
}

const PROBE_EVERY: chrono::Duration = chrono::Duration::milliseconds(500);

impl Breaker {
    /// Whether a miss may ask the store now. Past the wait, the first to ask takes the probe.
    fn allows(&self, now: DateTime<Utc>) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now_ms = now.timestamp_millis();
        now_ms >= until
            && self
                .open_until
                .compare_exchange(
                    until,
                    (now + PROBE_EVERY).timestamp_millis(),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    fn trip(&self, now: DateTime<Utc>) {
        self.open_until
            .store((now + PROBE_EVERY).timestamp_millis(), Ordering::Release);
    }

    fn close(&self) {
        self.open_until.store(0, Ordering::Release);
    }
}

impl<T: Send + Sync + 'static> Table<T> {
    fn new(kind: &'static str, config: &CacheConfig, metrics: &Metrics) -> Self {
        Self {
            entries: moka::future::Cache::builder()
                .max_capacity(config.max_entries)
                .expire_after(TtlByKind {
                    found: config.ttl,
                    missing: config.negative_ttl,
                })
                .build(),
            kept: (!config.stale_for.is_zero()).then(|| {
                moka::future::Cache::builder()
                    .max_capacity(config.max_entries)
                    .time_to_live(config.ttl + config.stale_for)
                    .build()
            }),
            hits: metrics.cache_lookup(kind, "hit"),
            misses: metrics.cache_lookup(kind, "miss"),
            stale: metrics.cache_lookup(kind, "stale"),
        }
    }

    async fn remove(&self, id: &str) {
        self.entries.invalidate(id).await;
        if let Some(kept) = &self.kept {
            kept.invalidate(id).await;
        }
    }

    fn clear(&self, kept_too: bool) {
        self.entries.invalidate_all();
        if kept_too && let Some(kept) = &self.kept {
            kept.invalidate_all();
        }
    }

    /// The kept copy of a record the store can't be asked for, if it is still young enough.
    async fn stale(&self, id: &str, at: &Loading<'_>) -> Option<Cached<T>> {
        let kept = self.kept.as_ref()?.get(id).await?;
        if at.clock.now() - kept.loaded_at > at.serve_for {
            return None;
        }
        self.stale.inc();
        Some(Cached::Found(kept.value))
    }

    /// `fetch` is only called on a miss (an async-trait call allocates its future).
    async fn get<F, Fut>(&self, at: &Loading<'_>, id: &str, fetch: F) -> StoreResult<Cached<T>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = StoreResult<Option<T>>>,
    {
        if let Some(hit) = self.entries.get(id).await {
            self.hits.inc();
            return Ok(hit);
        }
        self.misses.inc();
        if !at.breaker.allows(at.clock.now()) {
            return match self.stale(id, at).await {
                Some(v) => Ok(v),
                None => Err(StoreError::Unavailable("the store is not answering".into())),
            };
        }
        let epoch = at.epoch;
        let started = epoch.load(Ordering::Acquire);
        let loaded = self
            .entries
            .try_get_with(id.to_owned(), async {
                let value = Cached::from_option(fetch().await.map_err(LoadError::Store)?);
                if epoch.load(Ordering::Acquire) == started {
                    Ok(value)
                } else {
                    Err(LoadError::Raced(value))
                }
            })
            .await;
        match loaded {
            Ok(v) => {
                at.breaker.close();
                match (&self.kept, &v) {
                    (Some(kept), Cached::Found(value)) => {
                        let loaded_at = at.clock.now();
                        let value = value.clone();
                        kept.insert(id.to_owned(), Kept { value, loaded_at }).await;
                    }
                    // Gone from the store (deleted, perhaps by a change this replica never
                    // heard of): nothing of it may be served stale later.
                    (Some(kept), Cached::Missing) => kept.invalidate(id).await,
                    (None, _) => {}
                }
                // An invalidation between the check in the loader and moka's insert: drop it.
                if epoch.load(Ordering::Acquire) != started {
                    self.remove(id).await;
                }
                Ok(v)
            }
            Err(e) => match &*e {
                LoadError::Raced(v) => Ok(v.clone()),
                LoadError::Store(StoreError::Unavailable(m)) => {
                    at.breaker.trip(at.clock.now());
                    match self.stale(id, at).await {
                        Some(v) => Ok(v),
                        None => Err(StoreError::Unavailable(m.clone())),
                    }
                }
                LoadError::Store(other) => Err(StoreError::Backend(other.to_string())),
            },
        }
    }
}

pub struct Cache {
    store: SharedStore,
    users: Table<User>,
    apps: Table<App>,
    user_tokens: Table<UserToken>,
    tickets: Table<Ticket>,
    sessions: Table<Session>,
    app_tokens: Table<AppToken>,
    /// Bumped by every invalidation; a load that saw it move is not kept.
    epoch: AtomicU64,
    clock: Arc<dyn Clock>,
    serve_for: chrono::Duration,
    stale_for: Duration,
    breaker: Breaker,
    metrics: Arc<Metrics>,
}

impl Cache {
    pub fn new(
        store: SharedStore,
        config: &CacheConfig,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            users: Table::new("user", config, &metrics),
            apps: Table::new("app", config, &metrics),
            user_tokens: Table::new("user_token", config, &metrics),
            tickets: Table::new("ticket", config, &metrics),
            sessions: Table::new("session", config, &metrics),
            app_tokens: Table::new("app_token", config, &metrics),
            store,
            epoch: AtomicU64::new(0),
            clock,
            serve_for: chrono::Duration::from_std(config.ttl + config.stale_for)
                .unwrap_or(chrono::Duration::MAX),
            stale_for: config.stale_for,
            breaker: Breaker::default(),
            metrics,
        }
    }

    fn loading(&self) -> Loading<'_> {
        Loading {
            epoch: &self.epoch,
            clock: &*self.clock,
            serve_for: self.serve_for,
            breaker: &self.breaker,
        }
    }

    /// How long past its TTL a cached record serves while the store is down.
    pub fn stale_for(&self) -> Duration {
        self.stale_for
    }

    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    pub async fn user(&self, id: &str) -> StoreResult<Cached<User>> {
        self.users
            .get(&self.loading(), id, || self.store.user(id))
            .await
    }

    pub async fn app(&self, id: &str) -> StoreResult<Cached<App>> {
        self.apps
            .get(&self.loading(), id, || self.store.app(id))
            .await
    }

    pub async fn user_token(&self, id: &str) -> StoreResult<Cached<UserToken>> {
        self.user_tokens
            .get(&self.loading(), id, || self.store.user_token(id))
            .await
    }

    pub async fn ticket(&self, id: &str) -> StoreResult<Cached<Ticket>> {
        self.tickets
            .get(&self.loading(), id, || self.store.ticket(id))
            .await
    }

    pub async fn session(&self, id: &str) -> StoreResult<Cached<Session>> {
        self.sessions
            .get(&self.loading(), id, || self.store.session(id))
            .await
    }

    pub async fn app_token(&self, id: &str) -> StoreResult<Cached<AppToken>> {
        self.app_tokens
            .get(&self.loading(), id, || self.store.app_token(id))
            .await
    }

    /// Records held per kind, for `tokengate_cache_entries` (at a scrape: moka counts after
    /// its pending maintenance has run).
    pub async fn entry_counts(&self) -> [(&'static str, u64); 6] {
        async fn count<T: Send + Sync + 'static>(t: &Table<T>) -> u64 {
            t.entries.run_pending_tasks().await;
            t.entries.entry_count()
        }
        [
            ("user", count(&self.users).await),
            ("app", count(&self.apps).await),
            ("user_token", count(&self.user_tokens).await),
            ("ticket", count(&self.tickets).await),
            ("session", count(&self.sessions).await),
            ("app_token", count(&self.app_tokens).await),
        ]
    }

    /// Whether a user token's record (or its absence) is cached: no store read, and (moka's
    /// `contains_key`) not counted as a read of the entry.
    pub fn holds_user_token(&self, id: &str) -> bool {
        self.user_tokens.entries.contains_key(id)
    }

    /// Whether a ticket's record (or its absence) is cached.
    pub fn holds_ticket(&self, id: &str) -> bool {
        self.tickets.entries.contains_key(id)
    }

    /// Drops a record from this process's cache at once: a change made here (`remote` false)
    /// or announced by another replica.
    pub async fn invalidate(&self, what: &Invalidation, remote: bool) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if remote {
            self.metrics.invalidations_remote.inc();
        } else {
            self.metrics.invalidations_local.inc();
        }
        match what {
            Invalidation::User(id) => self.users.remove(id).await,
            Invalidation::App(id) => self.apps.remove(id).await,
            Invalidation::UserToken(id) => self.user_tokens.remove(id).await,
            Invalidation::Ticket(id) => self.tickets.remove(id).await,
            Invalidation::Session(id) => self.sessions.remove(id).await,
            Invalidation::AppToken(id) => self.app_tokens.remove(id).await,
        }
    }

    /// Forgets everything cached, because changes may have been missed: the next use of each
    /// record reads the store. With `keep_stale`, the copies kept for stale serving stay (the
    /// store may be down, and they are only read then); without, they go too.
    pub fn resync(&self, keep_stale: bool) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.metrics.invalidations_resync.inc();
        let kept_too = !keep_stale;
        self.users.clear(kept_too);
        self.apps.clear(kept_too);
        self.user_tokens.clear(kept_too);
        self.tickets.clear(kept_too);
        self.sessions.clear(kept_too);
        self.app_tokens.clear(kept_too);
    }
}
