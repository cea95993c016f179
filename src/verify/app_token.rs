//! App tokens: the second factor a ticket (or session) needs where the app says
//! `require_app_token`. Never asked of a user token. Another app's app token is as good as none.

use crate::cache::{Cache, Cached};
use crate::credential::format::{self, TokenKind};
use crate::error::AuthError;
use crate::model::App;

use super::unavailable;

/// Checks the app token presented (if any) for `app`.
pub async fn check(cache: &Cache, presented: Option<&str>, app: &App) -> Result<(), AuthError> {
    if !app.require_app_token {
        return Ok(());
    }
    let presented = presented.ok_or(AuthError::AppTokenRequired)?;
    let (id, secret) =
        format::parse(TokenKind::AppToken, presented).ok_or(AuthError::InvalidAppToken)?;
    let Cached::Found(record) = cache.app_token(id).await.map_err(unavailable)? else {
        return Err(AuthError::InvalidAppToken);
    };
    if !format::secret_matches(secret, &record.secret_hash) || record.app_id != app.id {
        return Err(AuthError::InvalidAppToken);
    }
    Ok(())
}
