//! The ticket lifecycle: sign in with name and password (a new ticket), and revoke (sign-out,
//! the admin API). Used by the `/_auth` endpoints, the Quickbase XML API forms and the admin
//! API alike.

use std::net::IpAddr;
use std::sync::Arc;

use chrono::Duration;

use crate::cache::Invalidation;
use crate::credential::format::{self, TokenKind};
use crate::engine::Engine;
use crate::error::AuthError;
use crate::model::{Ticket, User};
use crate::store::{SharedStore, StoreError};

/// Why a sign-in failed.
#[derive(Debug, PartialEq, Eq)]
pub enum SignInError {
    /// A field is missing or bad: (field, why).
    Invalid(&'static str, String),
    /// Unknown user, wrong password, no password, or a disabled user: one answer for all.
    Refused,
    /// Too many failed attempts from this client.
    TooManyFailures,
    Unavailable,
}

pub struct Tickets {
    engine: Arc<Engine>,
    store: SharedStore,
    pub default_hours: u32,
    pub max_hours: u32,
}

impl Tickets {
    pub fn new(
        engine: Arc<Engine>,
        store: SharedStore,
        default_hours: u32,
        max_hours: u32,
    ) -> Self {
        Self {
            engine,
            store,
            default_hours,
            max_hours,
        }
    }

    /// `hours` as given (absent: the default), checked against 1..=max.
    pub fn hours(&self, hours: Option<&str>) -> Result<u32, SignInError> {
        let Some(raw) = hours.map(str::trim).filter(|h| !h.is_empty()) else {
            return Ok(self.default_hours);
        };
        match raw.parse::<u32>() {
            Ok(h) if (1..=self.max_hours).contains(&h) => Ok(h),
            _ => Err(SignInError::Invalid(
                "hours",
                format!("hours must be a whole number from 1 to {}", self.max_hours),
            )),
        }
    }

    /// Checks the name (email or id) and password, and issues a ticket valid for `hours`.
    /// A wrong password counts as a failed attempt of `client`.
    pub async fn sign_in(
        &self,
        username: &str,
        password: &str,
        hours: u32,
        client: Option<IpAddr>,
    ) -> Result<(Ticket, String), SignInError> {
        let user = self.authenticate(username, password, client).await?;
        let secret = format::generate(TokenKind::Ticket).map_err(|_| SignInError::Unavailable)?;
        let now = self.engine.clock().now();
        let ticket = Ticket {
            id: secret.id,
            secret_hash: secret.hash,
            user_id: user.id.clone(),
            issued_at: now,
            expires_at: now + Duration::hours(i64::from(hours)),
            last_active_at: None,
            revoked_at: None,
            used: Default::default(),
            headers: Default::default(),
        };
        self.store
            .insert_ticket(&ticket)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => SignInError::Refused,
                _ => SignInError::Unavailable,
            })?;
        self.engine.metrics().issued("ticket");
        tracing::info!(target: "audit", ticket_id = %ticket.id, user_id = %ticket.user_id, "ticket issued");
        Ok((ticket, secret.token))
    }

    /// The active user a name (email or id) and password stand for. A wrong password counts as
    /// a failed attempt of `client`.
    pub async fn authenticate(
        &self,
        username: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> Result<User, SignInError> {
        let failures = self.engine.failures();
        if failures.is_blocked(client) {
            return Err(SignInError::TooManyFailures);
        }
        let user = self.find_user(username).await?;
        let phc = user.as_ref().and_then(|u| u.password_hash.clone());
        let matches = crate::password::verify(password.to_owned(), phc).await;
        match user {
            Some(user) if matches && user.is_active() => Ok(user),
            _ if failures.record(client) => Err(SignInError::TooManyFailures),
            _ => Err(SignInError::Refused),
        }
    }

    async fn find_user(&self, username: &str) -> Result<Option<User>, SignInError> {
        let username = username.trim();
        if let Some(user) = self
            .store
            .user(username)
            .await
            .map_err(|_| SignInError::Unavailable)?
        {
            return Ok(Some(user));
        }
        if !username.contains('@') {
            return Ok(None);
        }
        // No email index yet: sign-in is rare next to verification, so a scan will do for now.
        let users = self
            .store
            .users()
            .await
            .map_err(|_| SignInError::Unavailable)?;
        Ok(users
            .into_iter()
            .find(|u| u.email.eq_ignore_ascii_case(username)))
    }

    /// Revokes the ticket presented (`tgt_…`), which must be genuine.
    pub async fn sign_out(&self, presented: &str) -> Result<(), AuthError> {
        let (id, secret) =
            format::parse(TokenKind::Ticket, presented).ok_or(AuthError::InvalidToken)?;
        let ticket = self
            .store
            .ticket(id)
            .await
            .map_err(|_| AuthError::AuthUnavailable)?
            .filter(|t| format::secret_matches(secret, &t.secret_hash))
            .ok_or(AuthError::InvalidToken)?;
        self.revoke(ticket)
            .await
            .map_err(|_| AuthError::AuthUnavailable)
    }

    /// Marks a ticket revoked (kept, so it is refused as `token_revoked` until it expires).
    pub async fn revoke(&self, mut ticket: Ticket) -> Result<(), StoreError> {
        if ticket.revoked_at.is_none() {
            ticket.revoked_at = Some(self.engine.clock().now());
            self.store.update_ticket(&ticket).await?;
            self.engine.metrics().revoked("ticket", 1);
            tracing::info!(target: "audit", ticket_id = %ticket.id, user_id = %ticket.user_id, "ticket revoked");
        }
        self.engine
            .invalidate(&Invalidation::Ticket(ticket.id))
            .await;
        Ok(())
    }
}
