//! The two error types of [`crate::jwt`]: why a token was refused ([`JwtError`]) and why a key
//! or a key set could not be built or used ([`KeyError`]).
//!
//! Must not: carry a token, a part of one, or any key material. Every payload here is a
//! `&'static str` chosen by this module or a key id (which is public: it is in every token).

use thiserror::Error;

/// Why a token was refused. Each variant is one stable reason; none carries the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum JwtError {
    /// Not a compact JWS we accept: wrong shape, bad base64url, bad JSON, a `crit` header,
    /// claims missing or of the wrong type. The reason is a fixed sentence, never input.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header has no `kid`, or one that is not in the key set.
    #[error("token names no known key")]
    UnknownKey,
    /// The signature does not verify, or the header's `alg` is not the key's algorithm.
    #[error("token signature is not valid")]
    BadSignature,
    /// `now` is at or past `exp` plus the leeway.
    #[error("token has expired")]
    Expired,
    /// `now` plus the leeway is before `nbf`.
    #[error("token is not valid yet")]
    NotYetValid,
    /// `iss` is missing or not exactly the expected issuer.
    #[error("token is from another issuer")]
    WrongIssuer,
    /// `aud` is missing or does not contain exactly the expected audience.
    #[error("token is for another audience")]
    WrongAudience,
}

/// Why a key could not be made, loaded, added or used to sign.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    /// The key material is not a usable key of the stated algorithm.
    #[error("invalid {alg} key: {reason}")]
    InvalidKey {
        /// The algorithm the key was meant for.
        alg: super::Algorithm,
        /// A fixed sentence saying what is wrong.
        reason: &'static str,
    },
    /// An HS256 secret shorter than the 32 bytes (256 bits) its hash deserves.
    #[error("an HS256 secret needs at least 32 bytes, this one has {0}")]
    SecretTooShort(usize),
    /// Not one of `EdDSA`, `ES256`, `RS256`, `HS256`.
    #[error("unsupported algorithm (expected EdDSA, ES256, RS256 or HS256)")]
    UnsupportedAlgorithm,
    /// A key id must be 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
    #[error("invalid key id: 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '-'")]
    InvalidKid,
    /// Two keys in one set may not share a key id: the id is how a token picks its key.
    #[error("key id {0} is already in the key set")]
    DuplicateKid(String),
    /// `set_current` named a key that is not in the set or that can't sign.
    #[error("no signing key with id {0} in the key set")]
    UnknownKid(String),
    /// The set has no private key (empty, or built from a JWKS).
    #[error("the key set has no key that can sign")]
    NoSigningKey,
    /// jsonwebtoken could not serialise or sign the claims.
    #[error("signing the token failed")]
    Signing,
    /// The system's random source or the key generator failed.
    #[error("the random source or key generation failed")]
    Random,
    /// The JWKS document can't be used at all (individual unusable keys are skipped instead).
    #[error("invalid JWKS: {0}")]
    InvalidJwks(&'static str),
}
