//! The claims of a tokengate session JWT ([`Claims`]), the rules a token is checked against
//! ([`VerifyRules`]), and the check of the registered claims (`exp`, `nbf`, `iss`, `aud`) that
//! every verified token passes, whatever its claim type.
//!
//! Must not: read a clock (`now` is in the rules), or look at a payload whose signature has not
//! been verified yet (the caller guarantees that order).

use serde::{Deserialize, Serialize};
use serde_json::Number;

use super::JwtError;

/// The claims of a tokengate session (`POST /_auth/login`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user's id.
    pub sub: String,
    /// The session's id: what revocation and `X-Auth-Credential-Id` name.
    pub sid: String,
    /// The app the session was opened for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Issued at, unix seconds.
    pub iat: i64,
    /// Expires at, unix seconds: refused from this second on (plus the leeway).
    pub exp: i64,
    /// Not before, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Issuer: must equal [`VerifyRules::issuer`].
    pub iss: String,
    /// Audience: must equal [`VerifyRules::audience`].
    pub aud: String,
    /// The token's own unique id.
    pub jti: String,
}

/// What a token must satisfy besides its signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyRules<'a> {
    /// The exact `iss` expected.
    pub issuer: &'a str,
    /// The exact `aud` expected (or one element of an `aud` array, for other issuers' tokens).
    pub audience: &'a str,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// The current time, unix seconds: the caller's clock, so tests control it.
    pub now: i64,
}

/// The registered claims as they may appear in any issuer's token: numeric dates may be
/// fractional and `aud` may be an array (RFC 7519 §2, §4.1.3).
#[derive(Deserialize)]
struct Registered {
    exp: Option<Number>,
    nbf: Option<Number>,
    iss: Option<String>,
    aud: Option<Audience>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// Checks `exp`, `nbf`, `iss` and `aud` of a verified payload (the decoded JSON bytes).
/// `exp` is required: a token that never expires is not one tokengate accepts.
pub(crate) fn check_registered(payload: &[u8], rules: &VerifyRules<'_>) -> Result<(), JwtError> {
    let claims: Registered = serde_json::from_slice(payload).map_err(|_| {
        JwtError::Malformed("registered claims are not valid JSON of the right types")
    })?;
    let leeway = i64::try_from(rules.leeway_secs).unwrap_or(i64::MAX);

    let exp = claims
        .exp
        .as_ref()
        .ok_or(JwtError::Malformed("no exp claim"))
        .and_then(|n| numeric_date(n, f64::floor))?;
    // RFC 7519 §4.1.4: the token must not be accepted on or after `exp`.
    if rules.now.saturating_sub(leeway) >= exp {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = claims.nbf.as_ref() {
        let nbf = numeric_date(nbf, f64::ceil)?;
        if rules.now.saturating_add(leeway) < nbf {
            return Err(JwtError::NotYetValid);
        }
    }
    if claims.iss.as_deref() != Some(rules.issuer) {
        return Err(JwtError::WrongIssuer);
    }
    let audience_ok = match &claims.aud {
        Some(Audience::One(aud)) => aud == rules.audience,
        Some(Audience::Many(auds)) => auds.iter().any(|aud| aud == rules.audience),
        None => false,
    };
    if !audience_ok {
        return Err(JwtError::WrongAudience);
    }
    Ok(())
}

/// A NumericDate as whole seconds; a fractional one is rounded the strict way (`floor` for
/// `exp`, `ceil` for `nbf`), and an out-of-range one saturates.
fn numeric_date(n: &Number, round: fn(f64) -> f64) -> Result<i64, JwtError> {
    if let Some(secs) = n.as_i64() {
        return Ok(secs);
    }
    if n.as_u64().is_some() {
        return Ok(i64::MAX);
    }
    match n.as_f64() {
        // `as` saturates at the i64 bounds, which is the intent for absurd dates.
        Some(secs) if secs.is_finite() => Ok(round(secs) as i64),
        _ => Err(JwtError::Malformed("a date claim is not a number")),
    }
}
