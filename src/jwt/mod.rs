//! Session JWTs: tokengate's signing keys and their rotation ([`KeySet`], [`SigningKey`]),
//! signing [`Claims`], verification that can't be fooled ([`KeySet::verify`]), the public JWKS
//! ([`KeySet::jwks`]), verifying-only key sets built from another issuer's JWKS
//! ([`KeySet::from_jwks`]), and [`token_digest`] for cache keys.
//!
//! Must not: do I/O (no store, no HTTP fetch of a JWKS, no clock: `now` comes in as a
//! parameter), know about Pingora or requests, or put a token or key material in an error, a
//! `Debug` output or a log line.
//!
//! How verification stays honest: the header's `kid` picks exactly one key, and the header's
//! `alg` must equal the algorithm pinned on that key. `alg: none`, an HMAC signed with a public
//! key, and a token from a key of another type all fail that one comparison. Keys embedded in
//! the header (`jwk`, `jku`, `x5u`, `x5c`) are never looked at. `exp`/`nbf`/`iss`/`aud` are
//! checked here against the caller's `now`, not against jsonwebtoken's own clock.
//!
//! Crypto: jsonwebtoken signs and verifies (its `aws_lc_rs` backend); aws-lc-rs is also used
//! directly, because jsonwebtoken can neither generate keys nor give a PKCS#8 key's public half.

mod claims;
mod error;
mod jwk;
mod key;
mod keyset;
#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

use data_encoding::BASE64URL_NOPAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use claims::{Claims, VerifyRules};
pub use error::{JwtError, KeyError};
pub use jwk::{JwksImport, SkippedJwk};
pub use key::{ExportedKey, SigningKey};
pub use keyset::KeySet;

/// The signature algorithms tokengate signs and verifies with. Each key is pinned to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Algorithm {
    /// Ed25519: small keys and tokens, fast, no nonce to get wrong. The default.
    #[default]
    EdDSA,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (2048-bit keys when generated here).
    RS256,
    /// HMAC-SHA-256 with a shared secret: never published in the JWKS.
    HS256,
}

impl Algorithm {
    /// Every supported algorithm, default first.
    pub const ALL: [Algorithm; 4] = [
        Algorithm::EdDSA,
        Algorithm::ES256,
        Algorithm::RS256,
        Algorithm::HS256,
    ];

    /// The JOSE name, as it appears in a token header and a JWK's `alg`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Algorithm::EdDSA => "EdDSA",
            Algorithm::ES256 => "ES256",
            Algorithm::RS256 => "RS256",
            Algorithm::HS256 => "HS256",
        }
    }

    /// The same algorithm as jsonwebtoken names it.
    pub(crate) const fn to_jsonwebtoken(self) -> jsonwebtoken::Algorithm {
        match self {
            Algorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
            Algorithm::ES256 => jsonwebtoken::Algorithm::ES256,
            Algorithm::RS256 => jsonwebtoken::Algorithm::RS256,
            Algorithm::HS256 => jsonwebtoken::Algorithm::HS256,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = KeyError;

    /// Exact JOSE names only: a config that says `es256` is a typo worth reporting.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|alg| alg.as_str() == s)
            .ok_or(KeyError::UnsupportedAlgorithm)
    }
}

/// SHA-256 of the whole token, to key a verification cache without keeping the token itself.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh random identifier (128 bits, base64url, 22 characters) for a `jti` or a `sid`.
pub fn new_token_id() -> Result<String, KeyError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|_| KeyError::Random)?;
    Ok(BASE64URL_NOPAD.encode(&bytes))
}
