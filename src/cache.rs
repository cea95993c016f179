//! moka in front of the store: users, apps and user tokens by id, found (`ttl`) or known to be
//! absent (`negative_ttl`). A hit is one concurrent-map read, a clock read and an `Arc` clone:
//! no store call, no write, no lock. Concurrent misses on one key share a single store read.
//!
//! Invalidation: an admin change calls [`Cache::invalidate`] at once; the same
//! [`Invalidation`] is what the cross-replica bus (Redis pub/sub, `crate::bus`) carries. A load
//! racing an invalidation is used once but not kept, so a change is never papered over by a
//! stale read. When messages may have been missed (the subscription dropped),
//! [`Cache::resync`] starts a new generation: no entry loaded before it is a hit again (they
//! stay only for stale serving), so the bound on a missed change is the TTL at worst.
//!
//! Stale serving: an entry carries the time it was loaded (by the engine's clock). It is a hit
//! for `ttl`; a found record then stays in the table until `ttl + stale_for`, and is read only
//! when the store can't be reached: a decision already cached keeps serving through a store
//! outage for up to `stale_for` past its TTL. One table holds both, so each record is held
//! once.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::ops::compute::{CompResult, Op};
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

/// How long moka keeps an entry: a found record for `ttl + stale_for` (fresh for `ttl`, then
/// kept for stale serving), an absence for `negative_ttl`.
struct Lifetimes {
    found: Duration,
    missing: Duration,
}

impl Lifetimes {
    fn of<T>(&self, slot: &Slot<T>) -> Duration {
        match slot.value {
            Cached::Found(_) => self.found,
            Cached::Missing => self.missing,
        }
    }
}

impl<T> Expiry<String, Slot<T>> for Lifetimes {
    fn expire_after_create(&self, _: &String, slot: &Slot<T>, _: Instant) -> Option<Duration> {
        Some(self.of(slot))
    }

    /// A reload starts the entry's life again (moka's default would keep the old deadline).
    fn expire_after_update(
        &self,
        _: &String,
        slot: &Slot<T>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.of(slot))
    }
}

enum LoadError<T> {
    Store(StoreError),
    /// An invalidation landed while the store was read: use the value, don't keep it.
    Raced(Cached<T>),
}

/// An entry: the store's answer, when it was read, and under which generation of the cache.
/// Fresh (served as a hit) while younger than its TTL and of the current generation; a found
/// record older than that stays in the table until `ttl + stale_for`, read only when the
/// store can't be reached. One table for both: each record is held once.
struct Slot<T> {
    value: Cached<T>,
    /// Milliseconds, by the engine's clock.
    loaded_at: i64,
    /// A resync starts a new generation: nothing older is fresh after it.
    generation: u64,
}

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
            loaded_at: self.loaded_at,
            generation: self.generation,
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

struct Table<T> {
    entries: moka::future::Cache<String, Slot<T>>,
    /// How long a found record is fresh (`ttl`), in milliseconds.
    fresh_found: i64,
    /// How long an absence is fresh (`negative_ttl`), in milliseconds.
    fresh_missing: i64,
    /// How long after its load a found record may serve while the store is down
    /// (`ttl + stale_for`), in milliseconds; `None` when `stale_for` is zero.
    serve_for: Option<i64>,
    hits: IntCounter,
    misses: IntCounter,
    stale: IntCounter,
}

/// What a table needs from its cache to look up and load.
struct Loading<'a> {
    epoch: &'a AtomicU64,
    generation: &'a AtomicU64,
    clock: &'a dyn Clock,
    breaker: &'a Breaker,
}

impl Loading<'_> {
    fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }
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
        let keeps_stale = !config.stale_for.is_zero();
        Self {
            entries: moka::future::Cache::builder()
                .max_capacity(config.max_entries)
                .expire_after(Lifetimes {
                    found: config.ttl + config.stale_for,
                    missing: config.negative_ttl,
                })
                .build(),
            fresh_found: millis(config.ttl),
            fresh_missing: millis(config.negative_ttl),
            serve_for: keeps_stale.then(|| millis(config.ttl + config.stale_for)),
            hits: metrics.cache_lookup(kind, "hit"),
            misses: metrics.cache_lookup(kind, "miss"),
            stale: metrics.cache_lookup(kind, "stale"),
        }
    }

    fn is_fresh(&self, slot: &Slot<T>, at: &Loading<'_>, now_ms: i64) -> bool {
        let ttl = match slot.value {
            Cached::Found(_) => self.fresh_found,
            Cached::Missing => self.fresh_missing,
        };
        slot.generation == at.generation.load(Ordering::Acquire)
            && now_ms.saturating_sub(slot.loaded_at) < ttl
    }

    /// Whether the table holds a fresh answer for `id` (a record or its absence).
    async fn holds(&self, at: &Loading<'_>, id: &str) -> bool {
        self.entries
            .get(id)
            .await
            .is_some_and(|slot| self.is_fresh(&slot, at, at.now_ms()))
    }

    async fn remove(&self, id: &str) {
        self.entries.invalidate(id).await;
    }

    /// After a resync (the generation has moved on): with `kept_too`, or when nothing is kept
    /// for stale serving, the entries go; else they stay, for stale serving only.
    fn clear(&self, kept_too: bool) {
        if kept_too || self.serve_for.is_none() {
            self.entries.invalidate_all();
        }
    }

    /// The kept copy of a record the store can't be asked for, if it is still young enough.
    async fn stale(&self, id: &str, at: &Loading<'_>) -> Option<Cached<T>> {
        let serve_for = self.serve_for?;
        let slot = self.entries.get(id).await?;
        let Cached::Found(value) = slot.value else {
            return None;
        };
        if at.now_ms().saturating_sub(slot.loaded_at) > serve_for {
            return None;
        }
        self.stale.inc();
        Some(Cached::Found(value))
    }

    /// `fetch` is only called on a miss (an async-trait call allocates its future).
    async fn get<F, Fut>(&self, at: &Loading<'_>, id: &str, fetch: F) -> StoreResult<Cached<T>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = StoreResult<Option<T>>>,
    {
        if let Some(slot) = self.entries.get(id).await
            && self.is_fresh(&slot, at, at.now_ms())
        {
            self.hits.inc();
            return Ok(slot.value);
        }
        self.misses.inc();
        if !at.breaker.allows(at.clock.now()) {
            return match self.stale(id, at).await {
                Some(v) => Ok(v),
                None => Err(StoreError::Unavailable("the store is not answering".into())),
            };
        }
        let started = at.epoch.load(Ordering::Acquire);
        let generation = at.generation.load(Ordering::Acquire);
        // Loads of one key run one at a time (moka's per-key lock), so concurrent misses
        // share a single store read: the later ones find the entry fresh and leave it.
        let loaded = self
            .entries
            .entry_by_ref(id)
            .and_try_compute_with(|current| async move {
                if current.is_some_and(|c| self.is_fresh(c.value(), at, at.now_ms())) {
                    return Ok(Op::Nop);
                }
                let value = Cached::from_option(fetch().await.map_err(LoadError::Store)?);
                if at.epoch.load(Ordering::Acquire) != started {
                    return Err(LoadError::Raced(value));
                }
                Ok(Op::Put(Slot {
                    value,
                    loaded_at: at.now_ms(),
                    generation,
                }))
            })
            .await;
        match loaded {
            Ok(
                CompResult::Inserted(entry)
                | CompResult::ReplacedWith(entry)
                | CompResult::Unchanged(entry),
            ) => {
                at.breaker.close();
                // An invalidation between the check in the loader and moka's put: drop it.
                if at.epoch.load(Ordering::Acquire) != started {
                    self.remove(id).await;
                }
                Ok(entry.into_value().value)
            }
            // The loader never removes, nor leaves an absent entry absent.
            Ok(CompResult::Removed(_) | CompResult::StillNone(_)) => Err(StoreError::Backend(
                "the cache lost an entry while loading it".into(),
            )),
            Err(LoadError::Raced(v)) => Ok(v),
            Err(LoadError::Store(StoreError::Unavailable(m))) => {
                at.breaker.trip(at.clock.now());
                match self.stale(id, at).await {
                    Some(v) => Ok(v),
                    None => Err(StoreError::Unavailable(m)),
                }
            }
            Err(LoadError::Store(other)) => Err(other),
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
    /// Bumped by every resync; entries loaded before it are no longer fresh.
    generation: AtomicU64,
    clock: Arc<dyn Clock>,
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
            generation: AtomicU64::new(0),
            clock,
            stale_for: config.stale_for,
            breaker: Breaker::default(),
            metrics,
        }
    }

    fn loading(&self) -> Loading<'_> {
        Loading {
            epoch: &self.epoch,
            generation: &self.generation,
            clock: &*self.clock,
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

    /// Whether a user token's record (or its absence) is cached and fresh: no store read.
    pub async fn holds_user_token(&self, id: &str) -> bool {
        self.user_tokens.holds(&self.loading(), id).await
    }

    /// Whether a ticket's record (or its absence) is cached and fresh.
    pub async fn holds_ticket(&self, id: &str) -> bool {
        self.tickets.holds(&self.loading(), id).await
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
        self.generation.fetch_add(1, Ordering::AcqRel);
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
