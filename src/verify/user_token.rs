//! User tokens (Quickbase user tokens; the admin guide's API tokens): lookup by the id the
//! token carries, the secret's hash compared in constant time, then active, not expired, owner
//! active, and the target app both assigned to the token and allowed to the owner.

use crate::cache::{Cache, Cached};
use crate::clock::Clock;
use crate::credential::format::{self, TokenKind};
use crate::error::AuthError;
use crate::model::{Identity, Verified};

use super::unavailable;

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
    let user = match cache.user(&record.user_id).await.map_err(unavailable)? {
        Cached::Found(user) if user.is_active() => user,
        _ => return Err(AuthError::UserDisabled),
    };
    let app = match app {
        None => None,
        Some(app) => {
            if !record.is_assigned(app) || !user.may_use(app) {
                return Err(AuthError::AppNotAllowed);
            }
            match cache.app(app).await.map_err(unavailable)? {
                Cached::Found(app) => Some(app),
                Cached::Missing => return Err(AuthError::AppNotAllowed),
            }
        }
    };
    Ok(Identity {
        user,
        credential: Verified::UserToken(record),
        app,
    })
}
