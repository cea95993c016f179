//! Session tokens (JWTs signed by tokengate; Knack-style user tokens, the admin guide's mobile
//! sessions). The signature is checked once per token: a verified token is kept by its SHA-256
//! until it expires, so a cache hit verifies no signature. Expiry (by the engine's clock),
//! revocation (the server-side session, by `sid`), the owner and the app binding are checked on
//! every request, hit or not.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use moka::Expiry;

use crate::cache::{Cache, Cached};
use crate::clock::Clock;
use crate::error::AuthError;
use crate::jwt::{Claims, JwtError, KeySet, VerifyRules, token_digest};
use crate::model::{Identity, Verified};

use super::{active_owner, owners_app, unavailable};

/// Keeps a verified token until its `exp` (at most a day at a time; it is re-verified after).
struct UntilExpiry;

impl Expiry<[u8; 32], Arc<Claims>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _: &[u8; 32],
        claims: &Arc<Claims>,
        _: Instant,
    ) -> Option<Duration> {
        let left = claims.exp - chrono::Utc::now().timestamp();
        Some(Duration::from_secs(left.clamp(0, 86_400) as u64))
    }
}

/// tokengate's own session tokens: its keys, issuer and audience, and the verified tokens.
pub struct SessionVerifier {
    keys: OnceLock<KeySet>,
    pub issuer: String,
    pub audience: String,
    pub leeway_secs: u64,
    verified: moka::future::Cache<[u8; 32], Arc<Claims>>,
}

impl SessionVerifier {
    pub fn new(issuer: String, audience: String, leeway_secs: u64, max_entries: u64) -> Self {
        Self {
            keys: OnceLock::new(),
            issuer,
            audience,
            leeway_secs,
            verified: moka::future::Cache::builder()
                .max_capacity(max_entries)
                .expire_after(UntilExpiry)
                .build(),
        }
    }

    /// Settles the keys, once (configured ones at start, or the store's when they load).
    pub fn set_keys(&self, keys: KeySet) {
        let _ = self.keys.set(keys);
    }

    /// The keys, once settled.
    pub fn keys(&self) -> Option<&KeySet> {
        self.keys.get()
    }

    fn rules(&self, now: i64) -> VerifyRules<'_> {
        VerifyRules {
            issuer: &self.issuer,
            audience: &self.audience,
            leeway_secs: self.leeway_secs,
            now,
        }
    }

    /// The claims of a genuine token of ours (not yet checked against revocation).
    pub async fn claims(&self, token: &str, now: i64) -> Result<Arc<Claims>, AuthError> {
        let digest = token_digest(token);
        let claims = match self.verified.get(&digest).await {
            Some(claims) => claims,
            None => {
                let keys = self.keys.get().ok_or(AuthError::AuthUnavailable)?;
                let claims = keys.verify(token, &self.rules(now)).map_err(|e| match e {
                    JwtError::Expired => AuthError::TokenExpired,
                    _ => AuthError::InvalidToken,
                })?;
                let claims = Arc::new(claims);
                self.verified.insert(digest, claims.clone()).await;
                claims
            }
        };
        // Kept until it expires by the wall clock; refused once it expires by ours.
        if now.saturating_sub(self.leeway_secs as i64) >= claims.exp {
            return Err(AuthError::TokenExpired);
        }
        Ok(claims)
    }

    pub async fn verify(
        &self,
        cache: &Cache,
        clock: &dyn Clock,
        token: &str,
        app: Option<&str>,
    ) -> Result<Identity, AuthError> {
        let claims = self.claims(token, clock.now().timestamp()).await?;
        let user = active_owner(cache, &claims.sub).await?;
        let session = match cache.session(&claims.sid).await.map_err(unavailable)? {
            Cached::Found(s) if s.user_id == claims.sub => s,
            Cached::Found(_) => return Err(AuthError::InvalidToken),
            // Signed by us, so it existed: gone from the store means revoked.
            Cached::Missing => return Err(AuthError::TokenRevoked),
        };
        if session.revoked_at.is_some() {
            return Err(AuthError::TokenRevoked);
        }
        if let (Some(bound), Some(target)) = (&session.app, app)
            && bound != target
        {
            return Err(AuthError::AppNotAllowed);
        }
        let app = owners_app(cache, &user, app).await?;
        Ok(Identity {
            user,
            credential: Verified::Session(session),
            app,
        })
    }
}
