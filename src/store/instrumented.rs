//! A [`Store`] that counts and times every call of the store it wraps
//! (`tokengate_store_requests_total`, `tokengate_store_duration_seconds`, `tokengate_store_up`).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::{DeletedUser, SharedStore, Store, StoreError, StoreResult, TokenFilter};
use crate::metrics::Metrics;
use crate::model::{App, AppToken, Session, Ticket, User, UserToken};

pub struct Instrumented {
    inner: SharedStore,
    metrics: Arc<Metrics>,
}

impl Instrumented {
    pub fn new(inner: SharedStore, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    async fn observe<T>(
        &self,
        op: &str,
        call: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let started = Instant::now();
        let out = call.await;
        self.metrics
            .store_duration
            .observe(started.elapsed().as_secs_f64());
        let reached = !matches!(out, Err(StoreError::Unavailable(_)));
        self.metrics.store_reached(reached);
        // Not found, taken and over the limit are answers; unavailable and backend errors fail.
        let answered = !matches!(
            out,
            Err(StoreError::Unavailable(_) | StoreError::Backend(_))
        );
        self.metrics
            .store_request(self.inner.backend(), op, answered);
        out
    }
}

#[async_trait]
impl Store for Instrumented {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn ping(&self) -> StoreResult<()> {
        self.observe("ping", self.inner.ping()).await
    }
    async fn user(&self, id: &str) -> StoreResult<Option<User>> {
        self.observe("get_user", self.inner.user(id)).await
    }
    async fn users(&self) -> StoreResult<Vec<User>> {
        self.observe("list_users", self.inner.users()).await
    }
    async fn insert_user(&self, user: &User) -> StoreResult<()> {
        self.observe("insert_user", self.inner.insert_user(user))
            .await
    }
    async fn update_user(&self, user: &User) -> StoreResult<()> {
        self.observe("update_user", self.inner.update_user(user))
            .await
    }
    async fn delete_user(&self, id: &str) -> StoreResult<DeletedUser> {
        self.observe("delete_user", self.inner.delete_user(id))
            .await
    }
    async fn app(&self, id: &str) -> StoreResult<Option<App>> {
        self.observe("get_app", self.inner.app(id)).await
    }
    async fn apps(&self) -> StoreResult<Vec<App>> {
        self.observe("list_apps", self.inner.apps()).await
    }
    async fn insert_app(&self, app: &App) -> StoreResult<()> {
        self.observe("insert_app", self.inner.insert_app(app)).await
    }
    async fn update_app(&self, app: &App) -> StoreResult<()> {
        self.observe("update_app", self.inner.update_app(app)).await
    }
    async fn delete_app(&self, id: &str) -> StoreResult<Vec<String>> {
        self.observe("delete_app", self.inner.delete_app(id)).await
    }
    async fn user_token(&self, id: &str) -> StoreResult<Option<UserToken>> {
        self.observe("get_user_token", self.inner.user_token(id))
            .await
    }
    async fn user_tokens(&self, filter: &TokenFilter) -> StoreResult<Vec<UserToken>> {
        self.observe("list_user_tokens", self.inner.user_tokens(filter))
            .await
    }
    async fn insert_user_token(&self, token: &UserToken, limit: usize) -> StoreResult<()> {
        self.observe(
            "insert_user_token",
            self.inner.insert_user_token(token, limit),
        )
        .await
    }
    async fn update_user_token(&self, token: &UserToken) -> StoreResult<()> {
        self.observe("update_user_token", self.inner.update_user_token(token))
            .await
    }
    async fn delete_user_token(&self, id: &str) -> StoreResult<()> {
        self.observe("delete_user_token", self.inner.delete_user_token(id))
            .await
    }
    async fn ticket(&self, id: &str) -> StoreResult<Option<Ticket>> {
        self.observe("get_ticket", self.inner.ticket(id)).await
    }
    async fn tickets(&self, user: Option<&str>) -> StoreResult<Vec<Ticket>> {
        self.observe("list_tickets", self.inner.tickets(user)).await
    }
    async fn insert_ticket(&self, ticket: &Ticket) -> StoreResult<()> {
        self.observe("insert_ticket", self.inner.insert_ticket(ticket))
            .await
    }
    async fn update_ticket(&self, ticket: &Ticket) -> StoreResult<()> {
        self.observe("update_ticket", self.inner.update_ticket(ticket))
            .await
    }
    async fn session(&self, id: &str) -> StoreResult<Option<Session>> {
        self.observe("get_session", self.inner.session(id)).await
    }
    async fn sessions(&self, user: Option<&str>) -> StoreResult<Vec<Session>> {
        self.observe("list_sessions", self.inner.sessions(user))
            .await
    }
    async fn insert_session(&self, session: &Session) -> StoreResult<()> {
        self.observe("insert_session", self.inner.insert_session(session))
            .await
    }
    async fn update_session(&self, session: &Session) -> StoreResult<()> {
        self.observe("update_session", self.inner.update_session(session))
            .await
    }
    async fn signing_keys(&self) -> StoreResult<Option<Vec<u8>>> {
        self.observe("get_signing_keys", self.inner.signing_keys())
            .await
    }
    async fn init_signing_keys(&self, keys: Vec<u8>) -> StoreResult<Vec<u8>> {
        self.observe("init_signing_keys", self.inner.init_signing_keys(keys))
            .await
    }
    async fn app_token(&self, id: &str) -> StoreResult<Option<AppToken>> {
        self.observe("get_app_token", self.inner.app_token(id))
            .await
    }
    async fn app_tokens(&self, app_id: &str) -> StoreResult<Vec<AppToken>> {
        self.observe("list_app_tokens", self.inner.app_tokens(app_id))
            .await
    }
    async fn insert_app_token(&self, token: &AppToken, limit: usize) -> StoreResult<()> {
        self.observe(
            "insert_app_token",
            self.inner.insert_app_token(token, limit),
        )
        .await
    }
    async fn delete_app_token(&self, id: &str) -> StoreResult<()> {
        self.observe("delete_app_token", self.inner.delete_app_token(id))
            .await
    }
    async fn record_usage(&self, used: &[crate::usage::Usage]) -> StoreResult<()> {
        self.observe("record_usage", self.inner.record_usage(used))
            .await
    }
    async fn admin_key_hash(&self) -> StoreResult<Option<[u8; 32]>> {
        self.observe("get_admin_key", self.inner.admin_key_hash())
            .await
    }
    async fn init_admin_key_hash(&self, hash: [u8; 32]) -> StoreResult<[u8; 32]> {
        self.observe("init_admin_key", self.inner.init_admin_key_hash(hash))
            .await
    }
    async fn publish(&self, message: &str) -> StoreResult<()> {
        if self.inner.subscriber().is_none() {
            return Ok(()); // one machine: nobody to tell, no store call to count
        }
        self.observe("publish", self.inner.publish(message)).await
    }
    fn subscriber(&self) -> Option<(super::redis::Subscriber, &'static str)> {
        self.inner.subscriber()
    }
}
