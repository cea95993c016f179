//! One verifier per credential kind. A verifier gets a credential that is already known to be
//! of its kind (the extractor decided that) and answers with an [`Identity`] or the reason it
//! is refused; it never passes a bad credential over for another one.
//!
//! [`Identity`]: crate::model::Identity

pub mod app_token;
pub mod external;
pub mod session;
pub mod ticket;
pub mod user_token;

use std::sync::Arc;

use crate::cache::{Cache, Cached};
use crate::error::AuthError;
use crate::model::{App, User};
use crate::store::StoreError;

/// A store that can't answer is never a guess: it is `auth_unavailable`.
pub(crate) fn unavailable(e: StoreError) -> AuthError {
    tracing::warn!(error = %e, "store lookup failed");
    AuthError::AuthUnavailable
}

/// The credential's owner, who must exist and be active.
pub(crate) async fn active_owner(cache: &Cache, user_id: &str) -> Result<Arc<User>, AuthError> {
    match cache.user(user_id).await.map_err(unavailable)? {
        Cached::Found(user) if user.is_active() => Ok(user),
        _ => Err(AuthError::UserDisabled),
    }
}

/// The app the request targets, which must exist and be one the owner may use.
pub(crate) async fn owners_app(
    cache: &Cache,
    user: &User,
    app: Option<&str>,
) -> Result<Option<Arc<App>>, AuthError> {
    let Some(app) = app else { return Ok(None) };
    if !user.may_use(app) {
        return Err(AuthError::AppNotAllowed);
    }
    match cache.app(app).await.map_err(unavailable)? {
        // Where tenants are used, a user reaches only its own tenant's apps.
        Cached::Found(app) if matches!((&app.tenant, &user.tenant), (Some(a), Some(u)) if a != u) => {
            Err(AuthError::AppNotAllowed)
        }
        Cached::Found(app) => Ok(Some(app)),
        Cached::Missing => Err(AuthError::AppNotAllowed),
    }
}
