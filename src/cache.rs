//! moka in front of the store: users, apps and user tokens by id, found (`ttl`) or known to be
//! absent (`negative_ttl`). A hit is one concurrent-map read and an `Arc` clone: no store call,
//! no write, no lock. Concurrent misses on one key share a single store read.
//!
//! Invalidation: an admin change calls [`Cache::invalidate`] at once; the same
//! [`Invalidation`] is what a cross-replica bus (Redis pub/sub) carries. A load racing an
//! invalidation is used once but not kept, so a change is never papered over by a stale read.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use prometheus::IntCounter;

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

struct Table<T> {
    entries: moka::future::Cache<String, Cached<T>>,
    hits: IntCounter,
    misses: IntCounter,
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
            hits: metrics.cache_lookup(kind, true),
            misses: metrics.cache_lookup(kind, false),
        }
    }

    /// `fetch` is only called on a miss (an async-trait call allocates its future).
    async fn get<F, Fut>(&self, epoch: &AtomicU64, id: &str, fetch: F) -> StoreResult<Cached<T>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = StoreResult<Option<T>>>,
    {
        if let Some(hit) = self.entries.get(id).await {
            self.hits.inc();
            return Ok(hit);
        }
        self.misses.inc();
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
                // An invalidation between the check in the loader and moka's insert: drop it.
                if epoch.load(Ordering::Acquire) != started {
                    self.entries.invalidate(id).await;
                }
                Ok(v)
            }
            Err(e) => match &*e {
                LoadError::Raced(v) => Ok(v.clone()),
                LoadError::Store(StoreError::Unavailable(m)) => {
                    Err(StoreError::Unavailable(m.clone()))
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
    metrics: Arc<Metrics>,
}

impl Cache {
    pub fn new(store: SharedStore, config: &CacheConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            users: Table::new("user", config, &metrics),
            apps: Table::new("app", config, &metrics),
            user_tokens: Table::new("user_token", config, &metrics),
            tickets: Table::new("ticket", config, &metrics),
            sessions: Table::new("session", config, &metrics),
            app_tokens: Table::new("app_token", config, &metrics),
            store,
            epoch: AtomicU64::new(0),
            metrics,
        }
    }

    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    pub async fn user(&self, id: &str) -> StoreResult<Cached<User>> {
        self.users
            .get(&self.epoch, id, || self.store.user(id))
            .await
    }

    pub async fn app(&self, id: &str) -> StoreResult<Cached<App>> {
        self.apps.get(&self.epoch, id, || self.store.app(id)).await
    }

    pub async fn user_token(&self, id: &str) -> StoreResult<Cached<UserToken>> {
        self.user_tokens
            .get(&self.epoch, id, || self.store.user_token(id))
            .await
    }

    pub async fn ticket(&self, id: &str) -> StoreResult<Cached<Ticket>> {
        self.tickets
            .get(&self.epoch, id, || self.store.ticket(id))
            .await
    }

    pub async fn session(&self, id: &str) -> StoreResult<Cached<Session>> {
        self.sessions
            .get(&self.epoch, id, || self.store.session(id))
            .await
    }

    pub async fn app_token(&self, id: &str) -> StoreResult<Cached<AppToken>> {
        self.app_tokens
            .get(&self.epoch, id, || self.store.app_token(id))
            .await
    }

    /// Drops a record from this process's cache at once.
    pub async fn invalidate(&self, what: &Invalidation) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.metrics.invalidations_local.inc();
        match what {
            Invalidation::User(id) => self.users.entries.invalidate(id).await,
            Invalidation::App(id) => self.apps.entries.invalidate(id).await,
            Invalidation::UserToken(id) => self.user_tokens.entries.invalidate(id).await,
            Invalidation::Ticket(id) => self.tickets.entries.invalidate(id).await,
            Invalidation::Session(id) => self.sessions.entries.invalidate(id).await,
            Invalidation::AppToken(id) => self.app_tokens.entries.invalidate(id).await,
        }
    }
}
