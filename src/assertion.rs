//! `X-Auth-Assertion` (with `headers.assertion = true`): a JWT of at most 60 s, signed by
//! tokengate's session keys, carrying the identity the other headers carry, so the upstream can
//! check that they came from tokengate (verify it against `/_auth/jwks.json`). Its audience is
//! its own (`headers.assertion_audience`), so an assertion is never accepted as a session.

use http::HeaderValue;
use serde_json::json;

use crate::engine::Engine;
use crate::error::AuthError;
use crate::jwt;
use crate::model::Identity;

/// Seconds an assertion is valid.
pub const LIFETIME_SECS: i64 = 60;

pub struct Assertions {
    audience: String,
}

impl Assertions {
    pub fn new(audience: String) -> Self {
        Self { audience }
    }

    /// A fresh assertion for `identity`, signed now.
    pub fn sign(&self, engine: &Engine, identity: &Identity) -> Result<HeaderValue, AuthError> {
        let sessions = engine.sessions();
        let keys = sessions.keys().ok_or(AuthError::AuthUnavailable)?;
        let now = engine.clock().now().timestamp();
        let claims = json!({
            "iss": sessions.issuer,
            "aud": self.audience,
            "sub": identity.user.id,
            "email": identity.user.email,
            "name": identity.user.name,
            "method": identity.method().as_str(),
            "credential_id": identity.credential_id(),
            "app_id": identity.app_id(),
            "department": identity.department(),
            "user_type": identity.user_type(),
            "tenant": identity.tenant(),
            "iat": now,
            "exp": now + LIFETIME_SECS,
            "jti": jwt::new_token_id().map_err(|_| AuthError::AuthUnavailable)?,
        });
        let token = keys.sign_claims(&claims).map_err(|e| {
            tracing::error!(error = %e, "can't sign an identity assertion");
            AuthError::AuthUnavailable
        })?;
        HeaderValue::from_str(&token).map_err(|_| AuthError::AuthUnavailable)
    }
}
