//! The session lifecycle: log in (a server-side session and its signed JWT), sign out and
//! revoke (the admin API), and the signing keys when the config names none (the store makes
//! one and keeps it, so every replica and every restart signs with the same key).

use std::sync::Arc;

use crate::cache::Invalidation;
use crate::engine::Engine;
use crate::error::AuthError;
use crate::jwt::{self, Algorithm, Claims, ExportedKey, KeySet, SigningKey};
use crate::model::{Session, User};
use crate::store::{SharedStore, StoreError};

pub struct SessionTokens {
    engine: Arc<Engine>,
    store: SharedStore,
    ttl: chrono::Duration,
    remember_me_ttl: chrono::Duration,
    algorithm: Algorithm,
}

impl SessionTokens {
    pub fn new(
        engine: Arc<Engine>,
        store: SharedStore,
        ttl: std::time::Duration,
        remember_me_ttl: std::time::Duration,
        algorithm: Algorithm,
    ) -> Self {
        let days = |d: std::time::Duration| {
            chrono::Duration::from_std(d).unwrap_or(chrono::Duration::days(1))
        };
        Self {
            engine,
            store,
            ttl: days(ttl),
            remember_me_ttl: days(remember_me_ttl),
            algorithm,
        }
    }

    /// Loads the store's signing keys, making and keeping one if there are none; a no-op when
    /// the keys are settled (configured ones).
    pub async fn init_keys(&self) -> Result<(), StoreError> {
        let verifier = self.engine.sessions();
        if verifier.keys().is_some() {
            return Ok(());
        }
        let kept = match self.store.signing_keys().await? {
            Some(kept) => kept,
            None => {
                let key = SigningKey::generate(self.algorithm)
                    .map_err(|e| StoreError::Backend(format!("can't make a signing key: {e}")))?;
                let made = serde_json::to_vec(&vec![key.export()])
                    .map_err(|e| StoreError::Backend(e.to_string()))?;
                self.store.init_signing_keys(made).await?
            }
        };
        let exported: Vec<ExportedKey> = serde_json::from_slice(&kept)
            .map_err(|e| StoreError::Backend(format!("unreadable signing keys: {e}")))?;
        let mut keys = KeySet::new();
        for e in &exported {
            let key = SigningKey::import(e)
                .map_err(|e| StoreError::Backend(format!("unusable signing key: {e}")))?;
            keys.add(key)
                .map_err(|e| StoreError::Backend(format!("signing keys: {e}")))?;
        }
        verifier.set_keys(keys);
        Ok(())
    }

    /// Opens a session for `user` (bound to `app` if given) and signs its token.
    pub async fn open(
        &self,
        user: &User,
        app: Option<String>,
        remember_me: bool,
    ) -> Result<(String, Session), AuthError> {
        let verifier = self.engine.sessions();
        let keys = verifier.keys().ok_or(AuthError::AuthUnavailable)?;
        let now = self.engine.clock().now();
        let ttl = if remember_me {
            self.remember_me_ttl
        } else {
            self.ttl
        };
        let sid = jwt::new_token_id().map_err(|_| AuthError::AuthUnavailable)?;
        let session = Session {
            id: sid,
            user_id: user.id.clone(),
            app,
            issued_at: now,
            expires_at: now + ttl,
            remember_me,
            last_active_at: None,
            revoked_at: None,
            external: false,
            used: Default::default(),
            headers: Default::default(),
        };
        let claims = Claims {
            sub: user.id.clone(),
            sid: session.id.clone(),
            app: session.app.clone(),
            iat: now.timestamp(),
            exp: session.expires_at.timestamp(),
            nbf: None,
            iss: verifier.issuer.clone(),
            aud: verifier.audience.clone(),
            jti: jwt::new_token_id().map_err(|_| AuthError::AuthUnavailable)?,
        };
        let token = keys.sign(&claims).map_err(|e| {
            tracing::error!(error = %e, "can't sign a session token");
            AuthError::AuthUnavailable
        })?;
        self.store
            .insert_session(&session)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => AuthError::UserDisabled,
                _ => AuthError::AuthUnavailable,
            })?;
        self.engine.metrics().issued("session");
        tracing::info!(target: "audit", session_id = %session.id, user_id = %session.user_id, "session opened");
        Ok((token, session))
    }

    /// Revokes the session a genuine token of ours names (even an expired one).
    pub async fn sign_out(&self, token: &str) -> Result<(), AuthError> {
        let verifier = self.engine.sessions();
        // Expiry doesn't matter for signing out: the signature is checked as of the epoch.
        let claims = verifier.claims(token, 0).await?;
        let session = self
            .store
            .session(&claims.sid)
            .await
            .map_err(|_| AuthError::AuthUnavailable)?
            .ok_or(AuthError::TokenRevoked)?;
        self.revoke(session)
            .await
            .map_err(|_| AuthError::AuthUnavailable)
    }

    /// Marks a session revoked (kept, so it is refused as `token_revoked` until it expires).
    pub async fn revoke(&self, mut session: Session) -> Result<(), StoreError> {
        if session.revoked_at.is_none() {
            session.revoked_at = Some(self.engine.clock().now());
            self.store.update_session(&session).await?;
            self.engine.metrics().revoked("session", 1);
            tracing::info!(target: "audit", session_id = %session.id, user_id = %session.user_id, "session revoked");
        }
        self.engine
            .invalidate(&Invalidation::Session(session.id))
            .await;
        Ok(())
    }
}
