//! Tickets (Quickbase `API_Authenticate`): lookup by the id the ticket carries, the secret's
//! hash compared in constant time, then not revoked, not expired, owner active, and the target
//! app one the owner may use. A cache hit needs no store round trip; a revocation reaches the
//! cache through invalidation.

use crate::cache::{Cache, Cached};
use crate::clock::Clock;
use crate::credential::format::{self, TokenKind};
use crate::error::AuthError;
use crate::model::{Identity, Verified};

use super::{active_owner, owners_app, unavailable};

pub async fn verify(
    cache: &Cache,
    clock: &dyn Clock,
    ticket: &str,
    app: Option<&str>,
) -> Result<Identity, AuthError> {
    let (id, secret) = format::parse(TokenKind::Ticket, ticket).ok_or(AuthError::InvalidToken)?;
    let Cached::Found(record) = cache.ticket(id).await.map_err(unavailable)? else {
        return Err(AuthError::InvalidToken);
    };
    if !format::secret_matches(secret, &record.secret_hash) {
        return Err(AuthError::InvalidToken);
    }
    if record.revoked_at.is_some() {
        return Err(AuthError::TokenRevoked);
    }
    if clock.now() >= record.expires_at {
        return Err(AuthError::TokenExpired);
    }
    let user = active_owner(cache, &record.user_id).await?;
    let app = owners_app(cache, &user, app).await?;
    Ok(Identity {
        user,
        credential: Verified::Ticket(record),
        app,
    })
}
