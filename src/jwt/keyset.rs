//! [`KeySet`]: the keys tokengate trusts at one moment. The current key signs; every key in
//! the set verifies until it is removed, which is what makes rotation work. Also the one
//! verification path, shared by tokengate's own keys and by other issuers' JWKS keys.
//!
//! Must not: pick a key by anything but the header's `kid`, accept any `alg` but the one pinned
//! on that key, read a payload before its signature has verified, or fall back to "try every
//! key" when a `kid` is missing.

use std::fmt;

use data_encoding::BASE64URL_NOPAD;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::claims::check_registered;
use super::jwk::{self, JwksImport};
use super::key::{ExportedKey, SigningKey, VerifyingKey};
use super::{Claims, JwtError, KeyError, VerifyRules};

/// Longer than any token tokengate or a sane issuer makes; refusing early bounds the work an
/// unauthenticated request can cause.
pub(crate) const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The keys trusted at one moment; see the module doc. Cheap enough to clone and swap whole
/// on rotation.
#[derive(Clone, Default)]
pub struct KeySet {
    /// In the order added; the newest last. A handful at most, so a scan beats a map.
    entries: Vec<Entry>,
    /// The kid of the key that signs.
    current: Option<String>,
}

#[derive(Clone)]
enum Entry {
    Signing(Box<SigningKey>),
    Verifying(VerifyingKey),
}

impl Entry {
    fn verifying(&self) -> &VerifyingKey {
        match self {
            Entry::Signing(key) => &key.verifying,
            Entry::Verifying(key) => key,
        }
    }
}

/// The JOSE header members verification looks at. Everything else (including `jwk`, `jku`,
/// `x5u`, `x5c`: keys a token offers for itself) is ignored.
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    /// Present at all means "you must understand these extensions": we understand none.
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

impl KeySet {
    /// An empty set: it can neither sign nor verify until a key is added.
    pub fn new() -> Self {
        KeySet::default()
    }

    /// A verifying-only set from another issuer's JWKS document (`{"keys": [...]}`); see
    /// [`JwksImport`] for what is skipped. Fetching the document is the caller's job.
    pub fn from_jwks(document: &Value) -> Result<JwksImport, KeyError> {
        jwk::import(document)
    }

    /// [`KeySet::from_jwks`] from the raw JSON bytes of the document.
    pub fn from_jwks_bytes(document: &[u8]) -> Result<JwksImport, KeyError> {
        let document: Value = serde_json::from_slice(document)
            .map_err(|_| KeyError::InvalidJwks("not valid JSON"))?;
        jwk::import(&document)
    }

    /// Adds `key`, which becomes the current signer. Its kid must be new to the set.
    pub fn add(&mut self, key: SigningKey) -> Result<(), KeyError> {
        self.check_new_kid(key.kid())?;
        self.current = Some(key.kid().to_owned());
        self.entries.push(Entry::Signing(Box::new(key)));
        Ok(())
    }

    /// Makes the key `kid` the signer (e.g. publish a new key first, switch to it later).
    pub fn set_current(&mut self, kid: &str) -> Result<(), KeyError> {
        match self.entry(kid) {
            Some(Entry::Signing(_)) => {
                self.current = Some(kid.to_owned());
                Ok(())
            }
            _ => Err(KeyError::UnknownKid(kid.to_owned())),
        }
    }

    /// Removes the key `kid`: its tokens are refused from now on. If it was the signer, the
    /// newest remaining private key signs instead (any key still in the set is trusted anyway).
    /// Returns whether the key was there.
    pub fn remove(&mut self, kid: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|entry| entry.verifying().kid != kid);
        if self.current.as_deref() == Some(kid) {
            self.current = self.entries.iter().rev().find_map(|entry| match entry {
                Entry::Signing(key) => Some(key.kid().to_owned()),
                Entry::Verifying(_) => None,
            });
        }
        self.entries.len() != before
    }

    /// The kid of the key that signs, if any.
    pub fn current_kid(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// The kids of every key, oldest first.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .map(|entry| entry.verifying().kid.as_str())
    }

    /// Whether a key with this kid is in the set.
    pub fn contains(&self, kid: &str) -> bool {
        self.entry(kid).is_some()
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set holds no key.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every private key, oldest first, for the store to keep. This carries private material.
    pub fn export(&self) -> Vec<ExportedKey> {
        self.entries
            .iter()
            .filter_map(|entry| match entry {
                Entry::Signing(key) => Some(key.export()),
                Entry::Verifying(_) => None,
            })
            .collect()
    }

    /// Signs a session's claims with the current key (`kid` and `alg` in the header).
    pub fn sign(&self, claims: &Claims) -> Result<String, KeyError> {
        self.sign_claims(claims)
    }

    /// Signs any claims with the current key, e.g. the `X-Auth-Assertion` JWT. Give such tokens
    /// an `aud` of their own: the same keys sign sessions, and `aud` is what keeps one from
    /// being accepted as the other.
    pub fn sign_claims<T: Serialize>(&self, claims: &T) -> Result<String, KeyError> {
        self.current_signer()
            .ok_or(KeyError::NoSigningKey)?
            .sign(claims)
    }

    /// Verifies a session token: signature by the key its `kid` names, with that key's `alg`;
    /// then `exp`, `nbf`, `iss`, `aud` against `rules`; then the shape of [`Claims`].
    pub fn verify(&self, token: &str, rules: &VerifyRules<'_>) -> Result<Claims, JwtError> {
        self.verify_claims(token, rules)
    }

    /// The same checks as [`KeySet::verify`], deserialising the claims into `T` (for another
    /// issuer's tokens, e.g. into a `serde_json::Map` to read a configured user claim).
    pub fn verify_claims<T: DeserializeOwned>(
        &self,
        token: &str,
        rules: &VerifyRules<'_>,
    ) -> Result<T, JwtError> {
        let payload = self.verified_payload(token)?;
        check_registered(&payload, rules)?;
        serde_json::from_slice(&payload)
            .map_err(|_| JwtError::Malformed("claims do not have the expected shape"))
    }

    /// The JWKS to publish (`GET /_auth/jwks.json`): `{"keys": [...]}` with the public half of
    /// every asymmetric key, oldest first. HS256 keys never appear.
    pub fn jwks(&self) -> Value {
        let keys: Vec<Value> = self
            .entries
            .iter()
            .filter_map(|entry| entry.verifying().jwk())
            .collect();
        serde_json::json!({ "keys": keys })
    }

    /// Checks the signature and returns the decoded payload bytes; nothing about the claims.
    fn verified_payload(&self, token: &str) -> Result<Vec<u8>, JwtError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::Malformed("token too long"));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed("not three dot-separated parts"));
        };
        let header_json = BASE64URL_NOPAD
            .decode(header.as_bytes())
            .map_err(|_| JwtError::Malformed("header is not base64url"))?;
        // serde would also take a JSON array for a struct; a JOSE header is an object.
        if header_json.trim_ascii_start().first() != Some(&b'{') {
            return Err(JwtError::Malformed("header is not a JSON object"));
        }
        let header_fields: Header = serde_json::from_slice(&header_json)
            .map_err(|_| JwtError::Malformed("header is not a JSON object with a string alg"))?;
        if header_fields.crit.is_some() {
            return Err(JwtError::Malformed(
                "crit header extensions are not supported",
            ));
        }
        let kid = header_fields.kid.ok_or(JwtError::UnknownKey)?;
        let key = self.entry(&kid).ok_or(JwtError::UnknownKey)?.verifying();
        // The pin: this one comparison refuses `none`, HMAC-with-a-public-key and wrong types.
        if header_fields.alg != key.algorithm.as_str() {
            return Err(JwtError::BadSignature);
        }
        let signing_input = &token[..header.len() + 1 + payload.len()];
        let verified = jsonwebtoken::crypto::verify(
            signature,
            signing_input.as_bytes(),
            &key.decoding,
            key.algorithm.to_jsonwebtoken(),
        );
        if !matches!(verified, Ok(true)) {
            return Err(JwtError::BadSignature);
        }
        BASE64URL_NOPAD
            .decode(payload.as_bytes())
            .map_err(|_| JwtError::Malformed("payload is not base64url"))
    }

    fn current_signer(&self) -> Option<&SigningKey> {
        match self.entry(self.current.as_deref()?)? {
            Entry::Signing(key) => Some(key),
            Entry::Verifying(_) => None,
        }
    }

    fn entry(&self, kid: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|entry| entry.verifying().kid == kid)
    }

    fn check_new_kid(&self, kid: &str) -> Result<(), KeyError> {
        if self.contains(kid) {
            Err(KeyError::DuplicateKid(kid.to_owned()))
        } else {
            Ok(())
        }
    }

    /// Adds a public-only key (from a JWKS); it verifies and never signs.
    pub(crate) fn insert_verifying(&mut self, key: VerifyingKey) -> Result<(), KeyError> {
        self.check_new_kid(&key.kid)?;
        self.entries.push(Entry::Verifying(key));
        Ok(())
    }
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<_> = self
            .entries
            .iter()
            .map(|entry| {
                let key = entry.verifying();
                let private = matches!(entry, Entry::Signing(_));
                (key.kid.as_str(), key.algorithm.as_str(), private)
            })
            .collect();
        f.debug_struct("KeySet")
            .field("keys (kid, alg, private)", &keys)
            .field("current", &self.current)
            .finish()
    }
}
