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
use crate::model::{Identity, Session, Verified};

use super::external::{ExternalIssuer, peek_issuer};
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

/// A verified token of another issuer: who it names, as a session that lives only here.
#[derive(Debug)]
struct ExternalHit {
    session: Arc<Session>,
    leeway_secs: u64,
}

struct ExternalUntilExpiry;

impl Expiry<[u8; 32], Arc<ExternalHit>> for ExternalUntilExpiry {
    fn expire_after_create(
        &self,
        _: &[u8; 32],
        hit: &Arc<ExternalHit>,
        _: Instant,
    ) -> Option<Duration> {
        let left = hit.session.expires_at.timestamp() - chrono::Utc::now().timestamp();
        Some(Duration::from_secs(left.clamp(0, 86_400) as u64))
    }
}

/// Session tokens: tokengate's own (its keys, issuer and audience) and other issuers', and the
/// tokens already verified.
pub struct SessionVerifier {
    keys: OnceLock<KeySet>,
    pub issuer: String,
    pub audience: String,
    pub leeway_secs: u64,
    verified: moka::future::Cache<[u8; 32], Arc<Claims>>,
    externals: Vec<Arc<ExternalIssuer>>,
    external_verified: moka::future::Cache<[u8; 32], Arc<ExternalHit>>,
}

impl SessionVerifier {
    pub fn new(
        issuer: String,
        audience: String,
        leeway_secs: u64,
        max_entries: u64,
        externals: Vec<Arc<ExternalIssuer>>,
    ) -> Self {
        Self {
            keys: OnceLock::new(),
            issuer,
            audience,
            leeway_secs,
            verified: moka::future::Cache::builder()
                .max_capacity(max_entries)
                .expire_after(UntilExpiry)
                .build(),
            externals,
            external_verified: moka::future::Cache::builder()
                .max_capacity(max_entries)
                .expire_after(ExternalUntilExpiry)
                .build(),
        }
    }

    /// The other issuers whose tokens are accepted.
    pub fn externals(&self) -> &[Arc<ExternalIssuer>] {
        &self.externals
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
            None => self.verify_own(token, digest, now).await?,
        };
        self.unexpired(claims, now)
    }

    async fn verify_own(
        &self,
        token: &str,
        digest: [u8; 32],
        now: i64,
    ) -> Result<Arc<Claims>, AuthError> {
        let keys = self.keys.get().ok_or(AuthError::AuthUnavailable)?;
        let claims = keys.verify(token, &self.rules(now)).map_err(|e| match e {
            JwtError::Expired => AuthError::TokenExpired,
            _ => AuthError::InvalidToken,
        })?;
        let claims = Arc::new(claims);
        self.verified.insert(digest, claims.clone()).await;
        Ok(claims)
    }

    /// Kept until it expires by the wall clock; refused once it expires by ours.
    fn unexpired(&self, claims: Arc<Claims>, now: i64) -> Result<Arc<Claims>, AuthError> {
        if now.saturating_sub(self.leeway_secs as i64) >= claims.exp {
            return Err(AuthError::TokenExpired);
        }
        Ok(claims)
    }

    /// A token of another issuer, verified (or found verified) by its digest; `None` when the
    /// token is not another issuer's.
    async fn external(
        &self,
        token: &str,
        digest: [u8; 32],
        now: i64,
    ) -> Option<Result<Arc<ExternalHit>, AuthError>> {
        if self.externals.is_empty() {
            return None;
        }
        if let Some(hit) = self.external_verified.get(&digest).await {
            return Some(Ok(hit));
        }
        let iss = peek_issuer(token).filter(|iss| *iss != self.issuer)?;
        let Some(issuer) = self.externals.iter().find(|i| i.config.issuer == iss) else {
            return Some(Err(AuthError::InvalidToken));
        };
        let verified = issuer.verify(token, now).await.map(|c| {
            Arc::new(ExternalHit {
                session: Arc::new(Session {
                    id: c.token_id,
                    user_id: c.user_id,
                    app: None,
                    issued_at: c.issued_at,
                    expires_at: c.expires_at,
                    remember_me: false,
                    last_active_at: None,
                    revoked_at: None,
                    external: true,
                    used: Default::default(),
                    headers: Default::default(),
                }),
                leeway_secs: issuer.config.leeway_secs,
            })
        });
        if let Ok(hit) = &verified {
            self.external_verified.insert(digest, hit.clone()).await;
        }
        Some(verified)
    }

    async fn external_identity(
        &self,
        cache: &Cache,
        hit: Arc<ExternalHit>,
        now: i64,
        app: Option<&str>,
    ) -> Result<Identity, AuthError> {
        if now.saturating_sub(hit.leeway_secs as i64) >= hit.session.expires_at.timestamp() {
            return Err(AuthError::TokenExpired);
        }
        let user = match cache
            .user(&hit.session.user_id)
            .await
            .map_err(unavailable)?
        {
            Cached::Found(user) if user.is_active() => user,
            Cached::Found(_) => return Err(AuthError::UserDisabled),
            // The issuer vouches for someone tokengate doesn't know.
            Cached::Missing => return Err(AuthError::InvalidToken),
        };
        let app = owners_app(cache, &user, app).await?;
        Ok(Identity {
            user,
            credential: Verified::Session(hit.session.clone()),
            app,
        })
    }

    pub async fn verify(
        &self,
        cache: &Cache,
        clock: &dyn Clock,
        token: &str,
        app: Option<&str>,
    ) -> Result<Identity, AuthError> {
        let now = clock.now().timestamp();
        let digest = token_digest(token);
        let claims = match self.verified.get(&digest).await {
            Some(claims) => claims,
            None => {
                if let Some(hit) = self.external(token, digest, now).await {
                    return self.external_identity(cache, hit?, now, app).await;
                }
                self.verify_own(token, digest, now).await?
            }
        };
        let claims = self.unexpired(claims, now)?;
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
