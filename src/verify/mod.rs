//! One verifier per credential kind. A verifier gets a credential that is already known to be
//! of its kind (the extractor decided that) and answers with an [`Identity`] or the reason it
//! is refused; it never passes a bad credential over for another one.
//!
//! Tickets, sessions and app tokens arrive with their own verifiers beside `user_token`.

pub mod user_token;

use crate::error::AuthError;
use crate::store::StoreError;

/// A store that can't answer is never a guess: it is `auth_unavailable`.
pub(crate) fn unavailable(e: StoreError) -> AuthError {
    tracing::warn!(error = %e, "store lookup failed");
    AuthError::AuthUnavailable
}
