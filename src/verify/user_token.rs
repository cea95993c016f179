//! User tokens (Quickbase user tokens; the admin guide's API tokens): lookup by the id the
//! token carries, the secret's hash compared in constant time, then active, not expired, owner
//! active, and the target app both assigned to the token and allowed to the owner.

use crate::cache::{Cache, Cached};
use crate::clock::Clock;
use crate::credential::format::{self, TokenKind};
use crate::error::AuthError;
use crate::model::{Identity, Verified};

use super::{active_owner, owners_app, unavailable};

/// Verifies `token` for `app` (None: the route names no app).
pub async fn verify(
    cache: &Cache,
    clock: &dyn Clock,
    token: &str,
    app: Option<&str>,
) -> Result<Identity, AuthError> {
    let (id, secret) = format::parse(TokenKind::UserToken, token).ok_or(AuthError::InvalidToken)?;
    let Cached::Found(record) = cache.user_token(id).await.map_err(unavailable)? else {
        return Err(AuthError::InvalidToken);
    };
    if !format::secret_matches(secret, &record.secret_hash) {
        return Err(AuthError::InvalidToken);
    }
    if !record.active {
        return Err(AuthError::TokenInactive);
    }
    if record.expires_at.is_some_and(|at| clock.now() >= at) {
        return Err(AuthError::TokenExpired);
    }
    let user = active_owner(cache, &record.user_id).await?;
    if app.is_some_and(|app| !record.is_assigned(app)) {
        return Err(AuthError::AppNotAllowed);
    }
    let app = owners_app(cache, &user, app).await?;
    Ok(Identity {
        user,
        credential: Verified::UserToken(record),
        app,
    })
}
