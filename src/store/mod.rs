//! The source of truth: one [`Store`] trait, two backends. `embedded` keeps everything in one
//! redb file (the default: one machine needs nothing else); `redis` is shared by every replica.
//! Both pass the same conformance suite (`tests/store_conformance.rs`). The store knows nothing
//! of caching or policy; writes that must hold together (a token and its owner's index, a user
//! and its tokens) are atomic in both backends.

pub mod embedded;
pub mod instrumented;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;

use crate::model::{App, AppToken, Session, Ticket, User, UserToken};
use crate::usage::Usage;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("already exists")]
    Conflict,
    /// The owner already holds the most tokens allowed.
    #[error("limit of {0} reached")]
    LimitReached(usize),
    /// The backend can't answer now (Redis down, a timeout): worth retrying later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The backend answered with something that isn't ours or can't be read.
    #[error("store error: {0}")]
    Backend(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Which tokens a list wants.
#[derive(Clone, Debug, Default)]
pub struct TokenFilter {
    pub user: Option<String>,
    pub app: Option<String>,
    pub active: Option<bool>,
}

impl TokenFilter {
    pub fn matches(&self, t: &UserToken) -> bool {
        self.user.as_ref().is_none_or(|u| *u == t.user_id)
            && self.app.as_ref().is_none_or(|a| t.is_assigned(a))
            && self.active.is_none_or(|a| a == t.active)
    }
}

/// The store every backend implements. Lists come back sorted by id.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `embedded` or `redis`: the `backend` label of the store metrics.
    fn backend(&self) -> &'static str;
    /// Succeeds when the backend answers.
    async fn ping(&self) -> StoreResult<()>;

    async fn user(&self, id: &str) -> StoreResult<Option<User>>;
    async fn users(&self) -> StoreResult<Vec<User>>;
    /// Fails with `Conflict` when the id is taken.
    async fn insert_user(&self, user: &User) -> StoreResult<()>;
    /// Fails with `NotFound` when there is no such user.
    async fn update_user(&self, user: &User) -> StoreResult<()>;
    /// Deletes the user and every credential it owns, at once; returns their ids.
    async fn delete_user(&self, id: &str) -> StoreResult<DeletedUser>;

    async fn app(&self, id: &str) -> StoreResult<Option<App>>;
    async fn apps(&self) -> StoreResult<Vec<App>>;
    async fn insert_app(&self, app: &App) -> StoreResult<()>;
    async fn update_app(&self, app: &App) -> StoreResult<()>;
    /// Deletes the app and its app tokens, at once; returns the app tokens' ids.
    async fn delete_app(&self, id: &str) -> StoreResult<Vec<String>>;

    async fn user_token(&self, id: &str) -> StoreResult<Option<UserToken>>;
    async fn user_tokens(&self, filter: &TokenFilter) -> StoreResult<Vec<UserToken>>;
    /// Fails with `NotFound` when the owner doesn't exist, `LimitReached` when the owner
    /// already holds `limit` tokens, `Conflict` when the id is taken.
    async fn insert_user_token(&self, token: &UserToken, limit: usize) -> StoreResult<()>;
    async fn update_user_token(&self, token: &UserToken) -> StoreResult<()>;
    async fn delete_user_token(&self, id: &str) -> StoreResult<()>;

    async fn ticket(&self, id: &str) -> StoreResult<Option<Ticket>>;
    /// Every ticket, or one user's.
    async fn tickets(&self, user: Option<&str>) -> StoreResult<Vec<Ticket>>;
    /// Fails with `NotFound` when the user doesn't exist, `Conflict` when the id is taken.
    async fn insert_ticket(&self, ticket: &Ticket) -> StoreResult<()>;
    /// Fails with `NotFound` when there is no such ticket.
    async fn update_ticket(&self, ticket: &Ticket) -> StoreResult<()>;

    async fn session(&self, id: &str) -> StoreResult<Option<Session>>;
    /// Every session, or one user's.
    async fn sessions(&self, user: Option<&str>) -> StoreResult<Vec<Session>>;
    /// Fails with `NotFound` when the user doesn't exist, `Conflict` when the id is taken.
    async fn insert_session(&self, session: &Session) -> StoreResult<()>;
    async fn update_session(&self, session: &Session) -> StoreResult<()>;

    /// The session signing keys the store generated and keeps (exported form, JSON).
    async fn signing_keys(&self) -> StoreResult<Option<Vec<u8>>>;
    /// Keeps `keys` unless keys are already kept; returns the ones kept.
    async fn init_signing_keys(&self, keys: Vec<u8>) -> StoreResult<Vec<u8>>;

    async fn app_token(&self, id: &str) -> StoreResult<Option<AppToken>>;
    async fn app_tokens(&self, app_id: &str) -> StoreResult<Vec<AppToken>>;
    /// Fails with `NotFound` when the app doesn't exist, `LimitReached` when it already holds
    /// `limit` app tokens, `Conflict` when the id is taken.
    async fn insert_app_token(&self, token: &AppToken, limit: usize) -> StoreResult<()>;
    async fn delete_app_token(&self, id: &str) -> StoreResult<()>;

    /// Records when credentials were last used (the write-behind's batch). A later time
    /// replaces an earlier one, never the reverse. Getters report it as the record's
    /// `last_used_at` (user tokens) or `last_active_at` (tickets).
    async fn record_usage(&self, used: &[Usage]) -> StoreResult<()>;

    /// The SHA-256 of the admin key made at first start, if one was made.
    async fn admin_key_hash(&self) -> StoreResult<Option<[u8; 32]>>;
    /// Keeps `hash` unless a hash is already kept; returns the one kept.
    async fn init_admin_key_hash(&self, hash: [u8; 32]) -> StoreResult<[u8; 32]>;

    /// Announces a change to every replica sharing the store (Redis pub/sub). On one machine
    /// there is nobody to tell.
    async fn publish(&self, _message: &str) -> StoreResult<()> {
        Ok(())
    }

    /// Where to hear other replicas' announcements: pub/sub connections to Redis and the channel.
    fn subscriber(&self) -> Option<(redis::Subscriber, &'static str)> {
        None
    }
}

pub type SharedStore = Arc<dyn Store>;

/// What deleting a user took with it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeletedUser {
    pub user_tokens: Vec<String>,
    pub tickets: Vec<String>,
    pub sessions: Vec<String>,
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Backend(format!("unreadable {what}: {e}")))
}

fn encode<T: serde::Serialize>(value: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StoreError::Backend(format!("encoding: {e}")))
}
